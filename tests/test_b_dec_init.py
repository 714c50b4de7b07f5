"""The decoder bias from the data (issue 31): `TrainConfig.b_dec_init`."""

import pytest
import torch

import saelab as sl
from saelab.core import setup
from saelab.core.models import parse_site
from saelab.core.passes import clean_pass, sae_positions

SITE = "resid_pre.3"


def test_geometric_median_is_the_centre_and_ignores_an_outlier():
    g = torch.Generator().manual_seed(0)
    centre = torch.tensor([3.0, -2.0, 0.5])
    x = centre + torch.randn(2000, 3, generator=g)
    x[0] = 1e4  # one huge point (an attention sink) drags the mean, not the median
    assert (setup.geometric_median(x) - centre).norm() < 0.1
    assert (x.mean(0) - centre).norm() > 5


@pytest.mark.parametrize("method", ["mean", "geometric_median"])
def test_b_dec_starts_at_the_datas_centre_in_the_saes_units(lm, storyworld_data, method):
    data = storyworld_data(64, 8000)
    sae = sl.SAE.from_config(sl.SAEConfig.create(architecture="topk", k=4, d_in=64, d_sae=128,
                                                 site=SITE))  # fmt: skip
    keep = sae_positions(data)
    setup.estimate_act_scales(lm, data, {parse_site(SITE): sae}, keep, 16)
    out = setup.init_b_dec(lm, data, {parse_site(SITE): sae}, method, keep, 16)
    x = clean_pass(lm, data.tokens, [parse_site(SITE)]).acts[parse_site(SITE)][:, 1:]
    raw = x.reshape(-1, 64)  # every row: the estimate reads them all (8000 < 2**16 tokens)
    want = raw.mean(0) if method == "mean" else setup.geometric_median(raw[: setup.SAMPLE])
    torch.testing.assert_close(sae.b_dec / sae.act_scale, want, rtol=1e-3, atol=1e-4)
    assert out[SITE] == pytest.approx(float(sae.b_dec.norm()))
    # an SAE whose weights are zero reconstructs the data's centre: x_hat = b_dec / act_scale
    assert sae.b_dec.norm() > 0


def test_auto_is_mean_for_topk_and_pre_subtracting_saes_zeros_for_plain_relu():
    def method(**sae):
        cfg = sl.TrainConfig(sae=sl.SAEConfig.create(**sae))
        one = {parse_site(SITE): sl.SAE.from_config(cfg.sae_config(SITE, 64))}
        return setup.b_dec_method(cfg, one)

    assert method(architecture="topk", k=4) == "mean"
    assert method(architecture="gtopk", k=4) == "mean"
    assert method(architecture="relu") == "zeros"
    assert method(architecture="relu", pre_subtract_b_dec=True) == "mean"
    with pytest.raises(ValueError, match="b_dec_init='median' is not valid"):
        sl.TrainConfig(b_dec_init="median")


def test_a_run_records_its_b_dec_init(lm, storyworld_data):
    sae = sl.SAEConfig.create(architecture="topk", k=4, dict_ratio=2)
    cfg = sl.TrainConfig(sites=(SITE,), sae=sae, batch_size=4, n_tokens=4 * 64 * 2, warmup=1,
                         eval_tokens=2 * 64)  # fmt: skip
    run = sl.train(lm, storyworld_data(64, 4000), cfg, progress=False)
    rec = next(r for r in run.log if r["kind"] == "b_dec_init")
    assert rec["method"] == "mean" and rec["norm"][SITE] > 0
