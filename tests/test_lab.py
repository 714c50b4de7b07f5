"""The lab tooling (`saelab_lab`): reference runs, their freshness, the docs' generated tables.

The repository tests fail while a table differs from the runs it cites or a reference run did not
complete or was made from a dirty tree. A notebook edited since its reference run is shown (in
the table captions, by `check`), not a failure: only `make check-reference` fails on it.
"""

import json
from pathlib import Path

import jupytext
import nbformat
import pytest

import saelab_lab.__main__ as cli
from saelab import runs
from saelab_lab import freshness, jobs, renderers, tables

NB = """# %% [markdown]
# # 91 · a notebook

# %% tags=["parameters"]
n: int = 3  # a parameter
out_dir: str = "outputs/91_nb/interactive-{time}"  # run folder

# %%
print(n)
""".replace("print(n)", "print(n)   ")  # trailing blanks, as an editor may leave them


def test_every_reference_run_completed_on_a_clean_tree():
    problems = freshness.check(runs.ROOT).problems(runs.ROOT)
    assert not problems, "reference runs that cannot be cited:\n" + "\n".join(problems)


def test_every_generated_table_equals_its_rendering_from_the_cited_run():
    differ = tables.tables(write=False, strict=False)
    assert not differ, (
        "tables that differ from their runs (`python -m saelab_lab tables`):\n" + "\n".join(differ)
    )


def test_the_docs_have_generated_tables():
    text = "".join(p.read_text() for p in tables.doc_files())
    names = {m["name"] for m in tables.BLOCK.finditer(text)}
    assert {"storyworld_report", "claims", "e2e_table2", "gsae_vs_topk"} <= names
    assert names <= set(renderers.RENDERERS)


def test_the_library_does_not_import_the_lab_tooling():
    import subprocess
    import sys

    code = "import sys, saelab, saelab.runs; print(sorted(m for m in sys.modules if 'lab_' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _root(tmp_path: Path, status="completed", dirty=False, source=NB) -> Path:
    """A fake repository: notebooks/91_nb.py and a reference run of it (as papermill leaves it)."""
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    (root / "notebooks" / "91_nb.py").write_text(source)
    run = root / "outputs" / "reference" / "91_nb" / "ref"
    run.mkdir(parents=True)
    nb = jupytext.reads(NB, fmt="py:percent")
    injected = nbformat.v4.new_code_cell('n = 5\nout_dir = "x"\n')
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(2, injected)
    nbformat.write(nb, run / "notebook.ipynb")
    cfg = dict(notebook="91_nb", status=status, git={"sha": "abc", "dirty": dirty},
               parameters={"n": 5}, started="2026-01-01T00:00:00")  # fmt: skip
    (run / "config.json").write_text(json.dumps(cfg))
    return root


def _report(root: Path) -> tuple[list[str], list[str]]:
    report = freshness.check(root)
    return report.problems(root), report.changed(root)


def test_a_fresh_run_passes(tmp_path):
    root = _root(tmp_path)
    assert _report(root) == ([], [])


def test_an_edited_notebook_is_shown_as_changed_not_a_problem(tmp_path):
    root = _root(tmp_path, source=NB.replace("print(n)   ", "print(n + 1)"))
    problems, [line] = _report(root)
    assert problems == []
    assert line.startswith("outputs/reference/91_nb/ref: notebook changed since this run: "
                           "code cell 2 differs")  # fmt: skip
    assert "'print(n)'" in line and "'print(n + 1)'" in line
    # trailing whitespace is not a difference; a new cell is
    clean = NB.replace("print(n)   ", "print(n)")
    assert _report(_root(tmp_path / "b", source=clean)) == ([], [])
    _, [line] = _report(_root(tmp_path / "c", source=NB + "\n# %%\nx = 1\n"))
    assert "2 code cells ran, the source has 3" in line


