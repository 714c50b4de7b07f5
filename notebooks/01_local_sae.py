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
#
# > **What this run is.** At the `default` preset: one seed, 600k training tokens, one phi, a
# > preview of about a minute on a laptop CPU. It is **not converged** (notebook 12) and shows
# > the mechanism, not a result. The comparison the paper makes, local against e2e at matched CE
# > increase, lives in notebook 05: in its `paper` run (2M tokens, 2 seeds) e2e needs
# > 0.39 [0.24, 0.54] times local's L0 at CE +0.06, against Braun et al.'s 0.40.
#
# **Sections.** 1 model and data · 2 one step by hand, with two exercises (10 min) · 3 a few
# steps of the training loop by hand, checked against `sl.train` (exercise, 15 min) · 4 training
# · 5 evaluation · 6 latent density · 7 what this run is, and two ways of scoring it · 8 three
# latents. The exercises are optional: each has a spec, a folded solution (click the cell's
# margin to unfold it) and a check; papermill runs the solutions.

# %% tags=["parameters"]
model: str = "storyworld"  # frozen LM: "storyworld", a hub id such as "gpt2", or a local HF dir
model_dtype: str = "auto"  # its weights: "auto" (the checkpoint's), "float32", "bfloat16"
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
alive_tokens: int = 500_000  # SAE positions over which a latent must fire once to be alive
density_tokens: int = 65_536  # held-out tokens for the firing-frequency histogram
seed: int = 0  # SAE init and data order
sae_options: dict = {}  # any other SAEConfig field, e.g. {"pre_subtract_b_dec": True}
log_to: list = []  # trackers that also get every record: "wandb", "tensorboard" (docs/interop.md)
out_dir: str = "outputs/01_local_sae/interactive-{time}"  # run folder (saelab.runs sets it)

# %% [markdown]
# **Setup** (no need to read): imports, the run folder, and the training configs built from the
# parameters above.

# %%
import dataclasses
import json
import math
import time

import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import HTML, display

import saelab as sl
from saelab.core.models import get_site
from saelab.core.passes import sae_input, sae_positions
from saelab.core.setup import estimate_act_scales, excluded_tokens
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
cfg = sl.TrainConfig(
    sites=site, sae=sae_cfg, loss="local", lr=lr, warmup=warmup, batch_size=batch_size,
    n_tokens=n_tokens, eval_tokens=eval_tokens, alive_tokens=alive_tokens, seed=seed,
    log_every=log_every,
)  # fmt: skip

# %% [markdown]
# ## 1. Model and data
#
# Training rows come from the `train` split, every metric from `eval_split`: for storyworld a
# disjoint stream of stories, read in a fixed order so the numbers are reproducible.

# %%
lm = sl.load_model(resolve_input(model), dtype=model_dtype)
source = resolve_input(dataset)  # a relative local path: from the repo root
train_data = sl.token_dataset(source, lm.tokenizer, n_ctx, split="train", n_tokens=n_tokens)
eval_data = sl.token_dataset(
    source,
    lm.tokenizer,
    n_ctx,
    split=eval_split,
    n_tokens=max(density_tokens, sl.held_out_tokens(n_ctx, eval_tokens, alive_tokens)),
)
info = sl.model_info(lm)
print(f"{model}: {info['n_layers']} layers, d_model {info['d_model']}; SAE at {site} with "
      f"{cfg.sae_config(site, info['d_model']).d_sae} latents")  # fmt: skip
print(f"train {train_data.n_tokens:,} tokens, held out {eval_data.n_tokens:,} tokens")

# %% [markdown]
# ## 2. One training step by hand
#
# Before `sl.train` runs the loop, one step of it written out: read the site with nnsight, run
# the SAE's forward pass with its own weights, and form the loss of Braun et al. 2024 §2.1. The
# SAE is built as `sl.train` builds it (same seed; `act_scale` estimated from the training rows),
# and the batch is the first `batch_size` training rows. Two library conventions show up
# (ARCHITECTURE.md §6): the BOS position is left out (it holds the attention sink, whose norm
# would dominate the MSE), and activations are scaled by `act_scale` so that `E||x|| =
# sqrt(d_in)`, which keeps `phi` meaning the same on every model.

