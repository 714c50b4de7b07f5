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
# different computation. **e2e+ds** adds, for every later layer `k`, the error between the spliced
# and the clean residual stream:
#
# $$\mathcal L_{e2e+ds} = \lambda_{KL}\, \mathrm{KL}\big(P_{clean} \,\Vert\, P_{SAE}\big)
#   + \frac{\lambda_{ds}}{n_{later}} \sum_{k > L}
#     \frac{\lVert a_k^{SAE} - a_k^{clean} \rVert^2}{\lVert a_k^{clean} \rVert^2}
#   + \phi\, \frac{\lVert c \rVert_1}{d_{in}}$$
#
# with the paper's GPT-2 values `lambda_KL = 0.5`, `lambda_ds = 2.5`. The paper's term is the raw
# MSE of each later residual, which weighs the same way against the KL only at GPT-2's residual
# scale; saelab divides each layer's squared error by the clean residual's squared norm over the
# batch (`ds_units="normalised"`, ARCHITECTURE.md §4), so the coefficients mean the same on any
# model. `ds_units="raw"` gives the paper's term. saelab takes the
# downstream terms at `resid_post` of every block from the SAE's layer on, which includes the
# final residual stream (e2e_sae uses `resid_pre` of the later blocks).
#
# We train local, e2e and e2e+ds at one `phi` and compare them where the paper does (Fig. 2 and
# Table 5): the downstream reconstruction error layer by layer, and the norm ratio
# `||x_hat|| / ||x||` (in the paper e2e SAEs shrink their output and the downstream loss restores
# it).

# %% tags=["parameters"]
model: str = "storyworld"  # frozen LM: "storyworld", a hub id such as "gpt2", or a local HF dir
model_dtype: str = "auto"  # its weights: "auto" (the checkpoint's), "float32", "bfloat16"
dataset: str = "storyworld"  # "storyworld", a Hugging Face dataset name, or local text files
eval_split: str = "validation"  # held-out split for the metrics (HF slice syntax works too)
site: str = "resid_pre.3"  # residual-stream site the SAEs read and write
n_ctx: int = 128  # tokens per sequence
dict_ratio: float = 8.0  # latents per residual dimension (d_sae / d_model)
sparsity: float = 1.0  # phi, weight of ||c||_1 / d_in, shared by the three SAEs
kl_coeff: float = 0.5  # e2e+ds weight of the KL term (plain e2e uses 1.0)
ds_coeff: float = 2.5  # e2e+ds weight of the mean downstream error
ds_units: str = "normalised"  # downstream error over the clean mean square, or "raw" (paper)
lr: float = 1e-2  # peak Adam learning rate (linear warmup, cosine decay to 0.1 x lr)
warmup: int = 20  # warmup steps
batch_size: int = 16  # sequences per step
n_tokens: int = 300_000  # training tokens per SAE
eval_tokens: int = 16_384  # held-out tokens for the metrics
alive_tokens: int = 500_000  # SAE positions over which a latent must fire once to be alive
seed: int = 0  # SAE init and data order
sae_options: dict = {}  # any other SAEConfig field, e.g. {"pre_subtract_b_dec": True}
log_to: list = []  # trackers that also get every record: "wandb", "tensorboard" (docs/interop.md)
out_dir: str = "outputs/03_e2e_ds_sae/interactive-{time}"  # run folder (saelab.runs sets it)

# %%
import json
import time

import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import HTML, Markdown, display

import saelab as sl
from saelab.core.models import get_site, set_site
from saelab.core.passes import sae_positions
from saelab.core.setup import estimate_act_scales
from saelab.core.training import compute_loss
from saelab.runs import notebook_out_dir, resolve_input
from saelab.studies import browser, plots

