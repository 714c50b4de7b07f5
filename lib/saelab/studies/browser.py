"""Feature browser: what one SAE latent does, as an ipywidgets UI and a standalone HTML dashboard.

A latent dashboard (Bricken et al. 2023, "Towards Monosemanticity"; Braun et al. 2024 §3.4 and
their appendix study e2e latents the same way) puts side by side, for one latent:

- its **top-activating contexts**, each token shaded by the latent's activation (alpha =
  activation / the latent's max over the dataset), one context per sequence;
- its **activation histogram** (nonzero activations) and its **density** (fraction of tokens on
  which it fires, `c > 0`);
- the tokens its decoder direction **promotes and suppresses** when written into the residual
  stream: the direct logit effect through the final norm's gain and the unembedding
  (`features.logit_effects`; the "logit lens" of the direction);
- on storyworld, the **ground-truth concepts it best matches**: "the latent fires" read as a
  classifier of each binary concept (`features.concepts`), scored by precision, recall and F1.

Data and view are split. `build_report` runs the model once and keeps only what the views show
(`LatentReport`: top contexts, histograms, logit tokens, concept scores; a few MB, no full
activation tensor). `render_latent_html` turns one latent into a self-contained HTML fragment
(inline styles and an inline SVG; no script, no network). `Browser` wraps reports in ipywidgets
and works headless (tests drive its Python side). `export_html` writes one standalone page.

    report = build_report(lm, sae, data, n_tokens=32_768)
    browser = Browser.from_sweep(lm, data, "outputs/05_pareto/main-v1", initial="e2e_sparsity=3.0")
    display(browser.widget); browser.select(12); browser.search_prompt("Lily was happy.")
    export_html(report, [3, 12, 40], "dashboard.html")
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from saelab.core.data import TokenDataset
from saelab.core.sae import SAE, load_sae
from saelab.studies import compare, features, plots

SHADE = "255,140,0"  # RGB of the activation shading (alpha carries the activation)


@dataclass
class LatentReport:
    """Everything the views show about every latent of one SAE (shapes: d latents, k contexts).

    Contexts are windows of `before + 1 + after` tokens centred on the latent's peak in one
    sequence (padding: id -1); the peak sits at index `before`.
    """

    name: str
    sae_info: dict  # site, architecture, d_sae, k
    n_tokens: int  # tokens the statistics were computed on
    density: Tensor  # [d] fraction of tokens with c > 0
    max_act: Tensor  # [d] largest activation
    mean_act: Tensor  # [d] mean activation where it fires (0 if it never does)
    hist: Tensor  # [d, n_bins] counts of nonzero activations in equal bins of [0, max_act]
    ctx_ids: Tensor  # [d, k, W] token ids of the top contexts, -1 = padding
    ctx_acts: Tensor  # [d, k, W] the latent's activation on those tokens
    before: int  # tokens shown before the peak
    logit_ids: Tensor  # [d, 2, n] token ids promoted (row 0) and suppressed (row 1)
    logit_vals: Tensor  # [d, 2, n] their direct logit effects
    vocab: dict[int, str]  # decoded string of every token id above
    concept_names: list[str] | None = None  # storyworld binary concepts (None without labels)
    precision: Tensor | None = None  # [d, C] P(concept | fires)
    recall: Tensor | None = None  # [d, C] P(fires | concept)
    f1: Tensor | None = None  # [d, C] harmonic mean of the two
    logit_hist: Tensor | None = None  # [d, n_bins] counts of its logit effects over the vocab
    logit_range: Tensor | None = None  # [d, 2] min and max of those effects (the bins' span)
    extra: dict = field(default_factory=dict)  # free-form provenance (run, method, ...)

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return int(self.density.numel())

    def token(self, i: int) -> str:
        """Decoded string of token id `i`."""
        return self.vocab.get(int(i), f"<{int(i)}>")

    def contexts(self, i: int) -> list[list[tuple[str, float]]]:
        """Top contexts of latent `i`: per context a list of (token string, activation)."""
        out = []
        for ids, acts in zip(self.ctx_ids[i].tolist(), self.ctx_acts[i].tolist(), strict=True):
            if ids[self.before] < 0:  # no context (the latent fired in fewer sequences)
                continue
            out.append([(self.token(t), a) for t, a in zip(ids, acts, strict=True) if t >= 0])
        return out

    def logit_tokens(self, i: int, promoted: bool = True) -> list[tuple[str, float]]:
        """(token string, direct logit effect) promoted (or suppressed) by latent `i`."""
        row = 0 if promoted else 1
        return [
            (self.token(t), v)
            for t, v in zip(self.logit_ids[i, row].tolist(), self.logit_vals[i, row].tolist(),
                            strict=True)
        ]  # fmt: skip

    def best_concepts(self, i: int, n: int = 3) -> list[tuple[str, float, float, float]]:
        """Latent `i`'s `n` best-matching concepts by F1: (name, F1, precision, recall)."""
        if self.f1 is None:
            return []
        order = self.f1[i].argsort(descending=True)[:n].tolist()
        return [(self.concept_names[c], float(self.f1[i, c]), float(self.precision[i, c]),
                 float(self.recall[i, c])) for c in order]  # fmt: skip

    def best_f1(self) -> Tensor:
        """Each latent's best F1 over concepts, `[d]` (zeros without labels)."""
        return self.f1.max(1).values if self.f1 is not None else torch.zeros(self.d_sae)

    def best_latent(self, concept: str) -> int:
        """The latent whose firing best matches `concept` (highest F1)."""
        if self.concept_names is None:
            raise ValueError("this report has no ground-truth labels (only storyworld has them)")
        if concept not in self.concept_names:
            raise ValueError(f"unknown concept {concept!r}; e.g. {self.concept_names[:5]}")
        return int(self.f1[:, self.concept_names.index(concept)].argmax())


