"""Plan runs (variant x seed) and execute one plan into a stored run record.

`plan_runs` decides what has to run (skipping runs already complete in the store);
`claim` reserves a run folder under the store lock; `execute_plan` launches the process,
parses its log and writes the final record. Executors (local here, Slurm in `harness.slurm`)
only decide *where* `execute_plan` is called.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness import __version__
from harness.errors import UserError
from harness.launch import ProcessResult, classify, run_process
from harness.logs import parse_log
from harness.record import COMPLETE, RunRecord, redact
from harness.spec import VariantSpec, config_key, run_config, run_key
from harness.store import Store, StoredRun, lock_or_fail, owner_info

LineCallback = Callable[[str], None]


class RunInterrupted(Exception):
    """The user stopped the harness (Ctrl-C / SIGTERM) during a run; remaining runs are not started."""


@dataclass
class RunPlan:
    """Everything needed to execute one run, picklable (it travels to Slurm jobs)."""

    variant: str
    track: str
    seed: int
    run_key: str
    config_key: str
    command: list[str]
    results_root: str
    env: dict[str, str] = field(default_factory=dict)  # overrides on top of the inherited environment
    cwd: str | None = None  # None: the run folder
    timeout_s: float | None = None
    time_limit_s: float | None = None  # the leaderboard track's training-time cap
    provenance: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None  # set by `claim`
    run_dir: str | None = None  # set by `claim`

    def record(self, status: str, executor: dict[str, Any]) -> RunRecord:
        """A fresh record of this (claimed) run: what every writer starts from."""
        assert self.run_id, "claim the plan first"
        return RunRecord(run_id=self.run_id, variant=self.variant, track=self.track, seed=self.seed,
                         run_key=self.run_key, status=status, provenance=dict(self.provenance), executor=executor)


@dataclass
class Plan:
    """What `harness run` will do: runs to launch and runs skipped (already complete / in progress)."""

    to_run: list[RunPlan]
    complete: list[StoredRun]
    in_progress: list[StoredRun]


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- hardware and tracks


def visible_gpus() -> list[str]:
    """Names of the CUDA GPUs this process may use (nvidia-smi, honouring CUDA_VISIBLE_DEVICES)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    names = [ln.strip() for ln in out.splitlines() if ln.strip()]
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        idx = [int(i) for i in vis.split(",") if i.strip().isdigit()]
        names = [names[i] for i in idx if i < len(names)]
    return names


def choose_track(requested: str | None, specs: list[VariantSpec]) -> tuple[str, str]:
    """The track to run on and a one-line reason."""
    if requested:
        if requested not in ("mini", "upstream"):
            raise UserError(f"unknown --track '{requested}'; use mini or upstream")
        return requested, f"track: {requested} (forced with --track)"
    need = max((s.upstream.nproc_per_node for s in specs if s.upstream), default=8)
    gpus = visible_gpus()
    if len(gpus) >= need and all(s.upstream for s in specs):
        return "upstream", f"track: upstream ({len(gpus)} CUDA GPUs visible: {gpus[0]})"
    why = "no CUDA GPUs visible" if not gpus else f"{len(gpus)} CUDA GPUs visible"
    return "mini", f"track: mini ({why}; the upstream track needs {need}; --track upstream forces it)"


def hardware_class(track: str, spec: VariantSpec) -> str:
    if track == "mini":
        return "cpu" if "cuda" not in (spec.mini.args if spec.mini else ()) else "cuda"
    gpus = visible_gpus()
    n = spec.upstream.nproc_per_node if spec.upstream else 0
    return f"{n}x{gpus[0]}" if gpus else f"{n}xGPU (none visible at planning time)"


