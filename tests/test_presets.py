"""Every preset parses into its notebook's parameters; the gpt2 presets resolve on a GPT-2 layout.

The gpt2 presets cannot run here (no hub, no GPU), so we check what can go wrong before the run
starts: unknown parameter names, types, the site against a 12-layer GPT-2 saved to disk (random
weights, no download), n_ctx against its positions, and the TrainConfig the notebook will build.
"""

from pathlib import Path

import pytest
from configs import config

import saelab as sl
from saelab import runs
from saelab.storyworld import basemodel as bm
from saelab.storyworld import corpus as sw

PRESETS = sorted((runs.NOTEBOOKS / "params").glob("*.yaml"))
TRAIN_FIELDS = (
    set(sl.TrainConfig.__dataclass_fields__)
    | {f for a in sl.architectures() for f in sl.architecture(a).cfg_class.__dataclass_fields__}
    - {"architecture", "sae"}
    | {"kl_coeff", "ds_coeff"}
)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_names_and_types_match_the_notebook(path: Path):
    notebook, preset = path.name.split(".")[:2]
    declared = runs.notebook_parameters(notebook)
    values = runs.load_preset(notebook, preset)
    assert set(values) <= set(declared), f"unknown parameters {set(values) - set(declared)}"
    for name, value in values.items():
        want = declared[name]["inferred_type_name"]
        ok = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
              "list": (list,)}.get(want, (object,))  # fmt: skip
        assert isinstance(value, ok), f"{name}: {value!r} is not {want}"


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A randomly initialised GPT-2 small layout (12 layers, 1024 positions), tiny width."""
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("gpt2")
    tok = bm.train_tokenizer(sw.story_texts("train", 200), 300)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=16, n_layer=12, n_head=2)
    GPT2LMHeadModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("path", sorted((runs.NOTEBOOKS / "params").glob("*.gpt2.yaml")),
                         ids=lambda p: p.name)  # fmt: skip
def test_gpt2_preset_resolves_on_a_gpt2_layout(path: Path, gpt2_dir):
    notebook = path.name.split(".")[0]
    p = runs.load_preset(notebook, "gpt2")
    assert p["model"] == "gpt2"
    lm = sl.load_model(str(gpt2_dir))  # the same code path load_model("gpt2") takes
    info = sl.model_info(lm)
    site = sl.parse_site(p["site"], info["n_layers"])
    assert str(site) == "resid_pre.6" and p["n_ctx"] <= info["n_ctx"]
    fields = {k: v for k, v in p.items() if k in TRAIN_FIELDS}
    extra = {"ds_coeff": p.get("ds_coeff", 2.5)} if "03_" in notebook else {}
    loss = {"03_e2e_ds_sae": "e2e+ds", "02_e2e_sae": "e2e"}.get(notebook, "local")
    sae = "gtopk" if notebook.startswith("04") else "relu"
    cfg = config(sites=(p["site"],), loss=loss, sae=sae, **(extra | fields))
    sae_cfg = cfg.sae_config(p["site"], d_in=768, model_name="gpt2")
    assert sae_cfg.d_sae == int(p.get("dict_ratio", 8) * 768)
    assert sae_cfg.hook_name == "blocks.6.hook_resid_pre"
