# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Pareto comparison: local vs e2e vs e2e+ds, and TopK vs g-SAE
#
# The headline claims of both papers, measured on one model with one evaluation:
#
# - **Braun et al. 2024** (Figure 1, Table 2; `papers/e2e-sae/`): at equal CE loss increase, an
#   SAE trained end-to-end (KL on the output distribution) needs far fewer active latents per
#   token (L0) and fewer alive latents than one trained to reconstruct its activation. On GPT-2
#   layer 6 at CE +0.145: L0 27.5 (e2e) vs 69.4 (local), a ratio of 0.40.
# - **Olmo et al. 2024** (`papers/g-sae/`): at equal k, a TopK SAE whose selection is weighted by
#   the loss gradient (g-SAE) adds less CE loss and has fewer dead latents than plain TopK.
#
# We sweep the sparsity coefficient of the three ReLU SAE losses and k for the two TopK SAEs,
# evaluate every SAE on the same held-out tokens, and read both comparisons off the sweep.
# If storyworld does not reproduce a direction, the tables below say so. Every SAE is trained
# once per seed (`seeds`); each claim is read off every seed's sweep and given as the mean with a
# 95% t-interval over seeds. The `default` preset (`make run`) is a **smoke-scale preview**
# (500k tokens, one seed): its SAEs have not converged. The `paper` preset is the longer
# reference (`papers/`, 2M tokens for every method): section 2 prints whether its SAEs meet the
# criteria checked within a run, and notebook 12_doubling whether its results move when the
# budget doubles (its twin at half the budget, preset `paper_half`), the test that tells.
# Two more architectures
# that SAE users expect sit beside them as extra curves, trained locally: BatchTopK (Bussmann et
# al. 2024; k over the batch, a global threshold at inference) and JumpReLU (Rajamanoharan et al.
# 2024; a learned threshold per latent and an L0 penalty), both described in ARCHITECTURE.md.

# %% tags=["parameters"]
model: str = "storyworld"  # frozen model: "storyworld", "gpt2", or a local HF directory
dataset: str = "storyworld"  # token source for training and evaluation
site: str = "resid_pre.3"  # where every SAE reads and writes
n_ctx: int = 128  # tokens per row
dict_ratio: float = 8.0  # ReLU SAEs: latents per model dimension (d_sae / d_model)
n_tokens: int = 200_000  # training tokens per SAE
batch_size: int = 16  # rows per step
lr: float = 0.01  # peak learning rate of the ReLU SAEs (Adam, warmup + cosine)
local_sparsity: list = [0.1, 1.0]  # phi values of the local (MSE) SAEs
e2e_sparsity: list = [1.0, 10.0]  # phi values of the e2e SAEs
e2e_ds_sparsity: list = []  # phi values of the e2e+ds SAEs ([]: e2e_sparsity)
kl_coeff_ds: float = 0.5  # e2e+ds KL weight (paper, GPT-2)
ds_coeff: float = 2.5  # e2e+ds downstream error weight (the paper's; normalised units)
ks: list = [8, 32]  # k values of the TopK and g-SAE runs
topk_dict_ratio: float = 32.0  # TopK / g-SAE latents per model dimension
topk_lr: float = 0.012  # peak learning rate of the TopK / g-SAE runs
topk_n_tokens: int = 0  # training tokens per TopK-family and JumpReLU SAE (0: n_tokens)
e2e_n_tokens: int = 0  # training tokens per e2e SAE (0: n_tokens); KL-only training is slower
beta: float = 1.0  # g-SAE gradient weight
batchtopk_ks: list = [8, 32]  # k values of the BatchTopK runs (mean L0 over the batch)
jumprelu_l0_coeffs: list = [10.0, 100.0]  # lambda values of the JumpReLU runs (L0 penalty / d_in)
jumprelu_threshold_init: float = 0.001  # JumpReLU initial threshold (Rajamanoharan et al.)
sae_options: dict = {}  # extra SAEConfig fields per method, e.g. {"topk": {"k_aux": 64}}
eval_tokens: int = 16_384  # held-out validation tokens for every evaluation
alive_tokens: int = 500_000  # SAE positions over which a latent must fire once to be alive
seeds: list = [0]  # one SAE per seed and setting (init and data order); CIs over seeds
target_ce: float = 0.0  # CE increase at which to match the ReLU SAEs (0: middle of the overlap)
plateau_tol: float = 0.02  # converged: loss falls < this (relative) over the last 10% of steps
log_to: list = []  # trackers that also get every record: "wandb", "tensorboard" (docs/interop.md)
out_dir: str = "outputs/05_pareto/interactive-{time}"  # run folder (saelab.runs sets it)

