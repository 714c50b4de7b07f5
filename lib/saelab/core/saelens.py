"""SAELens interoperability: export saelab SAEs in SAELens' v6 layout, read SAELens folders.

SAELens v6 on disk: `cfg.json` (`architecture`, `d_in`, `d_sae`, `dtype`, `device`,
`apply_b_dec_to_input`, `normalize_activations`, `reshape_activations`, `metadata`, and per
architecture `k` for topk) and `sae_weights.safetensors` (`W_enc [d_in, d_sae]`, `W_dec [d_sae,
d_in]`, `b_enc`, `b_dec`, and `threshold [d_sae]` for jumprelu). Its forward pass:
`z = (x - b_dec * apply_b_dec_to_input) W_enc + b_enc`, `c = act(z)`, `x_hat = c W_dec + b_dec`.

Each architecture declares its own mapping (`SAE.to_saelens`, `saelens_reads`,
`saelens_fields` in its file); this module holds what they share. Today's mappings:

| saelab | SAELens | folding |
|---|---|---|
| relu | standard | decoder rows normalised (saelab normalises inside forward) |
| topk | topk | - |
| jumprelu | jumprelu | - |
| batchtopk | jumprelu | its global inference threshold, one value per latent |
| gtopk | topk, with `allow_gtopk=True` | the TopK it reduces to without dL/dx (flagged) |

Read back: standard -> relu, topk -> topk, jumprelu -> jumprelu, batchtopk (a SAELens training
folder) -> batchtopk.

An activation scale `s` (`normalize_activations`) is folded in so that the export works on raw
activations with unit-norm decoder rows: the latents become `c / s` (ReLU, TopK and JumpReLU are
positively homogeneous), `b_enc -> b_enc / s`, `b_dec -> b_dec / s`, thresholds `/ s`. The
export's `decode(encode(x))` equals saelab's forward; its `encode(x)` equals saelab's `/ s`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saelab.core.files import export_folder
from saelab.core.models import parse_site
from saelab.core.sae import SAE, SAEConfig, architecture, architectures, library_version, load_sae

WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"


@dataclass(frozen=True)
class SAELensForm:
    """An SAE as SAELens v6 writes it: SAELens' architecture name, raw-unit weights (name ->
    tensor), extra `cfg.json` fields and extra metadata (`SAE.to_saelens`, `raw_weights`)."""

    architecture: str
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    cfg: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def reader(arch: str, where: str = "SAELens SAE") -> tuple[str, type[SAE]]:
    """The saelab architecture `(name, class)` that reads SAELens architecture `arch`: the one
    whose class itself declares it in `saelens_reads`."""
    readers: dict[str, tuple[str, type[SAE]]] = {}
    for name in architectures():
        cls = architecture(name)
        for sl_name in cls.__dict__.get("saelens_reads", ()):
            if sl_name in readers:
                raise ValueError(f"SAELens architecture {sl_name!r} is read by both "
                                 f"{readers[sl_name][0]!r} and {name!r}")  # fmt: skip
            readers[sl_name] = (name, cls)
    if arch not in readers:
        raise ValueError(f"{where}: architecture={arch!r} is not supported; saelab reads "
                         f"{sorted(readers)}")  # fmt: skip
    return readers[arch]


def _sae_lens_version() -> str:
    try:
        return version("sae-lens")
    except Exception:  # not installed: the layout is v6's
        return "6.0.0"


def raw_weights(sae: SAE, allow_gtopk: bool = False) -> SAELensForm:
    """`sae` in SAELens' form: raw-unit weights with unit-norm decoder rows (`W_enc [d_in,
    d_sae]`, `W_dec [d_sae, d_in]`, `b_enc [d_sae]`, `b_dec [d_in]` and the architecture's own,
    `SAE.to_saelens`), the activation scale folded in (module docstring)."""
    s = float(sae.act_scale)
    with torch.no_grad():
        form = sae.to_saelens(s, allow_reduced=allow_gtopk)
        w = dict(
            W_enc=sae.W_enc.detach().float().clone(),
            W_dec=sae.decoder_directions().detach().float().clone(),
            b_enc=sae.b_enc.detach().float() / s,
            b_dec=sae.b_dec.detach().float() / s,
        )
        w |= form.weights
    return SAELensForm(form.architecture, {k: v.contiguous() for k, v in w.items()}, form.cfg,
                       form.metadata)  # fmt: skip


def export_saelens(
    sae_or_run,
    path: str | os.PathLike,
    allow_gtopk: bool = False,
    model_name: str | None = None,
    context_size: int | None = None,
    prepend_bos: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `sae_or_run` (an SAE, or a single-site `Run`) as a SAELens v6 folder at `path`.

    `sae_lens.SAE.load_from_disk(path)` loads it with no warning. `model_name` (default: the
    SAE's), `context_size` and `prepend_bos` (default: the training data's, when known) go into
    the metadata. Written to a temporary folder renamed into place when complete, so a killed
    export leaves no half folder. `path` must be new or empty; `overwrite=True` replaces an
    earlier SAELens export there. A folder holding anything else (a saelab SAE, a run, other
    files) is never written into.
    """
    sae = sae_or_run.sae if hasattr(sae_or_run, "saes") else sae_or_run
    form = raw_weights(sae, allow_gtopk)
    data = (getattr(sae, "extra", None) or {}).get("data") or {}
    cfg = sae.cfg
    meta = dict(
        sae_lens_version=_sae_lens_version(),
        sae_lens_training_version=None,
        model_name=model_name or cfg.model_name,
        hook_name=cfg.hook_name,
        hook_head_index=None,
        context_size=context_size if context_size is not None else data.get("n_ctx"),
        prepend_bos=prepend_bos if prepend_bos is not None else data.get("prepend_bos"),
        dataset_path=data.get("source"),
        # TransformerLens' ln2.hook_normalized is the MLP's input only without fold_ln (models.py)
        model_from_pretrained_kwargs={"fold_ln": False} if _reads_mlp_in(cfg.site) else {},
        exclude_special_tokens=data.get("excluded_tokens") or None,  # saelab left them out
        saelab_version=library_version(),
        saelab_architecture=cfg.architecture,
        saelab_site=cfg.site,
        **form.metadata,
    )
    out = dict(architecture=form.architecture, d_in=cfg.d_in, d_sae=cfg.d_sae, dtype="float32",
               device="cpu", apply_b_dec_to_input=cfg.pre_subtract_b_dec,
               normalize_activations="none", reshape_activations="none", metadata=meta,
               **form.cfg)  # fmt: skip

    def write(tmp: Path) -> None:
        save_file(form.weights, tmp / WEIGHTS)
        (tmp / CFG).write_text(json.dumps(out, indent=2) + "\n")

    return export_folder(path, overwrite, "SAELens", _is_export, write,
                         flag="overwrite=True (--overwrite)")  # fmt: skip


def _reads_mlp_in(site: str) -> bool:
    """Whether `site` (a name, or "" for an SAE that records none) is an `mlp_in` site."""
    try:
        return bool(site) and parse_site(site).kind == "mlp_in"
    except ValueError:
        return False


def _is_export(path: Path) -> bool:
    """A folder holding a SAELens export and nothing else."""
    return {p.name for p in path.iterdir()} <= {WEIGHTS, CFG} and is_saelens_folder(path)


def is_saelens_folder(path: Path) -> bool:
    """Whether `path` holds a SAELens-written SAE (its weights file, no saelab weights)."""
    return (path / WEIGHTS).is_file() and (path / CFG).is_file()


def load_saelens(path: str | os.PathLike) -> SAE:
    """A saelab SAE equal to the SAELens SAE in folder `path` (same encode and decode).

    The architecture that declares SAELens' in its `saelens_reads` reads it (module docstring:
    standard -> relu with decoder rows as stored, batchtopk's `topk_threshold` -> the inference
    threshold, ...); `apply_b_dec_to_input` -> `pre_subtract_b_dec`. Refuses what saelab cannot
    reproduce exactly: activation normalisation other than "none", hook_z reshaping, negative
    JumpReLU thresholds, architectures no saelab architecture reads. A TopK that rescales by
    decoder norms is folded into the encoder.
    """
    path = Path(path)
    for name in (CFG, WEIGHTS):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} is missing: a SAELens SAE folder holds {CFG} "
                                    f"and {WEIGHTS}")  # fmt: skip
    try:
        meta = json.loads((path / CFG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path / CFG} is not valid JSON ({e}): truncated or not a SAELens "
                         "config") from e  # fmt: skip
    if not isinstance(meta, dict):
        raise ValueError(f"{path / CFG} holds a {type(meta).__name__}, not a SAELens config")
    try:
        weights = {k: v.float() for k, v in load_file(path / WEIGHTS).items()}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise ValueError(f"{path / WEIGHTS} is not a readable safetensors file "
                         f"({type(e).__name__}: {e})") from e  # fmt: skip
    bad = sorted(k for k, v in weights.items() if not torch.isfinite(v).all())
    if bad:  # as saelab's own folders: a broken SAE would report NaN metrics without a word
        raise ValueError(f"SAELens weights {path / WEIGHTS} hold NaN or inf values in {bad}; "
                         "refusing to load a broken SAE")  # fmt: skip
    return from_saelens(meta, weights, f"SAELens SAE at {path}")


def from_saelens(meta: dict, w: dict[str, torch.Tensor], where: str = "SAELens SAE") -> SAE:
    """A saelab SAE from a SAELens config dict and its float weights (`load_saelens`' rules)."""
    try:
        return _from_saelens(meta, w, where)
    except KeyError as e:  # a field every SAELens config of this architecture carries
        arch = meta.get("architecture", "standard")
        raise ValueError(f"{where}: its config lacks {e.args[0]!r}, which SAELens writes for "
                         f"architecture {arch!r}") from None  # fmt: skip


def _from_saelens(meta: dict, w: dict[str, torch.Tensor], where: str) -> SAE:
    name, cls = reader(meta.get("architecture", "standard"), where)
    norm = meta.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise ValueError(f"{where}: normalize_activations={norm!r} cannot be honoured (SAELens "
                         "leaves the scale to the caller); only 'none' is read")  # fmt: skip
    if meta.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(f"{where}: reshape_activations={meta['reshape_activations']!r} "
                         "(hook_z SAEs) is not supported")  # fmt: skip
    w = dict(w, act_scale=torch.tensor(1.0))  # SAELens SAEs read raw activations (checked above)
    if meta.get("rescale_acts_by_decoder_norm"):
        # SAELens scales z by each decoder row's norm before selecting and divides it out after:
        # the same SAE as one with the norms folded into the encoder and unit decoder rows
        n = w["W_dec"].norm(dim=-1)
        w["W_enc"], w["b_enc"], w["W_dec"] = w["W_enc"] * n, w["b_enc"] * n, w["W_dec"] / n[:, None]
    md = meta.get("metadata") or {}
    kw: dict[str, Any] = dict(architecture=name, d_in=meta["d_in"], d_sae=meta["d_sae"],
                              pre_subtract_b_dec=bool(meta.get("apply_b_dec_to_input", False)),
                              normalize_activations="none", hook_name=md.get("hook_name") or "",
                              model_name=md.get("model_name") or "")  # fmt: skip
    kw |= cls.saelens_fields(meta, w, where)  # the architecture's own fields; may rewrite w
    with torch.random.fork_rng(devices=[]):
        sae = SAE.from_config(SAEConfig.create(**kw))
    missing = sorted(set(sae.state_dict()) - set(w))
    if missing:
        raise ValueError(f"{where}: {WEIGHTS} lacks {missing}")
    wrong = {k: (tuple(w[k].shape), tuple(v.shape)) for k, v in sae.state_dict().items()
             if w[k].shape != v.shape}  # fmt: skip
    if wrong:
        raise ValueError(f"{where}: tensor shapes (stored, expected from d_in={kw['d_in']}, "
                         f"d_sae={kw['d_sae']}) disagree: {wrong}")  # fmt: skip
    sae.load_state_dict({k: w[k] for k in sae.state_dict()}, strict=True)
    return sae.eval()


def load_pretrained(release: str, sae_id: str) -> SAE:
    """A SAELens pretrained release by name, through sae_lens' own registry (needs the hub)."""
    try:
        from sae_lens import SAE as SLSAE
    except ImportError as e:
        raise ImportError("loading a SAELens release needs sae_lens: pip install sae-lens") from e

    try:
        sl_sae = SLSAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as e:
        raise ValueError(f"could not load SAELens release {release!r} / {sae_id!r} (offline, or "
                         f"an unknown name?): {type(e).__name__}: {e}") from e  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        sl_sae.save_model(tmp)
        return load_saelens(tmp)


class SAEBenchSAE(torch.nn.Module):
    """An SAE in the shape SAEBench's custom-SAE evaluations expect.

    The export's raw-unit SAE (unit-norm decoder rows; `W_enc`, `W_dec`, `b_enc`, `b_dec`, and
    `threshold` for JumpReLU-like ones) with `encode(x) -> c`, `decode(c) -> x_hat`, `forward`,
    and a mutable `cfg` holding the fields SAEBench reads and sets (`d_in`, `d_sae`,
    `hook_layer`, `hook_name`, `model_name`, `context_size`, `prepend_bos`, `dtype`, `device`,
    `architecture`, `apply_b_dec_to_input`, `normalize_activations`).
    """

    def __init__(self, inner: SAE, cfg):
        super().__init__()
        self.inner, self.cfg = inner.requires_grad_(False), cfg
        self.dtype, self.device = torch.float32, torch.device("cpu")

    def __getattr__(self, name: str):
        if name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            return getattr(self.inner, name)
        return super().__getattr__(name)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents `[..., d_sae]` of raw activations `x [..., d_in]`."""
        return self.inner.encode(x.to(self.dtype))[0]

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        """Reconstruction `[..., d_in]` of latents `c [..., d_sae]`."""
        return self.inner.decode(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        self.dtype, self.device = self.inner.dtype, self.inner.device
        self.cfg.dtype, self.cfg.device = str(self.dtype).removeprefix("torch."), str(self.device)
        return out


def to_saebench(
    sae: SAE,
    lm_name: str,
    hook_layer: int | None = None,
    context_size: int = 128,
    prepend_bos: bool = True,
    allow_gtopk: bool = False,
) -> SAEBenchSAE:
    """Wrap `sae` for SAEBench: `lm_name` is the name TransformerLens loads the model by."""

    form = raw_weights(sae, allow_gtopk)
    site = parse_site(sae.cfg.site) if sae.cfg.site else None
    cfg = SimpleNamespace(
        d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, architecture=form.architecture, model_name=lm_name,
        hook_layer=hook_layer if hook_layer is not None else (site.layer if site else 0),
        hook_name=sae.cfg.hook_name, context_size=context_size, prepend_bos=prepend_bos,
        dtype="float32", device="cpu", apply_b_dec_to_input=sae.cfg.pre_subtract_b_dec,
        normalize_activations="none", dataset_trust_remote_code=False, seqpos_slice=(None,),
    )  # fmt: skip
    meta = dict(architecture=form.architecture, d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae,
                apply_b_dec_to_input=sae.cfg.pre_subtract_b_dec, **form.cfg)  # fmt: skip
    return SAEBenchSAE(from_saelens(meta, form.weights), cfg)


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m saelab.core.saelens export SRC DST [--allow-gtopk] [--model-name NAME]`."""

    ap = argparse.ArgumentParser(
        prog="python -m saelab.core.saelens", description=__doc__.split("\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write a saved saelab SAE as a SAELens folder")
    ex.add_argument("src", help="a saelab SAE folder (cfg.json + sae.safetensors)")
    ex.add_argument("dst", help="the SAELens folder to write")
    ex.add_argument("--allow-gtopk", action="store_true")
    ex.add_argument("--model-name", default=None, help="the name other tools load the model by")
    ex.add_argument("--overwrite", action="store_true", help="replace a SAELens folder at DST")
    a = ap.parse_args(argv)
    try:
        out = export_saelens(load_sae(a.src), a.dst, a.allow_gtopk, a.model_name,
                             overwrite=a.overwrite)  # fmt: skip
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
