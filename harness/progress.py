"""A rich live display of runs in progress, fed line by line from the training log."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.logs import parse_progress
from harness.record import RunRecord


def _fmt_eta(eta_s: float | None) -> str:
    if eta_s is None:
        return "eta -"
    return f"eta {eta_s / 60:.1f}m" if eta_s >= 60 else f"eta {eta_s:.0f}s"


class RunDisplay:
    """One progress bar per run: percent, epoch, latest val loss, ETA (from the script's own lines)."""

    def __init__(self, console: Console, verbose: bool = False) -> None:
        self.console = console
        self.verbose = verbose
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("epoch {task.fields[epoch]}"),
            TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[eta]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )

    def __enter__(self) -> "RunDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start_run(self, label: str) -> TaskID:
        return self.progress.add_task(label, total=100.0, epoch="-", val="-", eta="eta -")

    def on_line(self, task: TaskID):
        def handle(line: str) -> None:
            if self.verbose:
                self.progress.console.print(line, markup=False, highlight=False)
            p = parse_progress(line)
            if p is None:
                return
            upd: dict[str, object] = {}
            if p.pct is not None:
                upd["completed"] = min(p.pct, 100.0)
            if p.epoch is not None:
                upd["epoch"] = p.epoch
            if p.val_loss is not None:
                upd["val"] = f"{p.val_loss:.4f}"
            if p.eta_s is not None:
                upd["eta"] = _fmt_eta(p.eta_s)
            if upd:
                self.progress.update(task, **upd)

        return handle

    def finish_run(self, task: TaskID, record: RunRecord) -> None:
        ok = record.status == "ok"
        upd: dict[str, object] = {}
        done = [e.epoch for e in record.metrics.epochs if e.epoch >= 1]
        if done:  # scripts announce "Starting epoch N+1" before the last eval: show the epochs actually finished
            upd["epoch"] = max(done)
        self.progress.update(
            task,
            completed=100.0 if ok else self.progress.tasks[task].completed,
            eta="done" if ok else record.status.upper(),
            **upd,
        )


def runs_table(records: list[RunRecord], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("variant", "seed", "status", "min val loss", "final val loss", "train time", "wall time", "run"):
        t.add_column(col, justify="right" if col in ("seed", "min val loss", "final val loss", "train time", "wall time") else "left")
    for r in records:
        m = r.metrics
        t.add_row(
            r.variant,
            str(r.seed),
            r.status if r.status == "ok" else f"[red]{r.status}[/red]",
            "-" if m.min_val_loss is None else f"{m.min_val_loss:.6f}",
            "-" if m.final_val_loss is None else f"{m.final_val_loss:.6f}",
            "-" if m.training_time_s is None else f"{m.training_time_s:.1f}s",
            "-" if m.wall_time_s is None else f"{m.wall_time_s:.1f}s",
            r.run_id if r.status == "ok" else f"{r.run_id} ({r.error or ''})",
        )
    return t
