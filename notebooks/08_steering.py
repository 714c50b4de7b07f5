# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Steering: do g-SAE latents move the model more than TopK latents?
#
# Olmo et al. 2024 §5 (`papers/g-sae/`) claim that g-SAE latents make better steering vectors:
# written into the residual stream, they add **more than 5x** as much probability to their
# associated tokens as TopK latents do.
#
# For latent `i` with unit decoder direction `d_i`:
#
# - its **associated tokens** `A_i` are the `n_assoc` tokens `d_i` promotes most through the final
#   norm's gain and the unembedding (`features.logit_effects`, the logit lens of the direction);
# - we add `alpha * ||x|| * d_i` to the activation at the SAE's site at *every* position of
#   arbitrary held-out contexts, where `||x||` is the **mean norm of the activation at the site**
#   on the evaluation tokens (so `alpha = 1` is a push as long as a typical residual vector);
# - the **probability added** is
#
# $$\Delta p_i(\alpha) = \frac{1}{BT} \sum_{b,t} \sum_{v \in A_i}
#   \big[\, p(v \mid x_{b,\le t} + \alpha \lVert x \rVert d_i) - p(v \mid x_{b,\le t}) \,\big].$$
#
# Per alpha we report `mean_i Δp_i` for each SAE and the ratio g-SAE / TopK, with 95% bootstrap
# intervals over latents (each SAE's latents resampled independently). A control: random unit
# directions with their own logit-lens tokens, i.e. what *any* direction of that length does.
#
# Latents: `n_latents` drawn uniformly at random (seeded) from each SAE's alive latents (fired at
# least once on the evaluation tokens), so neither SAE is judged by its best latents;
# `latent_choice="frequent"` takes the most often active ones instead.
#
# The paper's exact steering scale, contexts and latent selection are not in our summary of it;
# the choices above are ours, so compare the *ratio* with its 5x, not the raw probabilities.
#
# **Seeds.** `05` trains every SAE once per seed. Every seed's TopK and g-SAE pair (at this k) is
# steered on its own, with its own bootstrap CIs. The table of section 2 and the figure's left
# panel (probability added) show the first seed, as do the summary's `ratios` and `prob_added`;
# the figure's right panel draws every seed's ratio with its CI, one line per seed, and section 3
# lists them. `ratios_by_seed` has each seed's ratio with its CI,
# and `over_seeds` every number of `ratios`, `prob_added` and the twin fractions over seeds: one
# record `{key, method, metric, alpha, mean, sd, n, lo, hi, seeds, per_seed}` per number (`key`
# the summary entry holding the first seed's value; `lo`, `hi` the 95% t-interval over seeds,
# NaN with one seed; `saelab.studies.stats.over_seeds`). The random directions do not depend
# on the SAE seed, so theirs are the same for every seed.

# %% tags=["parameters"]
sae_run: str = "outputs/reference/05_pareto/ref"  # a 05_pareto run folder (sweep.csv, runs/)
model: str = "storyworld"  # the frozen LM the SAEs were trained on
dataset: str = "storyworld"  # token source for evaluation and steering contexts
k: int = 16  # which TopK and g-SAE runs of the sweep (their k)
n_latents: int = 64  # latents per SAE (and random control directions)
latent_choice: str = "random"  # "random" (seeded sample of alive latents) or "frequent"
n_assoc: int = 5  # associated tokens per latent (top logit-lens tokens)
alphas: list = [0.1, 0.25, 0.5, 1.0, 2.0]  # steering strengths, in units of the mean norm at site
n_contexts: int = 8  # held-out contexts to steer in
n_ctx: int = 64  # tokens per steering context
eval_tokens: int = 16_384  # held-out tokens for alive latents and the mean activation norm
n_boot: int = 1000  # bootstrap resamples for the confidence intervals
seed: int = 0  # latent sample and random directions
out_dir: str = "outputs/08_steering/interactive-{time}"  # run folder (saelab.runs sets it)

# %%
import json
import time

import pandas as pd

import saelab as sl
from saelab.runs import notebook_out_dir, resolve, resolve_input
from saelab.studies import analysis, compare, plots, stats, steering

