"""Notebooks: paired with their .py source, parameterised, and executable through papermill."""

import json
from pathlib import Path

import jupytext
import pandas as pd
import pytest

from saelab import runs

NOTEBOOKS = sorted(runs.NOTEBOOKS.glob("[0-9]*.py"))
# Notebooks 06+ study the SAEs of a 05_pareto run; in the tests, of this module's smoke run.
PARETO = "<pareto_run>"
HALF = "<half_pareto_run>"  # 12_doubling's second sweep: the smoke run's ReLU SAEs at half budget
# Smoke-sized parameters per notebook: each run takes well under a minute on 2 CPU cores.
SMOKE = {
    "00_storyworld": dict(
        n_train_tokens=60_000, n_val_tokens=10_000, tokenizer_stories=500, vocab_size=512,
        n_layer=2, n_steps=6, batch_size=16, eval_every=3, probe_stories=10,
    ),
    "01_local_sae": dict(n_tokens=16_384, eval_tokens=4096, density_tokens=4096, batch_size=8,
                         alive_tokens=4096),
    "02_e2e_sae": dict(n_tokens=8192, eval_tokens=2048, batch_size=8, alive_tokens=2048),
    "03_e2e_ds_sae": dict(n_tokens=8192, eval_tokens=2048, batch_size=8, alive_tokens=2048),
    "04_gradient_sae": dict(
        n_tokens=8192, eval_tokens=2048, batch_size=8, dict_ratio=8.0, betas=[0.0, 1.0],
        alive_tokens=2048,
    ),
    "05_pareto": dict(
        n_tokens=16 * 128 * 4, batch_size=16, local_sparsity=[1.0], e2e_sparsity=[1.0], ks=[8],
        batchtopk_ks=[8], jumprelu_l0_coeffs=[10.0], eval_tokens=4 * 128, alive_tokens=1024,
        seeds=[0, 1], e2e_n_tokens=16 * 128 * 10,  # 10 steps: e2e gets the held-out 80% check
    ),
    "06_feature_browser": dict(sae_run=PARETO, n_tokens=2048, n_latents=4, n_contexts=4),
    "07_geometry": dict(n_tokens=4096, batch_size=8, eval_tokens=512, n_boot=100, run_umap=False,
                        alive_tokens=1024),
    "08_steering": dict(sae_run=PARETO, k=8, n_latents=8, alphas=[0.5, 2.0], n_contexts=2,
                        n_ctx=16, eval_tokens=1024, n_boot=100),
    "09_ground_truth": dict(sae_run=PARETO, eval_tokens=1024),
    "10_downstream": dict(sae_run=PARETO),
    "12_doubling": dict(sae_run=PARETO, half_run=HALF, target_ce=0.0),
    "11_gsae_study": dict(
        n_tokens=4096, batch_size=8, betas=[1.0, 64.0], grad_norms=["unit", "none"],
        eval_tokens=1024, alive_tokens=1024, n_latents=8, n_contexts=2, steer_ctx=16, n_boot=100,
    ),
    "13_beyond_the_papers": dict(n_tokens=8 * 128 * 8, batch_size=8, ks=[8, 16],
                                 fractions=[0.25], eval_tokens=1024, alive_tokens=1024,
                                 warmup=2, dict_ratio=2.0),
}  # fmt: skip


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_one_tagged_parameters_cell_of_literals(py: Path):
    nb = jupytext.read(py)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{py.name}: needs exactly one cell tagged 'parameters'"
    for line in tagged[0].source.splitlines():
        assert line.startswith("#") or (":" in line and "=" in line and "#" in line), (
            f"{py.name}: parameter lines are typed and commented: {line!r}"
        )
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_parses_every_parameter(py: Path, caplog):
    """papermill infers names, types and help from the cell; an '=' in a comment breaks that."""
    from papermill.translators import PythonTranslator

    cell = next(c for c in jupytext.read(py).cells if "parameters" in c.metadata.get("tags", []))
    params = PythonTranslator.inspect(cell)
    assert "Unable to parse" not in caplog.text
    n_lines = sum(1 for line in cell.source.splitlines() if line and not line.startswith("#"))
    assert len(params) == n_lines
    assert all(p.inferred_type_name != "None" and p.help for p in params)


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_py_and_ipynb_agree(py: Path):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `make notebooks` (jupytext --sync)"
    assert _code(jupytext.read(py)) == _code(jupytext.read(ipynb)), f"{py.name} and .ipynb differ"


