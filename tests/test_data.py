"""saelab.core.data: storyworld and local-file token datasets, the on-disk cache, and batching.

Nothing touches the real caches: `SAELAB_CACHE` and the `datasets` cache point into tmp_path.
"""

from __future__ import annotations

import json

import datasets.config
import huggingface_hub.constants
import numpy as np
import pandas as pd
import pytest
import torch

from saelab.core.data import TokenDataset, token_dataset
from saelab.storyworld import corpus as sw

N_LAB = len(sw.LABELS)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path / "saelab-cache"))
    # `datasets` reads its cache location at import time, so patch the resolved value too.
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


@pytest.fixture
def tok(small_tokenizer):
    return small_tokenizer


def docs_of(ds: TokenDataset, bos: int) -> list[list[int]]:
    """The token runs between BOS separators; the first and last may be cut by the rows.

    Rows with a BOS of their own (`prepend_bos`) hold the stream from position 1 on.
    """
    flat = stream(ds).tolist()
    cuts = [i for i, t in enumerate(flat) if t == bos]
    return [flat[a + 1 : b] for a, b in zip(cuts, cuts[1:] + [len(flat)], strict=True)]


def stream(ds: TokenDataset) -> torch.Tensor:
    """The document stream the rows were cut from (each row's own BOS dropped)."""
    return (ds.tokens[:, 1:] if ds.prepend_bos else ds.tokens).flatten()


def cached_files(tmp_path) -> list:
    return sorted((tmp_path / "saelab-cache" / "datasets").glob("*.pt"))


# ----- storyworld ----------------------------------------------------------------------------


def test_storyworld_tokens(tok, tmp_path):
    n_ctx, n_tokens = 64, 6000
    # the stream itself (rows with a BOS each: tests/test_real_conventions.py)
    ds = token_dataset("storyworld", tok, n_ctx, n_tokens=n_tokens, prepend_bos=False)
    assert ds.tokens.ndim == 2 and ds.tokens.shape[1] == n_ctx == ds.n_ctx
    assert ds.tokens.dtype == torch.int64 and ds.labels is None
    assert len(ds) == ds.tokens.shape[0] and ds.n_tokens == ds.tokens.numel()
    # At least n_tokens were generated (minus the dropped ragged tail), and at most one story more.
    assert n_tokens - n_ctx < ds.n_tokens <= n_tokens + 400
    bos = tok.bos_token_id
    assert bos is not None and ds.tokens[0, 0] == bos
    # Stories appear whole and in order, each right after a BOS; the last one may be cut.
    runs = docs_of(ds, bos)
    texts = sw.story_texts("train", len(runs))
    for i, (run, text) in enumerate(zip(runs, texts, strict=True)):
        expected = tok(text, add_special_tokens=False)["input_ids"]
        if i < len(runs) - 1:
            assert run == expected, i
        else:
            assert run == expected[: len(run)]
    assert len(cached_files(tmp_path)) == 1


def test_storyworld_labels(tok):
    n_ctx = 48
    ds = token_dataset("storyworld", tok, n_ctx, split="validation", n_tokens=4000, labels=True)
    assert ds.labels is not None and ds.source == "storyworld" and ds.split == "validation"
    assert ds.labels.shape == (len(ds), n_ctx, N_LAB)
    bos = ds.tokens == tok.bos_token_id
    assert bos.sum() > 10
    assert (ds.labels[bos] == 0).all()
    assert (ds.labels[~bos].abs().sum(-1) > 0).all()  # story_ending is set on every story token
    # Labels line up with the tokens: the first story's rows are token_labels of that story.
    story = sw.stories("validation", 1)[0]
    enc = tok(story.text, add_special_tokens=False, return_offsets_mapping=True)
    n = len(enc["input_ids"])
    assert n + 1 < n_ctx * len(ds)
    assert ds.prepend_bos and (ds.labels[:, 0] == 0).all()
    flat_tok, flat_lab = stream(ds), ds.labels[:, 1:].flatten(0, 1)
    assert flat_tok[1 : n + 1].tolist() == enc["input_ids"] and flat_tok[n + 1] == tok.bos_token_id
    expected = sw.token_labels(story, enc["offset_mapping"])
    np.testing.assert_array_equal(flat_lab[1 : n + 1].numpy(), expected)


