"""Mini-track model: IHA variants against plain attention and against naive reference code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.mini.model import (
    GPT,
    ConfigError,
    GPTConfig,
    apply_rotary_emb,
    attention_flops_per_token,
    deinterleave,
    fuse_mix,
    interleave,
    norm,
    rotary_tables,
    sliding_window_attention,
    validate_config,
    window_sizes,
)

TOL = 1e-5  # float32 on CPU; the compared paths differ only in summation order


def small(**kw) -> GPTConfig:
    base = dict(vocab_size=61, seq_len=16, n_layer=2, n_head=4, n_embd=32, mtp_weight=0.0)
    base.update(kw)
    return GPTConfig(**base)


def twin(a: GPT, b: GPT) -> None:
    """Copy every parameter b shares with a (same name and shape) from a into b."""
    sb = b.state_dict()
    for k, v in a.state_dict().items():
        if k in sb and sb[k].shape == v.shape:
            sb[k] = v.clone()
    b.load_state_dict(sb)


def naive_attention(q, k, v, window):
    """Reference causal sliding-window attention with explicit loops over queries ([B, T, H, d])."""
    B, T, H, d = q.shape
    out = torch.zeros_like(q)
    for i in range(T):
        lo = max(0, i - window)
        s = torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, lo : i + 1]) / d**0.5
        out[:, i] = torch.einsum("bhj,bjhd->bhd", s.softmax(-1), v[:, lo : i + 1])
    return out


# ----------------------------------------------------------------------------- attention primitives


def test_sliding_window_attention_matches_naive_reference():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 12, 3, 8) for _ in range(3))
    for w in (0, 1, 4, 11, 50):
        got = sliding_window_attention(q, k, v, w)
        assert torch.allclose(got, naive_attention(q, k, v, w), atol=TOL), w


def test_interleave_layout_and_roundtrip():
    x = torch.randn(2, 5, 3, 4, 6)  # [B, T, H, P, d]
    y = interleave(x)
    assert y.shape == (2, 20, 3, 6)
    for t in range(5):
        for p in range(4):
            assert torch.equal(y[:, t * 4 + p], x[:, t, :, p])  # pseudo-token p of token t sits at t*P+p
    assert torch.equal(deinterleave(y, 4), x)
    z = torch.randn(2, 20, 3, 6)
    assert torch.equal(interleave(deinterleave(z, 4)), z)


def test_fused_weights_equal_explicit_per_head_mixture():
    torch.manual_seed(1)
    H, d, C = 4, 5, 7
    W = torch.randn(H * d, C)
    mix = torch.randn(H, H)
    fused = fuse_mix(W, mix, H)
    Wh = W.view(H, d, C)
    for h in range(H):
        expected = sum(mix[h, m] * Wh[m] for m in range(H))
        assert torch.allclose(fused.view(H, d, C)[h], expected, atol=TOL)
    assert torch.equal(fuse_mix(W, torch.eye(H), H), W)


# ----------------------------------------------------------------------------- windows


def test_flop_matched_windows_for_interleaved_iha():
    # The numbers: N=2048, P=2 -> short = N/(2P) = 512 pseudo-tokens, long = N*P = 4096.
    c = GPTConfig(seq_len=2048, n_layer=8, attn="interleaved", iha_p=2)
    assert window_sizes(c) == [512, 512, 512, 4096, 512, 512, 512, 4096]
    # Upstream's baseline: short 1024, long 2048.
    assert window_sizes(GPTConfig(seq_len=2048, n_layer=4)) == [1024, 1024, 1024, 2048]
    # P=4: short = N/(2P^2) = 64 tokens = 256 pseudo-tokens; the last layer is always long.
    assert window_sizes(GPTConfig(seq_len=2048, n_layer=3, attn="interleaved", iha_p=4)) == [256, 256, 8192]
    # The mini default (N=128, P=2): 32 pseudo-tokens short, 256 long.
    assert window_sizes(GPTConfig(seq_len=128, n_layer=4, attn="interleaved", iha_p=2)) == [32, 32, 32, 256]


def test_interleaved_attention_flops_follow_windows():
    base = GPTConfig(seq_len=2048, n_layer=4)
    iha = GPTConfig(seq_len=2048, n_layer=4, attn="interleaved", iha_p=2)
    ratio = attention_flops_per_token(iha) / attention_flops_per_token(base)
    # Mean keys per query (causal, window w over length L: k - k(k-1)/2L with k = w+1, else (L+1)/2):
    # baseline short 1025 - 1025*1024/4096 = 768.75, long 1024.5; IHA short 513 - 513*512/8192 = 480.94,
    # long 2048.5, each paid by P=2 queries per token.
    expected = (3 * 2 * 480.94 + 2 * 2048.5) / (3 * 768.75 + 1024.5)
    assert abs(ratio - expected) < 1e-3


# ----------------------------------------------------------------------------- IHA equivalences


@pytest.mark.parametrize("rope", ["token", "pseudo"])
def test_interleaved_p1_identity_equals_plain_attention(rope):
    torch.manual_seed(2)
    plain = GPT(small(short_window=5))
    iha = GPT(small(short_window=5, attn="interleaved", iha_p=1, iha_rope=rope))
    twin(plain, iha)  # mixes stay at their identity init, collapse = 1/P = 1
    idx = torch.randint(0, 61, (3, 16))
    assert torch.allclose(plain(idx), iha(idx), atol=TOL)


def test_fusion_identity_equals_unmixed_model_and_mixing_changes_it():
    torch.manual_seed(3)
    plain = GPT(small(mtp_weight=0.3))
    fused = GPT(small(attn="fusion", mtp_weight=0.3))
    twin(plain, fused)
    idx = torch.randint(0, 61, (2, 16))
    assert torch.allclose(plain(idx), fused(idx), atol=TOL)
    with torch.no_grad():
        fused.blocks[0].attn.q_mix.add_(0.3 * torch.randn(4, 4))
    assert not torch.allclose(plain(idx), fused(idx), atol=1e-3)


def test_interleaved_p2_matches_naive_algorithm_1():
    """Compare one attention layer against a loop-by-loop transcription of Algorithm 1."""
    torch.manual_seed(4)
    c = small(attn="interleaved", iha_p=2, short_window=3)
    model = GPT(c)
    attn = model.blocks[0].attn
    with torch.no_grad():  # move away from the identity init so every mixing weight matters
        for m in (attn.q_mix, attn.k_mix, attn.v_mix, attn.iha_collapse):
            m.copy_(torch.randn_like(m))
    B, T, H, d, P = 2, 10, 4, 8, 2
    x = torch.randn(B, T, 32)
    window = model.window_sizes[0]
    assert window == 3 * P
    got = attn(x, model.rotary(T, x.device), window)

    q, k, v = (lin(x).view(B, T, H, d) for lin in (attn.c_q, attn.c_k, attn.c_v))
    cos, sin = rotary_tables(torch.arange(T).repeat_interleave(P), d)  # shared position per token
    qs, ks, vs = (torch.zeros(B, T * P, H, d) for _ in range(3))
    for h in range(H):
        for p in range(P):
            for t in range(T):  # pseudo-head p of head h = sum_m alpha[m, h, p] * head m
                qs[:, t * P + p, h] = sum(attn.q_mix[m, h, p] * q[:, t, m] for m in range(H))
                ks[:, t * P + p, h] = sum(attn.k_mix[m, h, p] * k[:, t, m] for m in range(H))
                vs[:, t * P + p, h] = sum(attn.v_mix[m, h, p] * v[:, t, m] for m in range(H))
    qs, ks = norm(apply_rotary_emb(qs, cos, sin)), norm(apply_rotary_emb(ks, cos, sin))
    ys = naive_attention(qs, ks, vs, window)
    y = torch.zeros(B, T, H, d)
    for t in range(T):
        for h in range(H):
            y[:, t, h] = sum(attn.iha_collapse[h, p] * ys[:, t * P + p, h] for p in range(P))
    expected = attn.c_proj(y.reshape(B, T, H * d))
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("attn", ["standard", "fusion", "interleaved"])
def test_every_variant_is_causal(attn):
    torch.manual_seed(5)
    model = GPT(small(attn=attn, iha_p=3, short_window=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mix" in name or "collapse" in name:
                p.add_(0.2 * torch.randn_like(p))
    idx = torch.randint(0, 61, (1, 16))
    changed = idx.clone()
    changed[0, 9:] = (changed[0, 9:] + 7) % 61
    a, b = model(idx), model(changed)
    assert torch.allclose(a[0, :9], b[0, :9], atol=TOL)
    assert not torch.allclose(a[0, 9:], b[0, 9:], atol=1e-3)


def test_mtp_aux_loss_is_added_with_its_weight():
    torch.manual_seed(6)
    model = GPT(small(mtp_weight=0.3))
    idx = torch.randint(0, 61, (2, 16))
    tgt = torch.randint(0, 61, (2, 16))
    loss, parts = model(idx, tgt)
    assert torch.allclose(loss, parts["lm_loss"] + 0.3 * parts["mtp_loss"])
    assert torch.allclose(parts["lm_loss"], F.cross_entropy(model(idx).view(-1, 61), tgt.view(-1)))
    off = GPT(small(mtp_weight=0.0))
    loss0, parts0 = off(idx, tgt)
    assert set(parts0) == {"lm_loss"} and not hasattr(off, "mtp_block")


# ----------------------------------------------------------------------------- bad shapes


@pytest.mark.parametrize("kw, words", [
    (dict(n_head=3), "does not divide"),
    (dict(attn="interleaved", iha_p=0), "iha-p"),
    (dict(short_window=17), "short-window"),
    (dict(attn="interleaved", iha_p=3, seq_len=16), "too short"),
    (dict(attn="bogus"), "unknown"),
    (dict(window_pattern="SXL"), "pattern"),
])
def test_impossible_shapes_are_rejected_with_one_line(kw, words):
    with pytest.raises(ConfigError) as e:
        validate_config(small(**kw))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_rotary_positions_for_pseudo_tokens():
    """token: the P pseudo-tokens of token t share position t; pseudo: position = expanded index."""
    tok = GPT(small(attn="interleaved", iha_p=3, iha_rope="token", seq_len=18))
    pse = GPT(small(attn="interleaved", iha_p=3, iha_rope="pseudo", seq_len=18))
    cos_t, _ = tok.rotary(5, torch.device("cpu"))
    cos_p, _ = pse.rotary(5, torch.device("cpu"))
    assert cos_t.shape[1] == cos_p.shape[1] == 15
    ref_t, _ = rotary_tables(torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]), 8)
    ref_p, _ = rotary_tables(torch.arange(15), 8)
    assert torch.equal(cos_t, ref_t) and torch.equal(cos_p, ref_p)


# ----------------------------------------------------------------------------- review additions


def test_pseudo_token_mask_is_causal_in_original_token_order():
    """Over the interleaved sequence, pseudo-token (t, p) must see (t', p') exactly when t'P+p' <= tP+p
    (and within the window): its own token's earlier pseudo-tokens yes, its later ones no, token t+1 never."""
    torch.manual_seed(7)
    B, T, H, P, d, window = 1, 6, 2, 3, 4, 7  # window in pseudo-tokens: 2 tokens and one pseudo-token
    q, k, v = (torch.randn(B, T, H, P, d) for _ in range(3))

    def out(k_, v_):
        return deinterleave(sliding_window_attention(interleave(q), interleave(k_), interleave(v_), window), P)

    base = out(k, v)
    sees = {}  # (query t, p, key t2, p2) -> did perturbing the key/value move the query's output
    for t2 in range(T):
        for p2 in range(P):  # perturb the key and value of pseudo-token (t2, p2) only
            k2, v2 = k.clone(), v.clone()
            k2[:, t2, :, p2] += 1.0
            v2[:, t2, :, p2] += 1.0
            moved = (out(k2, v2) - base).abs().amax(dim=(0, 2, 4)) > 1e-6  # [T, P]
            for t in range(T):
                for p in range(P):
                    sees[t, p, t2, p2] = bool(moved[t, p])
                    assert sees[t, p, t2, p2] == (0 <= (t * P + p) - (t2 * P + p2) <= window), (t, p, t2, p2)
    t = 3
    assert sees[t, 1, t, 0] and sees[t, 2, t, 1] and sees[t, 0, t, 0]  # earlier pseudo-tokens of its own token
    assert not sees[t, 0, t, 1] and not sees[t, 1, t, 2]  # not the later ones
    assert not any(sees[t, p, t + 1, p2] for p in range(P) for p2 in range(P))  # never the next token
    assert sees[t, 0, 0, 2] and not sees[t, 0, 0, 1]  # window: query 9 sees pseudo-tokens 2..9, not 1


