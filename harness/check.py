"""`harness check`: the PR gate. Rounds of paired runs (candidate, baseline) decided by
`harness.sequential` after every round; stored runs with the same provenance are reused.

Flow: validate everything (design, variants, ref, patch, identity) -> for each round, plan the
missing runs in ABAB order, run them on one executor, read the store -> evaluate -> stop at a
decision, at max seeds ("not shown") or at the first run that fails to measure (exit 4).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import stats as sps

from harness.errors import UserError
from harness.record import COMPLETE, RunRecord
from harness.sequential import Design, Look, evaluate

METRIC = "min_val_loss"
AA_SEED_OFFSET = 1000  # A/A: the "candidate" side runs the baseline at seeds 1000+i, paired with seed i
DEFAULT_MARGIN = {"upstream": 0.001, "mini": 0.05}  # loss units; mini = a few run-to-run sigmas (docs/check.md)
EXIT = {"pass": 0, "fail": 1, "not shown": 3, "runs failed": 4}
VERDICT_WORDS = {
    ("gain", "pass"): "real gain",
    ("gain", "fail"): "no gain",
    ("no-regression", "pass"): "no regression",
    ("no-regression", "fail"): "regression",
    ("gain", "not shown"): "neither a gain nor its absence shown at --max-seeds",
    ("no-regression", "not shown"): "neither 'no regression' nor a regression shown at --max-seeds",
    ("gain", "runs failed"): "a run failed to measure; nothing decided",
    ("no-regression", "runs failed"): "a run failed to measure; nothing decided",
}


@dataclass
class CheckOptions:
    candidate: str | None  # variant name; None with --aa or an ad-hoc --ref/--patch
    against: str
    mode: str = "gain"
    margin: float | None = None
    alpha: float = 0.05
    power: float = 0.9
    min_seeds: int = 3
    max_seeds: int = 10
    record: float | None = None
    ref: str | None = None
    patch: str | None = None
    aa: bool = False
    track: str | None = None  # None: upstream iff enough GPUs are visible (as `harness run`)
    executor: str = "local"
    results: str | None = None
    variants: str | None = None
    repo: str | None = None
    timeout_s: float | None = None
    slurm_args: Any = None  # the argparse namespace, for harness.slurm.settings_from_args


@dataclass
class PairRow:
    index: int
    cand_seed: int
    base_seed: int
    cand: RunRecord | None = None
    base: RunRecord | None = None
    cand_reused: bool = False
    base_reused: bool = False

    @property
    def diff(self) -> float | None:
        c, b = _metric(self.cand), _metric(self.base)
        return None if c is None or b is None else c - b


@dataclass
class CheckResult:
    verdict: str  # pass | fail | not shown | runs failed
    exit_code: int
    mode: str
    design: Design
    candidate: str
    baseline: str
    track: str
    hardware: str
    pairs: list[PairRow]
    looks: list[Look]
    launched: list[RunRecord] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    record: float | None = None
    message: str = ""

    @property
    def verdict_words(self) -> str:
        return VERDICT_WORDS.get((self.mode, self.verdict), self.verdict)


def _metric(r: RunRecord | None) -> float | None:
    if r is None or r.status not in COMPLETE:
        return None
    v = getattr(r.metrics, METRIC)
    return None if v is None or not math.isfinite(v) else float(v)


# ----------------------------------------------------------------------------- the candidate


def adhoc_spec(base: Any, ref: str | None, patch: str | None, repo: str | None) -> Any:
    """The baseline's spec with another commit (from --ref) and/or one more patch; UserError if either is bad."""
    from harness import source

    if base.upstream is None:
        raise UserError(f"--ref/--patch build on the baseline's [upstream] section, but '{base.name}' has none")
    u = base.upstream
    url = repo or u.repo
    commit, new_ref = u.commit, u.ref
    if ref:
        commit, new_ref = resolve_ref(url, ref), (ref if ref.startswith("refs/") else None)
    patches = u.patches
    if patch:
        p = Path(patch).resolve()
        if not p.is_file():
            raise UserError(f"--patch {patch}: file not found")
        patches = (*u.patches, str(p))  # absolute: VariantSpec.patch_paths() keeps it as is
    up = dataclasses.replace(u, commit=commit, ref=new_ref, patches=patches, repo=url)
    tag = "+".join(x for x in (f"ref-{commit[:8]}" if ref else "", f"patch-{Path(patch).stem}" if patch else "") if x)
    spec = dataclasses.replace(base, name=f"{base.name}+{tag}", upstream=up, compare_to=base.name, claims=())
    if patch:  # check the patch applies now, on a scratch worktree, before anything runs
        import tempfile

        mirror, full = source.ensure_commit(url, commit, new_ref)
        with tempfile.TemporaryDirectory(prefix="harness-check-") as tmp:
            wt = source.add_worktree(mirror, full, Path(tmp) / "wt")
            try:
                source.apply_patches(wt, [Path(x) if Path(x).is_absolute() else base.path.parent / "patches" / x for x in patches])
            finally:
                source.remove_worktree(mirror, wt)
    return spec


