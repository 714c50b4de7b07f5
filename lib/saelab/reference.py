"""Reference runs: the executed notebooks in `outputs/reference/` behind every number of README.md
and papers/*/README.md, checked for staleness, and the results tables generated from them.

    python -m saelab.reference check         # every reference run fresh, every notebook has one
    python -m saelab.reference tables        # rewrite the generated tables in place
    python -m saelab.reference tables --check   # exit 1 listing the tables that differ
    python -m saelab.reference regenerate    # `make reference`: rerun every reference run, then
                                             # rewrite the tables (--run-id paper: only those)

A reference run is **fresh** when its status is completed, its `config.json` records a clean git
tree, and the code cells of its executed `notebook.ipynb` equal those of the current
`notebooks/<nb>.py` (the cell papermill injects, tagged `injected-parameters`, left out;
trailing whitespace ignored). A study run that reads a 05_pareto run (`sae_run`) is stale too
when that run is missing or was started after it.

A generated table sits between two markers in a Markdown file:

    <!-- table: NAME from outputs/reference/05_pareto/ref -->
    ...                                  (written by `tables`; edit the renderer, not this)
    <!-- /table -->

`NAME` is a renderer of `RENDERERS`; it reads the cited run folder (its `summary.json`, or what
the renderer names) and, for the main job's tables, the studies run under the same run id
beside it (`outputs/reference/<study>/<run id>`); the caption names every file it read.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from saelab import runs

REFERENCE = Path("outputs") / "reference"  # relative to the repository root
REF_ID = "ref"  # the run id of the smoke-scale runs: outputs/reference/<notebook>/ref
PAPER_ID = "paper"  # the long reference sweep and its studies (the `paper` presets)
HALF_ID = "paper-half"  # the paper sweep at half its token budget (`paper_half`)
DOCS = ("README.md", "papers/*/README.md")  # the files whose tables are generated
# What `regenerate` runs, in order: (notebook, preset, run id). 05_pareto is the main job's sweep;
# the studies after it, under the same run id, read its SAEs (sae_run) when they declare that
# parameter, at their own preset of that name where they have one, else `default`.
JOBS = (
    ("00_storyworld", "report", REF_ID),
    ("01_local_sae", "default", REF_ID),
    ("02_e2e_sae", "default", REF_ID),
    ("03_e2e_ds_sae", "default", REF_ID),
    ("04_gradient_sae", "default", REF_ID),
    ("05_pareto", "default", REF_ID),
    *((study, "default", REF_ID) for study in runs.STUDIES),
    ("11_gsae_study", "default", REF_ID),  # trains its own TopK / g-SAE grid (reads no 05 run)
    ("05_pareto", "paper", PAPER_ID),  # long (not converged), 2 seeds: 52 min on 2 CPU cores
    *((study, runs.study_preset(study, "paper"), PAPER_ID) for study in runs.STUDIES),
    # the paper sweep's twin at half its budget, for the doubling test (12_doubling)
    ("05_pareto", "paper_half", HALF_ID),
    ("12_doubling", "paper", PAPER_ID),  # reads both: the doubling test (seconds)
    ("11_gsae_study", "paper", PAPER_ID),  # 141 min on 2 CPU cores (3 seeds, 19 SAEs each)
)


# ---------------------------------------------------------------------------------------------
# Staleness


def code_cells(nb) -> list[str]:
    """The code cells of a notebook (nbformat / jupytext object), papermill's injected cell left
    out, each with trailing whitespace removed from every line and from its end."""
    out = []
    for c in nb.cells:
        if c.cell_type != "code" or "injected-parameters" in c.metadata.get("tags", []):
            continue
        out.append("\n".join(line.rstrip() for line in c.source.splitlines()).rstrip())
    return out


def _source_cells(source: Path) -> list[str]:
    import jupytext

    return code_cells(jupytext.read(source))


def _diff_cells(ran: list[str], now: list[str]) -> str | None:
    """None when equal, else a short account of the first difference."""
    if ran == now:
        return None
    for i, (a, b) in enumerate(zip(ran, now, strict=False)):
        if a != b:
            k = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                     min(len(a), len(b)))  # fmt: skip
            line = a.count("\n", 0, k) + 1
            start = max(0, k - 25)
            was, has = a[start : k + 35], b[start : k + 35]
            return (f"code cell {i + 1} differs from the source at its line {line}: ran "
                    f"{was!r}, the source has {has!r}")  # fmt: skip
    return f"{len(ran)} code cells ran, the source has {len(now)}"


def check_run(folder: Path, root: Path = runs.ROOT) -> list[str]:
    """Why the reference run in `folder` (`.../<notebook>/<run id>`) is stale; [] when fresh."""
    import nbformat

    notebook = folder.parent.name
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return ["no config.json (not a saelab.runs run folder)"]
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        return [f"config.json is not valid JSON ({e})"]
    why = []
    status = cfg.get("status")
    if status is None:
        why.append("config.json records no status (a run from before statuses were recorded)")
    elif status != "completed":
        why.append(f"status is {status!r}, not 'completed'")
    git = cfg.get("git") or {}
    if git.get("dirty") is None:
        why.append("config.json records no git state")
    elif git["dirty"]:
        why.append(f"ran on a dirty git tree (at {str(git.get('sha'))[:10]})")
    source = root / "notebooks" / f"{notebook}.py"
    executed = folder / "notebook.ipynb"
    if not source.is_file():
        why.append(f"its notebook notebooks/{notebook}.py no longer exists")
    elif not executed.is_file():
        why.append("no executed notebook.ipynb")
    else:
        diff = _diff_cells(code_cells(nbformat.read(executed, as_version=4)),
                           _source_cells(source))  # fmt: skip
        if diff:
            why.append(diff)
    for name, value in read_runs(cfg.get("parameters") or {}).items():
        read = Path(value) if Path(value).is_absolute() else root / value
        try:
            read_cfg = json.loads((read / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            why.append(f"reads the run {value} ({name}), which is not a run folder")
        else:
            if str(read_cfg.get("started", "")) > str(cfg.get("started", "")):
                why.append(f"reads the run {value} ({name}), which was run again after it")
    return why


def read_runs(params: dict) -> dict[str, str]:
    """The run folders a notebook's parameters name: every non-empty `*_run` string (`sae_run`
    of the studies, `half_run` of 12_doubling)."""
    return {k: v for k, v in params.items() if k.endswith("_run") and isinstance(v, str) and v}


def check(root: Path = runs.ROOT) -> list[str]:
    """One line per stale reference run (`<folder>: <why>; <why>`) and per notebook without
    one; [] when every reference run is fresh."""
    ref = root / REFERENCE
    lines, have = [], set()
    for folder in sorted(p for p in ref.glob("*/*") if p.is_dir()):
        why = check_run(folder, root)
        if why:
            lines.append(f"{folder.relative_to(root)}: {'; '.join(why)}")
        else:
            have.add(folder.parent.name)
    for source in sorted((root / "notebooks").glob("[0-9]*.py")):
        if source.stem not in have:
            lines.append(f"notebooks/{source.name}: no fresh reference run under "
                         f"{REFERENCE / source.stem}")  # fmt: skip
    return lines


# ---------------------------------------------------------------------------------------------
# Tables


class TableError(ValueError):
    """A table cannot be rendered: a marker names an unknown renderer, or a run lacks a file or
    key the renderer reads (the message names the run, the file and the key)."""


@dataclass
class Run:
    """A cited run folder, read by a renderer; `read` collects the files read (for the caption)."""

    path: Path  # relative to `root`, as the marker spells it
    root: Path
    table: str
    read: list[str] = field(default_factory=list)

    def where(self, name: str) -> str:
        return f"{self.path}/{name}"

    def json(self, name: str = "summary.json") -> dict:
        f = self.root / self.path / name
        if not f.is_file():
            raise TableError(f"table {self.table!r}: run {self.path} has no {name}")
        if self.where(name) not in self.read:
            self.read.append(self.where(name))
        return json.loads(f.read_text())

    def get(self, *keys, file: str = "summary.json"):
        """`summary[k0][k1]...`; a missing key is a TableError naming run, file and key."""
        value = self.json(file)
        for i, k in enumerate(keys):
            try:
                value = value[k]
            except (KeyError, IndexError, TypeError):
                have = list(value) if isinstance(value, dict) else type(value).__name__
                path = "".join(f"[{x!r}]" for x in keys[: i + 1])
                raise TableError(f"table {self.table!r}: run {self.path}: {file} has no key "
                                 f"{path} (it has {have})") from None  # fmt: skip
        return value

    def record(self, key: str, file: str = "summary.json", **match) -> dict:
        """The record of the list `summary[key]` whose fields equal `match`."""
        for r in self.get(key, file=file):
            if all(r.get(k) == v for k, v in match.items()):
                return r
        raise TableError(f"table {self.table!r}: run {self.path}: {file}[{key!r}] has no record "
                         f"with {match}")  # fmt: skip

    def need(self, rec: dict, key: str, where: str):
        if key not in rec:
            raise TableError(f"table {self.table!r}: run {self.path}: {where} has no key "
                             f"{key!r} (it has {list(rec)})")  # fmt: skip
        return rec[key]

    def csv(self, name: str) -> list[dict]:
        f = self.root / self.path / name
        if not f.is_file():
            raise TableError(f"table {self.table!r}: run {self.path} has no {name}")
        self.read.append(self.where(name))
        with f.open() as fh:
            return list(csv.DictReader(fh))

    def sibling(self, notebook: str) -> Run:
        """The run of `notebook` under the same run id (the main job's studies)."""
        path = self.path.parent.parent / notebook / self.path.name
        if not (self.root / path).is_dir():
            raise TableError(f"table {self.table!r}: run {self.path} has no study run {path} "
                             "beside it (the main job runs them under the same id)")  # fmt: skip
        return Run(path, self.root, self.table, self.read)


def num(x, digits: int = 3) -> str:
    """A number with `digits` decimals; NaN as 'n/a'."""
    x = float(x)
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def with_ci(rec: dict, key: str = "mean", digits: int = 3) -> str:
    """`value [lo, hi]` from a record with `key`, `ci_lo`, `ci_hi`."""
    return f"{num(rec[key], digits)} [{num(rec['ci_lo'], digits)}, {num(rec['ci_hi'], digits)}]"


def stats_cell(rec: dict, digits: int = 3, fmt: Callable | None = None) -> str:
    """`mean [lo, hi]` from a record with `mean`, `lo`, `hi`, `n` (a `seed_stats` dict); the mean
    alone for one seed. `fmt` formats each number (default: `digits` decimals; e.g. `pct`)."""
    f = fmt or (lambda x: num(x, digits))
    if rec.get("n", 0) < 2:
        return f(rec["mean"])
    return f"{f(rec['mean'])} [{f(rec['lo'])}, {f(rec['hi'])}]"


def seed_cell(values, digits: int = 3) -> str:
    """`stats_cell` of values measured once per seed (95% t-interval, `studies.stats`)."""
    from saelab.studies.stats import seed_stats

    return stats_cell(seed_stats([float(v) for v in values]), digits)


def _over(run: Run, **match) -> dict:
    """The record of a study's `over_seeds` (saelab.studies.stats) whose fields equal `match`."""
    from saelab.studies.stats import seed_stat

    try:
        return seed_stat(run.get("over_seeds"), **match)
    except KeyError as e:
        raise TableError(f"table {run.table!r}: run {run.path}: summary.json['over_seeds']: "
                         f"{e.args[0]}, not one") from None  # fmt: skip


def _seeds_note(run: Run) -> str:
    n = len(run.get("seeds"))
    return f"mean [95% t-interval] over {n} seeds" if n > 1 else "one seed: no interval"


def pct(x, digits: int = 1) -> str:
    """A percentage; a nonzero value too small for `digits` decimals keeps 2 significant digits
    (0.049%, not 0.0%: a table must not show 0.0% against 0.0% and call one of them fewer)."""
    v = 100 * float(x)
    if v != 0 and abs(v) < 0.5 * 10**-digits:
        return f"{v:.2g}%"
    return f"{v:.{digits}f}%"


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


METHOD_NAMES = {"gtopk": "g-SAE", "topk": "TopK"}


def _method(m: str) -> str:
    return METHOD_NAMES.get(m, m)


def _phi(run_name: str) -> str:
    """'local_sparsity=0.3' -> 'phi 0.3'; 'topk_k=32_seed=1' -> 'k 32' (the seed is a column)."""
    key, _, value = re.sub(r"_seed=\d+$", "", run_name).partition("=")
    value = value[:-2] if value.endswith(".0") else value
    return f"{'k' if key.endswith('_k') else 'phi'} {value}"


# --- 00_storyworld -----------------------------------------------------------------------------


def render_storyworld_report(run: Run) -> str:
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
STEER_PAPER = 5.0  # the paper's steering ratio


def _gsae_by_k(run: Run, metric: str) -> tuple[list[str], list[float], list[float]]:
    g = run.get("gsae_vs_topk", f"{metric}/gtopk")
    t = run.get("gsae_vs_topk", f"{metric}/topk")
    ks = sorted(g, key=float)
    return [f"{float(k):g}" for k in ks], [g[k] for k in ks], [t[k] for k in ks]


def _where_lower(ks: list[str], a: list[float], b: list[float], word: str) -> str:
    low = [k for k, x, y in zip(ks, a, b, strict=True) if x < y]
    if len(low) == len(ks):
        return f"{word} at every k"
    return f"not {word} at any k" if not low else f"{word} at k = {', '.join(low)} only"


def _last_layer(rec: dict) -> str:
    keys = [k for k in rec if k.startswith("ds_mse/resid_post.")]
    if not keys:
        raise TableError(f"no ds_mse/resid_post.* key in {list(rec)}")
    return max(keys, key=lambda k: int(k.rsplit(".", 1)[1]))


def _diff_rec(run: Run, k, metric: str) -> dict:
    for r in run.get("gsae_minus_topk"):
        if float(r["k"]) == float(k) and r["metric"] == metric:
            return r
    raise TableError(f"table {run.table!r}: run {run.path}: summary.json['gsae_minus_topk'] has "
                     f"no record for k={k}, metric={metric!r}")  # fmt: skip


def _by_k(run: Run, metric: str, word: str) -> str:
    from saelab.studies.stats import interval_sign

    ks, _, _ = _gsae_by_k(run, metric)
    signs = {k: interval_sign(_diff_rec(run, k, metric)) for k in ks}
    low = [k for k in ks if signs[k] == "lower"]
    high = [k for k in ks if signs[k] == "higher"]
    parts = [f"{word} at every k" if len(low) == len(ks) else
             f"{word} at k = {', '.join(low)}" if low else f"not {word} at any k"]  # fmt: skip
    if high:
        parts.append(f"higher at k = {', '.join(high)}")
    return "; ".join(parts)


def render_claims(run: Run) -> str:
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
    l2 = {m: _over(ds, key="matched", method=m, metric="l2_ratio")
          for m in ("local", "e2e", "e2e+ds")}  # fmt: skip
    l2m = {m: r["mean"] for m, r in l2.items()}
    restores = l2m["e2e+ds"] - l2m["e2e"] >= RESTORES * (l2m["local"] - l2m["e2e"])
    ds_r = {k: stats_cell(_over(ds, key=k), 1)
            for k in ("ds_mse_ratio_e2e_local", "ds_mse_ratio_e2eds_local")}  # fmt: skip
    geo = run.sibling("07_geometry")
    d_e = [geo.record("within_differences", difference="local - e2e", seed=s) for s in (0, 1)]
    d_ds = [geo.record("within_differences", difference="local - e2e+ds", seed=s) for s in (0, 1)]
    st = run.sibling("08_steering")
    by_seed = st.get("ratios_by_seed")  # every seed's ratios with their bootstrap CIs
    alphas = sorted({float(r["alpha"]) for r in by_seed})
    over = [_over(st, key="ratios", method="g-sae / topk", metric="ratio", alpha=a)
            for a in alphas]  # fmt: skip
    steer = ("reproduced" if all(r["ci_lo"] > STEER_PAPER for r in by_seed) else
             "g-SAE steers better, below 5x" if all(r["ci_lo"] > 1 for r in by_seed) else
             "not reproduced")  # fmt: skip
    twins = st.get("twins")
    shared = next(t for t in twins if t["shared_init"])
    null = next((t for t in twins if t["pair"].startswith("topk")), None)
    twin_text = (f"{pct(shared['frac_above_0_9'])} of g-SAE directions have a TopK twin (cos > "
                 f"0.9, same init); other-seed TopK null "
                 f"{pct(null['frac_above_0_9']) if null else 'n/a'}")  # fmt: skip
    gt = run.sibling("09_ground_truth")
    f1 = [stats_cell(_over(gt, key="per_method", method=m, metric="mean_f1"))
          for m in ("local", "e2e", "e2e+ds", "topk", "gtopk")]  # fmt: skip
    return md_table(["claim", "paper", "storyworld"], [
        ["SAEs converged (loss plateau over the last 20% of steps; NMSE falls with k)", "",
         f"{converged} ({_seeds_note(run)} below)"],
        ["results settled: the doubling test (the sweep again at half the budget)", "",
         _doubling_claim(run.sibling("12_doubling"))],
        ["L0(e2e) / L0(local) at matched CE increase", "0.40 (GPT-2 L6, CE +0.145)",
         f"{stats_cell(ratio['linear'], 2)} (CE +{num(target)}, linear in CE); "
         f"{stats_cell(ratio['log_ce'], 2)} (log CE); {stats_cell(ratio['closest'], 2)} "
         "(closest runs)"],
        ["fewer alive latents for e2e", "yes",
         f"{fewer}: e2e {alive_e:.0f} vs local {alive_l:.0f} alive at CE +{num(target)}"],
        ["g-SAE vs TopK at equal k: dead latents", "fewer",
         f"{_by_k(run, 'dead_frac', 'fewer')} (k = {', '.join(ks)}: "
         f"{'/'.join(pct(x) for x in dg)} vs {'/'.join(pct(x) for x in dt)})"],
        ["g-SAE vs TopK at equal k: CE increase", "lower",
         f"{_by_k(run, 'ce_increase', 'lower')}; g-SAE − TopK "
         f"{', '.join(stats_cell(d, 4) for d in ce_d)}; without the label "
         f"{', '.join(stats_cell(d, 4) for d in free_d)} (k = {', '.join(ks)})"],
        ["downstream MSE at the last layer, e2e vs local (Fig. 2)",
         "e2e far higher, e2e+ds near local",
         f"e2e {ds_r['ds_mse_ratio_e2e_local']}x local, e2e+ds "
         f"{ds_r['ds_mse_ratio_e2eds_local']}x (CE +{num(ds.get('target_ce_increase'))}); "
         f"{r_e:.1f}x and {r_ds:.1f}x (first seed's closest runs to CE +{near:g})"],
        ["L2 ratio `‖x̂‖/‖x‖` (Table 5, positions > 0)", "e2e shrinks, e2e+ds restores",
         f"e2e {stats_cell(l2['e2e'], 2)} vs local {stats_cell(l2['local'], 2)}; e2e+ds "
         f"{'restores' if restores else 'does not restore'} ({stats_cell(l2['e2e+ds'], 2)})"],
        ["within-SAE NN cosine, local − e2e / local − e2e+ds (Fig. 3)", "0.166 / 0.04",
         f"{with_ci(d_e[0], 'ours')} / {with_ci(d_ds[0], 'ours')} (seed 0); "
         f"{with_ci(d_e[1], 'ours')} / {with_ci(d_ds[1], 'ours')} (seed 1)"],
        ["steering: probability added, g-SAE / TopK", "> 5x",
         ", ".join(f"{stats_cell(o, 2)} (α {a:g})" for a, o in zip(alphas, over, strict=True))
         + f"; {steer} (by every seed's bootstrap CI)"],
        ["g-SAE directions near-copies of TopK's (the steering test's premise)", "",
         twin_text],
        ["ground truth: mean best single-latent F1, local / e2e / e2e+ds / TopK / g-SAE",
         "(autointerp: e2e no worse)", " / ".join(f1)],
    ])  # fmt: skip


# --- papers/e2e-sae ----------------------------------------------------------------------------


def render_e2e_sweep(run: Run) -> str:
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


PAPER_TABLE2 = {"local": "69.4", "e2e": "27.5", "e2e+ds": "(similar to e2e)"}


def render_e2e_table2(run: Run) -> str:
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
                PAPER_TABLE2[m],
            ]
        )
    ratio = run.get("l0_ratio")
    rows.append(["**L0(e2e) / L0(local)**", f"**{stats_cell(ratio['linear'], 2)}**",
                 f"**{stats_cell(ratio['log_ce'], 2)}**", "",
                 f"{stats_cell(ratio['closest'], 2)}", "", "**0.40**"])  # fmt: skip
    return md_table([f"method ({_seeds_note(run)})", f"L0 at CE +{target}, linear in CE",
                     "L0, log CE", "alive", "closest runs: CE / L0",
                     "seeds with runs within 20% on both sides",
                     "paper (GPT-2 L6, CE +0.145): L0"], rows)  # fmt: skip


