"""`harness check` end to end on the mini track: real smoke-sized training runs, a real store, the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SMOKE = '["--preset", "smoke", "--threads", "1", "--num-epochs", "1"]'  # ~2 s per run on one core


def _variant(vdir: Path, name: str, args: str, upstream: str = "") -> None:
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / f"{name}.toml").write_text(
        f'name = "{name}"\ndescription = "test"\n[track]\nname = "mini"\n{upstream}[mini]\nargs = {args}\n'
    )


def _check(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    env.pop("GITHUB_STEP_SUMMARY", None) if not env_extra or "GITHUB_STEP_SUMMARY" not in env_extra else None
    return subprocess.run([sys.executable, "-m", "harness.cli", "check", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("check")
    vdir = root / "variants"
    _variant(vdir, "base", SMOKE)
    # test-only handicap: 2 optimizer steps instead of a full epoch
    _variant(vdir, "slow", SMOKE.replace('"1"]', '"1", "--max-steps", "2"]'))
    return {"variants": vdir, "results": root / "results", "root": root}


def _common(w: dict[str, Path]) -> list[str]:
    return ["--variants", str(w["variants"]), "--results", str(w["results"]), "--track", "mini"]


def _runs(w: dict[str, Path]) -> list[Path]:
    return sorted(w["results"].glob("*/*/run.json"))


@pytest.mark.slow
def test_aa_passes_no_regression_then_claims_no_gain_reusing_runs(world: dict[str, Path]) -> None:
    summary = world["root"] / "summary.md"
    r = _check("--aa", "--against", "base", "--mode", "no-regression", "--margin", "0.5", "--seeds", "3",
               "--max-seeds", "4", "--json", *_common(world), env_extra={"GITHUB_STEP_SUMMARY": str(summary)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verdict"] == "pass" and out["verdict_words"] == "no regression"
    assert out["runs_launched"] == 6 and out["runs_reused"] == 0
    # A/A: the candidate side is the baseline at other seeds, paired 1000+i with i
    assert [(p["candidate_seed"], p["baseline_seed"]) for p in out["pairs"]] == [(1000, 0), (1001, 1), (1002, 2)]
    assert out["difference"]["ci_low"] < 0 < out["difference"]["ci_high"]
    md = summary.read_text()
    assert "**PASS** (no regression)" in md and "| 1 | 1000/0 |" in md and "CPU-hours" in md
    assert "http" not in md  # link-free
    assert "PASS (no regression)" in r.stderr  # the verdict line
    n_before = len(_runs(world))

    # the same A/A in gain mode must not claim a gain; all six stored runs are reused
    r = _check("--aa", "--against", "base", "--mode", "gain", "--margin", "0.5", "--seeds", "3", "--max-seeds", "4",
               "--json", *_common(world))
    out = json.loads(r.stdout)
    assert out["verdict"] != "pass" and r.returncode in (1, 3), r.stderr
    assert out["runs_reused"] >= 6
    assert "reusing 6 stored run(s)" in r.stderr
    assert len(_runs(world)) - n_before == out["runs_launched"] <= 2

    # without --mode, an A/A check is a no-regression check: its pass is the calibration
    r = _check("--aa", "--against", "base", "--margin", "0.5", "--seeds", "3", "--max-seeds", "4", "--json", *_common(world))
    out = json.loads(r.stdout)
    assert out["rule"]["mode"] == "no-regression" and r.returncode == 0 and out["runs_launched"] == 0, r.stderr


@pytest.mark.slow
def test_handicap_caught_as_regression_reusing_baseline(world: dict[str, Path]) -> None:
    before = {p.parent.name for p in _runs(world)}
    r = _check("slow", "--against", "base", "--mode", "no-regression", "--margin", "0.5", "--seeds", "3",
               "--max-seeds", "4", *_common(world))
    assert r.returncode == 1, r.stdout + r.stderr
    text = r.stdout + r.stderr
    assert "FAIL (regression)" in text
    new = {p.parent.parent.name for p in _runs(world) if p.parent.name not in before}
    if before:  # the A/A test ran first: its baseline seeds 0-2 are reused, only the candidate ran
        assert "reusing 3 stored run(s) with matching provenance: baseline seed 0, baseline seed 1, baseline seed 2" in text
        assert new == {"slow"}
        assert "| 1 | 0/0 |" in text and "ran/reused" in text
    else:  # run alone (-k): both sides ran, interleaved candidate, baseline, candidate, baseline
        assert new == {"slow", "base"} and "reusing" not in text
        assert "round 1: running 6 run(s): candidate seed 0, baseline seed 0, candidate seed 1, baseline seed 1" in text


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t"}).stdout.strip()


@pytest.fixture
def upstream_world(tmp_path: Path) -> dict[str, Path]:
    repo = tmp_path / "up"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("print('hello')\nlr = 0.1\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "c1")
    sha = _git(repo, "rev-parse", "HEAD")
    vdir = tmp_path / "variants"
    up = f'[upstream]\nrepo = "{repo}"\ncommit = "{sha}"\nscript = "train.py"\nnproc_per_node = 1\n'
    _variant(vdir, "base", SMOKE, upstream=up)
    bad = tmp_path / "bad.patch"
    bad.write_text("--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n print('hello')\n-lr = 0.5\n+lr = 0.2\n")
    return {"variants": vdir, "results": tmp_path / "results", "bad_patch": bad, "cache": tmp_path / "cache"}


def _bad(args: list[str], w: dict[str, Path], match: str, track: str = "mini") -> None:
    r = _check(*args, "--variants", str(w["variants"]), "--results", str(w["results"]), "--track", track,
               env_extra={"HARNESS_CACHE": str(w.get("cache", w["results"].parent / "cache"))}, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and match in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not list(w["results"].glob("*/*/run.json")), "bad input must run nothing"


def test_bad_input_exit_2_nothing_run(upstream_world: dict[str, Path]) -> None:
    w = upstream_world
    _bad(["base", "--against", "base"], w, "identical to baseline")
    _bad(["--aa", "--against", "base", "--alpha", "0.5"], w, "--alpha must be in (0, 0.5)")
    _bad(["--aa", "--against", "base", "--alpha", "0"], w, "--alpha")
    _bad(["--aa", "--against", "base", "--seeds", "5", "--max-seeds", "4"], w, "--max-seeds (4) must be at least --seeds (5)")
    _bad(["nosuch", "--against", "base"], w, "unknown variant 'nosuch'")
    _bad(["--against", "base"], w, "name a CANDIDATE")
    _bad(["--against", "base", "--ref", "no-such-branch"], w, "--ref no-such-branch", track="upstream")
    _bad(["--against", "base", "--patch", str(w["bad_patch"])], w, "does not apply", track="upstream")
    _bad(["--against", "base", "--patch", str(w["bad_patch"])], w, "--track upstream")  # mini has no upstream code


def test_ref_resolves_branch_and_pull_ref(upstream_world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.check import resolve_ref

    monkeypatch.setenv("HARNESS_CACHE", str(upstream_world["cache"]))
    toml = (upstream_world["variants"] / "base.toml").read_text()
    repo = Path(toml.split('repo = "')[1].split('"')[0])
    (repo / "train.py").write_text("print('hello')\nlr = 0.2\n")
    _git(repo, "commit", "-q", "-am", "pr")
    pr_sha = _git(repo, "rev-parse", "HEAD")
    _git(repo, "update-ref", "refs/pull/7/head", pr_sha)
    _git(repo, "reset", "-q", "--hard", "HEAD~1")
    _git(repo, "branch", "feature", pr_sha)
    assert resolve_ref(str(repo), "refs/pull/7/head") == pr_sha
    assert resolve_ref(str(repo), "feature") == pr_sha
    assert resolve_ref(str(repo), pr_sha[:10]) == pr_sha
