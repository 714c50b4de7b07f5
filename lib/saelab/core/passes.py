"""The two forward passes every method needs, written once as nnsight interventions.

- `clean_pass`: the frozen model as it is. Reads the SAE sites (and the later residual stream for
  downstream losses/metrics), optionally the logits, and for g-SAEs the gradient of the model's
  next-token loss with respect to each site, dL/dx (Olmo et al. 2024 §3).
- `spliced_pass`: the same model with each site's activation replaced by its SAE's output (all
  sites at once, in execution order, as e2e_sae does; a transcoder's output for the site it
  reads, `mlp_in.L`, as the spliced model computes it), or by zeros (the zero-ablation baseline
  of `ce_loss_score`).
- Logits come back as `[B, T, V]`, or, when a batch's would exceed `unembed.STREAM_LOGITS`
  entries, as the final hidden state (`unembed.Streamed`) with the output embedding skipped;
  `next_token_ce` and `kl` read both.
- `sae_positions` and `sae_input`: the positions and the activations `[B, T', d_in]` an SAE
  reconstructs in a training step and in `evaluate` (BOS left out; in the SAE's units), for
  checking a step by hand; `input_sites` / `read_sites`: the sites SAEs read (a transcoder's
  differs from the one it writes).

The frozen model dominates cost (ARCHITECTURE.md §2): when the first site is a residual-stream
site, the spliced pass skips every block before it and feeds the cached clean residual instead of
recomputing it (exact, since those blocks see no SAE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saelab.core import losses
from saelab.core.models import (
    Site,
    block_list,
    get_module,
    get_site,
    parse_site,
    set_site,
    skip_block,
    sort_sites,
)
from saelab.core.sae import SAE, ForwardOutput, is_int
from saelab.core.unembed import Streamed, Unembed, ce_streamed, kl_streamed, streams, unembedding

Logits = torch.Tensor | Streamed  # `[B, T, V]` logits, materialised or not (`unembed.py`)


def excluded_positions(excluded, data) -> tuple[int, ...]:
    """The positions the SAEs leave alone: `excluded`, or (0,) when None and `data` prepends BOS.

    Real models park huge norms at the BOS position (the attention sink: ~12x the median residual
    norm), which would dominate every reconstruction loss and metric, so SAELens and e2e_sae leave
    it out (ARCHITECTURE.md §6).
    """
    if excluded is None:
        return (0,) if getattr(data, "prepend_bos", False) else ()
    return tuple(excluded)


def sae_positions(data, exclude_positions=None, device=None) -> torch.Tensor:
    """The positions `[T']` of each row of `data` that the SAEs read and write, in training and
    in `evaluate`: every one of the `data.n_ctx` positions except `exclude_positions` (None: the
    BOS position 0 when `data` prepends one, as `TrainConfig.exclude_positions=None` does;
    ARCHITECTURE.md §6). Sorted; all positions when none is excluded, which `select` and the
    spliced pass then treat as the identity. `data`: a TokenDataset or an ActivationCache.

        keep = sae_positions(data, cfg.exclude_positions)   # tensor([1, 2, ..., T-1])
    """
    n_ctx, excluded = data.n_ctx, set(excluded_positions(exclude_positions, data))
    bad = sorted(p for p in excluded if not (is_int(p) and 0 <= p < n_ctx))
    if bad:
        raise ValueError(f"excluded positions {bad} are outside rows of n_ctx={n_ctx}")
    if len(excluded) >= n_ctx:
        raise ValueError(f"excluding positions {sorted(excluded)} leaves none of the {n_ctx}")
    return torch.tensor([p for p in range(n_ctx) if p not in excluded], device=device)


def special_ids(tokenizer) -> tuple[int, ...]:
    """The ids of `tokenizer`'s special tokens (BOS, EOS, PAD, UNK, ...), sorted; () if none."""
    return tuple(sorted(set(getattr(tokenizer, "all_special_ids", None) or ())))


