"""The frozen language model: loading it through nnsight, and naming the activation sites of it.

A site is where an SAE reads and, spliced in, writes activations (a transcoder reads one site and
writes another: `SAEConfig.input_site`): `resid_pre.L` (input of block L),
`resid_post.L` (output of block L), `attn_out.L` and `mlp_out.L` (what attention and the MLP of
block L add to the residual stream), `mlp_in.L` (what the MLP of block L reads: the residual after
its pre-MLP norm; a transcoder's input). TransformerLens names (`blocks.L.hook_resid_pre`) are
aliases; `mlp_in.L` is `blocks.L.ln2.hook_normalized`, as SAELens' transcoders name it (equal
in TransformerLens only when the model is loaded with `fold_ln=False`).

Each supported architecture family is described by an `Arch`: where its blocks live and which
submodule of a block produces the attention and MLP contributions. `get_site` / `set_site` read
and write a site inside `with lm.trace(ids):`; `site_path` gives the same site as a dotted module
path for plain torch hooks.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from nnsight import LanguageModel, NNsightDeprecationWarning
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

SITE_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_in", "mlp_out")
# execution order within a block (`sort_sites`); nnsight reads sites only in this order
SITE_ORDER = {"resid_pre": 0, "attn_out": 1, "mlp_in": 2, "mlp_out": 3, "resid_post": 4}


# --- loading -------------------------------------------------------------------------------------


def _resolve_source(name_or_path: str) -> str:
    """Map `name_or_path` to what transformers loads: a local model directory or a hub id."""
    if name_or_path == "storyworld":
        from saelab.storyworld import MODEL_DIR  # the one place core resolves the embedded model

        path = MODEL_DIR
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"the storyworld model assets are missing (no config.json in {path}); "
                "notebook 00 (corpus and base model) trains the model and builds them"
            )
        return str(path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model path {name_or_path!r} exists but holds no config.json "
                "(expected a Hugging Face model directory saved with save_pretrained)"
            )
        return str(path)
    # A hub id is "name" or "org/name"; anything else that does not exist is a mistyped path.
    if path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"model path {name_or_path!r} does not exist")
    return name_or_path


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """`dtype` as a torch dtype (None and "auto", the checkpoint's own, give None); a clear
    error names the valid ones."""
    if dtype is None or dtype == "auto":
        return None
    if dtype in DTYPES.values():
        return dtype
    name = dtype.removeprefix("torch.") if isinstance(dtype, str) else None
    if name not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; valid: auto, {', '.join(DTYPES)} "
                         "(or torch.float32 / torch.float16 / torch.bfloat16)")  # fmt: skip
    return DTYPES[name]


def check_device(device: str | torch.device | None) -> str:
    """`device` as a string ("cpu", "cuda", "cuda:1", "mps"); refuses ones this machine lacks."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but this machine has no CUDA device; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but there are {torch.cuda.device_count()} "
                             "CUDA devices")  # fmt: skip
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available here; use 'cpu'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r} is not supported; use 'cpu', 'cuda' or 'mps'")
    return str(dev)


def missing_weights(path: str | Path) -> list[str]:
    """Parameters of the causal LM in `path` that its checkpoint files do not hold.

    transformers initialises those at random with only a log line (a directory holding a base
    model without its LM head loads a different random head every time). Tied weights (an LM
    head tied to the embedding) and buffers are not required; key prefixes are matched as
    transformers does (a base model saved without its `model.` / `transformer.` prefix).
    """

    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:  # .bin checkpoints: transformers' own loading is the only reader; skip
        return []
    stored: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            stored |= set(fh.keys())
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    prefix = getattr(skeleton, "base_model_prefix", "") + "."
    tied = set()
    if getattr(config, "tie_word_embeddings", False):
        tied |= {n for n, _ in skeleton.named_parameters() if n.startswith("lm_head")}
    index = path / "model.safetensors.index.json"
    if index.is_file():
        stored |= set(json.loads(index.read_text()).get("weight_map", {}))
    missing = []
    for name, _ in skeleton.named_parameters():
        if name in tied or name in stored or name.removeprefix(prefix) in stored:
            continue
        if prefix + name in stored:
            continue
        missing.append(name)
    if missing:  # a renamed key (GPT-NeoX's embed_out is lm_head) is not missing: ask transformers
        _, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
        missing = sorted(info["missing_keys"])
    return missing


