"""Restructuring the library must not change what it computes: four short fixed-seed runs
(local ReLU, e2e TopK, local g-SAE, e2e+ds ReLU) give the weights and final evaluation recorded
in tests/data by `make_fixed_seed_weights.py` before the change."""

import json
from pathlib import Path

import pytest
import torch
from fixed_seed_runs import RUNS, final_eval, train_run
from safetensors.torch import load_file

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def expected():
    return (load_file(str(DATA / "fixed_seed_weights.safetensors")),
            json.loads((DATA / "fixed_seed_metrics.json").read_text()))  # fmt: skip


@pytest.mark.parametrize("name", list(RUNS))
def test_a_fixed_seed_run_trains_the_recorded_weights(lm, tmp_path, expected, name):
    weights, metrics = expected
    sae = train_run(lm, name, tmp_path / name)
    got = {f"{name}.{k}": v for k, v in sae.state_dict().items()}
    want = {k: v for k, v in weights.items() if k.startswith(f"{name}.")}
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        # bitwise on the machine that recorded them; 1e-6 leaves room for another CPU's kernels
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    ev = final_eval(tmp_path / name)
    assert ev.keys() == metrics[name].keys()
    for k, v in metrics[name].items():
        assert ev[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
