"""The mini-track GPT: a small model in the style of slowrun's two_hour/train.py, readable top to bottom.

Pieces (same mechanisms as upstream, miniature scale):
  token embedding -> RMSNorm -> blocks [attention + SwiGLU MLP, pre-norm residual, dropout]
  -> RMSNorm -> soft-capped lm_head, plus the multi-token-prediction (MTP) auxiliary head.
Attention: rotary embeddings, QK-norm, causal attention with a short/long sliding-window pattern
("SSSL", last layer always long). Three attention variants:
  * standard     plain multi-head attention
  * fusion       weight-fusion IHA: learned H x H mixes, identity at init, folded into the Q/K/V
                 projection weights at forward time: W_fused[h] = sum_m mix[h, m] W[m]
  * interleaved  interleaved IHA (arXiv 2602.21371, Algorithm 1): alpha^{Q,K,V} of shape [H, H, P]
                 make P pseudo-heads per head, pseudo-tokens are interleaved into the sequence
                 ([B,T,H,P,d] -> [B,T*P,H,d]), causal attention runs over the expanded sequence with
                 FLOP-matched windows, then outputs are de-interleaved and the P pseudo-heads collapsed
                 with a learned [H, P] matrix.
Omitted from upstream for size/readability: value embeddings, U-Net skips, attention gate,
stochastic depth, dupe layers (none of them is what the four variants compare).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTN_KINDS = ("standard", "fusion", "interleaved")


class ConfigError(ValueError):
    """An impossible model shape; the trainer prints it as one `error:` line and exits 2."""


@dataclass
class GPTConfig:
    vocab_size: int = 513
    seq_len: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    window_pattern: str = "SSSL"  # S = short sliding window, L = long (full) window
    short_window: int | None = None  # in original tokens; None = seq_len // 2 (upstream: 1024 of 2048)
    attn: str = "standard"  # one of ATTN_KINDS
    iha_p: int = 2  # pseudo-heads per head (interleaved only)
    iha_rope: str = "token"  # "token": P pseudo-tokens share their token's position; "pseudo": T*P positions
    dropout: float = 0.0
    mtp_weight: float = 0.3  # weight of the multi-token-prediction aux loss; 0 disables the MTP head
    logit_cap: float = 15.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def p(self) -> int:
        """Pseudo-tokens per token in the attention sequence (1 unless interleaved)."""
        return self.iha_p if self.attn == "interleaved" else 1


def validate_config(c: GPTConfig) -> None:
    """Reject impossible shapes before anything is built, with one line saying how to fix it."""
    if c.attn not in ATTN_KINDS:
        raise ConfigError(f"--attn {c.attn!r} is unknown; use one of {', '.join(ATTN_KINDS)}")
    for name in ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size"):
        if getattr(c, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(c, name)})")
    if c.n_embd % c.n_head:
        raise ConfigError(f"--n-head {c.n_head} does not divide --n-embd {c.n_embd}; pick a width that is a multiple of the head count")
    if c.head_dim % 2:
        raise ConfigError(f"head dim n_embd/n_head = {c.head_dim} is odd; rotary embeddings need an even head dim")
    if c.iha_p < 1:
        raise ConfigError(f"--iha-p must be >= 1 (got {c.iha_p})")
    if not c.window_pattern or set(c.window_pattern.upper()) - {"S", "L"}:
        raise ConfigError(f"window pattern {c.window_pattern!r} must be a non-empty string of S and L")
    if c.short_window is not None and not 1 <= c.short_window <= c.seq_len:
        raise ConfigError(f"--short-window {c.short_window} must be between 1 and --seq-len {c.seq_len}")
    if c.attn == "interleaved" and c.short_window is None and c.seq_len < 2 * c.iha_p ** 2:
        raise ConfigError(f"--seq-len {c.seq_len} is too short for --iha-p {c.iha_p}: the FLOP-matched short window "
                          f"N/(2P^2) would be under one token; use --seq-len >= {2 * c.iha_p ** 2} or a smaller P")
    if c.iha_rope not in ("token", "pseudo"):
        raise ConfigError(f"--iha-rope {c.iha_rope!r} is unknown; use token or pseudo")
    if not 0.0 <= c.dropout < 1.0:
        raise ConfigError(f"--dropout {c.dropout} must be in [0, 1)")
    if not c.mtp_weight >= 0:  # also catches nan
        raise ConfigError(f"--mtp-weight {c.mtp_weight} must be >= 0 (0 disables MTP)")


def window_sizes(c: GPTConfig) -> list[int]:
    """Per-layer window, in units of the attention sequence (pseudo-tokens for interleaved IHA).

    Semantics as flash-attn's window_size=(w, 0): query i sees keys i-w .. i.
    standard/fusion: short = seq_len // 2 (or --short-window), long = seq_len.
    interleaved (FLOP-matched, as upstream's paper-faithful IHA): short = N/(2P^2) original tokens
    = N/(2P) pseudo-tokens (512 for N=2048, P=2); long = the whole expanded context N*P (4096).
    P*N queries each seeing ~N/(2P) keys cost what N queries seeing N/2 keys cost in the baseline.
    Rounded down in pseudo-tokens, as upstream's (N*P)//(2P^2); --short-window is in original tokens.
    """
    n, p = c.seq_len, c.p
    if c.attn == "interleaved":
        short_w = c.short_window * p if c.short_window is not None else n // (2 * p)
        long_w = n * p
    else:
        short_w = c.short_window if c.short_window is not None else n // 2
        long_w = n
    pattern = c.window_pattern.upper()
    sizes = [short_w if pattern[i % len(pattern)] == "S" else long_w for i in range(c.n_layer)]
    sizes[-1] = long_w  # final layer always sees the full context
    return sizes


# ----------------------------------------------------------------------------- building blocks


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [1, len(positions), 1, head_dim/2] for the given (possibly repeated) positions."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(positions.float(), inv_freq)
    return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos], 3)


def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Causal attention on [B, T, H, d] where query i sees keys max(0, i-window) .. i."""
    T = q.size(1)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # SDPA wants [B, H, T, d]
    if window >= T - 1:  # the window covers everything: plain causal (fast path)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        i = torch.arange(T, device=q.device)
        dist = i[:, None] - i[None, :]
        mask = (dist >= 0) & (dist <= window)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return y.transpose(1, 2)


def interleave(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, P, d] -> [B, T*P, H, d]: the P pseudo-tokens of token t sit at t*P .. t*P+P-1."""
    B, T, H, P, d = x.shape
    return x.permute(0, 1, 3, 2, 4).reshape(B, T * P, H, d)


def deinterleave(y: torch.Tensor, P: int) -> torch.Tensor:
    """[B, T*P, H, d] -> [B, T, H, P, d], the inverse of `interleave`."""
    B, TP, H, d = y.shape
    return y.view(B, TP // P, P, H, d).permute(0, 1, 3, 2, 4)


def fuse_mix(weight: torch.Tensor, mix: torch.Tensor, n_head: int) -> torch.Tensor:
    """Weight-fusion IHA: W_fused[h] = sum_m mix[h, m] W[m], W viewed as [H, head_dim, C]."""
    return (mix @ weight.view(n_head, -1)).view_as(weight)


# ----------------------------------------------------------------------------- attention


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c = c
        H, C = c.n_head, c.n_embd
        self.c_q = nn.Linear(C, C, bias=False)
        self.c_k = nn.Linear(C, C, bias=False)
        self.c_v = nn.Linear(C, C, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        self.resid_dropout = nn.Dropout(c.dropout)
        if c.attn == "fusion":  # H x H head mixes, identity at init (see init_weights)
            self.q_mix = nn.Parameter(torch.eye(H))
            self.k_mix = nn.Parameter(torch.eye(H))
            self.v_mix = nn.Parameter(torch.eye(H))
        elif c.attn == "interleaved":  # alpha[src_head m, tgt_head h, pseudo p] and the [H, P] collapse
            P = c.iha_p
            self.q_mix = nn.Parameter(torch.zeros(H, H, P))
            self.k_mix = nn.Parameter(torch.zeros(H, H, P))
            self.v_mix = nn.Parameter(torch.zeros(H, H, P))
            self.iha_collapse = nn.Parameter(torch.zeros(H, P))

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], window: int) -> torch.Tensor:
        B, T, C = x.shape
        H, d = self.c.n_head, self.c.head_dim
        if self.c.attn == "fusion":
            q = F.linear(x, fuse_mix(self.c_q.weight, self.q_mix, H))
            k = F.linear(x, fuse_mix(self.c_k.weight, self.k_mix, H))
            v = F.linear(x, fuse_mix(self.c_v.weight, self.v_mix, H))
        else:
            q, k, v = self.c_q(x), self.c_k(x), self.c_v(x)
        q, k, v = q.view(B, T, H, d), k.view(B, T, H, d), v.view(B, T, H, d)
        cos, sin = cos_sin
        if self.c.attn == "interleaved":
            P = self.c.iha_p
            # 1. P pseudo-heads per head, each a learned mixture of all H heads
            q = torch.einsum("btmd,mhp->bthpd", q, self.q_mix)
            k = torch.einsum("btmd,mhp->bthpd", k, self.k_mix)
            v = torch.einsum("btmd,mhp->bthpd", v, self.v_mix)
            # 2. interleave pseudo-tokens into the sequence: [B,T,H,P,d] -> [B,T*P,H,d]
            q, k, v = interleave(q), interleave(k), interleave(v)
            # 3. rotary (positions per `iha_rope`, see GPT.rotary) + QK-norm, on the expanded sequence
            q, k = norm(apply_rotary_emb(q, cos, sin)), norm(apply_rotary_emb(k, cos, sin))
            # 4. causal attention over T*P pseudo-tokens with the FLOP-matched window
            y = sliding_window_attention(q, k, v, window)
            # 5. de-interleave and collapse the P pseudo-heads with the learned [H, P] matrix
            y = torch.einsum("bthpd,hp->bthd", deinterleave(y, P), self.iha_collapse)
        else:
            q, k = norm(apply_rotary_emb(q, cos, sin)), norm(apply_rotary_emb(k, cos, sin))
            y = sliding_window_attention(q, k, v, window)
        return self.resid_dropout(self.c_proj(y.reshape(B, T, C)))


class MLP(nn.Module):
    """SwiGLU, hidden width ~8/3 * n_embd (rounded to 32 here; upstream rounds to 256)."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        hidden = 32 * ((8 * c.n_embd // 3 + 31) // 32)
        self.c_gate = nn.Linear(c.n_embd, hidden, bias=False)
        self.c_fc = nn.Linear(c.n_embd, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, c.n_embd, bias=False)
        self.resid_dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resid_dropout(self.c_proj(F.silu(self.c_gate(x)) * self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.attn = CausalSelfAttention(c)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], window: int) -> torch.Tensor:
        x = x + self.attn(norm(x), cos_sin, window)
        return x + self.mlp(norm(x))


# ----------------------------------------------------------------------------- the model


class GPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        validate_config(c)
        self.config = c
        self.window_sizes = window_sizes(c)
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.n_layer)])
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.mtp_weight > 0:
            # MTP as upstream: from the final hidden state at t and the embedding of token t+1,
            # one extra block (full window) predicts token t+2.
            self.mtp_proj = nn.Linear(2 * c.n_embd, c.n_embd, bias=False)
            self.mtp_block = Block(c)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Upstream's scheme: uniform +-sqrt(3/C) for input projections, N(0, 1/C) for output
        projections, N(0, 1) embedding, tiny lm_head; IHA mixes start at identity."""
        C = self.config.n_embd
        s, std = 3**0.5 * C**-0.5, C**-0.5
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        blocks = list(self.blocks) + ([self.mtp_block] if self.config.mtp_weight > 0 else [])
        if self.config.mtp_weight > 0:
            nn.init.uniform_(self.mtp_proj.weight, -s, s)
        for b in blocks:
            for lin in (b.attn.c_q, b.attn.c_k, b.attn.c_v, b.mlp.c_gate, b.mlp.c_fc):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.normal_(b.attn.c_proj.weight, std=std)
            nn.init.normal_(b.mlp.c_proj.weight, std=std)
            a = b.attn
            if self.config.attn == "fusion":
                for m in (a.q_mix, a.k_mix, a.v_mix):
                    m.copy_(torch.eye(self.config.n_head))
            elif self.config.attn == "interleaved":
                # As upstream: pseudo-head 0 of head h is head h itself, the others start at zero,
                # and the collapse averages the P pseudo-heads.
                for m in (a.q_mix, a.k_mix, a.v_mix):
                    m.zero_()
                    m[:, :, 0].copy_(torch.eye(self.config.n_head))
                a.iha_collapse.fill_(1.0 / self.config.iha_p)

    def rotary(self, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary tables for the attention sequence.

        Interleaved IHA attends over T*P pseudo-tokens. With iha_rope="token" (the mini default) the
        P pseudo-tokens of token t all get position t, so rotary phases measure distance in real
        tokens and pseudo-tokens of one token are "simultaneous"; with "pseudo" (what upstream's
        two_hour IHA does) pseudo-token j gets position j, stretching distances by P.
        """
        c = self.config
        P = c.p
        if P > 1 and c.iha_rope == "token":
            pos = torch.arange(T, device=device).repeat_interleave(P)
        else:
            pos = torch.arange(T * P, device=device)
        cos, sin = rotary_tables(pos.cpu(), c.head_dim)
        return cos.to(device), sin.to(device)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(norm(x)).float()
        cap = self.config.logit_cap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_reduction: str = "mean"):
        """Returns logits (no targets), per-token LM loss (reduction 'none', used by eval),
        or (total loss, {lm_loss, mtp_loss}) for training."""
        B, T = idx.shape
        if T > self.config.seq_len:
            raise ConfigError(f"input length {T} exceeds --seq-len {self.config.seq_len}")
        cos_sin = self.rotary(T, idx.device)
        x = norm(self.wte(idx))
        for block, w in zip(self.blocks, self.window_sizes):
            x = block(x, cos_sin, w)
        logits = self._logits(x)
        if targets is None:
            return logits
        lm_loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=loss_reduction)
        if loss_reduction != "mean":
            return lm_loss
        if self.config.mtp_weight <= 0 or T < 2:
            return lm_loss, {"lm_loss": lm_loss}
        # MTP: hidden state at t + embedding of the true token t+1 -> predict token t+2
        nxt = norm(self.wte(targets[:, :-1]))
        h = self.mtp_proj(torch.cat([norm(x[:, :-1]), nxt], dim=-1))
        mT = T - 1
        h = self.mtp_block(h, self.rotary(mT, idx.device), mT * self.config.p)
        mtp_logits = self._logits(h)
        mtp_loss = F.cross_entropy(mtp_logits.view(-1, mtp_logits.size(-1)), targets[:, 1:].reshape(-1))
        return lm_loss + self.config.mtp_weight * mtp_loss, {"lm_loss": lm_loss, "mtp_loss": mtp_loss}

    # ------------------------------------------------------------------ bookkeeping

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Which optimizer each parameter belongs to: Muon for hidden matrices, AdamW for the rest."""
        mix = {id(p) for b in self.modules() if isinstance(b, CausalSelfAttention)
               for n, p in b.named_parameters(recurse=False) if "mix" in n or "collapse" in n}
        groups: dict[str, list[nn.Parameter]] = {"matrix": [], "embed": [self.wte.weight],
                                                 "head": [self.lm_head.weight], "mix": []}
        for name, p in self.named_parameters():
            if name in ("wte.weight", "lm_head.weight"):
                continue
            groups["mix" if id(p) in mix else "matrix"].append(p)
        return groups

    def estimate_flops(self) -> float:
        """Training FLOPs per original token: 6 * matmul params + attention (upstream's formula,
        with interleaved IHA paying for T*P queries over the expanded sequence)."""
        c = self.config
        n_matmul = sum(p.numel() for p in self.parameters()) - self.wte.weight.numel()
        return 6 * n_matmul + attention_flops_per_token(c)


def _avg_keys(window: int, length: int) -> float:
    """Mean number of keys a causal query attends to with window (w, 0) over a sequence."""
    if window >= length - 1:
        return (length + 1) / 2
    k = window + 1
    return k - k * (k - 1) / (2 * length)


def attention_flops_per_token(c: GPTConfig) -> float:
    """Attention-score/value FLOPs (fwd+bwd) per original token, summed over layers (MTP block excluded)."""
    P, L = c.p, c.seq_len * c.p
    return sum(12 * c.n_head * c.head_dim * P * _avg_keys(w, L) for w in window_sizes(c))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(c: GPTConfig) -> str:
    ws = window_sizes(c)
    return (f"attn={c.attn} P={c.p} rope={'-' if c.p == 1 else c.iha_rope} layers={c.n_layer} heads={c.n_head} "
            f"width={c.n_embd} seq_len={c.seq_len} windows={ws} mtp_weight={c.mtp_weight} dropout={c.dropout}")

