"""CLI bad input: one clear line on stderr, exit code 2, no traceback, nothing stored touched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from harness.store import Store
from harness.record import RunRecord

from conftest import ROOT, harness, write_variant


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def populated(tmp_path: Path) -> tuple[Path, Path]:
    vdir = tmp_path / "variants"
    vdir.mkdir()
    write_variant(vdir, "interleaved_muoneq", ["--preset", "smoke"])
    results = tmp_path / "results"
    store = Store(results)
    rid, d = store.new_run_dir("interleaved_muoneq", "mini", 0, "a" * 16)
    store.write(d, RunRecord(run_id=rid, variant="interleaved_muoneq", track="mini", seed=0, run_key="a" * 16, status="ok"))
    (d / "train.log").write_text("Step 00000 | Val BPB: 1.0 | Val Loss: 3.0\n")
    return vdir, results


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "interleaved_muon"], "unknown variant 'interleaved_muon'; did you mean interleaved_muoneq"),
        (["run", "interleaved_muoneq", "--seeds", "0"], "--seeds must be a positive number"),
        (["run", "interleaved_muoneq", "--seeds", "three"], "argument --seeds: invalid int value: 'three'"),
        (["run", "interleaved_muoneq", "--seed-list", "1,x"], "--seed-list must be comma-separated integers"),
        (["run", "interleaved_muoneq", "--seed-list", "1,1"], "--seed-list must name distinct"),
        (["run", "interleaved_muoneq", "--seeds", "2", "--seed-list", "1"], "not allowed with argument"),
        (["run", "interleaved_muoneq", "--timeout", "-1"], "--timeout must be a positive"),
        (["run", "interleaved_muoneq", "--timeout", "nan"], "--timeout must be a positive"),  # once launched and stored a timeout
        (["run", "interleaved_muoneq", "--seeds", "100000000000"], "--seeds 100000000000 is more than 10000"),  # once a MemoryError
        (["run", "interleaved_muoneq", "--seed-list", "4294967296"], "--seed-list must name distinct integers from 0 to 4294967295"),
        (["report", "interleaved_muoneq", "--min-effect", "nan"], "--min-effect must be a finite number"),
        (["report", "interleaved_muoneq", "--record", "inf"], "--record must be a finite loss"),
        (["run", "interleaved_muoneq", "--track", "gpu"], "argument --track: invalid choice"),
        (["show", "nope"], "unknown variant 'nope'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_store_untouched(populated, args, message):
    vdir, results = populated
    before = _snapshot(results)
    r = harness(*args, "--variants", str(vdir), "--results", str(results))
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip()
    assert message in err and "Traceback" not in r.stderr and len(err.splitlines()) == 1
    assert _snapshot(results) == before


def test_malformed_toml_names_the_file(populated):
    vdir, results = populated
    (vdir / "broken.toml").write_text("name = 'broken\n")
    before = _snapshot(results)
    r = harness("run", "interleaved_muoneq", "--variants", str(vdir), "--results", str(results))
    assert r.returncode == 2 and "broken.toml: malformed TOML" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert _snapshot(results) == before


def test_unwritable_results_folder(populated, tmp_path):
    vdir, _ = populated
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = harness("run", "interleaved_muoneq", "--variants", str(vdir), "--results", str(blocker / "results"))
    assert r.returncode == 2 and "is not writable" in r.stderr and "Traceback" not in r.stderr


def test_list_and_show_the_shipped_variants():
    r = harness("list", "--json")
    assert r.returncode == 0
    import json

    names = [v["name"] for v in json.loads(r.stdout)]
    assert names == ["baseline", "fusion_iha", "interleaved_iha", "interleaved_muoneq"] or set(names) >= {
        "baseline", "fusion_iha", "interleaved_iha", "interleaved_muoneq"}
    r = harness("show", "interleaved_muoneq")
    assert r.returncode == 0 and "04bb113b1ac22acf2822dbaadf9f9b8eabbb5666" in r.stdout and "compared to: interleaved_iha" in r.stdout
