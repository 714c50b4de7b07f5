"""TopK SAE (Gao et al. 2024): exactly k active latents per token, AuxK against dead latents.

    c = scatter(TopK_k(z), ReLU)   (the k largest pre-activations keep ReLU(z), the rest are 0)
    own loss term: auxk_coeff * AuxK   (Gao et al. 2024 §A.2; a zero term while no latent is dead)

Decoder rows stay unit norm by projection after each step, and the gradient's component along
each row is removed before it (Gao et al. 2024 §A.1, openai/sparse_autoencoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.core import losses, sparse
from saelab.core.sae import SAE, ForwardOutput, SAEConfig, Term, check_number, is_int, register
from saelab.core.saelens import SAELensForm


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
    b_dec_from_data = True  # Gao et al. 2024 §2.1 / openai: the bias starts at the data's centre

    def activation(self, pre: Tensor, grad: Tensor | None) -> Tensor:
        """The k largest of `pre [..., d_sae]` with ReLU, zeros elsewhere."""
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))

    @property
    def per_token_k(self) -> int | None:
        """`k`: exactly k latents are selected for every token."""
        return self.cfg.k

    saelens_reads = ("topk",)

    def to_saelens(self, scale: float, allow_reduced: bool = False) -> SAELensForm:
        """SAELens' "topk" with the same `k`, selecting on the pre-activations as they are."""
        return SAELensForm("topk", cfg={"k": self.cfg.k, "rescale_acts_by_decoder_norm": False})

    @classmethod
    def saelens_fields(cls, meta: dict, w: dict[str, Tensor], where: str) -> dict[str, Any]:
        """`k` from the SAELens config, which must be a whole number."""
        k = meta["k"]
        if isinstance(k, float) and not k.is_integer():
            raise ValueError(f"{where}: k={k} is not a whole number of latents")
        return {"k": int(k)}

    def sparse_pays(self) -> bool:
        """Sparse kernels from d_sae >= 16 k, or from d_in >= 256 at any d_sae: below that the
        dense matmuls are cheaper than the selection bookkeeping (benchmarks, LOG.md 2026-12-02)."""
        return self.cfg.d_sae >= 16 * self.cfg.k or self.cfg.d_in >= 256

    @torch.no_grad()
    def selection_scores(self, pre: Tensor, grad: Tensor | None) -> Tensor:
        """What the selection ranks, `[N, d_sae]`: the pre-activations themselves for TopK."""
        return pre

    def carry(self, x_in: Tensor, pre: Tensor, grad: Tensor | None, rows: Tensor,
              latents: Tensor, offsets: Tensor) -> sparse.SparseCodes:  # fmt: skip
        """Codes whose values are ReLU of the selected pre-activations (sparse backward)."""
        z = sparse.selected_pre(x_in, self.W_enc, self.b_enc, pre, rows, latents, offsets)
        return sparse.SparseCodes(F.relu(z), latents, rows, offsets, pre.shape[-1])

    def sparse_codes(self, x_in: Tensor, pre: Tensor, grad: Tensor | None) -> sparse.SparseCodes:
        """The k largest selection scores of each token (`sparse.SparseCodes`, `k` per token)."""
        idx = self.selection_scores(pre, grad).topk(self.cfg.k, dim=-1, sorted=False).indices
        return self.carry(x_in, pre, grad, *sparse.per_token(idx))

    def loss_terms(self, x: Tensor, out: ForwardOutput, dead: Tensor) -> dict[str, Term]:
        """`{"auxk": (auxk_coeff, AuxK)}`; an exact zero (in the graph) while no latent is dead."""
        if self.cfg.auxk_coeff == 0:
            return {}
        if not bool(dead.any()):  # no dead latent: a zero term keeps the log's keys fixed
            return {"auxk": (self.cfg.auxk_coeff, out.x_hat.sum() * 0)}
        residual = x - out.x_hat.detach()
        if out.codes is None:
            aux = losses.auxk_loss(residual, out.pre, self.decoder_directions(), dead,
                                   self.cfg.n_aux)  # fmt: skip
            return {"auxk": (self.cfg.auxk_coeff, aux)}
        # the sparse path: the top dead latents are encoded and decoded through their entries only
        pre = out.pre.reshape(-1, out.pre.shape[-1])
        with torch.no_grad():  # rank the dead columns only: [N, n_dead], not [N, d_sae]
            dead_ids = dead.to(pre.device).nonzero().squeeze(1)
            n = min(self.cfg.n_aux, dead_ids.numel())
            idx = dead_ids[pre.index_select(1, dead_ids).topk(n, dim=-1, sorted=False).indices]
        rows, latents, offsets = sparse.per_token(idx)
        z = sparse.selected_pre(out.enc_in, self.W_enc, self.b_enc, pre, rows, latents, offsets)
        codes = sparse.SparseCodes(F.relu(z), latents, rows, offsets, pre.shape[-1])
        e_hat = sparse.decode(codes, self.decoder_directions())
        aux = losses.auxk_nmse(residual.reshape(-1, residual.shape[-1]), e_hat)
        return {"auxk": (self.cfg.auxk_coeff, aux)}
