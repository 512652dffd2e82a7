"""One parser for every log format the slowrun scripts have printed, and for the mini trainer.

text -> lines (CR/ANSI/torchrun-prefix cleaned) -> typed `Event`s -> `record.Metrics`.

Every line format has a catalog id from `slowrun-upstream-catalog.md` (V0, V1r, S2, L2, U3, P3u, ...);
each event carries it in `Event.fmt`. Lines the parser does not know are ignored, so stderr noise,
warnings and tracebacks cost nothing. Dispatch is on the first four characters of the stripped line
(a dict lookup), so the common case (a step line) costs one regex match.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from harness.errors import UserError
from harness.record import EpochMetric, Metrics

__all__ = [
    "Event",
    "ParsedLog",
    "Progress",
    "parse_log",
    "parse_line",
    "parse_progress",
    "parse_result_json",
    "parse_file",
    "metrics_to_frame",
    "summary_dict",
]


@dataclass(slots=True)
class Event:
    """One recognised log line. Fields not carried by that format are None."""

    kind: str  # val, step, logit_avg, summary, epoch_start, early_stop, cap, ... (see _HANDLERS)
    fmt: str  # catalog id of the line format, e.g. "V1", "S2", "U3", "PR95-val"
    line: int = 0  # 1-based line number in the cleaned log
    step: int | None = None
    epoch: int | None = None  # val: epoch just finished; step: epoch being trained; epoch_start: new epoch
    val_loss: float | None = None
    val_bpb: float | None = None
    train_loss: float | None = None
    label: str | None = None  # logit-avg / ensemble label, summary name, cap reason...
    value: float | None = None  # summary value (seconds, MiB, loss), tok/s for step lines
    pct: float | None = None
    eta_s: float | None = None
    model: int | None = None  # unlimited/ensemble: 1-based model index
    extra: dict[str, Any] | None = None
    dt_ms: float | None = None  # step lines: that step's time


@dataclass
class ParsedLog:
    events: list[Event] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    data_sha256: str | None = None  # from the mini trainer's "Mini data sha256:" line
    diverged: bool = False  # a non-finite loss in a step/val line, or the mini "Diverged:" line
    result_json: dict[str, Any] | None = None  # parse_result_json() of the file, when the caller gives one

    @property
    def result_path(self) -> str | None:
        """Where the script said it wrote its result JSON (J1-J4), if it did."""
        for ev in reversed(self.events):
            if ev.kind == "result_saved":
                return ev.label
        return None


@dataclass(slots=True)
class Progress:
    step: int | None = None
    pct: float | None = None
    epoch: int | None = None  # the epoch now being trained
    val_loss: float | None = None
    eta_s: float | None = None
    train_loss: float | None = None


# ---------------------------------------------------------------------------------------------------------
# Line patterns. F matches any number Python prints for a float, including nan/inf from a diverged run.
F = r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf))"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
# torchrun --tee / --log-dir and `[rank0]:` prefixes put the local rank in front of each line.
_RANK_PREFIX = re.compile(r"\[(?:rank|default)\d+\]:\s?")
# Two ranks writing without a newline can splice lines: cut where an upstream line starts mid-line.
_SPLICE = re.compile(r"(?<=\S)(?=Step \d{5} \||step \d{5} \(|Starting epoch \d)")
# An unterminated last line that ends in a number may have been cut mid-number; upstream prints
# val/loss figures with 6 decimals, so only those endings are trusted.
_CUT_NUMBER = re.compile(r"\d\.?$")
_FULL_FLOAT_END = re.compile(r"\.\d{6}$")

Handler = Callable[[re.Match[str]], Event]


def _f(s: str) -> float:
    return float(s)


# S1/S2/S3/PR63: step NNNNN (pct%) | loss: x | dt: ms | tok/sec: 1,234 | bf16_mfu: m%{suffixes}. The known
# suffixes are groups of the one pattern (this is the hot path: one match, one groups() call per line);
# anything after them lands in the last group, which is empty unless a patch added fields or lines were spliced.
_S = re.compile(
    r"step (\d+) \(" + F + r"%\) \| loss: " + F + r" \| dt: ([\d.]+)ms \| tok/sec: ([\d,]+) \| bf16_mfu: ([\d.]+)%"
    r"( \[DUPE\])?(?: \| iters: (\d+))?(?: \| train_t: ([\d.]+)m)?(?: \| wall_t: ([\d.]+)m)?(?: \| eta: ([\d.]+)m)?(.*)$"
)
_INF = math.inf


def _h_step(m: re.Match[str]) -> Event | None:
    step, pct, loss, dt, tok, mfu, dupe, iters, train_t, wall_t, eta, rest = m.groups()
    if rest and ("tep " in rest or "Starting" in rest):
        return None  # another rank's line was spliced in: the caller splits the line
    # bf16_mfu is not kept: upstream prints 0.00% on any GPU but H100/A100/4090 (catalog 1b)
    extra: dict[str, Any] | None = None
    fmt = "S1"
    if dupe or iters or train_t:
        extra = {}
        if dupe:
            extra["dupe"], fmt = True, "S2"
        if iters:
            extra["iters"], fmt = int(iters), "S3"
        if train_t:
            extra["train_t_s"], fmt = float(train_t) * 60.0, "PR63"
        if wall_t:
            extra["wall_t_s"] = float(wall_t) * 60.0
    # positional: this runs once per step line and keyword construction costs twice as much
    return Event("step", fmt, 0, int(step), None, None, None, float(loss), None, float(tok.replace(",", "")),
                 float(pct), float(eta) * 60.0 if eta else None, None, extra, float(dt))


# PR95 JEPA (modded-nanogpt style)
_JEPA_VAL = re.compile(r"step:(\d+)/(\d+)\s+val_loss:" + F + r"\s+val_bpb:" + F + r"\s+train_time:(\d+)ms\s+step_avg:" + F + "ms")
_JEPA_STEP = re.compile(r"step:(\d+)/(\d+)\s+ce:" + F + r"\s+jmse:" + F + r".*?\s(\d+)ms\s*$")


def _h_jepa_val(m: re.Match[str]) -> Event:
    step, total = int(m.group(1)), int(m.group(2))
    return Event("val", "PR95-val", step=step, val_loss=_f(m.group(3)), val_bpb=_f(m.group(4)),
                 pct=100.0 * step / total if total else None, extra={"train_time_s": int(m.group(5)) / 1000.0})


def _h_jepa_step(m: re.Match[str]) -> Event:
    step, total = int(m.group(1)), int(m.group(2))
    return Event("step", "PR95-step", step=step, train_loss=_f(m.group(3)),
                 pct=100.0 * step / total if total else None, extra={"elapsed_ms": int(m.group(5))})


# V0/V0r/V1/V1r, PR52 Final / Skipping, research n_layer
_V = re.compile(r"Step (\d+) \| (?:Epoch (\d+) \| )?Val BPB: " + F + r" \| Val Loss: " + F + r"(?: \| eval iters: (\d+) \| train iters: (\d+))?\s*$")
_V_FINAL52 = re.compile(r"Step (\d+) \| Final \| Val BPB: " + F + r" \| Val Loss: " + F + r"\s*$")
_V_SKIP = re.compile(r"Step (\d+) \| Epoch (\d+) \| Skipping val eval")
_N_LAYER = re.compile(r"Step (\d+) \| n_layer -> (\d+)")
_STEP_CAP = re.compile(r"Step cap: (\d+)")


def _h_val(m: re.Match[str]) -> Event:
    epoch = m.group(2)
    recur = m.group(5) is not None
    fmt = ("V1" if epoch is not None else "V0") + ("r" if recur else "")
    ev = Event("val", fmt, step=int(m.group(1)), epoch=int(epoch) if epoch is not None else 0,
               val_bpb=_f(m.group(3)), val_loss=_f(m.group(4)))
    if recur:
        ev.extra = {"eval_iters": int(m.group(5)), "train_iters": int(m.group(6))}
    return ev


def _h_val_final52(m: re.Match[str]) -> Event:
    return Event("val", "PR52-final", step=int(m.group(1)), val_bpb=_f(m.group(2)), val_loss=_f(m.group(3)), label="final")


def _h_val_skip(m: re.Match[str]) -> Event:
    return Event("val_skipped", "PR52-skip", step=int(m.group(1)), epoch=int(m.group(2)))


def _h_n_layer(m: re.Match[str]) -> Event:
    return Event("n_layer", "UT-nlayer", step=int(m.group(1)), value=float(m.group(2)))


def _h_step_cap(m: re.Match[str]) -> Event:
    return Event("header", "PR78-cap", label="step_cap", value=float(m.group(1)))


_V1F = re.compile(r"Final Val BPB: " + F + r" \| Val Loss: " + F + r"( \[DUPE\])?\s*$")
_P4 = re.compile(r"Final train loss: " + F + r"\s*$")
_FINAL_ENS_HDR = re.compile(r"Final ensemble eval: last (\d+) models")


def _h_v1f(m: re.Match[str]) -> Event:
    return Event("val", "V1f", val_bpb=_f(m.group(1)), val_loss=_f(m.group(2)), label="final")


def _summary(fmt: str, label: str) -> Callable[[re.Match[str]], Event]:
    def h(m: re.Match[str]) -> Event:
        return Event("summary", fmt, label=label, value=_f(m.group(1)))
    return h


def _h_final_ens_hdr(m: re.Match[str]) -> Event:
    return Event("logit_avg_header", "U4-hdr", extra={"n": int(m.group(1))})


# Logit averaging (L0-L3) and the other "average of models" evals (E1, E2, T1, T2, PR19 SWA, PR67 strided)
_L0 = re.compile(r"--- Evaluating logit avg \((\d+) checkpoints: (.*)\) ---")
_EVAL_HDR = re.compile(r"--- Evaluating (EMA blend|checkpoint average)(.*) ---")
_L1 = re.compile(r"\[(\w+)\] weights: (\[.*\])")
_L2 = re.compile(r"\[(\w+)\] Val BPB: " + F + r" \| Val Loss: " + F + r"\s*$")
_NEW_BEST = re.compile(r"\*\* New best! \((.*)\)")
_E1 = re.compile(r"(Blend\([\d.]+\*final\+[\d.]+\*EMA [\d.]+\)): Val BPB: " + F + r" \| Val Loss: " + F + r"\s*$")
_E2 = re.compile(r"Checkpoint avg: Val BPB: " + F + r" \| Val Loss: " + F + r"\s*$")
_T1 = re.compile(r"EMA Val BPB: " + F + r" \| EMA Val Loss: " + F + r"(?: \| iters: (\d+))?\s*$")
_T2 = re.compile(r"Ckpt avg Val BPB: " + F + r" \| Val Loss: " + F + r"(?: \| iters: (\d+))?\s*$")
_SWA = re.compile(r"SWA Val BPB: " + F + r" \| SWA Val Loss: " + F + r"\s*$")
_STRIDED = re.compile(r"Strided \(stride=(\d+)\) \| Val BPB: " + F + r" \| Val Loss: " + F + r"\s*$")


def _h_l0(m: re.Match[str]) -> Event:
    return Event("logit_avg_header", "L0", extra={"n": int(m.group(1)), "checkpoints": m.group(2)})


def _h_eval_hdr(m: re.Match[str]) -> Event:
    return Event("logit_avg_header", "E-hdr", label=m.group(1))


def _h_l1(m: re.Match[str]) -> Event:
    weights = [float(w) for w in re.findall(r"'([-\d.]+)'", m.group(2))]
    return Event("logit_weights", "L1", label=m.group(1), extra={"weights": weights})


def _h_l2(m: re.Match[str]) -> Event:
    return Event("logit_avg", "L2", label=m.group(1), val_bpb=_f(m.group(2)), val_loss=_f(m.group(3)))


def _h_new_best(m: re.Match[str]) -> Event:
    return Event("new_best", "L3", label=m.group(1))


def _avg(fmt: str, label: str | None, bpb: int, loss: int, iters: int | None = None) -> Handler:
    def h(m: re.Match[str]) -> Event:
        ev = Event("logit_avg", fmt, label=label or m.group(1), val_bpb=_f(m.group(bpb)), val_loss=_f(m.group(loss)))
        if iters is not None and m.group(iters) is not None:
            ev.extra = {"iters": int(m.group(iters))}
        return ev
    return h


def _h_strided(m: re.Match[str]) -> Event:
    # A strided eval measures the same model with more context: not an average of models, so event only.
    return Event("strided_val", "PR67", label=f"strided({m.group(1)})", val_bpb=_f(m.group(2)), val_loss=_f(m.group(3)))


# Summary lines (P1-P5, P3t, P3u) and other end-of-run lines
_P1 = re.compile(r"Peak memory: " + F + r" MiB")
_P2 = re.compile(r"Total training time: " + F + r"m")
_P3 = re.compile(r"Total wall time: " + F + r"s \(")
_P3U = re.compile(r"Total time: (\d+)h (\d+)m " + F + "s")
_P3T = re.compile(r"Wall clock time: " + F + r"m")
_P5 = re.compile(r"Min val (BPB|Loss): " + F + r"(?: \| Min val Loss: " + F + r")?\s*$")


def _minutes(fmt: str, label: str) -> Handler:
    def h(m: re.Match[str]) -> Event:
        # upstream prints minutes with 2 decimals; round away float noise (0.06 * 60 = 3.5999...)
        return Event("summary", fmt, label=label, value=round(_f(m.group(1)) * 60.0, 6))
    return h


def _h_p3u(m: re.Match[str]) -> Event:
    secs = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + _f(m.group(3))
    return Event("summary", "P3u", label="total_time_s", value=secs)


def _h_p5(m: re.Match[str]) -> Event:
    if m.group(3) is not None:  # P5t: "Min val BPB: x | Min val Loss: y"
        return Event("summary", "P5t", label="min_val", val_bpb=_f(m.group(2)), val_loss=_f(m.group(3)))
    if m.group(1) == "BPB":
        return Event("summary", "P5", label="min_val_bpb", val_bpb=_f(m.group(2)))
    return Event("summary", "P5", label="min_val_loss", val_loss=_f(m.group(2)))


# Epoch / early stop / caps / dupe / window / recurrence
_M1 = re.compile(r"Starting epoch (\d+)\s*$")
_X1 = re.compile(r"Early stopping: no improvement for (\d+) epoch")
_X2 = re.compile(r"Reached max_train_steps=(\d+)")
_X2H = re.compile(r"Stopping after max_train_steps=([\d,]+)")
_PR63CAP = re.compile(r"Reached max (train|wall) time \(([\d.]+)m\) at step (\d+)")
_PR78STOP = re.compile(r"Stopping after (\d+) step\(s\) due to --max-steps")
_PR52STOP = re.compile(r"Stopping early at max_steps=(\d+)")
_JEPA_CAP = re.compile(r"2h cap reached at step (\d+)")
_EQ = re.compile(r"=== (?:Enabling dupe-layers at epoch (\d+)|Wall-clock cutoff at ([\d.]+)s|Recurrent iterations -> (\d+) at step (\d+) \(([\d.]+)%, epoch (\d+)\)) ===")
_D2 = re.compile(r"Dupe layers (\d+)-(\d+): (.*)$")
_W1 = re.compile(r"(?:Initial window stage: epoch (\d+)-(\d+) ->|Updated window stage for epoch (\d+):) short=(\d+), long=(\d+)")
_H1 = re.compile(r"Training for (\d+) epoch\(s\) \(~(\d+) steps estimated\)")
_C1 = re.compile(r"Saved checkpoint (\S+) \((\d+)/(\d+)\)")
_C2 = re.compile(r"Saving model to (\S+)")
_C3 = re.compile(r"Checkpoint saved to (\S+)")
_J = re.compile(r"Results? saved to (\S+)")
_MINI = re.compile(r"Mini data sha256: ([0-9a-fA-F]{16,}) \| train tokens: (\d+) \| val tokens: (\d+)")
_DIVERGED = re.compile(r"Diverged: non-finite loss at step (\d+)")
_SKIP_INIT = re.compile(r"Skipping initial validation pass|Validation disabled")


def _h_m1(m: re.Match[str]) -> Event:
    return Event("epoch_start", "M1", epoch=int(m.group(1)))


def _h_x1(m: re.Match[str]) -> Event:
    return Event("early_stop", "X1", value=float(m.group(1)))


def _cap(fmt: str, label: str, step_group: int | None = None) -> Handler:
    def h(m: re.Match[str]) -> Event:
        ev = Event("cap", fmt, label=label)
        if step_group is not None:
            ev.step = int(m.group(step_group).replace(",", ""))
        return ev
    return h


def _h_pr63cap(m: re.Match[str]) -> Event:
    return Event("cap", "PR63-cap", label=f"max_{m.group(1)}_time", step=int(m.group(3)), value=float(m.group(2)) * 60)


def _h_eq(m: re.Match[str]) -> Event:
    if m.group(1) is not None:
        return Event("dupe", "D1", epoch=int(m.group(1)))
    if m.group(2) is not None:
        return Event("cap", "X3", label="wall_clock_cutoff", value=float(m.group(2)))
    return Event("recurrence", "R1", step=int(m.group(4)), epoch=int(m.group(6)), pct=float(m.group(5)),
                 value=float(m.group(3)))


def _h_d2(m: re.Match[str]) -> Event:
    return Event("dupe", "D2", label=m.group(3), extra={"start": int(m.group(1)), "end": int(m.group(2))})


def _h_w1(m: re.Match[str]) -> Event:
    epoch = m.group(3) or m.group(1)
    return Event("window", "W1", epoch=int(epoch), extra={"short": int(m.group(4)), "long": int(m.group(5))})


def _h_h1(m: re.Match[str]) -> Event:
    return Event("header", "H1", label="num_epochs", value=float(m.group(1)), extra={"steps_estimated": int(m.group(2))})


def _ckpt(fmt: str) -> Handler:
    def h(m: re.Match[str]) -> Event:
        return Event("checkpoint", fmt, label=m.group(1))
    return h


def _h_result_saved(m: re.Match[str]) -> Event:
    # J1-J3 print "Result saved to", unlimited (J4) "Results saved to"; the path is the useful part
    return Event("result_saved", "J4" if m.group(0).startswith("Results") else "J", label=m.group(1))


def _h_mini(m: re.Match[str]) -> Event:
    return Event("mini_data", "MINI", label=m.group(1).lower(),
                 extra={"train_tokens": int(m.group(2)), "val_tokens": int(m.group(3))})


def _h_diverged(m: re.Match[str]) -> Event:
    return Event("diverged", "MINI-div", step=int(m.group(1)))


def _h_skip_init(m: re.Match[str]) -> Event:
    return Event("val_skipped", "PR52-skip")


# Unlimited / ensemble (U1-U4 and their summaries)
_U1 = re.compile(r"\[model (\d+)\] step (\d+) \(" + F + r"%\) \| loss: " + F + r"(?: \| ([\d.]+) tok/s)?( \[DUPE\])?\s*$")
_U2 = re.compile(r"\[model (\d+)\] Epoch (\d+) \| Val BPB: " + F + r" \| Val Loss: " + F + r"\s*$")
_U2KL = re.compile(r"\[model (\d+)\] Epoch (\d+) \| Val KL: " + F + r" \| Val Combined: " + F + r" \| Teacher Val CE: " + F)
_U_DONE = re.compile(r"\[model (\d+)\] Done\. (?:Best )?Val BPB: " + F + r" \| (?:Best )?Val Loss: " + F)
_U_BLEND = re.compile(r"\[model (\d+)\] (Blend\(.*?\)): Val BPB: " + F + r" \| Val Loss: " + F)
_U_EARLY = re.compile(r"\[model (\d+)\] Early stopping")
_U_DUPE = re.compile(r"\[model (\d+)\] === Enabling dupe-layers at epoch (\d+) ===")
_U3 = re.compile(r"\[node (\d+)\] Cycle (\d+)/(\d+) \(model (\d+)\) \| Val BPB: " + F + r" \| Val Loss: " + F + r"((?: \[\w+\])*)\s*$")
_U4_FINAL_GRAD = re.compile(r"\[FINAL\] grad ensemble \((\w+), k=(\d+)\) \| Val BPB: " + F + r" \| Val Loss: " + F + r" \| Total active: (\d+)")
_U4_ENS = re.compile(r"Ensemble (?:\((\d+) models\)|excl\. model 0 \((\d+) models\)|of (\d+) \(models (\d+)-(\d+)\)) \| Val BPB: " + F + r" \| Val Loss: " + F + r"\s*$")
_U4_ENS_SUM = re.compile(r"Ensemble \((\d+) models\): BPB=" + F + r", Loss=" + F + r"\s*$")
_U4_FINAL = re.compile(r"\*\*\* Final result \((last (\d+) models, prob avg|ensemble of (\d+) models)\): BPB=" + F + r" \| Val Loss=" + F + r" \*\*\*")
_U_AFTER = re.compile(r"After model (\d+): ensemble of (\d+) \| BPB=" + F + r", Loss=" + F)
_U_MODEL = re.compile(r"Model (\d+)(?: \(seed (\d+)\))?: BPB=" + F + r", Loss=" + F)
_U_SWEEP = re.compile(r"k=\s*(\d+): BPB=" + F + r"\s+Loss=" + F)
_U_GRADFIT = re.compile(r"\[grad\] k=(\d+): fit_loss=" + F)
_U_VAL_BARE = re.compile(r"Val BPB: " + F + r" \| Val Loss: " + F + r"\s*$")
_U_TRAIN_MODEL = re.compile(r"Training model (\d+) with (?:seed (\d+)|(\d+) epochs)")


def _h_u1(m: re.Match[str]) -> Event:
    fmt = "U1b" if m.group(5) is not None else "U1"
    ev = Event("step", fmt, model=int(m.group(1)), step=int(m.group(2)), pct=_f(m.group(3)), train_loss=_f(m.group(4)))
    if m.group(5) is not None:
        ev.value = float(m.group(5))
    if m.group(6):
        ev.extra = {"dupe": True}
    return ev


def _h_u2(m: re.Match[str]) -> Event:
    return Event("val", "U2", model=int(m.group(1)), epoch=int(m.group(2)), val_bpb=_f(m.group(3)), val_loss=_f(m.group(4)))


def _h_u2kl(m: re.Match[str]) -> Event:
    return Event("val_kl", "U2kl", model=int(m.group(1)), epoch=int(m.group(2)),
                 extra={"val_kl": _f(m.group(3)), "val_combined": _f(m.group(4)), "teacher_val_ce": _f(m.group(5))})


def _h_u_done(m: re.Match[str]) -> Event:
    return Event("model_result", "U-done", model=int(m.group(1)), val_bpb=_f(m.group(2)), val_loss=_f(m.group(3)))


def _h_u_blend(m: re.Match[str]) -> Event:
    return Event("model_blend", "U-blend", model=int(m.group(1)), label=m.group(2), val_bpb=_f(m.group(3)), val_loss=_f(m.group(4)))


def _h_u_early(m: re.Match[str]) -> Event:
    return Event("model_early_stop", "X1u", model=int(m.group(1)))


def _h_u_dupe(m: re.Match[str]) -> Event:
    return Event("dupe", "D3", model=int(m.group(1)), epoch=int(m.group(2)))


def _h_u3(m: re.Match[str]) -> Event:
    flags = m.group(7)
    return Event("val", "U3", model=int(m.group(4)), val_bpb=_f(m.group(5)), val_loss=_f(m.group(6)),
                 extra={"node": int(m.group(1)), "cycle": int(m.group(2)), "num_cycles": int(m.group(3)),
                        "distilled": "[distilled]" in flags, "dupe": "[dupe]" in flags})


def _h_u4_final_grad(m: re.Match[str]) -> Event:
    return Event("logit_avg", "U4d", label=f"final grad ensemble ({m.group(1)}, k={m.group(2)})",
                 val_bpb=_f(m.group(3)), val_loss=_f(m.group(4)), extra={"final": True, "active": int(m.group(5))})


def _h_u4_ens(m: re.Match[str]) -> Event:
    if m.group(1) is not None:
        label = f"ensemble ({m.group(1)} models)"
    elif m.group(2) is not None:
        label = f"ensemble excl. model 0 ({m.group(2)} models)"
    else:
        label = f"ensemble (models {m.group(4)}-{m.group(5)})"
    return Event("logit_avg", "U4a", label=label, val_bpb=_f(m.group(6)), val_loss=_f(m.group(7)))


def _h_u4_ens_sum(m: re.Match[str]) -> Event:
    return Event("logit_avg", "U4a-sum", label=f"ensemble ({m.group(1)} models)", val_bpb=_f(m.group(2)), val_loss=_f(m.group(3)))


def _h_u4_final(m: re.Match[str]) -> Event:
    fmt = "U4b" if m.group(2) is not None else "U4c"
    return Event("logit_avg", fmt, label=f"final ({m.group(1)})", val_bpb=_f(m.group(4)), val_loss=_f(m.group(5)),
                 extra={"final": True})


def _h_u_after(m: re.Match[str]) -> Event:
    # eed13a5+ ensembles leave out model 1: "after model N" = models 2..N
    return Event("logit_avg", "U4c-sum", label=f"ensemble (models 2-{m.group(1)})", val_bpb=_f(m.group(3)), val_loss=_f(m.group(4)))


def _h_u_model(m: re.Match[str]) -> Event:
    ev = Event("model_result", "U-model", model=int(m.group(1)), val_bpb=_f(m.group(3)), val_loss=_f(m.group(4)))
    if m.group(2) is not None:
        ev.extra = {"seed": int(m.group(2))}
    return ev


def _h_u_sweep(m: re.Match[str]) -> Event:
    # Selecting k on the val set would flatter the result: the sweep stays an event, the [FINAL] line is the result.
    return Event("grad_sweep", "U-sweep", label=f"k={m.group(1)}", val_bpb=_f(m.group(2)), val_loss=_f(m.group(3)))


def _h_u_gradfit(m: re.Match[str]) -> Event:
    return Event("grad_fit", "U-gradfit", label=f"k={m.group(1)}", value=_f(m.group(2)))


def _h_u_val_bare(m: re.Match[str]) -> Event:
    # dceb3e9..1842f6c: the final prob-avg eval, repeated in the "*** Final result" line that follows.
    return Event("ensemble_eval", "U4b-val", val_bpb=_f(m.group(1)), val_loss=_f(m.group(2)))


def _h_u_train_model(m: re.Match[str]) -> Event:
    extra: dict[str, Any] = {}
    if m.group(2) is not None:
        extra["seed"] = int(m.group(2))
    if m.group(3) is not None:
        extra["num_epochs"] = int(m.group(3))
    return Event("model_start", "U-start", model=int(m.group(1)), extra=extra)


# Dispatch: first four characters of the stripped line -> candidate patterns, tried in order.
_HANDLERS: dict[str, list[tuple[re.Pattern[str], Handler]]] = {
    "step": [(_S, _h_step), (_JEPA_VAL, _h_jepa_val), (_JEPA_STEP, _h_jepa_step)],
    "Step": [(_V, _h_val), (_V_FINAL52, _h_val_final52), (_V_SKIP, _h_val_skip), (_N_LAYER, _h_n_layer),
             (_STEP_CAP, _h_step_cap)],
    "Star": [(_M1, _h_m1)],
    "Fina": [(_V1F, _h_v1f), (_P4, _summary("P4", "final_train_loss")), (_FINAL_ENS_HDR, _h_final_ens_hdr)],
    "Peak": [(_P1, _summary("P1", "peak_memory_mib"))],
    "Tota": [(_P2, _minutes("P2", "training_time_s")), (_P3, _summary("P3", "wall_time_s")), (_P3U, _h_p3u)],
    "Wall": [(_P3T, _minutes("P3t", "wall_clock_s"))],
    "Min ": [(_P5, _h_p5)],
    "Earl": [(_X1, _h_x1)],
    "Reac": [(_X2, _cap("X2", "max_train_steps", 1)), (_PR63CAP, _h_pr63cap)],
    "Stop": [(_X2H, _cap("X2h", "max_train_steps_header", 1)), (_PR78STOP, _cap("PR78-stop", "max_steps", 1)),
             (_PR52STOP, _cap("PR52-stop", "max_steps", 1))],
    "2h c": [(_JEPA_CAP, _cap("PR95-cap", "two_hour_cap", 1))],
    "=== ": [(_EQ, _h_eq)],
    "--- ": [(_L0, _h_l0), (_EVAL_HDR, _h_eval_hdr)],
    "** N": [(_NEW_BEST, _h_new_best)],
    "Blen": [(_E1, _avg("E1", None, 2, 3))],
    "Chec": [(_E2, _avg("E2", "ckpt_avg", 1, 2)), (_C3, _ckpt("C3"))],
    "EMA ": [(_T1, _avg("T1", "ema", 1, 2, 3))],
    "Ckpt": [(_T2, _avg("T2", "ckpt_avg", 1, 2, 3))],
    "SWA ": [(_SWA, _avg("PR19", "swa", 1, 2))],
    "Stri": [(_STRIDED, _h_strided)],
    "Dupe": [(_D2, _h_d2)],
    "Init": [(_W1, _h_w1)],
    "Upda": [(_W1, _h_w1)],
    "Trai": [(_H1, _h_h1), (_U_TRAIN_MODEL, _h_u_train_model)],
    "Save": [(_C1, _ckpt("C1"))],
    "Savi": [(_C2, _ckpt("C2"))],
    "Resu": [(_J, _h_result_saved)],
    "Mini": [(_MINI, _h_mini)],
    "Dive": [(_DIVERGED, _h_diverged)],
    "Skip": [(_SKIP_INIT, _h_skip_init)],
    "Vali": [(_SKIP_INIT, _h_skip_init)],
    "[mod": [(_U1, _h_u1), (_U2, _h_u2), (_U2KL, _h_u2kl), (_U_DONE, _h_u_done), (_U_BLEND, _h_u_blend),
             (_U_EARLY, _h_u_early), (_U_DUPE, _h_u_dupe)],
    "[nod": [(_U3, _h_u3)],
    "[FIN": [(_U4_FINAL_GRAD, _h_u4_final_grad)],
    "[gra": [(_U_GRADFIT, _h_u_gradfit)],
    "Ense": [(_U4_ENS, _h_u4_ens), (_U4_ENS_SUM, _h_u4_ens_sum)],
    "Afte": [(_U_AFTER, _h_u_after)],
    "Mode": [(_U_MODEL, _h_u_model)],
    "Val ": [(_U_VAL_BARE, _h_u_val_bare)],
}
_FINAL_STARS = [(_U4_FINAL, _h_u4_final)]
_BRACKET_LABEL = [(_L2, _h_l2), (_L1, _h_l1)]  # "[equal] ...", "[weighted] ..." (any label)
_SWEEP = [(_U_SWEEP, _h_u_sweep)]


def _clean(line: str) -> str:
    """Strip blanks and a torchrun rank prefix ("[rank1]:", "[default0]:")."""
    s = line.strip()
    if s[:1] == "[" and (s.startswith("[rank") or s.startswith("[default")):
        m = _RANK_PREFIX.match(s)
        if m:
            s = s[m.end():].lstrip()
    return s


def _parse_clean(s: str) -> Event | None:
    if not s:
        return None
    cands = _HANDLERS.get(s[:4])
    if cands is None:
        if s.startswith("***"):
            cands = _FINAL_STARS
        elif s.startswith("k="):
            cands = _SWEEP
        elif s[0] == "[":
            cands = _BRACKET_LABEL
        else:
            return None
    for pat, handler in cands:
        m = pat.match(s)
        if m is not None:
            return handler(m)
    return None


def parse_line(line: str) -> Event | None:
    """One line (no newline) -> its Event, or None when it is not a line the parser knows."""
    return _parse_clean(_clean(line))


def _iter_lines(text: str) -> tuple[list[str], bool]:
    """Cleaned physical lines, and whether the last one was terminated by a newline."""
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    terminated = text.endswith(("\n", "\r"))
    if "\r" in text:
        # A carriage return overwrites the terminal line (progress bars): each segment is a line of its own.
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if terminated:
        lines.pop()
    return lines, terminated


def _is_finite(*xs: float | None) -> bool:
    return all(x is None or math.isfinite(x) for x in xs)


def _nz(x: float | None) -> float | None:
    """Metrics never hold NaN/inf: a non-finite figure is 'absent'."""
    return x if x is not None and math.isfinite(x) else None


class _State:
    """Running state of one parse: dedupe sets and the epoch being trained."""

    __slots__ = ("out", "seen_text", "seen_steps", "current_epoch", "pending_epoch")

    def __init__(self, out: ParsedLog) -> None:
        self.out = out
        self.seen_text: set[str] = set()  # result lines already seen (several ranks print the same line)
        self.seen_steps: set[tuple[int | None, int | None, str]] = set()
        self.current_epoch: int | None = None
        self.pending_epoch: int | None = None


def parse_log(text: str, result_json: Any = None) -> ParsedLog:
    """Parse a whole training log. `result_json` (path, JSON text or dict) fills what the log lacks."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lines, terminated = _iter_lines(text)
    out = ParsedLog()
    st = _State(out)
    last = len(lines) - 1
    for i, raw in enumerate(lines):
        ev = None
        if raw[:5] == "step ":  # fast path for the ~15k step lines of a full run
            m = _S.match(raw)
            if m is not None:
                ev = _h_step(m)
        if ev is None:
            _one(st, raw, i + 1, i == last and not terminated)
        else:
            if i == last and not terminated and _looks_cut(raw):
                continue
            ev.line = i + 1
            _add(st, ev, raw)
    if result_json is not None:
        out.result_json = parse_result_json(result_json)
    out.metrics = _metrics(out)
    return out


