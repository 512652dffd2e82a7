"""Statistical properties of harness.stats, checked by simulation with known truth.

Noise levels come from /work/shared/reference/noise-facts.md: slowrun two-hour runs differ by
about 0.0004, modded-nanogpt configurations have a median std of 0.0012 around a loss of 3.28.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as st
from statsmodels.stats.multitest import multipletests

from harness import stats as S
from harness.errors import UserError

SIGMA = 0.0012  # modded-nanogpt median run-to-run std
MU = 3.2785
N_SIM = 2000
ALPHA = 0.05


def mc_bound(p: float, n: int = N_SIM) -> float:
    """Three Monte-Carlo standard errors of a share estimated from n simulations."""
    return 3 * math.sqrt(p * (1 - p) / n)


def sel(variant: str, values, seeds=None, metric: str = "min_val_loss", track: str = "mini", hardware: str = "cpu") -> S.Selection:
    values = tuple(float(v) for v in values)
    seeds = tuple(range(len(values))) if seeds is None else tuple(seeds)
    none = tuple(None for _ in values)
    return S.Selection(variant, metric, track, "cfg-" + variant, hardware, tuple(f"{variant}-{s}" for s in seeds), seeds, values,
                       none, none, none, (), ())  # fmt: skip


def table(rows: list[dict]) -> pd.DataFrame:
    base = dict(track="mini", status="ok", error=None, config_key="c1", hardware="cpu", started_at=None, ended_at=None,
                min_val_loss=None, training_time_s=None, wall_time_s=None, over_time_limit=None)  # fmt: skip
    return pd.DataFrame([{**base, **r} for r in rows])


# --------------------------------------------------------------------------- simulations


@pytest.mark.parametrize("paired", [False, True])
def test_aa_false_call_rate_within_alpha(paired):
    rng = np.random.default_rng(11)
    n = 5
    if paired:  # a shared per-seed component (initialisation) makes the pairs correlated
        shared = rng.normal(0, SIGMA, (N_SIM, n))
        a = MU + shared + rng.normal(0, SIGMA / 2, (N_SIM, n))
        b = MU + shared + rng.normal(0, SIGMA / 2, (N_SIM, n))
    else:
        a = rng.normal(MU, SIGMA, (N_SIM, n))
        b = rng.normal(MU, SIGMA, (N_SIM, n))
    core = S.t_difference(a, b, paired=paired, level=1 - ALPHA)
    v = S.verdicts(core.diff, core.p_value, ALPHA)
    false_calls = np.isin(v, ["real gain", "regression"]).mean()
    assert false_calls <= ALPHA + mc_bound(ALPHA), false_calls
    # and the test is not trivially conservative: it does make some calls
    assert false_calls > ALPHA - mc_bound(ALPHA)


def test_compare_agrees_with_vectorised_core():
    """The full compare() path makes the same calls as the core the A/A simulation exercises."""
    rng = np.random.default_rng(5)
    a = rng.normal(MU, SIGMA, (150, 4))
    b = rng.normal(MU + 0.0015, SIGMA, (150, 4))
    core = S.t_difference(a, b, paired=False)
    expected = S.verdicts(core.diff, core.p_value, ALPHA)
    for i in range(len(a)):
        c = S.compare(sel("x", a[i], seeds=range(4)), sel("y", b[i], seeds=range(10, 14)), n_bootstrap=0)
        assert c.analysis == "welch"
        assert c.verdict == expected[i]
        assert c.p_value == pytest.approx(core.p_value[i])
    assert {"real gain", "within noise"} <= set(expected)


@pytest.mark.parametrize("paired", [False, True])
def test_ci_covers_true_difference(paired):
    rng = np.random.default_rng(21 + paired)
    true = -0.001
    n = 4
    a = rng.normal(MU + true, SIGMA, (N_SIM, n))
    b = rng.normal(MU, SIGMA * 1.5, (N_SIM, n))  # unequal variances: Welch must still cover
    core = S.t_difference(a, b, paired=paired, level=0.95)
    cover = ((core.ci_low <= true) & (true <= core.ci_high)).mean()
    assert abs(cover - 0.95) <= mc_bound(0.95), cover


def test_variant_mean_interval_covers_truth():
    rng = np.random.default_rng(3)
    hits = 0
    for i in range(400):  # summarize() is per-variant; 400 keeps this fast (bound widened to match)
        x = rng.normal(MU, SIGMA, 3)
        s = S.summarize(sel("v", x))
        hits += s.ci_low <= MU <= s.ci_high
    assert abs(hits / 400 - 0.95) <= mc_bound(0.95, 400)


@pytest.mark.parametrize("paired", [False, True])
def test_power_plan_predicts_simulated_power(paired):
    effect, sigma = 0.0015, SIGMA
    plan = S.plan_seeds(effect, sigma, alpha=ALPHA, power=0.8, paired=paired)
    n = plan.n_per_side
    rng = np.random.default_rng(7)
    sims = 4000
    if paired:  # sigma is the std of the paired differences
        d = rng.normal(-effect, sigma, (sims, n))
        a, b = MU + d, np.full((sims, n), MU)
    else:
        a = rng.normal(MU - effect, sigma, (sims, n))
        b = rng.normal(MU, sigma, (sims, n))
    core = S.t_difference(a, b, paired=paired)
    simulated = (S.verdicts(core.diff, core.p_value, ALPHA) == "real gain").mean()
    assert abs(simulated - plan.achieved_power) <= 0.05, (simulated, plan)
    assert plan.achieved_power >= 0.8


def test_power_plan_matches_noise_facts_and_edge_cases():
    # noise-facts: sigma 0.0004 -> a 0.001 gain needs a few seeds; sigma 0.0012 -> well over ten
    few = S.plan_seeds(0.001, 0.0004)
    many = S.plan_seeds(0.001, 0.0012)
    assert 3 <= few.n_per_side <= 6
    assert many.n_per_side > 10
    assert many.n_per_side == math.ceil(many.n_exact)
    assert S.plan_seeds(1.0, 0.0001).n_per_side == 2  # huge effect: the floor, not a solver failure
    for bad in [dict(effect=0, sigma=1), dict(effect=0.001, sigma=0), dict(effect=0.001, sigma=1, alpha=1.5)]:
        with pytest.raises(UserError):
            S.plan_seeds(**bad)


# --------------------------------------------------------------------------- textbook cross-checks

# Two small samples (a textbook-style example); seeds 1..6 on both sides.
A = [3.2801, 3.2794, 3.2812, 3.2779, 3.2806, 3.2790]
B = [3.2815, 3.2809, 3.2822, 3.2801, 3.2819, 3.2807]


def test_welch_matches_scipy():
    c = S.compare(sel("a", A, seeds=range(6)), sel("b", B, seeds=range(10, 16)))
    ref = st.ttest_ind(A, B, equal_var=False)
    assert c.analysis == "welch" and "seed sets differ" in c.why
    assert c.p_value == pytest.approx(ref.pvalue)
    assert c.df == pytest.approx(ref.df)
    ci = ref.confidence_interval(0.95)
    assert (c.ci_low, c.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert c.rank_test == "mannwhitneyu"
    assert c.rank_p_value == pytest.approx(st.mannwhitneyu(A, B, alternative="two-sided").pvalue)
    pooled = math.sqrt((np.var(A, ddof=1) + np.var(B, ddof=1)) / 2)
    assert c.effect_size == pytest.approx((np.mean(A) - np.mean(B)) / pooled)
    assert c.verdict == "real gain"  # A is lower by ~0.0015 with sd ~0.0012 and n=6: p ~ 0.01
    assert c.bootstrap_ci_low < c.diff < c.bootstrap_ci_high < 0
    assert "alpha=0.05" in c.rule and "two-sided" in c.rule


def test_paired_matches_scipy_and_is_chosen_for_same_seeds():
    c = S.compare(sel("a", A), sel("b", B))
    ref = st.ttest_rel(A, B)
    assert c.analysis == "paired" and "same 6 seeds" in c.why
    assert c.p_value == pytest.approx(ref.pvalue)
    assert c.rank_test == "wilcoxon"
    assert c.rank_p_value == pytest.approx(st.wilcoxon(A, B).pvalue)
    d = np.subtract(A, B)
    assert c.effect_size == pytest.approx(d.mean() / d.std(ddof=1))


def test_pairing_aligns_by_seed_not_by_order():
    # same seeds listed in a different order: pairs must be matched by seed
    seeds_b = [5, 4, 3, 2, 1, 0]
    c = S.compare(sel("a", A), sel("b", B[::-1], seeds=seeds_b))
    assert c.p_value == pytest.approx(st.ttest_rel(A, B).pvalue)


def test_duplicate_seeds_are_not_paired():
    c = S.compare(sel("a", A[:4], seeds=[0, 0, 1, 2]), sel("b", B[:4], seeds=[0, 1, 2, 3]))
    assert c.analysis == "welch"


def test_record_test_matches_modded_nanogpt_rule():
    losses = [3.2779, 3.2781, 3.2776, 3.2784, 3.2772]
    r = S.record_test(losses, 3.28, alpha=0.01)
    ref = st.ttest_1samp(losses, 3.28, alternative="less")
    assert r.p_value == pytest.approx(ref.pvalue) and r.passed is True
    assert S.record_test([3.2799, 3.2801, 3.2797], 3.28).passed is False
    short = S.record_test([3.27], 3.28)
    assert short.passed is None and short.p_value is None and "needs >= 2" in short.rule


def test_claim_prediction_interval_matches_statsmodels():
    runs = [3.192552, 3.193094, 3.1929, 3.1924]
    c = S.claim_check(runs, 3.192141, variant="iha")
    # independent route: intercept-only OLS, prediction interval for one new observation
    pred = sm.OLS(np.array(runs), np.ones((4, 1))).fit().get_prediction(np.ones((1, 1))).summary_frame(alpha=0.05)
    assert c.pi_low == pytest.approx(pred["obs_ci_lower"].iloc[0])
    assert c.pi_high == pytest.approx(pred["obs_ci_upper"].iloc[0])
    assert c.reproduced is True and c.verdict == "claim reproduced"
    off = S.claim_check(runs, 3.188)
    assert off.reproduced is False and off.verdict == "claim better than reproduced"
    assert S.claim_check([3.19], 3.19).reproduced is None


def test_prediction_interval_coverage():
    rng = np.random.default_rng(9)
    n, sims = 3, 2000
    x = rng.normal(MU, SIGMA, (sims, n))
    new = rng.normal(MU, SIGMA, sims)
    hits = sum(S.claim_check(x[i], new[i]).reproduced for i in range(sims))
    assert abs(hits / sims - 0.95) <= mc_bound(0.95)


def test_holm_matches_statsmodels_and_redecides():
    cs = [
        S.compare(sel("a", A), sel("b", B), n_bootstrap=0),
        S.compare(sel("c", np.array(A) + 0.0012), sel("b", B), n_bootstrap=0),
        S.compare(sel("d", np.array(A) + 0.0009), sel("b", B), n_bootstrap=0),
        S.compare(sel("e", [3.1]), sel("b", B), n_bootstrap=0),  # not enough runs: not part of the family
    ]
    adj = S.holm(cs, alpha=0.05)
    raw = [c.p_value for c in cs[:3]]
    expect = multipletests(raw, alpha=0.05, method="holm")[1]
    assert [c.p_adjusted for c in adj[:3]] == pytest.approx(list(expect))
    assert adj[3].verdict == "not enough runs" and adj[3].p_adjusted is None
    assert all("Holm-adjusted over 3" in c.rule for c in adj[:3])
    for c in adj[:3]:
        assert (c.verdict != "within noise") == (c.p_adjusted < 0.05)


# --------------------------------------------------------------------------- verdict rules


def test_verdict_rule_directions_and_min_effect():
    v = S.verdicts([-0.002, 0.002, -0.0005, -0.002], [0.001, 0.001, 0.001, 0.2], 0.05, min_effect=0.001)
    assert list(v) == ["real gain", "regression", "within noise", "within noise"]
    # higher is better for throughput
    assert S.verdicts(100.0, 0.001, 0.05, lower_is_better=False) == "real gain"
    c = S.compare(sel("a", A), sel("b", B), min_effect=0.01)
    assert c.verdict == "within noise" and "|difference| >= 0.01" in c.rule


def test_within_noise_reports_seeds_needed():
    rng = np.random.default_rng(2)
    a = rng.normal(MU - 0.0005, SIGMA, 3)
    b = rng.normal(MU, SIGMA, 3)
    c = S.compare(sel("a", a, seeds=[1, 2, 3]), sel("b", b, seeds=[4, 5, 6]))
    assert c.verdict == "within noise"
    plan = S.plan_seeds(abs(c.diff), c.pooled_sigma)
    assert c.seeds_needed == plan.n_per_side and c.seeds_needed_basis == "observed"
    claimed = S.compare(sel("a", a, seeds=[1, 2, 3]), sel("b", b, seeds=[4, 5, 6]), claimed_effect=0.001)
    assert claimed.seeds_needed == S.plan_seeds(0.001, c.pooled_sigma).n_per_side
    assert claimed.seeds_needed_basis == "claimed"


def test_not_enough_runs_gives_no_p_value():
    c = S.compare(sel("a", [3.19]), sel("b", B))
    assert c.verdict == "not enough runs" and c.p_value is None and c.analysis == "none"
    assert c.diff == pytest.approx(3.19 - np.mean(B))
    empty = S.compare(sel("a", []), sel("b", []))
    assert empty.verdict == "not enough runs" and empty.diff is None
    json.dumps(empty.to_dict(), allow_nan=False)


def test_zero_spread_is_within_noise_without_nan():
    c = S.compare(sel("a", [3.2, 3.2, 3.2]), sel("b", [3.2, 3.2, 3.2]))
    assert c.verdict == "within noise"
    d = c.to_dict()
    json.dumps(d, allow_nan=False)  # NaN became None
    assert d["p_value"] is None


def test_cross_track_comparison_is_refused():
    with pytest.raises(UserError, match="different tracks"):
        S.compare(sel("a", A, track="mini"), sel("b", B, track="upstream"))


def test_unknown_metric():
    with pytest.raises(UserError, match="unknown metric 'val_acc'"):
        S.check_metric("val_acc")
    with pytest.raises(UserError):
        S.select_runs(table([dict(run_id="r", variant="v", seed=0, min_val_loss=3.2)]), "v", metric="nope")


# --------------------------------------------------------------------------- selection from the run table


def test_select_runs_excludes_failed_and_keeps_latest_config():
    runs = table([
        dict(run_id="v-0", variant="v", seed=0, min_val_loss=3.30, config_key="old", ended_at="2026-01-01T00:00:00Z"),
        dict(run_id="v-1", variant="v", seed=1, min_val_loss=3.31, config_key="old", ended_at="2026-01-02T00:00:00Z"),
        dict(run_id="v-2", variant="v", seed=0, min_val_loss=3.20, config_key="new", ended_at="2026-02-01T00:00:00Z"),
        dict(run_id="v-3", variant="v", seed=1, min_val_loss=3.21, config_key="new", ended_at="2026-02-02T00:00:00Z"),
        dict(run_id="v-4", variant="v", seed=2, status="diverged", error="NaN loss at step 40", config_key="new"),
        dict(run_id="v-5", variant="v", seed=3, min_val_loss=None, config_key="new", ended_at="2026-02-03T00:00:00Z"),
        dict(run_id="w-0", variant="w", seed=0, min_val_loss=3.0),
    ])  # fmt: skip
    s = S.select_runs(runs, "v")
    assert s.run_ids == ("v-2", "v-3") and s.config_key == "new"
    assert any("most recent" in n and "2 configurations" in n for n in s.notes)
    assert {f["run_id"] for f in s.failed} == {"v-4", "v-5"}
    assert any(f["status"] == "diverged" and "NaN" in f["error"] for f in s.failed)
    summary = S.summarize(s)
    assert summary.n == 2 and summary.n_failed == 2
    assert summary.mean == pytest.approx(3.205)


def test_runs_in_progress_are_not_listed_as_failed():
    runs = table([
        dict(run_id="v-0", variant="v", seed=0, min_val_loss=3.30),
        dict(run_id="v-1", variant="v", seed=1, status="running"),
        dict(run_id="v-2", variant="v", seed=2, status="stale", error=None),
    ])  # fmt: skip
    s = S.select_runs(runs, "v")
    assert s.run_ids == ("v-0",) and [f["run_id"] for f in s.failed] == ["v-2"]
    assert any("1 run(s) still pending or running, not included" in n for n in s.notes)


def test_select_runs_track_filter_and_empty():
    runs = table([
        dict(run_id="a", variant="v", seed=0, min_val_loss=3.3, track="mini"),
        dict(run_id="b", variant="v", seed=0, min_val_loss=3.2, track="upstream"),
    ])  # fmt: skip
    s = S.select_runs(runs, "v", track="mini")
    assert s.run_ids == ("a",) and s.track == "mini" and "other tracks" in s.notes[0]
    none = S.select_runs(runs, "missing")
    assert none.n == 0 and none.track is None
    sm_ = S.summarize(none)
    assert sm_.mean is None and sm_.std is None
    json.dumps(sm_.to_dict(), allow_nan=False)


def test_share_within_time_limit():
    runs = table([
        dict(run_id=f"r{i}", variant="v", seed=i, min_val_loss=3.3 + i / 1000, training_time_s=t)
        for i, t in enumerate([50.0, 59.0, 61.0, 70.0])
    ])  # fmt: skip
    s = S.summarize(S.select_runs(runs, "v"), time_limit_s=60.0)
    assert s.share_within_limit == pytest.approx(0.5)
    assert s.mean_training_time_s == pytest.approx(60.0)


# --------------------------------------------------------------------------- per epoch


def _epochs() -> pd.DataFrame:
    rows = []
    for v, shift in [("a", -0.02), ("b", 0.0)]:
        for seed in range(3):
            for ep in range(0, 4):
                noise = [0.001, -0.0005, 0.0002][seed] * (1 if v == "a" else -1)
                loss = 4.0 - 0.1 * ep + (shift if ep == 2 else 0.0) + noise
                rows.append(dict(run_id=f"{v}-{seed}", variant=v, track="mini", seed=seed, status="ok", config_key=v, epoch=ep,
                                 step=ep * 10, val_loss=loss, val_bpb=None))  # fmt: skip
    return pd.DataFrame(rows)


def test_epoch_summary_and_delta():
    e = _epochs()
    summ = S.epoch_summary(e, ["a-0", "a-1", "a-2"])
    assert list(summ["epoch"]) == [0, 1, 2, 3] and set(summ["n"]) == {3}
    row = summ[summ["epoch"] == 2].iloc[0]
    assert row["ci_low"] < row["mean"] < row["ci_high"]
    delta = S.epoch_delta(e, ["a-0", "a-1", "a-2"], ["b-0", "b-1", "b-2"])
    assert set(delta["analysis"]) == {"paired"}
    ep2 = delta[delta["epoch"] == 2].iloc[0]
    assert ep2["diff"] == pytest.approx(-0.02 + 2 * np.mean([0.001, -0.0005, 0.0002]))
    ref = st.ttest_rel(e[(e.variant == "a") & (e.epoch == 2)].val_loss.to_numpy(), e[(e.variant == "b") & (e.epoch == 2)].val_loss.to_numpy())
    assert ep2["p_value"] == pytest.approx(ref.pvalue)
    text = S.describe_epoch_delta(delta, "a", "b")
    assert "a most ahead by 0.0" in text and "epoch 2" in text and "within noise at epoch 3" in text


def test_epoch_delta_single_run_sides():
    e = _epochs()
    delta = S.epoch_delta(e, ["a-0"], ["b-0", "b-1"])
    assert set(delta["verdict"]) == {"not enough runs"}
    assert "not enough runs" in S.describe_epoch_delta(delta, "a", "b")
    assert S.epoch_summary(e, []).empty


def test_epoch_sentence_for_a_variant_that_never_leads_names_its_largest_deficit():
    # Behind at every epoch: the sentence must name the epoch where it trails most (0.03 at 2), not the smallest gap.
    delta = pd.DataFrame(dict(epoch=[1, 2, 3], n_a=3, n_b=3, analysis="paired", diff=[0.01, 0.03, 0.02], ci_low=0.0, ci_high=0.04,
                              p_value=[0.2, 0.01, 0.3], verdict=["within noise", "regression", "within noise"]))  # fmt: skip
    text = S.describe_epoch_delta(delta, "a", "b")
    assert "a most behind by 0.0300 at epoch 2 (significant)" in text and "within noise at epoch 3" in text


def test_small_sample_bootstrap_is_flagged_as_too_narrow():
    # 3 paired runs: the percentile bootstrap excludes 0 while the t-test (p ~ 0.14) does not; the report must say which decides
    a, b = [2.738907, 2.699473, 2.674862], [2.741982, 2.711136, 2.694144]  # mini-track runs measured in this repo
    c = S.compare(sel("a", a), sel("b", b))
    assert c.verdict == "within noise" and c.bootstrap_ci_high < 0 < c.ci_high
    assert any("bootstrap CI is too narrow" in n for n in c.notes)
    rng = np.random.default_rng(1)
    big = S.compare(sel("a", rng.normal(MU, SIGMA, 12)), sel("b", rng.normal(MU, SIGMA, 12)))
    assert big.bootstrap_ci_low is not None and not any("bootstrap" in n for n in big.notes)
