"""The generated tables of README.md, docs/*.md and papers/*/README.md, rendered from reference
runs.

A generated table sits between two markers in a Markdown file:

    <!-- table: NAME from outputs/reference/05_pareto/ref -->
    ...                                  (written by `tables`; edit the renderer, not this)
    <!-- /table -->

`NAME` is a renderer of `renderers.RENDERERS`; it reads the cited run folder (its
`summary.json`, or what the renderer names) and, for the main job's tables, the studies run under
the same run id beside it. The caption names every file read and, for each run read whose
notebook changed since it ran, says so (`freshness`).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from saelab import runs
from saelab.studies.stats import seed_stat, seed_stats
from saelab_lab.freshness import check_run

DOCS = ("README.md", "docs/*.md", "papers/*/README.md")  # the files whose tables are generated


class TableError(ValueError):
    """A table cannot be rendered: a marker names an unknown renderer, or a run lacks a file or
    key the renderer reads (the message names the run, the file and the key)."""


@dataclass
class RunFolder:
    """A cited run folder, read by a renderer; `read` collects the files read (for the caption)."""

    path: Path  # relative to `root`, as the marker spells it
    root: Path
    table: str
    read: list[str] = field(default_factory=list)

    def where(self, name: str) -> str:
        return f"{self.path}/{name}"

    def json(self, name: str = "summary.json") -> dict:
        f = self.root / self.path / name
        if not f.is_file():
            raise TableError(f"table {self.table!r}: run {self.path} has no {name}")
        if self.where(name) not in self.read:
            self.read.append(self.where(name))
        return json.loads(f.read_text())

    def get(self, *keys, file: str = "summary.json"):
        """`summary[k0][k1]...`; a missing key is a TableError naming run, file and key."""
        value = self.json(file)
        for i, k in enumerate(keys):
            try:
                value = value[k]
            except (KeyError, IndexError, TypeError):
                have = list(value) if isinstance(value, dict) else type(value).__name__
                path = "".join(f"[{x!r}]" for x in keys[: i + 1])
                raise TableError(f"table {self.table!r}: run {self.path}: {file} has no key "
                                 f"{path} (it has {have})") from None  # fmt: skip
        return value

    def record(self, key: str, file: str = "summary.json", **match) -> dict:
        """The record of the list `summary[key]` whose fields equal `match`."""
        for r in self.get(key, file=file):
            if all(r.get(k) == v for k, v in match.items()):
                return r
        raise TableError(f"table {self.table!r}: run {self.path}: {file}[{key!r}] has no record "
                         f"with {match}")  # fmt: skip

    def need(self, rec: dict, key: str, where: str):
        if key not in rec:
            raise TableError(f"table {self.table!r}: run {self.path}: {where} has no key "
                             f"{key!r} (it has {list(rec)})")  # fmt: skip
        return rec[key]

    def csv(self, name: str) -> list[dict]:
        f = self.root / self.path / name
        if not f.is_file():
            raise TableError(f"table {self.table!r}: run {self.path} has no {name}")
        self.read.append(self.where(name))
        with f.open() as fh:
            return list(csv.DictReader(fh))

    def sibling(self, notebook: str) -> RunFolder:
        """The run of `notebook` under the same run id (the main job's studies)."""
        path = self.path.parent.parent / notebook / self.path.name
        if not (self.root / path).is_dir():
            raise TableError(f"table {self.table!r}: run {self.path} has no study run {path} "
                             "beside it (the main job runs them under the same id)")  # fmt: skip
        return RunFolder(path, self.root, self.table, self.read)


def num(x, digits: int = 3) -> str:
    """A number with `digits` decimals; NaN as 'n/a'."""
    x = float(x)
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def with_ci(rec: dict, key: str = "mean", digits: int = 3) -> str:
    """`value [lo, hi]` from a record with `key`, `ci_lo`, `ci_hi`."""
    return f"{num(rec[key], digits)} [{num(rec['ci_lo'], digits)}, {num(rec['ci_hi'], digits)}]"


def stats_cell(rec: dict, digits: int = 3, fmt: Callable | None = None) -> str:
    """`mean [lo, hi]` from a record with `mean`, `lo`, `hi`, `n` (a `seed_stats` dict); the mean
    alone for one seed. `fmt` formats each number (default: `digits` decimals; e.g. `pct`)."""
    f = fmt or (lambda x: num(x, digits))
    if rec.get("n", 0) < 2:
        return f(rec["mean"])
    return f"{f(rec['mean'])} [{f(rec['lo'])}, {f(rec['hi'])}]"


def seed_cell(values, digits: int = 3) -> str:
    """`stats_cell` of values measured once per seed (95% t-interval, `studies.stats`)."""
    return stats_cell(seed_stats([float(v) for v in values]), digits)


def over_seeds(run: RunFolder, **match) -> dict:
    """The record of a study's `over_seeds` (saelab.studies.stats) whose fields equal `match`."""
    try:
        return seed_stat(run.get("over_seeds"), **match)
    except KeyError as e:
        raise TableError(f"table {run.table!r}: run {run.path}: summary.json['over_seeds']: "
                         f"{e.args[0]}, not one") from None  # fmt: skip


def seeds_note(run: RunFolder) -> str:
    n = len(run.get("seeds"))
    return f"mean [95% t-interval] over {n} seeds" if n > 1 else "one seed: no interval"


def pct(x, digits: int = 1) -> str:
    """A percentage; a nonzero value too small for `digits` decimals keeps 2 significant digits
    (0.049%, not 0.0%: a table must not show 0.0% against 0.0% and call one of them fewer)."""
    v = 100 * float(x)
    if v != 0 and abs(v) < 0.5 * 10**-digits:
        return f"{v:.2g}%"
    return f"{v:.{digits}f}%"


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


BLOCK = re.compile(
    r"(?P<open>^<!-- table: (?P<name>[\w-]+) from (?P<run>\S+) -->\n)(?P<body>.*?)"
    r"(?P<close><!-- /table -->)",
    re.S | re.M,
)


def render(name: str, run_path: str, root: Path = runs.ROOT) -> str:
    """The body of a table block: a caption naming the files read (and a line for each run read
    whose notebook changed since it ran), a blank line, the table."""
    from saelab_lab.renderers import RENDERERS

    if name not in RENDERERS:
        raise TableError(f"unknown table {name!r}; the renderers are {sorted(RENDERERS)}")
    fn, notebook = RENDERERS[name]
    path = Path(run_path)
    if path.parent.name != notebook:
        raise TableError(f"table {name!r} renders a {notebook} run, not {run_path}")
    if not (root / path).is_dir():
        raise TableError(f"table {name!r}: run {run_path} does not exist")
    run = RunFolder(path, root, name)
    table = fn(run)
    files = ", ".join(f"`{f}`" for f in run.read)
    caption = [f"*Generated from {files} (`python -m saelab_lab tables`).*"]
    folders = dict.fromkeys(Path(f).parent for f in run.read)  # in order, once each
    caption += [n for n in (check_run(root / f, root).note() for f in folders) if n]
    return "\n".join(caption) + f"\n\n{table}\n\n"


def _unnoted(text: str) -> str:
    """`text` without the "notebook changed since" caption lines (what `make test` compares)."""
    return "\n".join(x for x in text.split("\n") if not x.startswith("*Notebook changed since"))


def doc_files(root: Path = runs.ROOT) -> list[Path]:
    return [p for pattern in DOCS for p in sorted(root.glob(pattern))]


def render_file(text: str, root: Path = runs.ROOT, strict: bool = True
                ) -> tuple[str, list[str], list[str]]:  # fmt: skip
    """`text` with every table block rendered (a block that cannot be rendered is left as it
    was), the blocks that changed (`<name> from <run>`) and the errors of those that could not.
    Unless `strict`, a block whose only difference is a "notebook changed since" line has not
    changed."""
    changed, errors = [], []

    def sub(m: re.Match) -> str:
        try:
            body = render(m["name"], m["run"], root)
        except TableError as e:
            errors.append(str(e))
            return m[0]
        same = body == m["body"] or (not strict and _unnoted(body) == _unnoted(m["body"]))
        if not same:
            changed.append(f"{m['name']} from {m['run']}")
        return m["open"] + body + m["close"]

    return BLOCK.sub(sub, text), changed, errors


def tables(root: Path = runs.ROOT, write: bool = True, strict: bool = True) -> list[str]:
    """Render every table block of the docs and return one line per block that differs from its
    rendering or cannot be rendered (`<file>: ...`). With `write`, rewrite the blocks that can be
    rendered, then raise TableError listing those that cannot. Unless `strict`, a missing or
    extra "notebook changed since" caption line is not a difference (`make test` reads it so:
    editing a notebook must not fail the tests; `check --strict` does)."""
    lines, errors = [], []
    for f in doc_files(root):
        text = f.read_text()
        new, changed, errs = render_file(text, root, strict)
        name = f.relative_to(root)
        lines += [f"{name}: table {c} differs from its rendering" for c in changed]
        errors += [f"{name}: {e}" for e in errs]
        if write and new != text:
            f.write_text(new)
    if write and errors:
        raise TableError("tables that cannot be rendered:\n  " + "\n  ".join(errors))
    return lines + errors


# ---------------------------------------------------------------------------------------------
