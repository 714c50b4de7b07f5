"""Writes tests/data/fixed_seed_weights.safetensors and fixed_seed_metrics.json: the weights and
final evaluation of three short fixed-seed runs (local ReLU, e2e TopK, local g-SAE) on
storyworld. `test_fixed_seed.py` retrains them and compares, so a restructuring that changes
what training or evaluation computes fails. Rerun only when a change in behaviour is intended,
and say why in LOG.md.

    .venv/bin/python tests/make_fixed_seed_weights.py
"""

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from fixed_seed_runs import RUNS, final_eval, train_run  # noqa: E402

import saelab as sl  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    lm = sl.load_model("storyworld", device="cpu")
    weights, metrics = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            sae = train_run(lm, name, Path(tmp) / name)
            for k, v in sae.state_dict().items():
                weights[f"{name}.{k}"] = v.detach().contiguous()
            metrics[name] = final_eval(Path(tmp) / name)
    data = Path(__file__).parent / "data"
    save_file(weights, str(data / "fixed_seed_weights.safetensors"))
    (data / "fixed_seed_metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    print(f"wrote {len(weights)} tensors and {len(metrics)} evaluations to {data}")
