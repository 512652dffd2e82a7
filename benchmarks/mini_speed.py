"""Mini-track speed per variant at the default preset (a benchmark that prints figures, not a test).

    .venv/bin/python benchmarks/mini_speed.py [--steps 20] [--threads 2] [--full]

Prints ms/step and tokens/s for each variant (forward + backward + optimizer step on real corpus
batches), the measured cost ratio of interleaved IHA to baseline next to the ratio the FLOP
estimates predict, and with --full the wall time of one complete training run per variant
(`python -m harness.mini.train`), which is what `harness run VARIANT --seeds N` pays per seed.
The machine's load average is printed too: on a shared machine every timing is an upper bound.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.mini.data import TrainLoader, build_data  # noqa: E402
from harness.mini.model import GPT, attention_flops_per_token  # noqa: E402
from harness.mini.train import build_parser, make_optimizer, resolve  # noqa: E402

VARIANTS = {  # the [mini] args of the four variants
    "baseline": [],
    "fusion_iha": ["--attn", "fusion"],
    "interleaved_iha": ["--attn", "interleaved", "--iha-p", "2"],
    "interleaved_muoneq": ["--attn", "interleaved", "--iha-p", "2", "--muoneq-r"],
}


def time_steps(args: list[str], steps: int, warmup: int = 3) -> tuple[float, GPT, int]:
    """Median seconds per optimizer step, the model, and tokens per step."""
    s = resolve(build_parser().parse_args(args))
    d = build_data(s.train_docs, s.val_docs)
    s.model.vocab_size = d.vocab_size
    torch.manual_seed(0)
    model = GPT(s.model)
    opt = make_optimizer(model, s)
    loader = TrainLoader(d.train, s.batch_size, s.model.seq_len, "cpu", log=lambda _: None)
    times = []
    for i in range(warmup + steps):
        x, y, _ = next(loader)
        t0 = time.perf_counter()
        loss, _ = model(x, y)
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], model, s.batch_size * s.model.seq_len


def full_run(args: list[str], threads: int) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "harness.mini.train", *args, "--threads", str(threads)],
                       cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    m = re.search(r"^Min val Loss: (\S+)$", p.stdout, re.M)
    return wall, (m.group(1) if m else f"rc={p.returncode}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="also time one complete default-preset run per variant")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"threads={a.threads}  load average at start: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} CPUs)")
    print(f"{'variant':<20} {'ms/step':>9} {'tok/s':>9} {'attn GFLOP/step':>16} {'total GFLOP/step':>17}")
    res = {}
    for name, args in VARIANTS.items():
        dt, model, tps = time_steps(args, a.steps)
        res[name] = (dt, model, tps)
        attn = attention_flops_per_token(model.config) * tps / 1e9
        total = model.estimate_flops() * tps / 1e9
        print(f"{name:<20} {dt*1000:9.1f} {int(tps/dt):9,d} {attn:16.3f} {total:17.3f}", flush=True)
    base, iha = res["baseline"], res["interleaved_iha"]
    measured = iha[0] / base[0]
    attn_ratio = attention_flops_per_token(iha[1].config) / attention_flops_per_token(base[1].config)
    total_ratio = iha[1].estimate_flops() / base[1].estimate_flops()
    print(f"interleaved_iha / baseline cost: measured {measured:.2f}x | attention FLOPs predict {attn_ratio:.2f}x "
          f"| total FLOPs (6N + attention) predict {total_ratio:.2f}x")
    if a.full:
        print(f"\nfull default-preset run per variant (one seed, --threads {a.threads}):")
        for name, args in VARIANTS.items():
            wall, loss = full_run(args, a.threads)
            print(f"{name:<20} {wall:7.1f} s   min val loss {loss}   load avg {os.getloadavg()[0]:.2f}", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
