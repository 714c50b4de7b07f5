"""Sparse kernels of the TopK family: encode and decode through the selected latents only.

A TopK-family SAE keeps `nnz` of the `N x d_sae` latents of a batch (`k` per token for TopK
and the g-SAE, `k N` over the batch for BatchTopK). The dense path multiplies the full
`[N, d_sae]` latent matrix by the decoder and backpropagates through the full encoder matmul,
though all but `nnz` of its entries are zero. Here (ARCHITECTURE.md §2, "sparse kernels"):

    forward   z = x W_enc + b_enc            dense, without autograd (it only picks the latents)
              v = z[rows, latents]           the selected pre-activations, `[nnz]`, with autograd
              x_hat = sum_j v_j D[latent_j]  an `embedding_bag` sum per token, as sparsify does
    backward  dL/dx[n]   = sum over token n's entries of g_j W_enc[:, latent_j]   (embedding_bag)
              dL/dW_enc[:, l] = sum over latent l's entries of g_j x[row_j]       (embedding_bag)
              dL/db_enc[l] = sum over latent l's entries of g_j                    (index_add)

so after the one dense encoder matmul the step costs `O(nnz d_in)` instead of `O(N d_sae d_in)`.
`SparseCodes` holds a batch's selected latents; `ForwardOutput.c` densifies them on demand.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class SparseCodes(NamedTuple):
    """The active entries of latents `c [N, d_sae]`: `c[rows[j], latents[j]] = values[j]`.

    `values [nnz]` carries autograd; `latents`, `rows [nnz]` are int64 with `rows` ascending;
    `offsets [N]` is where each token's entries start (the layout `F.embedding_bag` takes).
    """

    values: Tensor
    latents: Tensor
    rows: Tensor
    offsets: Tensor
    d_sae: int

    @property
    def n_tokens(self) -> int:
        return self.offsets.shape[0]

    def dense(self) -> Tensor:
        """The latents as a dense `[N, d_sae]` tensor (differentiable in `values`)."""
        c = self.values.new_zeros(self.n_tokens, self.d_sae)
        return c.index_put((self.rows, self.latents), self.values)

    @torch.no_grad()
    def fired(self) -> Tensor:
        """`[d_sae]` bool: latents with a nonzero value on some token of the batch."""
        hit = self.values.new_zeros(self.d_sae, dtype=torch.bool)
        return hit.index_fill_(0, self.latents[self.values != 0], True)

    @torch.no_grad()
    def l0(self) -> float:
        """Mean count of nonzero latents per token."""
        return float((self.values != 0).sum()) / max(1, self.n_tokens)


def offsets_of(rows: Tensor, n_tokens: int) -> Tensor:
    """Start of each token's entries `[N]` for ascending `rows [nnz]` (empty tokens allowed)."""
    counts = torch.bincount(rows, minlength=n_tokens)
    return torch.cumsum(counts, 0) - counts


def per_token(indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`(rows, latents, offsets)` of `indices [N, k]`, the same count of latents per token."""
    n, k = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(k)
    return rows, indices.reshape(-1), torch.arange(0, n * k, k, device=indices.device)


def from_flat(flat: Tensor, n_tokens: int, d_sae: int) -> tuple[Tensor, Tensor, Tensor]:
    """`(rows, latents, offsets)` of ascending flat indices `flat [nnz]` into `[N * d_sae]`."""
    rows = torch.div(flat, d_sae, rounding_mode="floor")
    return rows, flat - rows * d_sae, offsets_of(rows, n_tokens)


class _SelectedPre(torch.autograd.Function):
    """`z[rows, latents]` of `z = x W_enc + b_enc`, given its value, with a sparse backward.

    `selected` is the value, read from a dense `z` computed without autograd; the backward
    reaches `x`, `W_enc`, `b_enc` through the `nnz` selected entries only (module docstring).
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, selected, rows, latents, offsets):
        ctx.save_for_backward(x, W_enc, rows, latents, offsets)
        return selected.clone()

    @staticmethod
    def backward(ctx, g):
        x, W_enc, rows, latents, offsets = ctx.saved_tensors
        g = g.contiguous()
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            # dL/dx[n] = sum_j g_j W_enc[:, latent_j] over token n's entries
            grad_x = F.embedding_bag(latents, W_enc.t().contiguous(), offsets, mode="sum",
                                     per_sample_weights=g)  # fmt: skip
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            order = torch.argsort(latents, stable=True)  # group the entries by latent
            by_latent = latents[order]
            if ctx.needs_input_grad[1]:
                starts = offsets_of(by_latent, W_enc.shape[1])
                # dL/dW_enc[:, l] = sum_j g_j x[row_j] over latent l's entries
                grad_W = F.embedding_bag(rows[order], x, starts, mode="sum",
                                         per_sample_weights=g[order]).t()  # fmt: skip
            if ctx.needs_input_grad[2]:
                grad_b = g.new_zeros(W_enc.shape[1]).index_add_(0, by_latent, g[order])
        return grad_x, grad_W, grad_b, None, None, None, None


def selected_pre(x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, rows: Tensor,
                 latents: Tensor, offsets: Tensor) -> Tensor:  # fmt: skip
    """Selected pre-activations `[nnz]` of `x [N, d_in]` with the sparse backward.

    `pre [N, d_sae]` is `x W_enc + b_enc` computed without autograd; `rows, latents [nnz]` pick
    the entries (rows ascending, `offsets [N]` their starts).
    """
    return _SelectedPre.apply(x, W_enc, b_enc, pre[rows, latents], rows, latents, offsets)


def decode(codes: SparseCodes, directions: Tensor) -> Tensor:
    """`c D` for sparse `codes` and `directions D [d_sae, d_in]` -> `[N, d_in]` (no bias)."""
    # embedding_bag: per token the weighted sum of its selected rows of D, never [N, d_sae]
    return F.embedding_bag(codes.latents, directions, codes.offsets, mode="sum",
                           per_sample_weights=codes.values.to(directions.dtype))  # fmt: skip
