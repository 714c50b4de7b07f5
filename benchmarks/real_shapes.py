"""Cost at real shapes: SAE training steps on random-weight models of real models' shapes.

Builds the models locally (no download): GPT-2 small (12 x 768, vocab 50,257), a Llama-shaped
model with Llama-3.2-1B's widths and vocabulary (2048 wide, vocab 128,256; `--llama-layers` of its
16 layers, 4 by default so a CPU run stays short), and a Gemma-shaped one: Gemma 3 270M's widths
and vocabulary (18 layers, 640 wide, vocab 262,144) in a *Llama* config, because a random-weight
`gemma3_text` model built from its config gives NaN gradients even for plain CE through
transformers (5.25, torch 2.13, CPU; LOG.md 2026-12-04), so it measures Gemma's shapes, not its
norms or softcapping. For each it times, at the same batch:

- the bare model: a forward pass with logits, and a forward + backward to one site (dL/dx);
- `saelab.core.training.step` for relu local / e2e / e2e+ds and gtopk e2e,

and reports tokens/s, seconds per step, the step's cost in bare forward+backwards (the limit is
1), and the peak memory of each step measured alone in a fresh process, from after the model is
loaded and every weight read once (CPU: the process's own VmHWM, reset before the steps; CUDA:
`max_memory_allocated`).
`--kl-chunk 0` turns the chunked KL / CE off (one `[B, T, V]` float32 softmax at a time), to
measure what chunking saves; `--stream never` materialises the `[B, T, V]` logits as saelab did
before `core/unembed.py` (the default, `auto`, streams a batch whose logits exceed
`unembed.STREAM_LOGITS`). The limit, "forward+backward", is the bare model's forward and a
backward of its next-token CE to one site, with the same logits policy.

    python benchmarks/real_shapes.py --threads 2                    # CPU, both models
    python benchmarks/real_shapes.py --device cuda --batch-size 8 --n-ctx 1024 --llama-layers 16
    python benchmarks/real_shapes.py --models gpt2 --kl-chunk 0     # without chunking
    python benchmarks/real_shapes.py --models llama,gemma --n-ctx 1024 --stream never  # before
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

MODELS = {
    "gpt2": dict(model_type="gpt2", n_layer=12, n_embd=768, n_head=12, n_positions=1024,
                 vocab_size=50257),
    "llama": dict(model_type="llama", hidden_size=2048, intermediate_size=8192,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
                  vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    # Gemma 3 270M's shapes in a Llama config (module docstring: why not gemma3_text)
    "gemma": dict(model_type="llama", hidden_size=640, intermediate_size=2048,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                  max_position_embeddings=32768, vocab_size=262144, tie_word_embeddings=True,
                  num_hidden_layers=18),
}  # fmt: skip
TINY = {  # the same families, small: for the smoke test (tests/test_benchmarks.py)
    "gpt2": dict(n_layer=2, n_embd=32, n_head=4, vocab_size=1000),
    "llama": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1000),
    "gemma": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=8, vocab_size=1000, num_hidden_layers=2),
}  # fmt: skip
STEPS = ("forward", "forward+backward", "relu:local", "relu:e2e", "relu:e2e+ds", "gtopk:e2e")


def build(name: str, folder: Path, llama_layers: int, tiny: bool = False) -> Path:
    """Save a random-weight model of `name`'s shape and a word-level tokenizer of its vocab."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    size = "tiny" if tiny else (str(llama_layers) if name == "llama" else "full")
    path = folder / f"{name}-{size}"
    if (path / "config.json").is_file():
        return path
    kw = dict(MODELS[name]) | (TINY[name] if tiny else {})
    model_type = kw.pop("model_type")
    if name == "llama":
        kw["num_hidden_layers"] = llama_layers
    cfg = tf.AutoConfig.for_model(model_type, bos_token_id=0, eos_token_id=0, **kw)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    vocab = {"<|endoftext|>": 0} | {f"w{i}": i for i in range(1, cfg.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                      eos_token="<|endoftext|>")  # fmt: skip
    fast.save_pretrained(path)
    return path


def reset_peak(device: torch.device) -> None:
    """Start this process's peak-memory count afresh, so the peak is the step's own."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: "5" resets VmHWM to the current RSS (proc(5), clear_refs)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mib(device: torch.device) -> float:
    """Peak memory since `reset_peak`: CUDA's `max_memory_allocated`; on Linux the process's own
    VmHWM. Not `ru_maxrss`: it survives `exec`, so a child reports at least its parent's peak
    (every GPT-2 step here once read 3,311 MiB, the parent's)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: an upper bound


def run_one(args) -> dict:
    """Time one step kind (`args.one`) in this process; print a JSON line."""
    import saelab as sl
    from saelab.core import losses, training, unembed
    from saelab.core.models import parse_site
    from saelab.core.passes import clean_pass
    from saelab.core.setup import Context, Member, new_state

    if args.kl_chunk == 0:
        losses.CHUNK_ELEMENTS = 2**62  # one chunk: the whole [N, V] at once
    if args.stream == "never":
        unembed.STREAM_LOGITS = 2**62  # materialise [B, T, V], as before core/unembed.py
    if args.stream_chunk:
        unembed.STREAM_CHUNK = args.stream_chunk
    lm = sl.load_model(args.path, device=args.device)
    device = torch.device(lm.device)
    info = sl.model_info(lm)
    site = parse_site(f"resid_pre.{info['n_layers'] // 2}")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, info["d_vocab"], (args.batch_size, args.n_ctx), generator=g)
    tokens[:, 0] = 0  # a BOS per row
    tokens = tokens.to(device)
    with torch.no_grad():  # every weight resident before the count starts: a local step reads
        for p in lm.parameters():  # only the blocks up to its site, and lazily loaded or mmapped
            p.sum()  # pages would otherwise count against the step that first touches them
    reset_peak(device)
    base = peak_mib(device)  # the model and the batch, before any step
    if args.one in ("forward", "forward+backward"):
        grads = args.one == "forward+backward"

        def step():
            with torch.set_grad_enabled(grads):
                clean_pass(lm, tokens, [site], logits=True, grads=grads)
    else:
        arch, loss = args.one.split(":")
        kw = {"k": 32} if arch == "gtopk" else {}
        ds = dict(kl_coeff=0.5, ds_coeff=2.5) if loss == "e2e+ds" else {}
        obj = sl.objective(loss, **ds)
        sae = sl.SAEConfig.create(
            architecture=arch, dict_ratio=args.dict_ratio, normalize_activations="none", **kw
        )
        cfg = training.TrainConfig(sites=(str(site),), loss=obj, sae=sae, warmup=0,
                                   batch_size=args.batch_size)  # fmt: skip
        facts = dict(d_in=info["d_model"], model_name="bench", device=device)
        keep = torch.arange(1, args.n_ctx, device=device)  # the BOS position left out
        ctx = Context.for_steps(lm, [site], facts, keep)
        member = Member(cfg, None, new_state(cfg, [site], facts))

        def step():
            training.step(ctx, member, tokens)

    times = []
    for i in range(args.warmup_steps + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup_steps:
            times.append(time.perf_counter() - t0)
    s = sum(times) / len(times)
    return dict(model=args.model, step=args.one, s_step=s, tok_s=tokens.numel() / s,
                peak_mib=peak_mib(device), before_mib=base, kl_chunk=args.kl_chunk,
                stream=args.stream, stream_chunk=args.stream_chunk,
                vocab=info["d_vocab"], d_model=info["d_model"],
                n_layers=info["n_layers"])  # fmt: skip


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="gpt2,llama", help="comma list of " + ", ".join(MODELS))
    p.add_argument(
        "--steps-to-run", default=",".join(STEPS), help="comma list of " + ", ".join(STEPS)
    )
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--dict-ratio", type=float, default=8.0)
    p.add_argument("--llama-layers", type=int, default=4, help="of Llama-3.2-1B's 16")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup-steps", type=int, default=1)
    p.add_argument("--kl-chunk", type=int, default=1, help="0: no chunking of the KL / CE")
    p.add_argument(
        "--stream",
        choices=("auto", "never"),
        default="auto",
        help="never: materialise the [B, T, V] logits (saelab before unembed.py)",
    )
    p.add_argument("--stream-chunk", type=int, default=None,
                   help="logits per streamed chunk (default: unembed.STREAM_CHUNK)")  # fmt: skip
    p.add_argument("--tiny", action="store_true", help="small widths (the smoke test)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--models-dir", default="/tmp/saelab-bench-models")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "real_shapes.json"))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one step kind
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args)), flush=True)
        return []
    rows = []
    for name in args.models.split(","):
        path = build(name, Path(args.models_dir), args.llama_layers, args.tiny)
        for kind in args.steps_to_run.split(","):
            cmd = [sys.executable, __file__, "--one", kind, "--model", name, "--path", str(path)]
            for flag in ("batch_size", "n_ctx", "dict_ratio", "steps", "warmup_steps", "kl_chunk",
                         "stream", "stream_chunk", "device", "threads"):  # fmt: skip
                value = getattr(args, flag)
                if value is not None:
                    cmd += [f"--{flag.replace('_', '-')}", str(value)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                raise SystemExit(f"{name} {kind} failed:\n{res.stderr[-3000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{name:6s} {kind:17s} {r['s_step']:8.3f} s/step {r['tok_s']:9.0f} tok/s "
                  f"peak {r['peak_mib']:8.0f} MiB", flush=True)  # fmt: skip
    for r in rows:  # the limit: one bare forward+backward at the same batch
        bare = [x for x in rows if x["model"] == r["model"] and x["step"] == "forward+backward"]
        if bare:
            r["step_in_bare_fwd_bwd"] = r["s_step"] / bare[0]["s_step"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(args=vars(args), torch=torch.__version__, machine=platform.machine())
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