def test_short_window_rounds_like_upstream():
    # upstream: short = (N*P)//(2P^2) pseudo-tokens; N=100, P=3 gives 16 (rounding in whole tokens would give 15)
    assert window_sizes(GPTConfig(seq_len=100, n_layer=2, attn="interleaved", iha_p=3)) == [16, 300]
    # an explicit --short-window is in original tokens: 5 tokens = 15 pseudo-tokens at P=3
    assert window_sizes(GPTConfig(seq_len=100, n_layer=2, attn="interleaved", iha_p=3, short_window=5)) == [15, 300]


def test_dropout_is_seeded_in_training_and_off_in_eval():
    torch.manual_seed(8)
    drop = GPT(small(dropout=0.5))
    plain = GPT(small(dropout=0.0))
    twin(drop, plain)
    idx = torch.randint(0, 61, (2, 16))
    drop.train()
    torch.manual_seed(1)
    a = drop(idx)
    torch.manual_seed(1)
    b = drop(idx)
    torch.manual_seed(2)
    c = drop(idx)
    assert torch.equal(a, b)  # the seed fixes the dropout masks
    assert not torch.allclose(a, c, atol=1e-3)  # another seed, other masks
    assert not torch.allclose(a, plain(idx), atol=1e-3)  # dropout really acts in training
    drop.eval()
    assert torch.allclose(drop(idx), plain(idx), atol=TOL)  # and is off in evaluation


