"""The `harness` command line: argument parsing and printing only, one small function per verb."""

from __future__ import annotations

import argparse
import json
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
    return Console(stderr=bool(getattr(args, "json", False)), highlight=False)


def _add_common(p: argparse.ArgumentParser, results: bool = True) -> None:
    p.add_argument("--variants", metavar="DIR", default=None, help="variants folder (env HARNESS_VARIANTS, default ./variants)")
    if results:
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
            "-" if claim is None else f"{claim.val_loss:.6g}" + (f"-{claim.val_loss_max:.6g}" if claim.val_loss_max else ""),
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
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout must be a positive number of minutes, got {args.timeout}")
    try:
        extra = tuple(shlex.split(args.extra_args or ""))
    except ValueError as e:
        raise UserError(f"--extra-args cannot be parsed ({e}); quote it like --extra-args '--num-epochs 3'") from None
    track, why = choose_track(args.track, specs)
    store = Store(args.results)
    store.ensure_writable()
    con = _console(args)
    con.print(why)

    plan = plan_runs(specs, seeds, track, store, extra, force=args.force, timeout_s=args.timeout * 60 if args.timeout else None)
    for sr in plan.in_progress:
        con.print(f"skip {sr.record.variant} seed {sr.record.seed}: in progress ({sr.record.status}, {sr.path})")
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


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="Seeds, statistics and a CI gate for LM-training leaderboards.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("list", help="list variants with track, compare_to and claims")
    _add_common(p, results=False)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", help="show one variant's spec")
    p.add_argument("variant")
    _add_common(p, results=False)
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
    _add_common(p)
    p.set_defaults(func=_cmd_run)
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