# ---------------------------------------------------------------------------------------------
# Building a report: pure tensor functions, then `build_report` which runs the model once.


def top_contexts(
    acts: Tensor, tokens: Tensor, k: int = 8, before: int = 12, after: int = 4
) -> tuple[Tensor, Tensor]:
    """Top-`k` contexts per latent from `acts [R, T, d]` over `tokens [R, T]`.

    One context per sequence (its peak), the `k` sequences with the highest peak, so the list
    is not `k` neighbouring tokens of one story. Returns `ids [d, k, W]` (-1 = padding or no
    context) and `vals [d, k, W]`, `W = before + 1 + after`, peak at index `before`.
    """
    R, T, d = acts.shape
    row_max, row_pos = acts.max(dim=1)  # [R, d]
    k_ = min(k, R)
    peak, rows = row_max.topk(k_, dim=0)  # [k_, d]
    pos = row_pos.gather(0, rows)  # [k_, d]
    offs = torch.arange(-before, after + 1)
    p = pos[..., None] + offs  # [k_, d, W]
    valid = (p >= 0) & (p < T) & (peak[..., None] > 0)
    p = p.clamp(0, T - 1)
    r = rows[..., None].expand_as(p)
    ids = torch.where(valid, tokens[r, p], -1)
    vals = torch.where(valid, acts[r, p, torch.arange(d)[None, :, None]], 0.0)
    if k_ < k:  # fewer sequences than contexts asked for
        pad = (0, 0, 0, 0, 0, k - k_)
        ids = torch.nn.functional.pad(ids, pad, value=-1)
        vals = torch.nn.functional.pad(vals, pad, value=0.0)
    return ids.permute(1, 0, 2).contiguous(), vals.permute(1, 0, 2).contiguous()


def _bin_counts(rows: Tensor, values: Tensor, lo, span, d: int, n_bins: int) -> Tensor:
    """Counts `[d, n_bins]` of `values [M]`, each of latent `rows [M]`, in `n_bins` equal bins of
    `[lo, lo + span]` (scalars or `[M]`, per value); the top edge goes in the last bin."""
    b = ((values - lo) / span * n_bins).long().clamp_(0, n_bins - 1)
    return torch.bincount(rows * n_bins + b, minlength=d * n_bins).reshape(d, n_bins)


