"""Reproducible notebook runs: papermill executes a notebook into `outputs/<notebook>/<run-id>/`.

A run folder holds the executed `notebook.ipynb`, `config.json` (parameters, git SHA and dirty
flag, package versions) and whatever the notebook writes there (it gets the folder as `out_dir`).
The runner prints a line when each notebook starts and ends (run folder, wall time, status), and
what the notebook prints reaches the terminal as it runs; progress bars are off in the kernel
(`TQDM_DISABLE=1`), so none is saved frozen in the `.ipynb`, and its loops print progress lines
instead (`SAELAB_HEARTBEAT`, `core/progress.py`); a notebook silent for `HEARTBEAT_S` seconds
gets a "still running" line from the runner. The main job ends with what to open first and its
headline number beside the reference runs'.

Notebooks opened interactively (JupyterLab starts them in `notebooks/`) resolve their paths
against the repository root with `resolve`, `resolve_input` and `notebook_out_dir`, so they read
and write the same files as under papermill (which runs them with the root as working directory).

    python -m saelab.runs run 00_storyworld --preset report --run-id my-report
    python -m saelab.runs main          # the main job on the embedded default (`make run`):
                                        # 05_pareto, then the studies 06-10 of its SAEs
"""

from __future__ import annotations

import argparse
import ast
import difflib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path

import jupytext
import pandas as pd
import papermill as pm
import yaml

from saelab.core.files import write_atomic
from saelab.core.locks import writer_lock
from saelab.core.progress import HEARTBEAT_ENV

ROOT = Path(__file__).resolve().parents[2]  # repo root (lib/saelab/runs.py)
NOTEBOOKS = ROOT / "notebooks"
PACKAGES = ("saelab", "torch", "nnsight", "transformers", "datasets", "papermill", "jupytext")


def resolve(path: str | Path) -> Path:
    """`path` made absolute against the repository root (`ROOT`), whatever the working directory
    (an interactive kernel runs in `notebooks/`, papermill in the root); absolute paths as given.
    """
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


def resolve_input(name: str) -> str:
    """A model / dataset argument that may be a relative path: the root-relative path when one
    exists there, else `name` unchanged (a hub name such as "gpt2", or "storyworld")."""
    if not name or Path(name).is_absolute():
        return name
    p = ROOT / name
    return str(p) if p.exists() else name


def quoted_summary(run: str, parameter: str, takes: str = "") -> dict | None:
    """The summary.json of the reference run a notebook quotes, or None after printing why not.

    run: the notebook parameter's value, a root-relative run folder such as
        "outputs/reference/05_pareto/paper", or "" for none (the gpt2 / gemma2 presets, which
        have no reference sweep); parameter: that parameter's name, for the message; takes: how
        long `make reference` needs to make it, for the message. A notebook passes the run as a
        parameter so its config.json records what it read (docs/reference_runs.md).
    """
    if not run:
        print(f"{parameter} is empty: no reference run to quote")
        return None
    path = resolve(run) / "summary.json"
    if not path.exists():
        print(f"{path.parent} is not here; `make reference` makes it"
              + (f" ({takes})" if takes else ""))  # fmt: skip
        return None
    return json.loads(path.read_text())


def notebook_out_dir(out_dir: str | Path) -> Path:
    """The folder a notebook writes to, from its `out_dir` parameter, created.

    `{time}` is replaced by the current time (`YYYYmmdd-HHMMSS`): a notebook's default, e.g.
    `outputs/05_pareto/interactive-{time}`, gives every interactive run a fresh folder, so a
    re-run never meets training's refusal to overwrite a finished `out_dir`. A relative path is
    taken from the repository root. A folder holding a completed `saelab.runs` run is refused:
    nothing run by hand writes into a finished papermill run.
    """
    out = resolve(str(out_dir).replace("{time}", time.strftime("%Y%m%d-%H%M%S")))
    if run_status(out) == "completed":
        raise RunExists(
            f"{out} holds a completed run of saelab.runs; a notebook run by hand does not write "
            "into it. Leave out_dir at its default (a fresh interactive-<time> folder) or choose "
            "another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def say(*parts) -> None:
    """One progress line of the runner, time-stamped, flushed at once."""
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


def git_state(root: Path = ROOT) -> dict:
    """`{"sha": ..., "dirty": bool}` of the repository, or Nones outside a git checkout.

    `dirty`: a tracked or untracked file differs from the commit, outside `outputs/` (run
    folders, `outputs/reference/` included, are results, not source: `make reference` writes
    one reference run after another and each must still record a clean tree).
    """
    try:
        sha = subprocess.check_output(
            ["git", "rev-parse", "HEAD"], cwd=root, text=True, stderr=subprocess.DEVNULL
        ).strip()
        status = ["git", "status", "--porcelain", "--", ".", ":(exclude)outputs"]
        dirty = bool(subprocess.check_output(status, cwd=root, text=True).strip())
        return {"sha": sha, "dirty": dirty}
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"sha": None, "dirty": None}


