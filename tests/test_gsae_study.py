"""saelab.studies.gsae: the label-free copy of a g-SAE, held-out selection overlap, seed stats."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import saelab as sl
from saelab.studies import gsae

SITE = "resid_pre.3"


def _gsae(beta: float, d_in: int = 64, grad_norm: str = "unit", seed: int = 0) -> sl.SAE:
    torch.manual_seed(seed)
    cfg = sl.SAEConfig.create(architecture="gtopk", d_in=d_in, d_sae=128, k=4, beta=beta,
                       grad_norm=grad_norm, site=SITE)  # fmt: skip
    return sl.SAE.from_config(cfg).eval()


def test_label_free_is_the_gsae_at_beta_zero_as_a_plain_topk():
    sae = _gsae(4.0, d_in=16)
    with torch.no_grad():
        sae.b_enc.normal_()  # not the zero init: a bias changes z
        sae.act_scale.fill_(1.7)
    free = gsae.label_free(sae)
    assert free.cfg.architecture == "topk" and not free.cfg.needs_grad
    assert free.cfg.k == sae.cfg.k and free.cfg.d_sae == sae.cfg.d_sae
    x, g = torch.randn(5, 16), torch.randn(5, 16)
    at_zero = sl.SAE.from_config(replace(sae.cfg, beta=0.0))
    at_zero.load_state_dict(sae.state_dict())
    with torch.no_grad():
        assert torch.allclose(free(x).x_hat, at_zero.eval()(x, grad=g).x_hat, atol=1e-6)
        assert not torch.allclose(free(x).x_hat, sae(x, grad=g).x_hat)  # beta 4 selects otherwise
    with pytest.raises(ValueError, match="gradient-informed"):
        gsae.label_free(free)


def test_held_out_overlap_is_one_at_beta_zero_and_falls_with_beta():
    lm = sl.load_model("storyworld")
    data = sl.token_dataset("storyworld", lm.tokenizer, 32, split="validation", n_tokens=8 * 32)
    pairs = {"b0": (_gsae(0.0), "topk"), "b64": (_gsae(64.0), "topk"),
             "same-init": (_gsae(64.0), _gsae(0.0))}  # fmt: skip
    ov = gsae.held_out_overlaps(lm, pairs, data, n_tokens=6 * 32, batch_size=4)
    assert ov["b0"] == pytest.approx(1.0)
    assert 0 <= ov["b64"] < 0.95
    assert ov["same-init"] == pytest.approx(ov["b64"])  # same init: b0 selects TopK(z)


def test_seed_stats_and_noise_rule():
    s = gsae.seed_stats([1.0, 3.0])
    assert s["mean"] == 2.0 and s["n"] == 2 and s["sd"] == pytest.approx(math.sqrt(2))
    assert s["lo"] == pytest.approx(2 - 12.7062 * 1.0, rel=1e-4)  # t(0.975, 1) * sd / sqrt(2)
    one = gsae.seed_stats([1.0])
    assert one["mean"] == 1.0 and math.isnan(one["sd"]) and math.isnan(one["hi"])
    assert gsae.seed_noise([1.0, 1.5, 1.2]) == pytest.approx(0.5)
    assert math.isnan(gsae.seed_noise([1.0]))
    assert gsae.compare_to_noise(0.8, 1.0, noise=0.1) == "lower"
    assert gsae.compare_to_noise(0.8, 1.0, noise=0.3) == "no clear difference"  # within noise
    assert gsae.compare_to_noise(0.98, 1.0, noise=float("nan")) == "no clear difference"  # < 5%
    assert gsae.compare_to_noise(1.2, 1.0, noise=float("nan")) == "higher"
