"""SAE architectures, config validation and the cfg.json + safetensors format."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from saelab.core.architectures.gtopk import normalize_grad
from saelab.core.sae import SAE, SAEConfig, architecture, architectures, load_sae, save_sae

D_IN, D_SAE, K = 8, 32, 4
# the contract tests run over every registered architecture, so a new one is covered at once
ARCHITECTURES = architectures()


def make(architecture_name="topk", seed=0, **kw) -> SAE:
    """A small SAE with randomised biases, so tests do not depend on zero-bias init. `k` is `K`
    where the architecture has the field; fields it lacks (`beta`: gradient-informed selections
    only) are dropped."""
    torch.manual_seed(seed)
    own = {f.name for f in fields(architecture(architecture_name).cfg_class)}
    if "k" in own:
        kw.setdefault("k", K)
    kw = {name: value for name, value in kw.items() if name in own}
    cfg = SAEConfig.create(d_in=D_IN, d_sae=D_SAE, architecture=architecture_name, **kw)
    sae = SAE.from_config(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def hand_scores(sae, x, grad):
    """s = z + beta z |g_unit W_dec^T|, written out with explicit loops-free algebra."""
    z = x @ sae.W_enc + sae.b_enc
    g = grad / grad.norm(dim=-1, keepdim=True)
    return z + sae.cfg.beta * z * (g @ sae.W_dec.T).abs()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_shapes(name):
    sae = make(name)
    x = torch.randn(2, 5, D_IN)
    for mode in (True, False):
        out = sae.train(mode)(x, grad=torch.randn(2, 5, D_IN))
        assert out.x_hat.shape == (2, 5, D_IN)
        assert out.c.shape == out.pre.shape == (2, 5, D_SAE)
        c, pre = sae.encode(x, grad=torch.randn(2, 5, D_IN))
        assert c.shape == pre.shape == (2, 5, D_SAE) and sae.decode(c).shape == (2, 5, D_IN)
    assert sae.device == torch.device("cpu") and sae.dtype == torch.float32
    assert sae.decoder_directions().shape == (D_SAE, D_IN) and float(sae.act_scale) == 1.0
    assert sae.per_token_k is None or 1 <= sae.per_token_k <= D_SAE


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_one_training_step(name):
    """What the trainer asks of every architecture (ARCHITECTURE.md §2): forward, its own terms,
    backward, before_step_, an optimiser step, after_step_."""
    sae = make(name)
    x, grad = torch.randn(16, D_IN), torch.randn(16, D_IN)
    before = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    out = sae(x, grad=grad if sae.needs_grad else None)
    terms = sae.loss_terms(x, out, torch.ones(D_SAE, dtype=torch.bool))  # every latent dead
    loss = F.mse_loss(out.x_hat, x) + sum(coeff * value for coeff, value in terms.values())
    assert all(value.dim() == 0 for _, value in terms.values()) and torch.isfinite(loss)
    loss.backward()
    sae.before_step_()
    opt.step()
    sae.after_step_(out)
    if before["W_dec"].any():
        assert not torch.equal(sae.W_enc, before["W_enc"])
    else:  # a zero decoder at init (transcoders, as sparsify's): the first step moves it alone
        assert torch.equal(sae.W_enc, before["W_enc"]) and sae.W_dec.any()
    assert all(torch.isfinite(t).all() for t in sae.state_dict().values())


def test_deterministic_under_manual_seed():
    a, b = make("relu", seed=3), make("relu", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_relu_normalises_decoder_inside_forward():
    sae = make("relu")
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1) * 5 + 0.1)  # rows no longer unit norm
    dirs = sae.decoder_directions()
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(D_SAE), atol=1e-6)
    x = torch.randn(3, D_IN)
    out = sae(x)
    assert torch.allclose(out.c, F.relu(x @ sae.W_enc + sae.b_enc))
    assert torch.allclose(out.x_hat, out.c @ dirs + sae.b_dec, atol=1e-6)
    out.x_hat.sum().backward()  # gradients flow through the normalisation
    assert sae.W_dec.grad is not None and sae.W_dec.grad.abs().sum() > 0
    before = sae.W_dec.detach().clone()
    sae.normalize_decoder_()  # relu: no-op
    assert torch.equal(sae.W_dec, before)


@pytest.mark.parametrize(("d_in", "d_sae"), [(8, 32), (64, 512)])
def test_relu_init_is_e2e_saes_raw_orthogonal_decoder(d_in, d_sae):
    # e2e_sae: decoder.weight [d_in, d_sae] = orthogonal_(weight.T).T, so our W_dec [d_sae, d_in]
    # has orthonormal columns and rows of norm ~sqrt(d_in / d_sae); nn.Linear's biases
    torch.manual_seed(0)
    sae = SAE.from_config(SAEConfig.create(architecture="relu", d_in=d_in, d_sae=d_sae))
    assert sae.cfg.decoder_init == "orthogonal_raw"
    W = sae.W_dec.detach()
    assert torch.allclose(W.T @ W, torch.eye(d_in), atol=1e-5)
    norms = W.norm(dim=-1)  # d_in unit columns: the rows' mean square norm is d_in / d_sae exactly
    assert norms.pow(2).mean().sqrt().item() == pytest.approx((d_in / d_sae) ** 0.5, rel=1e-5)
    assert norms.mean().item() == pytest.approx((d_in / d_sae) ** 0.5, rel=0.1)
    assert (norms < 1).all()
    for b, fan_in in ((sae.b_enc, d_in), (sae.b_dec, d_sae), (sae.W_enc, d_in)):
        bound = fan_in**-0.5
        assert b.abs().max() <= bound and b.abs().max() > 0.5 * bound  # U(-bound, bound)


def test_relu_unit_init_is_the_old_one():
    torch.manual_seed(0)
    raw = SAE.from_config(SAEConfig.create(architecture="relu", d_in=D_IN, d_sae=D_SAE))
    torch.manual_seed(0)
    unit = SAE.from_config(
        SAEConfig.create(architecture="relu", d_in=D_IN, d_sae=D_SAE, decoder_init="unit")
    )
    assert torch.allclose(unit.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-6)
    assert torch.equal(unit.b_dec, torch.zeros(D_IN))
    # the same draws: the same encoder and the same initial directions, only the row norms differ
    assert torch.equal(unit.W_enc, raw.W_enc) and torch.equal(unit.b_enc, raw.b_enc)
    assert torch.allclose(unit.decoder_directions(), raw.decoder_directions(), atol=1e-6)
    torch.manual_seed(0)  # bit for bit the init saelab had before decoder_init existed
    bound = D_IN**-0.5
    W_enc = torch.empty(D_IN, D_SAE).uniform_(-bound, bound)
    b_enc = torch.empty(D_SAE).uniform_(-bound, bound)
    W_dec = F.normalize(torch.nn.init.orthogonal_(torch.empty(D_SAE, D_IN)), dim=-1)
    for a, b in ((unit.W_enc, W_enc), (unit.b_enc, b_enc), (unit.W_dec, W_dec)):
        assert torch.equal(a, b)


def test_relu_forward_ignores_stored_row_norms():
    sae = make("relu")
    x = torch.randn(4, 3, D_IN)
    before = sae(x)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1) * 10 + 0.01)
    after = sae(x)
    assert torch.allclose(before.x_hat, after.x_hat, atol=1e-5)
    assert torch.equal(before.c, after.c)


def test_relu_saved_without_decoder_init_loads_as_unit(tmp_path):
    sae = make("relu", decoder_init="unit")
    save_sae(sae, tmp_path)
    meta = json.loads((tmp_path / "cfg.json").read_text())
    assert meta["decoder_init"] == "unit"
    del meta["decoder_init"]  # a cfg.json written before the field existed
    (tmp_path / "cfg.json").write_text(json.dumps(meta))
    back = load_sae(tmp_path)
    assert back.cfg == sae.cfg and back.cfg.decoder_init == "unit"
    for name, t in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], t)


def test_topk_init_and_selection():
    sae = make("topk")
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-6)
    x = torch.randn(6, D_IN) + 2 * sae.W_dec[:6]  # each token strongly aligned with a latent
    c, pre = sae.encode(x)
    assert torch.allclose(pre, x @ sae.W_enc + sae.b_enc)
    top = pre.topk(K, dim=-1).indices
    expected = torch.zeros_like(pre).scatter(-1, top, F.relu(pre.gather(-1, top)))
    assert torch.equal(c, expected)
    assert ((c != 0).sum(-1) <= K).all()
    assert ((pre.gather(-1, top) > 0).sum(-1) == (c != 0).sum(-1)).all()


def test_topk_exactly_k_nonzeros_for_positive_preacts():
    sae = make("topk")
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive: exactly k survive the ReLU
    c, _ = sae.encode(torch.randn(4, 3, D_IN))
    assert ((c != 0).sum(-1) == K).all()


def test_pre_subtract_b_dec():
    sae = make("topk", pre_subtract_b_dec=True)
    x = torch.randn(3, D_IN)
    _, pre = sae.encode(x)
    assert torch.allclose(pre, (x - sae.b_dec) @ sae.W_enc + sae.b_enc)


def test_gtopk_selection_matches_hand_scores():
    sae = make("gtopk", beta=2.0)
    x, grad = torch.randn(5, D_IN), torch.randn(5, D_IN)
    c, pre = sae.encode(x, grad)
    s = hand_scores(sae, x, grad)
    assert torch.allclose(sae.scores(pre, grad), s, atol=1e-6)
    chosen = s.topk(K, dim=-1).indices
    expected = torch.zeros_like(pre).scatter(-1, chosen, F.relu(pre.gather(-1, chosen)))
    assert torch.allclose(c, expected)
    # The gradient term changes the selection for this input (beta = 2 is large).
    assert not torch.equal(chosen.sort(-1).values, pre.topk(K, dim=-1).indices.sort(-1).values), (
        "test input should make gtopk and topk disagree somewhere"
    )


def test_gtopk_beta_zero_equals_topk():
    topk, gtopk = make("topk", seed=1), make("gtopk", seed=1, beta=0.0)
    x = torch.randn(4, 3, D_IN)
    assert torch.equal(gtopk.encode(x, torch.randn_like(x))[0], topk.encode(x)[0])


def test_gtopk_value_modes():
    plain = make("gtopk", seed=2, beta=1.5)
    score = make("gtopk", seed=2, beta=1.5, value_mode="score")
    x, grad = torch.randn(4, D_IN), torch.randn(4, D_IN)
    c_plain, pre = plain.encode(x, grad)
    c_score, _ = score.encode(x, grad)
    s = hand_scores(plain, x, grad)
    chosen = s.topk(K, dim=-1).indices
    assert torch.allclose(c_plain.gather(-1, chosen), F.relu(pre.gather(-1, chosen)))
    assert torch.allclose(c_score.gather(-1, chosen), F.relu(s.gather(-1, chosen)), atol=1e-6)
    assert torch.equal(c_plain != 0, c_score != 0)  # same support, different values
    assert not torch.allclose(c_plain, c_score)


def test_gtopk_needs_grad_and_detaches_it():
    sae = make("gtopk")
    x = torch.randn(2, D_IN)
    with pytest.raises(ValueError, match="needs grad"):
        sae(x)
    grad = torch.randn(2, D_IN, requires_grad=True)
    sae = make("gtopk", value_mode="score")
    sae(x, grad).x_hat.sum().backward()
    assert grad.grad is None


def test_grad_norm_variants():
    sae = make("gtopk", beta=3.0)
    x, grad = torch.randn(6, D_IN), torch.randn(6, D_IN)
    c, _ = sae.encode(x, grad)
    c_scaled, _ = sae.encode(x, grad * 1e4)
    assert torch.equal(c != 0, c_scaled != 0)  # "unit": selection ignores the gradient's scale
    unit = normalize_grad(grad, "unit")
    assert torch.allclose(unit.norm(dim=-1), torch.ones(6))
    rms = normalize_grad(grad, "rms")
    assert rms.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(normalize_grad(grad, "none"), grad)
    rms_sae = make("gtopk", beta=3.0, grad_norm="rms")
    assert torch.equal(rms_sae.encode(x, grad)[0] != 0, rms_sae.encode(x, 7 * grad)[0] != 0)


def test_decoder_projection_and_parallel_grad_removal():
    sae = make("topk")
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder_()
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-6)
    x = torch.randn(16, D_IN)
    F.mse_loss(sae(x).x_hat, x).backward()
    sae.W_dec.grad += 0.5 * sae.W_dec.detach()  # a large parallel component
    sae.remove_parallel_decoder_grad_()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(-1)
    assert torch.allclose(parallel, torch.zeros(D_SAE), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"architecture": "topk", "k": 600}, "k=600 > d_sae=32"),
        ({"architecture": "topk"}, "k is required"),
        ({"architecture": "gtopk", "k": 0}, "k=0"),
        ({"architecture": "nosuch"}, "'nosuch'.*relu, topk, gtopk"),
        ({"architecture": "gtopk", "k": 4, "beta": -0.5}, "beta=-0.5"),
        ({"architecture": "gtopk", "k": 4, "value_mode": "both"}, "value_mode='both'"),
        ({"architecture": "gtopk", "k": 4, "grad_norm": "l1"}, "grad_norm='l1'.*unit"),
        ({"architecture": "topk", "k": 4, "k_aux": 99}, "k_aux=99"),
        ({"architecture": "relu", "d_in": 0}, "d_in=0"),
        (
            {"architecture": "relu", "decoder_init": "xavier"},
            "decoder_init='xavier' is unknown; valid: orthogonal_raw, unit",
        ),
    ],
)
def test_config_validation(kwargs, message):
    kwargs = {"d_in": D_IN, "d_sae": D_SAE, **kwargs}
    with pytest.raises(ValueError, match=message):
        SAEConfig.create(**kwargs)


def test_k_aux_default():
    assert SAEConfig.create(d_in=8, d_sae=32, architecture="topk", k=4).n_aux == 4
    assert SAEConfig.create(d_in=128, d_sae=32, architecture="topk", k=4).n_aux == 32
    assert SAEConfig.create(d_in=8, d_sae=32, architecture="topk", k=4, k_aux=7).n_aux == 7


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_save_load_round_trip(tmp_path, name):
    sae = make(name, beta=0.7, hook_name="blocks.1.hook_resid_pre", site="resid_pre.1")
    sae.set_act_scale(2.0)
    save_sae(sae, tmp_path / "sae", extra={"run": "abc"})
    state = torch.random.get_rng_state()
    loaded = load_sae(tmp_path / "sae", d_in=D_IN)
    assert torch.equal(torch.random.get_rng_state(), state)  # loading leaves the RNG alone
    assert loaded.cfg == sae.cfg
    x, grad = torch.randn(3, D_IN), torch.randn(3, D_IN)
    sae.eval()  # as load_sae returns it
    for a, b in zip(sae(x, grad), loaded(x, grad), strict=True):
        assert torch.equal(a, b)
    for key, value in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not list((tmp_path / "sae").glob("*.tmp"))  # temporary files renamed away


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_saelens_export_or_a_clear_refusal(name):
    from saelab.core.saelens import raw_weights

    sae = make(name)
    try:
        form = raw_weights(sae)
    except ValueError as e:
        assert str(e)  # refused with a reason (gtopk: allow_gtopk; BatchTopK: no theta yet)
        return
    assert form.weights["W_enc"].shape == (D_IN, D_SAE) and isinstance(form.architecture, str)


def test_cfg_json_uses_saelens_names(tmp_path):
    save_sae(make("topk", model_name="storyworld", hook_name="h"), tmp_path, extra={"a": 1})
    meta = json.loads((tmp_path / "cfg.json").read_text())
    for name in ("d_in", "d_sae", "hook_name", "architecture", "model_name", "dtype", "device"):
        assert name in meta
    assert meta["k"] == K and meta["activation_fn_kwargs"] == {"k": K}
    assert meta["model_name"] == "storyworld" and meta["dtype"] == "float32"
    assert meta["extra"] == {"a": 1} and "saelab_version" in meta


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(tmp_path / "nowhere")
    path = tmp_path / "sae"
    save_sae(make("topk"), path)
    with pytest.raises(ValueError, match=r"d_in=8 but the site has d_in=16"):
        load_sae(path, d_in=16)

    meta = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "d_sae"}))
    with pytest.raises(ValueError, match="'d_sae'"):
        load_sae(path)
    (path / "cfg.json").write_text(json.dumps({**meta, "k": 100}))
    with pytest.raises(ValueError, match="k=100 > d_sae=32"):
        load_sae(path)

    # A config that disagrees with the tensors: the shape check names the tensor.
    (path / "cfg.json").write_text(json.dumps({**meta, "d_sae": 16, "k": 4}))
    with pytest.raises(ValueError, match=r"W_enc has shape \(8, 32\), expected \(8, 16\)"):
        load_sae(path)


def test_truncated_weights_raise_clear_error(tmp_path):
    save_sae(make("relu"), tmp_path)
    weights = tmp_path / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="sae.safetensors"):
        load_sae(tmp_path)
    weights.write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_sae(tmp_path)


def test_every_sae_has_an_act_scale_of_one_until_set():
    for norm in ("none", "expected_average_only_in"):
        sae = make("relu", normalize_activations=norm)
        assert float(sae.act_scale) == 1.0 and "act_scale" in sae.state_dict()
    with pytest.raises(ValueError, match="stays 1.0"):
        make("relu", normalize_activations="none").set_act_scale(3.0)


def test_unscaled_sae_saved_without_act_scale_loads_as_one(tmp_path):
    from safetensors.torch import load_file, save_file

    sae = make("topk", normalize_activations="none")
    save_sae(sae, tmp_path)
    tensors = load_file(tmp_path / "sae.safetensors")
    del tensors["act_scale"]  # as every unscaled SAE was saved before all SAEs had the buffer
    save_file(tensors, tmp_path / "sae.safetensors")
    back = load_sae(tmp_path)
    assert float(back.act_scale) == 1.0
    x = torch.randn(5, D_IN)
    assert torch.equal(back(x).x_hat, sae.eval()(x).x_hat)
    fresh = make("topk", seed=1, normalize_activations="none")
    fresh.load_state_dict(tensors)  # a checkpoint's state without the buffer
    assert float(fresh.act_scale) == 1.0
    # a normalising SAE without its scale is still a broken file
    save_sae(make("topk"), tmp_path / "scaled")
    tensors = load_file(tmp_path / "scaled" / "sae.safetensors")
    del tensors["act_scale"]
    save_file(tensors, tmp_path / "scaled" / "sae.safetensors")
    with pytest.raises(ValueError, match="act_scale"):
        load_sae(tmp_path / "scaled")


def test_the_factories_build_the_registered_classes():
    cfg = SAEConfig.create(architecture="topk", d_in=D_IN, d_sae=D_SAE, k=K)
    assert type(cfg) is architecture("topk").cfg_class
    assert type(SAE.from_config(cfg)) is architecture("topk")
    with pytest.raises(ValueError, match=r"has no field\(s\) \['k'\]"):
        SAEConfig.create(architecture="relu", k=K)
    with pytest.raises(ValueError, match="needs architecture"):
        SAEConfig.create(k=K)
    with pytest.raises(TypeError, match="needs an SAEConfig"):
        SAE.from_config({"architecture": "topk"})


def test_an_unscaled_sae_trains_from_scratch_with_act_scale_one(lm, storyworld_data):
    import saelab as sl

    sae = SAEConfig.create(architecture="relu", dict_ratio=2, normalize_activations="none")
    cfg = sl.TrainConfig(sites=("resid_pre.3",), sae=sae, batch_size=4, n_tokens=4 * 32 * 2,
                         warmup=1, eval_tokens=64)  # fmt: skip
    run = sl.train(lm, storyworld_data(32, 4000), cfg, None, progress=False)
    assert float(run.sae.act_scale) == 1.0
    assert not [r for r in run.log if r.get("kind") == "act_scale"]  # nothing was estimated


def test_load_sae_returns_the_dtype_its_config_names(tmp_path):
    sae = make("relu")
    save_sae(sae, tmp_path / "s")
    tensors = load_file(tmp_path / "s" / "sae.safetensors")
    tensors["W_dec"] = tensors["W_dec"].half()  # stored compactly, as outputs/reference does
    save_file(tensors, tmp_path / "s" / "sae.safetensors")
    loaded = load_sae(tmp_path / "s")
    assert loaded.W_dec.dtype == torch.float32 == loaded.W_enc.dtype  # cfg.json: "float32"
    torch.testing.assert_close(loaded.W_dec, sae.W_dec, rtol=1e-3, atol=1e-4)
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg | {"dtype": "int8"}))
    with pytest.raises(ValueError, match="dtype 'int8', not a floating-point"):
        load_sae(tmp_path / "s")
