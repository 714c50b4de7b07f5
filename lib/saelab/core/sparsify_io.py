"""SAEs and transcoders in EleutherAI sparsify's format, both ways: a folder `sparsify.SparseCoder.
load_from_disk` reads (`cfg.json`: `d_in` and its `SparseCoderConfig` fields; `sae.safetensors`:
`encoder.weight [d_sae, d_in]`, `encoder.bias [d_sae]`, `W_dec [d_sae, d_in]`, `b_dec [d_in]` and,
for a skip transcoder, `W_skip [d_in, d_in]`). sparsify trains TopK SAEs and transcoders, so
`topk`, `transcoder` and `skip_transcoder` export; nothing else has an equivalent there.

sparsify has no activation scale and subtracts `b_dec` from an SAE's input (not a transcoder's),
so both are folded into raw-unit weights. As in the SAELens export, the scale `s` (act_scale)
goes into the latents, which become `c / s` (the same ones selected, since s > 0), and the
decoder rows are written as they are (unit for an SAE, which sparsify keeps unit too):

    encoder.weight = W_enc^T          encoder.bias = (b_enc + b_dec W_enc) / s for an SAE that
    W_dec = W_dec                       does not subtract b_dec itself, else b_enc / s
    b_dec = b_dec / s                 W_skip = W_skip (x s W_skip^T / s = x W_skip^T)

For Gemma 2 and 3, saelab's `mlp_out` is the output of `post_feedforward_layernorm`, while a
sparsify hookpoint `layers.L.mlp` is the MLP's own output, before that norm: a Gemma transcoder
computes a different function in the other tool.

`load_sae` reads a sparsify folder back (`load_sparsify`): a transcoder as `transcoder` or
`skip_transcoder`, an SAE as `topk` with `pre_subtract_b_dec` (sparsify subtracts `b_dec`), no
activation scale. The folder does not say which site it was trained at (sparsify names the
folder by its hookpoint): the SAE's `site` stays empty, and `TrainConfig.sites` gives it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from saelab.core.files import export_folder
from saelab.core.sae import SAE, SAEConfig, _read_weights

EXPORTS = ("topk", "transcoder", "skip_transcoder")  # the architectures sparsify has


@torch.no_grad()
def export_sparsify(sae_or_run, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `sae_or_run` (a `topk`, `transcoder` or `skip_transcoder` SAE, or a single-site
    `Run` of one) to the folder `path` in sparsify's format, its weights in raw units (module
    docstring); `sparsify.SparseCoder.load_from_disk(path)` reads it. Refuses any other
    architecture, naming the ones that export. `path` must be new or empty; `overwrite=True`
    replaces an earlier sparsify export there, and nothing else (a saelab SAE folder has the same
    file names) is ever written into. Written to a temporary folder renamed into place."""
    sae = sae_or_run.sae if hasattr(sae_or_run, "saes") else sae_or_run
    arch = sae.cfg.architecture
    if arch not in EXPORTS:
        raise ValueError(f"architecture={arch!r} has no sparsify equivalent; sparsify trains "
                         f"TopK SAEs and transcoders: {', '.join(EXPORTS)}")  # fmt: skip
    tensors, cfg = sparsify_form(sae)

    def write(tmp: Path) -> None:
        save_file(tensors, tmp / "sae.safetensors")
        (tmp / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")

    return export_folder(path, overwrite, "sparsify", _is_export, write)


def sparsify_form(sae: SAE) -> tuple[dict[str, torch.Tensor], dict]:
    """sparsify's tensors (float32, raw units) and `cfg.json` dict for `sae` (module docstring)."""
    transcoder = sae.cfg.architecture != "topk"
    s = float(sae.act_scale)
    W_enc, b_enc = sae.W_enc.detach().float().cpu(), sae.b_enc.detach().float().cpu()
    b_dec = sae.b_dec.detach().float().cpu()
    if not transcoder and not sae.cfg.pre_subtract_b_dec:
        # sparsify computes (x - b_dec/s) W_enc + e: e carries back the b_dec it subtracts
        b_enc = b_enc + b_dec @ W_enc
    tensors = {
        "encoder.weight": W_enc.T.contiguous(),
        "encoder.bias": (b_enc / s).contiguous(),
        "W_dec": sae.W_dec.detach().float().cpu().contiguous(),
        "b_dec": (b_dec / s).contiguous(),
    }
    if hasattr(sae, "W_skip"):
        tensors["W_skip"] = sae.W_skip.detach().float().cpu().contiguous()
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, sae.cfg.d_sae // sae.cfg.d_in),
        # the rows as trained: unit for an SAE (sparsify keeps them so), free for a transcoder
        "normalize_decoder": not transcoder,
        "num_latents": sae.cfg.d_sae,
        "k": sae.cfg.k,
        "multi_topk": False,
        "skip_connection": "W_skip" in tensors,
        "transcode": transcoder,
        "d_in": sae.cfg.d_in,
    }
    return tensors, cfg


