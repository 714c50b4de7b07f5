# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Feature browser: what does one latent do?
#
# An SAE gives a dictionary of directions `W_dec[i]` and, per token, sparse coefficients
# `c_i(x) = ReLU(x W_enc + b_enc)_i` (TopK / g-SAE: the same, restricted to the k selected
# latents). Summary metrics (L0, alive latents, CE increase; notebook 05) say nothing about
# *what* a latent stands for. A **latent dashboard** (Bricken et al. 2023, "Towards
# Monosemanticity") looks at one latent from both sides:
#
# - **input side** — when does it fire? Its top-activating contexts (tokens shaded by
#   `c_i / max c_i`), its activation histogram, and its **density**
#   `p_i = P(c_i(x) > 0)` over held-out tokens;
# - **output side** — what does it write? The direct logit effect of its decoder direction
#   through the final norm and the unembedding, `e_i = (γ ⊙ centre(W_dec[i])) W_U^T`, whose
#   largest and smallest entries are the tokens it **promotes** and **suppresses**;
# - **ground truth** (storyworld only) — every token carries known labels, so "latent i fires"
#   can be scored as a classifier of each binary concept `y`:
#   `precision = P(y | c_i > 0)`, `recall = P(c_i > 0 | y)`, `F1 = 2PR / (P + R)`.
#
# Braun et al. 2024 (§3.4 and the appendix; `papers/e2e-sae/`) ask whether e2e latents, which are
# fewer and fire less often at equal CE increase, stay interpretable; they answer with automated
# interpretability scores and qualitative feature studies (no significant loss). Here we build the
# dashboards for one SAE per method at matched CE increase, browse them interactively
# (`saelab.studies.browser.Browser`, ipywidgets), and export standalone HTML dashboards.
#
# **Seeds.** `05` trains every SAE once per seed. The dashboards, the browser's first view and
# the summary's original keys (`methods`, `runs`, `target_ce_increase`) are the first seed's;
# each other seed's runs are picked at its own target and summarised the same way, and
# `summary.json["over_seeds"]` holds every number of `methods` (the report-wide ones:
# `d_sae`, `alive`, `median_density_alive`, `latents_f1_over_threshold`, `concepts_covered`,
# `n_concepts`, ...) and `target_ce_increase` over all seeds: one record
# `{key, method, metric, mean, sd, n, lo, hi, seeds, per_seed}` per number (`key` the summary
# entry holding the first seed's value, `method` None for a scalar; `lo`, `hi` the 95%
# t-interval over seeds, NaN with one seed; `saelab.studies.stats.over_seeds`).

# %% tags=["parameters"]
model: str = "storyworld"  # frozen model the SAEs were trained on
dataset: str = "storyworld"  # held-out tokens the dashboards are computed on
sae_run: str = "outputs/reference/05_pareto/ref"  # a 05_pareto run folder (sweep.csv, runs/)
target_ce: float = 0.0  # CE increase to match runs at (0 means the sweep's common target)
method: str = "e2e"  # the SAE the browser opens on and whose dashboard is shown first
methods: list = ["local", "e2e", "e2e+ds", "topk", "gtopk"]  # one exported dashboard per method
n_ctx: int = 128  # tokens per row
n_tokens: int = 32_768  # held-out tokens each report is computed on
n_contexts: int = 8  # top contexts kept per latent (one per sequence)
n_latents: int = 24  # latents per exported dashboard
order: str = "f1"  # which latents to export: f1 (best label match), density, or spread
prompt: str = "Lily was happy. She said that the red ball was big."  # text for the prompt search
concept: str = "in_quote"  # storyworld concept for the label search
f1_threshold: float = 0.5  # a latent matches a concept when its F1 is above this
out_dir: str = "outputs/06_feature_browser/interactive-{time}"  # run folder (saelab.runs sets it)

# %%
import json
import time

import pandas as pd
from IPython.display import HTML, display

import saelab as sl
from saelab.runs import notebook_out_dir, resolve, resolve_input
from saelab.studies import browser as br
from saelab.studies import compare, plots, stats

out = notebook_out_dir(out_dir)  # from the repo root; {time}: a fresh folder
(out / "figures").mkdir(parents=True, exist_ok=True)
t_start = time.time()
methods = list(dict.fromkeys([*methods, method]))
lm = sl.load_model(resolve_input(model))
labelled = dataset == "storyworld"  # ground-truth labels exist only for storyworld
data = sl.token_dataset(resolve_input(dataset), lm.tokenizer, n_ctx, split="validation",
                        n_tokens=n_tokens, labels=labelled)  # fmt: skip