def _one(st: _State, raw: str, line_no: int, maybe_cut: bool) -> None:
    s = _clean(raw)
    ev = _parse_clean(s)
    if ev is None:
        if s.find("tep ", 2) != -1 or s.find("Starting epoch", 1) != -1:
            pieces = _SPLICE.split(s)
            if len(pieces) > 1:
                # two ranks wrote into one line: every piece but the last was cut where the other began
                for j, piece in enumerate(pieces):
                    _one(st, piece, line_no, maybe_cut or j < len(pieces) - 1)
        return
    if maybe_cut and ev.kind != "diverged" and _looks_cut(s):
        return  # cut mid-number: a half-printed figure must not become a metric
    ev.line = line_no
    _add(st, ev, s)


def _looks_cut(raw: str) -> bool:
    s = raw.rstrip()
    return bool(_CUT_NUMBER.search(s)) and not _FULL_FLOAT_END.search(s)


def _add(st: _State, ev: Event, s: str) -> None:
    out = st.out
    kind = ev.kind
    if kind == "step":
        key = (ev.model, ev.step, ev.fmt)
        if key in st.seen_steps:
            return
        st.seen_steps.add(key)
        # "Starting epoch k+1" is printed while the last step of epoch k runs, before that step's line.
        if st.pending_epoch is not None:
            if st.current_epoch is None:
                st.current_epoch, st.pending_epoch = st.pending_epoch, None
            ev.epoch = st.current_epoch
            if st.pending_epoch is not None:
                st.current_epoch, st.pending_epoch = st.pending_epoch, None
        else:
            ev.epoch = st.current_epoch
        tl = ev.train_loss
        if tl is not None and (tl != tl or tl == _INF or tl == -_INF):
            out.diverged = True
    elif kind == "epoch_start":
        st.pending_epoch = ev.epoch
    elif kind in _DEDUPE_KINDS:
        if s in st.seen_text:
            return
        st.seen_text.add(s)
        if kind == "val" and not _is_finite(ev.val_loss, ev.val_bpb):
            out.diverged = True
        elif kind == "mini_data":
            out.data_sha256 = ev.label
    elif kind == "diverged":
        out.diverged = True
    out.events.append(ev)


