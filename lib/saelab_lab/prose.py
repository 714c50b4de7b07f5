"""Bring a reference run's Markdown up to date with its notebook when only the Markdown changed.

A "How to read it" is written around a run's numbers, so it is written after the run, and the
executed copy then shows the older text (`check` lists it under "prose changed"). Rerunning
would cost hours for text alone and can print other timings than the ones the text describes.
When the run's cells line up one to one with the notebook's (same number, same kinds, in order)
and every code cell is the source's (`freshness.code_cells`), the outputs are what the current
code printed; only the text a person wrote around them is older. `refresh` then copies the
notebook's Markdown cells into the executed `notebook.ipynb`, leaves every code cell and output
as it ran, and appends to `prose.json` beside it the commit the text comes from and the text it
replaced, so that nothing is lost; the notebook's metadata (`saelab.prose`) and `check` say
that the text is newer than the run. It refuses a dirty tree (the text must be a commit's), a
run that `check` finds a problem with (not completed, a dirty tree, an input run made again
after it), and any code difference: rerun those. It cannot see a change in the library the
notebook imports; neither can `check`.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat

from saelab import runs
from saelab_lab.freshness import check_run, markdown_cells, normal


@dataclass
class Refreshed:
    """What `refresh` did to one run folder."""

    folder: Path
    cells: list[int]  # Markdown cells replaced (0-based, among the executed copy's cells)
    sha: str  # the commit the new text is from


def refresh(folder: Path, root: Path = runs.ROOT) -> Refreshed:
    """Copy `notebooks/<nb>.py`'s Markdown into `folder/notebook.ipynb` (see the module)."""
    git = runs.git_state(root)
    if git["dirty"] is not False:
        raise RuntimeError(f"the git tree at {root} is dirty (or not a git checkout): commit the "
                           "text first; prose.json records the commit it comes from")  # fmt: skip
    if not (folder / "notebook.ipynb").is_file():
        raise RuntimeError(f"{folder}: no executed notebook.ipynb (not a reference run folder)")
    if not (root / "notebooks" / f"{folder.parent.name}.py").is_file():
        raise RuntimeError(f"{folder}: notebooks/{folder.parent.name}.py does not exist")
    state = check_run(folder, root)
    if state.problems:
        raise RuntimeError(f"{folder}: {'; '.join(state.problems)}: rerun it")
    if state.changed:
        raise RuntimeError(f"{folder}: notebooks/{state.notebook}.py's code changed since this "
                           f"run ({state.changed}): rerun it")  # fmt: skip
    ran = nbformat.read(folder / "notebook.ipynb", as_version=4)
    now = jupytext.read(root / "notebooks" / f"{state.notebook}.py")
    kept = [(i, c) for i, c in enumerate(ran.cells)
            if "injected-parameters" not in c.metadata.get("tags", [])]  # fmt: skip
    kinds_ran, kinds_now = [c.cell_type for _, c in kept], [c.cell_type for c in now.cells]
    if kinds_ran != kinds_now:
        at = next((j for j, (a, b) in enumerate(zip(kinds_ran, kinds_now, strict=False)) if a != b),
                  min(len(kinds_ran), len(kinds_now)))  # fmt: skip
        raise RuntimeError(
            f"{folder}: its cells do not line up with notebooks/{state.notebook}.py from cell "
            f"{at + 1} on ({len(kinds_ran)} cells ran, the source has {len(kinds_now)}; a "
            "Markdown cell added, removed or moved): rerun it"
        )
    replaced = []
    for (i, cell), new in zip(kept, now.cells, strict=True):
        if cell.cell_type == "markdown" and normal(cell.source) != normal(new.source):
            replaced.append(dict(cell=i, was=cell.source))
            cell.source = new.source
    if replaced:
        entry = dict(sha=git["sha"], date=datetime.datetime.now().isoformat(timespec="seconds"),
                     run_sha=state.sha, replaced=replaced)  # fmt: skip
        log_file = folder / "prose.json"
        log = json.loads(log_file.read_text()) if log_file.exists() else []
        _write(log_file, json.dumps([*log, entry], indent=1) + "\n")  # the old text first
        ran.metadata.setdefault("saelab", {})["prose"] = dict(sha=git["sha"], run_sha=state.sha)
        _write(folder / "notebook.ipynb", nbformat.writes(ran))
    assert markdown_cells(ran) == markdown_cells(now)
    return Refreshed(folder, [r["cell"] for r in replaced], git["sha"])


def _write(path: Path, text: str) -> None:
    """Write `path` whole or not at all (a temporary file beside it, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
