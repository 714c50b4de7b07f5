# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · e2e + downstream SAE: keep the activations on the model's own pathways
#
# Braun et al. 2024 (arXiv 2405.12241, §2.3; `papers/e2e-sae/README.md`). An e2e SAE (notebook 02)
# only has to get the *output distribution* right; nothing stops its reconstruction from sending the
# later residual stream somewhere the clean model never goes, and then its latents explain a
# different computation. **e2e+ds** adds, for every later layer `k`, the MSE between the spliced and
# the clean residual stream:
#
# $$\mathcal L_{e2e+ds} = \lambda_{KL}\, \mathrm{KL}\big(P_{clean} \,\Vert\, P_{SAE}\big)
#   + \frac{\lambda_{ds}}{n_{later}} \sum_{k > L} \mathrm{MSE}\big(a_k^{SAE}, a_k^{clean}\big)
#   + \phi\, \frac{\lVert c \rVert_1}{d_{in}}$$
#
# with the paper's GPT-2 values `lambda_KL = 0.5`, `lambda_ds = 2.5`. saelab takes the
# downstream terms at `resid_post` of every block from the SAE's layer on, which includes the
# final residual stream (e2e_sae uses `resid_pre` of the later blocks).
#
# We train local, e2e and e2e+ds at one `phi` and compare them where the paper does (Fig. 2 and
# Table 5): the downstream reconstruction error layer by layer, and the norm ratio
# `||x_hat|| / ||x||` (in the paper e2e SAEs shrink their output and the downstream loss restores
# it).

# %% tags=["parameters"]
model: str = "storyworld"  # frozen LM: "storyworld", a hub id such as "gpt2", or a local HF dir
dataset: str = "storyworld"  # "storyworld", a Hugging Face dataset name, or local text files
eval_split: str = "validation"  # held-out split for the metrics (HF slice syntax works too)
site: str = "resid_pre.3"  # residual-stream site the SAEs read and write
n_ctx: int = 128  # tokens per sequence
dict_ratio: float = 8.0  # latents per residual dimension (d_sae / d_model)
sparsity: float = 1.0  # phi, weight of ||c||_1 / d_in, shared by the three SAEs
kl_coeff: float = 0.5  # e2e+ds weight of the KL term (plain e2e uses 1.0)
ds_coeff: float = 2.5  # e2e+ds weight of the mean downstream MSE
lr: float = 1e-2  # peak Adam learning rate (linear warmup, cosine decay to 0.1 x lr)
warmup: int = 20  # warmup steps
batch_size: int = 16  # sequences per step
n_tokens: int = 300_000  # training tokens per SAE
eval_tokens: int = 16_384  # held-out tokens for the metrics
seed: int = 0  # SAE init and data order
sae_options: dict = {}  # any other SAEConfig field, e.g. {"pre_subtract_b_dec": True}
out_dir: str = "outputs/03_e2e_ds_sae/scratch"  # run folder (set by saelab.runs)

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
base = dict(
    sites=site, sae=sae_cfg, lr=lr, warmup=warmup, batch_size=batch_size, n_tokens=n_tokens,
    eval_tokens=eval_tokens, seed=seed, log_every=log_every,
)  # fmt: skip
configs = {
    "local": sl.TrainConfig(loss="local", **base),
    "e2e": sl.TrainConfig(loss="e2e", kl_coeff=1.0, **base),
    "e2e+ds": sl.TrainConfig(loss="e2e+ds", kl_coeff=kl_coeff, ds_coeff=ds_coeff, **base),
}

# %% [markdown]
# ## 1. Model and data

# %%
lm = sl.load_model(model)
train_data = sl.token_dataset(dataset, lm.tokenizer, n_ctx, split="train", n_tokens=n_tokens)
eval_data = sl.token_dataset(dataset, lm.tokenizer, n_ctx, split=eval_split, n_tokens=eval_tokens)
print(f"{model} at {site}; train {train_data.n_tokens:,} tokens, held out {eval_data.n_tokens:,}")