def render_e2e_downstream(run: Run) -> str:
    recs = [run.record("matched", method=m) for m in ("local", "e2e", "e2e+ds")]
    layers = sorted((k for k in recs[0] if k.startswith("ds_mse/")),
                    key=lambda k: int(k.rsplit(".", 1)[1]))  # fmt: skip
    last = layers[-1].replace("ds_mse/", "ds_ev/")
    cols = [*layers, "ds_mse_mean_ours", "ds_mse_mean_e2e_sae", last, "l2_ratio"]

    def cell(m, c):
        return stats_cell(_over(run, key="matched", method=m, metric=c), 2 if c == "l2_ratio"
                          else 3)  # fmt: skip

    header = [f"method (interpolated at CE +{num(run.get('target_ce_increase'))}; "
              f"{_seeds_note(run)})"]  # fmt: skip
    header += [f"ds MSE {k.split('/')[1]}" for k in layers]
    header += ["mean ds MSE, ours (all later resid_post)",
               "mean ds MSE, e2e_sae's (later resid_pre)", f"ds EV {last.split('/')[1]}",
               "L2 ratio (positions > 0)"]  # fmt: skip
    return md_table(header, [[r["method"], *(cell(r["method"], c) for c in cols)]
                             for r in recs])  # fmt: skip