@pytest.mark.parametrize("attn", ["standard", "fusion", "interleaved"])
def test_param_groups_send_hidden_matrices_to_muon_and_the_rest_to_adamw(attn):
    model = GPT(small(attn=attn, mtp_weight=0.3))
    g = model.param_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [names[id(p)] for ps in g.values() for p in ps]
    assert sorted(grouped) == sorted(names.values())  # every parameter exactly once
    matrix = {names[id(p)] for p in g["matrix"]}
    hidden = ("attn.c_q.", "attn.c_k.", "attn.c_v.", "attn.c_proj.", "mlp.c_gate.", "mlp.c_fc.", "mlp.c_proj.")
    expected = {n for n in names.values() if any(h in n for h in hidden)} | {"mtp_proj.weight"}
    assert matrix == expected and all(p.ndim == 2 for p in g["matrix"])
    assert [names[id(p)] for p in g["embed"]] == ["wte.weight"] and [names[id(p)] for p in g["head"]] == ["lm_head.weight"]
    mix = {names[id(p)] for p in g["mix"]}
    if attn == "standard":
        assert mix == set()
    else:  # the IHA mixes of every block, the MTP block's included, as upstream's iha_params group
        kinds = ("q_mix", "k_mix", "v_mix") + (("iha_collapse",) if attn == "interleaved" else ())
        assert mix == {f"{b}.attn.{k}" for b in [f"blocks.{i}" for i in range(2)] + ["mtp_block"] for k in kinds}


