"""The results store: one folder per run attempt, an atomic `run.json`, a lock, resume, pandas.

Layout: `<root>/<variant>/<run_id>/{run.json, train.log}`, with
`run_id = <track>-seed<seed>-<run_key[:8]>-a<attempt>`. A new attempt of the same run (after a
failure, a killed harness, or `--force`) gets a new folder, so nothing stored is ever overwritten
by a later attempt. Readers see one row per run_key: its newest complete attempt, else its newest.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
from filelock import FileLock, Timeout

from harness.errors import UserError
from harness.record import COMPLETE, RunRecord, redact

RECORD_FILE = "run.json"
LOCK_FILE = ".harness.lock"


def default_results_dir() -> Path:
    return Path(os.environ.get("HARNESS_RESULTS", "results"))


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + fsync + rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _proc_start_ticks(pid: int) -> int | None:
    """Start time of a process (clock ticks since boot), to tell a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def owner_info() -> dict[str, object]:
    """Identify this harness process, so another one can tell whether a `running` record is stale."""
    pid = os.getpid()
    return {"kind": "local", "host": socket.gethostname(), "pid": pid, "pid_start": _proc_start_ticks(pid)}


def owner_alive(executor: dict[str, object]) -> bool | None:
    """True/False for local runs on this host; None when it cannot be told from here (other host, Slurm)."""
    if executor.get("kind", "local") != "local" or executor.get("host") != socket.gethostname():
        return None
    pid = executor.get("pid")
    if not isinstance(pid, int):
        return False
    start = _proc_start_ticks(pid)
    return start is not None and start == executor.get("pid_start")


def _redact_strings(obj: Any) -> Any:
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: _redact_strings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact_strings(v) for v in obj]
    return obj


@dataclass(frozen=True)
class StoredRun:
    path: Path  # the run folder
    record: RunRecord

    @property
    def log_path(self) -> Path:
        return self.path / self.record.log_file