def test_every_notebook_has_a_smoke_preset_in_this_file():
    assert {p.stem for p in NOTEBOOKS} <= set(SMOKE)


@pytest.fixture(scope="module")
def pareto_run(tmp_path_factory):
    """The smoke-sized main job (05_pareto's 7 SAEs x 2 seeds: local, e2e, e2e+ds, topk, gtopk,
    batchtopk, jumprelu; and one study of them), made once."""
    root = tmp_path_factory.mktemp("pareto")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAELAB_CACHE", str(root / "cache"))
        smoke = {k: SMOKE[k] for k in ("05_pareto", "10_downstream")}
        return runs.main_job("smoke", ["10_downstream"], root, smoke)


@pytest.fixture(scope="module")
def half_pareto_run(tmp_path_factory):
    """The smoke 05_pareto run's local, e2e and e2e+ds SAEs on half their budgets (no TopK)."""
    root = tmp_path_factory.mktemp("half")
    smoke = SMOKE["05_pareto"]
    half = smoke | dict(n_tokens=smoke["n_tokens"] // 2, e2e_n_tokens=smoke["e2e_n_tokens"] // 2,
                        ks=[], batchtopk_ks=[], jumprelu_l0_coeffs=[])  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAELAB_CACHE", str(root / "cache"))
        return runs.run_notebook("05_pareto", half, run_id="half", out_root=root)


def test_the_doubling_test_refuses_sweeps_whose_budgets_do_not_double(pareto_run, tmp_path):
    """12_doubling compared with itself: equal budgets, so the test would mean nothing."""
    with pytest.raises(Exception, match="twice its half budget; local: half 8,192 tokens"):
        runs.run_notebook("12_doubling", dict(sae_run=str(pareto_run), half_run=str(pareto_run)),
                          run_id="same", out_root=tmp_path)  # fmt: skip


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_notebook_runs_through_papermill(name, tmp_path, monkeypatch, request):
    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path / "cache"))
    if name == "05_pareto":
        out = request.getfixturevalue("pareto_run")
        assert len(list((out / "runs").glob("*/saes/*/sae.safetensors"))) == 7 * 2  # 2 seeds
        link = "../../10_downstream/smoke/notebook.ipynb"
        assert link in (out / "STUDIES.md").read_text() and (out / link).exists()
        study = json.loads((out / link).with_name("config.json").read_text())
        assert study["parameters"]["sae_run"] == str(out)
        sweep = pd.read_csv(out / "sweep.csv")
        e2e = sweep.method == "e2e"
        assert (sweep.loc[e2e, "n_tokens"] == 16 * 128 * 10).all()
        assert (sweep.loc[~e2e, "n_tokens"] == 16 * 128 * 4).all()
        # the held-out evaluation at 80% of the steps: only runs long enough to have one
        assert sweep.loc[e2e, "heldout_l0_change"].notna().all()
        assert sweep.loc[~e2e, "heldout_l0_change"].isna().all()
        held = json.loads((out / "summary.json").read_text())["convergence"]["heldout"]
        assert [h["method"] for h in held] == ["e2e"] and held[0]["n"] == 2
        return
    params = SMOKE[name]
    for tag, fixture in ((PARETO, "pareto_run"), (HALF, "half_pareto_run")):
        if tag in params.values():
            path = str(request.getfixturevalue(fixture))
            params = {k: path if v == tag else v for k, v in params.items()}
    out = runs.run_notebook(name, params, run_id="smoke", out_root=tmp_path / "outputs")
    assert (out / "notebook.ipynb").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["parameters"]["out_dir"] == str(out)
    assert {"sha", "dirty"} <= set(cfg["git"]) and cfg["versions"]["torch"]
    if name == "12_doubling":
        s = json.loads((out / "summary.json").read_text())
        assert [b["method"] for b in s["budgets"]] == ["local", "e2e", "e2e+ds"]
        assert all(b["full"] == 2 * b["half"] for b in s["budgets"])
        results = {(r["result"], r["how"]) for r in s["doubling"]}
        assert ("L0(e2e) / L0(local)", "log_ce") in results and len(results) == 2 * 5
        assert all(r["verdict"] in ("settled", "moving", "undecided") for r in s["doubling"])
        assert (out / "figures" / "frontiers.png").exists() and "tokens per SAE, at CE" in s[
            "verdict"
        ]
        assert all("seeds_needed" in r for r in s["doubling"])
    if name == "13_beyond_the_papers":
        s = json.loads((out / "summary.json").read_text())
        assert {r["method"] for r in s["recovered"]} == {"TopK local+ft25%"}
        assert any(r["mean"] == r["mean"] for r in s["recovered"])  # not all NaN
        assert {r["width"] for r in s["prefixes"]} == {8, 16, 32, 64, 128}  # d_sae 128
        for png in ("prefixes", "pareto", "transcoders"):
            assert (out / "figures" / f"{png}.png").stat().st_size > 1000
        assert s["transcoder_site"] == "mlp_out.3" and s["mlp_zero_ablation"] > 0
        tc = {r["method"] for r in s["ce_increase"]} - {"TopK local", "TopK e2e"}
        assert {"Transcoder local", "Transcoder e2e", "Skip transcoder e2e"} <= tc
    if name == "00_storyworld":
        m = json.loads((out / "metrics.json").read_text())
        assert m["train_tokens"] == 6 * 16 * 128 and m["vocab_size"] == 512
        assert (out / "figures" / "val_ce.png").stat().st_size > 1000
        assert (out / "model" / "model.safetensors").exists()


