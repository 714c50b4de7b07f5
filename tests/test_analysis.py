"""saelab.studies.analysis: nearest-neighbour cosines, bootstrap CIs, the Figure 3 tables."""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saelab.core.sae import SAE, SAEConfig
from saelab.studies import analysis as an


def test_max_cos_sim_known_geometry():
    s = 1 / math.sqrt(2)
    A = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [s, s, 0], [0, 0, 1.0]])
    within = an.max_cos_sim(A)  # self excluded: e0's neighbour is (e0 + e1)/sqrt2, not itself
    assert torch.allclose(within, torch.tensor([s, s, s, 0.0]), atol=1e-6)
    B = torch.tensor([[0, 0, -1.0], [1.0, 1.0, 0]])
    cross = an.max_cos_sim(A, B)
    assert torch.allclose(cross, torch.tensor([s, s, 1.0, 0.0]), atol=1e-6)
    # scale does not matter, a duplicate direction is a perfect neighbour, chunking is invisible
    assert torch.allclose(an.max_cos_sim(3 * A, 0.1 * B), cross, atol=1e-6)
    assert an.max_cos_sim(torch.cat([A, A[:1]]))[0] == pytest.approx(1.0)
    big = torch.randn(50, 8)
    assert torch.equal(an.max_cos_sim(big, chunk=7), an.max_cos_sim(big))
    with pytest.raises(ValueError, match="at least 2"):
        an.max_cos_sim(A[:1])


def test_alive_directions_from_mask_frequencies_and_activations():
    torch.manual_seed(0)
    sae = SAE.from_config(SAEConfig.create(d_in=6, d_sae=10, architecture="relu"))
    with torch.no_grad():
        sae.W_dec.mul_(torch.arange(1, 11.0)[:, None])  # rows not unit norm: directions are
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 4, 7]] = True
    freq = mask.float() * 0.3
    acts = torch.zeros(2, 5, 10)
    acts[1, 3, [1, 4, 7]] = 0.5
    acts_obj = SimpleNamespace(alive=lambda: mask)
    want = F.normalize(sae.W_dec.detach(), dim=-1)[[1, 4, 7]]
    for x in (mask, freq, acts, acts_obj):
        got = an.alive_directions(sae, x)
        assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="10 latents"):
        an.alive_directions(sae, torch.ones(9, dtype=torch.bool))


def test_bootstrap_ci_covers_and_shrinks():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, 400)
    mean, lo, hi = an.bootstrap_ci(x, n_boot=500, seed=0)
    assert mean == pytest.approx(x.mean()) and lo < 2.0 < hi and lo < mean < hi
    assert hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.25)  # ~ 2 z sigma / sqrt(n)
    _, lo2, hi2 = an.bootstrap_ci(x[:25], n_boot=500, seed=0)
    assert hi2 - lo2 > 2 * (hi - lo)
    assert an.bootstrap_ci(x, 200, seed=3) == an.bootstrap_ci(x, 200, seed=3)
    med = an.bootstrap_ci(x, 200, stat=np.median)
    assert med[0] == pytest.approx(np.median(x))


def test_bootstrap_diff_and_ratio():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 0.5, 300), rng.normal(0.0, 0.5, 200)
    d, lo, hi = an.bootstrap_diff_ci(a, b, n_boot=500)
    assert d == pytest.approx(a.mean() - b.mean()) and 0 < lo < 1 < hi
    same = an.bootstrap_diff_ci(a, rng.normal(1.0, 0.5, 200), n_boot=500)
    assert same[1] < 0 < same[2]
    c = rng.exponential(1.0, 300)
    r, lo, hi = an.bootstrap_ratio_ci(5 * rng.exponential(1.0, 300), c, n_boot=500)
    assert lo < 5 < hi and 3 < r < 7


