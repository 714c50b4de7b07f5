"""The objective schedule (`saelab.core.schedule`): local training, then a balanced KL + MSE
fine-tune over the last part of the run (Karvonen 2025), in one `sl.train` run."""

import json

import pytest
import torch
from configs import config, killed_at

import saelab as sl
from saelab.core import training as tr
from saelab.core.passes import batch_positions, sae_positions, special_ids
from saelab.core.schedule import Finetune, switch_step

SITE = "resid_pre.3"
N_STEPS = 12


@pytest.fixture(scope="module")
def data(storyworld_data):
    return storyworld_data(64, n_tokens=8 * 64 * N_STEPS)


def _cfg(**kw) -> sl.TrainConfig:
    base = dict(sites=(SITE,), sae="topk", k=8, dict_ratio=2, n_tokens=8 * 64 * N_STEPS,
                batch_size=8, eval_tokens=4 * 64, alive_tokens=None, lr=3e-3, warmup=2,
                log_every=4, dead_tokens=2048, finetune={"fraction": 0.25})  # fmt: skip
    return config(**(base | kw))


def test_the_config_round_trips_and_bad_schedules_are_refused():
    cfg = _cfg(finetune={"fraction": 0.1, "loss": {"name": "e2e+ds", "kl_coeff": 0.5,
                                                    "ds_coeff": 1.0}})  # fmt: skip
    assert sl.TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.to_dict()["finetune"]["loss"] == {
        "name": "e2e+ds",
        "kl_coeff": 0.5,
        "ds_coeff": 1.0,
        "ds_units": "normalised",
    }
    assert Finetune().loss.to_dict() == {"name": "e2e+mse", "kl_coeff": 0.5, "mse_coeff": 0.5}
    assert [switch_step(_cfg(finetune={"fraction": f}), 12) for f in (0.1, 0.25, 1.0)] == [11, 9, 0]
    assert switch_step(_cfg(finetune=None), 12) == 12
    for bad, match in [({"fraction": 0}, "fraction=0"), ({"fraction": 1.5}, r"in \(0, 1\]"),
                       ({"loss": "local"}, "scales a KL term, and loss='local' has none"),
                       ({"loss": "e2e+mse", "balance": "yes"}, "balance='yes'"),
                       ({"fractoin": 0.1}, "no field 'fractoin'")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            _cfg(finetune=bad)
    with pytest.raises(ValueError, match="is the run's own loss"):
        _cfg(loss=sl.objective("e2e+mse", kl_coeff=0.5, mse_coeff=0.5))


def test_the_switch_balances_the_kl_to_the_mse_of_its_batch(lm, data, tmp_path, monkeypatch):
    cfg = _cfg(checkpoint_every=switch_step(_cfg(), N_STEPS))  # the checkpoint at the switch
    real = killed_at(monkeypatch, 11)  # stop after the first fine-tune step
    with pytest.raises(KeyboardInterrupt):
        tr.train(lm, data, cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(tr, "compute_loss", real)
    at = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert at["step"] == 9
    full = tr.train(lm, data, cfg, tmp_path / "full", progress=False)
    (switch,) = [r for r in full.log if r["kind"] == "finetune"]
    assert switch["step"] == 9 and switch["loss"]["name"] == "e2e+mse"
    train = [r for r in full.log if r["kind"] == "train"]
    assert [r["step"] for r in train] == [4, 8, 9, 12]  # a record closes the local phase
    assert "kl" not in train[2] and "kl" in train[3]
    # by hand: the checkpointed SAE, the switch step's batch, the fine-tune's KL and MSE
    sae = sl.SAE.from_config(full.sae.cfg)
    sae.load_state_dict(at["saes"][SITE])
    sae.train()
    batch = [b for _, b in zip(range(10), tr.batches(data, cfg), strict=False)][9]
    site = sl.parse_site(SITE)
    special = torch.tensor(special_ids(lm.tokenizer))
    keep = batch_positions(batch, sae_positions(data), special)  # BOS and special tokens out
    dead = {site: torch.zeros(sae.cfg.d_sae, dtype=torch.bool)}
    _, logs, _ = tr.compute_loss(lm, batch, {site: sae}, cfg, dead, keep=keep,
                                 obj=cfg.finetune.loss)  # fmt: skip
    assert switch["kl_scale"] == pytest.approx(logs["mse"] / logs["kl"], rel=1e-5)


@pytest.mark.parametrize("checkpoint_at", [8, 9, 10])  # before the switch (step 9), at it, after
def test_a_run_killed_across_the_switch_resumes_to_the_same_weights(
    lm, data, tmp_path, monkeypatch, checkpoint_at
):
    cfg = _cfg(checkpoint_every=checkpoint_at)
    full = tr.train(lm, data, cfg, tmp_path / "full", progress=False)
    real = killed_at(monkeypatch, 11)  # dies in step 11: after both checkpoints
    with pytest.raises(KeyboardInterrupt):
        tr.train(lm, data, cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(tr, "compute_loss", real)
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == checkpoint_at
    resumed = tr.train(lm, data, cfg, tmp_path / "cut", resume=True, progress=False)
    for p, q in zip(full.sae.parameters(), resumed.sae.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-7)
    assert [r for r in resumed.log if r["kind"] == "finetune"] == [
        r for r in full.log if r["kind"] == "finetune"
    ]
    logged = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["kind"] for x in logged] == [r["kind"] for r in full.log]


def test_fine_tuning_a_saved_sae_from_its_first_step(lm, data, tmp_path):
    first = tr.train(lm, data, _cfg(finetune=None), tmp_path / "local", progress=False)
    cfg = _cfg(finetune={"fraction": 1.0}, init_from=str(tmp_path / "local" / "saes" / SITE),
               log_every=1, warmup=0)  # fmt: skip
    tuned = tr.train(lm, data, cfg, tmp_path / "tuned", progress=False)
    switch, rec = [r for r in tuned.log if r["kind"] in ("finetune", "train")][:2]
    assert switch["kind"] == "finetune" and switch["step"] == 0
    # balanced: 0.5 MSE + 0.5 (MSE / KL) KL is the MSE itself (AuxK is 0: nothing is dead yet)
    assert rec["loss"] == pytest.approx(rec["mse"], rel=1e-5)
    # the control: the same 12 steps on the local loss alone lower the CE less
    more = _cfg(finetune=None, init_from=cfg.init_from, log_every=1, warmup=0)
    local = tr.train(lm, data, more, tmp_path / "more", progress=False)
    assert tuned.log[-1]["ce_sae"] < local.log[-1]["ce_sae"] < first.log[-1]["ce_sae"] + 1e-3


def test_a_sweep_with_a_fine_tune_gives_each_run_its_own_result(lm, data):
    cfgs = [_cfg(lr=3e-3), _cfg(lr=1e-3, finetune={"fraction": 0.25, "balance": False})]
    swept = tr.train_many(lm, data, cfgs, progress=False)
    for cfg, run in zip(cfgs, swept, strict=True):
        alone = tr.train(lm, data, cfg, None, progress=False)
        assert run.log[-1]["ce_sae"] == pytest.approx(alone.log[-1]["ce_sae"], rel=1e-6)
    assert [r["kind"] for r in swept[1].log].count("finetune") == 0  # unbalanced: no scale
    with pytest.raises(ValueError, match="must share finetune"):
        tr.train_many(lm, data, [_cfg(), _cfg(finetune={"fraction": 0.5})], progress=False)


def test_an_activation_cache_cannot_feed_a_spliced_fine_tune(lm, data, tmp_path):
    cache = sl.cache_activations(lm, data, SITE, tmp_path / "cache")
    with pytest.raises(ValueError, match="a fine-tune with loss='e2e\\+mse' cannot train"):
        tr.train(None, cache, _cfg(), None, progress=False)


@pytest.mark.parametrize("arch", sl.architectures())
def test_every_architecture_trains_local_then_fine_tunes_with_kl_and_mse(lm, data, arch):
    extra = {"relu": {}, "jumprelu": {}}.get(arch, {"k": 8})
    site = "mlp_out.3" if "transcoder" in arch else SITE  # transcoders write the MLP's output
    cfg = config(sites=(site,), sae=arch, dict_ratio=2, n_tokens=8 * 64 * 4, batch_size=8,
                 eval_tokens=4 * 64, alive_tokens=None, warmup=1, log_every=1,
                 finetune={"fraction": 0.5}, **extra)  # fmt: skip
    run = tr.train(lm, data, cfg, None, progress=False)
    train = [r for r in run.log if r["kind"] == "train"]
    assert ["kl" in r for r in train] == [False, False, True, True]
    (switch,) = [r for r in run.log if r["kind"] == "finetune"]
    assert switch["step"] == 2 and 0 < switch["kl_scale"] < float("inf")
    assert all(torch.isfinite(p).all() for p in run.sae.parameters())


def test_the_balance_sums_every_sites_own_mse_and_nothing_else(lm, data):
    """Two Matryoshka SAEs: the scale is (MSE_a + MSE_b) / KL of the switch step, without the
    prefix MSEs (logged as '<site>/prefix<m>_mse')."""
    cfg = _cfg(sites=("resid_pre.2", "resid_pre.4"), sae="matryoshka", log_every=1,
               n_tokens=8 * 64 * 4, finetune={"fraction": 0.5})  # fmt: skip
    run = tr.train(lm, data, cfg, None, progress=False)
    (switch,) = [r for r in run.log if r["kind"] == "finetune"]
    (first,) = [r for r in run.log if r["kind"] == "train" and r["step"] == switch["step"] + 1]
    assert "resid_pre.2/prefix8_mse" in first  # d_sae 128: prefixes 8, 16, 32, 64
    mse = first["resid_pre.2/mse"] + first["resid_pre.4/mse"]  # the switch step's own values
    assert switch["kl_scale"] == pytest.approx(mse / first["kl"], rel=1e-6)


def test_the_plateau_test_reads_only_the_fine_tune_after_its_switch():
    from saelab.core.convergence import loss_plateau

    log = [{"step": s, "kind": "train", "loss": 10.0 - s / 100} for s in range(1, 91)]
    log += [{"step": 90, "kind": "finetune", "kl_scale": 0.1}]
    log += [{"step": s, "kind": "train", "loss": 1.0} for s in range(91, 101)]
    p = loss_plateau(log)  # the last 20% straddles the switch: only steps 91..100 count
    assert p["n"] == 10 and p["first"] == p["second"] == 1.0 and p["converged"]
