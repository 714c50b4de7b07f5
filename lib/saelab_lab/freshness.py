"""Is a reference run still what its notebook would make? Completed, clean, same code.

A reference run (`outputs/reference/<notebook>/<run id>`) has **problems** when it is not a
completed `saelab.runs` run made from a clean git tree, or when it reads a run (`sae_run`,
`half_run`) that is missing or was made again after it: its numbers cannot be trusted, and
`make test` fails. Its notebook has **changed** when the code cells of the executed
`notebook.ipynb` differ from those of the current `notebooks/<nb>.py` (papermill's injected
cell left out, trailing whitespace ignored): the numbers are still those of a real run, the page
that shows them says the notebook changed since, and only `check --strict` fails. Its **prose**
has changed when only the Markdown cells differ: the numbers and the code are the run's, but the
executed copy shows older text (a "How to read it" written after the run); `check` lists these
and nothing fails, and `saelab_lab.prose.refresh` can copy the new text in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import nbformat

from saelab import runs

REFERENCE = Path("outputs") / "reference"  # relative to the repository root


@dataclass
class Freshness:
    """What `check_run` found for one reference run folder."""

    folder: Path
    problems: list[str] = field(default_factory=list)  # make test fails on these
    changed: str | None = None  # first difference between the code that ran and the source
    prose: str | None = None  # with the code unchanged, the first difference in the Markdown
    sha: str | None = None  # the commit the run was made at
    prose_sha: str | None = None  # the commit of its Markdown, when refreshed after the run

    @property
    def notebook(self) -> str:
        return self.folder.parent.name

    def note(self) -> str | None:
        """The caption line shown under a table made from this run, or None when unchanged."""
        if self.changed is None:
            return None
        at = f" (made at `{self.sha[:10]}`)" if self.sha else ""
        return f"*Notebook changed since this run: `notebooks/{self.notebook}.py`{at}.*"


def normal(source: str) -> str:
    """A cell's source with trailing whitespace removed from every line and from its end."""
    return "\n".join(line.rstrip() for line in source.splitlines()).rstrip()


def code_cells(nb) -> list[str]:
    """The code cells of a notebook (nbformat / jupytext object), papermill's injected cell left
    out, each with trailing whitespace removed from every line and from its end."""
    out = []
    for c in nb.cells:
        if c.cell_type != "code" or "injected-parameters" in c.metadata.get("tags", []):
            continue
        out.append(normal(c.source))
    return out


def markdown_cells(nb) -> list[str]:
    """The Markdown cells of a notebook, each with trailing whitespace removed (`code_cells`)."""
    return [normal(c.source) for c in nb.cells if c.cell_type == "markdown"]


def diff_cells(ran: list[str], now: list[str], kind: str = "code") -> str | None:
    """None when equal, else a short account of the first difference."""
    if ran == now:
        return None
    for i, (a, b) in enumerate(zip(ran, now, strict=False)):
        if a != b:
            k = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                     min(len(a), len(b)))  # fmt: skip
            line = a.count("\n", 0, k) + 1
            start = max(0, k - 25)
            was, has = a[start : k + 35], b[start : k + 35]
            return (f"{kind} cell {i + 1} differs from the source at its line {line}: ran "
                    f"{was!r}, the source has {has!r}")  # fmt: skip
    return f"{len(ran)} {kind} cells ran, the source has {len(now)}"


def read_runs(params: dict) -> dict[str, str]:
    """The run folders a notebook's parameters name: every non-empty `*_run` string (`sae_run`
    of the studies, `half_run` of 12_doubling)."""
    return {k: v for k, v in params.items() if k.endswith("_run") and isinstance(v, str) and v}


def _config(folder: Path) -> tuple[dict | None, str | None]:
    try:
        return json.loads((folder / "config.json").read_text()), None
    except FileNotFoundError:
        return None, "no config.json (not a saelab.runs run folder)"
    except (OSError, json.JSONDecodeError) as e:
        return None, f"config.json cannot be read ({e})"


