"""The two forward passes every method needs, written once as nnsight interventions.

- `clean_pass`: the frozen model as it is. Reads the SAE sites (and the later residual stream for
  downstream losses/metrics), optionally the logits, and for g-SAEs the gradient of the model's
  next-token loss with respect to each site, dL/dx (Olmo et al. 2024 §3).
- `spliced_pass`: the same model with each site's activation replaced by its SAE's
  reconstruction (all sites at once, in execution order, as e2e_sae does), or by zeros (the
  zero-ablation baseline of `ce_loss_score`).

The frozen model dominates cost (ARCHITECTURE.md §2): when the first site is a residual-stream
site, the spliced pass skips every block before it and feeds the cached clean residual instead of
recomputing it (exact, since those blocks see no SAE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from saelab.core.models import (
    Site,
    block_list,
    get_site,
    parse_site,
    set_site,
    skip_block,
    sort_sites,
)
from saelab.core.sae import SAE, ForwardOutput


def later_sites(lm, sites: list[Site]) -> list[Site]:
    """Residual stream after the last site: resid_post of every later layer (incl. the final)."""
    last = max(sites, key=lambda s: (s.layer, s.kind == "resid_post"))
    first = last.layer + 1 if last.kind == "resid_post" else last.layer
    return [Site("resid_post", layer) for layer in range(first, len(block_list(lm)))]


def next_token_ce(logits: torch.Tensor, tokens: torch.Tensor, reduction="mean") -> torch.Tensor:
    """Cross-entropy of `logits [B, T, V]` predicting `tokens [B, T]` shifted by one."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction=reduction
    )


@dataclass
class Clean:
    """Clean-pass results: site activations and grads `[B, T, d]`, logits, later residuals."""

    acts: dict[Site, torch.Tensor]
    grads: dict[Site, torch.Tensor] | None
    logits: torch.Tensor | None
    later: list[torch.Tensor]


def clean_pass(
    lm, tokens: torch.Tensor, sites, later=(), logits: bool = False, grads: bool = False
) -> Clean:
    """Run the frozen model on `tokens [B, T]`; everything returned is detached.

    Stops right after the last site when neither logits, later residuals nor grads are needed
    (local training).
    """
    sites = sort_sites(sites)
    later = list(later)
    # nnsight hands back only `.save()`d values bound to names, or put into containers created
    # outside the trace; a dict built inside the trace would vanish. Hence the pre-made holders.
    acts: dict[Site, torch.Tensor] = {}
    after: list[torch.Tensor] = []
    res: dict[str, torch.Tensor] = {}
    if not grads:
        with torch.no_grad(), lm.trace(tokens) as tracer:
            for s in sites:
                acts[s] = get_site(lm, s).save()
            for s in later:
                after.append(get_site(lm, s).save())
            if logits:
                res["logits"] = lm.output.logits.save()
            elif not later:
                tracer.stop()
        return Clean(acts, None, res.get("logits"), after)
    # dL/dx at each site: the sites become graph nodes, the loss is backpropagated through the
    # frozen model (weights need no grad), and nnsight hands back each site's .grad.
    g: dict[Site, torch.Tensor] = {}
    with lm.trace(tokens):
        xs = []
        for s in sites:
            x = get_site(lm, s)
            if not x.requires_grad:
                x.requires_grad_(True)
            xs.append(x)
            acts[s] = x.detach().save()
        for s in later:
            after.append(get_site(lm, s).detach().save())
        out = lm.output.logits
        res["logits"] = out.detach().save()
        loss = next_token_ce(out, tokens)
        with loss.backward():
            for s, x in reversed(list(zip(sites, xs, strict=True))):  # grads arrive last-first
                g[s] = x.grad.save()
    return Clean(acts, g, res["logits"] if logits else None, after)


@dataclass
class Spliced:
    """Spliced-pass results: each SAE's output, the logits, later residuals (with autograd)."""

    outs: dict[Site, ForwardOutput]
    logits: torch.Tensor | None
    later: list[torch.Tensor]


def skippable_blocks(site: Site) -> int:
    """How many leading blocks the spliced pass can skip for a first site (0 = none)."""
    if site.kind == "resid_pre":
        return site.layer
    return site.layer + 1 if site.kind == "resid_post" else 0


def spliced_pass(
    lm,
    tokens: torch.Tensor,
    saes: dict[Site, SAE] | None,
    clean: Clean,
    later=(),
    logits: bool = True,
    zero_sites=None,
) -> Spliced:
    """Run `tokens [B, T]` with every site replaced by its SAE reconstruction (or zeros).

    `saes` maps sites to SAEs; `zero_sites` (instead of `saes`) zero-ablates those sites.
    Autograd stays on, so a loss on the returned logits/residuals trains the SAEs.
    """
    sites = sort_sites(list(saes) if saes is not None else zero_sites)
    grads = clean.grads or {}
    later = list(later)

    def replace(s: Site, x: torch.Tensor):
        if saes is None:
            return torch.zeros_like(x), None
        out = saes[s](x, grad=grads.get(s))
        return out.x_hat, out

    outs: dict[Site, ForwardOutput] = {}
    after: list[torch.Tensor] = []
    res: dict[str, torch.Tensor] = {}
    with lm.trace(tokens):
        first, rest = sites[0], sites[1:]
        n_skip = skippable_blocks(first)
        if n_skip:
            # the blocks before the first site see no SAE: reuse the clean pass's residual
            x_hat, out = replace(first, clean.acts[first])
            for layer in range(n_skip):
                skip_block(lm, layer, x_hat)
            if out is not None:
                outs[first] = ForwardOutput(*(t.save() for t in out))
        else:
            rest = sites
        for s in rest:
            x_hat, out = replace(s, get_site(lm, s))
            set_site(lm, s, x_hat)
            if out is not None:
                outs[s] = ForwardOutput(*(t.save() for t in out))
        for s in later:
            after.append(get_site(lm, s).save())
        if logits:
            res["logits"] = lm.output.logits.save()
    return Spliced(outs, res.get("logits"), after)


def as_sites(saes) -> dict[Site, SAE]:
    """Normalise `{site name or Site: SAE}` (or one SAE with `cfg.site`) to `{Site: SAE}`."""
    if isinstance(saes, SAE):
        saes = {saes.cfg.site: saes}
    return {parse_site(k): v for k, v in saes.items()}
