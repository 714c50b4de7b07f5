# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 · Downstream pathways: where do the SAE's activations go?
#
# An e2e SAE is trained only to keep the model's *output* distribution (Braun et al. 2024 §2.2).
# Nothing asks the activations it writes at layer L to look like the clean ones, so they may take
# a different route through layers L+1, ..., and the features would then describe a network that
# is not the one we study. The e2e+ds loss (§2.3) adds the MSE of every later residual stream.
#
# With every SAE spliced in at its site, for each later residual site `r` (ARCHITECTURE.md §5):
#
# $$\mathrm{ds\_mse}_r = \tfrac{1}{N d} \sum \lVert r^{sae} - r^{clean} \rVert^2, \qquad
#   \mathrm{ds\_ev}_r = 1 - \frac{\sum \lVert r^{sae} - r^{clean}\rVert^2}
#                               {\sum \lVert r^{clean} - \bar r^{clean}\rVert^2}.$$
#
# Braun et al. Figure 2: e2e has far larger downstream MSE than local at every later layer, e2e+ds
# is close to local. Table 5: e2e SAEs shrink their reconstructions,
# `||x_hat|| / ||x||` well below 1, and e2e+ds brings the ratio back up.
#
# `saelab.evaluate` already measures both for every run of the `05_pareto` sweep; this notebook
# reads them at matched CE increase (interpolating each method's sweep, as `05` does for L0, or
# taking each method's closest run when a sweep does not reach the target).

# %% tags=["parameters"]
sae_run: str = "outputs/reference/05_pareto/ref"  # a 05_pareto run folder (sweep.csv, runs/)
target_ce: float = 0.0  # CE increase to match runs at (0 means the sweep's common target)
near_ce: list = [0.045]  # more CE increases at which to show each method's closest actual run
out_dir: str = "outputs/10_downstream/interactive-{time}"  # run folder (saelab.runs sets it)

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from saelab.runs import notebook_out_dir, resolve
from saelab.studies import compare, plots

out = notebook_out_dir(out_dir)  # from the repo root; {time}: a fresh folder
(out / "figures").mkdir(parents=True, exist_ok=True)
df = compare.load_sweep(resolve(sae_run))
relu = ["local", "e2e", "e2e+ds"]
target = compare.match_target(df, relu, target_ce)
ds_cols = [c for c in df.columns if c.startswith(("ds_mse/", "ds_ev/"))]
layers = sorted({c.split("/", 1)[1] for c in ds_cols}, key=lambda s: int(s.rsplit(".", 1)[1]))
print(f"{len(df)} runs from {sae_run}; later residual sites {layers}; matched at CE +{target:.4f}")

# %% [markdown]
# ## 1. Downstream reconstruction, layer by layer (Figure 2)
#
# Each method's sweep interpolated at the same CE increase: the same damage to the output, so
# any difference is in *how* the SAE-inserted activations get there.

# %%
cols = [*ds_cols, "l2_ratio", "l0"]
matched = compare.matched(df, relu, target, cols=cols)
if matched.isna().any().any():  # a sweep does not reach the target: take its closest run
    matched = compare.closest(df, relu, target)[["ce_increase", *cols]]
    print("not every sweep reaches the target; using each method's closest run instead")
matched.to_csv(out / "downstream_matched.csv")
fig = plots.downstream_plot(matched[ds_cols].to_dict(orient="index"),
                            path=out / "figures" / "downstream.png")  # fmt: skip
matched[[c for c in ds_cols if c.startswith("ds_mse/")]]

# %% [markdown]
# The whole sweep, not just the matched point: downstream MSE at the last layer against CE
# increase. A method whose line sits higher reaches the same output damage along a different
# internal route.

# %%
import seaborn as sns  # noqa: E402

last = f"ds_mse/{layers[-1]}"
sweep = df[df.method.isin(relu)].sort_values("ce_increase")
fig, ax = plt.subplots(figsize=(6.4, 4.2))
sns.lineplot(data=sweep, x="ce_increase", y=last, hue="method", style="method", sort=False,
             estimator=None, markersize=7, ax=ax, **plots.style_kwargs(relu))  # fmt: skip
ax.set(xlabel="CE loss increase (nats)", ylabel=f"downstream MSE at {layers[-1]}",
       title=f"Downstream MSE at {layers[-1]} against CE increase, whole sweep")  # fmt: skip
