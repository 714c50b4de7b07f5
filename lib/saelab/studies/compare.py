"""Comparing methods across a sweep: Pareto frontiers and tables at matched CE increase.

Braun et al. 2024 compare SAE types at equal *performance explained* (CE loss increase when the
SAE is spliced in): Figure 1 plots CE increase against L0 and against alive latents, and Table 2
reads off L0 and alive latents of runs with similar CE increase. `matched` does the reading off by
interpolating each method's sweep at one target CE increase (log-linear in L0 and alive, since
both span orders of magnitude), and says when a method's sweep does not reach the target.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from saelab.studies import plots
from saelab.studies.stats import seed_stats


def interpolate_at(df: pd.DataFrame, x: str, y: str, target: float, log_x: bool = False) -> float:
    """`y` at `x == target`, interpolated over `df`'s rows; NaN when out of range.

    Log-linear in `y` when every value is positive (L0 and alive span decades), else linear.
    `log_x` interpolates in log `x` too: across a sweep's jump (CE +0.05 to +0.7 between two
    neighbouring runs) the two choices can disagree by tens of percent, so tables give both.
    """
    d = df[[x, y]].dropna().sort_values(x)
    if len(d) == 0 or not d[x].min() <= target <= d[x].max():
        return float("nan")
    if len(d) == 1:
        return float(d[y].iloc[0])
    xs, ys = d[x].to_numpy(dtype=float), d[y].to_numpy(dtype=float)
    if log_x:
        if (xs <= 0).any() or target <= 0:
            return float("nan")  # log x needs positive values
        xs, target = np.log(xs), float(np.log(target))
    if (ys <= 0).any():  # zeros or negatives (a fraction, an explained variance): linear
        return float(np.interp(target, xs, ys))
    return float(np.exp(np.interp(target, xs, np.log(ys))))


def common_target(df: pd.DataFrame, methods, x: str = "ce_increase") -> float:
    """A CE increase every method's sweep reaches: the middle of the overlap of their ranges."""
    lo = max(df[df.method == m][x].min() for m in methods)
    hi = min(df[df.method == m][x].max() for m in methods)
    return float((lo + hi) / 2) if lo <= hi else float("nan")


def match_target(df: pd.DataFrame, methods, target: float = 0.0, x: str = "ce_increase") -> float:
    """`target` if > 0, else the sweeps' `common_target`, else (no overlap) the geometric mean of
    all their `x` values, so that `closest` still picks comparable runs."""
    if target > 0:
        return float(target)
    common = common_target(df, methods, x)
    if common == common:
        return common
    return float(np.exp(np.log(df[df.method.isin(methods)][x].clip(lower=1e-9)).mean()))


def matched(df: pd.DataFrame, methods, target: float, x: str = "ce_increase",
            cols=("l0", "alive"), log_x: bool = False) -> pd.DataFrame:  # fmt: skip
    """One row per method: `cols` interpolated at `x == target` (NaN: sweep does not reach it),
    linearly in `x` or, with `log_x`, in log `x`."""
    rows = []
    for m in methods:
        sub = df[df.method == m]
        rows.append({"method": m, x: target}
                    | {c: interpolate_at(sub, x, c, target, log_x) for c in cols})  # fmt: skip
    return pd.DataFrame(rows, columns=["method", x, *cols]).set_index("method")


def bracket(df: pd.DataFrame, methods, target: float, x: str = "ce_increase",
            within: float = 0.2) -> pd.DataFrame:  # fmt: skip
    """Per method, the actual runs nearest `target` below and above it in `x`, and whether both
    lie within `within` (relative) of it: an interpolation between two such runs is a short step,
    not a guess across a jump. Index = method; columns `below`, `above` (their `x`), `run_below`,
    `run_above`, `bracketed` (bool)."""
    rows = []
    for m in methods:
        sub = df[df.method == m]
        lo, hi = sub[sub[x] <= target], sub[sub[x] >= target]
        b = lo.loc[lo[x].idxmax()] if len(lo) else None
        a = hi.loc[hi[x].idxmin()] if len(hi) else None
        ok = (b is not None and a is not None and b[x] >= (1 - within) * target
              and a[x] <= (1 + within) * target)  # fmt: skip
        rows.append(dict(
            method=m, below=float("nan") if b is None else float(b[x]),
            above=float("nan") if a is None else float(a[x]),
            run_below=None if b is None else b.get("run"),
            run_above=None if a is None else a.get("run"), bracketed=bool(ok),
        ))  # fmt: skip
    return pd.DataFrame(rows).set_index("method")


