"""Transcoders and skip transcoders: a TopK dictionary that reads the MLP's input and writes its
output, so that spliced in it replaces the MLP (Dunefsky, Chlenski & Nanda 2024, arXiv
2406.11944; the skip path: Paulo, Shabalin & Belrose 2025, arXiv 2501.18823, as sparsify trains
them).

    x = mlp_in.L (after the pre-MLP norm), y = mlp_out.L, s = act_scale measured on x
    c = TopK_k(W_enc^T (x s) + b_enc)
    y_hat = (c W_dec + b_dec [+ (x s) W_skip^T]) / s          skip_transcoder: W_skip [d, d]
    local: MSE(y_hat s, y s); e2e / e2e+ds: the KL (and later layers) with y_hat at mlp_out.L

A transcoder is trained at the site it writes, `sites=("mlp_out.L",)`, and reads `mlp_in.L`
(`input_site`); any other site is refused. One scale `s` serves both sides, measured on the
input as "expected_average_only_in" says, so the target is in the input's units; TopK has no
sparsity coefficient whose meaning that could change. `b_dec` lives in the output space: it
starts at the target's mean (TopK's rule) and is never subtracted from the input.

As sparsify does for transcoders, the decoder starts at zero and is not held to unit-norm rows
(an MLP's output is not a rescaled copy of its input, so tied unit directions are no start);
the encoder starts with random unit-norm columns. W_skip starts at zero, as in SAELens and
sparsify. ARCHITECTURE.md §3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saelab.core.architectures.topk import TopKConfig, TopKSAE
from saelab.core.models import Site
from saelab.core.sae import SAE, ForwardOutput, register


@dataclass(frozen=True, kw_only=True)
class TranscoderConfig(TopKConfig):
    """A TopK transcoder: `k` active latents per token, read at mlp_in.L, written at mlp_out.L."""

    architecture: str = "transcoder"

    def __post_init__(self):
        super().__post_init__()
        if self.pre_subtract_b_dec:
            raise ValueError(f"architecture={self.architecture!r}: pre_subtract_b_dec=True "
                             "would subtract the output's bias from the input; leave it "
                             "False")  # fmt: skip

    def input_site(self, site: Site) -> Site:
        """`mlp_in.L` for `site` = `mlp_out.L`; any other site is refused."""
        if site.kind != "mlp_out":
            raise ValueError(
                f"architecture={self.architecture!r} reads mlp_in.L and writes mlp_out.L, the "
                f"MLP it replaces: train it at an mlp_out site (e.g. mlp_out.{site.layer}), "
                f"not {site}"
            )
        return Site("mlp_in", site.layer)


@register
class TranscoderSAE(TopKSAE):
    """`y_hat = TopK(x W_enc + b_enc) W_dec + b_dec`, with x the MLP's input, y its output."""

    cfg_class = TranscoderConfig

    def init_params(self, d_in: int, d_sae: int) -> tuple[Tensor, Tensor, Tensor]:
        """Random unit-norm encoder columns, a zero decoder (sparsify's transcoder init)."""
        W_enc = F.normalize(torch.randn(d_sae, d_in), dim=-1).T.clone()
        return W_enc, torch.zeros(d_sae), torch.zeros(d_sae, d_in)

    def before_step_(self) -> None:
        """Nothing: the decoder's rows are free, so no gradient component is removed."""

    @torch.no_grad()
    def after_step_(self, out: ForwardOutput) -> None:
        """Nothing: the decoder's rows keep their norms (they carry the output's scale)."""

    # SAELens' Transcoder classes select with ReLU or JumpReLU, not TopK: no equivalent, so the
    # base class's refusal (which lists the exportable architectures), not TopK's export
    to_saelens = SAE.to_saelens


@dataclass(frozen=True, kw_only=True)
class SkipTranscoderConfig(TranscoderConfig):
    """A TopK transcoder plus a learned linear path from the MLP's input to its output."""

    architecture: str = "skip_transcoder"


@register
class SkipTranscoderSAE(TranscoderSAE):
    """A transcoder whose output adds `x W_skip^T` (`W_skip [d_in, d_in]`, zero at init): the
    linear part of the MLP need not be spent on latents (Paulo et al. 2025 §2)."""

    cfg_class = SkipTranscoderConfig

    def __init__(self, cfg: SkipTranscoderConfig):
        super().__init__(cfg)
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_in))

    def forward(self, x: Tensor, grad: Tensor | None = None) -> ForwardOutput:
        """The transcoder's output for `x [..., d_in]` plus the skip path (the latents, `c`,
        and `decode(c)` are the dictionary's part alone)."""
        out = super().forward(x, grad)
        skip = self.normalize(x) @ self.W_skip.T / self.act_scale
        return out._replace(x_hat=out.x_hat + skip)
