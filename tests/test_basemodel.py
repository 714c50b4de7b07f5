"""The storyworld base model: its training pieces, and the shipped assets' promises."""

import json
import math

import numpy as np
import pytest
import torch

import saelab as sl
from saelab.storyworld import basemodel as bm
from saelab.storyworld import corpus as sw


def test_lr_schedule_warms_up_then_decays_to_floor():
    lrs = [bm.lr_at(s, 100, 1.0, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert bm.lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)


def test_ngram_baselines_match_hand_computation():
    train = torch.tensor([[0, 1, 0, 1]])
    val = torch.tensor([[0, 1, 1]])
    out = bm.ngram_baselines(train, val, vocab=2, alpha=0.0 + 1e-12)
    # unigram p(0)=p(1)=1/2 -> CE log 2; bigram p(1|0)=1, p(1|1)=0 (tiny alpha) -> huge
    assert out["unigram_ce"] == pytest.approx(math.log(2), rel=1e-6)
    assert out["bigram_ce"] > 10
    smoothed = bm.ngram_baselines(train, val, vocab=2, alpha=1.0)
    # bigram counts +1: row 0 -> [1, 3]/4, row 1 -> [2, 1]/3
    want = -(np.log(3 / 4) + np.log(1 / 3)) / 2
    assert smoothed["bigram_ce"] == pytest.approx(want)


def test_tokenizer_isolates_quotes(small_tokenizer):
    ids = small_tokenizer('He said, "Hi."', add_special_tokens=False)["input_ids"]
    toks = small_tokenizer.convert_ids_to_tokens(ids)
    assert toks[-1] == '"' and 'Ġ"' in toks


def test_story_probes_on_untrained_model_are_valid_fractions(small_tokenizer):
    model = bm.make_model(small_tokenizer, n_layer=1, d_model=16, n_head=2, d_mlp=32, n_ctx=64)
    out = bm.story_probes(model, small_tokenizer, n_stories=20)
    assert out["n_pronoun_positions"] > 0 and out["n_quote_close_positions"] > 0
    assert 0 <= out["pronoun_agreement"] <= 1 and 0 <= out["quote_close_acc"] <= 1


# --- the shipped model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    return sl.load_model("storyworld"), json.loads((bm.ASSETS / "metrics.json").read_text())


def test_shipped_metrics_have_required_fields_and_beat_baselines(shipped):
    _, m = shipped
    for key in ["val_ce", "unigram_ce", "bigram_ce", "pronoun_agreement", "quote_close_acc",
                "n_params", "train_tokens"]:  # fmt: skip
        assert key in m
    assert m["val_ce"] < m["bigram_ce"] - 0.5 < m["unigram_ce"]
    assert m["pronoun_agreement"] >= 0.95


def test_shipped_model_loads_offline_and_is_frozen(shipped, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = sl.load_model("storyworld")
    assert not any(p.requires_grad for p in lm.parameters())
    assert lm.config.model_type == "gpt2" and lm.tokenizer.bos_token == sw.EOS


def test_shipped_val_ce_recomputes_within_005(shipped, monkeypatch, tmp_path):
    """A fresh validation stream (stories the notebook never scored) gives the same CE."""
    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path))
    lm, m = shipped
    n_ctx = lm.config.n_positions
    # stories past the notebook's validation window: start far into the validation stream
    texts = sw.story_texts("validation", 600, start=500_000)
    enc = lm.tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = np.concatenate([[lm.tokenizer.bos_token_id, *e] for e in enc])
    rows = torch.from_numpy(ids[: len(ids) // n_ctx * n_ctx].reshape(-1, n_ctx))
    ce = bm.lm_ce(lm._module, rows)
    assert abs(ce - m["val_ce"]) < 0.05, (ce, m["val_ce"])
