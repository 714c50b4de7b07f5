"""Clear errors where there were raw ones (issue 26, item 8): each names the file or value and
says what to do, and leaves nothing behind that would fill a disk or break the next run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import saelab as sl

# A full disk without filling one: a file-size limit (ulimit -f) makes the kernel refuse writes
# past 256 KiB with EFBIG, the failure torch reports as "unexpected pos 663168 vs 663056".
FULL_DISK = """
import json, resource, signal, sys, torch
from pathlib import Path
import saelab as sl
from saelab.core.files import DiskFullError, write_atomic
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
out, said = Path(sys.argv[1]), {}
lm = sl.load_model("storyworld", device="cpu")
data = sl.token_dataset("storyworld", lm.tokenizer, 64, n_tokens=64 * 64)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, resource.RLIM_INFINITY))
big = sl.SAE.from_config(sl.SAEConfig.create(architecture="relu", d_in=64, d_sae=4096))
jobs = {
    "checkpoint": lambda: write_atomic(out / "checkpoint.pt",
                                       lambda t: torch.save({"w": torch.zeros(1 << 17)}, t)),
    "sae": lambda: sl.save_sae(big, out / "sae"),
    "cache": lambda: sl.cache_activations(lm, data, "resid_pre.3", out / "acts",
                                          shard_mb=1, progress=False),
}
for name, job in jobs.items():
    for attempt in range(2):  # a retry must not leak a second partial file
        try:
            job()
            said[name] = "no error"
        except DiskFullError as e:
            said[name] = str(e)