out = notebook_out_dir(out_dir)  # from the repo root; {time}: a fresh folder
(out / "figures").mkdir(parents=True, exist_ok=True)
t_start = time.time()
lm = sl.load_model(resolve_input(model))
df = compare.load_sweep(resolve(sae_run))
pair = df[df.method.isin(["topk", "gtopk"]) & (df["k"] == k)]
seeds = sorted(int(s) for s in pair.seed.unique() if len(pair[pair.seed == s]) == 2)
if not seeds:
    ks = sorted(df[df.method.isin(["topk", "gtopk"])]["k"].dropna().astype(int).unique())
    raise ValueError(f"{sae_run} has no TopK and g-SAE pair with k={k}; its k values: {ks}")
by_seed = {s: pair[pair.seed == s].set_index("method") for s in seeds}
runs = by_seed[seeds[0]]
saes = {
    s: {
        "topk": sl.load_sae(r.loc["topk", "sae_path"]),
        "g-sae": sl.load_sae(r.loc["gtopk", "sae_path"]),
    }
    for s, r in by_seed.items()
}
site = saes[seeds[0]]["topk"].cfg.site
val = sl.token_dataset(
    resolve_input(dataset), lm.tokenizer, 128, split="validation", n_tokens=eval_tokens
)
print(f"{sae_run}: seeds {seeds}, {runs['run'].tolist()} at {site}, "
      f"d_sae {saes[seeds[0]]['topk'].cfg.d_sae}")  # fmt: skip

# %% [markdown]
# ## 1. Latents, their tokens, and the unit of alpha
#
# Firing frequencies on the evaluation tokens (the g-SAE selects with `dL/dx`, as in training);
# a seeded sample of alive latents per SAE and seed; their associated tokens from the logit lens.

# %%
norm = steering.site_norm(lm, site, val, n_tokens=eval_tokens)
dirs, picked = {s: {} for s in seeds}, {s: {} for s in seeds}
for s, name in [(s, n) for s in seeds for n in ("topk", "g-sae")]:
    picked[s][name], dirs[s][name], n_alive = steering.latent_directions(
        lm, saes[s][name], val, n_latents, latent_choice, seed, eval_tokens)  # fmt: skip
    print(f"seed {s} {name}: {n_alive} alive; latents {picked[s][name][:6].tolist()} ...")
d_in = dirs[seeds[0]]["topk"].shape[1]
for s in seeds:  # the same random directions for every seed: they do not depend on an SAE
    dirs[s]["random"] = steering.random_directions(n_latents, d_in, seed=seed)
assoc = {s: {n: steering.associated_tokens(lm, d, n_assoc) for n, d in ds.items()}
         for s, ds in dirs.items()}  # fmt: skip
for name, a in assoc[seeds[0]].items():
    print(f"  {name:6s} e.g.", " | ".join(steering.example_tokens(lm, a, 3)))
print(f"mean ||x|| at {site}: {norm:.3f}; alpha 1 adds a vector of that length")

# %% [markdown]
# How different are the two dictionaries at all? Each g-SAE direction's nearest TopK direction
# (`analysis.max_cos_sim`). Two SAEs trained from the same seed start from the same decoder; if
# training moves the directions little, the two dictionaries stay nearly the same latents and
# cannot steer very differently. That shared start means the fraction of near twins has no
# meaning alone; the null is a dictionary from *another* seed: g-SAE s1 -> TopK s0, and TopK s1
# -> TopK s0 (same method, other init), when the sweep has a second seed (`steering.twins`).

# %%
dec = {f"{n} s{s}": saes[s][n].decoder_directions().detach() for s in seeds for n in saes[s]}
s0 = seeds[0]
twin_pairs = [(f"g-sae s{s}", f"topk s{s}", True) for s in seeds]  # shared init, every seed
twin_pairs += [(f"{n} s{s}", f"topk s{s0}", False) for s in seeds[1:2] for n in ("g-sae", "topk")]
twin = steering.twins(dec, twin_pairs)
twin

