"""harness.source on a real git history (tests/fake_upstream.py): mirrors, worktrees, patches, seeds, data."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import fake_upstream as fu
from harness import source, upstream
from harness.errors import UserError
from harness.runner import plan_runs
from harness.spec import load_registry
from harness.store import Store

PINNED = {  # the four pinned two_hour variants (variants/*.toml) and their commits
    "baseline": "7f7b417c4ea5abc9c63eb2e43495d66a1646fa11",
    "fusion_iha": "f19b938eacddd1fb8731a42fc8b0a0ca29667686",
    "interleaved_iha": "0e63026d2053382b0c456ea2664382cf3ee3646e",
    "interleaved_muoneq": "04bb113b1ac22acf2822dbaadf9f9b8eabbb5666",
}
PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def fake(tmp_path, monkeypatch) -> fu.FakeUpstream:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HARNESS_WORK", str(tmp_path / "work"))
    return fu.build(tmp_path / "up")


# ----------------------------------------------------------------------------- mirrors


def test_mirror_fetched_once_then_offline(fake, tmp_path):
    url = str(fake.origin)
    repo, sha = source.ensure_commit(url, fake.c1)
    assert sha == fake.c1 and Path(repo.git_dir) == source.mirror_path(url)
    # The origin goes away (offline): a commit already in the mirror needs no network at all.
    moved = tmp_path / "origin-away"
    shutil.move(fake.origin, moved)
    _, sha2 = source.ensure_commit(url, fake.c2[:12])
    assert sha2 == fake.c2
    # A commit missing from the mirror triggers a fetch, which now fails with one clear line.
    with pytest.raises(UserError, match="could not fetch") as e:
        source.ensure_commit(url, "1" * 40)
    # git's own reason, not the tail of its advice text or gitpython's quoting
    assert "does not appear to be a git repository" in str(e.value) and "'\n" not in str(e.value) + "\n"
    assert "\n" not in str(e.value)


def test_missing_commit_refetched_and_pr_refs(fake):
    url = str(fake.origin)
    source.ensure_commit(url, fake.c1)
    new = fu._commit(fake.origin, {"NEW.md": "new\n"}, "after the mirror was made")
    _, sha = source.ensure_commit(url, new)  # not in the mirror yet: fetched on demand
    assert sha == new
    _, pr = source.ensure_commit(url, fake.pr, ref="refs/pull/7/head")  # only reachable from a PR ref
    assert pr == fake.pr
    with pytest.raises(UserError, match=r"commit 0{40} not found in .*pass --repo"):
        source.ensure_commit(url, "0" * 40)


def test_worktree_at_pinned_sha_shares_objects(fake, tmp_path):
    repo, sha = source.ensure_commit(str(fake.origin), fake.c1)
    wt = source.add_worktree(repo, sha, tmp_path / "wt1")
    assert (wt / ".git").is_file()  # a worktree pointer, not a clone with its own objects
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=wt, capture_output=True, text=True).stdout.strip() == fake.c1
    assert (wt / "train.py").read_text() == fu.TRAIN_PY
    (wt / "junk").write_text("x")
    wt = source.add_worktree(repo, fake.c2, tmp_path / "wt1")  # re-materialising replaces the tree
    assert not (wt / "junk").exists() and "0.11 * step" in (wt / "train.py").read_text()


# ----------------------------------------------------------------------------- patches


def test_patches_apply_in_order_and_are_hashed(fake, tmp_path):
    m = source.materialise(str(fake.origin), fake.c1, "train.py", tmp_path / "wt", 5, [fake.patch, fake.patch2])
    assert "# muon-r, second patch" in (m.worktree / "train.py").read_text()
    assert [p.sha256 for p in m.patches] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (fake.patch, fake.patch2)]
    assert m.provenance()["patches"][0]["path"].endswith("muon.patch")


def test_failing_patch_names_file_and_hunk_and_leaves_nothing(fake, tmp_path):
    dest = tmp_path / "wt"
    with pytest.raises(UserError) as e:
        source.materialise(str(fake.origin), fake.c2, "train.py", dest, 5, [fake.patch])
    msg = str(e.value)
    assert "muon.patch" in msg and "train.py" in msg and "hunk at line 53" in msg and "\n" not in msg
    assert not dest.exists()  # nothing left to launch
    with pytest.raises(UserError, match="second.patch does not apply"):  # order matters: 2 needs 1
        source.materialise(str(fake.origin), fake.c1, "train.py", dest, 5, [fake.patch2])
    with pytest.raises(UserError, match="patch file .*missing.patch not found"):
        source.materialise(str(fake.origin), fake.c1, "train.py", dest, 5, [fake.variants / "missing.patch"])


# ----------------------------------------------------------------------------- seed injection


def _changed(diff: str) -> tuple[int, int]:
    """(removed, added) lines of a unified diff."""
    lines = diff.splitlines()
    return (
        sum(1 for ln in lines if ln.startswith("-") and not ln.startswith("---")),
        sum(1 for ln in lines if ln.startswith("+") and not ln.startswith("+++")),
    )


def test_inject_seed_rewrites_both_torch_sites_only():
    new, diff = source.inject_seed(fu.TRAIN_PY, 1234)
    assert "torch.manual_seed(1234)" in new and "    torch.cuda.manual_seed(1234)" in new
    assert "manual_seed(42)" not in new
    assert "g.manual_seed(1)" in new  # data order (R3) untouched
    assert _changed(diff) == (2, 2) and diff.startswith("--- a/train.py")
    # exactly those two lines differ
    changed = [(a, b) for a, b in zip(fu.TRAIN_PY.splitlines(), new.splitlines()) if a != b]
    assert [b.strip() for _, b in changed] == ["torch.manual_seed(1234)", "torch.cuda.manual_seed(1234)"]


@pytest.mark.parametrize(
    "text,expect",
    [
        ("import torch\ntorch.manual_seed(42)\n", "torch.manual_seed(7)"),
        ("torch.cuda.manual_seed_all( 42 )\n", "torch.cuda.manual_seed_all(7)"),
        ("seeds = [42 + i for i in range(args.num_models)]\n", "seeds = [7 + i for i in range(args.num_models)]"),
    ],
)
def test_inject_seed_historical_sites(text, expect):
    new, diff = source.inject_seed(text, 7)
    assert expect in new and diff


def test_inject_seed_leaves_dataset_seeds_and_comments():
    text = (
        "import numpy as np\nimport torch\n"
        "# torch.manual_seed(42) was here\n"
        "torch.manual_seed(42)\n"
        "perm = np.random.RandomState(data['seq_shuffle_seed']).permutation(n)\n"
        "np.random.seed(42)\n"
        "g.manual_seed(self.epoch + 1000)\n"
    )
    new, _ = source.inject_seed(text, 3)
    assert "# torch.manual_seed(42) was here" in new
    assert "np.random.seed(42)" in new and "g.manual_seed(self.epoch + 1000)" in new
    assert "\ntorch.manual_seed(3)\n" in new


def test_seed_flag_and_missing_site():
    script = "import argparse\np = argparse.ArgumentParser()\np.add_argument('--seed', type=int, default=42)\n"
    r = source.seed_script(script, 9, "--seed")
    assert r.text == script and r.diff == "" and r.args == ["--seed", "9"]
    assert source.inject_seed(script, 9, "--seed") == (script, "")
    with pytest.raises(UserError, match='set seed_flag = "--seed"'):
        source.inject_seed(script, 9)  # no literal: point at the flag
    with pytest.raises(UserError, match="no recognisable seed site"):
        source.inject_seed("print('hello')\n", 9)
    with pytest.raises(UserError, match="has no --rng argument"):
        source.inject_seed(script, 9, "--rng")


# ----------------------------------------------------------------------------- data


def _put_data(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fineweb_train.pt").write_bytes(fu.TRAIN_BYTES)
    (folder / "fineweb_val.pt").write_bytes(fu.VAL_BYTES)


def test_data_keyed_by_prepare_data_and_verified(fake, tmp_path):
    m = source.materialise(str(fake.origin), fake.c1, "train.py", tmp_path / "wt", 5)
    link = m.worktree / "fineweb_data"
    key = source.data_key(m.worktree)
    assert key == source.data_key(m.worktree) and key.startswith("h")  # keyed by the published hashes
    assert link.is_symlink() and link.resolve() == (tmp_path / "data" / key).resolve()
    with pytest.raises(UserError, match="run `harness data prepare fake`"):
        source.verify_data(m.worktree, "fake")
    with pytest.raises(UserError, match="run `harness data prepare fake --repo /my/fork`"):  # the hint keeps --repo
        source.verify_data(m.worktree, "fake", repo="/my/fork")
    _put_data(m.data_folder)
    info = source.verify_data(m.worktree, "fake")
    assert info.files["fineweb_train.pt"] == hashlib.sha256(fu.TRAIN_BYTES).hexdigest()
    # Cached by size+mtime: same-size edit with the old mtime is not re-hashed ...
    p = m.data_folder / "fineweb_val.pt"
    st = p.stat()
    p.write_bytes(fu.VAL_BYTES.upper())
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source.verify_data(m.worktree, "fake").files["fineweb_val.pt"] == hashlib.sha256(fu.VAL_BYTES).hexdigest()
    # ... a touched file is re-hashed and the mismatch reported.
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(UserError, match="does not match prepare_data.py's hash"):
        source.verify_data(m.worktree, "fake")


def test_other_prepare_data_era_gets_other_folder(fake, tmp_path):
    same_output = fu.PREPARE_DATA.replace("Fake prepare", "Reworded prepare")  # same published hashes
    new_format = fu.PREPARE_DATA.replace(hashlib.sha256(fu.VAL_BYTES).hexdigest(), "0" * 64)
    c3 = fu._commit(fake.origin, {"prepare_data.py": same_output}, "docstring edit")
    c4 = fu._commit(fake.origin, {"prepare_data.py": new_format}, "format change")
    no_hashes = "import os\nprint('old era: no EXPECTED_HASHES')\n"
    c5 = fu._commit(fake.origin, {"prepare_data.py": no_hashes}, "an era without hashes")
    a, b, c, d = (source.materialise(str(fake.origin), sha, "train.py", tmp_path / n, 1)
                  for n, sha in (("a", fake.c1), ("b", c3), ("c", c4), ("d", c5)))
    assert a.data_folder == b.data_folder  # a reworded prepare_data.py needs no second download
    assert a.data_folder != c.data_folder and a.data_folder.parent == c.data_folder.parent
    assert d.data_folder.name == hashlib.sha256(no_hashes.encode()).hexdigest()[:16] != a.data_folder.name
    assert source.expected_hashes(same_output) == source.expected_hashes(fu.PREPARE_DATA) != {}
    assert source.expected_hashes("X = 1\n") == {}


def test_data_prepare_runs_the_commits_own_script(fake):
    fu.write_variant(fake, "fake", fake.c1)
    spec = load_registry(fake.variants).get("fake")
    folder = upstream.prepare_data(spec)
    assert (folder / "fineweb_train.pt").read_bytes() == fu.TRAIN_BYTES
    m = upstream.materialise_run(spec, 3)
    assert upstream.data_check(m, "fake").ok


def test_repo_override_and_dry_run(fake, tmp_path):
    fork = tmp_path / "fork"
    shutil.copytree(fake.origin, fork)
    fu.write_variant(fake, "fake", fake.c1, patches=("muon.patch",), repo="https://example.invalid/nowhere.git")
    spec = load_registry(fake.variants).get("fake")
    with pytest.raises(UserError, match="could not fetch https://example.invalid"):
        upstream.materialise_run(spec, 1)
    # what `harness run --dry-run --repo FORK` prints: per run a worktree, its seed diff and the command
    plan = plan_runs([spec], [0, 1], "upstream", Store(tmp_path / "results"), repo=str(fork))
    p0, p1 = plan.to_run
    assert (p0.seed, p1.seed) == (0, 1) and p0.cwd != p1.cwd
    assert Path(p1.cwd) == upstream.worktree_dir(spec, 1)
    text = (Path(p1.cwd) / "train.py").read_text()
    assert "torch.manual_seed(1)" in text and "# muon-r" in text
    assert "+torch.manual_seed(1)" in p1.provenance["upstream"]["seed_diff"]
    assert p1.provenance["upstream"]["repo"] == str(fork)
    assert p1.command[1:4] == ["--standalone", "--nproc_per_node=2", "train.py"] and p1.env["WANDB_MODE"] == "disabled"
    assert not (tmp_path / "results").exists()  # planning stores nothing


def test_materialise_speed_is_reasonable(fake, tmp_path):
    """Behaviour only (timings live in benchmarks/materialise.py): a second seed reuses the mirror."""
    source.materialise(str(fake.origin), fake.c1, "train.py", tmp_path / "a", 1)
    mirror = source.mirror_path(str(fake.origin))
    before = (mirror / "FETCH_HEAD").stat().st_mtime_ns
    source.materialise(str(fake.origin), fake.c1, "train.py", tmp_path / "b", 2)
    assert (mirror / "FETCH_HEAD").stat().st_mtime_ns == before  # no second fetch


# ----------------------------------------------------------------------------- real upstream (opt-in)

MIRROR = os.environ.get("SLOWRUN_MIRROR")


@pytest.mark.skipif(not MIRROR, reason="set SLOWRUN_MIRROR to a clone or mirror of qlabs-eng/slowrun")
def test_real_slowrun_pinned_variants(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HARNESS_WORK", str(tmp_path / "work"))
    reg = load_registry(PROJECT / "variants")
    scripts = {}
    for name, commit in PINNED.items():
        spec = reg.get(name)
        assert spec.upstream.commit == commit
        m = upstream.materialise_run(spec, 1234, repo=MIRROR)
        text = (m.worktree / "two_hour/train.py").read_text()
        assert m.commit == commit
        assert _changed(m.seed_diff) == (2, 2) and "+torch.manual_seed(1234)" in m.seed_diff
        assert "+    torch.cuda.manual_seed(1234)" in m.seed_diff and "manual_seed(42)" not in text
        scripts[name] = text
    # interleaved_iha + muoneq_r.patch == interleaved_muoneq, byte for byte (both seeded with 1234)
    m = source.materialise(
        MIRROR, PINNED["interleaved_iha"], "two_hour/train.py", tmp_path / "patched", 1234,
        [PROJECT / "variants/patches/muoneq_r.patch"],
    )
    assert (m.worktree / "two_hour/train.py").read_text() == scripts["interleaved_muoneq"]
    assert scripts["interleaved_iha"] != scripts["interleaved_muoneq"]


@pytest.mark.skipif(not MIRROR, reason="set SLOWRUN_MIRROR to a clone or mirror of qlabs-eng/slowrun")
def test_real_slowrun_every_historical_script_seeds():
    """Every version of train.py, tiny/, two_hour/, unlimited/, limited/, ensemble/ on any ref."""
    g = ["git", "-C", MIRROR]
    paths = ["train.py", "tiny/train.py", "two_hour/train.py", "unlimited/train.py", "limited/train.py", "ensemble/train.py"]
    blobs: dict[str, str] = {}
    for c in subprocess.run(g + ["rev-list", "--all"], capture_output=True, text=True, check=True).stdout.split():
        out = subprocess.run(g + ["ls-tree", "-r", c, "--", *paths], capture_output=True, text=True).stdout
        for line in out.splitlines():
            meta, path = line.split("\t")
            blobs.setdefault(meta.split()[2], path)
    assert len(blobs) > 100
    flagged = 0
    for blob, path in blobs.items():
        text = subprocess.run(g + ["cat-file", "blob", blob], capture_output=True, text=True, check=True).stdout
        if "torch.manual_seed(42)" in text or "seeds = [42 + i" in text:
            r = source.seed_script(text, 1234, path=path)
            assert r.sites and "manual_seed(42)" not in r.text.replace("# torch.manual_seed(42)", "")
            if "torch.cuda.manual_seed(42)" in text:
                assert "torch.cuda.manual_seed(1234)" in r.text
        else:  # R8/R9: the --seed flag era must be declared by the variant
            with pytest.raises(UserError, match="seed_flag"):
                source.seed_script(text, 1234, path=path)
            assert source.seed_script(text, 1234, "--seed", path=path).args == ["--seed", "1234"]
            flagged += 1
    assert flagged >= 1
