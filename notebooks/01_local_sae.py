# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · local SAE: reconstruct the activation
#
# The baseline every other notebook is measured against (Braun et al. 2024, arXiv 2405.12241, §2.1;
# equations and where they live in saelab: `papers/e2e-sae/README.md`). A ReLU sparse autoencoder
# reads the residual stream `x [batch, pos, d_in]` at one site and is trained to reconstruct it:
#
# $$c = \mathrm{ReLU}(x W_{enc} + b_{enc}), \qquad
#   \hat x = c\, \mathrm{normalize}(W_{dec}) + b_{dec}$$
#
# $$\mathcal L_{local} = \mathrm{MSE}(\hat x, x) + \phi\, \frac{\lVert c \rVert_1}{d_{in}}$$
#
# The decoder rows are normalised to unit norm *inside* the forward pass, so the L1 penalty cannot
# be dodged by shrinking `c` and growing `W_dec`; dividing by `d_in` is e2e_sae's convention and
# keeps `phi` comparable across model widths. The MSE is a mean over elements and the penalty a
# mean over tokens (`saelab.core.losses`).
#
# Nothing in this loss mentions the model's output. Whether the latents matter to the model is
# measured afterwards, by splicing `x_hat` in place of `x` and running the rest of the model
# (ARCHITECTURE.md §5): `l0` (active latents per token), `alive` (latents that fired at least
# once on the held-out tokens), `explained_var = 1 - SSE / SS(x - mean x)`, `ce_increase = CE(SAE) -
# CE(clean)`, and `ce_loss_score = (CE_zero - CE_SAE) / (CE_zero - CE_clean)`: the fraction of the
# loss that zero-ablating the site costs which the SAE recovers.

# %% tags=["parameters"]
model: str = "storyworld"  # frozen LM: "storyworld", a hub id such as "gpt2", or a local HF dir
dataset: str = "storyworld"  # "storyworld", a Hugging Face dataset name, or local text files
eval_split: str = "validation"  # held-out split for the metrics (HF slice syntax works too)
site: str = "resid_pre.3"  # residual-stream site the SAE reads (and, spliced in, writes)
n_ctx: int = 128  # tokens per sequence
dict_ratio: float = 8.0  # latents per residual dimension (d_sae / d_model)
sparsity: float = 1.0  # phi, weight of the L1 penalty ||c||_1 / d_in
lr: float = 1e-2  # peak Adam learning rate (linear warmup, cosine decay to 0.1 x lr)
warmup: int = 20  # warmup steps
batch_size: int = 16  # sequences per step
n_tokens: int = 600_000  # training tokens
eval_tokens: int = 16_384  # held-out tokens for the metrics
density_tokens: int = 65_536  # held-out tokens for the firing-frequency histogram
seed: int = 0  # SAE init and data order
sae_options: dict = {}  # any other SAEConfig field, e.g. {"pre_subtract_b_dec": True}
out_dir: str = "outputs/01_local_sae/scratch"  # run folder (set by saelab.runs)

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
sae_cfg = sl.SAEConfig(architecture="relu", dict_ratio=dict_ratio, sparsity=sparsity, **sae_options)
cfg = sl.TrainConfig(
    sites=site, sae=sae_cfg, loss="local", lr=lr, warmup=warmup, batch_size=batch_size,
    n_tokens=n_tokens, eval_tokens=eval_tokens, seed=seed, log_every=log_every,
)  # fmt: skip

# %% [markdown]
# ## 1. Model and data
#
# Training rows come from the `train` split, every metric from `eval_split`: for storyworld a
# disjoint stream of stories, read in a fixed order so the numbers are reproducible.

# %%
lm = sl.load_model(model)
train_data = sl.token_dataset(dataset, lm.tokenizer, n_ctx, split="train", n_tokens=n_tokens)
eval_data = sl.token_dataset(
    dataset, lm.tokenizer, n_ctx, split=eval_split, n_tokens=max(eval_tokens, density_tokens)
)
info = sl.model_info(lm)
print(f"{model}: {info['n_layers']} layers, d_model {info['d_model']}; SAE at {site} with "
      f"{cfg.sae_config(site, info['d_model']).d_sae} latents")  # fmt: skip
print(f"train {train_data.n_tokens:,} tokens, held out {eval_data.n_tokens:,} tokens")

# %% [markdown]
# ## 2. Training
#
# `sl.train` stops the model's forward pass right after the site (nothing downstream enters the
# local loss), so each step costs a fraction of a full pass. The run ends with `sl.evaluate` on
# the held-out tokens; that report is the last record of `run.log`.

# %%
t0 = time.time()
run = sl.train(lm, train_data, cfg, out_dir=out, eval_data=eval_data)
train_s = time.time() - t0
report = run.log[-1]
assert report["kind"] == "eval"
fig = plots.train_curves(run.log, path=out / "figures" / "train_curves.png")

# %% [markdown]
# MSE falls as the SAE learns the activation's main directions while the L1 term pushes `l0`
# down; the two settle into the trade-off that `phi` sets.

# %% [markdown]
# ## 3. Evaluation: the SAE spliced into the model

# %%
keys = ["l0", "alive", "dead_frac", "mse", "explained_var", "l2_ratio", "ce_clean", "ce_sae",
        "ce_zero_abl", "ce_increase", "kl", "ce_loss_score", "n_tokens"]  # fmt: skip
pd.Series({k: report[k] for k in keys}, name="local").to_frame()

# %% [markdown]
# ## 4. Latent density
#
# How often each latent fires on held-out tokens. A healthy dictionary has most latents in a band
# of rare-but-not-never; latents that never fire are dead capacity.

# %%
freq = plots.firing_frequency(lm, run.sae, eval_data, n_tokens=density_tokens)
fig = plots.density_hist({"local": freq}, path=out / "figures" / "latent_density.png")

# %% [markdown]
# **What we see.**

# %%
d_sae = run.sae.cfg.d_sae
alive_freq = freq[freq > 0]
print(
    f"The local SAE keeps {report['l0']:.1f} of its {d_sae} latents active per token; "
    f"{report['alive']} latents ({report['alive'] / d_sae:.0%}) fired at least once on "
    f"{report['n_tokens']:,} held-out tokens. It explains {report['explained_var']:.1%} of the "
    f"variance at {site}, yet splicing it in raises CE by {report['ce_increase']:.3f} nats "
    f"({report['ce_increase'] / report['ce_clean']:.1%} of the clean {report['ce_clean']:.3f}); "
    f"ce_loss_score {report['ce_loss_score']:.3f} (zero-ablating the site costs "
    f"{report['ce_zero_abl'] - report['ce_clean']:.3f} nats)."
)
print(
    f"On {density_tokens:,} tokens, {int((freq == 0).sum())} latents never fire; alive latents "
    f"fire on a median {alive_freq.median():.2%} of tokens, and {int((freq > 0.1).sum())} fire "
    f"on more than 10%. Training took {train_s:.0f} s ({n_tokens / train_s:,.0f} tokens/s)."
)

# %%
summary = {k: report[k] for k in keys} | {
    "d_sae": d_sae, "sparsity": sparsity, "train_tokens": n_tokens, "train_s": train_s,
    "n_never_fire": int((freq == 0).sum()), "density_tokens": density_tokens,
}  # fmt: skip
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"done in {time.time() - t_start:.0f} s; outputs in {out}")