def act_histograms(flat: Tensor, max_act: Tensor, n_bins: int = 24) -> Tensor:
    """Counts `[d, n_bins]` of each latent's nonzero activations (`flat [N, d]`) over [0, max]."""
    n, j = (flat > 0).nonzero(as_tuple=True)
    return _bin_counts(j, flat[n, j], 0.0, max_act[j], flat.shape[1], n_bins)


def logit_histograms(effects: Tensor, n_bins: int = 24) -> tuple[Tensor, Tensor]:
    """Counts `[d, n_bins]` of each latent's direct logit effects `effects [d, V]` in equal bins
    of its own [min, max], and those ranges `[d, 2]` (Neuronpedia's logit histogram, written by
    `neuronpedia.py`)."""
    lo, hi = effects.min(1).values, effects.max(1).values
    d, V = effects.shape
    rows = torch.arange(d).repeat_interleave(V)
    span = (hi - lo).clamp(min=1e-12)
    counts = _bin_counts(rows, effects.flatten(), lo[rows], span[rows], d, n_bins)
    return counts, torch.stack([lo, hi], 1)


def concept_match(
    fires: Tensor, concepts: Tensor, chunk: int = 8192
) -> tuple[Tensor, Tensor, Tensor]:
    """Precision, recall and F1 `[d, C]` of "latent fires" (`fires [N, d]` bool) as a classifier
    of each concept (`concepts [N, C]` bool). Empty classes score 0."""
    d, C = fires.shape[1], concepts.shape[1]
    both = torch.zeros(d, C)
    for s in range(0, fires.shape[0], chunk):  # |fires & concept|, in chunks to bound memory
        both += fires[s : s + chunk].float().T @ concepts[s : s + chunk].float()
    n_fire = fires.sum(0).float()[:, None]  # [d, 1]
    n_con = concepts.sum(0).float()[None, :]  # [1, C]
    precision = both / n_fire.clamp(min=1)
    recall = both / n_con.clamp(min=1)
    f1 = 2 * both / (n_fire + n_con).clamp(min=1)  # = 2PR / (P + R)
    return precision, recall, f1


def decode_vocab(tokenizer, ids) -> dict[int, str]:
    """`{id: decoded string}` for the (non-negative) token ids in `ids`."""
    uniq = torch.unique(torch.as_tensor(ids).flatten())
    return {int(t): tokenizer.decode([int(t)]) for t in uniq.tolist() if t >= 0}


def report_from_activations(
    lm, sae: SAE, acts: features.Activations, name: str = "", n_contexts: int = 8,
    before: int = 12, after: int = 4, n_bins: int = 24, n_logit: int = 8,
) -> LatentReport:  # fmt: skip
    """A `LatentReport` from collected activations (`features.collect`) of `sae` on `lm`."""
    flat = acts.flat.float()  # [N, d]
    fires = flat > 0
    n_fire = fires.sum(0)
    max_act = flat.max(0).values.clamp(min=0)
    mean_act = flat.sum(0) / n_fire.clamp(min=1)
    ctx_ids, ctx_acts = top_contexts(acts.acts.float(), acts.tokens, n_contexts, before, after)
    effects = features.logit_effects(lm, sae.decoder_directions()).float().cpu()  # [d, V]
    n = min(n_logit, effects.shape[1])
    up, down = effects.topk(n, dim=-1), effects.topk(n, dim=-1, largest=False)
    logit_ids = torch.stack([up.indices, down.indices], 1)
    logit_vals = torch.stack([up.values, down.values], 1)
    logit_hist, logit_range = logit_histograms(effects, n_bins)
    vocab = decode_vocab(lm.tokenizer, torch.cat([ctx_ids.flatten(), logit_ids.flatten()]))
    names = precision = recall = f1 = None
    if acts.labels is not None:
        names, con = features.concepts(acts.labels)
        precision, recall, f1 = concept_match(fires, con)
    cfg = sae.cfg
    info = dict(
        site=cfg.site, architecture=cfg.architecture, d_sae=cfg.d_sae, k=getattr(cfg, "k", None)
    )
    return LatentReport(
        name=name, sae_info=info, n_tokens=flat.shape[0], density=n_fire.float() / flat.shape[0],
        max_act=max_act, mean_act=mean_act, hist=act_histograms(flat, max_act, n_bins),
        ctx_ids=ctx_ids, ctx_acts=ctx_acts, before=before, logit_ids=logit_ids,
        logit_vals=logit_vals, vocab=vocab, concept_names=names, precision=precision,
        recall=recall, f1=f1, logit_hist=logit_hist, logit_range=logit_range,
    )  # fmt: skip


