"""The `harness` command line: argument parsing and printing only, one small function per verb."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from harness.errors import UserError

EXIT_OK, EXIT_NO, EXIT_BAD_INPUT, EXIT_INCONCLUSIVE, EXIT_RUNS_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"harness: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(EXIT_BAD_INPUT)


def _console(args: argparse.Namespace) -> Console:
    # With --json, human output goes to stderr so stdout stays machine-readable.
    con = Console(stderr=bool(getattr(args, "json", False)), highlight=False)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con.width = 140  # pipes and CI logs: don't squeeze tables into rich's 80-column default
    return con


def _add_common(p: argparse.ArgumentParser) -> None:
    """The flags every verb shares, with the same meaning everywhere."""
    p.add_argument("--variants", metavar="DIR", default=None, help="variants folder (env HARNESS_VARIANTS, default ./variants)")
    p.add_argument("--results", metavar="DIR", default=None, help="results store (env HARNESS_RESULTS, default ./results)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


# ----------------------------------------------------------------------------- list / show


def _cmd_list(args: argparse.Namespace) -> int:
    from harness.spec import load_registry

    reg = load_registry(args.variants)
    if args.json:
        print(json.dumps([_spec_summary(reg.get(n)) for n in reg.names()], indent=2))
        return EXIT_OK
    t = Table(title=f"variants in {reg.root}", title_justify="left")
    for c in ("variant", "track", "limit", "compare_to", "claimed val loss", "claimed time", "runs on"):
        t.add_column(c)
    for n in reg.names():
        s = reg.get(n)
        claim = s.own_claims[0] if s.own_claims else None
        t.add_row(
            n,
            s.track.name,
            "-" if s.track.time_limit_min is None else f"{s.track.time_limit_min:g} min",
            s.compare_to or "-",
            "-" if claim is None else f"{claim.val_loss}" + (f"-{claim.val_loss_max}" if claim.val_loss_max else ""),
            "-" if claim is None or claim.training_minutes is None else f"{claim.training_minutes:g} min",
            ", ".join(k for k in ("upstream", "mini") if getattr(s, k) is not None),
        )
    _console(args).print(t)
    return EXIT_OK


def _spec_summary(s: Any) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(s)
    d["path"] = str(s.path)
    return d


def _cmd_show(args: argparse.Namespace) -> int:
    from harness.spec import load_registry

    s = load_registry(args.variants).get(args.variant)
    if args.json:
        print(json.dumps(_spec_summary(s), indent=2))
        return EXIT_OK
    con = _console(args)
    con.print(f"[bold]{s.name}[/bold]: {s.description}")
    con.print(f"spec: {s.path} (sha256 {s.sha256[:12]})")
    limit = "no limit" if s.track.time_limit_min is None else f"{s.track.time_limit_min:g} min limit"
    con.print(f"track: {s.track.name} ({limit}); compared to: {s.compare_to or '-'}")
    for c in s.claims:
        extra = f", {c.training_minutes:g} min" if c.training_minutes else ""
        rng = f"-{c.val_loss_max:g}" if c.val_loss_max else ""
        con.print(f"{c.kind}: val loss {c.val_loss:g}{rng}{extra} ({c.source}){' - ' + c.note if c.note else ''}")
    if s.upstream:
        u = s.upstream
        con.print(f"upstream: {u.repo} @ {u.commit}" + (f" ({u.ref})" if u.ref else ""))
        con.print(f"  torchrun --standalone --nproc_per_node={u.nproc_per_node} {u.script} {shlex.join(u.args)}")
        if u.patches:
            con.print(f"  patches: {', '.join(u.patches)}")
    if s.mini:
        con.print(f"mini: python -m harness.mini.train {shlex.join(s.mini.args)}")
    return EXIT_OK


# ----------------------------------------------------------------------------- run


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.progress import RunDisplay, runs_table
    from harness.runner import RunInterrupted, choose_track, claim, execute_plan, parse_seeds, plan_runs
    from harness.spec import load_registry
    from harness.store import Store

    reg = load_registry(args.variants)
    specs = [reg.get(n) for n in dict.fromkeys(args.variant)]
    seeds = parse_seeds(args.seeds, args.seed_list)
    if args.timeout is not None and not (0 < args.timeout < math.inf):  # also refuses nan
        raise UserError(f"--timeout must be a positive number of minutes, got {args.timeout}")
    try:
        extra = tuple(shlex.split(args.extra_args or ""))
    except ValueError as e:
        raise UserError(f"--extra-args cannot be parsed ({e}); quote it like --extra-args '--num-epochs 3'") from None
    track, why = choose_track(args.track, specs)
    store = Store(args.results)
    if getattr(args, "executor", "local") == "slurm" and not args.dry_run:  # a dry run submits nothing
        return _cmd_run_slurm(args, specs, seeds, track, extra, store, why)
    con = _console(args)
    con.print(why)

    plan = plan_runs(specs, seeds, track, store, extra, force=args.force, timeout_s=args.timeout * 60 if args.timeout else None,
                     repo=args.repo, use_wandb=args.wandb)
    if args.dry_run:
        return _dry_run(plan, con)
    if track == "upstream" and plan.to_run:
        from harness.upstream import preflight_plans

        preflight_plans(plan.to_run, specs, use_wandb=args.wandb)
    store.ensure_writable()  # only now: bad input found above must leave no trace, not even a folder
    for sr in plan.in_progress:
        con.print(f"skip {sr.record.variant} seed {sr.record.seed}: in progress ({sr.record.status}, {sr.path}); "
                  "--force re-runs it if its owner is gone")
    if plan.complete:
        done = ", ".join(f"{sr.record.variant} seed {sr.record.seed}" for sr in plan.complete)
        con.print(f"already complete, not re-run ({len(plan.complete)}): {done}")
    if not plan.to_run:
        con.print(f"Nothing to run: all {len(plan.complete) + len(plan.in_progress)} requested runs are complete or in progress (--force re-runs).")
        if args.json:
            print(json.dumps([sr.record.to_dict() for sr in plan.complete], indent=2))
        return EXIT_OK

    con.print(f"running {len(plan.to_run)} run(s) on the {track} track into {store.root}")
    finished = []
    interrupted = False
    with RunDisplay(con, verbose=args.verbose) as display:
        for p in plan.to_run:
            if not claim(p, store, force=args.force):
                con.print(f"skip {p.variant} seed {p.seed}: another harness completed or took it meanwhile")
                continue
            task = display.start_run(f"{p.variant} seed {p.seed}")
            rec = execute_plan(p, on_line=display.on_line(task))
            display.finish_run(task, rec)
            finished.append(rec)
            if rec.status == "interrupted":
                interrupted = True
                break
    con.print(runs_table(finished, title=f"runs this time ({track} track, results in {store.root})"))
    n_ok = sum(r.status == "ok" for r in finished)
    bad = [r for r in finished if r.status != "ok"]
    con.print(f"{n_ok} of {len(finished)} run(s) ok" + (f"; {len(bad)} not ok: " + ", ".join(f"{r.variant} seed {r.seed} {r.status}" for r in bad) if bad else ""))
    if args.json:
        print(json.dumps([r.to_dict() for r in finished], indent=2))
    if interrupted:
        con.print("interrupted: remaining runs not started; run the same command again to resume")
        return EXIT_INTERRUPTED
    return EXIT_RUNS_FAILED if bad else EXIT_OK


def _dry_run(plan: Any, con: Console) -> int:
    """Per run: working tree, seed diff, exact command; nothing is launched or stored."""
    for p in plan.to_run:
        diff = (p.provenance.get("upstream") or {}).get("seed_diff")
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in p.env.items())
        con.print(f"== {p.variant} seed {p.seed}\nworktree: {p.cwd or '(the run folder)'}", markup=False)
        if diff is not None:
            con.print(diff or "(script unchanged; seed passed as a flag)", markup=False, end="")
        con.print(f"command: {env} {shlex.join(p.command)}", markup=False, soft_wrap=True)
    con.print(f"dry run: {len(plan.to_run)} run(s) materialised, nothing launched")
    return EXIT_OK


# ----------------------------------------------------------------------------- upstream: doctor / data / import


def _cmd_doctor(args: argparse.Namespace) -> int:
    from harness.preflight import render, run_preflight
    from harness.upstream import data_check, materialise_run, work_root

    data = None
    nproc = 8
    if args.variant:
        from harness.spec import load_registry

        spec = load_registry(args.variants).get(args.variant)
        nproc = spec.upstream.nproc_per_node if spec.upstream else nproc
        data = data_check(materialise_run(spec, None, work_root() / f"{spec.name}-doctor", args.repo), spec.name, args.repo)
    report = run_preflight(nproc, work_root(), use_wandb=args.wandb, data_check=data)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _console(args).print(render(report))
    return EXIT_OK if report.ok else EXIT_NO


def _cmd_data(args: argparse.Namespace) -> int:
    from harness.spec import load_registry
    from harness.upstream import prepare_data

    spec = load_registry(args.variants).get(args.variant)
    folder = prepare_data(spec, repo=args.repo)
    _console(args).print(f"data for {spec.name} ready and verified in {folder}")
    return EXIT_OK


def _cmd_import(args: argparse.Namespace) -> int:
    from harness.spec import load_registry
    from harness.store import Store
    from harness.upstream import import_logs

    spec = load_registry(args.variants).get(args.variant)
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {args.seed}")
    store = Store(args.results)
    store.ensure_writable()
    recs = import_logs(store, spec, [Path(x) for x in args.log], args.seed, args.hardware)
    con = _console(args)
    for r in recs:
        con.print(f"imported {r.variant} seed {r.seed}: {r.status}, min val loss {r.metrics.min_val_loss} ({r.run_id})")
    if len(recs) < len(args.log):
        con.print(f"{len(args.log) - len(recs)} log(s) already imported, skipped")
    if args.json:
        print(json.dumps([r.to_dict() for r in recs], indent=2))
    return EXIT_OK


# ----------------------------------------------------------------------------- report / plan


def _cmd_report(args: argparse.Namespace) -> int:
    from harness import report
    from harness.spec import default_variants_dir, load_registry
    from harness.store import Store

    store = Store(args.results)
    vdir = Path(args.variants) if args.variants else default_variants_dir()
    # an explicit --variants must exist (load_registry says so); a missing default only costs the spec facts
    have_specs = bool(args.variants) or vdir.is_dir()
    infos = report.infos_from_registry(load_registry(vdir)) if have_specs else {}
    notes = [] if have_specs else [f"no variants folder at {vdir}: compare_to and claims unknown, so no comparisons; pass --variants DIR"]
    data = report.build_report(store.load_table(), store.load_epochs(), args.variant, infos, metric=args.metric, alpha=args.alpha,
                               record=args.record, min_effect=args.min_effect, track=args.track, extra_args=args.extra_args,
                               notes=notes)  # fmt: skip
    out = Path(args.out) if args.out else Path("reports") / data.name
    paths = report.write_report(data, out)
    con = _console(args)
    report.print_tables(data, con)
    con.print(f"report written to {paths['markdown']}")
    if args.json:
        print(json.dumps(report.summary_dict(data), indent=2))
    return EXIT_OK


def _cmd_plan(args: argparse.Namespace) -> int:
    from harness import report, stats
    from harness.store import Store

    stats.check_metric(args.metric)
    basis = "--sigma"
    if args.sigma is None:
        sigma, basis = report.sigma_basis(Store(args.results).load_table(), args.from_variant, args.metric, args.track, args.paired)
    else:
        sigma = args.sigma
    plan = stats.plan_seeds(args.effect, sigma, args.alpha, args.power, paired=args.paired)
    if args.json:
        print(json.dumps({**plan.to_dict(), "sigma_basis": basis}, indent=2))
        return EXIT_OK
    side = "pairs (same seeds on both sides)" if args.paired else "seeds per side"
    _console(args).print(
        f"{plan.n_per_side} {side} detect a difference of {plan.effect:g} with {plan.power:.0%} power "
        f"(two-sided t-test, alpha {plan.alpha:g}; sigma {plan.sigma:.6g} from {basis}; effect/sigma {plan.effect_size:.3g}; "
        f"power with {plan.n_per_side}: {plan.achieved_power:.1%})"
    )
    return EXIT_OK


def _cmd_parse(args: argparse.Namespace) -> int:
    from harness import logs

    parsed = logs.parse_file(args.log, args.result)
    if args.json or args.csv:
        sys.stdout.write(logs.format_parsed(parsed, "json" if args.json else "csv"))
        return EXIT_OK
    con = _console(args)
    for table in logs.rich_tables(parsed):
        con.print(table)
    return EXIT_OK


def _cmd_run_slurm(args: argparse.Namespace, specs: list, seeds: list[int], track: str, extra: tuple[str, ...], store: Any, why: str) -> int:
    from harness.progress import runs_table
    from harness.slurm import run_command

    con = _console(args)
    con.print(why)
    code, records = run_command(args, specs, seeds, track, extra, store, con)
    if records:
        con.print(runs_table(records, title=f"runs this time ({track} track on Slurm, results in {store.root})"))
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
    return code


def _cmd_status(args: argparse.Namespace) -> int:
    from harness.slurm import status_command

    return status_command(args.results, args.json, _console(args))


def _cmd_check(args: argparse.Namespace) -> int:
    from harness import check

    opts = check.CheckOptions(
        candidate=args.candidate, against=args.against, mode=args.mode or ("no-regression" if args.aa else "gain"), margin=args.margin, alpha=args.alpha,
        power=args.power, min_seeds=args.seeds, max_seeds=args.max_seeds, record=args.record, ref=args.ref,
        patch=args.patch, aa=args.aa, track=args.track, executor=args.executor, results=args.results,
        variants=args.variants, repo=args.repo, timeout_s=args.timeout * 60 if args.timeout else None, slurm_args=args,
    )
    con = _console(args)
    res = check.run_check(opts, log=lambda line: con.print(line, markup=False, highlight=False))
    md = check.markdown(res)
    con.print(md, markup=False, highlight=False)
    check.write_step_summary(md)
    con.print(check.verdict_line(res), markup=False, highlight=False)
    if args.json:
        print(json.dumps(check.to_dict(res), indent=2))
    return res.exit_code


# ----------------------------------------------------------------------------- parser


def _slurm_arguments(p: argparse.ArgumentParser) -> None:
    from harness.slurm import add_arguments

    add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="Seeds, statistics and a CI gate for LM-training leaderboards.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("list", help="list variants with track, compare_to and claims")
    _add_common(p)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", help="show one variant's spec")
    p.add_argument("variant")
    _add_common(p)
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("run", help="run variants over seeds (mini track without GPUs)")
    p.add_argument("variant", nargs="+", help="variant name(s) from variants/")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=int, default=None, metavar="N", help="seeds 0..N-1 (default 1)")
    g.add_argument("--seed-list", default=None, metavar="S,S,...", help="explicit seeds, e.g. 3,7,11")
    p.add_argument("--track", choices=("mini", "upstream"), default=None, help="force a track (default: upstream iff enough GPUs)")
    p.add_argument("--force", action="store_true", help="re-run runs that are already complete")
    p.add_argument("--extra-args", default=None, metavar="ARGS", help="extra arguments for the training script (part of the run's identity)")
    p.add_argument("--timeout", type=float, default=None, metavar="MIN", help="stop a run after this many minutes (status timeout)")
    p.add_argument("--verbose", "-v", action="store_true", help="stream the training output")
    p.add_argument("--dry-run", action="store_true", help="materialise the runs and print worktree, seed diff and command; launch nothing")
    p.add_argument("--repo", default=None, metavar="URL", help="upstream track: fetch from this repository instead of the spec's (fork, local mirror)")
    p.add_argument("--wandb", action="store_true", help="upstream track: let the scripts log to wandb (default WANDB_MODE=disabled)")
    _add_common(p)
    _slurm_arguments(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("status", help="runs pending/running/finished/failed, from the store and the scheduler")
    _add_common(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("report", help="statistics, verdicts and plots for variants: reports/<name>/REPORT.md")
    p.add_argument("variant", nargs="*", help="variants to report (default: every variant in the store)")
    p.add_argument("--out", metavar="DIR", default=None, help="report folder (default reports/<variants joined by +>)")
    p.add_argument("--metric", default="min_val_loss", help="metric to compare (default min_val_loss)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level, two-sided (default 0.05)")
    p.add_argument("--record", type=float, default=None, metavar="R", help="record to beat: one-sample t-test mean < R at p<0.01")
    p.add_argument("--min-effect", type=float, default=0.0, metavar="D", help="smallest |difference| that counts as a gain/regression")
    p.add_argument("--track", choices=("mini", "upstream"), default=None, help="only runs of this track (default: the most recent run's)")
    p.add_argument("--extra-args", default=None, metavar="ARGS", help="only runs made with these `harness run --extra-args` (default: the most recent run's)")
    _add_common(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("plan", help="seeds per side needed to detect an effect")
    p.add_argument("--effect", type=float, required=True, help="difference of means to detect, e.g. 0.001")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--sigma", type=float, default=None, help="run-to-run std of the metric")
    g.add_argument("--from", dest="from_variant", metavar="VARIANT", default=None, help="estimate sigma from this variant's runs")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level, two-sided (default 0.05)")
    p.add_argument("--power", type=float, default=0.8, help="wanted power (default 0.8)")
    p.add_argument("--paired", action="store_true", help="both sides run the same seeds (sigma = std of paired differences)")
    p.add_argument("--metric", default="min_val_loss", help="metric for --from (default min_val_loss)")
    p.add_argument("--track", choices=("mini", "upstream"), default=None, help="with --from: only runs of this track")
    _add_common(p)
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("parse", help="parse a training log (any upstream format or the mini trainer): per-epoch table and summary")
    p.add_argument("log", help="path of the log file (or of the JSON written by --save-result)")
    p.add_argument("--result", default=None, metavar="JSON", help="the run's --save-result JSON: fills what a truncated log lost")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="JSON on stdout")
    g.add_argument("--csv", action="store_true", help="CSV on stdout: per-epoch rows, a blank line, then metric,value rows")
    p.set_defaults(func=_cmd_parse)

    p = sub.add_parser("doctor", help="check this machine for the upstream track (GPUs, Hopper, disk, torchrun, data)")
    p.add_argument("variant", nargs="?", default=None, help="also check this variant's data")
    p.add_argument("--repo", default=None, metavar="URL", help="fetch from this repository instead of the spec's")
    p.add_argument("--wandb", action="store_true", help="report the wandb mode a run with --wandb would use")
    _add_common(p)
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("data", help="upstream data: `harness data prepare VARIANT` runs that commit's prepare_data.py")
    p.add_argument("action", choices=("prepare",))
    p.add_argument("variant")
    p.add_argument("--repo", default=None, metavar="URL", help="fetch from this repository instead of the spec's")
    _add_common(p)
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("check", help="PR gate: paired seed rounds, sequential test; exit 0 pass, 1 fail, 3 not shown, 4 runs failed")
    p.add_argument("candidate", nargs="?", default=None, help="candidate variant (omit with --aa or --ref/--patch)")
    p.add_argument("--against", required=True, metavar="BASELINE", help="baseline variant")
    p.add_argument("--mode", choices=("gain", "no-regression"), default=None,
                   help="gain: pass only on a real gain; no-regression: pass unless worse by --margin "
                        "(default gain; no-regression with --aa, where a pass calibrates the noise floor)")
    p.add_argument("--margin", type=float, default=None, help="loss margin: the gain to detect / the allowed regression (default 0.001 upstream, 0.05 mini)")
    p.add_argument("--alpha", type=float, default=0.05, help="error rate of a wrong pass, over all looks (default 0.05)")
    p.add_argument("--power", type=float, default=0.9, help="power at the margin; futility is tested at 1-power (default 0.9)")
    p.add_argument("--seeds", type=int, default=3, metavar="MIN", help="seed pairs at the first look (default 3)")
    p.add_argument("--max-seeds", type=int, default=10, metavar="MAX", help="most seed pairs before 'not shown' (default 10)")
    p.add_argument("--record", type=float, default=None, metavar="R", help="also report a one-sided t-test of the candidate's mean < R")
    p.add_argument("--ref", default=None, help="upstream: candidate = baseline spec at this commit/branch/refs/pull/N/head")
    p.add_argument("--patch", default=None, metavar="FILE", help="upstream: candidate = baseline spec + this patch")
    p.add_argument("--aa", action="store_true", help="A/A calibration: the baseline against itself (other seeds)")
    p.add_argument("--track", choices=("mini", "upstream"), default=None, help="force a track (default: upstream iff enough GPUs)")
    p.add_argument("--repo", default=None, metavar="URL", help="upstream: fetch from this repository instead of the spec's")
    p.add_argument("--timeout", type=float, default=None, metavar="MIN", help="stop a run after this many minutes")
    _add_common(p)
    _slurm_arguments(p)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("import", help="record runs done elsewhere from their logs (marked imported)")
    p.add_argument("log", nargs="+", help="training log file(s) in upstream's format")
    p.add_argument("--variant", required=True, help="the variant these logs ran")
    p.add_argument("--seed", type=int, default=None, help="seed of the first log (next ones +1); default after the stored ones")
    p.add_argument("--hardware", default="unknown (imported)", help="hardware class to record, e.g. '8xNVIDIA H100 80GB HBM3'")
    _add_common(p)
    p.set_defaults(func=_cmd_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as e:
        sys.stderr.write(f"harness: error: {e}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("harness: interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
