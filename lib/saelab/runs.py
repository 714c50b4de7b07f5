"""Reproducible notebook runs: papermill executes a notebook into `outputs/<notebook>/<run-id>/`.

A run folder holds the executed `notebook.ipynb`, `config.json` (parameters, git SHA and dirty
flag, package versions) and whatever the notebook writes there (it gets the folder as `out_dir`).

    python -m saelab.runs run 00_storyworld --preset full --run-id storyworld-v1
    python -m saelab.runs main          # the main job on the embedded default (`make run`)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # repo root (lib/saelab/runs.py)
NOTEBOOKS = ROOT / "notebooks"
PACKAGES = ("saelab", "torch", "nnsight", "transformers", "datasets", "papermill", "jupytext")


def git_state(root: Path = ROOT) -> dict:
    """`{"sha": ..., "dirty": bool}` of the repository, or Nones outside a git checkout."""
    try:
        sha = subprocess.check_output(
            ["git", "rev-parse", "HEAD"], cwd=root, text=True, stderr=subprocess.DEVNULL
        ).strip()
        dirty = bool(
            subprocess.check_output(["git", "status", "--porcelain"], cwd=root, text=True).strip()
        )
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
    import yaml

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
    import yaml

    path = NOTEBOOKS / "params" / f"{notebook}.{preset}.yaml"
    if not path.exists():
        have = sorted(p.name for p in (NOTEBOOKS / "params").glob(f"{notebook}.*.yaml"))
        raise FileNotFoundError(f"no preset {preset!r} for {notebook}: {path} missing; have {have}")
    raw = yaml.safe_load(path.read_text()) or {}
    return {k: parse_value(v) if isinstance(v, str) else v for k, v in raw.items()}


def paired_notebook(notebook: str) -> Path:
    """The `.ipynb` of `notebooks/<notebook>.py`, (re)written by jupytext when stale."""
    import jupytext

    py, ipynb = NOTEBOOKS / f"{notebook}.py", NOTEBOOKS / f"{notebook}.ipynb"
    if not py.exists():
        have = sorted(p.stem for p in NOTEBOOKS.glob("[0-9]*.py"))
        raise FileNotFoundError(f"no notebook {notebook!r} in {NOTEBOOKS}; have {have}")
    if not ipynb.exists() or ipynb.stat().st_mtime < py.stat().st_mtime:
        jupytext.write(jupytext.read(py), ipynb)
    return ipynb


def run_notebook(
    notebook: str,
    params: dict | None = None,
    preset: str | None = None,
    run_id: str | None = None,
    out_root: str | Path | None = None,
) -> Path:
    """Execute `notebook` with `preset` then `params` into a fresh run folder; return it."""
    import papermill as pm

    source = paired_notebook(notebook)  # fails before any folder is made for a bad name
    params = load_preset(notebook, preset) | (params or {})
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
    out = Path(out_root or ROOT / "outputs") / notebook / run_id
    out.mkdir(parents=True, exist_ok=True)  # papermill needs the folder to exist
    params["out_dir"] = str(out)
    config = dict(notebook=notebook, preset=preset, run_id=run_id, parameters=params)
    config |= dict(git=git_state(), versions=versions(), started=time.strftime("%FT%T"))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    pm.execute_notebook(
        str(source),
        str(out / "notebook.ipynb"),
        parameters=params,
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
        log_output=True,
    )
    return out


def grid(**axes) -> list[dict]:
    """Cartesian product of parameter lists: grid(a=[1, 2], b=[3]) -> [{a:1,b:3}, {a:2,b:3}]."""
    import itertools

    keys = list(axes)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*axes.values())]


def run_id_of(params: dict) -> str:
    """A readable, filesystem-safe run id from parameter values, e.g. "loss=e2e_sparsity=3.0"."""
    parts = [f"{k}={v}" for k, v in params.items()]
    return "_".join(parts).replace("/", "-").replace("+", "p").replace(" ", "")


def sweep(
    notebook: str,
    points: list[dict],
    preset: str | None = None,
    out_root: str | Path | None = None,
    processes: int = 1,
    prefix: str = "",
) -> list[Path]:
    """Run `notebook` once per parameter dict in `points` (optionally in parallel processes).

    A run whose folder already holds `summary.json` or `metrics.json` is finished and skipped,
    so an interrupted sweep picks up where it stopped.
    """
    out_root = Path(out_root or ROOT / "outputs")
    jobs = []
    for p in points:
        out = Path(out_root) / notebook / (prefix + run_id_of(p))
        if not any((out / f).exists() for f in ("summary.json", "metrics.json")):
            jobs.append((notebook, p, preset, prefix + run_id_of(p), out_root))
    if processes > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(processes) as ex:
            list(ex.map(_run_job, jobs))
    else:
        for job in jobs:
            _run_job(job)
    return [Path(out_root) / notebook / (prefix + run_id_of(p)) for p in points]


def _run_job(job) -> Path:
    notebook, params, preset, run_id, out_root = job
    return run_notebook(notebook, params, preset, run_id, out_root)


def collect(folder: str | Path, name: str = "summary.json"):
    """One pandas DataFrame row per run under `folder`: its parameters and its `name` metrics."""
    import pandas as pd

    rows = []
    for cfg_path in sorted(Path(folder).rglob("config.json")):
        run = cfg_path.parent
        metrics = run / name
        if not metrics.exists():
            continue
        cfg = json.loads(cfg_path.read_text())
        rows.append({"run_id": cfg.get("run_id", run.name), **cfg.get("parameters", {}),
                     **json.loads(metrics.read_text())})  # fmt: skip
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m saelab.runs", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one notebook")
    r.add_argument("notebook")
    r.add_argument("--preset")
    r.add_argument("--run-id")
    r.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "YAML_VALUE"))
    sw = sub.add_parser("sweep", help="run a notebook over a parameter grid")
    sw.add_argument("notebook")
    sw.add_argument("--preset")
    sw.add_argument("--processes", type=int, default=1)
    sw.add_argument("-g", nargs=2, action="append", default=[], metavar=("NAME", "YAML_LIST"))
    co = sub.add_parser("collect", help="print the metrics of all runs under a folder")
    co.add_argument("folder")
    sub.add_parser("main", help="the main job on the embedded default")
    a = ap.parse_args(argv)
    if a.cmd == "collect":
        print(collect(a.folder).to_string())
        return 0
    if a.cmd == "sweep":
        axes = {k: parse_value(v) for k, v in a.g}
        outs = sweep(a.notebook, grid(**axes), a.preset, processes=a.processes)
        print("\n".join(map(str, outs)))
        return 0
    if a.cmd == "main":
        # The main job: both papers' comparisons on the embedded default (notebook 05).
        out = run_notebook("05_pareto", preset="default")
    else:
        params = {k: parse_value(v) for k, v in a.p}
        out = run_notebook(a.notebook, params, a.preset, a.run_id)
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