# %%
S = sl.parse_site(site)
torch.manual_seed(seed)  # sl.train seeds the init the same way
sae = sl.SAE.from_config(cfg.sae_config(site, info["d_model"])).to(lm.device)
keep = sae_positions(train_data, cfg.exclude_positions, lm.device)  # [T']: all but BOS
estimate_act_scales(lm, train_data, {S: sae}, keep, batch_size)
tokens = train_data.tokens[:batch_size].to(lm.device)  # [B, T]

# %% [markdown]
# Read the residual stream at the site inside an nnsight trace. Three things about `lm.trace`
# that trip people up the first time:
#
# - inside the `with` block nothing has run yet: `get_site(lm, site)` (the output of the right
#   module, whatever the model family: GPT-2, Llama, Pythia or Gemma) is a placeholder for a value
#   the forward pass will produce;
# - `.save()` asks nnsight to keep that value; after the block, `x` is a real tensor. A value not
#   saved is gone when the block exits;
# - the block follows the forward pass, so read (or write) sites in the order the model reaches
#   them (nnsight raises `OutOfOrderError` otherwise). Notebook 04 adds the backward pass, where
#   gradients arrive in the reverse order.
#
# Then keep the positions the SAE trains on and scale them.

# %%
with torch.no_grad(), lm.trace(tokens):
    x = get_site(lm, site).save()  # [B, T, d_model]
scale = sae.act_scale  # 1.0 when normalize_activations="none"
x_in = x[:, keep].float() * scale  # [B, T', d_in]: what the SAE reconstructs
torch.testing.assert_close(x_in, sae_input(lm, tokens, sae, keep))  # as training sees it
print(f"x {tuple(x.shape)} -> x_in {tuple(x_in.shape)}; mean ||x_in|| = "
      f"{x_in.norm(dim=-1).mean():.2f} (sqrt(d_in) = {x_in.shape[-1] ** 0.5:.2f})")  # fmt: skip

# %% [markdown]
# **Exercise 1 · the forward pass** (●○○, 5 min). Write `sae_forward(x_in, sae) -> (c, x_hat)`
# for `x_in [B, T', d_in]`: the latents `c = ReLU(x_in W_enc + b_enc)` `[B, T', d_sae]` and the
# reconstruction `x_hat = c normalize(W_dec) + b_dec` `[B, T', d_in]`, where `W_dec [d_sae,
# d_in]` has its rows scaled to unit length inside the pass. If `sae.cfg.pre_subtract_b_dec`
# (off by default), subtract `b_dec` from `x_in` before encoding.
#
# <details><summary>Hint</summary><code>F.normalize(W, dim=-1)</code> scales each row of
# <code>W</code> to unit norm, and keeps the gradient flowing through the division.</details>
#
# The folded cell below is the solution; write yours in the cell after it (it replaces the
# solution) and run the check two cells further on.


# %% tags=["solution"] jupyter={"source_hidden": true}
def sae_forward(x_in, sae):
    """Solution: encoder, ReLU, and the decoder with its rows normalised inside the pass."""
    x_enc = x_in - sae.b_dec if sae.cfg.pre_subtract_b_dec else x_in
    c = torch.relu(x_enc @ sae.W_enc + sae.b_enc)  # [B, T', d_sae]
    D = F.normalize(sae.W_dec, dim=-1)  # unit-norm dictionary rows [d_sae, d_in]
    return c, c @ D + sae.b_dec  # x_hat [B, T', d_in], in the SAE's (scaled) units


# %%
# Your version (uncomment and fill in):
# def sae_forward(x_in, sae):
#     ...
#     return c, x_hat

# %% [markdown]
# **Exercise 2 · the loss** (●○○, 5 min). Write `local_loss(x_in, c, x_hat, phi) -> (loss, mse,
# l1)`: `mse` the mean over every element of `(x_hat - x_in)^2`, `l1` the L1 norm of `c` over
# its last dimension, averaged over tokens and divided by `d_in`, and `loss = mse + phi * l1`.


