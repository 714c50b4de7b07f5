"""BatchTopK SAE (Bussmann et al. 2024, arXiv 2412.06410): TopK over the whole batch.

    training:   the k * N largest pre-activations of the batch's N tokens keep ReLU(z), so the
                mean L0 is k but each token gets as many latents as it needs
    inference:  c = ReLU(z) * 1[z > theta], one global threshold theta, estimated during training
                as a running mean (decay `threshold_decay`) of the smallest positive activation
                that the batch selection kept (Bussmann et al. 2024 §3). That minimum is the
                (k * N)-th largest activation of the batch, a quantile of thousands of values
                and stable from batch to batch, so a short horizon (0.9, ~10 steps) lets theta
                follow the encoder as it trains; dictionary_learning's 0.999 would hold the
                untrained encoder's value for ~1000 steps, past the end of short runs
                (measured: LOG.md, 2026-12-01, "BatchTopK's threshold decay").
    own loss term: AuxK, as TopK

With `beta > 0` the selection is gradient-informed as in the g-SAE (Olmo et al. 2024 §3): the
batch's k * N largest scores `s = z + beta z |g_hat D^T|` are kept, and theta is a threshold on s.
`self.training` picks the rule: `saelab.train` trains in train mode; `load_sae`, `train`'s result
and `evaluate` use eval mode. Before any estimate (theta < 0) eval mode falls back to the batch
rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.core import sparse
from saelab.core.architectures.gtopk import GradientSelection, gradient_scores, score_at
from saelab.core.architectures.topk import TopKConfig, TopKSAE
from saelab.core.sae import ForwardOutput, check_number, register
from saelab.core.saelens import SAELensForm

SAMPLE_STRIDE = 97  # batch_top estimates its threshold from every 97th entry (a prime stride)


@torch.no_grad()
def batch_top(select: Tensor, k: int) -> Tensor:
    """Ascending flat indices of the `k N` largest entries of `select [N, d_sae]`.

    Exact, without ranking all `N d_sae` entries: a low threshold from a strided sample (a
    quantile a margin below the `k N`-th largest) keeps a superset of the answer; the exact
    threshold is the `(k N)`-th largest of that superset. If the sample misjudged (too few kept)
    the margin widens; on ties at the threshold the whole matrix is ranked instead. A top-k over
    the `N d_sae` entries costs several times this on a CPU (LOG.md 2026-12-02).
    """
    flat = select.reshape(-1)
    total = flat.numel()
    n_keep = min(k * select.shape[0], total)
    sample = flat[::SAMPLE_STRIDE]
    for margin in (1.25, 2.0, 4.0):
        above = min(sample.numel(), int(margin * n_keep / total * sample.numel()) + 1)
        if above >= sample.numel():
            break
        low = sample.kthvalue(sample.numel() - above + 1).values
        cand = (flat >= low).nonzero().squeeze(1)  # ascending
        if cand.numel() < n_keep:
            continue  # the sample put the bar too high: lower it
        vals = flat[cand]
        theta = vals.kthvalue(vals.numel() - n_keep + 1).values
        top = cand[vals >= theta]
        if top.numel() == n_keep:
            return top
        break  # ties at theta
    return flat.topk(n_keep, sorted=False).indices.sort().values


@dataclass(frozen=True, kw_only=True)
class BatchTopKConfig(GradientSelection, TopKConfig):
    """BatchTopK: mean L0 `k` over the batch; beta > 0 makes the selection gradient-informed."""

    architecture: str = "batchtopk"
    beta: float = 0.0  # 0: plain BatchTopK (no dL/dx needed)
    threshold_decay: float = 0.9  # running mean of the inference threshold (see the module doc)

    def __post_init__(self):
        super().__post_init__()
        self.check_selection()
        check_number("threshold_decay", self.threshold_decay)
        if self.threshold_decay >= 1:
            raise ValueError(f"threshold_decay={self.threshold_decay!r} must be in [0, 1)")

    @property
    def needs_grad(self) -> bool:
        return self.beta > 0


@register
class BatchTopKSAE(TopKSAE):
    """Top `k * N` activations over a batch of N tokens; a global threshold at inference."""

    cfg_class = BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        # theta < 0: not estimated yet. A buffer, so it is saved, loaded and moved with the SAE.
        self.register_buffer("threshold", torch.tensor(-1.0))
        self._batch_min: Tensor | None = None  # the last training batch's smallest kept value

    @property
    def per_token_k(self) -> int | None:
        """None: the batch selection gives each token as many latents as it needs."""
        return None

    saelens_reads = ("batchtopk",)  # a SAELens training folder (its `topk_threshold`)

    def to_saelens(self, scale: float, allow_reduced: bool = False) -> SAELensForm:
        """SAELens' "jumprelu" with every threshold at the global inference threshold theta."""
        if self.cfg.needs_grad:
            raise ValueError("a gradient-informed BatchTopK (beta > 0) needs dL/dx; SAELens "
                             "cannot select with it")  # fmt: skip
        if float(self.threshold) < 0:
            raise ValueError("this BatchTopK SAE has no inference threshold yet (it was never "
                             "trained); train it first")  # fmt: skip
        theta = torch.full((self.cfg.d_sae,), float(self.threshold) / scale)
        return SAELensForm("jumprelu", weights={"threshold": theta})

    @classmethod
    def saelens_fields(cls, meta: dict, w: dict[str, Tensor], where: str) -> dict[str, Any]:
        """`k`, and SAELens' `topk_threshold` as the inference threshold theta."""
        kw = super().saelens_fields(meta, w, where)
        if "topk_threshold" not in w:
            raise ValueError(f"{where}: a batchtopk folder without topk_threshold")
        w["threshold"] = w.pop("topk_threshold").reshape(())
        return kw

    def select_and_carry(self, pre: Tensor, grad: Tensor | None) -> tuple[Tensor, Tensor]:
        """The selection score `[..., d_sae]` and the value a selected latent carries."""
        if grad is None:
            return pre, pre
        cfg = self.cfg
        s = gradient_scores(pre, grad, self.decoder_directions(), cfg.beta, cfg.grad_norm)
        return s, (pre if cfg.value_mode == "plain" else s)

    def activation(self, pre: Tensor, grad: Tensor | None) -> Tensor:
        """Batch selection in train mode (or before theta exists); the threshold otherwise."""
        select, carrier = self.select_and_carry(pre, grad)
        if not self.training and self.threshold >= 0:
            return F.relu(carrier) * (select > self.threshold)
        flat_s, flat_c = select.reshape(-1), carrier.reshape(-1)
        n_keep = min(self.cfg.k * (flat_s.numel() // pre.shape[-1]), flat_s.numel())
        idx = flat_s.topk(n_keep, sorted=False).indices
        kept = F.relu(flat_c.gather(0, idx))
        if self.training:  # the candidate for theta: the smallest kept value that fired
            fired = kept > 0
            self._batch_min = flat_s.gather(0, idx)[fired].min().detach() if fired.any() else None
        return torch.zeros_like(flat_c).scatter(0, idx, kept).view_as(pre)

    @torch.no_grad()
    def selection_scores(self, pre: Tensor, grad: Tensor | None) -> Tensor:
        """What the selection ranks `[N, d_sae]`: z, or the gradient-informed score."""
        return self.select_and_carry(pre, grad)[0]

    def carry(self, x_in, pre, grad, rows, latents, offsets):
        """ReLU(z) or, gradient-informed with value_mode "score", ReLU(s) at the entries."""
        if grad is None or self.cfg.value_mode == "plain":
            return super().carry(x_in, pre, grad, rows, latents, offsets)
        s = score_at(self, x_in, pre, grad, rows, latents, offsets)
        return sparse.SparseCodes(F.relu(s), latents, rows, offsets, pre.shape[-1])

    def sparse_codes(self, x_in: Tensor, pre: Tensor, grad: Tensor | None):
        """The batch's k N largest scores (train mode), or those above theta (eval mode)."""
        select = self.selection_scores(pre, grad)
        n_tokens, d_sae = pre.shape
        with torch.no_grad():
            if not self.training and self.threshold >= 0:
                flat = (select > self.threshold).reshape(-1).nonzero().squeeze(1)
            else:
                flat = batch_top(select, self.cfg.k)
        codes = self.carry(x_in, pre, grad, *sparse.from_flat(flat, n_tokens, d_sae))
        if self.training:
            with torch.no_grad():  # the candidate for theta: the smallest kept value that fired
                fired = codes.values > 0
                kept = select.reshape(-1)[flat]
                self._batch_min = kept[fired].min() if bool(fired.any()) else None
        return codes

    @torch.no_grad()
    def after_step_(self, out: ForwardOutput) -> None:
        """Renormalise the decoder and fold the batch's smallest kept value into theta."""
        super().after_step_(out)
        m = self._batch_min
        if m is None:
            return
        if self.threshold < 0:
            self.threshold.copy_(m)
        else:
            d = self.cfg.threshold_decay
            self.threshold.mul_(d).add_((1 - d) * m)
        self._batch_min = None
