"""Seaborn figures for SAE runs: training curves, latent density, downstream errors, comparisons.

Every helper returns its matplotlib Figure and, given `path`, also saves it there (PNG, parent
folders created). Inputs are what the rest of saelab produces: `Run.log` records,
`saelab.core.metrics.evaluate` reports, and tables built from them.

    plots.train_curves({"local": run_a.log, "e2e": run_b.log}, path=out / "curves.png")
    freq = plots.firing_frequency(lm, run.sae, val, n_tokens=65_536)
    plots.density_hist({"local": freq}, path=out / "density.png")
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from saelab.core.models import parse_site
from saelab.core.passes import clean_pass

TRAIN_KEYS = ("loss", "mse", "kl", "ds_mse", "l0")
LABELS = {
    "loss": "training loss",
    "mse": "MSE at the site",
    "kl": "KL(P_clean || P_sae)",
    "ds_mse": "downstream MSE",
    "l0": "L0 (active latents / token)",
    "explained_var": "explained variance",
    "nmse": "normalised MSE",
    "ce_increase": "CE increase (nats)",
    "dead_frac": "dead fraction",
    "alive": "alive latents",
    "l2_ratio": "||x_hat|| / ||x||",
}


def _finish(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def _panels(n: int, width: float = 3.6, height: float = 3.0):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, axes[0]


def train_curves(log, keys=TRAIN_KEYS, path=None) -> plt.Figure:
    """Loss / mse / kl / ds_mse / l0 against step from `Run.log` (or {name: log}: a hue each)."""
    logs = log if isinstance(log, dict) else {"run": log}
    rows = [r | {"run": name} for name, lg in logs.items() for r in lg if r.get("kind") == "train"]
    df = pd.DataFrame(rows)
    keys = [k for k in keys if k in df and df[k].notna().any()]
    hue = "run" if len(logs) > 1 else None
    fig, axes = _panels(len(keys))
    for ax, k in zip(axes, keys, strict=True):
        legend = "auto" if hue and ax is axes[0] else False
        sns.lineplot(data=df, x="step", y=k, hue=hue, ax=ax, legend=legend)
        ax.set(ylabel=LABELS.get(k, k), yscale="log" if k != "l0" else "linear")
    return _finish(fig, path)


def firing_frequency(lm, sae, data, n_tokens: int = 65_536, batch_size: int = 32) -> torch.Tensor:
    """Fraction of tokens `[d_sae]` on which each latent fires, on the first ~n_tokens of `data`."""
    site = parse_site(sae.cfg.site)
    grads = sae.needs_grad  # g-SAEs select latents with dL/dx
    n_rows = max(1, min(len(data), n_tokens // data.n_ctx))
    counts = torch.zeros(sae.cfg.d_sae)
    for i in range(0, n_rows, batch_size):
        clean = clean_pass(lm, data.tokens[i : i + batch_size], [site], grads=grads)
        with torch.no_grad():
            c = sae(clean.acts[site], grad=(clean.grads or {}).get(site)).c
        counts += (c != 0).flatten(0, -2).sum(0).float().cpu()
    return counts / (n_rows * data.n_ctx)


def density_hist(freqs_by_name: dict[str, torch.Tensor], path=None) -> plt.Figure:
    """Histogram of log10 firing frequency per SAE; never-firing (dead) latents in the legend."""
    rows = []
    for name, f in freqs_by_name.items():
        f = torch.as_tensor(f).float()
        dead = int((f == 0).sum())
        label = f"{name} ({dead}/{f.numel()} dead)"
        rows += [{"log10_freq": v, "sae": label} for v in torch.log10(f[f > 0]).tolist()]
    df = pd.DataFrame(rows, columns=["log10_freq", "sae"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(min(df.log10_freq.min(), -4), 0, 41) if len(df) else 10
    sns.histplot(data=df, x="log10_freq", hue="sae", bins=bins, element="step", ax=ax)
    ax.set(xlabel="log10 firing frequency (fraction of tokens)", ylabel="latents")
    return _finish(fig, path)


def downstream_plot(reports: dict[str, dict], path=None) -> plt.Figure:
    """`ds_mse/`, `ds_ev/` of `evaluate` reports by later layer, a line per run (Braun Fig. 2)."""
    rows = []
    for name, rep in reports.items():
        for key, v in rep.items():
            if key.startswith(("ds_mse/", "ds_ev/")):
                metric, site = key.split("/", 1)
                rows.append({"run": name, "metric": metric, "site": site, "value": v,
                             "layer": parse_site(site).layer})  # fmt: skip
    df = pd.DataFrame(rows).sort_values("layer")
    fig, axes = _panels(2, width=4.2, height=3.2)
    panels = [("ds_mse", "downstream MSE", "log"), ("ds_ev", "downstream explained var", "linear")]
    for ax, (metric, label, scale) in zip(axes, panels, strict=True):
        legend = "auto" if ax is axes[0] else False
        sns.lineplot(data=df[df.metric == metric], x="site", y="value", hue="run", style="run",
                     markers=True, dashes=False, sort=False, ax=ax, legend=legend)  # fmt: skip
        ax.set(xlabel="later residual site", ylabel=label, yscale=scale)
        ax.tick_params(axis="x", rotation=30)
    return _finish(fig, path)


def compare_bars(df: pd.DataFrame, metrics, hue: str = "run", x: str | None = None, path=None):
    """One bar panel per metric for a small table `df` (a `hue` column names the runs)."""
    df = df if hue in df.columns else df.rename_axis(hue).reset_index()
    fig, axes = _panels(len(metrics), width=3.0)
    for ax, m in zip(axes, metrics, strict=True):
        sns.barplot(data=df, x=x or hue, y=m, hue=hue, ax=ax, legend=False)
        ax.set(ylabel=LABELS.get(m, m), xlabel="")
        ax.tick_params(axis="x", rotation=20)
    return _finish(fig, path)


def metric_lines(df: pd.DataFrame, x: str, metrics, hue: str | None = None, path=None):
    """One line panel per metric against `x` (e.g. a hyperparameter sweep)."""
    fig, axes = _panels(len(metrics), width=3.2)
    for ax, m in zip(axes, metrics, strict=True):
        legend = "auto" if hue and ax is axes[0] else False
        sns.lineplot(data=df, x=x, y=m, hue=hue, marker="o", ax=ax, legend=legend)
        ax.set(ylabel=LABELS.get(m, m))
    return _finish(fig, path)
