"""Shared fixtures: the storyworld model, its token datasets, a small tokenizer."""

from __future__ import annotations

import os

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
