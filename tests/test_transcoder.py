"""Transcoders and skip transcoders: read mlp_in.L, write mlp_out.L. The local and e2e steps are
checked against a by-hand nnsight splice of the MLP (to 1e-5), every objective trains, and what
cannot be right (another site, a cache, SAELens) is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from configs import config

import saelab as sl
from saelab.core import training as tr
from saelab.core.passes import batch_positions, sae_positions, special_ids
from saelab.core.sae import SAE, SAEConfig, load_sae, save_sae

SITE = "mlp_out.2"
ARCHS = ("transcoder", "skip_transcoder")


def _cfg(arch="transcoder", **kw) -> sl.TrainConfig:
    base = dict(sites=(SITE,), sae=arch, k=8, dict_ratio=2, n_tokens=8 * 32 * 4, batch_size=8,
                eval_tokens=4 * 32, alive_tokens=None, warmup=1, log_every=1)  # fmt: skip
    return config(**(base | kw))


@pytest.fixture(scope="module")
def data(storyworld_data):
    return storyworld_data(32, n_tokens=8 * 32 * 5)


def _sae(lm, data, arch: str, loss="local") -> tuple[SAE, sl.TrainConfig]:
    """A transcoder after two training steps (act_scale, b_dec and W_skip away from init)."""
    cfg = _cfg(arch, loss=loss, n_tokens=8 * 32 * 2)
    return tr.train(lm, data, cfg, None, progress=False).sae.train(), cfg


def _clean_rows(lm, data, n: int = 4):
    """`n` rows with no special token past position 0, and the positions the SAEs see."""
    keep = sae_positions(data)
    special = torch.tensor(special_ids(lm.tokenizer))
    rows = [r for r in data.tokens if batch_positions(r[None], keep, special) is keep]
    return torch.stack(rows[:n]), keep


def _mlp(lm):
    return lm.transformer.h[2].mlp


def test_it_reads_mlp_in_and_refuses_any_other_site(lm, data):
    cfg = SAEConfig.create(architecture="transcoder", k=4)
    assert cfg.input_site(sl.parse_site("mlp_out.3")) == sl.parse_site("mlp_in.3")
    with pytest.raises(ValueError, match=r"train it at an mlp_out site \(e.g. mlp_out.3\), not "
                                         r"resid_pre.3"):  # fmt: skip
        cfg.input_site(sl.parse_site("resid_pre.3"))
    with pytest.raises(ValueError, match="reads mlp_in.L and writes mlp_out.L"):
        tr.train(lm, data, _cfg(sites=("attn_out.2",)), None, progress=False)
    with pytest.raises(ValueError, match="pre_subtract_b_dec=True"):
        SAEConfig.create(architecture="transcoder", k=4, pre_subtract_b_dec=True)
    # a plain SAE reads the site it writes
    assert SAEConfig.create(architecture="topk", k=4).input_site(sl.parse_site(SITE)).kind == (
        "mlp_out"
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_the_local_step_is_the_mse_of_the_mlp_output_from_its_input(lm, data, arch):
    sae, cfg = _sae(lm, data, arch)
    tokens, keep = _clean_rows(lm, data)
    with torch.no_grad(), lm.trace(tokens):
        x_in = _mlp(lm).input.save()
        y = _mlp(lm).output.save()
    x_in, y = x_in[:, keep], y[:, keep]
    s = sae.act_scale
    z = (x_in * s) @ sae.W_enc + sae.b_enc  # by hand: TopK, decode, the skip path, unscale
    top = z.topk(8, dim=-1)
    c = torch.zeros_like(z).scatter(-1, top.indices, F.relu(top.values))
    y_hat = c @ sae.W_dec + sae.b_dec
    if arch == "skip_transcoder":
        y_hat = y_hat + (x_in * s) @ sae.W_skip.T
        assert sae.W_skip.abs().sum() > 0  # trained away from its zero init
    expected = F.mse_loss(y_hat, y * s)
    dead = {sl.parse_site(SITE): torch.zeros(sae.cfg.d_sae, dtype=torch.bool)}
    loss, logs, outs = tr.compute_loss(lm, tokens, {sl.parse_site(SITE): sae}, cfg, dead,
                                       keep=keep)  # fmt: skip
    assert logs["mse"] == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(outs[sl.parse_site(SITE)].x_hat, y_hat / s, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_e2e_step_is_the_kl_of_a_by_hand_splice_of_the_mlp(lm, data, arch):
    """The MLP's output replaced, at the kept positions, by the transcoder's output for the
    MLP's input in the same (spliced) pass: the KL and its gradient to 1e-5."""
    sae, cfg = _sae(lm, data, arch, loss="e2e")
    tokens, keep = _clean_rows(lm, data)
    with torch.no_grad(), lm.trace(tokens):
        clean = lm.output.logits.save()
    with lm.trace(tokens):
        x_in = _mlp(lm).input
        y = _mlp(lm).output
        y_hat = sae(x_in[:, keep]).x_hat
        _mlp(lm).output = y.index_copy(1, keep, y_hat)
        spliced = lm.output.logits.save()
    p = F.log_softmax(clean.float(), -1)
    by_hand = (p.exp() * (p - F.log_softmax(spliced.float(), -1))).sum(-1).mean()
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec] + (
        [sae.W_skip] if arch == "skip_transcoder" else []
    )
    grads = torch.autograd.grad(by_hand, params)
    dead = {sl.parse_site(SITE): torch.zeros(sae.cfg.d_sae, dtype=torch.bool)}
    loss, logs, _ = tr.compute_loss(lm, tokens, {sl.parse_site(SITE): sae}, cfg, dead, keep=keep)
    assert logs["kl"] == pytest.approx(by_hand.item(), rel=1e-5, abs=1e-7)
    kl_coeff = cfg.loss.kl_coeff
    mine = torch.autograd.grad(loss, params)  # KL, plus AuxK: zero, none dead
    for a, b in zip(mine, grads, strict=True):
        torch.testing.assert_close(a, kl_coeff * b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss", ["local", "e2e", "e2e+ds"])
def test_trains_with_every_objective(lm, data, arch, loss):
    kw = dict(kl_coeff=0.5, ds_coeff=2.5) if loss == "e2e+ds" else {}
    run = tr.train(lm, data, _cfg(arch, loss=loss, **kw), None, progress=False)
    train = [r for r in run.log if r["kind"] == "train"]
    assert all(r["l0"] == pytest.approx(8.0) for r in train)
    assert ("kl" in train[0]) == (loss != "local") and ("ds_mse" in train[0]) == (loss == "e2e+ds")
    (ev,) = [r for r in run.log if r["kind"] == "eval"]
    # the eval's reconstruction is of the MLP's output: a transcoder that learned anything
    # explains some of its variance, and replacing the MLP costs less than zero-ablating it
    assert ev["explained_var"] > 0 and ev["ce_sae"] < ev["ce_zero_abl"]
    assert run.sae.cfg.site == SITE
    (scale,) = [r for r in run.log if r["kind"] == "act_scale"]
    assert scale["mean_norm"][SITE] > 0  # measured on mlp_in, logged under the site written


def test_two_transcoders_splice_together_and_the_second_reads_the_spliced_model(lm, data):
    """The transcoder at mlp_out.3 reads mlp_in.3 as the model computes it with the one at
    mlp_out.1 spliced in, not the clean value: the KL of a by-hand splice of both, to 1e-5."""
    run = tr.train(lm, data, _cfg(sites=("mlp_out.1", "mlp_out.3"), loss="e2e"), None,
                   progress=False)  # fmt: skip
    assert sorted(run.saes) == ["mlp_out.1", "mlp_out.3"]
    one, three = run.saes["mlp_out.1"].train(), run.saes["mlp_out.3"].train()
    tokens, keep = _clean_rows(lm, data)
    with torch.no_grad(), lm.trace(tokens):
        clean_in3 = lm.transformer.h[3].mlp.input.save()  # in execution order: before logits
        clean = lm.output.logits.save()
    with torch.no_grad(), lm.trace(tokens):
        for layer, sae in ((1, one), (3, three)):
            mlp = lm.transformer.h[layer].mlp
            x_in, y = mlp.input, mlp.output
            mlp.output = y.index_copy(1, keep, sae(x_in[:, keep]).x_hat)
            if layer == 3:
                spliced_in3 = x_in.save()
        spliced = lm.output.logits.save()
    assert not torch.allclose(spliced_in3, clean_in3, atol=1e-3)  # the first splice reaches it
    p = F.log_softmax(clean.float(), -1)
    by_hand = (p.exp() * (p - F.log_softmax(spliced.float(), -1))).sum(-1).mean()
    dead = {sl.parse_site(s): torch.zeros(128, dtype=torch.bool) for s in run.saes}
    saes = {sl.parse_site(s): sae for s, sae in run.saes.items()}
    _, logs, _ = tr.compute_loss(lm, tokens, saes, run.cfg, dead, keep=keep)
    assert logs["kl"] == pytest.approx(by_hand.item(), rel=1e-5)


def test_the_activation_scale_is_the_inputs(lm, data):
    from saelab.core.passes import sae_positions as positions
    from saelab.core.setup import activation_stats

    run = tr.train(lm, data, _cfg(), None, progress=False)
    (scale,) = [r for r in run.log if r["kind"] == "act_scale"]
    special = torch.tensor(special_ids(lm.tokenizer))
    stats = activation_stats(lm, data, [sl.parse_site("mlp_in.2"), sl.parse_site(SITE)],
                             positions(data), 8, 2**16, special=special)  # fmt: skip
    assert scale["mean_norm"][SITE] == pytest.approx(stats[sl.parse_site("mlp_in.2")].mean_norm)
    assert stats[sl.parse_site(SITE)].mean_norm < 0.8 * scale["mean_norm"][SITE]  # not mlp_out's
    assert float(run.sae.act_scale) == pytest.approx(8 / scale["mean_norm"][SITE])  # sqrt(64)


def test_the_alive_window_encodes_what_a_transcoder_reads(lm, data):
    """Past the eval rows, `evaluate` fires latents from the MLP's input (no spliced pass)."""
    sae = _sae(lm, data, "transcoder")[0].eval()
    tokens, keep = _clean_rows(lm, data, n=8)
    rows = sl.TokenDataset(tokens, source="storyworld", split="train", prepend_bos=True)
    rep = sl.evaluate(lm, {SITE: sae}, rows, n_tokens=2 * 32, batch_size=2,
                      alive_tokens=8 * len(keep))  # fmt: skip
    with torch.no_grad(), lm.trace(tokens):
        x_in = _mlp(lm).input.save()
    fired = (sae.encode(x_in[:, keep])[0] > 0).flatten(0, 1).any(0)
    assert rep["alive"] == int(fired.sum()) and rep["alive_window_tokens"] == 8 * len(keep)
    with pytest.raises(ValueError, match="reads mlp_in.2: another SAE of this set replaces it"):
        topk = SAE.from_config(SAEConfig.create(architecture="topk", k=4, d_in=64, d_sae=128))
        sl.evaluate(lm, {SITE: sae, "mlp_in.2": topk}, rows, n_tokens=2 * 32)


def test_the_skip_path_starts_at_zero_and_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = SAEConfig.create(architecture="skip_transcoder", d_in=8, d_sae=32, k=4)
    sae = SAE.from_config(cfg)
    assert sae.W_skip.shape == (8, 8) and not sae.W_skip.any()
    x = torch.randn(5, 8)
    plain = SAE.from_config(SAEConfig.create(architecture="transcoder", d_in=8, d_sae=32, k=4))
    plain.load_state_dict({k: v for k, v in sae.state_dict().items() if k != "W_skip"})
    torch.testing.assert_close(sae(x).x_hat, plain(x).x_hat)
    with torch.no_grad():
        sae.W_skip.normal_()
        sae.act_scale.fill_(2.0)
    save_sae(sae, tmp_path / "t")
    back = load_sae(tmp_path / "t")
    assert back.cfg == sae.cfg
    torch.testing.assert_close(back(x).x_hat, sae(x).x_hat)


def test_a_cache_and_saelens_export_are_refused(lm, data, tmp_path):
    cache = sl.cache_activations(lm, data, SITE, tmp_path / "cache")
    with pytest.raises(ValueError, match="reads mlp_in.2 and writes mlp_out.2; an activation "
                                         "cache holds one site"):  # fmt: skip
        tr.train(None, cache, _cfg(), None, progress=False)
    sae = SAE.from_config(SAEConfig.create(architecture="transcoder", d_in=8, d_sae=32, k=4))
    with pytest.raises(ValueError, match="no SAELens equivalent"):
        sae.to_saelens(1.0)
    with pytest.raises(ValueError, match="reads mlp_in.2: an activation cache holds one site"):
        sl.evaluate(cache, {SITE: sae.to(torch.float32)}, None)


# --- sparsify's format ---------------------------------------------------------------------------


def _random(arch: str, **kw) -> SAE:
    """An SAE of `arch`, every weight random, an activation scale: nothing folds trivially."""
    torch.manual_seed(1)
    sae = SAE.from_config(SAEConfig.create(architecture=arch, d_in=8, d_sae=32, k=4, **kw))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.5)
        sae.act_scale.fill_(1.7)
    return sae.eval()


