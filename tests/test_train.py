"""Training and evaluation through nnsight on the storyworld model, checked against plain torch."""

import json

import pytest
import torch
import torch.nn.functional as F
from configs import config

import saelab as sl
from saelab.core import losses
from saelab.core import training as tr
from saelab.core.metrics import evaluate
from saelab.core.models import parse_site, site_path
from saelab.core.passes import clean_pass, later_sites, spliced_pass
from saelab.core.sae import SAE, load_sae

SITE = "resid_pre.3"


@pytest.fixture(scope="module")
def data(storyworld_data):
    return storyworld_data(128, n_tokens=70_000)


@pytest.fixture(scope="module")
def hf(lm):
    """The same weights as a plain transformers model, for hook-based reference computations."""
    from transformers import AutoModelForCausalLM

    from saelab.storyworld import MODEL_DIR

    m = AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()
    m.requires_grad_(False)
    return m


def _small(**kw) -> tr.TrainConfig:
    base = dict(sites=(SITE,), dict_ratio=4, n_tokens=16 * 128 * 24, batch_size=16,
                eval_tokens=8 * 128, lr=3e-3, warmup=2, log_every=4)  # fmt: skip
    return config(**(base | kw))


def _identity_sae(d: int, site: str) -> SAE:
    """A ReLU SAE that reconstructs exactly: c = [relu(x), relu(-x)], x_hat = c @ [I; -I]."""
    sae = SAE.from_config(sl.SAEConfig.create(d_in=d, d_sae=2 * d, architecture="relu", site=site))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.mark.parametrize(
    "site", ["resid_pre.3", "resid_post.1", "attn_out.2", "mlp_in.1", "mlp_out.0"]
)
def test_exact_sae_scores_perfectly(lm, data, site):
    """Splicing in a lossless SAE must leave the model unchanged, at skippable sites or not."""
    rep = evaluate(lm, _identity_sae(64, site), data, n_tokens=4 * 128, batch_size=4)
    assert abs(rep["ce_increase"]) < 1e-4 and rep["kl"] < 1e-6
    assert rep["explained_var"] > 0.9999 and rep["l2_ratio"] == pytest.approx(1, abs=1e-4)
    assert rep["ce_loss_score"] == pytest.approx(1, abs=1e-3)
    assert rep["ce_zero_abl"] > rep["ce_clean"] + 0.05  # zero-ablating a site hurts
    assert all(v < 1e-8 for k, v in rep.items() if k.startswith("ds_mse/"))
    # the SAE metrics leave out each row's BOS position and every later special token (BOS, id 0)
    assert rep["n_tokens"] == 4 * 127 - int((data.tokens[:4, 1:] == 0).sum())


def test_e2e_lowers_kl_and_leaves_model_untouched(lm, data, tmp_path):
    before = {k: v.clone() for k, v in lm._module.state_dict().items()}
    cfg = _small(loss="e2e", sparsity=0.5)
    torch.manual_seed(cfg.seed)
    init = SAE.from_config(cfg.sae_config(SITE, 64))
    kl0 = evaluate(lm, init, data, n_tokens=8 * 128, batch_size=8)["kl"]
    run = tr.train(lm, data, cfg, tmp_path, progress=False)
    kl1 = run.log[-1]["kl"]
    assert kl1 < 0.3 * kl0, (kl0, kl1)
    after = lm._module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.grad is not None for p in lm._module.parameters())
    # the run's files: log, config, a loadable SAE equal to the trained one
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["kind"] == "eval" and lines[-1]["kl"] == kl1
    sae = load_sae(tmp_path / "saes" / SITE, d_in=64)
    x = torch.randn(5, 64)
    assert torch.allclose(sae(x).x_hat, run.sae(x).x_hat)