def render_e2e_downstream_closest(run: Run) -> str:
    recs = [run.record("closest_runs", method=m) for m in ("local", "e2e", "e2e+ds")]
    last = _last_layer(recs[0])
    near = run.need(recs[0], "near", "closest_runs")

    def cell(m, c, digits=3):
        return stats_cell(_over(run, key="closest_runs", method=m, metric=c, near=near), digits)

    return md_table(
        [f"method (closest run to CE +{near:g}; {_seeds_note(run)})", "run (first seed)",
         "CE increase", "L0", f"ds MSE {last.split('/')[1]}", "L2 ratio"],
        [[r["method"], _phi(r["run"]), cell(r["method"], "ce_increase"),
          cell(r["method"], "l0", 1), cell(r["method"], last), cell(r["method"], "l2_ratio", 2)]
         for r in recs],
    )  # fmt: skip


def render_e2e_geometry(run: Run) -> str:
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


def render_e2e_geometry_diff(run: Run) -> str:
    rows = []
    for diff in ("local - e2e", "local - e2e+ds"):
        recs = [run.record("within_differences", difference=diff, seed=s) for s in (0, 1)]
        rows.append([diff, *(with_ci(r, "ours") for r in recs), f"{recs[0]['paper']:g}"])
    return md_table(["within-SAE difference", "seed 0", "seed 1", "paper (GPT-2)"], rows)


