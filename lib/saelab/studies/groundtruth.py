"""Ground-truth recovery: how well single latents predict storyworld's known per-token concepts.

Automated interpretability (an LLM reads a latent's top activations, writes an explanation, and
the explanation is scored by how well it predicts activations) needs a hosted LLM. storyworld
gives us what that pipeline only estimates: every token carries ground-truth labels
(`saelab.storyworld`), turned into 103 binary concepts by `studies.features.concepts`. We ask two
questions of an SAE, for every concept and every latent at once:

- **concept -> latent** (is the concept recovered?): the best single latent's AUROC (its activation
  as a score, threshold-free) and its F1 when it "fires" (activation > 0, the latent's natural
  threshold; the ReLU / TopK zero). `auroc`, `f1_at_firing`, `best_latents`.
- **latent -> concept** (is the latent explained?): the fraction of alive latents whose firing has
  precision >= 0.9 for some concept. `explained_fraction`.

Everything is vectorised over latents and concepts: per latent, ranks (AUROC) or the firing
indicator (F1) are computed once, and one matmul with the concept matrix `y [N, C]` gives the
statistics for all concepts. Shapes: `N` tokens, `C` concepts, `n_lat` latents.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from torch import Tensor

from saelab.studies import plots


def average_ranks(x: Tensor) -> Tensor:
    """Ranks `[N, n]` of each column of `x [N, n]`, centred on 0, ties given their average rank.

    Sorted once per column: a run of equal values at sorted positions `left .. right - 1` shares
    the 1-based average rank `(left + right + 1) / 2`; we subtract the mean rank `(N + 1) / 2`, so
    a constant column (a latent that never fires) has all-zero centred ranks. Run boundaries come
    from a running max (min) of the start (end) positions, no Python loop over values.
    """
    n = x.shape[0]
    s, perm = x.T.contiguous().sort(dim=-1)  # [n_lat, N]; sorting contiguous rows is ~4x faster
    pos = torch.arange(n, dtype=torch.int32).expand_as(s)
    start = torch.ones_like(s, dtype=torch.bool)
    start[:, 1:] = s[:, 1:] != s[:, :-1]  # first element of a run of ties
    end = torch.ones_like(start)
    end[:, :-1] = start[:, 1:]  # last element of a run
    left = torch.where(start, pos, 0).cummax(-1).values
    right = torch.where(end, pos + 1, n).flip(-1).cummin(-1).values.flip(-1)
    centred = (left + right - n).double() / 2  # (left + right + 1) / 2 - (n + 1) / 2
    return torch.empty_like(centred).scatter_(1, perm, centred).T


def auroc(scores: Tensor, y: Tensor, chunk: int = 512) -> Tensor:
    """Area under the ROC curve `[C, n_lat]` of each latent's score for each concept.

    scores `[N, n_lat]` (latent activations), y `[N, C]` bool. Mann-Whitney form: with the rank
    sum `R` of the positives (average ranks for ties), `AUROC = (R - P(P+1)/2) / (P Q)` for `P`
    positives and `Q` negatives; with centred ranks `r - (N+1)/2` this is `0.5 + R_c / (P Q)`.
    Ties count one half, so a latent that never fires scores exactly 0.5. Concepts with no
    positive or no negative token get NaN. Latents are processed `chunk` columns at a time
    (`N x chunk` ranks in float64).
    """
    if scores.shape[0] != y.shape[0]:
        raise ValueError(f"scores has {scores.shape[0]} tokens but y has {y.shape[0]}")
    yd = y.double().T  # [C, N]
    pos = yd.sum(1, keepdim=True)
    pairs = pos * (y.shape[0] - pos)  # P * Q per concept, [C, 1]
    out = torch.empty(y.shape[1], scores.shape[1], dtype=torch.float64)
    for i in range(0, scores.shape[1], chunk):
        out[:, i : i + chunk] = yd @ average_ranks(scores[:, i : i + chunk].float())
    out = 0.5 + out / pairs
    return out.masked_fill(pairs == 0, float("nan")).float()


class Firing(NamedTuple):
    """Concept-vs-firing statistics `[C, n_lat]`, and per-latent `n_fire [n_lat]`."""

    precision: Tensor
    recall: Tensor
    f1: Tensor
    n_fire: Tensor


def f1_at_firing(acts: Tensor, y: Tensor) -> Firing:
    """Precision, recall and F1 `[C, n_lat]` of "latent fires" (act > 0) as a predictor of y.

    acts `[N, n_lat]`, y `[N, C]` bool. True positives for every (concept, latent) pair are one
    matmul of the binary matrices, `y.T @ (acts > 0)` (exact in float32 up to 2^24 tokens).
    `F1 = 2 TP / (#fires + #positives)`; precision is 0 for a latent that never fires, recall
    is 0 (F1 0) for a concept with no positives.
    """
    if acts.shape[0] != y.shape[0]:
        raise ValueError(f"acts has {acts.shape[0]} tokens but y has {y.shape[0]}")
    fires = (acts > 0).float()
    tp = y.float().T @ fires  # [C, n_lat]
    n_fire = fires.sum(0)  # [n_lat]
    n_pos = y.float().sum(0)[:, None]  # [C, 1]
    precision = tp / n_fire.clamp(min=1)
    recall = tp / n_pos.clamp(min=1)
    f1 = 2 * tp / (n_fire + n_pos).clamp(min=1)
    return Firing(precision, recall, f1, n_fire)


def best_latents(names: list[str], y: Tensor, auc: Tensor, firing: Firing) -> pd.DataFrame:
    """One row per concept: its best single latent by AUROC and by F1, and their scores.

    names `[C]`, y `[N, C]` bool, auc `[C, n_lat]` (from `auroc`), firing (from `f1_at_firing`).
    Columns: concept, label (the storyworld label it comes from: the part before "="), freq
    (fraction of tokens), n_pos, auroc_latent, auroc, f1_latent, f1, precision, recall.
    AUROC is NaN for a concept absent from the data (its best latent is then -1).
    """
    auc_filled = auc.nan_to_num(float("-inf"))
    a_best, a_idx = auc_filled.max(1)
    f_best, f_idx = firing.f1.max(1)
    rows = torch.arange(len(names))
    n_pos = y.sum(0)
    valid = ~auc.isnan().all(1)
    return pd.DataFrame({
        "concept": names,
        "label": [n.split("=")[0] for n in names],
        "freq": (n_pos.float() / y.shape[0]).tolist(),
        "n_pos": n_pos.tolist(),
        "auroc_latent": torch.where(valid, a_idx, -1).tolist(),
        "auroc": torch.where(valid, a_best, float("nan")).tolist(),
        "f1_latent": f_idx.tolist(),
        "f1": f_best.tolist(),
        "precision": firing.precision[rows, f_idx].tolist(),
        "recall": firing.recall[rows, f_idx].tolist(),
    })  # fmt: skip


class Explained(NamedTuple):
    """Which alive latents one concept explains (see `explained_fraction`)."""

    fraction: float  # explained latents / alive latents
    explained: Tensor  # [n_lat] bool
    best_concept: Tensor  # [n_lat] index of the concept with the highest precision
    best_precision: Tensor  # [n_lat]
    n_alive: int
    n_excluded: int  # alive latents with precision >= threshold but fewer than min_fires firings


def explained_fraction(
    precision: Tensor,
    alive: Tensor,
    threshold: float = 0.9,
    n_fire: Tensor | None = None,
    min_fires: int = 10,
    concept_mask: Tensor | None = None,
) -> Explained:
    """Fraction of alive latents explained by one concept: best precision >= threshold.

    precision `[C, n_lat]` (from `f1_at_firing`), alive `[n_lat]` bool. With `n_fire [n_lat]`,
    a latent must also fire at least `min_fires` times (a latent firing twice, both on one
    concept, has precision 1 by luck); `n_excluded` counts those it rules out. `concept_mask [C]`
    (bool) restricts the concepts allowed to explain a latent, e.g. to rare ones: a latent that
    fires at random has precision equal to the concept's frequency, so 0.9 on a concept covering
    87% of tokens means little. The denominator is always all alive latents.
    """
    p = precision if concept_mask is None else precision.masked_fill(~concept_mask[:, None], -1)
    best_p, best_c = p.max(0)
    passes = alive & (best_p >= threshold)
    enough = torch.ones_like(alive) if n_fire is None else n_fire >= min_fires
    explained = passes & enough
    n_alive = int(alive.sum())
    return Explained(
        fraction=float(explained.sum()) / max(n_alive, 1),
        explained=explained,
        best_concept=best_c,
        best_precision=best_p,
        n_alive=n_alive,
        n_excluded=int((passes & ~enough).sum()),
    )


def per_label(table: pd.DataFrame, cols=("auroc", "f1")) -> pd.DataFrame:
    """Mean over a label's concepts (its non-"none" values) of each column in `cols`.

    table: `best_latents` rows (optionally with extra key columns such as "method", which are
    kept as grouping keys). A binary label has one concept, so its mean is that concept's score.
    We use the mean, not the max: a categorical label counts as recovered only when every value is.
    """
    keys = [c for c in table.columns if c == "method"] + ["label"]
    return table.groupby(keys, sort=False)[list(cols)].mean().reset_index()


def base_rates(y: Tensor, names: list[str], max_rate: float = 0.5) -> pd.DataFrame:
    """Each concept's base rate and the F1 a latent that always fires would get for it.

    y `[N, C]` bool, names `[C]`. An always-on latent has precision `p` (the base rate) and
    recall 1, so `F1 = 2p / (1 + p)`: above 0.67 for `p > 0.5`, where "best F1 > 0.5" then says
    nothing about the SAE. Columns: concept, base_rate (`p`, fraction of the N tokens),
    always_on_f1, excluded (`p > max_rate`; `summarize(max_base_rate=...)` leaves those out).
    """
    p = y.float().mean(0) if y.shape[0] else torch.zeros(y.shape[1])
    return pd.DataFrame({
        "concept": list(names),
        "base_rate": p.tolist(),
        "always_on_f1": (2 * p / (1 + p)).tolist(),
        "excluded": (p > max_rate).tolist(),
    })  # fmt: skip


def summarize(table: pd.DataFrame, f1_threshold: float = 0.5,
              max_base_rate: float | None = None) -> dict:  # fmt: skip
    """Aggregates over one SAE's `best_latents` table (concepts absent from the data skipped).

    mean_auroc, mean_f1 (means of the best latent's score over concepts) and frac_f1 (fraction of
    concepts whose best F1 exceeds `f1_threshold`), n_concepts (the concepts averaged over).
    `max_base_rate`: leave out concepts on more than this fraction of the tokens (`base_rates`:
    an always-on latent already scores F1 > 0.67 on a concept with base rate > 0.5).
    """
    t = table[table.n_pos > 0]
    if max_base_rate is not None:
        t = t[t.freq <= max_base_rate]
    return {
        "mean_auroc": float(t.auroc.mean()),
        "mean_f1": float(t.f1.mean()),
        f"frac_f1_gt_{f1_threshold:g}": float((t.f1 > f1_threshold).mean()),
        "n_concepts": len(t),
    }


class Recovery(NamedTuple):
    """One SAE's ground-truth recovery (see `recover`)."""

    table: pd.DataFrame  # `best_latents`, one row per concept
    explained: Explained  # latents explained by any concept
    explained_rare: Explained  # ... by a concept on at most `rare_freq` of the tokens
    summary: dict  # `summarize` + explained fractions, alive latents, L0 on these tokens


