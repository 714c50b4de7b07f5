"""Notebooks run by hand and by the runner: paths from the repository root, fresh interactive
folders, the runner's progress lines, kernel output on the terminal, no frozen progress bars."""

import json
import shutil

import pytest

from saelab import runs

PRINTING = """# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
n: int = 3  # loop length
out_dir: str = "outputs/91_print/interactive-{time}"  # run folder

# %%
from saelab.core.progress import progress_bar  # what train and the cache show

with progress_bar(True, total=n) as bar:
    for _ in range(n):
        bar.update()
print("hello from the kernel", flush=True)
"""


def test_resolve_paths_against_the_root(tmp_path):
    assert runs.resolve("outputs/x") == runs.ROOT / "outputs" / "x"
    assert runs.resolve(tmp_path) == tmp_path
    assert runs.resolve_input("storyworld") == "storyworld"  # a name, not a path
    assert runs.resolve_input("notebooks") == str(runs.ROOT / "notebooks")


def test_quoted_summary_reads_the_run_or_says_why_not(tmp_path, capsys):
    assert runs.quoted_summary("", "paper_run") is None  # the gpt2 / gemma2 presets quote none
    assert "paper_run is empty" in capsys.readouterr().out
    assert runs.quoted_summary(str(tmp_path / "absent"), "paper_run", takes="an hour") is None
    said = capsys.readouterr().out
    assert "absent is not here" in said and "make reference" in said and "(an hour)" in said
    (tmp_path / "summary.json").write_text(json.dumps({"l0_ratio": 0.4}))
    assert runs.quoted_summary(str(tmp_path), "paper_run") == {"l0_ratio": 0.4}
    assert capsys.readouterr().out == ""


def test_notebook_out_dir_is_fresh_and_never_a_completed_run(tmp_path):
    out = runs.notebook_out_dir(tmp_path / "nb" / "interactive-{time}")
    assert out.is_dir() and out.name.startswith("interactive-") and "{" not in out.name
    done = tmp_path / "done"
    done.mkdir()
    (done / "config.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(runs.RunExists, match="completed run"):
        runs.notebook_out_dir(done)
    running = tmp_path / "running"  # the runner's own folder while it executes the notebook
    running.mkdir()
    (running / "config.json").write_text(json.dumps({"status": "running"}))
    assert runs.notebook_out_dir(running) == running


def test_runner_prints_progress_and_kernel_output_without_frozen_bars(nbdir, capfd):
    (nbdir / "notebooks" / "91_print.py").write_text(PRINTING)
    out = runs.run_notebook("91_print", run_id="r", out_root=nbdir / "outputs")
    text = capfd.readouterr().out
    assert "91_print: started" in text and str(out) in text
    assert "hello from the kernel" in text  # the kernel's print reached our stdout
    assert "91_print: completed in" in text
    assert text.index("started") < text.index("hello") < text.index("completed")
    nb = json.loads((out / "notebook.ipynb").read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    saved = json.dumps(outputs)
    assert "hello from the kernel" in saved
    assert "widget-view" not in saved and "0%|" not in saved  # no bar saved frozen at 0%


def test_study_notebook_runs_from_the_notebooks_folder(tmp_path):
    """10_downstream (reads a sweep, trains nothing: the cheapest study) executed as JupyterLab
    would, with notebooks/ as working directory and the notebook's own defaults: the relative
    sae_run resolves against the root, and the outputs land in a fresh
    outputs/10_downstream/interactive-<time> folder of the repository; an absolute out_dir is
    used as given."""
    import papermill as pm

    source = runs.paired_notebook("10_downstream")
    root_out = runs.ROOT / "outputs" / "10_downstream"
    before = set(root_out.glob("interactive-*")) if root_out.exists() else set()
    executed = tmp_path / "executed.ipynb"
    try:
        pm.execute_notebook(str(source), str(executed), cwd=str(runs.NOTEBOOKS),
                            kernel_name="python3", progress_bar=False)  # fmt: skip
        new = set(root_out.glob("interactive-*")) - before
        assert len(new) == 1, new
        folder = new.pop()
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["sae_run"] == "outputs/reference/05_pareto/ref"
        assert (folder / "figures" / "downstream_vs_ce.png").stat().st_size > 1000
        assert not (runs.NOTEBOOKS / "outputs").exists()  # nothing relative to notebooks/
    finally:
        for d in set(root_out.glob("interactive-*")) - before:
            shutil.rmtree(d)
    mine = tmp_path / "mine"
    pm.execute_notebook(str(source), str(executed), parameters={"out_dir": str(mine)},
                        cwd=str(runs.NOTEBOOKS), kernel_name="python3",
                        progress_bar=False)  # fmt: skip
    assert (mine / "summary.json").exists() and (mine / "figures" / "downstream.png").exists()
    printed = ["".join(o.get("text", "")) for c in json.loads(executed.read_text())["cells"]
               if c["cell_type"] == "code" and "ratio_e2e = " in "".join(c["source"])
               for o in c["outputs"]]  # fmt: skip
    assert "downstream MSE at resid_post.5" in "".join(printed)  # the matched numbers