def load_model(
    name_or_path: str, device: str | None = None, dtype: torch.dtype | str | None = None
) -> LanguageModel:
    """Load a frozen causal LM ("storyworld", a hub id such as "gpt2", or a local HF directory).

    `device` defaults to cuda when available, else cpu; `dtype` (float32, float16, bfloat16)
    to the checkpoint's own (None or "auto"). Both are checked before anything loads. A local
    directory whose weights leave any parameter uninitialised (e.g. a base model without its LM
    head) is refused, naming the missing parameters. SAEs trained on a float16/bfloat16 model
    stay float32: they read the model's activations cast to float32 and write back in the
    model's dtype.
    """
    dtype = check_dtype(dtype)
    device = check_device(device)
    source = _resolve_source(name_or_path)
    if Path(source).is_dir():
        missing = missing_weights(source)
        if missing:
            shown = ", ".join(missing[:8]) + (
                f", ... ({len(missing)} in all)" if len(missing) > 8 else ""
            )
            raise ValueError(
                f"model {name_or_path!r}: its weights leave parameters uninitialised ({shown}); "
                "transformers would fill them at random. Save the full causal LM "
                "(AutoModelForCausalLM ... save_pretrained), not the base model"
            )
    kwargs: dict[str, Any] = {"device": device} | ({"dtype": dtype} if dtype is not None else {})
    try:
        with warnings.catch_warnings():
            # nnsight 0.8 deprecates the LanguageModel name in favour of TransformersModel
            # (its base class); the behaviour is identical and the name is our documented type.
            warnings.simplefilter("ignore", NNsightDeprecationWarning)
            lm = LanguageModel(source, dispatch=True, **kwargs)  # dispatch: real weights now
    except OSError as e:
        where = "locally or on the Hugging Face hub" if source == name_or_path else "on disk"
        raise FileNotFoundError(f"model {name_or_path!r} could not be loaded {where}: {e}") from e
    tok = lm.tokenizer
    # transformers 5 silently builds an empty tokenizer for a directory that has none
    if tok is None or tok.vocab_size == 0:
        raise ValueError(
            f"model {name_or_path!r} has no tokenizer files; save one next to the weights "
            "with tokenizer.save_pretrained(dir)"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lm.eval()
    lm.requires_grad_(False)  # frozen: only SAEs train, and no grads pile up on the weights
    # provenance other tools can resolve: the name it was loaded by ("storyworld", "gpt2"),
    # with the local directory kept apart (SAEs record both; ARCHITECTURE.md §6)
    lm.config.saelab_model_name = name_or_path
    lm.config.saelab_model_path = source if Path(source).exists() else ""
    return lm


def model_name(lm: Any) -> tuple[str, str]:
    """(the name `lm` was loaded by, its local directory or "") for provenance."""
    cfg = lm.config
    name = getattr(cfg, "saelab_model_name", None)
    if name is None:  # loaded some other way: transformers' own record
        path = getattr(cfg, "_name_or_path", "") or cfg.model_type
        return path, path if Path(path).exists() else ""
    return name, getattr(cfg, "saelab_model_path", "")


FINGERPRINT_SAMPLE = 4096  # elements hashed per parameter


def model_fingerprint(lm: Any) -> str:
    """A cheap fingerprint of `lm`'s weights: sha256 over every parameter's name, shape, dtype
    and an evenly strided sample of FINGERPRINT_SAMPLE of its values (all of a small one). Two
    loads of the same weights agree; weights edited in place (`save_pretrained` into the same
    directory) almost surely differ. Caches and checkpoints record it (ARCHITECTURE.md §6)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(lm._module.named_parameters()):
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // FINGERPRINT_SAMPLE)
            sample = flat[::step][:FINGERPRINT_SAMPLE].cpu().contiguous()
            h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
            h.update(sample.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def model_info(lm: Any) -> dict[str, Any]:
    """Shape facts of a loaded model: family, model_type, n_layers, d_model, n_ctx, d_vocab."""
    cfg = lm.config
    return {
        "family": get_arch(lm).family,
        "model_type": cfg.model_type,
        "n_layers": len(block_list(lm)),
        "d_model": cfg.hidden_size,
        "n_ctx": cfg.max_position_embeddings,
        "d_vocab": cfg.vocab_size,
    }


def check_rows_fit(n_ctx: int, limit: int | None) -> None:
    """Refuse rows of `n_ctx` tokens longer than the model's `limit` positions (`model_info`'s
    n_ctx): the model would index past its position embeddings, an IndexError deep inside."""
    if limit is not None and n_ctx > limit:
        raise ValueError(f"rows of n_ctx={n_ctx} tokens are longer than the model's context "
                         f"({limit} positions); build the data with n_ctx <= {limit}")  # fmt: skip


# --- architectures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    """Where one architecture family keeps its blocks and residual-stream contributions."""

    family: str
    blocks: str  # dotted path of the ModuleList of blocks
    attn: str  # block submodule whose output (element 0 if a tuple) is added to the residual
    mlp: str  # likewise for the MLP
    final_norm: str
    block_tuple: bool = False  # the block returns (hidden, attn_weights), not a tensor
    mlp_module: str = "mlp"  # the MLP itself: its input (after the pre-MLP norm) is mlp_in


_LLAMA = Arch("llama", "model.layers", "self_attn", "mlp", "model.norm")
# Gemma 2/3 normalise each branch before adding it, so the contribution is the post-norm's output
# (TransformerLens' hook_attn_out sits there too).
_GEMMA2 = Arch(
    "gemma2", "model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "model.norm"
)
ARCHS: dict[str, Arch] = {
    "gpt2": Arch("gpt2", "transformer.h", "attn", "mlp", "transformer.ln_f"),
    # transformers 5 GPTNeoBlock still returns (hidden, attn_weights); the others a tensor.
    "gpt_neo": Arch("gpt_neo", "transformer.h", "attn", "mlp", "transformer.ln_f", True),
    # Pythia's parallel residual adds attn and mlp to the same block input; both still sum
    # with resid_pre to resid_post, so the sites keep their meaning.
    "gpt_neox": Arch(
        "gpt_neox", "gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm"
    ),
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma"), _LLAMA),
    **dict.fromkeys(("gemma2", "gemma3_text"), _GEMMA2),
}


def get_arch(lm: Any) -> Arch:
    """The `Arch` of an nnsight model or a plain HF model, from `config.model_type`."""
    model_type = lm.config.model_type
    if model_type not in ARCHS:
        raise ValueError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(ARCHS))}"
        )
    return ARCHS[model_type]


def get_module(root: Any, path: str) -> Any:
    """Follow a dotted attribute path (works on nnsight envoys and torch modules alike)."""
    for part in path.split("."):
        root = getattr(root, part)
    return root


def block_list(lm: Any) -> Any:
    """The blocks in order: an envoy list (nnsight model) or an nn.ModuleList (plain model)."""
    return get_module(lm, get_arch(lm).blocks)


# --- sites ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """An activation site, e.g. Site("resid_pre", 3) == parse_site("resid_pre.3")."""

    kind: str
    layer: int

    def __post_init__(self):
        if self.kind not in SITE_KINDS or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"bad site {self.kind!r}, layer {self.layer!r}; {_valid_msg(None)}")

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}"

    @property
    def hook_name(self) -> str:
        """The TransformerLens hook name, e.g. "blocks.3.hook_resid_pre"; for `mlp_in`
        "blocks.3.ln2.hook_normalized", the name SAELens' transcoders give the MLP's input. In
        TransformerLens it holds that input only with `fold_ln=False`: by default the norm's
        weights are folded into W_in and the hook holds the normalised residual before them
        (TL's own `hook_mlp_in` is before the norm)."""
        if self.kind == "mlp_in":
            return f"blocks.{self.layer}.ln2.hook_normalized"
        return f"blocks.{self.layer}.hook_{self.kind}"


_KINDS_RE = "|".join(SITE_KINDS)
_SITE_RE = re.compile(rf"(?P<kind>{_KINDS_RE})\.(?P<layer>\d+)")
_TL_KINDS = "|".join(k for k in SITE_KINDS if k != "mlp_in")  # TL's hook_mlp_in is pre-norm
_TL_RE = re.compile(rf"blocks\.(?P<layer>\d+)\.hook_(?P<kind>{_TL_KINDS})")
_TL_MLP_IN_RE = re.compile(r"blocks\.(?P<layer>\d+)\.ln2\.hook_normalized")


def valid_sites(model_or_n_layers) -> list[str]:
    """Every site name of a loaded model (or of an `n_layers` model), e.g. ["resid_pre.0", ...]."""
    n_layers = model_or_n_layers
    if not isinstance(n_layers, int) or isinstance(n_layers, bool):
        n_layers = len(block_list(model_or_n_layers))
    return [f"{kind}.{layer}" for kind in SITE_KINDS for layer in range(n_layers)]


def sort_sites(sites: list[str | Site]) -> list[Site]:
    """Sites in execution order (by layer: resid_pre, attn_out, mlp_in, mlp_out, resid_post)."""
    return sorted(map(parse_site, sites), key=lambda s: (s.layer, SITE_ORDER[s.kind]))


def _valid_msg(n_layers: int | None) -> str:
    if n_layers is None:
        sites = ", ".join(f"{kind}.L" for kind in SITE_KINDS)
    else:
        last = "" if n_layers == 1 else f"..{n_layers - 1}"
        sites = ", ".join(f"{kind}.0{last}" for kind in SITE_KINDS)
    return (
        f"valid sites: {sites} (TransformerLens aliases such as blocks.0.hook_resid_pre "
        "too; mlp_in.L is blocks.L.ln2.hook_normalized)"
    )


def parse_site(site: str | Site, n_layers: int | None = None) -> Site:
    """Parse "resid_pre.3" or "blocks.3.hook_resid_pre" into a Site, checking the layer range."""
    if not isinstance(site, Site):
        name = str(site)
        tl_in = _TL_MLP_IN_RE.fullmatch(name)
        match = _SITE_RE.fullmatch(name) or _TL_RE.fullmatch(name) or tl_in
        if match is None:
            raise ValueError(f"unknown site {site!r}; {_valid_msg(n_layers)}")
        site = Site("mlp_in" if tl_in else match["kind"], int(match["layer"]))
    if n_layers is not None and site.layer >= n_layers:
        raise ValueError(
            f"site {str(site)!r} is past the last layer of a {n_layers}-layer model; "
            f"{_valid_msg(n_layers)}"
        )
    return site


def site_path(lm: Any, site: str | Site) -> tuple[str, str]:
    """(dotted module path, "input" | "output") of `site`, e.g. ("transformer.h.3", "input").

    "input" is the module's first positional argument; "output" is its output, or element 0
    when the module returns a tuple. Resolve the path with `model.get_submodule(path)`.
    """
    arch = get_arch(lm)
    site = parse_site(site, len(block_list(lm)))
    block = f"{arch.blocks}.{site.layer}"
    return {
        "resid_pre": (block, "input"),
        "resid_post": (block, "output"),
        "attn_out": (f"{block}.{arch.attn}", "output"),
        "mlp_in": (f"{block}.{arch.mlp_module}", "input"),
        "mlp_out": (f"{block}.{arch.mlp}", "output"),
    }[site.kind]


def get_site(lm: LanguageModel, site: str | Site) -> torch.Tensor:
    """Inside `lm.trace(...)`: the activation at `site`, [batch, pos, d_model].

    Read several sites in execution order (`sort_sites`); nnsight raises OutOfOrderError otherwise.
    """
    path, side = site_path(lm, site)
    value = getattr(lm.get(path), side)
    return value[0] if isinstance(value, tuple) else value


def set_site(lm: LanguageModel, site: str | Site, value: torch.Tensor) -> None:
    """Inside `lm.trace(...)`: replace the activation at `site` by `value` [batch, pos, d_model]."""
    path, side = site_path(lm, site)
    module = lm.get(path)
    if side == "input":
        module.input = value  # nnsight repacks it as the first positional argument
        return
    out = module.output
    # Tuple outputs (attention, GPT-Neo blocks) keep their other elements (attn weights, ...).
    module.output = (value, *out[1:]) if isinstance(out, tuple) else value


def skip_block(lm: LanguageModel, layer: int, resid: torch.Tensor) -> None:
    """Inside `lm.trace(...)`: skip block `layer`, using `resid` [batch, pos, d_model] as output."""
    # A GPT-Neo block's output is a tuple; a bare tensor there would be read as `output[0]`,
    # i.e. silently as batch row 0.
    block_list(lm)[layer].skip((resid, None) if get_arch(lm).block_tuple else resid)