def build_report(lm, sae: SAE, data, n_tokens: int = 32_768, name: str = "", **kw) -> LatentReport:
    """Run `lm` over ~`n_tokens` of `data` once and summarise every latent of `sae`.

    `kw` go to `report_from_activations` (n_contexts, before, after, n_bins, n_logit).
    """
    acts = features.collect(lm, sae, data, n_tokens)
    return report_from_activations(lm, sae, acts, name=name, **kw)


# ---------------------------------------------------------------------------------------------
# Prompt search: which latents fire on a typed text.


def prompt_activations(lm, sae: SAE, text: str) -> tuple[list[str], Tensor, int]:
    """Tokens of `text` (with the BOS the training rows start with), latents `[T, d]` on them,
    and how many leading tokens were added (1 for BOS, else 0).

    Goes through `features.collect`, so a g-SAE gets its dL/dx (from the prompt's own next
    tokens) exactly as in training.
    """
    if not text.strip():
        raise ValueError("the prompt is empty; type some text")
    tok = lm.tokenizer
    ids = tok(text)["input_ids"]
    n_added = 0
    if tok.bos_token_id is not None and (not ids or ids[0] != tok.bos_token_id):
        ids, n_added = [tok.bos_token_id, *ids], 1
    n_max = getattr(lm.config, "n_positions", None) or getattr(
        lm.config, "max_position_embeddings", len(ids)
    )
    ids = ids[:n_max]
    ds = TokenDataset(torch.tensor([ids]))
    acts = features.collect(lm, sae, ds, n_tokens=len(ids))
    return [tok.decode([t]) for t in ids], acts.acts[0], n_added


def rank_prompt_latents(acts: Tensor, n: int = 10, skip: int = 0) -> list[tuple[int, float, int]]:
    """The `n` latents with the largest max activation over positions `skip:` of `acts [T, d]`:
    (latent, max activation, position); latents that never fire are left out."""
    best, pos = acts[skip:].max(0)
    vals, idx = best.topk(min(n, best.numel()))
    return [(int(i), float(v), int(pos[i]) + skip) for v, i in zip(vals, idx, strict=True) if v > 0]


# ---------------------------------------------------------------------------------------------
# Views: HTML fragments with inline styles only (render in Jupyter, ipywidgets.HTML, a file).


def _show(text: str) -> str:
    """A token string as HTML: escaped, newlines made visible."""
    return html.escape(text).replace("\n", "↵")


def token_spans(tokens: list[tuple[str, float]], scale: float, peak: int | None = None) -> str:
    """Tokens as `<span>`s, background alpha = activation / `scale`, the peak outlined."""
    spans = []
    for j, (t, a) in enumerate(tokens):
        alpha = min(1.0, max(0.0, a / scale)) if scale > 0 else 0.0
        style = f"background:rgba({SHADE},{alpha:.2f});white-space:pre;border-radius:2px"
        if j == peak:
            style += ";outline:1px solid #b35900"
        spans.append(f'<span class="tok" style="{style}" title="{a:.3g}">{_show(t)}</span>')
    return "".join(spans)


