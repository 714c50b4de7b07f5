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
#
# **Seeds.** `05` trains every SAE once per seed. Each seed's sweep is matched on its own (its
# own common target CE); tables, figures and the summary's original keys show the first seed,
# and `summary.json["over_seeds"]` holds every number of `matched`, `closest_runs`,
# `target_ce_increase` and the two downstream ratios over all seeds: one record
# `{key, method, metric, [near], mean, sd, n, lo, hi, seeds, per_seed}` per number (`key` the
# summary entry holding the first seed's value, `method` None for a scalar; `lo`, `hi` the 95%
# t-interval over seeds, NaN with one seed; `saelab.studies.stats.over_seeds`).
#
# **Which layers.** Ours: `resid_post.l` of every layer from the site's on, *including the final
# residual*. e2e_sae (ApolloResearch) measures at `blocks.{l}.hook_resid_pre` of every later
# block; since `resid_pre.{l+1} == resid_post.{l}`, its set is ours without the final residual.
# `matched` gives the mean downstream MSE over both sets (`ds_mse_mean_ours`,
# `ds_mse_mean_e2e_sae`).

# %% tags=["parameters"]
sae_run: str = "outputs/reference/05_pareto/ref"  # a 05_pareto run folder (sweep.csv, runs/)
target_ce: float = 0.0  # CE increase to match runs at (0 means the sweep's common target)
near_ce: list = [0.045]  # more CE increases at which to show each method's closest actual run
out_dir: str = "outputs/10_downstream/interactive-{time}"  # run folder (saelab.runs sets it)

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd

from saelab.runs import notebook_out_dir, resolve
from saelab.studies import compare, plots, stats

out = notebook_out_dir(out_dir)  # from the repo root; {time}: a fresh folder
(out / "figures").mkdir(parents=True, exist_ok=True)
df = compare.load_sweep(resolve(sae_run))
seeds = sorted(int(s) for s in df.seed.unique())
relu = ["local", "e2e", "e2e+ds"]
ds_cols = [c for c in df.columns if c.startswith(("ds_mse/", "ds_ev/"))]
layers = sorted({c.split("/", 1)[1] for c in ds_cols}, key=lambda s: int(s.rsplit(".", 1)[1]))
e2e_layers = layers[:-1]  # e2e_sae: blocks.{l+1}.hook_resid_pre == resid_post.{l}; no final
d0 = df[df.seed == seeds[0]]  # the first seed: tables and figures
target = compare.match_target(d0, relu, target_ce)
print(f"{len(df)} runs from {sae_run}, seeds {seeds}; later residual sites {layers} "
      f"(e2e_sae's: {e2e_layers}); seed {seeds[0]} matched at CE +{target:.4f}")  # fmt: skip

# %% [markdown]
# ## 1. Downstream reconstruction, layer by layer (Figure 2)
#
# Each method's sweep interpolated at the same CE increase: the same damage to the output, so
# any difference is in *how* the SAE-inserted activations get there. Per seed, `at_target`
# matches that seed's sweeps (its closest runs where a sweep does not reach the target) and adds
# the mean downstream MSE over our layers and over e2e_sae's.

# %%
cols = [*ds_cols, "l2_ratio", "l0"]


def at_target(d):
    """(target CE, per-method table at it) for one seed's rows `d` of the sweep."""
    t = compare.match_target(d, relu, target_ce)
    m = compare.matched(d, relu, t, cols=cols)
    if m.isna().any().any():  # a sweep does not reach the target: take its closest run
        m = compare.closest(d, relu, t)[["ce_increase", *cols]].astype(float)
        print(f"seed {d.seed.iloc[0]}: not every sweep reaches CE +{t:.4f}; closest runs instead")
    m["ds_mse_mean_ours"] = m[[f"ds_mse/{r}" for r in layers]].mean(axis=1)
    m["ds_mse_mean_e2e_sae"] = m[[f"ds_mse/{r}" for r in e2e_layers]].mean(axis=1)  # NaN if none
    return t, m


