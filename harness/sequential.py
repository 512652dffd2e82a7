"""Sequential decision rule for paired rounds of seeds (the statistics behind `harness check`).

Data: paired differences d_i = loss(candidate, seed i) - loss(baseline, seed i), one pair per
round, looks at n = min_seeds, min_seeds + 1, ..., max_seeds. True mean difference: mu.

Both modes test  H0: mu >= d0  against  H1: mu = d0 - margin  (lower loss is better):
  * gain:           d0 = 0       (pass = a real gain; powered for a gain of `margin`)
  * no-regression:  d0 = margin  (pass = not worse than `margin`; powered for mu = 0)

Rule (a group-sequential one-sided t-test with a non-binding futility test; docs/check.md):
  pass when  mean + a_n * se  <  d0            (t-test of H0 at level alpha over all looks)
  fail when  mean - b_n * se  >  d0 - margin   (t-test of H1 at level beta = 1 - power)
i.e. pass when the repeated confidence interval [mean - b_n se, mean + a_n se] lies wholly below
d0, fail when it lies wholly above d0 - margin. Otherwise run another round; at max_seeds the
verdict is "not shown".

Why it is valid with unknown sigma: under mu = d0 the sequence of t-statistics at the looks has a
law that does not depend on sigma (it is pivotal), so the critical values a_n can be calibrated
exactly by Monte Carlo, with no z-approximation (a z-boundary, or z converted to t at matched
tail probability, is anti-conservative with 2-10 seeds: about 0.056 for a nominal 0.05). The
futility test is ignored when calibrating a_n ("non-binding"), so the type-I error is at most
alpha whatever sigma is and whether or not anyone honours a futility stop; likewise b_n.

Boundary shape: nominal p-value thresholds p_n = lam * (n / max_seeds) ** rho (the "significance
level" approach of Jennison & Turnbull 2000, ch. 11, with a power-family shape as in Kim &
DeMets 1987); lam is the alpha-quantile of min_n(P_n / shape_n) over simulated H0 paths.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import special, stats

from harness.errors import UserError

Mode = Literal["gain", "no-regression"]
MODES: tuple[str, ...] = ("gain", "no-regression")
Decision = Literal["pass", "fail", "continue", "not shown"]

DEFAULT_RHO = 0.5  # boundary shape; chosen by benchmarks/sequential.py (lowest mean seeds at equal power)
CALIBRATION_PATHS = 200_000  # Monte Carlo paths per boundary: alpha error about 0.0005 (one s.e.)
MAX_SEEDS_LIMIT = 200  # keeps the calibration a fraction of a second; nobody runs more seeds per side


@dataclass(frozen=True)
class Design:
    """Everything the rule needs, fixed before the first run."""

    mode: str
    margin: float  # loss units; > 0
    alpha: float = 0.05  # type-I error: P(pass) when mu = d0, over all looks
    power: float = 0.9  # 1 - beta: the futility test is run at level beta
    min_seeds: int = 3  # first look (pairs); >= 2 so a variance can be estimated
    max_seeds: int = 10  # last look (pairs)
    rho: float = DEFAULT_RHO

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown --mode {self.mode!r}; use one of: {', '.join(MODES)}")
        if not (math.isfinite(self.margin) and self.margin > 0):
            raise UserError(f"--margin must be a positive loss difference, got {self.margin}")
        if not (0 < self.alpha < 0.5):
            raise UserError(f"--alpha must be in (0, 0.5), got {self.alpha}")
        if not (0.5 < self.power < 1):
            raise UserError(f"--power must be in (0.5, 1), got {self.power}")
        if not (isinstance(self.min_seeds, int) and self.min_seeds >= 2):
            raise UserError(f"--seeds must be at least 2 (a variance needs two pairs), got {self.min_seeds}")
        if not isinstance(self.max_seeds, int) or self.max_seeds < self.min_seeds:
            raise UserError(f"--max-seeds ({self.max_seeds}) must be at least --seeds ({self.min_seeds})")
        if self.max_seeds > MAX_SEEDS_LIMIT:
            raise UserError(f"--max-seeds must be at most {MAX_SEEDS_LIMIT}, got {self.max_seeds}")
        if not (math.isfinite(self.rho) and -2 <= self.rho <= 4):
            raise UserError(f"boundary shape rho must be in [-2, 4], got {self.rho}")

    @property
    def beta(self) -> float:
        return 1.0 - self.power

    @property
    def null_diff(self) -> float:
        """d0: the mean difference (candidate - baseline) at which a pass is an error."""
        return 0.0 if self.mode == "gain" else self.margin

    @property
    def alt_diff(self) -> float:
        """The mean difference the gate is powered for (d0 - margin)."""
        return self.null_diff - self.margin

    def looks(self) -> np.ndarray:
        return np.arange(self.min_seeds, self.max_seeds + 1)

    def describe(self) -> str:
        """One line stating the rule, for reports."""
        if self.mode == "gain":
            what = f"pass if the candidate's loss is lower (H0: diff >= 0), fail if a gain of {self.margin:g} is ruled out"
        else:
            what = (f"pass if the candidate is not worse by {self.margin:g} or more (H0: diff >= {self.margin:g}), "
                    "fail if 'no worse than baseline' is ruled out")
        return (f"{what}; group-sequential paired t-test, one look per seed pair from {self.min_seeds} to "
                f"{self.max_seeds}, alpha={self.alpha:g}, futility at level {1 - self.power:g} (non-binding; the power to "
                f"detect the margin reaches {self.power:g} only if --max-seeds is large enough for the noise: see `harness plan`)")


def _t_paths(eps: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """t-statistics of the running mean of each row of `eps` at sample sizes `ns`."""
    n = np.arange(1, eps.shape[1] + 1)
    csum = np.cumsum(eps, axis=1)
    csq = np.cumsum(eps * eps, axis=1)
    mean = csum / n
    var = np.maximum(csq - n * mean * mean, 0.0) / np.maximum(n - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (mean / np.sqrt(var / n))[:, ns - 1]


@functools.lru_cache(maxsize=64)
def critical_values(min_seeds: int, max_seeds: int, level: float, rho: float,
                    paths: int = CALIBRATION_PATHS, seed: int = 20240601) -> np.ndarray:
    """Upper critical values c_n (t scale), one per look, with P_H0(any T_n >= c_n) = level.

    Deterministic (fixed Monte Carlo seed) so a check's verdict is reproducible.
    """
    ns = np.arange(min_seeds, max_seeds + 1)
    shape = (ns / max_seeds) ** rho
    rng = np.random.default_rng(seed)
    ratios = []
    chunk = max(1000, 2_000_000 // max_seeds)  # bound memory (~16 MB per chunk)
    for start in range(0, paths, chunk):
        eps = rng.standard_normal((min(chunk, paths - start), max_seeds))
        p = special.stdtr(ns - 1, -_t_paths(eps, ns))  # upper-tail p-value; faster than stats.t.sf
        ratios.append(np.min(p / shape, axis=1))  # a path rejects iff lam >= its smallest ratio
    lam = float(np.quantile(np.concatenate(ratios), level))
    return stats.t.isf(np.minimum(lam * shape, 0.5), ns - 1)


@dataclass(frozen=True)
class Boundaries:
    looks: np.ndarray  # n at each look
    efficacy: np.ndarray  # a_n: pass when (d0 - mean) / se >= a_n
    futility: np.ndarray  # b_n: fail when (mean - (d0 - margin)) / se >= b_n


def boundaries(design: Design) -> Boundaries:
    return Boundaries(
        looks=design.looks(),
        efficacy=critical_values(design.min_seeds, design.max_seeds, design.alpha, design.rho),
        futility=critical_values(design.min_seeds, design.max_seeds, design.beta, design.rho),
    )


@dataclass(frozen=True)
class Look:
    """The state of the evidence after one round, and what to do next."""

    n: int  # pairs used
    mean: float  # mean of candidate - baseline
    sd: float  # sample sd of the differences (0 if n < 2)
    ci_low: float  # repeated confidence interval for the true mean difference,
    ci_high: float  # simultaneous coverage >= 1 - alpha - beta over all looks
    ci_level: float
    decision: str  # one of Decision


def evaluate(diffs: np.ndarray | list[float], design: Design) -> Look:
    """Apply the rule to the first len(diffs) pairs (the analysis at one look).

    Skipping looks (e.g. starting at n = 6 because six pairs are already stored) keeps the error
    rate at or below alpha: the boundaries are fixed per n, and fewer looks can only reject less.
    """
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 1 or not np.all(np.isfinite(d)):
        raise ValueError("differences must be a 1-D array of finite numbers")
    n = len(d)
    level = 1 - design.alpha - design.beta
    if n == 0:
        return Look(0, math.nan, math.nan, -math.inf, math.inf, level, "continue")
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n >= 2 else math.nan
    if n < design.min_seeds:
        return Look(n, mean, sd, -math.inf, math.inf, level, "continue")
    b = boundaries(design)
    k = min(n, design.max_seeds) - design.min_seeds
    se = sd / math.sqrt(n)  # 0 when every pair is identical (deterministic runs): the CI is a point
    low, high = mean - b.futility[k] * se, mean + b.efficacy[k] * se
    if high < design.null_diff:
        decision = "pass"
    elif low > design.alt_diff:
        decision = "fail"
    elif n >= design.max_seeds:
        decision = "not shown"
    else:
        decision = "continue"
    return Look(n, mean, sd, low, high, level, decision)


# ----- simulation (benchmarks/sequential.py and the tests) -----

@dataclass(frozen=True)
class SimResult:
    p_pass: float
    p_fail: float
    p_not_shown: float
    mean_seeds: float  # pairs per side, averaged over simulated checks


def simulate(design: Design, true_diff: float, sigma_d: float, paths: int = 20_000,
             seed: int = 1) -> SimResult:
    """Run the rule on `paths` simulated checks with normal differences N(true_diff, sigma_d^2)."""
    rng = np.random.default_rng(seed)
    ns = design.looks()
    b = boundaries(design)
    d = true_diff + sigma_d * rng.standard_normal((paths, design.max_seeds))
    n = np.arange(1, design.max_seeds + 1)
    mean = (np.cumsum(d, axis=1) / n)[:, ns - 1]
    var = np.maximum(np.cumsum(d * d, axis=1) - n * (np.cumsum(d, axis=1) / n) ** 2, 0) / np.maximum(n - 1, 1)
    se = np.sqrt(var[:, ns - 1] / ns)
    passed = mean + b.efficacy * se < design.null_diff
    failed = (mean - b.futility * se > design.alt_diff) & ~passed
    stop = passed | failed
    first = np.where(stop.any(axis=1), stop.argmax(axis=1), len(ns) - 1)
    rows = np.arange(paths)
    p, f = passed[rows, first], failed[rows, first]
    return SimResult(float(p.mean()), float(f.mean()), float((~p & ~f).mean()), float(ns[first].mean()))


def fixed_seeds(effect_over_sigma_d: float, alpha: float, power: float) -> int:
    """Pairs a one-shot one-sided paired t-test needs for `power` at the given standardized effect."""
    from statsmodels.stats.power import TTestPower

    n = TTestPower().solve_power(effect_size=effect_over_sigma_d, alpha=alpha, power=power,
                                 alternative="larger")
    return max(2, int(math.ceil(float(n))))


def simulate_fixed(n: int, design: Design, true_diff: float, sigma_d: float, paths: int = 20_000,
                   seed: int = 1) -> float:
    """P(pass) of the one-shot t-test of H0: mu >= d0 with n pairs."""
    rng = np.random.default_rng(seed)
    d = true_diff + sigma_d * rng.standard_normal((paths, n))
    t = (design.null_diff - d.mean(axis=1)) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    return float((t >= stats.t.isf(design.alpha, n - 1)).mean())


def plan_max_seeds(design: Design, sigma_d: float, limit: int = MAX_SEEDS_LIMIT, paths: int = 10_000) -> int | None:
    """Smallest max_seeds whose simulated power at the design alternative reaches design.power.

    Binary search: power grows with max_seeds (up to Monte Carlo noise).
    """
    def ok(m: int) -> bool:
        trial = Design(design.mode, design.margin, design.alpha, design.power, design.min_seeds, m, design.rho)
        return simulate(trial, trial.alt_diff, sigma_d, paths=paths).p_pass >= design.power

    lo, hi = design.min_seeds, design.min_seeds
    while not ok(hi):
        if hi >= limit:
            return None
        lo, hi = hi + 1, min(limit, hi * 2)
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi
