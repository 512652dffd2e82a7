"""Upstream sources: cached git mirrors, per-run worktrees, patches, seed injection, data links.

Layout (all configurable):
  $HARNESS_CACHE (default ~/.cache/slowrun-harness)/mirrors/<name>-<hash>.git   one bare mirror per URL
  $HARNESS_DATA  (default $HARNESS_CACHE/data)/<prepare_data sha256[:16]>/      one data folder per format era

The network is touched only when a pinned commit is missing from the mirror (or the mirror does not
exist yet): that fetch is what the user asked for by running the variant.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import git
from filelock import FileLock

from harness.errors import UserError

# GitHub exposes pull requests as refs/pull/N/head; pinned PR commits (e.g. PR #78/#79) live only there.
FETCH_REFSPECS = (
    "+refs/heads/*:refs/heads/*",
    "+refs/tags/*:refs/tags/*",
    "+refs/pull/*/head:refs/pull/*/head",
)
DATA_LINK = "fineweb_data"  # upstream reads this folder from its working directory
DEFAULT_DATA_FILES = ("fineweb_train.pt", "fineweb_val.pt")


def cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "slowrun-harness").expanduser()


def data_root() -> Path:
    return Path(os.environ.get("HARNESS_DATA") or cache_dir() / "data").expanduser()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Mirrors


def mirror_path(url: str, root: Path | None = None) -> Path:
    """A stable folder name per URL: readable tail + hash of the full URL (forks do not collide)."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rstrip("/").split("/")[-1].removesuffix(".git"))[:40]
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return (root or cache_dir()) / "mirrors" / f"{tail or 'repo'}-{digest}.git"


def _has_commit(repo: git.Repo, sha: str) -> str | None:
    """Full SHA if `sha` names a commit present in `repo`, else None (never touches the network)."""
    try:
        return repo.git.rev_parse("--verify", "--quiet", f"{sha}^{{commit}}").strip() or None
    except git.GitCommandError:
        return None


def git_error_line(e: git.GitCommandError) -> str:
    """git's own first `fatal:`/`error:` line (gitpython wraps stderr in `stderr: '...'`)."""
    text = str(e.stderr or e).strip().removeprefix("stderr:").strip().strip("'")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), lines[-1] if lines else "git failed")


def _fetch(repo: git.Repo, url: str, ref: str | None) -> None:
    args = ["--quiet", "--prune", url, *FETCH_REFSPECS]
    if ref and not ref.startswith("refs/heads/") and not ref.startswith("refs/pull/"):
        args.append(f"+{ref}:{ref}" if ref.startswith("refs/") else ref)
    try:
        repo.git.fetch(*args)
    except git.GitCommandError as e:
        raise UserError(f"could not fetch {url} ({git_error_line(e)}); check the URL/network or pass --repo") from e


def ensure_commit(url: str, commit: str, ref: str | None = None, cache: Path | None = None) -> tuple[git.Repo, str]:
    """Return (bare mirror, full SHA), creating the mirror / fetching only if the commit is missing."""
    path = mirror_path(url, cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / "HEAD").exists():
            repo = git.Repo.init(path, bare=True)
        else:
            repo = git.Repo(path)
        full = _has_commit(repo, commit)
        if full is None:
            _fetch(repo, url, ref)
            full = _has_commit(repo, commit)
        if full is None:
            raise UserError(
                f"commit {commit} not found in {url} (branches, tags and pull-request refs searched); "
                "fix the variant's commit or pass --repo with a repository that has it"
            )
        return repo, full


# ----------------------------------------------------------------------------------------------
# Worktrees and patches


def add_worktree(mirror: git.Repo, sha: str, dest: Path) -> Path:
    """A detached worktree of `sha` at `dest` sharing the mirror's objects (no clone)."""
    dest = Path(dest).resolve()
    with FileLock(str(Path(mirror.git_dir)) + ".lock"):
        if dest.exists():
            remove_worktree(mirror, dest)
        mirror.git.worktree("prune")
        dest.parent.mkdir(parents=True, exist_ok=True)
        mirror.git.worktree("add", "--detach", "--force", str(dest), sha)
    return dest


def remove_worktree(mirror: git.Repo, dest: Path) -> None:
    try:
        mirror.git.worktree("remove", "--force", str(dest))
    except git.GitCommandError:
        shutil.rmtree(dest, ignore_errors=True)
        mirror.git.worktree("prune")


@dataclass(frozen=True)
class PatchInfo:
    path: str
    sha256: str


def _apply_error(patch: Path, stderr: str) -> str:
    """One line naming the patch and the file/hunk git could not apply."""
    m = re.search(r"patch failed: (.+?):(\d+)", stderr)
    if m:
        return f"patch {patch} does not apply: {m.group(1)} (hunk at line {m.group(2)})"
    m = re.search(r"error: (.+?): (No such file or directory|does not exist in index|already exists.*)", stderr)
    if m:
        return f"patch {patch} does not apply: {m.group(1)}: {m.group(2)}"
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return f"patch {patch} does not apply: {lines[-1] if lines else 'git apply failed'}"


def apply_patches(worktree: Path, patches: list[Path] | tuple[Path, ...]) -> list[PatchInfo]:
    """Apply patches in order, each checked with `git apply --check` first; return their hashes."""
    infos: list[PatchInfo] = []
    for p in patches:
        p = Path(p)
        if not p.is_file():
            raise UserError(f"patch file {p} not found; fix the variant's patches list")
        data = p.read_bytes()
        for args in (["apply", "--check", str(p.resolve())], ["apply", str(p.resolve())]):
            res = subprocess.run(["git", *args], cwd=worktree, capture_output=True, text=True)
            if res.returncode != 0:
                raise UserError(_apply_error(p, res.stderr))
        infos.append(PatchInfo(path=str(p), sha256=sha256_bytes(data)))
    return infos


# ----------------------------------------------------------------------------------------------
# Seed injection (catalog §2: R1/R2 literals, R7 ensemble list, R8 --seed flag; R3-R6 untouched)

# R1 torch.manual_seed(42) and R2 torch.cuda.manual_seed(42) (both, to the same literal on every rank).
# `g.manual_seed(self.epoch...)` (data order, R3/R4) never matches: only torch.* receivers with literal 42.
_TORCH_SEED = re.compile(r"\b(torch(?:\.cuda)?\.manual_seed(?:_all)?)\(\s*42\s*\)")
# R7: seeds = [42 + i for i in range(args.num_models)] (ensemble/, unlimited/ before a200723)
_ENSEMBLE_SEED = re.compile(r"(\bseeds\s*=\s*\[\s*)42(\s*\+\s*i\b)")


@dataclass
class SeedResult:
    text: str
    diff: str
    sites: list[str] = field(default_factory=list)  # e.g. ["torch.manual_seed", "torch.cuda.manual_seed"]
    args: list[str] = field(default_factory=list)  # extra command-line args (the --seed flag case)


def _script_has_flag(text: str, flag: str) -> bool:
    return re.search(r"add_argument\(\s*['\"]" + re.escape(flag) + r"['\"]", text) is not None


def seed_script(text: str, seed: int, seed_flag: str | None = None, path: str = "train.py") -> SeedResult:
    """Rewrite every recognised seed site to `seed`, verify it, and return the diff (or flag args)."""
    if seed_flag:
        if not _script_has_flag(text, seed_flag):
            raise UserError(f"{path} has no {seed_flag} argument; remove seed_flag from the variant or fix its name")
        return SeedResult(text=text, diff="", sites=[seed_flag], args=[seed_flag, str(seed)])
    sites: list[str] = []
    out_lines = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("#"):  # commented-out code is not a seed site
            out_lines.append(line)
            continue
        new, n = _TORCH_SEED.subn(lambda m: f"{m.group(1)}({seed})", line)
        sites += [m.group(1) for m in _TORCH_SEED.finditer(line)]
        new, n2 = _ENSEMBLE_SEED.subn(lambda m: f"{m.group(1)}{seed}{m.group(2)}", new)
        sites += ["seeds = [42 + i ...]"] * n2
        out_lines.append(new)
    if not sites:
        hint = " (it takes --seed: set seed_flag = \"--seed\" in the variant)" if _script_has_flag(text, "--seed") else ""
        raise UserError(f"{path} has no recognisable seed site (torch.manual_seed(42), seeds = [42 + i ...]){hint}")
    new_text = "".join(out_lines)
    _verify_seeded(text, new_text, seed, sites, path)
    diff = "".join(
        difflib.unified_diff(text.splitlines(True), new_text.splitlines(True), f"a/{path}", f"b/{path}")
    )
    return SeedResult(text=new_text, diff=diff, sites=sites)


def _verify_seeded(old: str, new: str, seed: int, sites: list[str], path: str) -> None:
    """The rewrite must leave valid Python, no literal-42 torch seed, and one seeded call per site."""
    try:
        ast.parse(old)
    except SyntaxError:
        return  # upstream itself is broken (one PR blob is); nothing more to verify against
    try:
        ast.parse(new)
    except SyntaxError as e:
        raise UserError(f"seed rewrite of {path} produced invalid Python ({e}); report this script") from e
    code_lines = [ln for ln in new.splitlines() if not ln.lstrip().startswith("#")]
    code = "\n".join(code_lines)
    if seed != 42 and _TORCH_SEED.search(code):
        raise UserError(f"seed rewrite of {path} left a torch.manual_seed(42); report this script")
    want = len([s for s in sites if s.startswith("torch")])
    got = len(re.findall(r"\btorch(?:\.cuda)?\.manual_seed(?:_all)?\(\s*" + str(seed) + r"\s*\)", code))
    if got < want:
        raise UserError(f"seed rewrite of {path} could not be verified ({got} of {want} sites); report this script")


def inject_seed(script_text: str, seed: int, seed_flag: str | None = None) -> tuple[str, str]:
    """(new_text, unified_diff): the contract in docs/ARCHITECTURE.md. With `seed_flag` the text is
    unchanged (the seed travels as a command-line flag, see `seed_script(...).args`)."""
    r = seed_script(script_text, seed, seed_flag)
    return r.text, r.diff


