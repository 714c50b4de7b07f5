"""SAE training throughput on the frozen model, timed through the library's own step.

For every architecture x objective combination (default: all registered architectures x local /
e2e / e2e+ds) this times `saelab.core.training.step`, the exact optimiser step that
`sl.train` runs (clean pass, spliced pass, loss terms, backward, decoder-gradient projection,
clipping, Adam, post-step constraint), on the same pre-sampled batches and the same seeded init.
Each timed step alternates with one bare model forward pass with logits (`clean_pass`), the floor
that every step pays, so background load hits both alike. It reports tokens/s, ms/step, the
step's cost in bare forwards, memory (CPU: the process's max RSS so far, a high-water mark; CUDA:
`max_memory_allocated` of the step) and the first step's loss.

    python benchmarks/throughput.py                          # storyworld, resid_pre.3, every combo
    python benchmarks/throughput.py --combos relu:local,gtopk:e2e --device cuda
    python benchmarks/throughput.py --steps 1 --warmup-steps 0 --batch-size 2 --n-ctx 16
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

import saelab as sl
from saelab.core import training
from saelab.core.models import parse_site
from saelab.core.passes import clean_pass
from saelab.core.setup import Context, Member, new_state


def make_cfg(arch: str, loss: str, args) -> training.TrainConfig:
    """The TrainConfig of one combination (papers' e2e+ds coefficients); an architecture with a
    `k` field gets `--k`, the rest of its fields their defaults."""
    has_k = "k" in sl.architecture(arch).cfg_class.__dataclass_fields__
    kw = {"k": args.k} if has_k else {}
    sae = sl.SAEConfig.create(architecture=arch, dict_ratio=args.dict_ratio, **kw)
    ds = loss == "e2e+ds"
    obj = sl.objective(loss, **(dict(kl_coeff=0.5, ds_coeff=2.5) if ds else {}))
    return training.TrainConfig(sites=(site_for(sae, args.site),), sae=sae, loss=obj,
                                batch_size=args.batch_size, dead_tokens=1, seed=args.seed,
                                warmup=0)  # fmt: skip


def site_for(sae: sl.SAEConfig, site: str) -> str:
    """`site`, or for an SAE that cannot write it (a transcoder) the MLP output of its layer."""
    try:
        sae.input_site(parse_site(site))
        return site
    except ValueError:
        return f"mlp_out.{parse_site(site).layer}"


def parse_combos(text: str | None) -> list[tuple[str, str]]:
    """`arch:loss,...` -> pairs; None -> every architecture x every objective."""
    archs, objs = sl.architectures(), tuple(sl.OBJECTIVES)
    if not text:
        return [(a, o) for a in archs for o in objs]
    combos = []
    for item in text.split(","):
        arch, _, loss = item.strip().partition(":")
        if arch not in archs or loss not in objs:
            raise SystemExit(f"bad combo {item!r}: use arch:loss with arch in {archs}, loss in "
                             f"{objs}, e.g. relu:local,gtopk:e2e")  # fmt: skip
        combos.append((arch, loss))
    return combos


def max_rss_mib() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_combo(lm, batches: list[torch.Tensor], cfg, args, device) -> dict:
    """Time `args.steps` library steps (after `args.warmup_steps`), alternating with forwards."""
    site = parse_site(cfg.sites[0])
    facts = dict(d_in=sl.model_info(lm)["d_model"], model_name="bench", device=device)
    state = new_state(cfg, [site], facts)
    ctx, member = Context.for_steps(lm, [site], facts), Member(cfg, None, state)
    d_sae = state.saes[site].cfg.d_sae
    g = torch.Generator().manual_seed(args.seed)
    dead = torch.rand(d_sae, generator=g) < args.dead_frac  # these latents count as dead (AuxK)
    state.since_fire[site] = (dead.long() * cfg.dead_tokens * 2).to(device)
    cuda = device.type == "cuda"
    t_step = t_fwd = 0.0
    first_loss, peak = None, 0
    for i in range(args.warmup_steps + args.steps):
        tokens = batches[i % len(batches)]
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        logs = training.step(ctx, member, tokens)
        if cuda:
            torch.cuda.synchronize()
            peak = max(peak, torch.cuda.max_memory_allocated())
        t1 = time.perf_counter()
        with torch.no_grad():
            clean_pass(lm, tokens, list({site, cfg.sae.input_site(site)}), logits=True)
        if cuda:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        first_loss = logs["loss"] if first_loss is None else first_loss
        if i >= args.warmup_steps:
            t_step += t1 - t0
            t_fwd += t2 - t1
    n_tok = args.steps * tokens.numel()
    res = dict(tok_s=n_tok / t_step, ms_step=1000 * t_step / args.steps,
               fwd_ms=1000 * t_fwd / args.steps, step_in_forwards=t_step / t_fwd,
               first_loss=first_loss)  # fmt: skip
    if cuda:
        res["peak_mib"] = peak / 2**20
    else:
        res["max_rss_mib"] = max_rss_mib()
    return res


def table(rows: list[dict]) -> str:
    """Plain-text table of the per-combo rows."""
    mem = ("peak MiB", "peak_mib") if "peak_mib" in rows[0] else ("max RSS MiB", "max_rss_mib")
    cols = [("arch", "arch", "{}"), ("loss", "loss", "{}"), ("tok/s", "tok_s", "{:.0f}"),
            ("ms/step", "ms_step", "{:.1f}"), ("fwd ms", "fwd_ms", "{:.1f}"),
            ("step/fwd", "step_in_forwards", "{:.2f}"), (*mem, "{:.0f}"),
            ("loss step 1", "first_loss", "{:.5g}")]  # fmt: skip
    cells = [[h for h, _, _ in cols]] + [[f.format(r[k]) for _, k, f in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True))
                     for row in cells)  # fmt: skip


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="storyworld", help="storyworld, a hub id or a local HF dir")
    p.add_argument("--site", default="resid_pre.3")
    p.add_argument("--data", default="storyworld", help="token_dataset source")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-ctx", type=int, default=None, help="default: the model's n_ctx")
    p.add_argument("--dict-ratio", type=float, default=8.0)
    p.add_argument("--k", type=int, default=16, help="active latents of the TopK family")
    p.add_argument("--steps", type=int, default=20, help="timed steps per combo")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before them")
    p.add_argument("--dead-frac", type=float, default=0.1, help="latents marked dead (AuxK)")
    p.add_argument("--combos", default=None, help="arch:loss,... (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    combos = parse_combos(args.combos)
    lm = sl.load_model(args.model, device=args.device)
    device = torch.device(lm.device)
    n_ctx = args.n_ctx or sl.model_info(lm)["n_ctx"]
    n_batches = max(1, min(args.steps + args.warmup_steps, 4))
    data = sl.token_dataset(args.data, lm.tokenizer, n_ctx, split="train",
                            n_tokens=n_batches * args.batch_size * n_ctx + n_ctx)  # fmt: skip
    batches = [b.to(device) for b, _ in zip(data.batches(args.batch_size, shuffle=False),
                                             range(n_batches), strict=False)]  # fmt: skip
    rows = []
    for arch, loss in combos:
        cfg = make_cfg(arch, loss, args)
        rows.append(dict(arch=arch, loss=loss) | time_combo(lm, batches, cfg, args, device))
        print(f"{arch}:{loss} {rows[-1]['tok_s']:.0f} tok/s", flush=True)
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(args=vars(args), torch=torch.__version__, machine=platform.machine(),
                threads=torch.get_num_threads())  # fmt: skip
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
