"""Runs you can trust: each scenario of docs/reliability.md, replayed.

Nothing finished is overwritten without being asked; no stale or damaged cache is served; what
cannot be right is refused with an error that names the value (and the file and line).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
from configs import config
from safetensors.torch import load_file, save_file

import saelab as sl
from saelab import runs
from saelab.core import losses
from saelab.core import training as tr

SITE = "resid_pre.3"


@pytest.fixture(scope="module")
def data(storyworld_data):
    return storyworld_data(32, n_tokens=8 * 32 * 8)


def _cfg(**kw) -> tr.TrainConfig:
    base = dict(sites=(SITE,), dict_ratio=2, n_tokens=8 * 32 * 4, batch_size=8, warmup=1,
                log_every=1, eval_tokens=4 * 32, checkpoint_every=2)  # fmt: skip
    return config(**(base | kw))


@pytest.fixture(scope="module")
def finished(lm, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("done") / "run"
    tr.train(lm, data, _cfg(), out, progress=False)
    return out


def _snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}


# --- nothing finished is overwritten --------------------------------------------------------


def test_train_refuses_a_finished_out_dir_and_leaves_it_as_it_was(lm, data, finished):
    before = _snapshot(finished)
    with pytest.raises(FileExistsError, match=r"holds a run \(saes/ and checkpoint.pt\); pass "
                                              r"resume=True.*overwrite=True"):  # fmt: skip
        tr.train(lm, data, _cfg(n_tokens=8 * 32 * 2), finished, progress=False)
    with pytest.raises(ValueError, match="contradict"):
        tr.train(lm, data, _cfg(), finished, resume=True, overwrite=True, progress=False)
    assert _snapshot(finished) == before


def test_resume_with_saes_but_no_checkpoint_is_refused(lm, data, finished, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    (out / "checkpoint.pt").unlink()
    with pytest.raises(FileExistsError, match="finished SAEs but no checkpoint.pt"):
        tr.train(lm, data, _cfg(), out, resume=True, progress=False)
    assert (out / "saes" / SITE / "sae.safetensors").exists()


def test_an_overwrite_that_fails_at_once_keeps_the_old_files(
    lm, data, finished, tmp_path, monkeypatch
):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    before = _snapshot(out)
    monkeypatch.setattr(losses, "mse_loss", lambda a, b: (a - b).pow(2).mean() * float("nan"))
    with pytest.raises(tr.NonFiniteLoss, match="at step 0; stopped. Last good checkpoint: none"):
        tr.train(lm, data, _cfg(lr=2e-3), out, overwrite=True, progress=False)
    assert _snapshot(out) == before  # metrics, train_config, checkpoint and SAEs: the old run's


def test_overwrite_replaces_a_run_when_asked(lm, data, finished, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    run = tr.train(lm, data, _cfg(lr=2e-3), out, overwrite=True, progress=False)
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["lr"] == 2e-3 and run.log[-1]["kind"] == "eval"
    assert sl.load_sae(out / "saes" / SITE).W_enc.shape == run.sae.W_enc.shape


def test_resume_on_other_data_is_refused(lm, data, storyworld_data, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(n_tokens=8 * 32 * 6)
    with pytest.raises(KeyboardInterrupt):  # stop after the step-2 checkpoint
        real = tr.save_checkpoint

        def stop(*a, **k):
            real(*a, **k)
            raise KeyboardInterrupt

        tr.save_checkpoint = stop
        try:
            tr.train(lm, data, cfg, out, progress=False)
        finally:
            tr.save_checkpoint = real
    other = storyworld_data(32, n_tokens=8 * 32 * 8, split="validation")
    with pytest.raises(tr.CheckpointError, match="trained on other data"):
        tr.train(lm, other, cfg, out, resume=True, progress=False)
    assert tr.train(lm, data, cfg, out, resume=True, progress=False).log[-1]["kind"] == "eval"


def test_a_completed_run_is_refused_and_force_moves_it_aside(nbdir):
    root = nbdir / "outputs"
    out = runs.run_notebook("90_tiny", {"a": 1}, run_id="r", out_root=root)
    assert runs.run_status(out) == "completed"
    with pytest.raises(runs.RunExists, match="completed run; pass --force"):
        runs.run_notebook("90_tiny", {"a": 5}, run_id="r", out_root=root)
    assert json.loads((out / "summary.json").read_text())["total"] == 3.0
    runs.run_notebook("90_tiny", {"a": 5}, run_id="r", out_root=root, force=True)
    assert json.loads((out / "summary.json").read_text())["total"] == 7.0
    (aside,) = (root / "90_tiny").glob("r.completed-*")
    assert json.loads((aside / "summary.json").read_text())["total"] == 3.0


def test_a_failed_run_records_its_error(nbdir):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError):
        runs.run_notebook("90_tiny", {"a": -1}, run_id="bad", out_root=nbdir / "outputs")
    cfg = json.loads((nbdir / "outputs" / "90_tiny" / "bad" / "config.json").read_text())
    assert cfg["status"] == "failed" and "a must be >= 0" in cfg["error"]


def _default_sigint():
    # as from a terminal: a child inherits an ignored SIGINT, and Python then never raises
    # KeyboardInterrupt; something in the full suite leaves it ignored (the SIGINT case timed out
    # there and passed alone)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_is_recorded_as_interrupted(nbdir, sig):
    tiny = (nbdir / "notebooks" / "90_tiny.py").read_text()
    # a cell far longer than the test, so the run can only end by the signal, and one that marks
    # when it runs (papermill writes notebook.ipynb before the kernel has started)
    marker = nbdir / "in_cell"
    slow = tiny.replace('assert a >= 0, "a must be >= 0"',
                        f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\n"
                        "time.sleep(900)")  # fmt: skip
    (nbdir / "notebooks" / "91_slow.py").write_text(slow)
    # the run folder goes under the test's folder (runs.ROOT), never the repository's outputs/
    code = (f"import sys; from pathlib import Path; from saelab import runs; "
            f"runs.NOTEBOOKS = Path({str(nbdir / 'notebooks')!r}); "
            f"runs.ROOT = Path({str(nbdir)!r}); "
            f"sys.exit(runs.main(['run', '91_slow', '--run-id', 's']))")  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=nbdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_default_sigint)  # fmt: skip
    out = nbdir / "outputs" / "91_slow" / "s"
    try:
        deadline = time.time() + 300
        while runs.run_status(out) != "running" or not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "the run did not start within 300 s"
            time.sleep(0.2)
        time.sleep(1)  # the kernel is in the sleeping cell
        proc.send_signal(sig)
        text = proc.communicate(timeout=120)[0].decode()
        # our CLI's own last word is one line (the kernel, signalled too, may log its own)
        assert proc.returncode != 0 and "error: interrupted" in text, text[-2000:]
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["status"] == "interrupted", cfg
    finally:
        if proc.poll() is None:  # a failed check: stop the run and its kernel
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_sweep_skips_only_runs_with_the_same_preset_and_parameters(nbdir, capsys):
    root = nbdir / "outputs"
    points = runs.grid(b=[0.5])
    runs.sweep("90_tiny", points, out_root=root)
    runs.sweep("90_tiny", points, out_root=root)
    assert "skipped" in capsys.readouterr().out
    with pytest.raises(runs.RunExists):  # another preset's run is not passed off as this one
        runs.sweep("90_tiny", points, preset="big", out_root=root)


def test_cli_prints_one_line_and_a_traceback_only_with_debug(nbdir, capsys):
    assert runs.main(["run", "90_tiny", "-p", "nosuch", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nosuch" in err and "Traceback" not in err
    with pytest.raises(TypeError, match="nosuch"):
        runs.main(["--debug", "run", "90_tiny", "-p", "nosuch", "1"])


# --- caches that cannot lie ------------------------------------------------------------------


def test_an_edited_text_file_is_tokenized_again(lm, tmp_path, monkeypatch):
    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "a.txt"
    f.write_text("\n".join(f"The cat sat on mat {i}." for i in range(200)))
    first = sl.token_dataset(str(f), lm.tokenizer, 16, n_tokens=None)
    f.write_text("\n".join(f"A dog ran to the park {i}." for i in range(200)))
    second = sl.token_dataset(str(f), lm.tokenizer, 16, n_tokens=None)
    assert not torch.equal(first.tokens[:2], second.tokens[:2])


@pytest.mark.parametrize("damage", ["middle", "truncate", "range"])
def test_a_damaged_token_cache_is_rebuilt_with_a_warning(lm, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path))
    good = sl.token_dataset("storyworld", lm.tokenizer, 32, n_tokens=4000)
    (path,) = (tmp_path / "datasets").glob("*.pt")
    raw = path.read_bytes()
    if damage == "middle":
        mid = len(raw) // 2
        path.write_bytes(raw[:mid] + b"\xff" * 64 + raw[mid + 64 :])
    elif damage == "truncate":
        path.write_bytes(raw[: len(raw) // 3])
    else:  # a well-formed file with a valid checksum but ids past the vocabulary
        from saelab.core.data import _checksum

        blob = torch.load(path, weights_only=True)
        blob["tokens"][0, 0] = 10**6
        blob["sha256"] = _checksum(blob)
        torch.save(blob, path)
    with pytest.warns(UserWarning, match=f"token cache {path}.*rebuilding"):
        again = sl.token_dataset("storyworld", lm.tokenizer, 32, n_tokens=4000)
    assert torch.equal(again.tokens, good.tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt cache loads cleanly
        assert torch.equal(sl.token_dataset("storyworld", lm.tokenizer, 32, n_tokens=4000).tokens,
                           good.tokens)  # fmt: skip


def test_damaged_activation_cache_shards_and_manifests_are_errors(lm, data, tmp_path):
    path = tmp_path / "c"
    sl.cache_activations(lm, data, SITE, path, progress=False)
    shard = next(path.glob("acts-*.safetensors"))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\x01" * 64  # in-range damage
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{shard}.*sha256.*damaged"):
        sl.load_cache(path)
    assert len(sl.load_cache(path, verify="sizes")) == len(data)  # the fast check: sizes only
    (path / "manifest.json").write_text('{"format": ')
    with pytest.raises(ValueError, match=r"manifest.json is damaged.*write the cache again"):
        sl.load_cache(path)


# --- refuse what cannot be right -------------------------------------------------------------


def test_non_finite_sae_weights_are_refused(tmp_path):
    sae = sl.SAE.from_config(sl.SAEConfig.create(architecture="relu", d_in=8, d_sae=16))
    sl.save_sae(sae, tmp_path / "s")
    w = load_file(tmp_path / "s" / "sae.safetensors")
    w["b_enc"][3] = float("nan")
    save_file(w, tmp_path / "s" / "sae.safetensors")
    with pytest.raises(ValueError, match=r"NaN or inf values in \['b_enc'\]"):
        sl.load_sae(tmp_path / "s")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr=float("nan")), "lr=nan"),
        (dict(batch_size=1.5), "batch_size=1.5"),
        (dict(sae="topk", k=2.5), "k=2.5"),
        (dict(n_tokens=-5), "n_tokens=-5"),
        (dict(loss="e2e", kl_coeff=float("inf")), "kl_coeff=inf"),
        (dict(dict_ratio=float("nan")), "dict_ratio=nan"),
    ],
)
def test_bad_numbers_in_a_config_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_impossible_sizes_and_layers_are_refused_before_any_allocation(lm, data, tmp_path):
    with pytest.raises(ValueError, match=r"d_sae=64000000000 needs ~.* GiB.*lower dict_ratio"):
        tr.train(lm, data, _cfg(dict_ratio=1e9), None, progress=False)
    with pytest.raises(ValueError, match="no later layer"):
        tr.train(lm, data, _cfg(sites=("resid_post.5",), loss="e2e+ds", ds_coeff=1.0), None,
                 progress=False)  # fmt: skip
    for bad in (dict(n_tokens=-100), dict(n_tokens=2.5)):
        with pytest.raises(ValueError, match="n_tokens=.* must be a positive int"):
            sl.token_dataset("storyworld", lm.tokenizer, 32, **bad)
    with pytest.raises(ValueError, match="n_ctx=1.5"):
        sl.token_dataset("storyworld", lm.tokenizer, 1.5)


# --- errors that say where -------------------------------------------------------------------


def test_dataset_errors_name_the_file_and_line(lm, tmp_path):
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "a.txt").write_text("fine text\n")
    (binary / "b.txt").write_bytes(b"ok\n\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"b.txt, line 2: not UTF-8"):
        sl.token_dataset(str(binary), lm.tokenizer, 8, cache=False)
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "one"}\n{"text": "two"\n{"text": "three"}\n')
    with pytest.raises(ValueError, match=r"d.jsonl, line 2: not valid JSON"):
        sl.token_dataset(str(jl), lm.tokenizer, 8, cache=False)


def test_unsupported_files_in_a_data_folder_are_named(lm, tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(f"The cat sat {i}." for i in range(100)))
    (tmp_path / "notes.md").write_text("# notes")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    with pytest.warns(
        UserWarning, match=r"skipping files of unsupported types: notes.md, table.csv"
    ):
        sl.token_dataset(str(tmp_path), lm.tokenizer, 8, cache=False)
