"""Token datasets: storyworld, a Hugging Face dataset name, or local text/json/parquet files.

Documents are tokenized, joined as `[bos] doc [bos] doc ...` (GPT-2 style: one token both opens and
closes documents), cut into rows of `n_ctx` tokens (the ragged tail is dropped), and cached on disk
keyed by source, split, size, tokenizer and `n_ctx`. For storyworld each row can also carry the
per-token ground-truth labels of `saelab.storyworld` (separator tokens get all-zero labels).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saelab.core.files import write_atomic

_LOCAL_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_STORY_BLOCK = 2000  # stories generated per block while filling a token budget


def cache_dir() -> Path:
    """Where tokenized datasets are cached: `$SAELAB_CACHE` or `~/.cache/saelab`."""
    return Path(os.environ.get("SAELAB_CACHE", Path.home() / ".cache" / "saelab"))


@dataclass
class TokenDataset:
    """Rows of token ids `tokens [n_seq, n_ctx]` and, for storyworld, `labels [n_seq, n_ctx, L]`.

    `prepend_bos`: every row starts with the tokenizer's BOS token (position 0), which training
    and evaluation then leave out of the SAE's losses and metrics by default (ARCHITECTURE.md §6).
    """

    tokens: torch.Tensor
    labels: torch.Tensor | None = None
    source: str = ""
    split: str = ""
    prepend_bos: bool = False

    def describe(self) -> dict:
        """What a run records about its data: source, split, rows, n_ctx, prepend_bos."""
        return dict(source=self.source, split=self.split, rows=len(self), n_ctx=self.n_ctx,
                    prepend_bos=self.prepend_bos)  # fmt: skip

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_ctx(self) -> int:
        return self.tokens.shape[1]

    @property
    def n_tokens(self) -> int:
        return self.tokens.numel()

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = True
    ) -> Iterator[torch.Tensor]:
        """Yield `[batch_size, n_ctx]` token batches (one pass; seeded order if `shuffle`)."""
        for idx in self._index_batches(batch_size, shuffle, seed, drop_last):
            yield self.tokens[idx]

    def labelled_batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield `(tokens [B, n_ctx], labels [B, n_ctx, L])` pairs."""
        if self.labels is None:
            raise ValueError(f"dataset {self.source!r} has no labels (only storyworld has them)")
        for idx in self._index_batches(batch_size, shuffle, seed, drop_last):
            yield self.tokens[idx], self.labels[idx]

    def _index_batches(self, batch_size: int, shuffle: bool, seed: int, drop_last: bool):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and len(self) < batch_size:
            raise ValueError(
                f"dataset {self.source!r} has {len(self)} rows of {self.n_ctx} tokens, "
                f"fewer than one batch of {batch_size}; ask for more tokens or a smaller batch"
            )
        n = len(self)
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            if shuffle
            else torch.arange(n)
        )
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            yield order[i : i + batch_size]