# %% tags=["solution"] jupyter={"source_hidden": true}
def local_loss(x_in, c, x_hat, phi):
    """Solution: MSE over elements, plus phi times the per-token L1 norm over d_in."""
    mse = (x_hat - x_in).pow(2).mean()
    l1 = c.norm(p=1, dim=-1).mean() / x_in.shape[-1]
    return mse + phi * l1, mse, l1


# %%
# Your version (uncomment and fill in):
# def local_loss(x_in, c, x_hat, phi):
#     ...
#     return loss, mse, l1

# %%
c, x_hat = sae_forward(x_in, sae)
loss_hand, mse, l1 = local_loss(x_in, c, x_hat, sparsity)

# %% [markdown]
# **The check**: the library's step on the same batch and the same SAE
# (`saelab.core.training.compute_loss`, no latent dead yet) gives the same three numbers.

# %%
dead = {S: torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=lm.device)}
loss_lib, logs, _ = compute_loss(lm, tokens, {S: sae}, cfg, dead, keep=keep)
check = pd.DataFrame({"by hand": [mse.item(), l1.item(), loss_hand.item()],
                      "library": [logs["mse"], logs["sparsity"], loss_lib.item()]},
                     index=["mse", "sparsity (L1 / d_in)", "loss"])  # fmt: skip
print(check.to_string(float_format="{:.7f}".format))
assert abs(loss_hand.item() - loss_lib.item()) < 1e-5, check

# %% [markdown]
# ## 3. A few steps of the training loop by hand
#
# **Exercise 3 · the loop** (●●○, 15 min). Write `train_by_hand(n_steps, warmup)` that trains a
# fresh SAE for `n_steps` steps the way `sl.train` does, and returns it:
#
# 1. the same start: `torch.manual_seed(seed)`, then the SAE from `cfg_short.sae_config`, then
#    `estimate_act_scales` on the training rows, special tokens left out (step 4);
# 2. `torch.optim.Adam(sae.parameters(), lr=lr)`; before step `t`, set the learning rate to
#    `lr * (t + 1) / warmup` during warmup, then a cosine towards `0.1 * lr`: `lr * (0.1 + 0.9 *
#    (1 + cos(pi * s)) / 2)` with `s = (t - warmup) / (n_steps - warmup)` (it would reach 1 one
#    step after the last);
# 3. batches in `sl.train`'s order: `train_data.batches(batch_size, shuffle=True, seed=seed)`;
# 4. the SAE sees the positions `keep` (all but BOS) less any special token (storyworld's rows
#    hold `<|endoftext|>` between stories; `excluded_tokens` lists the ids): a bool mask `[B,
#    T]`, the activations `x[mask] [N, d_in]`, scaled by `sae.act_scale`;
# 5. the loss of exercises 1 and 2, `backward`, clip the global gradient norm at 10 (a guard
#    against rare spikes), `opt.step()`.
#
# Nothing is done to the decoder between steps, and that is a choice worth seeing. Braun et al.
# (e2e_sae) normalise the rows of `W_dec` *inside* the forward pass, so the gradient reaches `W_dec`
# through the normalisation: the derivative of `W / ||W||` has no component along `W`, so the loss
# does not pull a row longer or shorter. Its stored length still drifts (Adam's per-coordinate steps
# are not orthogonal to the row), which changes how far a step turns that direction, an effective
# learning rate per latent, but not what the forward pass computes. The TopK SAEs of Gao et al. 2024
# store unit rows instead and, after every step, remove the gradient along each row and scale the
# rows back to unit length; notebook 04 writes that loop. The check trains the same SAE with
# `sl.train` and compares every weight.