def versions() -> dict:
    """Installed versions of the packages a run depends on."""
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def parse_value(text: str):
    """A parameter value from YAML text; `5e-4` is a float (YAML 1.1 would keep a string)."""

    if not text.strip():
        return text  # an empty string stays one (YAML would read it as null)
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_preset(notebook: str, preset: str | None) -> dict:
    """Parameters of `notebooks/params/<notebook>.<preset>.yaml` ({} for no preset)."""
    if not preset:
        return {}

    path = NOTEBOOKS / "params" / f"{notebook}.{preset}.yaml"
    if not path.exists():
        have = sorted(p.name for p in (NOTEBOOKS / "params").glob(f"{notebook}.*.yaml"))
        raise FileNotFoundError(f"no preset {preset!r} for {notebook}: {path} missing; have {have}")
    raw = yaml.safe_load(path.read_text()) or {}
    return {k: parse_value(v) if isinstance(v, str) else v for k, v in raw.items()}


def paired_notebook(notebook: str) -> Path:
    """The `.ipynb` of `notebooks/<notebook>.py`, (re)written by jupytext when stale."""

    py, ipynb = NOTEBOOKS / f"{notebook}.py", NOTEBOOKS / f"{notebook}.ipynb"
    if not py.exists():
        have = sorted(p.stem for p in NOTEBOOKS.glob("[0-9]*.py"))
        raise FileNotFoundError(f"no notebook {notebook!r} in {NOTEBOOKS}; have {have}")
    if not ipynb.exists() or ipynb.stat().st_mtime < py.stat().st_mtime:
        jupytext.write(jupytext.read(py), ipynb)
    return ipynb


class RunExists(FileExistsError):
    """The run folder holds a completed run; pass force=True (`--force`) to replace it."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM during a run, raised like Ctrl-C so the run is recorded as interrupted."""


def run_status(folder: str | Path) -> str | None:
    """The recorded status of a run folder: running, completed, failed, interrupted, or None.

    Folders from before statuses were recorded count as completed when they hold the summary
    their notebook writes last (`summary.json` or `metrics.json`).
    """
    folder = Path(folder)
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        status = json.loads(cfg.read_text()).get("status")
    except json.JSONDecodeError:
        return "failed"
    if status is None and any((folder / f).exists() for f in ("summary.json", "metrics.json")):
        return "completed"
    return status


def _set_status(out: Path, config: dict, status: str, **extra) -> None:
    config.update(status=status, **extra)
    text = json.dumps(config, indent=2) + "\n"
    write_atomic(out / "config.json", lambda tmp: tmp.write_text(text))