def batch_positions(tokens: torch.Tensor, keep: torch.Tensor | None,
                    special: torch.Tensor | None) -> torch.Tensor | None:  # fmt: skip
    """What the SAEs see of `tokens [B, T]`: the positions `keep [T']`, less every position that
    holds a special token (`special`, ids) wherever it is in a row (a document's BOS mid-row is
    an attention sink, SAELens' `exclude_special_tokens`). `keep` itself when no kept position
    holds one; else a bool mask `[B, T]`, which `select` flattens to `[N, ...]`."""
    if special is None or special.numel() == 0:
        return keep
    special = special.to(tokens.device)
    seen = tokens if keep is None or keep.dtype == torch.bool else tokens[:, keep.to(tokens.device)]
    if not torch.isin(seen, special).any():
        return keep
    mask = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
    if keep is None:
        mask[:] = True
    else:
        mask[:, keep.to(tokens.device)] = True
    return mask & ~torch.isin(tokens, special)


def _is_mask(keep: torch.Tensor | None) -> bool:
    return keep is not None and keep.dtype == torch.bool


def _every(keep: torch.Tensor | None, n: int) -> bool:
    """True when the sorted positions `keep` (or None) cover all `n` positions of a row."""
    return keep is None or (not _is_mask(keep) and len(keep) == n)


def select(t: torch.Tensor | None, keep: torch.Tensor | None, dtype=None) -> torch.Tensor | None:
    """`t [B, T, ...]` at the kept positions `[B, T', ...]` (all if `keep` is None or covers
    every position; a bool mask `keep [B, T]` gives `[N, ...]`, row by row), as `dtype`."""
    if t is None:
        return None
    if _is_mask(keep):
        t = t[keep.to(t.device)]
    elif not _every(keep, t.shape[1]):
        t = t.index_select(1, keep.to(t.device))
    return t if dtype is None else t.to(dtype)


def sae_input(lm, tokens: torch.Tensor, sae: SAE, keep: torch.Tensor | None = None,
              site: str | Site | None = None) -> torch.Tensor:  # fmt: skip
    """What `sae` reconstructs in a training step on `tokens [B, T]`: `[B, T', d_in]`.

    The clean activation at `site` (default `sae.cfg.site`) at the kept positions `keep [T']`
    (`sae_positions`; None: all), in the SAE's dtype and in its own units, i.e. times
    `act_scale` when the SAE normalises activations (ARCHITECTURE.md §6): the `x` of the local
    MSE and of the SAE's own loss terms in `training.compute_loss`. `sae(...)` itself takes raw
    activations (`select(clean.acts[site], keep)`) and normalises them inside. For a transcoder
    this is its target, the site it writes; it reads `sae.cfg.input_site(site)`.
    """
    site = parse_site(site if site is not None else sae.cfg.site)
    clean = clean_pass(lm, tokens.to(lm.device), [site])
    return sae.normalize(clean.seen_by_saes(keep, sae.dtype).acts[site])


def input_sites(saes: dict[Site, SAE]) -> dict[Site, Site]:
    """The site each SAE reads, by the site it writes: the same one, except a transcoder's."""
    return {s: sae.cfg.input_site(s) for s, sae in saes.items()}


def read_sites(sets) -> list[Site]:
    """Every site the clean pass must read for `sets` (`{Site: SAE}` or a list of them, sharing
    their written sites): the written ones (targets) and the ones read (inputs), in order."""
    sets = [sets] if isinstance(sets, dict) else list(sets)
    return sort_sites({s for saes in sets for pair in input_sites(saes).items() for s in pair})


def later_sites(lm, sites: list[Site]) -> list[Site]:
    """Residual stream after the last site: resid_post of every later layer (incl. the final)."""
    last = max(sites, key=lambda s: (s.layer, s.kind == "resid_post"))
    first = last.layer + 1 if last.kind == "resid_post" else last.layer
    return [Site("resid_post", layer) for layer in range(first, len(block_list(lm)))]


