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

    `mode`: "online", "offline" (no network: `wandb sync` uploads later) or "disabled"; None
    takes `WANDB_MODE` from the environment, else online. `group`: the run's group (a sweep's
    runs get their folder's parent name when None)."""

    project: str = "saelab"
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
    """The open trackers of one run: `log(rec)` each record, `close(ok)` at the end."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def log(self, rec: dict) -> None:
        values = scalars(rec)
        if values:
            for sink in self.sinks:
                sink.log(int(rec.get("step", 0)), values)

    def close(self, ok: bool = True) -> None:
        for sink in self.sinks:
            sink.close(ok)

    def __bool__(self) -> bool:
        return bool(self.sinks)


def open_run(options: list, out: Path | None, name: str, config: dict, group: str | None,
             resumed: bool) -> Tracked:  # fmt: skip
    """Open each tracker of `options` for one run (folder `out`, display `name`, `config`, sweep
    `group`). A resumed run reuses the ids saved in `out/tracking.json`. A tracker whose package
    is not installed is skipped with a warning naming `pip install saelab[<extra>]`."""
    saved = _read_ids(out) if out is not None else {}
    sinks = []
    for opt in options:
        try:
            if opt.name == "wandb":
                sinks.append(_WandbSink(opt, out, name, config, group, saved.get("wandb"), resumed))
            else:
                sinks.append(_TensorBoardSink(opt, out, name, config))
        except ModuleNotFoundError as e:
            warnings.warn(f"log_to={opt.name!r}: {e.name} is not installed, so this run is not "
                          f"sent to {opt.name} (metrics.jsonl has every record); install it with "
                          f"`pip install saelab[{opt.extra}]`", stacklevel=3)  # fmt: skip
    ids = {s.name: s.run_id for s in sinks if getattr(s, "run_id", None)}
    if out is not None and ids:
        out.mkdir(parents=True, exist_ok=True)
        (out / TRACKING_FILE).write_text(json.dumps(_read_ids(out) | ids, indent=2) + "\n")
    return Tracked(sinks)


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

    def __init__(self, opt: WandB, out, name, config, group, saved_id, resumed):
        import wandb

        mode = opt.mode or os.environ.get("WANDB_MODE") or "online"
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"W&B mode={mode!r} is not valid; choose 'online', 'offline' or "
                             "'disabled'")  # fmt: skip
        run_id = saved_id if resumed and saved_id else secrets.token_hex(6)  # W&B ids: [a-z0-9]
        self.run = wandb.init(
            project=opt.project, entity=opt.entity, name=name, group=opt.group or group,
            tags=list(opt.tags), config=config, id=run_id, resume="allow", mode=mode,
            dir=str(out) if out is not None else None, reinit="create_new",
            # W&B's capture of stdout would swallow the progress lines papermill runs print
            settings=wandb.Settings(console="off", silent=True),
        )  # fmt: skip
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.run_id = run_id

    def log(self, step: int, values: dict) -> None:
        self.run.log({"step": step} | values)

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


class _TensorBoardSink:
    name = "tensorboard"

    def __init__(self, opt: TensorBoard, out, name, config):
        import tensorboard  # noqa: F401  (torch's writer needs it; its absence is named here)
        from torch.utils.tensorboard import SummaryWriter

        if opt.log_dir is None and out is None:
            raise ValueError("log_to='tensorboard' needs an out_dir or "
                             "TensorBoard(log_dir=...)")  # fmt: skip
        log_dir = Path(opt.log_dir) / name if opt.log_dir else Path(out) / "tensorboard"
        self.writer = SummaryWriter(str(log_dir))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def log(self, step: int, values: dict) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, global_step=step)

    def close(self, ok: bool) -> None:
        self.writer.close()
