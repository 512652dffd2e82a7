"""Run plans as Slurm jobs through submitit: one job per run, results written into the shared store.

The flow: `SlurmExecutor.preflight()` checks the cluster, the partition and the request
(`sbatch --test-only`) and that the results folder is visible to the nodes, before anything is
written. `submit(plans)` claims each run folder and submits its job *under the store lock*, and
stores a `pending` record carrying the job id, so a harness that dies after submitting never
resubmits (the record says the run is in progress) and never loses a result (the job writes its
own record). In the job, `run_job` calls `runner.execute_plan`. `wait(handles)` polls the
scheduler (sacct through submitit's watcher, plus squeue) and `finalize`s each run when its job
has left the queue, folding the scheduler's view (cancelled, preempted, timeout, out of memory,
node failure) into the record. `reconcile(store)` does the same for every Slurm record in the
store; `harness status` and `harness run` call it first.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from harness.errors import UserError
from harness.record import COMPLETE, RunRecord
from harness.runner import RunPlan, execute_plan, taken
from harness.store import RECORD_FILE, Store, StoredRun, lock_or_fail, owner_alive, owner_info

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Scheduler states in which a job may still run or write its record.
ACTIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "CONFIGURING",
     "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "UNKNOWN"}
)  # fmt: skip
# Endings imposed from outside the run: they override what the run itself recorded (unless it got "ok").
_OUTSIDE: dict[str, tuple[str, str]] = {
    "CANCELLED": ("interrupted", "Slurm job {job} was cancelled"),
    "PREEMPTED": ("preempted", "Slurm job {job} was preempted; `harness run ... --requeue` runs it again"),
    "TIMEOUT": ("timeout", "Slurm job {job} reached its time limit ({limit})"),
    "DEADLINE": ("timeout", "Slurm job {job} reached its deadline"),
    "OUT_OF_MEMORY": ("oom", "Slurm job {job} ran out of host memory"),
    "NODE_FAIL": ("crashed", "node {node} failed under Slurm job {job}"),
    "BOOT_FAIL": ("crashed", "node {node} failed to boot for Slurm job {job}"),
}
# submitit asks Slurm for SIGUSR2 this many seconds before the time limit (its default is 90) and
# answers it by failing the job unless the function can checkpoint. Runs here cannot, and the signal
# also reaches the trainer (Slurm signals every process of the step), so it only ended runs early as
# "failed". `--signal=USR2@0` means "never": the job runs to its limit and Slurm records TIMEOUT.
SIGNAL_DELAY_S = 0
# File systems a cluster's nodes can share; anything else is local to the submitting machine.
_SHARED_FS = frozenset(
    {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "ceph", "cephfs", "glusterfs",
     "fuse.glusterfs", "fuse.sshfs", "panfs", "wekafs", "fuse.juicefs", "fuse.cephfs", "9p", "virtiofs", "afs"}
)  # fmt: skip
_CONFIG_KEYS = {
    "partition", "account", "time_limit", "gpus_per_node", "cpus_per_node", "mem_gb", "sbatch",
    "folder", "shared_results", "poll_s",
}  # fmt: skip


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- settings


@dataclass
class SlurmSettings:
    """What each job asks Slurm for. `None` means "the cluster's / the track's default"."""

    partition: str | None = None
    account: str | None = None
    time_limit_min: int = 60
    gpus_per_node: int | None = None  # None: the variant's nproc_per_node on the upstream track, 0 on mini
    cpus_per_node: int | None = None
    mem_gb: float | None = None
    sbatch: dict[str, str] = field(default_factory=dict)  # extra sbatch options: constraint, qos, ...
    folder: str | None = None  # submitit's job folder (default <results>/.slurm); must be shared too
    shared_results: bool | None = None  # True: trust that the results folder is shared (skip the check)
    poll_s: float = 1.0
    requeue: bool = False


def parse_time_limit(value: Any) -> int:
    """Minutes from an int, or Slurm's "MM", "HH:MM:SS", "D-HH:MM[:SS]" forms."""
    if isinstance(value, bool):
        raise UserError(f"slurm time limit must be minutes or D-HH:MM:SS, got {value!r}")
    if isinstance(value, (int, float)):
        minutes = float(value)
    else:
        m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
        if not m:
            raise UserError(f"slurm time limit must be minutes or D-HH:MM:SS, got {value!r}")
        d, a, b, c = (int(x) if x else 0 for x in m.groups())
        if m.group(1) is not None:  # D-HH[:MM[:SS]]
            minutes = d * 1440 + a * 60 + b + c / 60
        elif m.group(4) is not None:  # HH:MM:SS
            minutes = a * 60 + b + c / 60
        elif m.group(3) is not None:  # MM:SS
            minutes = a + b / 60
        else:
            minutes = a
    # Slurm counts limits in whole minutes (seconds round up); 1 minute is the smallest limit.
    # No pre-limit signal is requested (see `SIGNAL_DELAY_S`), so short limits are safe.
    if minutes <= 0:
        raise UserError(f"slurm time limit must be at least 1 minute, got {value!r}")
    return int(-(-minutes // 1))


def load_settings(config_file: Path | str | None = None, overrides: dict[str, Any] | None = None) -> SlurmSettings:
    """Settings from `--slurm-config FILE` (else `harness.toml` in the working folder, if any) then flags.

    The file holds a `[slurm]` table (or, for a dedicated file, the keys at top level).
    """
    data: dict[str, Any] = {}
    path = Path(config_file) if config_file else Path("harness.toml")
    if config_file and not path.is_file():
        raise UserError(f"--slurm-config {path} does not exist; pass a TOML file with a [slurm] table")
    if path.is_file():
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: malformed TOML: {e}") from None
        data = doc.get("slurm", doc if config_file else {})
        if not isinstance(data, dict):
            raise UserError(f"{path}: 'slurm' must be a table")
        unknown = set(data) - _CONFIG_KEYS
        if unknown:
            raise UserError(f"{path}: unknown [slurm] key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_CONFIG_KEYS))}")
    data = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    s = SlurmSettings()
    for key in ("partition", "account", "folder"):
        if key in data:
            if not isinstance(data[key], str) or not data[key]:
                raise UserError(f"slurm setting '{key}' must be a non-empty string, got {data[key]!r}")
            setattr(s, key, data[key])
    if "time_limit" in data:
        s.time_limit_min = parse_time_limit(data["time_limit"])
    for key in ("gpus_per_node", "cpus_per_node"):
        if key in data:
            v = data[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UserError(f"slurm setting '{key}' must be a non-negative integer, got {v!r}")
            setattr(s, key, v)
    if "mem_gb" in data:
        if isinstance(data["mem_gb"], bool) or not isinstance(data["mem_gb"], (int, float)) or data["mem_gb"] <= 0:
            raise UserError(f"slurm setting 'mem_gb' must be a positive number, got {data['mem_gb']!r}")
        s.mem_gb = float(data["mem_gb"])
    if "sbatch" in data:
        s.sbatch = parse_sbatch_options(data["sbatch"])
    if "shared_results" in data:
        s.shared_results = bool(data["shared_results"])
    if "poll_s" in data:
        s.poll_s = float(data["poll_s"])
    if "requeue" in data:
        s.requeue = bool(data["requeue"])
    return s


def parse_sbatch_options(value: Any) -> dict[str, str]:
    """Extra sbatch options from a TOML table or `--sbatch KEY=VALUE` flags (e.g. qos=high, constraint=h100)."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = []
        for opt in value:
            key, sep, val = str(opt).lstrip("-").partition("=")
            if not sep or not key:
                raise UserError(f"--sbatch takes KEY=VALUE like qos=high or constraint=h100, got {opt!r}")
            items.append((key, val))
    else:
        raise UserError(f"slurm 'sbatch' must be a table of sbatch options, got {value!r}")
    out = {}
    for key, val in items:
        key = str(key).replace("-", "_")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise UserError(f"sbatch option name {key!r} is not valid; use long option names like qos or constraint")
        out[key] = str(val)
    return out


# ----------------------------------------------------------------------------- the scheduler


def _sh(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: command not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"{cmd[0]} timed out after {timeout:.0f}s")


def slurm_reachable() -> tuple[bool, str]:
    """Whether `sinfo` answers, and if not, why (one line)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False, "sinfo/sbatch not found on PATH"
    r = _sh(["sinfo", "-h", "-o", "%P"], timeout=15)
    if r.returncode != 0:
        return False, (r.stderr.strip().splitlines() or [f"sinfo exited {r.returncode}"])[-1]
    return True, ""


def partitions() -> tuple[list[str], str | None]:
    """Partition names and the default one (marked with '*' by sinfo)."""
    out = _sh(["sinfo", "-h", "-o", "%P"]).stdout.split()
    names = [p.rstrip("*") for p in out]
    default = next((p.rstrip("*") for p in out if p.endswith("*")), None)
    return list(dict.fromkeys(names)), default


def partition_nodes(partition: str) -> list[str]:
    nodelist = _sh(["sinfo", "-h", "-p", partition, "-o", "%N"]).stdout.strip()
    if not nodelist:
        return []
    r = _sh(["scontrol", "show", "hostnames", nodelist])
    return r.stdout.split() if r.returncode == 0 else nodelist.split(",")


def _fs_type(path: Path) -> tuple[str, str]:
    """(file system type, mount point) of the mount holding `path` (longest mount prefix)."""
    path = path.resolve()
    best = ("", "/")
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[1]):
            best = (parts[2], mnt)
    return best


def nodes_are_this_host(nodes: Iterable[str]) -> bool:
    """True when every node is this machine (a one-node cluster: every folder is shared)."""
    me = {"localhost", "127.0.0.1", socket.gethostname(), socket.gethostname().split(".")[0], socket.getfqdn()}
    nodes = list(nodes)
    return bool(nodes) and all(n in me for n in nodes)


def check_shared(folder: Path, nodes: list[str], trust: bool | None = None) -> None:
    """Raise UserError if the compute nodes could not see `folder` (it must hold the store)."""
    if trust or nodes_are_this_host(nodes):
        return
    fstype, mnt = _fs_type(folder)
    if fstype in _SHARED_FS:
        return
    raise UserError(
        f"results folder {folder} is on a local {fstype or 'unknown'} file system ({mnt}) that the Slurm nodes "
        f"({', '.join(nodes[:3])}{'...' if len(nodes) > 3 else ''}) cannot see; pass --results on shared storage "
        "(NFS, Lustre, ...) or set shared_results = true in [slurm] if it is shared"
    )


def query_states(job_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """{job_id: {"state", "node"}} from sacct (through submitit's watcher) and squeue.

    A job still listed by squeue is reported with squeue's state, so a cancelled job that is still
    completing (still able to write its record) counts as active. A job neither tool knows is "GONE".
    """
    ids = [str(j) for j in dict.fromkeys(job_ids) if j]
    if not ids:
        return {}
    r = _sh(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%N"])
    queued: dict[str, dict[str, str]] = {}
    for line in r.stdout.splitlines():
        jid, _, rest = line.partition("|")
        state, _, node = rest.partition("|")
        queued[jid.strip()] = {"state": state.strip(), "node": node.strip()}
    ended = [j for j in ids if j not in queued]
    out = _sacct(ended)
    # sacct lags squeue by a moment after a job ends: ask again briefly for its final state.
    for _ in range(10):
        lagging = [j for j in ended if j not in out or is_active(out[j]["state"])]
        if not lagging or r.returncode != 0:
            break
        time.sleep(0.3)
        out.update(_sacct(lagging))
    for j in ended:
        if j not in out or (is_active(out[j]["state"]) and r.returncode == 0):
            out[j] = {"state": "GONE", "node": out.get(j, {}).get("node", "")}  # off the queue, no final word
    out.update(queued)
    return out


def _sacct(ids: list[str]) -> dict[str, dict[str, str]]:
    from submitit.slurm.slurm import SlurmInfoWatcher

    if not ids:
        return {}
    watcher = SlurmInfoWatcher(delay_s=0)  # a fresh one: no cached state from a previous requeue
    for j in ids:
        watcher.register_job(j)
    try:
        watcher.update()
    except Exception:  # accounting unreachable: the caller falls back to "GONE"
        return {}
    out = {}
    for j in ids:
        info = watcher.get_info(j, mode="cache")
        if info:
            out[j] = {"state": (info.get("State") or "UNKNOWN").split()[0], "node": info.get("NodeList") or ""}
    return out


def is_active(state: str) -> bool:
    return state in ACTIVE_STATES


def cancel(job_ids: Iterable[str]) -> None:
    ids = [str(j) for j in job_ids if j]
    if ids:
        _sh(["scancel", *ids])


# ----------------------------------------------------------------------------- records


def apply_scheduler_state(record: RunRecord, state: str, node: str = "", limit: str = "") -> RunRecord:
    """Fold the scheduler's final state of a run's job into its record (pure; returns the record)."""
    ex = record.executor
    job = ex.get("job_id", "?")
    node = node or ex.get("node") or "?"
    ending = ex.pop("run_ending", None)  # how the run saw its own end when a signal stopped it (run_job)
    if state in _OUTSIDE and record.status not in COMPLETE:
        status, msg = _OUTSIDE[state]
        record.status, record.error = status, msg.format(job=job, node=node, limit=limit or "?")
    elif record.status in ("pending", "running") and ending:
        record.status, record.error = ending.get("status", "interrupted"), ending.get("error")
    elif record.status in ("pending", "running"):
        # The job ended without writing its final record (killed hard, or died before the run started).
        folder = ex.get("submitit_folder", "")
        record.status = "killed" if state == "GONE" else "failed"
        record.error = f"Slurm job {job} ended ({state}) before the run wrote its result; see {folder}/{job}/{job}_0_log.err"
    ex["state"] = state if state != "GONE" else ex.get("state", "GONE")
    if node and node != "?":
        ex["node"] = node
    record.ended_at = record.ended_at or now_iso()
    return record


def _read(run_dir: Path) -> RunRecord:
    import json

    return RunRecord.from_dict(json.loads((run_dir / RECORD_FILE).read_text(encoding="utf-8")))


def finalize(store: Store, run_dir: Path, state: str, node: str = "") -> RunRecord:
    """Write the final record of a run whose job has left the queue (under the store lock)."""
    with lock_or_fail(store):
        rec = _read(run_dir)
        limit = f"{rec.executor.get('time_limit_min', '?')} min"
        rec = apply_scheduler_state(rec, state, node, limit)
        store.write(run_dir, rec)
    return rec


def slurm_runs(store: Store, unfinished_only: bool = True) -> list[StoredRun]:
    return [
        sr
        for sr in store.attempts()
        if sr.record.executor.get("kind") == "slurm" and (not unfinished_only or sr.record.status in ("pending", "running"))
    ]


def reconcile(store: Store) -> list[RunRecord]:
    """Finalize every Slurm run in the store whose job is over but whose record still says pending/running.

    Also closes claims whose submitting harness died before it could submit (no job id).
    Returns the records it changed. Needs no lock while reading: writes go through `finalize`.
    """
    open_runs = slurm_runs(store)
    if not open_runs:
        return []
    changed = []
    with_id = [sr for sr in open_runs if sr.record.executor.get("job_id")]
    states = query_states(sr.record.executor["job_id"] for sr in with_id) if with_id and slurm_reachable()[0] else {}
    for sr in with_id:
        st = states.get(str(sr.record.executor["job_id"]))
        if st and not is_active(st["state"]):
            changed.append(finalize(store, sr.path, st["state"], st["node"]))
    for sr in open_runs:
        if sr.record.executor.get("job_id"):
            continue
        sub = sr.record.executor.get("submitted_by", {})
        age = time.time() - (sr.path / RECORD_FILE).stat().st_mtime
        if owner_alive(sub) is False and age > 60:
            with lock_or_fail(store):
                rec = _read(sr.path)
                if rec.status == "pending" and not rec.executor.get("job_id"):
                    rec.status, rec.error = "interrupted", "the harness stopped before it submitted the Slurm job"
                    rec.ended_at = now_iso()
                    store.write(sr.path, rec)
                    changed.append(rec)
    return changed


# ----------------------------------------------------------------------------- inside the job


def _job_info(meta: dict[str, Any]) -> dict[str, Any]:
    info = dict(meta)
    info.update(
        kind="slurm",
        job_id=os.environ.get("SLURM_JOB_ID", meta.get("job_id")),
        node=os.environ.get("SLURMD_NODENAME", socket.gethostname()),
        host=socket.gethostname(),
        pid=os.getpid(),
        state="RUNNING",
        restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
    )
    return info


def _ignore_submitit_signal() -> None:
    """Replace submitit's handler of its pre-timeout/preemption signal (USR2) in the job by a note.

    submitit would fail the run (not checkpointable) or `scontrol requeue` it on its own; here the
    cluster's settings decide (TIMEOUT, PREEMPTED, or a requeue only with `--requeue`). We ask for no
    such signal (`SIGNAL_DELAY_S`), but clusters with `PreemptParameters=send_user_signal` send it.
    """
    from submitit.slurm.slurm import SlurmJobEnvironment

    def note(signum: int, _frame: Any) -> None:
        print(f"harness: got {signal.Signals(signum).name} from Slurm; the run goes on until Slurm stops it", file=sys.stderr, flush=True)

    try:
        signal.signal(SlurmJobEnvironment._usr_sig(), note)
    except ValueError:  # not the main thread: leave submitit's handler
        pass


def run_job(plan: RunPlan, meta: dict[str, Any]) -> dict[str, Any]:
    """The function each Slurm job runs: execute the claimed plan into the shared store."""
    run_dir = Path(plan.run_dir or "")
    my_id = os.environ.get("SLURM_JOB_ID")
    # The submitter writes the pending record with our job id right after sbatch returns; wait for
    # it so that record never overwrites our "running" one.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if str(_read(run_dir).executor.get("job_id")) == str(my_id):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    log = run_dir / "train.log"
    if log.exists():  # a requeued job: keep the interrupted attempt's log apart from the new one
        n = 1 + len(list(run_dir.glob("train.requeued-*.log")))
        log.rename(run_dir / f"train.requeued-{n}.log")
    _ignore_submitit_signal()
    rec = execute_plan(plan, executor=_job_info(meta))
    if rec.status == "interrupted" or rec.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM):
        # A signal from Slurm stopped the run: a cancel, a preemption, the time limit, or a requeue
        # after which this same job runs again. Only the job's final state tells which, so the
        # record stays open (`taken`, not a candidate for a duplicate) until `finalize` reads it.
        why = f"Slurm job {my_id} stopped the run with SIGTERM"
        rec.executor["run_ending"] = {"status": "interrupted", "error": why}
        rec.status, rec.error = "running", f"{why}; its final state (cancelled, preempted, timeout, requeued) decides"
    rec.executor["state"] = "COMPLETING"  # the job itself is done; `finalize` records Slurm's final word
    Store(plan.results_root).write(run_dir, rec)
    return rec.to_dict()


# ----------------------------------------------------------------------------- the executor


@dataclass
class SlurmHandle:
    """One submitted (or re-attached) run: enough to follow it without the submitting process."""

    job_id: str
    run_dir: str
    variant: str
    seed: int
    run_key: str
    state: str = "PENDING"
    node: str = ""
    record: RunRecord | None = None  # set once finalized

    @property
    def label(self) -> str:
        return f"{self.variant} seed {self.seed}"

    @classmethod
    def from_stored(cls, sr: StoredRun) -> "SlurmHandle":
        r = sr.record
        return cls(str(r.executor.get("job_id")), str(sr.path), r.variant, r.seed, r.run_key, r.executor.get("state", "PENDING"), r.executor.get("node") or "")


class SlurmExecutor:
    """Submit `RunPlan`s as Slurm jobs and collect their records. Used by `harness run` and `harness check`."""

    def __init__(self, store: Store, settings: SlurmSettings | None = None) -> None:
        self.store = store
        self.settings = settings or SlurmSettings()
        self.folder = Path(self.settings.folder) if self.settings.folder else store.root / ".slurm"
        self._checked = False

    # -- checks, all before anything is written ------------------------------------------

    def preflight(self, plans: list[RunPlan] | None = None) -> None:
        ok, why = slurm_reachable()
        if not ok:
            raise UserError(f"--executor slurm but no Slurm is reachable ({why}); start one (scripts/local-slurm.sh start) or use --executor local")
        names, default = partitions()
        part = self.settings.partition or default
        if part is None:
            raise UserError("the Slurm cluster has no default partition; pass --partition NAME")
        if part not in names:
            raise UserError(f"Slurm partition '{part}' does not exist; available: {', '.join(names) or 'none'} (--partition or [slurm] partition)")
        self.settings.partition = part
        nodes = partition_nodes(part)
        check_shared(self.store.root, nodes, self.settings.shared_results)
        if self.settings.folder:
            check_shared(self.folder, nodes, self.settings.shared_results)
        self.test_requests(plans)
        self._checked = True

    def test_requests(self, plans: list[RunPlan] | None) -> None:
        """One `sbatch --test-only` per distinct request among `plans` (or a CPU-only one)."""
        seen = set()
        for plan in plans or [None]:
            params = self._params(plan)
            key = repr(sorted((k, v) for k, v in params.items() if k != "job_name"))
            if key not in seen:
                seen.add(key)
                self._test_request(plan)

    def _test_request(self, plan: RunPlan | None) -> None:
        """`sbatch --test-only` with exactly the options submitit would use: rejects bad accounts, QOS, GPUs..."""
        from submitit.slurm.slurm import _make_sbatch_string

        with tempfile.TemporaryDirectory() as tmp:
            params = {k: v for k, v in self._params(plan).items()}
            text = _make_sbatch_string(command="true", folder=tmp, **params)
            script = Path(tmp) / "test.sh"
            script.write_text(text)
            r = _sh(["sbatch", "--test-only", str(script)])
        if r.returncode != 0:
            msg = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
            raise UserError(f"Slurm rejects the job request ({msg}); check --partition/--account/--gpus-per-node/--sbatch")

    def _params(self, plan: RunPlan | None) -> dict[str, Any]:
        s = self.settings
        gpus = s.gpus_per_node
        if gpus is None:
            cfg = (plan.provenance.get("config") or {}) if plan else {}
            gpus = int(cfg.get("nproc_per_node", 0)) if plan is not None and plan.track == "upstream" else 0
        params: dict[str, Any] = {
            "job_name": f"harness-{plan.variant}-s{plan.seed}" if plan else "harness-check",
            "partition": s.partition,
            "time": s.time_limit_min,
            "nodes": 1,
            "ntasks_per_node": 1,  # one task per run: torchrun inside starts the per-GPU workers
            "cpus_per_task": s.cpus_per_node or 1,
            "signal_delay_s": SIGNAL_DELAY_S,
        }
        if gpus:
            params["gpus_per_node"] = gpus
        if s.mem_gb:
            params["mem"] = f"{int(s.mem_gb * 1024)}MB"
        extra = dict(s.sbatch)
        if s.account:
            extra["account"] = s.account
        if s.requeue:
            extra["requeue"] = True  # let Slurm requeue a preempted job (PreemptMode=REQUEUE clusters)
        if extra:
            params["additional_parameters"] = extra
        return params

    def _submitit(self, plan: RunPlan) -> Any:
        import submitit

        ex = submitit.SlurmExecutor(folder=str(self.folder / "%j"), max_num_timeout=0)
        ex.update_parameters(**self._params(plan))
        return ex

    # -- submit / wait ---------------------------------------------------------------------

    def submit(self, plans: list[RunPlan], force: bool = False, requeue_dirs: dict[str, Path] | None = None) -> list[SlurmHandle]:
        """Claim and submit one job per plan. Plans another harness already completed or runs are skipped.

        `requeue_dirs` maps run_key -> the folder of a preempted run to run again in place.
        """
        if not self._checked:
            self.preflight(plans)
        handles = []
        for plan in plans:
            h = self._claim_and_submit(plan, force, (requeue_dirs or {}).get(plan.run_key))
            if h is not None:
                handles.append(h)
        return handles

    def _claim_and_submit(self, plan: RunPlan, force: bool, reuse_dir: Path | None) -> SlurmHandle | None:
        meta: dict[str, Any] = {
            "kind": "slurm",
            "job_id": None,
            "state": "PENDING",
            "node": None,
            "partition": self.settings.partition,
            "time_limit_min": self.settings.time_limit_min,
            "submitit_folder": str(self.folder),
            "submitted_by": owner_info(),
            "submitted_at": now_iso(),
        }
        # Claim, submit and record the job id under one hold of the lock: no other harness can
        # claim the same run in between, and the job waits for this record before it starts.
        with lock_or_fail(self.store):
            if reuse_dir is not None:
                old = _read(reuse_dir)
                if old.status != "preempted":
                    return None
                plan.run_id, plan.run_dir = old.run_id, str(reuse_dir)
                jobs = list(old.executor.get("previous_jobs", [])) + [old.executor.get("job_id")]
                meta["previous_jobs"] = [j for j in jobs if j]
            else:
                if not force and taken(self.store.find(plan.run_key)):
                    return None
                plan.run_id, run_dir = self.store.new_run_dir(plan.variant, plan.track, plan.seed, plan.run_key)
                plan.run_dir = str(run_dir)
            record = plan.record("pending", dict(meta))
            self.store.write(Path(plan.run_dir), record)
            try:
                job = self._submitit(plan).submit(run_job, plan, meta)
            except Exception as e:  # sbatch refused after the preflight passed (e.g. QOS limits)
                record.status, record.error = "failed", f"sbatch refused the job: {str(e).strip().splitlines()[-1][:200]}"
                record.ended_at = now_iso()
                self.store.write(Path(plan.run_dir), record)
                raise UserError(f"Slurm refused the job for {plan.variant} seed {plan.seed}: {record.error}") from None
            meta["job_id"] = str(job.job_id)
            record.executor = dict(meta)
            self.store.write(Path(plan.run_dir), record)
        return SlurmHandle(meta["job_id"], plan.run_dir, plan.variant, plan.seed, plan.run_key)

    def attach(self) -> list[SlurmHandle]:
        """Handles for Slurm runs of this store still pending/running (e.g. submitted by a harness that died)."""
        return [SlurmHandle.from_stored(sr) for sr in slurm_runs(self.store) if sr.record.executor.get("job_id")]

    def poll(self, handles: list[SlurmHandle]) -> list[SlurmHandle]:
        """Update states; finalize and return the handles whose jobs ended since the last poll."""
        live = [h for h in handles if h.record is None]
        states = query_states(h.job_id for h in live)
        done = []
        for h in live:
            st = states.get(h.job_id, {"state": "UNKNOWN", "node": ""})
            h.node = st["node"] or h.node
            if is_active(st["state"]):
                h.state = st["state"]
                continue
            h.record = finalize(self.store, Path(h.run_dir), st["state"], st["node"])
            h.state = h.record.executor.get("state", st["state"])
            done.append(h)
        return done

    def wait(
        self,
        handles: list[SlurmHandle],
        on_update: Callable[[list[SlurmHandle]], None] | None = None,
        timeout_s: float | None = None,
    ) -> list[RunRecord]:
        """Poll until every job has ended; returns the final records in the order of `handles`."""
        start = time.monotonic()
        while True:
            self.poll(handles)
            if on_update is not None:
                on_update(handles)
            if all(h.record is not None for h in handles):
                return [h.record for h in handles if h.record is not None]
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise TimeoutError(f"Slurm jobs still running after {timeout_s:.0f}s: {', '.join(h.job_id for h in handles if h.record is None)}")
            time.sleep(self.settings.poll_s)

    def cancel(self, handles: list[SlurmHandle]) -> None:
        cancel(h.job_id for h in handles if h.record is None)


def preempted_runs(store: Store, run_keys: Iterable[str]) -> dict[str, Path]:
    """run_key -> folder, for the requested runs whose latest record says `preempted`."""
    keys = set(run_keys)
    out = {}
    for sr in store.runs():
        if sr.record.run_key in keys and sr.record.status == "preempted":
            out[sr.record.run_key] = sr.path
    return out


# ----------------------------------------------------------------------------- status


def status_rows(store: Store, refresh: bool = True) -> list[dict[str, Any]]:
    """One row per run of the store, with the scheduler's current state for Slurm runs."""
    if refresh:
        reconcile(store)
    runs = store.runs()
    ids = [str(sr.record.executor.get("job_id")) for sr in runs if sr.record.executor.get("kind") == "slurm" and sr.record.status in ("pending", "running") and sr.record.executor.get("job_id")]
    states = query_states(ids) if ids and refresh and slurm_reachable()[0] else {}
    rows = []
    for sr in runs:
        r, ex = sr.record, sr.record.executor
        job = str(ex.get("job_id") or "")
        sched = states.get(job, {}).get("state") or ex.get("state") or ""
        status = "stale" if store.is_stale(r) else r.status
        if status == "pending" and sched == "RUNNING":
            status = "running"
        group = {"pending": "pending", "running": "running", "ok": "finished"}.get(status, "failed")
        rows.append(
            {
                "group": group,
                "variant": r.variant,
                "seed": r.seed,
                "status": status,
                "executor": ex.get("kind", "local"),
                "job_id": job,
                "scheduler_state": sched,
                "node": states.get(job, {}).get("node") or ex.get("node") or ex.get("host") or "",
                "min_val_loss": r.metrics.min_val_loss,
                "error": r.error,
                "run_id": r.run_id,
                "path": str(sr.path),
            }
        )
    order = {"running": 0, "pending": 1, "failed": 2, "finished": 3}
    return sorted(rows, key=lambda x: (order[x["group"]], x["variant"], x["seed"]))


# ----------------------------------------------------------------------------- command line glue


def add_arguments(p: Any) -> None:
    """The Slurm flags shared by `harness run` and `harness check`."""
    g = p.add_argument_group("slurm (with --executor slurm)")
    g.add_argument("--executor", choices=("local", "slurm"), default="local", help="where runs execute (default local)")
    g.add_argument("--slurm-config", metavar="FILE", default=None, help="TOML with a [slurm] table (default: harness.toml if present)")
    g.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's default)")
    g.add_argument("--account", default=None, help="Slurm account to charge")
    g.add_argument("--time-limit", default=None, metavar="TIME", help="job time limit: minutes or D-HH:MM:SS (default 60)")
    g.add_argument("--gpus-per-node", type=int, default=None, metavar="N", help="GPUs per job (default: nproc_per_node upstream, 0 mini)")
    g.add_argument("--cpus-per-node", type=int, default=None, metavar="N", help="CPUs per job (default 1)")
    g.add_argument("--sbatch", action="append", default=None, metavar="KEY=VALUE", help="extra sbatch option, e.g. qos=high or constraint=h100 (repeatable)")
    g.add_argument("--no-wait", action="store_true", help="submit and return; `harness status` / re-running collects")
    g.add_argument("--requeue", action="store_true", help="run preempted runs again in place, and let Slurm requeue preempted jobs")


def settings_from_args(args: Any) -> SlurmSettings:
    over: dict[str, Any] = {
        "partition": getattr(args, "partition", None),
        "account": getattr(args, "account", None),
        "time_limit": getattr(args, "time_limit", None),
        "gpus_per_node": getattr(args, "gpus_per_node", None),
        "cpus_per_node": getattr(args, "cpus_per_node", None),
        "sbatch": getattr(args, "sbatch", None),
    }
    s = load_settings(getattr(args, "slurm_config", None), over)
    s.requeue = s.requeue or bool(getattr(args, "requeue", False))
    return s


def _states_table(handles: list[SlurmHandle]) -> Any:
    from rich.table import Table

    t = Table(title="Slurm jobs", title_justify="left")
    for c in ("run", "job", "state", "node", "status", "min val loss"):
        t.add_column(c)
    for h in handles:
        r = h.record
        t.add_row(
            h.label, h.job_id, h.state, h.node or "-", r.status if r else "-",
            "-" if r is None or r.metrics.min_val_loss is None else f"{r.metrics.min_val_loss:.4f}",
        )  # fmt: skip
    return t


def follow(executor: SlurmExecutor, handles: list[SlurmHandle], console: Any) -> list[RunRecord]:
    """Wait for the jobs with a rich live table (state changes as lines when not on a terminal)."""
    from rich.live import Live

    if console.is_terminal:
        with Live(_states_table(handles), console=console, refresh_per_second=2) as live:
            return executor.wait(handles, on_update=lambda hs: live.update(_states_table(hs)))
    seen: dict[str, str] = {}

    def lines(hs: list[SlurmHandle]) -> None:
        for h in hs:
            now = h.record.status if h.record else h.state
            if seen.get(h.job_id) != now:
                seen[h.job_id] = now
                console.print(f"job {h.job_id} ({h.label}): {h.state}" + (f" -> {h.record.status}" if h.record else "") + (f" on {h.node}" if h.node else ""))

    return executor.wait(handles, on_update=lines)


def run_command(args: Any, specs: list[Any], seeds: list[int], track: str, extra: tuple[str, ...], store: Store, console: Any) -> tuple[int, list[RunRecord]]:
    """`harness run --executor slurm`: check, reconcile, plan, submit, then follow (unless --no-wait).

    Returns (exit code, final records of this invocation). Exit 0 all ok / submitted, 4 some run not ok.
    """
    from harness.runner import plan_runs

    ex = SlurmExecutor(store, settings_from_args(args))
    ex.preflight()  # cluster, partition, shared folder: before anything is written
    timeout_s = args.timeout * 60 if getattr(args, "timeout", None) else None
    kw = {"repo": getattr(args, "repo", None), "use_wandb": bool(getattr(args, "wandb", False))}
    plan = plan_runs(specs, seeds, track, store, extra, force=args.force, timeout_s=timeout_s, **kw)
    ex.test_requests(plan.to_run)
    store.ensure_writable()
    ended = reconcile(store)  # jobs that ended while no harness watched
    if ended:
        console.print(f"collected {len(ended)} run(s) whose Slurm jobs ended meanwhile")
        plan = plan_runs(specs, seeds, track, store, extra, force=args.force, timeout_s=timeout_s, **kw)
    pre = preempted_runs(store, [p.run_key for p in plan.to_run])
    if pre and not ex.settings.requeue:
        console.print(f"not re-running {len(pre)} preempted run(s); pass --requeue to run them again in place")
    to_run = [p for p in plan.to_run if p.run_key not in pre or ex.settings.requeue]
    for sr in plan.complete:
        console.print(f"already complete: {sr.record.variant} seed {sr.record.seed}")
    handles = ex.submit(to_run, force=args.force, requeue_dirs=pre if ex.settings.requeue else None)
    for h in handles:
        console.print(f"submitted {h.label} as Slurm job {h.job_id} ({h.run_dir})")
    wanted = {p.run_key for p in plan.to_run} | {sr.record.run_key for sr in plan.in_progress}
    mine = {h.job_id for h in handles}
    attached = [h for h in ex.attach() if h.run_key in wanted and h.job_id not in mine]
    for h in attached:
        console.print(f"following {h.label}: Slurm job {h.job_id} submitted earlier ({h.state})")
    handles += attached
    if getattr(args, "no_wait", False) or not handles:
        if not handles:
            console.print("nothing to submit: the requested runs are complete" + (" or preempted" if pre and not ex.settings.requeue else ""))
        else:
            console.print(f"{len(handles)} job(s) queued; `harness status --results {store.root}` shows them, re-running this command collects them")
        return 0, []
    try:
        records = follow(ex, handles, console)
    except KeyboardInterrupt:
        console.print("stopped following; the jobs keep running. Re-run the same command to collect them, or `harness status`.")
        return 130, []
    bad = [r for r in records if r.status != "ok"]
    return (4 if bad else 0), records


def status_command(results: Any, as_json: bool, console: Any) -> int:
    """`harness status`: runs pending/running/finished/failed, from the store and the scheduler."""
    import json as _json

    from rich.table import Table

    rows = status_rows(Store(results))
    if as_json:
        print(_json.dumps(rows, indent=2, default=str))
        return 0
    t = Table(title=f"runs in {Store(results).root}", title_justify="left")
    for c in ("group", "variant", "seed", "status", "executor", "job", "scheduler", "node", "min val loss", "error"):
        t.add_column(c)
    for r in rows:
        loss = "-" if r["min_val_loss"] is None else f"{r['min_val_loss']:.4f}"
        t.add_row(r["group"], r["variant"], str(r["seed"]), r["status"], r["executor"], r["job_id"] or "-", r["scheduler_state"] or "-", r["node"] or "-", loss, (r["error"] or "")[:80])
    console.print(t)
    counts = {g: sum(r["group"] == g for r in rows) for g in ("pending", "running", "finished", "failed")}
    console.print(", ".join(f"{n} {g}" for g, n in counts.items()))
    return 0
