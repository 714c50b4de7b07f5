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
# This notebook trains its own six ReLU SAEs (3 types x 2 seeds), one sparsity coefficient per
# type chosen so that the three land at a similar CE increase: the presets take them from a
# 05_pareto sweep at the same token budget (`default`: 500k tokens, local phi 0.3, e2e phi 1,
# e2e+ds phi 3; `paper`: 2M tokens, phi values read off `outputs/reference/05_pareto/paper` near
# its target CE, the preset file says which). Intervals are 95% percentile bootstraps over
# directions (`saelab.studies.analysis`); they do not include seed-to-seed variation, which the
# two seeds show.

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
from IPython.display import Markdown, display

import saelab as sl
from saelab.runs import notebook_out_dir, resolve_input
from saelab.studies import analysis, plots

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
    n_tokens=max(eval_tokens, alive_tokens + alive_tokens // (n_ctx - 1) + n_ctx),
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
# **What we see.**

# %% tags=["hide-input"]
MATCHED = 2.0  # the types are comparable when their mean CE increases are within this factor
ce = trained.groupby("method", sort=False)["ce_increase"].mean()
spread = ce.max() / ce.min()
facts = dict(per_type=", ".join(f"{m} +{v:.4f}" for m, v in ce.items()), spread=spread,
             limit=MATCHED, verdict="similar enough to compare" if spread < MATCHED
             else "NOT matched: change the phi values")  # fmt: skip
text = ("Mean CE increase per type: {per_type}; the largest is {spread:.2f}x the smallest: "
        "**{verdict}** (matched: below {limit:g}x).")  # fmt: skip
display(Markdown(text.format(**facts)))

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
# **What we see.**

# %% tags=["hide-input"]
S = summary_tab.set_index("comparison")["mean"]
cross_type = summary_tab[summary_tab.kind == "cross-type"]
s0, s1 = seeds[0], seeds[1] if len(seeds) > 1 else None
lines = []
for _, r in diffs[diffs.seed == s0].iterrows():
    # reproduced: our CI excludes 0 on the paper's side (the paper's difference is positive)
    sig = r.ci_lo > 0 or r.ci_hi < 0
    same_side = r.paper == r.paper and (r.ours > 0) == (r.paper > 0)
    verdict = ("no paper value" if r.paper != r.paper else
               "reproduces the sign" if sig and same_side else
               "opposite sign" if sig else "not distinguishable from 0")  # fmt: skip
    paper = "" if r.paper != r.paper else f"paper {r.paper:+.3f}; "
    lines.append(f"within-SAE {r.difference} = {r.ours:+.3f} [{r.ci_lo:+.3f}, {r.ci_hi:+.3f}] "
                 f"({paper}95% CI {'excludes' if sig else 'includes'} 0): "
                 f"**{verdict}**")  # fmt: skip
if s1 is not None:
    cs = {m: S[f"{m} s{s0} -> s{s1}"] for m in types}
    least = min(cs, key=cs.get)
    agrees = "as in the paper" if least == "e2e" else "the paper finds e2e least stable"
    lines.append("cross-seed mean max cos sim: " + ", ".join(f"{m} {v:.3f}" for m, v in cs.items())
                 + f"; least stable: **{least}** ({agrees})")  # fmt: skip
init = drift.groupby("method", sort=False).cos_to_init.mean()
NEAR_INIT = 0.7  # mean cos to init above this: directions still mostly their random init
near = "still close to" if init.min() > NEAR_INIT else "well away from"
lines.append(f"trained directions are **{near}** their random init (close: every type's mean cos "
             f"to init above {NEAR_INIT:g}): "
             + ", ".join(f"{m} {v:.2f}" for m, v in init.items())
             + f"; chance (random directions): within {S[f'random s{s0}']:.3f}"
             + (f", cross-seed {S[f'random s{s0} -> s{s1}']:.3f}" if s1 is not None else "")
             )  # fmt: skip
ct = {c.split(" ")[0]: v for c, v in S.items() if c in set(cross_type.comparison)}
closer = "e2e+ds" in ct and "e2e" in ct and ct["e2e+ds"] > ct["e2e"]
lines.append(
    "cross-type: "
    + ", ".join(f"{c} {v:.3f}" for c, v in S.items() if c in set(cross_type.comparison))
    + f"; e2e+ds directions are **{'closer' if closer else 'not closer'}** to local ones than "
    "e2e directions are (paper: closer)"
)
display(Markdown("\n".join(f"- {line}" for line in lines)))

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
    display(Markdown(lines[-1]))
else:
    mix = None
    print("run_umap is False: UMAP skipped")

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
