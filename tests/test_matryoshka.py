"""Matryoshka BatchTopK (Bussmann et al. 2025): nested prefixes, their loss terms against a
by-hand computation on both kernels, prefixes as SAEs, every objective, SAELens' training form."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import saelab as sl
from saelab.core import training as tr
from saelab.core.sae import SAE, SAEConfig, load_sae, save_sae

D_IN, D_SAE, K = 8, 64, 4


def make(kernels: str = "auto", **kw) -> SAE:
    torch.manual_seed(0)
    sae = SAE.from_config(
        SAEConfig.create(architecture="matryoshka", d_in=D_IN, d_sae=D_SAE, k=K, **kw)
    )
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        sae.act_scale.fill_(1.3)
    sae.kernels = kernels
    return sae


def test_widths_default_to_bussmann_et_al_groups_and_bad_ones_are_refused():
    assert make().cfg.widths == (4, 8, 16, 32, 64)  # groups d/16, d/16, d/8, d/4, d/2
    assert make(matryoshka_widths=[16, 32]).cfg.widths == (16, 32, 64)  # d_sae appended
    assert make(matryoshka_widths=(16, 64)).cfg.widths == (16, 64)
    assert make(matryoshka_widths=(64,)).cfg.widths == (64,)  # no inner prefix: plain BatchTopK
    for bad, match in [((32, 16), "strictly increasing"), ((16, 128), "go past d_sae=64"),
                       ((0, 16), "ints >= 1"), (16, "ints >= 1")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            make(matryoshka_widths=bad)
    with pytest.raises(ValueError, match="prefix_coeff=-1"):
        make(prefix_coeff=-1)


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
def test_each_inner_prefix_reconstructs_from_its_own_latents(kernels):
    sae = make(kernels).train()
    x = torch.randn(3, 5, D_IN)
    out = sae(x)
    xs = sae.normalize(x)
    terms = sae.loss_terms(xs, out._replace(x_hat=sae.normalize(out.x_hat)),
                           torch.zeros(D_SAE, dtype=torch.bool))  # fmt: skip
    assert sorted(terms) == ["auxk", "prefix16_mse", "prefix32_mse", "prefix4_mse", "prefix8_mse"]
    c = out.c.detach()
    for width in (4, 8, 16, 32):  # by hand: the first `width` latents decode on their own
        x_hat = c[..., :width] @ sae.W_dec[:width].detach() + sae.b_dec.detach()
        coeff, value = terms[f"prefix{width}_mse"]
        assert coeff == 1.0
        assert value.item() == pytest.approx(F.mse_loss(x_hat, xs).item(), rel=1e-5)
    # the full prefix is the SAE's own reconstruction
    full = c @ sae.W_dec.detach() + sae.b_dec.detach()
    assert torch.allclose(full, sae.normalize(out.x_hat).detach(), atol=1e-5)
    sum(v for _, v in terms.values()).backward()  # the prefix terms reach the encoder
    assert sae.W_enc.grad.abs().sum() > 0 and sae.W_dec.grad[:4].abs().sum() > 0


def test_a_prefix_is_the_sae_of_its_first_latents_at_inference(tmp_path):
    sae = make().train()
    sae.after_step_(sae(torch.randn(32, D_IN)))  # an inference threshold
    sae.eval()
    x = torch.randn(6, D_IN)
    out = sae(x)
    for width in (4, 16, 64):
        small = sae.prefix(width)
        assert small.cfg.architecture == "batchtopk" and small.cfg.d_sae == width
        c = small(x).c  # the same latents fire, with the same values (a narrower matmul)
        assert torch.equal(c != 0, out.c[:, :width] != 0)
        assert torch.allclose(c, out.c[:, :width], atol=1e-6)
    with pytest.raises(ValueError, match="width=10 is not a prefix; the prefixes: "):
        sae.prefix(10)
    state = torch.random.get_rng_state()
    half = sae.to(torch.float64).prefix(16)  # its dtype, and the global RNG left alone
    assert half.dtype == torch.float64 and torch.equal(torch.random.get_rng_state(), state)
    sae.to(torch.float32)
    save_sae(sae, tmp_path / "m")
    back = load_sae(tmp_path / "m")
    assert back.cfg == sae.cfg and torch.equal(back(x).c, out.c)
    saved = json.loads((tmp_path / "m" / "cfg.json").read_text())
    assert saved["matryoshka_widths"] == []


@pytest.mark.parametrize("loss", ["local", "e2e", "e2e+ds"])
def test_trains_with_every_objective(lm, storyworld_data, loss):
    data = storyworld_data(32, n_tokens=8 * 32 * 5)
    obj = sl.objective(loss, **(dict(kl_coeff=0.5, ds_coeff=2.5) if loss == "e2e+ds" else {}))
    sae = sl.SAEConfig.create(architecture="matryoshka", k=4, dict_ratio=2)  # d_sae 128
    cfg = tr.TrainConfig(sites=("resid_pre.3",), loss=obj, batch_size=8, n_tokens=8 * 32 * 4,
                         sae=sae, warmup=1, log_every=1, eval_tokens=4 * 32)  # fmt: skip
    run = sl.train(lm, data, cfg, None, progress=False)
    assert run.sae.cfg.widths == (8, 16, 32, 64, 128) and run.sae.threshold > 0
    train = [r for r in run.log if r["kind"] == "train"]
    assert all(r["l0"] == pytest.approx(4.0) for r in train)  # k on average, exactly
    assert all({f"prefix{w}_mse" for w in (8, 16, 32, 64)} <= set(r) for r in train)
    assert ("kl" in train[0]) == (loss != "local")
    assert train[-1]["prefix8_mse"] > train[-1]["prefix64_mse"]  # fewer latents, worse


def test_a_saelens_matryoshka_training_folder_loads_with_its_widths(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    torch.manual_seed(2)
    cfg = MatryoshkaBatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4,
                                               matryoshka_widths=[8, 32, 64])  # fmt: skip
    theirs = MatryoshkaBatchTopKTrainingSAE(cfg)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.3)
        theirs.topk_threshold.fill_(0.25)
    theirs.save_model(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "cfg.json").read_text())
    if saved["architecture"] != "matryoshka_batchtopk":
        pytest.skip(f"sae-lens {sae_lens.__version__} wrote architecture={saved['architecture']!r}")
    ours = sl.load_sae(tmp_path / "m")
    assert ours.cfg.architecture == "matryoshka" and ours.cfg.widths == (8, 32, 64)
    assert float(ours.threshold) == pytest.approx(0.25)
    x = torch.randn(5, D_IN)
    z = ours.pre_acts(x)
    assert torch.equal(ours(x).c, torch.relu(z) * (z > 0.25))
