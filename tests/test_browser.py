"""Feature browser: report building, the widget's Python side, HTML export, and a real render.

The SAE is planted on the storyworld model: random ReLU latents firing on ~20% of tokens plus one
latent (`NAME_LATENT`) that reads the mean difference between name tokens and the rest, so label
search has a known answer. Expected values are computed directly from the activations.
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
import torch
from configs import dump_dom

from saelab.core.models import parse_site
from saelab.core.passes import clean_pass
from saelab.core.sae import SAE, SAEConfig
from saelab.studies import browser as br
from saelab.studies import features

SITE = "resid_pre.3"
D_SAE = 16
NAME_LATENT = 7
PROMPT = 'Lily said, "Tom & Sue <3 the red ball!" Then Lily smiled.'


@pytest.fixture(scope="module")
def data(storyworld_data):
    return storyworld_data(64, n_tokens=4096, split="validation", labels=True)


@pytest.fixture(scope="module")
def sae(lm, data):
    """ReLU SAE: random latents at their 80th percentile, latent 7 a mean-difference `is_name`."""
    site = parse_site(SITE)
    x = clean_pass(lm, data.tokens, [site]).acts[site].flatten(0, 1)  # [N, 64]
    names, con = features.concepts(data.labels)
    is_name = con[:, names.index("is_name")]
    g = torch.Generator().manual_seed(0)
    W = torch.randn(x.shape[1], D_SAE, generator=g)
    W[:, NAME_LATENT] = x[is_name].mean(0) - x[~is_name].mean(0)
    proj = x @ W
    b = -proj.quantile(0.8, dim=0)
    b[NAME_LATENT] = -(proj[is_name, NAME_LATENT].mean() + proj[~is_name, NAME_LATENT].mean()) / 2
    s = SAE.from_config(
        SAEConfig.create(d_in=x.shape[1], d_sae=D_SAE, architecture="relu", site=SITE)
    )
    with torch.no_grad():
        s.W_enc.copy_(W)
        s.b_enc.copy_(b)
    return s


@pytest.fixture(scope="module")
def acts(lm, sae, data):
    return features.collect(lm, sae, data, data.n_tokens)


@pytest.fixture(scope="module")
def browser(lm, data, sae):
    return br.Browser(lm, data, {"planted": sae}, n_tokens=data.n_tokens, n_contexts=5)


# --- pure pieces ------------------------------------------------------------------------------


def test_top_contexts_one_window_per_sequence_sorted_and_padded():
    acts = torch.zeros(3, 10, 2)
    acts[0, 1, 0], acts[0, 2, 0] = 5.0, 4.0  # sequence 0: peak at t=1 (near the start)
    acts[2, 8, 0] = 3.0  # sequence 2: peak at t=8 (near the end)
    tokens = torch.arange(30).reshape(3, 10)
    ids, vals = br.top_contexts(acts, tokens, k=4, before=3, after=2)
    assert ids.shape == vals.shape == (2, 4, 6)
    assert ids[0, 0].tolist() == [-1, -1, 0, 1, 2, 3]  # left padding, peak at index `before`
    assert vals[0, 0, 3] == 5.0 and vals[0, 0, 4] == 4.0  # the neighbour's activation kept
    assert ids[0, 1].tolist() == [25, 26, 27, 28, 29, -1]  # second context: the other sequence
    assert (ids[0, 2:] == -1).all()  # a sequence where it never fires gives no context
    assert (ids[1] == -1).all()  # latent 1 never fires


def test_concept_match_planted():
    fires = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    concept = torch.tensor([[1, 1], [1, 0], [0, 0], [0, 0]], dtype=torch.bool)
    p, r, f1 = br.concept_match(fires, concept, chunk=3)
    assert f1[0, 0] == 1 and p[0, 0] == 1 and r[0, 0] == 1  # latent 0 is concept 0
    assert p[1, 1] == pytest.approx(0.5) and r[1, 1] == 1 and f1[1, 1] == pytest.approx(2 / 3)
    assert (f1[2] == 0).all()  # a dead latent matches nothing


def test_histograms_count_nonzero_and_put_max_in_last_bin():
    flat = torch.tensor([[0.0, 1.0], [0.5, 0.0], [1.0, 0.25], [0.0, 0.0]])
    h = br.act_histograms(flat, flat.max(0).values, n_bins=4)
    assert h.sum(1).tolist() == [2, 2]
    assert h[0].tolist() == [0, 0, 1, 1] and h[1].tolist() == [0, 1, 0, 1]


# --- the report and the widget ----------------------------------------------------------------


def test_report_matches_activations(browser, acts):
    rep = browser.report
    flat = acts.flat
    assert torch.allclose(rep.density, (flat > 0).float().mean(0))
    assert torch.allclose(rep.max_act, flat.max(0).values)
    peak_row = acts.acts[:, :, 3].max(1).values.argmax()
    peak_pos = acts.acts[peak_row, :, 3].argmax()
    assert rep.ctx_ids[3, 0, rep.before] == acts.tokens[peak_row, peak_pos]
    assert rep.hist.sum(1).tolist() == (flat > 0).sum(0).tolist()


def test_select_updates_the_view(browser, acts, lm):
    browser.select(NAME_LATENT)
    view = browser.view.value
    assert f'id="latent-{NAME_LATENT}"' in view and browser.latent_box.value == NAME_LATENT
    n_fire = int((acts.flat[:, NAME_LATENT] > 0).sum())
    assert f"fires on {n_fire:,} of {acts.flat.shape[0]:,} tokens" in view
    row = acts.acts[:, :, NAME_LATENT].max(1).values.argmax()
    top = acts.tokens[row, acts.acts[row, :, NAME_LATENT].argmax()]
    assert br._show(lm.tokenizer.decode([int(top)])) in view  # the top context's peak token
    # the widget path: typing a latent index in the box re-renders
    browser.latent_box.value = 2
    assert browser.latent == 2 and 'id="latent-2"' in browser.view.value
    assert f'id="latent-{NAME_LATENT}"' not in browser.view.value
    with pytest.raises(IndexError, match="16 latents"):
        browser.select(D_SAE)


def test_prompt_search_ranks_by_max_activation(browser, lm, sae):
    hits = browser.search_prompt(PROMPT, n=5)
    ids = [lm.tokenizer.bos_token_id, *lm.tokenizer(PROMPT)["input_ids"]]
    site = parse_site(SITE)
    x = clean_pass(lm, torch.tensor([ids]), [site]).acts[site][0]
    with torch.no_grad():
        c = sae.encode(x)[0][1:]  # direct computation, BOS excluded
    best = c.max(0).values
    assert hits[0][0] == int(best.argmax()) and hits[0][1] == pytest.approx(float(best.max()))
    assert [h[0] for h in hits] == best.topk(len(hits)).indices.tolist()
    assert browser.latent == hits[0][0] and browser.hits.options[0][1] == hits[0][0]
    assert "&amp;" in browser.prompt_view.value and "&lt;" in browser.prompt_view.value
    assert "<3" not in browser.prompt_view.value  # escaped
    with pytest.raises(ValueError, match="empty"):
        browser.search_prompt("   ")


def test_label_search_finds_the_planted_latent(browser, acts):
    names, con = features.concepts(acts.labels)
    is_name = con[:, names.index("is_name")]
    fires = acts.flat > 0
    tp = (fires & is_name[:, None]).sum(0).float()
    f1 = 2 * tp / (fires.sum(0) + is_name.sum())  # direct F1 per latent
    assert browser.search_label("is_name") == int(f1.argmax()) == NAME_LATENT
    assert browser.report.best_concepts(NAME_LATENT, 1)[0][0] == "is_name"
    assert f1[NAME_LATENT] > 0.8
    assert "is_name" in browser.view.value
    with pytest.raises(ValueError, match="unknown concept"):
        browser.search_label("is_dragon")


def test_gtopk_prompt_uses_the_gradient(lm):
    s = SAE.from_config(SAEConfig.create(d_in=64, d_sae=32, architecture="gtopk", k=3, site=SITE))
    tokens, a, n_added = br.prompt_activations(lm, s, "Tom ran to the park.")
    assert n_added == 1 and len(tokens) == a.shape[0] and a.shape[1] == 32
    assert ((a > 0).sum(1) <= 3).all() and (a > 0).any()


class _Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.latents, self.ids, self.tok_spans, self.svgs = [], [], 0, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-latent" in a:
            self.latents.append(int(a["data-latent"]))
            self.ids.append(a.get("id"))
        self.tok_spans += tag == "span" and a.get("class") == "tok"
        self.svgs += tag == "svg"


def test_export_html_sections_and_escaping(browser, tmp_path):
    rep = browser.report
    latents = [NAME_LATENT, 0, 3]
    tok = int(rep.ctx_ids[NAME_LATENT, 0, rep.before])
    saved = rep.vocab[tok]
    rep.vocab[tok] = "<b>&"  # an HTML-special token string must come out escaped
    try:
        path = br.export_html(browser, latents, tmp_path / "d" / "dash.html")
    finally:
        rep.vocab[tok] = saved
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "&lt;b&gt;&amp;" in text and "<b>&" not in text
    assert "<script" not in text and "http://" not in text.replace('"http://www.w3.org', "")
    p = _Sections()
    p.feed(text)
    assert p.latents == latents and p.ids == [f"latent-{i}" for i in latents]
    assert p.svgs == len(latents) and p.tok_spans > 0


def test_choose_latents(browser):
    rep = browser.report
    assert br.choose_latents(rep, 1, by="f1") == [NAME_LATENT]
    dens = br.choose_latents(rep, 3, by="density")
    assert dens == rep.density.argsort(descending=True)[:3].tolist()
    spread = br.choose_latents(rep, 4, by="spread")
    assert len(set(spread)) == 4 and rep.density[spread].tolist() == sorted(rep.density[spread])


# --- a real render in headless Chromium -------------------------------------------------------


def test_exported_html_renders_in_headless_chromium(browser, chromium, tmp_path):
    latents = [NAME_LATENT, 1, 5, 9]
    path = br.export_html(browser.report, latents, tmp_path / "dash.html")
    res = dump_dom(chromium, path, tmp_path)
    p = _Sections()
    p.feed(res.stdout)
    assert p.latents == latents, res.stderr[-2000:]
    assert p.tok_spans > 0 and p.svgs == len(latents)
