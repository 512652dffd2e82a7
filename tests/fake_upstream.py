"""A small fake of the upstream slowrun repository, built as a real git history in a test folder.

History (each a real commit):
  c1  prepare_data.py (publishes EXPECTED_HASHES) + train.py with upstream's hard-coded seeds
  c2  train.py changes the line `muon.patch` touches: the patch applies to c1, not to c2
  pr  a commit reachable only from refs/pull/7/head (like PR #78/#79 upstream)
The fake train.py runs under torchrun (gloo on CPU), prints upstream's log format, and fails on
request (--mode exit1|crash|nan|oom|sigkill|nccl|hang) so every failure class is produced for real.
"""

from __future__ import annotations

import hashlib
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

TRAIN_BYTES = b"fake fineweb train tokens\n" * 64
VAL_BYTES = b"fake fineweb val tokens\n" * 16

PREPARE_DATA = textwrap.dedent(
    f'''\
    """Fake prepare_data.py: writes the two data files into --local_dir (default fineweb_data)."""
    import argparse
    import os

    EXPECTED_HASHES = {{
        "fineweb_val.pt": "{hashlib.sha256(VAL_BYTES).hexdigest()}",
        "fineweb_train.pt": "{hashlib.sha256(TRAIN_BYTES).hexdigest()}",
    }}

    if __name__ == "__main__":
        parser = argparse.ArgumentParser()
        parser.add_argument("--local_dir", type=str, default="fineweb_data")
        args = parser.parse_args()
        os.makedirs(args.local_dir, exist_ok=True)
        with open(os.path.join(args.local_dir, "fineweb_train.pt"), "wb") as f:
            f.write({TRAIN_BYTES!r})
        with open(os.path.join(args.local_dir, "fineweb_val.pt"), "wb") as f:
            f.write({VAL_BYTES!r})
        print("done")
    '''
)

TRAIN_PY = textwrap.dedent(
    '''\
    import argparse
    import math
    import os
    import signal
    import sys
    import time

    import torch
    import torch.distributed as dist

    parser = argparse.ArgumentParser()
    parser.add_argument("--num-epochs", type=int, default=2)
    parser.add_argument("--mode", type=str, default="ok")
    args = parser.parse_args()

    def get_dist_info():
        if all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
            return True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        return False, 0, 0, 1

    def print0(s="", **kw):
        if int(os.environ.get("RANK", 0)) == 0:
            print(s, **kw)

    _script_start = time.time()
    ddp, ddp_rank, ddp_local_rank, ddp_world_size = get_dist_info()
    master_process = ddp_rank == 0
    torch.manual_seed(42)

    if ddp and torch.cuda.is_available():
        torch.cuda.manual_seed(42)
    if ddp:
        dist.init_process_group(backend="gloo")

    # what the seed controls: weight init. Each rank writes its draw so tests can compare ranks.
    w = torch.rand(4)
    with open(f"seed_check_rank{ddp_rank}.txt", "w") as f:
        f.write(" ".join(f"{x:.6f}" for x in w.tolist()))
    g = torch.Generator()
    g.manual_seed(1)  # data order (R3): must stay untouched
    data = open(os.path.join("fineweb_data", "fineweb_train.pt"), "rb").read()
    print0(f"read {len(data)} bytes of training data")
    print0(f"Training for {args.num_epochs} epoch(s) (~{args.num_epochs * 3} steps estimated)")
    print0(f"Step 00000 | Val BPB: 1.500000 | Val Loss: 4.600000")
    step = 0
    num_iterations = args.num_epochs * 3
    min_val = 4.6
    for epoch in range(1, args.num_epochs + 1):
        print0(f"Starting epoch {epoch}")
        for _ in range(3):
            step += 1
            t = torch.ones(1) * (ddp_rank + 1)
            if ddp:
                dist.all_reduce(t)
            loss = 4.0 - 0.1 * step + float(w[0]) * 0.01
            if args.mode == "nan" and step >= 2:
                loss = float("nan")
            if step == 2 and args.mode == "exit1" and master_process:
                print0("giving up", flush=True)
                sys.exit(1)
            if step == 2 and args.mode == "crash" and master_process:
                raise ValueError("fake bug in the training script")
            if step == 2 and args.mode == "oom" and master_process:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            if step == 2 and args.mode == "sigkill" and ddp_rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            if step == 2 and args.mode == "nccl" and ddp_rank == 1:
                os._exit(0)  # a peer vanishing mid-collective: rank 0 gets the backend's own error
            if args.mode == "hang" and step == 2:
                time.sleep(3600)
            pct = 100 * step / num_iterations
            print0(f"step {step:05d} ({pct:.2f}%) | loss: {loss:.6f} | dt: 10.00ms | tok/sec: 1,048,576 | bf16_mfu: 0.00%")
        val = 4.0 - 0.2 * epoch
        min_val = min(min_val, val)
        print0(f"Step {step:05d} | Epoch {epoch} | Val BPB: {val / 3:.6f} | Val Loss: {val:.6f}")
    print0(f"Starting epoch {args.num_epochs + 1}")
    print0(f"Peak memory: 123.45 MiB")
    print0(f"Total training time: 0.01m")
    print0(f"Final train loss: {loss:.6f}")
    print0(f"Min val BPB: {min_val / 3:.6f}")
    print0(f"Min val Loss: {min_val:.6f}")
    total_wall_time = time.time() - _script_start
    print0(f"Total wall time: {total_wall_time:.2f}s ({total_wall_time/60:.2f}m)")
    if ddp:
        dist.destroy_process_group()
    '''
)