print(json.dumps(said))
"""


def test_a_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(out)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, target in [("checkpoint", "checkpoint.pt"), ("sae", "sae"), ("cache", "acts")]:
        assert said[name].startswith(f"[Errno 28] no space left writing {out / target}"), said
        assert "MiB free there" in said[name] and "was removed" in said[name]
    left = sorted(p.name for p in out.rglob("*"))
    assert left == ["sae"], left  # the SAE's folder, empty: no partial file, no temp folder


def _exported(tmp_path: Path, arch: str = "topk") -> Path:
    kw = {"k": 4} if arch == "topk" else {}
    sae = sl.SAE.from_config(sl.SAEConfig.create(architecture=arch, d_in=8, d_sae=16, **kw))
    return sl.export_saelens(sae, tmp_path / "sl")


@pytest.mark.parametrize(
    "damage, said",
    [
        (lambda p: (p / "cfg.json").write_text((p / "cfg.json").read_text()[:40]),
         r"cfg.json is not valid JSON .*truncated"),
        (lambda p: _drop(p, "d_in"), r"its config lacks 'd_in', which SAELens writes"),
        (lambda p: _drop(p, "k"), r"its config lacks 'k', which SAELens writes for architecture "
                                  r"'topk'"),
        (lambda p: _set(p, d_sae=32), r"tensor shapes .* disagree: \{'W_enc': \(\(8, 16\), "
                                      r"\(8, 32\)\)"),
        (lambda p: (p / "sae_weights.safetensors").unlink(), r"no SAE weights in .*a SAELens one "
                                                              r"sae_weights.safetensors"),
        (lambda p: (p / "sae_weights.safetensors").write_bytes(b"\x00" * 7),
         r"sae_weights.safetensors is not a readable safetensors file"),
    ],
)  # fmt: skip
def test_a_damaged_saelens_folder_names_the_file_and_the_field(tmp_path, damage, said):
    path = _exported(tmp_path)
    damage(path)
    with pytest.raises((ValueError, FileNotFoundError), match=said) as err:
        sl.load_sae(path)
    assert str(path) in str(err.value)


def _drop(path: Path, key: str) -> None:
    cfg = json.loads((path / "cfg.json").read_text())
    cfg.pop(key)
    (path / "cfg.json").write_text(json.dumps(cfg))


def _set(path: Path, **kw) -> None:
    cfg = json.loads((path / "cfg.json").read_text()) | kw
    (path / "cfg.json").write_text(json.dumps(cfg))


def _small_run(lm, storyworld_data, out: Path, **sae_kw):
    sae = sl.SAEConfig.create(architecture="topk", k=4, dict_ratio=2, **sae_kw)
    cfg = sl.TrainConfig(sites=("resid_pre.3",), sae=sae, batch_size=4, n_tokens=4 * 64 * 4,
                         checkpoint_every=2, eval_tokens=2 * 64)  # fmt: skip
    data = storyworld_data(64, 4000)
    return cfg, data, sl.train(lm, data, cfg, out, progress=False)


def test_old_and_newer_checkpoints_are_resumed_or_refused_by_name(lm, storyworld_data, tmp_path):
    import torch

    from saelab.core.checkpoint import CheckpointError

    def strip(state):  # as older saelab wrote them: no act_scale buffer, no checksum
        saes = {s: {k: v for k, v in sd.items() if k != "act_scale"}
                for s, sd in state["saes"].items()}  # fmt: skip
        return {k: v for k, v in state.items() if k != "sha256"} | {"saes": saes}

    for norm in ("none", "expected_average_only_in"):
        out = tmp_path / norm
        cfg, data, run = _small_run(lm, storyworld_data, out, normalize_activations=norm)
        ckpt = out / "checkpoint.pt"
        state = torch.load(ckpt, weights_only=True)
        torch.save(strip(state), ckpt)
        if norm == "none":  # its act_scale was 1: resumed (was a raw missing-key error)
            again = sl.train(lm, data, cfg, out, resume=True, progress=False)
            assert torch.equal(again.sae.W_dec, run.sae.W_dec)
        else:  # its scale is lost: refused, naming what is missing
            with pytest.raises(CheckpointError, match=rf"{ckpt}: .*\(missing \['act_scale'\]"):
                sl.train(lm, data, cfg, out, resume=True, progress=False)

    newer = {**state, "cfg": {**state["cfg"], "future_knob": 1}}
    torch.save(newer, ckpt)  # was "Differences: {}"
    with pytest.raises(CheckpointError, match=r"fields this saelab does not know: \['future_knob'"):
        sl.train(lm, data, cfg, out, resume=True, progress=False)


def test_resume_on_a_mistyped_out_dir_says_it_starts_a_new_run(lm, storyworld_data, tmp_path):
    sae = sl.SAEConfig.create(architecture="topk", k=4, dict_ratio=2)
    cfg = sl.TrainConfig(sites=("resid_pre.3",), sae=sae, batch_size=4, n_tokens=4 * 64)
    typo = tmp_path / "runz"
    with pytest.warns(UserWarning, match=f"resume=True, but {typo} does not exist: starting a new"):
        sl.train(lm, storyworld_data(64, 2000), cfg, typo, resume=True, progress=False)


def test_overwrite_replaces_a_damaged_cache(lm, storyworld_data, tmp_path):
    data = storyworld_data(64, 64 * 4)
    path = tmp_path / "acts"
    sl.cache_activations(lm, data, "resid_pre.3", path, progress=False)
    (path / "manifest.json").write_text("{")  # a damaged cache
    with pytest.raises(ValueError, match=f"{path} holds a damaged activation cache .* pass "
                                         "overwrite=True to replace it"):  # fmt: skip
        sl.cache_activations(lm, data, "resid_pre.3", path, progress=False)
    cache = sl.cache_activations(lm, data, "resid_pre.3", path, overwrite=True, progress=False)
    assert cache.manifest["site"] == "resid_pre.3"  # was: the damaged manifest's raw error


def test_evaluate_refuses_rows_longer_than_the_models_context(lm):
    limit = lm.config.max_position_embeddings
    data = sl.token_dataset("storyworld", lm.tokenizer, limit * 2, n_tokens=limit * 4)
    d = lm.config.hidden_size
    sae = sl.SAE.from_config(sl.SAEConfig.create(architecture="relu", d_in=d, d_sae=2 * d))
    with pytest.raises(
        ValueError,
        match=rf"n_ctx={limit * 2} .* build the data with n_ctx <= "
        rf"{limit}",
    ):  # fmt: skip (was an IndexError)
        sl.evaluate(lm, {"resid_pre.3": sae}, data, n_tokens=limit * 2)


@pytest.mark.parametrize(
    "name, value, said",
    [("batch_size", "0", "batch_size=0 must be an int > 0"),
     ("lr", "-1", "lr=-1 must be a finite number > 0.0"),
     ("k", "0", "k=0 must be an int >= 1")],
)  # fmt: skip
def test_notebook_values_the_library_refuses_are_one_line_before_a_kernel(
    name, value, said, capsys, monkeypatch
):
    from saelab import runs

    started = []
    monkeypatch.setattr(runs, "_execute", lambda *a, **k: started.append(a))
    nb = "04_gradient_sae" if name == "k" else "01_local_sae"
    assert runs.main(["run", nb, "-p", name, value]) == 1  # was a 30-line notebook traceback
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"error: ValueError: parameter {name!r} of notebook {nb!r}: {said}"
    ]
    assert not started  # refused before a run folder or a kernel


def test_torchrun_with_a_missing_config_says_so_once_per_rank(tmp_path):
    import os

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "saelab.core.distributed", "--config", str(tmp_path / "nope.json"), "--out",
           str(tmp_path / "out")]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode != 0
    said = [line for line in res.stderr.splitlines() if line.startswith("rank ")]
    want = f"error: FileNotFoundError: --config {tmp_path / 'nope.json'}: no such file"
    assert sorted(said) == [f"rank 0: {want}", f"rank 1: {want}"]
    # was 77 lines: each rank's traceback; what remains is torchrun's own failure summary
    assert "saelab/core" not in res.stderr and not (tmp_path / "out").exists()


def test_n_tokens_bounds_the_work_on_one_huge_document(small_tokenizer, tmp_path, caplog):
    import random

    from saelab.core.data import token_dataset

    rng = random.Random(0)
    words = "the cat sat on a mat while little dogs ran far away".split()
    f = tmp_path / "one_line.txt"
    f.write_text(" ".join(rng.choice(words) for _ in range(400_000)) + "\n")  # 1.7M characters
    seen = []

    class Spy:  # the tokenizer, recording how many characters each call tokenizes
        def __getattr__(self, name):
            return getattr(small_tokenizer, name)

        def __len__(self):
            return len(small_tokenizer)

        def __call__(self, texts, **kw):
            seen.append(sum(map(len, [texts] if isinstance(texts, str) else texts)))
            return small_tokenizer(texts, **kw)

    ds = token_dataset(str(f), Spy(), 64, n_tokens=2000, cache=False)
    assert sum(seen) < 200_000, seen  # was the whole 1.7M-character line
    whole = small_tokenizer(f.read_text().strip(), add_special_tokens=False)["input_ids"]
    got = ds.tokens[:, 1:].flatten().tolist()  # after each row's BOS: the document's BOS, then
    # its first tokens, as tokenizing it whole gives them
    assert len(got) >= 1900 and got == [got[0], *whole[: len(got) - 1]]
    assert "indexing errors" not in caplog.text  # transformers' warning; rows are cut anyway


def test_what_killed_writers_left_is_removed_by_the_next_write(tmp_path):
    import socket

    from saelab.core.files import write_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    host = socket.gethostname()
    stale_file = tmp_path / f".ckpt.pt.{host}~{dead}~a1b2c3.tmp"
    stale_file.write_bytes(b"half")
    elsewhere = tmp_path / f".ckpt.pt.other-host~{dead}~a1b2c3.tmp"  # may still be writing
    elsewhere.write_bytes(b"half")
    stale_export = tmp_path / f".sl.export-{host}~{dead}~d4e5f6"
    (stale_export).mkdir()
    (stale_export / "sae_weights.safetensors").write_bytes(b"half")
    write_atomic(tmp_path / "ckpt.pt", lambda t: t.write_bytes(b"whole"))
    _exported(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt.pt", "sl", elsewhere.name])