def test_edited_prose_is_listed_apart_and_fails_nothing(tmp_path):
    """Markdown edited after the run (a "How to read it"): the code and numbers are the run's,
    the executed copy shows older text; `check` says so, and no caption or failure follows."""
    root = _root(tmp_path, source=NB.replace("# # 91 · a notebook", "# # 91 · a notebook, reread"))
    report = freshness.check(root)
    assert report.problems(root) == [] and report.changed(root) == []
    (line,) = report.prose(root)
    assert line.startswith("outputs/reference/91_nb/ref: markdown cell 1 differs")
    assert freshness.check_run(root / "outputs/reference/91_nb/ref", root).note() is None
    assert freshness.check(_root(tmp_path / "b")).prose(tmp_path / "b" / "repo") == []
    # a code change is reported as that, not as prose too
    code = NB.replace("print(n)   ", "print(n + 1)").replace("a notebook", "a notebook, reread")
    report = freshness.check(_root(tmp_path / "c", source=code))
    assert report.prose(tmp_path / "c" / "repo") == [] and report.changed(tmp_path / "c" / "repo")


def _git(root: Path) -> None:
    """Make `root` a git checkout with everything committed (refresh reads its state)."""
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")


def test_refresh_copies_edited_prose_into_the_run_and_keeps_the_old_text(tmp_path):
    from saelab_lab import prose

    root = _root(tmp_path, source=NB.replace("# # 91 · a notebook", "# # 91 · a notebook, reread"))
    run = root / "outputs/reference/91_nb/ref"
    executed = nbformat.read(run / "notebook.ipynb", as_version=4)
    executed.cells[3].outputs = [nbformat.v4.new_output("stream", text="5\n")]  # as it ran
    nbformat.write(executed, run / "notebook.ipynb")
    _git(root)
    done = prose.refresh(run, root)
    assert done.cells == [0]
    after = nbformat.read(run / "notebook.ipynb", as_version=4)
    assert after.cells[0].source == "# 91 · a notebook, reread"
    assert after.cells[3].outputs[0]["text"] == "5\n"  # outputs and code as they ran
    assert [c.source for c in after.cells[1:]] == [c.source for c in executed.cells[1:]]
    (entry,) = json.loads((run / "prose.json").read_text())
    assert entry["replaced"] == [dict(cell=0, was="# 91 · a notebook")]
    assert entry["run_sha"] == "abc" and entry["sha"] == done.sha
    report = freshness.check(root)
    assert report.prose(root) == [] and report.changed(root) == []
    assert report.refreshed(root) == [f"outputs/reference/91_nb/ref: run at abc, its Markdown "
                                      f"from {done.sha[:10]}"]  # fmt: skip
    assert after.metadata["saelab"]["prose"] == dict(sha=done.sha, run_sha="abc")
    assert prose.refresh(run, root).cells == []  # nothing left to copy


def test_refresh_refuses_changed_code_a_moved_cell_a_dirty_tree_or_a_failed_run(tmp_path):
    from saelab_lab import prose

    cases = {
        "code": (NB.replace("print(n)   ", "print(n + 1)"), "completed", "code changed since"),
        "cells": (NB + "\n# %% [markdown]\n# more\n", "completed", "do not line up"),
        "failed": (NB, "failed", "status is 'failed'"),
    }
    for name, (source, status, why) in cases.items():
        root = _root(tmp_path / name, status=status, source=source)
        _git(root)
        before = (root / "outputs/reference/91_nb/ref/notebook.ipynb").read_bytes()
        with pytest.raises(RuntimeError, match=why):
            prose.refresh(root / "outputs/reference/91_nb/ref", root)
        assert (root / "outputs/reference/91_nb/ref/notebook.ipynb").read_bytes() == before
    root = _root(tmp_path / "dirty", source=NB.replace("a notebook", "a notebook, reread"))
    with pytest.raises(RuntimeError, match="dirty"):  # not a git checkout at all
        prose.refresh(root / "outputs/reference/91_nb/ref", root)
    _git(root)
    (root / "notebooks" / "91_nb.py").write_text(NB.replace("a notebook", "uncommitted text"))
    with pytest.raises(RuntimeError, match="dirty"):  # the text is not a commit's
        prose.refresh(root / "outputs/reference/91_nb/ref", root)
    # a study whose input run was made again after it: new text must not sit beside old numbers
    root = _root(tmp_path / "stale", source=NB.replace("a notebook", "a notebook, reread"))
    run = root / "outputs/reference/91_nb/ref"
    cfg = json.loads((run / "config.json").read_text())
    cfg["parameters"]["sae_run"] = "outputs/reference/90_sweep/ref"
    (run / "config.json").write_text(json.dumps(cfg))
    sweep = root / "outputs/reference/90_sweep/ref"
    sweep.mkdir(parents=True)
    later = dict(status="completed", started="2026-02-01T00:00:00")  # after the study's run
    (sweep / "config.json").write_text(json.dumps(later))
    _git(root)
    with pytest.raises(RuntimeError, match="run again after it"):
        prose.refresh(run, root)