def test_labelled_batches_aligned(tok):
    ds = token_dataset("storyworld", tok, 32, n_tokens=3000, labels=True)
    rows = {tuple(t.tolist()): lab for t, lab in zip(ds.tokens, ds.labels, strict=True)}
    assert len(rows) == len(ds)  # rows are distinct, so a token row identifies its labels
    n_seen = 0
    for x, y in ds.labelled_batches(8, shuffle=True, seed=3):
        assert x.shape == (8, 32) and y.shape == (8, 32, N_LAB)
        for t, lab in zip(x, y, strict=True):
            assert torch.equal(rows[tuple(t.tolist())], lab)
        n_seen += len(x)
    assert n_seen == len(ds) - len(ds) % 8
    plain = list(ds.labelled_batches(8))
    assert torch.equal(torch.cat([x for x, _ in plain]), ds.tokens[:n_seen])
    assert torch.equal(torch.cat([y for _, y in plain]), ds.labels[:n_seen])


def test_labels_need_storyworld(tok, tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello world\n" * 50)
    with pytest.raises(ValueError, match="storyworld"):
        token_dataset(str(f), tok, 8, labels=True)
    ds = token_dataset(str(f), tok, 8)
    with pytest.raises(ValueError, match="no labels"):
        next(ds.labelled_batches(2))


def test_storyworld_needs_n_tokens(tok):
    with pytest.raises(ValueError, match="n_tokens"):
        token_dataset("storyworld", tok, 16, n_tokens=None)


# ----- cache ---------------------------------------------------------------------------------


def test_cache_hit_and_key(tok, tmp_path, monkeypatch):
    kw = dict(n_tokens=2500, labels=True)
    first = token_dataset("storyworld", tok, 32, **kw)
    assert len(cached_files(tmp_path)) == 1

    def boom(*a, **k):
        raise AssertionError("regenerated stories despite a cache entry")

    with monkeypatch.context() as m:
        m.setattr(sw, "story_texts", boom)
        m.setattr(sw, "stories", boom)
        second = token_dataset("storyworld", tok, 32, **kw)
        assert torch.equal(first.tokens, second.tokens)
        assert torch.equal(first.labels, second.labels)
        # Another n_ctx is another entry: it must generate (and so hit `boom`).
        with pytest.raises(AssertionError, match="regenerated"):
            token_dataset("storyworld", tok, 16, **kw)
        # cache=False never reads the entry either.
        with pytest.raises(AssertionError, match="regenerated"):
            token_dataset("storyworld", tok, 32, cache=False, **kw)
    third = token_dataset("storyworld", tok, 16, **kw)
    assert third.n_ctx == 16
    assert len(cached_files(tmp_path)) == 2


# ----- local files ---------------------------------------------------------------------------

DOCS = [f"The {w} cat sat on the mat number {i}." for i, w in enumerate(["red", "big"] * 30)]


def decoded_docs(ds, tok) -> list[str]:
    runs = docs_of(ds, tok.bos_token_id)
    return [tok.decode(r) for r in runs]


def check_docs(ds, tok, docs):
    got = decoded_docs(ds, tok)
    assert got[:-1] == docs[: len(got) - 1]
    assert docs[len(got) - 1].startswith(got[-1])  # the last doc may be cut by the last row
    assert len(got) >= len(docs) - 2


def test_txt_file(tok, tmp_path):
    f = tmp_path / "docs.txt"
    f.write_text("\n".join(DOCS) + "\n")
    ds = token_dataset(str(f), tok, 16, n_tokens=None)
    assert ds.tokens[0, 0] == tok.bos_token_id
    check_docs(ds, tok, DOCS)


def test_jsonl_file(tok, tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(DOCS)))
    check_docs(token_dataset(str(f), tok, 16, n_tokens=None), tok, DOCS)


def test_parquet_file_and_text_column(tok, tmp_path):
    f = tmp_path / "docs.parquet"
    pd.DataFrame({"body": DOCS, "n": range(len(DOCS))}).to_parquet(f)
    check_docs(token_dataset(str(f), tok, 16, n_tokens=None, text_column="body"), tok, DOCS)
    with pytest.raises(ValueError, match="text_column") as exc:
        token_dataset(str(f), tok, 16, n_tokens=None)
    assert "body" in str(exc.value) and "'text'" in str(exc.value)


