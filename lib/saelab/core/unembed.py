"""The unembedding, streamed: KL and next-token CE from the final hidden state, a chunk of
tokens at a time, without ever holding `[B, T, V]` logits.

At a 128k-262k vocabulary a batch's logits dwarf everything else an e2e step holds: 2 x 1,024
tokens x 262,144 entries are 2.1 GB in float32, and the clean and spliced passes each made them
(ARCHITECTURE.md §2). When a batch's logits would exceed `STREAM_LOGITS` entries, the passes
(`passes.clean_pass`, `passes.spliced_pass`) skip the model's output embedding and return the
hidden state that feeds it, wrapped as `Streamed`; the losses then unembed a few tokens at a
time (`STREAM_CHUNK` logits). Their gradient has a closed form (as in fused linear-cross-entropy
kernels): in the logits it is `softmax(z) - p` (KL) or `softmax(z) - onehot(y)` (CE), so each
chunk's contribution to `dL/dh = (dL/dz) W` is computed in the forward pass itself and the
backward only scales it by the incoming per-token gradient. No chunk of logits outlives its
loop iteration.

Below `STREAM_LOGITS` the logits are materialised as before (one matmul is faster than many),
so the embedded storyworld model's runs are unchanged; tests/test_unembed.py checks that both
paths give the same losses and gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.core.losses import _chunk_rows, _rowdot

# A batch whose logits would hold more entries than this streams them (256 MiB in float32).
STREAM_LOGITS = 2**26
# Logits per streamed chunk (32 MiB in float32: 32 tokens at V = 262,144). A chunk's loop holds a
# few such tensors: at 2^24 (`losses.CHUNK_ELEMENTS`) they were a quarter of what an e2e step held
# above a local step on the Gemma-shaped benchmark model; at 2^22 the CPU step was ~25% slower
# (LOG.md 2026-12-04, e2e without [B, T, V] logits).
STREAM_CHUNK = 2**23


@dataclass(frozen=True)
class Unembed:
    """The model's output embedding: `logits = softcap(h @ weight.T + bias)`."""

    weight: Tensor  # [V, d_model], frozen
    bias: Tensor | None  # [V]
    softcap: float | None  # Gemma 2's final_logit_softcapping: z -> cap * tanh(z / cap)
    path: str  # the module's dotted path in the model (the envoy the passes skip)

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]

    def logits(self, h: Tensor) -> Tensor:
        """Float32 logits `[n, V]` of hidden states `h [n, d]`, computed as the model does (in
        its dtype, softcapped there), then upcast as the losses read them."""
        z = F.linear(h, self.weight, self.bias)
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z.float()

    def grad_hidden(self, gz: Tensor, z: Tensor) -> Tensor:
        """`dL/dh [n, d]` (float32) from `dL/dz [n, V]` at float32 logits `z` (softcap's chain
        rule: dz/du = 1 - (z / cap)^2)."""
        if self.softcap:
            gz = gz * (1 - (z / self.softcap) ** 2)
        return (gz.to(self.weight.dtype) @ self.weight).float()


def unembedding(lm) -> Unembed:
    """The `Unembed` of an nnsight `LanguageModel` (HF's `get_output_embeddings`)."""
    module = lm._module.get_output_embeddings()
    path = next(name for name, m in lm._module.named_modules() if m is module)
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    return Unembed(module.weight.detach(), getattr(module, "bias", None), softcap, path)


def streams(n_tokens: int, vocab: int) -> bool:
    """Whether a pass over `n_tokens` tokens should stream its logits (`STREAM_LOGITS`)."""
    return n_tokens * vocab > STREAM_LOGITS


@dataclass
class Streamed:
    """Logits not materialised: the final hidden state `h [..., d]` and the `Unembed` that maps
    it to logits `[..., V]`. Indexing slices the leading (token) dimensions."""

    h: Tensor
    unembed: Unembed

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.h.shape[:-1], self.unembed.vocab)

    def __getitem__(self, idx) -> Streamed:
        return Streamed(self.h[idx], self.unembed)

    def flat(self) -> Tensor:
        """`h` as `[N, d]`."""
        return self.h.reshape(-1, self.h.shape[-1])