def _planted(seed: int, d: int = 16, n: int = 60) -> dict:
    """Planted dictionaries: "local" = tight clusters (stable across seeds), "e2e" = random."""
    g = torch.Generator().manual_seed(100)  # the clusters are the same for both seeds
    centres = F.normalize(torch.randn(n // 3, d, generator=g), dim=-1)
    g = torch.Generator().manual_seed(seed)
    local = F.normalize(centres.repeat(3, 1) + 0.05 * torch.randn(n, d, generator=g), dim=-1)
    e2e = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return {("local", seed): local, ("e2e", seed): e2e}


def test_similarity_tables_on_planted_dictionaries():
    dirs = _planted(0) | _planted(1)
    table = an.similarity_table(dirs)
    assert set(table.kind) == {"within", "cross-seed", "cross-type"}
    assert set(table.comparison) == {
        "local s0", "e2e s0", "local s1", "e2e s1", "local s0 -> s1", "e2e s0 -> s1",
        "e2e s0 -> local s1",
    }  # fmt: skip
    assert (table.groupby("comparison").size() == 60).all()
    summ = an.summarize(table, n_boot=200).set_index("comparison")
    assert summ.loc["local s0", "mean"] > 0.95 > summ.loc["e2e s0", "mean"]
    assert summ.loc["local s0 -> s1", "mean"] > 0.95 > summ.loc["e2e s0 -> s1", "mean"]
    assert (summ.ci_lo <= summ["mean"]).all() and (summ["mean"] <= summ.ci_hi).all()
    diffs = an.within_differences(table, n_boot=200)
    assert list(diffs.seed) == [0, 1] and set(diffs.difference) == {"local - e2e"}
    assert (diffs.ci_lo > 0).all() and (diffs.paper == 0.166).all()


def test_umap_embedding_wiring(monkeypatch):
    """The DataFrame layout and UMAP's arguments, with a stand-in module (numba compiles slowly)."""
    seen = {}

    class FakeUMAP:
        def __init__(self, **kw):
            seen.update(kw)

        def fit_transform(self, X):
            seen["X"] = X
            return X[:, :2] * 2

    monkeypatch.setitem(sys.modules, "umap", SimpleNamespace(UMAP=FakeUMAP))
    a, b = torch.randn(5, 4), torch.randn(3, 4)
    emb = an.umap_embedding({"local": a, "e2e": b}, random_state=7)
    assert list(emb.columns) == ["x", "y", "dictionary"]
    assert list(emb.dictionary) == ["local"] * 5 + ["e2e"] * 3
    assert np.allclose(emb.x, torch.cat([a, b])[:, 0].numpy() * 2)
    assert seen["metric"] == "cosine" and seen["random_state"] == 7 and seen["n_components"] == 2


def test_same_dictionary_fraction():
    import pandas as pd

    rng = np.random.default_rng(0)
    xy = rng.normal(size=(200, 2))
    mixed = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "dictionary": ["a", "b"] * 100})
    assert 0.35 < an.same_dictionary_fraction(mixed) < 0.65
    apart = mixed.assign(x=mixed.x + 100 * (mixed.dictionary == "b"))
    assert an.same_dictionary_fraction(apart) == 1.0


@pytest.mark.slow
def test_umap_embedding_separates_two_clusters():
    """Real umap-learn (about 20-30 s: numba compiles on first use)."""
    pytest.importorskip("umap")
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.tensor([1.0] + [0] * 7) + 0.1 * torch.randn(40, 8, generator=g), dim=-1)
    b = F.normalize(torch.tensor([0.0] * 7 + [1]) + 0.1 * torch.randn(40, 8, generator=g), dim=-1)
    emb = an.umap_embedding({"a": a, "b": b})
    ca = emb[emb.dictionary == "a"][["x", "y"]].to_numpy()
    cb = emb[emb.dictionary == "b"][["x", "y"]].to_numpy()
    gap = np.linalg.norm(ca.mean(0) - cb.mean(0))
    assert gap > 2 * max(ca.std(0).max(), cb.std(0).max())


def test_init_directions_match_sl_train_and_keep_the_global_rng():
    import saelab as sl
    from saelab.core.training import TrainConfig

    cfg = TrainConfig(sae=sl.SAEConfig.create(architecture="relu", d_sae=16)).sae_config(
        "resid_pre.0", 8
    )
    torch.manual_seed(5)  # what sl.train does before building the SAE
    trained = SAE.from_config(cfg)
    init = trained.decoder_directions().detach().clone()
    with torch.no_grad():
        trained.W_dec[:4] = torch.randn(4, 8)  # "training" moved four latents
    state = torch.random.get_rng_state()
    assert torch.allclose(an.init_directions(trained, 5), init)
    assert torch.equal(torch.random.get_rng_state(), state)
    cos = an.cos_to_init(trained, 5)
    assert torch.allclose(cos[4:], torch.ones(12), atol=1e-6) and (cos[:4] < 0.99).all()
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[0, 9]] = True
    assert torch.equal(an.cos_to_init(trained, 5, mask), cos[[0, 9]])
    assert not torch.allclose(an.init_directions(trained, 6), init)
    assert sl.SAE is SAE


def test_random_directions_are_a_chance_level():
    r = an.random_directions(200, 16, seed=0)
    assert torch.allclose(r.norm(dim=-1), torch.ones(200), atol=1e-6)
    assert torch.equal(r, an.random_directions(200, 16, seed=0))
    within = an.max_cos_sim(r).mean()
    assert 0.4 < within < 0.8  # 200 random directions in 16 dims: neighbours are far from parallel