def render_ground_truth(run: Run) -> str:
    rows = []
    for m in ("local", "e2e", "e2e+ds", "topk", "gtopk"):
        r = run.record("per_method", method=m)

        def c(k, digits=3, m=m):
            return stats_cell(_over(run, key="per_method", method=m, metric=k), digits)

        def p(k, m=m):
            return stats_cell(_over(run, key="per_method", method=m, metric=k), fmt=pct)

        rows.append([_method(m), _phi(run.need(r, "run", f"per_method[{m}]")),
                     c("ce_increase"), c("l0", 1), c("alive", 0), c("mean_auroc"), c("mean_f1"),
                     p("frac_f1_gt_0.5"), p("explained_frac"),
                     p("explained_frac_rare")])  # fmt: skip
    n_out = len(run.get("excluded_concepts"))
    return md_table([f"method ({_seeds_note(run)})", "run (first seed)", "CE increase", "L0",
                     "alive", f"mean best AUROC ({n_out} concepts over half the tokens left out)",
                     "mean best F1", "concepts with F1 > 0.5", "explained (any)",
                     "explained (rare)"], rows)  # fmt: skip


def render_feature_browser(run: Run) -> str:
    rows = []
    for m in ("local", "e2e", "e2e+ds", "topk", "gtopk"):
        r = run.get("methods", m)
        f = lambda k, r=r, m=m: run.need(r, k, f"methods[{m}]")  # noqa: E731

        def c(k, digits=1, m=m):
            return stats_cell(_over(run, key="methods", method=m, metric=k), digits)

        rows.append([_method(m), f"{c('latents_f1_over_threshold')} of {f('d_sae')}",
                     f"{c('concepts_covered')} of {f('n_concepts')}",
                     c("median_density_alive", 4)])  # fmt: skip
    return md_table([f"method ({_seeds_note(run)})", "latents with a concept at F1 > 0.5",
                     "concepts covered", "median density of alive latents"], rows)  # fmt: skip


