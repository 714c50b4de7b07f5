"""ReLU SAE with an Lp sparsity penalty: the architecture of Braun et al. 2024 (e2e_sae).

    c = ReLU(z),  z = x W_enc + b_enc,  x_hat = c D + b_dec,  D = rows of W_dec normalised
    own loss term: phi * ||c||_p / d_in  (mean over tokens)

The decoder is normalised inside forward (gradients flow through the normalisation), as e2e_sae
does, so there is no projection after the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.core import losses
from saelab.core.sae import SAE, ForwardOutput, SAEConfig, Term, check_number, register


@dataclass(frozen=True, kw_only=True)
class ReLUConfig(SAEConfig):
    """ReLU SAE: `sparsity` is phi, the coefficient of the Lp penalty with exponent `sparsity_p`."""

    architecture: str = "relu"
    sparsity: float = 1.0
    sparsity_p: float = 1.0
    # False: decoder rows used as stored (an SAE imported from SAELens whose rows are not unit)
    normalize_decoder: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_number("sparsity", self.sparsity)
        check_number("sparsity_p", self.sparsity_p, 0.0, inclusive=False)


@register
class ReLUSAE(SAE):
    """`c = ReLU(z)` with unit-norm decoder directions taken inside forward (Braun et al. §2)."""

    cfg_class = ReLUConfig

    def init_params(self, d_in: int, d_sae: int) -> tuple[Tensor, Tensor, Tensor]:
        # e2e_sae (Braun et al. 2024 §2): nn.Linear's default encoder init and an orthogonal
        # decoder (rows normalised here too, which the forward pass does anyway). b_dec starts
        # at zero rather than nn.Linear's random bias, as for TopK.
        bound = 1 / math.sqrt(d_in)
        W_enc = torch.empty(d_in, d_sae).uniform_(-bound, bound)
        b_enc = torch.empty(d_sae).uniform_(-bound, bound)
        W_dec = F.normalize(torch.nn.init.orthogonal_(torch.empty(d_sae, d_in)), dim=-1)
        return W_enc, b_enc, W_dec

    def decoder_directions(self) -> Tensor:
        """Unit-norm dictionary directions `[d_sae, d_in]`, normalised inside forward."""
        # e2e_sae normalises inside forward, so gradients flow through the normalisation.
        return F.normalize(self.W_dec, dim=-1) if self.cfg.normalize_decoder else self.W_dec

    def activation(self, pre: Tensor, grad: Tensor | None) -> Tensor:
        """`ReLU(z) [..., d_sae]`."""
        return F.relu(pre)

    def loss_terms(self, x: Tensor, out: ForwardOutput, dead: Tensor) -> dict[str, Term]:
        """`{"sparsity": (phi, ||c||_p / d_in)}`."""
        cfg = self.cfg
        return {
            "sparsity": (
                cfg.sparsity,
                losses.sparsity_loss(out.c, x.shape[-1], cfg.sparsity_p, nonnegative=True),
            )
        }

    def remove_parallel_decoder_grad_(self) -> None:
        """No-op: the decoder is normalised inside forward, not projected."""

    def normalize_decoder_(self) -> None:
        """No-op: the decoder is normalised inside forward, not projected."""
