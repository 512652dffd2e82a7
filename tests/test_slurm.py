"""The Slurm executor against a real Slurm cluster (scripts/local-slurm.sh start) and its pure parts.

Tests marked `slurm` submit real mini-track runs as Slurm jobs; they are skipped only when `sinfo`
cannot reach a cluster. The rest (settings, classification, shared-folder check) run anywhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, harness, write_variant
from harness.errors import UserError
from harness.record import RunRecord
from harness.runner import plan_runs
from harness.slurm import (
    SlurmExecutor,
    SlurmSettings,
    apply_scheduler_state,
    check_shared,
    load_settings,
    parse_time_limit,
    query_states,
    slurm_reachable,
    status_rows,
)
from harness.spec import load_registry
from harness.store import Store

_REACHABLE, _WHY = slurm_reachable()
needs_slurm = pytest.mark.skipif(not _REACHABLE, reason=f"no Slurm cluster reachable ({_WHY}); run scripts/local-slurm.sh start")
FAST = ["--preset", "smoke", "--num-epochs", "1", "--max-steps", "3", "--threads", "1"]
SLOW = ["--preset", "smoke", "--num-epochs", "200", "--threads", "1"]  # runs until cancelled


@pytest.fixture
def variants(tmp_path: Path) -> Path:
    vdir = tmp_path / "variants"
    vdir.mkdir()
    write_variant(vdir, "fast", FAST)
    write_variant(vdir, "slow", SLOW)
    return vdir


def _records(results: Path) -> list[RunRecord]:
    return [RunRecord.from_dict(json.loads(p.read_text())) for p in sorted(results.glob("*/*/run.json"))]


def _sacct_state(job_id: str) -> str:
    return query_states([job_id])[job_id]["state"]


def _wait_for(pred, timeout: float = 120.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _slurm_run(variants: Path, results: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return harness("run", *extra, "--executor", "slurm", "--track", "mini", "--time-limit", "10",
                   "--variants", str(variants), "--results", str(results), timeout=timeout)  # fmt: skip


# ----------------------------------------------------------------------------- no cluster needed


def test_settings_from_file_and_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "harness.toml"
    cfg.write_text('[slurm]\npartition = "gpu"\naccount = "lm"\ntime_limit = "02:30:00"\ngpus_per_node = 8\n'
                   'sbatch = { qos = "high", constraint = "h100" }\n')  # fmt: skip
    s = load_settings(cfg, {"account": "other", "sbatch": None})
    assert (s.partition, s.account, s.time_limit_min, s.gpus_per_node) == ("gpu", "other", 150, 8)
    assert s.sbatch == {"qos": "high", "constraint": "h100"}
    assert parse_time_limit("1-00:00") == 1440 and parse_time_limit(5) == 5
    with pytest.raises(UserError, match="at least 2 minutes"):
        parse_time_limit(1)
    cfg.write_text('[slurm]\npartitoin = "gpu"\n')
    with pytest.raises(UserError, match="unknown \\[slurm\\] key"):
        load_settings(cfg)
    with pytest.raises(UserError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "state,before,status,words",
    [
        ("CANCELLED", "running", "interrupted", "cancelled"),
        ("CANCELLED", "pending", "interrupted", "cancelled"),
        ("PREEMPTED", "interrupted", "preempted", "--requeue"),
        ("TIMEOUT", "interrupted", "timeout", "time limit (30 min)"),
        ("OUT_OF_MEMORY", "killed", "oom", "host memory"),
        ("NODE_FAIL", "running", "crashed", "node n7 failed"),
        ("FAILED", "running", "failed", "before the run wrote"),
        ("COMPLETED", "ok", "ok", None),
        ("CANCELLED", "ok", "ok", None),  # finished before the cancel reached it: keep the result
        ("FAILED", "diverged", "diverged", None),  # the run's own, more precise classification stays
    ],
)
def test_scheduler_states_are_classified(state: str, before: str, status: str, words: str | None) -> None:
    rec = RunRecord("r", "v", "mini", 0, "k", status=before, executor={"kind": "slurm", "job_id": "42"})
    out = apply_scheduler_state(rec, state, "n7", "30 min")
    assert out.status == status
    assert out.executor["state"] == state and out.executor["node"] == "n7"
    if words:
        assert words in out.error
    assert out.ended_at is not None


def test_results_must_be_shared_with_remote_nodes(tmp_path: Path) -> None:
    check_shared(tmp_path, ["localhost"])  # a one-node cluster on this machine sees every folder
    with pytest.raises(UserError, match="cannot see"):
        check_shared(tmp_path, ["gpu-node-01", "gpu-node-02"])
    check_shared(tmp_path, ["gpu-node-01"], trust=True)  # [slurm] shared_results = true


def test_no_slurm_reachable_is_bad_input(variants: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    r = harness("run", "fast", "--executor", "slurm", "--track", "mini", "--variants", str(variants), "--results", str(results),
                env={"SLURM_CONF": str(tmp_path / "no-such-slurm.conf")})  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "no Slurm is reachable" in r.stderr and "Traceback" not in r.stderr
    assert not list(results.glob("**/run.json"))


# ----------------------------------------------------------------------------- against the real cluster


@pytest.mark.slurm
@needs_slurm
def test_unknown_partition_submits_nothing(variants: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    r = _slurm_run(variants, results, "fast", "--partition", "nosuchpart")
    assert r.returncode == 2, r.stderr
    assert "partition 'nosuchpart' does not exist" in r.stderr and r.stderr.count("\n") == 1
    assert not list(results.glob("**/run.json"))
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == before
    r = _slurm_run(variants, results, "fast", "--gpus-per-node", "1")  # this cluster has no GPUs
    assert r.returncode == 2 and "Slurm rejects the job request" in r.stderr, r.stderr
    assert not list(results.glob("**/run.json"))


@pytest.mark.slurm
@needs_slurm
def test_run_submits_collects_and_status(variants: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    r = _slurm_run(variants, results, "fast", "--seeds", "2", "--json")
    assert r.returncode == 0, r.stderr
    recs = _records(results)
    assert sorted(x.seed for x in recs) == [0, 1]
    for rec in recs:
        ex = rec.executor
        assert rec.status == "ok" and rec.metrics.min_val_loss is not None
        assert ex["kind"] == "slurm" and ex["job_id"].isdigit() and ex["node"] == "localhost"
        assert ex["state"] == "COMPLETED" == _sacct_state(ex["job_id"])
        assert (results / rec.variant / rec.run_id / "train.log").read_text().count("Min val Loss") == 1
    assert {x["executor"]["job_id"] for x in json.loads(r.stdout)} == {x.executor["job_id"] for x in recs}
    st = harness("status", "--results", str(results), "--json")
    rows = json.loads(st.stdout)
    assert [(x["group"], x["job_id"]) for x in rows] == [("finished", x.executor["job_id"]) for x in recs]
    # Everything complete: a second run submits nothing.
    again = _slurm_run(variants, results, "fast", "--seeds", "2")
    assert again.returncode == 0 and "submitted" not in again.stdout
    assert len(list(results.glob("*/*/run.json"))) == 2


@pytest.mark.slurm
@needs_slurm
def test_no_wait_then_rerun_collects_without_resubmitting(variants: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    r = _slurm_run(variants, results, "fast", "--no-wait")
    assert r.returncode == 0, r.stderr
    (rec,) = _records(results)
    job = rec.executor["job_id"]
    assert rec.status in ("pending", "running") and job and f"Slurm job {job}" in r.stdout
    rows = json.loads(harness("status", "--results", str(results), "--json").stdout)
    assert rows[0]["job_id"] == job and rows[0]["group"] in ("pending", "running", "finished")
    r2 = _slurm_run(variants, results, "fast")
    assert r2.returncode == 0, r2.stderr
    (rec2,) = _records(results)  # same single attempt folder, same job
    assert rec2.executor["job_id"] == job and rec2.status == "ok" and "submitted fast" not in r2.stdout
    assert f"following fast seed 0: Slurm job {job}" in r2.stdout


@pytest.mark.slurm
@needs_slurm
def test_cancelled_job_is_recorded(variants: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "results")
    reg = load_registry(variants)
    plan = plan_runs([reg.get("slow")], [0], "mini", store)
    ex = SlurmExecutor(store, SlurmSettings(time_limit_min=10, poll_s=0.3))
    (h,) = ex.submit(plan.to_run)
    log = Path(h.run_dir) / "train.log"
    _wait_for(lambda: log.exists() and "step" in log.read_text(), what="the run to start training")
    ex.cancel([h])
    (rec,) = ex.wait([h], timeout_s=120)
    assert rec.status == "interrupted" and f"Slurm job {h.job_id} was cancelled" in rec.error
    assert rec.executor["state"] == "CANCELLED" == _sacct_state(h.job_id)
    rows = status_rows(store)
    assert rows[0]["group"] == "failed" and rows[0]["status"] == "interrupted"


@pytest.mark.slurm
@needs_slurm
def test_recovery_after_submitter_killed(variants: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness.cli", "run", "fast", "--executor", "slurm", "--track", "mini", "--time-limit", "10",
           "--variants", str(variants), "--results", str(results)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rec = _wait_for(lambda: next((r for r in _records(results) if r.executor.get("job_id")), None), what="a submitted job")
    finally:
        proc.send_signal(signal.SIGKILL)  # the submitting harness dies; the job goes on
        proc.wait()
    job = rec.executor["job_id"]
    r = _slurm_run(variants, results, "fast")
    assert r.returncode == 0, r.stdout + r.stderr
    (final,) = _records(results)
    assert final.status == "ok" and final.executor["job_id"] == job  # collected, not resubmitted


@pytest.mark.slurm
@needs_slurm
def test_preempted_run_requeued_in_place(variants: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    store = Store(results)
    reg = load_registry(variants)
    plan = plan_runs([reg.get("fast")], [0], "mini", store)
    ex = SlurmExecutor(store, SlurmSettings(time_limit_min=10, poll_s=0.3))
    (h,) = ex.submit(plan.to_run)
    ex.cancel([h])
    ex.wait([h], timeout_s=120)
    # The test cluster has no preemption configured: record the job's ending as Slurm reports a
    # preemption (state PREEMPTED), the one input that cannot be produced here.
    run_dir = Path(h.run_dir)
    rec = apply_scheduler_state(RunRecord.from_dict(json.loads((run_dir / "run.json").read_text())), "PREEMPTED")
    store.write(run_dir, rec)
    r = _slurm_run(variants, results, "fast")
    assert r.returncode == 0 and "--requeue" in r.stdout and _records(results)[0].status == "preempted"
    r = _slurm_run(variants, results, "fast", "--requeue")
    assert r.returncode == 0, r.stdout + r.stderr
    (final,) = _records(results)  # one record, in the same folder
    assert final.run_id == rec.run_id and final.status == "ok"
    assert final.executor["previous_jobs"] == [h.job_id] and final.executor["job_id"] != h.job_id


@pytest.mark.slurm
@needs_slurm
def test_check_on_slurm_interleaves_candidate_and_baseline(variants: Path, tmp_path: Path) -> None:
    """`harness check --executor slurm`: one job per run, submitted candidate, baseline, candidate, baseline."""
    results = tmp_path / "results"
    write_variant(variants, "worse", FAST[:-2] + ["--max-steps", "1", "--threads", "1"])  # test-only handicap
    r = harness("check", "worse", "--against", "fast", "--mode", "no-regression", "--margin", "0.1", "--seeds", "2",
                "--max-seeds", "2", "--executor", "slurm", "--time-limit", "10", "--track", "mini", "--json",
                "--variants", str(variants), "--results", str(results))  # fmt: skip
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["verdict_words"] == "regression" and out["runs_launched"] == 4, r.stderr
    recs = _records(results)
    assert all(x.executor["kind"] == "slurm" and x.status == "ok" for x in recs)
    order = [(x.variant, x.seed) for x in sorted(recs, key=lambda x: int(x.executor["job_id"]))]
    assert order == [("worse", 0), ("fast", 0), ("worse", 1), ("fast", 1)]  # ABAB by job id
    assert {(p["candidate_run"], p["baseline_run"]) for p in out["pairs"]} == {
        (c.run_id, b.run_id) for c in recs for b in recs if c.variant == "worse" and b.variant == "fast" and c.seed == b.seed
    }


@pytest.mark.slurm
@needs_slurm
def test_check_on_slurm_bad_input_submits_nothing(variants: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    common = ["--against", "fast", "--aa", "--executor", "slurm", "--track", "mini", "--variants", str(variants),
              "--results", str(results)]  # fmt: skip
    for extra, words in ((["--partition", "nosuchpart"], "partition 'nosuchpart' does not exist"),
                         (["--no-wait"], "--no-wait does not apply to check")):
        r = harness("check", *common, *extra)
        assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not results.exists()  # nothing written, nothing submitted


def test_dry_run_with_slurm_executor_submits_nothing(variants: Path, tmp_path: Path) -> None:
    # needs no cluster: a dry run never reaches the scheduler (it used to submit real jobs)
    results = tmp_path / "results"
    r = harness("run", "fast", "--seeds", "2", "--dry-run", "--executor", "slurm", "--track", "mini",
                "--variants", str(variants), "--results", str(results))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "dry run: 2 run(s) materialised, nothing launched" in r.stdout and "harness.mini.train" in r.stdout
    assert not list(results.glob("**/run.json")) and "Slurm job" not in r.stdout