per_seed = {s: at_target(df[df.seed == s]) for s in seeds}
target, matched = per_seed[seeds[0]]
matched.to_csv(out / "downstream_matched.csv")
fig = plots.downstream_plot(matched[ds_cols].to_dict(orient="index"),
                            path=out / "figures" / "downstream.png")  # fmt: skip
matched[[c for c in ds_cols if c.startswith("ds_mse/")] + ["ds_mse_mean_ours",
                                                            "ds_mse_mean_e2e_sae"]]  # fmt: skip

# %% [markdown]
# The whole sweep (first seed), not just the matched point: downstream MSE at the last layer
# against CE increase. A method whose line sits higher reaches the same output damage along a
# different internal route.

# %%
import seaborn as sns  # noqa: E402

last = f"ds_mse/{layers[-1]}"
sweep = d0[d0.method.isin(relu)].sort_values("ce_increase")
fig, ax = plt.subplots(figsize=(6.4, 4.2))
sns.lineplot(data=sweep, x="ce_increase", y=last, hue="method", style="method", sort=False,
             estimator=None, markersize=7, ax=ax, **plots.style_kwargs(relu))  # fmt: skip
ax.set(xlabel="CE loss increase (nats)", ylabel=f"downstream MSE at {layers[-1]}",
       title=f"Downstream MSE at {layers[-1]} against CE increase, seed {seeds[0]}")  # fmt: skip
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
#
# Braun et al.'s Table 5 skips position 0. `saelab.evaluate` takes `l2_ratio` (like L0, MSE and
# EV) only over the positions the SAEs see, which leave out `exclude_positions`: by default the
# BOS position 0 whenever the data prepends a BOS, as storyworld's does (ARCHITECTURE.md §6).
# Each run's `data.json` records the positions it left out; the cell below checks them.
#
# The table is the first seed's, as are the figure above and the closest runs below; section 3
# gives each number's mean and interval over seeds, which the README and LOG.md quote.

# %%
excluded = {r: json.loads((resolve(sae_run) / "runs" / r / "data.json").read_text())
            .get("excluded_positions") for r in df.run}  # fmt: skip
skips_pos0 = all(e is not None and 0 in e for e in excluded.values())
print(f"excluded positions per run: {sorted({str(e) for e in excluded.values()})}; l2_ratio "
      f"{'skips' if skips_pos0 else 'does NOT skip'} position 0 in every run")  # fmt: skip
l2 = pd.DataFrame({"matched (interpolated)": matched["l2_ratio"]})
l2["sweep min"] = d0.groupby("method")["l2_ratio"].min()
l2["sweep max"] = d0.groupby("method")["l2_ratio"].max()
topk = d0[d0.method.isin(["topk", "gtopk"])].pivot_table(index="method", columns="k",
                                                          values="l2_ratio")  # fmt: skip
l2.to_csv(out / "l2_ratio.csv")
l2

# %% [markdown]
# Interpolation mixes runs; at a few more CE increases, each method's *closest actual run*
# (first seed; every seed's in `over_seeds`):

# %%
near_cols = ["run", "ce_increase", "l0", "l2_ratio", last]
nears = {s: [compare.closest(df[df.seed == s], relu, t)[near_cols].assign(near=t)
             for t in near_ce] for s in seeds}  # fmt: skip
near = pd.concat(nears[seeds[0]])
near.to_csv(out / "closest_runs.csv")
near

# %%
topk  # TopK and g-SAE, by k (no sparsity penalty, so less shrinkage is expected)

# %% [markdown]
# ## 3. Over seeds
#
# The same numbers for every seed, each seed matched at its own target: mean and 95%
# t-interval over seeds (NaN with one seed).

# %%
rows = []
for s, (t, m) in per_seed.items():
    rows += stats.seed_rows(s, "target_ce_increase", t) + stats.seed_rows(s, "matched", m)
    for key, num in (("ds_mse_ratio_e2e_local", "e2e"), ("ds_mse_ratio_e2eds_local", "e2e+ds")):
        rows += stats.seed_rows(s, key, m.loc[num, last] / m.loc["local", last])
    for t_near, c in zip(near_ce, nears[s], strict=True):
        rows += stats.seed_rows(s, "closest_runs", c.drop(columns="near"), near=t_near)
