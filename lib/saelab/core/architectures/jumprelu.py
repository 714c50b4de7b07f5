"""JumpReLU SAE (Rajamanoharan et al. 2024, arXiv 2407.14435): a learned threshold per latent.

    c_i = z_i * H(z_i - theta_i),   theta_i >= 0 learned per latent
    own loss term: l0_coeff * ||c||_0 / d_in   (mean over tokens; / d_in as the ReLU SAE's
                   penalty, so with our per-element MSE the coefficient is the paper's lambda)

H has zero derivative almost everywhere, so theta is trained through straight-through
estimators with a rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth eps (paper §3, eqs. 11-12):

    d/dtheta JumpReLU(z; theta) = -(theta / eps) K((z - theta) / eps)
    d/dtheta H(z - theta)       = -(1 / eps) K((z - theta) / eps)

and, as in the paper, the L0 term sends no gradient to z (only to theta). Decoder rows are kept
at unit norm as for TopK. Gradient-informed selection does not apply: no latents are selected.

One departure, measured (LOG.md, 2026-12-01): theta is a parameter itself, projected to >= 0
after each step (as dictionary_learning does), not exp(log_threshold) as in the paper and SAELens.
Adam moves log theta by about lr per step, i.e. theta by about lr * theta: from theta = 0.001 it
needs thousands of steps to reach the pre-activations' scale, and in a 100-step storyworld run
thresholds moved by 16% whatever the L0 coefficient, leaving L0 at ~600 of 2048 latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saelab.core.sae import SAE, ForwardOutput, SAEConfig, Term, check_number, register
from saelab.core.saelens import SAELensForm


@dataclass(frozen=True, kw_only=True)
class JumpReLUConfig(SAEConfig):
    """JumpReLU: `l0_coeff` (lambda), STE `bandwidth` (eps) and the initial threshold."""

    architecture: str = "jumprelu"
    l0_coeff: float = 1.0
    bandwidth: float = 0.001  # Rajamanoharan et al. 2024 (and SAELens' default)
    threshold_init: float = 0.001

    def __post_init__(self):
        super().__post_init__()
        check_number("l0_coeff", self.l0_coeff)
        check_number("bandwidth", self.bandwidth, 0.0, inclusive=False)
        check_number("threshold_init", self.threshold_init, 0.0, inclusive=False)


def _kernel(z: Tensor, theta: Tensor, eps: float) -> Tensor:
    """Rectangle kernel `K((z - theta) / eps) = 1[|z - theta| < eps / 2]`."""
    return ((z - theta).abs() < eps / 2).to(z.dtype)


def _sum_to_theta(g: Tensor, theta: Tensor) -> Tensor:
    return g.reshape(-1, theta.shape[-1]).sum(0)


class _JumpReLU(torch.autograd.Function):
    """`z * H(z - theta)`; exact gradient in z, STE gradient in theta."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, theta = ctx.saved_tensors
        g_theta = -(theta / ctx.eps) * _kernel(z, theta, ctx.eps) * g
        return g * (z > theta), _sum_to_theta(g_theta, theta), None


class _Step(torch.autograd.Function):
    """`H(z - theta)`; no gradient in z, STE gradient in theta."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, theta = ctx.saved_tensors
        g_theta = -(1.0 / ctx.eps) * _kernel(z, theta, ctx.eps) * g
        return None, _sum_to_theta(g_theta, theta), None


def jumprelu(z: Tensor, theta: Tensor, eps: float) -> Tensor:
    """`z * H(z - theta)` for `z [..., d]`, `theta [d]`, with the STE gradient in theta."""
    return _JumpReLU.apply(z, theta, eps)


def step(z: Tensor, theta: Tensor, eps: float) -> Tensor:
    """`H(z - theta)` for `z [..., d]`, `theta [d]`, with the STE gradient in theta."""
    return _Step.apply(z, theta, eps)


@register
class JumpReLUSAE(SAE):
    """`c = z * H(z - theta)` with a learned per-latent threshold; an L0 penalty via STE."""

    cfg_class = JumpReLUConfig

    def init_params(self, d_in: int, d_sae: int) -> tuple[Tensor, Tensor, Tensor]:
        # Unit decoder rows and an encoder along them (Gao et al. 2024 §A.1), scaled by
        # d_in / d_sae: with thresholds near 0 about half of the latents fire at first, and an
        # unscaled encoder would then reconstruct ~d_sae / (2 d_in) times x. SAELens starts its
        # JumpReLU decoder at norm 0.1 for the same reason; ours stays at unit norm.
        W_enc, b_enc, W_dec = super().init_params(d_in, d_sae)
        return W_enc * (d_in / d_sae), b_enc, W_dec

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), float(cfg.threshold_init)))

    def activation(self, pre: Tensor, grad: Tensor | None) -> Tensor:
        """`z * H(z - theta) [..., d_sae]`."""
        return jumprelu(pre, self.threshold, self.cfg.bandwidth)

    def loss_terms(self, x: Tensor, out: ForwardOutput, dead: Tensor) -> dict[str, Term]:
        """`{"l0_penalty": (lambda, mean_tokens ||c||_0 / d_in)}` with the STE in theta."""
        l0 = step(out.pre, self.threshold, self.cfg.bandwidth).sum(-1).mean() / x.shape[-1]
        return {"l0_penalty": (self.cfg.l0_coeff, l0)}

    saelens_reads = ("jumprelu",)

    def to_saelens(self, scale: float, allow_reduced: bool = False) -> SAELensForm:
        """SAELens' "jumprelu" with the thresholds in raw units."""
        theta = self.threshold.detach().float().clamp_min(0) / scale
        return SAELensForm("jumprelu", weights={"threshold": theta})

    @classmethod
    def saelens_fields(cls, meta: dict, w: dict[str, Tensor], where: str) -> dict[str, Any]:
        """No fields beyond the shared ones; negative thresholds are refused."""
        if (w["threshold"] < 0).any():
            raise ValueError(f"{where}: negative JumpReLU thresholds are not supported")
        return {}

    @torch.no_grad()
    def after_step_(self, out: ForwardOutput) -> None:
        """Renormalise the decoder and keep every threshold >= 0 (theta = 0 is a ReLU)."""
        super().after_step_(out)
        self.threshold.clamp_(min=0.0)