# %%
import json
import time

import pandas as pd
from IPython.display import display

import saelab as sl
from saelab.runs import notebook_out_dir, resolve_input
from saelab.studies import compare, gsae, plots
from saelab.studies.stats import interval_sign, seed_stats

out = notebook_out_dir(out_dir)  # from the repo root; {time}: a fresh folder
(out / "figures").mkdir(parents=True, exist_ok=True)
t_start = time.time()
lm = sl.load_model(resolve_input(model))
train_data = sl.token_dataset(
    resolve_input(dataset),
    lm.tokenizer,
    n_ctx,
    split="train",
    n_tokens=max(n_tokens, topk_n_tokens, e2e_n_tokens),
)
val = sl.token_dataset(
    resolve_input(dataset),
    lm.tokenizer,
    n_ctx,
    split="validation",
    n_tokens=sl.held_out_tokens(n_ctx, eval_tokens, alive_tokens),
)


def budget(n: int, heldout: bool = True) -> dict:
    """The fields of a run that scale with its token budget `n` (`heldout`: the 80% evaluation)."""
    steps = n // (batch_size * n_ctx)
    return dict(
        n_tokens=n,
        dead_tokens=max(n // 4, 1),  # "dead" scaled to the run (ARCHITECTURE.md §3, AuxK)
        log_every=max(1, steps // 100),  # ~100 losses per run: enough to test a plateau
        # one held-out evaluation at 80% of the steps: the end of training is compared with it on
        # the validation tokens, which shared training batches cannot bias (section 2)
        eval_every=int(0.8 * steps) if heldout and steps >= 10 else 0,
    )


common = dict(sites=(site,), batch_size=batch_size, lr=lr,
              eval_tokens=eval_tokens, alive_tokens=alive_tokens) | budget(n_tokens)  # fmt: skip
# the 2048-latent TopK-family and JumpReLU SAEs, and e2e (KL only), may need more tokens; L0 of
# the TopK family is fixed, so its check is NMSE falling with k instead of the held-out one
topk_budget = budget(topk_n_tokens or n_tokens, heldout=False)
e2e_budget = budget(e2e_n_tokens or n_tokens)
tokens = f"{n_tokens:,} local and e2e+ds, {e2e_budget['n_tokens']:,} e2e"
print(f"{model}: {sl.model_info(lm)}; training tokens per SAE: {tokens}, "
      f"{topk_budget['n_tokens']:,} TopK family / JumpReLU")  # fmt: skip

# %% [markdown]
# ## 1. The sweep
#
# Every SAE is trained by `sl.train_many` with the others of its objective and seed; each one
# ends with `sl.evaluate` on the same validation tokens (CE with the SAE spliced in vs clean, L0,
# alive latents, explained variance, ...). A g-SAE's CE is measured with the label in hand (its
# selection uses dL/dx); `ce_nolabel` is the same weights selecting TopK(z), what a user without
# the next token gets (`studies.gsae.label_free`).

# %%
# each run: (method, objective, its SAE's fields, TrainConfig fields beyond `common`)
topk = dict(dict_ratio=topk_dict_ratio)
topk_train = dict(lr=topk_lr) | topk_budget
e2e_ds = sl.objective("e2e+ds", kl_coeff=kl_coeff_ds, ds_coeff=ds_coeff)
runs = (
    [("local", "local", dict(architecture="relu", sparsity=p), {}) for p in local_sparsity]
    + [("e2e", "e2e", dict(architecture="relu", sparsity=p), e2e_budget) for p in e2e_sparsity]
    + [("e2e+ds", e2e_ds, dict(architecture="relu", sparsity=p), {})
       for p in e2e_ds_sparsity or e2e_sparsity]
    + [("topk", "local", dict(architecture="topk", k=k, **topk), topk_train) for k in ks]
    + [("gtopk", "local", dict(architecture="gtopk", k=k, beta=beta, **topk), topk_train)
       for k in ks]
    + [("batchtopk", "local", dict(architecture="batchtopk", k=k, **topk), topk_train)
       for k in batchtopk_ks]
    + [("jumprelu", "local", dict(architecture="jumprelu", l0_coeff=c,
                                  threshold_init=jumprelu_threshold_init, **topk), topk_train)
       for c in jumprelu_l0_coeffs]
)  # fmt: skip
# SAEs that share an objective, a seed (and whether they need dL/dx) train together,
# `sl.train_many`: one clean pass of the model per batch feeds all of them, and each gets the run
# `sl.train` would give it alone (same init, batches and steps).
groups: dict[tuple, list] = {}
for seed in seeds:
    for method, loss, sae, train in runs:
        full = dict(dict_ratio=dict_ratio) | sae | sae_options.get(method, {})
        cfg = sl.TrainConfig(**(common | train | dict(seed=seed)), loss=loss,
                             sae=sl.SAEConfig.create(**full))  # fmt: skip
        point = f"{method}_" + "_".join(
            f"{k}={v}" for k, v in sae.items() if k in ("sparsity", "k", "l0_coeff")
        )
        # the sweep table's columns: what this run sets beyond `common`, budgets aside
        coeffs = {k: v for k, v in cfg.loss.to_dict().items() if k != "name"}
        kw = (dict(sae=sae["architecture"], loss=cfg.loss.name)
              | (coeffs if method == "e2e+ds" else {})
              | {k: v for k, v in sae.items() if k != "architecture"}
              | {k: v for k, v in train.items() if k not in topk_budget})  # fmt: skip
        groups.setdefault((seed, cfg.loss.name, cfg.sae.needs_grad, cfg.n_tokens), []).append(
            (method, point, f"{point}_seed={seed}", kw, cfg)
        )
TOPK_FAMILY = ("topk", "gtopk", "batchtopk")
rows = []
for group in groups.values():
    t0 = time.time()
    trained = sl.train_many(lm, train_data, [g[4] for g in group],
                            [out / "runs" / g[2] for g in group], eval_data=val,
                            log_to=log_to)  # fmt: skip
    share = (time.time() - t0) / len(group)  # the group's time, split evenly
    for (method, point, name, kw, cfg), run in zip(group, trained, strict=True):
        rep = run.log[-1]
        # the convergence criterion (section 2), on the objective without AuxK (0 while no
        # latent is dead, so it jumps); too few steps to test: None
        term = "mse" if cfg.sae.architecture in TOPK_FAMILY else "loss"
        try:
            plateau = sl.loss_plateau(run.log, tol=plateau_tol, key=term)
        except ValueError:
            plateau = dict(change=float("nan"), converged=None)
        row = dict(method=method, point=point, run=name, seed=cfg.seed, **kw) | rep
        row |= dict(train_s=share, loss_change=plateau["change"], converged=plateau["converged"],
                    n_tokens=cfg.n_tokens)  # fmt: skip
        # the held-out check: L0 and CE at 80% of the steps vs the end, same validation tokens
        evals = [r for r in run.log if r.get("kind") == "eval"]
        if len(evals) > 1:
            mid = evals[-2]
            row |= dict(l0_80=mid["l0"], ce_80=mid["ce_increase"],
                        heldout_l0_change=rep["l0"] / mid["l0"] - 1,
                        heldout_ce_change=rep["ce_increase"] - mid["ce_increase"])  # fmt: skip
        if run.sae.cfg.needs_grad:
            free = sl.evaluate(lm, gsae.label_free(run.sae), val, n_tokens=eval_tokens,
                               batch_size=batch_size, alive_tokens=None)  # fmt: skip
            row["ce_nolabel"] = free["ce_increase"]
        rows.append(row)
        print(f"{name:32s} L0 {rep['l0']:7.1f}  alive {rep['alive']:4d}  "
              f"CE +{rep['ce_increase']:.4f}  loss change {plateau['change']:+.3f}")  # fmt: skip
df = pd.DataFrame(rows)
df["nmse"] = 1 - df["explained_var"]
df.to_csv(out / "sweep.csv", index=False)
# one point per setting: the mean over seeds (the figures)
numeric = df.select_dtypes("number").columns.drop("seed")
by_point = df.groupby(["method", "point"], as_index=False, sort=False)[list(numeric)].mean()

# %% [markdown]
# ## 2. Have the SAEs converged?
#
# Two stated criteria (ARCHITECTURE.md §5): each run's training loss has **plateaued** over the
# last 20% of its steps (the last 10% less than `plateau_tol` below the 10% before; with the
# cosine schedule the learning rate is near its floor there; for TopK-family SAEs the
# reconstruction term, since AuxK is 0 until a latent dies), and for each TopK-family sweep
# **NMSE falls monotonically in k** (more active latents must reconstruct better; an SAE that
# does not is still learning its dictionary).
#
# A training loss can also flatten or fall because of the batches it happens to see (all the runs
# of one seed see the same ones). So each ReLU SAE is also evaluated on the held-out validation
# tokens at 80% of its steps (`TrainConfig.eval_every`), and the table below gives how much its
# L0 and CE increase moved from there to the end: a check the training batches cannot bias,
# reported beside the criteria.
#
# None of these can tell a run that has settled from one that has not under the cosine schedule
# (ARCHITECTURE.md §5): the annealing alone makes e2e's loss fall over the last steps, and a flat
# local loss at 2M tokens still moves a lot at 4M. Notebook 12_doubling runs the test that does,
# the same sweep at half the budget.

# %%
mono = [dict(method=m, seed=s, nmse_by_k=g.sort_values("k")["nmse"].round(4).tolist(),
             falls=bool((g.sort_values("k")["nmse"].diff().dropna() < 0).all()))
        for (m, s), g in df[df.method.isin(TOPK_FAMILY)].groupby(["method", "seed"])]  # fmt: skip
mono = pd.DataFrame(mono, columns=["method", "seed", "nmse_by_k", "falls"])
tested = df["converged"].notna()
n_conv = int(df.loc[tested, "converged"].astype(bool).sum())
not_conv = df.loc[tested & ~df["converged"].astype(bool), ["run", "loss_change"]]
convergence = dict(
    n_runs=len(df), n_tested=int(tested.sum()), n_converged=n_conv, tol=plateau_tol,
    max_loss_change=float(df["loss_change"].max()), not_converged=not_conv.to_dict("records"),
    nmse_falls_with_k=mono.to_dict("records"),
    all=bool(tested.all() and n_conv == len(df) and mono["falls"].all()),
)  # fmt: skip
print(f"loss plateau: {n_conv} of {int(tested.sum())} runs (largest fall over the last 10%: "
      f"{convergence['max_loss_change']:+.2%})")  # fmt: skip
display(not_conv) if len(not_conv) else None
display(mono)
if "heldout_l0_change" in df:  # runs with the 80% evaluation
    held = df.dropna(subset=["heldout_l0_change"])
    heldout = held.groupby("method", sort=False).agg(
        n=("run", "size"), n_tokens=("n_tokens", "first"),
        l0_change_mean=("heldout_l0_change", "mean"), l0_change_min=("heldout_l0_change", "min"),
        ce_change_mean=("heldout_ce_change", "mean"), ce_change_max=("heldout_ce_change", "max"),
    ).reset_index()  # fmt: skip
    convergence["heldout"] = heldout.to_dict("records")
    display(heldout.round(4))

# %%
print(f"NMSE falls with k in {int(mono.falls.sum())} of {len(mono)} TopK-family sweeps; "
      f"{len(df) - convergence['n_tested']} runs too short for the plateau test")  # fmt: skip
for h in convergence.get("heldout", []):
    print(f"held out, from 80% of the steps to the end: {h['method']} L0 "
          f"{h['l0_change_mean']:+.1%} on average (lowest {h['l0_change_min']:+.1%}), CE increase "
          f"{h['ce_change_mean']:+.4f} (highest {h['ce_change_max']:+.4f})")  # fmt: skip

# %% [markdown]
# Whatever these counts say, they are necessary conditions, not a test of convergence: a run that
# passes both can still move a lot with twice the tokens. On storyworld it does: the `paper`
# sweep (2M tokens per SAE) passes the plateau test for most runs, yet doubling its budget still
# cuts every method's L0 at matched CE by about a third (notebook 12). Read every comparison below
# as one at this run's budget.

# %% [markdown]
# ## 3. Pareto frontiers (Braun et al. Figure 1)
#
# Lower-left is better: less CE loss added for fewer active (left) or alive (right) latents.
# Each point is one setting, its metrics averaged over the seeds; whiskers span the seeds (often
# inside the marker), the dotted line is the CE increase section 4 matches at. Where every SAE
# keeps (nearly) all its latents alive, the alive panel is left out and its range said instead.

# %%
relu_methods = [m for m in ("local", "e2e", "e2e+ds") if m in set(df.method)]  # those swept
both = {"local", "e2e"} <= set(relu_methods)  # Table 2 needs at least these two sweeps
per_seed = df.assign(method=df.method + "@" + df.seed.astype(str))  # every (method, seed) sweep
target = target_ce if target_ce > 0 else float("nan")  # the CE increase section 4 matches at
if both and target_ce <= 0:
    target = compare.common_target(per_seed, [f"{m}@{s}" for m in relu_methods for s in seeds])
if relu_methods:
    fig = compare.pareto_plot(by_point[by_point.method.isin(relu_methods)],
                              seeds=df[df.method.isin(relu_methods)],
                              target=target if target == target else None,
                              path=out / "figures" / "pareto.png")  # fmt: skip

# %% [markdown]
# ### Every architecture trained locally
#
# The same axes for the five locally trained families: ReLU + L1 (`local`), TopK, g-SAE,
# BatchTopK and JumpReLU. TopK-like SAEs fix L0 by construction (BatchTopK on average over the
# batch); ReLU and JumpReLU reach it through their penalty.

# %%
arch_methods = [
    m for m in ("local", "topk", "gtopk", "batchtopk", "jumprelu") if m in set(df.method)
]
if arch_methods:
    fig = compare.pareto_plot(by_point[by_point.method.isin(arch_methods)], xs=("l0",),
                              path=out / "figures" / "pareto_architectures.png")  # fmt: skip
    cols = ["method", "point", "l0", "alive", "ce_increase", "nmse"]
    arch_table = by_point[by_point.method.isin(arch_methods)][cols].sort_values(["method", "l0"])
    display(arch_table)

# %% [markdown]
# ## 4. At matched CE increase (Braun et al. Table 2)
#
# Each seed's sweep of each method is interpolated at one CE increase that every sweep reaches
# (`target_ce`, or the middle of the overlap of their ranges): log-linearly in L0 and alive, and
# either linearly in CE or in log CE. Where a sweep jumps (two neighbouring runs far apart in CE)
# the two disagree; `bracket` names the actual runs nearest the target on each side, and only a
# comparison whose runs lie within 20% of the target on both sides is a measurement rather than
# an interpolation across a gap. The closest actual runs give a third, interpolation-free ratio.

# %%
t2_rows, brackets, ratios = [], [], {"linear": [], "log_ce": [], "closest": []}
for s in seeds if both and target == target else []:
    d = df[df.seed == s]
    lin = compare.matched(d, relu_methods, target)
    logc = compare.matched(d, relu_methods, target, log_x=True)
    near = compare.closest(d, relu_methods, target)
    br = compare.bracket(d, relu_methods, target)
    for m in relu_methods:
        t2_rows.append(dict(method=m, seed=s, l0=lin.loc[m, "l0"], alive=lin.loc[m, "alive"],
                            l0_log_ce=logc.loc[m, "l0"], alive_log_ce=logc.loc[m, "alive"],
                            closest_run=near.loc[m, "run"], closest_ce=near.loc[m, "ce_increase"],
                            closest_l0=near.loc[m, "l0"]))  # fmt: skip
        brackets.append(dict(method=m, seed=s) | br.loc[m].to_dict())
    ratios["linear"].append(lin.loc["e2e", "l0"] / lin.loc["local", "l0"])
    ratios["log_ce"].append(logc.loc["e2e", "l0"] / logc.loc["local", "l0"])
    ratios["closest"].append(near.loc["e2e", "l0"] / near.loc["local", "l0"])
t2 = pd.DataFrame(t2_rows)
brackets = pd.DataFrame(brackets)
l0_ratio = {how: seed_stats(v) | dict(per_seed=v) for how, v in ratios.items()}


def mean_ci(values, digits=1):
    st = seed_stats(values)
    ci = "" if st["n"] < 2 else f" [{st['lo']:.{digits}f}, {st['hi']:.{digits}f}]"
    return f"{st['mean']:.{digits}f}{ci}"


table2 = pd.DataFrame(
    [dict(method=m, **{
        "L0 (linear CE)": mean_ci(g.l0), "L0 (log CE)": mean_ci(g.l0_log_ce),
        "alive": mean_ci(g.alive, 0), "closest runs' L0": mean_ci(g.closest_l0),
        "closest runs' CE": mean_ci(g.closest_ce, 3),
        "runs within 20% both sides": f"{int(brackets[brackets.method == m].bracketed.sum())}"
                                      f" of {len(g)} seeds"})
     for m, g in t2.groupby("method", sort=False)] if len(t2) else [],
).set_index("method") if len(t2) else pd.DataFrame()  # fmt: skip
print(f"target CE increase {target:.4f}; {len(seeds)} seeds; mean [95% t-interval over seeds]")
table2

# %% [markdown]
# The claim, as this run measures it (numbers only; how to read them follows):

# %%
if both and target == target:
    mean_of = t2.groupby("method")[["l0", "alive"]].mean()
    n_br = int(brackets.method.isin(["local", "e2e"]).sum())
    bracketed = int(brackets[brackets.method.isin(["local", "e2e"])].bracketed.sum())
    l0_e, l0_l = mean_of.loc["e2e", "l0"], mean_of.loc["local", "l0"]
    d_sae = int(dict_ratio * sl.model_info(lm)["d_model"])
    verdict = (
        f"L0(e2e) / L0(local) at CE +{target:.4f}: {mean_ci(ratios['linear'], 2)} over "
        f"{len(seeds)} seed(s) ({l0_e:.1f} / {l0_l:.1f}), {mean_ci(ratios['log_ce'], 2)} in log "
        f"CE, {mean_ci(ratios['closest'], 2)} between the closest runs; {bracketed} of {n_br} "
        f"local and e2e sweeps bracket the target within 20%. Braun et al., GPT-2 layer 6: 27.5 "
        f"/ 69.4 = {27.5 / 69.4:.2f}. Alive latents at that CE: e2e "
        f"{mean_of.loc['e2e', 'alive']:.0f}, local {mean_of.loc['local', 'alive']:.0f} of {d_sae}."
    )  # fmt: skip
elif not both:
    verdict = "No local and e2e sweeps in this run (local_sparsity or e2e_sparsity empty)."
else:  # NaN: the sweeps' CE ranges do not overlap
    verdict = "The sweeps reach no common CE increase, so they cannot be matched; widen them."
print(verdict)

# %% [markdown]
# **How to read it.** The ratio is the paper's claim in one number: how many active latents
# e2e needs for every one a local SAE needs, at the same damage to the model. What it is worth
# depends on the run:
#
# - The `paper` run (2M tokens per SAE, 2 seeds, `outputs/reference/05_pareto/paper`) gives
#   0.39 [0.24, 0.54] at CE +0.06, the paper's 0.40 almost exactly. The interpolation is not what
#   sets it: two of the four local and e2e sweeps there (local seed 0, e2e seed 1) bracket the
#   target within 20% on both sides, and the three readings agree within 0.01. What keeps it
#   from being the end of it is that no SAE there has converged. Notebook 12 asks whether the
#   ratio moves when the budget doubles.
# - The `default` preset behind `make run` (500k tokens, one seed) reads higher, about 0.5
#   (0.51 in `outputs/reference/05_pareto/ref`). It is a preview: e2e gains on local as training
#   goes on, so a short run understates the effect. Do not quote it as a reproduction.
# - The `doubling` and `doubling_half` presets (3 seeds, 2M and 1M tokens, each method's grid cut
#   to the settings near CE +0.06) exist for notebook 12's doubling test: 0.39 [0.35, 0.42] at 2M
#   tokens and 0.44 [0.41, 0.46] at 1M (`outputs/reference/05_pareto/doubling`, `doubling-half`).
#   Three seeds narrow the interval the `paper` run leaves wide; notebook 12 says what the move
#   between them means.
# - **Alive latents do not separate the methods here**: at a dictionary of 8 latents per
#   dimension every SAE keeps (nearly) all of its latents alive, so "fewer features in total"
#   cannot show. The paper's dictionaries have 60 per dimension; the `alive32` preset trains at
#   32 to see whether latents die there.

# %% [markdown]
# ## 5. TopK vs g-SAE at equal k (Olmo et al. 2024)
#
# Same k, same data; a g-SAE and the TopK SAE of the same seed share their initialisation. The
# g-SAE picks its k latents by `z + beta * z * |g W_dec^T|` with `g = dL/dx` normalised per
# token, and its selected latents carry plain `ReLU(z)`. Each difference is g-SAE minus TopK,
# paired by seed, with its 95% t-interval over seeds. `ce_nolabel` is the g-SAE read out
# without the label (TopK(z) of its own weights); notebook 11 studies the gradient's strength.

# %%
gt, diffs = pd.DataFrame(), pd.DataFrame()  # stay empty when ks is empty
METRICS = ("ce_increase", "nmse", "dead_frac")
if ks:
    pair = df[df.method.isin(["topk", "gtopk"])]
    gt = pair.pivot_table(index="k", columns="method", values=list(METRICS))  # seed means
    wide = pair.pivot_table(index=["k", "seed"], columns="method",
                            values=[*METRICS, "ce_nolabel"])  # fmt: skip
    diffs = pd.DataFrame([
        dict(k=k, metric=m) | seed_stats((g[(m, "gtopk")] - g[(m, "topk")]).tolist())
        for k, g in wide.groupby(level="k") for m in METRICS
    ] + [dict(k=k, metric="ce_nolabel") | seed_stats(
        (g[("ce_nolabel", "gtopk")] - g[("ce_increase", "topk")]).tolist())
        for k, g in wide.groupby(level="k")])  # fmt: skip
    gt[("ce_nolabel", "gtopk")] = wide[("ce_nolabel", "gtopk")].groupby(level="k").mean()
display(gt)
diffs

# %%
if ks:
    fig = plots.pair_by_k(by_point[by_point.method.isin(["topk", "gtopk"])],
                          seeds=df[df.method.isin(["topk", "gtopk"])],
                          path=out / "figures" / "topk_vs_gsae.png",
                          title="TopK vs g-SAE at equal k (paper: g-SAE lower)")  # fmt: skip

# %%
if ks:
    at = {m: [interval_sign(r) for r in diffs[diffs.metric == m].to_dict("records")] for m in
          (*METRICS, "ce_nolabel")}  # fmt: skip
    rule = ("its 95% interval over the seeds lies below 0" if len(seeds) > 1 else
            "it is below 0 (one seed: no interval)")  # fmt: skip
    print(
        f"k values where the g-SAE is lower than TopK ({rule}), of {len(ks)}: "
        + ", ".join(f"{m} {at[m].count('lower')}" for m in at)
        + "; where it is higher: "
        + ", ".join(f"{m} {at[m].count('higher')}" for m in at)
    )
else:
    print("No TopK / g-SAE runs (ks is empty).")

# %% [markdown]
# **How to read it.** Olmo et al. find the g-SAE lower on CE increase and dead latents at every
# k. In the `paper` run (2M tokens, 2 seeds, k 8 / 16 / 32) no CE difference has an interval
# that excludes 0, and its sign changes with k (the g-SAE higher at k 8, lower at 16 and 32)
# and from one sweep to the next. Dead latents are fewer in the mean at every k, and at k 8 the
# interval excludes 0, -0.61% [-0.92%, -0.30%] of 2048 latents; but that is 13 fewer in one
# seed and 12 in the other, and two seeds that happen to agree give a narrow t-interval (the
# previous `paper` sweep had the same at k 16 instead: `papers/g-sae/README.md`). The reason
# the two are so close is in notebook 11: trained, the g-SAE at beta 1 picks 97% of the latents
# TopK(z) would pick. A one-seed preview (`default`) cannot say anything here; 11 tests the
# claims with three seeds and a range of gradient strengths.

# %%
summary = dict(
    seeds=seeds,
    convergence=convergence,
    target_ce_increase=target,
    l0_ratio_e2e_local=l0_ratio["linear"]["mean"] if both and target == target else float("nan"),
    l0_ratio=l0_ratio,
    table2=(
        t2.groupby("method", sort=False)[
            ["l0", "alive", "l0_log_ce", "alive_log_ce", "closest_l0", "closest_ce"]
        ]
        .mean()
        .reset_index()
        .to_dict(orient="records")
        if len(t2)
        else []
    ),
    table2_seeds=t2.to_dict(orient="records"),
    brackets=brackets.to_dict(orient="records"),
    gsae_vs_topk={f"{m}/{meth}": col.to_dict() for (m, meth), col in gt.items()},
    gsae_minus_topk=diffs.to_dict(orient="records"),
    verdict=verdict,
    seconds=time.time() - t_start,
)
(out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
print(f"done in {summary['seconds']:.0f} s; outputs in {out}")
