"""Shared fixtures for tests/test_storyworld.py and tests/test_data.py."""

from __future__ import annotations

import pytest

from saelab import basemodel, storyworld


@pytest.fixture(scope="session")
def small_tokenizer():
    """A 512-token byte-level BPE trained on 2,000 train stories (about half a second)."""
    return basemodel.train_tokenizer(storyworld.story_texts("train", 2000), 512)
