# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Dictionary geometry: local vs e2e vs e2e+ds directions
#
# Braun et al. 2024 §3.3 (Figure 3; `papers/e2e-sae/`) look at the dictionaries themselves: the
# unit-norm decoder directions `d_i` of the *alive* latents of SAEs trained to a similar CE loss
# increase. Three measures, each a distribution over directions:
#
# $$\text{within}(i) = \max_{j \ne i} \cos(d_i, d_j), \qquad
#   \text{cross}(i;\, D') = \max_{d' \in D'} \cos(d_i, d'),$$
#
# - **within-SAE** (3a): how tightly a dictionary is packed. Local SAEs spend latents on many
#   similar directions (feature splitting of frequent patterns); on GPT-2 the mean within-SAE
#   similarity is **0.166 higher for local than for e2e** and **0.04 higher than for e2e+ds**.
# - **cross-seed** (3b): `D'` is the same SAE type trained with another seed. The paper finds
#   **e2e dictionaries not stable across seeds**; local and e2e+ds more so.
# - **cross-type** (3c): each e2e (or e2e+ds) direction against the local dictionary: does the
#   e2e SAE find the local SAE's directions? We compare across seeds (e2e seed 0 against local
#   seed 1): SAEs with the same seed start from the same decoder, which would count as similarity.
#
# This notebook trains its own six ReLU SAEs (3 types x 2 seeds), one sparsity coefficient per type,
# meant to land the three at a similar CE increase. The `paper` preset (2M tokens) reads its phi
# values off `outputs/reference/05_pareto/doubling` near CE +0.06 (the preset file says which), and
# they land close together (section 1). The `default` preset's (500k tokens; local phi 0.3, e2e phi
# 1, e2e+ds phi 3) do not: its `ref` run has local at CE +0.013, e2e at +0.053 and e2e+ds at +0.054,
# so its similarities are not a comparison at matched CE. Intervals are 95% percentile bootstraps
# over directions (`saelab.studies.analysis`); they do not include seed-to-seed variation, which the
# two seeds show (the within-SAE differences also get a t-interval over seeds).

# %% tags=["parameters"]
model: str = "storyworld"  # frozen LM: "storyworld", a hub id such as "gpt2", or a local HF dir
dataset: str = "storyworld"  # token source for training and evaluation
site: str = "resid_pre.3"  # residual-stream site the SAEs read and write
n_ctx: int = 128  # tokens per row
dict_ratio: float = 8.0  # latents per model dimension (d_sae / d_model)
local_sparsity: float = 0.3  # phi of the local (MSE) SAEs
e2e_sparsity: float = 1.0  # phi of the e2e SAEs
e2e_ds_sparsity: float = 3.0  # phi of the e2e+ds SAEs
kl_coeff_ds: float = 0.5  # e2e+ds KL weight (paper, GPT-2)
ds_coeff: float = 2.5  # e2e+ds downstream error weight (the paper's; normalised units)
n_tokens: int = 100_000  # training tokens per SAE
batch_size: int = 16  # rows per step
lr: float = 0.01  # peak learning rate (Adam, warmup + cosine)
seeds: list = [0, 1]  # two seeds per SAE type (init and data order)
eval_tokens: int = 16_384  # held-out tokens for CE increase and alive latents
alive_tokens: int = 500_000  # SAE positions over which a latent must fire once to be alive
n_boot: int = 1000  # bootstrap resamples for the confidence intervals
run_umap: bool = True  # UMAP of two dictionaries (numba compiles for about 20 s on first use)
out_dir: str = "outputs/07_geometry/interactive-{time}"  # run folder (saelab.runs sets it)

# %%
import json
import time

import pandas as pd

import saelab as sl
from saelab.runs import notebook_out_dir, resolve_input
from saelab.studies import analysis, plots, stats

