"""BatchTopK (Bussmann et al. 2024): batch selection, the inference threshold, every objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import saelab as sl
from saelab.core import training as tr
from saelab.core.sae import SAE, SAEConfig, load_sae, save_sae

D_IN, D_SAE, K = 8, 32, 4


def make(**kw) -> SAE:
    torch.manual_seed(0)
    sae = SAE.from_config(
        SAEConfig.create(architecture="batchtopk", d_in=D_IN, d_sae=D_SAE, k=K, **kw)
    )
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    return sae


def test_training_keeps_the_k_times_n_largest_activations_of_the_batch():
    sae = make().train()
    x = torch.randn(3, 5, D_IN)
    out = sae(x)
    relu = F.relu(out.pre).reshape(-1)
    keep = relu.topk(K * 15).indices
    want = torch.zeros_like(relu).index_put_((keep,), relu[keep]).view_as(out.pre)
    assert torch.equal(out.c, want)
    per_token = (out.c != 0).sum(-1)
    assert per_token.float().mean() == K and per_token.min() < per_token.max()  # varies by token


def test_threshold_is_a_running_mean_of_the_smallest_kept_activation():
    sae = make(threshold_decay=0.9).train()
    assert sae.threshold.item() == -1.0  # not estimated
    mins = []
    for _ in range(3):
        out = sae(torch.randn(4, D_IN))
        mins.append(out.c[out.c > 0].min().item())
        sae.after_step_(out)
    want = mins[0]
    for m in mins[1:]:
        want = 0.9 * want + 0.1 * m
    assert sae.threshold.item() == pytest.approx(want, rel=1e-6)


def test_inference_uses_one_global_threshold_and_falls_back_before_one_exists():
    sae = make().eval()
    x = torch.randn(6, D_IN)
    before = sae(x).c  # no threshold yet: the batch rule
    assert (before != 0).sum() == K * 6
    with torch.no_grad():
        sae.threshold.fill_(0.05)
    out = sae(x)
    assert torch.equal(out.c, F.relu(out.pre) * (out.pre > 0.05))


def test_gradient_informed_selection_ranks_the_batch_by_the_g_sae_score():
    sae = make(beta=4.0).train()
    assert sae.needs_grad and not make().needs_grad
    x, g = torch.randn(2, 3, D_IN), torch.randn(2, 3, D_IN)
    with pytest.raises(ValueError, match="needs grad"):
        sae(x)
    out = sae(x, grad=g)
    g_hat = g / g.norm(dim=-1, keepdim=True)
    s = out.pre + 4.0 * out.pre * (g_hat @ sae.W_dec.T).abs()
    keep = s.reshape(-1).topk(K * 6).indices
    nz = torch.zeros(s.numel(), dtype=torch.bool).index_fill_(0, keep, True)
    nz &= F.relu(out.pre).reshape(-1) > 0  # plain values: a kept latent with z <= 0 stays 0
    assert torch.equal(out.c.reshape(-1) != 0, nz)


def test_save_and_load_keep_the_threshold(tmp_path):
    sae = make().train()
    sae.after_step_(sae(torch.randn(16, D_IN)))
    save_sae(sae, tmp_path / "s")
    back = load_sae(tmp_path / "s")
    assert type(back).__name__ == "BatchTopKSAE" and not back.training
    assert torch.equal(back.threshold, sae.threshold) and back.threshold > 0
    x = torch.randn(5, D_IN)
    assert torch.equal(back(x).c, sae.eval()(x).c)


@pytest.mark.parametrize("loss", ["local", "e2e", "e2e+ds"])
def test_trains_with_every_objective(lm, storyworld_data, loss):
    data = storyworld_data(32, n_tokens=8 * 32 * 5)
    obj = sl.objective(loss, **(dict(kl_coeff=0.5, ds_coeff=2.5) if loss == "e2e+ds" else {}))
    cfg = tr.TrainConfig(sites=("resid_pre.3",), loss=obj, batch_size=8, n_tokens=8 * 32 * 4,
                         sae=sl.SAEConfig.create(architecture="batchtopk", k=4, dict_ratio=2),
                         warmup=1, log_every=1, eval_tokens=4 * 32)  # fmt: skip
    run = sl.train(lm, data, cfg, None, progress=False)
    assert run.sae.threshold > 0 and not run.sae.training
    train_logs = [r for r in run.log if r["kind"] == "train"]
    assert all(r["l0"] == pytest.approx(4.0) for r in train_logs)  # k on average, exactly
    assert run.log[-1]["kind"] == "eval" and 0 < run.log[-1]["l0"] < 128


def test_gradient_informed_batchtopk_trains_but_not_from_a_cache(lm, storyworld_data, tmp_path):
    data = storyworld_data(32, n_tokens=8 * 32 * 5)
    sae = sl.SAEConfig.create(architecture="batchtopk", k=4, dict_ratio=2, beta=1.0)
    cfg = tr.TrainConfig(sites=("resid_pre.3",), sae=sae, batch_size=8, n_tokens=8 * 32 * 2,
                         warmup=1, eval_tokens=4 * 32)  # fmt: skip
    assert sl.train(lm, data, cfg, None, progress=False).sae.threshold > 0
    cache = sl.cache_activations(lm, data, "resid_pre.3", tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="batchtopk.*dL/dx"):
        sl.train(lm, cache, cfg, None, progress=False)
