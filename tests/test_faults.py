"""Faults: a training process SIGKILLed in the middle of a checkpoint write, then resumed.

The NaN/inf stop and the in-process interrupt + resume are in tests/test_train.py; the sweep
that skips finished runs and redoes unfinished ones is in tests/test_runs.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from saelab.core import training as tr

# Trains like tests do, but its `kill_at`-th checkpoint write stops half way: it writes half the
# bytes to the temp file, flags the test, and hangs there until the test SIGKILLs it.
SCRIPT = """
import io, json, os, sys, time
import torch
import saelab as sl
from saelab.core import training as tr

out, flag, kill_at, tokens, cfg = sys.argv[1:]
data = sl.TokenDataset(torch.load(tokens), prepend_bos=True)  # storyworld rows: BOS first
cfg = tr.TrainConfig.from_dict(json.loads(cfg))
lm = sl.load_model("storyworld", device="cpu")
real_save, calls = torch.save, [0]


def save_and_hang(obj, f, *a, **k):
    calls[0] += 1
    if calls[0] < int(kill_at):
        return real_save(obj, f, *a, **k)
    buf = io.BytesIO()
    real_save(obj, buf, *a, **k)
    with open(f, "wb") as fh:
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        fh.flush()
        os.fsync(fh.fileno())
    open(flag, "w").close()
    time.sleep(600)


torch.save = save_and_hang
tr.train(lm, data, cfg, out, progress=False)
"""


@pytest.fixture(scope="module")
def data(storyworld_data):
    return storyworld_data(64, n_tokens=8_000)


def test_sigkill_mid_checkpoint_write_then_resume_matches(lm, data, tmp_path):
    cfg = dict(sites=["resid_pre.3"], sae=dict(architecture="topk", k=8, dict_ratio=4),
               n_tokens=8 * 64 * 8,
               batch_size=8, lr=3e-3, warmup=2, log_every=2, eval_tokens=4 * 64,
               checkpoint_every=1, dead_tokens=1024)  # fmt: skip
    out, flag, tokens = tmp_path / "run", tmp_path / "writing", tmp_path / "tokens.pt"
    torch.save(data.tokens, tokens)
    (tmp_path / "script.py").write_text(SCRIPT)  # nnsight needs a traced function in a file
    cmd = [sys.executable, str(tmp_path / "script.py"), str(out), str(flag), "5", str(tokens),
           json.dumps(cfg)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.time() < deadline, "the training subprocess never reached the write"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of writing the step-5 checkpoint
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (partial,) = out.glob(".checkpoint.pt.*.tmp")
    with pytest.raises(Exception):  # noqa: B017 - the half-written temp file is garbage ...
        torch.load(partial, weights_only=True)
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # ... the checkpoint is not
    assert state["step"] == 4

    cfg = tr.TrainConfig.from_dict(cfg)
    resumed = tr.train(lm, data, cfg, out, resume=True, progress=False)
    full = tr.train(lm, data, cfg, tmp_path / "full", progress=False)
    assert not list(out.glob(".checkpoint.pt.*.tmp"))  # resume cleared the dead write
    pairs = list(zip(full.sae.parameters(), resumed.sae.parameters(), strict=True))
    for p, q in pairs:
        assert torch.allclose(p, q, atol=1e-6), (p - q).abs().max()
    print(f"killed + resumed vs whole: max |param diff| "
          f"{max((p - q).abs().max().item() for p, q in pairs):.2e}")  # fmt: skip
    a, b = full.log[-1], resumed.log[-1]
    assert a["kind"] == b["kind"] == "eval" and a["step"] == b["step"] == 8
    for key in a.keys() - {"kind"}:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-8), key
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in logged] == [(r["step"], r["kind"]) for r in full.log]
