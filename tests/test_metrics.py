"""Metrics beyond `evaluate`'s core numbers: the alive window and the selection overlap."""

from __future__ import annotations

import warnings

import pytest
import torch

import saelab as sl
from saelab.core.metrics import evaluate

N_CTX = 32  # 31 SAE positions a row (BOS excluded)


@pytest.fixture(scope="module")
def data(storyworld_data):
    return storyworld_data(N_CTX, n_tokens=48 * N_CTX, split="validation")


def _sae(arch: str, site: str = "resid_pre.3", seed: int = 0, **kw):
    """A random SAE on the storyworld model, k = 1 of 512 latents: alive grows with the window."""
    torch.manual_seed(seed)
    if arch != "relu":
        kw.setdefault("k", 1)
    cfg = sl.SAEConfig.create(architecture=arch, d_in=64, d_sae=512, site=site,
                       normalize_activations="none", **kw)  # fmt: skip
    return sl.SAE.from_config(cfg).eval()


def _quiet(*args, **kw):
    """`evaluate` over whole rows less position 0 (no special tokens left out: these tests count
    positions), with any warning an error."""
    kw.setdefault("exclude_tokens", ())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these windows exceeds the data
        return evaluate(*args, **kw)


@pytest.mark.parametrize("arch", ["relu", "topk", "gtopk"])
def test_alive_window_past_the_eval_rows_counts_as_if_they_were_evaluated(lm, data, arch):
    sae = _sae(arch, sparsity=1.0) if arch == "relu" else _sae(arch)
    if arch == "relu":
        with torch.no_grad():
            sae.b_enc.sub_(1.5)  # rarely firing latents
    rows = 40
    full = _quiet(lm, sae, data, n_tokens=rows * N_CTX, batch_size=8, alive_tokens=None)
    small = _quiet(lm, sae, data, n_tokens=4 * N_CTX, batch_size=8, alive_tokens=None)
    wide = _quiet(lm, sae, data, n_tokens=4 * N_CTX, batch_size=8, alive_tokens=rows * 31)
    assert small["alive_window_tokens"] == small["n_tokens"] == 4 * 31
    assert wide["alive_window_tokens"] == full["n_tokens"] == rows * 31
    assert wide["alive"] == full["alive"] > small["alive"]
    assert wide["dead_frac"] == pytest.approx(1 - full["alive"] / 512)
    for key in ("l0", "mse", "explained_var", "ce_sae", "kl"):  # the rest is the eval rows'
        assert wide[key] == small[key]


def test_alive_window_shorter_than_the_eval_and_rounded_up_to_whole_rows(lm, data):
    sae = _sae("topk")
    two = _quiet(lm, sae, data, n_tokens=2 * N_CTX, batch_size=8, alive_tokens=None)
    short = _quiet(lm, sae, data, n_tokens=8 * N_CTX, batch_size=8, alive_tokens=2 * 31)
    assert short["alive"] == two["alive"] and short["alive_window_tokens"] == 62
    odd = _quiet(lm, sae, data, n_tokens=2 * N_CTX, batch_size=8, alive_tokens=2 * 31 + 1)
    assert odd["alive_window_tokens"] == 3 * 31  # at least the tokens asked for


def test_alive_window_is_capped_at_the_data_with_a_warning(lm, data):
    sae = _sae("topk")
    have = len(data) * 31
    with pytest.warns(UserWarning, match=rf"alive_tokens=500,000 .* only {have:,} SAE positions"):
        rep = evaluate(lm, sae, data, n_tokens=4 * N_CTX, batch_size=16)  # the default window
    mid = int((data.tokens[:, 1:] == lm.tokenizer.bos_token_id).sum())  # left out mid-row
    assert rep["alive_window_tokens"] == have - mid
    whole = _quiet(lm, sae, data, n_tokens=len(data) * N_CTX, batch_size=16, alive_tokens=None)
    assert rep["alive"] == whole["alive"]
    with pytest.raises(ValueError, match="alive_tokens=0 must be None or an int >= 1"):
        evaluate(lm, sae, data, n_tokens=4 * N_CTX, alive_tokens=0)


