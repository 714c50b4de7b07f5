"""Data-parallel SAE training over processes (torch.distributed): ranks and their collectives.

The frozen model is replicated on every process ("rank"); each rank runs it on its share of the
global batch and the SAE gradients are averaged, so N ranks take the same optimiser steps as one
process with the same total batch (`TrainConfig.batch_size` is the global batch):

- rank r takes rows `[r * B/N, (r + 1) * B/N)` of every global batch of B rows (the union is the
  single-process batch; B must be divisible by N);
- every loss term is a mean over tokens, so the mean of the N equal-shard means is the global mean
  and averaging the gradients gives exactly the single-process gradient;
- a latent fired in a step if it fired on any rank (dead-latent counts stay global);
- one all-reduce per step carries the gradients, the logged scalars and the fired flags;
- only rank 0 writes files; evaluation runs identically on every rank (no rank waits on another
  past a collective timeout, and every rank returns the same `Run.log`).

Three things use the rank's shard rather than the global batch and so are close to, not equal
to, the single-process run: AuxK's normalisation by the residual's variance (topk/gtopk with
dead latents), gtopk's `grad_norm="rms"`, and, with special tokens left out
(`TrainConfig.exclude_tokens`), the SAE terms: each rank averages over its own kept tokens,
whose count differs between shards, so the ranks' mean of means is not quite the global mean
(`exclude_tokens=()` restores equality).

The collectives of one training step; `saelab.core.distributed` is the torchrun entry point that
uses them. Backend: nccl when CUDA is available (rank r uses cuda:LOCAL_RANK), gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes files."""
        return self.rank == 0


def world() -> World:
    """The current `World`: from the initialised default process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def shard(batch: torch.Tensor, w: World) -> torch.Tensor:
    """Rows `[rank * B/N, (rank + 1) * B/N)` of a global batch `[B, ...]` -> `[B/N, ...]`."""
    if w.size == 1:
        return batch
    n = batch.shape[0] // w.size
    return batch[w.rank * n : (w.rank + 1) * n]


def check_batch(batch_size: int, w: World) -> None:
    """Equal shards are what make the averaged gradient equal the single-process one."""
    if batch_size % w.size:
        raise ValueError(
            f"batch_size={batch_size} (the global batch) is not divisible by the {w.size} "
            f"processes; use a multiple of {w.size}"
        )


def sync_step(
    params: list[torch.Tensor], scalars: torch.Tensor, fired: list[torch.Tensor], w: World
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """All-reduce one step: average `params`' grads in place; return (mean `scalars [n]`, fired).

    `fired` are per-site bool masks `[d_sae]` of this rank's shard; the result is their OR over
    ranks. One flat float buffer keeps it to a single collective per step.
    """
    if w.size == 1:
        return scalars, fired
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    parts = [g.reshape(-1) for g in grads] + [scalars.reshape(-1).to(grads[0])]
    parts += [f.to(grads[0].dtype) for f in fired]
    buf = torch.cat(parts)
    dist.all_reduce(buf)  # SUM; flags stay exact integers in float32 for any realistic N
    i = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = (buf[i : i + n] / w.size).view_as(g)
        i += n
    mean = buf[i : i + scalars.numel()] / w.size
    i += scalars.numel()
    out = []
    for f in fired:
        out.append(buf[i : i + f.numel()] > 0)
        i += f.numel()
    return mean, out


def broadcast_params(params: list[torch.Tensor], w: World) -> None:
    """Copy rank 0's parameters to every rank (they start equal anyway: the init is seeded)."""
    if w.size > 1:
        for p in params:
            dist.broadcast(p.data, src=0)


def check_same_step(step: int, device: torch.device, w: World) -> None:
    """Every rank must resume from the same checkpoint step (out_dir on a shared filesystem)."""
    if w.size == 1:
        return
    t = torch.tensor([step, -step], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != -int(t[1]):
        raise RuntimeError(
            f"ranks resume from different steps ({-int(t[1])}..{int(t[0])}); out_dir must be on "
            "a filesystem every rank sees, with the checkpoint rank 0 wrote"
        )


def mean(values: torch.Tensor, w: World) -> torch.Tensor:
    """The mean over ranks of `values [n]` (a CPU tensor in and out), one all-reduce."""
    if w.size == 1:
        return values
    nccl = dist.get_backend() == "nccl"  # nccl reduces CUDA tensors only
    buf = values.to(torch.device("cuda", torch.cuda.current_device()) if nccl else values.device)
    dist.all_reduce(buf)
    return (buf / w.size).cpu()


def barrier(w: World) -> None:
    """Wait for every rank (a no-op for a single process)."""
    if w.size > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def init_from_env() -> tuple[World, str]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    Returns (world, device): nccl and cuda:LOCAL_RANK with CUDA, else gloo and cpu. Without
    torchrun's variables this is a single process and no group is made.
    """
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return world(), device
