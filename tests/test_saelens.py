"""Interoperability with the real sae-lens package: export, import, SAEBench's contract, fine-tuning
from an imported SAE."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import saelab as sl
from saelab.core import training as tr
from saelab.core.saelens import main as export_cli
from saelab.core.setup import init_sae

sae_lens = pytest.importorskip("sae_lens")  # installed by `make test` (the dev extra)

D_IN, D_SAE = 16, 64
ARCHS = [("relu", {}), ("topk", {"k": 4}), ("jumprelu", {}), ("batchtopk", {"k": 4}),
         ("matryoshka", {"k": 4})]  # fmt: skip


def _trained_like(arch: str, kw: dict, norm: str, pre: bool, seed: int = 0) -> sl.SAE:
    """An SAE with non-trivial biases, decoder norms, thresholds and activation scale."""
    torch.manual_seed(seed)
    cfg = sl.SAEConfig.create(architecture=arch, d_in=D_IN, d_sae=D_SAE, normalize_activations=norm,
                              pre_subtract_b_dec=pre, **kw)  # fmt: skip
    sae = sl.SAE.from_config(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
        sae.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)  # relu keeps raw rows; the others re-project
        if arch != "relu":
            sae.normalize_decoder_()
        if norm != "none":
            sae.set_act_scale(7.0)
        if arch == "jumprelu":
            sae.threshold.uniform_(0, 0.5)
        if arch in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.2)
    return sae.eval()


def _load_quietly(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sae = sae_lens.SAE.load_from_disk(str(path))
    assert not caught, [str(w.message) for w in caught]
    return sae


@pytest.mark.parametrize("pre", [False, True], ids=["plain", "apply_b_dec"])
@pytest.mark.parametrize("norm", ["none", "expected_average_only_in"])
@pytest.mark.parametrize("arch, kw", ARCHS, ids=[a for a, _ in ARCHS])
def test_saelab_to_saelens_to_saelab_is_identical(tmp_path, arch, kw, norm, pre):
    sae = _trained_like(arch, kw, norm, pre)
    sl.export_saelens(sae, tmp_path / "x", model_name="storyworld")
    theirs = _load_quietly(tmp_path / "x")
    cfg = json.loads((tmp_path / "x" / "cfg.json").read_text())
    assert cfg["metadata"]["model_name"] == "storyworld" and cfg["apply_b_dec_to_input"] == pre
    assert torch.allclose(theirs.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-5)  # unit rows
    x = torch.randn(5, 7, D_IN) * 3
    scale = float(sae.act_scale)
    with torch.no_grad():
        ours_c, ours_x = sae.encode(x)[0], sae(x).x_hat
        c = theirs.encode(x)
        tol = 1e-6 * max(1.0, float(ours_x.abs().max()))  # folding a scale rounds in float32
        assert (c * scale - ours_c).abs().max() <= tol * scale
        assert (theirs.decode(c) - ours_x).abs().max() <= tol
        back = sl.load_sae(tmp_path / "x")  # and read back by saelab
        assert (back(x).x_hat - theirs.decode(c)).abs().max() <= tol
        assert (back.encode(x)[0] - c).abs().max() <= tol


def test_gtopk_is_refused_unless_asked_and_then_flagged(tmp_path):
    sae = _trained_like("gtopk", {"k": 4}, "none", False)
    with pytest.raises(ValueError, match="dL/dx.*allow_gtopk=True"):
        sl.export_saelens(sae, tmp_path / "g")
    sl.export_saelens(sae, tmp_path / "g", allow_gtopk=True)
    cfg = json.loads((tmp_path / "g" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and "gtopk" in cfg["metadata"]["saelab_reduced_from"]
    _load_quietly(tmp_path / "g")


SL_ARCHS = {
    "standard": lambda: sae_lens.StandardSAE(sae_lens.StandardSAEConfig(
        d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=True)),
    "topk": lambda: sae_lens.TopKSAE(sae_lens.TopKSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=5, apply_b_dec_to_input=False)),
    "jumprelu": lambda: sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)),
}  # fmt: skip


@pytest.mark.parametrize("arch", sorted(SL_ARCHS))
def test_a_folder_saelens_wrote_loads_with_the_same_outputs(tmp_path, arch):
    torch.manual_seed(1)
    theirs = SL_ARCHS[arch]()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.3)
        if arch == "jumprelu":
            theirs.threshold.uniform_(0, 0.3)
    theirs.save_model(tmp_path / "s")
    ours = sl.load_sae(tmp_path / "s")
    x = torch.randn(4, 6, D_IN)
    with torch.no_grad():
        assert (ours.encode(x)[0] - theirs.encode(x)).abs().max() <= 1e-6
        assert (ours(x).x_hat - theirs(x)).abs().max() <= 1e-6
    assert ours.cfg.pre_subtract_b_dec == theirs.cfg.apply_b_dec_to_input == (arch != "topk")


def test_saelens_settings_saelab_cannot_honour_are_refused(tmp_path):
    theirs = SL_ARCHS["standard"]()
    theirs.save_model(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    (tmp_path / "s" / "cfg.json").write_text(
        json.dumps(cfg | {"normalize_activations": "layer_norm"})
    )
    with pytest.raises(ValueError, match="normalize_activations='layer_norm' cannot be honoured"):
        sl.load_sae(tmp_path / "s")


def test_saebench_contract(tmp_path):
    sae = _trained_like("topk", {"k": 4}, "expected_average_only_in", True)
    sae.cfg  # noqa: B018
    bench = sl.to_saebench(sae, lm_name="gpt2", hook_layer=3, context_size=128)
    x = torch.randn(3, D_IN)
    c = bench.encode(x)
    assert isinstance(c, torch.Tensor) and c.shape == (3, D_SAE)
    assert torch.allclose(bench.decode(c), sae(x).x_hat, atol=1e-5)
    assert torch.allclose(bench.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-5)
    bench.cfg.hook_layer, bench.cfg.context_size = 5, 64  # SAEBench sets these
    assert bench.to(torch.float64).cfg.dtype == "float64"


def test_export_cli_and_finetuning_an_imported_local_sae_end_to_end(lm, storyworld_data, tmp_path):
    data = storyworld_data(32, n_tokens=8 * 32 * 6)
    sae = sl.SAEConfig.create(architecture="relu", dict_ratio=2)
    local = tr.TrainConfig(sites=("resid_pre.3",), sae=sae, batch_size=8, n_tokens=8 * 32 * 3,
                           warmup=1, eval_tokens=4 * 32)  # fmt: skip
    run = sl.train(lm, data, local, tmp_path / "local", progress=False)
    src = tmp_path / "local" / "saes" / "resid_pre.3"
    assert export_cli(["export", str(src), str(tmp_path / "sl"), "--model-name", "storyworld"]) == 0
    imported = sl.load_sae(tmp_path / "sl")
    assert imported.cfg.model_name == "storyworld" and imported.cfg.normalize_activations == "none"
    e2e = tr.TrainConfig(sites=("resid_pre.3",), loss="e2e", batch_size=8, n_tokens=8 * 32 * 2,
                         sae=sl.SAEConfig.create(architecture="relu", dict_ratio=2,
                                          normalize_activations="none"),
                         init_from=str(tmp_path / "sl"), warmup=1, eval_tokens=4 * 32)  # fmt: skip
    tuned = sl.train(lm, data, e2e, tmp_path / "e2e", progress=False)
    assert tuned.log[-1]["kind"] == "eval"
    with torch.no_grad():  # it started from the imported SAE, not from a fresh init
        x = torch.randn(4, 64)
        start = sl.SAE.from_config(tuned.sae.cfg)
        init_sae(start, str(tmp_path / "sl"))
        assert torch.allclose(start(x).x_hat, run.sae(x).x_hat, atol=1e-4)
    with pytest.raises(ValueError, match="its normalize_activations is 'none'"):
        bad = tr.TrainConfig(sites=("resid_pre.3",), sae=sl.SAEConfig.create(architecture="relu",
                             dict_ratio=2), init_from=str(tmp_path / "sl"))  # fmt: skip
        sl.train(lm, data, bad, None, progress=False)


def test_a_release_by_name_goes_through_sae_lens_and_fails_clearly(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="could not load SAELens release 'no-such-release'"):
        sl.load_sae("no-such-release", sae_id="blocks.0.hook_resid_pre")


def test_a_saelens_batchtopk_training_folder_loads_with_its_threshold(tmp_path):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    torch.manual_seed(2)
    theirs = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.3)
        theirs.topk_threshold.fill_(0.25)
    theirs.save_model(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "cfg.json").read_text())
    if cfg["architecture"] != "batchtopk":  # this sae-lens saves the inference (jumprelu) form
        pytest.skip(f"sae-lens wrote architecture={cfg['architecture']!r}")
    ours = sl.load_sae(tmp_path / "b")
    assert ours.cfg.architecture == "batchtopk" and ours.cfg.k == 4
    assert float(ours.threshold) == pytest.approx(0.25)
    x = torch.randn(5, D_IN)
    z = ours.pre_acts(x)
    assert torch.equal(ours(x).c, torch.relu(z) * (z > 0.25))


def test_each_saelens_architecture_is_read_by_the_architecture_that_declares_it():
    from saelab.core.saelens import reader

    names = ("standard", "topk", "jumprelu", "batchtopk", "matryoshka_batchtopk")
    got = {a: reader(a)[0] for a in names}
    assert got == {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu",
                   "batchtopk": "batchtopk", "matryoshka_batchtopk": "matryoshka"}  # fmt: skip
    with pytest.raises(ValueError, match="architecture='gated' is not supported"):
        reader("gated")


@pytest.mark.parametrize("site, kwargs", [("mlp_in.2", {"fold_ln": False}), ("resid_pre.2", {})])
def test_an_mlp_in_export_asks_transformer_lens_not_to_fold_the_norm(tmp_path, site, kwargs):
    """TransformerLens' ln2.hook_normalized is the MLP's input only with fold_ln=False."""
    cfg = sl.SAEConfig.create(architecture="topk", k=4, d_in=8, d_sae=32, site=site,
                              hook_name=sl.parse_site(site).hook_name)  # fmt: skip
    sl.export_saelens(sl.SAE.from_config(cfg), tmp_path / "e")
    meta = json.loads((tmp_path / "e" / "cfg.json").read_text())["metadata"]
    assert meta["model_from_pretrained_kwargs"] == kwargs
    assert meta["hook_name"] == sl.parse_site(site).hook_name
