"""Dictionary geometry: how close an SAE's directions are to each other, across seeds and types.

Braun et al. 2024 §3.3 (Figure 3) compare the dictionaries of local, e2e and e2e+ds SAEs trained
to a similar CE loss increase, using only *alive* latents and their *unit-norm decoder directions*:

- **within-SAE**: for each direction, the largest cosine similarity to any *other* direction of
  the same dictionary (3a). Local dictionaries are more tightly packed: on GPT-2, the mean is
  0.166 higher for local than for e2e, and 0.04 higher than for e2e+ds.
- **cross-seed**: each direction's largest cosine similarity to the dictionary of the same SAE
  type trained with another seed (3b); e2e dictionaries are the least stable across seeds.
- **cross-type**: each e2e (or e2e+ds) direction's largest cosine similarity to the local
  dictionary (3c): does the e2e SAE find the local SAE's features?

Everything here is a pure function of tensors (or of an SAE's weights); confidence intervals are
percentile bootstraps over latents, which treat the directions as independent samples (they are
not quite: a nearest-neighbour pair contributes twice). Seed-to-seed spread is a separate check.
(`seed_stats`, the mean and t-interval over training seeds, lives in `saelab.studies.stats`.)
Two references make the numbers readable: `random_directions`
(chance level for as many directions in as many dimensions) and `cos_to_init` (how far training
moved each direction from its seeded random initialisation; geometry that is still the init's
says little about the loss).

    dirs = alive_directions(sae, plots.firing_frequency(lm, sae, val))
    within = max_cos_sim(dirs)                     # [n_alive]
    mean, lo, hi = bootstrap_ci(within.numpy())
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.core.sae import SAE
from saelab.studies import plots

# Braun et al. 2024 §3.3, GPT-2 layer 6: mean within-SAE max cosine similarity differences.
PAPER_WITHIN_DIFF = {"local - e2e": 0.166, "local - e2e+ds": 0.04}


def alive_mask(acts_or_mask, d_sae: int | None = None) -> Tensor:
    """Boolean `[d_sae]` mask of alive latents (fired at least once) from any of:

    a bool mask `[d_sae]`; firing frequencies `[d_sae]` (float, alive where > 0); latent
    activations `[..., d_sae]` (2-D or more, alive where any entry is nonzero); or a
    `features.Activations` (its `.alive()`).
    """
    if hasattr(acts_or_mask, "alive"):
        mask = acts_or_mask.alive()
    else:
        t = torch.as_tensor(acts_or_mask)
        if t.dtype == torch.bool and t.dim() == 1:
            mask = t
        elif t.dim() == 1:
            mask = t > 0
        else:
            mask = (t != 0).flatten(0, -2).any(0)
    if d_sae is not None and mask.shape != (d_sae,):
        raise ValueError(f"alive mask has shape {tuple(mask.shape)}, the SAE has {d_sae} latents")
    return mask.cpu()


def alive_directions(sae, acts_or_mask) -> Tensor:
    """Unit-norm decoder directions `[n_alive, d_in]` of the latents alive per `acts_or_mask`.

    `acts_or_mask`: see `alive_mask` (a mask, frequencies, activations or `Activations`).
    """
    mask = alive_mask(acts_or_mask, sae.cfg.d_sae)
    # normalised here: a transcoder's rows carry the output's scale (the others are unit already)
    return F.normalize(sae.decoder_directions().detach().float().cpu()[mask], dim=-1)


def max_cos_sim(A: Tensor, B: Tensor | None = None, chunk: int = 4096) -> Tensor:
    """For each row of `A [n, d]`, the largest cosine similarity to a row of `B [m, d]`, `[n]`.

    With `B=None`, to the *other* rows of `A` (self excluded): Braun et al.'s within-SAE measure.
    Rows are normalised here, so unnormalised inputs are fine.
    """
    A = F.normalize(torch.as_tensor(A).double(), dim=-1)
    within = B is None
    B = A if within else F.normalize(torch.as_tensor(B).double(), dim=-1)
    if within and len(A) < 2:
        raise ValueError("within-dictionary similarity needs at least 2 directions")
    if len(B) == 0:
        raise ValueError("B has no directions")
    out = []
    for i in range(0, len(A), chunk):
        sims = A[i : i + chunk] @ B.T  # [c, m]
        if within:
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + i] = -torch.inf  # a direction is not its own neighbour
        out.append(sims.max(-1).values)
    return torch.cat(out).float()


def random_directions(n: int, d: int, seed: int = 0) -> Tensor:
    """`n` random unit directions `[n, d]` (isotropic Gaussian, normalised), seeded."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