# --- papers/g-sae ------------------------------------------------------------------------------


def render_gsae_vs_topk(run: Run) -> str:
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
    return md_table([f"k ({_seeds_note(run)})", "CE increase TopK", "CE increase g-SAE",
                     "g-SAE − TopK", "g-SAE without label − TopK", "NMSE TopK", "NMSE g-SAE",
                     "g-SAE − TopK", "dead TopK", "dead g-SAE", "g-SAE − TopK"], rows)  # fmt: skip


def _prob(x: float) -> str:
    return f"{x:.2g}" if x >= 0.01 else f"{x:.5f}".rstrip("0")


def render_steering(run: Run) -> str:
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
        over = _over(run, key="ratios", method="g-sae / topk", metric="ratio", alpha=a)
        rows.append([f"{a:g}", *cells, with_ci(r, "ratio", 2), stats_cell(over, 2),
                     r.get("paper", "> 5")])  # fmt: skip
    return md_table(["alpha", "TopK", "g-SAE", "random directions",
                     "g-SAE / TopK, first seed [95% bootstrap CI]",
                     f"g-SAE / TopK ({_seeds_note(run)})", "paper"], rows)  # fmt: skip


def render_twins(run: Run) -> str:
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


def render_gsae_study(run: Run) -> str:
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