def pareto_plot(df: pd.DataFrame, y: str = "ce_increase", xs=("l0", "alive"), path=None,
                title: str | None = None, seeds: pd.DataFrame | None = None,
                target: float | None = None):  # fmt: skip
    """Braun et al. Fig. 1: `y` against each of `xs`, one line per method (sorted by x), in the
    methods' shared style (`saelab.studies.plots`). An axis whose values span a decade or more
    is log-scaled (CE increase usually does); alive latents get integer ticks.

    `df`: one row per setting (its seeds' mean); `seeds`: one row per run (with `point`), each
    setting's range over its seeds drawn as whiskers in both directions; `target`: the matched
    CE increase, a dotted line. An `alive` panel whose values all lie within 1% of each other is
    left out (it would draw noise of one or two latents as a frontier) and the range is said
    under the title instead."""
    note = ""
    if len(xs) > 1 and "alive" in xs and len(df) and df["alive"].max() <= 1.01 * df["alive"].min():
        xs = tuple(x for x in xs if x != "alive")
        lo, hi = f"{df['alive'].min():.0f}", f"{df['alive'].max():.0f}"
        kept = lo if lo == hi else f"{lo}-{hi}"
        note = f"alive latents not plotted: every setting keeps {kept} alive"
    # 2.6 inches more for the legend, which sits right of the last panel: inside, with a title
    # this long, it covered a frontier's points (05_pareto/doubling, 2026-12-05)
    fig, axes = plt.subplots(1, len(xs), figsize=(max(5.2 * len(xs), 6.4) + 2.6, 4.2),
                             squeeze=False)  # fmt: skip
    kw = plots.style_kwargs(df["method"])
    for ax, x in zip(axes[0], xs, strict=True):
        if seeds is not None and len(seeds):  # each setting's range over its seeds, both ways
            for (m, _), g in seeds.groupby(["method", "point"]):
                if m in set(df.method) and len(g) > 1:
                    c, mx, my = plots.line_kwargs(m)["color"], g[x].mean(), g[y].mean()
                    ax.plot([g[x].min(), g[x].max()], [my, my], color=c, lw=1, alpha=0.6)
                    ax.plot([mx, mx], [g[y].min(), g[y].max()], color=c, lw=1, alpha=0.6)
        sns.lineplot(data=df.sort_values(x), x=x, y=y, hue="method", style="method",
                     sort=False, estimator=None, ax=ax, markersize=5, **kw)  # fmt: skip
        if target is not None and target == target:
            ax.axhline(target, color="0.35", linestyle=":", linewidth=1.2, zorder=0,
                       label=f"matched at CE +{target:.3g}")  # fmt: skip
        xlabel = {"l0": "L0 (active latents per token)", "alive": "alive latents"}.get(x, x)
        ylabel = plots.LABELS.get(y, y)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{ylabel.split(' (')[0]} against {xlabel}")
        everything = pd.concat([df, seeds]) if seeds is not None else df
        plots.log_if_spans(ax, "x", everything[x]) or plots.tidy_ticks(
            ax, "x", integer=x == "alive"
        )
        plots.log_if_spans(ax, "y", everything[y]) or plots.tidy_ticks(ax, "y")
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    several = seeds is not None and "seed" in seeds and seeds["seed"].nunique() > 1
    handles, labels = axes[0, 0].get_legend_handles_labels()
    axes[0, -1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       borderaxespad=0.0, fontsize=9,
                       title="method" + ("\n(mean over seeds;\nwhiskers: their range)"
                                         if several else ""))  # fmt: skip
    plots.legend_labels(axes[0, -1])
    default = "Pareto frontiers: CE increase against sparsity (lower left is better)"
    plots.titled(fig, (title or default) + (f"\n{note}" if note else ""))
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def load_sweep(folder: str | Path) -> pd.DataFrame:
    """The sweep table of a `05_pareto` run folder with each SAE's path (column `sae_path`) and
    training seed (column `seed`; 0 for runs made before 05 took several seeds).

    Reads `folder/sweep.csv`; SAEs live in `folder/runs/<run>/saes/<site>/`. Studies compute
    their numbers per seed and report them over seeds (`saelab.studies.stats.over_seeds`).
    """
    folder = Path(folder)
    table = folder / "sweep.csv"
    if not table.exists():
        raise FileNotFoundError(
            f"{table} not found: give the folder of a 05_pareto run (it holds sweep.csv and "
            "runs/), e.g. outputs/reference/05_pareto/main-v2"
        )
    df = pd.read_csv(table)
    paths = []
    for run in df["run"]:
        saes = sorted((folder / "runs" / run / "saes").glob("*/cfg.json"))
        if not saes:
            raise FileNotFoundError(f"no saved SAE under {folder / 'runs' / run / 'saes'}")
        paths.append(str(saes[0].parent))
    if "seed" not in df:
        df["seed"] = 0
    return df.assign(sae_path=paths)