@pytest.mark.parametrize(
    "arch, kw",
    [
        ("transcoder", {}),
        ("skip_transcoder", {}),
        ("topk", {}),
        ("topk", {"pre_subtract_b_dec": True}),
    ],
)
def test_sparsify_reads_the_export_and_computes_the_same(tmp_path, arch, kw):
    sparsify = pytest.importorskip("sparsify")
    sae = _random(arch, **kw)
    sl.export_sparsify(sae, tmp_path / "e")
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "e")
    assert theirs.cfg.transcode == (arch != "topk") and theirs.cfg.k == 4
    assert (theirs.W_skip is not None) == (arch == "skip_transcoder")
    x = torch.randn(16, 8)
    out = theirs(x)
    c = torch.zeros(16, 32).scatter(-1, out.latent_indices, out.latent_acts)
    mine = sae(x)
    torch.testing.assert_close(out.sae_out, mine.x_hat, atol=1e-5, rtol=1e-5)
    # the scale goes into the latents, as in the SAELens export; the rows stay as trained
    torch.testing.assert_close(c, mine.c / 1.7, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs.W_dec, sae.W_dec)


def test_the_sparsify_export_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="'batchtopk' has no sparsify equivalent.*topk, "
                                         "transcoder, skip_transcoder"):  # fmt: skip
        sl.export_sparsify(_random("batchtopk"), tmp_path / "b")
    sae = _random("transcoder")
    save_sae(sae, tmp_path / "saelab")  # the same two file names as a sparsify folder
    before = (tmp_path / "saelab" / "sae.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="never writes into it"):
        sl.export_sparsify(sae, tmp_path / "saelab", overwrite=True)
    assert (tmp_path / "saelab" / "sae.safetensors").read_bytes() == before
    sl.export_sparsify(sae, tmp_path / "e")
    with pytest.raises(FileExistsError, match="holds a sparsify export; pass overwrite=True"):
        sl.export_sparsify(sae, tmp_path / "e")
    sl.export_sparsify(_random("skip_transcoder"), tmp_path / "e", overwrite=True)
    assert "W_skip" in (tmp_path / "e" / "sae.safetensors").read_bytes().decode("latin-1")


# --- every model family --------------------------------------------------------------------------

from test_models import V  # noqa: E402
from test_real_conventions import family  # noqa: E402, F401  (a fixture)


def test_a_transcoder_trains_e2e_ds_in_every_family(family):  # noqa: F811
    """GPT-2, GPT-Neo, GPT-NeoX (parallel residual), Llama, Qwen2, Gemma 1 and 2: the MLP's input
    is read where that family's MLP reads it (tests/test_models.py checks the site itself).
    Random ids after a BOS: the tiny tokenizer reads text as unknown ids in some families."""
    lm = family
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, V, (40, 16), generator=g)
    tokens[:, 0] = 0  # BOS
    data = sl.TokenDataset(tokens, source="random", split="train", prepend_bos=True)
    cfg = _cfg("skip_transcoder", sites=("mlp_out.0",), loss="e2e+ds", kl_coeff=0.5, ds_coeff=2.5,
               n_tokens=4 * 16 * 3, batch_size=4, eval_tokens=4 * 16, k=4)  # fmt: skip
    run = tr.train(lm, data, cfg, None, progress=False)
    train = [r for r in run.log if r["kind"] == "train"]
    assert all(r["kl"] > 1e-6 and r["ds_mse"] > 1e-6 for r in train)
    assert train[-1]["loss"] < 10 * train[0]["loss"]  # nothing diverging
    assert run.sae.W_skip.abs().sum() > 0 and run.sae.W_dec.abs().sum() > 0
    assert all(torch.isfinite(p).all() for p in run.sae.parameters())