note = "" if labelled else " (no ground-truth labels: label-based parts are skipped)"
print(f"{model}: {sl.model_info(lm)}; {data.n_tokens:,} held-out tokens{note}")

# %% [markdown]
# ## 1. One SAE per method, at matched CE increase
#
# From the sweep of notebook 05 we take, per method and seed, the run whose CE increase is
# closest (in log space) to one target: by default the middle of the range the three ReLU methods
# of that seed share (`compare.common_target`; the median CE increase when their ranges do not
# overlap). TopK and g-SAE runs vary k rather than a penalty, so theirs is the k nearest the same
# target. The table shows the first seed.

# %%
sweep = compare.load_sweep(resolve(sae_run))
seeds = sorted(int(s) for s in sweep.seed.unique())
relu = [m for m in ("local", "e2e", "e2e+ds") if m in set(sweep.method)]
targets = {s: compare.match_target(sweep[sweep.seed == s], relu or methods, target_ce)
           for s in seeds}  # fmt: skip
picks = {s: compare.closest(sweep[sweep.seed == s], methods, targets[s]) for s in seeds}
target, picked = targets[seeds[0]], picks[seeds[0]]
picked[["run", "ce_increase", "l0", "alive"]]

# %% [markdown]
# ## 2. Reports: everything the dashboards show, computed once
#
# `br.build_report` runs the model once over the held-out tokens (`features.collect`; a g-SAE
# gets its `dL/dx` from the true next tokens) and keeps, per latent, the top contexts, the
# histogram, the density, the promoted/suppressed tokens and the concept scores. Then the
# density of every latent, per method.

# %%
reports = {}
for m in methods:
    run = picked.loc[m, "run"]
    reports[m] = br.build_report(lm, sl.load_sae(picked.loc[m, "sae_path"]), data, n_tokens,
                                 name=f"{m} · {run}", n_contexts=n_contexts)  # fmt: skip
rows = {m: br.summary(r, f1_threshold=f1_threshold) for m, r in reports.items()}
table = pd.DataFrame.from_dict(rows, orient="index")
table.insert(0, "run", picked["run"])
table.to_csv(out / "reports.csv")
fig = plots.density_hist({m: r.density for m, r in reports.items()},
                         path=out / "figures" / "density.png", n_tokens=n_tokens)  # fmt: skip
table

# %% [markdown]
# The same summary for every other seed's runs (reports built and dropped one at a time), and
# each number's mean and 95% t-interval over seeds.

# %%
tables = {seeds[0]: table}
for s in seeds[1:]:
    tables[s] = pd.DataFrame.from_dict({m: br.summary(br.build_report(
        lm, sl.load_sae(picks[s].loc[m, "sae_path"]), data, n_tokens, n_contexts=n_contexts),
        f1_threshold=f1_threshold) for m in methods}, orient="index")  # fmt: skip
rows = []
for s, t in tables.items():
    rows += stats.seed_rows(s, "target_ce_increase", targets[s])
    rows += stats.seed_rows(s, "methods", t.drop(columns="run", errors="ignore"))
over = stats.over_seeds(rows)
seed_table = pd.DataFrame(over).drop(columns=["seeds", "per_seed"])
seed_table.to_csv(out / "over_seeds.csv", index=False)
seed_table

# %% [markdown]
# The picked runs side by side (first seed): how close their CE increases are, and how many
# latents fire on the held-out tokens here.

# %%
ce = picked.ce_increase.astype(float)
print(f"seed {seeds[0]}, target CE +{target:.3f}; picked runs from CE +{ce.min():.3f} to "
      f"+{ce.max():.3f} ({ce.max() / ce.min():.1f}x apart)")  # fmt: skip
for m, row in table.iterrows():
    print(f"  {plots.method_label(m):7s} {row.run:28s} CE +{picked.loc[m, 'ce_increase']:.3f}  "
          f"L0 {picked.loc[m, 'l0']:5.1f}  fires on {int(row.alive):4d} of {row.d_sae} latents  "
          f"median density {row.median_density_alive:.2%}")  # fmt: skip