def test_mtp_predicts_token_t_plus_2_from_hidden_t_and_embedding_of_t_plus_1():
    """The MTP loss, recomputed from the model's parts with upstream's offsets written out."""
    torch.manual_seed(9)
    model = GPT(small(mtp_weight=0.3))
    with torch.no_grad():  # the init's tiny lm_head gives ~uniform logits, where any label scores the same
        model.lm_head.weight.normal_(std=0.5)
    idx = torch.randint(0, 61, (2, 16))
    tgt = torch.randint(0, 61, (2, 16))  # tgt[:, t] is token t+1
    hidden = {}
    model.blocks[-1].register_forward_hook(lambda m, i, o: hidden.setdefault("x", o))
    _, parts = model(idx, tgt)
    x = hidden["x"]
    inp = torch.cat([norm(x[:, :15]), norm(model.wte(tgt[:, :15]))], dim=-1)  # hidden at t + embedding of token t+1
    h = model.mtp_block(model.mtp_proj(inp), model.rotary(15, idx.device), 15)  # one full-window causal block
    logits = model._logits(h)
    expected = F.cross_entropy(logits.reshape(-1, 61), tgt[:, 1:].reshape(-1))  # label: token t+2
    assert torch.allclose(parts["mtp_loss"], expected, atol=TOL)
    wrong = F.cross_entropy(logits.reshape(-1, 61), tgt[:, :15].reshape(-1))  # the next-token label instead
    assert not torch.allclose(parts["mtp_loss"], wrong, atol=1e-3)
