"""The sparse TopK-family kernels (saelab.core.sparse) equal the dense path, both directions."""

from __future__ import annotations

import pytest
import torch

import saelab as sl
from saelab.core import sparse
from saelab.core.sae import SAE

D_IN, D_SAE, K = 16, 96, 6

CASES = {
    "topk": dict(architecture="topk", k=K),
    "topk-pre-subtract": dict(architecture="topk", k=K, pre_subtract_b_dec=True),
    "gtopk-plain": dict(architecture="gtopk", k=K, beta=4.0),
    "gtopk-score-rms": dict(architecture="gtopk", k=K, beta=2.0, value_mode="score",
                            grad_norm="rms"),
    "batchtopk": dict(architecture="batchtopk", k=K),
    "batchtopk-grad-score": dict(architecture="batchtopk", k=K, beta=1.0, value_mode="score"),
    "matryoshka": dict(architecture="matryoshka", k=K),
}  # fmt: skip


def pair(kw: dict, seed: int = 0) -> tuple[SAE, SAE]:
    """Two copies of one randomly initialised SAE: sparse kernels and dense."""
    torch.manual_seed(seed)
    sae = SAE.from_config(sl.SAEConfig.create(d_in=D_IN, d_sae=D_SAE, **kw))
    with torch.no_grad():  # a non-trivial state: biases, a scale, rows not exactly unit
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        sae.act_scale.fill_(1.7)
    sae.kernels = "sparse"
    dense = SAE.from_config(sae.cfg)
    dense.load_state_dict(sae.state_dict())
    dense.kernels = "dense"
    assert sae.uses_sparse and not dense.uses_sparse
    return sae, dense


def run(sae: SAE, x, grad, dead):
    """Forward, the step's loss (MSE + the SAE's own terms), and the gradients it sends."""
    x = x.clone().requires_grad_(True)
    out = sae(x, grad=grad if sae.needs_grad else None)
    own = sae.loss_terms(sae.normalize(x.detach()), out._replace(x_hat=sae.normalize(out.x_hat)),
                         dead)  # fmt: skip
    loss = (out.x_hat - x.detach()).pow(2).mean() + sum(c * v for c, v in own.values())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in sae.named_parameters()} | {"x": x.grad.clone()}
    return out, loss.detach(), grads


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("with_dead", [False, True])
def test_sparse_equals_dense(name, with_dead):
    sae, dense = pair(CASES[name])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, D_IN, generator=g)
    grad = torch.randn(3, 7, D_IN, generator=g)
    dead = torch.rand(D_SAE, generator=g) < (0.3 if with_dead else 0.0)
    out_s, loss_s, grads_s = run(sae, x, grad, dead)
    out_d, loss_d, grads_d = run(dense, x, grad, dead)
    assert out_s.codes is not None and out_d.codes is None
    torch.testing.assert_close(out_s.c, out_d.c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_s.x_hat, out_d.x_hat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_s, loss_d, atol=1e-5, rtol=1e-5)
    assert set(grads_s) == set(grads_d)
    for n in grads_s:
        torch.testing.assert_close(grads_s[n], grads_d[n], atol=1e-5, rtol=1e-5, msg=n)
    fired_s, l0_s, n_s = out_s.stats()
    fired_d, l0_d, n_d = out_d.stats()
    assert torch.equal(fired_s, fired_d) and l0_s == pytest.approx(l0_d) and n_s == n_d == 21
    if with_dead:  # AuxK reached dead latents that the main selection did not pick
        unpicked = dead & ~fired_s
        assert unpicked.any() and grads_s["W_enc"][:, unpicked].abs().sum() > 0


def test_batchtopk_eval_threshold_sparse_equals_dense():
    sae, dense = pair(CASES["batchtopk"])
    for m in (sae, dense):
        m.threshold.fill_(0.2)
        m.eval()
    x = torch.randn(4, 5, D_IN)
    torch.testing.assert_close(sae(x).c, dense(x).c, atol=1e-6, rtol=1e-6)
    assert (sae(x).c > 0).sum(-1).float().std() > 0  # a variable count per token


