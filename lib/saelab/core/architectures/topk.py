"""TopK SAE (Gao et al. 2024): exactly k active latents per token, AuxK against dead latents.

    c = scatter(TopK_k(z), ReLU)   (the k largest pre-activations keep ReLU(z), the rest are 0)
    own loss term: auxk_coeff * AuxK   (Gao et al. 2024 §A.2; a zero term while no latent is dead)

Decoder rows stay unit norm by projection after each step, and the gradient's component along
each row is removed before it (Gao et al. 2024 §A.1, openai/sparse_autoencoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.core import losses
from saelab.core.sae import SAE, ForwardOutput, SAEConfig, Term, check_number, is_int, register


@dataclass(frozen=True, kw_only=True)
class TopKConfig(SAEConfig):
    """TopK SAE: `k` active latents per token; AuxK over `k_aux` dead latents."""

    architecture: str = "topk"
    k: int | None = None  # active latents per token (required)
    k_aux: int | None = None  # AuxK latents; None: min(d_in // 2, d_sae) (Gao et al. 2024 §A.2)
    auxk_coeff: float = 1 / 32  # Gao et al. 2024 §A.2

    def __post_init__(self):
        super().__post_init__()
        if self.k is None:
            raise ValueError(f"k is required for architecture={self.architecture!r}")
        if not is_int(self.k) or self.k < 1:
            raise ValueError(f"k={self.k!r} must be an int >= 1")
        if self.d_sae is not None and self.k > self.d_sae:
            raise ValueError(f"k={self.k} > d_sae={self.d_sae}")
        if self.k_aux is not None and (
            not is_int(self.k_aux) or self.k_aux < 1 or (self.d_sae and self.k_aux > self.d_sae)
        ):
            raise ValueError(
                f"k_aux={self.k_aux!r} must be None or an int in [1, d_sae={self.d_sae}]"
            )
        check_number("auxk_coeff", self.auxk_coeff)

    @property
    def n_aux(self) -> int:
        """AuxK latent count: `k_aux`, or d_in // 2 capped at d_sae (Gao et al. 2024 §A.2)."""
        return self.k_aux if self.k_aux is not None else max(1, min(self.d_in // 2, self.d_sae))


def scatter_topk(select: Tensor, carrier: Tensor, k: int) -> Tensor:
    """Zeros except, at the `k` largest entries of `select [..., d]`, ReLU of `carrier` there."""
    indices = select.topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(carrier).scatter(-1, indices, F.relu(carrier.gather(-1, indices)))


@register
class TopKSAE(SAE):
    """`c = TopK(z)`: the k largest pre-activations per token keep ReLU(z)."""

    cfg_class = TopKConfig

    def activation(self, pre: Tensor, grad: Tensor | None) -> Tensor:
        """The k largest of `pre [..., d_sae]` with ReLU, zeros elsewhere."""
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))

    def loss_terms(self, x: Tensor, out: ForwardOutput, dead: Tensor) -> dict[str, Term]:
        """`{"auxk": (auxk_coeff, AuxK)}`; an exact zero (in the graph) while no latent is dead."""
        if self.cfg.auxk_coeff == 0:
            return {}
        if not bool(dead.any()):  # no dead latent: a zero term keeps the log's keys fixed
            return {"auxk": (self.cfg.auxk_coeff, out.pre.sum() * 0)}
        aux = losses.auxk_loss(
            x - out.x_hat.detach(), out.pre, self.decoder_directions(), dead, self.cfg.n_aux
        )
        return {"auxk": (self.cfg.auxk_coeff, aux)}