# %% [markdown]
# ## 2. Steering
#
# `steering.prob_added` repeats the contexts once per steering vector along the batch dimension
# and adds each vector at the site (skipping the blocks before it and feeding them the clean
# residual plus the vector); the unsteered probabilities come from the same pass with a zero
# vector, so `alpha = 0` would add exactly 0. The figure: left, the probability each set of
# directions adds, for the first seed's SAEs; right, the ratio g-SAE / TopK with its bootstrap
# CI for every seed (one line each), against the paper's 5x.

# %%
contexts = val.tokens[-n_contexts:, :n_ctx]  # the last rows: arbitrary held-out text
rand = steering.prob_added(lm, site, dirs[s0]["random"] * norm, alphas, contexts,
                           assoc[s0]["random"])  # fmt: skip
added_by = {}  # seed -> {directions: prob_added [A, n]}
for s in seeds:
    added_by[s] = {n: steering.prob_added(lm, site, dirs[s][n] * norm, alphas, contexts,
                                          assoc[s][n]) for n in ("topk", "g-sae")}  # fmt: skip
    added_by[s]["random"] = rand
summ_by = {s: steering.summarize(a, alphas, n_boot=n_boot, seed=seed) for s, a in added_by.items()}
ratios_by = {s: steering.ratio_table(a["g-sae"], a["topk"], alphas, n_boot=n_boot, seed=seed)
             for s, a in added_by.items()}  # fmt: skip
added, summ, ratios = added_by[s0], summ_by[s0], ratios_by[s0]  # the first seed
fig = steering.steering_plot(summ, ratios, path=out / "figures" / "steering.png",
                             ratios_by_seed=ratios_by, seed=s0)  # fmt: skip

# %%
table = steering.wide_table(summ, ratios)
table.to_csv(out / "steering.csv")
steering.per_latent_table(added, alphas, picked[s0]).to_csv(out / "steering_latents.csv",
                                                             index=False)  # fmt: skip
table

# %% [markdown]
# ## 3. Over seeds
#
# Each seed's ratio g-SAE / TopK with its bootstrap CI over latents, and the mean and 95%
# t-interval over seeds of the ratio, the probabilities added and the twin fractions.

# %%
ratios_seed = pd.concat([r.assign(seed=s) for s, r in ratios_by.items()], ignore_index=True)
rows = []
for s in seeds:
    for r in ratios_by[s].itertuples():
        rows += stats.seed_rows(s, "ratios", r.ratio, method="g-sae / topk", metric="ratio",
                                   alpha=r.alpha)  # fmt: skip
    for r in summ_by[s].itertuples():
        rows += stats.seed_rows(s, "prob_added", r.mean, method=r.directions, metric="mean",
                                   alpha=r.alpha)  # fmt: skip
    t = twin.set_index("pair").loc[f"g-sae s{s} -> topk s{s}"]
    for key in ("frac_above_0_9", "mean_cos"):
        rows += stats.seed_rows(s, "twins", t[key], method="g-sae -> topk", metric=key,
                                   alpha=None)  # fmt: skip
over = stats.over_seeds(rows)
ratio_over = {r["alpha"]: r for r in over if r["key"] == "ratios"}
ratios_seed.pivot(index="alpha", columns="seed", values="ratio").assign(
    mean=[ratio_over[a]["mean"] for a in alphas], lo=[ratio_over[a]["lo"] for a in alphas],
    hi=[ratio_over[a]["hi"] for a in alphas])  # fmt: skip

# %% [markdown]
# The numbers per seed: near twins against the other-seed null, the ratio g-SAE / TopK at each
# alpha (bootstrap CI over latents per seed, t-interval over seeds) next to the paper's 5x, and
# each SAE's latents against random directions at the alpha nearest 1 (difference of the means,
# bootstrap CI over latents).

# %%
tw = twin.set_index("pair")
same, nearest_cos = tw.loc[f"g-sae s{s0} -> topk s{s0}", ["frac_above_0_9", "mean_cos"]]
lines = [f"{r.pair}{' (shared init)' if r.shared_init else ''}: {r.frac_above_0_9:.1%} of "
         f"directions have a twin above cos 0.9; mean nearest cos {r.mean_cos:.3f}"
         for r in twin.itertuples()]  # fmt: skip