def test_a_dirty_or_unfinished_run_is_a_problem(tmp_path):
    [line], _ = _report(_root(tmp_path / "a", dirty=True))
    assert "dirty git tree" in line
    [line], _ = _report(_root(tmp_path / "b", status="failed"))
    assert "status is 'failed'" in line


def test_a_notebook_without_a_reference_run_is_listed(tmp_path):
    root = _root(tmp_path)
    (root / "notebooks" / "92_new.py").write_text(NB)
    assert _report(root) == (
        [], ["notebooks/92_new.py: no reference run under outputs/reference/92_new"])  # fmt: skip


def test_a_study_of_a_missing_or_newer_sweep_is_a_problem(tmp_path):
    root = _root(tmp_path)
    run = root / "outputs" / "reference" / "91_nb" / "ref"
    cfg = json.loads((run / "config.json").read_text())
    cfg["parameters"]["sae_run"] = "outputs/reference/05_pareto/ref"
    (run / "config.json").write_text(json.dumps(cfg))
    assert "not a run folder" in _report(root)[0][0]
    sweep = root / "outputs" / "reference" / "05_pareto" / "ref"
    sweep.mkdir(parents=True)
    (sweep / "config.json").write_text(json.dumps({"started": "2026-02-01T00:00:00"}))
    assert "run again after it" in "\n".join(_report(root)[0])


def test_a_run_reading_a_newer_half_budget_sweep_is_a_problem(tmp_path):
    """12_doubling reads two sweeps (`sae_run`, `half_run`): either one rerun makes it stale."""
    root = _root(tmp_path)
    run = root / "outputs" / "reference" / "91_nb" / "ref"
    cfg = json.loads((run / "config.json").read_text())
    cfg["parameters"] |= {"half_run": "outputs/05_pareto/half", "other": "x"}
    (run / "config.json").write_text(json.dumps(cfg))
    sweep = root / "outputs" / "05_pareto" / "half"
    sweep.mkdir(parents=True)
    (sweep / "config.json").write_text(json.dumps({"started": "2025-12-01T00:00:00"}))
    assert _report(root) == ([], [])  # older than the run that read it: fresh
    (sweep / "config.json").write_text(json.dumps({"started": "2026-02-01T00:00:00"}))
    line = _report(root)[0][0]
    assert "outputs/05_pareto/half (half_run), which was run again after it" in line


