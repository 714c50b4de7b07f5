"""JumpReLU (Rajamanoharan et al. 2024): the activation, its STE gradients, L0, every objective."""

from __future__ import annotations

import math

import pytest
import torch

import saelab as sl
from saelab.core import training as tr
from saelab.core.architectures.jumprelu import jumprelu, step
from saelab.core.sae import SAE, SAEConfig, load_sae, save_sae

D_IN, D_SAE = 8, 32


def make(**kw) -> SAE:
    torch.manual_seed(0)
    return SAE.from_config(SAEConfig.create(architecture="jumprelu", d_in=D_IN, d_sae=D_SAE, **kw))


def test_activation_is_z_times_step_and_thresholds_start_at_init():
    sae = make(threshold_init=0.05)
    assert torch.allclose(sae.threshold, torch.full((D_SAE,), 0.05))
    out = sae(torch.randn(4, 3, D_IN))
    assert torch.equal(out.c, out.pre * (out.pre > sae.threshold))
    assert (out.c >= 0).all()


def test_ste_gradients_follow_the_rectangle_kernel():
    eps = 0.1
    z = torch.tensor([[0.30, 0.52, 0.90], [0.46, 0.10, 0.56]], requires_grad=True)
    theta = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (jumprelu(z, theta, eps) * g).sum().backward()
    inside = ((z - theta).abs() < eps / 2).float()  # K((z - theta) / eps)
    assert torch.allclose(theta.grad, (-(theta / eps) * inside * g).sum(0))
    assert torch.equal(z.grad, g * (z > theta))  # exact in z
    z.grad, theta.grad = None, None
    (step(z, theta, eps) * g).sum().backward()
    assert torch.allclose(theta.grad, (-(1 / eps) * inside * g).sum(0))
    assert z.grad is None  # the L0 term reaches only theta (paper §3)


def test_l0_penalty_is_the_count_over_d_in_and_trains_only_the_threshold():
    sae = make(l0_coeff=2.0, bandwidth=0.5)
    x = torch.randn(16, D_IN)
    out = sae(x)
    ((coeff, l0),) = sae.loss_terms(x, out, torch.zeros(D_SAE, dtype=torch.bool)).values()
    assert coeff == 2.0
    assert l0.item() == pytest.approx((out.c != 0).sum(-1).float().mean().item() / D_IN)
    l0.backward()
    assert sae.W_enc.grad is None and sae.threshold.grad.abs().sum() > 0
    assert (sae.threshold.grad <= 0).all()  # descent raises the thresholds: L0 falls


def test_thresholds_stay_non_negative_after_a_step():
    sae = make()
    with torch.no_grad():
        sae.threshold.uniform_(-1, 1)
    sae.after_step_(sae(torch.randn(3, D_IN)))
    assert (sae.threshold >= 0).all() and (sae.threshold == 0).any()


def test_bad_fields_are_refused():
    with pytest.raises(ValueError, match="bandwidth=0"):
        make(bandwidth=0)
    with pytest.raises(ValueError, match="threshold_init=-1"):
        make(threshold_init=-1)
    with pytest.raises(ValueError, match=r"architecture='jumprelu' has no field\(s\) \['k'\]"):
        make(k=4)


def test_save_and_load_keep_the_threshold(tmp_path):
    sae = make()
    with torch.no_grad():
        sae.threshold.uniform_(0, 1)
    save_sae(sae, tmp_path / "s")
    back = load_sae(tmp_path / "s")
    assert torch.equal(back.threshold, sae.threshold)
    (tmp_path / "s" / "cfg.json").write_text(
        (tmp_path / "s" / "cfg.json").read_text().replace('"jumprelu"', '"topk"', 1)
    )
    with pytest.raises(ValueError):  # a JumpReLU state is not a TopK one: strict load refuses
        load_sae(tmp_path / "s")


@pytest.mark.parametrize("loss", ["local", "e2e", "e2e+ds"])
def test_trains_with_every_objective_and_the_penalty_raises_thresholds(lm, storyworld_data, loss):
    data = storyworld_data(32, n_tokens=8 * 32 * 7)
    obj = sl.objective(loss, **(dict(kl_coeff=0.5, ds_coeff=2.5) if loss == "e2e+ds" else {}))
    means = []
    for l0_coeff in (0.0, 10.0):
        sae = sl.SAEConfig.create(architecture="jumprelu", dict_ratio=2, l0_coeff=l0_coeff,
                           threshold_init=0.01)  # fmt: skip
        cfg = tr.TrainConfig(sites=("resid_pre.3",), loss=obj, sae=sae, batch_size=8,
                             n_tokens=8 * 32 * 6, lr=0.01, warmup=1, log_every=1,
                             eval_tokens=4 * 32)  # fmt: skip
        run = sl.train(lm, data, cfg, None, progress=False)
        assert all(math.isfinite(r["loss"]) for r in run.log if r["kind"] == "train")
        assert "l0_penalty" in next(r for r in run.log if r["kind"] == "train")
        means.append(run.sae.threshold.mean().item())
    assert means[1] > means[0]