def test_the_feature_studies_encode_what_a_transcoder_reads(lm, data):
    from saelab.studies.features import collect
    from saelab.studies.plots import firing_frequency

    sae = _sae(lm, data, "transcoder")[0].eval()
    acts = collect(lm, sae, data, n_tokens=4 * 32, batch_size=4)
    with torch.no_grad(), lm.trace(data.tokens[:4]):
        x_in = _mlp(lm).input.save()
    torch.testing.assert_close(acts.flat.view(4, 32, -1), sae.encode(x_in)[0], atol=1e-6, rtol=0)
    freq = firing_frequency(lm, sae, data, n_tokens=4 * 32, batch_size=4)
    assert freq.sum() * 4 * 32 == pytest.approx(float((acts.flat > 0).sum()))


@pytest.mark.parametrize("transcode, skip", [(True, False), (True, True), (False, False)])
def test_load_sae_reads_a_sparsify_folder(tmp_path, transcode, skip):
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(3)
    cfg = sparsify.SparseCoderConfig(num_latents=32, k=4, transcode=transcode, skip_connection=skip)
    theirs = sparsify.SparseCoder(8, cfg)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.5)
    if not transcode:  # sparsify keeps an SAE's rows unit (normalize_decoder)
        theirs.set_decoder_norm_to_unit_norm()
    theirs.save_to_disk(tmp_path / "s")
    ours = sl.load_sae(tmp_path / "s")
    arch = {(True, False): "transcoder", (True, True): "skip_transcoder"}.get((transcode, skip))
    assert ours.cfg.architecture == (arch or "topk") and ours.cfg.k == 4
    assert ours.cfg.pre_subtract_b_dec == (not transcode) and not ours.training
    x = torch.randn(16, 8)
    out = theirs(x)
    c = torch.zeros(16, 32).scatter(-1, out.latent_indices, out.latent_acts)
    torch.testing.assert_close(ours(x).x_hat, out.sae_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x).c, c, atol=1e-5, rtol=1e-5)
    # and back: the export of what was read is what sparsify wrote
    sl.export_sparsify(ours, tmp_path / "back")
    again = sparsify.SparseCoder.load_from_disk(tmp_path / "back")
    torch.testing.assert_close(again(x).sae_out, out.sae_out, atol=1e-5, rtol=1e-5)