over = stats.over_seeds(rows)
seed_table = pd.DataFrame(over).drop(columns=["seeds", "per_seed"])
seed_table.to_csv(out / "over_seeds.csv", index=False)
seed_table[seed_table.key != "closest_runs"]

# %% [markdown]
# The numbers at the matched CE increase (seed means where there are several seeds):

# %%
m = matched
ratio_e2e = m.loc["e2e", last] / m.loc["local", last]
ratio_ds = m.loc["e2e+ds", last] / m.loc["local", last]
sr = {k: stats.seed_text(stats.seed_stat(over, key=k), ".2f")
      for k in ("ds_mse_ratio_e2e_local", "ds_mse_ratio_e2eds_local")}  # fmt: skip
rel = {(n, k): m.loc[k, f"ds_mse_mean_{n}"] / m.loc["local", f"ds_mse_mean_{n}"]
       for n in ("ours", "e2e_sae") for k in ("e2e", "e2e+ds")}  # fmt: skip
print(f"at CE +{target:.3f}, seeds {seeds}; downstream MSE at {layers[-1]} (the last layer):")
print(f"  local {m.loc['local', last]:.4f}, e2e {m.loc['e2e', last]:.4f} ({ratio_e2e:.2f}x local; "
      f"over seeds {sr['ds_mse_ratio_e2e_local']}), e2e+ds {m.loc['e2e+ds', last]:.4f} "
      f"({ratio_ds:.2f}x; over seeds {sr['ds_mse_ratio_e2eds_local']})")  # fmt: skip
print(f"mean over later layers, e2e / local: {rel['ours', 'e2e']:.2f}x over ours "
      f"({', '.join(layers)}), {rel['e2e_sae', 'e2e']:.2f}x over e2e_sae's "
      f"({', '.join(e2e_layers) or 'none'}); e2e+ds / local {rel['ours', 'e2e+ds']:.2f}x and "
      f"{rel['e2e_sae', 'e2e+ds']:.2f}x")  # fmt: skip
print("output norm / input norm: " + ", ".join(
    f"{k} {m.loc[k, 'l2_ratio']:.2f}" for k in ("local", "e2e", "e2e+ds"))
    + (" (position 0 left out, as Table 5)" if skips_pos0 else
       " (position 0 included in some run, unlike Table 5)"))  # fmt: skip

# %% [markdown]
# **How to read it.** Braun et al.'s Figure 2 has e2e's spliced stream far from the clean one
# at every later layer and e2e+ds close to local's; their Table 5 has e2e shrinking its
# reconstructions and e2e+ds restoring their length. In the `paper` run (2M tokens, 2 seeds, CE
# +0.06) the first half holds for e2e and only in part for e2e+ds, and the second does not: e2e's
# error at the last layer is over six times local's, e2e+ds's about twice, closer but not near;
# e2e's output is a third of its input's length (local's 0.85) and e2e+ds's only somewhat longer
# (0.45), a quarter of the way back to local's. A downstream term that pulls the later layers this
# far back while restoring so little of the norm suggests e2e+ds fixes the *direction* of what it
# writes more than its size. Our mean over layers includes the final residual; e2e_sae's leaves it
# out, and the two columns above say how much that changes.

# %%
summary = dict(
    sae_run=sae_run,
    target_ce_increase=target,
    matched=m.reset_index().to_dict(orient="records"),
    ds_mse_ratio_e2e_local=ratio_e2e,
    ds_mse_ratio_e2eds_local=ratio_ds,
    l2_ratio=l2.reset_index().to_dict(orient="records"),
    closest_runs=near.reset_index().to_dict(orient="records"),
    seeds=seeds,
    l2_ratio_skips_position_0=skips_pos0,
    ds_layers=dict(ours=layers, e2e_sae=e2e_layers),
    over_seeds=over,
    loaded_runs=[],  # reads the sweep's tables, no SAE weights (what pruning keeps)
)
(out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
print(f"outputs in {out}")