_DEDUPE_KINDS = frozenset({"val", "logit_avg", "summary", "model_result", "ensemble_eval", "grad_sweep",
                           "model_blend", "early_stop", "mini_data", "result_saved", "cap"})


def _metrics(out: ParsedLog) -> Metrics:
    m = Metrics()
    by_epoch: dict[int, EpochMetric] = {}
    evals_loss: list[float] = []
    evals_bpb: list[float] = []
    final: Event | None = None  # last per-epoch or explicit "final" eval of the main series
    last_any_val: Event | None = None
    tok: list[float] = []
    logit_final: dict[str, dict[str, float]] = {}
    summ: dict[str, float] = {}
    min_loss_line: float | None = None
    min_bpb_line: float | None = None
    last_step: int | None = None
    seen_step_line = False  # step lines are the authority on steps; val lines only when there are none
    for ev in out.events:
        k = ev.kind
        if k == "step":
            if ev.step is not None:
                last_step, seen_step_line = ev.step, True
            if ev.value is not None and math.isfinite(ev.value):
                tok.append(ev.value)
        elif k == "val":
            if ev.step is not None and not seen_step_line:
                last_step = ev.step
            if not _is_finite(ev.val_loss, ev.val_bpb):
                continue
            last_any_val = ev
            evals_loss.append(ev.val_loss)  # type: ignore[arg-type]
            if ev.val_bpb is not None:
                evals_bpb.append(ev.val_bpb)
            if ev.model is None and ev.fmt not in ("PR95-val",):
                if ev.label == "final":
                    final = ev
                elif ev.epoch is not None:
                    if ev.epoch == 0 and m.initial_val_loss is None:
                        m.initial_val_loss, m.initial_val_bpb = ev.val_loss, ev.val_bpb
                    # a later line for the same epoch (a resumed/restarted log) replaces the earlier one
                    by_epoch[ev.epoch] = EpochMetric(epoch=ev.epoch, step=ev.step, val_loss=ev.val_loss,  # type: ignore[arg-type]
                                                     val_bpb=ev.val_bpb)
                    if ev.epoch > 0:
                        final = ev
            elif ev.fmt == "PR95-val" and ev.step == 0 and m.initial_val_loss is None:
                m.initial_val_loss, m.initial_val_bpb = ev.val_loss, ev.val_bpb
        elif k == "logit_avg":
            if not _is_finite(ev.val_loss, ev.val_bpb) or ev.val_loss is None:
                continue
            entry = {"val_loss": ev.val_loss}
            if ev.val_bpb is not None:
                entry["val_bpb"] = ev.val_bpb
            m.logit_avg[ev.label or ev.fmt] = entry
            if ev.extra and ev.extra.get("final"):
                logit_final[ev.label or ev.fmt] = entry
            evals_loss.append(ev.val_loss)
            if ev.val_bpb is not None:
                evals_bpb.append(ev.val_bpb)
        elif k == "summary":
            if ev.fmt in ("P5", "P5t"):
                if ev.val_loss is not None:
                    min_loss_line = ev.val_loss
                if ev.val_bpb is not None:
                    min_bpb_line = ev.val_bpb
            elif ev.value is not None:
                summ[ev.label or ev.fmt] = ev.value
        elif k == "early_stop":
            m.early_stopped = True
    m.epochs = [by_epoch[e] for e in sorted(by_epoch)]
    if final is None and last_any_val is not None and last_any_val.epoch != 0:
        final = last_any_val  # formats without epochs (PR95) or only per-model series (unlimited)
    if final is not None:
        m.final_val_loss, m.final_val_bpb = final.val_loss, final.val_bpb
    m.min_val_loss = _nz(min_loss_line) if min_loss_line is not None else (min(evals_loss) if evals_loss else None)
    m.min_val_bpb = _nz(min_bpb_line) if min_bpb_line is not None else (min(evals_bpb) if evals_bpb else None)
    # the script's reported final ensemble wins; otherwise the best average (what upstream's Min val counts)
    pool = logit_final or m.logit_avg
    if pool:
        best = min(pool.values(), key=lambda e: e["val_loss"])
        m.logit_avg_loss, m.logit_avg_bpb = best["val_loss"], best.get("val_bpb")
    m.final_train_loss = _nz(summ.get("final_train_loss"))
    m.training_time_s = _nz(summ.get("training_time_s"))
    if m.training_time_s is None and last_any_val is not None and last_any_val.fmt == "PR95-val":
        m.training_time_s = last_any_val.extra["train_time_s"]  # type: ignore[index]
    m.wall_time_s = _nz(summ.get("wall_time_s", summ.get("wall_clock_s", summ.get("total_time_s"))))
    m.peak_memory_mib = _nz(summ.get("peak_memory_mib"))
    m.tokens_per_s = statistics.median(tok) if tok else None
    m.steps = last_step
    rj = out.result_json
    if rj:  # the JSON fills what a truncated log lost, never overrides the log
        if m.min_val_loss is None:
            m.min_val_loss = rj.get("best_val_loss")
        if m.final_val_loss is None and not m.logit_avg:
            m.final_val_loss = rj.get("val_loss")
    return m


