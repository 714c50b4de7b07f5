"""Real models' conventions: BOS per row, excluded positions, activation scale, chunked KL/CE,
low-precision models, refusing half-saved checkpoints (SAELens' behaviour is the baseline)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from test_models import _LLAMA_KW, FAMILIES, V, tiny_tokenizer

import saelab as sl
from saelab.core import losses
from saelab.core import training as tr
from saelab.core.models import get_site, parse_site
from saelab.core.passes import (
    clean_pass,
    sae_input,
    sae_positions,
    spliced_pass,
)

SITE = "resid_pre.1"


def bos_tokenizer() -> tf.PreTrainedTokenizerFast:
    """The tiny word-level tokenizer with `<|endoftext|>` (id 0) as BOS and EOS, as Llama has."""
    tok = tiny_tokenizer()
    tok.bos_token = tok.eos_token
    return tok


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny random Llama with a BOS token, saved and loaded the way a real one is."""
    path = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(tf.LlamaConfig(**_LLAMA_KW)).save_pretrained(path)
    bos_tokenizer().save_pretrained(path)
    return path, sl.load_model(str(path), device="cpu")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """Each tiny random family the suite builds, with a BOS token, loaded by saelab."""
    path = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(FAMILIES[request.param][0]()).save_pretrained(path)
    bos_tokenizer().save_pretrained(path)
    return sl.load_model(str(path), device="cpu")


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    g = torch.Generator().manual_seed(0)
    docs = [" ".join(f"w{int(i)}" for i in torch.randint(1, V, (int(n),), generator=g))
            for n in torch.randint(5, 40, (200,), generator=g)]  # fmt: skip
    (folder / "docs.jsonl").write_text("".join(f'{{"text": "{d}"}}\n' for d in docs))
    return folder


def test_every_row_starts_with_bos_when_the_tokenizer_has_one(
    llama, text_dir, monkeypatch, tmp_path
):
    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path))
    _, lm = llama
    data = sl.token_dataset(str(text_dir), lm.tokenizer, 16, n_tokens=2000)
    assert data.prepend_bos and (data.tokens[:, 0] == 0).all()
    plain = sl.token_dataset(str(text_dir), lm.tokenizer, 16, n_tokens=2000, prepend_bos=False)
    assert not plain.prepend_bos and (plain.tokens[:, 0] != 0).any()
    # the same stream: a BOS row is BOS + the next 15 tokens of it
    stream = plain.tokens.flatten()
    assert torch.equal(data.tokens[0, 1:], stream[:15]) and torch.equal(
        data.tokens[1, 1:], stream[15:30]
    )
    again = sl.token_dataset(str(text_dir), lm.tokenizer, 16, n_tokens=2000)  # from the cache
    assert again.prepend_bos and torch.equal(again.tokens, data.tokens)
    with pytest.raises(ValueError, match="prepend_bos=True but the tokenizer has no BOS"):
        sl.token_dataset(str(text_dir), tiny_tokenizer(), 16, n_tokens=2000, prepend_bos=True)


def test_storyworld_rows_have_bos_and_unlabelled_first_positions(lm):
    data = sl.token_dataset("storyworld", lm.tokenizer, 32, n_tokens=4000, labels=True)
    assert data.prepend_bos and (data.tokens[:, 0] == lm.tokenizer.bos_token_id).all()
    assert (data.labels[:, 0] == 0).all()