def test_gtopk_selection_equals_direct_autograd(lm, hf, data):
    tokens = data.tokens[:4]
    site = parse_site(SITE)
    clean = clean_pass(lm, tokens, [site], grads=True)
    # reference: replace the block input by a leaf tensor and ask autograd for dL/dx
    x = clean.acts[site].clone().requires_grad_(True)
    path, _ = site_path(lm, site)
    h = hf.get_submodule(path).register_forward_pre_hook(lambda m, args: (x, *args[1:]))
    try:
        logits = hf(tokens).logits
    finally:
        h.remove()
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    (g_ref,) = torch.autograd.grad(ce, x)
    assert torch.allclose(clean.grads[site], g_ref, atol=1e-7, rtol=1e-4)
    torch.manual_seed(0)
    sae = SAE.from_config(
        sl.SAEConfig.create(d_in=64, d_sae=256, architecture="gtopk", k=8, beta=4.0)
    )
    c, _ = sae.encode(clean.acts[site], grad=clean.grads[site])
    c_ref, _ = sae.encode(clean.acts[site], grad=g_ref)
    assert torch.equal(c != 0, c_ref != 0)
    # and the gradient matters: beta=0 (plain TopK) picks differently somewhere
    sae0 = SAE.from_config(
        sl.SAEConfig.create(d_in=64, d_sae=256, architecture="gtopk", k=8, beta=0.0)
    )
    sae0.load_state_dict(sae.state_dict())
    c0, _ = sae0.encode(clean.acts[site], grad=g_ref)
    assert not torch.equal(c0 != 0, c != 0)


def test_downstream_mse_equals_plain_torch_hooks(lm, hf, data):
    tokens = data.tokens[:4]
    site = parse_site(SITE)
    torch.manual_seed(1)
    sae = SAE.from_config(sl.SAEConfig.create(d_in=64, d_sae=256, architecture="relu"))
    later = later_sites(lm, [site])
    assert [str(s) for s in later] == ["resid_post.3", "resid_post.4", "resid_post.5"]
    clean = clean_pass(lm, tokens, [site], later, logits=True)
    sp = spliced_pass(lm, tokens, {site: sae}, clean, later)
    ours = losses.downstream_mse(sp.later, clean.later, normalise=False)
    normalised = losses.downstream_mse(sp.later, clean.later)

    blocks = hf.transformer.h

    def run(splice: bool):
        outs = {}
        hooks = [blocks[s.layer].register_forward_hook(
            lambda m, a, o, k=s.layer: outs.__setitem__(k, o[0] if isinstance(o, tuple) else o)
        ) for s in later]  # fmt: skip
        if splice:
            hooks.append(blocks[3].register_forward_pre_hook(
                lambda m, args: (sae(args[0]).x_hat, *args[1:])
            ))  # fmt: skip
        try:
            hf(tokens)
        finally:
            for h in hooks:
                h.remove()
        return [outs[s.layer] for s in later]

    ref = torch.stack([F.mse_loss(a, b) for a, b in zip(run(True), run(False), strict=True)]).mean()
    assert torch.allclose(ours, ref, rtol=1e-5), (ours, ref)
    assert ours > 0
    each = [F.mse_loss(a, b) / b.pow(2).mean() for a, b in zip(run(True), run(False), strict=True)]
    assert torch.allclose(normalised, torch.stack(each).mean(), rtol=1e-5)


def test_resume_after_stop_matches_uninterrupted_run(lm, data, tmp_path, monkeypatch):
    cfg = _small(sae="topk", k=8, loss="e2e+ds", kl_coeff=0.5, ds_coeff=2.5, n_tokens=16 * 128 * 12,
                 checkpoint_every=4, dead_tokens=4096)  # fmt: skip
    full = tr.train(lm, data, cfg, tmp_path / "full", progress=False)

    real_step, calls = tr.compute_loss, {"n": 0}

    def dying_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # after the checkpoint at step 4, before the end
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(tr, "compute_loss", dying_step)
    with pytest.raises(KeyboardInterrupt):
        tr.train(lm, data, cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(tr, "compute_loss", real_step)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 4
    resumed = tr.train(lm, data, cfg, tmp_path / "cut", resume=True, progress=False)
    a, b = full.log[-1], resumed.log[-1]
    assert a["step"] == b["step"] == 12
    for key in ("kl", "mse", "l0", "ce_sae", "explained_var"):
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    for p, q in zip(full.sae.parameters(), resumed.sae.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-7)
    logged = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in logged] == [r["step"] for r in full.log]


def test_same_seed_same_numbers_and_local_runs(lm, data):
    cfg = _small(sae="gtopk", k=8, loss="local", n_tokens=16 * 128 * 6, beta=2.0)
    a = tr.train(lm, data, cfg, None, progress=False)
    b = tr.train(lm, data, cfg, None, progress=False)
    assert a.log[-1] == b.log[-1]
    assert a.log[-1]["l0"] == pytest.approx(8, abs=0.5)


