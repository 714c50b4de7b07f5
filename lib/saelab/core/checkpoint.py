"""A run's folder: its checkpoint (atomic, checked before a resume) and its files.

`out_dir/` holds `train_config.json`, `data.json`, `metrics.jsonl` (one record per line),
`checkpoint.pt` (tensors and plain values only: loaded with `weights_only=True`) and, at the end,
`saes/<site>/`. Nothing finished is lost: a folder that holds a run is refused unless the caller
asks to resume it or to replace it (ARCHITECTURE.md §4).
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saelab.core.cache import ActivationCache, fingerprint
from saelab.core.config import TrainConfig
from saelab.core.files import remove_leftovers, write_atomic
from saelab.core.integrity import tensors_sha256
from saelab.core.models import Site
from saelab.core.sae import SAE, with_act_scale

CKPT_KEYS = ("cfg", "step", "log", "saes", "opt", "since_fire")
CHECKED = ("step", "saes", "opt", "since_fire")  # what a checkpoint's sha256 covers


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from (corrupt, truncated, or from another config)."""


@dataclass
class TrainState:
    """What a checkpoint holds: the SAEs, Adam, steps taken, the log, tokens since each fired."""

    saes: dict[Site, SAE]
    opt: torch.optim.Optimizer
    since_fire: dict[Site, torch.Tensor]  # [d_sae] per site: tokens since the latent last fired
    step: int = 0
    log: list[dict] = field(default_factory=list)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for sae in self.saes.values() for p in sae.parameters()]


def data_fingerprint(data) -> str:
    """sha256 of the token rows a run trains on (an activation cache: those it was written from)."""
    if isinstance(data, ActivationCache):
        return data.manifest["tokens_sha256"]
    return fingerprint(data.tokens)


def describe_data(data) -> dict:
    """The data record of a run (`data.json`, and each saved SAE's `extra.data`)."""
    if isinstance(data, ActivationCache):
        m = data.manifest
        return dict(source=m.get("source", ""), split=m.get("split", ""), rows=len(data),
                    n_ctx=data.n_ctx, prepend_bos=data.prepend_bos,
                    activation_cache=str(data.path))  # fmt: skip
    return data.describe()


def save_checkpoint(path: Path, state: TrainState, cfg: TrainConfig, data_fp: str = "",
                    model_fp: str | None = None) -> None:  # fmt: skip
    """Write `state` to `path` atomically, with the fingerprints of the training data and the
    model's weights: a temp file beside `path`, then a rename, so a kill mid-write leaves the
    previous checkpoint whole."""
    ckpt = dict(
        cfg=cfg.to_dict(),
        data=data_fp,
        model=model_fp,
        step=state.step,
        log=state.log,
        saes={str(s): sae.state_dict() for s, sae in state.saes.items()},
        opt=state.opt.state_dict(),
        since_fire={str(s): v for s, v in state.since_fire.items()},
    )
    ckpt["sha256"] = tensors_sha256({k: ckpt[k] for k in CHECKED})  # verified on load
    write_atomic(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path: Path, cfg: TrainConfig, sites, data_fp: str | None = None,
                    model_fp: str | None = None) -> dict:  # fmt: skip
    """Read and check a training checkpoint; a bad one is an error and stays on disk untouched.

    Never starts over silently: a truncated file (a disk filled up, a copy cut short) would
    otherwise throw away the run it belongs to. Tensors load on the CPU; `load_state_dict`
    copies them to the SAEs' device (and keeps Adam's step counts on the CPU, where it wants them).
    """
    hint = "it was left in place; move it away (or pass resume=False) to start the run over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError by damage type
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e}); {hint}"
        ) from e
    missing = [k for k in CKPT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}, so it is not a training "
                              f"checkpoint or is damaged; {hint}")  # fmt: skip
    if "sha256" in state and state["sha256"] != tensors_sha256({k: state[k] for k in CHECKED}):
        raise CheckpointError(f"checkpoint {path} does not match the checksum saved with it (the "
                              f"file is damaged); {hint}")  # fmt: skip
    now = cfg.to_dict()
    unknown = sorted(set(state["cfg"]) - set(now)) if isinstance(state["cfg"], dict) else []
    if unknown:
        raise CheckpointError(f"{path} was written with TrainConfig fields this saelab does not "
                              f"know: {unknown} (a newer saelab?); resume it with the version "
                              "that wrote it, or start the run over")  # fmt: skip
    try:  # an older checkpoint's config, with the fields added since at their defaults
        then = TrainConfig.from_dict(state["cfg"]).to_dict()
    except (ValueError, TypeError, KeyError):
        then = state["cfg"]
    if then != now:
        diff = {k: (then.get(k), now.get(k)) for k in sorted(set(then) | set(now))
                if then.get(k) != now.get(k)}  # fmt: skip
        raise CheckpointError(
            f"{path} was written by a different TrainConfig; refusing to resume. "
            f"Differences (checkpoint, now): {diff}"
        )
    if data_fp is not None and state.get("data") and state["data"] != data_fp:
        raise CheckpointError(
            f"{path} was trained on other data (token fingerprint {state['data'][:12]}, now "
            f"{data_fp[:12]}); refusing to resume. Give the same data, or start the run over"
        )
    if model_fp is not None and state.get("model") and state["model"] != model_fp:
        raise CheckpointError(
            f"{path} was trained with other model weights (fingerprint {state['model']}, now "
            f"{model_fp}); refusing to resume. Load the model it was trained with, or start over"
        )
    names = {str(s) for s in sites}
    if set(state["saes"]) != names or set(state["since_fire"]) != names:
        raise CheckpointError(f"checkpoint {path} holds sites {sorted(state['saes'])}, "
                              f"expected {sorted(names)}; {hint}")  # fmt: skip
    return state


