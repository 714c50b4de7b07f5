"""Runs you can trust: run ids are names, one writer per run folder and per cache, no pickle
(issue 26). Each test is a scenario that lost work or wrote outside `outputs/` before."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import saelab as sl
from saelab import runs
from saelab.core import locks

LIB = Path(sl.__file__).parent


def _holder(folder: Path, role: str) -> subprocess.Popen:
    """Another process holding `folder`'s `role` lock until killed."""
    code = ("import sys, time; from saelab.core.locks import writer_lock\n"
            f"with writer_lock({str(folder)!r}, {role!r}):\n"
            "    print('held', flush=True); time.sleep(120)\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("bad", ["../../victim", "/tmp/abs", ".", "..", "a/b", ".hidden", "a\\b"])
def test_a_run_id_is_a_name_not_a_path(bad, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    root = tmp_path / "outputs" / "x"
    with pytest.raises(ValueError, match="is not a name"):
        runs.run_notebook("01_local_sae", run_id=bad, out_root=root)
    assert (victim / "keep.txt").read_text() == "mine" and not root.exists()


def test_the_runner_never_moves_a_folder_it_did_not_create(tmp_path):
    mine = tmp_path / "01_local_sae" / "notes"
    mine.mkdir(parents=True)
    (mine / "draft.md").write_text("not a run")
    with pytest.raises(runs.RunExists, match="no saelab run wrote"):
        runs.run_notebook("01_local_sae", run_id="notes", out_root=tmp_path)
    assert (mine / "draft.md").read_text() == "not a run"
    assert [p.name for p in mine.parent.iterdir()] == ["notes"]


def test_sweep_points_that_map_to_one_folder_are_refused(tmp_path):
    with pytest.raises(ValueError, match="map to the same run folder"):
        runs.sweep("01_local_sae", [{"dataset": "dA/x"}, {"dataset": "dA-x"}], out_root=tmp_path)
    with pytest.raises(ValueError, match="map to the same run folder"):
        runs.sweep("01_local_sae", [{"seed": 0}, {"seed": 0}], out_root=tmp_path)
    assert not list(tmp_path.iterdir())  # refused before anything ran
    assert re.fullmatch(runs.RUN_ID, runs.run_id_of({"k": [8, 16], "name": "a b/c"}))


def test_a_second_runner_on_a_run_folder_is_refused_with_the_holders_pid(tmp_path):
    proc = _holder(tmp_path / "01_local_sae" / "r1", "run")
    try:
        with pytest.raises(locks.Locked, match=f"process {proc.pid}"):
            runs.run_notebook("01_local_sae", run_id="r1", out_root=tmp_path)
    finally:
        proc.kill()
        proc.wait()


def test_two_trainings_on_one_out_dir_refuse_the_second(lm, storyworld_data, tmp_path):
    out = tmp_path / "run"
    proc = _holder(out, "train")
    sae = sl.SAEConfig.create(architecture="topk", k=4, dict_ratio=2)
    cfg = sl.TrainConfig(sites=("resid_pre.3",), sae=sae, batch_size=4, n_tokens=4 * 64 * 2)
    try:
        with pytest.raises(locks.Locked, match=f"being written by process {proc.pid}"):
            sl.train(lm, storyworld_data(64, 2000), cfg, out, progress=False)
        assert not out.exists()  # refused before anything was written
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over_and_said_so(tmp_path):
    proc = _holder(tmp_path / "c", "cache")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.warns(UserWarning, match=f"took over the cache lock of process {proc.pid}"):
        with locks.writer_lock(tmp_path / "c", "cache") as path:
            assert path.read_text().strip() == str(__import__("os").getpid())
    assert not path.exists()  # released cleanly: nothing left behind


def test_a_second_cache_writer_is_refused_and_overwrite_false_holds_at_the_swap(
    lm, storyworld_data, tmp_path, monkeypatch
):
    from saelab.core import cache

    data = storyworld_data(32, 2000)
    path = tmp_path / "acts"
    proc = _holder(path, "cache")
    try:
        with pytest.raises(locks.Locked, match=f"process {proc.pid}"):
            sl.cache_activations(lm, data, "resid_pre.3", path, progress=False)
    finally:
        proc.kill()
        proc.wait()
    leftover = tmp_path / ".acts.tmp-999999"  # a killed write's temp folder
    leftover.mkdir()
    real = cache._write_shards

    def meanwhile(*a, **k):  # something that takes no lock makes the path mid-write
        shards = real(*a, **k)
        path.mkdir()
        (path / "theirs.txt").write_text("theirs")
        return shards

    monkeypatch.setattr(cache, "_write_shards", meanwhile)
    with pytest.warns(UserWarning, match="took over"):  # the holder was killed
        with pytest.raises(FileExistsError, match="appeared while this cache was written"):
            sl.cache_activations(lm, data, "resid_pre.3", path, progress=False)
    assert (path / "theirs.txt").read_text() == "theirs"  # not replaced
    assert not leftover.exists() and not list(tmp_path.glob(".acts.tmp-*"))


def test_no_torch_load_in_the_package_can_run_a_pickle():
    calls = []
    for f in LIB.rglob("*.py"):
        text = f.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            end = text.index(")", text.index("(", m.start()))
            calls.append((f.relative_to(LIB), text[m.start() : end + 1]))
    assert calls, "the package loads no checkpoint at all?"
    unsafe = [(f, c) for f, c in calls if "weights_only=True" not in c]
    assert not unsafe, unsafe


def test_a_flipped_exponent_byte_in_saved_weights_is_refused_naming_the_file(tmp_path):
    import struct

    import torch

    from saelab.core.sae import save_sae

    torch.manual_seed(0)
    sae = sl.SAE.from_config(sl.SAEConfig.create(architecture="relu", d_in=8, d_sae=16))
    save_sae(sae, tmp_path / "s")
    f = tmp_path / "s" / "sae.safetensors"
    raw = bytearray(f.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0]  # the tensors begin after the JSON header
    raw[start + 3] ^= 0x40  # the high byte of the first float32: sign and exponent
    f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"sae.safetensors do not match the checksum"):
        sl.load_sae(tmp_path / "s")


def test_a_damaged_checkpoint_is_refused_before_resuming(lm, storyworld_data, tmp_path):
    import torch

    from saelab.core.checkpoint import CheckpointError

    sae = sl.SAEConfig.create(architecture="topk", k=4, dict_ratio=2)
    cfg = sl.TrainConfig(sites=("resid_pre.3",), sae=sae, batch_size=4, n_tokens=4 * 64 * 4,
                         checkpoint_every=2, eval_tokens=2 * 64)  # fmt: skip
    data = storyworld_data(64, 4000)
    sl.train(lm, data, cfg, tmp_path / "r", progress=False)
    ckpt = tmp_path / "r" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    next(iter(state["saes"].values()))["W_dec"][0, 0] = 8.4e36  # finite, and wrong
    torch.save(state, ckpt)  # the old checksum stays
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        sl.train(lm, data, cfg, tmp_path / "r", resume=True, progress=False)


def test_a_saelens_folder_with_nan_weights_is_refused(tmp_path):
    import json

    import torch
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    sae = sl.SAE.from_config(sl.SAEConfig.create(architecture="relu", d_in=8, d_sae=16))
    sl.export_saelens(sae, tmp_path / "sl")
    weights = load_file(tmp_path / "sl" / "sae_weights.safetensors")
    weights["W_enc"][0, 0] = float("nan")
    save_file(weights, tmp_path / "sl" / "sae_weights.safetensors")
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["d_in"] == 8
    with pytest.raises(ValueError, match="NaN or inf values in \\['W_enc'\\]"):
        sl.load_sae(tmp_path / "sl")


def test_exports_are_atomic_and_never_clobber_a_saelab_folder(tmp_path, monkeypatch):
    import torch

    from saelab.core import saelens
    from saelab.core.sae import save_sae

    def topk(k):
        torch.manual_seed(0)
        return sl.SAE.from_config(sl.SAEConfig.create(architecture="topk", d_in=8, d_sae=64, k=k))

    src = tmp_path / "src"
    save_sae(topk(8), src)
    with pytest.raises(FileExistsError, match="holds a saelab SAE"):
        sl.export_saelens(sl.load_sae(src), src)  # export SRC SRC
    assert sl.load_sae(src).cfg.k == 8  # its record intact
    dst = tmp_path / "dst"
    sl.export_saelens(topk(8), dst)
    with pytest.raises(FileExistsError, match="holds a SAELens export"):
        sl.export_saelens(topk(32), dst)

    real = saelens.save_file

    def killed(*a, **k):  # the weights are written, then the process dies before the config
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(saelens, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        sl.export_saelens(topk(32), dst, overwrite=True)
    monkeypatch.setattr(saelens, "save_file", real)
    assert sl.load_sae(dst).cfg.k == 8  # the old export, whole: no k=8 config over k=32 weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no temp left
    sl.export_saelens(topk(32), dst, overwrite=True)
    assert sl.load_sae(dst).cfg.k == 32


def test_settings_that_cannot_train_are_refused_or_warned(lm, storyworld_data, tmp_path):
    import torch

    data = storyworld_data(64, 4000)
    sae = sl.SAEConfig.create(architecture="relu", dict_ratio=2)

    def cfg(**kw):
        base = dict(sites=("resid_pre.3",), sae=sae, batch_size=4, n_tokens=4 * 64 * 4,
                    warmup=1, eval_tokens=2 * 64, alive_tokens=None)  # fmt: skip
        return sl.TrainConfig(**base | kw)

    # grad_clip=0 is "no clipping" (before: every gradient scaled to zero, the SAE never moved)
    torch.manual_seed(0)
    start = sl.SAE.from_config(sae.for_site(64, "resid_pre.3"))
    run = sl.train(lm, data, cfg(grad_clip=0.0), progress=False)
    assert not torch.equal(run.sae.W_enc, start.W_enc)
    with pytest.warns(UserWarning, match="warmup=50 steps but the run has 4"):
        sl.train(lm, data, cfg(warmup=50), progress=False)
    with pytest.raises(ValueError, match="eval_tokens=0 is less than one row of n_ctx=64"):
        sl.train(lm, data, cfg(eval_tokens=0), progress=False)
    with pytest.warns(UserWarning, match="the run is diverging"):
        sl.train(lm, data, cfg(lr=1e4, n_tokens=4 * 64 * 12, log_every=1, grad_clip=0.0),
                 progress=False)  # fmt: skip


def test_a_model_edited_in_place_is_noticed_by_caches_and_checkpoints(tmp_path):
    import shutil as sh

    import torch
    import transformers as tf

    from saelab.core.checkpoint import CheckpointError
    from saelab.storyworld import MODEL_DIR

    folder = tmp_path / "model"
    sh.copytree(MODEL_DIR, folder)
    lm = sl.load_model(str(folder), device="cpu")
    data = sl.token_dataset("storyworld", lm.tokenizer, 64, n_tokens=4000)
    cache = sl.cache_activations(lm, data, "resid_pre.3", tmp_path / "acts", progress=False)
    sae = sl.SAEConfig.create(architecture="relu", dict_ratio=2)
    cfg = sl.TrainConfig(sites=("resid_pre.3",), sae=sae, batch_size=4, n_tokens=4 * 64 * 4,
                         warmup=1, eval_tokens=2 * 64, checkpoint_every=2)  # fmt: skip
    sl.train(lm, data, cfg, tmp_path / "run", progress=False)
    hf = tf.GPT2LMHeadModel.from_pretrained(folder)
    with torch.no_grad():
        hf.transformer.h[0].mlp.c_fc.weight.mul_(1.01)  # an edit, saved where it was loaded from
    hf.save_pretrained(folder)
    edited = sl.load_model(str(folder), device="cpu")
    with pytest.raises(ValueError, match="model_fingerprint"):
        sl.cache_activations(edited, data, "resid_pre.3", tmp_path / "acts", progress=False)
    with pytest.raises(ValueError, match="written from other weights"):
        cache.check_training(cfg, edited)
    with pytest.raises(CheckpointError, match="trained with other model weights"):
        sl.train(edited, data, cfg, tmp_path / "run", resume=True, progress=False)


def test_cli_sweeps_and_collections_say_what_is_wrong(tmp_path, capsys):
    import json

    assert runs.main(["sweep", "01_local_sae", "-g", "lr", "0.01"]) == 1  # a scalar, not a list
    assert "grid axis 'lr' needs a non-empty list" in capsys.readouterr().err
    assert runs.main(["collect", str(tmp_path / "nonexistent")]) == 1
    assert "no folder" in capsys.readouterr().err
    for name, summary in (("good", '{"l0": 3.0}'), ("bad", '{"l0": 3.')):  # one damaged run
        run = tmp_path / "nb" / name
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"status": "completed", "run_id": name,
                                                     "parameters": {"k": 1}}))  # fmt: skip
        (run / "summary.json").write_text(summary)
    with pytest.warns(UserWarning, match="skipped .*bad"):
        table = runs.collect(tmp_path / "nb")
    assert table["run_id"].tolist() == ["good"] and table["l0"].tolist() == [3.0]