def test_excluded_positions_stay_clean_and_out_of_the_sae_losses(family, text_dir):
    lm = family
    data = sl.token_dataset(str(text_dir), lm.tokenizer, 16, n_tokens=2000, cache=False)
    site = parse_site(SITE)
    tokens = data.tokens[:4]
    keep = sae_positions(data, (0,))
    sae = sl.SAE.from_config(sl.SAEConfig.create(architecture="relu", d_in=32, d_sae=64, site=SITE))
    clean = clean_pass(lm, tokens, [site], later=[parse_site("resid_post.1")], logits=True)
    sp = spliced_pass(lm, tokens, {site: sae}, clean, [parse_site("resid_post.1")], keep=keep)
    assert sp.outs[site].x_hat.shape == (4, 15, 32)  # the SAE never saw position 0
    # position 0 is untouched downstream (causal attention): same residual, same logits
    assert torch.allclose(sp.later[0][:, 0], clean.later[0][:, 0], atol=1e-5)
    assert torch.allclose(sp.logits[:, 0], clean.logits[:, 0], atol=1e-5)
    assert not torch.allclose(sp.logits[:, 1:], clean.logits[:, 1:], atol=1e-3)
    # training: the BOS outlier cannot dominate; inflate position 0 and nothing changes
    cfg = tr.TrainConfig(sites=(SITE,), sae=sl.SAEConfig.create(architecture="relu", dict_ratio=2),
                         batch_size=4, n_tokens=4 * 16 * 3, warmup=1, log_every=1,
                         eval_tokens=4 * 16, exclude_tokens=())  # positions only  # fmt: skip
    run = sl.train(lm, data, cfg, None, progress=False)
    ev = run.log[-1]
    assert ev["n_tokens"] == 4 * 15  # the metrics count only the kept positions
    both = sl.evaluate(lm, run.sae, data, n_tokens=4 * 16, exclude_positions=(), exclude_tokens=())
    assert both["n_tokens"] == 4 * 16 and both["mse"] != ev["mse"]
    with pytest.raises(ValueError, match="exclude_positions"):
        tr.TrainConfig(exclude_positions=(-1,))


def test_sae_positions_and_sae_input_are_what_compute_loss_sees(family, text_dir):
    lm = family
    data = sl.token_dataset(str(text_dir), lm.tokenizer, 16, n_tokens=2000, cache=False)
    plain = sl.token_dataset(str(text_dir), lm.tokenizer, 16, n_tokens=2000, cache=False,
                             prepend_bos=False)  # fmt: skip
    keep = sae_positions(data)
    assert keep.tolist() == list(range(1, 16))  # BOS left out by default
    assert sae_positions(plain).tolist() == list(range(16))  # never None
    assert sae_positions(data, (0, 3)).tolist() == [p for p in range(16) if p not in (0, 3)]
    site = parse_site(SITE)
    cfg = tr.TrainConfig(sites=(SITE,), sae=sl.SAEConfig.create(architecture="relu", dict_ratio=2))
    sae = sl.SAE.from_config(cfg.sae_config(SITE, 32))
    sae.set_act_scale(3.0)
    tokens = data.tokens[:4]
    with torch.no_grad(), lm.trace(tokens):
        x = get_site(lm, SITE).save()
    x_in = sae_input(lm, tokens, sae, keep)
    assert x_in.shape == (4, 15, 32)
    torch.testing.assert_close(x_in, x[:, 1:] * sae.act_scale)
    out = sae(x[:, 1:])
    mse = F.mse_loss(sae.normalize(out.x_hat), x_in)
    l1 = out.c.abs().sum(-1).mean() / 32
    loss, logs, _ = tr.compute_loss(lm, tokens, {site: sae}, cfg, {site: torch.zeros(64).bool()},
                                  keep=keep)  # fmt: skip
    assert loss.item() == pytest.approx((mse + l1).item(), abs=1e-5)
    assert logs["mse"] == pytest.approx(mse.item(), abs=1e-6)


def test_activation_scale_is_estimated_saved_and_applied_to_raw_activations(
    llama, text_dir, tmp_path
):
    _, lm = llama
    data = sl.token_dataset(str(text_dir), lm.tokenizer, 16, n_tokens=2000, cache=False)
    sae = sl.SAEConfig.create(architecture="topk", k=4, dict_ratio=2)
    cfg = tr.TrainConfig(sites=(SITE,), sae=sae, batch_size=4, n_tokens=4 * 16 * 2, warmup=1,
                         eval_tokens=4 * 16)  # fmt: skip
    run = sl.train(lm, data, cfg, tmp_path / "run", progress=False)
    sae = run.sae
    site = parse_site(SITE)
    x = clean_pass(lm, data.tokens[:8], [site]).acts[site][:, 1:]
    mean_norm = run.log[0]["mean_norm"][SITE]
    assert sae.act_scale.item() == pytest.approx(32**0.5 / mean_norm, rel=1e-5)
    assert (x * sae.act_scale).norm(dim=-1).mean().item() == pytest.approx(32**0.5, rel=0.2)
    back = sl.load_sae(tmp_path / "run" / "saes" / SITE)
    assert back.act_scale == sae.act_scale
    out = back(x)  # raw in, raw out
    z = (x * back.act_scale) @ back.W_enc + back.b_enc
    assert torch.allclose(out.pre, z, atol=1e-5)
    assert torch.allclose(out.x_hat, (out.c @ back.W_dec + back.b_dec) / back.act_scale, atol=1e-5)
    assert F.mse_loss(out.x_hat, x) < F.mse_loss(torch.zeros_like(x), x)