def test_alive_window_with_two_sites_reads_the_spliced_residual(lm, data):
    saes = {"resid_pre.1": _sae("topk", "resid_pre.1"), "resid_pre.3": _sae("topk", seed=1)}
    full = _quiet(lm, saes, data, n_tokens=24 * N_CTX, batch_size=8, alive_tokens=None)
    wide = _quiet(lm, saes, data, n_tokens=4 * N_CTX, batch_size=8, alive_tokens=24 * 31)
    for s in saes:
        assert wide[f"{s}/alive"] == full[f"{s}/alive"]
    assert wide["alive_window_tokens"] == 24 * 31


def test_evaluate_many_gives_each_set_its_own_evaluation(lm, data):
    # one clean pass per batch for all sets (dL/dx for the g-SAE, ignored by the others), yet
    # every report is the set's own evaluation, alive window past the eval rows included
    relu = _sae("relu", sparsity=1.0)
    with torch.no_grad():
        relu.b_enc.sub_(1.5)  # rarely firing latents: alive depends on the window
    sets = [relu, _sae("topk", seed=1), _sae("gtopk", seed=2, beta=4.0)]
    kw = dict(n_tokens=4 * N_CTX, batch_size=8, alive_tokens=40 * 31, exclude_tokens=())
    many = sl.evaluate_many(lm, sets, data, **kw)
    assert len(many) == 3 and len({r["alive"] for r in many}) == 3
    for sae, rep in zip(sets, many, strict=True):
        alone = _quiet(lm, sae, data, **kw)
        assert rep.keys() == alone.keys()
        for key, v in alone.items():
            assert rep[key] == pytest.approx(v, rel=1e-6, abs=1e-9), key


def test_evaluate_many_refuses_sets_at_different_sites(lm, data):
    a, b = _sae("topk"), _sae("topk", site="resid_pre.2")
    with pytest.raises(ValueError, match="same sites"):
        sl.evaluate_many(lm, [a, b], data, n_tokens=2 * N_CTX)
    assert sl.evaluate_many(lm, [], data) == []


def test_cached_alive_window_equals_the_live_one(lm, data, tmp_path):
    cache = sl.cache_activations(lm, data, "resid_pre.3", tmp_path / "c", progress=False)
    sae = _sae("topk")
    for specials in ((), None):  # positions only; and storyworld's mid-row BOS left out too
        kw = dict(n_tokens=4 * N_CTX, batch_size=8, alive_tokens=30 * 31, exclude_tokens=specials)
        live = _quiet(lm, sae, data, **kw)
        cached = sl.evaluate(cache, sae, **kw)
        mid = int((data.tokens[:30, 1:] == 0).sum()) if specials is None else 0
        assert cached["alive"] == live["alive"]
        assert cached["alive_window_tokens"] == live["alive_window_tokens"] == 30 * 31 - mid
        for key in ("l0", "mse", "explained_var", "l2_ratio", "dead_frac"):  # one SiteStats
            assert cached[key] == pytest.approx(live[key], rel=1e-5), key
        bos = int((data.tokens[:4, 1:] == 0).sum())  # storyworld's BOS (id 0) after position 0
        assert cached["n_tokens"] == live["n_tokens"] == 4 * 31 - (bos if specials is None else 0)
    assert "ce_increase" not in cached  # no model, no CE


def test_evaluate_on_a_cache_refuses_data_another_site_or_width(lm, data, tmp_path):
    cache = sl.cache_activations(lm, data, "resid_pre.3", tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="data=None"):
        sl.evaluate(cache, _sae("topk"), data)
    with pytest.raises(ValueError, match="holds the site resid_pre.3"):
        sl.evaluate(cache, _sae("topk", site="resid_pre.2"))
    with pytest.raises(ValueError, match="needs `data`"):
        sl.evaluate(lm, _sae("topk"))


# --- selection overlap ---------------------------------------------------------------------------


def _tiny(arch: str = "topk", W_enc=None, b_enc=None, W_dec=None, **kw):
    """A 4 x 4 SAE with k = 2 and the given weights (pre-activations z = x W_enc + b_enc)."""
    cfg = sl.SAEConfig.create(
        architecture=arch, d_in=4, d_sae=4, k=2, normalize_activations="none", **kw
    )
    sae = sl.SAE.from_config(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4) if W_enc is None else W_enc)
        sae.b_enc.copy_(torch.zeros(4) if b_enc is None else b_enc)
        sae.W_dec.copy_(torch.eye(4) if W_dec is None else W_dec)
    return sae


