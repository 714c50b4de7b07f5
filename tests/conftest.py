"""Shared fixtures: the storyworld model, its token datasets, a small tokenizer."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import saelab as sl
from saelab.storyworld import basemodel
from saelab.storyworld import corpus as storyworld


@pytest.fixture(scope="session", autouse=True)
def _token_cache(tmp_path_factory):
    """Tokenized datasets go to a per-session folder, never to the user's ~/.cache/saelab."""
    os.environ.setdefault("SAELAB_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def lm():
    """The shipped storyworld model on CPU, shared by every test (frozen: nothing mutates it)."""
    return sl.load_model("storyworld", device="cpu")


@pytest.fixture(scope="session")
def storyworld_data(lm):
    """`storyworld_data(n_ctx, n_tokens, split="train", labels=False)` -> a TokenDataset."""

    def make(n_ctx: int, n_tokens: int, split: str = "train", labels: bool = False):
        return sl.token_dataset("storyworld", lm.tokenizer, n_ctx, split=split,
                                n_tokens=n_tokens, labels=labels)  # fmt: skip

    return make


@pytest.fixture(scope="session")
def small_tokenizer():
    """A 512-token byte-level BPE trained on 2,000 train stories (about half a second)."""
    return basemodel.train_tokenizer(storyworld.story_texts("train", 2000), 512)


# A tiny notebook for saelab.runs: typed parameters, and a summary written last.
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
out_dir: str = "outputs/tiny/scratch"  # run folder

# %%
import json
from pathlib import Path

assert a >= 0, "a must be >= 0"
Path(out_dir, "summary.json").write_text(json.dumps({"total": a + b}))
"""


@pytest.fixture
def nbdir(tmp_path, monkeypatch):
    """A notebooks folder holding the tiny notebook `90_tiny` (preset `big`), as runs.NOTEBOOKS."""
    d = tmp_path / "notebooks"
    (d / "params").mkdir(parents=True)
    (d / "90_tiny.py").write_text(TINY)
    (d / "params" / "90_tiny.big.yaml").write_text("a: 100\n")
    from saelab import runs

    monkeypatch.setattr(runs, "NOTEBOOKS", d)
    return tmp_path


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium on PATH, installed with apt-get (as root) when missing; else skip."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium not on PATH and we cannot apt-get install it (not root)")
    try:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install "
                       "-y -qq chromium", shell=True,
                       check=True, timeout=180, capture_output=True)  # fmt: skip
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"could not install chromium with apt-get: {e}")
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("apt-get ran but no chromium on PATH")
    return found
