"""Seaborn figures for SAE runs: training curves, latent density, downstream errors, comparisons,
and the one figure style every notebook uses.

Every helper returns its matplotlib Figure and, given `path`, also saves it there (PNG, parent
folders created). Inputs are what the rest of saelab produces: `Run.log` records,
`saelab.core.metrics.evaluate` reports, and tables built from them.

    plots.train_curves({"local": run_a.log, "e2e": run_b.log}, path=out / "curves.png")
    freq = plots.firing_frequency(lm, run.sae, val, n_tokens=65_536)
    plots.density_hist({"local": freq}, path=out / "density.png")

**One method style.** `METHODS` is the order methods appear in (legends, bars, heatmap columns)
and `PALETTE`, `MARKERS`, `DASHES` their colour, marker and line style, the same in every figure
of every notebook and study module. Names are matched by `method_of`, so `"g-sae"`, `"g-SAE"`,
`"gtopk"` and `"gtopk s0 -> s1"` all take g-SAE's style. g-SAE is dashed and drawn above TopK,
so that one never hides the other when their curves coincide.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib import ticker

from saelab.core.models import parse_site
from saelab.core.passes import clean_pass

# --- one style for every figure ---------------------------------------------------------------

METHODS = ("local", "e2e", "e2e+ds", "topk", "gtopk", "batchtopk", "jumprelu", "random")
METHOD_LABELS = {"local": "local", "e2e": "e2e", "e2e+ds": "e2e+ds", "topk": "TopK",
                 "gtopk": "g-SAE", "batchtopk": "BatchTopK", "jumprelu": "JumpReLU",
                 "random": "random"}  # fmt: skip
# seaborn's colour-blind palette; local/e2e/e2e+ds and TopK/g-SAE are the pairs told apart most
PALETTE = {"local": "#0173b2", "e2e": "#de8f05", "e2e+ds": "#029e73", "topk": "#d55e00",
           "gtopk": "#cc78bc", "batchtopk": "#ca9161", "jumprelu": "#56b4e9",
           "random": "#949494"}  # fmt: skip
MARKERS = {"local": "o", "e2e": "s", "e2e+ds": "D", "topk": "^", "gtopk": "v", "batchtopk": "P",
           "jumprelu": "X", "random": "."}  # fmt: skip
DASHES = {m: "" for m in METHODS} | {"gtopk": (4, 2), "random": (1, 2)}  # "": solid
LINESTYLES = {m: "-" for m in METHODS} | {"gtopk": "--", "random": ":"}
ZORDER = {m: 2 for m in METHODS} | {"gtopk": 3}  # g-SAE above TopK
ALIASES = {"g-sae": "gtopk", "gsae": "gtopk", "g_sae": "gtopk", "relu": "local",
           "e2e_ds": "e2e+ds", "e2eds": "e2e+ds"}  # fmt: skip
_EXTRA = ["#ece133", "#fbafe4", "#333333", "#7f3c8d", "#11a579"]  # names outside METHODS
# readable text: ticks and annotations no smaller than 9 pt at the saved size
THEME = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
         "ytick.labelsize": 9, "legend.fontsize": 9, "legend.title_fontsize": 9,
         "figure.titlesize": 12, "axes.grid": True, "grid.alpha": 0.3,
         "axes.formatter.useoffset": False}  # fmt: skip


def use_theme() -> None:
    """Apply `THEME` (font sizes, light grid, no tick offsets) to matplotlib's rcParams."""
    plt.rcParams.update(THEME)


use_theme()


def method_of(name) -> str | None:
    """The method in `METHODS` a label names (`"g-SAE"` -> `"gtopk"`, `"e2e+ds s0 -> local"` ->
    `"e2e+ds"`, `"local · run=..."` -> `"local"`), or None for other labels."""
    s = str(name).strip().lower()
    s = ALIASES.get(s, s)
    for alias, m in ALIASES.items():  # an alias at the start of a longer label
        if re.match(re.escape(alias) + r"(?![\w+])", s):
            return m
    for m in sorted(METHODS, key=len, reverse=True):  # e2e+ds before e2e
        if re.match(re.escape(m) + r"(?![\w+])", s):
            return m
    return None