out = notebook_out_dir(out_dir)  # from the repo root; {time}: a fresh folder
(out / "figures").mkdir(parents=True, exist_ok=True)
t_start = time.time()
log_every = max(1, n_tokens // (batch_size * n_ctx) // 40)  # about 40 points per curve
sae_cfg = sl.SAEConfig.create(
    architecture="relu", dict_ratio=dict_ratio, sparsity=sparsity, **sae_options
)
base = dict(
    sites=site, sae=sae_cfg, lr=lr, warmup=warmup, batch_size=batch_size, n_tokens=n_tokens,
    eval_tokens=eval_tokens, alive_tokens=alive_tokens, seed=seed, log_every=log_every,
)  # fmt: skip
configs = {
    "local": sl.TrainConfig(loss="local", **base),
    "e2e": sl.TrainConfig(loss=sl.objective("e2e", kl_coeff=1.0), **base),
    "e2e+ds": sl.TrainConfig(
        loss=sl.objective("e2e+ds", kl_coeff=kl_coeff, ds_coeff=ds_coeff, ds_units=ds_units),
        **base,
    ),
}


def versus(a: float, b: float, below: str, above: str, rel: float = 0.05) -> str:
    """`below` / `above` if `a` is over `rel` (5%) below / above `b`, else "about the same"."""
    if a < b - rel * abs(b):
        return below
    return above if a > b + rel * abs(b) else "about the same"


# %% [markdown]
# ## 1. Model and data

# %%
lm = sl.load_model(resolve_input(model), dtype=model_dtype)
source = resolve_input(dataset)  # a relative local path: from the repo root
train_data = sl.token_dataset(source, lm.tokenizer, n_ctx, split="train", n_tokens=n_tokens)
eval_data = sl.token_dataset(
    source,
    lm.tokenizer,
    n_ctx,
    split=eval_split,
    n_tokens=max(eval_tokens, alive_tokens + alive_tokens // (n_ctx - 1) + n_ctx),
)
print(f"{model} at {site}; train {train_data.n_tokens:,} tokens, held out {eval_data.n_tokens:,}")

# %% [markdown]
# ## 2. One e2e+ds step by hand
#
# The downstream term in nnsight, on the first training batch, with an SAE built as `sl.train`
# builds it (same seed, `act_scale` estimated from the training rows). The objective names the
# later sites it reconstructs (`objective.later`: `resid_post` of the SAE's block and of every
# block after it); the clean pass reads them with the logits.

# %%
S = sl.parse_site(site)
cfg = configs["e2e+ds"]
later = cfg.loss.later(lm, [S])
torch.manual_seed(seed)  # sl.train seeds the init the same way
sae = sl.SAE.from_config(cfg.sae_config(site, sl.model_info(lm)["d_model"])).to(lm.device)
keep = sae_positions(train_data, cfg.exclude_positions, lm.device)  # [T']: all but BOS
estimate_act_scales(lm, train_data, {S: sae}, keep, batch_size)
tokens = train_data.tokens[:batch_size].to(lm.device)  # [B, T]
resid_clean = []  # nnsight fills containers made outside the trace
with torch.no_grad(), lm.trace(tokens):
    resid_clean += [get_site(lm, s).save() for s in later]  # each [B, T, d_model]
    logits_clean = lm.output.logits.save()
print("later sites:", [str(s) for s in later])

# %% [markdown]
# The same splice as notebook 02, now also reading the later residual stream of the spliced model
# (sites in execution order: the SAE's site, the later ones, the logits).

# %%
scale = sae.act_scale
resid_sae = []
with lm.trace(tokens):
    x = get_site(lm, site)
    x_in = x[:, keep].float() * scale
    x_enc = x_in - sae.b_dec if sae.cfg.pre_subtract_b_dec else x_in
    c = torch.relu(x_enc @ sae.W_enc + sae.b_enc).save()
    x_hat = (c @ F.normalize(sae.W_dec, dim=-1) + sae.b_dec) / scale
    set_site(lm, site, x.index_copy(1, keep, x_hat.to(x.dtype)))
    resid_sae += [get_site(lm, s).save() for s in later]
    logits = lm.output.logits.save()

# %% [markdown]
# The three terms: the KL of notebook 02, the mean over later layers of the squared error between
# spliced and clean residuals (over every position; normalised, each layer's over its clean
# residual's mean square), and the sparsity term.

# %%
lp_clean, lp_sae = F.log_softmax(logits_clean.float(), -1), F.log_softmax(logits.float(), -1)
kl = (lp_clean.exp() * (lp_clean - lp_sae)).sum(-1).mean()
ds_layers = [(a - b).pow(2).mean() / (b.pow(2).mean() if ds_units == "normalised" else 1)
             for a, b in zip(resid_sae, resid_clean, strict=True)]  # fmt: skip
ds = torch.stack(ds_layers).mean()
l1 = c.norm(p=sae.cfg.sparsity_p, dim=-1).mean() / sae.cfg.d_in
loss_hand = kl_coeff * kl + ds_coeff * ds + sparsity * l1

# %% [markdown]
# Against the library's step on the same batch and SAE (`compute_loss`, whose objective terms are
# `objectives.E2EDownstream.terms`):

# %%
dead = {S: torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=lm.device)}
loss_lib, logs, _ = compute_loss(lm, tokens, {S: sae}, cfg, dead, keep=keep)
check = pd.DataFrame(
    {"by hand": [kl.item(), ds.item(), l1.item(), loss_hand.item()],
     "library": [logs["kl"], logs["ds_mse"], logs["sparsity"], loss_lib.item()]},
    index=["kl", f"ds_mse ({ds_units}, mean over later layers)", "sparsity (L1 / d_in)", "loss"],
)  # fmt: skip
print(check.to_string(float_format="{:.7f}".format))
assert abs(loss_hand.item() - loss_lib.item()) < 1e-5, check
print(f"downstream error ({ds_units}) per later layer, by hand:",
      {str(s): round(m.item(), 5) for s, m in zip(later, ds_layers, strict=True)})  # fmt: skip

# %% [markdown]
# ## 3. Three SAEs at one phi
#
# `sl.evaluate` (run at the end of each training) reports the downstream MSE and explained
# variance at every later layer for every run type, not only for e2e+ds.

# %%
runs, train_s = {}, {}
for name, cfg in configs.items():
    t0 = time.time()
    runs[name] = sl.train(lm, train_data, cfg, out_dir=out / name, eval_data=eval_data,
                          log_to=log_to)  # fmt: skip
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
# ## 4. Downstream reconstruction, layer by layer (Braun et al. Fig. 2)
#
# For each later residual site: the MSE between the spliced and the clean residual, and the
# fraction of the clean residual's variance the spliced one explains.

# %%
fig = plots.downstream_plot(reports, path=out / "figures" / "downstream.png")
ds = pd.DataFrame(reports).T.filter(regex="^ds_(mse|ev)/").astype(float).rename_axis("run")
ds.T

# %% [markdown]
# ## 5. Output norm (Braun et al. Table 5)
#
# Mean per-token `||x_hat|| / ||x||` on the held-out tokens.

# %%
table[["l2_ratio"]].T

# %% [markdown]
# ## 6. What we see

# %% tags=["hide-input"]
last = ds.columns[ds.columns.str.startswith("ds_mse/")][-1]
ev_last = last.replace("ds_mse/", "ds_ev/")
r = table.l2_ratio
v = dict(sparsity=sparsity, t=table, last=last.split("/")[1],
         m_e2e=ds.loc["e2e", last], m_ds=ds.loc["e2e+ds", last], m_local=ds.loc["local", last],
         ev_e2e=ds.loc["e2e", ev_last], ev_ds=ds.loc["e2e+ds", ev_last],
         ev_local=ds.loc["local", ev_last], cut=ds.loc["e2e", last] / ds.loc["e2e+ds", last],
         r=r, times=", ".join(f"{k} {t:.0f} s" for k, t in train_s.items()))  # fmt: skip
# verdicts from the numbers: values within 5% of each other are called "about the same"
v["ds_cmp"] = versus(v["m_ds"], v["m_e2e"], "lower", "higher")
v["pulls"] = "does" if v["ds_cmp"] == "lower" else "does not"
v["norm_cmp"] = versus(r["e2e+ds"], r["e2e"], "lower", "higher")
v["ce_cmp"] = versus(table.ce_increase["e2e+ds"], table.ce_increase["e2e"], "less", "more")
display(
    Markdown(
        """
At phi = {sparsity}: L0 local {t.l0[local]:.1f}, e2e {t.l0[e2e]:.1f}, e2e+ds
{t.l0[e2e+ds]:.1f}; CE increase local {t.ce_increase[local]:.3f}, e2e {t.ce_increase[e2e]:.3f},
e2e+ds {t.ce_increase[e2e+ds]:.3f} nats (e2e+ds against e2e: {ce_cmp} loss added).

At the last residual site (`{last}`) the spliced stream's MSE is {m_e2e:.4g} for e2e,
{m_ds:.4g} for e2e+ds and {m_local:.4g} for local (explained variance {ev_e2e:.1%},
{ev_ds:.1%}, {ev_local:.1%}). Against e2e's, e2e+ds's error there is **{ds_cmp}** (e2e / e2e+ds =
{cut:.2f}; "lower" means more than 5% below), so here the downstream loss **{pulls}** pull the
later layers back toward the clean ones.

`||x_hat|| / ||x||`: local {r[local]:.2f}, e2e {r[e2e]:.2f}, e2e+ds {r[e2e+ds]:.2f}: against e2e's,
e2e+ds's ratio is {norm_cmp} (same 5% rule; Braun et al. Table 5 report the downstream loss
restoring the norm that e2e shrinks). Training took {times}.
""".format(**v)
    )
)

# %%
summary = {name: {k: v for k, v in rep.items() if k not in ("kind", "step")}
           for name, rep in reports.items()}  # fmt: skip
summary |= {"sparsity": sparsity, "kl_coeff": kl_coeff, "ds_coeff": ds_coeff,
            "train_tokens": n_tokens, "train_s": train_s}  # fmt: skip
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"done in {time.time() - t_start:.0f} s; outputs in {out}")

# %% [markdown]
# ## 7. Three latents of the e2e+ds SAE
#
# Dashboards (`saelab.studies.browser`) of three alive latents of the e2e+ds SAE trained above,
# on the held-out tokens, spread from rare to common.

# %%
latent_report = browser.build_report(lm, runs["e2e+ds"].sae, eval_data, n_tokens=eval_tokens,
                                     name="e2e+ds")  # fmt: skip
shown = browser.choose_latents(latent_report, 3, by="spread")
browser.export_html(latent_report, shown, out / "figures" / "dashboards.html")
for i in shown:
    display(HTML(browser.render_latent_html(latent_report, i)))

# %% [markdown]
# **How to read them.** The shaded contexts show where a latent fires hardest: look for what they
# share, and for contexts that break the pattern. The promoted and suppressed tokens are what the
# decoder direction writes straight into the logits. The downstream term asks the SAE to keep the
# later layers' inputs where the clean model puts them, so compare with notebook 02's e2e
# latents: whether these read more like a local SAE's (tied to the input tokens in the contexts)
# or like an e2e SAE's (tied to the predicted tokens), and how dense they are.
