"""The upstream track end to end on CPU: a fake slowrun script launched by real `torchrun
--nproc_per_node=2` (gloo), materialised by harness.source, run by the lead's runner, classified for real."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import fake_upstream as fu
from conftest import harness
from harness import upstream
from harness.runner import claim, execute_plan, plan_runs
from harness.spec import load_registry
from harness.store import Store


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One fake upstream, mirror and prepared data folder for the module (torchrun runs dominate the time)."""
    tmp = tmp_path_factory.mktemp("upstream")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp / "cache"))
        mp.setenv("HARNESS_DATA", str(tmp / "data"))
        mp.setenv("HARNESS_WORK", str(tmp / "work"))
        mp.setenv("SECRET_API_TOKEN", "hunter2-very-secret")
        fake = fu.build(tmp / "up")
        fu.write_variant(fake, "fake", fake.c1, patches=("muon.patch",))
        spec = load_registry(fake.variants).get("fake")
        upstream.prepare_data(spec)  # the commit's own prepare_data.py fills the shared data folder
        yield fake, spec, Store(tmp / "results")


def _run(spec, store, seed, mode, timeout_s=None):
    plan = plan_runs([spec], [seed], "upstream", store, ("--mode", mode), timeout_s=timeout_s)
    (p,) = plan.to_run
    assert claim(p, store)
    rec = execute_plan(p)
    return p, rec, Path(p.run_dir, "train.log").read_text()


def test_ok_run_seeded_patched_linked_and_recorded(env):
    fake, spec, store = env
    p, rec, log = _run(spec, store, 1234, "ok")
    wt = Path(p.cwd)
    assert p.command[1:4] == ["--standalone", "--nproc_per_node=2", "train.py"] and p.command[0].endswith("torchrun")
    assert rec.status == "ok", (rec.error, log[-2000:])
    assert rec.metrics.min_val_loss == pytest.approx(3.6) and [e.epoch for e in rec.metrics.epochs] == [0, 1, 2]
    assert rec.metrics.over_time_limit is False  # 0.01 min of a 120 min track
    # both ranks drew the same, seed-dependent weights (the seed is rank-independent and was changed)
    draws = [(wt / f"seed_check_rank{r}.txt").read_text() for r in (0, 1)]
    assert draws[0] == draws[1]
    assert "read 1664 bytes of training data" in log  # data reached through fineweb_data/
    up = rec.provenance["upstream"]
    assert "+torch.manual_seed(1234)" in up["seed_diff"] and "+    torch.cuda.manual_seed(1234)" in up["seed_diff"]
    assert up["commit"] == fake.c1 and up["patches"][0]["sha256"] and "# muon-r" in (wt / "train.py").read_text()
    assert rec.provenance["env"] == {"PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    stored = Path(p.run_dir, "run.json").read_text()
    assert "hunter2-very-secret" not in stored
    # a different seed gives different weights
    p2, rec2, _ = _run(spec, store, 7, "ok")
    assert rec2.status == "ok" and Path(p2.cwd, "seed_check_rank0.txt").read_text() != draws[0]


@pytest.mark.parametrize(
    "mode,status,why",
    [
        ("exit1", "failed", "exit code 1"),
        ("nan", "diverged", "NaN"),
        ("sigkill", "killed", "SIGKILL"),
        ("oom", "oom", "memory"),
        ("nccl", "nccl", "exit code"),
        ("crash", "crashed", "ValueError"),
    ],
)
def test_failure_classes_for_real(env, mode, status, why):
    _, spec, store = env
    _, rec, log = _run(spec, store, 3, mode)
    assert rec.status == status, (rec.error, log[-3000:])
    assert why.lower() in (rec.error or "").lower()


def test_timeout_stops_the_process_group(env):
    _, spec, store = env
    p, rec, log = _run(spec, store, 3, "hang", timeout_s=20)
    assert rec.status == "timeout" and "torch/distributed/run.py" in log  # partial log kept
    left = []  # no torchrun or worker may survive in the run's worktree
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd") == p.cwd:
                left.append(proc.name)
        except OSError:
            continue
    assert left == []


def test_cli_dry_run_and_preflight(env, tmp_path):
    fake, spec, store = env
    e = {"HARNESS_WORK": str(tmp_path / "work2")}
    r = harness("run", "fake", "--seeds", "2", "--track", "upstream", "--dry-run", "--variants", str(fake.variants),
                "--results", str(tmp_path / "res2"), env=e)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("worktree: ") == 2 and "+torch.manual_seed(1)" in r.stdout
    assert "--standalone --nproc_per_node=2 train.py" in r.stdout and "WANDB_MODE=disabled" in r.stdout
    assert not (tmp_path / "res2").exists() or not list((tmp_path / "res2").glob("*/*/run.json"))  # nothing run
    # a real run on this GPU-less machine stops in preflight: exit 2, one line, nothing stored
    r = harness("run", "fake", "--track", "upstream", "--variants", str(fake.variants), "--results", str(tmp_path / "res3"), env=e)
    assert r.returncode == 2 and "preflight failed" in r.stderr and "Traceback" not in r.stderr
    assert not list((tmp_path / "res3").glob("*/*/run.json"))


def test_cli_bad_patch_is_one_line(env, tmp_path):
    fake, _, _ = env
    fu.write_variant(fake, "broken", fake.c2, patches=("muon.patch",))
    r = harness("run", "broken", "--track", "upstream", "--dry-run", "--variants", str(fake.variants),
                "--results", str(tmp_path / "r"), env={"HARNESS_WORK": str(tmp_path / "w")})
    assert r.returncode == 2 and "muon.patch does not apply: train.py (hunk at line 53)" in r.stderr
    assert r.stderr.count("\n") == 1


def test_import_logs(env, tmp_path):
    fake, spec, store = env
    _, rec, log = _run(spec, store, 5, "ok")
    other = tmp_path / "author.log"
    other.write_text(log.replace("Min val Loss: 3.600000", "Min val Loss: 3.550000"))
    res = tmp_path / "imp"
    r = harness("import", str(other), "--variant", "fake", "--seed", "11", "--variants", str(fake.variants),
                "--results", str(res), "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["imported"] is True and row["seed"] == 11 and row["status"] == "ok"
    assert row["metrics"]["min_val_loss"] == pytest.approx(3.55)
    df = Store(res).load_table()
    assert list(df["imported"]) == [True] and df["min_val_loss"].iloc[0] == pytest.approx(3.55)
    again = harness("import", str(other), "--variant", "fake", "--variants", str(fake.variants), "--results", str(res))
    assert again.returncode == 0 and "already imported" in again.stdout and len(Store(res).load_table()) == 1
    bad = harness("import", str(tmp_path / "nope.log"), "--variant", "fake", "--variants", str(fake.variants), "--results", str(res))
    assert bad.returncode == 2 and "not found" in bad.stderr