def next_token_ce(logits: Logits, tokens: torch.Tensor, reduction="mean") -> torch.Tensor:
    """Cross-entropy of `logits [B, T, V]` predicting `tokens [B, T]` shifted by one.

    Chunked over tokens in float32 (`losses.cross_entropy`): no `[B, T, V]` float32 copy;
    streamed logits (`unembed.Streamed`) are never materialised at all.
    """
    if isinstance(logits, Streamed):
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction={reduction!r} is not one of 'mean', 'sum', 'none'")
        per_row = ce_streamed(logits[:, :-1], tokens[:, 1:])
        return {"mean": per_row.mean, "sum": per_row.sum}.get(reduction, lambda: per_row)()
    return losses.cross_entropy(
        logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction=reduction
    )


def kl(clean: Logits, sae: Logits, target: losses.KLTarget | None = None) -> torch.Tensor:
    """`KL(P_clean || P_sae)` per token, mean -> scalar, of materialised logits `[..., V]`
    (`losses.kl_loss`; `target`: the clean side already computed) or streamed ones."""
    if isinstance(sae, Streamed):
        if not isinstance(clean, Streamed):  # both passes decide from the same batch size
            raise TypeError("streamed SAE logits need the clean pass's streamed hidden state")
        return kl_streamed(clean, sae)
    return losses.kl_loss(clean, sae, target=target)


def _stream(lm, tokens: torch.Tensor) -> Unembed | None:
    """The model's unembedding when this batch's logits should stream (`unembed.streams`)."""
    vocab = lm.config.vocab_size
    return unembedding(lm) if streams(tokens.numel(), vocab) else None


def _read_logits(lm, u: Unembed | None):
    """Inside a trace: the logits `[B, T, V]`, or with `u` the hidden state that feeds the
    output embedding, whose matmul is then skipped (the model's output is that hidden state)."""
    if u is None:
        return lm.output.logits
    head = get_module(lm, u.path)
    h = head.input
    head.skip(h)
    return h


@dataclass
class Clean:
    """Clean-pass results: site activations and grads `[B, T, d]`, logits (`[B, T, V]`, or
    `unembed.Streamed` when a batch's logits are large), later residuals."""

    acts: dict[Site, torch.Tensor]
    grads: dict[Site, torch.Tensor] | None
    logits: Logits | None
    later: list[torch.Tensor]
    # the KL's clean side (`losses.kl_target`), made once per batch by training and shared by
    # every SAE of a sweep; `logits` is then None (turned into those probabilities in place)
    kl_target: losses.KLTarget | None = None

    def seen_by_saes(self, keep: torch.Tensor | None, dtype=torch.float32) -> Clean:
        """This pass as the SAEs see it: acts and grads at the kept positions `keep [T']`, in
        `dtype`. Logits and later residuals stay whole: the e2e losses use every position."""
        acts = {s: select(a, keep, dtype) for s, a in self.acts.items()}
        grads = None if self.grads is None else {s: select(g, keep, dtype)
                                                 for s, g in self.grads.items()}  # fmt: skip
        return Clean(acts, grads, self.logits, self.later, self.kl_target)


def clean_pass(
    lm, tokens: torch.Tensor, sites, later=(), logits: bool = False, grads: bool = False
) -> Clean:
    """Run the frozen model on `tokens [B, T]`; everything returned is detached.

    Stops right after the last site when neither logits, later residuals nor grads are needed
    (local training).
    """
    sites = sort_sites(sites)
    later = list(later)
    u = _stream(lm, tokens) if logits or grads else None
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
                res["logits"] = _read_logits(lm, u).save()
            elif not later:
                tracer.stop()
        return Clean(acts, None, _wrap(res.get("logits"), u), after)
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
        out = _read_logits(lm, u)
        res["logits"] = out.detach().save()
        loss = next_token_ce(_wrap(out, u), tokens)
        with loss.backward():
            for s, x in reversed(list(zip(sites, xs, strict=True))):  # grads arrive last-first
                g[s] = x.grad.save()
    return Clean(acts, g, _wrap(res["logits"], u) if logits else None, after)


