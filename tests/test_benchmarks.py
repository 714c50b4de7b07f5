"""Every benchmark script runs (one step, tiny batch), so a rename never breaks one unnoticed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_script_has_a_smoke_test():
    scripts = {p.stem for p in BENCH.glob("*.py")}
    assert scripts == {"throughput", "real_shapes", "vs_e2e_sae", "evaluate_many"}


@pytest.mark.slow
def test_throughput_runs_every_architecture_and_objective_for_one_step(tmp_path):
    import saelab as sl

    out = tmp_path / "t.json"
    args = "--steps 1 --warmup-steps 0 --batch-size 2 --n-ctx 16 --threads 1 --out".split()
    rows = _load("throughput").main([*args, str(out)])
    combos = {(r["arch"], r["loss"]) for r in rows}
    assert combos == {(a, o) for a in sl.architectures() for o in sl.OBJECTIVES}
    assert all(r["tok_s"] > 0 and r["first_loss"] == r["first_loss"] for r in rows)
    assert json.loads(out.read_text())["rows"] == rows


@pytest.mark.slow
def test_real_shapes_runs_a_bare_and_an_sae_step(tmp_path):
    out = tmp_path / "r.json"
    args = ["--tiny", "--models", "llama", "--steps-to-run", "forward+backward,gtopk:e2e",
            "--steps", "1", "--warmup-steps", "0", "--batch-size", "2", "--n-ctx", "8",
            "--threads", "1", "--models-dir", str(tmp_path / "m"), "--out", str(out)]  # fmt: skip
    rows = _load("real_shapes").main(args)
    assert [r["step"] for r in rows] == ["forward+backward", "gtopk:e2e"]
    assert all(r["s_step"] > 0 and r["peak_mib"] > 0 and r["vocab"] == 1000 for r in rows)
    assert rows[1]["step_in_bare_fwd_bwd"] > 0
    assert json.loads(out.read_text())["rows"] == rows


@pytest.mark.slow
def test_vs_e2e_sae_alternates_saelab_model_and_sweep_workers(tmp_path):
    """The e2e_sae contender needs its own venv (benchmarks/e2e_sae_env.sh); the rest runs."""
    out = tmp_path / "v.json"
    args = [
        "--ratios",
        "2",
        "--combos",
        "relu:local,topk:e2e",
        "--rounds",
        "1",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--n-ctx",
        "16",
        "--k",
        "4",
        "--no-e2e-sae",
        "--out",
        str(out),
    ]
    rows = _load("vs_e2e_sae").main(args)
    assert [r["combo"] for r in rows] == ["relu:local", "topk:e2e"]
    for r in rows:
        assert r["saelab_tok_s"] > 0 and r["model_tok_s"] > 0 and r["sweep4_cost_in_runs"] > 0
        assert "e2e_sae_tok_s" not in r
    assert json.loads(out.read_text())["rows"] == rows


def test_evaluate_many_times_both_ways_and_checks_they_agree(tmp_path):
    out = tmp_path / "e.json"
    args = ["--n-saes", "2", "--n-ctx", "16", "--batch-size", "4", "--eval-tokens", "64",
            "--alive-tokens", "150", "--threads", "1", "--out", str(out)]  # fmt: skip
    (row,) = _load("evaluate_many").main(args)
    # 10 rows of 15 SAE positions, less the documents' BOS tokens mid-row (left out)
    assert 140 <= row["alive_window"] <= 150 and row["s_alone"] > 0 and row["s_many"] > 0
    assert row["max_rel_diff"] < 1e-5
    assert json.loads(out.read_text())["rows"] == [row]