def test_directory_of_txt(tok, tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("\n".join(DOCS[:30]))
    (d / "sub" / "b.txt").write_text("\n".join(DOCS[30:]))
    check_docs(token_dataset(str(d), tok, 16, n_tokens=None), tok, DOCS)


def test_n_tokens_caps_local_text(tok, tmp_path):
    f = tmp_path / "docs.txt"
    f.write_text("\n".join(DOCS))
    ds = token_dataset(str(f), tok, 10, n_tokens=100)
    assert stream(ds).numel() == 99  # 11 rows of BOS + 9 of the 100-token stream


def test_mixed_directory_raises(tok, tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "a.txt").write_text("hello\n")
    (d / "b.json").write_text(json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(ValueError, match="one supported type") as exc:
        token_dataset(str(d), tok, 8)
    assert ".json" in str(exc.value) and ".txt" in str(exc.value)


def test_directory_without_supported_files(tok, tmp_path):
    d = tmp_path / "nothing"
    d.mkdir()
    (d / "notes.md").write_text("hello")
    with pytest.raises(ValueError, match="no .txt"):
        token_dataset(str(d), tok, 8)


def test_blank_file_raises(tok, tmp_path):
    f = tmp_path / "blank.txt"
    f.write_text("\n\n\n")
    with pytest.raises(ValueError, match="no text"):
        token_dataset(str(f), tok, 8)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_empty_file_raises_value_error(tok, tmp_path, suffix):
    f = tmp_path / f"empty{suffix}"
    f.write_text("")
    with pytest.raises(ValueError, match="empty|no text"):
        token_dataset(str(f), tok, 8)


def test_too_little_text_raises(tok, tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("hi\n")
    with pytest.raises(ValueError, match="n_ctx=64"):
        token_dataset(str(f), tok, 64)


def test_unresolvable_hub_name_raises(tok, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    name = "saelab-test-nobody/no-such-dataset"
    with pytest.raises(ValueError, match="could not load dataset") as exc:
        token_dataset(name, tok, 8, split="validation")
    assert name in str(exc.value) and "validation" in str(exc.value)


def test_n_ctx_too_small(tok):
    for n_ctx in (0, 1):
        with pytest.raises(ValueError, match="n_ctx"):
            token_dataset("storyworld", tok, n_ctx, n_tokens=100)


def test_tokenizer_without_bos_or_eos_raises(tok, tmp_path):
    class NoSpecials:  # a tokenizer with no special token to separate documents
        bos_token_id = eos_token_id = None

        def __call__(self, *a, **k):
            return tok(*a, **k)

    f = tmp_path / "a.txt"
    f.write_text("hello world\n" * 20)
    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):
        token_dataset(str(f), NoSpecials(), 8)


# ----- batches -------------------------------------------------------------------------------


def _rows(n: int, n_ctx: int = 4) -> TokenDataset:
    return TokenDataset(torch.arange(n * n_ctx).reshape(n, n_ctx), source="rows")


def _order(batches) -> list[int]:
    return [int(b[0]) // 4 for batch in batches for b in batch]


def test_batches_shuffle_is_seeded():
    ds = _rows(37)
    a = _order(ds.batches(5, shuffle=True, seed=1, drop_last=False))
    b = _order(ds.batches(5, shuffle=True, seed=1, drop_last=False))
    c = _order(ds.batches(5, shuffle=True, seed=2, drop_last=False))
    assert a == b and a != c
    assert sorted(a) == sorted(c) == list(range(37))  # every row exactly once per pass
    assert a != list(range(37))
    assert _order(ds.batches(5, drop_last=False)) == list(range(37))


def test_batches_shapes_and_drop_last():
    ds = _rows(37)
    full = list(ds.batches(5))
    assert len(full) == 7 and all(b.shape == (5, 4) for b in full)
    ragged = list(ds.batches(5, drop_last=False))
    assert len(ragged) == 8 and ragged[-1].shape == (2, 4)
    assert torch.equal(torch.cat(ragged), ds.tokens)


def test_batches_errors():
    ds = _rows(3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(ds.batches(4))
    assert len(list(ds.batches(4, drop_last=False))) == 1  # without drop_last it is one batch
    for bs in (0, -1):
        with pytest.raises(ValueError, match="batch_size"):
            next(ds.batches(bs))