def test_selection_overlap_by_hand():
    x = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    a = _tiny()  # selects {0, 1} and {2, 3}
    b = _tiny(b_enc=torch.tensor([0.0, 0.0, 10.0, 0.0]))  # z + b: {0, 2} and {2, 3}
    assert sl.selected_latents(a, x).sort(-1).values.tolist() == [[0, 1], [2, 3]]
    assert sl.selection_overlap(a, b, x) == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert sl.selection_overlap(b, a, x) == pytest.approx(0.75)  # symmetric for equal k


def test_gsae_overlap_with_its_own_topk_by_hand():
    # z = x = [4, 3, 2, 1]; g = e_2, D = I: |g D^T| = e_2, s = z + z * e_2 = [4, 3, 4, 1]
    g = _tiny("gtopk", beta=1.0)
    x, grad = torch.tensor([[4.0, 3.0, 2.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    assert sl.selected_latents(g, x, grad).sort(-1).values.tolist() == [[0, 2]]
    assert sl.selection_overlap(g, "topk", x, grad) == 0.5  # TopK(z) = {0, 1}
    with pytest.raises(ValueError, match="needs grad"):
        sl.selection_overlap(g, "topk", x)


def test_identical_selection_is_one_and_disjoint_is_zero():
    torch.manual_seed(0)
    x = torch.randn(5, 7, 64)
    topk = _sae("topk", k=8)
    assert sl.selection_overlap(topk, topk, x) == 1.0
    assert sl.selection_overlap(topk, "topk", x) == 1.0
    zero = torch.zeros(4, 4)
    a = _tiny(W_enc=zero, b_enc=torch.tensor([1.0, 1.0, 0.0, 0.0]))
    b = _tiny(W_enc=zero, b_enc=torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert sl.selection_overlap(a, b, torch.randn(3, 4)) == 0.0


def test_gsae_at_beta_zero_selects_what_topk_selects():
    torch.manual_seed(0)
    x, grad = torch.randn(6, 9, 64), torch.randn(6, 9, 64)
    g = _sae("gtopk", k=8, beta=0.0)
    assert sl.selection_overlap(g, "topk", x, grad) == 1.0
    t = _sae("topk", k=8)  # the same seed: the same weights as g
    assert sl.selection_overlap(g, t, x, grad) == 1.0
    far = _sae("gtopk", k=8, beta=50.0)
    assert 0.0 < sl.selection_overlap(far, "topk", x, grad) < 1.0  # the gradient moved it


def test_selection_overlap_refuses_what_it_cannot_compare():
    x = torch.randn(3, 64)
    with pytest.raises(ValueError, match="'relu' SAE, which selects no fixed set"):
        sl.selection_overlap(_sae("relu"), "topk", x)
    with pytest.raises(ValueError, match="'batchtopk' SAE"):
        sl.selection_overlap(_sae("topk"), _sae("batchtopk"), x)
    with pytest.raises(ValueError, match=r"d_sae=512, k=1 but b has d_sae=512, k=2"):
        sl.selection_overlap(_sae("topk"), _sae("topk", k=2), x)
    with pytest.raises(ValueError, match="b='random' is unknown"):
        sl.selection_overlap(_sae("topk"), "random", x)


def test_alive_window_counts_the_positions_left_after_special_tokens(lm, data):
    sae = _sae("topk")
    specials = int((data.tokens[:8, 1:] == lm.tokenizer.bos_token_id).sum())
    assert specials > 0  # storyworld's rows hold documents' BOS tokens mid-row
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = evaluate(lm, sae, data, n_tokens=8 * N_CTX, batch_size=8, alive_tokens=None)
    assert rep["n_tokens"] == 8 * 31 - specials  # the eval's positions, special tokens left out
    assert rep["alive_window_tokens"] == rep["n_tokens"]  # was 8 * 31: before the exclusion


def test_held_out_tokens_load_enough_rows_for_the_whole_alive_window(storyworld_data):
    n_ctx, alive = 32, 40 * 31 + 5  # not a whole number of rows
    need = sl.held_out_tokens(n_ctx, eval_tokens=4 * n_ctx, alive_tokens=alive)
    rows = storyworld_data(n_ctx, n_tokens=need, split="validation")
    assert len(rows) * (n_ctx - 1) >= alive  # BOS left out of every row
    assert sl.held_out_tokens(n_ctx, 10**6, alive) == 10**6  # the eval rows already hold it
    assert sl.held_out_tokens(n_ctx, 4 * n_ctx, None) == 4 * n_ctx