def recover(
    acts: Tensor,
    y: Tensor,
    names: list[str],
    threshold: float = 0.9,
    min_fires: int = 10,
    rare_freq: float = 0.5,
    f1_threshold: float = 0.5,
    max_base_rate: float | None = None,
) -> Recovery:
    """All of the above for one SAE: acts `[N, n_lat]`, concepts y `[N, C]` bool named `names`.

    summary keys: mean_auroc, mean_f1, frac_f1_gt_<f1_threshold>, n_concepts (over the concepts
    with base rate <= `max_base_rate`, all when None; `summarize`), explained_frac
    (alive latents with precision >= `threshold` for some concept and >= `min_fires` firings),
    explained_frac_rare (the same with only concepts of frequency <= `rare_freq`), n_excluded
    (latents `min_fires` rules out), alive (latents firing at least once here), l0.
    """
    firing = f1_at_firing(acts, y)
    table = best_latents(names, y, auroc(acts, y), firing)
    alive = firing.n_fire > 0
    kw = dict(threshold=threshold, n_fire=firing.n_fire, min_fires=min_fires)
    ex = explained_fraction(firing.precision, alive, **kw)
    rare = torch.tensor((table.freq <= rare_freq).to_numpy())
    ex_rare = explained_fraction(firing.precision, alive, concept_mask=rare, **kw)
    summary = summarize(table, f1_threshold, max_base_rate) | {
        "explained_frac": ex.fraction,
        "explained_frac_rare": ex_rare.fraction,
        "n_excluded": ex.n_excluded,
        "alive": ex.n_alive,
        "l0": float(firing.n_fire.sum() / acts.shape[0]),
    }
    return Recovery(table, ex, ex_rare, summary)


