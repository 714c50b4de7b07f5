"""Experiment tracking: every record of a run's `metrics.jsonl`, also sent to Weights & Biases
and/or TensorBoard.

`metrics.jsonl` stays the source of truth (the notebooks, studies and tests read it); a tracker
is a view of the same records for a researcher who watches runs in W&B or TensorBoard, as
SAELens, sparsify and e2e_sae users do. `sl.train(..., log_to=("wandb", "tensorboard"))`:

- each record becomes scalars at its `step`: `train/loss`, `train/l0`..., `eval/ce_increase`...,
  `act_scale/<site>`, `b_dec_init/<site>` (`scalars`);
- the run's config (TrainConfig, data, model) goes with it; `train_many` opens one tracked run
  per SAE, grouped as one sweep;
- a resumed run continues the same tracked run: the W&B id is kept in `out_dir/tracking.json`,
  TensorBoard appends to `out_dir/tensorboard`;
- under torch.distributed only rank 0 tracks (the caller opens trackers there only);
- a tracker whose package is missing is left out with a warning that names the extra to install;
  training goes on, since `metrics.jsonl` has everything.

W&B's x-axis is the record's `step` (`define_metric`), not W&B's own counter, so records logged
again after a resume (the lines a stopped run wrote after its last checkpoint) are plotted at
their step instead of being refused as out of order.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

TRACKING_FILE = "tracking.json"  # in the run folder: the tracked runs' ids, for resume


@dataclass(frozen=True)
class WandB:
    """Options of the W&B tracker (`log_to=(WandB(project="my-saes"),)`; `"wandb"` = defaults).

    `mode`: "online", "offline" (no network: `wandb sync` uploads later), "disabled", or any
    mode W&B accepts; None leaves it to W&B (`WANDB_MODE`, else online). `project`: None takes
    `WANDB_PROJECT`, else "saelab". `group`: the run's group (a sweep's runs get their folders'
    parent name when None)."""

    project: str | None = None
    entity: str | None = None
    mode: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()

    name = "wandb"
    extra = "wandb"


@dataclass(frozen=True)
class TensorBoard:
    """Options of the TensorBoard tracker. `log_dir`: None writes to `<out_dir>/tensorboard`
    (required for a run without an out_dir)."""

    log_dir: str | None = None

    name = "tensorboard"
    extra = "tensorboard"


TRACKERS = {"wandb": WandB, "tensorboard": TensorBoard}


def trackers(log_to) -> list:
    """The tracker options of `log_to`: a name ("wandb", "tensorboard"), an options object, or a
    list of them; None or () for none. Unknown names are refused with the valid ones."""
    if log_to is None:
        return []
    if isinstance(log_to, str | WandB | TensorBoard):
        items = [log_to]
    elif isinstance(log_to, list | tuple):
        items = list(log_to)
    else:
        raise ValueError(f"log_to={log_to!r} is not a tracker; give a name from "
                         f"{sorted(TRACKERS)}, WandB / TensorBoard options, or a list")  # fmt: skip
    out = []
    for item in items:
        if isinstance(item, str):
            if item not in TRACKERS:
                raise ValueError(f"log_to={item!r} is not a tracker; choose from "
                                 f"{sorted(TRACKERS)} (or pass sl.tracking.WandB(...) / "
                                 "TensorBoard(...) for options)")  # fmt: skip
            item = TRACKERS[item]()
        elif not isinstance(item, WandB | TensorBoard):
            raise ValueError(f"log_to item {item!r} is neither a tracker name "
                             f"{sorted(TRACKERS)} nor WandB / TensorBoard options")  # fmt: skip
        out.append(item)
    if len({t.name for t in out}) < len(out):
        raise ValueError(f"log_to names a tracker twice: {[t.name for t in out]}")
    return out


def scalars(rec: dict) -> dict[str, float]:
    """A metrics.jsonl record -> `{"<kind>/<key>[/<subkey>]": value}`, its finite numbers only.

    `{"step": 7, "kind": "train", "loss": 2.5, "l0": 230.8}` -> `{"train/loss": 2.5,
    "train/l0": 230.8}`; `{"kind": "act_scale", "mean_norm": {"resid_pre.3": 3.77}}` ->
    `{"act_scale/resid_pre.3": 3.77}` (a record's one dict is named by its kind alone)."""
    kind = rec.get("kind", "record")
    out: dict[str, float] = {}
    values = {k: v for k, v in rec.items() if k not in ("step", "kind")}
    n_dicts = sum(isinstance(v, dict) for v in values.values())
    for key, value in values.items():
        if isinstance(value, dict):
            prefix = kind if n_dicts == 1 else f"{kind}/{key}"
            for sub, v in value.items():
                if _number(v):
                    out[f"{prefix}/{sub}"] = float(v)
        elif _number(value):
            out[f"{kind}/{key}"] = float(value)
    return out


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class Tracked:
    """The open trackers of one run: `log(rec)` each record, `close(ok)` at the end. A tracker
    that fails (a network error, a full disk) is dropped with a warning: training and
    `metrics.jsonl` go on without it."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def log(self, rec: dict, only_new: bool = False) -> None:
        """Send `rec` to every tracker (`only_new`: to those that started a new tracked run,
        which a resume replays the log to)."""
        values = scalars(rec)
        if values:
            for sink in [s for s in self.sinks if not (only_new and s.continued)]:
                self._guard(sink, "log", int(rec.get("step", 0)), values)

    def close(self, ok: bool = True) -> None:
        for sink in list(self.sinks):
            self._guard(sink, "close", ok)

    def ids(self) -> dict[str, str]:
        """{tracker: run id} of the trackers that have one (W&B), for `out/tracking.json`."""
        return {s.name: s.run_id for s in self.sinks if getattr(s, "run_id", None)}

    def _guard(self, sink, method: str, *args) -> None:
        try:
            getattr(sink, method)(*args)
        except Exception as e:  # noqa: BLE001 - a tracker never stops training
            self.sinks.remove(sink)
            warnings.warn(f"{sink.name} failed ({type(e).__name__}: {e}) and is left out of "
                          "the rest of this run; metrics.jsonl has every record",
                          stacklevel=3)  # fmt: skip

    def __bool__(self) -> bool:
        return bool(self.sinks)


def open_run(options: list, out: Path | None, name: str, config: dict, group: str | None,
             resumed: bool, resume_step: int = 0) -> Tracked:  # fmt: skip
    """Open each tracker of `options` for one run (folder `out`, display `name`, `config`, sweep
    `group`). A resumed run (`resume_step`: its checkpoint's step) continues the W&B run whose id
    `out/tracking.json` holds, and TensorBoard's event files, dropping their records after
    `resume_step`; a tracker with nothing to continue starts a new tracked run (`continued`
    False: the caller replays the log to it). A tracker whose package is not installed, or that
    fails to open, is left out with a warning (`pip install saelab[<extra>]` for the former)."""
    saved = _read_ids(out) if out is not None and resumed else {}
    sinks = []
    for opt in options:
        try:
            if opt.name == "wandb":
                sinks.append(_WandbSink(opt, out, name, config, group, saved.get("wandb")))
            else:
                sinks.append(_TensorBoardSink(opt, out, name, config, resumed, resume_step))
        except ModuleNotFoundError as e:
            warnings.warn(f"log_to={opt.name!r}: {e.name} is not installed, so this run is not "
                          f"sent to {opt.name} (metrics.jsonl has every record); install it with "
                          f"`pip install saelab[{opt.extra}]`", stacklevel=3)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - auth, network: the run trains without it
            warnings.warn(f"log_to={opt.name!r} could not start ({type(e).__name__}: {e}); this "
                          "run is not sent there (metrics.jsonl has every record)",
                          stacklevel=3)  # fmt: skip
    return Tracked(sinks)


def save_ids(out: Path, tracked: Tracked) -> None:
    """Record `tracked`'s run ids in `out/tracking.json`, for a resume to continue them; called
    once the run's first step has succeeded, with its other files (`checkpoint.start_files`)."""
    ids = tracked.ids()
    if ids:
        (out / TRACKING_FILE).write_text(json.dumps(_read_ids(out) | ids, indent=2) + "\n")


def _read_ids(out: Path) -> dict:
    path = out / TRACKING_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        warnings.warn(f"{path} is not valid JSON; a new tracked run is started", stacklevel=3)
        return {}


class _WandbSink:
    name = "wandb"

    def __init__(self, opt: WandB, out, name, config, group, saved_id):
        import wandb

        self.continued = saved_id is not None  # a resume continues the run of that id
        run_id = saved_id or secrets.token_hex(6)  # W&B ids: [a-z0-9]
        self.run = wandb.init(
            project=opt.project or os.environ.get("WANDB_PROJECT") or "saelab",
            entity=opt.entity, name=name, group=opt.group or group, tags=list(opt.tags),
            config=config, id=run_id, resume="allow", mode=opt.mode,
            dir=str(out) if out is not None else None, reinit="create_new",
            # W&B's capture of stdout would swallow the progress lines papermill runs print
            settings=wandb.Settings(console="off", silent=True, **_flush_often(wandb)),
        )  # fmt: skip
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.run_id = run_id

    def log(self, step: int, values: dict) -> None:
        self.run.log({"step": step} | values)

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


def _flush_often(wandb) -> dict:
    """W&B writes its run file every 15 s by default; a run shorter than that finished with an
    empty offline file here (wandb 0.31, LOG.md 2026-12-04), so flush every half second."""
    field = "x_transaction_log_flush_interval"
    return {field: 0.5} if field in getattr(wandb.Settings, "model_fields", {}) else {}


class _TensorBoardSink:
    name = "tensorboard"

    def __init__(self, opt: TensorBoard, out, name, config, resumed=False, resume_step=0):
        import tensorboard  # noqa: F401  (torch's writer needs it; its absence is named here)
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(opt.log_dir) / name if opt.log_dir else Path(out) / "tensorboard"
        self.continued = resumed and log_dir.is_dir()
        # on resume, the stopped run's records after its checkpoint are purged, not shown twice
        purge = resume_step + 1 if self.continued else None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge)
        if not self.continued:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def log(self, step: int, values: dict) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, global_step=step)

    def close(self, ok: bool) -> None:
        self.writer.close()
