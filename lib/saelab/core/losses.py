"""Loss terms for SAE training; the training step weights and sums them (ARCHITECTURE.md §3-4).

Pure functions of tensors. `...` is any leading shape (usually `[batch, pos]`); every loss is a
0-dim tensor averaged over tokens, so values do not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def sparsity_loss(c: Tensor, d_in: int, p: float = 1.0, nonnegative: bool = False) -> Tensor:
    """`||c||_p` per token `c [..., d_sae]`, mean over tokens, divided by `d_in` -> scalar.

    `nonnegative=True` promises `c >= 0` (ReLU latents): the L1 norm is then the plain sum,
    one pass over `c` forward and none extra backward (no |c|, no sign).
    """
    # Braun et al. 2024 §2 (e2e_sae): dividing by d_in keeps the coefficient comparable across
    # sites of different width; the coefficient itself is applied by the caller.
    if p == 1 and nonnegative:
        return c.sum() / (c[..., 0].numel() * d_in)
    return torch.norm(c, p=p, dim=-1).mean() / d_in


def mse_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """Mean squared error over all elements of `x_hat, x [..., d_in]` -> scalar."""
    return F.mse_loss(x_hat, x)


CHUNK_ELEMENTS = 2**24  # logits per chunk (64 MiB in float32) in the chunked KL and CE


def _chunk_rows(n_vocab: int, chunk_elements: int | None) -> int:
    return max(1, (chunk_elements or CHUNK_ELEMENTS) // n_vocab)


SAVE_ELEMENTS = 2**26  # up to this many logits (256 MiB), the KL keeps log P_sae for backward


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """`sum_j a[i, j] b[i, j]` per row of `[n, V]` tensors."""
    # mul + sum, not bmm: as fast on a CPU, and torch.sum's cascade summation keeps the KL (a
    # difference of two such sums, each ~10 nats) accurate to ~1e-7 where bmm's running sum
    # drifted by ~4e-5 over 2,048 logits
    return (a * b).sum(-1)


class KLTarget(NamedTuple):
    """The clean side of KL(P_clean || P_sae) for `N` tokens: `probs [N, V]` (float32) and each
    row's `neg_entropy [N]` (`sum_v p log p`). Computed once per batch (`kl_target`), shared by
    every SAE trained on that batch (`training.train_many`)."""

    probs: Tensor
    neg_entropy: Tensor


@torch.no_grad()
def kl_target(logits_clean: Tensor, chunk_elements: int | None = None,
              in_place: bool = False) -> KLTarget:  # fmt: skip
    """`KLTarget` of clean `logits [..., V]`, a chunk of rows at a time. `in_place=True` turns
    float32 logits into the probabilities themselves (no second `[N, V]` tensor)."""
    V = logits_clean.shape[-1]
    flat = logits_clean.detach().reshape(-1, V)
    own = in_place and flat.dtype == torch.float32
    probs = flat if own else torch.empty(flat.shape, dtype=torch.float32, device=flat.device)
    neg_entropy = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    rows = _chunk_rows(V, chunk_elements)
    for i in range(0, flat.shape[0], rows):
        lp = F.log_softmax(flat[i : i + rows].float(), dim=-1)
        p = torch.exp(lp, out=probs[i : i + rows])
        neg_entropy[i : i + rows] = _rowdot(p, lp)
    return KLTarget(probs, neg_entropy)


class _ChunkedKL(torch.autograd.Function):
    """Per-token KL(P_clean || softmax(sae)) from a `KLTarget` and `[N, V]` SAE logits.

    `KL = sum p log p - sum p log q` per row: the first term comes with the target, the second
    is a row-wise dot product, so the forward pass over the SAE logits is one log_softmax and
    one read. The gradient in the SAE logits is `softmax(sae) - p` per row, built in place from
    log q kept from the forward pass when the logits are few (`SAVE_ELEMENTS`); otherwise
    recomputed a chunk at a time, so that no `[N, V]` float32 intermediate is held for a large
    vocabulary.
    """

    @staticmethod
    def forward(ctx, probs: Tensor, neg_entropy: Tensor, sae: Tensor, rows: int) -> Tensor:
        out = torch.empty(sae.shape[0], dtype=torch.float32, device=sae.device)
        keep = sae.numel() <= SAVE_ELEMENTS
        saved = []
        for i in range(0, sae.shape[0], rows):
            lp_s = F.log_softmax(sae[i : i + rows].float(), dim=-1)
            out[i : i + rows] = neg_entropy[i : i + rows] - _rowdot(probs[i : i + rows], lp_s)
            if keep:
                saved.append(lp_s)
        ctx.save_for_backward(probs, sae)
        ctx.rows, ctx.saved = rows, saved
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        probs, sae = ctx.saved_tensors
        grad = None
        if ctx.rows < sae.shape[0] or sae.dtype != torch.float32:
            grad = torch.empty_like(sae)
        for j, i in enumerate(range(0, sae.shape[0], ctx.rows)):
            if ctx.saved:
                p_s = ctx.saved[j].exp_()  # log q is not needed again: exponentiate in place
            else:
                p_s = F.softmax(sae[i : i + ctx.rows].float(), dim=-1)
            p_s.sub_(probs[i : i + ctx.rows]).mul_(g[i : i + ctx.rows, None])
            if grad is None:  # one float32 chunk: it is the gradient
                grad = p_s
            else:
                grad[i : i + ctx.rows] = p_s
        ctx.saved = []
        return None, None, grad, None


def kl_loss(logits_clean: Tensor | None, logits_sae: Tensor, chunk_elements: int | None = None,
            target: KLTarget | None = None) -> Tensor:  # fmt: skip
    """`KL(P_clean || P_sae)` per token of `[..., vocab]` logits, mean over tokens -> scalar.

    Computed `chunk_elements` logits at a time (default `CHUNK_ELEMENTS`), so peak memory does
    not grow with batch x positions x vocab beyond the logits themselves (and, up to
    `SAVE_ELEMENTS` logits, one float32 copy kept for the backward). `target`: the clean side
    already computed (`kl_target`), in place of `logits_clean`.
    """
    # Braun et al. 2024 §2: the clean distribution is the fixed target, so no gradient reaches
    # it; log-probabilities on both sides for stability with peaked distributions.
    V = logits_sae.shape[-1]
    if target is None:
        target = kl_target(logits_clean, chunk_elements)
    rows = _chunk_rows(V, chunk_elements)
    return _ChunkedKL.apply(*target, logits_sae.reshape(-1, V), rows).mean()


class _ChunkedCE(torch.autograd.Function):
    """Per-row cross-entropy of `[N, V]` logits against `targets [N]`, a chunk at a time."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, rows: int) -> Tensor:
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for i in range(0, logits.shape[0], rows):
            chunk = logits[i : i + rows].float()
            out[i : i + rows] = F.cross_entropy(chunk, targets[i : i + rows], reduction="none")
        ctx.save_for_backward(logits, targets)
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        logits, targets = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for i in range(0, logits.shape[0], ctx.rows):
            p = F.softmax(logits[i : i + ctx.rows].float(), dim=-1)
            p[torch.arange(p.shape[0], device=p.device), targets[i : i + ctx.rows]] -= 1
            grad[i : i + ctx.rows] = (g[i : i + ctx.rows, None] * p).to(logits.dtype)
        return grad, None, None


