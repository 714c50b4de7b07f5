"""Publishing to the Hub and loading back, with no network: `push_to_hub` runs the real
huggingface_hub client against a stand-in for the Hub's HTTP API (its answers to create, preupload
and commit), and what reached the wire is laid into a Hub cache snapshot, from which
`sae_lens.SAE.from_pretrained` and `sl.load_sae("hf://...")` load it offline. Not exercised: the
real Hub's answers, authentication, large-file (LFS / Xet) uploads."""

import base64
import json

import pytest
import torch
from configs import config

import saelab as sl
from saelab.core import hub
from saelab.core import training as tr

huggingface_hub = pytest.importorskip("huggingface_hub")
httpx2 = pytest.importorskip("httpx2")
sae_lens = pytest.importorskip("sae_lens")

SITE = "resid_pre.3"
REPO = "saelab-test/storyworld-saes"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def run(lm, storyworld_data, tmp_path_factory):
    data = storyworld_data(128, n_tokens=40_000)
    cfg = config(sites=(SITE,), dict_ratio=2, n_tokens=16 * 128 * 4, batch_size=16, lr=3e-3,
                 warmup=1, eval_tokens=4 * 128, alive_tokens=None, loss="e2e")  # fmt: skip
    return tr.train(lm, data, cfg, tmp_path_factory.mktemp("r") / "run", progress=False)


@pytest.fixture
def fake_hub(monkeypatch):
    """The requests the client sends, answered as the Hub answers them: the card's metadata
    valid, every file uploaded inline ("regular"), the commit accepted."""
    sent = []

    def answer(request):
        sent.append(request)
        path = request.url.path
        if path == "/api/validate-yaml":  # the client checks a README's metadata first
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if path == "/api/repos/create":
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{REPO}"})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                for f in files]})  # fmt: skip
        if "/commit/" in path:
            return httpx2.Response(200, json={"commitUrl": f"https://huggingface.co/{REPO}/"
                                              f"commit/{SHA}", "commitOid": SHA})  # fmt: skip
        return httpx2.Response(404, json={"error": f"not faked: {request.method} {path}"})

    from huggingface_hub.utils import _http

    real = _http._GLOBAL_CLIENT_FACTORY  # the client's own factory, restored after the test
    huggingface_hub.set_client_factory(
        lambda: httpx2.Client(transport=httpx2.MockTransport(answer)))  # fmt: skip
    yield sent
    huggingface_hub.set_client_factory(real)


def _committed(sent) -> dict[str, bytes]:
    """The files of the commit request: its NDJSON body's base64 file entries."""
    (commit,) = [r for r in sent if "/commit/" in r.url.path]
    files = {}
    for line in commit.content.decode().splitlines():
        entry = json.loads(line)
        if entry["key"] == "file":
            files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
    return files


def _into_cache(files: dict[str, bytes], cache, monkeypatch):
    """Lay `files` out as the Hub client caches repository REPO at commit SHA, and go offline."""
    repo = cache / f"models--{REPO.replace('/', '--')}"
    for name, content in files.items():
        (repo / "snapshots" / SHA / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / SHA / name).write_bytes(content)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_push_sends_one_commit_that_sae_lens_and_saelab_load_back(run, fake_hub, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    info = sl.push_to_hub(run.out_dir, REPO, folder=tmp_path / "laid", token="hf_fake")
    assert info.oid == SHA
    creates = [r for r in fake_hub if r.url.path == "/api/repos/create"]
    assert len(creates) == 1 and json.loads(creates[0].content)["name"] == REPO.split("/")[1]
    assert sum("/commit/" in r.url.path for r in fake_hub) == 1  # one commit: never half a push
    writes = [r for r in fake_hub if r.url.path.startswith(("/api/repos", "/api/models"))]
    assert all(r.headers.get("authorization") == "Bearer hf_fake" for r in writes)
    files = _committed(fake_hub)
    assert set(files) == {"README.md", f"{SITE}/cfg.json", f"{SITE}/sae_weights.safetensors"}
    assert files[f"{SITE}/cfg.json"] == (tmp_path / "laid" / SITE / "cfg.json").read_bytes()

    card = files["README.md"].decode()
    final = run.log[-1]
    for text in ("library_name: saelens", "storyworld", f"`{SITE}`", "relu", "e2e (kl_coeff",
                 f"{16 * 128 * 4:,}", f"ce_increase {final['ce_increase']:.4g}",
                 f"l0 {final['l0']:.4g}", f'SAE.from_pretrained("{REPO}", "{SITE}")',
                 f'sl.load_sae("hf://{REPO}/{SITE}")'):  # fmt: skip
        assert text in card, text

    _into_cache(files, tmp_path / "hf-cache", monkeypatch)
    x = torch.randn(64, run.sae.cfg.d_in)
    theirs = sae_lens.SAE.from_pretrained(REPO, SITE)
    ours = sl.load_sae(f"hf://{REPO}/{SITE}")
    with torch.no_grad():
        want = run.sae(x).x_hat
        assert (theirs(x) - want).abs().max() <= 1e-5
        assert (ours(x).x_hat - want).abs().max() <= 1e-5
        assert (ours.encode(x)[0] - theirs.encode(x)).abs().max() <= 1e-5  # latents as exported


def test_bad_hub_addresses_are_refused_naming_the_form(run):
    with pytest.raises(ValueError, match="org/name"):
        sl.push_to_hub(run.sae, "no-slash")
    with pytest.raises(ValueError, match=r"hf://org/repo/<the SAE's folder>"):
        sl.load_sae("hf://org/repo")
    assert hub.parse_hf("hf://org/repo@v2/a/b") == ("org/repo", "v2", "a/b")


def test_a_multi_site_card_shows_each_saes_own_metrics(run):
    final = {"ce_increase": 0.08, "kl": 0.09, "resid_pre.3/l0": 12.0, "resid_pre.4/l0": 30.0,
             "resid_pre.3/mse": 0.1, "resid_pre.4/mse": 0.2}  # fmt: skip
    saes = {"resid_pre.3": run.sae, "resid_pre.4": run.sae}
    card = hub.model_card(saes, {s: final for s in saes}, REPO)
    first, second = card.split("## `resid_pre.4`")
    assert "l0 12," in first and "l0 30," in second and "mse 0.2" in second
    assert "ce_increase (all 2 SAEs spliced) 0.08" in first
