"""A sweep's final evaluation: each SAE evaluated alone vs all at once (`sl.evaluate_many`).

`train_many` ends every SAE with an evaluation on the same held-out rows; the alive window
(500k SAE positions, e2e_sae's) runs the model over far more rows than the CE rows, and a
g-SAE needs dL/dx there. This times, for `--n-saes` freshly initialised SAEs of one
architecture at one site, `sl.evaluate` of each alone (what `train_many` did before
2026-12-02) and one `sl.evaluate_many` of them all, and checks the reports agree.

    python benchmarks/evaluate_many.py --threads 2                       # 6 g-SAEs, 500k window
    python benchmarks/evaluate_many.py --arch topk --n-saes 12 --alive-tokens 100000
    python benchmarks/evaluate_many.py --n-saes 2 --eval-tokens 256 --alive-tokens 512  # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import saelab as sl


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="storyworld", help="storyworld, a hub id or a local HF dir")
    p.add_argument("--site", default="resid_pre.3")
    p.add_argument("--data", default="storyworld", help="token_dataset source (validation)")
    p.add_argument("--arch", default="gtopk", help="a registered architecture")
    p.add_argument("--n-saes", type=int, default=6)
    p.add_argument("--dict-ratio", type=float, default=8.0)
    p.add_argument("--k", type=int, default=16, help="active latents of the TopK family")
    p.add_argument("--n-ctx", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-tokens", type=int, default=32_768)
    p.add_argument("--alive-tokens", type=int, default=500_000)
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "evaluate_many.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = sl.load_model(args.model)
    d = sl.model_info(lm)["d_model"]
    rows_needed = args.alive_tokens // (args.n_ctx - 1) + 2 + args.eval_tokens // args.n_ctx
    data = sl.token_dataset(args.data, lm.tokenizer, args.n_ctx, split="validation",
                            n_tokens=rows_needed * args.n_ctx)  # fmt: skip
    has_k = "k" in sl.architecture(args.arch).cfg_class.__dataclass_fields__
    kw = {"k": args.k} if has_k else {}
    saes = []
    for i in range(args.n_saes):
        torch.manual_seed(i)
        cfg = sl.SAEConfig.create(architecture=args.arch, d_in=d, d_sae=int(args.dict_ratio * d),
                           site=args.site, **kw)  # fmt: skip
        saes.append(sl.SAE.from_config(cfg).eval())
    ev = dict(n_tokens=args.eval_tokens, batch_size=args.batch_size, alive_tokens=args.alive_tokens)
    t0 = time.perf_counter()
    alone = [sl.evaluate(lm, sae, data, **ev) for sae in saes]
    t_alone = time.perf_counter() - t0
    t0 = time.perf_counter()
    many = sl.evaluate_many(lm, saes, data, **ev)
    t_many = time.perf_counter() - t0
    worst = max(abs(a[k] - m[k]) / max(abs(a[k]), 1e-12)
                for a, m in zip(alone, many, strict=True) for k in a)  # fmt: skip
    row = dict(
        arch=args.arch,
        n_saes=args.n_saes,
        alive_window=alone[0]["alive_window_tokens"],
        s_alone=t_alone,
        s_many=t_many,
        speedup=t_alone / t_many,
        max_rel_diff=worst,
    )
    print(f"{args.n_saes} {args.arch} SAEs, alive window {row['alive_window']:,} tokens: alone "
          f"{t_alone:.1f} s, evaluate_many {t_many:.1f} s ({row['speedup']:.1f}x); reports "
          f"differ by at most {worst:.1e} (relative)")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(args=vars(args), torch=torch.__version__, machine=platform.machine(),
                threads=torch.get_num_threads())  # fmt: skip
    out.write_text(json.dumps(dict(meta=meta, rows=[row]), indent=2) + "\n")
    return [row]


if __name__ == "__main__":
    main()
