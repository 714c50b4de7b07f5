"""SAELens interoperability: export saelab SAEs in SAELens' v6 layout, read SAELens folders.

SAELens v6 on disk: `cfg.json` (`architecture`, `d_in`, `d_sae`, `dtype`, `device`,
`apply_b_dec_to_input`, `normalize_activations`, `reshape_activations`, `metadata`, and per
architecture `k` for topk) and `sae_weights.safetensors` (`W_enc [d_in, d_sae]`, `W_dec [d_sae,
d_in]`, `b_enc`, `b_dec`, and `threshold [d_sae]` for jumprelu). Its forward pass:
`z = (x - b_dec * apply_b_dec_to_input) W_enc + b_enc`, `c = act(z)`, `x_hat = c W_dec + b_dec`.

| saelab | SAELens | folding |
|---|---|---|
| relu | standard | decoder rows normalised (saelab normalises inside forward) |
| topk | topk | - |
| jumprelu | jumprelu | - |
| batchtopk | jumprelu | its global inference threshold, one value per latent |
| gtopk | topk, with `allow_gtopk=True` | the TopK it reduces to without dL/dx (flagged) |

An activation scale `s` (`normalize_activations`) is folded in so that the export works on raw
activations with unit-norm decoder rows: the latents become `c / s` (ReLU, TopK and JumpReLU are
positively homogeneous), `b_enc -> b_enc / s`, `b_dec -> b_dec / s`, thresholds `/ s`. The
export's `decode(encode(x))` equals saelab's forward; its `encode(x)` equals saelab's `/ s`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from saelab.core.sae import SAE, SAEConfig

WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"
# what SAELens calls each saelab architecture on export
EXPORT_NAMES = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu",
                "batchtopk": "jumprelu", "gtopk": "topk"}  # fmt: skip


def _sae_lens_version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:  # not installed: the layout is v6's
        return "6.0.0"


def raw_weights(sae: SAE, allow_gtopk: bool = False) -> tuple[str, dict[str, torch.Tensor], dict]:
    """(SAELens architecture, raw-unit weights with unit-norm decoder rows, extra cfg fields)."""
    cfg = sae.cfg
    if cfg.architecture == "gtopk" and not allow_gtopk:
        raise ValueError(
            "a gtopk SAE selects its latents with dL/dx, which SAELens has no way to do; "
            "pass allow_gtopk=True to export the TopK it reduces to without the gradient "
            "(flagged in the metadata), knowing its outputs differ from the g-SAE's"
        )
    if cfg.architecture not in EXPORT_NAMES:
        raise ValueError(f"architecture={cfg.architecture!r} has no SAELens equivalent; "
                         f"exportable: {sorted(EXPORT_NAMES)}")  # fmt: skip
    s = float(sae.act_scale)
    with torch.no_grad():
        w = dict(
            W_enc=sae.W_enc.detach().float().clone(),
            W_dec=sae.decoder_directions().detach().float().clone(),
            b_enc=sae.b_enc.detach().float() / s,
            b_dec=sae.b_dec.detach().float() / s,
        )
        extra: dict[str, Any] = {}
        if cfg.architecture in ("topk", "gtopk"):
            extra["k"] = cfg.k
            extra["rescale_acts_by_decoder_norm"] = False
        elif cfg.architecture == "jumprelu":
            w["threshold"] = sae.threshold.detach().float().clamp_min(0) / s
        elif cfg.architecture == "batchtopk":
            if cfg.needs_grad:
                raise ValueError("a gradient-informed BatchTopK (beta > 0) needs dL/dx; SAELens "
                                 "cannot select with it")  # fmt: skip
            if float(sae.threshold) < 0:
                raise ValueError("this BatchTopK SAE has no inference threshold yet (it was never "
                                 "trained); train it first")  # fmt: skip
            w["threshold"] = torch.full((cfg.d_sae,), float(sae.threshold) / s)
    return EXPORT_NAMES[cfg.architecture], {k: v.contiguous() for k, v in w.items()}, extra


def export_saelens(
    sae_or_run,
    path: str | os.PathLike,
    allow_gtopk: bool = False,
    model_name: str | None = None,
    context_size: int | None = None,
    prepend_bos: bool | None = None,
) -> Path:
    """Write `sae_or_run` (an SAE, or a single-site `Run`) as a SAELens v6 folder at `path`.

    `sae_lens.SAE.load_from_disk(path)` loads it with no warning. `model_name` (default: the
    SAE's), `context_size` and `prepend_bos` (default: the training data's, when known) go into
    the metadata.
    """
    sae = sae_or_run.sae if hasattr(sae_or_run, "saes") else sae_or_run
    arch, weights, extra = raw_weights(sae, allow_gtopk)
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
        model_from_pretrained_kwargs={},
        exclude_special_tokens=None,
        saelab_version=_saelab_version(),
        saelab_architecture=cfg.architecture,
        saelab_site=cfg.site,
    )
    if cfg.architecture == "gtopk":
        meta["saelab_reduced_from"] = "gtopk: exported as the TopK it reduces to without dL/dx"
    out = dict(architecture=arch, d_in=cfg.d_in, d_sae=cfg.d_sae, dtype="float32", device="cpu",
               apply_b_dec_to_input=cfg.pre_subtract_b_dec, normalize_activations="none",
               reshape_activations="none", metadata=meta, **extra)  # fmt: skip
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, path / WEIGHTS)
    (path / CFG).write_text(json.dumps(out, indent=2) + "\n")
    return path


def _saelab_version() -> str:
    import saelab

    return saelab.__version__


def is_saelens_folder(path: Path) -> bool:
    """Whether `path` holds a SAELens-written SAE (its weights file, no saelab weights)."""
    return (path / WEIGHTS).is_file() and (path / CFG).is_file()


def load_saelens(path: str | os.PathLike) -> SAE:
    """A saelab SAE equal to the SAELens SAE in folder `path` (same encode and decode).

    standard -> relu (decoder rows as stored), topk -> topk, jumprelu -> jumprelu, batchtopk
    (a SAELens training folder: its `topk_threshold` is the inference threshold) -> batchtopk;
    `apply_b_dec_to_input` -> `pre_subtract_b_dec`. Refuses what saelab cannot reproduce
    exactly: activation normalisation other than "none", hook_z reshaping, a TopK that
    rescales by decoder norms, negative JumpReLU thresholds, other architectures.
    """
    path = Path(path)
    meta = json.loads((path / CFG).read_text())
    weights = {k: v.float() for k, v in load_file(path / WEIGHTS).items()}
    return from_saelens(meta, weights, f"SAELens SAE at {path}")


def from_saelens(meta: dict, w: dict[str, torch.Tensor], where: str = "SAELens SAE") -> SAE:
    """A saelab SAE from a SAELens config dict and its float weights (`load_saelens`' rules)."""
    arch = meta.get("architecture", "standard")
    names = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "batchtopk"}
    if arch not in names:
        raise ValueError(f"{where}: architecture={arch!r} is not supported; saelab reads "
                         f"{sorted(names)}")  # fmt: skip
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
    kw: dict[str, Any] = dict(architecture=names[arch], d_in=meta["d_in"], d_sae=meta["d_sae"],
                              pre_subtract_b_dec=bool(meta.get("apply_b_dec_to_input", False)),
                              normalize_activations="none", hook_name=md.get("hook_name") or "",
                              model_name=md.get("model_name") or "")  # fmt: skip
    if arch in ("topk", "batchtopk"):
        k = meta["k"]
        if isinstance(k, float) and not k.is_integer():
            raise ValueError(f"{where}: k={k} is not a whole number of latents")
        kw["k"] = int(k)
    if arch == "batchtopk":
        if "topk_threshold" not in w:
            raise ValueError(f"{where}: a batchtopk folder without topk_threshold")
        w["threshold"] = w.pop("topk_threshold").reshape(())
    if arch == "standard":
        unit = torch.allclose(w["W_dec"].norm(dim=-1), torch.ones(meta["d_sae"]), atol=1e-5)
        kw["normalize_decoder"] = bool(unit)  # rows as stored unless they are unit already
    if arch == "jumprelu" and (w["threshold"] < 0).any():
        raise ValueError(f"{where}: negative JumpReLU thresholds are not supported")
    with torch.random.fork_rng(devices=[]):
        sae = SAE.from_config(SAEConfig.create(**kw))
    missing = sorted(set(sae.state_dict()) - set(w))
    if missing:
        raise ValueError(f"{where}: {WEIGHTS} lacks {missing}")
    state = {k: w[k] for k in sae.state_dict()}
    if arch == "standard" and kw["normalize_decoder"]:
        state["W_dec"] = F.normalize(state["W_dec"], dim=-1)
    sae.load_state_dict(state, strict=True)
    return sae.eval()


