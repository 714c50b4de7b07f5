"""Latent dashboards in Neuronpedia's format: the batch JSON that Neuronpedia ingests, written from
a `browser.LatentReport`, and a standalone viewer page that renders those same files.

Neuronpedia (neuronpedia.org) builds its feature pages from folders of `batch-<n>.json` files,
the output of SAEDashboard's `NeuronpediaRunner`: per batch `{"model_id", "layer", "sae_set",
"features": [...]}`, per feature its top activating contexts (`activations`: `tokens`, `values`,
`qualifying_token_index`, `bin_min` / `bin_max` / `bin_contains`), the tokens its decoder
direction promotes and suppresses (`pos_str` / `pos_values`, `neg_str` / `neg_values`), its
density (`frac_nonzero`) and two histograms (`freq_hist_data_*`: its nonzero activations;
`logits_hist_data_*`: its direct logit effects over the whole vocabulary). `export` writes that
folder, plus `skipped_indexes.json` (latents that never fired: Neuronpedia marks them dead) and
`index.html`, a viewer that reads the batches back and draws one section per latent.

Why not run SAEDashboard itself (docs/interop.md, "Dashboards"): its runner takes a
TransformerLens `HookedTransformer`, and sae-dashboard 0.8 pins `transformers<4.57`,
`transformer-lens<3`, `datasets<4` and `safetensors<0.5`, while saelab needs `transformers>=5`
(nnsight 0.8); the two cannot share an environment. The report here is computed by saelab's own
nnsight pass (`browser.build_report`), so any model `sl.load_model` reads gets dashboards.

    report = browser.build_report(lm, sae, data, n_tokens=32_768)
    folder = neuronpedia.export(report, browser.choose_latents(report, 64), "np/",
                                model_id="gpt2-small", sae_set="res-saelab")  # fmt: skip
"""

from __future__ import annotations

import json
from pathlib import Path

from saelab.core.models import parse_site
from saelab.studies.browser import LatentReport

DIGITS = 3  # SAEDashboard rounds every value it writes to 3 decimals (FeatureProcessor)


def _round(values) -> list[float]:
    return [round(float(v), DIGITS) for v in values]


def _bins(counts, lo: float, hi: float) -> tuple[list[float], list[float]]:
    """(bar centres, bar heights) of a histogram with equal bins over [lo, hi]."""
    n = len(counts)
    width = (hi - lo) / n if n else 0.0
    return _round(lo + width * (b + 0.5) for b in range(n)), [float(c) for c in counts]


def feature_json(report: LatentReport, i: int, dataset: str = "", n_ctx: int = 0) -> dict:
    """One latent `i` of `report` as a Neuronpedia feature record (SAEDashboard's
    `NeuronpediaDashboardFeature.to_dict` keys; the neuron-alignment and correlation tables,
    which saelab does not compute, are empty lists as SAEDashboard writes them when off).

    Contexts: one `activations` entry per top context (padding dropped), `bin_min` -1 and
    `bin_max` the latent's largest activation, as SAEDashboard writes its "top activations"
    group; `qualifying_token_index` is the context's peak token. `n_prompts_total` is the
    report's positions over `n_ctx`, approximate when positions were left out (BOS, special
    tokens): the report keeps positions, not rows.
    """
    acts = []
    for ids, vals in zip(report.ctx_ids[i].tolist(), report.ctx_acts[i].tolist(), strict=True):
        keep = [j for j, t in enumerate(ids) if t >= 0]
        if not keep or vals[report.before] <= 0:
            continue  # a padding row: fewer sequences than contexts, or none fired
        acts.append(dict(
            bin_min=-1, bin_max=round(float(report.max_act[i]), DIGITS), bin_contains=-1,
            tokens=[report.vocab[ids[j]] for j in keep], values=_round(vals[j] for j in keep),
            qualifying_token_index=keep.index(report.before),
        ))  # fmt: skip
    up, down = report.logit_tokens(i, True), report.logit_tokens(i, False)
    freq_x, freq_h = _bins(report.hist[i].tolist(), 0.0, float(report.max_act[i]))
    if report.logit_hist is not None:
        lo, hi = report.logit_range[i].tolist()
        logit_x, logit_h = _bins(report.logit_hist[i].tolist(), lo, hi)
    else:
        logit_x, logit_h = [], []
    return dict(
        feature_index=int(i),
        neuron_alignment_indices=[], neuron_alignment_values=[], neuron_alignment_l1=[],
        correlated_neurons_indices=[], correlated_neurons_l1=[], correlated_neurons_pearson=[],
        correlated_features_indices=[], correlated_features_l1=[],
        correlated_features_pearson=[],
        neg_str=[t for t, _ in down], neg_values=_round(v for _, v in down),
        pos_str=[t for t, _ in up], pos_values=_round(v for _, v in up),
        frac_nonzero=float(report.density[i]),
        freq_hist_data_bar_values=freq_x, freq_hist_data_bar_heights=freq_h,
        logits_hist_data_bar_values=logit_x, logits_hist_data_bar_heights=logit_h,
        n_prompts_total=report.n_tokens // n_ctx if n_ctx else 0, n_tokens_in_prompt=n_ctx,
        dataset=dataset, activations=acts, decoder_weights_dist=[], vector=[],
    )  # fmt: skip


