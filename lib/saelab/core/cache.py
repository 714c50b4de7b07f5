"""Activation caches: run the frozen model once, then train many local SAEs from disk.

A local-loss relu/topk SAE sees only its site's activation `x [B, n_ctx, d_in]` (Braun et al.
2024 §2.1 baseline), so a sweep of such SAEs can share one model pass over the data:

    cache = sl.cache_activations(lm, data, "resid_pre.3", "outputs/cache/rp3")
    for phi in (0.1, 0.3, 1.0):
        sae = sl.SAEConfig.create(architecture="relu", sparsity=phi)
        sl.train(lm, cache, sl.TrainConfig(sites=("resid_pre.3",), sae=sae), f"out/{phi}")

`train(lm, cache, cfg)` reads the rows in exactly the order `train(lm, data, cfg)` reads the
token rows (same seed -> same batches -> the same SAE, up to float rounding). The evaluation at the
end still runs the model (CE with the SAE spliced in) on the cache's own tokens, or on `eval_data`;
with `lm=None` it reports only what needs no model (`sl.evaluate(cache, sae)`): l0, alive,
dead_frac, mse, explained_var and l2_ratio on the first `eval_tokens` cached rows. e2e / e2e+ds
losses and gtopk SAEs need the model's output or dL/dx, which a cache does not hold: they are
refused.

On disk, a folder: `manifest.json` (model, site, n_ctx, d_in, n_rows, dtype, the sha256 of the
token rows, ...), `tokens.safetensors` (int32 `[n_rows, n_ctx]`) and shards
`acts-00000.safetensors` ... (`acts [rows, n_ctx, d_in]`). Disk size per token: `4 * d_in + 4`
bytes in float32 (storyworld, d_in 64: 260 B; GPT-2 small, d_in 768: ~3.1 kB, 3.1 GB per 1M
tokens), `2 * d_in + 4` in float16. Shards are read memory-mapped, so a cache need not fit in RAM.
The folder is written under a temporary name and renamed into place when complete, so a killed
write never looks like a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from saelab.core.data import TokenDataset
from saelab.core.files import naming_full_disk
from saelab.core.locks import swap_in, writer_lock
from saelab.core.models import check_rows_fit, model_fingerprint, model_info, parse_site
from saelab.core.passes import clean_pass, special_ids
from saelab.core.progress import Heartbeat, progress_bar

FORMAT = "saelab.activation_cache/1"
MANIFEST = "manifest.json"
TOKENS = "tokens.safetensors"
DTYPES = {
    "float32": (torch.float32, np.float32, "F32"),
    "float16": (torch.float16, np.float16, "F16"),
}
# The manifest fields that identify what a cache holds: equal fields mean the same activations.
IDENTITY = ("model", "model_fingerprint", "site", "n_ctx", "d_in", "n_rows", "dtype",
            "tokens_sha256")  # fmt: skip


def fingerprint(tokens: torch.Tensor) -> str:
    """sha256 of token rows `[n_rows, n_ctx]` (values and shape), pairing a cache with its data."""
    t = tokens.to(torch.int64).contiguous().cpu()
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def _model_name(lm) -> str:
    return getattr(lm.config, "_name_or_path", "") or lm.config.model_type


def _header(path: Path) -> tuple[int, dict]:
    """(offset of the data, header) of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path} is truncated (no safetensors header)")
        (n,) = struct.unpack("<Q", raw)
        head = f.read(n)
    if len(head) < n:
        raise ValueError(f"{path} is truncated (header cut short)")
    try:
        return 8 + n, json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: the safetensors header is damaged ({e}); delete the cache and "
                         "write it again with saelab.cache_activations") from e  # fmt: skip


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 8 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


VERIFY = ("full", "sizes")


def _memmap(path: Path, name: str, np_dtype, st_dtype: str, shape: tuple) -> np.memmap:
    """A read-only memory map of tensor `name` in a safetensors file, checked against `shape`."""
    offset, head = _header(path)
    meta = head.get(name)
    if meta is None or meta["dtype"] != st_dtype or tuple(meta["shape"]) != shape:
        raise ValueError(f"{path}: tensor {name!r} is {meta}, expected {st_dtype} {list(shape)}")
    begin, end = meta["data_offsets"]
    if path.stat().st_size < offset + end:
        raise ValueError(
            f"{path} is truncated ({path.stat().st_size} of {offset + end} bytes); "
            "delete the cache and write it again"
        )
    return np.memmap(path, dtype=np_dtype, mode="r", offset=offset + begin, shape=shape)


