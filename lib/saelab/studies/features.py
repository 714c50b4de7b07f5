"""What a latent is: its activations over a dataset, its ground-truth concepts, its logit effect.

The shared ground of the feature studies (browser, ground-truth recovery, steering):

- `collect` runs the frozen model over a dataset and keeps one SAE's latent activations per token
  (with the storyworld labels when the data has them);
- `concepts` turns storyworld's 40 labels (binary or categorical) into binary concepts, one per
  (label, value) with value != "none";
- `logit_effects` reads a decoder direction through the final norm's gain and the unembedding:
  the tokens a latent promotes and suppresses when it is written into the residual stream
  (the "logit lens" of the direction; Olmo et al. 2024 §5 use these tokens for steering).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.core.models import get_arch, get_module, parse_site
from saelab.core.passes import clean_pass
from saelab.core.sae import SAE
from saelab.storyworld.corpus import LABELS


@dataclass
class Activations:
    """One SAE's latents on `tokens [R, T]`: `acts [R, T, d_sae]`, `labels [R, T, L]` or None."""

    tokens: Tensor
    acts: Tensor
    labels: Tensor | None = None

    @property
    def flat(self) -> Tensor:
        """Activations as `[R * T, d_sae]` (row-major: token t of row r is at r * T + t)."""
        return self.acts.flatten(0, 1)

    def density(self) -> Tensor:
        """Fraction of tokens on which each latent fires, `[d_sae]`."""
        return (self.flat > 0).float().mean(0)

    def alive(self) -> Tensor:
        """Boolean mask `[d_sae]` of latents that fired at least once."""
        return (self.flat > 0).any(0)


def collect(lm, sae: SAE, data, n_tokens: int = 32_768, batch_size: int = 32) -> Activations:
    """Latent activations of `sae` on the first ~`n_tokens` of `data` (rows in stored order).

    A g-SAE's selection needs dL/dx, i.e. the true next token: its activations are those of the
    training objective, measured with the label in hand (Olmo et al. 2024 §3).
    """
    site = sae.cfg.input_site(parse_site(sae.cfg.site))  # a transcoder reads the MLP's input
    n_rows = max(1, min(len(data), n_tokens // data.n_ctx))
    grads = sae.needs_grad
    chunks = []
    for i in range(0, n_rows, batch_size):
        tokens = data.tokens[i : min(i + batch_size, n_rows)]
        clean = clean_pass(lm, tokens.to(lm.device), [site], grads=grads)
        clean = clean.seen_by_saes(None, sae.dtype)
        g = clean.grads[site] if grads else None
        with torch.no_grad():
            chunks.append(sae.encode(clean.acts[site], g)[0].float().cpu())
    labels = data.labels[:n_rows] if data.labels is not None else None
    return Activations(data.tokens[:n_rows], torch.cat(chunks), labels)


def concepts(labels: Tensor) -> tuple[list[str], Tensor]:
    """Binary concepts `[N, C]` from storyworld labels `[..., L]`, and their names.

    A binary label gives one concept (`is_name`); a categorical one a concept per value other
    than "none" (`pronoun_gender=female`).
    """
    labels = labels.reshape(-1, labels.shape[-1])
    names, cols = [], []
    for i, lab in enumerate(LABELS):
        if len(lab.values) == 2 and lab.values[0] == "no":
            names.append(lab.name)
            cols.append(labels[:, i] == 1)
            continue
        for v, value in enumerate(lab.values[1:], start=1):
            names.append(f"{lab.name}={value}")
            cols.append(labels[:, i] == v)
    return names, torch.stack(cols, 1)


def unembed(lm) -> tuple[Tensor, Tensor, bool]:
    """The unembedding `W_U [V, d]`, the final norm's gain `[d]`, and whether it centres (LN)."""
    model = lm._model if hasattr(lm, "_model") else lm
    norm = get_module(model, get_arch(lm).final_norm)
    head = model.get_output_embeddings()
    return head.weight.detach(), norm.weight.detach(), isinstance(norm, torch.nn.LayerNorm)


def logit_effects(lm, directions: Tensor) -> Tensor:
    """Direct effect of residual directions `[n, d]` on the logits, `[n, V]`.

    The final norm's scale depends on the whole residual, so we keep only its direction-wise part:
    centre (LayerNorm), multiply by the gain, project on the unembedding.
    """
    W_U, gain, centre = unembed(lm)
    d = directions.detach().to(W_U.dtype)
    if centre:
        d = d - d.mean(-1, keepdim=True)
    return (d * gain) @ W_U.T
