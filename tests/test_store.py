"""The results store: atomic writes, one row per run, stale runs, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.record import EpochMetric, Metrics, RunRecord
from harness.store import Store, atomic_write_text, owner_info


def _rec(run_id: str, key: str = "k" * 16, status: str = "ok", seed: int = 0, loss: float | None = 3.0, **kw) -> RunRecord:
    m = Metrics(epochs=[EpochMetric(1, 10, 3.5, 1.1), EpochMetric(2, 20, loss or 3.4, 1.0)], min_val_loss=loss, final_val_loss=loss)
    return RunRecord(run_id=run_id, variant="v", track="mini", seed=seed, run_key=key, status=status, metrics=m,
                     provenance={"config_key": "c" * 8, "hardware": "cpu"}, **kw)


def test_atomic_write_keeps_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    atomic_write_text(path, "old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left behind


def test_record_round_trip_and_table(tmp_path):
    store = Store(tmp_path)
    rid, d = store.new_run_dir("v", "mini", 0, "k" * 16)
    assert rid == "mini-seed0-kkkkkkkk-a1"
    store.write(d, _rec(rid))
    back = store.runs()[0].record
    assert back.metrics.epochs[1] == EpochMetric(2, 20, 3.0, 1.0) and back.metrics.min_val_loss == 3.0
    df = store.load_table()
    assert list(df["min_val_loss"]) == [3.0] and df.loc[0, "n_epochs"] == 2 and df.loc[0, "hardware"] == "cpu"
    ep = store.load_epochs()
    assert list(ep["epoch"]) == [1, 2] and list(ep["val_loss"]) == [3.5, 3.0]


def test_one_row_per_run_key_complete_attempt_wins(tmp_path):
    store = Store(tmp_path)
    rid1, d1 = store.new_run_dir("v", "mini", 0, "k" * 16)
    store.write(d1, _rec(rid1, status="failed", loss=None))
    rid2, d2 = store.new_run_dir("v", "mini", 0, "k" * 16)
    store.write(d2, _rec(rid2, loss=2.9))
    rid3, d3 = store.new_run_dir("v", "mini", 0, "k" * 16)
    store.write(d3, _rec(rid3, status="crashed", loss=None))
    assert [rid1, rid2, rid3] == ["mini-seed0-kkkkkkkk-a1", "mini-seed0-kkkkkkkk-a2", "mini-seed0-kkkkkkkk-a3"]
    runs = store.runs()
    assert len(runs) == 1 and runs[0].record.run_id == rid2
    assert len(store.attempts()) == 3  # nothing is deleted


def test_corrupt_or_foreign_json_does_not_break_loading(tmp_path):
    store = Store(tmp_path)
    rid, d = store.new_run_dir("v", "mini", 0, "k" * 16)
    store.write(d, _rec(rid))
    bad = tmp_path / "v" / "junk"
    bad.mkdir()
    (bad / "run.json").write_text("{ not json")
    assert len(store.load_table()) == 1


def test_running_record_of_a_dead_process_is_stale(tmp_path):
    store = Store(tmp_path)
    rid, d = store.new_run_dir("v", "mini", 0, "k" * 16)
    alive = _rec(rid, status="running", loss=None, executor=owner_info())
    assert not Store.is_stale(alive)
    dead = _rec(rid, status="running", loss=None, executor={**owner_info(), "pid_start": -1})
    assert Store.is_stale(dead)
    store.write(d, dead)
    assert store.load_table().loc[0, "status"] == "stale"


def test_unwritable_results_folder_is_a_user_error(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError, match="is not writable"):
        Store(target / "results").ensure_writable()


def _claimer(root: str, n: int, q) -> None:
    store = Store(root)
    got = []
    for i in range(n):
        with store.lock():
            rid, d = store.new_run_dir("v", "mini", i % 3, f"{i % 3:016d}")
            store.write(d, _rec(rid, key=f"{i % 3:016d}", seed=i % 3))
            got.append(rid)
    q.put(got)


def test_concurrent_writers_never_share_a_folder(tmp_path):
    q = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=_claimer, args=(str(tmp_path), 20, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    ids = [rid for _ in procs for rid in q.get(timeout=10)]
    assert len(ids) == 80 and len(set(ids)) == 80
    attempts = Store(tmp_path).attempts()
    assert len(attempts) == 80
    assert all(json.loads((a.path / "run.json").read_text())["run_id"] == a.path.name for a in attempts)
    assert len(Store(tmp_path).runs()) == 3


@pytest.mark.parametrize("secret", ['pa"ss\\word-123', "pässwörd-123", "plain-secret-123"])
def test_secrets_with_json_escaped_characters_never_reach_run_json(tmp_path, monkeypatch, secret):
    # json.dumps escapes ", \ and non-ASCII; redacting the encoded text would miss such a secret.
    monkeypatch.setenv("MY_PASSWORD", secret)
    store = Store(tmp_path)
    rid, d = store.new_run_dir("v", "mini", 0, "k" * 16)
    rec = _rec(rid, error=f"login with {secret} failed")
    rec.provenance["argv"] = ["--pw", secret]
    store.write(d, rec)
    back = json.loads((d / "run.json").read_text())
    assert secret not in json.dumps(back, ensure_ascii=False) and secret not in (d / "run.json").read_text()
    assert back["error"] == "login with <MY_PASSWORD redacted> failed" and back["provenance"]["argv"][1] == "<MY_PASSWORD redacted>"