def explained_by(rec: Recovery, names: list[str], top: int = 5) -> list[tuple[str, int]]:
    """The `top` concepts that explain the most latents of one SAE, as (concept, count)."""
    idx = rec.explained.best_concept[rec.explained.explained]
    counts = torch.bincount(idx, minlength=len(names))
    order = counts.argsort(descending=True)[:top]
    return [(names[i], int(counts[i])) for i in order if counts[i] > 0]


def _save(fig, path):
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def plot_best(per_concept: pd.DataFrame, cols=("auroc", "f1"), path=None, title: str | None = None):
    """Box + strip plot of the best latent's score over concepts, one box per method (in the
    methods' shared order and colours)."""

    d = per_concept[per_concept.n_pos > 0]
    kw = plots.style_kwargs(d["method"], lines=False)
    order = kw["hue_order"]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.6 * len(cols), 3.8), squeeze=False)
    for ax, c in zip(axes[0], cols, strict=True):
        sns.boxplot(data=d, x="method", y=c, hue="method", order=order, showfliers=False, ax=ax,
                    legend=False, **kw)  # fmt: skip
        sns.stripplot(data=d, x="method", y=c, order=order, color="0.2", size=2.5, alpha=0.5,
                      ax=ax)  # fmt: skip
        ax.set(xlabel="", ylabel=f"best single-latent {c.upper()}", ylim=(0, 1.02),
               title=f"best {c.upper()} per concept")  # fmt: skip
        ax.set_xticks(range(len(order)), [plots.method_label(m) for m in order])
    plots.titled(fig, title or "How well does the best single latent recover each concept?")
    return _save(fig, path)