class ActivationCache:
    """Activations `[n_rows, n_ctx, d_in]` of one site, row i from token row i of its data."""

    def __init__(self, path: str | os.PathLike, verify: str = "full"):
        """Open and check a cache. `verify="full"` checks every shard's sha256 against the
        manifest (reads all bytes once); `"sizes"` only their sizes and headers (fast)."""
        if verify not in VERIFY:
            raise ValueError(f"verify={verify!r} is not one of {list(VERIFY)}")
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a complete activation cache (no {MANIFEST}); write it with "
                "saelab.cache_activations"
            )
        remedy = "delete the folder and write the cache again with saelab.cache_activations"
        try:
            self.manifest = m = json.loads(mpath.read_text())
            for key in ("format", "dtype", "n_rows", "n_ctx", "d_in", "shards", "tokens_sha256"):
                m[key]  # noqa: B018  (a KeyError names the missing field)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{mpath} is damaged ({type(e).__name__}: {e}); {remedy}") from e
        if m.get("format") != FORMAT:
            raise ValueError(f"{mpath}: format {m.get('format')!r}, expected {FORMAT!r}")
        torch_dtype, np_dtype, st = DTYPES[m["dtype"]]
        self.dtype = torch_dtype
        tok = _memmap(self.path / TOKENS, "tokens", np.int32, "I32", (m["n_rows"], m["n_ctx"]))
        self._tokens = torch.from_numpy(np.array(tok, dtype=np.int64))
        if fingerprint(self._tokens) != m["tokens_sha256"]:
            raise ValueError(f"{self.path / TOKENS} does not match the manifest's fingerprint")
        self._shards, self._starts = [], []
        start = 0
        for sh in m["shards"]:
            shape = (sh["rows"], m["n_ctx"], m["d_in"])
            f = self.path / sh["file"]
            if not f.is_file():
                raise FileNotFoundError(f"{f} is missing from the activation cache; {remedy}")
            size = f.stat().st_size
            if "bytes" in sh and size != sh["bytes"]:
                what = "is truncated" if size < sh["bytes"] else "is longer than written"
                raise ValueError(f"{f} {what} ({size} of {sh['bytes']} bytes); {remedy}")
            if verify == "full" and "sha256" in sh and file_sha256(f) != sh["sha256"]:
                raise ValueError(f"{f} does not match its sha256 in the manifest (damaged); "
                                 f"{remedy}")  # fmt: skip
            self._shards.append(_memmap(self.path / sh["file"], "acts", np_dtype, st, shape))
            self._starts.append(start)
            start += sh["rows"]
        if start != m["n_rows"]:
            raise ValueError(f"{mpath}: shards hold {start} rows, manifest says {m['n_rows']}")

    # the TokenDataset surface that training and `_index_batches` use
    def __len__(self) -> int:
        return self.manifest["n_rows"]

    @property
    def n_ctx(self) -> int:
        return self.manifest["n_ctx"]

    @property
    def d_in(self) -> int:
        return self.manifest["d_in"]

    @property
    def site(self) -> str:
        return self.manifest["site"]

    @property
    def source(self) -> str:
        return f"activation cache {self.path}"

    @property
    def n_tokens(self) -> int:
        return len(self) * self.n_ctx

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Activations of rows `idx [n]` (any order) -> `[n, n_ctx, d_in]` in the cache dtype."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        out = torch.empty(len(idx), self.n_ctx, self.d_in, dtype=self.dtype)
        starts = torch.tensor(self._starts)
        which = torch.searchsorted(starts, idx, right=True) - 1
        for k in which.unique().tolist():
            sel = (which == k).nonzero().flatten()
            local = (idx[sel] - self._starts[k]).numpy()
            out[sel] = torch.from_numpy(np.asarray(self._shards[k][local]))
        return out

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = True
    ):
        """Yield activation batches `[batch_size, n_ctx, d_in]` in TokenDataset.batches' order."""
        # TokenDataset's own index generator, so row order (and its errors) are the same as for
        # the token rows these activations came from.
        for idx in TokenDataset._index_batches(self, batch_size, shuffle, seed, drop_last):
            yield self.rows(idx)

    def token_dataset(self) -> TokenDataset:
        """The token rows `[n_rows, n_ctx]` the activations were computed from."""
        m = self.manifest
        return TokenDataset(self._tokens, None, m.get("source", ""), m.get("split", ""),
                            bool(m.get("prepend_bos", False)))  # fmt: skip

    @property
    def prepend_bos(self) -> bool:
        """Whether every cached row starts with a BOS token (its data's `prepend_bos`)."""
        return bool(self.manifest.get("prepend_bos", False))

    def check_data(self, data: TokenDataset) -> None:
        """Raise unless `data` holds exactly the token rows this cache was written from."""
        got = fingerprint(data.tokens)
        if got != self.manifest["tokens_sha256"]:
            raise ValueError(
                f"the activation cache {self.path} was written from other token data "
                f"(fingerprint {self.manifest['tokens_sha256'][:12]}, source "
                f"{self.manifest.get('source')!r}); this data's is {got[:12]} "
                f"({len(data)} rows of {data.n_ctx})"
            )

    def check_training(self, cfg, lm=None) -> None:
        """Raise unless a `TrainConfig` (and model, if given) can train from this cache."""
        if cfg.finetune is not None and cfg.finetune.loss.needs_model:
            raise ValueError(
                f"a fine-tune with loss={cfg.finetune.loss.name!r} cannot train from an "
                "activation cache: it splices the SAE into the model for the run's last part. "
                "Train on the token dataset (the whole run shares the model's passes)"
            )
        if cfg.loss.needs_model:
            raise ValueError(
                f"loss={cfg.loss.name!r} cannot train from an activation cache: e2e losses need "
                "the model's output with the SAE spliced in. Use loss='local', or train on the "
                "token dataset"
            )
        if cfg.sae.needs_grad:
            raise ValueError(
                f"sae={cfg.sae.architecture!r} cannot train from an activation cache: as "
                "configured it needs dL/dx, a backward pass through the model. Use an "
                "architecture without gradient-informed selection, or train on the token dataset"
            )
        if tuple(cfg.sites) != (self.site,):
            raise ValueError(
                f"cfg.sites={list(cfg.sites)} but the activation cache {self.path} holds "
                f"{self.site!r} only"
            )
        if lm is not None:
            name, d = _model_name(lm), model_info(lm)["d_model"]
            if name != self.manifest["model"] or d != self.d_in:
                raise ValueError(
                    f"the activation cache {self.path} was written from model "
                    f"{self.manifest['model']!r} (d_in={self.d_in}); the model given is "
                    f"{name!r} (d_model={d})"
                )
            then, now = self.manifest.get("model_fingerprint"), model_fingerprint(lm)
            if then is not None and then != now:  # the same name, other weights
                raise ValueError(
                    f"the activation cache {self.path} was written from other weights of "
                    f"{name!r} (fingerprint {then}, the model given: {now}); cache its "
                    "activations again (overwrite=True)"
                )


