"""The upstream track's glue between a variant spec, `source` and `launch`.

Materialise a run (worktree + patches + seed + data link), turn planned runs into runnable ones
(`prepare_plans`) and check them (`preflight_plans`), `harness data prepare`, the track time-limit
flag and `harness import`. The command itself is built by `runner.upstream_command`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from harness import source
from harness.errors import UserError
from harness.preflight import Check, find_torchrun, wandb_env
from harness.spec import UpstreamSpec, VariantSpec, config_key, run_key


def work_root() -> Path:
    """Where per-run worktrees live (env HARNESS_WORK, default <cache>/worktrees)."""
    return Path(os.environ.get("HARNESS_WORK") or source.cache_dir() / "worktrees").expanduser()


def upstream_of(spec: VariantSpec, repo: str | None = None) -> UpstreamSpec:
    """The spec's [upstream] section, with `--repo` replacing the URL (forks, local mirrors)."""
    if spec.upstream is None:
        raise UserError(f"variant '{spec.name}' has no [upstream] section; use --track mini")
    return replace(spec.upstream, repo=repo) if repo else spec.upstream


def worktree_dir(spec: VariantSpec, seed: int, extra_args: tuple[str, ...] = ()) -> Path:
    """<work root>/<variant>/<run_key[:16]>: one worktree per run, as `prepare_plans` lays them out."""
    return work_root() / spec.name / run_key(config_key(spec, "upstream", extra_args), seed)[:16]


def materialise_run(
    spec: VariantSpec,
    seed: int | None,
    dest: Path | None = None,
    repo: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> source.Materialised:
    """Worktree for one run; `seed=None` leaves the script as upstream wrote it (data preparation)."""
    u = upstream_of(spec, repo)
    dest = dest or worktree_dir(spec, -1 if seed is None else seed, extra_args)
    return source.materialise(
        u.repo, u.commit, u.script, dest, seed, spec.patch_paths(), seed_flag=u.seed_flag, ref=u.ref
    )


def data_check(m: source.Materialised, variant: str, repo: str | None = None) -> Check:
    try:
        info = source.verify_data(m.worktree, variant, m.data_folder.parent, repo)
    except UserError as e:
        return Check("data", False, str(e))
    return Check("data", True, f"{', '.join(info.files)} verified in {info.folder}")


def prepare_data(spec: VariantSpec, repo: str | None = None, python: str | None = None, root: Path | None = None) -> Path:
    """Run the pinned commit's own prepare_data.py in a worktree; its `fineweb_data/` is the shared folder.

    This downloads FineWeb (the network access the user asked for by running the command).
    """
    m = materialise_run(spec, None, (root or work_root()) / f"{spec.name}-prepare-data", repo)
    res = subprocess.run([python or sys.executable, "prepare_data.py"], cwd=m.worktree)
    if res.returncode != 0:
        raise UserError(f"prepare_data.py of {m.commit[:12]} failed (exit {res.returncode}); see its output above")
    source.verify_data(m.worktree, spec.name, m.data_folder.parent, repo)
    return m.data_folder


# ----------------------------------------------------------------------------------------------
# Runner integration: turn planned upstream runs into runnable ones, and check them before launch


def prepare_plans(plans: list, specs: list[VariantSpec], repo: str | None = None, use_wandb: bool = False) -> None:
    """Materialise each planned run (`runner.RunPlan`) in place: worktree cwd, resolved torchrun, env,
    provenance (commit, patch hashes, seed diff). Raises UserError before anything is claimed."""
    by_name = {s.name: s for s in specs}
    for p in plans:
        spec = by_name[p.variant]
        m = materialise_run(spec, p.seed, work_root() / spec.name / p.run_key[:16], repo)
        p.cwd = str(m.worktree)
        p.command = [find_torchrun() or p.command[0], *p.command[1:]]
        p.env.update(wandb_env(use_wandb))  # the scripts call wandb.init with no fallback
        p.provenance["upstream"] = m.provenance()
        p.provenance["env"] = dict(p.env)  # only what the harness set: never the user's secrets


def preflight_plans(plans: list, specs: list[VariantSpec], use_wandb: bool = False, gpus=None):
    """The automatic pre-run check (GPUs, Hopper, disk, torchrun, data per run); UserError on failure."""
    from harness.preflight import require_ok, run_preflight

    by_name = {s.name: s for s in specs}
    nproc = max(upstream_of(by_name[p.variant]).nproc_per_node for p in plans)
    data_checks = []
    for p in plans:
        try:
            up = p.provenance["upstream"]
            repo = up["repo"] if up["repo"] != upstream_of(by_name[p.variant]).repo else None  # --repo was given
            source.verify_data(Path(p.cwd), p.variant, Path(up["data_folder"]).parent, repo)
        except UserError as e:
            data_checks.append(Check("data", False, str(e)))
    report = run_preflight(nproc, work_root(), gpus, use_wandb, data_checks[0] if data_checks else Check("data", True, "verified"))
    require_ok(report)
    return report


# ----------------------------------------------------------------------------------------------
# harness import: runs done elsewhere (e.g. a PR author's logs) recorded as imported runs


def import_logs(
    store, spec: VariantSpec, logs: list[Path], seed: int | None = None, hardware: str = "unknown (imported)"
) -> list:
    """Parse each log and store it as an `imported` upstream run; a log already imported is skipped.

    Seeds: `seed`, `seed+1`, ... in the order given (default: after the variant's highest stored seed).
    Returns the new records. Everything is checked before anything is written.
    """
    import shutil as _shutil

    from harness.logs import parse_log
    from harness.record import RunRecord
    from harness.runner import base_provenance, now_iso
    from harness.spec import _digest
    from harness.store import lock_or_fail

    parsed = []
    for path in logs:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"log file {path} not found; pass paths of training logs")
        data = path.read_bytes()
        pl = parse_log(data.decode("utf-8", errors="replace"))
        if not pl.events:
            raise UserError(f"{path} has no slowrun log lines (no step/val lines); is it a training log?")
        parsed.append((path, source.sha256_bytes(data), pl))
    ckey = config_key(spec, "upstream")
    out = []
    with lock_or_fail(store):
        stored = store.runs()  # read the store once: it parses every run.json
        existing = {sr.record.run_key for sr in stored}
        seeds_used = [sr.record.seed for sr in stored if sr.record.variant == spec.name]
        next_seed = seed if seed is not None else (max(seeds_used) + 1 if seeds_used else 0)
        for path, digest, pl in parsed:
            rkey = _digest({"config_key": ckey, "imported_log_sha256": digest})
            if rkey in existing:
                continue
            m = pl.metrics
            m.mark_time_limit(spec.track.time_limit_s)
            status, error = ("diverged", "loss became NaN/inf") if pl.diverged else (
                ("ok", None) if m.has_val_loss else ("failed", "the imported log has no validation loss")
            )
            prov = base_provenance(spec, "upstream", ())
            prov.update(hardware=hardware, imported_from=str(path.resolve()), log_sha256=digest)
            run_id, run_dir = store.new_run_dir(spec.name, "upstream", next_seed, rkey)
            _shutil.copyfile(path, run_dir / "train.log")
            rec = RunRecord(
                run_id=run_id, variant=spec.name, track="upstream", seed=next_seed, run_key=rkey, status=status,
                error=error, metrics=m, provenance=prov, executor={"kind": "imported"}, ended_at=now_iso(), imported=True,
            )
            store.write(run_dir, rec)
            existing.add(rkey)
            out.append(rec)
            next_seed += 1
    return out
