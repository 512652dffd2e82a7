"""The live run display, fed the mini trainer's real log lines."""

from __future__ import annotations

import io

from rich.console import Console

from harness.progress import RunDisplay
from harness.record import EpochMetric, Metrics, RunRecord

# The tail of a real 2-epoch mini run: the trainer announces "Starting epoch 3" before the last eval.
LINES = [
    "Starting epoch 2",
    "step 00019 (50.00%) | loss: 5.680355 | dt: 30.07ms | tok/sec: 8,513 | bf16_mfu: 0.00% | eta: 0.0m",
    "Step 00019 | Epoch 1 | Val BPB: 1.721875 | Val Loss: 3.550198",
    "Starting epoch 3",
    "step 00038 (100.00%) | loss: 3.837054 | dt: 19.27ms | tok/sec: 13,284 | bf16_mfu: 0.00% | eta: 0.0m",
    "Step 00038 | Epoch 2 | Val BPB: 1.327618 | Val Loss: 2.738907",
]


def test_finished_run_shows_the_epochs_it_ran_not_the_announced_next_one():
    con = Console(file=io.StringIO(), width=160, force_terminal=False)
    with RunDisplay(con) as d:
        task = d.start_run("v seed 0")
        feed = d.on_line(task)
        for line in LINES:
            feed(line)
        live = d.progress.tasks[task]
        assert live.fields["val"] == "2.7389" and live.completed == 100.0
        rec = RunRecord(run_id="r", variant="v", track="mini", seed=0, run_key="k", status="ok",
                        metrics=Metrics(epochs=[EpochMetric(0, 0, 6.2, 3.0), EpochMetric(1, 19, 3.55, 1.7), EpochMetric(2, 38, 2.74, 1.3)]))
        d.finish_run(task, rec)
        assert d.progress.tasks[task].fields["epoch"] == 2 and d.progress.tasks[task].fields["eta"] == "done"
