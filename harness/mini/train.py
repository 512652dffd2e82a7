"""Mini-track trainer: `python -m harness.mini.train [flags]`, one process, CPU by default.

Prints slowrun's two_hour/train.py log lines (initial val, `Starting epoch`, step lines, per-epoch
val, summary) so one parser serves both tracks. Exit codes: 0 ok, 2 bad flags/shapes (one
`error:` line on stderr, before any training), 3 diverged (non-finite training or val loss).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from dataclasses import dataclass

import torch

from harness.mini.data import MiniData, TrainLoader, build_data, val_batches
from harness.mini.model import GPT, ConfigError, GPTConfig, count_params, describe, validate_config
from harness.mini.optim import MuonAdamW

# Presets. `default`: the real mini config (one seed of any variant in <= ~40 s on 2 CPU cores).
# `smoke`: a tiny config for tests (~1-3 s). Any model-size flag overrides its preset value.
PRESETS: dict[str, dict] = {
    "default": dict(n_layer=4, n_head=4, n_embd=64, seq_len=128, batch_size=8, num_epochs=4,
                    train_docs=320, val_docs=50, matrix_lr=0.03, adam_lr=0.008, embed_lr=0.3, mix_lr=0.02,
                    weight_decay=0.0, dropout=0.0),
    "smoke": dict(n_layer=2, n_head=2, n_embd=32, seq_len=32, batch_size=8, num_epochs=2,
                  train_docs=30, val_docs=6, matrix_lr=0.03, adam_lr=0.01, embed_lr=0.3, mix_lr=0.02,
                  weight_decay=0.0, dropout=0.0),
}
H100_BF16_PEAK_FLOPS = 989e12  # for the bf16_mfu column on CUDA; CPU runs print 0.00%
WARMDOWN_RATIO = 0.2  # linear LR decay over the last 20% of steps, as upstream
LOG_LINES = 150  # at most about this many step lines per run


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would print usage too)
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m harness.mini.train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--attn", choices=["standard", "fusion", "interleaved"], default="standard")
    p.add_argument("--iha-p", type=int, default=2, help="pseudo-heads per head (interleaved IHA)")
    p.add_argument("--iha-rope", choices=["token", "pseudo"], default="token",
                   help="rotary positions for pseudo-tokens: shared by a token's P pseudo-tokens, or one per pseudo-token")
    p.add_argument("--muoneq-r", action="store_true", help="MuonEq-R row normalisation before orthogonalisation")
    p.add_argument("--mtp-weight", type=float, default=0.3, help="MTP aux loss weight (0 disables)")
    p.add_argument("--num-epochs", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps (0 = no cap)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    for name in ("n-layer", "n-head", "n-embd", "seq-len", "batch-size", "short-window", "train-docs", "val-docs"):
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--window-pattern", default="SSSL")
    p.add_argument("--lr", type=float, default=None, help="multiplies every learning rate (default 1)")
    for name in ("matrix-lr", "adam-lr", "embed-lr", "mix-lr", "weight-decay", "dropout"):
        p.add_argument(f"--{name}", type=float, default=None, help="overrides the preset value")
    p.add_argument("--ns-method", choices=["polar_express", "newton_schulz"], default="polar_express")
    return p


@dataclass
class Settings:
    """The resolved run settings: preset values overridden by any flag given."""

    model: GPTConfig
    num_epochs: int
    max_steps: int
    batch_size: int
    train_docs: int
    val_docs: int
    matrix_lr: float
    adam_lr: float
    embed_lr: float
    mix_lr: float
    weight_decay: float
    muoneq_r: bool
    ns_method: str
    seed: int
    device: str


def resolve(args: argparse.Namespace) -> Settings:
    """Apply the preset, then the flags; raise ConfigError on anything impossible."""
    pre = dict(PRESETS[args.preset])
    for key in pre:
        val = getattr(args, key, None)
        if val is not None:
            pre[key] = val
    scale = 1.0 if args.lr is None else args.lr  # --lr scales every learning rate at once
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"--lr {args.lr} must be a finite number > 0")
    for name in ("matrix_lr", "adam_lr", "embed_lr", "mix_lr", "weight_decay"):  # nan/negatives would train silently wrong
        if not (math.isfinite(pre[name]) and pre[name] >= 0):
            raise ConfigError(f"--{name.replace('_', '-')} {pre[name]} must be a finite number >= 0")
    for name in ("num_epochs", "batch_size", "train_docs", "val_docs"):
        if pre[name] < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (got {pre[name]})")
    if args.max_steps < 0:
        raise ConfigError(f"--max-steps must be >= 0 (got {args.max_steps}; 0 = no cap)")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1 (got {args.threads})")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    model = GPTConfig(seq_len=pre["seq_len"], n_layer=pre["n_layer"], n_head=pre["n_head"], n_embd=pre["n_embd"],
                      window_pattern=args.window_pattern, short_window=args.short_window, attn=args.attn,
                      iha_p=args.iha_p, iha_rope=args.iha_rope, dropout=pre["dropout"], mtp_weight=args.mtp_weight)
    validate_config(model)
    return Settings(model=model, num_epochs=pre["num_epochs"], max_steps=args.max_steps, batch_size=pre["batch_size"],
                    train_docs=pre["train_docs"], val_docs=pre["val_docs"], matrix_lr=pre["matrix_lr"] * scale,
                    adam_lr=pre["adam_lr"] * scale, embed_lr=pre["embed_lr"] * scale, mix_lr=pre["mix_lr"] * scale,
                    weight_decay=pre["weight_decay"], muoneq_r=args.muoneq_r, ns_method=args.ns_method,
                    seed=args.seed, device=device)


def check_data_fits(s: Settings) -> MiniData:
    """Reject a batch the training split cannot fill, or a val split shorter than one sequence,
    before anything is printed (the loader and the bpb division would otherwise fail mid-run)."""
    data = build_data(s.train_docs, s.val_docs)
    T = s.model.seq_len
    n_train, n_val = (len(data.train) - 1) // T, (len(data.val) - 1) // T
    if n_train < s.batch_size:
        raise ConfigError(f"one batch needs {s.batch_size} sequences of {T} tokens but --train-docs {s.train_docs} "
                          f"gives {n_train}; lower --batch-size or --seq-len, or raise --train-docs")
    if n_val < 1:
        raise ConfigError(f"the val split ({len(data.val)} tokens, --val-docs {s.val_docs}) is shorter than one "
                          f"sequence of {T} tokens; raise --val-docs or lower --seq-len")
    return data


def make_optimizer(model: GPT, s: Settings) -> MuonAdamW:
    g = model.param_groups()
    groups = [
        dict(kind="adamw", params=g["embed"], lr=s.embed_lr, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0),
        dict(kind="adamw", params=g["head"], lr=s.adam_lr, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0),
        dict(kind="muon", params=g["matrix"], lr=s.matrix_lr, momentum=0.95, weight_decay=s.weight_decay,
             muoneq_r=s.muoneq_r, ns_steps=5, ns_method=s.ns_method),
    ]
    if g["mix"]:  # IHA mixing tensors: small, not matrices in Muon's sense -> AdamW, as upstream
        groups.append(dict(kind="adamw", params=g["mix"], lr=s.mix_lr, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0))
    opt = MuonAdamW(groups)
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
    return opt


@torch.no_grad()
def evaluate(model: GPT, data: MiniData, batch_size: int, device: str) -> tuple[float, float]:
    """(val bits per byte, val loss in nats/token) over the whole val split, LM loss only."""
    was_training = model.training
    model.eval()
    tb = data.token_bytes.to(device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    ntok = 0
    for x, y in val_batches(data.val, batch_size, model.config.seq_len, device):
        loss = model(x, y, loss_reduction="none").view(-1).double()
        yb = tb[y.reshape(-1)]
        nats += (loss * (yb > 0)).sum()  # bpb: special tokens (0 bytes) excluded, as upstream
        nbytes += yb.sum()
        total_loss += loss.sum()
        ntok += loss.numel()
    model.train(was_training)
    return nats.item() / (math.log(2) * nbytes.item()), total_loss.item() / ntok


def _peak_memory_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1024 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(s: Settings, log=print) -> int:
    """Run one training; returns the process exit code (0 ok, 3 diverged)."""
    wall_start = time.time()
    device = s.device
    torch.manual_seed(s.seed)  # init, dropout and any other training randomness; never the data order
    if device == "cuda":
        torch.cuda.manual_seed_all(s.seed)
    data = build_data(s.train_docs, s.val_docs)
    mc = s.model
    mc.vocab_size = data.vocab_size
    model = GPT(mc).to(device)
    opt = make_optimizer(model, s)
    loader = TrainLoader(data.train, s.batch_size, mc.seq_len, device, log=log)
    num_iterations = round(loader.tokens_per_epoch * s.num_epochs / (s.batch_size * mc.seq_len))
    total_steps = min(num_iterations, s.max_steps) if s.max_steps else num_iterations
    tokens_per_step = s.batch_size * mc.seq_len
    flops_per_token = model.estimate_flops()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    log(f"Mini track | device: {device} | threads: {torch.get_num_threads()} | seed: {s.seed} | torch {torch.__version__}")
    log(f"Model: {describe(mc)} | params: {count_params(model):,}")
    log(f"Optimizer: Muon lr={s.matrix_lr} ({s.ns_method}, MuonEq-R={'on' if s.muoneq_r else 'off'}) "
        f"+ AdamW embed_lr={s.embed_lr} head_lr={s.adam_lr} mix_lr={s.mix_lr} | weight_decay={s.weight_decay}")
    log(f"Mini data sha256: {data.sha256} | train tokens: {len(data.train)} | val tokens: {len(data.val)}")
    log(f"Training for {s.num_epochs} epoch(s) (~{num_iterations} steps estimated)")
    if s.max_steps:
        log(f"Step cap: {s.max_steps}")

    def lr_multiplier(it: int) -> float:  # constant, then linear warmdown to 0 (upstream's schedule)
        warmdown = max(1, round(WARMDOWN_RATIO * total_steps))
        return 1.0 if it <= total_steps - warmdown else max(0.0, (total_steps - it) / warmdown)

    def muon_momentum(it: int) -> float:  # 0.85 -> 0.95 ramp (upstream: over the first 300 steps)
        frac = min(it / max(1, total_steps // 10), 1.0)
        return 0.85 + 0.10 * frac

    step = 0
    with autocast:
        val_bpb, val_loss = evaluate(model, data, s.batch_size, device)
    log(f"Step {step:05d} | Val BPB: {val_bpb:.6f} | Val Loss: {val_loss:.6f}")
    if not math.isfinite(val_loss):
        log(f"Diverged: non-finite loss at step {step:05d}")
        return 3
    min_val_bpb, min_val_loss = val_bpb, val_loss
    log("Starting epoch 1")
    x, y, epoch = next(loader)
    current_epoch = 1
    smooth, total_training_time, timed_steps = 0.0, 0.0, 0
    log_every = max(1, math.ceil(total_steps / LOG_LINES))
    model.train()
    while current_epoch <= s.num_epochs:
        t0 = time.time()
        with autocast:
            loss, _ = model(x, y)
        loss_f = loss.item()
        if not math.isfinite(loss_f):
            log(f"Diverged: non-finite loss at step {step + 1:05d}")
            return 3
        loss.backward()
        x, y, epoch = next(loader)  # prefetch: prints `Starting epoch k` at the wrap, as upstream
        lrm = lr_multiplier(step)
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum(step)
        opt.step()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        step += 1
        smooth = 0.9 * smooth + 0.1 * loss_f
        debiased = smooth / (1 - 0.9**step)
        if step > 1:  # the first step pays one-off allocation costs; upstream skips warm-up steps too
            total_training_time += dt
            timed_steps += 1
        if step % log_every == 0 or step == 1 or epoch != current_epoch or step == s.max_steps:
            pct = 100 * step / num_iterations
            tok_per_sec = int(tokens_per_step / dt)
            mfu = 100 * flops_per_token * tokens_per_step / dt / H100_BF16_PEAK_FLOPS if device == "cuda" else 0.0
            eta_str = f" | eta: {(num_iterations - step) * total_training_time / timed_steps / 60:.1f}m" if timed_steps > 0 else ""
            log(f"step {step:05d} ({pct:.2f}%) | loss: {debiased:.6f} | dt: {dt*1000:.2f}ms | tok/sec: {tok_per_sec:,} | bf16_mfu: {mfu:.2f}%{eta_str}")
        capped = bool(s.max_steps) and step >= s.max_steps
        if capped:
            log(f"Stopping after {step} step(s) due to --max-steps")
        if epoch != current_epoch or capped:  # epoch finished (or cut short): evaluate it
            with autocast:
                val_bpb, val_loss = evaluate(model, data, s.batch_size, device)
            log(f"Step {step:05d} | Epoch {current_epoch} | Val BPB: {val_bpb:.6f} | Val Loss: {val_loss:.6f}")
            if not math.isfinite(val_loss):  # weights blew up on the last step(s): the min below would hide it
                log(f"Diverged: non-finite loss at step {step:05d}")
                return 3
            if val_bpb < min_val_bpb:
                min_val_bpb, min_val_loss = val_bpb, val_loss
            current_epoch = epoch
        if capped:
            break

    log(f"Peak memory: {_peak_memory_mib(device):.2f} MiB")
    log(f"Total training time: {total_training_time/60:.2f}m")
    final_train_loss = smooth / (1 - 0.9**step) if step > 0 else float("inf")
    log(f"Final train loss: {final_train_loss:.6f}")
    log(f"Min val BPB: {min_val_bpb:.6f}")
    log(f"Min val Loss: {min_val_loss:.6f}")
    total_wall_time = time.time() - wall_start
    log(f"Total wall time: {total_wall_time:.2f}s ({total_wall_time/60:.2f}m)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = resolve(args)
        check_data_fits(settings)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def log(line: str) -> None:
        print(line, flush=True)

    return train(settings, log)


if __name__ == "__main__":
    sys.exit(main())
