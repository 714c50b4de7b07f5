"""Helpers for the g-SAE study (notebook 11): selection overlap on held-out tokens, the g-SAE
evaluated without its label, and seed statistics.

- `held_out_overlaps`: `selection_overlap` averaged over held-out batches, each with its own
  dL/dx from one clean pass shared by every SAE asked about. Batches have the training batch
  size, so `grad_norm="rms"` (batch RMS) and `"none"` (the raw mean-CE gradient, whose size
  scales with 1 / tokens in the batch) see gradients of the size they were trained with.
- `label_free`: a TopK SAE with a g-SAE's weights. A g-SAE selects with dL/dx, which needs the
  next token; with beta = 0 its score is its pre-activation `z`, so its selection is TopK(z) and
  needs no label. This copy is that SAE, as a plain `topk` (no gradient pass at all).
- `seed_stats`, `compare_to_noise`: mean, spread and a t-interval over seeds; a difference
  called only when it exceeds both a relative threshold and the between-seed noise.
"""

from __future__ import annotations

from dataclasses import fields

from saelab.core.architectures.topk import TopKConfig
from saelab.core.metrics import selection_overlap
from saelab.core.models import parse_site
from saelab.core.passes import clean_pass, sae_positions
from saelab.core.sae import SAE
from saelab.studies.stats import seed_stats  # noqa: F401  (11_gsae_study reads it here)


def label_free(sae: SAE) -> SAE:
    """A `topk` SAE with `sae`'s weights, activation scale and k: the g-SAE at beta = 0.

    Its selection is TopK(z) of the g-SAE's own pre-activations and its values ReLU(z) (at
    beta = 0, "score" values equal "plain" ones), so it is evaluated without dL/dx, i.e.
    without the label. Returned in eval mode, on `sae`'s device.
    """
    cfg = sae.cfg
    if not cfg.needs_grad:
        raise ValueError(f"label_free needs a gradient-informed SAE, got {cfg.architecture!r}")
    own = {f.name for f in fields(TopKConfig)} - {"architecture"}
    kw = {name: getattr(cfg, name) for name in own if hasattr(cfg, name)}
    topk = SAE.from_config(TopKConfig(architecture="topk", **kw))
    topk.load_state_dict(sae.state_dict())
    return topk.to(next(sae.parameters()).device).eval()


def held_out_overlaps(lm, pairs: dict, data, n_tokens: int, batch_size: int,
                      exclude_positions=None) -> dict[str, float]:  # fmt: skip
    """Mean `selection_overlap(sae_a, b, x, dL/dx)` per entry of `pairs` {name: (sae_a, b)}.

    `b` is "topk" (TopK of `sae_a`'s own z) or another SAE (`selection_overlap`). Over the first
    ~`n_tokens` rows of `data` in batches of `batch_size` rows (each batch one clean pass with
    dL/dx, shared by all pairs, all on one site), at the positions the SAEs train on (the BOS
    position left out, as in training). Each batch counts by its number of tokens. Not under
    `torch.no_grad()`: the clean pass backpropagates for dL/dx.
    """
    # what each SAE reads (a transcoder: the MLP's input, not the site it writes)
    sites = {a.cfg.input_site(parse_site(a.cfg.site)) for a, _ in pairs.values()}
    if len(sites) != 1:
        raise ValueError(
            f"held_out_overlaps: the SAEs read different sites {sorted(map(str, sites))}"
        )
    (site,) = sites
    keep = sae_positions(data, exclude_positions, lm.device)
    n_rows = max(1, min(len(data), n_tokens // data.n_ctx))
    sums, count = dict.fromkeys(pairs, 0.0), 0
    for i in range(0, n_rows, batch_size):
        tokens = data.tokens[i : min(i + batch_size, n_rows)].to(lm.device)
        clean = clean_pass(lm, tokens, [site], grads=True).seen_by_saes(keep)
        x, g = clean.acts[site], clean.grads[site]  # [B, T', d]
        n = x[..., 0].numel()
        for name, (a, b) in pairs.items():
            sums[name] += selection_overlap(a, b, x, g) * n
        count += n
    return {name: s / count for name, s in sums.items()}


def seed_noise(values) -> float:
    """Largest absolute difference between two seeds' values (NaN for fewer than two)."""
    v = [x for x in values if x == x]
    return float(max(v) - min(v)) if len(v) > 1 else float("nan")


def compare_to_noise(a: float, b: float, noise: float, rel: float = 0.05,
                     below: str = "lower", above: str = "higher") -> str:  # fmt: skip
    """`below` / `above` when `a` differs from `b` by more than `rel` of |b| and more than
    `noise` (the between-seed spread of the reference; ignored when NaN), else "no clear
    difference"."""
    gap = a - b
    margin = max(rel * abs(b), noise if noise == noise else 0.0)
    if gap < -margin:
        return below
    return above if gap > margin else "no clear difference"
