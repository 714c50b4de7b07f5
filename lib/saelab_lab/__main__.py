"""`python -m saelab_lab check | tables | regenerate` (see the package docstring)."""

from __future__ import annotations

import argparse
import sys

from saelab import runs
from saelab_lab import freshness, jobs, prose, prune
from saelab_lab.tables import TableError, tables


def check(strict: bool) -> int:
    """Print what `make test` (and, with `strict`, `make check-reference`) fails on; exit code."""
    root = runs.ROOT
    report = freshness.check(root)
    problems = report.problems(root)
    differ = tables(root, write=False, strict=strict)
    changed = report.changed(root)
    sections = (
        ("problems (make test fails)", problems),
        ("tables that differ from their runs", differ),
        ("changed since their reference run (shown on the page)", changed),
        ("prose changed since their reference run (the executed copy shows older text; "
         "`refresh-prose` copies it in)", report.prose(root)),
        ("prose refreshed after the run (prose.json keeps the older text)",
         report.refreshed(root)),
    )  # fmt: skip
    for title, lines in sections:
        if lines:
            print(f"{title}:\n  " + "\n  ".join(lines))
    failed = bool(problems or differ or (strict and changed))
    if not failed:
        print(
            "every reference run is usable and every table matches its runs"
            + ("; nothing changed since" if not changed else f"; {len(changed)} changed since")
        )
    return 1 if failed else 0


def refresh_prose(folders: list[str]) -> int:
    """Copy the notebooks' Markdown into the executed copies of `folders` (default: every run
    `check` lists under prose changed); print what changed; exit code."""
    root = runs.ROOT
    targets = ([root / f for f in folders] if folders else
               [r.folder for r in freshness.check(root).runs if r.prose])  # fmt: skip
    failed = 0
    for folder in targets:  # each run on its own: one refused leaves the others done
        try:
            done = prose.refresh(folder, root)
        except (RuntimeError, OSError) as e:
            print(f"refused: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{folder}: {len(done.cells)} Markdown cells from {done.sha[:10]}")
    if not targets:
        print("no run's prose differs from its notebook")
    return 1 if failed else 0


def report_prune(done: list[prune.Pruned], dry_run: bool) -> int:
    """Print what `prune` did (or would do) per run folder, and the total; exit code 0."""
    root = runs.ROOT
    for d in done:
        if d.removed or d.halved:
            print(f"{d.folder.relative_to(root)}: {len(d.removed)} weight files removed, "
                  f"{len(d.halved)} halved ({d.bytes_before / 1e6:.1f} -> "
                  f"{d.bytes_after / 1e6:.1f} MB)")  # fmt: skip
    before, after = sum(d.bytes_before for d in done), sum(d.bytes_after for d in done)
    verb = "would go" if dry_run else "went"
    print(f"SAE weights: {before / 1e6:.1f} -> {after / 1e6:.1f} MB ({(before - after) / 1e6:.1f} "
          f"MB {verb})")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    about = "saelab's reference runs and generated tables"
    ap = argparse.ArgumentParser(prog="python -m saelab_lab", description=about)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="list problems, table differences and changed notebooks")
    c.add_argument("--strict", action="store_true", help="fail on changed notebooks too")
    t = sub.add_parser("tables", help="rewrite the generated tables of README.md, docs/*, papers/*")
    t.add_argument("--check", action="store_true", help="write nothing; exit 1 listing diffs")
    g = sub.add_parser("regenerate", help="rerun the reference runs (make reference), then tables")
    g.add_argument("--run-id", action="append", help="only the jobs of this run id (repeatable)")
    r = sub.add_parser("refresh-prose", help="copy a notebook's edited Markdown into its runs")
    r.add_argument("folders", nargs="*", help="run folders (default: all whose prose changed)")
    p = sub.add_parser("prune", help="drop SAE weights no study reads, store the rest as float16")
    p.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "check":
            return check(a.strict)
        if a.cmd == "tables":
            lines = tables(write=not a.check)
            print("\n".join(lines) if lines else "every table is up to date")
            return 1 if (lines and a.check) else 0
        if a.cmd == "refresh-prose":
            return refresh_prose(a.folders)
        if a.cmd == "prune":
            return report_prune(prune.prune(dry_run=a.dry_run), a.dry_run)
        jobs.regenerate(run_ids=a.run_id)
        return 0
    except (TableError, runs.RunExists, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