def batch_json(report: LatentReport, latents, model_id: str, sae_set: str, layer: int | None = None,
               dataset: str = "", n_ctx: int = 0) -> dict:  # fmt: skip
    """A Neuronpedia batch: `{"model_id", "layer", "sae_set", "features"}` for `latents`.

    `layer` defaults to the SAE site's layer (`resid_pre.3` -> 3); Neuronpedia names the SAE
    `<layer>-<sae_set>` (e.g. `3-res-saelab`) under `model_id`.
    """
    if layer is None:
        layer = parse_site(report.sae_info["site"]).layer
    feats = [feature_json(report, int(i), dataset, n_ctx) for i in latents]
    return dict(model_id=model_id, layer=int(layer), sae_set=sae_set, sae_id_suffix=None,
                features=feats)  # fmt: skip


def export(report: LatentReport, latents, folder, model_id: str, sae_set: str,
           layer: int | None = None, dataset: str = "", n_ctx: int = 0,
           batch_size: int = 128) -> Path:  # fmt: skip
    """Write `latents` of `report` as Neuronpedia batch files into `folder`, with
    `skipped_indexes.json` and `index.html` (the viewer). Refuses a folder that already holds an
    export.

    `skipped_indexes.json` lists the latents that never fired on the report's tokens and are not
    exported: Neuronpedia creates those as dead. SAEDashboard lists every latent it did not
    export, since it exports all the live ones; here a partial export (a chosen few latents)
    must not mark the live ones it left out as dead, so they are in neither file.

    Returns the folder. `batch_size`: features per `batch-<n>.json` (SAEDashboard's
    `n_features_at_a_time`).
    """
    folder = Path(folder)
    if (folder / "batch-0.json").exists():
        raise FileExistsError(f"{folder} already holds a Neuronpedia export (batch-0.json); "
                              "write to a new folder")  # fmt: skip
    latents = [int(i) for i in latents]
    if bad := [i for i in latents if not 0 <= i < report.d_sae]:
        raise ValueError(f"latents {bad} are out of range: the SAE has {report.d_sae} latents "
                         f"(valid: 0..{report.d_sae - 1})")  # fmt: skip
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    folder.mkdir(parents=True, exist_ok=True)
    batches = [batch_json(report, latents[s : s + batch_size], model_id, sae_set, layer, dataset,
                          n_ctx) for s in range(0, max(len(latents), 1), batch_size)]  # fmt: skip
    for n, b in enumerate(batches):
        (folder / f"batch-{n}.json").write_text(json.dumps(b), encoding="utf-8")
    chosen = set(latents)
    dead = [i for i in (report.density == 0).nonzero().flatten().tolist() if i not in chosen]
    skipped = dict(model_id=model_id, layer=str(batches[0]["layer"]), sae_set=sae_set,
                   log_sparsity=None, skipped_indexes=dead)  # fmt: skip
    (folder / "skipped_indexes.json").write_text(json.dumps(skipped), encoding="utf-8")
    (folder / "index.html").write_text(viewer_html(batches, report.name), encoding="utf-8")
    return folder