def token_dataset(
    source: str,
    tokenizer,
    n_ctx: int,
    split: str = "train",
    n_tokens: int | None = 1_000_000,
    labels: bool = False,
    text_column: str = "text",
    streaming: bool = False,
    cache: bool = True,
    prepend_bos: bool | None = None,
    **load_kwargs,
) -> TokenDataset:
    """Tokenize `source` into rows of `n_ctx` tokens (at most about `n_tokens`; None = all).

    source: "storyworld"; a local file or directory of .txt/.json/.jsonl/.parquet files; or any
    Hugging Face dataset name (extra `load_kwargs` go to `datasets.load_dataset`).

    Documents are joined into one stream, each preceded by the BOS token (or EOS when there is
    none), and cut into rows. `prepend_bos` (SAELens' convention): every row is BOS followed by
    `n_ctx - 1` tokens of the stream, so no row starts mid-document without one; None (default)
    means "when the tokenizer has a BOS token". Part of the cache key.
    """
    if not _is_count(n_ctx) or n_ctx < 2:
        raise ValueError(f"n_ctx={n_ctx!r} must be an int >= 2")
    if n_tokens is not None and (not _is_count(n_tokens) or n_tokens < 1):
        raise ValueError(f"n_tokens={n_tokens!r} must be a positive int, or None for all")
    if labels and source != "storyworld":
        raise ValueError(f"labels=True needs source='storyworld', got {source!r}")
    if prepend_bos is None:
        prepend_bos = tokenizer.bos_token_id is not None
    elif not isinstance(prepend_bos, bool):
        raise ValueError(f"prepend_bos={prepend_bos!r} must be True, False or None")
    elif prepend_bos and tokenizer.bos_token_id is None:
        raise ValueError(
            "prepend_bos=True but the tokenizer has no BOS token; use prepend_bos=False"
        )
    key = _cache_key(source, tokenizer, n_ctx, split, n_tokens, labels, text_column, load_kwargs,
                     prepend_bos)  # fmt: skip
    path = cache_dir() / "datasets" / f"{key}.pt"
    if cache and path.exists():
        blob = _read_cached(path, len(tokenizer))
        if blob is not None:
            return TokenDataset(blob["tokens"], blob.get("labels"), source, split, prepend_bos)
    if source == "storyworld":
        ids, labs = _storyworld_ids(tokenizer, split, n_tokens, labels)
    else:
        docs = _hf_texts(source, split, text_column, streaming, load_kwargs)
        ids, labs = _tokenize_docs(docs, tokenizer, n_tokens, source), None
    bos_row = tokenizer.bos_token_id if prepend_bos else None
    ds = _chunk(ids, labs, n_ctx, source, split, bos_row)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"tokens": ds.tokens} | ({"labels": ds.labels} if ds.labels is not None else {})
        blob["sha256"] = _checksum(blob)
        write_atomic(path, lambda tmp: torch.save(blob, tmp))  # a kill leaves no half entry
    return ds


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checksum(blob: dict) -> str:
    """sha256 over the cached tensors' bytes, shapes and dtypes."""
    h = hashlib.sha256()
    for name in ("tokens", "labels"):
        if blob.get(name) is not None:
            t = blob[name].contiguous()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def _read_cached(path: Path, vocab_size: int) -> dict | None:
    """A cached token blob, or None (with a one-line warning) if it is damaged: then rebuilt."""

    try:
        blob = torch.load(path, weights_only=True)
        problem = None
        if not isinstance(blob, dict) or "tokens" not in blob:
            problem = "not a token cache"
        elif blob.get("sha256") != _checksum(blob):
            problem = "checksum mismatch" if "sha256" in blob else "no checksum (old format)"
        elif blob["tokens"].numel() and not (
            0 <= int(blob["tokens"].min()) and int(blob["tokens"].max()) < vocab_size
        ):
            problem = f"token ids outside the vocabulary [0, {vocab_size})"
    except Exception as e:  # truncated or corrupt: torch raises by damage type
        problem = f"unreadable ({type(e).__name__})"
    if problem is None:
        return blob
    warnings.warn(f"token cache {path}: {problem}; rebuilding it", stacklevel=3)
    return None


def _file_stamp(path: Path) -> list:
    """What identifies a local data file's content: name, size, mtime and a content hash."""
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    out = []
    for f in files:
        h = hashlib.blake2b(digest_size=16)
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
        st = f.stat()
        out.append([str(f.relative_to(path)) if path.is_dir() else f.name, st.st_size,
                    st.st_mtime_ns, h.hexdigest()])  # fmt: skip
    return out


def _cache_key(source, tokenizer, n_ctx, split, n_tokens, labels, text_column, load_kwargs,
               prepend_bos: bool = False) -> str:  # fmt: skip
    tok = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else ""
    local = Path(source).exists()
    src = str(Path(source).resolve()) if local else source
    meta = [src, split, n_ctx, n_tokens, labels, text_column, sorted(map(str, load_kwargs.items()))]
    if local:  # an edited file is new data: its stamp is part of the key
        meta.append(_file_stamp(Path(source)))
    if prepend_bos:  # keys of caches written before the option existed stay valid
        meta.append("prepend_bos")
    h = hashlib.sha256((json.dumps(meta) + tok).encode()).hexdigest()[:16]
    return f"{Path(source).name or 'data'}-{split}-{h}"


def _bos(tokenizer) -> int:
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise ValueError("tokenizer has neither a BOS nor an EOS token to separate documents")
    return bos


