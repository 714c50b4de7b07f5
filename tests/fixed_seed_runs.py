"""Three short fixed-seed runs whose weights and final evaluation must not change when code is
restructured (`test_fixed_seed.py`; `make_fixed_seed_weights.py` writes the expected values)."""

import json
from pathlib import Path

import torch

import saelab as sl

SITE = "resid_pre.3"
RUNS = {
    "local_relu": dict(sae=dict(architecture="relu", dict_ratio=4, sparsity=1.0), loss="local"),
    "e2e_topk": dict(sae=dict(architecture="topk", dict_ratio=4, k=8), loss="e2e"),
    "local_gtopk": dict(sae=dict(architecture="gtopk", dict_ratio=4, k=8), loss="local"),
    "e2eds_relu": dict(
        sae=dict(architecture="relu", dict_ratio=4, sparsity=1.0),
        loss=dict(name="e2e+ds", kl_coeff=0.5, ds_coeff=2.5, ds_units="raw"),  # as recorded
    ),
}


def train_run(lm, name: str, out_dir: Path):
    """Train run `name` of RUNS (12 steps of 8 x 64 tokens, seed 0) into `out_dir`; its SAE."""
    spec = dict(RUNS[name])
    sae = sl.SAEConfig.create(**spec.pop("sae"))
    data = sl.token_dataset("storyworld", lm.tokenizer, n_ctx=64, n_tokens=20_000)
    cfg = sl.TrainConfig(
        sites=(SITE,), sae=sae, **spec, batch_size=8,
        n_tokens=12 * 8 * 64, lr=3e-3, warmup=2, log_every=4, eval_tokens=4 * 64,
        alive_tokens=None, checkpoint_every=6, seed=0, b_dec_init="zeros",
        exclude_tokens=(),  # as recorded (before mid-row special tokens were left out)
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # another thread count sums in another order (1e-5 after 12 steps)
    try:
        return sl.train(lm, data, cfg, out_dir=out_dir, progress=False).sae
    finally:
        torch.set_num_threads(threads)


def final_eval(out_dir: Path) -> dict:
    """The numeric fields of the last evaluation record of the run's metrics.jsonl."""
    recs = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in recs if r.get("type", r.get("kind")) in ("eval", "final")] or recs[-1:]
    return {k: v for k, v in last[-1].items() if isinstance(v, int | float) and k != "step"}
