"""Neuronpedia export: the batch JSON against the report it comes from, the folder's layout and
refusals, and the viewer rendered in headless Chromium for storyworld and a random-weight Llama.

The feature keys are SAEDashboard 0.8.0's `NeuronpediaDashboardFeature.to_dict` (what
`NeuronpediaRunner` writes and Neuronpedia ingests); sae-dashboard itself cannot be installed
beside saelab (docs/interop.md), so its key list is written out here.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
import torch
import transformers as tf
from configs import dump_dom
from tokenizers import Tokenizer, models, pre_tokenizers

import saelab as sl
from saelab.core.data import TokenDataset
from saelab.core.sae import SAE, SAEConfig
from saelab.studies import browser as br
from saelab.studies import features
from saelab.studies import neuronpedia as npd

FEATURE_KEYS = {
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
    "freq_hist_data_bar_values", "freq_hist_data_bar_heights", "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values", "n_prompts_total", "n_tokens_in_prompt", "dataset",
    "activations", "decoder_weights_dist", "vector",
}  # fmt: skip
ACTIVATION_KEYS = {"bin_min", "bin_max", "bin_contains", "tokens", "values",
                   "qualifying_token_index"}  # fmt: skip
SITE = "resid_pre.3"
DEAD = 5  # a latent whose bias keeps it off on every token


def random_sae(d_in: int, d_sae: int = 12, site: str = SITE, bias: float = -0.5) -> SAE:
    torch.manual_seed(0)
    s = SAE.from_config(SAEConfig.create(d_in=d_in, d_sae=d_sae, architecture="relu", site=site))
    with torch.no_grad():
        s.b_enc.fill_(bias)  # random directions firing on a fraction of tokens
        s.b_enc[DEAD] = -1e4
    return s


@pytest.fixture(scope="module")
def report(lm, storyworld_data):
    data = storyworld_data(64, n_tokens=2048, split="validation")
    sae = random_sae(lm.config.hidden_size)
    acts = features.collect(lm, sae, data, data.n_tokens)
    rep = br.report_from_activations(lm, sae, acts, name="storyworld random", n_contexts=5)
    rep.extra["acts"], rep.extra["sae"] = acts, sae
    return rep


def test_feature_record_equals_the_report(report, lm):
    alive = (report.density > 0).nonzero().flatten().tolist()
    assert DEAD not in alive and len(alive) >= 8
    i = alive[0]
    f = npd.feature_json(report, i, dataset="storyworld", n_ctx=64)
    assert set(f) == FEATURE_KEYS and f["feature_index"] == i
    assert f["frac_nonzero"] == pytest.approx(float(report.density[i]))
    flat = report.extra["acts"].flat[:, i]
    # the activation histogram counts this latent's nonzero activations, bars inside [0, max]
    assert sum(f["freq_hist_data_bar_heights"]) == int((flat > 0).sum())
    bars = f["freq_hist_data_bar_values"]
    assert 0 < min(bars) < max(bars) < flat.max()
    # the logit histogram counts every vocabulary entry; the promoted token is the top effect
    effects = features.logit_effects(lm, report.extra["sae"].decoder_directions())[i]
    assert sum(f["logits_hist_data_bar_heights"]) == lm.config.vocab_size
    centres = f["logits_hist_data_bar_values"]  # bin centres inside [min, max] of the effects
    assert float(effects.min()) < centres[0] < centres[-1] < float(effects.max())
    assert f["pos_str"][0] == report.vocab[int(effects.argmax())]
    assert f["pos_values"][0] == pytest.approx(float(effects.max()), abs=1e-3)
    assert f["neg_values"][0] == pytest.approx(float(effects.min()), abs=1e-3)
    # each context: tokens without padding, the peak at qualifying_token_index, values as acts
    assert f["activations"] and all(set(a) == ACTIVATION_KEYS for a in f["activations"])
    fired = report.ctx_acts[i, :, report.before] > 0  # contexts that exist (not padding rows)
    assert len(f["activations"]) == int(fired.sum()) > 1
    peaks = []
    for a, ids, vals in zip(f["activations"], report.ctx_ids[i][fired], report.ctx_acts[i][fired],
                            strict=True):  # fmt: skip
        keep = ids >= 0
        assert a["tokens"] == [report.vocab[int(t)] for t in ids[keep]]
        assert a["values"] == pytest.approx(vals[keep].tolist(), abs=1e-3)
        q = a["qualifying_token_index"]
        assert a["values"][q] == max(a["values"])  # the peak is the context's largest value
        assert a["values"][q] == pytest.approx(float(vals[report.before]), abs=1e-3)
        assert a["bin_max"] == pytest.approx(float(flat.max()), abs=1e-3)
        peaks.append(a["values"][q])
    assert peaks == sorted(peaks, reverse=True)
    assert peaks[0] == pytest.approx(float(flat.max()), abs=1e-3)


def test_export_layout_round_trip_and_refusals(report, tmp_path):
    latents = [0, 1, 2, DEAD, 3]
    folder = npd.export(report, latents, tmp_path / "np", model_id="storyworld",
                        sae_set="res-saelab", n_ctx=64, batch_size=2)  # fmt: skip
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["batch-0.json", "batch-1.json", "batch-2.json", "index.html",
                     "skipped_indexes.json"]  # fmt: skip
    batches = npd.read_export(folder)
    assert [f["feature_index"] for b in batches for f in b["features"]] == latents
    assert {(b["model_id"], b["layer"], b["sae_set"], b["sae_id_suffix"]) for b in batches} == {
        ("storyworld", 3, "res-saelab", None)}  # the layer of resid_pre.3  # fmt: skip
    dead = [f for b in batches for f in b["features"] if f["feature_index"] == DEAD][0]
    assert dead["activations"] == [] and dead["frac_nonzero"] == 0
    skipped = json.loads((folder / "skipped_indexes.json").read_text())
    assert skipped["skipped_indexes"] == []  # the dead latent was exported; the rest fired
    live = npd.export(report, [0, 1], tmp_path / "np2", model_id="storyworld", sae_set="s")
    skipped = json.loads((live / "skipped_indexes.json").read_text())
    assert skipped["skipped_indexes"] == [DEAD]  # dead and not exported; live ones left out
    with pytest.raises(ValueError, match="batch_size=0 must be at least 1"):
        npd.export(report, [0], tmp_path / "np3", model_id="m", sae_set="s", batch_size=0)
    with pytest.raises(FileExistsError, match="already holds a Neuronpedia export"):
        npd.export(report, latents, folder, model_id="storyworld", sae_set="res-saelab")
    with pytest.raises(ValueError, match=r"latents \[12\] are out of range.*valid: 0..11"):
        npd.export(report, [0, 12], tmp_path / "bad", model_id="m", sae_set="s")
    with pytest.raises(FileNotFoundError, match="not a Neuronpedia export"):
        npd.read_export(tmp_path)


# --- the viewer, rendered --------------------------------------------------------------------


class _Rendered(HTMLParser):
    """Per section `latent-<i>`: its contexts (token texts), peak tokens and promoted tokens."""

    def __init__(self):
        super().__init__()
        self.latents, self.ctx, self.peaks, self.up = {}, None, None, None
        self.stack, self.cur, self.in_tok, self.in_up = [], None, False, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "section" and "data-latent" in a:
            self.cur = self.latents.setdefault(int(a["data-latent"]),
                                               dict(ctx=[], peaks=[], up=[]))  # fmt: skip
        elif self.cur is not None and "ctx" in cls:
            self.cur["ctx"].append([])
        elif self.cur is not None and a.get("data-kind") == "promotes":
            self.in_up = True
        elif self.cur is not None and a.get("data-kind") == "suppresses":
            self.in_up = False
        if tag == "span" and "tok" in cls or tag == "code" and "tok" in cls:
            self.in_tok = ("peak" in cls, tag)

    def handle_endtag(self, tag):
        if self.in_tok and tag == self.in_tok[1]:
            self.in_tok = False

    def handle_data(self, text):
        if not self.in_tok or self.cur is None:
            return
        peak, tag = self.in_tok
        if tag == "code":
            if self.in_up:
                self.cur["up"].append(text)
            return
        self.cur["ctx"][-1].append(text)
        if peak:
            self.cur["peaks"].append(text)


def render(chromium, page, tmp_path) -> str:
    res = dump_dom(chromium, page, tmp_path)
    assert 'data-rendered="' in res.stdout, res.stderr[-2000:]  # the script ran to its end
    return res.stdout


def check_render(dom: str, folder) -> None:
    """The rendered page shows, for every exported latent, each top context's tokens in order,
    its peak token marked, and the promoted tokens: exactly what the batch files hold."""
    p = _Rendered()
    p.feed(dom)
    feats = [f for b in npd.read_export(folder) for f in b["features"]]
    assert all(f["activations"] for f in feats if f["frac_nonzero"] > 0)
    assert list(p.latents) == [f["feature_index"] for f in feats]
    for f in feats:
        shown = p.latents[f["feature_index"]]
        assert shown["ctx"] == [a["tokens"] for a in f["activations"]]
        assert shown["peaks"] == [a["tokens"][a["qualifying_token_index"]]
                                  for a in f["activations"]]  # fmt: skip
        assert shown["up"] == f["pos_str"]


def test_viewer_renders_storyworld_in_headless_chromium(report, chromium, tmp_path):
    i = int(report.density.argmax())
    tok = int(report.ctx_ids[i, 0, report.before])
    saved = report.vocab[tok]
    report.vocab[tok] = "<!--<script></script><b>&"  # would end the data block or comment it
    try:
        folder = npd.export(report, [i, 0, DEAD], tmp_path / "np", model_id="storyworld",
                            sae_set="res-saelab", n_ctx=64)  # fmt: skip
    finally:
        report.vocab[tok] = saved
    dom = render(chromium, folder / "index.html", tmp_path)
    check_render(dom, folder)
    p = _Rendered()
    p.feed(dom)
    assert p.latents[i]["peaks"][0] == "<!--<script></script><b>&"  # shown as text, not markup
    assert p.latents[DEAD]["ctx"] == []
    assert "<!--" not in (folder / "index.html").read_text()  # escaped in the page's source


def tiny_llama(tmp_path):
    """A random-weight Llama (2 layers, d_model 32) with a word-level tokenizer, saved to disk
    and loaded through saelab's nnsight loader, as a user's own model would be."""
    vocab = {"<s>": 0} | {f"w{i}": i for i in range(1, 97)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<s>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<s>")
    cfg = tf.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    return sl.load_model(str(tmp_path / "llama"), device="cpu")


def test_viewer_renders_a_random_llama_in_headless_chromium(chromium, tmp_path):
    lm = tiny_llama(tmp_path)
    g = torch.Generator().manual_seed(1)
    data = TokenDataset(tokens=torch.randint(1, 97, (16, 32), generator=g), source="random")
    sae = random_sae(32, d_sae=8, site="resid_post.1", bias=0.0)  # a random init's small norms
    rep = br.build_report(lm, sae, data, n_tokens=data.n_tokens, name="llama", n_contexts=4)
    latents = br.choose_latents(rep, 4, by="density")
    assert len(latents) == 4  # four latents fire on these tokens
    folder = npd.export(rep, latents, tmp_path / "np", model_id="tiny-llama", sae_set="res")
    assert npd.read_export(folder)[0]["layer"] == 1
    check_render(render(chromium, folder / "index.html", tmp_path), folder)