# ---------------------------------------------------------------------------------------------------------
def parse_progress(line: str) -> Progress | None:
    """One streamed line -> what it says about progress, or None. Cheap: one dict lookup for noise."""
    ev = parse_line(line)
    if ev is None:
        return None
    k = ev.kind
    if k == "step":
        return Progress(step=ev.step, pct=ev.pct, eta_s=ev.eta_s, train_loss=_nz(ev.train_loss))
    if k == "val":
        # the val line names the epoch just finished; "Starting epoch" already announced the next one
        return Progress(step=ev.step, pct=ev.pct, val_loss=_nz(ev.val_loss))
    if k == "epoch_start":
        return Progress(epoch=ev.epoch)
    if k == "logit_avg" and ev.extra and ev.extra.get("final"):
        return Progress(val_loss=_nz(ev.val_loss))
    return None


# ---------------------------------------------------------------------------------------------------------
def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def parse_result_json(path_or_text: str | Path | dict[str, Any]) -> dict[str, Any]:
    """The JSON upstream writes with --save-result, normalised.

    Returns the original keys (non-finite numbers as None) plus normalised ones:
    `val_loss` (last evaluated / final ensemble loss), `best_val_loss`, and for unlimited
    `val_bpb`/`best_val_bpb` from `final_ensemble_*` or the last running ensemble, and `kind`
    ("limited" for root/tiny/two_hour, "unlimited"). A missing, unreadable or non-object JSON is a UserError.
    """
    if isinstance(path_or_text, dict):
        data: Any = path_or_text
    else:
        text: str
        p = Path(path_or_text) if isinstance(path_or_text, Path) or not str(path_or_text).lstrip().startswith("{") else None
        if p is not None:
            try:
                text = p.read_text(encoding="utf-8")
            except OSError as e:
                raise UserError(f"cannot read result JSON {p}: {e.strerror or e}; pass the file the script wrote with --save-result") from None
        else:
            text = str(path_or_text)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            where = p if p is not None else "text"
            raise UserError(f"result JSON {where} is not valid JSON ({e.msg} at line {e.lineno}); give the file written by --save-result") from None
    if not isinstance(data, dict):
        raise UserError("result JSON must be an object with val_loss/best_val_loss or individual_models; got "
                        f"{type(data).__name__}")
    out: dict[str, Any] = {k: (_num(v) if isinstance(v, float) else v) for k, v in data.items()}
    if "individual_models" in data or "ensemble_results" in data or "final_ensemble_loss" in data:
        out["kind"] = "unlimited"
        losses: list[tuple[float, float | None]] = []
        for r in data.get("ensemble_results") or []:
            if isinstance(r, dict) and _num(r.get("ensemble_loss")) is not None:
                losses.append((_num(r["ensemble_loss"]), _num(r.get("ensemble_bpb"))))  # type: ignore[arg-type]
        final_loss, final_bpb = _num(data.get("final_ensemble_loss")), _num(data.get("final_ensemble_bpb"))
        if final_loss is None and losses:
            final_loss, final_bpb = losses[-1]
        if final_loss is None:
            models = [r for r in data.get("individual_models") or [] if isinstance(r, dict) and _num(r.get("val_loss")) is not None]
            if models:
                final_loss, final_bpb = _num(models[-1]["val_loss"]), _num(models[-1].get("val_bpb"))
                losses += [(_num(r["val_loss"]), _num(r.get("val_bpb"))) for r in models]  # type: ignore[misc]
        if final_loss is not None:
            losses.append((final_loss, final_bpb))
        out["val_loss"], out["val_bpb"] = final_loss, final_bpb
        if losses:
            best = min(losses, key=lambda t: t[0])
            out["best_val_loss"], out["best_val_bpb"] = best
        else:
            out["best_val_loss"] = out["best_val_bpb"] = None
    else:
        out["kind"] = "limited"
        out["val_loss"] = _num(data.get("val_loss"))
        out["best_val_loss"] = _num(data.get("best_val_loss"))
        if out["val_loss"] is None and out["best_val_loss"] is None:
            raise UserError("result JSON has neither val_loss nor best_val_loss nor individual_models; "
                            "is it the file written by --save-result?")
    return out


