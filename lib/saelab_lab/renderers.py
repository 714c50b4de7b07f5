"""The renderers of the generated tables: one function per table, reading a reference run.

Each returns a Markdown table from the run's files (`tables.RunFolder`); a missing file or key is
a TableError naming the run, the file and the key. What the papers report beside the storyworld
numbers is in `paper.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from saelab.studies.stats import interval_sign
from saelab_lab import paper
from saelab_lab.tables import (
    RunFolder,
    TableError,
    md_table,
    num,
    over_seeds,
    pct,
    seed_cell,
    seeds_note,
    stats_cell,
    with_ci,
)

METHOD_NAMES = {"gtopk": "g-SAE", "topk": "TopK"}


def _method(m: str) -> str:
    return METHOD_NAMES.get(m, m)


def _phi(run_name: str) -> str:
    """'local_sparsity=0.3' -> 'phi 0.3'; 'topk_k=32_seed=1' -> 'k 32' (the seed is a column)."""
    key, _, value = re.sub(r"_seed=\d+$", "", run_name).partition("=")
    value = value[:-2] if value.endswith(".0") else value
    return f"{'k' if key.endswith('_k') else 'phi'} {value}"


# --- 00_storyworld -----------------------------------------------------------------------------


def render_storyworld_report(run: RunFolder) -> str:
    def g(k):
        return run.get(k, file="metrics.json")

    train = f"{g('train_tokens') / 1e6:.1f}M tokens, {g('train_time_s') / 60:.0f} min"
    speed = f"{g('forward_tokens_per_s') / 1e3:.0f}k tokens/s (batch 64 x {g('n_ctx')})"
    return md_table(["", "value"], [
        [f"validation CE ({g('val_tokens'):,} held-out tokens)",
         f"**{num(g('val_ce'))}** nats/token"],
        ["bigram / unigram baselines (fitted on train)",
         f"{num(g('bigram_ce'))} / {num(g('unigram_ce'))}"],
        [f"pronoun agreement ({g('n_pronoun_positions'):,} he/she positions)",
         num(g("pronoun_agreement"))],
        [f"quote closing, top-1 ({g('n_quote_close_positions'):,} closing quotes)",
         num(g("quote_close_acc"))],
        ["parameters", f"{g('n_params'):,}"],
        ["training (by the `full` preset)", train],
        ["forward pass", speed],
    ])  # fmt: skip


# --- 05_pareto and its studies: the README's claims ----------------------------------------------

ALIVE_FEWER = 0.01  # "fewer alive latents" when e2e's are below local's by more than 1% of them
RESTORES = 0.5  # e2e+ds "restores" the L2 ratio when it is at least halfway from e2e's to local's


def _gsae_by_k(run: RunFolder, metric: str) -> tuple[list[str], list[float], list[float]]:
    g = run.get("gsae_vs_topk", f"{metric}/gtopk")
    t = run.get("gsae_vs_topk", f"{metric}/topk")
    ks = sorted(g, key=float)
    return [f"{float(k):g}" for k in ks], [g[k] for k in ks], [t[k] for k in ks]


def _last_layer(rec: dict) -> str:
    keys = [k for k in rec if k.startswith("ds_mse/resid_post.")]
    if not keys:
        raise TableError(f"no ds_mse/resid_post.* key in {list(rec)}")
    return max(keys, key=lambda k: int(k.rsplit(".", 1)[1]))


def _diff_rec(run: RunFolder, k, metric: str) -> dict:
    for r in run.get("gsae_minus_topk"):
        if float(r["k"]) == float(k) and r["metric"] == metric:
            return r
    raise TableError(f"table {run.table!r}: run {run.path}: summary.json['gsae_minus_topk'] has "
                     f"no record for k={k}, metric={metric!r}")  # fmt: skip


def _by_k(run: RunFolder, metric: str, word: str) -> str:
    ks, _, _ = _gsae_by_k(run, metric)
    signs = {k: interval_sign(_diff_rec(run, k, metric)) for k in ks}
    low = [k for k in ks if signs[k] == "lower"]
    high = [k for k in ks if signs[k] == "higher"]
    parts = [f"{word} at every k" if len(low) == len(ks) else
             f"{word} at k = {', '.join(low)}" if low else f"not {word} at any k"]  # fmt: skip
    if high:
        parts.append(f"higher at k = {', '.join(high)}")
    return "; ".join(parts)


def render_claims(run: RunFolder) -> str:
    target = run.get("target_ce_increase")
    t2 = run.get("table2_seeds")
    by = {m: [r for r in t2 if r["method"] == m] for m in ("local", "e2e")}
    alive_e = sum(r["alive"] for r in by["e2e"]) / len(by["e2e"])
    alive_l = sum(r["alive"] for r in by["local"]) / len(by["local"])
    fewer = "fewer" if alive_e < alive_l * (1 - ALIVE_FEWER) else "not fewer"
    ratio = run.get("l0_ratio")
    ks, dg, dt = _gsae_by_k(run, "dead_frac")
    ce_d = [_diff_rec(run, k, "ce_increase") for k in ks]
    free_d = [_diff_rec(run, k, "ce_nolabel") for k in ks]
    conv = run.get("convergence")
    converged = ("yes, by both criteria" if conv["all"] else
                 f"no: {conv['n_converged']} of {conv['n_tested']} runs plateau")  # fmt: skip
    ds = run.sibling("10_downstream")
    closest = {m: ds.record("closest_runs", method=m) for m in ("local", "e2e", "e2e+ds")}
    last = _last_layer(closest["local"])
    near = ds.need(closest["local"], "near", "closest_runs")
    r_e = closest["e2e"][last] / closest["local"][last]
    r_ds = closest["e2e+ds"][last] / closest["local"][last]
    l2 = {m: over_seeds(ds, key="matched", method=m, metric="l2_ratio")
          for m in ("local", "e2e", "e2e+ds")}  # fmt: skip
    l2m = {m: r["mean"] for m, r in l2.items()}
    restores = l2m["e2e+ds"] - l2m["e2e"] >= RESTORES * (l2m["local"] - l2m["e2e"])
    ds_r = {k: stats_cell(over_seeds(ds, key=k), 1)
            for k in ("ds_mse_ratio_e2e_local", "ds_mse_ratio_e2eds_local")}  # fmt: skip
    geo = run.sibling("07_geometry")
    d_e = [geo.record("within_differences", difference="local - e2e", seed=s) for s in (0, 1)]
    d_ds = [geo.record("within_differences", difference="local - e2e+ds", seed=s) for s in (0, 1)]
    st = run.sibling("08_steering")
    by_seed = st.get("ratios_by_seed")  # every seed's ratios with their bootstrap CIs
    alphas = sorted({float(r["alpha"]) for r in by_seed})
    over = [over_seeds(st, key="ratios", method="g-sae / topk", metric="ratio", alpha=a)
            for a in alphas]  # fmt: skip
    steer = ("reproduced" if all(r["ci_lo"] > paper.STEER_RATIO for r in by_seed) else
             "g-SAE steers better, below 5x" if all(r["ci_lo"] > 1 for r in by_seed) else
             "not reproduced")  # fmt: skip
    twins = st.get("twins")
    shared = next(t for t in twins if t["shared_init"])
    null = next((t for t in twins if t["pair"].startswith("topk")), None)
    twin_text = (f"{pct(shared['frac_above_0_9'])} of g-SAE directions have a TopK twin (cos > "
                 f"0.9, same init); other-seed TopK null "
                 f"{pct(null['frac_above_0_9']) if null else 'n/a'}")  # fmt: skip
    gt = run.sibling("09_ground_truth")
    f1 = [stats_cell(over_seeds(gt, key="per_method", method=m, metric="mean_f1"))
          for m in ("local", "e2e", "e2e+ds", "topk", "gtopk")]  # fmt: skip
    return md_table(["claim", "paper", "storyworld"], [
        ["SAEs converged (loss plateau over the last 20% of steps; NMSE falls with k)", "",
         f"{converged} ({seeds_note(run)} below)"],
        ["results settled: the doubling test (the sweep again at half the budget)", "",
         _doubling_claim(run.sibling("12_doubling"))],
        ["L0(e2e) / L0(local) at matched CE increase", f"{paper.L0_RATIO} ({paper.E2E_SETTING})",
         f"{stats_cell(ratio['linear'], 2)} (CE +{num(target)}, linear in CE); "
         f"{stats_cell(ratio['log_ce'], 2)} (log CE); {stats_cell(ratio['closest'], 2)} "
         "(closest runs)"],
        ["fewer alive latents for e2e", paper.FEWER_ALIVE,
         f"{fewer}: e2e {alive_e:.0f} vs local {alive_l:.0f} alive at CE +{num(target)}"],
        ["g-SAE vs TopK at equal k: dead latents", paper.GSAE_DEAD,
         f"{_by_k(run, 'dead_frac', 'fewer')} (k = {', '.join(ks)}: "
         f"{'/'.join(pct(x) for x in dg)} vs {'/'.join(pct(x) for x in dt)})"],
        ["g-SAE vs TopK at equal k: CE increase", paper.GSAE_CE,
         f"{_by_k(run, 'ce_increase', 'lower')}; g-SAE − TopK "
         f"{', '.join(stats_cell(d, 4) for d in ce_d)}; without the label "
         f"{', '.join(stats_cell(d, 4) for d in free_d)} (k = {', '.join(ks)})"],
        ["downstream MSE at the last layer, e2e vs local (Fig. 2)",
         paper.DOWNSTREAM,
         f"e2e {ds_r['ds_mse_ratio_e2e_local']}x local, e2e+ds "
         f"{ds_r['ds_mse_ratio_e2eds_local']}x (CE +{num(ds.get('target_ce_increase'))}); "
         f"{r_e:.1f}x and {r_ds:.1f}x (first seed's closest runs to CE +{near:g})"],
        ["L2 ratio `‖x̂‖/‖x‖` (Table 5, positions > 0)", paper.L2_RATIO,
         f"e2e {stats_cell(l2['e2e'], 2)} vs local {stats_cell(l2['local'], 2)}; e2e+ds "
         f"{'restores' if restores else 'does not restore'} ({stats_cell(l2['e2e+ds'], 2)})"],
        ["within-SAE NN cosine, local − e2e / local − e2e+ds (Fig. 3)", paper.WITHIN_NN_COS,
         f"{with_ci(d_e[0], 'ours')} / {with_ci(d_ds[0], 'ours')} (seed 0); "
         f"{with_ci(d_e[1], 'ours')} / {with_ci(d_ds[1], 'ours')} (seed 1)"],
        ["steering: probability added, g-SAE / TopK", f"> {paper.STEER_RATIO:g}x",
         ", ".join(f"{stats_cell(o, 2)} (α {a:g})" for a, o in zip(alphas, over, strict=True))
         + f"; {steer} (by every seed's bootstrap CI)"],
        ["g-SAE directions near-copies of TopK's (the steering test's premise)", "",
         twin_text],
        ["ground truth: mean best single-latent F1, local / e2e / e2e+ds / TopK / g-SAE",
         paper.AUTOINTERP, " / ".join(f1)],
    ])  # fmt: skip


# --- papers/e2e-sae ----------------------------------------------------------------------------


def render_e2e_sweep(run: RunFolder) -> str:
    rows = [r for r in run.csv("sweep.csv") if r.get("method") in ("local", "e2e", "e2e+ds")]
    if not rows:
        raise TableError(f"table {run.table!r}: run {run.path}: sweep.csv has no ReLU rows")
    for k in ("method", "sparsity", "l0", "alive", "ce_increase", "seed"):
        if k not in rows[0]:
            raise TableError(f"table {run.table!r}: run {run.path}: sweep.csv has no column "
                             f"{k!r} (it has {list(rows[0])})")  # fmt: skip
    order = {"local": 0, "e2e": 1, "e2e+ds": 2}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], float(r["sparsity"])), []).append(r)
    return md_table(["method", "phi", "seeds", "L0", "alive", "CE increase"], [
        [m, f"{phi:g}", str(len(g)), seed_cell([r["l0"] for r in g], 1),
         seed_cell([r["alive"] for r in g], 0), seed_cell([r["ce_increase"] for r in g], 4)]
        for (m, phi), g in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))
    ])  # fmt: skip


def render_e2e_table2(run: RunFolder) -> str:
    t2 = run.get("table2_seeds")
    brackets = run.get("brackets")
    target = num(run.get("target_ce_increase"))
    rows = []
    for m in ("local", "e2e", "e2e+ds"):
        g = [r for r in t2 if r["method"] == m]
        if not g:
            raise TableError(f"table {run.table!r}: run {run.path}: table2_seeds has no {m!r}")
        br = [b for b in brackets if b["method"] == m]
        rows.append(
            [
                m,
                seed_cell([r["l0"] for r in g], 1),
                seed_cell([r["l0_log_ce"] for r in g], 1),
                seed_cell([r["alive"] for r in g], 0),
                f"{seed_cell([r['closest_ce'] for r in g])} / "
                f"{seed_cell([r['closest_l0'] for r in g], 1)}",
                f"{sum(bool(b['bracketed']) for b in br)} of {len(br)}",
                paper.TABLE2_L0[m],
            ]
        )
    ratio = run.get("l0_ratio")
    rows.append(["**L0(e2e) / L0(local)**", f"**{stats_cell(ratio['linear'], 2)}**",
                 f"**{stats_cell(ratio['log_ce'], 2)}**", "",
                 f"{stats_cell(ratio['closest'], 2)}", "", f"**{paper.L0_RATIO}**"])  # fmt: skip
    return md_table([f"method ({seeds_note(run)})", f"L0 at CE +{target}, linear in CE",
                     "L0, log CE", "alive", "closest runs: CE / L0",
                     "seeds with runs within 20% on both sides",
                     f"paper ({paper.E2E_SETTING}): L0"], rows)  # fmt: skip


def render_e2e_downstream(run: RunFolder) -> str:
    recs = [run.record("matched", method=m) for m in ("local", "e2e", "e2e+ds")]
    layers = sorted((k for k in recs[0] if k.startswith("ds_mse/")),
                    key=lambda k: int(k.rsplit(".", 1)[1]))  # fmt: skip
    last = layers[-1].replace("ds_mse/", "ds_ev/")
    cols = [*layers, "ds_mse_mean_ours", "ds_mse_mean_e2e_sae", last, "l2_ratio"]

    def cell(m, c):
        return stats_cell(over_seeds(run, key="matched", method=m, metric=c), 2 if c == "l2_ratio"
                          else 3)  # fmt: skip

    header = [f"method (interpolated at CE +{num(run.get('target_ce_increase'))}; "
              f"{seeds_note(run)})"]  # fmt: skip
    header += [f"ds MSE {k.split('/')[1]}" for k in layers]
    header += ["mean ds MSE, ours (all later resid_post)",
               "mean ds MSE, e2e_sae's (later resid_pre)", f"ds EV {last.split('/')[1]}",
               "L2 ratio (positions > 0)"]  # fmt: skip
    return md_table(header, [[r["method"], *(cell(r["method"], c) for c in cols)]
                             for r in recs])  # fmt: skip


def render_e2e_downstream_closest(run: RunFolder) -> str:
    recs = [run.record("closest_runs", method=m) for m in ("local", "e2e", "e2e+ds")]
    last = _last_layer(recs[0])
    near = run.need(recs[0], "near", "closest_runs")

    def cell(m, c, digits=3):
        return stats_cell(
            over_seeds(run, key="closest_runs", method=m, metric=c, near=near), digits
        )

    return md_table(
        [f"method (closest run to CE +{near:g}; {seeds_note(run)})", "run (first seed)",
         "CE increase", "L0", f"ds MSE {last.split('/')[1]}", "L2 ratio"],
        [[r["method"], _phi(r["run"]), cell(r["method"], "ce_increase"),
          cell(r["method"], "l0", 1), cell(r["method"], last), cell(r["method"], "l2_ratio", 2)]
         for r in recs],
    )  # fmt: skip


def render_e2e_geometry(run: RunFolder) -> str:
    comp = run.get("comparisons")

    def cell(comparison: str, ci: bool) -> str:
        rec = next((c for c in comp if c.get("comparison") == comparison), None)
        if rec is None:
            return ""
        return with_ci(rec) if ci else num(rec["mean"])

    drift = {(d["method"], d["seed"]): d["cos_to_init"] for d in run.get("drift_from_init")}
    methods = ("local", "e2e", "e2e+ds", "random")
    return md_table(["comparison", *methods], [
        ["within SAE, seed 0", *(cell(f"{m} s0", m != "random") for m in methods)],
        ["within SAE, seed 1", *(cell(f"{m} s1", m != "random") for m in methods)],
        ["cross-seed (seed 0 -> seed 1)", *(cell(f"{m} s0 -> s1", m != "random") for m in methods)],
        ["cross-type (seed 0 -> local seed 1)", "",
         *(cell(f"{m} s0 -> local s1", m != "random") for m in methods[1:])],
        ["cosine of each direction to its initial one (seed 0)",
         *(num(drift[(m, 0)], 2) if (m, 0) in drift else "" for m in methods)],
    ])  # fmt: skip


def render_e2e_geometry_diff(run: RunFolder) -> str:
    rows = []
    for diff in ("local - e2e", "local - e2e+ds"):
        recs = [run.record("within_differences", difference=diff, seed=s) for s in (0, 1)]
        rows.append([diff, *(with_ci(r, "ours") for r in recs), f"{recs[0]['paper']:g}"])
    return md_table(["within-SAE difference", "seed 0", "seed 1", "paper (GPT-2)"], rows)


def render_ground_truth(run: RunFolder) -> str:
    rows = []
    for m in ("local", "e2e", "e2e+ds", "topk", "gtopk"):
        r = run.record("per_method", method=m)

        def c(k, digits=3, m=m):
            return stats_cell(over_seeds(run, key="per_method", method=m, metric=k), digits)

        def p(k, m=m):
            return stats_cell(over_seeds(run, key="per_method", method=m, metric=k), fmt=pct)

        rows.append([_method(m), _phi(run.need(r, "run", f"per_method[{m}]")),
                     c("ce_increase"), c("l0", 1), c("alive", 0), c("mean_auroc"), c("mean_f1"),
                     p("frac_f1_gt_0.5"), p("explained_frac"),
                     p("explained_frac_rare")])  # fmt: skip
    n_out = len(run.get("excluded_concepts"))
    alive = f"fired on the {run.get('eval_tokens'):,} tokens"  # not the 500k alive window
    return md_table([f"method ({seeds_note(run)})", "run (first seed)", "CE increase", "L0",
                     alive, f"mean best AUROC ({n_out} concepts over half the tokens left out)",
                     "mean best F1", "concepts with F1 > 0.5", "explained (any)",
                     "explained (rare)"], rows)  # fmt: skip


def render_feature_browser(run: RunFolder) -> str:
    rows = []
    for m in ("local", "e2e", "e2e+ds", "topk", "gtopk"):
        r = run.get("methods", m)
        f = lambda k, r=r, m=m: run.need(r, k, f"methods[{m}]")  # noqa: E731

        def c(k, digits=1, m=m):
            return stats_cell(over_seeds(run, key="methods", method=m, metric=k), digits)

        rows.append([_method(m), f"{c('latents_f1_over_threshold')} of {f('d_sae')}",
                     f"{c('concepts_covered')} of {f('n_concepts')}",
                     c("median_density_alive", 4)])  # fmt: skip
    return md_table([f"method ({seeds_note(run)})", "latents with a concept at F1 > 0.5",
                     "concepts covered", "median density of alive latents"], rows)  # fmt: skip


# --- papers/g-sae ------------------------------------------------------------------------------


def render_gsae_vs_topk(run: RunFolder) -> str:
    ks, cg, ct = _gsae_by_k(run, "ce_increase")
    _, ng, nt = _gsae_by_k(run, "nmse")
    _, dg, dt = _gsae_by_k(run, "dead_frac")
    rows = []
    for i, k in enumerate(ks):
        d = {m: _diff_rec(run, k, m) for m in ("ce_increase", "ce_nolabel", "nmse", "dead_frac")}
        dead_cell = stats_cell(d["dead_frac"], fmt=lambda x: pct(x, 2))
        rows.append(
            [
                k,
                num(ct[i], 4),
                num(cg[i], 4),
                stats_cell(d["ce_increase"], 4),
                stats_cell(d["ce_nolabel"], 4),
                num(nt[i], 4),
                num(ng[i], 4),
                stats_cell(d["nmse"], 4),
                pct(dt[i]),
                pct(dg[i]),
                dead_cell,
            ]
        )
    return md_table([f"k ({seeds_note(run)})", "CE increase TopK", "CE increase g-SAE",
                     "g-SAE − TopK", "g-SAE without label − TopK", "NMSE TopK", "NMSE g-SAE",
                     "g-SAE − TopK", "dead TopK", "dead g-SAE", "g-SAE − TopK"], rows)  # fmt: skip


def _prob(x: float) -> str:
    return f"{x:.2g}" if x >= 0.01 else f"{x:.5f}".rstrip("0")


def render_steering(run: RunFolder) -> str:
    added = run.get("prob_added")
    rows = []
    for r in run.get("ratios"):
        a = r["alpha"]
        by = {p["directions"]: p for p in added if p.get("alpha") == a}
        cells = []
        for d in ("topk", "g-sae", "random"):
            d = d if d in by else {"g-sae": "gtopk"}.get(d, d)  # either name of the g-SAE
            if d not in by:
                raise TableError(f"table {run.table!r}: run {run.path}: prob_added has no "
                                 f"{d!r} record at alpha {a}")  # fmt: skip
            cells.append(_prob(by[d]["mean"]))
        over = over_seeds(run, key="ratios", method="g-sae / topk", metric="ratio", alpha=a)
        rows.append([f"{a:g}", *cells, with_ci(r, "ratio", 2), stats_cell(over, 2),
                     r.get("paper", "> 5")])  # fmt: skip
    return md_table(["alpha", "TopK", "g-SAE", "random directions",
                     "g-SAE / TopK, first seed [95% bootstrap CI]",
                     f"g-SAE / TopK ({seeds_note(run)})", "paper"], rows)  # fmt: skip


def render_twins(run: RunFolder) -> str:
    """08_steering: how many directions of one SAE have a near-copy (cosine > 0.9) in another;
    a g-SAE and the TopK SAE of its seed share their initialisation, another seed is the null."""
    return md_table(["directions of -> nearest in", "shared init", "with a twin (cos > 0.9)",
                     "mean nearest cosine"],
                    [[r["pair"], "yes" if r["shared_init"] else "no", pct(r["frac_above_0_9"]),
                      num(r["mean_cos"])] for r in run.get("twins")])  # fmt: skip


def _setting_cell(rec: dict, key: str, digits: int = 4, fmt: Callable | None = None) -> str:
    """`stats_cell` of an 11_gsae_study setting, whose intervals are `key_lo`, `key_hi`."""
    lo, hi = rec.get(f"{key}_lo"), rec.get(f"{key}_hi")
    n = 1 if lo is None or hi is None or lo != lo else 2  # no interval: the value alone
    return stats_cell(dict(mean=rec[key], lo=lo, hi=hi, n=n), digits, fmt)


def render_gsae_study(run: RunFolder) -> str:
    """11_gsae_study: every setting's overlap, CE (with and without the label), NMSE, dead
    latents and steering ratio, mean [95% t-interval over seeds] (steering: bootstrap CI over
    latents and contexts, seeds pooled), and the verdicts where the g-SAE differs from TopK."""
    ratios = {(r["setting"], float(r["alpha"])): r for r in run.get("steering_ratios")}
    verdicts = {v["setting"]: v for v in run.get("verdicts")}
    rows = []
    for rec in run.get("settings"):
        name = rec["setting"]
        steer = [ratios.get((name, a)) for a in (1.0, 2.0)]
        steer_cells = [with_ci(r, "ratio", 2) if r else "—" for r in steer]
        v = verdicts.get(name)
        verdict = (f"faithfulness {v['faithfulness']}; dead latents {v['dead_latents']}; "
                   f"steering {v['steering']}" if v else "")  # fmt: skip
        rows.append([name, num(rec["overlap"], 2), _setting_cell(rec, "ce_increase"),
                     _setting_cell(rec, "ce_nolabel"), _setting_cell(rec, "nmse"),
                     _setting_cell(rec, "dead_frac", fmt=lambda x: pct(x, 2)), *steer_cells,
                     verdict])  # fmt: skip
    n = len(run.get("seeds"))
    return md_table([f"setting (k {run.get('k')}, {n} seeds)", "overlap with TopK(z)",
                     "CE increase (with label)", "CE increase (no label)", "NMSE", "dead",
                     "steering ratio α 1", "steering ratio α 2",
                     f"verdict (overlap <= {run.get('max_overlap'):g})"], rows)  # fmt: skip


# --- 12_doubling ------------------------------------------------------------------------------


def _signed_pct(x) -> str:
    if x is None or x != x:
        return "n/a"
    return ("+" if float(x) > 0 else "") + pct(x)


def _doubling_rows(run: RunFolder, how: str = "linear") -> list[dict]:
    return [r for r in run.get("doubling") if r["how"] == how]


def _doubling_change(rec: dict) -> str:
    return stats_cell(rec, fmt=_signed_pct)


def _tokens(n) -> str:
    return f"{int(n) / 1e6:g}M"


def _doubling_budgets(run: RunFolder) -> tuple[str, str]:
    """The half and full token budgets of a 12_doubling run, e.g. ("1M", "2M")."""
    budgets = run.get("budgets")
    return _tokens(min(b["half"] for b in budgets)), _tokens(min(b["full"] for b in budgets))


def render_doubling(run: RunFolder) -> str:
    half, full = _doubling_budgets(run)
    target, tol = run.get("target_ce_increase"), run.get("tol")
    log = {r["result"]: r for r in _doubling_rows(run, "log_ce")}
    rows = []
    for r in _doubling_rows(run):
        ratio = "/" in r["result"]
        f = (lambda x: num(x, 2)) if ratio else (lambda x: num(x, 1))
        rows.append([r["result"], f(r["half"]), f(r["full"]), _doubling_change(r),
                     _doubling_change(log[r["result"]]) if r["result"] in log else "",
                     f"**{r['verdict']}**"])  # fmt: skip
    return md_table(
        [f"at CE +{num(target)}", f"half budget ({half})", f"full budget ({full})",
         "change, linear in CE", "change, log CE", f"verdict (±{pct(tol, 0)}, linear)"],
        rows,
    )  # fmt: skip


def _doubling_claim(run: RunFolder) -> str:
    """The claims table's cell: the doubling test of the sweep (12_doubling beside it)."""
    rows = _doubling_rows(run)
    l0 = [r for r in rows if r["result"].startswith("L0 ")]
    half, full = _doubling_budgets(run)
    ratio = run.record("doubling", how="linear", result="L0(e2e) / L0(local)")
    return (f"{half} → {full} tokens: L0 at CE +{num(run.get('target_ce_increase'))} "
            + ", ".join(f"{r['result'][3:]} {_doubling_change(r)} ({r['verdict']})" for r in l0)
            + f"; L0(e2e) / L0(local) {num(ratio['half'], 2)} → {num(ratio['full'], 2)}, "
            f"{_doubling_change(ratio)} ({ratio['verdict']}; settled = inside "
            f"±{pct(run.get('tol'), 0)})")  # fmt: skip


# name -> (renderer, the notebook of the run a marker must cite)
RENDERERS: dict[str, tuple[Callable[[RunFolder], str], str]] = {
    "storyworld_report": (render_storyworld_report, "00_storyworld"),
    "claims": (render_claims, "05_pareto"),
    "e2e_sweep": (render_e2e_sweep, "05_pareto"),
    "e2e_table2": (render_e2e_table2, "05_pareto"),
    "e2e_downstream": (render_e2e_downstream, "10_downstream"),
    "e2e_downstream_closest": (render_e2e_downstream_closest, "10_downstream"),
    "e2e_geometry": (render_e2e_geometry, "07_geometry"),
    "e2e_geometry_diff": (render_e2e_geometry_diff, "07_geometry"),
    "ground_truth": (render_ground_truth, "09_ground_truth"),
    "feature_browser": (render_feature_browser, "06_feature_browser"),
    "gsae_vs_topk": (render_gsae_vs_topk, "05_pareto"),
    "steering": (render_steering, "08_steering"),
    "twins": (render_twins, "08_steering"),
    "gsae_study": (render_gsae_study, "11_gsae_study"),
    "doubling": (render_doubling, "12_doubling"),
}