for a in alphas:
    each = ratios_seed[ratios_seed.alpha == a].itertuples()
    each = ", ".join(f"seed {x.seed} {x.ratio:.2f} [{x.ci_lo:.2f}, {x.ci_hi:.2f}]" for x in each)
    lines.append(f"alpha {a:g}: g-SAE / TopK {each}; mean "
                 f"{stats.seed_text(ratio_over[a], '.2f')}; paper > 5")  # fmt: skip
a_mid = min(alphas, key=lambda a: abs(a - 1.0))
i = list(alphas).index(a_mid)
for s in seeds:
    rnd = added_by[s]["random"][i]
    for name in ("topk", "g-sae"):
        diff = analysis.bootstrap_diff_ci(added_by[s][name][i], rnd, n_boot, seed)
        lines.append(f"alpha {a_mid:g}, seed {s}: {plots.method_label(name)} latents add "
                     f"{float(added_by[s][name][i].mean()):.4f}, random directions "
                     f"{float(rnd.mean()):.4f}, difference {diff[0]:+.4f} "
                     f"[{diff[1]:+.4f}, {diff[2]:+.4f}]")  # fmt: skip
print("\n".join(lines))

# %% [markdown]
# **How to read it.** Olmo et al. report that g-SAE latents, added to the residual stream, raise the
# probability of their associated tokens more than 5x as much as TopK latents do. In the `paper` run
# (the k 16 TopK and g-SAE of 05's `paper` sweep: 2,048 latents, 2M tokens, CE +0.010 to +0.011, 2
# seeds; 256 random alive latents per SAE) the ratio is 0.92 to 1.09 for seed 0 and 1.07 to 1.21 for
# seed 1 over the five alphas, every bootstrap CI containing 1. Over the two seeds it is 0.99 to
# 1.12, with t-intervals up to [-0.04, 2.28] (alpha 1): g-SAE and TopK latents steer about equally
# here, and no interval, per seed or over seeds, comes near 5. Which seed sits higher is not stable:
# in the previous `paper` sweep seed 1 was the low one (0.87 to 0.97), so a difference of 0.1-0.2
# between seeds says more about the particular dictionaries than about the g-SAE. Both kinds do
# steer: at alpha 1, seed 0's TopK latents add 0.025 and its g-SAE latents 0.026 against 0.016 for
# random directions, both differences' CIs above 0. One reason the two may differ little: 37%
# (seed 0) and 33% (seed 1) of g-SAE directions have a twin above cosine 0.9 in the TopK SAE that
# started from the same decoder, against 1.2% between TopK seeds 1 and 0, so about a third of the
# latents are in effect shared. The paper's steering scale, contexts and latent choice are not in
# our summary of it and seed 1's pair had not met the plateau criterion, so this is one setup, not
# a refutation; `latent_choice="frequent"` (the most active latents) or notebook `11_gsae_study`,
# which makes the gradient's weight beta the variable, are the next things to try.

# %%
summary = dict(
    sae_run=sae_run, k=k, site=site, runs=runs["run"].to_dict(), mean_site_norm=norm,
    n_latents=n_latents, latent_choice=latent_choice, n_assoc=n_assoc,
    contexts=list(contexts.shape), gsae_topk_nearest_cos=float(nearest_cos),
    gsae_topk_frac_above_0_9=float(same), ratios=ratios.to_dict(orient="records"),
    prob_added=summ.to_dict(orient="records"), what_we_see=lines, seeds=seeds,
    twins=twin.to_dict(orient="records"), ratios_by_seed=ratios_seed.to_dict(orient="records"),
    over_seeds=over,
    loaded_runs=sorted(r for d in by_seed.values() for r in d.run),  # what pruning keeps
    seconds=time.time() - t_start,
)  # fmt: skip
(out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
print(f"done in {summary['seconds']:.0f} s; outputs in {out}")
