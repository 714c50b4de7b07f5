"""Bring a reference run's Markdown up to date with its notebook when only the Markdown changed.

A "How to read it" is written around a run's numbers, so it is written after the run, and the
executed copy then shows the older text (`check` lists it under "prose changed"). Rerunning
would cost hours for text alone and can print other timings than the ones the text describes.
When the run's cells line up one to one with the notebook's (same number, same kinds, in order)
and every code cell is the source's (`freshness.code_cells`), the outputs are what the current
code printed; only the text a person wrote around them is older. `refresh` then copies the
notebook's Markdown cells into the executed `notebook.ipynb`, leaves every code cell and output
as it ran, and appends to `prose.json` beside it the commit the text comes from and the text it
replaced, so that nothing is lost and the page says what happened. It refuses a dirty tree (the
text must be a commit's), a run that did not complete, and any code difference: rerun those.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat

from saelab import runs
from saelab_lab.freshness import _config, code_cells, markdown_cells


@dataclass
class Refreshed:
    """What `refresh` did to one run folder."""

    folder: Path
    cells: list[int]  # Markdown cells replaced (0-based, among the executed copy's cells)
    sha: str  # the commit the new text is from


def _normal(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.splitlines()).rstrip()


def refresh(folder: Path, root: Path = runs.ROOT) -> Refreshed:
    """Copy `notebooks/<nb>.py`'s Markdown into `folder/notebook.ipynb` (see the module)."""
    git = runs.git_state(root)
    if git["dirty"] is not False:
        raise RuntimeError(f"the git tree at {root} is dirty (or not a git checkout): commit the "
                           "text first; prose.json records the commit it comes from")  # fmt: skip
    cfg, err = _config(folder)
    if cfg is None or cfg.get("status") != "completed":
        status = err or f"status {cfg.get('status')!r}"
        raise RuntimeError(f"{folder}: not a completed run ({status}); rerun it")
    notebook = folder.parent.name
    ran = nbformat.read(folder / "notebook.ipynb", as_version=4)
    now = jupytext.read(root / "notebooks" / f"{notebook}.py")
    if code_cells(ran) != code_cells(now):
        raise RuntimeError(f"{folder}: notebooks/{notebook}.py's code changed since this run, "
                           "so its outputs may not be what it prints now: rerun it")  # fmt: skip
    kept = [(i, c) for i, c in enumerate(ran.cells)
            if "injected-parameters" not in c.metadata.get("tags", [])]  # fmt: skip
    kinds_ran, kinds_now = [c.cell_type for _, c in kept], [c.cell_type for c in now.cells]
    if kinds_ran != kinds_now:
        raise RuntimeError(f"{folder}: its cells do not line up with notebooks/{notebook}.py "
                           f"({len(kinds_ran)} cells ran, the source has {len(kinds_now)}, or "
                           "a Markdown cell was added, removed or moved): rerun it")  # fmt: skip
    replaced = []
    for (i, cell), new in zip(kept, now.cells, strict=True):
        if cell.cell_type == "markdown" and _normal(cell.source) != _normal(new.source):
            replaced.append(dict(cell=i, was=cell.source))
            cell.source = new.source
    if replaced:
        log_file = folder / "prose.json"
        log = json.loads(log_file.read_text()) if log_file.exists() else []
        log.append(dict(sha=git["sha"], date=datetime.datetime.now().isoformat(timespec="seconds"),
                        run_sha=(cfg.get("git") or {}).get("sha"), replaced=replaced))  # fmt: skip
        nbformat.write(ran, folder / "notebook.ipynb")
        log_file.write_text(json.dumps(log, indent=1) + "\n")
    assert markdown_cells(ran) == markdown_cells(now)
    return Refreshed(folder, [r["cell"] for r in replaced], git["sha"])
