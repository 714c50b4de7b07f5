"""saelab's training step against e2e_sae's (Braun et al.'s reference code) and against the model.

One run, alternating: each combination gets one worker process per contender, each on one
thread, and the driver asks them in turn for a few timed steps, round after round, so that any
background load hits every contender alike. The contenders, on the same model, site, batches
and SAE width:

- `e2e_sae`: PyPI's e2e_sae 2.1.1 in its own venv (`bash benchmarks/e2e_sae_env.sh`), on a
  TransformerLens copy of the same weights (checked: logits equal the HF model's to 1e-4). Its
  step is its training script's: `SAETransformer.forward_raw` + `forward` + `calc_loss`,
  backward, clipping, Adam (ReLU SAEs only: e2e_sae has no TopK).
- `saelab`: `saelab.core.training.step`, the step `sl.train` runs.
- `model`: the same saelab step with a 16-latent SAE: nearly the model alone, the limit.
- `sweep4`: `train_many`'s step for 4 SAEs of the combination (k x 1/4, 1/2, 1, 2, or phi x
  1/2, 1, 2, 4) from one shared clean pass, in units of the single step (4.0: no saving).

Each worker's peak memory is its process's max RSS (model, data and one SAE's training state).

    bash benchmarks/e2e_sae_env.sh && python benchmarks/vs_e2e_sae.py            # the table
    python benchmarks/vs_e2e_sae.py --ratios 8 --combos relu:local --rounds 1 --steps 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
E2E_PY = HERE / ".venv-e2e_sae" / "bin" / "python"
SITE = "resid_pre.3"  # saelab's name; TransformerLens: blocks.3.hook_resid_pre
COMBOS = ("relu:local", "relu:e2e", "relu:e2e+ds", "topk:local", "topk:e2e", "batchtopk:local",
          "batchtopk:e2e", "gtopk:local", "gtopk:e2e")  # fmt: skip
PHI = {"local": 1.0, "e2e": 3.0, "e2e+ds": 3.0}  # sparsity coefficients (timing only)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- workers: one process per contender and combination ------------------------------------------


def saelab_worker(spec: dict):
    """A step function for saelab (`spec["kind"]`: saelab, model or sweep4)."""
    import torch

    import saelab as sl
    from saelab.core import training
    from saelab.core.models import parse_site
    from saelab.core.setup import Context, Member, new_state, shared_clean_pass

    arch, loss = spec["combo"].split(":")
    lm = sl.load_model("storyworld")
    d_in = sl.model_info(lm)["d_model"]
    ratio, k = spec["ratio"], spec["k"]
    if spec["kind"] == "model":
        ratio, k = 16 / d_in, min(k, 8)
    ks = [k] * 4 if spec["kind"] != "sweep4" else [max(1, k // 4), max(1, k // 2), k, 2 * k]
    phis = [PHI[loss] * f for f in (0.5, 1, 2, 4)] if spec["kind"] == "sweep4" else [PHI[loss]] * 4
    n = 4 if spec["kind"] == "sweep4" else 1
    cfgs = []
    for i in range(n):
        kw = {"sparsity": phis[i]} if arch == "relu" else {"k": ks[i]}
        sae = sl.SAEConfig.create(architecture=arch, dict_ratio=ratio, **kw)
        ds = loss == "e2e+ds"
        cfgs.append(
            training.TrainConfig(
                sites=(SITE,),
                sae=sae,
                loss=sl.objective(loss, **(dict(kl_coeff=0.5, ds_coeff=2.5) if ds else {})),
                grad_clip=1.0,
                batch_size=spec["batch_size"],
                dead_tokens=10**9,
                warmup=0,
            )
        )
    site = parse_site(SITE)
    facts = dict(d_in=d_in, model_name="bench", device=torch.device("cpu"))
    members = [Member(c, None, new_state(c, [site], facts)) for c in cfgs]
    ctx = Context.for_steps(lm, [site], facts)
    batches = torch.load(spec["tokens"])
    i = 0

    def step() -> float:
        nonlocal i
        tokens = batches[i % len(batches)]
        i += 1
        clean = (
            shared_clean_pass(lm, tokens, [m.state.saes for m in members], cfgs[0])
            if n > 1
            else None
        )
        logs = [training.step(ctx, m, tokens, clean) for m in members]
        return logs[0]["loss"]

    return step


def e2e_sae_worker(spec: dict):
    """A step function for e2e_sae 2.1.1: its training script's step, on the same weights."""
    import torch
    from e2e_sae import SAETransformer
    from e2e_sae.losses import LossConfigs, calc_loss
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(spec["model_dir"]).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, n_heads=c.n_head,
        d_head=c.n_embd // c.n_head, d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size,
        act_fn=c.activation_function, normalization_type="LN", eps=c.layer_norm_epsilon,
        positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
        default_prepend_bos=False,
    )  # fmt: skip
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False,
                                   center_writing_weights=False, center_unembed=False,
                                   fold_value_biases=False)  # fmt: skip
    batches = torch.load(spec["tokens"])
    with torch.no_grad():  # the same model: TransformerLens' logits are the HF model's
        diff = (tl(batches[0][:2]) - hf(batches[0][:2]).logits).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"TransformerLens copy differs from the HF model by {diff}")
    tl.requires_grad_(False)
    arch, loss = spec["combo"].split(":")
    layer = int(SITE.split(".")[1])
    pos = f"blocks.{layer}.hook_resid_pre"
    model = SAETransformer(tl, [pos], spec["ratio"])
    later = [f"blocks.{i}.hook_resid_pre" for i in range(layer + 1, c.n_layer)]
    loss_cfg = LossConfigs(
        sparsity={"p_norm": 1.0, "coeff": PHI[loss]},
        in_to_orig={"hook_positions": later, "total_coeff": 2.5} if loss == "e2e+ds" else None,
        out_to_orig=None,
        out_to_in={"coeff": 1.0 if loss == "local" else 0.0},
        logits_kl={"coeff": 0.5 if loss == "e2e+ds" else 1.0} if loss != "local" else None,
    )
    cache_positions = later if loss == "e2e+ds" else None
    is_local = loss == "local"
    params = [p for p in model.saes.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    i = 0

    def step() -> float:
        nonlocal i
        tokens = batches[i % len(batches)]
        i += 1
        # as e2e_sae/scripts/train_tlens_saes/run_train_tlens_saes.py's train loop
        orig_logits, orig_acts = model.forward_raw(
            tokens, run_entire_model=not is_local, final_layer=layer + 1 if is_local else None,
            cache_positions=cache_positions,
        )  # fmt: skip
        new_logits, new_acts = model.forward(tokens, [pos], cache_positions,
                                             orig_acts=orig_acts if is_local else None)  # fmt: skip
        lossv, _ = calc_loss(orig_acts, new_acts, orig_logits, new_logits, loss_cfg)
        lossv.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        return lossv.item()

    return step


def worker_main(spec: dict) -> None:
    """Build the step, answer `{"steps": n}` requests with their wall time, one JSON per line."""
    import torch

    torch.set_num_threads(1)
    step = (e2e_sae_worker if spec["kind"] == "e2e_sae" else saelab_worker)(spec)
    loss = step()  # a first, untimed step (allocations, caches)
    print(json.dumps({"ready": True, "loss": loss}), flush=True)
    for line in sys.stdin:
        n = json.loads(line)["steps"]
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        print(json.dumps({"seconds": time.perf_counter() - t0, "max_rss_mib": max_rss_mib()}),
              flush=True)  # fmt: skip


# --- the driver ----------------------------------------------------------------------------------


class Worker:
    def __init__(self, spec: dict):
        py = str(E2E_PY) if spec["kind"] == "e2e_sae" else sys.executable
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [py, __file__, "--worker", json.dumps(spec)]
        pipe = subprocess.PIPE
        self.p = subprocess.Popen(cmd, env=env, stdin=pipe, stdout=pipe, text=True)
        first = self._read()
        self.loss = first["loss"]

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.p.wait()}")
        return json.loads(line)

    def time(self, steps: int) -> dict:
        self.p.stdin.write(json.dumps({"steps": steps}) + "\n")
        self.p.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait()