def _move_aside(out: Path, status: str | None) -> Path:
    """Rename a run folder to `<run-id>.<status>-<time>` beside it, so nothing in it is lost."""
    aside = out.with_name(f"{out.name}.{status or 'old'}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.rename(aside)
    return aside


def run_notebook(
    notebook: str,
    params: dict | None = None,
    preset: str | None = None,
    run_id: str | None = None,
    out_root: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Execute `notebook` with `preset` then `params` into a fresh run folder; return it.

    `config.json` records the run's `status`: running, then completed, failed (with the
    exception) or interrupted (Ctrl-C or SIGTERM). A folder that holds a completed run is
    refused unless `force`; a folder that holds anything else, or a forced one, is first moved
    aside to `<run-id>.<status>-<time>` (and the move is printed), so nothing is lost.
    """

    source = paired_notebook(notebook)  # fails before any folder is made for a bad name
    preset_values = load_preset(notebook, preset)
    # checked before the run folder exists: a typo or a wrong type costs nothing
    declared = notebook_parameters(notebook)
    where = NOTEBOOKS / "params" / f"{notebook}.{preset}.yaml"
    check_parameters(notebook, preset_values, declared, f" (from preset {where})")
    check_parameters(notebook, params or {}, declared)
    params = preset_values | (params or {})
    run_id = check_run_id(run_id or time.strftime("%Y%m%d-%H%M%S"))
    out = Path(out_root or ROOT / "outputs") / notebook / run_id
    with writer_lock(out, "run"):  # one runner per run folder (core/locks.py)
        return _execute(notebook, source, params, preset, run_id, out, force)


def _execute(notebook: str, source: Path, params: dict, preset: str | None, run_id: str,
             out: Path, force: bool) -> Path:  # fmt: skip
    """`run_notebook` under its folder's lock: set the folder up, run papermill, record."""
    status = run_status(out)
    if status == "completed" and not force:
        raise RunExists(
            f"{out} holds a completed run; pass --force (force=True) to replace it (the old one "
            "is moved aside, not deleted), or choose another --run-id"
        )
    if out.exists() and status is None and any(out.iterdir()):
        raise RunExists(
            f"{out} holds files no saelab run wrote (no config.json); the runner moves aside "
            "only its own runs: move them, or choose another --run-id"
        )
    if out.exists() and status is not None:
        aside = _move_aside(out, status)
        print(f"run folder {out} held a {status or 'partial'} run; moved it to {aside}")
    out.mkdir(parents=True, exist_ok=True)  # papermill needs the folder to exist
    params["out_dir"] = str(out)
    config = dict(notebook=notebook, preset=preset, run_id=run_id, parameters=params)
    config |= dict(git=git_state(), versions=versions(), started=time.strftime("%FT%T"))
    _set_status(out, config, "running")

    def on_term(signum, frame):
        raise Interrupted(f"signal {signum}")

    old_term = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    old_env = {k: os.environ.get(k) for k in ("TQDM_DISABLE", HEARTBEAT_ENV)}
    os.environ["TQDM_DISABLE"] = "1"  # the kernel inherits it: no bar frozen in the .ipynb
    os.environ[HEARTBEAT_ENV] = str(0.8 * HEARTBEAT_S)  # and prints progress lines instead
    t0 = time.time()
    say(f"{notebook}: started ({f'preset {preset}, ' if preset else ''}run folder {out})")
    watch = Watchdog(notebook)
    try:
        # what the kernel prints goes straight to our stdout / stderr as it runs
        pm.execute_notebook(
            str(source),
            str(out / "notebook.ipynb"),
            parameters=params,
            cwd=str(ROOT),
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            stdout_file=watch.stream(sys.stdout),
            stderr_file=watch.stream(sys.stderr),
        )
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM through on_term
        _set_status(out, config, "interrupted", error=f"{type(e).__name__}: {e}",
                    ended=time.strftime("%FT%T"))  # fmt: skip
        say(f"{notebook}: interrupted after {_took(t0)} ({out})")
        raise
    except BaseException as e:
        _set_status(out, config, "failed", error=f"{type(e).__name__}: {str(e)[-2000:]}",
                    ended=time.strftime("%FT%T"))  # fmt: skip
        say(f"{notebook}: failed after {_took(t0)}: {type(e).__name__} (see {out}/notebook.ipynb)")
        raise
    finally:
        watch.stop()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    _set_status(out, config, "completed", ended=time.strftime("%FT%T"))
    say(f"{notebook}: completed in {_took(t0)} ({out})")
    return out


# Progress lines at least this often: the kernel's loops print them (`core/progress.py`), and the
# runner says that a notebook is still working when it has printed nothing for this long.
HEARTBEAT_S = 50


class Watchdog:
    """Notices the kernel's silence: the streams it writes to go through `stream`, and a thread
    prints "still running" after `HEARTBEAT_S` seconds without a line, so a long cell that has
    no progress lines of its own (a bootstrap, a plot) does not look like a hang."""

    def __init__(self, notebook: str):
        self.notebook, self.last, self.t0 = notebook, time.time(), time.time()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def stream(self, out):
        watch = self

        class Noted:
            def write(self, text):
                watch.last = time.time()
                return out.write(text)

            def __getattr__(self, name):
                return getattr(out, name)

        return Noted()

    def _watch(self) -> None:
        while not self.done.wait(1.0):
            quiet = time.time() - self.last
            if quiet >= HEARTBEAT_S:
                say(f"{self.notebook}: still running ({_took(self.t0)} in; no output for "
                    f"{quiet:.0f} s)")  # fmt: skip
                self.last = time.time()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=2)


