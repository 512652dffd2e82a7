"""Parser tests on recorded lines of every upstream log format and on whole logs of each script family."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness import logs
from harness.errors import UserError
from harness.logs import parse_line, parse_log, parse_progress, parse_result_json

FIX = Path(__file__).parent / "fixtures" / "logs"
REPO = Path(__file__).resolve().parents[1]


def _format_rows() -> list[tuple[str, str, dict]]:
    rows = []
    for raw in (FIX / "format_lines.tsv").read_text().splitlines():
        if raw.startswith("#") or not raw.strip():
            continue
        cid, line, expected = raw.split("\t")
        rows.append((cid, line, json.loads(expected)))
    return rows


FORMAT_ROWS = _format_rows()

# Every id in the catalog's section 1a (core scripts) and its PR-only notes must have a recorded line.
CATALOG_IDS = {
    "V0", "V0r", "V1", "V1r", "V1f", "L0", "L1", "L2", "L3", "E1", "E2", "T1", "T2", "S1", "S2", "S3",
    "U1", "U2", "U3", "U4a", "U4b", "U4c", "U4d", "P1", "P2", "P3", "P3t", "P3u", "P4", "P5", "P5t",
    "X1", "X2", "X3", "M1", "D1", "D2", "D3", "W1", "R1", "C1", "C2", "C3", "J1", "J2", "J4", "H1",
    "PR52", "PR63", "PR19", "PR67", "PR78", "PR95-val", "PR95-step", "PR95-cap", "MINI", "MINI-div",
}


def test_every_catalog_format_has_a_fixture_line() -> None:
    assert CATALOG_IDS <= {cid for cid, _, _ in FORMAT_ROWS}


@pytest.mark.parametrize("cid,line,expected", FORMAT_ROWS, ids=[f"{r[0]}-{i}" for i, r in enumerate(FORMAT_ROWS)])
def test_format_line(cid: str, line: str, expected: dict) -> None:
    ev = parse_line(line)
    assert ev is not None, f"{cid} not recognised: {line!r}"
    for key, want in expected.items():
        got = getattr(ev, key)
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-12), key
        else:
            assert got == want, key
    # fields the expectation leaves out are absent, so a line can't silently carry a wrong extra figure
    for key in ("step", "epoch", "val_loss", "val_bpb", "train_loss", "value", "model"):
        if key not in expected:
            assert getattr(ev, key) is None, key


def test_thousands_commas_in_tok_sec() -> None:
    ev = parse_line("step 00421 (3.25%) | loss: 4.127733 | dt: 412.08ms | tok/sec: 1,272,345 | bf16_mfu: 0.00%")
    assert ev is not None and ev.value == 1272345.0


@pytest.mark.parametrize("noise", [
    "", "   ", "Traceback (most recent call last):", "  File \"train.py\", line 12, in <module>",
    "W0702 10:15:01.123000 1234 torch/distributed/run.py:793] *****", "Step 00012 | Epoch", "step 0001",
    "Stepping into the void", "[rank1]: RuntimeError: NCCL error", "Total wall time: soon", "wandb: Tracking run",
])
def test_noise_is_ignored(noise: str) -> None:
    assert parse_line(noise) is None


# ------------------------------------------------------------------------------------------- whole logs
def _parse(name: str) -> logs.ParsedLog:
    return parse_log((FIX / name).read_text())


def test_two_hour_head_log_metrics() -> None:
    p = _parse("two_hour_head.log")
    m = p.metrics
    assert [(e.epoch, e.step, e.val_loss, e.val_bpb) for e in m.epochs] == [
        (0, 0, 10.832571, 3.302147), (1, 2, 5.191562, 1.586322), (2, 4, 4.210001, 1.286322), (3, 6, 3.915562, 1.196322)]
    assert (m.initial_val_loss, m.initial_val_bpb) == (10.832571, 3.302147)
    assert (m.final_val_loss, m.final_val_bpb) == (3.915562, 1.196322)
    assert (m.min_val_loss, m.min_val_bpb) == (3.888458, 1.188002)  # the script's own Min val lines
    assert m.logit_avg == {"equal": {"val_loss": 3.895001, "val_bpb": 1.190001},
                           "weighted": {"val_loss": 3.888458, "val_bpb": 1.188002}}
    assert (m.logit_avg_loss, m.logit_avg_bpb) == (3.888458, 1.188002)
    assert m.final_train_loss == 3.802201
    assert m.training_time_s == pytest.approx(3.6)
    assert m.wall_time_s == 312.45
    assert m.peak_memory_mib == 61234.56
    assert m.tokens_per_s == 761103.0  # median of the seven step lines
    assert m.steps == 6 and not m.early_stopped and not p.diverged
    assert p.result_path == "result.json"


def test_epoch_attribution_around_boundaries() -> None:
    # "Starting epoch k+1" comes before the step line of epoch k's last step; the final "Starting epoch 4" is never trained.
    p = _parse("two_hour_head.log")
    assert [(e.step, e.epoch) for e in p.events if e.kind == "step"] == [(0, 1), (1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3)]
    assert [e.epoch for e in p.events if e.kind == "epoch_start"] == [1, 2, 3, 4]
    order = [e.fmt for e in p.events if e.fmt in ("M1", "S1", "S2", "V1")]
    assert order[3:7] == ["M1", "S1", "V1", "S2"]  # Starting epoch 2, step 2, Epoch 1 val, step 3


def test_tiny_recurrent_log() -> None:
    p = _parse("tiny_recurrent.log")
    m = p.metrics
    assert [e.epoch for e in m.epochs] == [0, 1, 2]
    assert [e.fmt for e in p.events if e.kind == "val"] == ["V0r", "V1r", "V1r"]
    assert (m.min_val_loss, m.min_val_bpb) == (3.853698, 1.174823)
    assert m.logit_avg == {"ema": {"val_loss": 3.859402, "val_bpb": 1.176511},
                           "ckpt_avg": {"val_loss": 3.854451, "val_bpb": 1.175002}}
    assert m.logit_avg_loss == 3.854451
    assert m.wall_time_s == 401.2  # "Total wall time" wins over tiny's "Wall clock time"
    assert m.training_time_s == pytest.approx(330.6)
    assert any(e.fmt == "X2" for e in p.events) and not m.early_stopped
    assert [e.value for e in p.events if e.fmt == "R1"] == [4.0]


def test_root_early_stop_and_pre_logit_avg_era() -> None:
    m = _parse("root_early_stop.log").metrics
    assert m.early_stopped
    assert m.final_val_loss == 4.222076  # last per-epoch eval, not the better blend
    assert m.min_val_loss == 4.190110
    assert set(m.logit_avg) == {"Blend(0.5*final+0.5*EMA 0.999)", "ckpt_avg"}
    assert m.logit_avg_loss == 4.190110
    assert m.wall_time_s is None  # that era printed no wall time


def test_unlimited_old_ensemble_log() -> None:
    p = _parse("unlimited_ensemble_old.log")
    m = p.metrics
    assert m.epochs == []  # per-model series stay events
    assert [(e.model, e.epoch, e.val_loss) for e in p.events if e.fmt == "U2"] == [(1, 1, 4.210001), (2, 1, 4.189312), (3, 1, 4.186040)]
    # the script's final result is the figure, even though a running ensemble scored lower
    assert (m.logit_avg_loss, m.logit_avg_bpb) == (4.071483, 1.244001)
    assert m.logit_avg["ensemble (2 models)"] == {"val_loss": 4.091149, "val_bpb": 1.250010}
    assert m.wall_time_s == pytest.approx(3723.4)
    assert m.tokens_per_s == 1200000.0
    assert not m.early_stopped and any(e.kind == "model_early_stop" and e.model == 2 for e in p.events)
    assert [e.extra["seed"] for e in p.events if e.kind == "model_start"] == [42, 43, 44]


def test_unlimited_snapshot_log() -> None:
    p = _parse("unlimited_snapshot_new.log")
    m = p.metrics
    u3 = [e for e in p.events if e.fmt == "U3"]
    assert [(e.model, e.extra["node"], e.extra["cycle"], e.extra["distilled"], e.extra["dupe"]) for e in u3] == [
        (1, 0, 1, False, False), (2, 1, 1, False, False), (3, 0, 2, True, False), (4, 1, 2, True, True)]
    assert m.logit_avg == {"final grad ensemble (sparse, k=2)": {"val_loss": 3.120343, "val_bpb": 0.951244}}
    assert m.logit_avg_loss == 3.120343
    assert m.wall_time_s == 2712.0
    assert sum(e.fmt == "P3u" for e in p.events) == 1  # printed by every node, kept once
    assert [e.label for e in p.events if e.kind == "grad_sweep"] == ["k=1", "k=2"]


def test_pr95_jepa_log() -> None:
    m = _parse("pr95_jepa.log").metrics
    assert m.epochs == []
    assert (m.initial_val_loss, m.final_val_loss, m.min_val_loss) == (10.833, 3.1402, 3.1402)
    assert m.training_time_s == 7199.0
    assert m.steps == 2  # last step line


def test_mini_diverged_log() -> None:
    p = _parse("mini_diverged.log")
    assert p.diverged
    assert p.data_sha256 == "3f5a0c1e9b7d2468ace013579bdf2468ace013579bdf2468ace013579bdf2468"
    assert p.metrics.steps == 42
    assert p.metrics.final_train_loss is None and p.metrics.final_val_loss is None


def test_nan_val_never_reaches_metrics() -> None:
    text = ("Step 00000 | Val BPB: 3.302147 | Val Loss: 10.832571\n"
            "Step 00010 | Epoch 1 | Val BPB: nan | Val Loss: nan\n"
            "Min val Loss: inf\nFinal train loss: nan\n")
    p = parse_log(text)
    assert p.diverged
    values = [v for v in vars(p.metrics).values() if isinstance(v, float)]
    assert all(math.isfinite(v) for v in values)
    assert [e.epoch for e in p.metrics.epochs] == [0]
    assert p.metrics.final_train_loss is None and p.metrics.min_val_loss is None


# ------------------------------------------------------------------------------------------- robustness
def _metrics_dict(p: logs.ParsedLog) -> dict:
    return vars(p.metrics) | {"epochs": [vars(e) for e in p.metrics.epochs]}


def test_noisy_multirank_log_parses_like_the_clean_one() -> None:
    clean = (FIX / "two_hour_head.log").read_text()
    lines = clean.splitlines()
    noisy: list[str] = []
    for i, line in enumerate(lines):
        # torchrun --tee prefixes, the same line from a second rank one line later, ANSI colour, stderr noise
        noisy.append(f"[default0]:\x1b[32m{line}\x1b[0m")
        if i % 3 == 0:
            noisy.append("[rank1]:[W702 10:15:02.000] ProcessGroupNCCL.cpp:4115] Warning: barrier() using device")
        if i > 0:
            noisy.append(f"[default1]:{lines[i - 1]}")
    noisy.append("  0%|          | 0/10 [00:00<?, ?it/s]\r 50%|#####     | 5/10\r100%|##########| 10/10")
    text = "\r\n".join(noisy) + "\r\n"
    assert _metrics_dict(parse_log(text)) == _metrics_dict(parse_log(clean))


def test_spliced_lines_from_two_ranks() -> None:
    text = ("Step 00000 | Val BPB: 3.302147 | Val Loss: 10.832571\n"
            "step 00003 (50.00%) | loss: 5.220133 | dt: 690.00ms | tok/sec: 760,000 | bf16_mfu: 0.00% [DUPE]"
            "Step 00004 | Epoch 2 | Val BPB: 1.286322 | Val Loss: 4.210001\n"
            "Step 00006 | Epoch 3 | Val BPB: 1.196322 | Val Loss: 3.9Starting epoch 4\n")
    p = parse_log(text)
    assert [(e.epoch, e.val_loss) for e in p.metrics.epochs] == [(0, 10.832571), (2, 4.210001)]  # epoch 3 was cut
    assert [e.step for e in p.events if e.kind == "step"] == [3]
    assert [e.epoch for e in p.events if e.kind == "epoch_start"] == [4]


def test_truncated_log_never_yields_a_half_printed_number() -> None:
    full = (FIX / "two_hour_head.log").read_text()
    truth = {e.val_loss for e in parse_log(full).events} | {e.val_bpb for e in parse_log(full).events} | \
        {e.value for e in parse_log(full).events} | {e.train_loss for e in parse_log(full).events}
    truth.discard(None)
    scalar = ("initial_val_loss", "final_val_loss", "final_val_bpb", "min_val_loss", "min_val_bpb", "logit_avg_loss",
              "final_train_loss", "training_time_s", "wall_time_s", "peak_memory_mib")
    for cut in range(len(full) - 1500, len(full)):
        m = parse_log(full[:cut]).metrics
        for k in scalar:
            v = getattr(m, k)
            assert v is None or v in truth or v == pytest.approx(3.6), (cut, k, v)
        assert all(e.val_loss in truth and e.val_bpb in truth for e in m.epochs), cut


def test_same_epoch_reported_twice_keeps_the_later_value() -> None:
    text = ("Step 00002 | Epoch 1 | Val BPB: 1.586322 | Val Loss: 5.191562\n"
            "Step 00002 | Epoch 1 | Val BPB: 1.586000 | Val Loss: 5.190000\n")
    assert [(e.epoch, e.val_loss) for e in parse_log(text).metrics.epochs] == [(1, 5.19)]


def test_min_val_falls_back_to_all_evals_and_bytes_input() -> None:
    text = (b"Step 00000 | Val BPB: 3.302147 | Val Loss: 10.832571\n"
            b"Step 00002 | Epoch 1 | Val BPB: 1.586322 | Val Loss: 5.191562\n"
            b"  [equal] Val BPB: 1.500001 | Val Loss: 5.100001\n")
    m = parse_log(text).metrics  # type: ignore[arg-type]
    assert (m.min_val_loss, m.min_val_bpb) == (5.100001, 1.500001)
    assert m.final_val_loss == 5.191562


# ------------------------------------------------------------------------------------------- progress
def test_parse_progress() -> None:
    pr = parse_progress("step 10015 (77.16%) | loss: 3.080112 | dt: 631.44ms | tok/sec: 830,332 | bf16_mfu: 0.00% [DUPE] | eta: 20.4m")
    assert pr == logs.Progress(step=10015, pct=77.16, eta_s=pytest.approx(1224.0), train_loss=3.080112)
    pr = parse_progress("Step 01284 | Epoch 1 | Val BPB: 1.186322 | Val Loss: 3.891562")
    assert pr is not None and (pr.step, pr.val_loss, pr.epoch) == (1284, 3.891562, None)
    assert parse_progress("Starting epoch 3") == logs.Progress(epoch=3)
    pr = parse_progress("step:3000/6200  val_loss:3.2841  val_bpb:1.0012  train_time:3512345ms  step_avg:1170.8ms")
    assert pr is not None and pr.pct == pytest.approx(100 * 3000 / 6200) and pr.val_loss == 3.2841
    pr = parse_progress("step 00042 (70.00%) | loss: nan | dt: 12.10ms | tok/sec: 42,300 | bf16_mfu: 0.00%")
    assert pr is not None and pr.train_loss is None and pr.step == 42
    assert parse_progress("Peak memory: 61234.56 MiB") is None
    assert parse_progress("some warning from NCCL") is None


# ------------------------------------------------------------------------------------------- result JSON
def test_result_json_limited_era() -> None:
    r = parse_result_json(FIX / "result_two_hour.json")
    assert (r["kind"], r["val_loss"], r["best_val_loss"]) == ("limited", 3.145002, 3.139442)
    assert r["window_schedule"].startswith("1-6:")
    assert parse_result_json('{"val_loss": 3.2, "best_val_loss": NaN}')["best_val_loss"] is None


def test_result_json_unlimited_eras() -> None:
    old = parse_result_json(str(FIX / "result_unlimited_old.json"))
    assert (old["kind"], old["val_loss"], old["val_bpb"]) == ("unlimited", 4.071483, 1.244001)
    assert (old["best_val_loss"], old["best_val_bpb"]) == (4.058814, 1.24013)
    new = parse_result_json((FIX / "result_unlimited_new.json").read_text())
    assert (new["val_loss"], new["best_val_loss"]) == (3.319561, 3.313)
    assert new["config"] == {"num_models": 4, "epochs_per_cycle": 2.0}


def test_result_json_fills_what_a_truncated_log_lost() -> None:
    p = parse_log("Step 00000 | Val BPB: 3.302147 | Val Loss: 10.832571\n", result_json=FIX / "result_two_hour.json")
    assert p.result_json is not None and p.metrics.min_val_loss == 10.832571  # the log's own eval wins
    p = parse_log("noise only\n", result_json=FIX / "result_two_hour.json")
    assert (p.metrics.min_val_loss, p.metrics.final_val_loss) == (3.139442, 3.145002)


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '{"matrix_lr": 0.04}'])
def test_result_json_bad_input(bad: str, tmp_path: Path) -> None:
    f = tmp_path / "r.json"
    f.write_text(bad)
    with pytest.raises(UserError):
        parse_result_json(f)


def test_result_json_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read"):
        parse_result_json(tmp_path / "absent.json")


# ------------------------------------------------------------------------------------------- frame + CLI
def test_metrics_to_frame() -> None:
    df = logs.metrics_to_frame(_parse("two_hour_head.log"))
    assert list(df.columns) == ["epoch", "step", "val_loss", "val_bpb"]
    assert df["epoch"].tolist() == [0, 1, 2, 3] and df["val_loss"].iloc[-1] == 3.915562
    assert logs.metrics_to_frame(_parse("pr95_jepa.log")).empty


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The real CLI entry point, in-process (a subprocess per call costs seconds of imports on this machine)."""
    from harness.cli import main

    rc = main(["parse", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_parse_json_csv_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    log = str(FIX / "tiny_recurrent.log")
    rc, out, err = _cli(capsys, log, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["summary"]["min_val_loss"] == 3.853698 and [e["epoch"] for e in doc["epochs"]] == [0, 1, 2]
    assert {"V0r", "V1r", "S3", "T1", "T2", "P5t", "R1"} <= set(doc["formats"])
    rc, out, err = _cli(capsys, log, "--csv")
    assert rc == 0, err
    epochs_csv, summary_csv = out.split("\n\n")
    assert pd.read_csv(io.StringIO(epochs_csv))["val_loss"].tolist() == [10.832052, 4.599443, 3.90337]
    summary = pd.read_csv(io.StringIO(summary_csv)).set_index("metric")["value"]
    assert float(summary["wall_time_s"]) == 401.2 and float(summary["logit_avg[ema].val_loss"]) == 3.859402
    rc, out, err = _cli(capsys, str(FIX / "two_hour_head.log"))
    assert rc == 0 and "logit_avg [weighted]" in out and "3.888458" in out


def test_cli_parse_bad_log_is_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _cli(capsys, str(tmp_path))  # a folder, not a file
    assert rc == 2 and "not a file" in err
    # one real subprocess: exit code 2 and a one-line message, no traceback
    r = subprocess.run([sys.executable, "-m", "harness.cli", "parse", str(tmp_path / "nope.log")],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.slow
def test_real_mini_trainer_output() -> None:
    # the mini trainer prints upstream's two_hour format plus its data line; run it for real and parse what it printed
    r = subprocess.run([sys.executable, "-m", "harness.mini.train", "--preset", "smoke", "--max-steps", "8", "--threads", "1"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    p = parse_log(r.stdout + r.stderr)
    sha_line = next(line for line in r.stdout.splitlines() if line.startswith("Mini data sha256: "))
    assert p.data_sha256 == sha_line.split()[3]
    printed_evals = [line for line in r.stdout.splitlines() if line.startswith("Step ") and "Val Loss" in line]
    assert len(p.metrics.epochs) == len(printed_evals) >= 2 and p.metrics.epochs[0].epoch == 0
    assert p.metrics.steps == 8 and not p.diverged
    m = p.metrics
    assert m.min_val_loss is not None and m.min_val_loss <= m.initial_val_loss
    assert m.training_time_s is not None and m.wall_time_s is not None and m.wall_time_s > 0
    assert m.tokens_per_s is not None and m.tokens_per_s > 0
    assert any(e.fmt == "PR78-stop" for e in p.events)
    steps = [parse_progress(line) for line in r.stdout.splitlines() if line.startswith("step ")]
    assert steps and all(s is not None and s.pct is not None and s.train_loss is not None for s in steps)


def test_benchmark_synthetic_log_parses_fully() -> None:
    # the speed benchmark's generator: a 22-epoch two_hour log with NCCL noise; the parse must see all of it
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from parse_speed import synthetic_two_hour_log
    finally:
        sys.path.pop(0)
    p = parse_log(synthetic_two_hour_log(steps=2200))
    m = p.metrics
    assert [e.epoch for e in m.epochs] == list(range(23))
    assert [e.step for e in m.epochs][1:] == [100 * k for k in range(1, 23)]
    assert sum(e.kind == "step" for e in p.events) == 2201
    assert (m.min_val_loss, m.logit_avg_loss, m.wall_time_s) == (3.139442, 3.139442, 7512.31)
    dupe_epochs = {e.epoch for e in p.events if e.kind == "step" and e.extra and e.extra.get("dupe")}
    assert min(dupe_epochs) == 14 and max(dupe_epochs) == 22


def test_cli_parse_result_json_alone_or_with_a_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the JSON --save-result wrote is parsed by `harness parse` too, alone or filling a truncated log
    rc, out, err = _cli(capsys, str(FIX / "result_two_hour.json"), "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["summary"]["min_val_loss"] == 3.139442 and doc["summary"]["final_val_loss"] == 3.145002
    assert doc["result_json"]["kind"] == "limited"
    cut = tmp_path / "cut.log"
    cut.write_text("Step 00000 | Val BPB: 3.302147 | Val Loss: 10.832571\nstep 1/99 | loss 7.1")
    rc, out, err = _cli(capsys, str(cut), "--result", str(FIX / "result_unlimited_new.json"), "--json")
    assert rc == 0, err
    assert json.loads(out)["result_json"]["kind"] == "unlimited"


def test_cli_parse_file_without_log_lines_is_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello\nnothing to see\n")
    rc, out, err = _cli(capsys, str(junk))
    assert rc == 2 and "no slowrun log lines" in err and out == ""