# %% [markdown]
# **How to read it.** In the `paper` run (2M tokens per SAE, 2 seeds, not converged) the three ReLU
# SAEs picked sit at CE +0.055 to +0.064, within 10% of the target. TopK and g-SAE do not: even at
# the smallest k of the sweep (8) they reach only +0.022 to +0.024, so their rows are better
# reconstructions, not matched ones. Compare them with each other, not with the ReLU rows.
#
# The e2e latents fire on about a third as many tokens as local's (median density 0.99% against
# 3.2%). That is what L0 5.8 against 15.2 over the same ~500 latents means: e2e spends fewer, rarer
# latents per token, not fewer latents. Not every latent fires on these 32,768 tokens (7 of local's
# 512, 13 of e2e's, 30 of e2e+ds's stay silent), while 05 counts every latent of all three alive
# over its 500,000-token window: those are rare latents, not dead ones. The density figure says how
# many never fired here.

# %% [markdown]
# ## 3. The browser
#
# Pick any SAE of the sweep (dropdown; reports of the runs above are reused, others are built on
# first use), a latent by index, the latents firing most on a typed prompt, or (storyworld) the
# latent that best matches a label. In a live kernel the view updates on each choice; in an
# executed notebook the widget shows as its repr, so the next cells show the same views
# statically.

# %%
by_run = {picked.loc[m, "run"]: r for m, r in reports.items()}
browser = br.Browser.from_sweep(
    lm,
    data,
    sweep,
    initial=picked.loc[method, "run"],
    reports=by_run,
    n_tokens=n_tokens,
    n_contexts=n_contexts,
)
display(browser.widget)

# %% [markdown]
# ### Latents firing on a prompt
#
# The prompt is tokenized (with the BOS the training rows start with), run through the model, and
# latents are ranked by their largest activation over its tokens (BOS excluded).

# %%
hits = browser.search_prompt(prompt, n=5)
display(HTML(browser.prompt_view.value + browser.view.value))

# %% [markdown]
# ### The latent that best matches a label
#
# `search_label` picks the latent with the highest F1 between "fires" and the concept.

# %%
if labelled and concept in (browser.report.concept_names or []):
    best = browser.search_label(concept)
    display(HTML(browser.view.value))
else:
    best = None
    print(f"label search skipped: no concept {concept!r} on {dataset}")

# %%
rep = browser.report
i0, v0, p0 = hits[0] if hits else (None, 0.0, 0)
if hits:
    top = float(rep.ctx_acts[i0, 0, rep.before])
    print(f"prompt ({method}): latent {i0} fires most, {v0:.3g} on token "
          f"{browser.prompt_tokens[p0]!r}; its top dataset context peaks at {top:.3g}; it fires "
          f"on {float(rep.density[i0]):.2%} of held-out tokens")  # fmt: skip
if best is not None:
    name, f1, prec, rec = rep.best_concepts(best, 1)[0]
    f1c = float(rep.f1[best, rep.concept_names.index(concept)])
    print(f"label {concept!r}: best latent {best}, F1 {f1c:.2f} (detectors have F1 above "
          f"{f1_threshold:g}); its own best concept {name!r}: F1 {f1:.2f}, precision {prec:.2f}, "
          f"recall {rec:.2f}")  # fmt: skip

# %% [markdown]
# **How to read it.** In the `paper` run the e2e latent that fires most on the prompt (441)
# fires on the `L` of "Lily", the first token of a name. The label search shows the limit of
# "one latent, one concept": the best e2e latent for `in_quote` has precision 0.54 but recall
# 0.19. When it fires the token is inside a quote a little over half the time, and it fires on
# only one quoted token in five. A quote is a span of tokens and nothing forces an e2e SAE to
# mark every token of it if the output does not need it. Try another `concept` (the 103 names
# are in `browser.report.concept_names`) or another `method` to see whether local does better.

# %% [markdown]
# ## 4. How many latents match a ground-truth concept?
#
# For every alive latent, its best F1 over the 103 storyworld concepts; the curve gives the
# fraction of latents whose best match is above x. A latent above the dashed line
# (`f1_threshold`) is, to a good approximation, a detector of one known variable; many useful
# latents will not be (storyworld labels cover only part of what the model tracks), so this is
# a lower bound on interpretability, not a score.

# %%
if labelled:
    fig = br.best_f1_plot(reports, f1_threshold, path=out / "figures" / "best_f1.png")
    display(table[["alive", "latents_f1_over_threshold", "median_best_f1_alive",
                   "concepts_covered", "n_concepts"]])  # fmt: skip