def test_the_jobs_read_the_runs_their_presets_name():
    paper = "outputs/reference/05_pareto/paper"
    assert jobs._job_params("12_doubling", "paper", "paper") == {
        "sae_run": paper, "half_run": "outputs/reference/05_pareto/paper-half"}  # fmt: skip
    assert jobs._job_params("10_downstream", "paper", "paper") == {"sae_run": paper}
    assert jobs._job_params("05_pareto", "paper_half", "paper-half") == {}
    assert jobs._job_params("04_gradient_sae", "default", "ref") == {
        "study_run": "outputs/reference/11_gsae_study/paper"}  # fmt: skip
    assert jobs._job_params("02_e2e_sae", "gpt2", "ref") == {}  # "": storyworld's sweep not quoted
    order = list(jobs.JOBS)
    # every job runs after the jobs whose runs it reads: a run made before what it read is stale
    made = {}
    for i, (nb, preset, rid) in enumerate(order):
        for read in jobs._job_params(nb, preset, rid).values():
            assert made.get(read, len(order)) < i, (nb, rid, read)
        made[f"outputs/reference/{nb}/{rid}"] = i
    # the doubling test runs after both sweeps it reads
    assert order.index(("12_doubling", "paper", "paper")) > max(
        order.index(("05_pareto", "paper", "paper")),
        order.index(("05_pareto", "paper_half", "paper-half")))  # fmt: skip


def test_the_doubling_table_gives_each_change_with_its_interval_and_verdict(tmp_path):
    run = tmp_path / "outputs" / "reference" / "12_doubling" / "paper"
    run.mkdir(parents=True)
    stats = dict(n=2, sd=0.01)
    recs = [
        dict(result="L0 local", how="linear", half=20.0, full=15.0, mean=-0.25, lo=-0.3,
             hi=-0.2, verdict="moving", **stats),
        dict(result="L0 local", how="log_ce", half=20.0, full=15.5, mean=-0.225, lo=-0.3,
             hi=-0.15, verdict="moving", **stats),
        dict(result="L0 e2e", how="linear", half=8.0, full=6.0, mean=-0.25, lo=-0.5, hi=0.0,
             verdict="undecided", **stats),
        dict(result="L0(e2e) / L0(local)", how="linear", half=0.4, full=0.4, mean=0.0, lo=-0.05,
             hi=0.05, verdict="settled", **stats),
        dict(result="L0(e2e+ds) / L0(local)", how="linear", half=float("nan"), full=0.5,
             mean=float("nan"), lo=float("nan"), hi=float("nan"), verdict="undecided", n=0),
    ]  # fmt: skip
    summary = dict(target_ce_increase=0.06, tol=0.1, doubling=recs,
                   budgets=[dict(method="local", half=1_000_000, full=2_000_000)])  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    text = tables.render("doubling", "outputs/reference/12_doubling/paper", tmp_path)
    assert "| half budget (1M) | full budget (2M) |" in text
    assert "| L0 local | 20.0 | 15.0 | -25.0% [-30.0%, -20.0%] | -22.5% [-30.0%, -15.0%] | " \
           "**moving** |" in text  # fmt: skip
    assert "| L0(e2e) / L0(local) | 0.40 | 0.40 | 0.0% [-5.0%, +5.0%] |  | **settled** |" in text
    assert "| L0(e2e+ds) / L0(local) | n/a | 0.50 | n/a |  | **undecided** |" in text
    claim = renderers._doubling_claim(tables.RunFolder(run.relative_to(tmp_path), tmp_path, "c"))
    assert claim.startswith("1M → 2M tokens: L0 at CE +0.060 local -25.0% [-30.0%, -20.0%]")
    assert "L0(e2e) / L0(local) 0.40 → 0.40, 0.0% [-5.0%, +5.0%] (settled" in claim


METRICS = dict(val_ce=1.2345, unigram_ce=5.5, bigram_ce=2.4, pronoun_agreement=0.99,
               n_pronoun_positions=5000, quote_close_acc=0.98, n_quote_close_positions=900,
               n_params=439296, train_tokens=32768000, train_time_s=3135.0,
               forward_tokens_per_s=59451.0, n_ctx=128, val_tokens=400000)  # fmt: skip
DOC = """# Title

Prose stays.

<!-- table: storyworld_report from outputs/reference/00_storyworld/ref -->
old table
<!-- /table -->

More prose.
"""