# %% tags=["solution"] jupyter={"source_hidden": true}
def train_by_hand(n_steps, warmup):
    """Solution: sl.train's loop for a local ReLU SAE, written out."""
    torch.manual_seed(seed)
    sae = sl.SAE.from_config(cfg_short.sae_config(site, info["d_model"])).to(lm.device)
    special = torch.tensor(excluded_tokens(cfg.exclude_tokens, lm, None), device=lm.device)
    estimate_act_scales(lm, train_data, {S: sae}, keep, batch_size, special=special)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    order = train_data.batches(batch_size, shuffle=True, seed=seed)
    for t in range(n_steps):
        s = min(1.0, (t - warmup) / max(1, n_steps - warmup))
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s))
        for group in opt.param_groups:
            group["lr"] = lr * (t + 1) / warmup if t < warmup else lr * cosine
        tokens = next(order).to(lm.device)  # [B, T]
        mask = torch.zeros(tokens.shape, dtype=torch.bool, device=lm.device)  # [B, T]
        mask[:, keep] = True  # every position but BOS...
        mask &= ~torch.isin(tokens, special)  # ...and no special token anywhere in a row
        with torch.no_grad(), lm.trace(tokens):
            x = get_site(lm, site).save()
        x_in = x[mask].float() * sae.act_scale  # [N, d_in]
        c, x_hat = sae_forward(x_in, sae)
        loss = local_loss(x_in, c, x_hat, sparsity)[0]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 10.0)
        opt.step()
    return sae


# %%
# Your version (uncomment and fill in):
# def train_by_hand(n_steps, warmup):
#     ...
#     return sae

# %% [markdown]
# **The check**: eight steps (three of warmup; fewer if the training rows run out first) by hand
# and with `sl.train` on the same config.