def cross_entropy(
    logits: Tensor, targets: Tensor, reduction: str = "mean", chunk_elements: int | None = None
) -> Tensor:
    """Cross-entropy of `logits [N, V]` against `targets [N]`, in float32, chunked as `kl_loss`."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r} is not one of 'mean', 'sum', 'none'")
    rows = _chunk_rows(logits.shape[-1], chunk_elements)
    per_row = _ChunkedCE.apply(logits, targets, rows)
    return {"mean": per_row.mean, "sum": per_row.sum}.get(reduction, lambda: per_row)()


def downstream_mse(
    resids_sae: Sequence[Tensor], resids_clean: Sequence[Tensor], normalise: bool = True
) -> Tensor:
    """Mean over later layers of each layer's reconstruction error, `[..., d_model]` -> scalar.

    `normalise` (default): each layer's `sum (r_sae - r_clean)^2 / sum r_clean^2` over the batch,
    the MSE in units of the clean residual's mean square (detached), so the term means the same
    on every model and layer; else the raw `MSE(r_sae, r_clean)` of Braun et al. 2024 §2.3, whose
    ds_coeff 2.5 fits GPT-2's residual scale only (ARCHITECTURE.md §4).
    """
    # Braun et al. 2024 §2 (e2e+ds) weights the sum by ds_coeff / n_later; this is that mean.
    if len(resids_sae) != len(resids_clean):
        raise ValueError(
            f"downstream_mse got {len(resids_sae)} SAE residuals and {len(resids_clean)} clean ones"
        )
    if len(resids_sae) == 0:
        raise ValueError("downstream_mse needs at least one later layer")
    errs = []
    for a, b in zip(resids_sae, resids_clean, strict=True):
        b = b.detach()
        mse = F.mse_loss(a, b)
        errs.append(mse / b.float().pow(2).mean().clamp_min(1e-12) if normalise else mse)
    return torch.stack(errs).mean()


def auxk_loss(
    residual: Tensor, pre: Tensor, W_dec_dirs: Tensor, dead_mask: Tensor, k_aux: int
) -> Tensor:
    """AuxK: NMSE of reconstructing `residual [..., d_in]` from the top-`k_aux` dead latents.

    `pre [..., d_sae]` are the pre-activations, `W_dec_dirs [d_sae, d_in]` the decoder rows (unit
    but for transcoders), `dead_mask [d_sae]` marks dead latents. Returns a scalar (zero, still
    in the graph, if none is dead); the caller multiplies it by its coefficient (1/32 in Gao et
    al. 2024 §A.2).
    """
    # Gao et al. 2024 §A.2: residual = x - x_hat.detach() is a target, so it is detached here too.
    # The decode has no bias: b_dec is already inside x_hat, so the residual is bias-free.
    n_dead = int(dead_mask.sum())
    if n_dead == 0:
        return pre.sum() * 0
    e = residual.detach().reshape(-1, residual.shape[-1])
    z = pre.reshape(-1, pre.shape[-1])
    masked = torch.where(dead_mask.to(z.device), z, torch.full_like(z, -torch.inf))
    values, indices = masked.topk(min(k_aux, n_dead), dim=-1, sorted=False)
    c_aux = torch.zeros_like(z).scatter(-1, indices, F.relu(values))
    return auxk_nmse(e, c_aux @ W_dec_dirs)


def auxk_nmse(residual: Tensor, e_hat: Tensor) -> Tensor:
    """AuxK's value: `||e_hat - e||^2 / ||e - mean e||^2` for `residual e, e_hat [N, d_in]`."""
    # Normalised by the residual's variance (sum over tokens and dims of its deviation from the
    # mean residual), as sparsify does with the input's variance: the loss stays O(1) as the main
    # reconstruction improves and the residual shrinks, so one coefficient works all run long.
    e = residual.detach()
    variance = (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
    return (e_hat - e).pow(2).sum() / variance