def _run_problems(cfg: dict) -> list[str]:
    why = []
    status = cfg.get("status")
    if status != "completed":
        why.append(f"status is {status!r}, not 'completed'")
    git = cfg.get("git") or {}
    if git.get("dirty") is None:
        why.append("config.json records no git state")
    elif git["dirty"]:
        why.append(f"ran on a dirty git tree (at {str(git.get('sha'))[:10]})")
    return why


def _read_problems(cfg: dict, root: Path) -> list[str]:
    why = []
    for name, value in read_runs(cfg.get("parameters") or {}).items():
        read = Path(value) if Path(value).is_absolute() else root / value
        read_cfg, err = _config(read)
        if read_cfg is None:
            why.append(f"reads the run {value} ({name}), which is not a run folder")
        elif str(read_cfg.get("started", "")) > str(cfg.get("started", "")):
            why.append(f"reads the run {value} ({name}), which was run again after it")
    return why


def check_run(folder: Path, root: Path = runs.ROOT) -> Freshness:
    """The freshness of the reference run in `folder` (`.../<notebook>/<run id>`)."""
    out = Freshness(folder)
    cfg, err = _config(folder)
    if cfg is None:
        out.problems.append(err)
        return out
    out.sha = (cfg.get("git") or {}).get("sha")
    out.problems += _run_problems(cfg) + _read_problems(cfg, root)
    source = root / "notebooks" / f"{out.notebook}.py"
    executed = folder / "notebook.ipynb"
    if not source.is_file():
        out.changed = f"its notebook notebooks/{out.notebook}.py no longer exists"
    elif not executed.is_file():
        out.problems.append("no executed notebook.ipynb")
    else:
        ran, now = nbformat.read(executed, as_version=4), jupytext.read(source)
        out.changed = diff_cells(code_cells(ran), code_cells(now))
        if out.changed is None:
            out.prose = diff_cells(markdown_cells(ran), markdown_cells(now), "markdown")
    if (folder / "prose.json").is_file():  # saelab_lab.prose.refresh
        try:
            out.prose_sha = json.loads((folder / "prose.json").read_text())[-1]["sha"]
        except (OSError, ValueError, LookupError, TypeError) as e:
            out.problems.append(f"prose.json cannot be read ({e!r})")
    return out


@dataclass
class Report:
    """Every reference run's freshness, and the notebooks without a reference run."""

    runs: list[Freshness]
    missing: list[str]  # notebooks/<nb>.py with no reference run at all

    def problems(self, root: Path) -> list[str]:
        return [f"{r.folder.relative_to(root)}: {'; '.join(r.problems)}"
                for r in self.runs if r.problems]  # fmt: skip

    def changed(self, root: Path) -> list[str]:
        return [f"{r.folder.relative_to(root)}: notebook changed since this run: {r.changed}"
                for r in self.runs if r.changed] + [
                f"notebooks/{nb}.py: no reference run under {REFERENCE / nb}"
                for nb in self.missing]  # fmt: skip

    def prose(self, root: Path) -> list[str]:
        return [f"{r.folder.relative_to(root)}: {r.prose}" for r in self.runs if r.prose]

    def refreshed(self, root: Path) -> list[str]:
        return [f"{r.folder.relative_to(root)}: run at {str(r.sha)[:10]}, its Markdown from "
                f"{r.prose_sha[:10]}" for r in self.runs if r.prose_sha]  # fmt: skip


def check(root: Path = runs.ROOT) -> Report:
    """The freshness of every run under `outputs/reference/*/*`, and notebooks without one."""
    folders = sorted(p for p in (root / REFERENCE).glob("*/*") if p.is_dir())
    found = [check_run(f, root) for f in folders]
    have = {r.notebook for r in found}
    missing = [s.stem for s in sorted((root / "notebooks").glob("[0-9]*.py"))
               if s.stem not in have]  # fmt: skip
    return Report(found, missing)