def method_order(names) -> list:
    """`names` (unique, in first-seen order) sorted by `METHODS`; other names keep their order
    after them."""
    names = list(dict.fromkeys(names))
    rank = {m: i for i, m in enumerate(METHODS)}
    return sorted(names, key=lambda n: rank.get(method_of(n), len(METHODS)))


def palette(names) -> dict:
    """Colour per name: its method's `PALETTE` colour, else the next of a few extra colours."""
    out, extra = {}, iter(_EXTRA * 4)
    for n in dict.fromkeys(names):
        m = method_of(n)
        out[n] = PALETTE[m] if m else next(extra)
    return out


def method_label(name) -> str:
    """A method's display name (`"gtopk"`, `"g-sae"` -> `"g-SAE"`); other labels unchanged."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    return METHOD_LABELS.get(key, str(name))


def style_kwargs(names, lines: bool = True) -> dict:
    """seaborn keyword arguments giving `names` their method colours (and, for line plots with
    `style=` the same column, markers and dashes): `hue_order`, `palette`, ...."""
    order = method_order(names)
    kw = dict(hue_order=order, palette=palette(order))
    if lines:
        kw |= dict(style_order=order,
                   markers={n: MARKERS.get(method_of(n), "o") for n in order},
                   dashes={n: DASHES.get(method_of(n), "") for n in order})  # fmt: skip
    return kw


def line_kwargs(name) -> dict:
    """matplotlib `plot` keywords (colour, marker, linestyle, zorder) of one method's line."""
    m = method_of(name)
    return dict(color=palette([name])[name], marker=MARKERS.get(m, "o"),
                linestyle=LINESTYLES.get(m, "-"), zorder=ZORDER.get(m, 2))  # fmt: skip


def spans_decades(values, decades: float = 1.0) -> bool:
    """Whether positive `values` span at least `decades` orders of magnitude (log axis then)."""
    v = np.asarray(pd.Series(values).dropna(), dtype=float)
    v = v[v > 0]
    return len(v) > 1 and np.log10(v.max() / v.min()) >= decades


def log_if_spans(ax, axis: str, values, decades: float = 1.0) -> bool:
    """Log-scale `ax`'s `axis` ("x" or "y") when `values` are positive and span decades."""
    ok = spans_decades(values, decades) and (np.asarray(pd.Series(values).dropna()) > 0).all()
    if ok:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        v = np.asarray(pd.Series(values).dropna(), dtype=float)
        log_ticks(ax.xaxis if axis == "x" else ax.yaxis, np.log10(v.max() / v.min()))
    return ok


def log_ticks(axis, span: float = 1.0) -> None:
    """Plain labels on a log `axis` (`ax.xaxis` / `ax.yaxis`) spanning `span` decades: at 1, 2
    and 5 x 10^n over a few decades (a log axis with one labelled tick cannot be read), at the
    powers of ten alone over three or more."""
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span < 3 else (1.0,)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())  # no "4x10^-1" labels crowding the axis


def tidy_ticks(ax, axis: str = "both", integer: bool = False, nbins: int = 5) -> None:
    """At most `nbins` plain tick labels on linear axes (no "510.00510.25..." run-ons)."""
    for name in ("x", "y") if axis == "both" else (axis,):
        a = ax.xaxis if name == "x" else ax.yaxis
        if (ax.get_xscale() if name == "x" else ax.get_yscale()) != "linear":
            continue
        a.set_major_locator(ticker.MaxNLocator(nbins=nbins, integer=integer))
        a.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def legend_labels(ax, **kw) -> None:
    """Rename an axis' legend entries to the methods' display names (`gtopk` -> `g-SAE`)."""
    leg = ax.get_legend()
    if leg is None:
        return
    for t in leg.get_texts():
        t.set_text(method_label(t.get_text()))
    for k, v in kw.items():
        getattr(leg, f"set_{k}")(v)