class _ClosedForm(torch.autograd.Function):
    """A per-token loss `[N]` of hidden states `h [N, d]` whose forward pass already computed
    each token's gradient `dloss_n/dh_n [N, d]`: the backward scales it by the incoming `g [N]`."""

    @staticmethod
    def buffers(h: Tensor, want: bool) -> tuple[Tensor, Tensor | None]:
        """The per-token losses `[N]` and, when a gradient is `want`ed, `dloss/dh [N, d]`."""
        out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        return out, torch.empty(h.shape, dtype=torch.float32, device=h.device) if want else None

    @staticmethod
    def keep(ctx, grad: Tensor | None, dtype: torch.dtype, out: Tensor) -> Tensor:
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        ctx.dtype = dtype
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        (grad,) = ctx.saved_tensors
        return (g[:, None] * grad).to(ctx.dtype), None, None, None, None


class _StreamedKL(_ClosedForm):
    """Per-token KL(P_clean || P_sae) from hidden states `[N, d]`, `rows` tokens at a time; the
    same arithmetic as `losses._ChunkedKL` on each chunk's logits."""

    @staticmethod
    def forward(ctx, h_sae: Tensor, h_clean: Tensor, u: Unembed, rows: int, want: bool) -> Tensor:
        out, grad = _ClosedForm.buffers(h_sae, want)
        for i in range(0, h_sae.shape[0], rows):
            lp = F.log_softmax(u.logits(h_clean[i : i + rows]), dim=-1)
            p = lp.exp()
            z = u.logits(h_sae[i : i + rows])
            lq = F.log_softmax(z, dim=-1)
            out[i : i + rows] = _rowdot(p, lp) - _rowdot(p, lq)
            if grad is not None:  # dKL/dz = softmax(z) - p
                grad[i : i + rows] = u.grad_hidden(lq.exp_().sub_(p), z)
        return _ClosedForm.keep(ctx, grad, h_sae.dtype, out)


class _StreamedCE(_ClosedForm):
    """Per-token cross-entropy of hidden states `h [N, d]` against `targets [N]`."""

    @staticmethod
    def forward(ctx, h: Tensor, targets: Tensor, u: Unembed, rows: int, want: bool) -> Tensor:
        out, grad = _ClosedForm.buffers(h, want)
        for i in range(0, h.shape[0], rows):
            z = u.logits(h[i : i + rows])
            y = targets[i : i + rows]
            out[i : i + rows] = F.cross_entropy(z, y, reduction="none")
            if grad is not None:  # dCE/dz = softmax(z) - onehot(y)
                p = F.softmax(z, dim=-1)
                p[torch.arange(p.shape[0], device=p.device), y] -= 1
                grad[i : i + rows] = u.grad_hidden(p, z)
        return _ClosedForm.keep(ctx, grad, h.dtype, out)


def kl_streamed(clean: Streamed, sae: Streamed) -> Tensor:
    """`KL(P_clean || P_sae)` per token, mean over tokens -> scalar; `losses.kl_loss` on logits
    that are never materialised. No gradient reaches the clean side (Braun et al. 2024 §2)."""
    u, h = sae.unembed, sae.flat()
    return _StreamedKL.apply(
        h, clean.flat().detach(), u, _chunk_rows(u.vocab, STREAM_CHUNK), _wants_grad(h)
    ).mean()


def ce_streamed(logits: Streamed, targets: Tensor) -> Tensor:
    """Per-token cross-entropy `[N]` of streamed logits `[..., V]` against `targets [...]`."""
    u, h = logits.unembed, logits.flat()
    return _StreamedCE.apply(
        h, targets.reshape(-1), u, _chunk_rows(u.vocab, STREAM_CHUNK), _wants_grad(h)
    )


def _wants_grad(h: Tensor) -> bool:
    """Whether autograd will ask for `dL/dh` (not under `torch.no_grad`, where `forward` cannot
    tell: its inputs still say `requires_grad`)."""
    return torch.is_grad_enabled() and h.requires_grad
