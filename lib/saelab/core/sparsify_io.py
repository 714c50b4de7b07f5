"""SAEs and transcoders in EleutherAI sparsify's format: a folder `sparsify.SparseCoder.
load_from_disk` reads (`cfg.json`: `d_in` and its `SparseCoderConfig` fields; `sae.safetensors`:
`encoder.weight [d_sae, d_in]`, `encoder.bias [d_sae]`, `W_dec [d_sae, d_in]`, `b_dec [d_in]` and,
for a skip transcoder, `W_skip [d_in, d_in]`). sparsify trains TopK SAEs and transcoders, so
`topk`, `transcoder` and `skip_transcoder` export; nothing else has an equivalent there.

sparsify has no activation scale and subtracts `b_dec` from an SAE's input (not a transcoder's),
so both are folded into raw-unit weights that give the same latents and outputs, with `s` the
act_scale:

    encoder.weight = (s W_enc)^T      encoder.bias = b_enc (+ b_dec W_enc, an SAE that does not
    W_dec = W_dec / s                  subtract b_dec itself)
    b_dec = b_dec / s                 W_skip = W_skip (x s W_skip^T / s = x W_skip^T)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from saelab.core.files import naming_full_disk, remove_leftovers, writer_id
from saelab.core.locks import swap_in
from saelab.core.sae import SAE

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
    path = Path(path)
    _check_target(path, overwrite)
    remove_leftovers(path, "export")
    tmp = path.parent / f".{path.name}.export-{writer_id()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with naming_full_disk(path, "the partial export"):
            save_file(tensors, tmp / "sae.safetensors")
            (tmp / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def sparsify_form(sae: SAE) -> tuple[dict[str, torch.Tensor], dict]:
    """sparsify's tensors (float32, raw units) and `cfg.json` dict for `sae` (module docstring)."""
    transcoder = sae.cfg.architecture != "topk"
    s = float(sae.act_scale)
    W_enc, b_enc = sae.W_enc.detach().float().cpu(), sae.b_enc.detach().float().cpu()
    b_dec = sae.b_dec.detach().float().cpu()
    if not transcoder and not sae.cfg.pre_subtract_b_dec:
        # sparsify computes (x - b_dec/s)(s W_enc) + e: e carries back the b_dec it subtracts
        b_enc = b_enc + b_dec @ W_enc
    tensors = {
        "encoder.weight": (s * W_enc).T.contiguous(),
        "encoder.bias": b_enc.contiguous(),
        "W_dec": (sae.W_dec.detach().float().cpu() / s).contiguous(),
        "b_dec": (b_dec / s).contiguous(),
    }
    if hasattr(sae, "W_skip"):
        tensors["W_skip"] = sae.W_skip.detach().float().cpu().contiguous()
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, sae.cfg.d_sae // sae.cfg.d_in),
        # the rows are written as trained: unit for an SAE, free for a transcoder
        "normalize_decoder": not transcoder,
        "num_latents": sae.cfg.d_sae,
        "k": sae.cfg.k,
        "multi_topk": False,
        "skip_connection": "W_skip" in tensors,
        "transcode": transcoder,
        "d_in": sae.cfg.d_in,
    }
    return tensors, cfg


def _is_sparsify_folder(path: Path) -> bool:
    """A folder holding exactly a sparsify export: its two files, a cfg without `architecture`
    (saelab's and SAELens' cfg.json have one) and with sparsify's `transcode`."""
    if {p.name for p in path.iterdir()} != {"cfg.json", "sae.safetensors"}:
        return False
    try:
        cfg = json.loads((path / "cfg.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and "transcode" in cfg and "architecture" not in cfg


def _check_target(path: Path, overwrite: bool) -> None:
    """Refuse a target that holds anything but (with `overwrite`) an earlier sparsify export."""
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path} is a file; export into a new or empty folder")
    if not any(path.iterdir()):
        return
    if _is_sparsify_folder(path):
        if overwrite:
            return
        raise FileExistsError(f"{path} holds a sparsify export; pass overwrite=True to replace "
                              "it, or choose another folder")  # fmt: skip
    names = sorted(p.name for p in path.iterdir())[:4]
    raise FileExistsError(f"{path} holds other files ({', '.join(names)}: a saelab SAE or a "
                          "run?); an export never writes into it: choose a new or empty "
                          "folder")  # fmt: skip