def is_sparsify_folder(path: Path) -> bool:
    """Whether `path` holds a sparsify SAE: `sae.safetensors` and a `cfg.json` with sparsify's
    fields (`d_in`, `k`, `num_latents`) and without `architecture`, which saelab's and SAELens'
    configs have."""
    if not ((path / "cfg.json").is_file() and (path / "sae.safetensors").is_file()):
        return False
    try:
        cfg = json.loads((path / "cfg.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return (isinstance(cfg, dict) and "architecture" not in cfg
            and {"d_in", "k", "num_latents"} <= set(cfg))  # fmt: skip


def load_sparsify(path: str | os.PathLike) -> SAE:
    """The saelab SAE equal to the sparsify SAE or transcoder in folder `path` (same latents and
    outputs; module docstring). Refuses what saelab cannot reproduce: another activation than
    TopK, and weights whose shapes disagree with the config. Returned in eval mode."""
    path = Path(path)
    cfg = json.loads((path / "cfg.json").read_text())
    where = f"sparsify SAE at {path}"
    if cfg.get("activation", "topk") != "topk":
        raise ValueError(f"{where}: activation={cfg['activation']!r}; saelab reads TopK only")
    w = {k: v.float() for k, v in _read_weights(path / "sae.safetensors").items()}
    d_in = int(cfg["d_in"])
    d_sae = int(cfg["num_latents"]) or d_in * int(cfg.get("expansion_factor", 0))
    transcoder, skip = bool(cfg.get("transcode")), "W_skip" in w
    if skip and not transcoder:
        raise ValueError(f"{where}: a skip connection on an SAE (transcode=false) has no saelab "
                         "equivalent")  # fmt: skip
    shapes = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in),
              "b_dec": (d_in,)} | ({"W_skip": (d_in, d_in)} if skip else {})  # fmt: skip
    got = {k: tuple(v.shape) for k, v in w.items()}
    if got != shapes:
        raise ValueError(f"{where}: weights {got} do not match d_in={d_in}, num_latents={d_sae} "
                         f"(expected {shapes})")  # fmt: skip
    norms = w["W_dec"].norm(dim=-1)
    if not transcoder and not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
        # saelab's TopK keeps unit rows after every step, and folding the norms into the encoder
        # would change which latents TopK selects: a run from it could not be this SAE
        lo, hi = float(norms.min()), float(norms.max())
        raise ValueError(f"{where}: its decoder rows are not unit norm (from {lo:.4g} to "
                         f"{hi:.4g}; normalize_decoder=false?), which saelab's topk cannot "
                         "reproduce")  # fmt: skip
    arch = ("skip_transcoder" if skip else "transcoder") if transcoder else "topk"
    kw = {} if transcoder else {"pre_subtract_b_dec": True}
    sae_cfg = SAEConfig.create(architecture=arch, d_in=d_in, d_sae=d_sae, k=int(cfg["k"]),
                               normalize_activations="none", **kw)  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # building the module must not move the global RNG
        sae = SAE.from_config(sae_cfg)
    state = {"W_enc": w["encoder.weight"].T.contiguous(), "b_enc": w["encoder.bias"],
             "W_dec": w["W_dec"], "b_dec": w["b_dec"], "act_scale": torch.tensor(1.0)}  # fmt: skip
    if skip:
        state["W_skip"] = w["W_skip"]
    sae.load_state_dict(state, strict=True)
    sae.extra = {"source": {"format": "sparsify", "path": str(path), "cfg": cfg}}
    return sae.eval()


def _is_export(path: Path) -> bool:
    """A folder holding a sparsify export and nothing else (saelab's SAE folders have the same
    two file names, but an `architecture` in cfg.json)."""
    only_its_files = {p.name for p in path.iterdir()} == {"cfg.json", "sae.safetensors"}
    return only_its_files and is_sparsify_folder(path)
