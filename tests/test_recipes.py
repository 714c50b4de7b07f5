"""The real-model recipes run: each preset of notebooks/params for a real model (GPT-2 small,
Gemma 2 2B; docs/real_models.md) executes its notebook through papermill for a few steps on a
random-weight model with that model's layout: its family, its layers, its context length, a BOS
token, the preset's dtype, site, n_ctx, batch size, dictionary ratio and coefficients. Only the
widths and the vocabulary are tiny, and the token budget is three steps."""

import json

import pytest
import torch
import transformers as tf
from test_models import V
from test_real_conventions import bos_tokenizer

from saelab import runs

LAYOUTS = {  # the real model's layout at tiny widths
    "gpt2": lambda: tf.GPT2Config(n_layer=12, n_positions=1024, n_embd=16, n_head=2,
                                  vocab_size=V, bos_token_id=0, eos_token_id=0),
    "gemma2": lambda: tf.Gemma2Config(num_hidden_layers=26, hidden_size=16, head_dim=8,
                                      num_attention_heads=2, num_key_value_heads=1,
                                      intermediate_size=32, max_position_embeddings=8192,
                                      vocab_size=V, bos_token_id=0, eos_token_id=0,
                                      pad_token_id=0, rms_norm_eps=1e-3),
}  # fmt: skip
# rms_norm_eps=1e-3 for Gemma 2 (its own: 1e-6): a random-weight Gemma's MLP outputs are ~1e-3,
# so each post-feedforward RMSNorm scales their gradient up ~1,000x and, past a few layers, the
# backward overflows to NaN even for plain CE through transformers (LOG.md 2026-12-04); real
# weights do not have such small branch outputs.
RECIPES = [("02_e2e_sae", "gpt2"), ("01_local_sae", "gemma2"), ("02_e2e_sae", "gemma2")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Plain-text documents of the tiny vocabulary's words, enough for a 1% held-out slice."""
    folder = tmp_path_factory.mktemp("corpus")
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(50, 400, (1500,), generator=g).tolist()
    docs = [" ".join(f"w{int(i)}" for i in torch.randint(1, V, (n,), generator=g)) for n in lengths]
    (folder / "docs.txt").write_text("\n".join(docs) + "\n")
    return folder


@pytest.mark.parametrize("notebook, preset", RECIPES, ids=lambda x: x)
def test_a_real_model_preset_runs_on_a_random_model_of_its_layout(
    notebook, preset, corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path / "cache"))
    model = tmp_path / preset
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(LAYOUTS[preset]()).save_pretrained(model)
    bos_tokenizer().save_pretrained(model)
    values = runs.load_preset(notebook, preset)
    steps = values["batch_size"] * values["n_ctx"]
    small = dict(model=str(model), dataset=str(corpus), n_tokens=3 * steps, warmup=1,
                 eval_tokens=2 * values["n_ctx"], alive_tokens=2 * values["n_ctx"])  # fmt: skip
    if "density_tokens" in values:
        small["density_tokens"] = 2 * values["n_ctx"]
    out = runs.run_notebook(notebook, small, preset=preset, run_id="recipe",
                            out_root=tmp_path / "outputs")  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["status"] == "completed" and cfg["preset"] == preset
    kept = {k: v for k, v in values.items() if k not in small}  # the preset's own settings ran
    assert {k: cfg["parameters"][k] for k in kept} == kept
    saes = sorted(out.glob("**/saes/*/cfg.json"))
    assert saes, "no SAE saved"
    for path in saes:
        sae = json.loads(path.read_text())
        assert (
            sae["hook_name"]
            == f"blocks.{values['site'].split('.')[1]}.hook_" + values["site"].split(".")[0]
        )
        assert sae["d_sae"] == int(values["dict_ratio"] * 16)