def _doubling_rows(run: Run, how: str = "linear") -> list[dict]:
    return [r for r in run.get("doubling") if r["how"] == how]


def _doubling_change(rec: dict) -> str:
    return stats_cell(rec, fmt=_signed_pct)


def _tokens(n) -> str:
    return f"{int(n) / 1e6:g}M"


def _doubling_budgets(run: Run) -> tuple[str, str]:
    """The half and full token budgets of a 12_doubling run, e.g. ("1M", "2M")."""
    budgets = run.get("budgets")
    return _tokens(min(b["half"] for b in budgets)), _tokens(min(b["full"] for b in budgets))


def render_doubling(run: Run) -> str:
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


def _doubling_claim(run: Run) -> str:
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
RENDERERS: dict[str, tuple[Callable[[Run], str], str]] = {
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

BLOCK = re.compile(
    r"(?P<open>^<!-- table: (?P<name>[\w-]+) from (?P<run>\S+) -->\n)(?P<body>.*?)"
    r"(?P<close><!-- /table -->)",
    re.S | re.M,
)


def render(name: str, run_path: str, root: Path = runs.ROOT) -> str:
    """The body of a table block: a caption naming the files read, a blank line, the table."""
    if name not in RENDERERS:
        raise TableError(f"unknown table {name!r}; the renderers are {sorted(RENDERERS)}")
    fn, notebook = RENDERERS[name]
    path = Path(run_path)
    if path.parent.name != notebook:
        raise TableError(f"table {name!r} renders a {notebook} run, not {run_path}")
    if not (root / path).is_dir():
        raise TableError(f"table {name!r}: run {run_path} does not exist")
    run = Run(path, root, name)
    table = fn(run)
    files = ", ".join(f"`{f}`" for f in run.read)
    return f"*Generated from {files} (`python -m saelab.reference tables`).*\n\n{table}\n\n"


def doc_files(root: Path = runs.ROOT) -> list[Path]:
    return [p for pattern in DOCS for p in sorted(root.glob(pattern))]


def render_file(text: str, root: Path = runs.ROOT) -> tuple[str, list[str], list[str]]:
    """`text` with every table block rendered (a block that cannot be rendered is left as it
    was), the blocks that changed (`<name> from <run>`) and the errors of those that could not."""
    changed, errors = [], []

    def sub(m: re.Match) -> str:
        try:
            body = render(m["name"], m["run"], root)
        except TableError as e:
            errors.append(str(e))
            return m[0]
        if body != m["body"]:
            changed.append(f"{m['name']} from {m['run']}")
        return m["open"] + body + m["close"]

    return BLOCK.sub(sub, text), changed, errors


def tables(root: Path = runs.ROOT, write: bool = True) -> list[str]:
    """Render every table block of the docs and return one line per block that differs from its
    rendering or cannot be rendered (`<file>: ...`). With `write`, rewrite the blocks that can be
    rendered, then raise TableError listing those that cannot."""
    lines, errors = [], []
    for f in doc_files(root):
        text = f.read_text()
        new, changed, errs = render_file(text, root)
        name = f.relative_to(root)
        lines += [f"{name}: table {c} differs from its rendering" for c in changed]
        errors += [f"{name}: {e}" for e in errs]
        if write and new != text:
            f.write_text(new)
    if write and errors:
        raise TableError("tables that cannot be rendered:\n  " + "\n  ".join(errors))
    return lines + errors


# ---------------------------------------------------------------------------------------------
# Regeneration


def plan(root: Path = runs.ROOT, run_ids=None) -> list[tuple[str, str, str]]:
    """The jobs `(notebook, preset, run id)` of `JOBS` (those with a run id in `run_ids`, or all)
    whose `outputs/reference/<nb>/<run id>` must be (re)run; raises RunExists for a completed one
    that is stale (or would be: a study of a 05 run that is rerun), since a completed reference
    run is never replaced: remove it (git rm -r) first."""
    todo, stale = [], []
    for nb, preset, rid in JOBS:
        if run_ids is not None and rid not in run_ids:
            continue
        folder = root / REFERENCE / nb / rid
        status = runs.run_status(folder)
        rerun = {(REFERENCE / n / r).as_posix() for n, _, r in todo}
        reads = [v for v in _job_params(nb, preset, rid).values() if v in rerun]
        if status == "completed":
            why = check_run(folder, root)
            why += [f"it reads {v}, which is rerun" for v in reads]
            if why:
                stale.append(f"{folder.relative_to(root)}: {'; '.join(why)}")
            continue  # fresh: kept
        todo.append((nb, preset, rid))
    made = {(REFERENCE / n / r).as_posix() for n, _, r in todo}
    missing = [f"{REFERENCE / nb / rid}: reads {v}, which is neither a completed run nor made "
               f"by these jobs (add its run id: --run-id {Path(v).name})"
               for nb, preset, rid in todo for v in _job_params(nb, preset, rid).values()
               if v not in made and runs.run_status(root / v) != "completed"]  # fmt: skip
    if missing:
        raise runs.RunExists("jobs that would read a run that is not there:\n  "
                             + "\n  ".join(missing))  # fmt: skip
    if stale:
        raise runs.RunExists(
            "these completed reference runs are stale and are never overwritten; remove them "
            "first (git rm -r FOLDER, or move them out of outputs/reference):\n  "
            + "\n  ".join(stale)
        )
    return todo


def _job_params(notebook: str, preset: str, rid: str) -> dict[str, str]:
    """The run folders a job of `JOBS` reads (`read_runs` of its preset): a study's `sae_run` is
    the 05_pareto run of its own run id (relative: portable across checkouts)."""
    try:
        params = read_runs(runs.load_preset(notebook, preset))
        declared = runs._declared_parameters(runs.paired_notebook(notebook))
    except FileNotFoundError:  # no such notebook or preset: it reads nothing (its run says why)
        return {}
    if "sae_run" in declared:
        params["sae_run"] = (REFERENCE / "05_pareto" / rid).as_posix()
    return params


def regenerate(root: Path = runs.ROOT, run_ids=None) -> None:
    """Run every job of `JOBS` (with a run id in `run_ids`, or all) that has no fresh completed
    run under `outputs/reference/<nb>/<run id>` (a failed or partial folder is moved aside by the
    runner), then write the tables. Refuses a dirty git tree, since every run records it."""
    if runs.git_state(root)["dirty"] is not False:
        raise RuntimeError("the git tree is dirty (or not a git checkout): commit first; a "
                           "reference run records the commit it ran")  # fmt: skip
    todo = plan(root, run_ids)
    runs.say(f"reference: {len(todo)} runs to make "
             f"({', '.join(f'{n}/{r}' for n, _, r in todo) or 'none'})")  # fmt: skip
    for nb, preset, rid in todo:
        reads = _job_params(nb, preset, rid)
        params = {"sae_run": reads["sae_run"]} if "sae_run" in reads else {}
        runs.run_notebook(nb, params, preset, rid, root / REFERENCE)
    changed = tables(root)
    runs.say(f"reference: tables rewritten ({len(changed)} changed)")


def main(argv: list[str] | None = None) -> int:
    doc = __doc__.split("\n")[0]
    ap = argparse.ArgumentParser(prog="python -m saelab.reference", description=doc)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="list stale reference runs and notebooks without one")
    t = sub.add_parser("tables", help="rewrite the generated tables of README.md, papers/*")
    t.add_argument("--check", action="store_true", help="write nothing; exit 1 listing diffs")
    g = sub.add_parser("regenerate", help="rerun the reference runs (make reference), then tables")
    g.add_argument("--run-id", action="append", help="only the jobs of this run id (repeatable)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "check":
            lines = check()
            print("\n".join(lines) if lines else "every reference run is fresh")
            return 1 if lines else 0
        if a.cmd == "tables":
            lines = tables(write=not a.check)
            print("\n".join(lines) if lines else "every table is up to date")
            return 1 if (lines and a.check) else 0
        regenerate(run_ids=a.run_id)
        return 0
    except (TableError, runs.RunExists, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
