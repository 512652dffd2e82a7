"""The launcher on real subprocesses: log capture, timeout, process groups, classification."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from harness.launch import ProcessResult, classify, run_process


def _script(tmp_path: Path, body: str) -> list[str]:
    p = tmp_path / "job.py"
    p.write_text(textwrap.dedent(body))
    return [sys.executable, str(p)]


def test_output_is_teed_to_log_and_callback(tmp_path):
    cmd = _script(tmp_path, """
        import sys
        print("Step 00000 | Val BPB: 1.5 | Val Loss: 4.0", flush=True)
        print("oops on stderr", file=sys.stderr, flush=True)
        print("line\\rwith carriage return", flush=True)
    """)
    seen: list[str] = []
    res = run_process(cmd, tmp_path, dict(os.environ), tmp_path / "log.txt", on_line=seen.append)
    assert res.returncode == 0 and not res.timed_out and not res.interrupted
    log = (tmp_path / "log.txt").read_text()
    assert "Val Loss: 4.0" in log and "oops on stderr" in log
    assert seen[0].startswith("Step 00000") and "oops on stderr" in seen


def test_timeout_kills_the_whole_process_group(tmp_path):
    # The child starts a grandchild that would outlive a naive kill of the direct child.
    marker = tmp_path / "grandchild.pid"
    cmd = _script(tmp_path, f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(marker)!r}, "w").write(str(p.pid))
        print("started", flush=True)
        time.sleep(60)
    """)
    t0 = time.monotonic()
    res = run_process(cmd, tmp_path, dict(os.environ), tmp_path / "log.txt", timeout_s=1.0)
    assert res.timed_out and time.monotonic() - t0 < 20
    gpid = int(marker.read_text())
    time.sleep(0.2)
    alive = os.path.exists(f"/proc/{gpid}") and "Z" not in open(f"/proc/{gpid}/stat").read().split(")")[1][:3]
    assert not alive
    assert classify(res, "started", False, False)[0] == "timeout"


def test_missing_executable_is_recorded_not_raised(tmp_path):
    res = run_process(["/nonexistent/torchrun"], tmp_path, dict(os.environ), tmp_path / "log.txt")
    assert res.launch_error and "could not start" in (tmp_path / "log.txt").read_text()
    assert classify(res, "", False, False)[0] == "crashed"


def _run(tmp_path: Path, body: str) -> tuple[ProcessResult, str]:
    log = tmp_path / f"log{len(list(tmp_path.glob('log*.txt')))}.txt"
    res = run_process(_script(tmp_path, body), tmp_path, dict(os.environ), log)
    return res, log.read_text()


def test_classification_of_real_endings(tmp_path):
    res, log = _run(tmp_path, "import sys; sys.exit(1)")
    assert classify(res, log, False, False) == ("failed", "exit code 1")
    res, log = _run(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert res.returncode == -signal.SIGKILL and classify(res, log, False, False)[0] == "killed"
    res, log = _run(tmp_path, "raise ValueError('bad shape')")
    st, err = classify(res, log, False, False)
    assert st == "crashed" and "ValueError: bad shape" in err
    res, log = _run(tmp_path, "print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB'); raise SystemExit(1)")
    assert classify(res, log, False, False)[0] == "oom"
    res, log = _run(tmp_path, "print('torch.distributed.DistBackendError: NCCL error in: ...'); raise SystemExit(1)")
    assert classify(res, log, False, False)[0] == "nccl"
    res, log = _run(tmp_path, "print('step 00001 (1.00%) | loss: nan')")
    assert classify(res, log, True, True)[0] == "diverged"
    res, log = _run(tmp_path, "print('hello')")
    assert classify(res, log, False, False) == ("failed", "exited 0 but the log has no validation loss")
    assert classify(res, log, True, False) == ("ok", None)


def test_child_dies_with_a_sigkilled_parent(tmp_path):
    # A harness killed with SIGKILL must not leave its training process running.
    marker = tmp_path / "child.pid"
    parent = _script(tmp_path, f"""
        import os, sys
        from pathlib import Path
        from harness.launch import run_process
        child = Path({str(tmp_path)!r}) / "child.py"
        child.write_text("import os, time\\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\\ntime.sleep(60)\\n")
        run_process([sys.executable, str(child)], Path({str(tmp_path)!r}), dict(os.environ), Path({str(tmp_path)!r}) / "c.log")
    """)
    p = subprocess.Popen(parent)
    for _ in range(100):
        if marker.exists() and marker.read_text():
            break
        time.sleep(0.1)
    cpid = int(marker.read_text())
    p.kill()
    p.wait()
    for _ in range(50):
        if not os.path.exists(f"/proc/{cpid}"):
            break
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{cpid}")


def test_secret_values_printed_by_the_script_never_reach_the_log(tmp_path):
    secret = "hf_abcDEF123456789"
    cmd = _script(tmp_path, "import os; print('token is', os.environ['HF_TOKEN'], flush=True)")
    seen: list[str] = []
    run_process(cmd, tmp_path, {**os.environ, "HF_TOKEN": secret}, tmp_path / "log.txt", on_line=seen.append)
    log = (tmp_path / "log.txt").read_text()
    assert secret not in log and "token is <HF_TOKEN redacted>" in log
    assert secret not in "".join(seen)


def test_sigterm_to_harness_run_records_interrupted_with_partial_log(tmp_path):
    """`harness run` stopped by SIGTERM (Ctrl-C is the same path with SIGINT): the run's whole process
    group goes, the record says interrupted, the partial log stays, the exit code is 130."""
    import json

    from conftest import ROOT, write_variant

    vdir = tmp_path / "variants"
    vdir.mkdir()
    write_variant(vdir, "long", ["--preset", "smoke", "--num-epochs", "200", "--threads", "1"])  # runs until stopped
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness.cli", "run", "long", "--track", "mini", "--variants", str(vdir),
           "--results", str(results)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        logs = []
        while time.monotonic() < deadline and not any("step" in p.read_text() for p in logs):
            time.sleep(0.2)
            logs = list(results.glob("long/*/train.log"))
        assert logs, "the run never started training"
        run_dir = logs[0].parent
        assert _procs_in(run_dir), "the trainer should be running in its run folder"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["status"] == "interrupted" and "Ctrl-C / SIGTERM" in rec["error"]
    assert "step" in (run_dir / "train.log").read_text()  # the partial log is kept
    assert "remaining runs not started" in out
    assert not _procs_in(run_dir), "trainer processes left behind"


def _procs_in(folder: Path) -> list[str]:
    """Pids of live processes whose working directory is `folder` (a mini run's cwd is its run folder)."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(d / "cwd") == str(folder):
                out.append(d.name)
        except OSError:
            continue
    return out