def test_run_notebook_rejects_unknown_notebook_and_preset(tmp_path):
    with pytest.raises(FileNotFoundError, match="have"):
        runs.run_notebook("99_nope", run_id="x", out_root=tmp_path)
    assert not (tmp_path / "99_nope").exists()
    with pytest.raises(FileNotFoundError, match="no preset"):
        runs.load_preset("00_storyworld", "nope")
    assert runs.load_preset("00_storyworld", "full")["install_assets"] is True


def test_storyworld_reports_on_the_shipped_model_without_training(tmp_path, monkeypatch):
    """00_storyworld with train_model=False (the `report` preset at smoke sizes): the shipped
    model's report card, its training facts from the shipped metrics.json, no model copy."""
    from saelab.storyworld import MODEL_DIR

    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path / "cache"))
    assert runs.load_preset("00_storyworld", "report")["train_model"] is False
    smoke = dict(train_model=False, n_train_tokens=20_000, n_val_tokens=4096,
                 tokenizer_stories=100, probe_stories=5)  # fmt: skip
    out = runs.run_notebook("00_storyworld", smoke, run_id="report", out_root=tmp_path / "out")
    m = json.loads((out / "metrics.json").read_text())
    shipped = json.loads((MODEL_DIR / "metrics.json").read_text())
    assert m["trained_here"] is False and m["n_params"] == shipped["n_params"]
    assert m["train_tokens"] == shipped["train_tokens"] and m["vocab_size"] == 2048
    assert 0 < m["val_ce"] < m["bigram_ce"] < m["unigram_ce"]
    assert not (out / "model").exists() and (out / "figures" / "val_ce.png").exists()
    with pytest.raises(Exception, match="install_assets needs train_model"):
        runs.run_notebook("00_storyworld", smoke | {"install_assets": True}, run_id="bad",
                          out_root=tmp_path / "out")  # fmt: skip