def _doc_root(tmp_path: Path, metrics=METRICS) -> Path:
    root = tmp_path / "repo"
    run = root / "outputs" / "reference" / "00_storyworld" / "ref"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    (root / "README.md").write_text(DOC)
    return root


def test_tables_rewrite_blocks_in_place_and_check_lists_differences(tmp_path):
    root = _doc_root(tmp_path)
    assert tables.tables(root, write=False) == [
        "README.md: table storyworld_report from outputs/reference/00_storyworld/ref differs "
        "from its rendering"
    ]
    assert (root / "README.md").read_text() == DOC  # --check writes nothing
    tables.tables(root)
    text = (root / "README.md").read_text()
    assert text.startswith("# Title\n\nProse stays.\n\n<!-- table: storyworld_report")
    assert text.endswith("\n\n<!-- /table -->\n\nMore prose.\n")
    assert "`outputs/reference/00_storyworld/ref/metrics.json`" in text  # the caption
    assert "| validation CE (400,000 held-out tokens) | **1.234** nats/token |" in text
    assert "old table" not in text
    assert tables.tables(root, write=False) == []  # now equal
    assert cli.main(["tables", "--check"]) in (0, 1)  # the CLI runs (on the repository)


def test_a_missing_key_names_the_run_and_the_key(tmp_path):
    root = _doc_root(tmp_path, {k: v for k, v in METRICS.items() if k != "bigram_ce"})
    with pytest.raises(tables.TableError, match="run outputs/reference/00_storyworld/ref: "
                       r"metrics.json has no key \['bigram_ce'\]"):  # fmt: skip
        tables.tables(root)
    [line] = tables.tables(root, write=False)
    assert line.startswith("README.md: table 'storyworld_report'") and "bigram_ce" in line


def test_unknown_table_or_wrong_notebook_is_refused(tmp_path):
    root = _doc_root(tmp_path)
    with pytest.raises(tables.TableError, match="unknown table 'nope'"):
        tables.render("nope", "outputs/reference/00_storyworld/ref", root)
    with pytest.raises(tables.TableError, match="renders a 05_pareto run"):
        tables.render("claims", "outputs/reference/00_storyworld/ref", root)


def test_ci_rendering():
    assert tables.with_ci({"mean": 0.1354, "ci_lo": 0.12, "ci_hi": 0.1503}) == (
        "0.135 [0.120, 0.150]"
    )


def test_regeneration_never_replaces_a_completed_run(tmp_path, monkeypatch):
    root = _root(tmp_path)
    monkeypatch.setattr(jobs, "JOBS", (("91_nb", "default", "ref"),))
    assert jobs.plan(root) == []  # fresh: kept
    (root / "notebooks" / "91_nb.py").write_text(NB.replace("print(n)   ", "print(2 * n)"))
    with pytest.raises(runs.RunExists, match="outputs/reference/91_nb/ref: code cell 2"):
        jobs.plan(root)
    (root / "outputs" / "reference" / "91_nb" / "ref" / "config.json").unlink()
    assert jobs.plan(root) == [("91_nb", "default", "ref")]  # no completed run: made


