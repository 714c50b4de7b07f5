"""saelab.studies.steering on the embedded storyworld model: exact zero at alpha 0, a token's own
unembedding direction raises its probability, and batching does not change the numbers."""

from __future__ import annotations

import pytest
import torch

import saelab as sl
from saelab.studies import steering as st
from saelab.studies.features import unembed

SITE = "resid_pre.3"


@pytest.fixture(scope="module")
def lm():
    return sl.load_model("storyworld")


@pytest.fixture(scope="module")
def tokens(lm):
    data = sl.token_dataset("storyworld", lm.tokenizer, 32, split="validation", n_tokens=4 * 32)
    return data.tokens[:3, :24]


def _unembed_dirs(lm) -> torch.Tensor:
    """Per token t, the residual direction `[V, d]` that the final LayerNorm (centre, gain) maps
    onto the unembedding row of t: `centre(W_U[t] / gain)`, unit norm."""
    W_U, gain, _ = unembed(lm)
    d = W_U / gain
    return torch.nn.functional.normalize(d - d.mean(-1, keepdim=True), dim=-1)


def test_alpha_zero_adds_exactly_zero(lm, tokens):
    dirs = torch.randn(3, 64)
    assoc = st.associated_tokens(lm, dirs, 4)
    added = st.prob_added(lm, SITE, dirs, [0.0, 1.0], tokens, assoc)
    assert added.shape == (2, 3)
    assert torch.equal(added[0], torch.zeros(3))
    assert (added[1] != 0).all()


def test_unembedding_direction_raises_its_token(lm, tokens):
    dirs = _unembed_dirs(lm)
    # tied embeddings: for about half the tokens, that direction's logit-lens top token is t itself
    own = st.associated_tokens(lm, dirs, 1)[:, 0] == torch.arange(len(dirs))
    t = next(int(v) for v in tokens.flatten() if own[v])  # one the model actually uses
    d, assoc = dirs[t][None], torch.tensor([[t]])
    norm = st.site_norm(lm, SITE, sl.token_dataset("storyworld", lm.tokenizer, 32,
                        split="validation", n_tokens=4 * 32))  # fmt: skip
    assert 0.5 < norm < 50
    added = st.prob_added(lm, SITE, d * norm, [0.5, 2.0, 8.0], tokens, assoc)[:, 0]
    assert (added > 0).all() and added[0] < added[1] < added[2]
    assert added[2] > 0.3  # a strong push makes t the likely next token almost everywhere
    assert st.prob_added(lm, SITE, -d * norm, [2.0], tokens, assoc)[0, 0] < 0


def test_batching_and_site_paths_agree(lm, tokens, monkeypatch):
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(5, 64, generator=g), dim=-1) * 4
    assoc = st.associated_tokens(lm, dirs, 3)
    alphas = [0.25, 1.0]
    batched = st.steer_probs(lm, SITE, dirs, alphas, tokens, assoc, max_rows=1000)
    one = torch.stack([
        torch.stack([st.steer_probs(lm, SITE, dirs[i : i + 1], [a], tokens, assoc[i : i + 1],
                                    max_rows=1)[0, 0] for i in range(5)])
        for a in alphas
    ])  # fmt: skip
    assert batched.shape == (2, 5, 3, 24)
    assert torch.allclose(batched, one, atol=1e-6)
    # Without skipping the first blocks (the get_site / set_site path): the same numbers.
    monkeypatch.setattr(st, "skippable_blocks", lambda site: 0)
    via_set = st.steer_probs(lm, SITE, dirs, alphas, tokens, assoc)
    assert torch.allclose(batched, via_set, atol=1e-5)


def test_choose_latents_and_random_directions():
    freq = torch.tensor([0.0, 0.5, 0.0, 0.1, 0.9, 0.2, 0.0, 0.05])
    pick = st.choose_latents(freq, 3, "random", seed=1)
    assert len(pick) == 3 and (freq[pick] > 0).all() and len(set(pick.tolist())) == 3
    assert torch.equal(pick, st.choose_latents(freq, 3, "random", seed=1))
    assert st.choose_latents(freq, 2, "frequent").tolist() == [4, 1]
    assert len(st.choose_latents(freq, 99)) == 5  # at most the alive ones
    with pytest.raises(ValueError, match="frequent"):
        st.choose_latents(freq, 2, "best")
    r = st.random_directions(4, 8, seed=0)
    assert torch.allclose(r.norm(dim=-1), torch.ones(4)) and torch.equal(
        r, st.random_directions(4, 8, seed=0)
    )


def test_ratio_table_and_summary():
    num = torch.tensor([[1.0, 1.2, 0.8], [2.0, 2.0, 2.0]])
    den = torch.tensor([[0.2, 0.2, 0.2], [1.0, 1.0, 1.0]])
    r = st.ratio_table(num, den, [0.5, 1.0], n_boot=100)
    assert r.ratio.tolist() == pytest.approx([5.0, 2.0])
    assert (r.ci_lo <= r.ratio).all() and (r.ratio <= r.ci_hi).all()
    s = st.summarize({"a": num, "b": den}, [0.5, 1.0], n_boot=100)
    assert len(s) == 4 and s["mean"].iloc[0] == pytest.approx(1.0)
    w = st.wide_table(s, r)
    assert list(w.columns[:3]) == ["a_mean", "a_ci_lo", "a_ci_hi"] and "ratio" in w
    assert w.loc[0.5, "ratio"] == pytest.approx(5.0)
    lat = st.per_latent_table({"a": num}, [0.5, 1.0], {"a": torch.tensor([7, 8, 9])})
    assert len(lat) == 6 and lat.latent.tolist()[:3] == [7, 8, 9]


def test_twins_counts_directions_with_a_near_copy_in_the_other_dictionary():
    torch.manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(20, 16), dim=-1)
    half = base.clone()
    half[10:] = torch.nn.functional.normalize(torch.randn(10, 16), dim=-1)  # 10 moved away
    t = st.twins({"a": base, "b": half, "c": base}, [("b", "a", False), ("c", "a", True)])
    assert list(t.columns) == ["pair", "shared_init", "frac_above_0_9", "mean_cos"]
    assert t.pair.tolist() == ["b -> a", "c -> a"] and t.shared_init.tolist() == [False, True]
    assert t.frac_above_0_9.tolist() == pytest.approx([0.5, 1.0])
    assert t.mean_cos[1] == pytest.approx(1.0) and t.mean_cos[0] < 1.0
