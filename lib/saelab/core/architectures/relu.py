"""ReLU SAE with an Lp sparsity penalty: the architecture of Braun et al. 2024 (e2e_sae).

    c = ReLU(z),  z = x W_enc + b_enc,  x_hat = c D + b_dec,  D = rows of W_dec normalised
    own loss term: phi * ||c||_p / d_in  (mean over tokens)

The decoder is normalised inside forward (gradients flow through the normalisation), as e2e_sae
does, so there is no projection after the step. Only the directions of W_dec's rows enter the
function; their stored norms set how fast Adam turns them (a step moves a row by ~lr, so its
direction by ~lr / ||row||). The default init (`decoder_init="orthogonal_raw"`) is e2e_sae's:
orthonormal columns, so rows of norm ~sqrt(d_in / d_sae) (0.35 at 64 x 512), which turn
sqrt(d_sae / d_in) times faster than the unit rows of `decoder_init="unit"` (measured: LOG.md
2026-12-01, "ReLU init").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.core import losses
from saelab.core.sae import (
    SAE,
    ForwardOutput,
    SAEConfig,
    Term,
    check_choice,
    check_number,
    register,
)
from saelab.core.saelens import SAELensForm

# "orthogonal_raw": e2e_sae's init (Braun et al. 2024; e2e_sae/models/sparsifiers.py): W_dec
#   [d_sae, d_in] with orthonormal columns, rows stored at their raw norms ~sqrt(d_in / d_sae),
#   and nn.Linear's random decoder bias; "unit": the same directions, rows normalised, b_dec = 0
#   (a cfg.json without the field is read as "unit": `ReLUConfig.saved_defaults`)
DECODER_INITS = ("orthogonal_raw", "unit")


@dataclass(frozen=True, kw_only=True)
class ReLUConfig(SAEConfig):
    """ReLU SAE: `sparsity` is phi, the coefficient of the Lp penalty with exponent `sparsity_p`."""

    architecture: str = "relu"
    sparsity: float = 1.0
    sparsity_p: float = 1.0
    # False: decoder rows used as stored (an SAE imported from SAELens whose rows are not unit)
    normalize_decoder: bool = True
    decoder_init: str = "orthogonal_raw"  # one of DECODER_INITS; only the init depends on it

    # a cfg.json written before `decoder_init` existed holds an SAE initialised with unit rows
    saved_defaults: ClassVar[dict[str, Any]] = {**SAEConfig.saved_defaults, "decoder_init": "unit"}

    def __post_init__(self):
        super().__post_init__()
        check_number("sparsity", self.sparsity)
        check_number("sparsity_p", self.sparsity_p, 0.0, inclusive=False)
        check_choice("decoder_init", self.decoder_init, DECODER_INITS)


@register
class ReLUSAE(SAE):
    """`c = ReLU(z)` with unit-norm decoder directions taken inside forward (Braun et al. §2)."""

    cfg_class = ReLUConfig

    def __init__(self, cfg: ReLUConfig):
        super().__init__(cfg)
        if cfg.decoder_init == "orthogonal_raw":
            # e2e_sae's decoder is nn.Linear(d_sae, d_in): its bias starts U(-1/sqrt(d_sae),
            # 1/sqrt(d_sae)). Drawn after W_dec, so the initial directions do not depend on it.
            bound = 1 / math.sqrt(cfg.d_sae)
            with torch.no_grad():
                self.b_dec.uniform_(-bound, bound)

    def init_params(self, d_in: int, d_sae: int) -> tuple[Tensor, Tensor, Tensor]:
        # e2e_sae (Braun et al. 2024 §2): the encoder is nn.Linear(d_in, d_sae) with its default
        # init, W and b ~ U(-1/sqrt(d_in), 1/sqrt(d_in)); the decoder weight [d_in, d_sae] is
        # `orthogonal_(weight.T).T`, i.e. our W_dec [d_sae, d_in] = orthogonal_ of that shape:
        # d_in orthonormal columns of length d_sae, so each row has norm ~sqrt(d_in / d_sae).
        # "unit" normalises the rows (the same directions; the forward pass normalises anyway).
        bound = 1 / math.sqrt(d_in)
        W_enc = torch.empty(d_in, d_sae).uniform_(-bound, bound)
        b_enc = torch.empty(d_sae).uniform_(-bound, bound)
        W_dec = torch.nn.init.orthogonal_(torch.empty(d_sae, d_in))
        if self.cfg.decoder_init == "unit":
            W_dec = F.normalize(W_dec, dim=-1)
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

    saelens_reads = ("standard",)

    def to_saelens(self, scale: float, allow_reduced: bool = False) -> SAELensForm:
        """SAELens' "standard" SAE; `saelens.raw_weights` writes the normalised decoder rows."""
        return SAELensForm("standard")

    @classmethod
    def saelens_fields(cls, meta: dict, w: dict[str, Tensor], where: str) -> dict[str, Any]:
        """`normalize_decoder`: False (rows used as stored) unless SAELens' rows are unit."""
        unit = torch.allclose(w["W_dec"].norm(dim=-1), torch.ones(meta["d_sae"]), atol=1e-5)
        if unit:
            w["W_dec"] = F.normalize(w["W_dec"], dim=-1)
        return {"normalize_decoder": bool(unit)}

    def remove_parallel_decoder_grad_(self) -> None:
        """No-op: the decoder is normalised inside forward, not projected."""

    def normalize_decoder_(self) -> None:
        """No-op: the decoder is normalised inside forward, not projected."""
