"""saelab.core.models on tiny random models of every family, saved to disk and loaded back.

References are a separately loaded plain transformers model: `output_hidden_states` and torch
hooks at the module paths each family is known to use.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import huggingface_hub.constants
import pytest
import torch
import transformers as tf
from nnsight import LanguageModel
from tokenizers import Tokenizer, models, pre_tokenizers

import saelab.storyworld
from saelab.core.models import (
    SITE_KINDS,
    Site,
    block_list,
    get_arch,
    get_site,
    load_model,
    model_info,
    parse_site,
    set_site,
    site_path,
    skip_block,
    sort_sites,
    valid_sites,
)

V, D, N_CTX, N_LAYERS = 100, 32, 64, 2
_LLAMA_KW = dict(
    num_hidden_layers=N_LAYERS,
    hidden_size=D,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=V,
    max_position_embeddings=N_CTX,
    initializer_range=0.2,  # big enough weights that every site visibly moves the logits
)
# family -> (config factory, blocks path, attn submodule, mlp submodule)
FAMILIES = {
    "gpt2": (
        lambda: tf.GPT2Config(
            n_layer=N_LAYERS, n_embd=D, n_head=4, n_positions=N_CTX, vocab_size=V,
            bos_token_id=0, eos_token_id=0, initializer_range=0.2,
        ),
        "transformer.h", "attn", "mlp",
    ),
    "gpt_neo": (
        lambda: tf.GPTNeoConfig(
            num_layers=N_LAYERS, hidden_size=D, num_heads=4, intermediate_size=64, vocab_size=V,
            max_position_embeddings=N_CTX, attention_types=[[["global", "local"], 1]],
            window_size=4, bos_token_id=0, eos_token_id=0, initializer_range=0.2,
        ),
        "transformer.h", "attn", "mlp",
    ),
    "gpt_neox": (  # Pythia-style parallel residual
        lambda: tf.GPTNeoXConfig(
            num_hidden_layers=N_LAYERS, hidden_size=D, num_attention_heads=4, intermediate_size=64,
            vocab_size=V, max_position_embeddings=N_CTX, use_parallel_residual=True,
            bos_token_id=0, eos_token_id=0, initializer_range=0.2,
        ),
        "gpt_neox.layers", "attention", "mlp",
    ),
    "llama": (lambda: tf.LlamaConfig(**_LLAMA_KW), "model.layers", "self_attn", "mlp"),
    "qwen2": (lambda: tf.Qwen2Config(**_LLAMA_KW), "model.layers", "self_attn", "mlp"),
    "gemma": (lambda: tf.GemmaConfig(head_dim=8, **_LLAMA_KW), "model.layers", "self_attn", "mlp"),
    "gemma2": (
        lambda: tf.Gemma2Config(head_dim=8, **_LLAMA_KW),
        "model.layers", "post_attention_layernorm", "post_feedforward_layernorm",
    ),
}  # fmt: skip


def tiny_tokenizer() -> tf.PreTrainedTokenizerFast:
    """A word-level tokenizer over "w1".."w99" with eos id 0 and no pad token."""
    vocab = {"<|endoftext|>": 0} | {f"w{i}": i for i in range(1, V)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


class Fam(NamedTuple):
    name: str
    path: Path
    lm: LanguageModel  # loaded by saelab
    hf: torch.nn.Module  # the same checkpoint, loaded by plain transformers


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def fam(request, tmp_path_factory) -> Fam:
    name = request.param
    path = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(FAMILIES[name][0]()).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    lm = load_model(str(path), device="cpu")
    hf = tf.AutoModelForCausalLM.from_pretrained(path).eval()
    return Fam(name, path, lm, hf)


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(1, V, (2, 8), generator=torch.Generator().manual_seed(0))


def expected_path(name: str, site: Site) -> tuple[str, str]:
    _, blocks, attn, mlp = FAMILIES[name]
    block = f"{blocks}.{site.layer}"
    return {
        "resid_pre": (block, "input"),
        "resid_post": (block, "output"),
        "attn_out": (f"{block}.{attn}", "output"),
        "mlp_in": (f"{block}.mlp", "input"),
        "mlp_out": (f"{block}.{mlp}", "output"),
    }[site.kind]


def plain_forward(fam: Fam, ids, patch: tuple[Site, torch.Tensor] | None = None):
    """Plain HF forward -> (logits, hidden_states, {site: activation}); `patch` swaps a site."""
    acts, handles = {}, []
    for name in valid_sites(N_LAYERS):
        site = parse_site(name)
        path, side = expected_path(fam.name, site)
        module = fam.hf.get_submodule(path)
        new = patch[1] if patch and patch[0] == site else None
        if side == "input":

            def pre(mod, args, kwargs, name=name, new=new):
                acts[name] = args[0]
                return None if new is None else ((new, *args[1:]), kwargs)

            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        else:

            def post(mod, args, out, name=name, new=new):
                acts[name] = out[0] if isinstance(out, tuple) else out
                if new is not None:
                    return (new, *out[1:]) if isinstance(out, tuple) else new

            handles.append(module.register_forward_hook(post))
    try:
        with torch.no_grad():
            out = fam.hf(ids, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out.logits, out.hidden_states, acts


def trace_sites(lm, ids) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every site and the logits, read through saelab inside one nnsight trace."""
    acts = {}
    with lm.trace(ids):
        for site in sort_sites(valid_sites(N_LAYERS)):
            acts[str(site)] = get_site(lm, site).save()
        logits = lm.output.logits.save()
    return acts, logits


