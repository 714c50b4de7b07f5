# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · end-to-end SAE: judge the SAE by what the model does with it
#
# Braun et al. 2024 (arXiv 2405.12241, §2.2; `papers/e2e-sae/README.md`). A local SAE (notebook 01)
# spends its capacity on whatever dominates the activation's variance, whether or not the rest of
# the model reads it. An **e2e SAE** has the same architecture (ReLU, unit-norm decoder rows) but a
# different loss: splice the reconstruction `x_hat` in place of `x` at the site, run the remaining
# layers, and compare the model's next-token distribution with the clean one,
#
# $$\mathcal L_{e2e} = \mathrm{KL}\big(P_{clean} \,\Vert\, P_{SAE}\big)
#   + \phi\, \frac{\lVert c \rVert_1}{d_{in}},$$
#
# KL per token, averaged over batch x positions, with the clean logits a fixed (detached)
# target. The MSE at the site is still logged but not optimised. The gradient reaches the SAE
# only through the later layers, so directions that the model ignores cost nothing to drop.
#
# Cost: each step runs the clean model once under `no_grad` (the target logits), then a spliced
# pass that skips the blocks before the site (it reuses the clean residual there) and
# backpropagates through the blocks after it.
#
# The claim to check: e2e reconstructs the activation far worse (low explained variance) while
# hurting the model's loss as little as, or less than, a local SAE with more active latents.
# Here both are trained at the same `phi`; the Pareto comparison across `phi` is notebook 05.

# %% tags=["parameters"]
model: str = "storyworld"  # frozen LM: "storyworld", a hub id such as "gpt2", or a local HF dir
dataset: str = "storyworld"  # "storyworld", a Hugging Face dataset name, or local text files
eval_split: str = "validation"  # held-out split for the metrics (HF slice syntax works too)
site: str = "resid_pre.3"  # residual-stream site the SAE reads and writes
n_ctx: int = 128  # tokens per sequence
dict_ratio: float = 8.0  # latents per residual dimension (d_sae / d_model)
sparsity: float = 1.0  # phi, weight of ||c||_1 / d_in, shared by the e2e and the local SAE
kl_coeff: float = 1.0  # weight of KL(P_clean || P_sae) in the e2e loss
lr: float = 1e-2  # peak Adam learning rate (linear warmup, cosine decay to 0.1 x lr)
warmup: int = 20  # warmup steps
batch_size: int = 16  # sequences per step
n_tokens: int = 400_000  # training tokens per SAE
eval_tokens: int = 16_384  # held-out tokens for the metrics
seed: int = 0  # SAE init and data order
sae_options: dict = {}  # any other SAEConfig field, e.g. {"pre_subtract_b_dec": True}
out_dir: str = "outputs/02_e2e_sae/scratch"  # run folder (set by saelab.runs)

# %%
import dataclasses
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
sae_cfg = sl.SAEConfig(architecture="relu", dict_ratio=dict_ratio, sparsity=sparsity, **sae_options)
base = dict(
    sites=site, sae=sae_cfg, lr=lr, warmup=warmup, batch_size=batch_size, n_tokens=n_tokens,
    eval_tokens=eval_tokens, seed=seed, log_every=log_every,
)  # fmt: skip
configs = {
    "e2e": sl.TrainConfig(loss="e2e", kl_coeff=kl_coeff, **base),
    "local": sl.TrainConfig(loss="local", **base),
}

# %% [markdown]
# ## 1. Model and data

# %%
lm = sl.load_model(model)
train_data = sl.token_dataset(dataset, lm.tokenizer, n_ctx, split="train", n_tokens=n_tokens)
eval_data = sl.token_dataset(dataset, lm.tokenizer, n_ctx, split=eval_split, n_tokens=eval_tokens)
print(f"{model} at {site}; train {train_data.n_tokens:,} tokens, held out {eval_data.n_tokens:,}")

