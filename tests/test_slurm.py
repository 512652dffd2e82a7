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
MEDIUM = ["--preset", "smoke", "--num-epochs", "30", "--threads", "1"]  # ~8 s: time to preempt it, short to rerun


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
    assert parse_time_limit(1) == 1 and parse_time_limit("0:30") == 1  # Slurm's granularity: whole minutes
    with pytest.raises(UserError, match="at least 1 minute"):
        parse_time_limit(0)
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


@pytest.mark.parametrize(
    "state,status,words",
    [
        ("PREEMPTED", "preempted", "was preempted"),
        ("TIMEOUT", "timeout", "time limit"),
        ("CANCELLED", "interrupted", "was cancelled"),
        ("COMPLETED", "interrupted", "stopped the run with SIGTERM"),  # e.g. `scancel --signal=TERM`
    ],
)
def test_run_stopped_by_slurm_signal_waits_for_the_final_state(state: str, status: str, words: str) -> None:
    # What run_job writes when Slurm's SIGTERM stopped the run: still open, with the run's own view aside.
    ending = {"status": "interrupted", "error": "Slurm job 42 stopped the run with SIGTERM"}
    rec = RunRecord("r", "v", "mini", 0, "k", status="running", executor={"kind": "slurm", "job_id": "42", "run_ending": ending})
    out = apply_scheduler_state(rec, state, "n7", "1 min")
    assert (out.status, out.executor["state"]) == (status, state) and words in out.error
    assert "run_ending" not in out.executor


def test_no_pre_timeout_signal_is_requested(tmp_path: Path) -> None:
    # submitit's default `--signal=USR2@90` ended runs 90 s early as "failed"; @0 asks for none.
    from submitit.slurm.slurm import _make_sbatch_string

    params = SlurmExecutor(Store(tmp_path / "results"), SlurmSettings(time_limit_min=1))._params(None)
    text = _make_sbatch_string(command="true", folder=str(tmp_path), **params)
    assert "#SBATCH --signal=USR2@0\n" in text and "#SBATCH --time=1\n" in text


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


def _run_dir_training(results: Path) -> RunRecord:
    """The single run's record once its job runs and its trainer has logged a step (a fresh train.log)."""

    def ready() -> RunRecord | None:
        recs = [r for r in _records(results) if r.status == "running" and r.executor.get("job_id")]
        if not recs:
            return None
        log = results / recs[0].variant / recs[0].run_id / "train.log"
        return recs[0] if log.exists() and "\nstep " in log.read_text() else None

    return _wait_for(ready, what="the run to start training")