# --- loading -------------------------------------------------------------------------------------


def test_load_model_is_frozen_and_padded(fam):
    assert isinstance(fam.lm, LanguageModel)
    assert not any(p.requires_grad for p in fam.lm.parameters())
    assert not fam.lm.training
    assert fam.lm.tokenizer.pad_token == fam.lm.tokenizer.eos_token == "<|endoftext|>"
    # weights are real (dispatched) and equal to the checkpoint's
    for (name, p), q in zip(fam.lm.named_parameters(), fam.hf.parameters(), strict=True):
        assert p.device.type == "cpu" and torch.equal(p, q), name


def test_model_info(fam):
    info = model_info(fam.lm)
    assert info["model_type"] == fam.name
    assert info["family"] == {"qwen2": "llama", "gemma": "llama"}.get(fam.name, fam.name)
    assert (info["n_layers"], info["d_model"], info["n_ctx"], info["d_vocab"]) == (2, D, N_CTX, V)


def test_load_model_dtype(tmp_path):
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(FAMILIES["gpt2"][0]()).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in lm.parameters()} == {torch.bfloat16}


def test_load_model_missing_path(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="no_such_model.*does not exist"):
        load_model(missing)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path))  # exists, but is not a model directory


def test_load_model_without_tokenizer(tmp_path):
    tf.AutoModelForCausalLM.from_config(FAMILIES["gpt2"][0]()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_model(str(tmp_path), device="cpu")


def test_load_model_unknown_hub_id(monkeypatch):
    # Offline mode makes huggingface_hub fail before any request, as on a machine with no network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="'no-such-org/no-such-model'.*locally or on the"):
        load_model("no-such-org/no-such-model")


def test_load_model_storyworld_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(saelab.storyworld, "MODEL_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="storyworld.*missing.*notebook 00"):
        load_model("storyworld")


# --- sites ---------------------------------------------------------------------------------------


def test_parse_site_names_and_aliases():
    site = Site("resid_pre", 3)
    assert str(site) == "resid_pre.3" and site.hook_name == "blocks.3.hook_resid_pre"
    for kind in SITE_KINDS:
        s = Site(kind, 5)
        assert parse_site(str(s)) == parse_site(s.hook_name) == parse_site(s, 6) == s
    assert parse_site("blocks.0.hook_mlp_out") == Site("mlp_out", 0)
    assert parse_site("blocks.2.hook_attn_out").hook_name == "blocks.2.hook_attn_out"
    assert parse_site("resid_post.11", n_layers=12) == Site("resid_post", 11)
    assert valid_sites(2) == [
        "resid_pre.0", "resid_pre.1", "resid_post.0", "resid_post.1",
        "attn_out.0", "attn_out.1", "mlp_in.0", "mlp_in.1", "mlp_out.0", "mlp_out.1",
    ]  # fmt: skip
    # the MLP's input after its norm: SAELens' transcoders name it ln2.hook_normalized; TL's own
    # hook_mlp_in is before the norm, so it is not an alias
    assert parse_site("blocks.4.ln2.hook_normalized") == Site("mlp_in", 4)
    assert Site("mlp_in", 4).hook_name == "blocks.4.ln2.hook_normalized"
    with pytest.raises(ValueError, match="unknown site"):
        parse_site("blocks.4.hook_mlp_in")


@pytest.mark.parametrize(
    "bad", ["resid.3", "resid_pre", "resid_pre.x", "resid_pre.-1", "blocks.3.hook_resid_mid", ""]
)
def test_parse_site_bad_name_lists_valid_sites(bad):
    with pytest.raises(ValueError) as err:
        parse_site(bad, n_layers=6)
    msg = str(err.value)
    assert repr(bad) in msg
    for listed in ["resid_pre.0..5", "resid_post.0..5", "attn_out.0..5", "mlp_in.0..5",
                   "mlp_out.0..5"]:  # fmt: skip
        assert listed in msg
    assert "blocks.0.hook_resid_pre" in msg  # says TL aliases are accepted


def test_parse_site_bad_layer():
    for bad in ["resid_pre.6", "blocks.6.hook_resid_post", Site("mlp_out", 6)]:
        with pytest.raises(ValueError, match=r"6-layer model.*resid_pre\.0\.\.5"):
            parse_site(bad, n_layers=6)
    with pytest.raises(ValueError, match="valid sites"):
        Site("resid_mid", 0)
    with pytest.raises(ValueError, match="valid sites"):
        Site("resid_pre", -1)


def test_sort_sites():
    sites = ["resid_post.1", "blocks.0.hook_mlp_out", "attn_out.1", "resid_pre.1", "resid_pre.0",
             "mlp_in.0"]  # fmt: skip
    assert [str(s) for s in sort_sites(sites)] == [
        "resid_pre.0",
        "mlp_in.0",
        "mlp_out.0",
        "resid_pre.1",
        "attn_out.1",
        "resid_post.1",
    ]


def test_unsupported_model_type():
    model = SimpleNamespace(config=SimpleNamespace(model_type="opt"))
    for fn in (get_arch, block_list, lambda m: site_path(m, "resid_pre.0")):
        with pytest.raises(ValueError, match="unsupported model_type 'opt'.*gpt2.*gpt_neox.*llama"):
            fn(model)


def test_site_path(fam):
    for name in valid_sites(N_LAYERS):
        site = parse_site(name)
        assert site_path(fam.lm, name) == site_path(fam.hf, site.hook_name)
        assert site_path(fam.lm, site) == expected_path(fam.name, site)
    assert len(block_list(fam.lm)) == len(block_list(fam.hf)) == N_LAYERS
    with pytest.raises(ValueError, match=r"resid_pre\.0\.\.1"):
        site_path(fam.lm, "resid_pre.2")


def test_get_site_matches_plain_forward(fam, ids):
    acts, logits = trace_sites(fam.lm, ids)
    ref_logits, hidden, ref = plain_forward(fam, ids)
    torch.testing.assert_close(logits, ref_logits)
    for name in valid_sites(N_LAYERS):
        assert acts[name].shape == (*ids.shape, D), name
        torch.testing.assert_close(acts[name], ref[name], msg=name)
    for layer in range(N_LAYERS):
        torch.testing.assert_close(acts[f"resid_pre.{layer}"], hidden[layer])
        if layer < N_LAYERS - 1:
            torch.testing.assert_close(acts[f"resid_post.{layer}"], hidden[layer + 1])
    # HF's last hidden state is the final norm applied to the last block's output
    final_norm = fam.hf.get_submodule(get_arch(fam.hf).final_norm)
    torch.testing.assert_close(final_norm(acts[f"resid_post.{N_LAYERS - 1}"]), hidden[-1])


def test_residual_decomposition(fam, ids):
    # attn_out and mlp_out are exactly what the block adds to the residual stream
    acts, _ = trace_sites(fam.lm, ids)
    for L in range(N_LAYERS):
        total = acts[f"resid_pre.{L}"] + acts[f"attn_out.{L}"] + acts[f"mlp_out.{L}"]
        torch.testing.assert_close(acts[f"resid_post.{L}"], total, atol=1e-5, rtol=1e-5)


# the norm in front of each family's MLP, and whether the MLP reads the block's input (parallel
# residual) rather than the residual after attention
PRE_MLP_NORM = {"gpt2": ("ln_2", False), "gpt_neo": ("ln_2", False),
                "gpt_neox": ("post_attention_layernorm", True),
                "gemma2": ("pre_feedforward_layernorm", False)}  # fmt: skip


def test_mlp_in_is_the_residual_after_the_pre_mlp_norm(fam, ids):
    """A transcoder's input, computed from the residual stream and the norm's own module."""
    acts, _ = trace_sites(fam.lm, ids)
    norm_name, parallel = PRE_MLP_NORM.get(fam.name, ("post_attention_layernorm", False))
    blocks = block_list(fam.hf)
    for L in range(N_LAYERS):
        resid = acts[f"resid_pre.{L}"]
        if not parallel:
            # gemma2's attn_out is already post-normed and added as it is
            resid = resid + acts[f"attn_out.{L}"]
        with torch.no_grad():
            expected = getattr(blocks[L], norm_name)(resid)
        torch.testing.assert_close(acts[f"mlp_in.{L}"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "name",
    [
        "resid_pre.0",
        "resid_pre.1",
        "resid_post.0",
        "attn_out.1",
        "mlp_in.1",
        "mlp_out.0",
        "mlp_out.1",
    ],
)
def test_set_site_matches_torch_hook(fam, ids, name):
    site = parse_site(name)
    for value in (torch.zeros(*ids.shape, D), torch.randn(*ids.shape, D)):
        with fam.lm.trace(ids):
            set_site(fam.lm, site, value)
            logits = fam.lm.output.logits.save()
        ref_logits, _, _ = plain_forward(fam, ids, patch=(site, value))
        clean_logits, _, _ = plain_forward(fam, ids)
        torch.testing.assert_close(logits, ref_logits)
        assert not torch.allclose(logits, clean_logits, atol=1e-3)


def test_skip_block(fam, ids):
    clean, clean_logits = trace_sites(fam.lm, ids)
    with fam.lm.trace(ids):
        skip_block(fam.lm, 0, clean["resid_post.0"])
        logits = fam.lm.output.logits.save()
    torch.testing.assert_close(logits, clean_logits)
    # a different residual gives exactly what writing it at resid_post.0 gives
    resid = torch.randn(*ids.shape, D)
    with fam.lm.trace(ids):
        skip_block(fam.lm, 0, resid)
        skipped = fam.lm.output.logits.save()
    with fam.lm.trace(ids):
        set_site(fam.lm, "resid_post.0", resid)
        patched = fam.lm.output.logits.save()
    torch.testing.assert_close(skipped, patched)
    assert not torch.allclose(skipped, clean_logits, atol=1e-3)
