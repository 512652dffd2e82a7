"""Mini-track optimizer: Muon orthogonalisation, MuonEq-R, and the AdamW half."""

from __future__ import annotations

import pytest
import torch

from harness.mini.optim import MuonAdamW, muoneq_r, orthogonalize


def test_muoneq_r_rows_have_unit_norm():
    torch.manual_seed(0)
    g = torch.randn(24, 40) * torch.logspace(-3, 3, 24)[:, None]  # rows of wildly different scale
    n = muoneq_r(g).norm(dim=-1)
    assert torch.allclose(n, torch.ones(24), atol=1e-5)
    assert torch.allclose(muoneq_r(g) * g.norm(dim=-1, keepdim=True), g, rtol=1e-5)  # a pure row rescale


@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (48, 48)])
def test_orthogonalised_update_has_singular_values_near_one(shape):
    torch.manual_seed(1)
    if shape[0] == shape[1]:  # a square Gaussian has near-zero singular values; use a well-conditioned one
        q1, _ = torch.linalg.qr(torch.randn(shape))
        q2, _ = torch.linalg.qr(torch.randn(shape))
        g = q1 @ torch.diag(torch.linspace(0.2, 3.0, shape[0])) @ q2
    else:
        g = torch.randn(shape)
    s = torch.linalg.svdvals(orthogonalize(g, steps=5, method="polar_express"))
    assert s.min() > 0.8 and s.max() < 1.2, (s.min(), s.max())
    # ... and it points where the exact polar factor U V^T does
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cos = (orthogonalize(g) * (u @ vh)).sum() / (orthogonalize(g).norm() * (u @ vh).norm())
    assert cos > 0.99
    s_ns = torch.linalg.svdvals(orthogonalize(g, steps=5, method="newton_schulz"))
    assert s_ns.min() > 0.6 and s_ns.max() < 1.25  # the classic quintic's looser band


def test_muoneq_r_after_orthogonalisation_still_gives_unit_singular_values():
    torch.manual_seed(2)
    g = torch.randn(32, 80) * torch.logspace(-2, 2, 32)[:, None]
    s = torch.linalg.svdvals(orthogonalize(muoneq_r(g)))
    assert s.min() > 0.8 and s.max() < 1.2


def _one_step(row_norm: bool, grads: list[torch.Tensor], p0: torch.Tensor, lr=0.05, momentum=0.9, wd=0.0):
    p = torch.nn.Parameter(p0.clone())
    opt = MuonAdamW([dict(kind="muon", params=[p], lr=lr, momentum=momentum, weight_decay=wd, muoneq_r=row_norm)])
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def plain_muon_reference(grads, p0, lr, momentum, row_norm=False):
    """Muon written out by hand: Nesterov momentum -> (row norm) -> orthogonalise -> shape scale."""
    p, buf = p0.clone(), torch.zeros_like(p0)
    for g in grads:
        buf = momentum * buf + (1 - momentum) * g
        u = (1 - momentum) * g + momentum * buf
        if row_norm:
            u = u / u.norm(dim=-1, keepdim=True)
        p = p - lr * orthogonalize(u) * max(1.0, p0.size(0) / p0.size(1)) ** 0.5
    return p


def test_flag_off_is_plain_muon_and_flag_on_is_row_normalised_muon():
    torch.manual_seed(3)
    p0 = torch.randn(40, 24)
    grads = [torch.randn(40, 24) * torch.logspace(-2, 1, 40)[:, None] for _ in range(3)]
    off = _one_step(False, grads, p0)
    on = _one_step(True, grads, p0)
    assert torch.allclose(off, plain_muon_reference(grads, p0, 0.05, 0.9), atol=1e-5)
    assert torch.allclose(on, plain_muon_reference(grads, p0, 0.05, 0.9, row_norm=True), atol=1e-5)
    assert (on - off).abs().max() > 1e-3  # the flag really changes the update


def test_muon_weight_decay_is_decoupled():
    p0 = torch.randn(8, 8)
    zero = [torch.zeros(8, 8)]
    out = _one_step(False, zero, p0, lr=0.1, wd=0.5)
    assert torch.allclose(out, p0 * (1 - 0.1 * 0.5), atol=1e-6)


def test_adamw_half_matches_torch_adamw():
    torch.manual_seed(4)
    w0 = torch.randn(10, 6)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    ours = MuonAdamW([dict(kind="adamw", params=[a], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)])
    ref = torch.optim.AdamW([b], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    for _ in range(4):
        g = torch.randn(10, 6)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_muon_groups_reject_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        MuonAdamW([dict(kind="muon", params=[torch.nn.Parameter(torch.zeros(5))])])
    with pytest.raises(ValueError, match="kind"):
        MuonAdamW([dict(params=[torch.nn.Parameter(torch.zeros(5))])])


# ----------------------------------------------------------------------------- review additions

# Data cited from upstream (qlabs-eng/slowrun two_hour/train.py at 0e63026, `polar_express_coeffs`).
UPSTREAM_POLAR_EXPRESS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def upstream_orthogonalize(g: torch.Tensor) -> torch.Tensor:
    """Upstream's muon_step_fused orthogonalisation, transcribed in float32 (tall matrices multiply on the right)."""
    X = g / (g.norm() * 1.02 + 1e-6)
    for a, b, c in UPSTREAM_POLAR_EXPRESS:
        if g.size(-2) > g.size(-1):
            A = X.mT @ X
            X = a * X + X @ (b * A + c * (A @ A))
        else:
            A = X @ X.mT
            X = a * X + (b * A + c * (A @ A)) @ X
    return X


def keller_newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Keller Jordan's Muon zeropower_via_newtonschulz5, in float32."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = g.mT if g.size(0) > g.size(1) else g
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if g.size(0) > g.size(1) else X


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_orthogonalisation_matches_upstream_and_keller(shape):
    torch.manual_seed(5)
    g = torch.randn(shape)
    assert torch.allclose(orthogonalize(g, method="polar_express"), upstream_orthogonalize(g), atol=1e-5)
    assert torch.allclose(orthogonalize(g, method="newton_schulz"), keller_newton_schulz(g), atol=1e-5)
