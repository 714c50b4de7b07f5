"""Keeping `outputs/reference` small: after a regeneration, drop the SAE weights that nothing
reads and store the rest at half precision (`python -m saelab_lab prune`).

What the docs and the studies read stays: metrics, summaries, figures, the executed notebooks,
every `cfg.json`, and the weights of the `05_pareto` SAEs that a study of the same run loaded.
A study records the sweep runs it loaded under `loaded_runs` in its `summary.json`; a study
whose summary has no such key is taken to read every SAE of its sweep (nothing it may need is
dropped). The kept weight matrices (`W_enc`, `W_dec`) are written as float16: half the bytes,
and `load_sae` gives the SAE back in its config's dtype (float32), each weight within float16's
rounding (relative 2^-11) of the trained one. Biases, thresholds and `act_scale` stay exact.
Each pruned run says what was done in `pruned.json`; a run folder is never removed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from saelab import runs
from saelab.core.integrity import SHA_KEY, tensors_sha256
from saelab_lab.freshness import REFERENCE, read_runs

WEIGHTS = "sae.safetensors"
RECORD = "pruned.json"
COMPACT = ("W_enc", "W_dec")  # the matrices: nearly all of an SAE's bytes
ALL = None  # "every run of the sweep" in a reads map


@dataclass
class Pruned:
    """What `prune_run` did (or, dry, would do) in one reference run folder."""

    folder: Path
    removed: list[str] = field(default_factory=list)  # weight files, relative to the folder
    halved: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0


def weight_files(folder: Path) -> list[Path]:
    """Every SAE weights file under a run folder, at any depth: a notebook's own SAEs
    (`[<name>/]saes/<site>/`), a sweep's (`runs/<run>/saes/<site>/`), a study's grid."""
    return sorted(folder.rglob(WEIGHTS))


def reads(root: Path = runs.ROOT) -> dict[Path, set[str] | None]:
    """Per run folder that a completed reference study reads (`sae_run`, `half_run`), the names
    of its `runs/` that some study loaded (`loaded_runs` in the study's summary.json), or `ALL`
    where a reading study does not say."""
    out: dict[Path, set[str] | None] = {}
    for study in sorted((root / REFERENCE).glob("*/*")):
        try:
            cfg = json.loads((study / "config.json").read_text())
            summary = json.loads((study / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue  # not a completed run with a summary: it protects nothing
        if cfg.get("status") != "completed":
            continue
        loaded = summary.get("loaded_runs")
        for value in read_runs(cfg.get("parameters") or {}).values():
            folder = (root / value).resolve()
            before = out.get(folder, set())
            unknown = loaded is None or before is ALL
            out[folder] = ALL if unknown else before | {Path(p).name for p in loaded}
    return out


def _halve(path: Path) -> bool:
    """Rewrite `path`'s weight matrices as float16 (atomically); False if already compact."""
    tensors = load_file(path)
    todo = [n for n in COMPACT if n in tensors and tensors[n].dtype == torch.float32]
    if not todo:
        return False
    tensors.update({n: tensors[n].to(torch.float16) for n in todo})
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, tmp, metadata={SHA_KEY: tensors_sha256(tensors)})  # what load_sae checks
    tmp.replace(path)
    return True


def prune_run(folder: Path, keep: set[str] | None, dry_run: bool = False) -> Pruned:
    """Drop the weight files of `folder` whose run (`runs/<name>/...`) is not in `keep` (`ALL`:
    keep every one; SAEs outside `runs/` are a notebook's own, which no study reads) and halve
    the kept ones."""
    done = Pruned(folder)
    for path in weight_files(folder):
        rel = path.relative_to(folder)
        size = path.stat().st_size
        done.bytes_before += size
        run = rel.parts[1] if rel.parts[0] == "runs" and len(rel.parts) > 2 else None
        if run is None or (keep is not ALL and run not in keep):
            done.removed.append(rel.as_posix())
            if not dry_run:
                path.unlink()
            continue
        if dry_run:
            halves = load_file(path).get("W_enc", torch.empty(0)).dtype == torch.float32
            done.bytes_after += size // 2 if halves else size
        else:
            halves = _halve(path)
            done.bytes_after += path.stat().st_size
        if halves:
            done.halved.append(rel.as_posix())
    if not dry_run and (done.removed or done.halved):
        _record(folder, done)
    return done


def _record(folder: Path, done: Pruned) -> None:
    record_path = folder / RECORD
    old = json.loads(record_path.read_text()) if record_path.exists() else {}
    record = {
        "why": "outputs/reference keeps the SAE weights a study reads (python -m saelab_lab "
               "prune); the rest of this run (metrics, cfg.json, notebook) is as it ran",
        "removed": sorted({*old.get("removed", []), *done.removed}),
        "float16": sorted({*old.get("float16", []), *done.halved}),
        "float16_tensors": list(COMPACT),
    }  # fmt: skip
    tmp = record_path.with_name(f".{RECORD}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(record_path)


def prune(root: Path = runs.ROOT, dry_run: bool = False) -> list[Pruned]:
    """`prune_run` over every completed run under `outputs/reference/*/*`, keeping what
    `reads` says a study loads. Runs that did not complete are left alone."""
    read = reads(root)
    out = []
    for folder in sorted((root / REFERENCE).glob("*/*")):
        if runs.run_status(folder) != "completed" or not weight_files(folder):
            continue
        keep = read.get(folder.resolve(), set())
        out.append(prune_run(folder, keep, dry_run))
    return out
