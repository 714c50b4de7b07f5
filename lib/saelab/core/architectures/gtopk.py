"""Gradient TopK SAE, the g-SAE of Olmo et al. 2024: TopK whose selection uses dL/dx.

    s = z + beta * z * |g_hat D^T|      g_hat = dL/dx at the site, normalised (`grad_norm`)
    c = the k largest s keep ReLU(z) ("plain") or ReLU(s) ("score"); zeros elsewhere
    own loss term: AuxK, as TopK

`GradientSelection` holds the fields and the score so that other selection rules (BatchTopK)
can be gradient-informed too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.core import sparse
from saelab.core.architectures.topk import TopKConfig, TopKSAE, scatter_topk
from saelab.core.sae import check_choice, check_number, register
from saelab.core.saelens import SAELensForm

VALUE_MODES = ("plain", "score")
GRAD_NORMS = ("unit", "rms", "none")
GRAD_EPS = 1e-8


def normalize_grad(grad: Tensor, mode: str) -> Tensor:
    """Normalise `grad [..., d_in]`: "unit" per token, "rms" by its batch RMS, or "none"."""
    # The scale of dL/dx depends on CE mean vs sum and on the batch size, and beta multiplies
    # it, so it is normalised to make beta comparable across runs (ARCHITECTURE.md, g-SAE).
    if mode == "unit":
        return grad / (grad.norm(dim=-1, keepdim=True) + GRAD_EPS)
    if mode == "rms":
        return grad / (grad.pow(2).mean().sqrt() + GRAD_EPS)
    if mode == "none":
        return grad
    raise ValueError(f"grad_norm={mode!r} is unknown; valid: {', '.join(GRAD_NORMS)}")


def gradient_scores(pre: Tensor, grad: Tensor, directions: Tensor, beta: float, mode: str):
    """`s = z + beta z |g_hat D^T| [..., d_sae]` for `pre [..., d_sae]`, `grad [..., d_in]`."""
    g = normalize_grad(grad.detach().to(pre.dtype), mode)
    # addcmul: z + beta * z * |g D^T| in one pass over [..., d_sae] instead of three
    return torch.addcmul(pre, pre, (g @ directions.T).abs(), value=beta)


@dataclass(frozen=True, kw_only=True)
class GradientSelection:
    """Fields of a gradient-informed selection (Olmo et al. 2024 §3)."""

    beta: float = 1.0  # weight of the gradient term in the score
    value_mode: str = "plain"  # selected latents carry ReLU(z) ("plain") or ReLU(s) ("score")
    grad_norm: str = "unit"  # how g = dL/dx is normalised before scoring

    def check_selection(self) -> None:
        """Validate beta, value_mode and grad_norm."""
        check_number("beta", self.beta)
        check_choice("value_mode", self.value_mode, VALUE_MODES)
        check_choice("grad_norm", self.grad_norm, GRAD_NORMS)


@dataclass(frozen=True, kw_only=True)
class GTopKConfig(GradientSelection, TopKConfig):
    """g-SAE: TopK of the gradient-informed score; always needs dL/dx (even at beta = 0)."""

    architecture: str = "gtopk"

    def __post_init__(self):
        super().__post_init__()
        self.check_selection()

    @property
    def needs_grad(self) -> bool:
        return True


@register
class GTopKSAE(TopKSAE):
    """TopK over the score `s = z + beta z |g_hat D^T|` (Olmo et al. 2024 §3)."""

    cfg_class = GTopKConfig

    def scores(self, pre: Tensor, grad: Tensor) -> Tensor:
        """gTopK scores `s = z + beta z |g W_dec^T| [..., d_sae]` (Olmo et al. 2024 §3)."""
        cfg = self.cfg
        return gradient_scores(pre, grad, self.decoder_directions(), cfg.beta, cfg.grad_norm)

    def activation(self, pre: Tensor, grad: Tensor | None) -> Tensor:
        """The k largest scores of each token keep ReLU(z) or ReLU(s); zeros elsewhere."""
        s = self.scores(pre, grad)
        # Olmo et al. do not settle which value a selected latent carries: the plain ReLU(z)
        # (default) or the score; with "score", gradients also flow through the score's |g W_dec^T|.
        carrier = pre if self.cfg.value_mode == "plain" else s
        return scatter_topk(s, carrier, self.cfg.k)

    @torch.no_grad()
    def selection_scores(self, pre: Tensor, grad: Tensor | None) -> Tensor:
        """The score `s [N, d_sae]` the selection ranks (no autograd: indices only)."""
        return self.scores(pre, grad)

    # reads nothing from SAELens (no SAELens SAE selects with dL/dx): `saelens_reads` is not
    # inherited from TopK
    def to_saelens(self, scale: float, allow_reduced: bool = False) -> SAELensForm:
        """With `allow_reduced` only: the TopK it reduces to without dL/dx, flagged."""
        if not allow_reduced:
            raise ValueError(
                "a gtopk SAE selects its latents with dL/dx, which SAELens has no way to do; "
                "pass allow_gtopk=True to export the TopK it reduces to without the gradient "
                "(flagged in the metadata), knowing its outputs differ from the g-SAE's"
            )
        flag = "gtopk: exported as the TopK it reduces to without dL/dx"
        return replace(super().to_saelens(scale), metadata={"saelab_reduced_from": flag})

    def carry(self, x_in, pre, grad, rows, latents, offsets) -> sparse.SparseCodes:
        """ReLU(z) ("plain") or ReLU(s) ("score") at the selected entries, sparse backward."""
        if self.cfg.value_mode == "plain":
            return super().carry(x_in, pre, grad, rows, latents, offsets)
        s = score_at(self, x_in, pre, grad, rows, latents, offsets)
        return sparse.SparseCodes(F.relu(s), latents, rows, offsets, pre.shape[-1])


def score_at(sae, x_in, pre, grad, rows, latents, offsets) -> Tensor:
    """The score `s = z (1 + beta |g_hat . D_l|)` at the selected entries `[nnz]`, with autograd
    through z and D as the dense "score" carrier has (g-SAE or gradient-informed BatchTopK)."""
    cfg = sae.cfg
    z = sparse.selected_pre(x_in, sae.W_enc, sae.b_enc, pre, rows, latents, offsets)
    g = normalize_grad(grad.detach().to(pre.dtype), cfg.grad_norm)
    gd = (g[rows] * sae.decoder_directions()[latents]).sum(-1)  # [nnz], g_hat . D_l
    return z + cfg.beta * z * gd.abs()