# %% [markdown]
# ## 2. Training the e2e SAE, and a local SAE at the same phi
#
# Each run ends with `sl.evaluate` on the held-out tokens (the last record of its log).

# %%
runs, train_s = {}, {}
for name, cfg in configs.items():
    t0 = time.time()
    runs[name] = sl.train(lm, train_data, cfg, out_dir=out / name, eval_data=eval_data)
    train_s[name] = time.time() - t0
reports = {name: run.log[-1] for name, run in runs.items()}
logs = {name: run.log for name, run in runs.items()}
fig = plots.train_curves(logs, path=out / "figures" / "train_curves.png")

# %% [markdown]
# The e2e run's MSE is logged, never optimised: it can even rise while the KL falls.

# %% [markdown]
# ## 3. Side by side

# %%
keys = ["l0", "alive", "mse", "explained_var", "l2_ratio", "kl", "ce_increase", "ce_loss_score"]
table = pd.DataFrame(reports).T[keys].astype(float).rename_axis("run")
table

# %%
fig = plots.compare_bars(
    table, ["l0", "explained_var", "ce_increase", "alive"], path=out / "figures" / "compare.png"
)

# %% [markdown]
# **What we see.**

# %%
e, lo = table.loc["e2e"], table.loc["local"]
dominates = e.l0 <= lo.l0 and e.ce_increase <= lo.ce_increase
print(
    f"At phi = {sparsity}, the e2e SAE keeps {e.l0:.1f} latents active per token and "
    f"{e.alive:.0f} alive, against {lo.l0:.1f} and {lo.alive:.0f} for the local SAE. "
    f"It explains {e.explained_var:.1%} of the activation's variance (local "
    f"{lo.explained_var:.1%}; MSE {e.mse / lo.mse:.1f}x the local one), yet raises CE by "
    f"{e.ce_increase:.3f} nats against the local SAE's {lo.ce_increase:.3f} (KL {e.kl:.3f} vs "
    f"{lo.kl:.3f})."
)
print(
    f"CE increase per active latent: e2e {e.ce_increase / e.l0:.4f}, local "
    f"{lo.ce_increase / lo.l0:.4f} nats. The e2e point (L0, CE increase) "
    f"{'dominates' if dominates else 'does not dominate'} the local one. The e2e SAE's output "
    f"norm is {e.l2_ratio:.2f} x the input's (local {lo.l2_ratio:.2f}). Training took "
    f"{train_s['e2e']:.0f} s (e2e) and {train_s['local']:.0f} s (local)."
)

# %% [markdown]
# ## 4. Fine-tuning the local SAE end to end
#
# `TrainConfig(init_from=...)` starts from a saved SAE (saelab's, or a folder SAELens wrote)
# instead of a fresh init. Here the local SAE above continues with the e2e loss for a quarter of
# the tokens: the way e2e_sae users turn a local SAE into an e2e one.

# %%
local_sae = out / "local" / "saes" / str(sl.parse_site(site))
finetune = dataclasses.replace(
    configs["e2e"], init_from=str(local_sae), n_tokens=max(n_tokens // 4, batch_size * n_ctx)
)
ft = sl.train(lm, train_data, finetune, out_dir=out / "local_to_e2e", eval_data=eval_data).log[-1]
print(
    f"local SAE: CE +{lo.ce_increase:.3f} at L0 {lo.l0:.1f}; after {finetune.n_tokens:,} tokens "
    f"of e2e fine-tuning: CE +{ft['ce_increase']:.3f} at L0 {ft['l0']:.1f} (e2e from scratch on "
    f"{n_tokens:,} tokens: CE +{e.ce_increase:.3f} at L0 {e.l0:.1f})"
)

# %%
reports["local_to_e2e"] = ft
summary = {name: {k: rep[k] for k in keys} for name, rep in reports.items()}
summary |= {"sparsity": sparsity, "train_tokens": n_tokens, "train_s": train_s}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"done in {time.time() - t_start:.0f} s; outputs in {out}")
