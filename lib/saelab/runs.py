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


def load_preset(notebook: str, preset: str | None) -> dict:
    """Parameters of `notebooks/params/<notebook>.<preset>.yaml` ({} for no preset)."""
    if not preset:
        return {}
    import yaml

    path = NOTEBOOKS / "params" / f"{notebook}.{preset}.yaml"
    if not path.exists():
        have = sorted(p.name for p in (NOTEBOOKS / "params").glob(f"{notebook}.*.yaml"))
        raise FileNotFoundError(f"no preset {preset!r} for {notebook}: {path} missing; have {have}")
    return yaml.safe_load(path.read_text()) or {}


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
    out_root: str | Path = ROOT / "outputs",
) -> Path:
    """Execute `notebook` with `preset` then `params` into a fresh run folder; return it."""
    import papermill as pm

    params = load_preset(notebook, preset) | (params or {})
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
    out = Path(out_root) / notebook / run_id
    out.mkdir(parents=True, exist_ok=True)  # papermill needs the folder to exist
    params["out_dir"] = str(out)
    config = dict(notebook=notebook, preset=preset, run_id=run_id, parameters=params)
    config |= dict(git=git_state(), versions=versions(), started=time.strftime("%FT%T"))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    pm.execute_notebook(
        str(paired_notebook(notebook)),
        str(out / "notebook.ipynb"),
        parameters=params,
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
        log_output=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m saelab.runs", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one notebook")
    r.add_argument("notebook")
    r.add_argument("--preset")
    r.add_argument("--run-id")
    r.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "YAML_VALUE"))
    sub.add_parser("main", help="the main job on the embedded default")
    a = ap.parse_args(argv)
    if a.cmd == "main":
        # Until the SAE comparison notebooks exist, the main job is notebook 00's smoke run.
        out = run_notebook("00_storyworld", run_id="main")
    else:
        import yaml

        params = {k: yaml.safe_load(v) for k, v in a.p}
        out = run_notebook(a.notebook, params, a.preset, a.run_id)
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