# ----------------------------------------------------------------------------------------------
# Data: one shared folder per prepare_data.py (format era), linked into each worktree


def data_key(worktree: Path) -> str:
    """The data folder's name: the hash of the file hashes prepare_data.py publishes (edits that keep the
    output, e.g. upstream 4832a49, share one folder), else of prepare_data.py itself."""
    p = Path(worktree) / "prepare_data.py"
    if not p.is_file():
        raise UserError(f"{worktree} has no prepare_data.py; this commit cannot be run on the upstream track")
    hashes = expected_hashes(p.read_text())
    if hashes:
        return "h" + sha256_bytes(json.dumps(hashes, sort_keys=True).encode())[:15]
    return sha256_file(p)[:16]


def expected_hashes(prepare_data_text: str) -> dict[str, str]:
    """The EXPECTED_HASHES dict that prepare_data.py publishes (empty if that era has none)."""
    try:
        tree = ast.parse(prepare_data_text)
    except SyntaxError:
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "EXPECTED_HASHES" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return {}
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items() if v}
    return {}


@dataclass
class DataInfo:
    key: str
    folder: Path
    files: dict[str, str]  # file name -> verified sha256 ("" when the era publishes no hash)


def link_data(worktree: Path, root: Path | None = None) -> Path:
    """Symlink <root>/<key> as <worktree>/fineweb_data (created empty if new)."""
    folder = (root or data_root()) / data_key(worktree)
    folder.mkdir(parents=True, exist_ok=True)
    link = Path(worktree) / DATA_LINK
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.symlink_to(folder.resolve(), target_is_directory=True)
    return folder


def verify_data(worktree: Path, variant: str, root: Path | None = None, repo: str | None = None) -> DataInfo:
    """Check the linked data exists and matches that era's EXPECTED_HASHES (cached by size+mtime).
    `repo`: the --repo the run used, repeated in the `harness data prepare` hint."""
    key = data_key(worktree)
    folder = (root or data_root()) / key
    hashes = expected_hashes((Path(worktree) / "prepare_data.py").read_text())
    names = sorted(hashes) or list(DEFAULT_DATA_FILES)
    how = f"run `harness data prepare {variant}{' --repo ' + repo if repo else ''}`"
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(f"data for {variant} missing in {folder} ({', '.join(missing)}); {how}")
    cache_file = folder / ".verified.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    files: dict[str, str] = {}
    changed = False
    for n in names:
        st = (folder / n).stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        entry = cache.get(n)
        if entry and entry.get("stamp") == stamp:
            actual = entry["sha256"]
        else:
            actual = sha256_file(folder / n)
            cache[n] = {"stamp": stamp, "sha256": actual}
            changed = True
        if n in hashes and actual != hashes[n]:
            raise UserError(f"data file {folder / n} does not match prepare_data.py's hash; delete it and {how}")
        files[n] = actual
    if changed:
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(cache_file)
    return DataInfo(key=key, folder=folder, files=files)


# ----------------------------------------------------------------------------------------------
# Materialise one run


@dataclass
class Materialised:
    worktree: Path
    commit: str
    url: str
    script: str
    patches: list[PatchInfo]
    seed_diff: str
    seed_sites: list[str]
    seed_args: list[str]
    data_folder: Path

    def provenance(self) -> dict:
        return {
            "repo": self.url,
            "commit": self.commit,
            "script": self.script,
            "patches": [{"path": p.path, "sha256": p.sha256} for p in self.patches],
            "seed_diff": self.seed_diff,
            "seed_sites": self.seed_sites,
            "worktree": str(self.worktree),
            "data_folder": str(self.data_folder),
        }


def materialise(
    url: str,
    commit: str,
    script: str,
    dest: Path,
    seed: int | None,
    patches: list[Path] | tuple[Path, ...] = (),
    seed_flag: str | None = None,
    ref: str | None = None,
    cache: Path | None = None,
    data: Path | None = None,
) -> Materialised:
    """Worktree at the pinned commit + patches + seed + data link. On any error the worktree is removed.

    `seed=None` skips seed injection (the script is left as upstream wrote it)."""
    mirror, full = ensure_commit(url, commit, ref, cache)
    wt = add_worktree(mirror, full, Path(dest))
    try:
        infos = apply_patches(wt, list(patches))
        script_path = wt / script
        if not script_path.is_file():
            raise UserError(f"script {script} not found at commit {full[:12]}; fix the variant's script path")
        if seed is None:  # e.g. data preparation: the script runs as upstream wrote it
            seeded = SeedResult(text="", diff="")
        else:
            seeded = seed_script(script_path.read_text(), seed, seed_flag, path=script)
        if seeded.diff:
            script_path.write_text(seeded.text)
        folder = link_data(wt, data)
    except BaseException:
        remove_worktree(mirror, wt)
        raise
    return Materialised(
        worktree=wt, commit=full, url=url, script=script, patches=infos, seed_diff=seeded.diff,
        seed_sites=seeded.sites, seed_args=seeded.args, data_folder=folder,
    )