def read_export(folder) -> list[dict]:
    """The batches of an export folder, in order (plain JSON: nothing is executed)."""
    files = sorted(Path(folder).glob("batch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if not files:
        raise FileNotFoundError(f"no batch-<n>.json in {folder}: not a Neuronpedia export")
    return [json.loads(p.read_text(encoding="utf-8")) for p in files]


def viewer_html(batches: list[dict], title: str = "") -> str:
    """A standalone page (no network) that draws every feature of `batches` from the batch JSON
    itself, embedded as `<script type="application/json">` data, with a script: what it shows is
    what a reader of the files gets. Each feature is a section `id="latent-<i>"`."""
    head, rest = VIEWER.split("__DATA__")
    middle, tail = rest.split("__TITLE__")
    return head + _script_json(batches) + middle + _script_json(title or "SAE") + tail


def _script_json(value) -> str:
    """JSON that is inert inside a `<script>` element: no `<`, `>` or `&` characters at all
    (escaped as JSON's `\\u003c` ...), so no token string can close the element or open an HTML
    comment in it."""
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


VIEWER = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Neuronpedia export</title>
<style>
body{font-family:sans-serif;margin:16px 24px;max-width:1100px}
section{border-top:1px solid #ccc;padding:8px 0}
.ctx{font-family:monospace;font-size:13px;margin:2px 0;white-space:pre-wrap}
.tok{border-radius:2px}
.peak{outline:1px solid #333}
.logits{display:inline-block;vertical-align:top;margin-right:24px;font-size:13px}
.up{color:#1a7f37}.down{color:#b42318}
.caption{font-size:12px;color:#555;margin-bottom:6px}
</style></head>
<body><h1 id="title"></h1><p id="intro"></p><div id="features"></div>
<script type="application/json" id="np-batches">__DATA__</script>
<script>
"use strict";
const batches = JSON.parse(document.getElementById("np-batches").textContent);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};
const root = document.getElementById("features");
let n = 0;
for (const b of batches) {
  for (const f of b.features) {
    n += 1;
    const s = el("section");
    s.id = "latent-" + f.feature_index;
    s.dataset.latent = f.feature_index;
    s.appendChild(el("h2", "", "Latent " + f.feature_index + " \\u00b7 " + b.layer + "-" +
      b.sae_set + " \\u00b7 fires on " + (100 * f.frac_nonzero).toFixed(3) + "% of tokens"));
    for (const [key, cls, label] of [["pos", "up", "promotes"], ["neg", "down", "suppresses"]]) {
      const box = el("div", "logits " + cls);
      box.dataset.kind = label;
      box.appendChild(el("b", "", label));
      f[key + "_str"].forEach((t, j) => {
        const row = el("div", "logit");
        row.appendChild(el("code", "tok", t));
        row.appendChild(el("span", "", " " + f[key + "_values"][j].toFixed(3)));
        box.appendChild(row);
      });
      s.appendChild(box);
    }
    const hist = el("div", "hist");
    const h = f.freq_hist_data_bar_heights, top = Math.max(1, ...h);
    hist.title = "activation histogram (nonzero activations)";
    h.forEach((c) => {
      const bar = el("span", "bar");
      bar.style.cssText = "display:inline-block;width:8px;margin-right:1px;background:#e8a33d;" +
        "height:" + Math.round(60 * c / top) + "px";
      hist.appendChild(bar);
    });
    s.appendChild(hist);
    const top_act = f.activations.length ? f.activations[0].bin_max : 0;
    s.appendChild(el("div", "caption", "activation histogram: " + h.reduce((x, y) => x + y, 0) +
      " nonzero activations in " + h.length + " bins from 0 to " + top_act.toFixed(3)));
    s.appendChild(el("b", "", "Top activations"));
    for (const a of f.activations) {
      const line = el("div", "ctx");
      line.dataset.max = a.bin_max;
      a.tokens.forEach((t, j) => {
        const v = a.values[j], span = el("span", "tok", t);
        const alpha = a.bin_max > 0 ? Math.max(0, v) / a.bin_max : 0;
        span.style.background = "rgba(255,140,0," + alpha.toFixed(3) + ")";
        span.title = v.toFixed(3);
        if (j === a.qualifying_token_index) span.classList.add("peak");
        line.appendChild(span);
      });
      s.appendChild(line);
    }
    root.appendChild(s);
  }
}
document.getElementById("title").textContent = "Neuronpedia export: " + __TITLE__;
const first = batches[0] || {};
document.getElementById("intro").textContent = n + " latents of " + first.model_id +
  " layer " + first.layer + " (" + first.sae_set + "), from " + batches.length + " batch file(s)";
document.body.dataset.rendered = n;
</script>
</body></html>
"""