out = notebook_out_dir(out_dir)  # from the repo root; {time}: a fresh folder
(out / "figures").mkdir(parents=True, exist_ok=True)
t_start = time.time()
lm = sl.load_model(resolve_input(model))
train_data = sl.token_dataset(
    resolve_input(dataset), lm.tokenizer, n_ctx, split="train", n_tokens=n_tokens
)
val = sl.token_dataset(
    resolve_input(dataset),
    lm.tokenizer,
    n_ctx,
    split="validation",
    n_tokens=sl.held_out_tokens(n_ctx, eval_tokens, alive_tokens),
)
common = dict(
    sites=(site,),
    n_tokens=n_tokens,
    batch_size=batch_size,
    lr=lr,
    eval_tokens=eval_tokens,
    alive_tokens=alive_tokens,
    dead_tokens=max(n_tokens // 4, 1),
)  # as in 05
types = {  # each SAE type: its objective and the sparsity weight of its ReLU SAE
    "local": dict(loss="local", sparsity=local_sparsity),
    "e2e": dict(loss="e2e", sparsity=e2e_sparsity),
    "e2e+ds": dict(loss=sl.objective("e2e+ds", kl_coeff=kl_coeff_ds, ds_coeff=ds_coeff),
                   sparsity=e2e_ds_sparsity),
}  # fmt: skip
print(f"{model}: {sl.model_info(lm)}; {train_data.n_tokens:,} training tokens per SAE")

# %% [markdown]
# ## 1. Six SAEs at a similar CE increase
#
# The same `sl.train` call as notebook 05, once per (type, seed); each ends with `sl.evaluate` on
# the same held-out tokens. The comparison is only fair if the CE increases are close.

# %%
saes, rows = {}, []
for t, kw in types.items():
    for s in seeds:
        t0 = time.time()
        sae = sl.SAEConfig.create(architecture="relu", sparsity=kw["sparsity"],
                                  dict_ratio=dict_ratio)  # fmt: skip
        cfg = sl.TrainConfig(**common, sae=sae, loss=kw["loss"], seed=s)
        run = sl.train(lm, train_data, cfg, out / "runs" / f"{t}_seed={s}", eval_data=val,
                       progress=False)  # fmt: skip
        saes[t, s], rep = run.sae, run.log[-1]
        rows.append(dict(method=t, seed=s, sparsity=kw["sparsity"], ce_increase=rep["ce_increase"],
                         l0=rep["l0"], alive=rep["alive"], train_s=time.time() - t0))  # fmt: skip
        print(f"{t:7s} seed {s}: phi {kw['sparsity']:<5g} CE +{rep['ce_increase']:.4f}  "
              f"L0 {rep['l0']:6.1f}  alive {rep['alive']}  ({time.time() - t0:.0f} s)")  # fmt: skip
trained = pd.DataFrame(rows)
trained.to_csv(out / "saes.csv", index=False)

# %% [markdown]
# The CE increase of each type: mean over seeds with its 95% t-interval, and each seed's.

# %%
ce = trained.groupby("method", sort=False)["ce_increase"].mean()
spread = ce.max() / ce.min()
for t in types:
    each = trained[trained.method == t].ce_increase
    print(f"{t:7s} CE {stats.seed_text(stats.seed_stats(each), '+.4f')} "
          f"(seeds: {', '.join(f'{v:+.4f}' for v in each)})")  # fmt: skip
print(f"largest mean CE increase / smallest: {spread:.2f}x")

# %% [markdown]
# **How to read it.** Braun et al. compare the dictionaries of SAEs trained to a similar CE loss
# increase, so that a difference in geometry is not a difference in how much of the model's
# performance each SAE keeps. In the `paper` run (2M tokens per SAE, 2 seeds) the three types land
# at local +0.060, e2e +0.060 and e2e+ds +0.059, the largest 1.03x the smallest. They get there at
# very different sparsity (L0 about 20 for local, 8.6 for e2e, 9.8 for e2e+ds), which is the paper's
# main result showing again. The phi values that do this moved when e2e+ds's downstream term was
# normalised: at the old e2e+ds phi 4 it now lands at CE +0.038, and a first run of this preset
# today was off by 1.78x; `05_pareto/doubling` gave the new values. At the default preset the types
# are not matched (the `ref` run: local +0.013, e2e +0.053, e2e+ds +0.054, 4.1x apart), so the
# geometry below is then a comparison of SAEs that keep very different amounts of the model's
# performance. To match them at another budget, read each method's phi near the target off a
# 05_pareto sweep at that budget, or move `local_sparsity` up (or `e2e_ds_sparsity` down) until the
# factor printed above is close to 1.

# %% [markdown]
# ## 2. Alive directions, how far they moved, and chance
#
# A latent is alive if it fires at least once on the held-out tokens (ARCHITECTURE.md §5); its
# direction is its unit-norm decoder row (`SAE.decoder_directions`). Two references for reading the
# similarities below:
#
# - **drift from init**: `cos(d_i, d_i^init)`, each direction against the one it started from
#   (`analysis.cos_to_init` rebuilds `sl.train`'s seeded init). Near 1, the geometry is still
#   mostly the random (orthogonal) initialisation's, whatever the loss.
# - **chance**: as many random unit directions as the local dictionary has alive latents,
#   entered as a fourth "type" `random` (its own within, cross-seed and `-> local` rows).

# %%
dirs, drift = {}, []
for (t, s), sae in saes.items():
    freq = plots.firing_frequency(lm, sae, val, n_tokens=eval_tokens)
    dirs[t, s] = analysis.alive_directions(sae, freq)
    drift.append(dict(method=t, seed=s, alive=len(dirs[t, s]),
                      cos_to_init=float(analysis.cos_to_init(sae, s, freq).mean())))  # fmt: skip
for s in seeds:  # chance level
    dirs["random", s] = analysis.random_directions(len(dirs["local", s]), sae.cfg.d_in, 1000 + s)
drift = pd.DataFrame(drift)
drift

# %% [markdown]
# ## 3. Within-SAE, cross-seed and cross-type similarity (Figure 3)
#
# `similarity_table` gives one row per direction and comparison; `summarize` the mean with a
# 95% bootstrap CI.

# %%
table = analysis.similarity_table(dirs, reference="local")
summary_tab = analysis.summarize(table, n_boot=n_boot)
fig = analysis.similarity_plot(table, path=out / "figures" / "similarity.png")
summary_tab

# %% [markdown]
# The paper's headline: within-SAE mean differences, local minus each e2e type (per seed; the CI
# resamples the directions of both dictionaries independently).

# %%
diffs = analysis.within_differences(table, reference="local", n_boot=n_boot)
geometry = pd.concat(
    [
        summary_tab,
        diffs.assign(kind="within difference", comparison=diffs.difference, mean=diffs.ours),
    ]
)
geometry = geometry.drop(columns=["difference", "ours"]).astype({"n": "Int64", "seed": "Int64"})
geometry.to_csv(out / "geometry.csv", index=False)
diffs

# %% [markdown]
# The numbers behind the figure: each within-SAE difference per seed (bootstrap CI over
# directions) and its mean over seeds (95% t-interval), the cross-seed and cross-type means, and
# how far the directions moved from their initialisation, next to chance (random directions).

# %%
S = summary_tab.set_index("comparison")["mean"]
s0, s1 = seeds[0], seeds[1] if len(seeds) > 1 else None
lines = []
for d, g in diffs.groupby("difference", sort=False):
    each = "; ".join(f"seed {r.seed} {r.ours:+.3f} [{r.ci_lo:+.3f}, {r.ci_hi:+.3f}]"
                     for r in g.itertuples())  # fmt: skip
    paper = g.paper.iloc[0]
    lines.append(f"within-SAE {d}: {each}; mean "
                 f"{stats.seed_text(stats.seed_stats(g.ours), '+.3f')}"
                 + ("" if paper != paper else f"; paper (GPT-2) {paper:+.3f}"))  # fmt: skip
for kind in ("cross-seed", "cross-type"):
    sub = summary_tab[summary_tab.kind == kind]
    lines.append(f"{kind} mean max cos sim: " + ", ".join(
        f"{r.comparison} {r.mean:.3f} [{r.ci_lo:.3f}, {r.ci_hi:.3f}]"
        for r in sub.itertuples()))  # fmt: skip
init = drift.groupby("method", sort=False).cos_to_init
lines.append("mean cos to init: " + ", ".join(
    f"{m} {v.mean():.2f} (seeds {', '.join(f'{x:.2f}' for x in v)})" for m, v in init)
    + f"; random directions: within {S[f'random s{s0}']:.3f}"
    + (f", cross-seed {S[f'random s{s0} -> s{s1}']:.3f}" if s1 is not None else ""))  # fmt: skip
print("\n".join(lines))

# %% [markdown]
# **How to read it.** Braun et al. (GPT-2 layer 6) find local dictionaries more tightly packed than
# e2e ones (mean within-SAE max cosine 0.166 higher) and slightly more than e2e+ds ones (0.04), and
# e2e dictionaries the least stable across seeds. In the `paper` run (2 seeds), local - e2e is
# +0.150 and +0.143, +0.147 [+0.098, +0.195] over seeds: close to the paper's 0.166, in a
# 64-dimensional stream where random directions already reach 0.368. local - e2e+ds is +0.050 and
# +0.049, +0.050 [+0.045, +0.055] over seeds, against the paper's 0.04, each seed's bootstrap
# interval above 0 ([+0.029, +0.072] and [+0.027, +0.072]); the narrow interval over seeds rests on
# one degree of freedom, so read the per-seed ones. The other measures order as in the paper:
# cross-seed local 0.746, e2e+ds 0.687, e2e 0.560, and e2e+ds directions sit nearer the local
# dictionary than e2e's do (0.630 against 0.506; random 0.362). What the run cannot separate: e2e's
# directions also moved least from their random init (mean cosine to init 0.52, against local 0.36
# and e2e+ds 0.40), and a dictionary closer to that start looks both less packed and less stable
# across seeds, while none of these SAEs has settled at 2M tokens (`papers/e2e-sae/README.md`, the
# doubling test). Doubling `n_tokens` would show whether the gaps hold as the directions move
# further; a third seed (`seeds=[0, 1, 2]`) would narrow the interval on local - e2e.

# %% [markdown]
# ## 4. UMAP of two dictionaries
#
# The alive directions of the local and e2e dictionaries (first seed), embedded together with
# UMAP under the cosine metric (`analysis.umap_embedding`, fixed `random_state`). Braun et al.
# §3.3 use such a map to look for regions that one dictionary covers and the other does not; we
# summarise it by how often a direction's nearest neighbours in the map share its dictionary.

# %%
if run_umap:
    pair = {f"local s{s0}": dirs["local", s0], f"e2e s{s0}": dirs["e2e", s0]}
    emb = analysis.umap_embedding(pair)
    emb.to_csv(out / "umap.csv", index=False)
    fig = analysis.umap_plot(emb, path=out / "figures" / "umap.png")
    mix = analysis.same_dictionary_fraction(emb, k=10)
    share = len(pair[f"local s{s0}"]) / len(emb)
    lines.append(f"UMAP: {mix:.2f} of each direction's 10 nearest neighbours come from its own "
                 f"dictionary ({share**2 + (1 - share) ** 2:.2f} if fully mixed, 1 if "
                 "each dictionary kept regions of its own)")  # fmt: skip
    print(lines[-1])
else:
    mix = None
    print("run_umap is False: UMAP skipped")

# %% [markdown]
# **How to read it.** Braun et al. use such a map to look for regions that one dictionary covers
# and the other does not. In the `paper` run (seed 0), 0.49 of each direction's 10 nearest
# neighbours come from its own dictionary, against 0.50 if the two were fully mixed: by this
# count local and e2e directions interleave across the map, which suggests the within-SAE gap
# above is about how densely each dictionary packs the same regions rather than regions one of
# them lacks. A small region held by one dictionary would barely move a fraction pooled over
# about 1,000 directions, so look at the figure for patches of one colour before reading this
# as "none". The count is one seed and one UMAP layout (fixed `random_state`); putting the
# e2e+ds dictionary in `pair` instead of e2e's would show whether it shares e2e's layout.

# %%
summary = dict(
    trained=trained.to_dict(orient="records"),
    drift_from_init=drift.to_dict(orient="records"),
    ce_spread=spread,
    comparisons=summary_tab.to_dict(orient="records"),
    within_differences=diffs.to_dict(orient="records"),
    umap_same_dictionary_fraction=mix,
    what_we_see=lines,
    seconds=time.time() - t_start,
)
(out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
print(f"done in {summary['seconds']:.0f} s; outputs in {out}")
