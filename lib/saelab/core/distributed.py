"""The torchrun entry point of data-parallel SAE training (`saelab.core.ranks` holds the
collectives and why N ranks take the same steps as one process with the same global batch).

    torchrun --standalone --nproc_per_node=8 -m saelab.core.distributed \
        --model gpt2 --dataset Skylion007/openwebtext --n-ctx 1024 --config cfg.json --out DIR

Backend: nccl when CUDA is available (rank r uses cuda:LOCAL_RANK), gloo on CPU. Only rank 0
writes files; every rank returns the same `Run.log`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from saelab.core.config import TrainConfig
from saelab.core.data import token_dataset
from saelab.core.models import load_model
from saelab.core.ranks import World, barrier, init_from_env
from saelab.core.training import train


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=N -m saelab.core.distributed",
        description="Train SAEs data-parallel over the processes torchrun starts.",
    )
    ap.add_argument("--model", default="storyworld", help="load_model name or path")
    ap.add_argument("--dataset", default="storyworld", help="token_dataset source")
    ap.add_argument("--config", required=True, help="JSON file of TrainConfig fields")
    ap.add_argument("--out", required=True, help="run folder (rank 0 writes it)")
    ap.add_argument("--n-ctx", type=int, default=128, help="tokens per row")
    ap.add_argument("--split", default="train")
    ap.add_argument(
        "--data-tokens", type=int, default=None, help="tokens to tokenize (default: n_tokens)"
    )
    ap.add_argument(
        "--eval-split", default="validation", help="held-out split ('': the training data)"
    )
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ap.add_argument("--log-to", nargs="*", default=[], choices=["wandb", "tensorboard"],
                    help="trackers that get every metrics.jsonl record too (rank 0)")  # fmt: skip
    ap.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    return ap


def read_config(path: str) -> TrainConfig:
    """The TrainConfig in JSON file `path`; errors name the file."""
    try:
        fields = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {path} is not valid JSON: {e}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"--config {path} holds a {type(fields).__name__}, not TrainConfig fields")
    try:
        return TrainConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--config {path}: {e}") from None


def load_inputs(args: argparse.Namespace, device: str, w: World | None = None):
    """(lm, cfg, data, eval_data) for parsed entry-point `args`; rank 0 tokenizes first.

    Rank 0 builds the token cache (`$SAELAB_CACHE`) while the others wait, so they read it
    instead of all tokenizing the same text at once. `w` None: a single process.
    """
    w = w if w is not None else World()
    cfg = read_config(args.config)
    lm = load_model(args.model, device=device)
    kw = dict(text_column=args.text_column)
    if not w.main:
        barrier(w)
    data = token_dataset(args.dataset, lm.tokenizer, args.n_ctx, split=args.split,
                         n_tokens=args.data_tokens or cfg.n_tokens, **kw)  # fmt: skip
    eval_data = None
    if args.eval_split:
        eval_data = token_dataset(args.dataset, lm.tokenizer, args.n_ctx, split=args.eval_split,
                                  n_tokens=cfg.eval_tokens, **kw)  # fmt: skip
    if w.main:
        barrier(w)
    return lm, cfg, data, eval_data


def main(argv: list[str] | None = None) -> int:
    """Entry point: `torchrun --nproc_per_node=N -m saelab.core.distributed --config C --out D`."""
    args = _parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    try:
        read_config(args.config)  # before the process group: a bad file fails at once, alike
        w, device = init_from_env()
        lm, cfg, data, eval_data = load_inputs(args, device, w)
        run = train(lm, data, cfg, args.out, resume=args.resume, eval_data=eval_data,
                    progress=w.main, log_to=args.log_to)  # fmt: skip
        if w.main:
            print(json.dumps(run.log[-1]))
    except Exception as e:
        if args.debug:
            raise
        # one line per rank instead of each rank's traceback (--debug shows them)
        print(f"rank {rank}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