def test_regenerate_runs_the_jobs_into_reference_ref_and_refuses_a_dirty_tree(
    tmp_path, monkeypatch
):
    import subprocess

    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    (root / "README.md").write_text("# nothing generated\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=root, check=True)
    calls = []

    def fake_run(nb, params, preset, run_id, out_root):
        calls.append((nb, params, preset, run_id, Path(out_root)))
        return Path(out_root) / nb / run_id

    monkeypatch.setattr(runs, "run_notebook", fake_run)
    todo = (("05_pareto", "default", "ref"), ("10_downstream", "default", "ref"),
            ("05_pareto", "paper", "paper"), ("10_downstream", "default", "paper"))  # fmt: skip
    monkeypatch.setattr(jobs, "JOBS", todo)
    jobs.regenerate(root, run_ids=["paper"])  # only the jobs of one run id
    ref = root / "outputs" / "reference"
    assert calls == [
        ("05_pareto", {}, "paper", "paper", ref),
        ("10_downstream", {"sae_run": "outputs/reference/05_pareto/paper"}, "default", "paper",
         ref),
    ]  # fmt: skip
    calls.clear()
    jobs.regenerate(root)
    assert calls[:2] == [
        ("05_pareto", {}, "default", "ref", ref),
        ("10_downstream", {"sae_run": "outputs/reference/05_pareto/ref"}, "default", "ref", ref),
    ]
    (root / "new.py").write_text("x = 1\n")  # an uncommitted source file: refused
    with pytest.raises(RuntimeError, match="dirty"):
        jobs.regenerate(root)


def test_plan_reruns_a_reader_of_a_rerun_sweep_and_refuses_a_missing_one(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    (root / "outputs" / "reference").mkdir(parents=True)
    todo = (("05_pareto", "paper_half", "paper-half"), ("12_doubling", "paper", "paper"))
    monkeypatch.setattr(jobs, "JOBS", todo)
    # 12 reads 05_pareto/paper, which neither exists nor is among the jobs: refused up front
    with pytest.raises(runs.RunExists, match="reads outputs/reference/05_pareto/paper, which"):
        jobs.plan(root)
    monkeypatch.setattr(jobs, "check_run", lambda folder, root: freshness.Freshness(folder))
    monkeypatch.setattr(runs, "run_status", lambda folder: "completed")
    assert jobs.plan(root) == []  # everything completed and fresh: kept
    monkeypatch.setattr(
        runs, "run_status", lambda f: None if "paper-half" in str(f) else "completed"
    )
    with pytest.raises(
        runs.RunExists, match="12_doubling/paper: it reads .*paper-half, which is rerun"
    ):
        jobs.plan(root)


def _changed_doc_root(tmp_path: Path) -> Path:
    """A repository whose README cites a 00_storyworld reference run whose notebook was edited."""
    root = _doc_root(tmp_path)
    run = root / "outputs" / "reference" / "00_storyworld" / "ref"
    nb = jupytext.reads(NB, fmt="py:percent")
    nbformat.write(nb, run / "notebook.ipynb")
    cfg = dict(notebook="00_storyworld", status="completed", git={"sha": "0123456789abc",
               "dirty": False}, parameters={}, started="2026-01-01T00:00:00")  # fmt: skip
    (run / "config.json").write_text(json.dumps(cfg))
    (root / "notebooks").mkdir()
    (root / "notebooks" / "00_storyworld.py").write_text(NB)
    tables.tables(root)  # rendered while the notebook is as it ran: no note
    (root / "notebooks" / "00_storyworld.py").write_text(NB.replace("print(n)", "print(n)  # x"))
    return root


def test_an_edited_notebook_leaves_the_tests_green_and_is_marked_in_the_caption(tmp_path):
    root = _changed_doc_root(tmp_path)
    assert "changed since" not in (root / "README.md").read_text()
    assert tables.tables(root, write=False, strict=False) == []  # what make test checks
    [line] = tables.tables(root, write=False)  # check --strict: the caption lacks the note
    assert "storyworld_report" in line
    tables.tables(root)
    text = (root / "README.md").read_text()
    assert ("*Notebook changed since this run: `notebooks/00_storyworld.py` (made at "
            "`0123456789`).*") in text  # fmt: skip
    assert tables.tables(root, write=False) == []
    assert tables.tables(root, write=False, strict=False) == []
    problems, [changed] = _report(root)
    assert problems == [] and changed.startswith("outputs/reference/00_storyworld/ref: notebook")


def test_check_fails_only_when_strict_on_a_changed_notebook(tmp_path, monkeypatch, capsys):
    root = _changed_doc_root(tmp_path)
    tables.tables(root)
    monkeypatch.setattr(runs, "ROOT", root)
    assert cli.main(["check"]) == 0
    assert cli.main(["check", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "changed since their reference run" in out and "00_storyworld/ref" in out


def _sae_run(folder: Path, names: list[str], own: bool = False, status="completed") -> None:
    """A run folder holding saved SAEs: a sweep's `runs/<name>/saes/s` or a notebook's `saes/s`."""
    from saelab.core.sae import SAE, SAEConfig, save_sae

    for i, name in enumerate(names):
        torch_seed(i)
        sae = SAE.from_config(SAEConfig.create(architecture="topk", d_in=8, d_sae=32, k=4))
        save_sae(sae, folder / ("saes" if own else f"runs/{name}/saes") / "s")
    (folder / "config.json").write_text(json.dumps({"status": status, "parameters": {}}))


def torch_seed(i: int) -> None:
    import torch

    torch.manual_seed(i)


def test_prune_keeps_what_a_study_loaded_as_float16_and_drops_the_rest(tmp_path):
    import torch

    from saelab.core.sae import load_sae
    from saelab_lab import prune

    root = tmp_path / "repo"
    ref = root / "outputs" / "reference"
    sweep, own, study = ref / "05_pareto" / "x", ref / "01_nb" / "x", ref / "06_st" / "x"
    _sae_run(sweep, ["a", "b"])
    _sae_run(own, ["only"], own=True)
    _sae_run(ref / "05_pareto" / "running", ["c"], status="running")
    study.mkdir(parents=True)
    (study / "config.json").write_text(
        json.dumps(
            {"status": "completed", "parameters": {"sae_run": "outputs/reference/05_pareto/x"}}
        )
    )
    (study / "summary.json").write_text(json.dumps({"loaded_runs": ["a"]}))
    trained = load_sae(sweep / "runs/a/saes/s")
    dry = prune.prune(root, dry_run=True)
    assert sorted(len(d.removed) for d in dry) == [1, 1]
    assert (sweep / "runs/b/saes/s/sae.safetensors").exists()  # a dry run changes nothing

    done = {d.folder.name: d for d in prune.prune(root)}
    assert done["x"].bytes_after < done["x"].bytes_before
    assert not (sweep / "runs/b/saes/s/sae.safetensors").exists()
    assert (sweep / "runs/b/saes/s/cfg.json").exists()  # what it was stays readable
    assert not (own / "saes/s/sae.safetensors").exists()  # a notebook's own SAEs: no study reads
    assert (ref / "05_pareto/running/runs/c/saes/s/sae.safetensors").exists()  # not completed
    record = json.loads((sweep / "pruned.json").read_text())
    assert record["removed"] == ["runs/b/saes/s/sae.safetensors"]
    assert record["float16"] == ["runs/a/saes/s/sae.safetensors"]
    kept = load_sae(sweep / "runs/a/saes/s")
    assert kept.W_enc.dtype == torch.float32  # the config's dtype, not the file's
    torch.testing.assert_close(kept.W_dec, trained.W_dec, rtol=1e-3, atol=1e-4)
    assert torch.equal(kept.b_dec, trained.b_dec)  # only the matrices are rounded
    assert not any(d.removed or d.halved for d in prune.prune(root))  # a second prune: nothing


def test_prune_keeps_every_sae_of_a_sweep_a_study_does_not_account_for(tmp_path):
    from saelab_lab import prune

    root = tmp_path / "repo"
    sweep, study = root / REF_SWEEP, root / "outputs/reference/06_st/x"
    _sae_run(sweep, ["a", "b"])
    study.mkdir(parents=True)
    (study / "config.json").write_text(
        json.dumps({"status": "completed", "parameters": {"sae_run": REF_SWEEP}})
    )
    (study / "summary.json").write_text(json.dumps({"seeds": [0]}))  # no loaded_runs
    (done,) = prune.prune(root)
    assert done.removed == [] and len(done.halved) == 2


REF_SWEEP = "outputs/reference/05_pareto/x"