def test_multi_site_e2e_trains_all_saes(lm, data, tmp_path):
    cfg = _small(sites=("resid_pre.2", "blocks.4.hook_resid_pre"), loss="e2e",
                 n_tokens=16 * 128 * 4)  # fmt: skip
    run = tr.train(lm, data, cfg, tmp_path, progress=False)
    assert set(run.saes) == {"resid_pre.2", "resid_pre.4"}
    rep = run.log[-1]
    assert {"resid_pre.2/l0", "resid_pre.4/l0", "ds_mse/resid_post.4"} <= set(rep)
    for s in run.saes:
        cfg_json = json.loads((tmp_path / "saes" / s / "cfg.json").read_text())
        assert cfg_json["hook_name"] == parse_site(s).hook_name and cfg_json["d_in"] == 64


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(sae="nosuch"), "architecture='nosuch'"),
        (dict(loss="e2e_ds"), "loss='e2e_ds'"),
        (dict(sae="topk"), "k is required"),
        (dict(sae="topk", k=600, d_sae=512), "k=600 > d_sae=512"),
        (dict(sparsity=-1.0), "sparsity=-1.0"),
        (dict(loss="e2e+ds"), "ds_coeff > 0"),
        (dict(sites=("resid_mid.2",)), "valid sites"),
        (dict(lr=0), "lr=0 must be"),
    ],
)
def test_bad_train_config_is_a_clear_error(kw, match):
    with pytest.raises(ValueError, match=match.replace("+", r"\+").replace("(", r"\(")):
        config(**kw)


def test_the_config_is_nested_and_round_trips_through_json():
    with pytest.raises(TypeError, match="unexpected keyword argument 'k'"):
        tr.TrainConfig(sae="topk", k=8)  # the SAE's fields belong in its SAEConfig
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['k'\].*under 'sae'"):
        tr.TrainConfig.from_dict(dict(sae="topk", k=8))
    with pytest.raises(ValueError, match="objective 'local' has no coefficient 'kl_coeff'"):
        tr.TrainConfig(loss=sl.objective("local", kl_coeff=1.0))
    cfg = tr.TrainConfig(sae=sl.SAEConfig.create(architecture="topk", k=8, dict_ratio=4),
                         loss=sl.objective("e2e+ds", kl_coeff=0.5, ds_coeff=2.5))  # fmt: skip
    saved = json.loads(json.dumps(cfg.to_dict()))  # what train_config.json holds
    assert saved["loss"] == {
        "name": "e2e+ds",
        "kl_coeff": 0.5,
        "ds_coeff": 2.5,
        "ds_units": "normalised",
    }
    assert tr.TrainConfig.from_dict(saved) == cfg
    assert tr.TrainConfig(loss="e2e").loss == sl.objective("e2e", kl_coeff=1.0)


def test_dead_tokens_default_scales_with_the_run_and_is_stored_resolved():
    assert tr.TrainConfig(n_tokens=600_000).dead_tokens == 60_000  # a tenth of the run
    assert tr.TrainConfig(n_tokens=10**9).dead_tokens == 10_000_000  # sparsify's cap
    assert tr.TrainConfig(n_tokens=5).dead_tokens == 1
    assert tr.TrainConfig(n_tokens=600_000, dead_tokens=200_000).dead_tokens == 200_000
    assert tr.TrainConfig.from_dict(dict(n_tokens=2_000_000)).dead_tokens == 200_000
    cfg = tr.TrainConfig(n_tokens=600_000)
    saved = json.loads(json.dumps(cfg.to_dict()))  # what train_config.json holds: the number
    assert saved["dead_tokens"] == 60_000 and tr.TrainConfig.from_dict(saved) == cfg
    with pytest.raises(ValueError, match="dead_tokens=-1"):
        tr.TrainConfig(dead_tokens=-1)


def test_train_rejects_site_past_last_layer_and_too_few_tokens(lm, data):
    with pytest.raises(ValueError, match="past the last layer"):
        tr.train(lm, data, _small(sites=("resid_pre.9",)), None, progress=False)
    with pytest.raises(ValueError, match="less than one batch"):
        tr.train(lm, data, _small(n_tokens=100), None, progress=False)


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(lm, data, tmp_path, monkeypatch):
    cfg = _small(n_tokens=16 * 128 * 8, checkpoint_every=4)
    real_mse, calls = losses.mse_loss, {"n": 0}

    def poisoned(x_hat, x):
        calls["n"] += 1
        out = real_mse(x_hat, x)
        return out * float("nan") if calls["n"] == 6 else out

    monkeypatch.setattr(losses, "mse_loss", poisoned)
    with pytest.raises(tr.NonFiniteLoss, match=r"at step 5; stopped.*step 4\)"):
        tr.train(lm, data, cfg, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["saes"][SITE].values())


