# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · gradient SAE (g-SAE) vs TopK: choose latents by what they do to the loss
#
# **TopK SAE** (Gao et al. 2024). No L1 penalty: exactly `k` latents per token are kept,
#
# $$z = x W_{enc} + b_{enc}, \qquad c = \mathrm{ReLU}(\mathrm{TopK}_k(z)), \qquad
#   \hat x = c\, W_{dec} + b_{dec},$$
#
# decoder rows kept at unit norm by projection after each step, `W_enc` initialised to
# `W_dec^T`, and an auxiliary loss (AuxK, weight 1/32) that asks latents dead for `dead_tokens`
# tokens to reconstruct the residual `x - x_hat`. Training loss: MSE + AuxK.
#
# **g-SAE** (Olmo et al. 2024, arXiv 2411.10397, §3; `papers/g-sae/README.md`). Same SAE, same loss;
# only the *selection* changes. With `g = dL/dx`, the gradient of the model's next-token
# cross-entropy with respect to the clean activation at the site (a backward pass through the frozen
# model), each latent is scored by its activation plus its activation times its first-order effect
# on the loss:
#
# $$s = z + \beta\, z \odot \big|\, \hat g\, W_{dec}^\top \big|, \qquad
#   \hat g = g / \lVert g \rVert \ \text{(per token)},$$
#
# and TopK picks the indices by `s`. Two choices the paper leaves open, and what we use:
# - **scale of g**: its size depends on CE mean vs sum and on batch size, so we normalise it to
#   unit norm per token (`grad_norm="unit"`, `saelab.core.sae.normalize_grad`); `beta` is then
#   comparable across models and batches.
# - **values**: the selected latents carry the **plain `ReLU(z)`** (`value_mode="plain"`), not
#   `ReLU(s)`; the gradient only decides *which* latents fire.
#
# `beta = 0` is exactly TopK selection. A caveat for reading the numbers: `g` needs the next
# token, so a g-SAE's selection (in training *and* in evaluation, where we splice it in) sees the
# label it is scored on; TopK does not.

# %% tags=["parameters"]
model: str = "storyworld"  # frozen LM: "storyworld", a hub id such as "gpt2", or a local HF dir
dataset: str = "storyworld"  # "storyworld", a Hugging Face dataset name, or local text files
eval_split: str = "validation"  # held-out split for the metrics (HF slice syntax works too)
site: str = "resid_pre.3"  # residual-stream site the SAEs read and write
n_ctx: int = 128  # tokens per sequence
dict_ratio: float = 32.0  # latents per residual dimension (d_sae / d_model)
k: int = 16  # active latents per token, both SAEs
beta: float = 1.0  # g-SAE weight of the gradient term in the score
betas: list = [0.0, 1.0, 4.0]  # beta sweep for section 4 (beta 0 selects as plain TopK)
value_mode: str = "plain"  # g-SAE: selected latents carry ReLU(z) ("plain") or ReLU(s) ("score")
grad_norm: str = "unit"  # normalisation of dL/dx: "unit" per token, "rms" per batch, "none"
auxk_coeff: float = 0.03125  # AuxK weight (Gao et al.: 1/32)
dead_tokens: int = 20_000  # a latent is dead (gets AuxK) after this many tokens without firing
lr: float = 4e-3  # peak Adam learning rate (linear warmup, cosine decay to 0.1 x lr)
warmup: int = 20  # warmup steps
batch_size: int = 16  # sequences per step
n_tokens: int = 300_000  # training tokens per SAE
eval_tokens: int = 16_384  # held-out tokens for the metrics and the density histogram
seed: int = 0  # SAE init and data order
sae_options: dict = {}  # any other SAEConfig field, e.g. {"pre_subtract_b_dec": True}
out_dir: str = "outputs/04_gradient_sae/scratch"  # run folder (set by saelab.runs)

# %%
import json
import time
from pathlib import Path

import pandas as pd

import saelab as sl
from saelab.studies import plots

