"""saelab.runs on a tiny notebook: run folders, config.json, resumable sweeps, collection."""

import json

import pytest

from saelab import runs


def test_run_notebook_writes_run_folder(nbdir):
    out = runs.run_notebook("90_tiny", {"b": 0.5}, preset="big", run_id="r1",
                            out_root=nbdir / "outputs")  # fmt: skip
    assert out == nbdir / "outputs" / "90_tiny" / "r1"
    assert json.loads((out / "summary.json").read_text()) == {"total": 100.5}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["parameters"] == {"a": 100, "b": 0.5, "out_dir": str(out)} and cfg["preset"] == "big"
    assert set(cfg["git"]) == {"sha", "dirty"} and cfg["versions"]["papermill"]
    assert (out / "notebook.ipynb").exists()


def test_failed_run_keeps_notebook_and_raises(nbdir):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="a must be >= 0"):
        runs.run_notebook("90_tiny", {"a": -1}, run_id="bad", out_root=nbdir / "outputs")
    assert (nbdir / "outputs" / "90_tiny" / "bad" / "notebook.ipynb").exists()


def test_sweep_skips_finished_runs_and_collects(nbdir, monkeypatch):
    points = runs.grid(a=[1, 2], b=[0.5, 1.5])
    assert len(points) == 4 and {"a": 2, "b": 0.5} in points
    outs = runs.sweep("90_tiny", points, out_root=nbdir / "outputs")
    assert all((o / "summary.json").exists() for o in outs)
    # an interrupted run is redone (the old folder moved aside); completed ones are skipped
    cfg = json.loads((outs[0] / "config.json").read_text())
    assert cfg["status"] == "completed"
    (outs[0] / "config.json").write_text(json.dumps(cfg | {"status": "interrupted"}))
    ran = []
    real = runs.run_notebook
    monkeypatch.setattr(
        runs, "run_notebook", lambda nb, p, *a, **k: ran.append(p) or real(nb, p, *a, **k)
    )
    runs.sweep("90_tiny", points, out_root=nbdir / "outputs")
    assert ran == [points[0]]
    df = runs.collect(nbdir / "outputs" / "90_tiny")
    assert len(df) == 4 and sorted(df["total"]) == [1.5, 2.5, 2.5, 3.5]


def test_cli_run(nbdir, capsys, monkeypatch):
    monkeypatch.setattr(runs, "ROOT", nbdir)
    assert runs.main(["run", "90_tiny", "--run-id", "cli", "-p", "a", "3"]) == 0
    assert "outputs in" in capsys.readouterr().out


def test_parse_value_reads_exponent_floats():
    assert runs.parse_value("5e-4") == 0.0005 and runs.parse_value("3") == 3
    assert runs.parse_value("[1, 2]") == [1, 2] and runs.parse_value("gpt2") == "gpt2"
    assert runs.parse_value("") == ""  # "name no run" (pareto_run: ""), not None


def test_a_study_runs_at_the_main_jobs_preset_where_it_has_one(nbdir, monkeypatch):
    """`main --preset paper` runs 05 at `paper` and each study at its own `paper` preset if it has
    one, else at `default`."""
    assert runs.study_preset("90_tiny", "big") == "big"
    assert runs.study_preset("90_tiny", "paper") == "default"  # no 90_tiny.paper.yaml
    calls = []
    monkeypatch.setattr(runs, "run_notebook", lambda nb, p, preset, rid, root: calls.append(
        (nb, preset)) or nbdir / nb / (rid or "x"))  # fmt: skip
    monkeypatch.setattr(runs, "notebook_parameters", lambda nb: {"sae_run": {}})
    monkeypatch.setattr(runs, "paired_notebook", lambda nb: nb)
    (nbdir / "05_pareto" / "p").mkdir(parents=True)
    runs.main_job("p", ["90_tiny", "91_other"], nbdir, preset="big")
    assert calls == [("05_pareto", "big"), ("90_tiny", "big"), ("91_other", "default")]