def _took(t0: float) -> str:
    s = time.time() - t0
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:02.0f} s"


def _main_thread() -> bool:

    return threading.current_thread() is threading.main_thread()


def notebook_parameters(notebook: str) -> dict[str, dict]:
    """The parameters of `notebook`'s cell tagged `parameters`, in papermill's shape:
    `{name: {"name", "inferred_type_name", "default", "help"}}` (the annotation's text, e.g.
    "int" or "tuple[str, ...]", "None" when unannotated; the default as written; the line's
    trailing comment). Read with `ast`, not `papermill.inspect_notebook`, whose line regex skips
    annotations such as `int | None` and `tuple[str, ...]` without a word."""

    cells = jupytext.read(NOTEBOOKS / f"{notebook}.py").cells
    src = next(("".join(c.source) for c in cells if "parameters" in c.metadata.get("tags", [])), "")
    lines, out = src.splitlines(), {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.AnnAssign):
            target = node.target
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        else:
            continue
        if not isinstance(target, ast.Name) or node.value is None:
            continue
        ann = getattr(node, "annotation", None)
        rest = lines[node.end_lineno - 1][node.end_col_offset :].strip()
        out[target.id] = {
            "name": target.id,
            "inferred_type_name": ast.get_source_segment(src, ann) if ann else "None",
            "default": ast.get_source_segment(src, node.value),
            "help": rest[1:].strip() if rest.startswith("#") else "",
        }
    return out


_SIMPLE = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),  # int is a float
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list | tuple),  # YAML has no tuples; papermill writes either
    "tuple": lambda v: isinstance(v, list | tuple),
    "dict": lambda v: isinstance(v, dict),
    "None": lambda v: v is None,
}


def type_ok(value, annotation: str) -> bool:
    """Whether `value` fits a parameter annotation written as text ("int", "float | None",
    "list[int]", "tuple[int, ...]", 'Literal["a", "b"]'); an annotation this does not know
    accepts anything (papermill itself checks no types)."""
    try:
        return _fits(value, ast.parse(annotation, mode="eval").body)
    except SyntaxError:
        return True


def _fits(value, ann: ast.expr) -> bool:
    if isinstance(ann, ast.Constant):
        if isinstance(ann.value, str):  # a quoted annotation: 'float'
            return type_ok(value, ann.value)
        return value is None if ann.value is None else True
    if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):  # int | None
        return _fits(value, ann.left) or _fits(value, ann.right)
    if isinstance(ann, ast.Name):  # int, str, ...
        check = _SIMPLE.get(ann.id)
        return check(value) if check else True
    if isinstance(ann, ast.Subscript) and isinstance(ann.value, ast.Name):
        base = ann.value.id
        args = list(ann.slice.elts) if isinstance(ann.slice, ast.Tuple) else [ann.slice]
        if base == "Literal":
            return any(isinstance(a, ast.Constant) and a.value == value for a in args)
        if base in ("Optional", "Union"):
            return (base == "Optional" and value is None) or any(_fits(value, a) for a in args)
        if base in ("list", "tuple") and _SIMPLE[base](value):
            if base == "tuple" and not (len(args) == 2 and _is_ellipsis(args[1])):
                return len(value) == len(args) and all(map(_fits, value, args))
            return all(_fits(v, args[0]) for v in value)
        check = _SIMPLE.get(base)
        return check(value) if check else True
    return True