def checkpoint_step(path: Path) -> int | str:
    """The step a checkpoint stands at, for a message; "?" when it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["step"]
    except Exception:  # a report, not a load: never mask the original error
        return "?"


def restore(state: TrainState, saved: dict, path: Path | str = "checkpoint") -> None:
    """Load a checked checkpoint (`load_checkpoint`, read from `path`) into `state`."""
    for s, sae in state.saes.items():
        # SAEs that do not normalise were once saved without their act_scale buffer (1.0)
        tensors = with_act_scale(sae.cfg, saved["saes"][str(s)])
        want = sae.state_dict()
        missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
        shapes = {k: (tuple(tensors[k].shape), tuple(v.shape)) for k, v in want.items()
                  if k in tensors and tensors[k].shape != v.shape}  # fmt: skip
        if missing or extra or shapes:
            raise CheckpointError(
                f"{path}: the SAE saved for {s} does not fit this run's {type(sae).__name__} "
                f"(missing {missing}, unexpected {extra}, shapes (saved, now) {shapes}); an older "
                "saelab wrote it? Resume with that version, or start over (overwrite=True)"
            )
        sae.load_state_dict(tensors)
    state.opt.load_state_dict(saved["opt"])
    device = next(iter(state.saes.values())).device
    state.since_fire = {s: saved["since_fire"][str(s)].to(device) for s in state.saes}
    state.step, state.log = saved["step"], saved["log"]


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an `out_dir` that holds a run unless asked to resume it or to replace it."""
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; choose one")
    has_saes = (out / "saes").is_dir() and any((out / "saes").iterdir())
    has_ckpt = (out / "checkpoint.pt").exists()
    if resume and not has_ckpt and not has_saes:
        where = "holds no checkpoint.pt" if out.exists() else "does not exist"
        warnings.warn(f"resume=True, but {out} {where}: starting a new run there (check the "
                      "path if you meant to continue one)", stacklevel=4)  # fmt: skip
    if resume and has_saes and not has_ckpt:
        raise FileExistsError(
            f"{out} holds finished SAEs but no checkpoint.pt, so resume=True cannot continue "
            "that run; pass overwrite=True to train it again, or choose another out_dir"
        )
    if not resume and not overwrite and (has_saes or has_ckpt):
        what = " and ".join(n for n, h in (("saes/", has_saes), ("checkpoint.pt", has_ckpt)) if h)
        raise FileExistsError(
            f"{out} holds a run ({what}); pass resume=True to continue it, overwrite=True to "
            "replace it, or choose another out_dir"
        )


def start_files(out: Path, cfg: TrainConfig, log: list[dict], data_record: dict,
                overwrite: bool) -> None:  # fmt: skip
    """Write a run's `train_config.json`, `data.json` and a `metrics.jsonl` holding `log`.

    Called after the run's first step has succeeded, so a run that fails at once leaves an old
    run's files as they were; with `overwrite`, the old run's SAEs go then. A resumed run's log
    drops the lines the stopped run wrote after its checkpoint, and the temp file of a
    checkpoint write it was killed in.
    """
    if overwrite and (out / "saes").exists():
        shutil.rmtree(out / "saes")  # asked for
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    (out / "data.json").write_text(json.dumps(data_record, indent=2) + "\n")
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    remove_leftovers(out / "checkpoint.pt")


def append_log(out: Path, rec: dict) -> None:
    """Append one record to `out/metrics.jsonl`."""
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