def _storyworld_ids(tokenizer, split: str, n_tokens: int | None, labels: bool):
    """Generate storyworld stories until about `n_tokens` tokens; optionally aligned labels."""
    from saelab.storyworld import corpus as sw  # resolving the source name "storyworld"

    if n_tokens is None:
        raise ValueError("storyworld is an endless stream: give n_tokens")
    bos, n_lab = _bos(tokenizer), len(sw.LABELS)
    ids: list[np.ndarray] = []
    labs: list[np.ndarray] = []
    total, start = 0, 0
    while total < n_tokens:
        if labels:
            stories = sw.stories(split, _STORY_BLOCK, start)
            texts = [s.text for s in stories]
        else:
            texts = sw.story_texts(split, _STORY_BLOCK, start)
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=labels)
        for j, seq in enumerate(enc["input_ids"]):
            ids.append(np.asarray([bos, *seq], dtype=np.int64))
            if labels:
                lab = sw.token_labels(stories[j], enc["offset_mapping"][j])
                labs.append(np.concatenate([np.zeros((1, n_lab), np.int16), lab]))
            total += len(seq) + 1
            if total >= n_tokens:
                break
        start += _STORY_BLOCK
    return np.concatenate(ids), (np.concatenate(labs) if labels else None)


def _hf_texts(source: str, split: str, text_column: str, streaming: bool, load_kwargs):
    """Iterate the text column of a local file/directory or a hub dataset."""
    import datasets  # ~1 s to import, and only files and hub datasets need it

    p = Path(source)
    if p.exists():
        files = (
            sorted(f for f in p.rglob("*") if f.suffix in _LOCAL_BUILDERS) if p.is_dir() else [p]
        )
        if p.is_dir():
            other = sorted(str(f.relative_to(p)) for f in p.rglob("*")
                           if f.is_file() and f.suffix not in _LOCAL_BUILDERS
                           and not f.name.startswith("."))  # fmt: skip
            if other:
                shown = ", ".join(other[:5]) + (
                    f", ... ({len(other)} in all)" if len(other) > 5 else ""
                )
                warnings.warn(f"{source}: skipping files of unsupported types: {shown} (supported: "
                              f"{sorted(_LOCAL_BUILDERS)})", stacklevel=3)  # fmt: skip
        if not files:
            raise ValueError(
                f"no .txt/.json/.jsonl/.parquet files in {source!r}; supported: "
                f"{sorted(_LOCAL_BUILDERS)}"
            )
        files = [f for f in files if f.stat().st_size > 0]
        if not files:
            raise ValueError(f"dataset {source!r} is empty (every file has 0 bytes)")
        builders = {_LOCAL_BUILDERS.get(f.suffix) for f in files}
        if None in builders or len(builders) > 1:
            raise ValueError(
                f"{source!r}: files must share one supported type {sorted(_LOCAL_BUILDERS)}; "
                f"found suffixes {sorted({f.suffix for f in files})}"
            )
        builder = builders.pop()
        try:
            ds = datasets.load_dataset(
                builder, data_files=[str(f) for f in files], split="train", streaming=streaming
            )
        except Exception as e:  # datasets names neither the file nor the line: we find them
            raise ValueError(
                f"could not read dataset {source!r}: {_first_bad(files, builder)}"
            ) from e
    else:
        try:
            ds = datasets.load_dataset(source, split=split, streaming=streaming, **load_kwargs)
        except Exception as e:  # offline hub misses and typos land here
            raise ValueError(
                f"could not load dataset {source!r} (split {split!r}): not a local path, and the "
                f"hub lookup failed: {type(e).__name__}: {e}"
            ) from e
    columns = ds.column_names
    if columns is not None and text_column not in columns:
        raise ValueError(
            f"dataset {source!r} has no text column {text_column!r}; columns found: {columns}. "
            "Pass text_column=..."
        )
    return (row[text_column] for row in ds)