def plot_label_heatmap(per_label_table: pd.DataFrame, value: str = "f1", path=None,
                       title: str | None = None):  # fmt: skip
    """Heatmap of a per-label score (rows: storyworld labels, columns: methods in the shared
    order), annotated at a readable 9 pt."""

    grid = per_label_table.pivot(index="label", columns="method", values=value)
    grid = grid.loc[list(dict.fromkeys(per_label_table.label)),
                    plots.method_order(per_label_table.method)]  # fmt: skip
    grid.columns = [plots.method_label(m) for m in grid.columns]
    fig, ax = plt.subplots(figsize=(1.1 * grid.shape[1] + 4.2, 0.32 * grid.shape[0] + 1.6))
    cbar = {"label": f"best {value.upper()}"}
    sns.heatmap(grid, vmin=0, vmax=1, cmap="viridis", annot=True, fmt=".2f",
                annot_kws={"size": 9}, cbar_kws=cbar, ax=ax)  # fmt: skip
    ax.set(xlabel="", ylabel="")
    ax.grid(False)  # the theme's grid would cross the cells
    ax.tick_params(axis="both", labelsize=9)
    ax.set_title(title or f"Mean best {value.upper()} over each label's values, per SAE")
    return _save(fig, path)


def plot_explained(per_method: pd.DataFrame, path=None, threshold: float = 0.9,
                   title: str | None = None):  # fmt: skip
    """Bars per method: fraction of alive latents explained by one concept (any / rare ones)."""

    d = per_method.reset_index().melt(
        id_vars="method", value_vars=["explained_frac", "explained_frac_rare"],
        var_name="concepts", value_name="fraction",
    )  # fmt: skip
    d["concepts"] = d.concepts.map({"explained_frac": "any", "explained_frac_rare": "rare only"})
    order = plots.method_order(d["method"])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    sns.barplot(data=d, x="method", y="fraction", hue="concepts", order=order, ax=ax,
                palette=["#555555", "#bbbbbb"])  # fmt: skip
    ax.set(xlabel="", ylabel=f"alive latents with\nprecision >= {threshold:g}")
    ax.set_xticks(range(len(order)), [plots.method_label(m) for m in order])
    ax.set_title(title or "Latents explained by a single concept")
    return _save(fig, path)


def plot_sweep(sweep: pd.DataFrame, metrics, target: float | None = None, path=None,
               title: str | None = None):  # fmt: skip
    """One panel per metric against CE increase (log x) over a whole sweep, a line per method."""

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.0 * len(metrics), 3.6), squeeze=False)
    kw = plots.style_kwargs(sweep["method"])
    for ax, m in zip(axes[0], metrics, strict=True):
        sns.lineplot(data=sweep.sort_values("ce_increase"), x="ce_increase", y=m, hue="method",
                     style="method", sort=False, estimator=None, ax=ax,
                     legend="auto" if ax is axes[0, 0] else False, **kw)  # fmt: skip
        if target is not None:
            ax.axvline(target, color="0.5", ls=":", lw=1)
        ax.set(xscale="log", xlabel="CE loss increase (nats)", ylabel=m, title=m)
        ax.xaxis.set_major_formatter(plots.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        plots.legend_labels(ax)
    plots.titled(fig, title or "Along the whole sweep (dotted: the matched CE increase)")
    return _save(fig, path)
