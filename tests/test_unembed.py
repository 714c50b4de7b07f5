"""Streamed logits (`core/unembed.py`): the KL and CE computed from the final hidden state a
chunk of tokens at a time equal those of the materialised `[B, T, V]` logits, in value and in
gradient, and training and evaluation take that path when a batch's logits are large."""

import pytest
import torch
import torch.nn.functional as F

import saelab as sl
from saelab.core import passes, unembed
from saelab.core import training as tr
from saelab.core.models import parse_site

SITE = "resid_pre.3"


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_streamed_kl_and_ce_equal_autograd_on_the_logits(softcap, monkeypatch):
    monkeypatch.setattr(unembed, "STREAM_CHUNK", 3 * 97)  # several chunks, a ragged last one
    g = torch.Generator().manual_seed(0)
    N, d, V = 20, 16, 97
    w, b = torch.randn(V, d, generator=g), torch.randn(V, generator=g)
    u = unembed.Unembed(w, b, softcap, "lm_head")
    h_clean, h0 = torch.randn(N, d, generator=g) * 3, torch.randn(N, d, generator=g) * 3
    y = torch.randint(0, V, (N,), generator=g)

    def logits(h):
        z = F.linear(h, w, b)
        return torch.tanh(z / softcap) * softcap if softcap else z

    h_ref, h_new = h0.clone().requires_grad_(), h0.clone().requires_grad_()
    ref = F.kl_div(F.log_softmax(logits(h_ref), -1), F.log_softmax(logits(h_clean), -1),
                   log_target=True, reduction="batchmean")  # fmt: skip
    ref = ref + 0.3 * F.cross_entropy(logits(h_ref), y, reduction="sum")
    new = unembed.kl_streamed(unembed.Streamed(h_clean, u), unembed.Streamed(h_new, u))
    new = new + 0.3 * unembed.ce_streamed(unembed.Streamed(h_new, u), y).sum()
    ref.backward()
    new.backward()
    torch.testing.assert_close(new, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_new.grad, h_ref.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "arch, loss", [("relu", "e2e"), ("topk", "e2e+ds"), ("gtopk", "e2e"), ("gtopk", "local")]
)
def test_a_step_with_streamed_logits_equals_the_materialised_one(lm, storyworld_data, monkeypatch,
                                                                 arch, loss):  # fmt: skip
    kw = {"k": 8} if arch != "relu" else {}
    sae_cfg = sl.SAEConfig.create(architecture=arch, dict_ratio=2, **kw)
    obj = {"name": loss, "kl_coeff": 0.5, "ds_coeff": 2.5} if loss == "e2e+ds" else loss
    cfg = sl.TrainConfig(sites=(SITE,), sae=sae_cfg, loss=obj)
    tokens = storyworld_data(64, 64 * 8).tokens[:4]
    site, d = parse_site(SITE), lm.config.hidden_size

    def step():
        torch.manual_seed(0)
        sae = sl.SAE.from_config(cfg.sae_config(SITE, d))
        dead = {site: torch.zeros(sae.cfg.d_sae, dtype=torch.bool)}
        total, logs, _ = tr.compute_loss(lm, tokens, {site: sae}, cfg, dead)
        total.backward()
        return total, logs, {n: p.grad.clone() for n, p in sae.named_parameters()}

    ref = step()
    calls = []
    for name in ("kl_streamed", "ce_streamed"):
        f = getattr(passes, name)
        monkeypatch.setattr(passes, name, lambda *a, f=f, name=name: calls.append(name) or f(*a))
    monkeypatch.setattr(unembed, "STREAM_LOGITS", 0)  # stream even storyworld's 2,048 logits
    new = step()
    wants = {"kl_streamed"} if loss != "local" else set()
    wants |= {"ce_streamed"} if arch == "gtopk" else set()  # dL/dx through the streamed CE
    assert set(calls) == wants
    torch.testing.assert_close(new[0], ref[0], atol=1e-5, rtol=1e-5)
    assert new[1].keys() == ref[1].keys()
    for key in ref[1]:
        assert new[1][key] == pytest.approx(ref[1][key], abs=1e-5, rel=1e-5), key
    for name, grad in ref[2].items():
        torch.testing.assert_close(new[2][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_evaluate_with_streamed_logits_reports_the_same_numbers(lm, storyworld_data, monkeypatch):
    torch.manual_seed(0)
    d = lm.config.hidden_size
    sae = sl.SAE.from_config(sl.SAEConfig.create(architecture="gtopk", k=8, d_in=d, d_sae=2 * d,
                                                 site=SITE))  # fmt: skip
    data = storyworld_data(64, 64 * 16, split="validation")
    ref = sl.evaluate(lm, {SITE: sae}, data, n_tokens=64 * 8, alive_tokens=None)
    monkeypatch.setattr(unembed, "STREAM_LOGITS", 0)
    new = sl.evaluate(lm, {SITE: sae}, data, n_tokens=64 * 8, alive_tokens=None)
    for key, value in ref.items():
        if isinstance(value, float):
            assert new[key] == pytest.approx(value, abs=1e-5, rel=1e-5), key
    assert ref["kl"] > 0 and ref["ce_sae"] > ref["ce_clean"]  # the comparison means something
