"""`config(**kw)`: a TrainConfig from one keyword list, so a test names only what it varies;
`killed_at` and `dump_dom`, two more helpers the tests share.

Keywords that are TrainConfig fields stay; `sae` (an architecture name, default "relu") and
every other keyword build the SAE's config; `kl_coeff` / `ds_coeff` go to the objective named by
`loss`. A test helper, not the library's: the library takes the nested form only.
"""

import subprocess
from dataclasses import fields

import pytest

import saelab as sl

COEFFS = ("kl_coeff", "ds_coeff")


def config(**kw) -> sl.TrainConfig:
    own = {f.name for f in fields(sl.TrainConfig)}
    train = {k: v for k, v in kw.items() if k in own and k not in ("sae", "loss")}
    coeffs = {k: kw[k] for k in COEFFS if k in kw}
    sae = {k: v for k, v in kw.items() if k not in own and k not in COEFFS}
    loss, arch = kw.get("loss", "local"), kw.get("sae", "relu")
    return sl.TrainConfig(
        sae=sl.SAEConfig.create(architecture=arch, **sae) if isinstance(arch, str) else arch,
        loss=sl.objective(loss, **coeffs) if isinstance(loss, str) else loss,
        **train,
    )


def killed_at(monkeypatch, n: int):
    """Make the `n`-th call of `training.compute_loss` (the n-th step) raise KeyboardInterrupt,
    as a kill would; returns the real function, to put back before resuming."""
    from saelab.core import training as tr

    real, calls = tr.compute_loss, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tr, "compute_loss", dying)
    return real


def dump_dom(chromium: str, page, tmp_path) -> subprocess.CompletedProcess:
    """Headless Chromium's DOM of `page` after its scripts ran (`--dump-dom`), with a fresh
    profile and no background networking (the machine has none); skips the test after 90 s."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
           page.resolve().as_uri()]  # fmt: skip
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.skip("chromium did not finish rendering in 90 s")