class Store:
    """A results folder. All writes of run.json go through `write` (atomic); claims take the lock."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_results_dir()

    # -- writing -----------------------------------------------------------------------

    def ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe.", delete=True)
            probe.close()
        except OSError as e:
            raise UserError(
                f"results folder {self.root} is not writable ({e.strerror}); pass --results DIR or set HARNESS_RESULTS"
            ) from None

    def lock(self, timeout: float = 60.0) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / LOCK_FILE), timeout=timeout)

    def write(self, run_dir: Path, record: RunRecord) -> None:
        # Redact at the one place every record passes through: no secret reaches disk by any field.
        # Strings are redacted before JSON encoding, which would escape quotes, backslashes and
        # non-ASCII characters of a secret out of `redact`'s sight.
        text = json.dumps(_redact_strings(record.to_dict()), indent=2, sort_keys=False)
        atomic_write_text(run_dir / RECORD_FILE, text + "\n")

    def new_run_dir(self, variant: str, track: str, seed: int, run_key: str) -> tuple[str, Path]:
        """Reserve the next attempt folder for a run (call under `lock()`)."""
        base = f"{track}-seed{seed}-{run_key[:8]}"
        vdir = self.root / variant
        vdir.mkdir(parents=True, exist_ok=True)
        attempt = 1 + sum(1 for p in vdir.glob(f"{base}-a*") if p.is_dir())
        while True:
            run_id = f"{base}-a{attempt}"
            path = vdir / run_id
            try:
                path.mkdir()
                return run_id, path
            except FileExistsError:
                attempt += 1

    # -- reading -----------------------------------------------------------------------

    def _iter(self) -> Iterator[StoredRun]:
        if not self.root.is_dir():
            return
        for rec_file in sorted(self.root.glob(f"*/*/{RECORD_FILE}")):
            try:
                data = json.loads(rec_file.read_text(encoding="utf-8"))
                yield StoredRun(rec_file.parent, RunRecord.from_dict(data))
            except (OSError, ValueError, TypeError):
                # A foreign or hand-edited file must not make the whole store unreadable.
                continue

    def attempts(self) -> list[StoredRun]:
        """Every attempt of every run, oldest first per run."""
        return list(self._iter())

    def runs(self, include_stale: bool = True) -> list[StoredRun]:
        """One entry per run_key: the newest complete attempt, else the newest attempt."""
        best: dict[str, StoredRun] = {}
        for sr in self._iter():
            cur = best.get(sr.record.run_key)
            if cur is None or _rank(sr) >= _rank(cur):
                best[sr.record.run_key] = sr
        out = list(best.values())
        if not include_stale:
            out = [sr for sr in out if not self.is_stale(sr.record)]
        return sorted(out, key=lambda sr: (sr.record.variant, sr.record.track, sr.record.seed, sr.record.run_id))

    def find(self, run_key: str) -> StoredRun | None:
        for sr in self.runs():
            if sr.record.run_key == run_key:
                return sr
        return None

    @staticmethod
    def is_stale(record: RunRecord) -> bool:
        """A `running`/`pending` record whose local owner process is gone (e.g. SIGKILLed harness)."""
        if record.status not in ("running", "pending"):
            return False
        return owner_alive(record.executor) is False

    @staticmethod
    def is_in_progress(record: RunRecord) -> bool:
        """A `running`/`pending` record whose owner is alive, or cannot be told from here (Slurm)."""
        return record.status in ("running", "pending") and not Store.is_stale(record)

    def load_table(self) -> pd.DataFrame:
        rows = []
        for sr in self.runs():
            r, m, prov = sr.record, sr.record.metrics, sr.record.provenance
            status = "stale" if self.is_stale(r) else r.status
            rows.append(
                {
                    "run_id": r.run_id,
                    "variant": r.variant,
                    "track": r.track,
                    "seed": r.seed,
                    "status": status,
                    "error": r.error,
                    "run_key": r.run_key,
                    "config_key": prov.get("config_key"),
                    "hardware": prov.get("hardware"),
                    "imported": r.imported,
                    "started_at": r.started_at,
                    "ended_at": r.ended_at,
                    "min_val_loss": m.min_val_loss,
                    "min_val_bpb": m.min_val_bpb,
                    "final_val_loss": m.final_val_loss,
                    "final_val_bpb": m.final_val_bpb,
                    "logit_avg_loss": m.logit_avg_loss,
                    "logit_avg_bpb": m.logit_avg_bpb,
                    "final_train_loss": m.final_train_loss,
                    "training_time_s": m.training_time_s,
                    "wall_time_s": m.wall_time_s,
                    "peak_memory_mib": m.peak_memory_mib,
                    "tokens_per_s": m.tokens_per_s,
                    "steps": m.steps,
                    "n_epochs": sum(1 for e in m.epochs if e.epoch >= 1),
                    "over_time_limit": m.over_time_limit,
                    "path": str(sr.path),
                    # the `--extra-args` of `harness run` (shell-quoted; "" none, None when not recorded)
                    "extra_args": shlex.join(prov["extra_args"]) if isinstance(prov.get("extra_args"), list) else None,
                }
            )
        cols = [
            "run_id", "variant", "track", "seed", "status", "error", "run_key", "config_key", "hardware",
            "imported", "started_at", "ended_at", "min_val_loss", "min_val_bpb", "final_val_loss",
            "final_val_bpb", "logit_avg_loss", "logit_avg_bpb", "final_train_loss", "training_time_s",
            "wall_time_s", "peak_memory_mib", "tokens_per_s", "steps", "n_epochs", "over_time_limit", "path", "extra_args",
        ]  # fmt: skip
        df = pd.DataFrame(rows, columns=cols)
        for c in cols[12:25]:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        return df

    def load_epochs(self) -> pd.DataFrame:
        rows = []
        for sr in self.runs():
            r = sr.record
            for e in r.metrics.epochs:
                rows.append(
                    {
                        "run_id": r.run_id,
                        "variant": r.variant,
                        "track": r.track,
                        "seed": r.seed,
                        "status": r.status,
                        "config_key": r.provenance.get("config_key"),
                        "epoch": e.epoch,
                        "step": e.step,
                        "val_loss": e.val_loss,
                        "val_bpb": e.val_bpb,
                    }
                )
        cols = ["run_id", "variant", "track", "seed", "status", "config_key", "epoch", "step", "val_loss", "val_bpb"]
        return pd.DataFrame(rows, columns=cols)


def _attempt(run_id: str) -> int:
    try:
        return int(run_id.rsplit("-a", 1)[1])
    except (IndexError, ValueError):
        return 0


def _rank(sr: StoredRun) -> tuple[int, int, str]:
    """Order attempts of one run: complete beats incomplete, then the later attempt wins."""
    r = sr.record
    return (1 if r.status in COMPLETE else 0, _attempt(r.run_id), r.started_at or "")


def lock_or_fail(store: Store, timeout: float = 60.0) -> FileLock:
    lk = store.lock(timeout)
    try:
        lk.acquire()
    except Timeout:
        raise UserError(f"results folder {store.root} is locked by another harness for over {timeout:.0f}s; retry later") from None
    return lk