def closest(df: pd.DataFrame, methods, target: float, x: str = "ce_increase") -> pd.DataFrame:
    """Per method, the row of `df` whose `x` is nearest `target` (in log space); index = method."""
    rows = []
    for m in methods:
        sub = df[df.method == m]
        if sub.empty:
            raise ValueError(f"method {m!r} not in the sweep; it has {sorted(set(df.method))}")
        dist = (np.log(sub[x].clip(lower=1e-9)) - np.log(max(target, 1e-9))).abs()
        rows.append(sub.loc[dist.idxmin()])
    return pd.DataFrame(rows).set_index("method")


def doubling(
    half: pd.DataFrame,
    full: pd.DataFrame,
    methods,
    target: float,
    x: str = "ce_increase",
    y: str = "l0",
    log_x: bool = False,
) -> pd.DataFrame:
    """The doubling test's numbers (ARCHITECTURE.md §5): per method and seed, `y` at `x ==
    target` in the sweep trained on half the budget (`half`) and on the full one (`full`), each
    interpolated as `matched` does (linearly in `x`, or in log `x`).

    `half`, `full`: sweep tables (`load_sweep`, columns `method`, `seed`, `x`, `y`, `run`) of the
    same settings at the two budgets. Returns one row per (method, seed) present in both:
    `method`, `seed`, `half`, `full` (`y` at the target; NaN where that sweep does not reach it),
    `change` (`full / half - 1`: the relative move when the budget doubled) and `bracketed_half`,
    `bracketed_full` (`bracket`: runs within 20% of the target on both sides).
    """
    rows = []
    for m in methods:
        seeds = sorted(
            set(half.loc[half.method == m, "seed"]) & set(full.loc[full.method == m, "seed"])
        )
        for s in seeds:
            row = dict(method=m, seed=int(s))
            for name, df in (("half", half), ("full", full)):
                d = df[(df.method == m) & (df.seed == s)]
                row[name] = interpolate_at(d, x, y, target, log_x)
                row[f"bracketed_{name}"] = bool(bracket(d, [m], target, x).loc[m, "bracketed"])
            row["change"] = row["full"] / row["half"] - 1 if row["half"] else float("nan")
            rows.append(row)
    cols = ["method", "seed", "half", "full", "change", "bracketed_half", "bracketed_full"]
    return pd.DataFrame(rows, columns=cols)


def settled(changes, tol: float = 0.1) -> dict:
    """The doubling test's verdict on one result measured per seed (`changes`: its relative move
    per seed when the budget doubled, e.g. `doubling(...).change`).

    The verdict reads the 95% t-interval of the mean change over seeds (`seed_stats`):
    **settled** when it lies inside `(-tol, tol)`, **moving** when it lies wholly beyond `tol` on
    one side, else **undecided** (the interval straddles `±tol`). Fewer than two finite changes
    (one seed, or a sweep that misses the target) have no interval: undecided. Returns
    `seed_stats`' `mean`, `sd`, `n`, `lo`, `hi`, `verdict`, `settled` (verdict == "settled")
    and `seeds_needed` (`seeds_to_decide`: how many seeds would decide it if the mean and SD
    stayed as measured; None when not within 1,000, as for a mean on the edge).
    """

    st = seed_stats(changes)
    if st["n"] < 2:
        verdict = "undecided"
    elif -tol < st["lo"] and st["hi"] < tol:
        verdict = "settled"
    elif st["lo"] >= tol or st["hi"] <= -tol:
        verdict = "moving"
    else:
        verdict = "undecided"
    needed = seeds_to_decide(st["mean"], st["sd"], tol) if st["n"] >= 2 else None
    return st | dict(verdict=verdict, settled=verdict == "settled", seeds_needed=needed)


def seeds_to_decide(mean: float, sd: float, tol: float = 0.1, most: int = 1000) -> int | None:
    """The fewest seeds n (>= 2) whose 95% t-interval `mean ± t(0.975, n-1) * sd / sqrt(n)`
    lies inside `(-tol, tol)` or wholly beyond `±tol` (the doubling test decides), if the mean
    and SD stayed as measured; None if more than `most`. A mean close to `±tol` needs a great
    many: more seeds are then not the way to decide it (a longer budget is)."""
    from scipy import stats as st

    if not (np.isfinite(mean) and np.isfinite(sd)):
        return None
    for n in range(2, most + 1):
        half = st.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
        if -tol < mean - half and mean + half < tol or mean - half >= tol or mean + half <= -tol:
            return n
    return None
