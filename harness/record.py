"""The run record: the one schema every writer and reader of `run.json` goes through.

A run folder holds `train.log` (everything the training process printed) and `run.json`
(one `RunRecord`). Times are seconds; timestamps are ISO-8601 UTC strings.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 1

Status = Literal[
    "pending",  # planned or submitted, not started
    "running",  # process started; if its owner is gone the run is stale (see store)
    "ok",  # finished and a final metric was parsed
    "failed",  # exited non-zero without a more specific class
    "crashed",  # python traceback / died on a signal other than ours
    "diverged",  # NaN/inf loss
    "oom",  # out of (GPU) memory
    "nccl",  # NCCL / distributed (c10d, gloo) error
    "timeout",  # hit the harness's wall-clock limit
    "killed",  # SIGKILL from outside (OOM killer, scheduler)
    "interrupted",  # Ctrl-C / SIGTERM to the harness, or a cancelled job
    "preempted",  # scheduler preemption (Slurm)
]
COMPLETE: frozenset[str] = frozenset({"ok"})
FINISHED: frozenset[str] = frozenset(
    {"ok", "failed", "crashed", "diverged", "oom", "nccl", "timeout", "killed", "interrupted", "preempted"}
)


@dataclass
class EpochMetric:
    """One validation evaluation at the end of an epoch."""

    epoch: int  # 1-based epoch just finished (0 = the initial eval before training)
    step: int | None  # optimizer step at which it was measured
    val_loss: float
    val_bpb: float | None


@dataclass
class Metrics:
    """Everything parsed from the log. Missing values are None, never NaN."""

    epochs: list[EpochMetric] = field(default_factory=list)  # per-epoch val in order; epoch 0 = initial eval
    initial_val_loss: float | None = None  # step-0 eval before training
    initial_val_bpb: float | None = None
    final_val_loss: float | None = None  # last per-epoch val loss
    final_val_bpb: float | None = None
    min_val_loss: float | None = None  # the script's own "Min val Loss" (else min over evals)
    min_val_bpb: float | None = None
    logit_avg_loss: float | None = None  # best logit-average / ensemble / checkpoint-average loss
    logit_avg_bpb: float | None = None
    logit_avg: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> {val_loss, val_bpb}
    final_train_loss: float | None = None
    training_time_s: float | None = None  # "Total training time" (excludes evals, warm-up)
    wall_time_s: float | None = None  # "Total wall time" of the script
    peak_memory_mib: float | None = None
    tokens_per_s: float | None = None  # median of step lines' tok/sec
    steps: int | None = None  # last step number seen
    early_stopped: bool = False
    over_time_limit: bool | None = None  # training_time_s > the track's limit (None: no limit)

    @property
    def has_val_loss(self) -> bool:
        """A run without any validation loss measured nothing, whatever its exit code."""
        return self.min_val_loss is not None or self.final_val_loss is not None

    def mark_time_limit(self, limit_s: float | None) -> None:
        """Set `over_time_limit`; it stays None when the limit or the training time is unknown."""
        if limit_s is not None and self.training_time_s is not None:
            self.over_time_limit = self.training_time_s > limit_s


@dataclass
class RunRecord:
    """One training run: what ran, where, how it ended, and what it measured."""

    run_id: str  # folder name under results/<variant>/, unique per (run_key)
    variant: str  # variant name from variants/<name>.toml
    track: str  # "mini" or "upstream"
    seed: int
    run_key: str  # hash of (variant spec for this track, seed, extra args): identical key = same run
    status: str = "pending"  # one of `Status`
    error: str | None = None  # one line saying why a run did not finish ok
    metrics: Metrics = field(default_factory=Metrics)
    provenance: dict[str, Any] = field(default_factory=dict)  # see `provenance_keys` in README
    executor: dict[str, Any] = field(default_factory=dict)  # {kind, pid, host, job_id, node, state}
    started_at: str | None = None
    ended_at: str | None = None
    returncode: int | None = None
    imported: bool = False  # recorded by `harness import`, not run by the harness
    log_file: str = "train.log"  # relative to the run folder
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        data = dict(data)
        m = dict(data.pop("metrics", {}) or {})
        m["epochs"] = [EpochMetric(**e) for e in m.get("epochs", [])]
        known_m = {f.name for f in dataclasses.fields(Metrics)}
        metrics = Metrics(**{k: v for k, v in m.items() if k in known_m})
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(metrics=metrics, **{k: v for k, v in data.items() if k in known})


# Secrets must never land in records or reports: anything that looks like a credential is dropped.
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL|PRIVATE|AUTH|COOKIE|SESSION)", re.I)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def secret_values(env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(value, placeholder) for every secret-looking variable in `env` (default: os.environ)."""
    env = os.environ if env is None else env
    return [(v, f"<{k} redacted>") for k, v in env.items() if v and len(v) >= 6 and is_secret_name(k)]


def redact(text: str, env: dict[str, str] | None = None) -> str:
    """Replace the value of every secret-looking environment variable found in `text`."""
    for value, placeholder in secret_values(env):
        if value in text:
            text = text.replace(value, placeholder)
    return text
