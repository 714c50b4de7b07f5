"""Matryoshka BatchTopK SAE (Bussmann et al. 2025, arXiv 2503.17547): nested dictionaries.

    widths:     m_1 < m_2 < ... < m_n = d_sae; the first m_i latents (prefix i) must reconstruct
                x on their own: x_hat_i = c[:m_i] D[:m_i] + b_dec
    selection:  BatchTopK over the whole dictionary, once (`batchtopk`); the prefixes share the
                codes, so a prefix's L0 is the part of the full L0 that falls inside it
    own terms:  AuxK (as TopK), and prefix_coeff * MSE(x_hat_i, x) for each inner prefix i < n.
                The full dictionary's reconstruction is the objective's term (MSE for `local`,
                the KL for `e2e`), so under `local` every prefix weighs the same, as in the paper
                and SAELens (`inner_mse_loss_<width>`, each with weight 1)

Default widths: d_sae/16, /8, /4, /2 and d_sae, the cumulative sums of Bussmann et al.'s group
sizes (d/16, d/16, d/8, d/4, d/2). Early latents are pushed towards general features that every
prefix needs, later ones towards specific ones, which is what stops a general latent being
absorbed into the specific latents that co-occur with it.

Under `e2e` and `e2e+ds` the inner prefixes keep their MSE terms: the prefix loss is local, and
only the full dictionary is trained on the KL. A KL per prefix would need one spliced pass from
the site onwards per prefix; ARCHITECTURE.md §3 ("Matryoshka") gives the choice and its cost.
With `beta > 0` the selection is gradient-informed, as `batchtopk`'s.

After training it is a BatchTopK SAE with its latents in order: SAELens saves it as JumpReLU with
every threshold at theta (`to_saelens`, inherited), and `prefix(width)` is the SAE of the first
`width` latents, for evaluating a prefix on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from saelab.core import losses, sparse
from saelab.core.architectures.batchtopk import BatchTopKConfig, BatchTopKSAE
from saelab.core.sae import SAE, ForwardOutput, SAEConfig, Term, check_number, is_int, register

GROUP_DIVISORS = (16, 8, 4, 2)  # the default inner widths: d_sae // 16, // 8, // 4, // 2


@dataclass(frozen=True, kw_only=True)
class MatryoshkaConfig(BatchTopKConfig):
    """Matryoshka BatchTopK: nested prefixes of the dictionary, each reconstructing on its own.

    `matryoshka_widths`: the prefix widths, strictly increasing (SAELens' field); d_sae is
    appended when the last is smaller; (): d_sae // 16, // 8, // 4, // 2 and d_sae."""

    architecture: str = "matryoshka"
    matryoshka_widths: tuple[int, ...] = ()
    prefix_coeff: float = 1.0  # the weight of each inner prefix's MSE

    def __post_init__(self):
        super().__post_init__()
        widths = self.matryoshka_widths
        if isinstance(widths, int | str) or not all(is_int(w) and w >= 1 for w in widths):
            raise ValueError(f"matryoshka_widths={widths!r} must be a list of ints >= 1")
        object.__setattr__(self, "matryoshka_widths", tuple(widths))  # JSON gives a list
        if any(b <= a for a, b in zip(widths, widths[1:], strict=False)):
            raise ValueError(f"matryoshka_widths={list(widths)} must be strictly increasing")
        if self.d_sae is not None and widths and widths[-1] > self.d_sae:
            raise ValueError(f"matryoshka_widths={list(widths)} go past d_sae={self.d_sae}")
        check_number("prefix_coeff", self.prefix_coeff)

    @property
    def widths(self) -> tuple[int, ...]:
        """Every prefix's width, the last `d_sae` (the config must have its d_sae)."""
        d = self.d_sae
        if not self.matryoshka_widths:  # Bussmann et al.'s groups
            return (*sorted({d // g for g in GROUP_DIVISORS if 1 <= d // g < d}), d)
        return (*[w for w in self.matryoshka_widths if w < d], d)


@register
class MatryoshkaSAE(BatchTopKSAE):
    """A BatchTopK SAE whose every prefix of `widths` is trained to reconstruct on its own."""

    cfg_class = MatryoshkaConfig
    saelens_reads = ("matryoshka_batchtopk",)  # a SAELens training folder

    @classmethod
    def saelens_fields(cls, meta: dict, w: dict[str, Tensor], where: str) -> dict[str, Any]:
        """BatchTopK's fields (`k`, the threshold) and SAELens' `matryoshka_widths`."""
        return super().saelens_fields(meta, w, where) | {
            "matryoshka_widths": tuple(int(x) for x in meta.get("matryoshka_widths") or ())
        }

    def prefix_reconstructions(self, out: ForwardOutput) -> dict[int, Tensor]:
        """`{width: x_hat_i}` of each inner prefix, `[..., d_in]` in the SAE's own units
        (`normalize`), from the codes of `out` (the full dictionary's forward)."""
        directions, shape = self.decoder_directions(), (*out.x_hat.shape[:-1], self.cfg.d_in)
        recons = {}
        for width in self.cfg.widths[:-1]:
            if out.codes is not None:  # the sparse path: the entries of latents below width
                inside = out.codes.values * (out.codes.latents < width)
                part = sparse.decode(out.codes._replace(values=inside), directions)
            else:
                part = out.c[..., :width] @ directions[:width]
            recons[width] = part.reshape(shape) + self.b_dec
        return recons

    def loss_terms(self, x: Tensor, out: ForwardOutput, dead: Tensor) -> dict[str, Term]:
        """AuxK, and `prefix<width>_mse: (prefix_coeff, MSE(x_hat_i, x))` per inner prefix."""
        terms = super().loss_terms(x, out, dead)
        for width, x_hat in self.prefix_reconstructions(out).items():
            terms[f"prefix{width}_mse"] = (self.cfg.prefix_coeff, losses.mse_loss(x_hat, x))
        return terms

    @torch.no_grad()
    def prefix(self, width: int) -> SAE:
        """The BatchTopK SAE of the first `width` latents (a width of `widths`), in eval mode:
        with the inference threshold its codes are the full SAE's codes below `width`."""
        if width not in self.cfg.widths:
            raise ValueError(f"width={width!r} is not a prefix; the prefixes: "
                             f"{list(self.cfg.widths)}")  # fmt: skip
        kw = {f.name: getattr(self.cfg, f.name) for f in fields(BatchTopKConfig)}
        k_aux = kw["k_aux"] and min(kw["k_aux"], width)
        cfg = SAEConfig.create(**(kw | {"architecture": "batchtopk", "d_sae": width,
                                        "k": min(self.cfg.k, width), "k_aux": k_aux}))  # fmt: skip
        with torch.random.fork_rng(devices=[]):  # its throwaway init leaves the RNG alone
            small = SAE.from_config(cfg).to(device=self.device, dtype=self.dtype)
        state = {n: t[..., :width] if n in ("W_enc", "b_enc") else t[:width] if n == "W_dec"
                 else t for n, t in self.state_dict().items()}  # fmt: skip
        small.load_state_dict(state)
        return small.eval()