out = Path(out_dir)
(out / "figures").mkdir(parents=True, exist_ok=True)
t_start = time.time()
log_every = max(1, n_tokens // (batch_size * n_ctx) // 40)  # about 40 points per curve
base = dict(
    sites=site, loss="local", dead_tokens=dead_tokens, lr=lr, warmup=warmup,
    batch_size=batch_size, n_tokens=n_tokens, eval_tokens=eval_tokens, seed=seed,
    log_every=log_every,
)  # fmt: skip
shape = dict(dict_ratio=dict_ratio, k=k, auxk_coeff=auxk_coeff) | sae_options
METRICS = ["ce_increase", "nmse", "dead_frac"]


def gsae_config(b: float) -> sl.TrainConfig:
    """The g-SAE TrainConfig at gradient weight `b`."""
    sae = sl.SAEConfig(architecture="gtopk", beta=b, value_mode=value_mode, grad_norm=grad_norm,
                       **shape)  # fmt: skip
    return sl.TrainConfig(sae=sae, **base)


def cmp(a: float, b: float) -> str:
    """'a lower' / 'a higher' / 'the same': how a compares with b, for the sentences below."""
    return "a lower" if a < b else "a higher" if a > b else "the same"


# %% [markdown]
# ## 1. Model and data

# %%
lm = sl.load_model(model)
train_data = sl.token_dataset(dataset, lm.tokenizer, n_ctx, split="train", n_tokens=n_tokens)
eval_data = sl.token_dataset(dataset, lm.tokenizer, n_ctx, split=eval_split, n_tokens=eval_tokens)
print(f"{model} at {site}; train {train_data.n_tokens:,} tokens, held out {eval_data.n_tokens:,}")

# %% [markdown]
# ## 2. TopK and g-SAE at equal k
#
# Each g-SAE step adds a backward pass through the frozen model for `g`. We report the
# normalised MSE as `nmse = 1 - explained_var` (SSE over the activation's variance about its
# mean), Olmo et al.'s reconstruction metric.

# %%
runs, train_s = {}, {}
for name, cfg in {
    "topk": sl.TrainConfig(sae=sl.SAEConfig(architecture="topk", **shape), **base),
    "g-sae": gsae_config(beta),
}.items():
    t0 = time.time()
    runs[name] = sl.train(lm, train_data, cfg, out_dir=out / name, eval_data=eval_data)
    train_s[name] = time.time() - t0
reports = {
    name: run.log[-1] | {"nmse": 1 - run.log[-1]["explained_var"]} for name, run in runs.items()
}
fig = plots.train_curves(
    {name: run.log for name, run in runs.items()}, keys=("mse", "l0"),
    path=out / "figures" / "train_curves.png",
)  # fmt: skip

# %%
keys = ["l0", "alive", "dead_frac", "nmse", "explained_var", "kl", "ce_increase", "ce_loss_score"]
table = pd.DataFrame(reports).T[keys].astype(float).rename_axis("run")
table

# %%
fig = plots.compare_bars(table, METRICS, path=out / "figures" / "compare.png")

# %% [markdown]
# ## 3. Latent density
#
# How often each latent fires on the held-out tokens (for the g-SAE, with its gradient-informed
# selection). Both SAEs train with AuxK on the latents silent for `dead_tokens` tokens.

# %%
freqs = {
    name: plots.firing_frequency(lm, run.sae, eval_data, eval_tokens) for name, run in runs.items()
}
fig = plots.density_hist(freqs, path=out / "figures" / "latent_density.png")

# %% [markdown]
# ## 4. How much gradient? A beta sweep
#
# `beta = 0` selects exactly as TopK does (same init, same data order, same loss), so the TopK
# run stands in for it; the run at `beta` above is reused; the others are trained here.

# %%
for b in betas:
    if b != 0 and b != beta:
        run = sl.train(lm, train_data, gsae_config(b), out_dir=out / f"g-sae-beta{b:g}",
                       eval_data=eval_data)  # fmt: skip
        runs[f"beta={b:g}"] = run
sweep_runs = {b: runs["topk" if b == 0 else "g-sae" if b == beta else f"beta={b:g}"] for b in betas}
sweep = pd.DataFrame([{"beta": b} | r.log[-1] for b, r in sweep_runs.items()]).sort_values("beta")
sweep["nmse"] = 1 - sweep.explained_var
fig = plots.metric_lines(sweep, "beta", METRICS, path=out / "figures" / "beta_sweep.png")
sweep[["beta", *METRICS, "l0", "alive"]]

# %% [markdown]
# **What we see.**

# %%
t, g = table.loc["topk"], table.loc["g-sae"]
print(
    f"At k = {k} (L0 {t.l0:.1f} vs {g.l0:.1f}), against TopK the g-SAE (beta = {beta}, plain "
    f"ReLU(z) values, unit-norm g) has {cmp(g.ce_increase, t.ce_increase)} CE increase "
    f"({g.ce_increase:.4f} vs {t.ce_increase:.4f} nats), {cmp(g.nmse, t.nmse)} NMSE "
    f"({g.nmse:.4f} vs {t.nmse:.4f}) and {cmp(g.dead_frac, t.dead_frac)} dead fraction "
    f"({g.dead_frac:.1%} vs {t.dead_frac:.1%} of {runs['topk'].sae.cfg.d_sae} latents over "
    f"{reports['topk']['n_tokens']:,} held-out tokens)."
)
lo, hi = sweep.iloc[0], sweep.iloc[-1]
print(
    f"Sweeping beta from {lo.beta:g} to {hi.beta:g}: CE increase {lo.ce_increase:.3f} -> "
    f"{hi.ce_increase:.3f}, NMSE {lo.nmse:.3f} -> {hi.nmse:.3f}, dead fraction "
    f"{lo.dead_frac:.1%} -> {hi.dead_frac:.1%}. Training took {train_s['topk']:.0f} s (TopK) and "
    f"{train_s['g-sae']:.0f} s (g-SAE, with the extra backward pass for g)."
)

# %%
summary = {name: {k_: rep[k_] for k_ in keys} for name, rep in reports.items()}
summary |= {"k": k, "beta": beta, "value_mode": value_mode, "grad_norm": grad_norm,
            "train_tokens": n_tokens, "train_s": train_s,
            "beta_sweep": sweep[["beta", *METRICS, "l0", "alive"]].to_dict("records")}  # fmt: skip
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"done in {time.time() - t_start:.0f} s; outputs in {out}")
