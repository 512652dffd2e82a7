"""Statistics on the run table: noise per variant, comparisons with verdicts, record test,
claim check, per-epoch trajectories and power planning.

Everything here works on values (pandas frames, numpy arrays) and never reads files or plots.
scipy and statsmodels do the distributions; this module only decides which test applies and
turns the numbers into an honest verdict. Every result is a frozen dataclass with `to_dict()`
(plain JSON types, NaN -> None), which is what `summary.json` is made of.

Main API:
    check_metric(metric)                      -> raises UserError for an unknown metric
    select_runs(runs, variant, metric, track) -> Selection (complete, comparable runs + notes)
    summarize(selection, time_limit_s)        -> VariantSummary
    compare(sel_a, sel_b, alpha, ...)         -> Comparison (verdict + rule + robustness checks)
    holm(comparisons, alpha)                  -> comparisons with Holm-adjusted p and verdicts
    record_test(values, record, alpha=0.01)   -> RecordTest (modded-nanogpt's rule)
    claim_check(values, claim)                -> ClaimCheck (prediction interval for one new run)
    epoch_summary(epochs, run_ids)            -> DataFrame epoch, n, mean, std, ci_low, ci_high
    epoch_delta(epochs, ids_a, ids_b)         -> DataFrame per-epoch difference with CI + verdict
    plan_seeds(effect, sigma, alpha, power)   -> PowerPlan (seeds per side)
    t_difference / verdicts                   -> the vectorised core the above use (and the
                                                 simulation tests exercise thousands at once)
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

from harness.errors import UserError

# Metrics a report may use, and which direction is better. Losses and times: lower is better.
METRICS: dict[str, bool] = {
    "min_val_loss": True,
    "final_val_loss": True,
    "logit_avg_loss": True,
    "min_val_bpb": True,
    "final_val_bpb": True,
    "logit_avg_bpb": True,
    "final_train_loss": True,
    "training_time_s": True,
    "wall_time_s": True,
    "peak_memory_mib": True,
    "tokens_per_s": False,
}
LOSS_METRICS = ("min_val_loss", "final_val_loss", "logit_avg_loss")
COMPLETE_STATUS = "ok"
ACTIVE_STATUS = ("pending", "running")  # the store reports those of a dead owner as "stale"
VERDICTS = ("real gain", "regression", "within noise", "not enough runs")


def check_metric(metric: str) -> bool:
    """Return whether lower is better for `metric`; UserError if it is not a known metric."""
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    return METRICS[metric]


def _clean(value: Any) -> Any:
    """Plain JSON types: numpy scalars -> python, NaN/inf -> None, recurse into containers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


class _ToDict:
    def to_dict(self) -> dict[str, Any]:
        return _clean(dataclasses.asdict(self))  # type: ignore[call-overload]


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Selection(_ToDict):
    """One variant's runs that enter the statistics, and why others were left out."""

    variant: str
    metric: str
    track: str | None
    config_key: str | None
    hardware: str | None
    run_ids: tuple[str, ...]
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    training_time_s: tuple[float | None, ...]
    wall_time_s: tuple[float | None, ...]
    over_time_limit: tuple[bool | None, ...]
    failed: tuple[dict[str, Any], ...]  # {run_id, seed, status, error} of runs that did not finish ok
    notes: tuple[str, ...]  # e.g. "compared only the 3 runs of the most recent configuration"

    @property
    def n(self) -> int:
        return len(self.values)

    def array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=float)