def run_combo(combo: str, ratio: float, args, tokens_path: str, model_dir: str) -> dict:
    """Alternate the contenders of one combination for `args.rounds` rounds."""
    arch = combo.split(":")[0]
    kinds = ["saelab", "model"]
    if arch == "relu" and not args.no_e2e_sae:
        kinds.insert(0, "e2e_sae")
    if args.sweep:
        kinds.append("sweep4")
    base = dict(combo=combo, ratio=ratio, k=args.k, batch_size=args.batch_size,
                tokens=tokens_path, model_dir=model_dir)  # fmt: skip
    workers = {kind: Worker(base | {"kind": kind}) for kind in kinds}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    mem = {}
    try:
        for _ in range(args.rounds):
            for kind, w in workers.items():
                r = w.time(args.steps)
                times[kind].append(r["seconds"] / args.steps)
                mem[kind] = r["max_rss_mib"]
    finally:
        for w in workers.values():
            w.close()
    n_tok = args.batch_size * args.n_ctx
    row = {"combo": combo, "ratio": ratio, "k": args.k if arch != "relu" else None}
    for kind in kinds:
        row[f"{kind}_tok_s"] = n_tok / statistics.median(times[kind])
        row[f"{kind}_tok_s_range"] = [n_tok / max(times[kind]), n_tok / min(times[kind])]
        row[f"{kind}_max_rss_mib"] = mem[kind]
    if "e2e_sae" in kinds:
        row["saelab_vs_e2e_sae"] = row["saelab_tok_s"] / row["e2e_sae_tok_s"]
    row["step_vs_model"] = row["model_tok_s"] / row["saelab_tok_s"]
    if "sweep4" in kinds:
        row["sweep4_cost_in_runs"] = row["saelab_tok_s"] / row["sweep4_tok_s"]
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    head = ["step", "ratio", "e2e_sae tok/s", "saelab tok/s", "saelab/e2e_sae", "model tok/s",
            "step/model", "4-SAE sweep (runs)", "RSS MiB e2e_sae/saelab"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        e2e = r.get("e2e_sae_tok_s")
        mem_e = r.get("e2e_sae_max_rss_mib")
        cells = [
            r["combo"].replace(":", " ") + (f" k={r['k']}" if r["k"] else ""),
            f"{r['ratio']:g}",
            f"{e2e:,.0f}" if e2e else "-",
            f"{r['saelab_tok_s']:,.0f}",
            f"{r['saelab_vs_e2e_sae']:.2f}x" if e2e else "-",
            f"{r['model_tok_s']:,.0f}",
            f"{r['step_vs_model']:.2f}x",
            f"{r['sweep4_cost_in_runs']:.2f}" if "sweep4_cost_in_runs" in r else "-",
            (f"{mem_e:,.0f}" if mem_e else "-") + f" / {r['saelab_max_rss_mib']:,.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--combos", default=",".join(COMBOS))
    p.add_argument("--ratios", default="8,50", help="dictionary ratios d_sae / d_in")
    p.add_argument("--k", type=int, default=32, help="k of the TopK family")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-ctx", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="timed steps per turn")
    p.add_argument("--rounds", type=int, default=3, help="turns per contender (median taken)")
    p.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the 4-SAE sweep")
    p.add_argument("--no-e2e-sae", action="store_true", help="skip e2e_sae (no venv needed)")
    p.add_argument("--out", default=str(HERE / "results" / "vs_e2e_sae.json"))
    args = p.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return []
    if not args.no_e2e_sae and not E2E_PY.exists():
        raise SystemExit(f"no e2e_sae venv at {E2E_PY}: run `bash benchmarks/e2e_sae_env.sh` "
                         "first, or pass --no-e2e-sae")  # fmt: skip
    import torch

    import saelab as sl
    from saelab.storyworld import MODEL_DIR

    lm = sl.load_model("storyworld")
    n_batches = 4
    data = sl.token_dataset("storyworld", lm.tokenizer, args.n_ctx, split="train",
                            n_tokens=(n_batches + 1) * args.batch_size * args.n_ctx)  # fmt: skip
    batches = [b for b, _ in zip(data.batches(args.batch_size, shuffle=False), range(n_batches),
                                 strict=False)]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tokens_path = str(Path(tmp) / "tokens.pt")
        torch.save(batches, tokens_path)
        for ratio in [float(r) for r in args.ratios.split(",")]:
            for combo in args.combos.split(","):
                rows.append(run_combo(combo.strip(), ratio, args, tokens_path, str(MODEL_DIR)))
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(args={k: v for k, v in vars(args).items() if k != "worker"},
                torch=torch.__version__, threads_per_worker=1,
                date=time.strftime("%Y-%m-%d"))  # fmt: skip
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