def test_batchtopk_theta_candidate_matches_dense():
    sae, dense = pair(CASES["batchtopk"])
    x = torch.randn(2, 9, D_IN)
    sae(x), dense(x)
    assert sae._batch_min is not None
    torch.testing.assert_close(sae._batch_min, dense._batch_min)


def test_train_step_sparse_equals_dense(lm, storyworld_data):
    """Two library steps, sparse and dense kernels, leave the same SAE (e2e: through the model)."""
    from saelab.core import training
    from saelab.core.models import parse_site

    site = parse_site("resid_pre.2")
    data = storyworld_data(32, 4 * 32)
    batch = data.tokens[:4]
    cfg = training.TrainConfig(
        sites=(str(site),),
        loss="e2e",
        batch_size=4,
        dead_tokens=1,
        sae=sl.SAEConfig.create(architecture="topk", k=4, dict_ratio=2.0),
    )
    ctx = training.context(lm, data, [cfg], [None], None, resume=False, overwrite=False)
    states = []
    for kernels in ("sparse", "dense"):
        m = training.member(ctx, cfg, None, resume=False)
        state = m.state
        state.saes[site].kernels = kernels  # "sparse" (d_sae 128 = 32 k) or "dense"
        state.since_fire[site] += 2 * (torch.arange(state.since_fire[site].numel()) % 3 == 0)
        for _ in range(2):
            logs = training.step(ctx, m, batch)
        states.append((state, logs))
    (a, la), (b, lb) = states
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6) and la["auxk"] > 0
    for (n, p), q in zip(a.saes[site].named_parameters(), b.saes[site].parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5, msg=n)


def test_codes_layout():
    rows, latents, offsets = sparse.from_flat(torch.tensor([1, 4, 5, 11]), 3, 4)
    assert rows.tolist() == [0, 1, 1, 2] and latents.tolist() == [1, 0, 1, 3]
    assert offsets.tolist() == [0, 1, 3]
    codes = sparse.SparseCodes(torch.tensor([1.0, 0.0, 2.0, 3.0]), latents, rows, offsets, 4)
    assert codes.dense().tolist() == [[0, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 3]]
    assert codes.fired().tolist() == [False, True, False, True] and codes.l0() == 1.0


def test_auto_kernels_follow_the_shape_and_bad_values_are_refused():
    small = SAE.from_config(sl.SAEConfig.create(architecture="topk", k=32, d_in=64, d_sae=256))
    wide = SAE.from_config(sl.SAEConfig.create(architecture="topk", k=32, d_in=64, d_sae=3200))
    assert not small.uses_sparse and wide.uses_sparse
    assert SAE.from_config(
        sl.SAEConfig.create(architecture="topk", k=64, d_in=768, d_sae=1536)
    ).uses_sparse
    assert not SAE.from_config(
        sl.SAEConfig.create(architecture="relu", d_in=64, d_sae=3200)
    ).uses_sparse
    small.kernels = "sparse"
    assert small.uses_sparse
    small.kernels = "fast"
    with pytest.raises(ValueError, match="kernels='fast' is unknown"):
        small(torch.randn(2, 64))


def test_batch_top_is_the_flat_top_however_the_mass_is_spread():
    from saelab.core.architectures.batchtopk import batch_top

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 80, generator=g)
    cases = [x, x * torch.rand(50, 1, generator=g) * 3, x.clone()]
    cases[2][7] += 100  # one token holds far more of the batch's top than the others
    for case in cases:
        want = case.reshape(-1).topk(50 * 4).indices.sort().values
        assert torch.equal(batch_top(case, 4), want)
    ties = torch.zeros(50, 80)  # every entry tied: the full ranking, still k N of them
    assert batch_top(ties, 4).numel() == 200
