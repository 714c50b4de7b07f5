"""Activation caches: cached training equals live training; bad pairings are clear errors."""

import json
import shutil

import pytest
import torch
from configs import config

import saelab as sl
from saelab.core import cache as ac
from saelab.core import training as tr

SITE = "resid_pre.3"


@pytest.fixture(scope="module")
def data(storyworld_data):
    return storyworld_data(64, n_tokens=16_000)


@pytest.fixture(scope="module")
def cache(lm, data, tmp_path_factory):
    # 1 MB shards of 64 rows: the 250 rows span four shards, so batches gather across files
    path = tmp_path_factory.mktemp("acts") / "rp3"
    return sl.cache_activations(lm, data, SITE, path, shard_mb=1, progress=False)


def _cfg(**kw) -> tr.TrainConfig:
    base = dict(sites=(SITE,), dict_ratio=4, n_tokens=8 * 64 * 8, batch_size=8, lr=3e-3,
                warmup=2, log_every=4, eval_tokens=4 * 64, dead_tokens=1024)  # fmt: skip
    return config(**(base | kw))


def test_manifest_shards_and_size(lm, cache, data):
    m = cache.manifest
    assert m["n_rows"] == len(data) and m["n_ctx"] == 64 and m["d_in"] == 64
    assert m["site"] == SITE and m["dtype"] == "float32"
    assert m["tokens_sha256"] == ac.fingerprint(data.tokens)
    assert [s["rows"] for s in m["shards"]][:-1] == [64] * (len(m["shards"]) - 1)
    assert len(m["shards"]) >= 3
    size = sum(f.stat().st_size for f in cache.path.iterdir())
    assert size / data.n_tokens == pytest.approx(4 * 64 + 4, rel=0.01)  # fp32 + int32 token
    assert torch.equal(cache.token_dataset().tokens, data.tokens)
    # rows in any order, across shards, equal a fresh clean pass on those token rows
    idx = torch.tensor([200, 3, 64, 63, 130])
    from saelab.core.passes import clean_pass

    site = sl.parse_site(SITE)
    live = clean_pass(lm, data.tokens[idx], [site]).acts[site]
    assert torch.allclose(cache.rows(idx), live, atol=1e-5)


@pytest.mark.parametrize("kind", ["relu", "topk"])
def test_cached_training_equals_live(lm, data, cache, kind):
    cfg = _cfg(sae=kind, **({"k": 8} if kind == "topk" else {}))
    live = tr.train(lm, data, cfg, None, progress=False)
    cached = tr.train(lm, cache, cfg, None, progress=False)
    pairs = list(zip(live.sae.parameters(), cached.sae.parameters(), strict=True))
    for p, q in pairs:
        assert torch.allclose(p, q, atol=1e-6), (p - q).abs().max()
    print(f"{kind}: cached vs live max |param diff| "
          f"{max((p - q).abs().max().item() for p, q in pairs):.2e}")  # fmt: skip
    a, b = live.log[-1], cached.log[-1]
    assert a.keys() == b.keys() and a["kind"] == "eval"
    for key in a.keys() - {"kind"}:
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
    # without the model: only the SAE's own metrics, equal to the live run's
    alone = tr.train(None, cache, cfg, None, progress=False).log[-1]
    assert set(alone) == {"step", "kind", "l0", "alive", "dead_frac", "mse", "explained_var",
                          "l2_ratio", "n_tokens", "alive_window_tokens"}  # fmt: skip
    for key in alone.keys() - {"kind"}:
        assert alone[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key


def test_existing_cache_is_reused_and_a_different_one_refused(lm, data, cache, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("the model ran again")

    monkeypatch.setattr(ac, "clean_pass", no_model)
    again = sl.cache_activations(lm, data, SITE, cache.path, shard_mb=1, progress=False)
    assert again.manifest == cache.manifest
    with pytest.raises(ValueError, match=r"holds a different activation cache.*'site'"):
        sl.cache_activations(lm, data, "resid_pre.2", cache.path, progress=False)
    with pytest.raises(ValueError, match=r"different activation cache.*'dtype'"):
        sl.cache_activations(lm, data, SITE, cache.path, dtype="float16", progress=False)
    other = sl.TokenDataset(data.tokens[:100].flip(0), source="other")
    with pytest.raises(ValueError, match="written from other token data"):
        sl.load_cache(cache.path, data=other)
    sl.load_cache(cache.path, data=data)  # the right data passes


def test_bad_training_configs_are_refused(lm, data, cache, tmp_path):
    cases = [
        (dict(loss="e2e"), "loss='e2e' cannot train from an activation cache"),
        (dict(loss="e2e+ds", ds_coeff=1.0), r"loss='e2e\+ds' cannot train"),
        (dict(sae="gtopk", k=8), "sae='gtopk' cannot train from an activation cache.*dL/dx"),
        (dict(sites=("resid_pre.2",)), r"cfg.sites=\['resid_pre.2'\] but .* holds 'resid_pre.3'"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            tr.train(lm, cache, _cfg(**kw), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="lm is None: only an activation cache"):
        tr.train(None, data, _cfg(), None, progress=False)
    # a cache from another model
    other = tmp_path / "other"
    shutil.copytree(cache.path, other)
    m = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(m | {"model": "gpt2"}))
    with pytest.raises(
        ValueError, match="written from model 'gpt2' \\(d_in=64\\); the model given is"
    ):
        tr.train(lm, ac.ActivationCache(other), _cfg(), None, progress=False)


def test_half_written_and_damaged_caches_are_detected(lm, data, cache, tmp_path, monkeypatch):
    # a write that dies after its first shard leaves nothing that looks like a cache
    real, calls = ac.save_file, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ac, "save_file", dying)
    with pytest.raises(KeyboardInterrupt):
        sl.cache_activations(lm, data, SITE, tmp_path / "c", shard_mb=1, progress=False)
    monkeypatch.setattr(ac, "save_file", real)
    assert list(tmp_path.iterdir()) == []
    # a killed process cannot clean up: its temp folder is not a cache
    half = tmp_path / ".c.tmp-12345"
    shutil.copytree(cache.path, half)
    (half / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="not a complete activation cache"):
        sl.load_cache(half)
    # a truncated shard is found on opening
    cut = tmp_path / "cut"
    shutil.copytree(cache.path, cut)
    shard = cut / cache.manifest["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"acts-00001.safetensors is truncated"):
        sl.load_cache(cut)
    # a folder that is not a cache is never overwritten
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an activation cache"):
        sl.cache_activations(lm, data, SITE, tmp_path / "mine", overwrite=True, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_float16_cache_halves_the_size_and_trains_alike(lm, data, cache, tmp_path):
    half = sl.cache_activations(lm, data, SITE, tmp_path / "h", dtype="float16", progress=False)
    assert half.manifest["bytes_per_token"] == 2 * 64 + 4
    idx = torch.arange(0, len(data), 7)
    assert half.rows(idx).dtype == torch.float16
    assert torch.allclose(half.rows(idx).float(), cache.rows(idx), atol=1e-2, rtol=1e-3)
    cfg = _cfg(n_tokens=8 * 64 * 6)
    a = tr.train(None, half, cfg, None, progress=False).log[-1]
    b = tr.train(None, cache, cfg, None, progress=False).log[-1]
    assert a["mse"] != b["mse"]  # fp16 rounding is visible ...
    assert a["mse"] == pytest.approx(b["mse"], rel=1e-2)  # ... and small