# %% [markdown]
# ## 2. Three SAEs at one phi
#
# `sl.evaluate` (run at the end of each training) reports the downstream MSE and explained
# variance at every later layer for every run type, not only for e2e+ds.

# %%
runs, train_s = {}, {}
for name, cfg in configs.items():
    t0 = time.time()
    runs[name] = sl.train(lm, train_data, cfg, out_dir=out / name, eval_data=eval_data)
    train_s[name] = time.time() - t0
reports = {name: run.log[-1] for name, run in runs.items()}
fig = plots.train_curves(
    {name: run.log for name, run in runs.items()}, path=out / "figures" / "train_curves.png"
)

# %%
keys = ["l0", "alive", "explained_var", "l2_ratio", "kl", "ce_increase", "ce_loss_score"]
table = pd.DataFrame(reports).T[keys].astype(float).rename_axis("run")
table

# %% [markdown]
# ## 3. Downstream reconstruction, layer by layer (Braun et al. Fig. 2)
#
# For each later residual site: the MSE between the spliced and the clean residual, and the
# fraction of the clean residual's variance the spliced one explains.

# %%
fig = plots.downstream_plot(reports, path=out / "figures" / "downstream.png")
ds = pd.DataFrame(reports).T.filter(regex="^ds_(mse|ev)/").astype(float).rename_axis("run")
ds.T

# %% [markdown]
# ## 4. Output norm (Braun et al. Table 5)
#
# Mean per-token `||x_hat|| / ||x||` on the held-out tokens.

# %%
table[["l2_ratio"]].T

# %% [markdown]
# **What we see.**

# %%
last = ds.columns[ds.columns.str.startswith("ds_mse/")][-1]
ev_last = last.replace("ds_mse/", "ds_ev/")
r = table.l2_ratio
cut = ds.loc["e2e", last] / ds.loc["e2e+ds", last]
print(
    f"At phi = {sparsity}: L0 local {table.l0['local']:.1f}, e2e {table.l0['e2e']:.1f}, "
    f"e2e+ds {table.l0['e2e+ds']:.1f}; CE increase local {table.ce_increase['local']:.3f}, e2e "
    f"{table.ce_increase['e2e']:.3f}, e2e+ds {table.ce_increase['e2e+ds']:.3f} nats."
)
print(
    f"At the last residual site ({last.split('/')[1]}) the spliced stream's MSE is "
    f"{ds.loc['e2e', last]:.4g} for e2e, {ds.loc['e2e+ds', last]:.4g} for e2e+ds and "
    f"{ds.loc['local', last]:.4g} for local (explained variance {ds.loc['e2e', ev_last]:.1%}, "
    f"{ds.loc['e2e+ds', ev_last]:.1%}, {ds.loc['local', ev_last]:.1%}): e2e's error there is "
    f"{cut:.1f}x that of e2e+ds, so the downstream loss {'does' if cut > 1 else 'does not'} "
    "pull the later layers back toward the clean ones."
)
print(
    f"||x_hat|| / ||x||: local {r['local']:.2f}, e2e {r['e2e']:.2f}, e2e+ds {r['e2e+ds']:.2f}; "
    f"the downstream loss {'raises' if r['e2e+ds'] > r['e2e'] else 'does not raise'} the norm "
    f"over plain e2e. Training took {', '.join(f'{k} {v:.0f} s' for k, v in train_s.items())}."
)

# %%
summary = {name: {k: v for k, v in rep.items() if k not in ("kind", "step")}
           for name, rep in reports.items()}  # fmt: skip
summary |= {"sparsity": sparsity, "kl_coeff": kl_coeff, "ds_coeff": ds_coeff,
            "train_tokens": n_tokens, "train_s": train_s}  # fmt: skip
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"done in {time.time() - t_start:.0f} s; outputs in {out}")