plots.log_if_spans(ax, "x", sweep["ce_increase"]) or plots.tidy_ticks(ax, "x")
plots.log_if_spans(ax, "y", sweep[last]) or plots.tidy_ticks(ax, "y")
fig.tight_layout()
fig.savefig(out / "figures" / "downstream_vs_ce.png", dpi=120)

# %% [markdown]
# ## 2. How long are the reconstructions? (Table 5)
#
# `l2_ratio` = mean over tokens of `||x_hat|| / ||x||` at the site. Below 1 the SAE shrinks the
# activation (the sparsity penalty pulls every latent towards 0); local SAEs pay for it in MSE,
# e2e SAEs only if the output notices.

# %%
l2 = pd.DataFrame({"matched (interpolated)": matched["l2_ratio"]})
l2["sweep min"] = df.groupby("method")["l2_ratio"].min()
l2["sweep max"] = df.groupby("method")["l2_ratio"].max()
topk = df[df.method.isin(["topk", "gtopk"])].pivot_table(index="method", columns="k",
                                                          values="l2_ratio")  # fmt: skip
l2.to_csv(out / "l2_ratio.csv")
l2

# %% [markdown]
# Interpolation mixes runs; at a few more CE increases, each method's *closest actual run*:

# %%
near = pd.concat(
    [compare.closest(df, relu, t)[["run", "ce_increase", "l0", "l2_ratio", last]].assign(near=t)
     for t in near_ce]
)  # fmt: skip
near.to_csv(out / "closest_runs.csv")
near

# %%
topk  # TopK and g-SAE, by k (no sparsity penalty, so less shrinkage is expected)

# %% [markdown]
# **What we see.**

# %% tags=["hide-input"]
m = matched
ratio_e2e = m.loc["e2e", last] / m.loc["local", last]
ratio_ds = m.loc["e2e+ds", last] / m.loc["local", last]
FAR, NEAR = 2.0, 1.5  # "far above": >= 2x local; "near": <= 1.5x local
facts = dict(target=target, site=layers[-1], local=m.loc["local", last], e2e=m.loc["e2e", last],
             ds=m.loc["e2e+ds", last], r_e2e=ratio_e2e, r_ds=ratio_ds,
             l2_local=m.loc["local", "l2_ratio"], l2_e2e=m.loc["e2e", "l2_ratio"],
             l2_ds=m.loc["e2e+ds", "l2_ratio"])  # fmt: skip
gap = facts["l2_local"] - facts["l2_e2e"]
facts |= dict(
    far="is" if ratio_e2e >= FAR else "is not", near="is" if ratio_ds <= NEAR else "is not",
    fig2={2: "reproduces", 1: "partly reproduces", 0: "does not reproduce"}[
        (ratio_e2e >= FAR) + (ratio_ds <= NEAR)],
    shrinks="shrinks most" if facts["l2_e2e"] < min(facts["l2_local"], facts["l2_ds"])
    else "does not shrink most",
    restores="restores" if gap > 0 and facts["l2_ds"] - facts["l2_e2e"] >= gap / 2
    else "does not restore",
    FAR=FAR, NEAR=NEAR,
)  # fmt: skip
WHAT_WE_SEE = """
- At CE +{target:.3f}, downstream MSE at `{site}`: local {local:.4f}, e2e {e2e:.4f}
  (**{r_e2e:.2f}x** local), e2e+ds {ds:.4f} (**{r_ds:.2f}x** local). Paper (Fig. 2): e2e far
  above local, e2e+ds near it. Counting "far above" as at least {FAR:g}x local and "near" as at
  most {NEAR:g}x, e2e {far} far above and e2e+ds {near} near: storyworld **{fig2}** Figure 2
  at this CE increase.
- L2 ratio `||x_hat|| / ||x||` at matched CE: local {l2_local:.2f}, e2e {l2_e2e:.2f}, e2e+ds
  {l2_ds:.2f}. Paper (Table 5): e2e shrinks most, e2e+ds restores. Here e2e **{shrinks}** and
  e2e+ds **{restores}** the norm (restoring: closing at least half of the gap from e2e to local).
"""
display(Markdown(WHAT_WE_SEE.format(**facts)))

# %%
summary = dict(
    sae_run=sae_run,
    target_ce_increase=target,
    matched=m.reset_index().to_dict(orient="records"),
    ds_mse_ratio_e2e_local=ratio_e2e,
    ds_mse_ratio_e2eds_local=ratio_ds,
    l2_ratio=l2.reset_index().to_dict(orient="records"),
    closest_runs=near.reset_index().to_dict(orient="records"),
)
(out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
print(f"outputs in {out}")
