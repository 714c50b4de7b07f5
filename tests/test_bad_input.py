"""Bad input is a clear error that names the bad value and loses nothing (ARCHITECTURE.md §6).

Covered elsewhere: unknown model and site (test_models.py), SAE d_in mismatch on load and corrupt
SAE weights (test_sae.py), empty / too short / column-less datasets (test_data.py), impossible
TrainConfig values and n_ctx beyond the model (test_train.py). Here: wrong-typed and unknown
notebook parameters, damaged training checkpoints, and the bad inputs only `train` /
`evaluate` can see.
"""

import json

import pytest
import torch
from configs import config

import saelab as sl
from saelab import runs
from saelab.core import training as tr

TINY = """# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
a: int = 1  # first number
b: float = 2.0  # second number
name: str = "x"  # a label
xs: list = [1, 2]  # numbers
sites: tuple[str, ...] = ("resid_pre.3",)  # where SAEs go
k: int | None = None  # optional k
seed = 0  # unannotated: its type comes from the default
out_dir: str = "outputs/tiny/scratch"  # run folder

# %%
import json
from pathlib import Path

Path(out_dir, "summary.json").write_text(json.dumps({"b": b, "sites": list(sites), "k": k}))
"""


@pytest.fixture
def nbdir(tmp_path, monkeypatch):
    d = tmp_path / "notebooks"
    (d / "params").mkdir(parents=True)
    (d / "91_typed.py").write_text(TINY)
    (d / "params" / "91_typed.bad.yaml").write_text("a: 1.5  # not an int\n")
    monkeypatch.setattr(runs, "NOTEBOOKS", d)
    return tmp_path


@pytest.mark.parametrize(
    "name, value, expects",
    [
        ("name", ["x"], "str"),
        ("a", True, "int"),
        ("a", 2.5, "int"),
        ("b", "2.0", "float"),
        ("xs", "1,2", "list"),
        ("sites", [1], "tuple[str, ...]"),
        ("k", "3", "int | None"),
        ("seed", 0.5, "int"),
    ],
)
def test_wrong_type_notebook_parameter_fails_before_the_run(nbdir, name, value, expects):
    with pytest.raises(TypeError) as err:
        runs.run_notebook("91_typed", {name: value}, run_id="r", out_root=nbdir / "outputs")
    msg = str(err.value)
    assert f"parameter {name!r}" in msg and f"expects {expects}," in msg and repr(value) in msg
    assert "declared as `" in msg
    assert not (nbdir / "outputs").exists()  # no run folder, nothing executed


def test_unknown_parameter_and_bad_preset_are_named(nbdir):
    with pytest.raises(TypeError, match=r"has no parameter 'bb' \(did you mean 'b'\?\)") as err:
        runs.run_notebook("91_typed", {"bb": 1.0}, out_root=nbdir / "outputs")
    assert "its parameters are: a, b, name, xs, sites, k, seed, out_dir" in str(err.value)
    with pytest.raises(TypeError, match=r"'a' .* expects int, got 1.5 .*91_typed.bad.yaml"):
        runs.run_notebook("91_typed", preset="bad", out_root=nbdir / "outputs")
    assert not (nbdir / "outputs").exists()


def test_compatible_parameter_values_run(nbdir):
    # an int for a float, a list for a tuple (YAML has no tuples), an int for `int | None`
    out = runs.run_notebook("91_typed", {"b": 3, "sites": ["resid_pre.2"], "k": 4},
                            run_id="ok", out_root=nbdir / "outputs")  # fmt: skip
    assert json.loads((out / "summary.json").read_text()) == {
        "b": 3, "sites": ["resid_pre.2"], "k": 4,
    }  # fmt: skip


