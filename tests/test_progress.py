"""`make run` is never silent for a minute: under the runner, training, evaluation and cache
loops print progress lines (done / total, tokens/s, ETA), and the runner itself says a notebook
is still running when it has printed nothing for `runs.HEARTBEAT_S` seconds (issue 27)."""

import re

import saelab as sl
from saelab import runs

SLOW = """# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
seconds: float = 2.5  # how long the cell stays silent
out_dir: str = "outputs/slow/scratch"  # run folder

# %%
import time

time.sleep(seconds)
"""


def test_training_and_evaluation_print_progress_lines_when_bars_are_off(
    lm, storyworld_data, monkeypatch, capsys
):
    monkeypatch.setenv("TQDM_DISABLE", "1")  # as in a kernel the runner starts
    monkeypatch.setenv("SAELAB_HEARTBEAT", "0")  # a line at every step / batch
    sae = sl.SAEConfig.create(architecture="topk", k=4, dict_ratio=2)
    cfg = sl.TrainConfig(sites=("resid_pre.3",), sae=sae, batch_size=4, n_tokens=4 * 64 * 4,
                         eval_tokens=8 * 64, alive_tokens=None)  # fmt: skip
    sl.train(lm, storyworld_data(64, 6000), cfg, None)
    out = capsys.readouterr().out
    steps = re.findall(r"\] local/topk: (\d)/4 steps, [\d,]+ tokens/s, ETA \d+s", out)
    assert steps == ["1", "2", "3"]  # the last step has its own summary line
    assert re.search(r"\] evaluate 1 SAE set\(s\): 4/8 rows, [\d,]+ tokens/s, ETA", out)


def test_the_runner_says_a_silent_notebook_is_still_running(tmp_path, monkeypatch, capsys):
    d = tmp_path / "notebooks"
    d.mkdir()
    (d / "91_slow.py").write_text(SLOW)
    monkeypatch.setattr(runs, "NOTEBOOKS", d)
    monkeypatch.setattr(runs, "HEARTBEAT_S", 1)
    runs.run_notebook("91_slow", run_id="r", out_root=tmp_path / "outputs")
    out = capsys.readouterr().out
    assert re.search(r"91_slow: still running \([\d.]+ s in; no output for \d s\)", out), out


def test_the_main_job_ends_by_saying_what_to_open_and_its_headline(tmp_path):
    import json

    run = tmp_path / "05_pareto" / "r1"
    run.mkdir(parents=True)
    ratio = {"mean": 0.47, "n": 1, "lo": None, "hi": None}
    summary = {"l0_ratio": {"linear": ratio}, "target_ce_increase": 0.0712}
    (run / "summary.json").write_text(json.dumps(summary))
    text = runs.headline(run)
    assert text.startswith(f"Open first: {run}/notebook.ipynb")
    assert "this run 0.47 (1 seed, CE +0.0712)" in text
    assert "reference run outputs/reference/05_pareto/ref: 0." in text  # the shipped reference
    assert "Braun et al.: 0.40" in text and "This is a preview" in text
