"""`harness report` / `harness plan`: files, honesty on degenerate stores, bad input, CLI.

Runs are written as real run.json records through harness.store (no training: the report only
reads records), with per-epoch losses simulated at mini-track scale.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from harness import report as R
from harness.errors import UserError
from harness.record import EpochMetric, Metrics, RunRecord
from harness.store import Store

ROOT = Path(__file__).resolve().parent.parent


def add_run(store: Store, variant: str, seed: int, final: float | None, status: str = "ok", track: str = "mini", config: str | None = None,
            hardware: str = "cpu", ended: str = "2026-07-01T00:00:00Z", error: str | None = None, epochs: int = 6,
            extra: list[str] | None = None) -> None:  # fmt: skip
    rng = np.random.default_rng(seed + 100 * len(variant))
    eps = []
    if final is not None:  # a decaying curve that ends at `final`
        eps = [EpochMetric(e, 10 * e, float(final + 2.0 * np.exp(-0.6 * e) - 2.0 * np.exp(-0.6 * epochs) + rng.normal(0, 0.002)), None)
               for e in range(0, epochs + 1)]  # fmt: skip
        eps[-1] = EpochMetric(epochs, 10 * epochs, final, None)
    m = Metrics(epochs=eps, min_val_loss=final, final_val_loss=final, training_time_s=20.0 + seed, wall_time_s=25.0 + seed)
    key = f"{variant}-{track}-{config or variant}-{seed}"
    rec = RunRecord(run_id="", variant=variant, track=track, seed=seed, run_key=key, status=status, error=error, metrics=m,
                    provenance={"config_key": config or f"cfg-{variant}", "hardware": hardware}, started_at=ended, ended_at=ended)  # fmt: skip
    if extra is not None:
        rec.provenance["extra_args"] = extra
    with store.lock():
        run_id, path = store.new_run_dir(variant, track, seed, key)
    rec.run_id = run_id
    store.write(path, rec)


def tables(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    return store.load_table(), store.load_epochs()


INFOS = {
    "base": R.VariantInfo("base"),
    "cand": R.VariantInfo("cand", compare_to="base", claims=(R.ClaimInfo(3.30, "https://example.invalid/pr/1"),)),
    "other": R.VariantInfo("other", compare_to="base"),
}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "results")
    rng = np.random.default_rng(0)
    for seed in range(4):
        add_run(s, "base", seed, 3.40 + rng.normal(0, 0.002))
        add_run(s, "cand", seed, 3.37 + rng.normal(0, 0.002))
    add_run(s, "base", 9, None, status="diverged", error="loss not finite at step 40")
    return s


def no_nan(text: str) -> None:
    assert not re.search(r"\bnan\b", text, re.I), text


def test_full_report_files_and_figures(store: Store, tmp_path: Path):
    runs, epochs = tables(store)
    data = R.build_report(runs, epochs, ["cand"], INFOS, record=3.375)
    assert data.variants == ["cand", "base"]  # the reference joins the report
    paths = R.write_report(data, tmp_path / "rep")
    md = paths["markdown"].read_text()
    for section in ["## Per-variant summary", "## Comparisons", "## Record test", "## Claim check", "## Runs", "## Failed runs", "## Provenance"]:
        assert section in md
    c = data.comparisons[0]
    assert c.analysis == "paired" and c.verdict == "real gain"  # 0.03 lower at sd 0.002, same seeds
    assert "**real gain**" in md and "two-sided paired t-test, alpha=0.05" in md
    assert "loss not finite at step 40" in md  # the diverged run is listed, and excluded
    assert data.summaries[1].n == 4 and data.summaries[1].n_failed == 1
    no_nan(md)
    summary = json.loads(paths["summary"].read_text())
    # every figure in the markdown tables is in summary.json
    assert f"{summary['comparisons'][0]['diff']:+.6f}" in md
    assert f"{summary['comparisons'][0]['p_value']:.3g}" in md
    for s in summary["summaries"]:
        assert f"{s['mean']:.6f}" in md and f"{s['ci_low']:.6f}" in md
    assert summary["record_tests"][0]["record"] == 3.375 and f"{summary['record_tests'][0]['mean']:.6f}" in md
    assert [e["epoch"] for e in summary["epoch_summaries"]["cand"]] == list(range(7))
    assert "ahead by" in summary["epoch_deltas"][0]["sentence"]
    csv = pd.read_csv(paths["runs"])
    assert len(csv) == 9 and csv["included"].sum() == 8
    for kind in ("trajectory", "delta"):
        blob = paths[kind].read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 20_000
    # mini-track runs: the upstream claim is not checked against them, and the report says why
    assert summary["claim_checks"] == [] and any("upstream" in n for n in summary["notes"])


@pytest.mark.parametrize("case", ["one_run", "all_failed", "empty_known_variant", "single_variant", "reference_without_runs"])
def test_degenerate_stores_give_honest_reports(tmp_path: Path, case: str):
    s = Store(tmp_path / "results")
    names = ["cand"]
    if case == "one_run":
        add_run(s, "cand", 0, 3.37)
        add_run(s, "base", 0, 3.40)
    elif case == "all_failed":
        add_run(s, "cand", 0, None, status="crashed", error="Traceback: boom")
        add_run(s, "base", 0, None, status="oom", error="CUDA out of memory")
    elif case == "single_variant":
        for seed in range(3):
            add_run(s, "base", seed, 3.40 + seed / 1000)
        names = ["base"]
    elif case == "reference_without_runs":
        for seed in range(3):
            add_run(s, "cand", seed, 3.37 + seed / 1000)
    runs, epochs = tables(s)
    data = R.build_report(runs, epochs, names, INFOS)
    paths = R.write_report(data, tmp_path / "rep")
    md = paths["markdown"].read_text()
    no_nan(md)
    json.loads(paths["summary"].read_text(), parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert paths["trajectory"].stat().st_size > 5_000 and paths["delta"].stat().st_size > 5_000
    if case in ("one_run", "all_failed", "empty_known_variant", "reference_without_runs"):
        assert data.comparisons[0].verdict == "not enough runs"
        assert "needs >= 2 complete runs per side" in md
    if case in ("all_failed", "empty_known_variant"):
        assert "No complete runs" in md
    if case == "all_failed":
        assert "CUDA out of memory" in md and "Traceback: boom" in md
    if case == "single_variant":
        assert "No comparison" in md and data.summaries[0].n == 3
    if case == "one_run":
        assert data.summaries[0].n == 1 and data.summaries[0].std is None


def test_bad_input_writes_nothing(store: Store, tmp_path: Path):
    runs, epochs = tables(store)
    out = tmp_path / "never"
    for kwargs in [dict(variants=["nope"]), dict(variants=["cand"], metric="val_acc"), dict(variants=["cand"], alpha=1.5),
                   dict(variants=["cand"], track="upstream"), dict(variants=["cand"], record=float("nan")),
                   dict(variants=["cand"], min_effect=float("nan")), dict(variants=["cand"], min_effect=float("inf")),
                   dict(variants=["cand"], metric="tokens_per_s", record=1000.0), dict(variants=["cand"], extra_args="--nope")]:  # fmt: skip
        with pytest.raises(UserError):
            R.write_report(R.build_report(runs, epochs, infos=INFOS, **kwargs), out)
    assert not out.exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        R.write_report(R.build_report(runs, epochs, ["cand"], INFOS), tmp_path / "afile")


def test_mixed_tracks_and_configs_are_separated_and_said(tmp_path: Path):
    s = Store(tmp_path / "results")
    for seed in range(3):
        add_run(s, "base", seed, 3.40 + seed / 1000, ended="2026-07-02T00:00:00Z")
        add_run(s, "cand", seed, 3.37 + seed / 1000, config="old", ended="2026-06-01T00:00:00Z")
        add_run(s, "cand", seed, 3.38 + seed / 1000, config="new", ended="2026-07-03T00:00:00Z")
        add_run(s, "cand", seed, 3.19 + seed / 1000, track="upstream", hardware="8xH100", ended="2026-05-01T00:00:00Z")
    runs, epochs = tables(s)
    data = R.build_report(runs, epochs, ["cand"], INFOS)
    assert data.track == "mini"
    sel = data.selections["cand"]
    assert sel.config_key == "new" and sel.n == 3
    md = R.render_markdown(data)
    assert "other tracks ignored" in md and "most recent" in md and "2 configurations" in md
    up = R.build_report(runs, epochs, ["cand"], INFOS, track="upstream")
    assert up.selections["cand"].n == 3 and up.selections["base"].n == 0
    # upstream track: the claim is checked against the upstream runs
    assert up.claim_checks and up.claim_checks[0].verdict == "claim worse than reproduced"


def test_secrets_never_reach_the_report(store: Store, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecretvalue123")
    add_run(store, "cand", 7, None, status="crashed", error="auth failed for hf_supersecretvalue123")
    runs, epochs = tables(store)
    paths = R.write_report(R.build_report(runs, epochs, ["cand"], INFOS), tmp_path / "rep")
    for p in paths.values():
        if p.suffix in (".md", ".json", ".csv"):
            assert "hf_supersecretvalue123" not in p.read_text()
    assert "HF_TOKEN redacted" in paths["markdown"].read_text()


def test_terminal_tables(store: Store):
    runs, epochs = tables(store)
    data = R.build_report(runs, epochs, ["cand", "other"], INFOS)
    con = Console(record=True, width=140)
    R.print_tables(data, con)
    text = con.export_text()
    assert "cand vs base: real gain" in text and "min_val_loss per variant" in text
    assert "other" in text  # a variant with no runs is still shown


def test_sigma_from_runs(store: Store):
    runs, _ = tables(store)
    sigma, n = R.sigma_from_runs(runs, "base")
    assert n == 4 and sigma == pytest.approx(runs[(runs.variant == "base") & (runs.status == "ok")]["min_val_loss"].std())
    with pytest.raises(UserError):
        R.sigma_from_runs(runs, "missing")


# --------------------------------------------------------------------------- the real CLI


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "PYTHONPATH": str(ROOT)})  # fmt: skip


def test_cli_report_and_plan(store: Store, tmp_path: Path):
    vdir = tmp_path / "variants"
    vdir.mkdir()
    for name, extra in [("base", ""), ("cand", 'compare_to = "base"\n')]:
        (vdir / f"{name}.toml").write_text(f'name = "{name}"\ndescription = "d"\n{extra}[track]\nname = "mini"\n\n[mini]\nargs = []\n')
    r = cli("report", "cand", "--results", str(store.root), "--variants", str(vdir), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["comparisons"][0]["verdict"] == "real gain"
    assert (tmp_path / "reports" / "cand" / "REPORT.md").is_file()
    assert "real gain" in r.stderr  # human tables go to stderr with --json
    bad = cli("report", "nope", "--results", str(store.root), "--variants", str(vdir), "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert bad.returncode == 2 and "unknown variant" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()
    p = cli("plan", "--effect", "0.001", "--from", "base", "--results", str(store.root), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert plan["n_per_side"] >= 2 and "4 runs of base" in plan["sigma_basis"]
    txt = cli("plan", "--effect", "0.001", "--sigma", "0.0012", cwd=tmp_path)
    assert txt.returncode == 0 and txt.stdout.startswith("24 seeds per side")
    assert cli("plan", "--effect", "0.001", cwd=tmp_path).returncode == 2


def test_plan_from_runs_with_paired_uses_the_std_of_a_difference(store: Store):
    from harness.stats import plan_seeds

    runs, _ = tables(store)
    s1, b1 = R.sigma_basis(runs, "base", "min_val_loss", None, paired=False)
    s2, b2 = R.sigma_basis(runs, "base", "min_val_loss", None, paired=True)
    assert "4 runs of base" in b1 and s2 == pytest.approx(s1 * np.sqrt(2)) and "sqrt(2)" in b2
    # per-run sigma taken as the std of differences would halve the seeds; with nothing shared, pairing gains ~nothing
    assert plan_seeds(0.003, s2, paired=True).n_per_side >= plan_seeds(0.003, s1).n_per_side - 1


def test_bad_input_messages_say_what_to_do(store: Store, tmp_path: Path):
    runs, epochs = tables(store)
    with pytest.raises(UserError, match="unknown variant\\(s\\): cnad; did you mean cand"):
        R.build_report(runs, epochs, ["cnad"], INFOS)
    with pytest.raises(UserError, match="--min-effect must be a finite number"):
        R.build_report(runs, epochs, ["cand"], INFOS, min_effect=float("nan"))
    empty = Store(tmp_path / "empty")
    with pytest.raises(UserError, match="has no runs and no variant was named"):
        R.build_report(*tables(empty), (), INFOS)


def test_runs_with_other_extra_args_are_never_compared(tmp_path: Path):
    # Smoke-sized runs of cand are newer than its full runs; base has full runs only. Comparing
    # cand's newest (smoke) runs with base's full ones would call a huge, meaningless regression.
    s = Store(tmp_path / "results")
    for seed in range(3):
        add_run(s, "base", seed, 3.40 + seed / 1000, extra=[])
        add_run(s, "cand", seed, 3.37 + [0.001, -0.0005, 0.0025][seed], extra=[])
        add_run(s, "cand", seed, 5.00 + seed / 1000, config="cand-smoke", extra=["--preset", "smoke"], ended="2026-07-02T00:00:00Z")
    runs, epochs = tables(s)
    assert set(runs["extra_args"]) == {"", "--preset smoke"}
    newest = R.build_report(runs, epochs, ["cand"], INFOS)
    assert newest.extra_args == "--preset smoke" and newest.selections["base"].n == 0
    assert newest.comparisons[0].verdict == "not enough runs"
    assert any("6 run(s) made with other --extra-args set aside" in n for n in newest.notes)
    full = R.build_report(runs, epochs, ["cand"], INFOS, extra_args="")
    assert full.selections["cand"].n == 3 and full.comparisons[0].verdict == "real gain"
    assert full.comparisons[0].diff == pytest.approx(-0.03)
    # the reference's newer runs do not decide: the report is about cand
    add_run(s, "base", 7, 3.9, config="base-tiny", extra=["--preset", "tiny"], ended="2026-07-05T00:00:00Z")
    assert R.build_report(*tables(s), ["cand"], INFOS).extra_args == "--preset smoke"
    md = R.render_markdown(newest)
    assert "runs with extra args `--preset smoke`" in md and json.loads(json.dumps(R.summary_dict(full)))["extra_args"] == ""


def test_terminal_says_when_there_are_no_complete_runs(tmp_path: Path):
    s = Store(tmp_path / "results")
    add_run(s, "cand", 0, None, status="crashed", error="boom")
    con = Console(record=True, width=140)
    R.print_tables(R.build_report(*tables(s), ["cand"], INFOS), con)
    assert "no complete runs" in con.export_text()


def test_cli_report_without_a_variants_folder_says_why_nothing_is_compared(store: Store, tmp_path: Path):
    r = cli("report", "cand", "--results", str(store.root), "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "no variants folder at variants" in r.stdout and "no variants folder" in (tmp_path / "rep" / "REPORT.md").read_text()
    r = cli("report", "cand", "--results", str(store.root), "--variants", str(tmp_path / "nope"), "--out", str(tmp_path / "r2"), cwd=tmp_path)
    assert r.returncode == 2 and "variants folder" in r.stderr and not (tmp_path / "r2").exists()