# ---------------------------------------------------------------------------------------------------------
def metrics_to_frame(parsed: ParsedLog | Metrics) -> pd.DataFrame:
    """Per-epoch table (epoch, step, val_loss, val_bpb); epoch 0 is the initial eval."""
    m = parsed.metrics if isinstance(parsed, ParsedLog) else parsed
    df = pd.DataFrame(
        [(e.epoch, e.step, e.val_loss, e.val_bpb) for e in m.epochs],
        columns=["epoch", "step", "val_loss", "val_bpb"],
    )
    return df.astype({"epoch": "int64", "step": "Int64", "val_loss": "float64", "val_bpb": "float64"})


_SUMMARY_KEYS = (
    "initial_val_loss", "initial_val_bpb", "final_val_loss", "final_val_bpb", "min_val_loss", "min_val_bpb",
    "logit_avg_loss", "logit_avg_bpb", "final_train_loss", "training_time_s", "wall_time_s", "peak_memory_mib",
    "tokens_per_s", "steps", "early_stopped",
)


def summary_dict(parsed: ParsedLog) -> dict[str, Any]:
    """The scalar metrics plus log-level facts, for `harness parse`."""
    m = parsed.metrics
    d: dict[str, Any] = {k: getattr(m, k) for k in _SUMMARY_KEYS}
    d["n_epochs"] = sum(1 for e in m.epochs if e.epoch > 0)
    d["logit_avg"] = m.logit_avg
    d["diverged"] = parsed.diverged
    d["data_sha256"] = parsed.data_sha256
    return d