def test_saes_saved_before_normalisation_load_as_raw(tmp_path):
    sae = sl.SAE.from_config(
        sl.SAEConfig.create(architecture="relu", d_in=8, d_sae=16, normalize_activations="none")
    )
    sl.save_sae(sae, tmp_path / "s")
    cfg = (tmp_path / "s" / "cfg.json").read_text()
    import json

    meta = json.loads(cfg)
    del meta["normalize_activations"]  # as every cfg.json written before the option
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(meta))
    back = sl.load_sae(tmp_path / "s")
    assert back.cfg.normalize_activations == "none" and float(back.act_scale) == 1.0


@pytest.mark.parametrize("chunk", [7, 64, None])
def test_chunked_kl_and_ce_equal_the_whole_computation(chunk):
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(3, 5, 37, generator=g) * 4
    sae = (clean + torch.randn(3, 5, 37, generator=g)).requires_grad_()
    lc, ls = F.log_softmax(clean, -1), F.log_softmax(sae, -1)
    want = (lc.exp() * (lc - ls)).sum(-1).mean()
    want.backward()
    g_want, sae.grad = sae.grad.clone(), None
    got = losses.kl_loss(clean, sae, chunk_elements=chunk and chunk * 37)
    got.backward()
    assert abs(got.item() - want.item()) < 1e-5
    assert torch.allclose(sae.grad, g_want, atol=1e-5)
    t = torch.randint(0, 37, (15,), generator=g)
    flat = sae.detach().reshape(15, 37).requires_grad_()
    want = F.cross_entropy(flat, t, reduction="sum")
    want.backward()
    g_want, flat.grad = flat.grad.clone(), None
    got = losses.cross_entropy(flat, t, "sum", chunk_elements=chunk and chunk * 37)
    got.backward()
    assert abs(got.item() - want.item()) < 1e-4 and torch.allclose(flat.grad, g_want, atol=1e-5)


def test_a_bfloat16_model_trains_float32_saes(llama, text_dir):
    path, _ = llama
    lm = sl.load_model(str(path), device="cpu", dtype="bfloat16")
    data = sl.token_dataset(str(text_dir), lm.tokenizer, 16, n_tokens=2000, cache=False)
    for arch, loss, kw in [("relu", "e2e", {}), ("gtopk", "local", {"k": 4})]:
        cfg = tr.TrainConfig(sites=(SITE,), loss=loss, batch_size=4, n_tokens=4 * 16 * 2,
                             sae=sl.SAEConfig.create(architecture=arch, dict_ratio=2, **kw),
                             warmup=1, log_every=1, eval_tokens=4 * 16)  # fmt: skip
        run = sl.train(lm, data, cfg, None, progress=False)
        assert run.sae.dtype == torch.float32
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in run.log if r["kind"] == "train")
        assert torch.isfinite(torch.tensor(run.log[-1]["ce_increase"]))


@pytest.mark.parametrize("base", [tf.LlamaModel, tf.Qwen2Model], ids=["llama", "qwen2"])
def test_a_base_model_without_its_lm_head_is_refused(tmp_path, base):
    torch.manual_seed(0)
    config = (tf.LlamaConfig if base is tf.LlamaModel else tf.Qwen2Config)(**_LLAMA_KW)
    base(config).save_pretrained(tmp_path)  # no lm_head (untied: it would be random)
    bos_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"uninitialised \(lm_head.weight\)"):
        sl.load_model(str(tmp_path), device="cpu")


def test_dtype_device_and_valid_sites_are_checked(lm):
    with pytest.raises(ValueError, match="dtype='fp8' is not supported; valid: auto, float32"):
        sl.load_model("storyworld", dtype="fp8")
    with pytest.raises(ValueError, match="device='gpu' is not a device|device='gpu'"):
        sl.load_model("storyworld", device="gpu")
    assert sl.valid_sites(lm) == sl.valid_sites(6) and "mlp_out.5" in sl.valid_sites(lm)