def _preempt_node() -> str:
    """Submit a job to the high-priority partition that needs every CPU of the node: Slurm must
    preempt what runs in `low` (scripts/local-slurm.sh configures preempt/partition_prio)."""
    parts = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
    assert {"low", "high"} <= {p.rstrip("*") for p in parts}, "cluster without preemption; restart it: scripts/local-slurm.sh stop && start"
    cpus = subprocess.run(["sinfo", "-h", "-p", "high", "-o", "%c"], capture_output=True, text=True).stdout.split()[0]
    r = subprocess.run(["sbatch", "--parsable", "-p", "high", "-c", cpus.rstrip("+"), "-o", "/dev/null", "--wrap", "sleep 1"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def _squeue(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T|%r"], capture_output=True, text=True).stdout.strip()


@pytest.mark.slurm
@needs_slurm
def test_preempted_run_recorded_then_requeued_without_duplicate(variants: Path, tmp_path: Path) -> None:
    """Real preemption: a run in partition `low` is preempted by a job in `high` (no --requeue: cancelled)."""
    results = tmp_path / "results"
    write_variant(variants, "medium", MEDIUM)
    jobs: list[str] = []
    try:
        r = _slurm_run(variants, results, "medium", "--partition", "low", "--no-wait")
        assert r.returncode == 0, r.stderr
        first = _run_dir_training(results)
        job = first.executor["job_id"]
        jobs += [job, _preempt_node()]
        _wait_for(lambda: _sacct_state(job) == "PREEMPTED", what="Slurm to preempt the run")
        # Collected by the next `harness run`, recorded as preempted, and not run again without --requeue.
        r = _slurm_run(variants, results, "medium", "--partition", "low")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "not re-running 1 preempted run(s); pass --requeue" in r.stdout and "submitted" not in r.stdout
        (rec,) = _records(results)
        assert rec.status == "preempted" and f"Slurm job {job} was preempted" in rec.error
        assert (rec.executor["state"], rec.executor["partition"]) == ("PREEMPTED", "low")
        row = json.loads(harness("status", "--results", str(results), "--json").stdout)[0]
        assert (row["group"], row["status"], row["scheduler_state"]) == ("failed", "preempted", "PREEMPTED")
        # --requeue: the same run again in its own folder; one record, the old job listed.
        r = _slurm_run(variants, results, "medium", "--partition", "low", "--requeue")
        assert r.returncode == 0, r.stdout + r.stderr
        (final,) = _records(results)
        jobs.append(final.executor["job_id"])
        assert final.run_id == rec.run_id and final.run_key == rec.run_key and final.status == "ok"
        assert final.executor["previous_jobs"] == [job] and final.executor["job_id"] != job
        assert final.executor["state"] == "COMPLETED" == _sacct_state(final.executor["job_id"])
        run_dir = results / "medium" / final.run_id
        assert "step " in (run_dir / "train.requeued-1.log").read_text()  # the preempted attempt's log, kept
        assert (run_dir / "train.log").read_text().count("Min val Loss") == 1
    finally:
        subprocess.run(["scancel", *jobs], capture_output=True)


@pytest.mark.slurm
@needs_slurm
def test_slurm_requeues_preempted_job_in_place(variants: Path, tmp_path: Path) -> None:
    """PreemptMode=REQUEUE with `--requeue`: Slurm itself requeues the preempted job (same job id)."""
    results = tmp_path / "results"
    write_variant(variants, "medium", MEDIUM)
    cmd = [sys.executable, "-m", "harness.cli", "run", "medium", "--requeue", "--partition", "low", "--executor", "slurm",
           "--track", "mini", "--time-limit", "10", "--variants", str(variants), "--results", str(results)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # follows the job
    job = ""
    try:
        job = _run_dir_training(results).executor["job_id"]
        _preempt_node()
        _wait_for(lambda: _squeue(job) == "PENDING|BeginTime", what="Slurm to requeue the preempted job")
        rows = status_rows(Store(results))  # requeued: still in progress, not a failure nor a candidate to resubmit
        assert rows[0]["group"] in ("pending", "running") and rows[0]["scheduler_state"] == "PENDING", rows
        # Slurm holds a requeued job back for about 2 minutes (BeginTime); let it start now.
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, capture_output=True)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["scancel", job], capture_output=True)
    assert proc.returncode == 0, out
    (final,) = _records(results)
    assert final.status == "ok" and final.executor["job_id"] == job and final.executor["restarts"] == 1
    assert "previous_jobs" not in final.executor  # same job, requeued by Slurm
    run_dir = results / "medium" / final.run_id
    assert "step " in (run_dir / "train.requeued-1.log").read_text()
    sacct = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", "State"], capture_output=True, text=True).stdout.split()
    assert sacct == ["PREEMPTED", "COMPLETED"]


@pytest.mark.slurm
@needs_slurm
def test_time_limit_recorded_as_timeout(variants: Path, tmp_path: Path) -> None:
    """A 1-minute limit on a run that needs minutes: Slurm ends it (TIMEOUT), recorded as `timeout`.

    Takes 60-90 s plus KillWait: slurmctld checks time limits every 30 s (a compiled-in period).
    """
    results = tmp_path / "results"
    write_variant(variants, "endless", ["--preset", "smoke", "--num-epochs", "1000", "--threads", "1"])
    r = harness("run", "endless", "--executor", "slurm", "--track", "mini", "--time-limit", "1", "--json",
                "--variants", str(variants), "--results", str(results), timeout=240)  # fmt: skip
    assert r.returncode == 4, r.stdout + r.stderr
    (rec,) = _records(results)
    job = rec.executor["job_id"]
    assert rec.status == "timeout" and rec.error == f"Slurm job {job} reached its time limit (1 min)"
    assert rec.executor["state"] == "TIMEOUT" == _sacct_state(job) and rec.executor["time_limit_min"] == 1
    assert rec.metrics.min_val_loss is not None  # what it logged before the limit is kept
    elapsed = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job, "-o", "ElapsedRaw"], capture_output=True, text=True).stdout.split()
    assert int(elapsed[0]) >= 60  # ran to the limit: no early end from submitit's USR2


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