def _wrap(t: torch.Tensor | None, u: Unembed | None) -> Logits | None:
    return Streamed(t, u) if u is not None and t is not None else t


@dataclass
class Spliced:
    """Spliced-pass results: each SAE's output, the logits (`Clean`'s kinds), later residuals
    (with autograd)."""

    outs: dict[Site, ForwardOutput]
    logits: Logits | None
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
    keep: torch.Tensor | None = None,
) -> Spliced:
    """Run `tokens [B, T]` with every site replaced by its SAE reconstruction (or zeros).

    `saes` maps sites to SAEs; `zero_sites` (instead of `saes`) zero-ablates those sites.
    With `keep` (positions `[T']`), only those positions are replaced and the others keep their
    clean value; the SAEs see (and `outs` hold) the kept positions only, in the SAE's dtype.
    Autograd stays on, so a loss on the returned logits/residuals trains the SAEs.
    """
    sites = sort_sites(list(saes) if saes is not None else zero_sites)
    grads = clean.grads or {}
    later = list(later)
    u = _stream(lm, tokens) if logits else None
    reads = input_sites(saes) if saes is not None else {}

    def replace(s: Site, x: torch.Tensor, x_read: torch.Tensor | None = None):
        """`x` replaced at `s` by the SAE's output for its input: `x`, or `x_read` (a
        transcoder's input site, read earlier in this pass)."""
        if saes is None:
            new, out = torch.zeros_like(select(x, keep)), None
        else:
            sae, inp = saes[s], reads[s]
            x_in = select(x if x_read is None else x_read, keep)
            out = sae(x_in.to(sae.dtype), grad=select(grads.get(inp), keep, sae.dtype))
            new = out.x_hat.to(x.dtype)  # a bf16 model gets bf16 back; the SAE stays fp32
        if _is_mask(keep):  # special tokens left clean wherever they are
            return x.masked_scatter(keep.to(x.device)[..., None].expand_as(x), new), out
        whole = _every(keep, x.shape[1])
        return (new if whole else x.index_copy(1, keep.to(x.device), new)), out

    outs: dict[Site, ForwardOutput] = {}
    after: list[torch.Tensor] = []
    res: dict[str, torch.Tensor] = {}
    with lm.trace(tokens):
        first, rest = sites[0], sites[1:]
        n_skip = skippable_blocks(first)  # 0 for mlp_out, the one site a transcoder writes
        if n_skip:
            # the blocks before the first site see no SAE: reuse the clean pass's residual
            x_hat, out = replace(first, clean.acts[first])
            for layer in range(n_skip):
                skip_block(lm, layer, x_hat)
            if out is not None:
                outs[first] = out.save()
        else:
            rest = sites
        for s in rest:
            # a transcoder reads its input here, as the spliced model computes it, before the
            # site it writes (mlp_in before mlp_out: `models.SITE_ORDER`)
            x_read = get_site(lm, reads[s]) if reads.get(s, s) != s else None
            x_hat, out = replace(s, get_site(lm, s), x_read)
            set_site(lm, s, x_hat)
            if out is not None:
                outs[s] = out.save()
        for s in later:
            after.append(get_site(lm, s).save())
        if logits:
            res["logits"] = _read_logits(lm, u).save()
    return Spliced(outs, _wrap(res.get("logits"), u), after)


def as_sites(saes) -> dict[Site, SAE]:
    """Normalise `{site name or Site: SAE}` (or one SAE with `cfg.site`) to `{Site: SAE}`."""
    if isinstance(saes, SAE):
        saes = {saes.cfg.site: saes}
    return {parse_site(k): v for k, v in saes.items()}
