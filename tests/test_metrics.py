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
    cfg = sl.SAEConfig(architecture=arch, d_in=64, d_sae=512, site=site,
                       normalize_activations="none", **kw)  # fmt: skip
    return sl.SAE(cfg).eval()


def _quiet(*args, **kw):
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
    assert rep["alive_window_tokens"] == have
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


def test_cached_alive_window_equals_the_live_one(lm, data, tmp_path):
    cache = sl.cache_activations(lm, data, "resid_pre.3", tmp_path / "c", progress=False)
    sae = _sae("topk")
    from saelab.core.cache import evaluate_cached

    live = _quiet(lm, sae, data, n_tokens=4 * N_CTX, batch_size=8, alive_tokens=30 * 31)
    cached = evaluate_cached({"resid_pre.3": sae}, cache, n_tokens=4 * N_CTX, batch_size=8,
                             alive_tokens=30 * 31)  # fmt: skip
    assert cached["alive"] == live["alive"] and cached["alive_window_tokens"] == 30 * 31
    assert cached["l0"] == pytest.approx(live["l0"])
    assert cached["mse"] == pytest.approx(live["mse"], rel=1e-5)
    assert cached["n_tokens"] == live["n_tokens"] == 4 * 31