def _is_ellipsis(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is Ellipsis


def _expected(p: dict) -> str | None:
    """The annotation to check a value of parameter `p` against: its own, else the type of its
    literal default; None when neither says anything."""
    if p["inferred_type_name"] != "None":
        return p["inferred_type_name"]
    try:
        default = ast.literal_eval(p["default"])
    except (ValueError, SyntaxError):  # not a literal: nothing to infer a type from
        return None
    return None if default is None else type(default).__name__


def check_parameters(notebook: str, values: dict, declared: dict, origin: str = "") -> None:
    """Raise TypeError for a value that is not a parameter of `notebook` (`declared`:
    `notebook_parameters`) or whose type does not fit its annotation."""

    for name, value in values.items():
        if name == "out_dir":  # set by run_notebook itself
            continue
        if name not in declared:
            close = difflib.get_close_matches(name, list(declared), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            valid = ", ".join(declared) or "none (it has no cell tagged 'parameters')"
            raise TypeError(f"notebook {notebook!r} has no parameter {name!r}{hint}{origin}; "
                            f"its parameters are: {valid}")  # fmt: skip
        want = _expected(declared[name])
        if want is not None and not type_ok(value, want):
            p = declared[name]
            line = f"{name}: {p['inferred_type_name']} = {p['default']}"
            raise TypeError(
                f"parameter {name!r} of notebook {notebook!r} expects {want}, got {value!r} "
                f"({type(value).__name__}){origin}; declared as `{line}`"
            )
        refusal = library_refusal(name, value)
        if refusal:
            raise ValueError(f"parameter {name!r} of notebook {notebook!r}{origin}: {refusal}")


# Notebook parameters that reach TrainConfig / SAEConfig under the same name; their values are
# checked by the library's own validation before a kernel starts (a notebook's own asserts
# still run inside it).
TRAIN_FIELDS = ("lr", "warmup", "min_lr_frac", "grad_clip", "batch_size", "n_tokens",
                "eval_tokens", "alive_tokens", "dead_tokens", "seed", "b_dec_init")  # fmt: skip
SAE_FIELDS = {"k": "topk", "dict_ratio": "relu"}  # field -> an architecture that has it


def library_refusal(name: str, value) -> str | None:
    """The library's message refusing `value` for a parameter named like a TrainConfig or SAE
    config field, or None when it is accepted (or the name is no such field)."""
    from saelab.core.config import TrainConfig
    from saelab.core.models import check_dtype
    from saelab.core.sae import SAEConfig

    try:
        if name == "model_dtype":
            check_dtype(value)
        elif name in TRAIN_FIELDS:
            TrainConfig(**{name: value})
        elif name in SAE_FIELDS:
            SAEConfig.create(architecture=SAE_FIELDS[name], **{name: value})
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def grid(**axes) -> list[dict]:
    """Cartesian product of parameter lists: grid(a=[1, 2], b=[3]) -> [{a:1,b:3}, {a:2,b:3}]."""

    for name, values in axes.items():
        if not isinstance(values, list | tuple) or not values:
            raise ValueError(f"grid axis {name!r} needs a non-empty list of values, e.g. -g "
                             f"{name} '[1, 2]'; got {values!r}")  # fmt: skip
    keys = list(axes)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*axes.values())]


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+,@-]{0,199}")