def titled(fig: plt.Figure, title: str) -> plt.Figure:
    """Give `fig` a title saying what it shows."""
    fig.suptitle(title)
    return fig


TRAIN_KEYS = ("loss", "mse", "kl", "ds_mse", "l0")
LABELS = {
    "loss": "training loss",
    "mse": "MSE at the site",  # training curves: the SAE's normalised units; evaluations: raw
    "kl": "KL(P_clean || P_sae)",
    "ds_mse": "downstream error",
    "l0": "L0 (active latents / token)",
    "explained_var": "explained variance",
    "nmse": "normalised MSE",
    "ce_increase": "CE increase (nats)",
    "dead_frac": "dead fraction",
    "alive": "alive latents",
    "l2_ratio": "||x_hat|| / ||x||",
}
# What a run's training loss is made of, by objective: losses of different objectives are in
# different units and never share an axis.
LOSS_TERMS = {"local": "MSE + penalty", "e2e": "KL + penalty", "e2e+ds": "KL + ds MSE + penalty"}


def _finish(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def _panels(n: int, width: float = 3.6, height: float = 3.0, max_cols: int = 8):
    """`n` panels in as few rows as `max_cols` allows, spread evenly over them (5 panels at most
    4 to a row: 3 + 2, not 4 + 1); unused panels of the last row are hidden."""
    rows = -(-n // max_cols)
    cols = -(-n // rows)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def objective_of(log) -> str:
    """The objective a run trained with: `Run.cfg.loss` ("local→e2e+mse" for a run that ends
    with a fine-tune, `TrainConfig.finetune`: its loss changes units at the switch), else read
    off its log's keys (`finetune` record: a fine-tune, `ds_mse`: e2e+ds, `kl`: e2e, neither:
    local)."""
    cfg = getattr(log, "cfg", None)
    if cfg is not None and getattr(cfg, "loss", None):
        ft = getattr(cfg, "finetune", None)
        return cfg.loss.name + (f"→{ft.loss.name}" if ft is not None else "")
    switch = [r for r in getattr(log, "log", log) if r.get("kind") == "finetune"]
    if switch:
        return f"?→{switch[0]['loss']['name']}"
    recs = [r for r in getattr(log, "log", log) if r.get("kind") == "train"]
    keys = set().union(*recs) if recs else set()
    return "e2e+ds" if "ds_mse" in keys else "e2e" if "kl" in keys else "local"


def train_curves(log, keys=TRAIN_KEYS, path=None, title: str | None = None) -> plt.Figure:
    """Loss / mse / kl / ds_mse / l0 against step from `Run.log` (or {name: log or Run}: a line
    each, in its method's style).

    The training loss of runs with different objectives (local: MSE + penalty; e2e: KL + penalty;
    e2e+ds: KL + downstream MSE + penalty) is in different units: it gets one panel per
    objective, never one shared axis. The other panels are the same quantity for every run.
    """
    logs = log if isinstance(log, dict) else {"run": log}
    objective = {name: objective_of(lg) for name, lg in logs.items()}
    rows = [r | {"run": name} for name, lg in logs.items() for r in getattr(lg, "log", lg)
            if r.get("kind") == "train"]  # fmt: skip
    df = pd.DataFrame(rows)
    keys = [k for k in keys if k in df and df[k].notna().any()]
    groups = list(dict.fromkeys(objective.values()))
    panels = []  # (key, runs, title)
    for k in keys:
        if k == "loss" and len(groups) > 1:
            panels += [
                (
                    k,
                    [n for n in logs if objective[n] == g],
                    f"training loss, {g} ({LOSS_TERMS.get(g, g)})",
                )
                for g in groups
            ]
        else:
            t = f"training loss ({LOSS_TERMS.get(groups[0], groups[0])})" if k == "loss" else \
                LABELS.get(k, k)  # fmt: skip
            panels.append((k, list(logs), t))
    names = list(logs)
    multi = len(names) > 1
    fig, axes = _panels(len(panels), width=4.0, height=3.2, max_cols=4)
    for ax, (k, runs, t) in zip(axes, panels, strict=True):
        sub = df[df.run.isin(runs)]
        kw = style_kwargs(runs) if multi else {}
        if multi:
            kw.pop("markers")
        sns.lineplot(data=sub, x="step", y=k, hue="run" if multi else None,
                     style="run" if multi else None, ax=ax, legend="auto" if multi else False,
                     **kw)  # fmt: skip
        ax.set(ylabel=LABELS.get(k, k), title=t)
        if k == "l0" or not log_if_spans(ax, "y", sub[k], decades=1.0):
            tidy_ticks(ax, "y")
        tidy_ticks(ax, "x", integer=True)
    if multi:  # one legend for the figure: every panel's lines in the same styles
        shared_legend(fig, axes)
    runs_text = ", ".join(method_label(n) for n in names) if multi else ""
    titled(fig, title or "Training curves" + (f": {runs_text}" if runs_text else ""))
    return _finish(fig, path)


def shared_legend(fig: plt.Figure, axes: list) -> None:
    """Gather the entries of `axes`' legends into one (methods' display names), drawn in the
    figure's first unused panel, else to the right of the last panel; the axes' own go."""
    entries = {}
    for ax in axes:
        leg = ax.get_legend()
        if leg is None:
            continue
        handles = getattr(leg, "legend_handles", None) or getattr(leg, "legendHandles", [])
        for h, t in zip(handles, leg.get_texts(), strict=True):
            entries.setdefault(method_label(t.get_text()), h)
        leg.remove()
    if not entries:
        return
    spare = [ax for ax in fig.axes if not ax.get_visible()]
    if spare:
        spare[0].set_visible(True)
        spare[0].axis("off")
        spare[0].legend(entries.values(), entries.keys(), title="run", loc="center")
    else:
        axes[-1].legend(entries.values(), entries.keys(), title="run", loc="upper left",
                        bbox_to_anchor=(1.02, 1.0))  # fmt: skip


def firing_frequency(lm, sae, data, n_tokens: int = 65_536, batch_size: int = 32) -> torch.Tensor:
    """Fraction of tokens `[d_sae]` on which each latent fires, on the first ~n_tokens of `data`."""
    site = sae.cfg.input_site(parse_site(sae.cfg.site))  # a transcoder reads the MLP's input
    grads = sae.needs_grad  # g-SAEs select latents with dL/dx
    n_rows = max(1, min(len(data), n_tokens // data.n_ctx))
    counts = torch.zeros(sae.cfg.d_sae)
    for i in range(0, n_rows, batch_size):
        tokens = data.tokens[i : i + batch_size].to(lm.device)
        clean = clean_pass(lm, tokens, [site], grads=grads)
        clean = clean.seen_by_saes(None, sae.dtype)  # a bf16 model's acts, as the SAE reads them
        with torch.no_grad():
            c = sae(clean.acts[site], grad=(clean.grads or {}).get(site)).c
        counts += (c != 0).flatten(0, -2).sum(0).float().cpu()
    return counts / (n_rows * data.n_ctx)


def density_hist(freqs_by_name: dict[str, torch.Tensor], path=None,
                 title: str = "Latent density: how often each latent fires",
                 n_tokens: int | None = None):  # fmt: skip
    """Histogram of log10 firing frequency `[d_sae]` per SAE (step outlines in the method
    styles, so two equal histograms stay visible); the latents that never fired in this sample
    (of `n_tokens` tokens) in the legend. Not called "dead": the evaluation's alive count uses
    its own, usually longer window (`alive_tokens`), and the two numbers differ."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    logs = {n: torch.as_tensor(f).float() for n, f in freqs_by_name.items()}
    lows = [float(torch.log10(f[f > 0]).min()) for f in logs.values() if (f > 0).any()]
    bins = np.linspace(min([*lows, -4.0]), 0, 41)
    for name in method_order(logs):
        f = logs[name]
        dead = int((f == 0).sum())
        counts, _ = np.histogram(torch.log10(f[f > 0]).numpy(), bins=bins)
        kw = line_kwargs(name)
        kw.pop("marker")
        ax.stairs(counts, bins, label=f"{method_label(name)} ({dead} of {f.numel()} never fired)",
                  linewidth=1.6, **kw)  # fmt: skip
    ax.set(xlabel="log10 firing frequency (fraction of tokens)", ylabel="latents", title=title)
    ax.legend(title=f"SAE, on {n_tokens:,} tokens" if n_tokens else "SAE")
    return _finish(fig, path)


def downstream_plot(reports: dict[str, dict], path=None,
                    title: str = "Downstream reconstruction of later layers, SAE spliced in",
                    ) -> plt.Figure:  # fmt: skip
    """`ds_mse/`, `ds_ev/` of `evaluate` reports by later layer, a line per run (Braun Fig. 2)."""
    rows = []
    for name, rep in reports.items():
        for key, v in rep.items():
            if key.startswith(("ds_mse/", "ds_ev/")):
                metric, site = key.split("/", 1)
                rows.append({"run": name, "metric": metric, "site": site, "value": v,
                             "layer": parse_site(site).layer})  # fmt: skip
    df = pd.DataFrame(rows).sort_values("layer")
    fig, axes = _panels(2, width=4.4, height=3.4)
    panels = [("ds_mse", "downstream MSE", "MSE of the later residual"),
              ("ds_ev", "downstream explained var", "variance of it explained")]  # fmt: skip
    for ax, (metric, label, t) in zip(axes, panels, strict=True):
        legend = "auto" if ax is axes[0] else False
        sub = df[df.metric == metric]
        sns.lineplot(data=sub, x="site", y="value", hue="run", style="run", sort=False,
                     ax=ax, legend=legend, **style_kwargs(reports))  # fmt: skip
        ax.set(xlabel="later residual site", ylabel=label, title=t)
        if metric == "ds_mse":
            log_if_spans(ax, "y", sub["value"], decades=0.5) or tidy_ticks(ax, "y")
        else:
            tidy_ticks(ax, "y")
        ax.tick_params(axis="x", rotation=30)
        legend_labels(ax)
    titled(fig, title)
    return _finish(fig, path)


def compare_bars(df: pd.DataFrame, metrics, hue: str = "run", x: str | None = None, path=None,
                 title: str | None = None):  # fmt: skip
    """One bar panel per metric for a small table `df` (a `hue` column names the runs); a
    positive metric spanning a decade or more gets a log axis."""
    df = df if hue in df.columns else df.rename_axis(hue).reset_index()
    fig, axes = _panels(len(metrics), width=3.0, height=3.2)
    names = list(df[hue])
    for ax, m in zip(axes, metrics, strict=True):
        order = method_order(df[x or hue])
        sns.barplot(data=df, x=x or hue, y=m, hue=hue, ax=ax, legend=False, order=order,
                    **style_kwargs(names, lines=False))  # fmt: skip
        ax.set(ylabel=LABELS.get(m, m), xlabel="", title=LABELS.get(m, m))
        log_if_spans(ax, "y", df[m]) or tidy_ticks(ax, "y")
        ax.set_xticks(ax.get_xticks(), [method_label(t.get_text()) for t in ax.get_xticklabels()])
        ax.tick_params(axis="x", rotation=20)
    titled(fig, title or "Side by side: " + ", ".join(method_label(n) for n in method_order(names)))
    return _finish(fig, path)


def metric_lines(df: pd.DataFrame, x: str, metrics, hue: str | None = None, path=None,
                 title: str | None = None, connect: bool = True):  # fmt: skip
    """One line panel per metric against `x` (e.g. a hyperparameter sweep); `hue` lines take
    their method styles. A metric that moves by under 10% of its size is drawn on an axis at
    least that tall, so that noise does not look like a trend. `connect=False` draws points
    only: single runs at a few x values are not a curve."""
    fig, axes = _panels(len(metrics), width=3.4, height=3.2)
    kw = dict(hue=hue, style=hue, **style_kwargs(df[hue])) if hue else dict(marker="o")
    for ax, m in zip(axes, metrics, strict=True):
        legend = "auto" if hue and ax is axes[0] else False
        if connect:
            sns.lineplot(data=df, x=x, y=m, ax=ax, legend=legend, **kw)
        else:
            dots = dict(hue=hue, **style_kwargs(df[hue], lines=False)) if hue else {}
            sns.scatterplot(data=df, x=x, y=m, ax=ax, legend=legend, s=50, **dots)
        ax.set(ylabel=LABELS.get(m, m), title=LABELS.get(m, m))
        if not log_if_spans(ax, "y", df[m]):
            lo, hi, mid = df[m].min(), df[m].max(), df[m].abs().mean()
            if np.isfinite(mid) and mid > 0 and hi - lo < 0.1 * mid:
                centre = (lo + hi) / 2
                ax.set_ylim(centre - 0.06 * mid, centre + 0.06 * mid)
            tidy_ticks(ax, "y")
        if hue:
            legend_labels(ax)
    titled(fig, title or f"{', '.join(LABELS.get(m, m) for m in metrics)} against {x}")
    return _finish(fig, path)


def pair_by_k(df: pd.DataFrame, metrics=("ce_increase", "nmse", "dead_frac"), x: str = "k",
              path=None, title: str = "TopK vs g-SAE at equal k",
              seeds: pd.DataFrame | None = None):  # fmt: skip
    """One panel per metric against `x` (k), a line per method of `df` (e.g. TopK and g-SAE; a
    `method` column): a log axis where a metric spans a decade, g-SAE dashed above TopK.
    `seeds`: one row per run (a `seed` column); with several seeds `df` holds their means and
    each run is drawn as a faint point beside its line (nudged apart in x per method)."""
    fig, axes = _panels(len(metrics), width=3.6, height=3.3)
    d = df.sort_values(x)
    several = seeds is not None and "seed" in seeds and seeds["seed"].nunique() > 1
    names = method_order(d["method"])
    for ax, m in zip(axes, metrics, strict=True):
        for i, name in enumerate(names):
            g = d[d.method == name]
            label = method_label(name) + (" (mean over seeds)" if several else "")
            ax.plot(g[x], g[m], label=label, markersize=7, **line_kwargs(name))
            if several and m in seeds:
                r = seeds[seeds.method == name]
                nudge = 1 + 0.04 * (i - (len(names) - 1) / 2)  # x is k: a log axis or ticks at k
                ax.scatter(r[x] * nudge, r[m], s=12, alpha=0.5, zorder=3,
                           color=line_kwargs(name)["color"])  # fmt: skip
        ax.set(xlabel=x, ylabel=LABELS.get(m, m), title=LABELS.get(m, m))
        if d[x].nunique() > 1 and spans_decades(d[x], 0.5):
            ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(ticker.FixedLocator(sorted(d[x].unique())))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        everything = pd.concat([d, seeds]) if several and m in seeds else d
        log_if_spans(ax, "y", everything[m]) or tidy_ticks(ax, "y")
    axes[0].legend()
    titled(fig, title + (f"\ndots: each of {seeds['seed'].nunique()} seeds" if several else ""))
    return _finish(fig, path)