# %%
hand_steps = min(8, len(train_data) // batch_size)  # one pass over the rows at most
hand_warmup = min(3, max(1, hand_steps // 2))
cfg_short = dataclasses.replace(cfg, n_tokens=hand_steps * batch_size * n_ctx,
                                warmup=hand_warmup, eval_tokens=n_ctx * 4,
                                alive_tokens=n_ctx * 4)  # fmt: skip
by_hand = train_by_hand(hand_steps, hand_warmup)
by_lib = sl.train(lm, train_data, cfg_short, progress=False).sae
diffs = {k: (by_hand.state_dict()[k] - v).abs().max().item()
         for k, v in by_lib.state_dict().items()}  # fmt: skip
print(f"largest difference per tensor after {hand_steps} steps: "
      + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))  # fmt: skip
assert max(diffs.values()) < 1e-5, diffs

# %% [markdown]
# ## 4. Training
#
# `sl.train` stops the model's forward pass right after the site (nothing downstream enters the
# local loss), so each step costs a fraction of a full pass. The run ends with `sl.evaluate` on
# the held-out tokens; that report is the last record of `run.log`.

# %%
t0 = time.time()
run = sl.train(lm, train_data, cfg, out_dir=out, eval_data=eval_data, log_to=log_to)
train_s = time.time() - t0
report = run.log[-1]
assert report["kind"] == "eval"
fig = plots.train_curves(run.log, path=out / "figures" / "train_curves.png")

# %% [markdown]
# MSE falls as the SAE learns the activation's main directions while the L1 term pushes `l0`
# down; the two settle into the trade-off that `phi` sets.

# %% [markdown]
# ## 5. Evaluation: the SAE spliced into the model

# %%
keys = ["l0", "alive", "dead_frac", "mse", "explained_var", "l2_ratio", "ce_clean", "ce_sae",
        "ce_zero_abl", "ce_increase", "kl", "ce_loss_score", "n_tokens"]  # fmt: skip
pd.Series({k: report[k] for k in keys}, name="local").to_frame()

# %% [markdown]
# ## 6. Latent density
#
# How often each latent fires on held-out tokens. A healthy dictionary has most latents in a band
# of rare-but-not-never; latents that never fire are dead capacity.

# %%
freq = plots.firing_frequency(lm, run.sae, eval_data, n_tokens=density_tokens)
fig = plots.density_hist({"local": freq}, path=out / "figures" / "latent_density.png",
                         n_tokens=density_tokens)  # fmt: skip

# %% [markdown]
# ## 7. What this run is, and two ways of scoring it
#
# **What it is.** One seed, `n_tokens` training tokens (the `default` preset: 600k, a preview
# of under a minute), one phi. Not converged: on storyworld each doubling of a ReLU SAE's budget,
# up to 16M tokens, still cuts its L0 at a fixed CE increase by about a quarter (notebook 12).

# %%
d_sae = run.sae.cfg.d_sae
alive_freq = freq[freq > 0]
print(f"this run: seed {seed}, {n_tokens:,} training tokens, phi {sparsity:g}, "
      f"{train_s:.0f} s ({n_tokens / train_s:,.0f} tokens/s)")  # fmt: skip
pd.Series({
    "L0 (active latents per token)": report["l0"],
    f"alive (fired on {report.get('alive_window_tokens', report['n_tokens']):,} held-out "
    "positions)": report["alive"],
    f"never fired on the {density_tokens:,} density tokens": int((freq == 0).sum()),
    "median firing rate of those that fired": float(alive_freq.median()) if len(alive_freq) else 0,
    "explained variance at the site": report["explained_var"],
    "CE increase, nats": report["ce_increase"],
    "CE increase, share of the clean CE": report["ce_increase"] / report["ce_clean"],
    "cost of zeroing the site, nats": report["ce_zero_abl"] - report["ce_clean"],
    "ce_loss_score": report["ce_loss_score"],
}).round(4).to_frame("value")  # fmt: skip

# %% [markdown]
# The SAE explains about 90% of the activation's variance, and its `ce_loss_score` is about
# 0.99 (the reference run, `outputs/reference/01_local_sae/ref`: 0.900 and 0.990). Read side by
# side, that looks like an SAE that keeps more of the model's behaviour than of the activation.
# It is mostly the score's denominator. `ce_loss_score` is the share of the *zero-ablation*
# damage the SAE avoids, and zeroing storyworld's layer-3 residual costs about 8.7 nats, six
# times the clean CE: a stream of zeros is so far off-distribution that any reconstruction
# roughly in place scores near 1. SAELens reports the score, but Braun et al. compare SAEs by
# the CE increase in nats, and that is less flattering: in the reference run +0.09, 6.6% of the
# clean CE, more than the +0.06 (4.4% of the clean CE, as the paper's +0.145 is of GPT-2's) at which
# notebook 05 compares methods. This SAE sits at the dense, lossy end of its frontier; notebook 05
# sweeps phi to map the rest.

# %%
# Plumbing (no need to read): this run's numbers to summary.json, for other pages and tests.
summary = {k: report[k] for k in keys} | {
    "d_sae": d_sae, "sparsity": sparsity, "train_tokens": n_tokens, "train_s": train_s,
    "n_never_fire": int((freq == 0).sum()), "density_tokens": density_tokens,
}  # fmt: skip
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"done in {time.time() - t_start:.0f} s; outputs in {out}")

# %% [markdown]
# ## 8. Three latents of this SAE
#
# Dashboards (`saelab.studies.browser`) of three alive latents of the SAE trained above, on the
# held-out tokens, spread over the alive latents from rare to common (`choose_latents(...,
# by="spread")`).

# %%
latent_report = browser.build_report(lm, run.sae, eval_data, n_tokens=eval_tokens, name="local")
shown = browser.choose_latents(latent_report, 3, by="spread")
browser.export_html(latent_report, shown, out / "figures" / "dashboards.html")
for i in shown:
    display(HTML(browser.render_latent_html(latent_report, i)))

# %% [markdown]
# **How to read them.** Each dashboard is one latent. The shaded contexts are where it fires
# hardest (darker = closer to its maximum): look for a common thread, such as one word, one
# grammatical role or one story element, and for contexts that break it. The histogram and
# density say whether it is a rare, specific latent or one that fires on a large share of
# tokens (dense latents are rarely about one thing). The promoted and suppressed tokens are
# what its decoder direction writes straight into the logits; a local SAE need not write
# anything the output uses, so weak or unrelated logit tokens are a possible reading here, and
# a contrast with notebook 02's e2e latents.
