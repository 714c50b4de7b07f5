"""Loss terms for SAE training; the training step weights and sums them (ARCHITECTURE.md §3-4).

Pure functions of tensors. `...` is any leading shape (usually `[batch, pos]`); every loss is a
0-dim tensor averaged over tokens, so values do not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def sparsity_loss(c: Tensor, d_in: int, p: float = 1.0) -> Tensor:
    """`||c||_p` per token `c [..., d_sae]`, mean over tokens, divided by `d_in` -> scalar."""
    # Braun et al. 2024 §2 (e2e_sae): dividing by d_in keeps the coefficient comparable across
    # sites of different width; the coefficient itself is applied by the caller.
    return torch.norm(c, p=p, dim=-1).mean() / d_in


def mse_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """Mean squared error over all elements of `x_hat, x [..., d_in]` -> scalar."""
    return F.mse_loss(x_hat, x)


def kl_loss(logits_clean: Tensor, logits_sae: Tensor) -> Tensor:
    """`KL(P_clean || P_sae)` per token of `[..., vocab]` logits, mean over tokens -> scalar."""
    # Braun et al. 2024 §2: the clean distribution is the fixed target, so no gradient reaches
    # it; log_softmax on both sides for stability with peaked distributions.
    logp_clean = F.log_softmax(logits_clean.detach().float(), dim=-1)
    logp_sae = F.log_softmax(logits_sae.float(), dim=-1)
    kl = (logp_clean.exp() * (logp_clean - logp_sae)).sum(-1)
    return kl.mean()


def downstream_mse(resids_sae: Sequence[Tensor], resids_clean: Sequence[Tensor]) -> Tensor:
    """Mean over later layers of `MSE(resid_sae, resid_clean)`, each `[..., d_model]` -> scalar."""
    # Braun et al. 2024 §2 (e2e+ds) weights the sum by ds_coeff / n_later; this is that mean.
    if len(resids_sae) != len(resids_clean):
        raise ValueError(
            f"downstream_mse got {len(resids_sae)} SAE residuals and {len(resids_clean)} clean ones"
        )
    if len(resids_sae) == 0:
        raise ValueError("downstream_mse needs at least one later layer")
    losses = [F.mse_loss(a, b.detach()) for a, b in zip(resids_sae, resids_clean, strict=True)]
    return torch.stack(losses).mean()


def auxk_loss(
    residual: Tensor, pre: Tensor, W_dec_dirs: Tensor, dead_mask: Tensor, k_aux: int
) -> Tensor:
    """AuxK: NMSE of reconstructing `residual [..., d_in]` from the top-`k_aux` dead latents.

    `pre [..., d_sae]` are the pre-activations, `W_dec_dirs [d_sae, d_in]` the unit decoder rows,
    `dead_mask [d_sae]` marks dead latents. Returns a scalar (zero, still in the graph, if none
    is dead); the caller multiplies it by its coefficient (1/32 in Gao et al. 2024 §A.2).
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
    e_hat = c_aux @ W_dec_dirs
    # Normalised by the residual's variance (sum over tokens and dims of its deviation from the
    # mean residual), as sparsify does with the input's variance: the loss stays O(1) as the main
    # reconstruction improves and the residual shrinks, so one coefficient works all run long.
    variance = (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
    return (e_hat - e).pow(2).sum() / variance