MUON_LINE = "        loss = 4.0 - 0.1 * step + float(w[0]) * 0.01\n"
MUON_LINE_C2 = "        loss = 4.0 - 0.11 * step + float(w[0]) * 0.01\n"


def git(cwd: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
        "HOME": str(cwd), "PATH": "/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM": "1",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class FakeUpstream:
    origin: Path  # a normal repository standing in for github.com/qlabs-eng/slowrun
    c1: str
    c2: str
    pr: str  # only reachable from refs/pull/7/head
    patch: Path  # applies to c1, not to c2
    patch2: Path  # applies after `patch` (depends on it)
    variants: Path  # a variants folder with patches/


def _commit(repo: Path, files: dict[str, str], msg: str) -> str:
    for name, text in files.items():
        p = repo / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        git(repo, "add", name)
    git(repo, "commit", "-q", "-m", msg)
    return git(repo, "rev-parse", "HEAD")


def build(tmp: Path) -> FakeUpstream:
    origin = tmp / "origin"
    origin.mkdir(parents=True)
    git(origin, "init", "-q", "-b", "main")
    c1 = _commit(origin, {"prepare_data.py": PREPARE_DATA, "train.py": TRAIN_PY}, "c1")
    # the patch: a real diff made by git against c1
    (origin / "train.py").write_text(TRAIN_PY.replace(MUON_LINE, MUON_LINE + "        loss = loss * 1.0  # muon-r\n"))
    patch_text = git(origin, "diff", "--no-color") + "\n"
    git(origin, "add", "train.py")  # stage it so the second diff is relative to the patched file
    patched = (origin / "train.py").read_text()
    (origin / "train.py").write_text(patched.replace("# muon-r", "# muon-r, second patch"))
    patch2_text = git(origin, "diff", "--no-color") + "\n"
    git(origin, "checkout", "-q", "HEAD", "--", "train.py")
    c2 = _commit(origin, {"train.py": TRAIN_PY.replace(MUON_LINE, MUON_LINE_C2)}, "c2: touches the patched line")
    # a PR commit reachable only from refs/pull/7/head
    git(origin, "checkout", "-q", "-b", "pr7", c1)
    pr = _commit(origin, {"README.md": "pr 7\n"}, "pr7")
    git(origin, "update-ref", "refs/pull/7/head", pr)
    git(origin, "checkout", "-q", "main")
    git(origin, "branch", "-q", "-D", "pr7")

    variants = tmp / "variants"
    (variants / "patches").mkdir(parents=True)
    patch = variants / "patches" / "muon.patch"
    patch.write_text(patch_text)
    patch2 = variants / "patches" / "second.patch"  # expressed against the tree after `patch`
    patch2.write_text(patch2_text)
    return FakeUpstream(origin, c1, c2, pr, patch, patch2, variants)


def write_variant(
    fake: FakeUpstream,
    name: str,
    commit: str,
    patches: tuple[str, ...] = (),
    nproc: int = 2,
    args: tuple[str, ...] = (),
    seed_flag: str | None = None,
    repo: str | None = None,
) -> Path:
    lines = [
        f'name = "{name}"',
        f'description = "fake upstream variant {name}"',
        "[track]",
        'name = "two_hour"',
        "[upstream]",
        f'repo = "{repo or fake.origin}"',
        f'commit = "{commit}"',
        'script = "train.py"',
        f"args = [{', '.join(repr(a).replace(chr(39), chr(34)) for a in args)}]",
        f"patches = [{', '.join(chr(34) + p + chr(34) for p in patches)}]",
        f"nproc_per_node = {nproc}",
    ]
    if seed_flag:
        lines.append(f'seed_flag = "{seed_flag}"')
    lines += ["[mini]", "args = []"]
    path = fake.variants / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