def hist_svg(counts: Tensor, max_act: float, width: int = 240, height: int = 90) -> str:
    """An inline SVG bar chart of activation counts over equal bins of [0, `max_act`]."""
    counts = counts.float()
    top = float(counts.max()) if counts.numel() and counts.max() > 0 else 1.0
    n, plot_h = counts.numel(), height - 18
    bw = width / max(n, 1)
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{plot_h - c / top * plot_h:.1f}" width="{bw * 0.9:.1f}" '
        f'height="{c / top * plot_h:.1f}" fill="rgb({SHADE})"><title>{int(c)}</title></rect>'
        for i, c in enumerate(counts.tolist())
    )
    axis = (
        f'<line x1="0" y1="{plot_h}" x2="{width}" y2="{plot_h}" stroke="#888"/>'
        f'<text x="0" y="{height - 4}" font-size="10">0</text>'
        f'<text x="{width}" y="{height - 4}" font-size="10" text-anchor="end">{max_act:.3g}</text>'
        f'<text x="{width / 2}" y="{height - 4}" font-size="10" text-anchor="middle">activation'
        "</text>"
    )
    return (f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}">{bars}{axis}</svg>')  # fmt: skip


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f'<th style="text-align:left;padding:0 6px">{h}</th>' for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td style="padding:0 6px">{c}</td>' for c in r) + "</tr>" for r in rows
    )
    return (f'<div style="margin-right:18px"><b>{title}</b><table style="font-size:12px">'
            f"<tr>{head}</tr>{body}</table></div>")  # fmt: skip


def render_latent_html(report: LatentReport, i: int, n_concepts: int = 3) -> str:
    """A self-contained HTML `<section id="latent-i" data-latent="i">` for latent `i`."""
    if not 0 <= i < report.d_sae:
        raise IndexError(f"latent {i} out of range: this SAE has {report.d_sae} latents")
    dens, n = float(report.density[i]), report.n_tokens
    n_fire = round(dens * n)
    mx, mean = float(report.max_act[i]), float(report.mean_act[i])
    stats = (
        f'<p class="stats" style="margin:2px 0">density {dens:.3e} (fires on {n_fire:,} of '
        f"{n:,} tokens) · max activation {mx:.3g} · mean when firing {mean:.3g}</p>"
    )
    chip = '<code style="background:#eee;padding:0 3px">{}</code>'.format
    promoted = [[chip(_show(t)), f"{v:+.3f}"] for t, v in report.logit_tokens(i, True)]
    suppressed = [[chip(_show(t)), f"{v:+.3f}"] for t, v in report.logit_tokens(i, False)]
    panels = [
        f'<div style="margin-right:18px"><b>activation histogram</b><br>'
        f"{hist_svg(report.hist[i], mx)}</div>",
        _table("promoted tokens", ["token", "logit"], promoted),
        _table("suppressed tokens", ["token", "logit"], suppressed),
    ]
    if report.f1 is not None:
        rows = [[html.escape(c), f"{f:.2f}", f"{p:.2f}", f"{r:.2f}"]
                for c, f, p, r in report.best_concepts(i, n_concepts)]  # fmt: skip
        panels.append(_table("best-matching labels", ["concept", "F1", "prec", "rec"], rows))
    ctxs = report.contexts(i)
    if ctxs:
        lines = []
        for ctx, ids in zip(ctxs, report.ctx_ids[i].tolist(), strict=False):
            peak = report.before - sum(1 for t in ids[: report.before] if t < 0)
            top = ctx[peak][1]
            lines.append(
                f'<div class="ctx" style="font-family:monospace;font-size:12px;margin:2px 0">'
                f'<span style="color:#666;display:inline-block;width:4em">{top:.3g}</span>'
                f"{token_spans(ctx, mx, peak)}</div>"
            )
        body = "".join(lines)
    else:
        body = f"<p><i>never fires on these {n:,} tokens (dead here)</i></p>"
    title = f"latent {i}" + (f" · {html.escape(report.name)}" if report.name else "")
    return (
        f'<section class="latent" id="latent-{i}" data-latent="{i}" '
        f'style="border-top:1px solid #ccc;padding:6px 0;font-family:sans-serif">'
        f'<h3 style="margin:2px 0">{title}</h3>{stats}'
        f'<div style="display:flex;flex-wrap:wrap;align-items:flex-start">{"".join(panels)}</div>'
        f'<div class="contexts"><b>top contexts</b> (one per sequence; shade = activation / '
        f"max){body}</div></section>"
    )