def resolve_ref(url: str, ref: str) -> str:
    """A commit SHA, branch, tag or refs/pull/N/head -> the full SHA, fetched through the source cache."""
    import git

    from harness import source

    path = source.mirror_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    repo = git.Repo(path) if (path / "HEAD").exists() else git.Repo.init(path, bare=True)
    candidates = [ref, f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/remotes/origin/{ref}"]

    def lookup() -> str | None:
        for c in candidates:
            try:
                return repo.git.rev_parse("--verify", "--quiet", f"{c}^{{commit}}").strip()
            except git.GitCommandError:
                continue
        return None

    sha = lookup()
    if sha is None:
        try:
            spec = f"+{ref}:{ref}" if ref.startswith("refs/") else f"+refs/heads/{ref}:refs/heads/{ref}"
            repo.git.fetch("--quiet", url, spec)
        except git.GitCommandError:
            try:  # not a branch: maybe a commit or tag reachable from the usual refs
                repo.git.fetch("--quiet", url, *source.FETCH_REFSPECS)
            except git.GitCommandError as e:
                raise UserError(f"--ref {ref}: could not fetch from {url} ({source.git_error_line(e)}); check the ref and the repository") from None
        sha = lookup()
    if sha is None:
        raise UserError(f"--ref {ref}: no such commit, branch, tag or pull-request ref in {url}")
    return sha


def resolve_specs(opts: CheckOptions) -> tuple[Any, Any]:
    """(candidate spec, baseline spec), refusing a candidate identical to the baseline unless --aa."""
    from harness.spec import config_key, load_registry

    reg = load_registry(opts.variants)
    base = reg.get(opts.against)
    if opts.aa:
        if opts.candidate not in (None, opts.against) or opts.ref or opts.patch:
            raise UserError("--aa checks the baseline against itself; give no other candidate, --ref or --patch")
        return base, base
    if opts.candidate is None and not (opts.ref or opts.patch):
        raise UserError("name a CANDIDATE variant, or build one with --ref/--patch, or pass --aa for an A/A check")
    cand = reg.get(opts.candidate) if opts.candidate else base
    if opts.ref or opts.patch:
        if opts.track != "upstream":
            raise UserError("--ref/--patch change upstream code; use them with --track upstream")
        cand = adhoc_spec(cand, opts.ref, opts.patch, opts.repo)
    if config_key(cand, opts.track) == config_key(base, opts.track):
        raise UserError(
            f"candidate '{cand.name}' is identical to baseline '{base.name}' on the {opts.track} track "
            "(same spec, ref and patches); pass --aa for an A/A calibration on purpose"
        )
    return cand, base


# ----------------------------------------------------------------------------- running rounds


Runner = Callable[[list[Any]], list[RunRecord]]


def _local_runner(store: Any, on_line: Callable[[str], None] | None) -> Runner:
    from harness.runner import claim, execute_plan

    def run(plans: list[Any]) -> list[RunRecord]:
        out = []
        for p in plans:  # in the given (ABAB) order, one at a time on this machine
            if claim(p, store):
                out.append(execute_plan(p, on_line=on_line))
        return out

    return run


def _slurm_runner(store: Any, args: Any) -> Runner:
    from harness.slurm import SlurmExecutor, settings_from_args

    ex = SlurmExecutor(store, settings_from_args(args))
    ex.preflight()  # cluster, partition, shared folder: bad settings are exit 2 before any round

    def run(plans: list[Any]) -> list[RunRecord]:
        ex.test_requests(plans)  # this round's exact requests (GPUs per node on the upstream track)
        return ex.wait(ex.submit(plans))  # submitted in ABAB order to the same partition

    return run


def run_check(opts: CheckOptions, log: Callable[[str], None] = print, runner: Runner | None = None) -> CheckResult:
    from harness.runner import hardware_class, make_plan
    from harness.store import Store

    if opts.track is None:  # as `harness run`: upstream iff enough GPUs are visible
        from harness.runner import choose_track
        from harness.spec import load_registry

        opts = dataclasses.replace(opts, track=choose_track(None, [load_registry(opts.variants).get(opts.against)])[0])
    margin = DEFAULT_MARGIN.get(opts.track, 0.001) if opts.margin is None else opts.margin
    design = Design(opts.mode, margin, opts.alpha, opts.power, opts.min_seeds, opts.max_seeds)
    if opts.track not in ("mini", "upstream"):
        raise UserError(f"unknown --track {opts.track!r}; use mini or upstream")
    if opts.executor not in ("local", "slurm"):
        raise UserError(f"unknown --executor {opts.executor!r}; use local or slurm")
    if getattr(opts.slurm_args, "no_wait", False):
        raise UserError("--no-wait does not apply to check: each round's decision needs its runs' results; drop it")
    cand, base = resolve_specs(opts)
    store = Store(opts.results)
    if runner is None:  # the Slurm preflight comes before anything is written
        runner = _slurm_runner(store, opts.slurm_args) if opts.executor == "slurm" else _local_runner(store, None)
    store.ensure_writable()
    hw = hardware_class(opts.track, base)

    pairs: list[PairRow] = []
    looks: list[Look] = []
    launched: list[RunRecord] = []
    result_verdict = "not shown"
    message = ""
    n_target = design.min_seeds
    while True:
        # plan this round: every missing pair up to n_target, candidate first then baseline (ABAB)
        while len(pairs) < n_target:
            i = len(pairs)
            pairs.append(PairRow(i, i + AA_SEED_OFFSET if opts.aa else i, i))
        todo, reused = [], []
        for row in pairs:
            for side, spec, seed in (("cand", cand, row.cand_seed), ("base", base, row.base_seed)):
                if getattr(row, side) is not None:
                    continue
                plan = make_plan(spec, opts.track, seed, store, timeout_s=opts.timeout_s)
                stored = store.find(plan.run_key)
                if (stored is not None and stored.record.status in COMPLETE
                        and stored.record.provenance.get("hardware") == hw):
                    setattr(row, side, stored.record)
                    setattr(row, f"{side}_reused", True)
                    reused.append(f"{'candidate' if side == 'cand' else 'baseline'} seed {seed}")
                else:
                    todo.append((row, side, plan))
        if reused:
            log(f"reusing {len(reused)} stored run(s) with matching provenance: {', '.join(reused)}")
        if todo:
            plans = [p for _, _, p in todo]
            if opts.track == "upstream":
                from harness.upstream import prepare_plans

                prepare_plans(plans, [cand, base], repo=opts.repo)
            log(f"round {len(looks) + 1}: running {len(plans)} run(s): "
                + ", ".join(f"{'candidate' if s == 'cand' else 'baseline'} seed {p.seed}" for _, s, p in todo))
            records = {r.run_key: r for r in runner(plans)}
            launched.extend(records.values())
            for row, side, plan in todo:
                rec = records.get(plan.run_key)
                if rec is None:  # another harness took it meanwhile: use whatever the store has now
                    sr = store.find(plan.run_key)
                    rec = sr.record if sr else None
                setattr(row, side, rec)
        bad = [(row, s) for row in pairs for s in ("cand", "base") if _metric(getattr(row, s)) is None]
        if bad:
            result_verdict = "runs failed"
            message = "; ".join(
                f"{'candidate' if s == 'cand' else 'baseline'} seed {getattr(r, s + '_seed')}: "
                f"{getattr(r, s).status + (' - ' + (getattr(r, s).error or '')) if getattr(r, s) else 'no record'}"
                for r, s in bad)
            break
        look = evaluate([row.diff for row in pairs], design)
        looks.append(look)
        log(f"look {len(looks)}: n={look.n} mean diff {look.mean:+.6f} CI [{look.ci_low:+.6f}, {look.ci_high:+.6f}] -> {look.decision}")
        if look.decision != "continue":
            result_verdict = look.decision
            break
        n_target = look.n + 1

    return CheckResult(
        verdict=result_verdict, exit_code=EXIT[result_verdict], mode=opts.mode, design=design,
        candidate=f"{base.name} (A/A)" if opts.aa else cand.name, baseline=base.name, track=opts.track,
        hardware=hw, pairs=pairs, looks=looks, launched=launched,
        provenance=provenance(cand, base, opts.track), record=opts.record, message=message,
    )


# ----------------------------------------------------------------------------- output


def provenance(cand: Any, base: Any, track: str) -> dict[str, Any]:
    """What was compared, without links or environment values."""
    from harness import __version__
    from harness.runner import _harness_commit
    from harness.spec import config_key, run_config

    def side(spec: Any) -> dict[str, Any]:
        cfg = run_config(spec, track)
        return {"variant": spec.name, "config_key": config_key(spec, track)[:16],
                **{k: cfg[k] for k in ("commit", "script", "args") if k in cfg},
                "patches": [f"{p['name']} ({p['sha256'][:12]})" for p in cfg.get("patches", [])]}

    return {"candidate": side(cand), "baseline": side(base), "harness": __version__, "harness_commit": _harness_commit()}


def hours(res: CheckResult) -> tuple[float, float, str]:
    """(spent this time, including reused runs, unit): 8 GPUs x training time upstream; CPU-hours on mini."""
    per = lambda r: (r.metrics.training_time_s or r.metrics.wall_time_s or 0.0)  # noqa: E731
    gpus = 8 if res.track == "upstream" else 1
    unit = "GPU-hours" if res.track == "upstream" else "CPU-hours (mini track, 1 process per run)"
    spent = sum(per(r) for r in res.launched) * gpus / 3600
    recs = [r for p in res.pairs for r in (p.cand, p.base) if r is not None]
    return spent, sum(per(r) for r in recs) * gpus / 3600, unit


def to_dict(res: CheckResult) -> dict[str, Any]:
    spent, total, unit = hours(res)
    last = res.looks[-1] if res.looks else None
    d = res.design
    return {
        "verdict": res.verdict, "verdict_words": res.verdict_words, "exit_code": res.exit_code,
        "candidate": res.candidate, "baseline": res.baseline, "track": res.track, "hardware": res.hardware,
        "metric": METRIC, "message": res.message,
        "rule": {"mode": d.mode, "margin": d.margin, "alpha": d.alpha, "power": d.power, "min_seeds": d.min_seeds,
                 "max_seeds": d.max_seeds, "null_diff": d.null_diff, "alt_diff": d.alt_diff, "text": d.describe()},
        "seeds_used": last.n if last else len(res.pairs),
        "runs_launched": len(res.launched),
        "runs_reused": sum(p.cand_reused + p.base_reused for p in res.pairs),
        "difference": None if last is None else {"mean": last.mean, "sd": last.sd, "ci_low": last.ci_low,
                                                   "ci_high": last.ci_high, "ci_level": last.ci_level},
        "looks": [dataclasses.asdict(lk) for lk in res.looks],
        "pairs": [{"pair": p.index + 1, "candidate_seed": p.cand_seed, "baseline_seed": p.base_seed,
                   "candidate": _metric(p.cand), "baseline": _metric(p.base), "diff": p.diff,
                   "candidate_reused": p.cand_reused, "baseline_reused": p.base_reused,
                   "candidate_run": p.cand.run_id if p.cand else None, "baseline_run": p.base.run_id if p.base else None}
                  for p in res.pairs],
        "hours": {"spent": spent, "including_reused": total, "unit": unit},
        "record": None if res.record is None else record_test(res),
        "provenance": res.provenance,
    }


def record_test(res: CheckResult) -> dict[str, Any]:
    """Informative only: is the candidate's mean below the record (one-sided t-test, modded-nanogpt style)?"""
    xs = [v for v in (_metric(p.cand) for p in res.pairs) if v is not None]
    p = float(sps.ttest_1samp(xs, res.record, alternative="less").pvalue) if len(xs) >= 2 else math.nan
    return {"record": res.record, "candidate_mean": float(np.mean(xs)) if xs else None, "p_value": p}


def verdict_line(res: CheckResult) -> str:
    last = res.looks[-1] if res.looks else None
    where = f" after {last.n} seed pair(s)" if last else ""
    extra = f": {res.message}" if res.message else ""
    return (f"harness check: {res.verdict.upper()} ({res.verdict_words}) - {res.candidate} vs {res.baseline}, "
            f"mode {res.mode}{where}, exit {res.exit_code}{extra}")


def markdown(res: CheckResult) -> str:
    d = to_dict(res)
    out = [f"### `harness check`: **{res.verdict.upper()}** ({res.verdict_words})", ""]
    out.append(f"**{res.candidate}** vs baseline **{res.baseline}** on the {res.track} track ({res.hardware}), metric `{METRIC}`.")
    if res.message:
        out.append(f"\nRuns failed to measure: {res.message}")
    out += ["", f"**Rule:** {res.design.describe()}.", ""]
    diff = d["difference"]
    if diff:
        out.append(f"**Difference (candidate - baseline):** mean {diff['mean']:+.6f}, sd {diff['sd']:.6f}; "
                   f"{diff['ci_level']:.0%} repeated CI [{diff['ci_low']:+.6f}, {diff['ci_high']:+.6f}] (valid at every look).")
    out.append(f"**Seeds used:** {d['seeds_used']} per side (max {res.design.max_seeds}); "
               f"{d['runs_launched']} run(s) launched, {d['runs_reused']} reused from the store.")
    h = d["hours"]
    name, _, basis = h["unit"].partition(" ")
    out.append(f"**{name} spent:** {h['spent']:.3f} by this check ({h['including_reused']:.3f} including reused runs"
               + (f"; {basis.strip('()')})." if basis else ")."))
    if d["record"]:
        r = d["record"]
        out.append(f"**Record {r['record']:g}:** candidate mean {r['candidate_mean']:.6f}, one-sided t-test p = {r['p_value']:.3g}.")
    out += ["", "| pair | seeds (cand/base) | candidate | baseline | diff | runs |", "|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.6f}"  # noqa: E731
    for p in d["pairs"]:
        src = "/".join("reused" if p[k] else "ran" for k in ("candidate_reused", "baseline_reused"))
        out.append(f"| {p['pair']} | {p['candidate_seed']}/{p['baseline_seed']} | {fmt(p['candidate'])} | {fmt(p['baseline'])} | "
                   f"{'-' if p['diff'] is None else format(p['diff'], '+.6f')} | {src} |")
    pv = res.provenance
    out += ["", "<details><summary>provenance</summary>", ""]
    for side in ("candidate", "baseline"):
        s = pv[side]
        bits = [f"config {s['config_key']}"] + [f"{k} {s[k]}" for k in ("commit", "script") if k in s]
        bits.append(f"args {' '.join(s.get('args', [])) or '(none)'}")
        if s.get("patches"):
            bits.append(f"patches {', '.join(s['patches'])}")
        out.append(f"- {side} `{s['variant']}`: " + "; ".join(bits))
    out.append(f"- harness {pv['harness']} ({pv['harness_commit'] or 'not a git checkout'})")
    out += ["", "</details>", ""]
    return "\n".join(out)


def write_step_summary(text: str) -> Path | None:
    """Append to $GITHUB_STEP_SUMMARY when GitHub Actions sets it."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as f:
        f.write(text + "\n")
    return Path(target)