def check_run_id(run_id: str) -> str:
    """`run_id` if it is a name: one folder name (letters, digits and `. _ = + , @ -`, starting
    with a letter or digit, at most 200 characters); else a ValueError saying what is valid. A
    run id is never a path: no separators, no `.` or `..`, nothing absolute."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run id {run_id!r} is not a name: use one folder name of letters, digits and "
            "'. _ = + , @ -', starting with a letter or digit (e.g. 'ref', 'lr=0.01_seed=0'); "
            "it is never a path"
        )
    return run_id


def run_id_of(params: dict) -> str:
    """A readable, filesystem-safe run id from parameter values, e.g. "loss=e2e_sparsity=3.0"."""
    parts = [f"{k}={v}" for k, v in params.items()]
    name = "_".join(parts).replace("/", "-").replace("+", "p").replace(" ", "")
    return re.sub(r"[^A-Za-z0-9._=+,@-]", "-", name)  # a name (`check_run_id`); clashes refused


def sweep(
    notebook: str,
    points: list[dict],
    preset: str | None = None,
    out_root: str | Path | None = None,
    processes: int = 1,
    prefix: str = "",
) -> list[Path]:
    """Run `notebook` once per parameter dict in `points` (optionally in parallel processes).

    A point whose folder holds a completed run with the same recorded preset and parameters is
    skipped (and said so), so an interrupted sweep picks up where it stopped; a completed run
    with other parameters is refused by `run_notebook` rather than mixed in.
    """
    out_root = Path(out_root or ROOT / "outputs")
    preset_values = load_preset(notebook, preset)
    names = [check_run_id(prefix + run_id_of(p)) for p in points]
    same = sorted({n for n in names if names.count(n) > 1})
    if same:
        clash = [p for p, n in zip(points, names, strict=True) if n in same]
        raise ValueError(
            f"sweep points {clash} map to the same run folder(s) {same}; make the values "
            "distinct (a run id keeps only letters, digits and '._=+,@-')"
        )
    jobs = []
    for p in points:
        out = Path(out_root) / notebook / (prefix + run_id_of(p))
        if run_status(out) == "completed" and _same_run(out, preset, preset_values | p):
            print(f"skipped {out}: completed with preset {preset!r} and the same parameters")
            continue
        jobs.append((notebook, p, preset, prefix + run_id_of(p), out_root))
    if processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(processes) as ex:
            list(ex.map(_run_job, jobs))
    else:
        for job in jobs:
            _run_job(job)
    return [Path(out_root) / notebook / (prefix + run_id_of(p)) for p in points]


def _same_run(out: Path, preset: str | None, params: dict) -> bool:
    """Whether `out/config.json` records `preset` and `params` (besides `out_dir`)."""
    try:
        cfg = json.loads((out / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    recorded = {k: v for k, v in cfg.get("parameters", {}).items() if k != "out_dir"}
    return cfg.get("preset") == preset and recorded == json.loads(json.dumps(params))


def _run_job(job) -> Path:
    notebook, params, preset, run_id, out_root = job
    return run_notebook(notebook, params, preset, run_id, out_root)


def collect(folder: str | Path, name: str = "summary.json"):
    """One pandas DataFrame row per run under `folder`: its parameters and its `name` metrics."""

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"no folder {folder} to collect runs from")
    rows = []
    for cfg_path in sorted(Path(folder).rglob("config.json")):
        run = cfg_path.parent
        metrics = run / name
        if not metrics.exists() or run_status(run) != "completed":
            continue  # unfinished, failed, or moved aside: not a result
        try:
            cfg, values = json.loads(cfg_path.read_text()), json.loads(metrics.read_text())
        except (OSError, json.JSONDecodeError) as e:  # one damaged run: say so, keep the rest
            warnings.warn(f"collect: skipped {run} ({name} or config.json unreadable: {e})",
                          stacklevel=2)  # fmt: skip
            continue
        rows.append({"run_id": cfg.get("run_id", run.name), **cfg.get("parameters", {}),
                     **values})  # fmt: skip
    return pd.DataFrame(rows)


# The feature studies of the main job, run on its 05_pareto SAEs (07 trains its own seeds).
STUDIES = ("06_feature_browser", "07_geometry", "08_steering", "09_ground_truth", "10_downstream")


def study_preset(notebook: str, preset: str) -> str:
    """`preset` where `notebook` has a preset file of that name, else "default"."""
    return preset if (NOTEBOOKS / "params" / f"{notebook}.{preset}.yaml").is_file() else "default"


def main_job(
    run_id: str | None = None,
    studies=STUDIES,
    out_root: str | Path | None = None,
    overrides: dict[str, dict] | None = None,
    preset: str = "default",
) -> Path:
    """The main job: `05_pareto` at `preset` (`default`: the smoke-scale preview of `make run`;
    `paper`: the long reference sweep), then each study notebook on that run's SAEs, at its
    own preset of that name if it has one (else `default`), under the same run id; `STUDIES.md`
    in the 05 folder links them all.

    `overrides` maps a notebook name to parameters that replace its preset's (the tests use it
    for smoke sizes).
    """
    overrides = overrides or {}
    t0 = time.time()
    say(f"main job: 05_pareto, then {len(studies)} studies ({', '.join(studies) or 'none'})")
    out = run_notebook("05_pareto", overrides.get("05_pareto"), preset, run_id, out_root)
    lines = [f"# Studies of the SAEs of this run ({out.name})", ""]
    done = [out]
    for nb in studies:
        params = dict(overrides.get(nb, {}))
        if "sae_run" in notebook_parameters(nb):
            params["sae_run"] = str(out)
        study = run_notebook(nb, params, study_preset(nb, preset), out.name, out_root)
        done.append(study)
        lines.append(f"- [{nb}](../../{nb}/{study.name}/notebook.ipynb)")
    (out / "STUDIES.md").write_text("\n".join(lines) + "\n")
    say(f"main job: completed in {_took(t0)}; results:")
    for d in done:
        print(f"  {d}/notebook.ipynb  (figures/, summary.json)", flush=True)
    print(f"  index of the studies: {out / 'STUDIES.md'}", flush=True)
    print(headline(out, preset), flush=True)
    return out


def headline(out: Path, preset: str = "default") -> str:
    """What to open first, and this run's L0(e2e) / L0(local) beside the reference runs' (the
    same preset's, `outputs/reference/05_pareto/ref` for `default`, and the paper sweep)."""

    def ratio(folder: Path) -> str:
        try:
            s = json.loads((folder / "summary.json").read_text())
            r = s["l0_ratio"]["linear"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError):
            return "not available"
        seeds = f"{r['n']} seed{'s' * (r['n'] != 1)}"
        ci = f" [{r['lo']:.2f}, {r['hi']:.2f}]" if r["n"] > 1 else ""
        return f"{r['mean']:.2f}{ci} ({seeds}, CE +{s['target_ce_increase']:.3g})"

    ref = ROOT / "outputs" / "reference" / "05_pareto"
    same = ref / ("ref" if preset == "default" else preset)
    lines = [
        f"Open first: {out}/notebook.ipynb (the Pareto comparison), then {out}/STUDIES.md.",
        f"Headline, L0(e2e) / L0(local) at matched CE increase: this run {ratio(out)};",
        f"  reference run {same.relative_to(ROOT)}: {ratio(same)}; the 2M-token paper sweep "
        f"{(ref / 'paper').relative_to(ROOT)}: {ratio(ref / 'paper')}; Braun et al.: 0.40.",
    ]
    if preset == "default":
        lines.append("  This is a preview (500k tokens per SAE, one seed, not converged): "
                     "it shows the method, not the paper's number.")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m saelab.runs", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one notebook")
    r.add_argument("notebook")
    r.add_argument("--preset")
    r.add_argument("--run-id")
    r.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "YAML_VALUE"))
    r.add_argument("--force", action="store_true", help="replace a completed run (moved aside)")
    sw = sub.add_parser("sweep", help="run a notebook over a parameter grid")
    sw.add_argument("notebook")
    sw.add_argument("--preset")
    sw.add_argument("--processes", type=int, default=1)
    sw.add_argument("-g", nargs=2, action="append", default=[], metavar=("NAME", "YAML_LIST"))
    co = sub.add_parser("collect", help="print the metrics of all runs under a folder")
    co.add_argument("folder")
    mj = sub.add_parser("main", help="the main job on the embedded default (05, then 06-10)")
    mj.add_argument("--run-id")
    mj.add_argument("--preset", default="default", help="05's preset (paper: converged, slow)")
    mj.add_argument("--no-studies", action="store_true", help="only notebook 05_pareto")
    ap.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    a = ap.parse_args(argv)
    try:
        return _main(a)
    except (KeyboardInterrupt, Exception) as e:
        if a.debug:
            raise
        msg = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        print(f"error: {msg}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 1


def _main(a) -> int:
    if a.cmd == "collect":
        print(collect(a.folder).to_string())
        return 0
    if a.cmd == "sweep":
        axes = {k: parse_value(v) for k, v in a.g}
        outs = sweep(a.notebook, grid(**axes), a.preset, processes=a.processes)
        print("\n".join(map(str, outs)))
        return 0
    if a.cmd == "main":
        # The main job: both papers' comparisons on the embedded default, then the studies.
        out = main_job(a.run_id, () if a.no_studies else STUDIES, preset=a.preset)
    else:
        params = {k: parse_value(v) for k, v in a.p}
        out = run_notebook(a.notebook, params, a.preset, a.run_id, force=a.force)
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
