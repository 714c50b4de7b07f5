"""Checksums of saved tensors: a damaged SAE or checkpoint is an error naming the file, not a
model that serves a flipped exponent (-0.0247 read back as -8.4e36, finite) as a weight."""

from __future__ import annotations

import hashlib

import torch

SHA_KEY = "saelab_sha256"  # the safetensors metadata field of a saved SAE's checksum


def tensors_sha256(tree) -> str:
    """sha256 over a nested dict / list / tuple of tensors and plain values: keys in sorted
    order, each tensor's shape, dtype and bytes, each other leaf's `repr`."""
    h = hashlib.sha256()
    _feed(h, tree)
    return h.hexdigest()


def _feed(h, node) -> None:
    if isinstance(node, torch.Tensor):
        t = node.detach().cpu().contiguous()
        h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(node, dict):
        h.update(b"{")
        for k in sorted(node, key=str):
            h.update(f"{k!r}:".encode())
            _feed(h, node[k])
        h.update(b"}")
    elif isinstance(node, list | tuple):
        h.update(b"[")
        for v in node:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(repr(node).encode())