def init_directions(sae, seed: int) -> Tensor:
    """The unit decoder directions `[d_sae, d_in]` `sae` started from, if trained by `sl.train`.

    `sl.train` seeds torch with `cfg.seed` and then builds the SAE; we rebuild it the same way
    (without touching the global random state). Compare with `decoder_directions()` to see how
    far training moved each direction: geometry that is still the init's says little.
    """

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rows = SAE.from_config(sae.cfg).decoder_directions().detach().float()
    if not bool(rows.norm(dim=-1).gt(0).all()):
        raise ValueError(f"architecture={sae.cfg.architecture!r} starts with a zero decoder: it "
                         "has no initial directions to compare with")  # fmt: skip
    return F.normalize(rows, dim=-1)


def cos_to_init(sae, seed: int, acts_or_mask=None) -> Tensor:
    """Cosine similarity of each (alive) trained direction to its initial one, `[n_alive]`."""
    now = F.normalize(sae.decoder_directions().detach().float().cpu(), dim=-1)
    cos = (now * init_directions(sae, seed)).sum(-1)
    return cos if acts_or_mask is None else cos[alive_mask(acts_or_mask, sae.cfg.d_sae)]


def _resample(x: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """`[n_boot, len(x)]` bootstrap resamples of `x` (with replacement)."""
    return x[rng.integers(0, len(x), size=(n_boot, len(x)))]


def _stat_rows(samples: np.ndarray, stat: Callable) -> np.ndarray:
    """`stat` applied to each row of `samples [n_boot, n]` (vectorised for mean/median)."""
    if stat in (np.mean, np.median):
        return stat(samples, axis=1)
    return np.array([stat(row) for row in samples])


def _interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    q = (1 - level) / 2
    return float(np.nanquantile(boot, q)), float(np.nanquantile(boot, 1 - q))


def bootstrap_ci(
    values, n_boot: int = 1000, seed: int = 0, stat: Callable = np.mean, level: float = 0.95
) -> tuple[float, float, float]:
    """(`stat(values)`, lower, upper): percentile bootstrap CI over the entries of `values [n]`."""
    x = np.asarray(values, dtype=float).ravel()
    if len(x) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    boot = _stat_rows(_resample(x, np.random.default_rng(seed), n_boot), stat)
    return (float(stat(x)), *_interval(boot, level))


def bootstrap_two(
    a,
    b,
    combine: Callable,
    n_boot: int = 1000,
    seed: int = 0,
    stat: Callable = np.mean,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(`combine(stat(a), stat(b))`, lower, upper), resampling `a [n]` and `b [m]` independently."""
    a, b = (np.asarray(v, dtype=float).ravel() for v in (a, b))
    if len(a) == 0 or len(b) == 0:
        raise ValueError("bootstrap_two needs values in both samples")
    rng = np.random.default_rng(seed)
    sa = _stat_rows(_resample(a, rng, n_boot), stat)
    sb = _stat_rows(_resample(b, rng, n_boot), stat)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = combine(sa, sb)
        point = float(combine(np.float64(stat(a)), np.float64(stat(b))))
    return (point, *_interval(boot, level))


def bootstrap_diff_ci(a, b, n_boot: int = 1000, seed: int = 0, stat: Callable = np.mean,
                      level: float = 0.95) -> tuple[float, float, float]:  # fmt: skip
    """(`stat(a) - stat(b)`, lower, upper) for two independent samples `a [n]`, `b [m]`."""
    return bootstrap_two(a, b, np.subtract, n_boot, seed, stat, level)


def bootstrap_ratio_ci(a, b, n_boot: int = 1000, seed: int = 0, stat: Callable = np.mean,
                       level: float = 0.95) -> tuple[float, float, float]:  # fmt: skip
    """(`stat(a) / stat(b)`, lower, upper) for two independent samples `a [n]`, `b [m]`."""
    return bootstrap_two(a, b, np.divide, n_boot, seed, stat, level)


# --- the three comparisons of Braun et al. Figure 3 -----------------------------------------------


def similarity_table(dirs: dict[tuple[str, int], Tensor], reference: str = "local") -> pd.DataFrame:
    """One row per alive direction and comparison: columns kind, comparison, method, value.

    `dirs` maps (SAE type, seed) to alive unit directions `[n, d]`. Rows of kind
    - "within": each dictionary against itself (`max_cos_sim(A)`), comparison "<type> s<seed>";
    - "cross-seed": each type's first seed against its second, "<type> s0 -> s1";
    - "cross-type": each other type's first seed against `reference` at another seed
      (same-seed SAEs share their initial decoder), "<type> s0 -> local s1".
    """
    rows = []

    def add(kind, comparison, method, values):
        rows.append(pd.DataFrame({"kind": kind, "comparison": comparison, "method": method,
                                  "value": values.numpy()}))  # fmt: skip

    types = list(dict.fromkeys(t for t, _ in dirs))
    for (t, s), A in dirs.items():
        add("within", f"{t} s{s}", t, max_cos_sim(A))
    for t in types:
        seeds = sorted(s for tt, s in dirs if tt == t)
        if len(seeds) >= 2:
            a, b = seeds[:2]
            add("cross-seed", f"{t} s{a} -> s{b}", t, max_cos_sim(dirs[t, a], dirs[t, b]))
    ref_seeds = sorted(s for t, s in dirs if t == reference)
    for t in types:
        if t == reference or not ref_seeds:
            continue
        s = min(s for tt, s in dirs if tt == t)
        # Another seed of the reference when there is one: SAEs with the same seed start from
        # the same decoder, and a short run would look similar by inheritance, not by learning.
        r = next((x for x in ref_seeds if x != s), ref_seeds[0])
        sims = max_cos_sim(dirs[t, s], dirs[reference, r])
        add("cross-type", f"{t} s{s} -> {reference} s{r}", t, sims)
    return pd.concat(rows, ignore_index=True)


def summarize(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean max-cosine similarity with a 95% bootstrap CI per comparison of `similarity_table`."""
    rows = []
    for (kind, comp), g in table.groupby(["kind", "comparison"], sort=False):
        mean, lo, hi = bootstrap_ci(g["value"], n_boot, seed)
        rows.append(dict(kind=kind, comparison=comp, method=g["method"].iloc[0], n=len(g),
                         mean=mean, ci_lo=lo, ci_hi=hi))  # fmt: skip
    return pd.DataFrame(rows)


def within_differences(table: pd.DataFrame, reference: str = "local", n_boot: int = 1000,
                       seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Within-SAE mean differences `reference - other` per seed with CIs, next to the paper's."""
    within = table[table.kind == "within"]
    seeds = sorted({int(c.rsplit(" s", 1)[1]) for c in within.comparison})
    rows = []
    for s in seeds:
        ref = within[within.comparison == f"{reference} s{s}"]["value"]
        for m in dict.fromkeys(within.method):
            other = within[within.comparison == f"{m} s{s}"]["value"]
            if m == reference or ref.empty or other.empty:
                continue
            name = f"{reference} - {m}"
            diff, lo, hi = bootstrap_diff_ci(ref, other, n_boot, seed)
            rows.append(dict(difference=name, seed=s, ours=diff, ci_lo=lo, ci_hi=hi,
                             paper=PAPER_WITHIN_DIFF.get(name, float("nan"))))  # fmt: skip
    return pd.DataFrame(rows)


def similarity_plot(table: pd.DataFrame, path=None, title: str | None = None):
    """Braun et al. Figure 3: max-cosine-similarity histograms, a panel per kind, a colour per
    SAE type in the methods' shared style (the seeds of a type pooled in the within panel). A
    panel's legend lists only the types it draws."""

    kinds = list(dict.fromkeys(table["kind"]))
    lo = np.floor(table["value"].min() * 20) / 20
    bins = np.linspace(lo, 1, 41)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        sub = table[table.kind == kind]
        for m in plots.method_order(sub["method"]):
            v = sub[sub.method == m]["value"].to_numpy(dtype=float)
            if len(v) == 0:
                continue
            dens, _ = np.histogram(v, bins=bins, density=True)
            kw = plots.line_kwargs(m)
            kw.pop("marker")
            ax.stairs(dens, bins, label=plots.method_label(m), linewidth=1.6, **kw)
        what = {"within": "within SAE (nearest other latent)",
                "cross-seed": "to the same type, other seed",
                "cross-type": "to the local dictionary"}.get(kind, kind)  # fmt: skip
        ax.set(xlabel="max cosine similarity", ylabel="density", title=what, xlim=(lo, 1))
        ax.legend(title="SAE type")
    plots.titled(fig, title or "Decoder directions: max cosine similarity to other directions")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


# --- UMAP -----------------------------------------------------------------------------------------


def umap_embedding(dirs_by_name: dict[str, Tensor], n_neighbors: int = 15, min_dist: float = 0.1,
                   random_state: int = 0) -> pd.DataFrame:  # fmt: skip
    """2-D UMAP (cosine metric) of several dictionaries' directions together.

    `dirs_by_name` maps a dictionary name to directions `[n_i, d]`; returns one row per direction
    with columns x, y, dictionary. A fixed `random_state` makes it reproducible (and serial).
    umap-learn is imported here: its numba functions compile on first use (tens of seconds).
    """
    import umap

    names = list(dirs_by_name)
    X = torch.cat([torch.as_tensor(dirs_by_name[n]).float() for n in names]).numpy()
    labels = np.concatenate([[n] * len(dirs_by_name[n]) for n in names])
    reducer = umap.UMAP(n_components=2, metric="cosine", n_neighbors=min(n_neighbors, len(X) - 1),
                        min_dist=min_dist, random_state=random_state, n_jobs=1)  # fmt: skip
    emb = reducer.fit_transform(X)
    return pd.DataFrame({"x": emb[:, 0], "y": emb[:, 1], "dictionary": labels})


def same_dictionary_fraction(emb: pd.DataFrame, k: int = 10) -> float:
    """Mean fraction of each point's `k` nearest neighbours in a `umap_embedding` (x, y) that come
    from its own dictionary: sum of squared dictionary shares when fully mixed (0.5 for two of
    equal size), 1 when each dictionary has regions of its own."""
    xy = torch.tensor(emb[["x", "y"]].to_numpy(), dtype=torch.float64)
    labels = pd.factorize(emb["dictionary"])[0]
    dist = torch.cdist(xy, xy)
    dist.fill_diagonal_(torch.inf)
    nn = dist.topk(min(k, len(xy) - 1), largest=False).indices.numpy()  # [n, k]
    return float((labels[nn] == labels[:, None]).mean())


def umap_plot(emb: pd.DataFrame, path=None, title: str | None = None):
    """Scatter of a `umap_embedding`, coloured by dictionary (in its method's colour)."""

    fig, ax = plt.subplots(figsize=(5.4, 5.0))
    sns.scatterplot(data=emb, x="x", y="y", hue="dictionary", s=9, alpha=0.7, linewidth=0, ax=ax,
                    **plots.style_kwargs(emb["dictionary"], lines=False))  # fmt: skip
    ax.set(xlabel="UMAP 1", ylabel="UMAP 2", xticks=[], yticks=[])
    names = " and ".join(plots.method_order(emb["dictionary"]))
    ax.set_title(title or f"UMAP (cosine) of the alive directions of {names}")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