# ---------------------------------------------------------------------------------------------------------
# `harness parse LOG`: reading and rendering (the CLI only prints what these return)


def read_log(path: str | Path) -> str:
    """A log file's text; a missing or unreadable file is a UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"log file {p} does not exist or is not a file; pass the path of a training log (e.g. results/<variant>/<run>/train.log)")
    try:
        return p.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"cannot read log file {p}: {e.strerror or e}; check its permissions") from None


def parse_file(path: str | Path, result_json: str | Path | None = None) -> ParsedLog:
    """`harness parse`: a training log (plus, optionally, the JSON its --save-result wrote), or that JSON
    alone. A file with nothing recognisable is a UserError, not an empty table."""
    text = read_log(path)
    if text.lstrip().startswith("{") and result_json is None:  # the result JSON itself
        return parse_log("", result_json=parse_result_json(text))
    parsed = parse_log(text, result_json=result_json)
    if not parsed.events and not parsed.result_json:
        raise UserError(f"{path} has no slowrun log lines (no step/val lines); pass a training log or a --save-result JSON")
    return parsed


def _jsonable(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def format_parsed(parsed: ParsedLog, fmt: str) -> str:
    """JSON (epochs + summary + formats seen) or CSV (per-epoch rows, a blank line, then metric,value rows)."""
    frame = metrics_to_frame(parsed)
    summ = summary_dict(parsed)
    if fmt == "json":
        doc = {
            "epochs": [{k: _jsonable(v) for k, v in e.__dict__.items()} for e in parsed.metrics.epochs],
            "summary": {k: _jsonable(v) for k, v in summ.items()},
            "formats": sorted({e.fmt for e in parsed.events}),
            "n_events": len(parsed.events),
            "result_json": parsed.result_json,
        }
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "csv":
        rows = [(k, "" if v is None else v) for k, v in summ.items() if k != "logit_avg"]
        rows += [(f"logit_avg[{label}].{key}", val) for label, d in summ["logit_avg"].items() for key, val in d.items()]
        summary = pd.DataFrame(rows, columns=["metric", "value"])
        return frame.to_csv(index=False) + "\n" + summary.to_csv(index=False)
    raise UserError(f"unknown output format {fmt!r}; use json or csv")


def rich_tables(parsed: ParsedLog) -> list[Any]:
    """Two rich tables for a terminal: per-epoch evals, then the summary."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="per-epoch validation")
    for col in ("epoch", "step", "val_loss", "val_bpb"):
        t.add_column(col, justify="right")
    for e in parsed.metrics.epochs:
        t.add_row(str(e.epoch), "" if e.step is None else str(e.step), f"{e.val_loss:.6f}",
                  "" if e.val_bpb is None else f"{e.val_bpb:.6f}")
    s = Table(title="summary")
    s.add_column("metric")
    s.add_column("value", justify="right")
    for k, v in summary_dict(parsed).items():
        if k == "logit_avg":
            for label, d in v.items():
                s.add_row(escape(f"logit_avg [{label}]"),
                          f"{d['val_loss']:.6f}" + (f" (bpb {d['val_bpb']:.6f})" if "val_bpb" in d else ""))
            continue
        if isinstance(v, float):
            text = f"{v:.6f}" if ("loss" in k or "bpb" in k) else f"{v:,.2f}"
        else:
            text = "-" if v is None else str(v)
        s.add_row(k, text)
    return [t, s]
