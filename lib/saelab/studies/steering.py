"""Steering with dictionary latents: write a latent's direction into the residual stream, and see
how much probability the model moves onto the tokens that direction stands for.

Olmo et al. 2024 §5 (`papers/g-sae/`): for each latent i, its *associated tokens* are the ones its
decoder direction `d_i` promotes most through the unembedding (`features.logit_effects`, the
"logit lens" of the direction). Adding `alpha * d_i` at the SAE's site, at every position of
arbitrary contexts, should raise the probability of those tokens; the paper reports that g-SAE
latents add more than 5x more probability than TopK latents.

    probability added_i(alpha) = mean over contexts and positions of
        sum_{t in assoc(i)} [ p(t | x + alpha d_i) - p(t | x) ]

Several steering vectors run in one forward pass: the contexts are repeated once per vector
along the batch dimension (`[n_vec * B, T]`), each copy with its own vector added. When the site
is on the residual stream, the blocks before it are skipped and fed the clean residual plus the
vector (exact, and about twice as fast at `resid_pre.3` of a 6-layer model; `passes`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.core.models import get_site, parse_site, set_site, skip_block
from saelab.core.passes import clean_pass, skippable_blocks
from saelab.studies import plots
from saelab.studies.analysis import (
    bootstrap_ci,
    bootstrap_ratio_ci,
    max_cos_sim,
    random_directions,  # noqa: F401  (re-exported: the control)
)
from saelab.studies.features import logit_effects
from saelab.studies.plots import firing_frequency

PAPER_RATIO = 5.0  # Olmo et al. 2024 §5: g-SAE latents add > 5x the probability of TopK latents


@torch.no_grad()
def site_norm(lm, site, data, n_tokens: int = 16_384, batch_size: int = 32) -> float:
    """Mean L2 norm of the activation at `site` over the first ~`n_tokens` of `data` (a float).

    Steering strengths are given in units of this "typical residual norm", so an alpha means the
    same on any model.
    """
    site = parse_site(site)
    n_rows = max(1, min(len(data), n_tokens // data.n_ctx))
    total, count = 0.0, 0
    for i in range(0, n_rows, batch_size):
        x = clean_pass(lm, data.tokens[i : min(i + batch_size, n_rows)], [site]).acts[site]
        norms = x.float().norm(dim=-1)
        total, count = total + float(norms.sum()), count + norms.numel()
    return total / count


def latent_directions(lm, sae, data, n_latents: int, how: str = "random", seed: int = 0,
                      n_tokens: int = 16_384) -> tuple[Tensor, Tensor, int]:  # fmt: skip
    """(latents `[n]`, their unit decoder directions `[n, d_in]`, alive latents) of one SAE.

    Firing frequencies on the first ~`n_tokens` of `data` (a g-SAE selects with `dL/dx`, as in
    training; `plots.firing_frequency`), then `choose_latents(freq, n_latents, how, seed)`.
    """

    freq = firing_frequency(lm, sae, data, n_tokens=n_tokens)
    picked = choose_latents(freq, n_latents, how, seed=seed)
    # unit rows: a transcoder's rows carry the output's scale (the others are unit already)
    rows = F.normalize(sae.decoder_directions().detach()[picked], dim=-1)
    return picked, rows, int((freq > 0).sum())


def twins(decoders: dict[str, Tensor], pairs, threshold: float = 0.9) -> pd.DataFrame:
    """How many directions of one dictionary have a near twin in another.

    `decoders` maps a name to unit decoder directions `[d_sae, d_in]`; `pairs` lists
    `(a, b, shared_init)`. Per pair, each direction of `a` is matched to its nearest direction of
    `b` (`analysis.max_cos_sim`); columns: pair ("a -> b"), shared_init (whether the two started
    from the same decoder: then twins are expected however training went), frac_above_<threshold>
    (the fraction of `a`'s directions with nearest cosine above `threshold`), mean_cos.
    """

    frac = f"frac_above_{threshold:g}".replace(".", "_")  # frac_above_0_9
    rows = []
    for a, b, shared in pairs:
        near = max_cos_sim(decoders[a], decoders[b])
        above = float((near > threshold).float().mean())
        rows.append({"pair": f"{a} -> {b}", "shared_init": bool(shared), frac: above,
                     "mean_cos": float(near.mean())})  # fmt: skip
    return pd.DataFrame(rows)


def associated_tokens(lm, directions: Tensor, n_assoc: int = 5) -> Tensor:
    """Token ids `[n, n_assoc]` each direction of `directions [n, d]` promotes most (logit lens)."""
    return logit_effects(lm, directions).topk(n_assoc, dim=-1).indices


def choose_latents(freq: Tensor, n: int, how: str = "random", seed: int = 0) -> Tensor:
    """Indices `[min(n, n_alive)]` of alive latents (firing frequency `freq [d_sae]` > 0).

    `how="random"`: a seeded uniform sample of the alive latents (no bias towards any kind of
    latent); `"frequent"`: the `n` most often active ones.
    """
    alive = torch.nonzero(torch.as_tensor(freq) > 0).flatten()
    n = min(n, len(alive))
    if how == "random":
        g = torch.Generator().manual_seed(seed)
        return alive[torch.randperm(len(alive), generator=g)[:n]].sort().values
    if how == "frequent":
        return alive[torch.as_tensor(freq)[alive].argsort(descending=True)[:n]]
    raise ValueError(f"how={how!r} is unknown; valid: 'random', 'frequent'")


def _steered_probs(lm, site, tokens: Tensor, clean_x: Tensor | None, vectors: Tensor) -> Tensor:
    """Next-token probabilities `[n_vec * B, T, V]` with `vectors[j]` added at `site` for copy j."""
    n_vec, B = len(vectors), tokens.shape[0]
    rows = tokens.repeat(n_vec, 1)  # copy j of the contexts is rows j*B .. (j+1)*B - 1
    delta = vectors.repeat_interleave(B, 0)[:, None, :]  # [n_vec * B, 1, d]
    res = {}
    with lm.trace(rows):
        if clean_x is not None:
            # The blocks before the site see no change: skip them, feeding the steered residual.
            steered = clean_x.repeat(n_vec, 1, 1) + delta.to(clean_x.dtype)
            for layer in range(skippable_blocks(site)):
                skip_block(lm, layer, steered)
        else:
            # nnsight: the site must be read before anything later in the model (execution order)
            x = get_site(lm, site)
            set_site(lm, site, x + delta.to(x.dtype))
        res["p"] = lm.output.logits.float().softmax(-1).save()
    return res["p"]


@torch.no_grad()
def steer_probs(lm, site, directions: Tensor, alphas, tokens: Tensor, assoc: Tensor,
                max_rows: int = 256) -> Tensor:  # fmt: skip
    """Probability of each direction's associated tokens under steering, `[A, n, B, T]`.

    `directions [n, d]` (used as given: scale them yourself), `alphas [A]`, `tokens [B, T]`,
    `assoc [n, m]` token ids per direction. Entry (a, i, b, t) is
    `sum_{v in assoc[i]} p(v | context b up to t, alphas[a] * directions[i] added at site)`.
    Vectors are batched `max_rows // B` at a time (results do not depend on the batching).
    """
    site = parse_site(site)
    alphas = torch.as_tensor(alphas, dtype=torch.float32).flatten()
    directions = torch.as_tensor(directions).float()
    A, n, (B, T) = len(alphas), len(directions), tokens.shape
    vectors = (alphas[:, None, None] * directions[None]).flatten(0, 1)  # [A * n, d], alpha-major
    sets = assoc.repeat(A, 1)  # [A * n, m]
    clean_x = clean_pass(lm, tokens, [site]).acts[site] if skippable_blocks(site) else None
    per = max(1, max_rows // B)
    out = []
    for j in range(0, len(vectors), per):
        v, s = vectors[j : j + per], sets[j : j + per]
        p = _steered_probs(lm, site, tokens, clean_x, v).view(len(v), B, T, -1)
        idx = s.to(p.device)[:, None, None, :].expand(-1, B, T, -1)
        out.append(p.gather(-1, idx).sum(-1).cpu())
    return torch.cat(out).view(A, n, B, T)


@torch.no_grad()
def prob_added(lm, site, directions: Tensor, alphas, tokens: Tensor, assoc: Tensor,
               max_rows: int = 256) -> Tensor:  # fmt: skip
    """Probability added to each direction's associated tokens, `[A, n]` (mean over B and T).

    `steer_probs` minus the same tokens' probability in the unsteered model, which goes through
    the same pass with a zero vector added, so that `alpha = 0` adds exactly 0.
    """
    site = parse_site(site)
    clean_x = clean_pass(lm, tokens, [site]).acts[site] if skippable_blocks(site) else None
    p0 = _steered_probs(lm, site, tokens, clean_x, torch.zeros(1, directions.shape[-1]))
    idx = assoc.to(p0.device)[:, None, None, :].expand(-1, *p0.shape[:2], -1)  # [n, B, T, m]
    base = p0[None].expand(len(assoc), -1, -1, -1).gather(-1, idx).sum(-1).cpu()  # [n, B, T]
    steered = steer_probs(lm, site, directions, alphas, tokens, assoc, max_rows)
    return (steered - base[None]).mean((-1, -2))


def summarize(added: dict[str, Tensor], alphas, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Long table (directions, alpha, mean, ci_lo, ci_hi, n) of `prob_added` results.

    `added` maps a name (e.g. "topk", "g-sae", "random") to its `prob_added` tensor `[A, n]`.
    """

    rows = []
    for name, a in added.items():
        for i, alpha in enumerate(alphas):
            mean, lo, hi = bootstrap_ci(a[i].numpy(), n_boot, seed)
            rows.append(dict(directions=name, alpha=float(alpha), mean=mean, ci_lo=lo, ci_hi=hi,
                             n=a.shape[1]))  # fmt: skip
    return pd.DataFrame(rows)


def ratio_table(
    num: Tensor, den: Tensor, alphas, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Per alpha, mean(num) / mean(den) over latents with a bootstrap CI (latents of each resampled
    independently); `num, den [A, n]` from `prob_added`."""

    rows = []
    for i, alpha in enumerate(alphas):
        r, lo, hi = bootstrap_ratio_ci(num[i].numpy(), den[i].numpy(), n_boot, seed)
        rows.append(
            dict(alpha=float(alpha), ratio=r, ci_lo=lo, ci_hi=hi, paper=f"> {PAPER_RATIO:g}")
        )
    return pd.DataFrame(rows)


def steering_plot(summary: pd.DataFrame, ratios: pd.DataFrame, path=None,
                  title: str | None = None, ratios_by_seed: dict | None = None,
                  seed: int | None = None):  # fmt: skip
    """Left: probability added against alpha per set of directions (95% CI bands), in the
    methods' shared style, for one seed's SAEs (`seed`, named in the panel's title); right: the
    g-SAE / TopK ratio against alpha with its CI and the paper's 5x: `ratios`, or one line per
    seed of `ratios_by_seed` ({seed: ratio table}), so no seed is left out silently."""

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.4, 4.0))
    for name in plots.method_order(summary["directions"]):
        g = summary[summary.directions == name]
        kw = plots.line_kwargs(name)
        ax.plot(g.alpha, g["mean"], label=plots.method_label(name), **kw)
        ax.fill_between(g.alpha, g.ci_lo, g.ci_hi, color=kw["color"], alpha=0.15)
    which = f", seed {seed}" if seed is not None else ""
    ax.set(xscale="log", xlabel="alpha (x mean ||x|| at the site)",
           ylabel="probability added to assoc. tokens",
           title=f"Probability added (mean over latents, 95% CI{which})")  # fmt: skip
    if (summary["ci_lo"] > 0).all():  # the small alphas add orders of magnitude less
        ax.set_yscale("log")
    ax.legend(title="directions")
    g_colour = plots.PALETTE["gtopk"]
    per_seed = ratios_by_seed or {seed: ratios}
    for i, (s, r) in enumerate(per_seed.items()):
        label = f"seed {s}" if ratios_by_seed else "ours"
        bx.plot(r.alpha, r.ratio, marker="os^vD"[i % 5], color=g_colour, label=label,
                alpha=1.0 if i == 0 else 0.7, linestyle=("-", "--", ":", "-.")[i % 4])  # fmt: skip
        bx.fill_between(r.alpha, r.ci_lo, r.ci_hi, color=g_colour, alpha=0.2 / len(per_seed))
    bx.axhline(PAPER_RATIO, ls="--", color="grey", label=f"paper: > {PAPER_RATIO:g}")
    bx.axhline(1.0, ls=":", color="black", lw=0.8, label="equal (1)")
    bx.set(xscale="log", xlabel="alpha (x mean ||x|| at the site)", ylabel="g-SAE / TopK",
           title="Ratio g-SAE / TopK (95% CI)")  # fmt: skip
    bx.legend()
    for a in (ax, bx):  # a tick at each alpha, plainly labelled
        a.xaxis.set_major_locator(plots.ticker.FixedLocator(sorted(set(summary.alpha))))
        a.xaxis.set_major_formatter(plots.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        a.xaxis.set_minor_locator(plots.ticker.NullLocator())
    plots.titled(fig, title or "Steering: probability added to a latent's associated tokens")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def example_tokens(lm, assoc: Tensor, n: int = 5) -> list[str]:
    """Readable associated tokens of the first `n` rows of `assoc [n_lat, m]`."""
    return [" ".join(repr(lm.tokenizer.decode([int(t)])) for t in row) for row in assoc[:n]]


def wide_table(summary: pd.DataFrame, ratios: pd.DataFrame) -> pd.DataFrame:
    """One row per alpha: each set's mean and CI (`<name>_mean`, ...), the ratio, its CI, paper."""
    wide = summary.pivot(index="alpha", columns="directions", values=["mean", "ci_lo", "ci_hi"])
    names = list(dict.fromkeys(summary["directions"]))  # keep the order of `added`
    wide = wide[[(stat, n) for n in names for stat in ("mean", "ci_lo", "ci_hi")]]
    wide.columns = [f"{name}_{stat}" for stat, name in wide.columns]
    r = ratios.set_index("alpha")[["ratio", "ci_lo", "ci_hi", "paper"]]
    return wide.join(r.rename(columns={"ci_lo": "ratio_ci_lo", "ci_hi": "ratio_ci_hi",
                                       "paper": "paper_ratio"}))  # fmt: skip


def per_latent_table(added: dict[str, Tensor], alphas, latents: dict[str, Tensor]) -> pd.DataFrame:
    """Long table (directions, alpha, latent, prob_added) of `prob_added` results `{name: [A, n]}`.

    `latents[name]` gives the latent indices `[n]`; sets without an entry are numbered 0..n-1.
    """
    rows = []
    for name, a in added.items():
        ids = latents.get(name, torch.arange(a.shape[1])).tolist()
        for alpha, row in zip(alphas, a.tolist(), strict=True):
            rows += [dict(directions=name, alpha=float(alpha), latent=int(i), prob_added=v)
                     for i, v in zip(ids, row, strict=True)]  # fmt: skip
    return pd.DataFrame(rows)
