"""`harness run` end to end on the mini track: real trainer processes, real store, real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.store import Store

from conftest import ROOT, harness, write_variant

pytestmark = pytest.mark.slow

FAST = ["--preset", "smoke", "--num-epochs", "1"]


@pytest.fixture
def vdir(tmp_path: Path) -> Path:
    d = tmp_path / "variants"
    d.mkdir()
    write_variant(d, "base", FAST)
    write_variant(d, "bad", FAST + ["--attn", "interleaved", "--iha-p", "0"], compare_to="base")
    return d


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_run_resume_and_extend(vdir, results):
    r = harness("run", "base", "--seeds", "2", "--variants", str(vdir), "--results", str(results))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "track: mini" in r.stdout and "2 of 2 run(s) ok" in r.stdout
    df = Store(results).load_table()
    assert sorted(df["seed"]) == [0, 1] and set(df["status"]) == {"ok"}
    assert df["min_val_loss"].notna().all() and (df["n_epochs"] == 1).all()
    rec = json.loads((Path(df.loc[0, "path"]) / "run.json").read_text())
    prov = rec["provenance"]
    assert prov["config"]["args"] == FAST and len(prov["data_sha256"]) == 64 and prov["torch"]
    assert rec["started_at"] and rec["ended_at"] and rec["executor"]["kind"] == "local"
    assert (Path(df.loc[0, "path"]) / "train.log").read_text().count("Val Loss") >= 2

    # The same command again runs nothing and says so.
    before = _snapshot(results)
    r = harness("run", "base", "--seeds", "2", "--variants", str(vdir), "--results", str(results))
    assert r.returncode == 0 and "Nothing to run" in r.stdout
    assert _snapshot(results) == before

    # --seeds 3 after --seeds 2 runs only seed 2.
    r = harness("run", "base", "--seeds", "3", "--variants", str(vdir), "--results", str(results))
    assert r.returncode == 0 and "1 of 1 run(s) ok" in r.stdout and "base seed 0, base seed 1" in r.stdout
    assert len(Store(results).attempts()) == 3


def test_failed_run_is_recorded_and_does_not_stop_other_runs(vdir, results):
    r = harness("run", "bad", "base", "--seed-list", "5", "--variants", str(vdir), "--results", str(results))
    assert r.returncode == 4, r.stdout + r.stderr
    df = Store(results).load_table().set_index("variant")
    assert df.loc["base", "status"] == "ok" and df.loc["bad", "status"] == "failed"
    assert "exit code 2" in df.loc["bad", "error"]
    assert "error:" in (Path(df.loc["bad", "path"]) / "train.log").read_text()  # partial log kept


def test_sigkilled_harness_leaves_a_loadable_store_and_resume_redoes_only_that_seed(vdir, results):
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "harness.cli", "run", "base", "--seeds", "2", "--variants", str(vdir), "--results", str(results)]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # Wait until seed 0 is complete and seed 1 is running, then SIGKILL the harness.
    while time.time() < deadline:
        st = {r.record.seed: r.record.status for r in Store(results).attempts()}
        if st.get(0) == "ok" and st.get(1) == "running":
            break
        time.sleep(0.2)
    else:
        p.kill()
        pytest.fail(f"never saw seed 0 ok and seed 1 running: {st}")
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL)
    p.wait()

    df = Store(results).load_table().set_index("seed")
    assert df.loc[0, "status"] == "ok" and df.loc[1, "status"] == "stale"

    r = harness("run", "base", "--seeds", "2", "--variants", str(vdir), "--results", str(results))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already complete, not re-run (1): base seed 0" in r.stdout and "1 of 1 run(s) ok" in r.stdout
    attempts = Store(results).attempts()
    assert sorted(a.record.seed for a in attempts) == [0, 1, 1]  # the killed attempt is kept, not overwritten
    assert set(Store(results).load_table()["status"]) == {"ok"}


def test_two_harnesses_on_one_store_never_run_a_seed_twice(vdir, results):
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "harness.cli", "run", "base", "--seeds", "2", "--variants", str(vdir), "--results", str(results)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    attempts = Store(results).attempts()
    assert sorted(a.record.seed for a in attempts) == [0, 1], outs
    assert all(a.record.status == "ok" for a in attempts)


def test_secrets_in_the_environment_never_reach_the_record(vdir, results):
    secret = "hf_SuperSecretValue_123456"
    r = harness("run", "base", "--variants", str(vdir), "--results", str(results), f"--extra-args=--seed-note {secret}",
                env={"HF_TOKEN": secret, "WANDB_API_KEY": secret})
    text = "".join(p.read_text() for p in results.rglob("run.json"))
    assert text and secret not in text
    assert "<HF_TOKEN redacted>" in text or "<WANDB_API_KEY redacted>" in text
