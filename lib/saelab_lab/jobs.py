"""Regenerating the reference runs: which notebook runs at which preset under which run id, in
what order, and which of them must be made again (`make reference`).
"""

from __future__ import annotations

from pathlib import Path

from saelab import runs
from saelab_lab.freshness import REFERENCE, check_run, read_runs
from saelab_lab.prune import prune
from saelab_lab.tables import tables

REF_ID = "ref"  # the run id of the smoke-scale runs: outputs/reference/<notebook>/ref
PAPER_ID = "paper"  # the long reference sweep and its studies (the `paper` presets)
HALF_ID = "paper-half"  # the paper sweep at half its token budget (`paper_half`)
DOUBLING_ID = "doubling"  # local / e2e / e2e+ds near the target CE, 3 seeds, 2M tokens
DOUBLING_HALF_ID = "doubling-half"  # its twin at 1M tokens
ALIVE_ID = "alive32"  # local / e2e / e2e+ds at dict ratio 32: alive latents where they can die
# What `regenerate` runs, in order: (notebook, preset, run id). 05_pareto is the main job's sweep;
# the studies after it, under the same run id, read its SAEs (sae_run) when they declare that
# parameter, at their own preset of that name where they have one, else `default`.
JOBS = (
    ("00_storyworld", "report", REF_ID),
    ("01_local_sae", "default", REF_ID),
    ("05_pareto", "default", REF_ID),
    *((study, "default", REF_ID) for study in runs.STUDIES),
    ("11_gsae_study", "default", REF_ID),  # trains its own TopK / g-SAE grid (reads no 05 run)
    ("13_beyond_the_papers", "default", REF_ID),  # fine-tune and Matryoshka (reads no 05 run)
    ("05_pareto", "paper", PAPER_ID),  # long (not converged), 2 seeds: 37 min on 2 CPU cores
    *((study, runs.study_preset(study, "paper"), PAPER_ID) for study in runs.STUDIES),
    # the paper sweep's twin at half its budget, for the doubling test (12_doubling)
    ("05_pareto", "paper_half", HALF_ID),
    ("12_doubling", "paper", PAPER_ID),  # reads both: the doubling test (seconds)
    ("13_beyond_the_papers", "paper", PAPER_ID),  # trains its own; its last figure reads paper-half
    ("11_gsae_study", "paper", PAPER_ID),  # 32 min on 2 CPU cores (3 seeds, 19 SAEs each)
    # the method notebooks quote the paper-level runs (paper_run, downstream_run, study_run), so
    # they come after them: a minute or two each
    ("02_e2e_sae", "default", REF_ID),
    ("03_e2e_ds_sae", "default", REF_ID),
    ("04_gradient_sae", "default", REF_ID),
    # the doubling test on three seeds, grids cut to the settings near the target CE (issue 30)
    ("05_pareto", "doubling_half", DOUBLING_HALF_ID),
    ("05_pareto", "doubling", DOUBLING_ID),
    ("12_doubling", "doubling", DOUBLING_ID),
    ("05_pareto", "alive32", ALIVE_ID),  # dict ratio 32, 2 seeds, 2M tokens (issue 30)
)


def plan(root: Path = runs.ROOT, run_ids=None) -> list[tuple[str, str, str]]:
    """The jobs `(notebook, preset, run id)` of `JOBS` (those with a run id in `run_ids`, or all)
    whose `outputs/reference/<nb>/<run id>` must be (re)run; raises RunExists for a completed one
    that is stale (or would be: a study of a 05 run that is rerun), since a completed reference
    run is never replaced: remove it (git rm -r) first."""
    todo, stale = [], []
    for nb, preset, rid in JOBS:
        if run_ids is not None and rid not in run_ids:
            continue
        folder = root / REFERENCE / nb / rid
        status = runs.run_status(folder)
        rerun = {(REFERENCE / n / r).as_posix() for n, _, r in todo}
        reads = [v for v in _job_params(nb, preset, rid).values() if v in rerun]
        if status == "completed":
            fresh = check_run(folder, root)
            why = fresh.problems + ([fresh.changed] if fresh.changed else [])
            why += [f"it reads {v}, which is rerun" for v in reads]
            if why:
                stale.append(f"{folder.relative_to(root)}: {'; '.join(why)}")
            continue  # fresh: kept
        todo.append((nb, preset, rid))
    made = {(REFERENCE / n / r).as_posix() for n, _, r in todo}
    missing = [f"{REFERENCE / nb / rid}: reads {v}, which is neither a completed run nor made "
               f"by these jobs (add its run id: --run-id {Path(v).name})"
               for nb, preset, rid in todo for v in _job_params(nb, preset, rid).values()
               if v not in made and runs.run_status(root / v) != "completed"]  # fmt: skip
    if missing:
        raise runs.RunExists("jobs that would read a run that is not there:\n  "
                             + "\n  ".join(missing))  # fmt: skip
    if stale:
        raise runs.RunExists(
            "these completed reference runs are stale and are never overwritten; remove them "
            "first (git rm -r FOLDER, or move them out of outputs/reference):\n  "
            + "\n  ".join(stale)
        )
    return todo


def _job_params(notebook: str, preset: str, rid: str) -> dict[str, str]:
    """The run folders a job of `JOBS` reads (`read_runs` of its preset): a study's `sae_run` is
    the 05_pareto run of its own run id (relative: portable across checkouts)."""
    try:
        params = read_runs(runs.load_preset(notebook, preset))
        declared = runs.notebook_parameters(notebook)
    except FileNotFoundError:  # no such notebook or preset: it reads nothing (its run says why)
        return {}
    if "sae_run" in declared:
        params["sae_run"] = (REFERENCE / "05_pareto" / rid).as_posix()
    return params


def regenerate(root: Path = runs.ROOT, run_ids=None) -> None:
    """Run every job of `JOBS` (with a run id in `run_ids`, or all) that has no fresh completed
    run under `outputs/reference/<nb>/<run id>` (a failed or partial folder is moved aside by the
    runner), prune the SAE weights (`saelab_lab.prune`), then write the tables. Refuses a dirty
    git tree, since every run records it."""
    if runs.git_state(root)["dirty"] is not False:
        raise RuntimeError("the git tree is dirty (or not a git checkout): commit first; a "
                           "reference run records the commit it ran")  # fmt: skip
    todo = plan(root, run_ids)
    runs.say(f"reference: {len(todo)} runs to make "
             f"({', '.join(f'{n}/{r}' for n, _, r in todo) or 'none'})")  # fmt: skip
    for nb, preset, rid in todo:
        reads = _job_params(nb, preset, rid)
        params = {"sae_run": reads["sae_run"]} if "sae_run" in reads else {}
        runs.run_notebook(nb, params, preset, rid, root / REFERENCE)
    saved = sum(d.bytes_before - d.bytes_after for d in prune(root)) / 1e6
    runs.say(f"reference: SAE weights no study reads removed, the rest halved ({saved:.1f} MB)")
    changed = tables(root)
    runs.say(f"reference: tables rewritten ({len(changed)} changed)")
