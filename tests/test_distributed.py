"""Data-parallel training: 2 gloo processes under torchrun equal one process with the same batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from configs import killed_at

import saelab as sl
from saelab.core import distributed as dd
from saelab.core import ranks
from saelab.core import training as tr

N_CTX, DATA_TOKENS = 64, 8_000
# exclude_tokens=(): with special tokens left out, each rank's SAE terms average over its own
# kept tokens, so the ranks' mean differs slightly from one process's (core/ranks.py)
BASE = dict(sites=["resid_pre.3"], sae=dict(architecture="relu", dict_ratio=4),
            n_tokens=8 * 64 * 8, batch_size=8, lr=3e-3, warmup=2, log_every=2,
            eval_tokens=4 * 64, checkpoint_every=4, exclude_tokens=[])  # fmt: skip


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """One token cache for the test process and the ranks, so all see identical data."""
    path = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("SAELAB_CACHE", path)
    return os.environ["SAELAB_CACHE"]


def _args(cfg_path, out, *extra) -> list[str]:
    return ["--config", str(cfg_path), "--out", str(out), "--n-ctx", str(N_CTX),
            "--data-tokens", str(DATA_TOKENS), *extra]  # fmt: skip


def _torchrun(args: list[str], cache: str) -> str:
    env = os.environ | {"OMP_NUM_THREADS": "1", "SAELAB_CACHE": cache}  # 1 thread per rank
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "saelab.core.distributed", *args]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def inputs(cache_env, tmp_path_factory):
    """The entry point's (lm, data, eval_data), loaded in this process for the reference runs."""
    cfg_path = tmp_path_factory.mktemp("cfg") / "cfg.json"
    cfg_path.write_text(json.dumps(BASE))
    lm, _, data, eval_data = dd.load_inputs(dd._parser().parse_args(_args(cfg_path, "x")), "cpu")
    return lm, data, eval_data


def _single(inputs, cfg: dict, out) -> tr.Run:
    lm, data, eval_data = inputs
    return tr.train(
        lm, data, tr.TrainConfig.from_dict(cfg), out, eval_data=eval_data, progress=False
    )


def _compare(single: tr.Run, out) -> dict:
    """Max |param diff| and metric diffs of the run in `out` against `single`; asserts equality."""
    sae = sl.load_sae(out / "saes" / "resid_pre.3")
    pairs = zip(single.sae.parameters(), sae.parameters(), strict=True)
    diff = max((p - q).abs().max().item() for p, q in pairs)
    assert diff < 1e-5, diff
    # rank 0 alone wrote the log: one line per record, the records of the single-process run
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in log] == [(r["step"], r["kind"]) for r in single.log]
    a, b = single.log[-1], log[-1]
    deltas = {k: abs(a[k] - b[k]) for k in a.keys() - {"kind"}}
    assert all(d <= 1e-5 * max(1.0, abs(a[k])) for k, d in deltas.items()), deltas
    for r, s in zip(single.log, log, strict=True):  # per-step train loss, averaged over ranks
        if r["kind"] == "train":
            assert s["loss"] == pytest.approx(r["loss"], rel=1e-5)
    print(f"max |param diff| {diff:.2e}, max eval metric diff {max(deltas.values()):.2e}")
    return deltas


def test_two_gloo_ranks_equal_one_process(inputs, cache_env, tmp_path):
    cfg = BASE | {"loss": "local"}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    single = _single(inputs, cfg, tmp_path / "single")
    log = _torchrun(_args(tmp_path / "cfg.json", tmp_path / "ddp", "--log-to", "tensorboard"),
                    cache_env)  # fmt: skip
    assert (
        "RuntimeWarning" not in log
    )  # `-m saelab.core.distributed` runs a freshly imported module
    _compare(single, tmp_path / "ddp")
    assert not list((tmp_path / "ddp").glob(".*tmp*"))
    # only rank 0 tracks: one event file (a second rank would add its own, named by its PID)
    assert len(list((tmp_path / "ddp" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_two_gloo_ranks_fine_tune_with_the_one_process_kl_scale(inputs, cache_env, tmp_path):
    """The fine-tune's balance is measured on the whole global batch: each rank's MSE and KL
    averaged over ranks (`ranks.mean`), so both ranks use the single process's scale."""
    cfg = BASE | {"loss": "local", "finetune": {"fraction": 0.5}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    single = _single(inputs, cfg, tmp_path / "single")
    _torchrun(_args(tmp_path / "cfg.json", tmp_path / "ddp"), cache_env)
    _compare(single, tmp_path / "ddp")
    log = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    (ours,) = [r for r in log if r["kind"] == "finetune"]
    (one,) = [r for r in single.log if r["kind"] == "finetune"]
    assert ours["step"] == one["step"] == 4
    assert ours["kl_scale"] == pytest.approx(one["kl_scale"], rel=1e-5)


def test_torchrun_resumes_an_e2e_checkpoint(inputs, cache_env, tmp_path, monkeypatch):
    """An e2e run stopped after its step-4 checkpoint, finished by 2 ranks, equals the whole run."""
    cfg = BASE | {"loss": "e2e"}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    single = _single(inputs, cfg, tmp_path / "single")
    real = killed_at(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        _single(inputs, cfg, tmp_path / "ddp")
    monkeypatch.setattr(tr, "compute_loss", real)
    assert torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["step"] == 4
    _torchrun(_args(tmp_path / "cfg.json", tmp_path / "ddp", "--resume"), cache_env)
    _compare(single, tmp_path / "ddp")


def test_shards_cover_the_global_batch_and_bad_batches_are_refused():
    batch = torch.arange(12).reshape(6, 2)
    parts = [ranks.shard(batch, ranks.World(r, 3)) for r in range(3)]
    assert torch.equal(torch.cat(parts), batch)
    with pytest.raises(ValueError, match=r"batch_size=8 \(the global batch\) is not divisible"):
        ranks.check_batch(8, ranks.World(0, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_training_matches_cpu(cache_env, tmp_path):
    topk = {"architecture": "topk", "k": 8, "dict_ratio": 4}
    cfg = tr.TrainConfig.from_dict(BASE | {"sae": topk})
    runs = {}
    for device in ("cpu", "cuda"):
        lm = sl.load_model("storyworld", device=device)
        data = sl.token_dataset("storyworld", lm.tokenizer, N_CTX, n_tokens=DATA_TOKENS)
        runs[device] = tr.train(lm, data, cfg, tmp_path / device, progress=False)
    assert runs["cuda"].sae.device.type == "cuda"
    for p, q in zip(runs["cpu"].sae.parameters(), runs["cuda"].sae.parameters(), strict=True):
        assert torch.allclose(p, q.cpu(), atol=1e-3)
    assert runs["cuda"].log[-1]["ce_sae"] == pytest.approx(runs["cpu"].log[-1]["ce_sae"], rel=1e-2)
