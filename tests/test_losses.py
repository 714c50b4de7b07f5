"""Loss terms against hand computations on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from saelab.core.losses import auxk_loss, downstream_mse, kl_loss, mse_loss, sparsity_loss


def test_sparsity_p1_and_p2():
    c = torch.tensor([[[1.0, -2.0, 0.0], [3.0, 0.0, 4.0]]])  # [1, 2, 3]
    # p=1: token norms 3 and 7, mean 5, / d_in=4.
    assert sparsity_loss(c, d_in=4).item() == pytest.approx(5 / 4)
    # p=2: token norms sqrt(5) and 5.
    assert sparsity_loss(c, d_in=4, p=2).item() == pytest.approx((math.sqrt(5) + 5) / 2 / 4)


def test_mse_is_mean_over_elements():
    x = torch.zeros(2, 3)
    x_hat = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert mse_loss(x_hat, x).item() == pytest.approx(5 / 6)


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_kl_matches_hand_computation():
    clean = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])  # 2 tokens x 3 vocab
    sae = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    p, q = clean.softmax(-1).tolist(), sae.softmax(-1).tolist()
    expected = (_kl(p[0], q[0]) + _kl(p[1], q[1])) / 2
    assert kl_loss(clean, sae).item() == pytest.approx(expected, rel=1e-5)
    # Leading dims are flattened into tokens: [1, 2, 3] gives the same mean.
    assert kl_loss(clean[None], sae[None]).item() == pytest.approx(expected, rel=1e-5)


def test_kl_direction_is_clean_to_sae():
    clean = torch.tensor([[3.0, 0.0, 0.0]])  # peaked
    sae = torch.tensor([[0.0, 0.0, 0.0]])  # uniform
    p, q = clean.softmax(-1)[0].tolist(), sae.softmax(-1)[0].tolist()
    forward, reverse = _kl(p, q), _kl(q, p)
    assert abs(forward - reverse) > 0.05  # asymmetric example
    assert kl_loss(clean, sae).item() == pytest.approx(forward, rel=1e-5)


def test_kl_zero_when_equal_and_no_grad_into_clean():
    clean = torch.randn(2, 4, 7, requires_grad=True)
    sae = clean.detach().clone().requires_grad_(True)
    assert kl_loss(clean, sae).item() == pytest.approx(0.0, abs=1e-6)
    loss = kl_loss(clean, sae + torch.randn_like(sae))
    loss.backward()
    assert clean.grad is None
    assert sae.grad is not None and sae.grad.abs().sum() > 0


def test_downstream_mse_is_mean_over_layers():
    clean = [torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3)]
    sae = [torch.full((2, 3), 1.0), torch.full((2, 3), 2.0), torch.full((2, 3), 3.0)]
    ds_coeff, n_later = 2.5, 3
    per_layer = [1.0, 4.0, 9.0]
    raw = downstream_mse(sae, clean, normalise=False).item()
    assert raw == pytest.approx(sum(per_layer) / 3)
    assert ds_coeff * raw == pytest.approx(ds_coeff / n_later * sum(per_layer))


def test_normalised_downstream_error_is_a_fraction_of_each_clean_residual():
    clean = [torch.full((2, 3), 2.0), torch.full((2, 3), 20.0)]  # a layer 10x larger
    sae = [c * 1.1 for c in clean]  # the same 10% error at each
    assert downstream_mse(sae, clean).item() == pytest.approx(0.01)
    assert downstream_mse(sae, clean, normalise=False).item() == pytest.approx((0.04 + 4) / 2)


def test_downstream_mse_errors_and_detaches_clean():
    with pytest.raises(ValueError, match="2 SAE residuals and 1 clean"):
        downstream_mse([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)])
    with pytest.raises(ValueError, match="at least one"):
        downstream_mse([], [])
    clean = torch.ones(3, requires_grad=True)
    downstream_mse([torch.zeros(3, requires_grad=True)], [clean]).backward()
    assert clean.grad is None


def test_auxk_selects_top_dead_latents():
    # 2 tokens, 4 latents, d_in = 4 with the identity as decoder: e_hat equals c_aux.
    pre = torch.tensor([[5.0, 3.0, 2.0, -1.0], [1.0, 0.5, 4.0, 6.0]], requires_grad=True)
    dead = torch.tensor([False, True, True, True])
    W = torch.eye(4, requires_grad=True)
    residual = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0]])
    loss = auxk_loss(residual, pre, W, dead, k_aux=2)
    # Token 0: latent 0 is alive (excluded despite the largest pre); dead top-2 are 1 and 2.
    # Token 1: dead top-2 are 3 and 2.
    c_aux = torch.tensor([[0.0, 3.0, 2.0, 0.0], [0.0, 0.0, 4.0, 6.0]])
    variance = (residual - residual.mean(0)).pow(2).sum()
    expected = (c_aux - residual).pow(2).sum() / variance
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert W.grad is not None and W.grad.abs().sum() > 0
    assert pre.grad is not None
    assert pre.grad[0, 0] == 0 and pre.grad[1, 0] == 0  # alive latent gets no AuxK gradient
    assert pre.grad[0, 1] != 0


def test_auxk_fewer_dead_than_k_aux_uses_all_dead_and_relu():
    pre = torch.tensor([[1.0, -2.0, 3.0], [1.0, -2.0, 3.0]])
    dead = torch.tensor([False, True, True])
    residual = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    loss = auxk_loss(residual, pre, torch.eye(3), dead, k_aux=10)
    c_aux = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 3.0]])  # ReLU zeroes dead latent 1
    expected = (c_aux - residual).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum()
    assert loss.item() == pytest.approx(expected.item())


def test_auxk_zero_without_dead_latents():
    pre = torch.randn(2, 3, 5, requires_grad=True)
    loss = auxk_loss(torch.randn(2, 3, 4), pre, torch.randn(5, 4), torch.zeros(5, dtype=bool), 2)
    assert loss.item() == 0.0 and loss.dtype == pre.dtype
    loss.backward()  # still part of the graph
    assert pre.grad is not None


@pytest.mark.parametrize("chunk", [40, 10**6])  # several chunks (recomputed), one (kept)
@pytest.mark.parametrize("save", [True, False])
def test_kl_from_a_shared_target_equals_kl_from_logits(chunk, save, monkeypatch):
    """Training computes the clean side once per batch (kl_target, in place) for every SAE."""
    from saelab.core import losses

    if not save:
        monkeypatch.setattr(losses, "SAVE_ELEMENTS", 0)
    g = torch.Generator().manual_seed(0)
    clean, sae = torch.randn(6, 5, 37, generator=g) * 3, torch.randn(6, 5, 37, generator=g)
    p, q = F.log_softmax(clean, -1).exp(), F.log_softmax(sae, -1)
    want = (p * (p.log() - q)).sum(-1).mean()
    a, b = sae.clone().requires_grad_(True), sae.clone().requires_grad_(True)
    plain = kl_loss(clean, a, chunk_elements=chunk)
    target = losses.kl_target(clean.clone(), chunk_elements=chunk, in_place=True)
    shared = kl_loss(None, b, chunk_elements=chunk, target=target)
    (plain * 2).backward()
    (shared * 2).backward()
    assert plain.item() == pytest.approx(want.item(), rel=1e-5)
    assert shared.item() == pytest.approx(want.item(), rel=1e-5)
    want_grad = 2 * (F.softmax(sae, -1) - p) / (6 * 5)
    torch.testing.assert_close(a.grad, want_grad, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(b.grad, want_grad, atol=1e-7, rtol=1e-5)
