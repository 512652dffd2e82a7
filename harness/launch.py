"""Run one training command: its own process group, output teed to the log, timeout, signals.

Also `classify`: turn how a process ended (exit code, signal, timeout, its log) into a run status.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.record import secret_values

TERM_GRACE_S = 10.0  # how long a process group gets between SIGTERM and SIGKILL


@dataclass
class ProcessResult:
    returncode: int | None  # negative = killed by that signal (Popen convention)
    duration_s: float
    timed_out: bool = False
    interrupted: bool = False  # the harness got SIGINT/SIGTERM and stopped the run
    launch_error: str | None = None  # the command could not be started at all


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the harness dies (even by SIGKILL), so no run is orphaned."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _kill_group(proc: subprocess.Popen, grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the whole group (torchrun forwards it to its workers), then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_process(
    cmd: list[str],
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    on_line: Callable[[str], None] | None = None,
    timeout_s: float | None = None,
) -> ProcessResult:
    """Run `cmd`, append stdout+stderr to `log_path` line by line, call `on_line` for each line.

    SIGINT/SIGTERM received by the harness while the run is going stop the run's whole process
    group and mark the result `interrupted` (only when called from the main thread, where Python
    allows installing handlers).
    """
    start = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab", buffering=0) as log:
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: we can stop torchrun and all its workers
                preexec_fn=_die_with_parent,
            )
        except OSError as e:
            msg = f"could not start {cmd[0]}: {e.strerror}"
            log.write((msg + "\n").encode())
            return ProcessResult(None, time.monotonic() - start, launch_error=msg)

        secrets = [(v.encode(), p.encode()) for v, p in secret_values(env)]
        state = {"timed_out": False, "interrupted": False}

        def stop(reason: str) -> None:
            state[reason] = True
            threading.Thread(target=_kill_group, args=(proc,), daemon=True).start()

        timer = threading.Timer(timeout_s, stop, args=("timed_out",)) if timeout_s else None
        if timer:
            timer.daemon = True
            timer.start()

        old_handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(sig, lambda *_: stop("interrupted"))
        try:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                for value, placeholder in secrets:  # a script that echoes a token must not store it
                    if value in raw:
                        raw = raw.replace(value, placeholder)
                log.write(raw)
                if on_line is not None:
                    on_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
            proc.wait()
        finally:
            if timer:
                timer.cancel()
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
    return ProcessResult(
        proc.returncode, time.monotonic() - start, timed_out=state["timed_out"], interrupted=state["interrupted"]
    )


# ----------------------------------------------------------------------------- classification

# Checked in order; the first match names the failure. Patterns are upstream/PyTorch's own messages.
_FAILURE_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("oom", re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|std::bad_alloc")),
    (
        "nccl",
        re.compile(
            r"NCCL (?:error|WARN)|ncclInternalError|ncclSystemError|ProcessGroupNCCL|DistBackendError"
            r"|c10d.*(?:timed out|Timeout|error)|Connection (?:reset|closed) by peer|Gloo.*(?:error|timeout)",
            re.I,
        ),
    ),
]
_SIGKILL_IN_LOG = re.compile(r"exitcode\s*:\s*-9\b|Signal 9 \(SIGKILL\)")
# torchrun's failure summary names the first rank that failed; peers then fail with secondary
# errors (gloo/NCCL "Connection closed by peer"), so only the root rank's own lines are trusted.
_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)
_RANK_LINE = re.compile(r"^\[rank(\d+)\]:\s?(.*)$", re.M)


def _root_rank_text(log_text: str) -> tuple[str, str | None]:
    """(text to search for the cause, a ' (rank N)' note): the root-cause rank's `[rankN]:` lines
    under torchrun, else the whole log."""
    m = _ROOT_CAUSE.search(log_text)
    if not m:
        return log_text, None
    rank = m.group(1)
    own = [ln for r, ln in _RANK_LINE.findall(log_text) if r == rank]
    return "\n".join(own), f"rank {rank}"


def classify(result: ProcessResult, log_text: str, has_metric: bool, diverged: bool) -> tuple[str, str | None]:
    """Status and a one-line reason for a finished process."""
    if result.launch_error:
        return "crashed", result.launch_error
    if result.interrupted:
        return "interrupted", "stopped by the harness (Ctrl-C / SIGTERM)"
    if result.timed_out:
        return "timeout", f"exceeded the harness time limit after {result.duration_s:.0f}s"
    if diverged:
        return "diverged", "loss became NaN/inf"
    rc = result.returncode
    if rc == 0:
        return ("ok", None) if has_metric else ("failed", "exited 0 but the log has no validation loss")
    # A SIGKILLed worker is the cause even when a peer's collective error was observed first.
    if rc == -signal.SIGKILL or rc == 128 + signal.SIGKILL or _SIGKILL_IN_LOG.search(log_text):
        return "killed", f"killed by SIGKILL (exit {rc}); out of host memory or killed by the scheduler?"
    focus, rank = _root_rank_text(log_text)
    for status, pat in _FAILURE_PATTERNS:
        m = pat.search(focus)
        if m:
            return status, f"exit code {rc}{' on ' + rank if rank else ''}: {m.group(0)}"
    if rc is not None and rc < 0:
        return "crashed", f"died on signal {signal.Signals(-rc).name}"
    last_err = next((ln for ln in reversed(focus.splitlines()) if re.match(r"[\w.]*(Error|Exception)\b", ln)), None)
    if last_err:
        return "crashed", f"exit code {rc}: {last_err.strip()[:200]}"
    return "failed", f"exit code {rc}"