def load_pretrained(release: str, sae_id: str) -> SAE:
    """A SAELens pretrained release by name, through sae_lens' own registry (needs the hub)."""
    try:
        from sae_lens import SAE as SLSAE
    except ImportError as e:
        raise ImportError("loading a SAELens release needs sae_lens: pip install sae-lens") from e
    import tempfile

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
    from types import SimpleNamespace

    from saelab.core.models import parse_site

    arch, weights, extra = raw_weights(sae, allow_gtopk)
    site = parse_site(sae.cfg.site) if sae.cfg.site else None
    cfg = SimpleNamespace(
        d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, architecture=arch, model_name=lm_name,
        hook_layer=hook_layer if hook_layer is not None else (site.layer if site else 0),
        hook_name=sae.cfg.hook_name, context_size=context_size, prepend_bos=prepend_bos,
        dtype="float32", device="cpu", apply_b_dec_to_input=sae.cfg.pre_subtract_b_dec,
        normalize_activations="none", dataset_trust_remote_code=False, seqpos_slice=(None,),
    )  # fmt: skip
    meta = dict(architecture=arch, d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae,
                apply_b_dec_to_input=sae.cfg.pre_subtract_b_dec, **extra)  # fmt: skip
    return SAEBenchSAE(from_saelens(meta, weights), cfg)


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m saelab.core.saelens export SRC DST [--allow-gtopk] [--model-name NAME]`."""
    import argparse
    import sys

    from saelab.core.sae import load_sae

    ap = argparse.ArgumentParser(
        prog="python -m saelab.core.saelens", description=__doc__.split("\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write a saved saelab SAE as a SAELens folder")
    ex.add_argument("src", help="a saelab SAE folder (cfg.json + sae.safetensors)")
    ex.add_argument("dst", help="the SAELens folder to write")
    ex.add_argument("--allow-gtopk", action="store_true")
    ex.add_argument("--model-name", default=None, help="the name other tools load the model by")
    a = ap.parse_args(argv)
    try:
        out = export_saelens(load_sae(a.src), a.dst, a.allow_gtopk, a.model_name)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
