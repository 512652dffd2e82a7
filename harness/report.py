"""`harness report`: REPORT.md, trajectory.png, delta.png, summary.json and runs.csv.

`build_report(runs, epochs, variants, infos, ...)` turns the run table (+ per-epoch table) and
the variants' spec facts into a `ReportData` using `harness.stats` only; it raises UserError on
bad input before anything is written. `write_report(data, out_dir)` writes the files and
`print_tables(data)` shows the key tables in the terminal. Nothing here parses logs or launches.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never a window (also on headless CI)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness import stats as S  # noqa: E402
from harness.errors import UserError  # noqa: E402
from harness.record import redact  # noqa: E402

DASH = "–"


@dataclass(frozen=True)
class ClaimInfo:
    val_loss: float
    source: str
    kind: str = "claim"  # "claim" (the variant's own result) or "record" (the leaderboard record then)
    training_minutes: float | None = None


@dataclass(frozen=True)
class VariantInfo:
    """What the report needs from a variant spec (kept as values so stats/report never read TOML)."""

    name: str
    compare_to: str | None = None
    leaderboard_track: str | None = None  # e.g. "two_hour"
    time_limit_s: float | None = None
    claims: tuple[ClaimInfo, ...] = ()

    @classmethod
    def from_spec(cls, spec: Any) -> "VariantInfo":
        track = getattr(spec, "track", None)
        claims = tuple(
            ClaimInfo(float(c.val_loss), str(c.source), str(getattr(c, "kind", "claim")), getattr(c, "training_minutes", None))
            for c in getattr(spec, "claims", ())
        )
        return cls(spec.name, getattr(spec, "compare_to", None), getattr(track, "name", None), getattr(track, "time_limit_s", None), claims)


@dataclass
class ReportData:
    name: str
    metric: str
    lower_is_better: bool
    alpha: float
    min_effect: float
    track: str | None
    variants: list[str]
    selections: dict[str, S.Selection]
    summaries: list[S.VariantSummary]
    comparisons: list[S.Comparison]
    epoch_summaries: dict[str, pd.DataFrame]
    epoch_deltas: list[tuple[str, str, pd.DataFrame, str]]  # (variant, reference, table, sentence)
    record_tests: list[S.RecordTest]
    claim_checks: list[S.ClaimCheck]
    failed: list[dict[str, Any]]
    notes: list[str]
    runs: pd.DataFrame  # the runs of the report's variants, with an `included` column
    epochs: pd.DataFrame
    provenance: list[dict[str, Any]]
    extra_args: str | None = None  # the `harness run --extra-args` of the runs used ("" none; None unknown)
    generated_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))


def report_name(variants: Sequence[str]) -> str:
    return "+".join(variants) if variants else "all"


# --------------------------------------------------------------------------- building


def _pick_track(runs: pd.DataFrame, track: str | None) -> str | None:
    if track is not None:
        return track
    ok = runs[runs["status"] == S.COMPLETE_STATUS]
    if not len(ok):
        return runs["track"].dropna().iloc[-1] if len(runs) and runs["track"].notna().any() else None
    order = "ended_at" if ok["ended_at"].notna().any() else "started_at"
    return str(ok.sort_values(order, na_position="first")["track"].iloc[-1])


def build_report(
    runs: pd.DataFrame,
    epochs: pd.DataFrame,
    variants: Sequence[str] = (),
    infos: dict[str, VariantInfo] | None = None,
    metric: str = "min_val_loss",
    alpha: float = 0.05,
    record: float | None = None,
    min_effect: float = 0.0,
    track: str | None = None,
    name: str | None = None,
    extra_args: str | None = None,
    notes: Sequence[str] = (),
) -> ReportData:
    """Compute everything the report shows. Raises UserError on bad input; writes nothing.

    `extra_args` picks the runs made with that `harness run --extra-args` (default: those of the
    most recent complete run), so that no comparison sets e.g. smoke runs against full ones.
    `notes` are sentences the caller wants in the report (e.g. why no spec facts are known)."""
    infos = dict(infos or {})
    lower = S.check_metric(metric)
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must lie strictly between 0 and 1 (got {alpha})")
    if not 0 <= min_effect < math.inf:  # also refuses nan, which would silently turn every verdict into "within noise"
        raise UserError(f"--min-effect must be a finite number >= 0 (got {min_effect})")
    if record is not None:
        if not math.isfinite(record):
            raise UserError(f"--record must be a finite loss such as 3.188 (got {record})")
        if not lower:
            raise UserError(f"--record tests mean < R, which only makes sense for a lower-is-better metric, not {metric}")
    known = set(runs["variant"]) if len(runs) else set()
    requested = list(dict.fromkeys(variants)) or sorted(known)
    if not requested:
        raise UserError("the results store has no runs and no variant was named; run `harness run VARIANT` first or pass --results DIR")
    unknown = [v for v in requested if v not in known and v not in infos]
    if unknown:
        close = {m for v in unknown for m in difflib.get_close_matches(v, sorted(known | set(infos)), n=3, cutoff=0.5)}
        hint = f"did you mean {', '.join(sorted(close))}? " if close else ""
        raise UserError(f"unknown variant(s): {', '.join(unknown)}; {hint}list variants with `harness list` or run them first")
    if track is not None and len(runs) and track not in set(runs["track"]):
        raise UserError(f"no runs on track {track!r} in the store; drop --track or run that track first")
    # a variant's reference joins the report so its comparison can be made
    names = list(requested)
    for v in requested:
        ref = infos.get(v, VariantInfo(v)).compare_to
        if ref and ref not in names and (ref in known or ref in infos):
            names.append(ref)
    rows = runs[runs["variant"].isin(names)] if len(runs) else runs
    chosen = _pick_track(rows, track) if len(rows) else track
    notes = list(notes)
    if chosen and len(rows) and (rows["track"] != chosen).any() and track is None:
        notes.append(f"runs on several tracks: this report uses track {chosen!r} (the most recent complete run); pass --track to choose")
    rows, chosen_extra = _filter_extra_args(rows, chosen, extra_args, requested, notes)

    selections = {v: S.select_runs(rows, v, metric, chosen) for v in names}
    summaries = []
    for v in names:
        info = infos.get(v, VariantInfo(v))
        limit = info.time_limit_s if chosen == "upstream" else None  # mini runs have no leaderboard limit
        summaries.append(S.summarize(selections[v], limit, level=1 - alpha))
        notes.extend(selections[v].notes)

    comparisons = []
    for v in requested:
        ref = infos.get(v, VariantInfo(v)).compare_to
        if not ref:
            continue
        if ref not in selections:
            notes.append(f"{v}: reference {ref!r} has no runs and no spec; no comparison")
            continue
        comparisons.append(S.compare(selections[v], selections[ref], alpha, min_effect, _claimed_effect(infos, v, ref, chosen)))
    comparisons = S.holm(comparisons, alpha, min_effect)

    ep_sum = {v: S.epoch_summary(epochs, selections[v].run_ids, level=1 - alpha) for v in names}
    deltas = []
    for c in comparisons:
        d = S.epoch_delta(epochs, selections[c.variant].run_ids, selections[c.reference].run_ids, alpha)
        deltas.append((c.variant, c.reference, d, S.describe_epoch_delta(d, c.variant, c.reference)))

    record_tests, claim_checks = [], []
    for v in requested:
        values = selections[v].values
        info = infos.get(v, VariantInfo(v))
        thresholds = [record] if record is not None else []
        if record is None and chosen == "upstream":  # published records are upstream figures
            thresholds = [c.val_loss for c in info.claims if c.kind == "record"]
        record_tests += [S.record_test(values, r, 0.01, v) for r in thresholds]
        if chosen == "upstream" and metric in S.LOSS_METRICS:
            claim_checks += [S.claim_check(values, c.val_loss, 0.95, v, metric, c.source, c.kind) for c in info.claims if c.kind == "claim"]
    if chosen == "mini" and any(c.kind == "claim" for v in requested for c in infos.get(v, VariantInfo(v)).claims):
        notes.append("published claims are upstream (GPU) figures; they are not checked against mini-track runs")

    failed = [dict(f, variant=v, error=redact(str(f["error"])) if f.get("error") else None) for v in names for f in selections[v].failed]
    included = {rid for s in selections.values() for rid in s.run_ids}
    table = rows.assign(included=rows["run_id"].isin(included)) if len(rows) else rows.assign(included=pd.Series(dtype=bool))
    if "error" in table:
        table = table.assign(error=[redact(e) if isinstance(e, str) else e for e in table["error"]])
    ep = epochs[epochs["run_id"].isin(included)] if len(epochs) else epochs
    return ReportData(
        name=name or report_name(requested), metric=metric, lower_is_better=lower, alpha=alpha, min_effect=min_effect,
        track=chosen, variants=names, selections=selections, summaries=summaries, comparisons=comparisons,
        epoch_summaries=ep_sum, epoch_deltas=deltas, record_tests=record_tests, claim_checks=claim_checks,
        failed=failed, notes=notes, runs=table, epochs=ep, provenance=_provenance(table, names), extra_args=chosen_extra,
    )  # fmt: skip


def _filter_extra_args(rows: pd.DataFrame, track: str | None, wanted: str | None, requested: Sequence[str],
                       notes: list[str]) -> tuple[pd.DataFrame, str | None]:  # fmt: skip
    """Keep the runs of one set of extra args on `track`: `wanted`, else those of the most recent
    complete run of a requested variant (of any variant when they have none)."""
    if "extra_args" not in rows or not len(rows):
        if wanted is not None:
            raise UserError("no runs to match --extra-args; drop it or run with those extra args first")
        return rows, None
    extra = rows["extra_args"].fillna("")  # records without the field (imported, older) had none
    on_track = rows["track"] == track if track is not None else pd.Series(True, index=rows.index)
    if wanted is not None:
        try:
            wanted = shlex.join(shlex.split(wanted))  # the table's spelling
        except ValueError as e:
            raise UserError(f"--extra-args cannot be parsed ({e}); quote it like --extra-args '--num-epochs 3'") from None
        if not (on_track & (extra == wanted)).any():
            have = sorted(set(extra[on_track]))
            raise UserError(f"no runs with --extra-args {wanted!r} on track {track!r}; stored: {', '.join(repr(h) for h in have)}")
        chosen = wanted
    else:
        ok = rows[on_track & (rows["status"] == S.COMPLETE_STATUS)]
        if ok["variant"].isin(requested).any():
            ok = ok[ok["variant"].isin(requested)]
        if not len(ok):
            return rows, None
        order = "ended_at" if ok["ended_at"].notna().any() else "started_at"
        chosen = str(extra[ok.sort_values(order, na_position="first").index[-1]])
    other = on_track & (extra != chosen)
    if other.any():
        how = "as asked with --extra-args" if wanted is not None else "those of the most recent complete run; pass --extra-args to choose"
        notes.append(f"{int(other.sum())} run(s) made with other --extra-args set aside: this report uses runs with "
                     f"extra args {chosen!r} ({how})")  # fmt: skip
        rows = rows[~other]
    return rows, chosen


def _claimed_effect(infos: dict[str, VariantInfo], v: str, ref: str, track: str | None) -> float | None:
    """Claimed gain (own claim minus the reference's own claim), only meaningful on upstream runs."""
    if track != "upstream":
        return None
    mine = [c.val_loss for c in infos.get(v, VariantInfo(v)).claims if c.kind == "claim"]
    theirs = [c.val_loss for c in infos.get(ref, VariantInfo(ref)).claims if c.kind == "claim"]
    return float(np.mean(mine) - np.mean(theirs)) if mine and theirs else None


def _provenance(table: pd.DataFrame, names: list[str]) -> list[dict[str, Any]]:
    out = []
    for v in names:
        g = table[table["variant"] == v] if len(table) else table
        if not len(g):
            out.append(dict(variant=v, runs=0, complete=0, imported=0, tracks=[], config_keys=[], hardware=[], first=None, last=None))
            continue
        ended = g["ended_at"].dropna()
        out.append(
            dict(
                variant=v, runs=int(len(g)), complete=int((g["status"] == S.COMPLETE_STATUS).sum()),
                imported=int(g["imported"].fillna(False).astype(bool).sum()) if "imported" in g else 0,
                tracks=sorted(g["track"].dropna().unique().tolist()),
                config_keys=sorted(str(c) for c in g["config_key"].dropna().unique()),
                hardware=sorted(str(h) for h in g["hardware"].dropna().unique()),
                first=str(ended.min()) if len(ended) else None, last=str(ended.max()) if len(ended) else None,
            )
        )  # fmt: skip
    return out


# --------------------------------------------------------------------------- formatting


def _f(x: Any, nd: int = 6, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return DASH
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _p(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return DASH
    return f"{x:.3g}"


def _extra_text(extra: str | None) -> str:
    return f", runs with extra args `{extra}`" if extra else ""


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def summary_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    pct = int(round((1 - data.alpha) * 100))
    headers = ["variant", "n", "failed", "mean", "std", "SEM", f"{pct}% CI", "min", "max", "train time (s)", "wall time (s)", "within limit"]
    rows = []
    for s in data.summaries:
        ci = f"[{_f(s.ci_low)}, {_f(s.ci_high)}]" if s.ci_low is not None else DASH
        share = DASH if s.share_within_limit is None else f"{s.share_within_limit:.0%}"
        rows.append([s.variant, str(s.n), str(s.n_failed), _f(s.mean), _f(s.std), _f(s.sem), ci, _f(s.min), _f(s.max),
                     _f(s.mean_training_time_s, 1), _f(s.mean_wall_time_s, 1), share])  # fmt: skip
    return headers, rows


def comparison_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    headers = ["variant", "vs", "n", "analysis", "difference", "CI", "p", "p (Holm)", "effect size", "verdict", "seeds/side for 80% power"]
    rows = []
    for c in data.comparisons:
        ci = f"[{_f(c.ci_low, sign=True)}, {_f(c.ci_high, sign=True)}]" if c.ci_low is not None else DASH
        needed = DASH
        if c.seeds_needed is not None:
            needed = f"{c.seeds_needed} (at {c.seeds_needed_basis} {c.seeds_needed_effect:.6f})"
        rows.append([c.variant, c.reference, f"{c.n_variant} vs {c.n_reference}", c.analysis, _f(c.diff, sign=True), ci, _p(c.p_value),
                     _p(c.p_adjusted), _f(c.effect_size, 2), f"**{c.verdict}**", needed])  # fmt: skip
    return headers, rows


def render_markdown(data: ReportData) -> str:
    m, pct = data.metric, int(round((1 - data.alpha) * 100))
    out = [f"# Report: {data.name}", ""]
    out.append(f"Metric `{m}` ({'lower' if data.lower_is_better else 'higher'} is better), alpha {data.alpha:g}, "
               f"track `{data.track or DASH}`{_extra_text(data.extra_args)}, generated {data.generated_at} by `harness report`.")  # fmt: skip
    out.append("")
    n_ok = sum(s.n for s in data.summaries)
    if n_ok == 0:
        out += ["> **No complete runs**: there is nothing to summarise yet. "
                "Run the variants (`harness run`) and make the report again.", ""]  # fmt: skip
    if data.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in data.notes] + [""]

    out += ["## Per-variant summary", "", _md_table(*summary_rows(data)), ""]
    out += [f"Mean, sample std, standard error and {pct}% t-interval of `{m}` over complete runs; "
            "failed runs are listed below and excluded. The interval needs at least 2 runs.", ""]  # fmt: skip

    out += ["## Comparisons", ""]
    if not data.comparisons:
        out += ["No comparison: none of the report's variants has a `compare_to` reference with runs.", ""]
    else:
        out += [_md_table(*comparison_rows(data)), ""]
        out += ["Difference = variant − reference (negative: lower `" + m + "`). Rules and analysis choices:", ""]
        for c in data.comparisons:
            bs = f"bootstrap CI [{_f(c.bootstrap_ci_low, sign=True)}, {_f(c.bootstrap_ci_high, sign=True)}]" if c.bootstrap_ci_low is not None else "no bootstrap CI"
            rank = f"{c.rank_test} p {_p(c.rank_p_value)}" if c.rank_test else "no rank test"
            notes = "".join(f" {n[:1].upper()}{n[1:]}." for n in c.notes)
            out.append(f"- **{c.variant} vs {c.reference}: {c.verdict}.** Rule: {c.rule}. {c.why[:1].upper()}{c.why[1:]}. "
                       f"Robustness: {bs}; {rank}.{notes}")  # fmt: skip
        out.append("")
        if data.epoch_deltas:
            out += ["### Per epoch", ""] + [f"- {sentence} (per-epoch tests, alpha {data.alpha:g}, no multiplicity correction)" for _, _, _, sentence in data.epoch_deltas] + [""]

    out += ["## Record test", ""]
    if not data.record_tests:
        out += ["No record threshold given (`--record R`).", ""]
    else:
        rows = [[r.variant, _f(r.record), str(r.n), _f(r.mean), _f(r.t, 3), _p(r.p_value),
                 DASH if r.passed is None else ("**yes**" if r.passed else "no")] for r in data.record_tests]  # fmt: skip
        out += [_md_table(["variant", "record", "n", "mean", "t", "p (one-sided)", "below record"], rows), ""]
        out += [f"Rule: {data.record_tests[0].rule.split(';')[0]}.", ""]

    out += ["## Claim check", ""]
    if not data.claim_checks:
        out += ["No claims checked (claims are upstream figures and are checked only against upstream-track runs).", ""]
    else:
        rows = [[c.variant, _f(c.claimed), str(c.n), _f(c.mean), f"[{_f(c.pi_low)}, {_f(c.pi_high)}]" if c.pi_low is not None else DASH,
                 f"**{c.verdict}**", c.source] for c in data.claim_checks]  # fmt: skip
        out += [_md_table(["variant", "claimed", "n", "mean", "95% interval for one new run", "verdict", "source"], rows), ""]

    out += ["## Trajectories", "", "![val loss per epoch](trajectory.png)", ""]
    if data.comparisons:
        out += ["![difference to the reference per epoch](delta.png)", ""]
    epoch_rows = []
    for v, t in data.epoch_summaries.items():
        for r in t.itertuples():
            ci = f"[{_f(r.ci_low)}, {_f(r.ci_high)}]" if r.n >= 2 else DASH
            epoch_rows.append([v, str(r.epoch), str(r.n), _f(r.mean), ci])
    if epoch_rows:
        out += ["<details><summary>val loss per epoch (table)</summary>", "", _md_table(["variant", "epoch", "n", "mean", f"{pct}% CI"], epoch_rows), "", "</details>", ""]

    out += ["## Runs", ""]
    if len(data.runs):
        rows = []
        for r in data.runs.sort_values(["variant", "seed", "run_id"]).itertuples():
            val = getattr(r, m)
            rows.append([r.run_id, r.variant, str(r.seed), str(r.status), _f(val), _f(r.training_time_s, 1), "yes" if r.included else "no"])
        out += [_md_table(["run", "variant", "seed", "status", m, "train time (s)", "used"], rows), ""]
    else:
        out += ["No runs in the store for these variants.", ""]
    out += ["## Failed runs", ""]
    if data.failed:
        out += [_md_table(["run", "variant", "seed", "status", "error"], [[f["run_id"], f["variant"], str(f["seed"]), f["status"], f["error"] or DASH] for f in data.failed]), ""]
    else:
        out += ["None.", ""]
    out += ["## Provenance", ""]
    prow = [[p["variant"], f"{p['complete']}/{p['runs']}", str(p["imported"]), ", ".join(p["tracks"]) or DASH,
             ", ".join(c[:12] for c in p["config_keys"]) or DASH, ", ".join(p["hardware"]) or DASH, p["last"] or DASH] for p in data.provenance]  # fmt: skip
    out += [_md_table(["variant", "complete/runs", "imported", "tracks", "config keys", "hardware", "last run ended"], prow), ""]
    out += ["Every figure above is in `summary.json`; the run table is `runs.csv`.", ""]
    return "\n".join(out)


def summary_dict(data: ReportData) -> dict[str, Any]:
    def frame(df: pd.DataFrame) -> list[dict[str, Any]]:
        return S._clean(df.to_dict(orient="records"))

    return S._clean({
        "name": data.name, "generated_at": data.generated_at, "metric": data.metric, "lower_is_better": data.lower_is_better,
        "alpha": data.alpha, "min_effect": data.min_effect, "track": data.track, "extra_args": data.extra_args, "variants": data.variants, "notes": data.notes,
        "summaries": [s.to_dict() for s in data.summaries],
        "comparisons": [c.to_dict() for c in data.comparisons],
        "epoch_summaries": {v: frame(t) for v, t in data.epoch_summaries.items()},
        "epoch_deltas": [{"variant": v, "reference": r, "sentence": s, "epochs": frame(t)} for v, r, t, s in data.epoch_deltas],
        "record_tests": [r.to_dict() for r in data.record_tests],
        "claim_checks": [c.to_dict() for c in data.claim_checks],
        "failed_runs": data.failed,
        "provenance": data.provenance,
    })  # fmt: skip


# --------------------------------------------------------------------------- plots


def _colors(names: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {v: cmap(i % 10) for i, v in enumerate(names)}


def _draw_trajectories(ax: Any, data: ReportData, first_epoch: int, colors: dict[str, Any], label: bool) -> bool:
    drew = False
    for v in data.variants:
        t = data.epoch_summaries[v]
        t = t[t["epoch"] >= first_epoch]
        if not len(t):
            continue
        e = data.epochs[(data.epochs["variant"] == v) & (data.epochs["epoch"] >= first_epoch)]
        for _, g in e.groupby("run_id"):
            ax.plot(g["epoch"], g["val_loss"], color=colors[v], alpha=0.3, lw=0.8)
        n = int(t["n"].max())
        lab = f"{v} (mean of {n} seed{'s' if n != 1 else ''})" if label else None
        ax.plot(t["epoch"], t["mean"], color=colors[v], lw=2.2, marker="o", ms=3.5, label=lab)
        band = t[t["n"] >= 2]
        if len(band):
            ax.fill_between(band["epoch"], band["ci_low"], band["ci_high"], color=colors[v], alpha=0.2, lw=0)
        drew = True
    ax.set_xlabel("epoch")
    ax.set_ylabel("val loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return drew


def plot_trajectory(data: ReportData, path: Path) -> None:
    """Left: the whole run (epoch 0, before training, left out: it flattens the plot). Right: the
    last epochs zoomed in, where the variants actually differ."""
    colors = _colors(data.variants)
    pct = int(round((1 - data.alpha) * 100))
    last = int(data.epochs["epoch"].max()) if len(data.epochs) else 0
    fig, axes = plt.subplots(1, 2 if last >= 3 else 1, figsize=(12, 5.5), dpi=120, squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]} if last >= 3 else None)  # fmt: skip
    ax = axes[0, 0]
    drew = _draw_trajectories(ax, data, 1, colors, label=True)
    if last >= 3:
        ax.set_title("all epochs")
        first_zoom = max(1, last - max(2, last // 3))
        _draw_trajectories(axes[0, 1], data, first_zoom, colors, label=False)
        axes[0, 1].set_title(f"epochs {first_zoom}-{last} (zoom)")
    fig.suptitle(f"Validation loss per epoch: {data.name} ({data.track or 'no'} track)\n"
                 f"thick: mean over seeds, band: {pct}% CI, thin: individual seeds")  # fmt: skip
    if drew:
        ax.legend(loc="upper right", frameon=False)
    else:
        ax.text(0.5, 0.5, "no per-epoch validation data from complete runs", ha="center", va="center", transform=ax.transAxes, fontsize=12)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_delta(data: ReportData, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    colors = _colors(data.variants)
    pct = int(round((1 - data.alpha) * 100))
    drew = False
    for v, ref, d, _ in data.epoch_deltas:
        d = d[(d["epoch"] > 0)]
        if not len(d):
            continue
        ax.plot(d["epoch"], d["diff"], color=colors[v], lw=2.2, marker="o", ms=3.5, label=f"{v} − {ref}")
        band = d[d["ci_low"].notna()]
        if len(band):
            ax.fill_between(band["epoch"], band["ci_low"], band["ci_high"], color=colors[v], alpha=0.2, lw=0, label=f"{pct}% CI ({band['analysis'].iloc[-1]})")
        drew = True
    ax.axhline(0, color="black", lw=1, ls="--", label="no difference")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Δ val loss vs reference (nats/token)")
    ax.set_title(f"Difference to the reference per epoch: {data.name}\nbelow zero: variant has lower loss")
    if drew:
        ax.xaxis.get_major_locator().set_params(integer=True)
    else:
        ax.text(0.5, 0.5, "no comparison with per-epoch data on both sides", ha="center", va="center", transform=ax.transAxes, fontsize=12)
    ax.legend(loc="best", frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- writing and printing


def write_report(data: ReportData, out_dir: Path | str) -> dict[str, Path]:
    """Write the five report files into `out_dir` (created); returns their paths by kind."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"report folder {out} exists and is not a folder; pass another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create report folder {out}: {e.strerror}; pass a writable --out") from None
    paths = {k: out / f for k, f in [("markdown", "REPORT.md"), ("summary", "summary.json"), ("runs", "runs.csv"),
                                      ("trajectory", "trajectory.png"), ("delta", "delta.png")]}  # fmt: skip
    paths["markdown"].write_text(render_markdown(data))
    paths["summary"].write_text(json.dumps(summary_dict(data), indent=2, allow_nan=False) + "\n")
    data.runs.to_csv(paths["runs"], index=False)
    plot_trajectory(data, paths["trajectory"])
    plot_delta(data, paths["delta"])
    return paths


def print_tables(data: ReportData, console: Any = None) -> None:
    """The per-variant summary and the comparisons as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not any(s.n for s in data.summaries):
        console.print("[yellow]no complete runs[/yellow] for these variants: nothing to summarise yet (see the failed runs in REPORT.md)")
    # the terminal gets the columns that decide; REPORT.md has them all
    keep = {"variant", "n", "failed", "mean", "std", "vs", "difference", "p (Holm)", "verdict", "seeds/side for 80% power"}
    short = {"seeds/side for 80% power": "seeds/side (80%)"}
    for title, (headers, rows) in [(f"{data.metric} per variant", summary_rows(data)), ("comparisons", comparison_rows(data))]:
        if not rows:
            continue
        idx = [i for i, h in enumerate(headers) if h in keep or h.endswith("% CI")]
        t = Table(title=title)
        for i in idx:
            h = headers[i]
            t.add_column(short.get(h, h), justify="left" if h in ("variant", "vs", "verdict") else "right", min_width=8 if h in ("difference", "p (Holm)", "verdict") else None)
        for r in rows:
            t.add_row(*[r[i].replace("**", "").split(" (at ")[0] for i in idx])
        console.print(t)
    for c in data.comparisons:
        console.print(f"[bold]{c.variant} vs {c.reference}: {c.verdict}[/bold]  ({c.rule})")
    for _, _, _, sentence in data.epoch_deltas:
        console.print(sentence)
    for r in data.record_tests:
        word = "not tested" if r.passed is None else ("below record" if r.passed else "not below record")
        console.print(f"record test {r.variant} < {r.record:g}: {word} (p {_p(r.p_value)})")
    for c in data.claim_checks:
        console.print(f"claim {c.variant} {c.claimed:.6f}: {c.verdict}")
    for n in data.notes:
        console.print(f"[yellow]note:[/yellow] {n}")


def infos_from_registry(registry: Any) -> dict[str, VariantInfo]:
    """VariantInfo for every spec of a `harness.spec.Registry`."""
    return {n: VariantInfo.from_spec(registry.get(n)) for n in registry.names()}


def sigma_from_runs(runs: pd.DataFrame, variant: str, metric: str = "min_val_loss", track: str | None = None) -> tuple[float, int]:
    """Run-to-run std of `metric` over a variant's comparable complete runs (for `harness plan --from`)."""
    if not len(runs) or variant not in set(runs["variant"]):
        raise UserError(f"no runs of variant {variant!r} in the store; run it first or pass --sigma")
    sel = S.select_runs(runs, variant, metric, track)
    if sel.n < 2 or float(np.std(sel.values, ddof=1)) == 0:
        raise UserError(f"{variant!r} has {sel.n} complete run(s) with {metric}; need >= 2 that differ to estimate sigma, or pass --sigma")
    return float(np.std(sel.values, ddof=1)), sel.n


def sigma_basis(runs: pd.DataFrame, variant: str, metric: str, track: str | None, paired: bool) -> tuple[float, str]:
    """Sigma for `harness plan --from` and a phrase saying where it came from.

    With --paired the power calculation needs the std of paired differences, which one variant's
    runs cannot give: sqrt(2) x the run-to-run std is that std when the seed shares nothing between
    the two sides, and an upper bound otherwise (so the plan errs towards more seeds)."""
    sigma, n = sigma_from_runs(runs, variant, metric, track)
    basis = f"std of {metric} over {n} runs of {variant}"
    if paired:
        return sigma * math.sqrt(2), basis + " x sqrt(2) (std of a paired difference with no shared seed effect; --sigma gives a measured one)"
    return sigma, basis

