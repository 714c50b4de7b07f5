"""e2e+ds's downstream term in normalised units: the paper's coefficients mean the same on a model
whose residual stream is 50x larger (ARCHITECTURE.md §4)."""

import shutil

import pytest
import torch
import transformers as tf

import saelab as sl
from saelab.core.models import parse_site
from saelab.core.passes import clean_pass
from saelab.storyworld import MODEL_DIR

SITE = "resid_pre.3"
SCALE = 50.0


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    """Storyworld with every residual stream exactly 50x and the same logits: the embeddings and
    each block's output projections scaled up, the final layer norm's affine scaled down (its
    input is scale-free; the unembedding is tied to the embedding), the layer norms' epsilon
    scaled with the variance (storyworld's residual variance is small enough for it to count)."""
    path = tmp_path_factory.mktemp("storyworld_x50")
    model = tf.GPT2LMHeadModel.from_pretrained(MODEL_DIR)
    with torch.no_grad():
        for p in (model.transformer.wte.weight, model.transformer.wpe.weight):
            p.mul_(SCALE)
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.mul_(SCALE)
                proj.bias.mul_(SCALE)
        model.transformer.ln_f.weight.div_(SCALE)
        model.transformer.ln_f.bias.div_(SCALE)
    model.config.layer_norm_epsilon *= SCALE**2
    model.save_pretrained(path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(MODEL_DIR / f, path / f)
    return sl.load_model(str(path), device="cpu")


def _train(lm, data, units: str, tmp_path, steps: int = 16):
    loss = sl.objective("e2e+ds", kl_coeff=0.5, ds_coeff=2.5, ds_units=units)
    sae = sl.SAEConfig.create(architecture="relu", dict_ratio=4, sparsity=1.0)
    cfg = sl.TrainConfig(sites=(SITE,), sae=sae, loss=loss, batch_size=8, n_tokens=steps * 8 * 64,
                         lr=3e-3, warmup=2, log_every=1, eval_tokens=4 * 64, alive_tokens=None,
                         seed=0)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same summation order in both runs
    try:
        run = sl.train(lm, data, cfg, tmp_path / f"{units}-{id(lm)}", progress=False)
    finally:
        torch.set_num_threads(threads)
    return [r for r in run.log if r["kind"] == "train"]


@pytest.fixture(scope="module")
def data(storyworld_data):
    return storyworld_data(64, 20_000)


def test_the_scaled_model_is_the_same_function_with_50x_residuals(lm, scaled, data):
    tokens = data.tokens[:4]
    site = parse_site(SITE)
    a = clean_pass(lm, tokens, [site], logits=True)
    b = clean_pass(scaled, tokens, [site], logits=True)
    torch.testing.assert_close(b.acts[site], SCALE * a.acts[site], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-4, atol=1e-3)


def test_e2e_ds_trains_alike_on_a_50x_model_with_the_papers_coefficients(
    lm, scaled, data, tmp_path
):
    base = _train(lm, data, "normalised", tmp_path)
    big = _train(scaled, data, "normalised", tmp_path)
    for key in ("kl", "ds_mse", "loss"):  # the same units: the same run, up to float rounding
        assert big[-1][key] == pytest.approx(base[-1][key], rel=0.02), key
    assert base[-1]["kl"] < base[0]["kl"]  # and it trains
    raw = _train(scaled, data, "raw", tmp_path, steps=2)
    # raw units: the downstream term is the residual's scale squared larger, and swamps the KL
    assert raw[0]["ds_mse"] / big[0]["ds_mse"] > 100
    assert raw[0]["ds_mse"] * 2.5 > 100 * raw[0]["kl"] * 0.5
