"""Preflight checks for the upstream track: `harness doctor` and the automatic check before a run.

Each check returns a `Check`; `run_preflight` collects them and `require_ok` turns failures into one
UserError before anything is launched. GPU facts come from torch.cuda via `gpu_info()`; tests pass a
`GpuInfo` in because this machine has no GPU.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.errors import UserError

HOPPER_MAJOR = 9  # FlashAttention-3 (loaded by every pinned two_hour script) needs sm90: H100/H200
DEFAULT_MIN_FREE_GIB = 50.0  # two_hour keeps up to 11 fp32 parameter copies for logit averaging


@dataclass(frozen=True)
class GpuInfo:
    count: int
    names: tuple[str, ...] = ()
    capabilities: tuple[tuple[int, int], ...] = ()

    @property
    def hardware(self) -> str:
        """The coarse class stored in run records, e.g. `8xNVIDIA H100 80GB HBM3` or `cpu`."""
        return f"{self.count}x{self.names[0]}" if self.count and self.names else "cpu"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True  # a failed required check blocks a run; others are warnings


@dataclass
class PreflightReport:
    checks: list[Check] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # variables the harness sets for the run

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.required and not c.ok]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks], "env": self.env}


def gpu_info() -> GpuInfo:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return GpuInfo(0)
    if not torch.cuda.is_available():
        return GpuInfo(0)
    n = torch.cuda.device_count()
    return GpuInfo(
        n,
        tuple(torch.cuda.get_device_name(i) for i in range(n)),
        tuple(tuple(torch.cuda.get_device_capability(i)) for i in range(n)),  # type: ignore[misc]
    )


def find_torchrun() -> str | None:
    """torchrun on PATH, else the one next to this Python (a venv that is not activated)."""
    found = shutil.which("torchrun")
    if found:
        return found
    local = Path(sys.executable).parent / "torchrun"
    return str(local) if local.exists() else None


def wandb_env(use_wandb: bool) -> dict[str, str]:
    """The scripts call wandb.init on rank 0 with no fallback: set the mode explicitly."""
    if use_wandb:
        return {"WANDB_MODE": os.environ.get("WANDB_MODE", "online")}
    return {"WANDB_MODE": "disabled"}


def check_gpus(gpus: GpuInfo, nproc: int, need_hopper: bool = True) -> list[Check]:
    checks = [
        Check(
            "gpus",
            gpus.count >= nproc,
            f"{gpus.count} CUDA GPU(s) visible{': ' + ', '.join(sorted(set(gpus.names))) if gpus.names else ''}; "
            f"the run needs {nproc}",
        )
    ]
    if need_hopper:
        hopper = bool(gpus.capabilities) and all(c[0] == HOPPER_MAJOR for c in gpus.capabilities[:nproc])
        caps = ", ".join(sorted({f"sm{a}{b}" for a, b in gpus.capabilities})) or "none"
        checks.append(Check("hopper", hopper, f"FlashAttention-3 needs Hopper (sm90); found {caps}"))
    return checks


def check_disk(path: Path, min_free_gib: float = DEFAULT_MIN_FREE_GIB) -> Check:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent  # the folder may not exist yet: measure the filesystem it will live on
    free = shutil.disk_usage(p).free / 2**30
    return Check("disk", free >= min_free_gib, f"{free:.1f} GiB free at {p}; checkpoints need about {min_free_gib:.0f} GiB")


def check_torchrun() -> Check:
    tr = find_torchrun()
    return Check("torchrun", tr is not None, tr or "torchrun not found on PATH; install torch in this environment")


def run_preflight(
    nproc: int = 8,
    work_dir: Path | None = None,
    gpus: GpuInfo | None = None,
    use_wandb: bool = False,
    data_check: Check | None = None,
    min_free_gib: float = DEFAULT_MIN_FREE_GIB,
    need_hopper: bool = True,
) -> PreflightReport:
    """All checks; `data_check` comes from the caller (it needs a materialised worktree)."""
    gpus = gpu_info() if gpus is None else gpus
    checks = check_gpus(gpus, nproc, need_hopper)
    checks.append(check_disk(work_dir or Path.cwd(), min_free_gib))
    checks.append(check_torchrun())
    if data_check is not None:
        checks.append(data_check)
    env = wandb_env(use_wandb)
    checks.append(Check("wandb", True, f"WANDB_MODE={env['WANDB_MODE']}" + ("" if use_wandb else " (pass --wandb to log)"), required=False))
    return PreflightReport(checks, env)


def require_ok(report: PreflightReport) -> None:
    """Before a run: any failed required check is one UserError naming all of them."""
    bad = report.failures()
    if bad:
        raise UserError("preflight failed: " + "; ".join(f"{c.name}: {c.detail}" for c in bad) + " (see `harness doctor`)")


def render(report: PreflightReport):  # -> rich.table.Table
    from rich.table import Table

    t = Table(title="harness doctor")
    t.add_column("check")
    t.add_column("status")
    t.add_column("detail")
    for c in report.checks:
        status = "[green]ok[/]" if c.ok else ("[red]FAIL[/]" if c.required else "[yellow]warn[/]")
        t.add_row(c.name, status, c.detail)
    return t
