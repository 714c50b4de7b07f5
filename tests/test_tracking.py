"""Experiment tracking: W&B (offline, read back from its own run file) and TensorBoard (read back
with TensorBoard's reader) get exactly the records of metrics.jsonl (saelab.core.tracking)."""

import json
import struct
import sys

import pytest
from configs import config, killed_at

from saelab.core import tracking
from saelab.core import training as tr

pytest.importorskip("wandb")
pytest.importorskip("tensorboard")

SITE = "resid_pre.3"


@pytest.fixture(scope="module")
def data(storyworld_data):
    return storyworld_data(128, n_tokens=40_000)


def _cfg(**kw):
    base = dict(sites=(SITE,), dict_ratio=2, n_tokens=16 * 128 * 8, batch_size=16, lr=3e-3,
                warmup=2, log_every=2, eval_every=4, eval_tokens=4 * 128, alive_tokens=None,
                checkpoint_every=4)  # fmt: skip
    return config(**(base | kw))


def _expected(out) -> dict[int, dict]:
    """metrics.jsonl as the trackers should show it: {step: {tag: value}}."""
    rows: dict[int, dict] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rows.setdefault(rec["step"], {}).update(tracking.scalars(rec))
    return rows


def _wandb_records(run_dir):
    """Every record of a W&B offline run's transaction log (`run-<id>.wandb`): W&B's LevelDB-style
    log of 32 KiB blocks, each record chunk behind a 7-byte header (crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data, pos, chunk, out = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(chunk)
            out.append(rec)
            chunk = b""
    return out


def _wandb_history(run_dir) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for rec in _wandb_records(run_dir):
        if rec.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                   for item in rec.history.item}  # fmt: skip
            step = row.pop("step")
            rows.setdefault(step, {}).update({k: v for k, v in row.items() if "/" in k})
    return rows


def _wandb_run(run_dir):
    (run,) = [r.run for r in _wandb_records(run_dir) if r.WhichOneof("record_type") == "run"]
    return run


def _tensorboard(log_dir) -> dict[int, dict]:
    """Every scalar TensorBoard's own reader shows, {step: {tag: value}}; a (tag, step) shown
    twice (a resume that re-logged a record without purging) fails here."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    rows: dict[int, dict] = {}
    for tag in acc.Tags()["scalars"]:
        for ev in acc.Scalars(tag):
            assert tag not in rows.get(ev.step, {}), f"{tag} at step {ev.step} twice"
            rows.setdefault(ev.step, {})[tag] = ev.value
    return rows


def _same(got: dict, want: dict, rel: float) -> None:
    assert sorted(got) == sorted(want)
    for step in want:
        assert sorted(got[step]) == sorted(want[step]), step
        for tag, v in want[step].items():
            assert got[step][tag] == pytest.approx(v, rel=rel, abs=1e-12), (step, tag)


def test_wandb_and_tensorboard_get_exactly_the_metrics_jsonl_records(lm, data, tmp_path):
    out = tmp_path / "run"
    opts = (tracking.WandB(mode="offline", project="saelab-test"), "tensorboard")
    tr.train(lm, data, _cfg(), out, progress=False, log_to=opts)
    want = _expected(out)
    assert {"train/loss", "train/l0"} <= set(want[2]) and "eval/ce_increase" in want[4]
    assert f"act_scale/{SITE}" in want[0]
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    _same(_wandb_history(run_dir), want, rel=1e-9)  # JSON: exact
    _same(_tensorboard(out / "tensorboard"), want, rel=1e-6)  # float32 in the event file
    run = _wandb_run(run_dir)
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["lr"] == 3e-3 and config["sae"]["architecture"] == "relu"
    assert config["data"]["source"] and config["model"]["d_in"] == 64
    assert json.loads((out / tracking.TRACKING_FILE).read_text())["wandb"] == run.run_id


def test_a_sweep_is_one_tracked_run_per_sae_in_one_group(lm, data, tmp_path):
    cfgs = [_cfg(sparsity=c) for c in (0.5, 2.0)]
    outs = [tmp_path / "sweep-a" / f"phi{c}" for c in (0.5, 2.0)]
    tr.train_many(lm, data, cfgs, outs, progress=False,
                  log_to=tracking.WandB(mode="offline"))  # fmt: skip
    runs = [_wandb_run(next((o / "wandb").glob("offline-run-*"))) for o in outs]
    assert [r.display_name for r in runs] == ["phi0.5", "phi2.0"]
    assert {r.run_group for r in runs} == {"sweep-a"} and runs[0].run_id != runs[1].run_id
    for o in outs:
        _same(_wandb_history(next((o / "wandb").glob("offline-run-*"))), _expected(o), 1e-9)


