"""harness.preflight: `harness doctor` and the automatic pre-run checks."""

from __future__ import annotations

import json

import pytest

import fake_upstream as fu
from conftest import harness
from harness import preflight
from harness.errors import UserError
from harness.preflight import Check, GpuInfo, check_disk, check_gpus, require_ok, run_preflight, wandb_env

# GPU facts are injected (GpuInfo) because this machine has no GPU: the only mocked part.
H100x8 = GpuInfo(8, ("NVIDIA H100 80GB HBM3",) * 8, ((9, 0),) * 8)
A100x8 = GpuInfo(8, ("NVIDIA A100-SXM4-80GB",) * 8, ((8, 0),) * 8)


def test_gpu_checks():
    assert all(c.ok for c in check_gpus(H100x8, 8))
    count, hopper = check_gpus(GpuInfo(4, ("NVIDIA H100",) * 4, ((9, 0),) * 4), 8)
    assert not count.ok and "4 CUDA GPU(s)" in count.detail and "needs 8" in count.detail and hopper.ok
    count, hopper = check_gpus(A100x8, 8)
    assert count.ok and not hopper.ok and "sm80" in hopper.detail
    assert H100x8.hardware == "8xNVIDIA H100 80GB HBM3" and GpuInfo(0).hardware == "cpu"


def test_this_machine_real_checks(tmp_path):
    rep = run_preflight(8, tmp_path / "not-yet", min_free_gib=0)
    by = {c.name: c for c in rep.checks}
    assert by["gpus"].ok == (preflight.gpu_info().count >= 8)
    assert by["disk"].ok and str(tmp_path) in by["disk"].detail  # measured on the nearest existing folder
    assert by["torchrun"].ok and by["torchrun"].detail.endswith("torchrun")
    assert rep.env == {"WANDB_MODE": "disabled"}
    assert not check_disk(tmp_path, min_free_gib=1e9).ok


def test_require_ok_is_one_user_error():
    rep = run_preflight(8, gpus=A100x8, min_free_gib=0, data_check=Check("data", False, "run `harness data prepare x`"))
    assert not rep.ok and {c.name for c in rep.failures()} == {"hopper", "data"}
    with pytest.raises(UserError) as e:
        require_ok(rep)
    assert "hopper" in str(e.value) and "harness data prepare x" in str(e.value) and "\n" not in str(e.value)
    ok = run_preflight(8, gpus=H100x8, min_free_gib=0, data_check=Check("data", True, "verified"))
    require_ok(ok)  # nothing raised
    assert ok.to_dict()["ok"] is True


def test_wandb_mode(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_env(False) == {"WANDB_MODE": "disabled"} and wandb_env(True) == {"WANDB_MODE": "online"}
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_env(True) == {"WANDB_MODE": "offline"} and wandb_env(False) == {"WANDB_MODE": "disabled"}


def test_doctor_cli(tmp_path):
    fake = fu.build(tmp_path / "up")
    fu.write_variant(fake, "fake", fake.c1)
    e = {"HARNESS_CACHE": str(tmp_path / "c"), "HARNESS_DATA": str(tmp_path / "d"), "HARNESS_WORK": str(tmp_path / "w")}
    r = harness("doctor", "fake", "--variants", str(fake.variants), "--json", env=e)
    out = json.loads(r.stdout)
    checks = {c["name"]: c for c in out["checks"]}
    assert r.returncode == (0 if out["ok"] else 1)
    assert not checks["data"]["ok"] and "harness data prepare fake" in checks["data"]["detail"]
    assert checks["gpus"]["detail"].endswith("the run needs 2")
    r = harness("data", "prepare", "fake", "--variants", str(fake.variants), env=e)
    assert r.returncode == 0, r.stderr
    r = harness("doctor", "fake", "--variants", str(fake.variants), env=e)
    assert "data" in r.stdout and "fineweb_train.pt" in r.stdout and "check" in r.stdout
    bad = harness("doctor", "nope", "--variants", str(fake.variants), env=e)
    assert bad.returncode == 2 and "unknown variant" in bad.stderr