def test_data_longer_than_model_context_is_rejected(lm):
    class Long:
        n_ctx = 4096

    with pytest.raises(ValueError, match=r"longer than the model's context \(128 positions\)"):
        tr.train(lm, Long(), _small(), None, progress=False)


@pytest.mark.parametrize(
    "loss,archs",
    [("local", [dict(sae="relu", sparsity=0.3), dict(sae="topk", k=4), dict(sae="gtopk", k=4)]),
     ("e2e", [dict(sae="topk", k=4), dict(sae="relu", sparsity=3.0, lr=1e-3)])],
)  # fmt: skip
def test_train_many_equals_separate_runs(lm, data, tmp_path, loss, archs):
    """A sweep from one clean pass per batch gives each config the run it would get alone."""
    cfgs = [_small(loss=loss, n_tokens=16 * 128 * 6, log_every=2, **a) for a in archs]
    outs = [tmp_path / f"many{i}" for i in range(len(cfgs))]
    many = tr.train_many(lm, data, cfgs, outs, progress=False)
    for cfg, run, out in zip(cfgs, many, outs, strict=True):
        alone = tr.train(lm, data, cfg, progress=False)
        assert run.out_dir == out and (out / "saes" / SITE / "sae.safetensors").exists()
        for (name, p), q in zip(run.sae.named_parameters(), alone.sae.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=f"{cfg.sae}: {name}")
        assert [r["step"] for r in run.log] == [r["step"] for r in alone.log]
        assert run.log[-1]["ce_increase"] == pytest.approx(alone.log[-1]["ce_increase"], abs=1e-4)


def test_a_sweep_measures_the_activation_scale_once(lm, data, monkeypatch):
    """Members share data, positions and batch size, so one estimate serves all: the same
    act_scale each would measure alone, from one pass instead of one per SAE."""
    from saelab.core import setup

    real, calls = setup.activation_stats, []
    monkeypatch.setattr(setup, "activation_stats",
                        lambda *a, **k: calls.append(a[3]) or real(*a, **k))  # fmt: skip
    cfgs = [_small(sae="topk", k=k, n_tokens=16 * 128 * 2) for k in (2, 4, 8)]
    many = tr.train_many(lm, data, cfgs, progress=False)
    assert len(calls) == 1
    alone = tr.train(lm, data, cfgs[1], progress=False)
    assert len(calls) == 2
    for run in many:
        assert run.sae.act_scale.item() == alone.sae.act_scale.item() != 1.0
        assert run.log[0] == alone.log[0]  # the act_scale record


def test_train_many_refuses_configs_that_cannot_share_batches(lm, data, tmp_path):
    a, b = _small(sae="topk", k=4), _small(sae="topk", k=4, seed=1)
    with pytest.raises(ValueError, match="share seed"):
        tr.train_many(lm, data, [a, b], progress=False)
    with pytest.raises(ValueError, match="out_dirs repeat"):
        tr.train_many(lm, data, [a, a], [tmp_path / "x", tmp_path / "x"], progress=False)


def test_train_records_hold_the_mean_of_their_steps(lm, data, tmp_path):
    """A record every `log_every` steps holds the mean over those steps, not the last batch's
    value (a plateau test on one batch in `log_every` would read batch noise)."""
    kw = dict(n_tokens=16 * 128 * 6, warmup=1, eval_tokens=4 * 128)
    each = tr.train(lm, data, _small(log_every=1, **kw), tmp_path / "a", progress=False).log
    every3 = tr.train(lm, data, _small(log_every=3, **kw), tmp_path / "b", progress=False).log
    per_step = [r for r in each if r["kind"] == "train"]
    rec = [r for r in every3 if r["kind"] == "train"]
    assert [r["step"] for r in rec] == [3, 6]
    for r, steps in zip(rec, (per_step[:3], per_step[3:]), strict=True):
        for key in ("loss", "mse", "l0"):
            mean = sum(s[key] for s in steps) / 3
            assert r[key] == pytest.approx(mean, rel=1e-6), key
            assert r[key] != pytest.approx(steps[-1][key], rel=1e-6), key  # not the last step's