def test_a_resumed_run_continues_the_same_tracked_run(lm, data, tmp_path, monkeypatch):
    cfg, out = _cfg(), tmp_path / "cut"
    opts = (tracking.WandB(mode="offline"), "tensorboard")
    real = killed_at(monkeypatch, 7)  # after the step-4 checkpoint and the step-6 record
    with pytest.raises(KeyboardInterrupt):
        tr.train(lm, data, cfg, out, progress=False, log_to=opts)
    monkeypatch.setattr(tr, "compute_loss", real)
    first = json.loads((out / tracking.TRACKING_FILE).read_text())["wandb"]
    assert 6 in _wandb_history(next((out / "wandb").glob("offline-run-*")))  # logged, then cut
    tr.train(lm, data, cfg, out, resume=True, progress=False, log_to=opts)
    dirs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2 and {_wandb_run(d).run_id for d in dirs} == {first}
    assert json.loads((out / tracking.TRACKING_FILE).read_text())["wandb"] == first
    # the two pieces of the tracked run, stopped one first, hold every record of metrics.jsonl
    seen: dict[int, dict] = {}
    for d in dirs:
        for step, row in _wandb_history(d).items():
            seen.setdefault(step, {}).update(row)
    _same(seen, _expected(out), rel=1e-9)
    _same(_tensorboard(out / "tensorboard"), _expected(out), rel=1e-6)


def test_a_tracker_added_on_resume_gets_the_whole_run(lm, data, tmp_path, monkeypatch):
    cfg, out = _cfg(), tmp_path / "cut"
    real = killed_at(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        tr.train(lm, data, cfg, out, progress=False, log_to="tensorboard")
    monkeypatch.setattr(tr, "compute_loss", real)
    assert not (out / tracking.TRACKING_FILE).exists()  # TensorBoard has no id to keep
    tr.train(lm, data, cfg, out, resume=True, progress=False,
             log_to=(tracking.WandB(mode="offline"), "tensorboard"))  # fmt: skip
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    _same(_wandb_history(run_dir), _expected(out), rel=1e-9)  # replayed up to step 4, then live
    _same(_tensorboard(out / "tensorboard"), _expected(out), rel=1e-6)


def test_a_failing_tracker_is_dropped_and_training_goes_on(lm, data, tmp_path, monkeypatch):
    real, calls = tracking._TensorBoardSink.log, {"n": 0}

    def flaky(self, step, values):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(self, step, values)

    monkeypatch.setattr(tracking._TensorBoardSink, "log", flaky)
    opts = (tracking.WandB(mode="offline"), "tensorboard")
    with pytest.warns(UserWarning, match="tensorboard failed .OSError: disk full"):
        run = tr.train(lm, data, _cfg(), tmp_path / "r", progress=False, log_to=opts)
    assert run.log[-1]["kind"] == "eval" and calls["n"] == 3  # dropped after its failure
    (run_dir,) = (tmp_path / "r" / "wandb").glob("offline-run-*")
    _same(_wandb_history(run_dir), _expected(tmp_path / "r"), rel=1e-9)  # W&B got everything


def test_a_missing_tracker_names_its_extra_and_training_goes_on(lm, data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails as if not installed
    with pytest.warns(UserWarning, match=r"pip install saelab\[wandb\]"):
        run = tr.train(lm, data, _cfg(n_tokens=16 * 128 * 4), tmp_path / "r", progress=False,
                       log_to="wandb")  # fmt: skip
    assert run.log[-1]["kind"] == "eval" and (tmp_path / "r" / "saes" / SITE).exists()


@pytest.mark.parametrize("bad", ["mlflow", ["wandb", "wandb"], 3])
def test_bad_log_to_is_refused_before_training(lm, data, tmp_path, bad):
    with pytest.raises(ValueError, match="tracker"):
        tr.train(lm, data, _cfg(), tmp_path / "r", progress=False, log_to=bad)
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match=r"out_dir, or pass TensorBoard\(log_dir=...\)"):
        tr.train(lm, data, _cfg(), None, progress=False, log_to="tensorboard")


def test_scalars_name_each_number_by_its_record_kind():
    assert tracking.scalars({"step": 3, "kind": "train", "loss": 1.5, "lr": 0.1}) == {
        "train/loss": 1.5, "train/lr": 0.1}  # fmt: skip
    rec = {"step": 0, "kind": "b_dec_init", "method": "mean", "norm": {"resid_pre.3": 2.0}}
    assert tracking.scalars(rec) == {"b_dec_init/resid_pre.3": 2.0}
    rec = {"step": 9, "kind": "eval", "l0": 4.0, "kl": float("nan"), "ok": True}
    assert tracking.scalars(rec) == {"eval/l0": 4.0}
