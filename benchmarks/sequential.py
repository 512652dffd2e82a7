"""Seeds the sequential gate saves against a fixed-size design with the same alpha and power.

Simulates `harness check` decisions (harness.sequential) on normal paired differences for true
effects {0, 0.5, 1, 2} x sigma, where sigma is the run-to-run standard deviation of one run's
loss (the two sides are simulated as independent, so the difference has sd sigma * sqrt(2);
pairing by seed can only lower it). The margin (the gain the gate is powered for, or the
non-inferiority margin) is fixed at 0.001 loss; two noise levels put it at 1 sigma and 0.5 sigma.

For each case: the fixed design's seeds come from the t-test power formula (statsmodels); the
sequential design's --max-seeds is the smallest that reaches the same power by simulation.
Prints, per effect, error/decision rates and mean seeds for both designs, the ratio of mean
seeds (sequential / fixed), and one overall average ratio line. Target: error rates <= alpha
and overall average ratio <= 0.6.

    .venv/bin/python benchmarks/sequential.py [--paths 20000] [--alpha 0.05] [--power 0.9]
"""

from __future__ import annotations

import argparse
import math
import time

from harness.sequential import Design, fixed_seeds, plan_max_seeds, simulate, simulate_fixed

EFFECTS = (0.0, 0.5, 1.0, 2.0)
MARGIN = 0.001
SIGMAS = (0.001, 0.002)  # typical modded-nanogpt noise is 0.0012 (docs/check.md)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", type=int, default=20_000, help="simulated checks per cell")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--power", type=float, default=0.9)
    ap.add_argument("--min-seeds", type=int, default=3)
    args = ap.parse_args()
    t0 = time.time()
    ratios: list[float] = []
    by_effect: dict[float, list[float]] = {e: [] for e in EFFECTS}
    caps: list[float] = []  # max_seeds / fixed n: what the sequential gate can cost when evidence stays unclear
    worst_type1 = {"sequential": 0.0, "fixed": 0.0}
    mc_se = math.sqrt(args.alpha * (1 - args.alpha) / args.paths)
    print(f"alpha={args.alpha} power={args.power} margin={MARGIN} paths/cell={args.paths} "
          f"(Monte Carlo s.e. of an error rate near alpha: {mc_se:.4f})")
    for sigma in SIGMAS:
        sigma_d = sigma * math.sqrt(2)
        for mode in ("gain", "no-regression"):
            base = Design(mode, MARGIN, args.alpha, args.power, args.min_seeds, args.min_seeds)
            n_max = plan_max_seeds(base, sigma_d)
            assert n_max is not None, "power not reachable within the seed limit"
            design = Design(mode, MARGIN, args.alpha, args.power, args.min_seeds, n_max)
            n_fixed = fixed_seeds(MARGIN / sigma_d, args.alpha, args.power)
            caps.append(n_max / n_fixed)
            print(f"\nsigma={sigma:g} ({MARGIN / sigma:g} sigma margin)  mode={mode}  "
                  f"fixed design: {n_fixed} seeds/side  sequential: {args.min_seeds}..{n_max} seeds/side")
            print(f"  {'effect':>7} {'truth':>13} | {'seq pass':>8} {'fail':>6} {'n/shown':>7} {'seeds':>6} | "
                  f"{'fixed pass':>10} {'seeds':>5} | {'ratio':>5}")
            for effect in EFFECTS:
                # gain mode: effect is a true gain (candidate lower); no-regression: a true regression
                true_diff = -effect * sigma if mode == "gain" else effect * sigma
                seq = simulate(design, true_diff, sigma_d, paths=args.paths, seed=7)
                fixed_pass = simulate_fixed(n_fixed, design, true_diff, sigma_d, paths=args.paths, seed=7)
                if true_diff >= design.null_diff - 1e-12:
                    truth = "H0 (pass=err)"
                    worst_type1["sequential"] = max(worst_type1["sequential"], seq.p_pass)
                    worst_type1["fixed"] = max(worst_type1["fixed"], fixed_pass)
                elif true_diff <= design.alt_diff + 1e-12:
                    truth = "H1 (power)"
                else:
                    truth = "in between"
                ratio = seq.mean_seeds / n_fixed
                ratios.append(ratio)
                by_effect[effect].append(ratio)
                print(f"  {effect:>7g} {truth:>13} | {seq.p_pass:>8.4f} {seq.p_fail:>6.3f} {seq.p_not_shown:>7.3f} "
                      f"{seq.mean_seeds:>6.2f} | {fixed_pass:>10.4f} {n_fixed:>5d} | {ratio:>5.2f}")
    avg = sum(ratios) / len(ratios)
    print("\nratio of mean seeds (sequential / fixed) per effect, averaged over sigmas and modes: "
          + ", ".join(f"{e:g} sigma {sum(r) / len(r):.3f}" for e, r in by_effect.items()))
    print(f"worst case: the sequential gate may run up to {max(caps):.2f}x the fixed design's seeds "
          "(--max-seeds when no look decides)")
    print(f"\nworst type-I error: sequential {worst_type1['sequential']:.4f}, fixed {worst_type1['fixed']:.4f} "
          f"(alpha {args.alpha}; limit with 2 s.e. of Monte Carlo error {args.alpha + 2 * mc_se:.4f})")
    print(f"overall average ratio of mean seeds (sequential / fixed): {avg:.3f} (target <= 0.6) "
          f"[{time.time() - t0:.0f} s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