def test_a_sparsify_folder_that_cannot_be_reproduced_is_refused(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    cfg = sparsify.SparseCoderConfig(num_latents=32, k=4, activation="groupmax")
    sparsify.SparseCoder(8, cfg).save_to_disk(tmp_path / "g")
    with pytest.raises(ValueError, match="activation='groupmax'; saelab reads TopK only"):
        sl.load_sae(tmp_path / "g")
    free = sparsify.SparseCoder(8, sparsify.SparseCoderConfig(num_latents=32, k=4))
    with torch.no_grad():
        free.W_dec.mul_(2.0)  # normalize_decoder=False training leaves rows like these
    free.save_to_disk(tmp_path / "f")
    with pytest.raises(ValueError, match=r"decoder rows are not unit norm \(from 2 to 2;"):
        sl.load_sae(tmp_path / "f")


def test_a_sparsify_transcoder_fine_tunes_with_the_kl(lm, data, tmp_path):
    """What sparsify users cannot do there: Karvonen's KL + MSE fine-tune of their transcoder."""
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(0)
    theirs = sparsify.SparseCoder(64, sparsify.SparseCoderConfig(num_latents=128, k=8,
                                                                  transcode=True))  # fmt: skip
    with torch.no_grad():
        theirs.W_dec.normal_(0, 0.05)
    theirs.save_to_disk(tmp_path / "s")
    start = sl.load_sae(tmp_path / "s")
    cfg = _cfg(init_from=str(tmp_path / "s"), normalize_activations="none", dict_ratio=2,
               finetune={"fraction": 1.0})  # fmt: skip
    run = tr.train(lm, data, cfg, None, progress=False)
    assert [r["kind"] for r in run.log][:2] == ["finetune", "train"]
    assert not torch.equal(run.sae.W_dec, start.W_dec)
    # a sparsify SAE subtracts b_dec from its input: a run that would not is refused
    sparsify.SparseCoder(64, sparsify.SparseCoderConfig(num_latents=128, k=8)).save_to_disk(
        tmp_path / "sae"
    )
    topk = _cfg("topk", sites=("resid_pre.3",), init_from=str(tmp_path / "sae"), dict_ratio=2,
                normalize_activations="none")  # fmt: skip
    with pytest.raises(ValueError, match="its pre_subtract_b_dec is True but this run's SAE"):
        tr.train(lm, data, topk, None, progress=False)