def _harness_commit() -> str | None:
    here = Path(__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _pkg_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def base_provenance(spec: VariantSpec, track: str, extra_args: tuple[str, ...]) -> dict[str, Any]:
    """Where a run comes from: spec, config, software, machine. Never environment values."""
    return {
        "spec_path": str(spec.path),
        "spec_sha256": spec.sha256,
        "config": run_config(spec, track, extra_args),
        "config_key": config_key(spec, track, extra_args),
        "extra_args": [redact(a) for a in extra_args],  # kept apart from the spec's args: a report compares like with like
        "hardware": hardware_class(track, spec),
        "argv": [redact(a) for a in sys.argv],
        "harness_version": __version__,
        "harness_commit": _harness_commit(),
        "python": platform.python_version(),
        "torch": _pkg_version("torch"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


# ----------------------------------------------------------------------------- planning


def mini_command(spec: VariantSpec, seed: int, extra_args: tuple[str, ...]) -> list[str]:
    assert spec.mini is not None
    return [sys.executable, "-m", "harness.mini.train", *spec.mini.args, *extra_args, "--seed", str(seed)]


def make_plan(
    spec: VariantSpec,
    track: str,
    seed: int,
    store: Store,
    extra_args: tuple[str, ...] = (),
    timeout_s: float | None = None,
) -> RunPlan:
    ckey = config_key(spec, track, extra_args)
    prov = base_provenance(spec, track, extra_args)
    if track == "mini":
        cmd = mini_command(spec, seed, extra_args)
    else:
        cmd = upstream_command(spec, seed, extra_args)
    prov["command"] = [redact(c) for c in cmd]
    return RunPlan(
        variant=spec.name,
        track=track,
        seed=seed,
        run_key=run_key(ckey, seed),
        config_key=ckey,
        command=cmd,
        results_root=str(store.root),
        env={"PYTHONUNBUFFERED": "1"},
        timeout_s=timeout_s,
        time_limit_s=spec.track.time_limit_s if track == "upstream" else None,
        provenance=prov,
    )


def upstream_command(spec: VariantSpec, seed: int, extra_args: tuple[str, ...]) -> list[str]:
    """The torchrun command for the real script; the working tree is prepared by `harness.source`."""
    if spec.upstream is None:
        raise UserError(f"variant '{spec.name}' has no [upstream] section; use --track mini")
    u = spec.upstream
    cmd = ["torchrun", "--standalone", f"--nproc_per_node={u.nproc_per_node}", u.script, *u.args, *extra_args]
    if u.seed_flag:
        cmd += [u.seed_flag, str(seed)]
    return cmd


MAX_SEEDS = 10_000  # far beyond any useful study; stops a typo from planning billions of runs


def parse_seeds(seeds: int | None, seed_list: str | None) -> list[int]:
    if seed_list is not None:
        try:
            out = [int(s) for s in seed_list.split(",") if s.strip() != ""]
        except ValueError:
            raise UserError(f"--seed-list must be comma-separated integers like 3,7,11, got {seed_list!r}") from None
        if not out or any(not 0 <= s < 2**32 for s in out) or len(set(out)) != len(out):
            # 2**32: numpy's and most training scripts' seed range
            raise UserError(f"--seed-list must name distinct integers from 0 to {2**32 - 1}, got {seed_list!r}")
        if len(out) > MAX_SEEDS:
            raise UserError(f"--seed-list names {len(out)} seeds; at most {MAX_SEEDS} per command")
        return out
    n = 1 if seeds is None else seeds
    if n < 1:
        raise UserError(f"--seeds must be a positive number of seeds, got {n}")
    if n > MAX_SEEDS:
        raise UserError(f"--seeds {n} is more than {MAX_SEEDS}; ask for fewer seeds (runs are stored, so you can add more later)")
    return list(range(n))


def plan_runs(
    specs: list[VariantSpec],
    seeds: list[int],
    track: str,
    store: Store,
    extra_args: tuple[str, ...] = (),
    force: bool = False,
    timeout_s: float | None = None,
    repo: str | None = None,
    use_wandb: bool = False,
) -> Plan:
    """Which (variant, seed) runs need launching. Interleaves variants seed by seed (ABAB...).

    Upstream runs to launch are materialised here (worktree, patches, seed; `harness.upstream`), so a
    bad patch or commit is a UserError before anything is claimed. `repo` overrides the spec's URL."""
    runs = {sr.record.run_key: sr for sr in store.runs()}
    plan = Plan([], [], [])
    for seed in seeds:
        for spec in specs:
            p = make_plan(spec, track, seed, store, extra_args, timeout_s)
            prev = runs.get(p.run_key)
            if prev is not None and not force:
                if prev.record.status in COMPLETE:
                    plan.complete.append(prev)
                    continue
                if Store.is_in_progress(prev.record):
                    plan.in_progress.append(prev)
                    continue
            plan.to_run.append(p)
    if track == "upstream" and plan.to_run:
        from harness.upstream import prepare_plans

        prepare_plans(plan.to_run, specs, repo=repo, use_wandb=use_wandb)
    return plan


# ----------------------------------------------------------------------------- execution


def taken(prev: StoredRun | None) -> bool:
    """Whether a stored attempt makes a new one pointless: complete, or in progress with a live owner."""
    if prev is None:
        return False
    return prev.record.status in COMPLETE or Store.is_in_progress(prev.record)


def claim(plan: RunPlan, store: Store, force: bool = False, executor: dict[str, Any] | None = None) -> bool:
    """Reserve a run folder and write a `pending` record, under the store lock.

    Returns False (and claims nothing) if, by now, another harness completed or is running this run.
    """
    with lock_or_fail(store):
        if not force and taken(store.find(plan.run_key)):
            return False
        run_id, run_dir = store.new_run_dir(plan.variant, plan.track, plan.seed, plan.run_key)
        plan.run_id, plan.run_dir = run_id, str(run_dir)
        store.write(run_dir, plan.record("pending", executor or owner_info()))
    return True


def execute_plan(plan: RunPlan, on_line: LineCallback | None = None, executor: dict[str, Any] | None = None) -> RunRecord:
    """Run a claimed plan to its end and store the final record. Never raises for a failed run."""
    assert plan.run_dir and plan.run_id, "claim() the plan first"
    store = Store(plan.results_root)
    run_dir = Path(plan.run_dir)
    log_path = run_dir / "train.log"
    record = plan.record("running", executor or owner_info())
    record.started_at = now_iso()
    store.write(run_dir, record)

    env = {**os.environ, **plan.env}
    result: ProcessResult = run_process(
        plan.command, Path(plan.cwd or run_dir), env, log_path, on_line=on_line, timeout_s=plan.timeout_s
    )
    return finish_record(record, run_dir, result, plan.time_limit_s, store)


def finish_record(record: RunRecord, run_dir: Path, result: ProcessResult, time_limit_s: float | None, store: Store) -> RunRecord:
    """Parse the log, classify the ending, write the final record."""
    log_path = run_dir / record.log_file
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    parsed = parse_log(text)
    m = parsed.metrics
    status, error = classify(result, text, m.has_val_loss, parsed.diverged)
    m.mark_time_limit(time_limit_s)
    record.metrics = m
    record.status = status
    record.error = redact(error) if error else None
    record.returncode = result.returncode
    record.ended_at = now_iso()
    if parsed.data_sha256:
        record.provenance["data_sha256"] = parsed.data_sha256
    store.write(run_dir, record)
    return record