# %%
if labelled:
    for m, row in table.iterrows():
        n, alive = int(row.latents_f1_over_threshold), int(row.alive)
        print(f"{plots.method_label(m):7s} {n:3d} of {alive:4d} latents that fire "
              f"({n / max(alive, 1):.1%}) detect a concept (F1 > {f1_threshold:g}); "
              f"{int(row.concepts_covered)} of {int(row.n_concepts)} concepts covered; "
              f"median best F1 {row.median_best_f1_alive:.2f}")  # fmt: skip
    if len(seeds) > 1:
        print(f"detectors over {len(seeds)} seeds, mean [95% t-interval]:")
        for m in table.index:
            st = stats.seed_stat(over, key="methods", method=m, metric="latents_f1_over_threshold")
            print(f"  {plots.method_label(m):7s} {stats.seed_text(st, '.1f')}")

# %% [markdown]
# **How to read it.** In the `paper` run (2 seeds) local has the most concept detectors of the three
# ReLU SAEs, 32.0 [19.3, 44.7] against e2e's 17.0 [4.3, 29.7] and e2e+ds's 25.5 [-6.3, 57.3]; the
# intervals overlap, so two seeds do not establish a difference. What is clearer is the typical
# latent: its best F1 falls from 0.20 (local) to 0.10 (e2e), while all three cover about as many of
# the 103 concepts (16-21). A latent that fires rarely has low recall on any concept that spans
# many tokens, and e2e's latents fire a third as often (section 2).
#
# Braun et al. found no significant loss of interpretability for e2e latents, measured by automated
# interpretability. Storyworld's labels measure something narrower (does one latent track one
# labelled variable?), so this is not a contradiction; it is the one measure here on which e2e looks
# worse. (Notebook 09 averages over concepts, not latents, and there e2e is close to local: a
# typical e2e latent matches no label well, but most labels still find one that does.) TopK and
# g-SAE have four times as many latents and cover more concepts (25 / 23), but most of their latents
# are rare, which is why their median best F1 is lowest (0.05 / 0.04).

# %% [markdown]
# ## 5. Dashboards to keep and share
#
# Two exports per method, of the same `n_latents` latents (chosen by `order`):
#
# - `dashboards/<method>.html`: saelab's own page, self-contained (inline styles and SVG, no
#   script, no network), a section `id="latent-<i>"` per latent, with the storyworld concept
#   matches;
# - `neuronpedia/<method>/`: the batch JSON Neuronpedia ingests (what SAEDashboard's
#   `NeuronpediaRunner` writes: top contexts, promoted and suppressed tokens, density, the
#   activation and logit histograms) and `index.html`, a viewer drawn from those files
#   (`saelab.studies.neuronpedia`; docs/interop.md says why SAEDashboard itself is not used).

# %%
from saelab.studies import neuronpedia  # noqa: E402

exported = {}
for m, r in reports.items():
    latents = br.choose_latents(r, n_latents, by=order)
    path = br.export_html(r, latents, out / "dashboards" / f"{m}.html")
    np_dir = neuronpedia.export(r, latents, out / "neuronpedia" / m, model_id=model,
                                sae_set=f"{m}-saelab", n_ctx=n_ctx, dataset=dataset)  # fmt: skip
    exported[m] = dict(path=str(path), latents=latents, neuronpedia=str(np_dir))
    exported[m] |= br.summary(r, latents, f1_threshold)
main_page = exported[method]["path"]  # the page of the SAE the browser opened on
display(HTML(br.render_latent_html(reports[method], exported[method]["latents"][0])))

# %%
for m, e in exported.items():
    extra = (f"; {e['exported_f1_over_threshold']} of them match a concept with F1 > "
             f"{f1_threshold}") if "exported_f1_over_threshold" in e else ""  # fmt: skip
    print(f"{m:7s}: {len(e['latents'])} latents -> {e['path']} and {e['neuronpedia']}/{extra}")

# %%
summary = dict(
    sae_run=sae_run, target_ce_increase=target, method=method, order=order, n_tokens=n_tokens,
    dashboard=str(main_page), runs=picked["run"].to_dict(),
    methods=exported,
    prompt_top_latent=i0, label_search={"concept": concept, "latent": best}, seeds=seeds,
    over_seeds=over,
    loaded_runs=sorted({r for s in seeds for r in picks[s].run}),  # what pruning keeps
    seconds=time.time() - t_start,
)  # fmt: skip
(out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
print(f"done in {summary['seconds']:.0f} s; outputs in {out}")
