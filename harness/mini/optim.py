"""MuonAdamW for the mini track: Muon for hidden matrices, AdamW for embeddings, head and scalars.

Muon step for one matrix parameter (as upstream's `muon_step_fused`, minus the distributed sharding):
  1. momentum, Nesterov style:  buf <- lerp(buf, g, 1 - mu);  u <- lerp(g, buf, mu)
  2. MuonEq-R (arXiv 2603.28254, optional): scale every row of u to unit L2 norm
  3. orthogonalise u with Polar Express (default, upstream's coefficients) or the classic
     Newton-Schulz quintic: u -> approximately U V^T of its SVD (all singular values ~1)
  4. scale by sqrt(max(1, rows/cols)), decoupled weight decay, p <- p - lr * u
Upstream additionally applies NorMuon-style variance reduction and cautious weight decay; they are
left out here to keep the two mechanisms the variants compare (Muon, MuonEq-R) easy to see.
"""

from __future__ import annotations

import torch

# Polar Express coefficients (Amsel et al. 2025), as in slowrun's two_hour/train.py.
POLAR_EXPRESS_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]
NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic, the original Muon


def muoneq_r(g: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """MuonEq-R: row-equilibrate the momentum-blended update (each row to unit L2 norm)."""
    return g / g.norm(dim=-1, keepdim=True).clamp_min(eps)


def orthogonalize(g: torch.Tensor, steps: int = 5, method: str = "polar_express") -> torch.Tensor:
    """Approximate the polar factor U V^T of a 2-D matrix with odd matrix polynomials.

    Works on the wide orientation (rows <= cols) so the Gram matrix is the small one.
    """
    if g.ndim != 2:
        raise ValueError(f"orthogonalize expects a matrix, got shape {tuple(g.shape)}")
    x = g.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.mT
    # Frobenius norm >= spectral norm, so singular values start <= 1. Polar Express's coefficients
    # assume the extra 2% margin (upstream's `* 1.02 + 1e-6`); Keller Jordan's Muon divides by norm + 1e-7.
    if method == "polar_express":
        x = x / (x.norm() * 1.02 + 1e-6)
        coeffs = POLAR_EXPRESS_COEFFS[:steps] + POLAR_EXPRESS_COEFFS[-1:] * max(0, steps - len(POLAR_EXPRESS_COEFFS))
    elif method == "newton_schulz":
        x = x / (x.norm() + 1e-7)
        coeffs = [NEWTON_SCHULZ_COEFFS] * steps
    else:
        raise ValueError(f"unknown orthogonalisation method {method!r}; use polar_express or newton_schulz")
    for a, b, c in coeffs:
        A = x @ x.mT
        x = a * x + (b * A + c * (A @ A)) @ x
    return (x.mT if tall else x).to(g.dtype)


def muon_direction(grad: torch.Tensor, buf: torch.Tensor, momentum: float, row_norm: bool,
                   ns_steps: int = 5, method: str = "polar_express") -> torch.Tensor:
    """Steps 1-3 above; updates `buf` in place and returns the orthogonalised direction."""
    buf.lerp_(grad, 1 - momentum)
    u = grad.lerp(buf, momentum)
    if row_norm:
        u = muoneq_r(u)
    return orthogonalize(u, ns_steps, method)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer, two kinds of parameter group: kind='muon' (2-D matrices) and kind='adamw'.

    Muon groups: lr, momentum, weight_decay, muoneq_r, ns_steps, ns_method.
    AdamW groups: lr, betas, eps, weight_decay.
    """

    def __init__(self, param_groups: list[dict]):
        for g in param_groups:
            if g.get("kind") not in ("muon", "adamw"):
                raise ValueError("every parameter group needs kind='muon' or kind='adamw'")
            if g["kind"] == "muon" and any(p.ndim != 2 for p in g["params"]):
                raise ValueError("Muon groups take 2-D matrices only; put other parameters in an AdamW group")
        defaults = dict(lr=0.02, momentum=0.95, weight_decay=0.0, muoneq_r=False, ns_steps=5,
                        ns_method="polar_express", betas=(0.8, 0.95), eps=1e-10)
        super().__init__(param_groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon(group)
            else:
                self._adamw(group)

    def _muon(self, group: dict) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            u = muon_direction(p.grad, state["momentum_buffer"], group["momentum"], group["muoneq_r"],
                               group["ns_steps"], group["ns_method"])
            u = u * max(1.0, p.size(0) / p.size(1)) ** 0.5
            p.mul_(1 - lr * wd)
            p.add_(u, alpha=-lr)

    def _adamw(self, group: dict) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(p.grad, 1 - beta1)
            v.lerp_(p.grad.square(), 1 - beta2)
            p.mul_(1 - lr * wd)
            denom = (v / (1 - beta2**t)).sqrt_().add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
