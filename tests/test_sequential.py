"""The sequential rule behind `harness check`: error rates by simulation, decisions, boundaries, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.errors import UserError
from harness.sequential import Design, boundaries, critical_values, evaluate, simulate

SIGMA_D = 0.0014  # sd of a paired difference (0.001 run-to-run noise per side)
PATHS = 20_000
MC_SE = math.sqrt(0.05 * 0.95 / PATHS)  # one standard error of an error rate near alpha


@pytest.mark.parametrize("mode", ["gain", "no-regression"])
@pytest.mark.parametrize("sigma_d", [SIGMA_D, 10 * SIGMA_D])  # validity must not depend on sigma
def test_type1_error_at_most_alpha(mode: str, sigma_d: float) -> None:
    d = Design(mode, margin=0.001, alpha=0.05, min_seeds=2, max_seeds=10)
    res = simulate(d, true_diff=d.null_diff, sigma_d=sigma_d, paths=PATHS, seed=11)
    assert res.p_pass <= 0.05 + 3 * MC_SE
    assert res.p_pass > 0.01  # the rule is not trivially conservative either


def test_unknown_sigma_needs_t_calibration() -> None:
    # A z-boundary with 2-10 seeds would be far above alpha; our calibrated t-boundary is not.
    d = Design("gain", margin=0.001, alpha=0.05, min_seeds=2, max_seeds=10)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((PATHS, 10))
    n = np.arange(2, 11)
    t = np.stack([x[:, :k].mean(1) / (x[:, :k].std(1, ddof=1) / np.sqrt(k)) for k in n], axis=1)
    z_crit = 1.645  # even a single look per n with the fixed-design z boundary
    assert (t >= z_crit).any(axis=1).mean() > 0.15
    assert (t >= boundaries(d).efficacy).any(axis=1).mean() <= 0.05 + 3 * MC_SE


def test_large_gain_passes_quickly_and_large_regression_fails() -> None:
    d = Design("gain", margin=0.001, min_seeds=3, max_seeds=10)
    gain = simulate(d, true_diff=-0.005, sigma_d=SIGMA_D, paths=2000)
    assert gain.p_pass > 0.99 and gain.mean_seeds < 5
    worse = simulate(d, true_diff=+0.005, sigma_d=SIGMA_D, paths=2000)
    assert worse.p_fail > 0.99 and worse.mean_seeds < 5
    nr = Design("no-regression", margin=0.001, min_seeds=3, max_seeds=10)
    assert simulate(nr, true_diff=+0.005, sigma_d=SIGMA_D, paths=2000).p_fail > 0.99
    assert simulate(nr, true_diff=0.0, sigma_d=SIGMA_D / 10, paths=2000).p_pass > 0.99


def test_evaluate_single_look_decisions() -> None:
    d = Design("gain", margin=0.001, min_seeds=3, max_seeds=6)
    assert evaluate([-0.01, -0.011, -0.0105], d).decision == "pass"
    assert evaluate([0.01, 0.011, 0.0105], d).decision == "fail"
    noisy = [-0.002, 0.003, -0.001]
    assert evaluate(noisy, d).decision == "continue"
    assert evaluate(noisy * 2, d).decision == "not shown"  # six pairs = max_seeds, no decision
    assert evaluate([-0.01, -0.011], d).decision == "continue"  # below min_seeds: never decide
    look = evaluate(noisy, d)
    assert look.ci_low < look.mean < look.ci_high
    assert look.ci_level == pytest.approx(1 - 0.05 - 0.1)


def test_identical_pairs_zero_variance() -> None:
    # Deterministic runs (CPU, same seed) give exactly equal losses: the difference is known exactly.
    zeros = [0.0, 0.0, 0.0]
    assert evaluate(zeros, Design("no-regression", margin=0.001)).decision == "pass"
    assert evaluate(zeros, Design("gain", margin=0.001)).decision == "fail"


def test_boundaries_monotone_and_meet_alpha_shape() -> None:
    for level in (0.01, 0.05, 0.1):
        c = critical_values(2, 20, level, 0.5)
        assert np.all(np.diff(c) < 0), c  # stricter at early looks (fewer degrees of freedom)
    loose, strict = critical_values(3, 12, 0.1, 0.5), critical_values(3, 12, 0.01, 0.5)
    assert np.all(strict > loose)
    # deterministic: a verdict must be reproducible
    assert np.array_equal(critical_values(3, 12, 0.05, 0.5, paths=50_000), critical_values(3, 12, 0.05, 0.5, paths=50_000))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="gain", margin=0.001, alpha=0.0), "alpha"),
        (dict(mode="gain", margin=0.001, alpha=0.5), "alpha"),
        (dict(mode="gain", margin=0.001, alpha=float("nan")), "alpha"),
        (dict(mode="gain", margin=0.0), "margin"),
        (dict(mode="gain", margin=-1.0), "margin"),
        (dict(mode="faster", margin=0.001), "mode"),
        (dict(mode="gain", margin=0.001, min_seeds=1), "seeds"),
        (dict(mode="gain", margin=0.001, min_seeds=5, max_seeds=4), "max-seeds"),
        (dict(mode="gain", margin=0.001, power=0.4), "power"),
    ],
)
def test_bad_parameters_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        Design(**kwargs)


def test_nonfinite_differences_rejected() -> None:
    with pytest.raises(ValueError):
        evaluate([0.0, float("nan"), 1.0], Design("gain", margin=0.001))