def load_cache(
    path: str | os.PathLike, data: TokenDataset | None = None, verify: str = "full"
) -> ActivationCache:
    """Open the cache at `path`; with `data`, check it was written from those token rows.

    `verify="full"` (default) checks each shard's sha256; `"sizes"` only sizes and headers.
    """
    cache = ActivationCache(path, verify)
    if data is not None:
        cache.check_data(data)
    return cache


def cache_activations(
    lm,
    data: TokenDataset,
    site: str,
    path: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    batch_size: int = 32,
    shard_mb: float = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> ActivationCache:
    """Write `site`'s activations `[n_rows, n_ctx, d_in]` for every row of `data` to `path`.

    Rows keep `data`'s order. If `path` already holds the same cache (model, site, dtype and token
    fingerprint) it is returned without running the model; a different one is an error unless
    `overwrite=True`. Size: `(4 * d_in + 4)` bytes per token in float32, `(2 * d_in + 4)` in
    float16 (module docstring).
    """
    dtype_name = str(dtype).removeprefix("torch.")
    if dtype_name not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {list(DTYPES)}")
    torch_dtype = DTYPES[dtype_name][0]
    info = model_info(lm)
    site = parse_site(site, info["n_layers"])
    check_rows_fit(data.n_ctx, info["n_ctx"])
    if len(data) == 0:
        raise ValueError(f"dataset {data.source!r} has no rows")
    d_in, n_rows = info["d_model"], len(data)
    manifest = dict(
        format=FORMAT, model=_model_name(lm), model_fingerprint=model_fingerprint(lm),
        model_type=info["model_type"],
        n_layers=info["n_layers"], model_n_ctx=info["n_ctx"], site=str(site),
        hook_name=site.hook_name, n_ctx=data.n_ctx, d_in=d_in, n_rows=n_rows, dtype=dtype_name,
        tokens_sha256=fingerprint(data.tokens), source=data.source, split=data.split,
        prepend_bos=data.prepend_bos,
        special_ids=list(special_ids(lm.tokenizer)),  # what training from it leaves out
        bytes_per_token=d_in * torch_dtype.itemsize + 4,
    )  # fmt: skip
    path = Path(path)
    with writer_lock(path, "cache"):  # one writer per cache path (locks.py)
        return _write_cache(lm, data, site, path, manifest, overwrite, torch_dtype, batch_size,
                            shard_mb, progress)  # fmt: skip


def _write_cache(lm, data, site, path: Path, manifest: dict, overwrite: bool, torch_dtype,
                 batch_size: int, shard_mb: float, progress: bool) -> ActivationCache:  # fmt: skip
    """`cache_activations` under its lock: reuse or refuse what is at `path`, else write the
    cache under a temporary name and rename it into place."""
    for left in path.parent.glob(f".{path.name}.tmp-*"):  # a killed write's: nobody else's,
        shutil.rmtree(left, ignore_errors=True)  # since this process holds the lock
    if path.exists():
        if not (path / MANIFEST).is_file():
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()  # an empty folder holds nothing to lose
            else:
                raise FileExistsError(f"{path} exists and is not an activation cache; choose "
                                      "another path")  # fmt: skip
        elif not overwrite:  # with overwrite, the old cache is replaced unread: damaged or not
            try:
                old = ActivationCache(path).manifest
            except Exception as e:
                raise ValueError(f"{path} holds a damaged activation cache ({e}); pass "
                                 "overwrite=True to replace it") from e  # fmt: skip
            diff = {k: (old.get(k), manifest[k]) for k in IDENTITY if old.get(k) != manifest[k]}
            if not diff:
                return ActivationCache(path)
            raise ValueError(
                f"{path} holds a different activation cache (cached, now): {diff}; choose "
                "another path or pass overwrite=True"
            )
    d_in = manifest["d_in"]
    rows_per_shard = max(1, int(shard_mb * 2**20) // (data.n_ctx * d_in * torch_dtype.itemsize))
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with naming_full_disk(path, "the partial cache"):
            manifest["shards"] = _write_shards(lm, data, site, tmp, torch_dtype, batch_size,
                                               rows_per_shard, progress)  # fmt: skip
            save_file({"tokens": data.tokens.to(torch.int32).contiguous()}, tmp / TOKENS)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if path.exists() and not overwrite:  # made meanwhile by something that took no lock
                raise FileExistsError(f"{path} appeared while this cache was written; the new one "
                                      "is not swapped in (overwrite=True replaces it)")  # fmt: skip
            swap_in(tmp, path)  # overwrite: the complete new cache replaces the old one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ActivationCache(path)


def _write_shards(lm, data, site, folder: Path, dtype, batch_size, rows_per_shard, progress):
    """Run the model over `data` in order; write `acts [rows, n_ctx, d_in]` shards to `folder`."""
    shards, pending, n_pending = [], [], 0

    def flush(final: bool):
        nonlocal pending, n_pending
        while n_pending >= rows_per_shard or (final and n_pending):
            block = torch.cat(pending)
            part, rest = block[:rows_per_shard], block[rows_per_shard:]
            name = f"acts-{len(shards):05d}.safetensors"
            save_file({"acts": part.contiguous()}, folder / name)
            f = folder / name
            shards.append({"file": name, "rows": part.shape[0], "bytes": f.stat().st_size,
                           "sha256": file_sha256(f)})  # fmt: skip
            pending, n_pending = ([rest] if len(rest) else []), len(rest)

    bar = progress_bar(progress, total=len(data), desc=f"cache {site}", unit="row")
    beat, done = (
        Heartbeat(f"cache {site}", len(data), "rows", data.n_ctx, enabled=progress and bar.disable),
        0,
    )
    for tokens in data.batches(batch_size, drop_last=False):
        beat.tick(done)
        done += tokens.shape[0]
        raw = clean_pass(lm, tokens, [site]).acts[site]
        x = raw.to("cpu", dtype)
        if not torch.isfinite(x).all():
            raise ValueError(f"activations at {site} overflow {dtype} (max |x| "
                             f"{float(raw.abs().max()):.3g}); use dtype='float32'")  # fmt: skip
        pending.append(x)
        n_pending += x.shape[0]
        flush(final=False)
        bar.update(x.shape[0])
    flush(final=True)
    bar.close()
    return shards