def test_special_tokens_mid_row_are_left_out_of_the_saes_and_left_clean(llama, text_dir):
    """Documents joined into rows put a BOS mid-row (an attention sink); by default the SAEs
    never see a special token wherever it is: out of every SAE loss and metric, clean in the
    splice (SAELens' exclude_special_tokens)."""
    from saelab.core.passes import batch_positions, select

    _, lm = llama
    data = sl.token_dataset(str(text_dir), lm.tokenizer, 16, n_tokens=2000, cache=False)
    assert (data.tokens[:, 1:] == 0).any()  # mid-row BOS: id 0 is BOS and EOS here
    site, later = parse_site(SITE), [parse_site("resid_post.1")]
    tokens = data.tokens[:4].clone()
    tokens[:, 1] = 0  # a BOS right after the row's own: positions 0 and 1 both special
    keep = batch_positions(tokens, sae_positions(data), torch.tensor([0]))
    assert keep.dtype == torch.bool and not keep[tokens == 0].any() and keep.sum() > 0
    sae = sl.SAE.from_config(sl.SAEConfig.create(architecture="relu", d_in=32, d_sae=64, site=SITE))
    with torch.no_grad():
        sae.b_dec.fill_(5.0)  # a reconstruction far from the activations
    clean = clean_pass(lm, tokens, [site], later=later, logits=True)
    sp = spliced_pass(lm, tokens, {site: sae}, clean, later, keep=keep)
    assert sp.outs[site].x_hat.shape == (int(keep.sum()), 32)  # only the kept positions
    # positions 0 and 1 (both special) stay clean, and so does everything causal after them there
    assert torch.allclose(sp.later[0][:, :2], clean.later[0][:, :2], atol=1e-5)
    assert not torch.allclose(sp.later[0][:, 2:], clean.later[0][:, 2:], atol=1e-3)
    # the local loss is the MSE over exactly those positions
    cfg = tr.TrainConfig(sites=(SITE,), sae=sl.SAEConfig.create(architecture="relu", dict_ratio=2))
    dead = {site: torch.zeros(64, dtype=torch.bool)}
    _, logs, _ = tr.compute_loss(lm, tokens, {site: sae}, cfg, dead, keep=keep)
    x = select(clean.acts[site], keep)
    assert logs["mse"] == pytest.approx(F.mse_loss(sae(x).x_hat * sae.act_scale,
                                                   x * sae.act_scale).item(), rel=1e-5)  # fmt: skip
    # the default is on: a run records them and its metrics count without them
    run = sl.train(lm, data, tr.TrainConfig(sites=(SITE,), sae=sl.SAEConfig.create(
        architecture="relu", dict_ratio=2), batch_size=4, n_tokens=4 * 16 * 2, warmup=1,
        eval_tokens=4 * 16), None, progress=False)  # fmt: skip
    assert run.sae.extra["data"]["excluded_tokens"] == [0]
    assert run.log[-1]["n_tokens"] == int((data.tokens[:4, 1:] != 0).sum())


def test_streamed_logits_give_the_same_e2e_step_in_every_family(family, text_dir, monkeypatch):
    """Each family's output embedding is found and skipped (GPT-NeoX's `embed_out`, Gemma 2's
    logit softcap), and the streamed KL and dL/dx equal the materialised ones (`unembed.py`)."""
    from saelab.core import unembed

    lm = family
    tokens = sl.token_dataset(str(text_dir), lm.tokenizer, 16, n_tokens=2000,
                              cache=False).tokens[:4]  # fmt: skip
    sae_cfg = sl.SAEConfig.create(architecture="gtopk", k=4, dict_ratio=2)
    cfg = tr.TrainConfig(sites=(SITE,), sae=sae_cfg, loss="e2e")
    site = parse_site(SITE)

    def step():
        torch.manual_seed(0)
        sae = sl.SAE.from_config(cfg.sae_config(SITE, 32))
        loss, _, _ = tr.compute_loss(lm, tokens, {site: sae}, cfg,
                                     {site: torch.zeros(64, dtype=torch.bool)})  # fmt: skip
        loss.backward()
        return loss, sae.W_enc.grad.clone()

    ref = step()
    monkeypatch.setattr(unembed, "STREAM_LOGITS", 0)
    new = step()
    torch.testing.assert_close(new[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new[1], ref[1], atol=1e-5, rtol=1e-4)