@pytest.mark.parametrize(
    "annotation, good, bad",
    [
        ("Optional[int]", [None, 3], ["3", 3.0]),
        ("Union[int, str]", [1, "a"], [1.5, None]),
        ("Literal['a', 'b']", ["a"], ["c"]),
        ("'float'", [1, 1.5], ["1"]),
        ("list[int]", [[1, 2], []], [[1, "2"], 3]),
        ("tuple[int, str]", [(1, "a"), [1, "a"]], [(1, 2), (1,)]),
        ("dict", [{}], [[]]),
        ("SomeClass", [object()], []),  # unknown types are not checked
    ],
)
def test_annotation_checks(annotation, good, bad):
    assert all(runs.type_ok(v, annotation) for v in good)
    assert not any(runs.type_ok(v, annotation) for v in bad)


# --- training: damaged checkpoints and inputs only train/evaluate can see -----------------------


@pytest.fixture(scope="module")
def data(storyworld_data):
    return storyworld_data(64, n_tokens=4_000)


def _cfg(**kw) -> tr.TrainConfig:
    base = dict(sites=("resid_pre.3",), dict_ratio=4, n_tokens=8 * 64 * 4, batch_size=8,
                warmup=1, log_every=2, eval_tokens=2 * 64, checkpoint_every=2)  # fmt: skip
    return config(**(base | kw))


@pytest.fixture(scope="module")
def finished(lm, data, tmp_path_factory):
    """The files of a short finished run, to damage copies of."""
    out = tmp_path_factory.mktemp("run")
    tr.train(lm, data, _cfg(), out, progress=False)
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def _damage(kind: str, raw: bytes) -> bytes:
    if kind == "truncated":
        return raw[: len(raw) // 2]
    if kind == "empty":
        return b""
    if kind == "garbage":
        return b"\x00not a checkpoint" * 100
    import io

    buf = io.BytesIO()
    torch.save({"step": 3}, buf)  # a valid torch file that is no training checkpoint
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage", "foreign"])
def test_damaged_checkpoint_is_detected_and_kept(lm, data, finished, tmp_path, kind):
    for name, raw in finished.items():
        (tmp_path / name).write_bytes(raw)
    bad = _damage(kind, finished["checkpoint.pt"])
    (tmp_path / "checkpoint.pt").write_bytes(bad)
    match = "lacks" if kind == "foreign" else "is corrupt or truncated"
    with pytest.raises(tr.CheckpointError, match=match) as err:
        tr.train(lm, data, _cfg(), tmp_path, resume=True, progress=False)
    assert str(tmp_path / "checkpoint.pt") in str(err.value) and "left in place" in str(err.value)
    assert (tmp_path / "checkpoint.pt").read_bytes() == bad  # not deleted, not overwritten
    for name in ("metrics.jsonl", "train_config.json"):  # and the run's log is untouched
        assert (tmp_path / name).read_bytes() == finished[name]


def test_resume_with_another_config_changes_nothing(lm, data, finished, tmp_path):
    for name, raw in finished.items():
        (tmp_path / name).write_bytes(raw)
    with pytest.raises(tr.CheckpointError, match=r"different TrainConfig.*'lr': \(0.001, 0.01\)"):
        tr.train(lm, data, _cfg(lr=1e-2), tmp_path, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == finished


def test_train_and_evaluate_reject_what_only_they_can_see(lm, data, tmp_path):
    out = tmp_path / "never"
    # k above a d_sae that comes from dict_ratio x the model's width
    with pytest.raises(ValueError, match=r"k=600 > d_sae=256 \(dict_ratio 4 x 64\)"):
        tr.train(lm, data, _cfg(sae="topk", k=600), out, progress=False)
    # fewer rows than one batch
    short = sl.TokenDataset(data.tokens[:3], source="short")
    with pytest.raises(ValueError, match="'short' has 3 rows of 64 tokens, fewer than one batch"):
        tr.train(lm, short, _cfg(), out, progress=False)
    assert not out.exists()  # refused before anything was written
    # an SAE of another width spliced into this model
    sae = sl.SAE.from_config(
        sl.SAEConfig.create(d_in=32, d_sae=64, architecture="relu", model_name="other")
    )
    with pytest.raises(ValueError, match=r"d_in=32, but resid_pre.3 of this model has width 64"):
        sl.evaluate(lm, {"resid_pre.3": sae}, data, n_tokens=128)