def _opt(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else v


def select_runs(runs: pd.DataFrame, variant: str, metric: str = "min_val_loss", track: str | None = None) -> Selection:
    """Pick the runs of `variant` that can be compared with each other.

    Failed/diverged runs (status != ok) are listed and excluded; ok runs without the metric too.
    When complete runs span several (track, config_key, hardware) groups, only the group of the
    most recent run is kept (repeats must share everything but the seed), and a note says so.
    """
    check_metric(metric)
    rows = runs[runs["variant"] == variant] if len(runs) else runs
    notes: list[str] = []
    if track is not None and len(rows):
        other = rows[rows["track"] != track]
        if len(other):
            notes.append(f"{len(other)} run(s) on other tracks ignored (report is for track {track!r})")
        rows = rows[rows["track"] == track]
    # a run still going (its owner alive) has not failed: it is left out and counted in a note
    active = rows["status"].isin(ACTIVE_STATUS) if len(rows) else pd.Series(dtype=bool)
    if active.any():
        notes.append(f"{variant}: {int(active.sum())} run(s) still pending or running, not included")
        rows = rows[~active]
    bad = rows[rows["status"] != COMPLETE_STATUS] if len(rows) else rows
    failed = [
        {"run_id": str(r.run_id), "seed": _opt(r.seed), "status": str(r.status), "error": _opt(getattr(r, "error", None))}
        for r in bad.itertuples()
    ]
    ok = rows[rows["status"] == COMPLETE_STATUS] if len(rows) else rows
    if len(ok):
        missing = ok[ok[metric].isna()]
        for r in missing.itertuples():
            failed.append({"run_id": str(r.run_id), "seed": _opt(r.seed), "status": "ok", "error": f"no {metric} in the log"})
        ok = ok[ok[metric].notna()]
    cfg = hw = trk = None
    if len(ok):
        keys = ["track", "config_key", "hardware"]
        ok = ok.assign(**{k: ok[k].fillna("?") for k in keys})
        groups = ok.groupby(keys, sort=False)
        # the newest run decides which configuration is "current"
        order = "ended_at" if "ended_at" in ok and ok["ended_at"].notna().any() else "started_at"
        newest = ok.sort_values(order, na_position="first").iloc[-1]
        trk, cfg, hw = (str(newest[k]) for k in keys)
        if groups.ngroups > 1:
            kept = ok[(ok["track"] == trk) & (ok["config_key"] == cfg) & (ok["hardware"] == hw)]
            notes.append(
                f"{variant}: {len(ok)} complete runs span {groups.ngroups} configurations "
                f"(track/config_key/hardware); compared only the {len(kept)} run(s) matching the most recent "
                f"({trk}, config {cfg[:12]}, {hw})"
            )
            ok = kept
        ok = ok.sort_values("seed")
    col = lambda name: tuple(_opt(v) for v in ok[name]) if name in ok else tuple(None for _ in range(len(ok)))  # noqa: E731
    return Selection(
        variant=variant,
        metric=metric,
        track=trk,
        config_key=cfg,
        hardware=hw,
        run_ids=tuple(str(v) for v in ok["run_id"]) if len(ok) else (),
        seeds=tuple(int(v) for v in ok["seed"]) if len(ok) else (),
        values=tuple(float(v) for v in ok[metric]) if len(ok) else (),
        training_time_s=col("training_time_s"),
        wall_time_s=col("wall_time_s"),
        over_time_limit=col("over_time_limit"),
        failed=tuple(failed),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- per variant


@dataclass(frozen=True)
class VariantSummary(_ToDict):
    variant: str
    metric: str
    n: int
    n_failed: int
    mean: float | None
    std: float | None  # sample std (ddof=1); None with n < 2
    sem: float | None
    ci_level: float
    ci_low: float | None  # t-interval for the mean; None with n < 2
    ci_high: float | None
    min: float | None
    max: float | None
    mean_training_time_s: float | None
    mean_wall_time_s: float | None
    time_limit_s: float | None
    share_within_limit: float | None  # share of complete runs whose training time is within the limit
    seeds: tuple[int, ...]
    track: str | None
    config_key: str | None
    hardware: str | None
    notes: tuple[str, ...]


def _mean_or_none(xs: Iterable[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return float(np.mean(vals)) if vals else None


def summarize(sel: Selection, time_limit_s: float | None = None, level: float = 0.95) -> VariantSummary:
    x = sel.array()
    n = len(x)
    mean = float(x.mean()) if n else None
    std = sem = lo = hi = None
    if n >= 2:
        std = float(x.std(ddof=1))
        sem = float(st.sem(x))
        if sem > 0:
            lo, hi = (float(v) for v in st.t.interval(level, n - 1, loc=mean, scale=sem))
        else:  # identical values: the interval collapses to the point
            lo = hi = mean
    share = None
    if n and time_limit_s is not None:
        within = []
        for over, t in zip(sel.over_time_limit, sel.training_time_s):
            if over is not None:
                within.append(not bool(over))
            elif t is not None:
                within.append(float(t) <= time_limit_s)
        share = float(np.mean(within)) if within else None
    return VariantSummary(
        variant=sel.variant,
        metric=sel.metric,
        n=n,
        n_failed=len(sel.failed),
        mean=mean,
        std=std,
        sem=sem,
        ci_level=level,
        ci_low=lo,
        ci_high=hi,
        min=float(x.min()) if n else None,
        max=float(x.max()) if n else None,
        mean_training_time_s=_mean_or_none(sel.training_time_s),
        mean_wall_time_s=_mean_or_none(sel.wall_time_s),
        time_limit_s=time_limit_s,
        share_within_limit=share,
        seeds=sel.seeds,
        track=sel.track,
        config_key=sel.config_key,
        hardware=sel.hardware,
        notes=sel.notes,
    )


# --------------------------------------------------------------------------- vectorised core


@dataclass(frozen=True)
class TDiff:
    """mean(a) - mean(b) with its t-interval and two-sided p; floats or arrays (one per row)."""

    diff: Any
    ci_low: Any
    ci_high: Any
    p_value: Any
    df: Any


def t_difference(a: np.ndarray, b: np.ndarray, *, paired: bool, level: float = 0.95) -> TDiff:
    """Welch (unpaired) or paired t-test of a - b along the last axis; works on stacks of samples."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance -> nan p, handled by callers
        res = st.ttest_rel(a, b, axis=-1) if paired else st.ttest_ind(a, b, equal_var=False, axis=-1)
        ci = res.confidence_interval(level)
    diff = a.mean(axis=-1) - b.mean(axis=-1)
    return TDiff(diff=diff, ci_low=ci.low, ci_high=ci.high, p_value=res.pvalue, df=res.df)


def verdicts(diff: Any, p: Any, alpha: float, min_effect: float = 0.0, lower_is_better: bool = True) -> np.ndarray:
    """The decision rule: significant at `alpha` (two-sided) and |diff| >= min_effect.

    A significant move in the good direction is a `real gain`, in the bad direction a
    `regression`; anything else is `within noise`. NaN p (no spread at all) is within noise.
    """
    diff = np.asarray(diff, dtype=float)
    p = np.asarray(p, dtype=float)
    sig = np.nan_to_num(p, nan=1.0) < alpha
    sig &= np.abs(diff) >= min_effect
    good = diff < 0 if lower_is_better else diff > 0
    bad = diff > 0 if lower_is_better else diff < 0
    return np.where(sig & good, "real gain", np.where(sig & bad, "regression", "within noise"))


def rule_text(alpha: float, analysis: str, min_effect: float, lower_is_better: bool, metric: str, n_tests: int = 1) -> str:
    name = {"welch": "Welch (unpaired)", "paired": "paired"}.get(analysis, analysis)
    parts = [f"two-sided {name} t-test, alpha={alpha:g}"]
    if n_tests > 1:
        parts.append(f"Holm-adjusted over {n_tests} comparisons")
    if min_effect > 0:
        parts.append(f"|difference| >= {min_effect:g}")
    parts.append(f"{'lower' if lower_is_better else 'higher'} {metric} is better")
    return "; ".join(parts)


# --------------------------------------------------------------------------- power


@dataclass(frozen=True)
class PowerPlan(_ToDict):
    effect: float  # absolute difference of means to detect (metric units)
    sigma: float  # run-to-run std (per side), or std of paired differences when paired
    alpha: float
    power: float
    paired: bool
    effect_size: float  # effect / sigma (Cohen's d, or d_z when paired)
    n_exact: float  # statsmodels' real-valued solution
    n_per_side: int  # seeds per side (pairs when paired), rounded up, at least 2
    achieved_power: float  # power with n_per_side


def plan_seeds(effect: float, sigma: float, alpha: float = 0.05, power: float = 0.8, paired: bool = False) -> PowerPlan:
    """Seeds per side for a two-sided t-test to detect `effect` with `power` at noise `sigma`."""
    if not (effect > 0 and math.isfinite(effect)):
        raise UserError(f"effect must be a positive number (got {effect}); pass e.g. --effect 0.001")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise UserError(f"sigma must be a positive number (got {sigma}); pass --sigma or --from a variant with >= 2 runs that differ")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise UserError(f"alpha and power must lie strictly between 0 and 1 (got alpha={alpha}, power={power})")
    d = effect / sigma
    solver = TTestPower() if paired else TTestIndPower()

    def power_at(n: float) -> float:
        kw = {"nobs": n} if paired else {"nobs1": n, "ratio": 1.0}
        return float(solver.power(effect_size=d, alpha=alpha, alternative="two-sided", **kw))

    if power_at(2) >= power:  # huge effect: the solver cannot go below 2 (it returns nan)
        n_exact = 2.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n_exact = float(solver.solve_power(effect_size=d, alpha=alpha, power=power, alternative="two-sided"))
        if not math.isfinite(n_exact):
            raise UserError(f"could not solve for the number of seeds (effect/sigma={d:.3g}); check --effect and --sigma")
    n = max(2, math.ceil(n_exact - 1e-9))
    return PowerPlan(effect, sigma, alpha, power, paired, d, n_exact, n, power_at(n))


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Comparison(_ToDict):
    variant: str
    reference: str
    metric: str
    n_variant: int
    n_reference: int
    analysis: str  # "paired" | "welch" | "none"
    why: str  # why this analysis (or why no test)
    diff: float | None  # mean(variant) - mean(reference); negative = lower
    ci_level: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None  # raw two-sided p
    p_adjusted: float | None  # Holm-adjusted p (== p_value when the report makes one comparison)
    df: float | None
    effect_size: float | None  # Cohen's d (pooled sd) or d_z (paired)
    pooled_sigma: float | None  # pooled run-to-run std (sd of differences when paired)
    bootstrap_ci_low: float | None
    bootstrap_ci_high: float | None
    rank_test: str | None  # "wilcoxon" | "mannwhitneyu"
    rank_p_value: float | None
    verdict: str
    rule: str
    seeds_needed: int | None  # per side for 80% power at the planned effect, when within noise
    seeds_needed_effect: float | None  # the effect that plan used
    seeds_needed_basis: str | None  # "observed" | "claimed"
    notes: tuple[str, ...] = field(default_factory=tuple)


def _choose_analysis(sel_a: Selection, sel_b: Selection) -> tuple[bool, str]:
    sa, sb = sel_a.seeds, sel_b.seeds
    if len(set(sa)) == len(sa) and len(set(sb)) == len(sb) and set(sa) == set(sb):
        return True, (
            f"paired by seed: both sides ran the same {len(sa)} seeds, so seed-to-seed variation "
            "(initialisation, and data order where the seed sets it) cancels in the differences"
        )
    only_a = sorted(set(sa) - set(sb))
    only_b = sorted(set(sb) - set(sa))
    return False, (
        f"unpaired (Welch, unequal variances): the seed sets differ "
        f"(only {sel_a.variant}: {only_a or '-'}; only {sel_b.variant}: {only_b or '-'})"
    )


def compare(
    sel_a: Selection,
    sel_b: Selection,
    alpha: float = 0.05,
    min_effect: float = 0.0,
    claimed_effect: float | None = None,
    n_bootstrap: int = 4999,
    power: float = 0.8,
) -> Comparison:
    """Variant `sel_a` against its reference `sel_b`: difference, CI, verdict, robustness checks."""
    if not 0 < alpha < 1:
        raise UserError(f"alpha must lie strictly between 0 and 1 (got {alpha})")
    if sel_a.metric != sel_b.metric:
        raise UserError(f"cannot compare {sel_a.metric} with {sel_b.metric}; use one metric for both sides")
    if sel_a.track and sel_b.track and sel_a.track != sel_b.track:
        raise UserError(
            f"{sel_a.variant} ran on track {sel_a.track!r} but {sel_b.variant} on {sel_b.track!r}; "
            "runs on different tracks are not comparable, pass --track to pick one"
        )
    lower = check_metric(sel_a.metric)
    level = 1 - alpha
    notes: list[str] = []
    if sel_a.hardware and sel_b.hardware and sel_a.hardware != sel_b.hardware:
        notes.append(f"hardware differs ({sel_a.hardware} vs {sel_b.hardware}): times are not comparable")
    base = dict(variant=sel_a.variant, reference=sel_b.variant, metric=sel_a.metric, n_variant=sel_a.n, n_reference=sel_b.n, ci_level=level)
    if sel_a.n < 2 or sel_b.n < 2:
        diff = float(sel_a.array().mean() - sel_b.array().mean()) if sel_a.n and sel_b.n else None
        return Comparison(
            **base, analysis="none",
            why=f"no test: needs >= 2 complete runs per side (have {sel_a.n} and {sel_b.n})",
            diff=diff, ci_low=None, ci_high=None, p_value=None, p_adjusted=None, df=None, effect_size=None,
            pooled_sigma=None, bootstrap_ci_low=None, bootstrap_ci_high=None, rank_test=None, rank_p_value=None,
            verdict="not enough runs", rule=f"a test needs >= 2 complete runs on each side; alpha={alpha:g}",
            seeds_needed=None, seeds_needed_effect=None, seeds_needed_basis=None, notes=tuple(notes),
        )  # fmt: skip
    paired, why = _choose_analysis(sel_a, sel_b)
    a, b = sel_a.array(), sel_b.array()
    if paired:  # align by seed (selections are sorted by seed, but be explicit)
        a = a[np.argsort(sel_a.seeds)]
        b = b[np.argsort(sel_b.seeds)]
    core = t_difference(a, b, paired=paired, level=level)
    diff = float(core.diff)
    p = float(core.p_value)
    if paired:
        sigma = float(np.std(a - b, ddof=1))
    else:  # pooled sd: the noise a single run of either side carries
        sigma = float(np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)))
    if sigma == 0:
        notes.append("no spread at all on either side: no t-test possible, treated as within noise")
        p = float("nan")
    effect = diff / sigma if sigma > 0 else None
    ci_lo, ci_hi = float(core.ci_low), float(core.ci_high)
    bs_lo = bs_hi = None
    if min(len(a), len(b)) >= 3 and n_bootstrap > 0 and sigma > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bs = st.bootstrap(
                (a, b), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis), paired=paired, vectorized=True,
                n_resamples=n_bootstrap, confidence_level=level, method="percentile", rng=np.random.default_rng(0),
            )  # fmt: skip
        bs_lo, bs_hi = float(bs.confidence_interval.low), float(bs.confidence_interval.high)
        if min(len(a), len(b)) < 10:  # resampling a handful of runs under-states the spread
            notes.append("with fewer than 10 runs per side the bootstrap CI is too narrow; the t-interval decides")
    else:
        notes.append("bootstrap CI needs >= 3 runs per side with some spread")
    rank_name = "wilcoxon" if paired else "mannwhitneyu"
    rank_p = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = st.wilcoxon(a, b) if paired else st.mannwhitneyu(a, b, alternative="two-sided")
        rank_p = float(r.pvalue)
    except ValueError:  # e.g. all paired differences zero
        rank_p = None
    analysis = "paired" if paired else "welch"
    verdict = str(verdicts(diff, p, alpha, min_effect, lower))
    needed = needed_eff = basis = None
    if verdict == "within noise" and sigma > 0:
        needed_eff, basis = (abs(claimed_effect), "claimed") if claimed_effect else (abs(diff), "observed")
        if needed_eff > 0:
            needed = plan_seeds(needed_eff, sigma, alpha, power, paired).n_per_side
    return Comparison(
        **base, analysis=analysis, why=why, diff=diff, ci_low=ci_lo, ci_high=ci_hi, p_value=p, p_adjusted=p,
        df=float(core.df), effect_size=effect, pooled_sigma=sigma, bootstrap_ci_low=bs_lo, bootstrap_ci_high=bs_hi,
        rank_test=rank_name, rank_p_value=rank_p, verdict=verdict,
        rule=rule_text(alpha, analysis, min_effect, lower, sel_a.metric),
        seeds_needed=needed, seeds_needed_effect=needed_eff, seeds_needed_basis=basis, notes=tuple(notes),
    )  # fmt: skip


def holm(comparisons: Sequence[Comparison], alpha: float = 0.05, min_effect: float = 0.0) -> list[Comparison]:
    """Holm-adjust the p-values of the comparisons that have one, and re-decide their verdicts."""
    tested = [i for i, c in enumerate(comparisons) if c.p_value is not None]
    out = list(comparisons)
    if len(tested) < 2:
        return out
    _, p_adj, _, _ = multipletests([comparisons[i].p_value for i in tested], alpha=alpha, method="holm")
    for i, pa in zip(tested, p_adj):
        c = comparisons[i]
        lower = METRICS[c.metric]
        v = str(verdicts(c.diff, pa, alpha, min_effect, lower))
        out[i] = dataclasses.replace(
            c, p_adjusted=float(pa), verdict=v, rule=rule_text(alpha, c.analysis, min_effect, lower, c.metric, len(tested))
        )
    return out


# --------------------------------------------------------------------------- record & claim


@dataclass(frozen=True)
class RecordTest(_ToDict):
    variant: str
    record: float
    n: int
    mean: float | None
    t: float | None
    p_value: float | None  # one-sided: mean < record
    alpha: float
    passed: bool | None  # None: not enough runs
    rule: str


def record_test(values: Sequence[float], record: float, alpha: float = 0.01, variant: str = "") -> RecordTest:
    """modded-nanogpt's record rule: `ttest_1samp(losses, record, alternative='less')` with p < alpha."""
    x = np.asarray(values, dtype=float)
    rule = f"one-sample t-test, mean < {record:g}, one-sided, p < {alpha:g} (modded-nanogpt's record rule)"
    if len(x) < 2:
        return RecordTest(variant, record, len(x), float(x.mean()) if len(x) else None, None, None, alpha, None, rule + "; needs >= 2 runs")
    if np.ptp(x) == 0:  # no spread: scipy gives nan; decide by the value itself but say there is no test
        return RecordTest(variant, record, len(x), float(x[0]), None, None, alpha, None, rule + "; all runs identical, no test")
    r = st.ttest_1samp(x, record, alternative="less")
    return RecordTest(variant, record, len(x), float(x.mean()), float(r.statistic), float(r.pvalue), alpha, bool(r.pvalue < alpha), rule)


@dataclass(frozen=True)
class ClaimCheck(_ToDict):
    variant: str
    metric: str
    claimed: float
    source: str
    kind: str
    n: int
    mean: float | None
    level: float
    pi_low: float | None  # prediction interval for one new run
    pi_high: float | None
    reproduced: bool | None  # claim inside the interval; None: fewer than 2 runs
    verdict: str


def claim_check(values: Sequence[float], claimed: float, level: float = 0.95, variant: str = "", metric: str = "min_val_loss",
                source: str = "", kind: str = "claim") -> ClaimCheck:  # fmt: skip
    """Is a single claimed run consistent with the reproduced runs?

    The interval for one new run is mean +/- t_{n-1} * s * sqrt(1 + 1/n): it covers a fresh run
    from the same distribution with probability `level`.
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 2:
        return ClaimCheck(variant, metric, claimed, source, kind, n, float(x.mean()) if n else None, level, None, None, None,
                          f"not enough runs (need >= 2, have {n})")  # fmt: skip
    m, s = float(x.mean()), float(x.std(ddof=1))
    half = float(st.t.ppf(0.5 + level / 2, n - 1)) * s * math.sqrt(1 + 1 / n)
    lo, hi = m - half, m + half
    ok = lo <= claimed <= hi
    word = "claim reproduced" if ok else ("claim better than reproduced" if claimed < lo else "claim worse than reproduced")
    return ClaimCheck(variant, metric, claimed, source, kind, n, m, level, lo, hi, ok, word)


# --------------------------------------------------------------------------- per epoch


def epoch_summary(epochs: pd.DataFrame, run_ids: Sequence[str], level: float = 0.95, column: str = "val_loss") -> pd.DataFrame:
    """Mean and t-interval of `column` per epoch over the given runs (epoch 0 = before training)."""
    cols = ["epoch", "n", "mean", "std", "ci_low", "ci_high"]
    if not len(epochs) or not run_ids:
        return pd.DataFrame(columns=cols)
    e = epochs[epochs["run_id"].isin(list(run_ids))].dropna(subset=[column])
    rows = []
    for ep, g in e.groupby("epoch"):
        x = g[column].to_numpy(float)
        n, m = len(x), float(x.mean())
        if n >= 2 and x.std(ddof=1) > 0:
            lo, hi = st.t.interval(level, n - 1, loc=m, scale=st.sem(x))
        elif n >= 2:
            lo = hi = m
        else:
            lo = hi = np.nan
        rows.append((int(ep), n, m, float(x.std(ddof=1)) if n >= 2 else np.nan, float(lo), float(hi)))
    return pd.DataFrame(rows, columns=cols)


def epoch_delta(epochs: pd.DataFrame, ids_a: Sequence[str], ids_b: Sequence[str], alpha: float = 0.05, column: str = "val_loss") -> pd.DataFrame:
    """Per epoch: mean(a) - mean(b) with CI, paired by seed when both sides have the same seeds.

    The per-epoch verdicts are descriptive (one test per epoch, no multiplicity correction).
    """
    cols = ["epoch", "n_a", "n_b", "analysis", "diff", "ci_low", "ci_high", "p_value", "verdict"]
    if not len(epochs):
        return pd.DataFrame(columns=cols)
    e = epochs.dropna(subset=[column])
    ea = e[e["run_id"].isin(list(ids_a))]
    eb = e[e["run_id"].isin(list(ids_b))]
    rows = []
    for ep in sorted(set(ea["epoch"]) & set(eb["epoch"])):
        ga = ea[ea["epoch"] == ep].set_index("seed")[column]
        gb = eb[eb["epoch"] == ep].set_index("seed")[column]
        na, nb = len(ga), len(gb)
        if na < 2 or nb < 2:
            rows.append((int(ep), na, nb, "none", float(ga.mean() - gb.mean()), np.nan, np.nan, np.nan, "not enough runs"))
            continue
        paired = ga.index.is_unique and gb.index.is_unique and set(ga.index) == set(gb.index)
        if paired:
            gb = gb.loc[ga.index]
        core = t_difference(ga.to_numpy(float), gb.to_numpy(float), paired=paired, level=1 - alpha)
        v = str(verdicts(core.diff, core.p_value, alpha))
        rows.append((int(ep), na, nb, "paired" if paired else "welch", float(core.diff), float(core.ci_low), float(core.ci_high),
                     float(core.p_value), v))  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def describe_epoch_delta(delta: pd.DataFrame, variant: str, reference: str) -> str:
    """One sentence such as "A ahead by 0.0200 at epoch 7 (significant), within noise at epoch 12"."""
    d = delta[delta["epoch"] > 0] if len(delta) else delta
    if not len(d):
        return f"no epochs in common between {variant} and {reference}"
    parts = []
    tested = d[d["verdict"] != "not enough runs"]
    if len(tested):
        # the epoch where the variant leads most; if it never leads, where it trails most
        ahead = (tested["diff"] < 0).any()
        best = tested.loc[tested["diff"].idxmin() if ahead else tested["diff"].idxmax()]
        word = "ahead" if ahead else "behind"
        sig = "significant" if best["verdict"] != "within noise" else "within noise"
        parts.append(f"{variant} most {word} by {abs(best['diff']):.4f} at epoch {int(best['epoch'])} ({sig})")
    last = d.iloc[-1]
    if len(tested) and int(best["epoch"]) == int(last["epoch"]):
        return f"vs {reference}: " + parts[0].replace(" most ", " ")
    if last["verdict"] == "not enough runs":
        parts.append(f"not enough runs to test epoch {int(last['epoch'])}")
    elif last["verdict"] == "within noise":
        parts.append(f"within noise at epoch {int(last['epoch'])} ({last['diff']:+.4f})")
    else:
        word = "ahead" if last["diff"] < 0 else "behind"
        parts.append(f"{word} by {abs(last['diff']):.4f} at epoch {int(last['epoch'])} (significant)")
    return f"vs {reference}: " + ", ".join(parts)