def render_prompt_html(tokens: list[str], acts: Tensor, latent: int, scale: float) -> str:
    """The prompt's tokens shaded by latent `latent`'s activation (`acts [T, d]`) over `scale`."""
    a = acts[:, latent].tolist()
    spans = token_spans(list(zip(tokens, a, strict=True)), scale)
    return (f'<div class="prompt" style="font-family:monospace;font-size:13px">'
            f"<b>latent {latent} on the prompt</b> (max {max(a):.3g}): {spans}</div>")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The widget.


class Browser:
    """An ipywidgets feature browser over one or more SAEs of the same model.

    `saes` maps a name to an `SAE` or a saved SAE folder; reports are built on first use (or
    passed prebuilt in `reports`). Everything the buttons do is a method (`load`, `select`,
    `search_prompt`, `search_label`), so it runs headless; `.widget` is the VBox to display.
    """

    def __init__(self, lm, data, saes: dict, reports: dict | None = None,
                 initial: str | None = None, titles: dict | None = None, n_tokens: int = 32_768,
                 **report_kw):  # fmt: skip

        if not saes:
            raise ValueError("Browser needs at least one SAE")
        self.lm, self.data, self.n_tokens, self.report_kw = lm, data, n_tokens, report_kw
        self.saes, self.reports = dict(saes), dict(reports or {})
        titles = titles or {}
        self.name: str | None = None
        self.latent = 0
        self._prompt = None  # (tokens, acts [T, d], n_added) of the last prompt search
        self._busy = False  # guards widget callbacks against our own updates

        self.sae_menu = W.Dropdown(options=[(titles.get(n, n), n) for n in self.saes],
                                   description="SAE", layout=W.Layout(width="520px"))  # fmt: skip
        self.latent_box = W.BoundedIntText(value=0, min=0, max=0, description="latent")
        self.prev_btn = W.Button(description="◀", layout=W.Layout(width="40px"))
        self.next_btn = W.Button(description="▶", layout=W.Layout(width="40px"))
        self.prompt_box = W.Text(placeholder="type a prompt", description="prompt",
                                 layout=W.Layout(width="520px"))  # fmt: skip
        self.prompt_btn = W.Button(description="top latents on this prompt",
                                   layout=W.Layout(width="200px"))  # fmt: skip
        self.hits = W.Select(options=[], description="hits", rows=5,
                             layout=W.Layout(width="520px"))  # fmt: skip
        self.concept_menu = W.Dropdown(options=[], description="label")
        self.concept_btn = W.Button(description="best latent for this label",
                                    layout=W.Layout(width="200px"))  # fmt: skip
        self.prompt_view = W.HTML()
        self.view = W.HTML()

        self.sae_menu.observe(lambda ch: self._quiet(self.load, ch["new"]), names="value")
        self.latent_box.observe(lambda ch: self._quiet(self.select, ch["new"]), names="value")
        self.prev_btn.on_click(lambda _: self.select(max(self.latent - 1, 0)))
        self.next_btn.on_click(lambda _: self.select(min(self.latent + 1, self.report.d_sae - 1)))
        self.prompt_btn.on_click(lambda _: self.search_prompt(self.prompt_box.value))
        self.hits.observe(
            lambda ch: ch["new"] is not None and self._quiet(self.select, ch["new"]), names="value"
        )
        self.concept_btn.on_click(lambda _: self.search_label(self.concept_menu.value))
        self.load(initial if initial is not None else next(iter(self.saes)))

    @classmethod
    def from_sweep(cls, lm, data, sweep, initial: str | None = None, **kw) -> Browser:
        """A browser over every SAE of a 05_pareto run (folder or `compare.load_sweep` frame)."""

        df = compare.load_sweep(sweep) if isinstance(sweep, str | Path) else sweep
        saes = dict(zip(df["run"], df["sae_path"], strict=True))
        titles = {r.run: f"{r.method} · {r.run} · L0 {r.l0:.1f} · CE +{r.ce_increase:.3f}"
                  for r in df.itertuples()}  # fmt: skip
        return cls(lm, data, saes, initial=initial, titles=titles, **kw)

    def _quiet(self, fn, *args):
        if not self._busy:
            fn(*args)

    def sae(self, name: str) -> SAE:
        """The SAE called `name` (loaded from its folder on first use)."""
        s = self.saes[name]
        if not isinstance(s, SAE):
            s = self.saes[name] = load_sae(s)
        return s

    @property
    def report(self) -> LatentReport:
        """The report of the SAE on show."""
        return self.reports[self.name]

    def load(self, name: str) -> None:
        """Show the SAE called `name` (building its report on first use, ~seconds)."""
        if name not in self.saes:
            raise KeyError(f"unknown SAE {name!r}; have {list(self.saes)}")
        if name not in self.reports:
            self.prompt_view.value = self.view.value = f"<i>building the report of {name}...</i>"
            self.reports[name] = build_report(self.lm, self.sae(name), self.data, self.n_tokens,
                                              name=name, **self.report_kw)  # fmt: skip
        self.name, self._prompt = name, None
        rep = self.report
        self._busy = True
        try:
            self.sae_menu.value = name
            self.latent_box.max = rep.d_sae - 1
            self.hits.options = []
            self.prompt_view.value = ""
            self.concept_menu.options = rep.concept_names or []
            self.concept_menu.disabled = self.concept_btn.disabled = rep.concept_names is None
        finally:
            self._busy = False
        self.select(min(self.latent, rep.d_sae - 1))

    def select(self, i: int) -> None:
        """Show latent `i` of the current SAE (and its activations on the last prompt)."""
        i = int(i)
        if not 0 <= i < self.report.d_sae:
            raise IndexError(f"latent {i} out of range: this SAE has {self.report.d_sae} latents")
        self.latent = i
        self._busy = True
        try:
            self.latent_box.value = i
        finally:
            self._busy = False
        self.view.value = render_latent_html(self.report, i)
        if self._prompt is not None:
            tokens, acts, _ = self._prompt
            scale = float(self.report.max_act[i]) or float(acts[:, i].max()) or 1.0
            self.prompt_view.value = render_prompt_html(tokens, acts, i, scale)

    @property
    def prompt_tokens(self) -> list[str]:
        """Token strings of the last prompt searched (empty before any search)."""
        return self._prompt[0] if self._prompt is not None else []

    def search_prompt(self, text: str, n: int = 10) -> list[tuple[int, float, int]]:
        """Latents ranked by max activation on `text` (BOS excluded): (latent, max, position).

        Fills the hits list and shows the top latent."""
        tokens, acts, n_added = prompt_activations(self.lm, self.sae(self.name), text)
        self._prompt = (tokens, acts, n_added)
        hits = rank_prompt_latents(acts, n, skip=n_added)
        self._busy = True
        try:
            self.hits.options = [(f"latent {i}: {v:.3g} on {tokens[p]!r}", i) for i, v, p in hits]
        finally:
            self._busy = False
        if hits:
            self.select(hits[0][0])
        else:
            self.prompt_view.value = "<i>no latent fires on this prompt</i>"
        return hits

    def search_label(self, concept: str) -> int:
        """Show the latent whose firing best matches storyworld concept `concept` (F1)."""
        i = self.report.best_latent(concept)
        self.select(i)
        return i

    @property
    def widget(self):
        """The ipywidgets VBox to `display`."""

        return W.VBox([
            self.sae_menu,
            W.HBox([self.latent_box, self.prev_btn, self.next_btn]),
            W.HBox([self.prompt_box, self.prompt_btn]),
            self.hits,
            W.HBox([self.concept_menu, self.concept_btn]),
            self.prompt_view,
            self.view,
        ])  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Standalone dashboard.

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:16px 24px;max-width:1200px}}
nav a{{margin-right:6px;font-size:12px}}</style></head>
<body><h1>{title}</h1><p>{intro}</p><nav>{nav}</nav>
{sections}
</body></html>
"""


def choose_latents(report: LatentReport, n: int, by: str = "f1") -> list[int]:
    """`n` alive latents to show: highest best-concept F1 (`"f1"`, density without labels),
    densest (`"density"`), or an even spread over the alive latents sorted by density
    (`"spread"`, rare to common)."""
    alive = (report.density > 0).nonzero().flatten()
    if by == "f1" and report.f1 is not None:
        key = report.best_f1()[alive]
    elif by in ("f1", "density"):
        key = report.density[alive]
    elif by == "spread":
        order = alive[report.density[alive].argsort()]
        pick = torch.linspace(0, len(order) - 1, min(n, len(order))).round().long()
        return order[pick].tolist() if len(order) else []
    else:
        raise ValueError(f"by={by!r} is unknown; valid: f1, density, spread")
    return alive[key.argsort(descending=True)[:n]].tolist()


def export_html(source, latents, path, title: str | None = None) -> Path:
    """Write one standalone HTML page (no script, no network) with a section per latent.

    `source` is a `LatentReport` or a `Browser` (its current SAE). Each section has
    `id="latent-<i>"` and `data-latent="<i>"`. Returns the path written.
    """
    report = source.report if isinstance(source, Browser) else source
    latents = [int(i) for i in latents]
    title = html.escape(title or f"saelab feature dashboard: {report.name or 'SAE'}")
    info = report.sae_info
    intro = html.escape(
        f"{len(latents)} latents of a {info.get('architecture')} SAE at {info.get('site')} "
        f"({info.get('d_sae')} latents), statistics over {report.n_tokens:,} tokens."
    )
    nav = "".join(f'<a href="#latent-{i}">{i}</a>' for i in latents)
    sections = "\n".join(render_latent_html(report, i) for i in latents)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PAGE.format(title=title, intro=intro, nav=nav, sections=sections),
                    encoding="utf-8")  # fmt: skip
    return path


def summary(report: LatentReport, latents=None, f1_threshold: float = 0.5) -> dict:
    """A few numbers for a report: alive latents, median density (alive latents), and on
    storyworld how many latents have a concept with F1 > `f1_threshold` (of them, how many are
    among `latents`) and how many concepts have such a latent."""
    alive = report.density > 0
    out = {
        "d_sae": report.d_sae,
        "alive": int(alive.sum()),
        "median_density_alive": float(report.density[alive].median()) if alive.any() else 0.0,
        "n_tokens": report.n_tokens,
    }
    if report.f1 is not None:
        best = report.best_f1()
        out["latents_f1_over_threshold"] = int((best > f1_threshold).sum())
        out["concepts_covered"] = int((report.f1.max(0).values > f1_threshold).sum())
        out["n_concepts"] = len(report.concept_names)
        out["median_best_f1_alive"] = float(best[alive].median()) if alive.any() else 0.0
        if latents is not None:
            out["exported_f1_over_threshold"] = int((best[list(latents)] > f1_threshold).sum())
    return out


def best_f1_plot(reports: dict[str, LatentReport], threshold: float = 0.5, path=None,
                 title: str | None = None):  # fmt: skip
    """Complementary ECDF of each alive latent's best concept F1, one line per report in its
    method's style (g-SAE dashed above TopK, so equal curves stay visible; storyworld only)."""

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name in plots.method_order(reports):
        rep = reports[name]
        if rep.f1 is None:
            continue
        v = np.sort(rep.best_f1()[rep.density > 0].numpy())
        if len(v) == 0:
            continue
        frac = 1 - np.arange(1, len(v) + 1) / len(v)  # P(best F1 > v)
        kw = plots.line_kwargs(name)
        kw.pop("marker")
        ax.step(np.r_[0, v], np.r_[1, frac], where="post", label=plots.method_label(name),
                linewidth=1.6, **kw)  # fmt: skip
    ax.axvline(threshold, color="#888", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set(ylabel="fraction of alive latents\nwith best F1 > x", xlim=(0, 1), ylim=(0, 1.02),
           xlabel="best F1 of 'fires' against a storyworld concept")  # fmt: skip
    ax.legend(title="SAE")
    ax.set_title(title or "How many latents detect a known concept?")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