def _first_bad(files: list[Path], builder: str) -> str:
    """Where a local dataset is broken: the first file (and line) that does not parse."""
    for f in files:
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            return f"{f}, line {line}: not UTF-8 text (byte {e.start}); is it a binary file?"
        if builder == "json" and f.suffix == ".jsonl":
            for i, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        json.loads(line)
                    except json.JSONDecodeError as e:
                        return f"{f}, line {i}: not valid JSON ({e.msg}): {line[:80]!r}"
        elif builder == "json":
            try:
                json.loads(text)
            except json.JSONDecodeError as e:
                if "Extra data" not in e.msg:  # JSON lines in a .json file are fine
                    return f"{f}, line {e.lineno}: not valid JSON ({e.msg})"
    return f"{', '.join(map(str, files[:3]))}: the dataset library could not read them"


def _tokenize_docs(docs, tokenizer, n_tokens: int | None, source: str) -> np.ndarray:
    """Every document's tokens after a BOS, concatenated, up to `n_tokens` (all: None).

    The work done is bounded by `n_tokens`, not by the documents' size: documents are
    tokenized in batches of 1000 (or `_BATCH_CHARS` characters) with the budget checked after
    each, and a document much longer than the budget is tokenized from a prefix that grows
    until it covers what is still needed (`_head_ids`), never whole.
    """
    bos, out, total, batch, chars = _bos(tokenizer), [], 0, [], 0

    def flush():
        nonlocal total, chars
        if not batch:
            return
        # verbose=False: rows are cut to n_ctx later, so transformers' "longer than the maximum
        # sequence length ... indexing errors" warning does not apply
        for seq in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
            out.append(np.asarray([bos, *seq], dtype=np.int64))
            total += len(seq) + 1
        batch.clear()
        chars = 0

    def full() -> bool:
        return n_tokens is not None and total >= n_tokens

    for doc in docs:
        if not doc:
            continue
        if n_tokens is not None and len(doc) > _CHARS_PER_TOKEN * n_tokens:
            flush()
            if full():
                break
            seq = _head_ids(doc, tokenizer, n_tokens - total)
            out.append(np.asarray([bos, *seq], dtype=np.int64))
            total += len(seq) + 1
        else:
            batch.append(doc)
            chars += len(doc)
            if len(batch) >= 1000 or chars >= _BATCH_CHARS:
                flush()
        if full():
            break
    flush()
    if not out:
        raise ValueError(f"dataset {source!r} contains no text")
    ids = np.concatenate(out)
    return ids[:n_tokens] if n_tokens is not None else ids


_CHARS_PER_TOKEN = 16  # well above English BPE's ~4: a document this long per token is cut
_BATCH_CHARS = 4 << 20


def _head_ids(doc: str, tokenizer, need: int) -> list[int]:
    """The first `need` tokens of `doc`, from a prefix cut at a space and doubled until it yields
    `need` tokens, or the whole document."""
    size = _CHARS_PER_TOKEN * need
    while True:
        if size >= len(doc):
            return tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
        # cut at a space, so no word is split (a cut word can tokenize differently throughout);
        # text without spaces gets a margin of tokens instead
        cut = doc.rfind(" ", 0, size)
        margin = 0 if cut > 0 else 16
        head = doc[: cut if cut > 0 else size]
        ids = tokenizer(head, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) >= need + margin:
            return ids[:need]
        size *= 2


def _chunk(ids: np.ndarray, labs, n_ctx: int, source: str, split: str,
           bos: int | None = None) -> TokenDataset:  # fmt: skip
    """Rows of `n_ctx` tokens; with `bos`, each row is `bos` + the next `n_ctx - 1` tokens."""
    body = n_ctx - (bos is not None)
    n_seq = len(ids) // body
    if n_seq == 0:
        raise ValueError(
            f"dataset {source!r} ({split}) has {len(ids)} tokens, fewer than one row of "
            f"n_ctx={n_ctx}; give more text or a smaller n_ctx"
        )
    tokens = torch.from_numpy(ids[: n_seq * body].reshape(n_seq, body).copy())
    labels = None
    if labs is not None:
        labels = torch.from_numpy(labs[: n_seq * body].reshape(n_seq, body, -1).copy())
    if bos is not None:  # the BOS position carries no token labels (all zeros, as separators)
        tokens = torch.cat([torch.full((n_seq, 1), bos, dtype=tokens.dtype), tokens], 1)
        if labels is not None:
            labels = torch.cat([torch.zeros_like(labels[:, :1]), labels], 1)
    return TokenDataset(tokens, labels, source, split, bos is not None)
