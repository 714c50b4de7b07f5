"""SAE training throughput on the frozen model: saelab's nnsight step vs plain torch hooks.

For every `sae` x `loss` combination (relu/topk/gtopk x local/e2e/e2e+ds) this times full
training steps (loss, backward, decoder-grad projection, clipping, Adam, decoder renorm) on the
same pre-sampled batches two ways:

- nnsight: `saelab.training.train_step`, i.e. `saelab.passes.clean_pass` / `spliced_pass`;
- torch:   the same math with forward (pre-)hooks on a separately loaded plain HF model (the
  nnsight-wrapped `lm._module` has nnsight's forward controllers installed, so it is not used).

The paths take turns every step, so background load hits both alike. It reports tokens/s, ms/step,
memory (CPU: max RSS so far; CUDA: max_memory_allocated per path), nnsight's overhead
(t_nnsight / t_torch - 1) and the absolute difference of the first step's loss (same SAE init,
same batch), which shows that the two paths compute the same thing.

    python benchmarks/throughput.py                          # storyworld, resid_pre.3, 9 combos
    python benchmarks/throughput.py --combos relu:local,gtopk:e2e --device cuda
    python benchmarks/throughput.py --model /tmp/exp/tiny --site resid_pre.2 --steps 3 \\
        --warmup-steps 1 --batch-size 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import time
from pathlib import Path

import nnsight
import torch
import transformers
from transformers import AutoModelForCausalLM

from saelab import losses
from saelab.data import token_dataset
from saelab.models import block_list, get_arch, load_model, model_info, parse_site, site_path
from saelab.passes import _skippable, later_sites, next_token_ce
from saelab.sae import SAE
from saelab.training import LOSSES, SAE_KINDS, TrainConfig, train_step

# --- the torch-hook training step ----------------------------------------------------------------


class _Stop(Exception):
    """Raised by a hook to end a forward pass right after the site (local training)."""


@contextlib.contextmanager
def hooked(module: torch.nn.Module, side: str, fn):
    """Call `fn(x)` on `module`'s first positional input ("input") or its output (element 0 of a
    tuple) ("output"); a non-None return replaces that activation."""
    if side == "input":

        def pre(mod, args):
            new = fn(args[0])
            return None if new is None else (new, *args[1:])

        handle = module.register_forward_pre_hook(pre)
    else:

        def post(mod, args, out):
            new = fn(out[0] if isinstance(out, tuple) else out)
            if new is None:
                return None
            return (new, *out[1:]) if isinstance(out, tuple) else new

        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def skipping(blocks, value: torch.Tensor, as_tuple: bool):
    """Blocks return `value` without computing anything: the plain-torch twin of nnsight's
    `block.skip(value)` (an instance-level `forward` override, undone on exit)."""
    result = (value, None) if as_tuple else value
    for block in blocks:
        block.forward = lambda *args, **kwargs: result
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


class TorchStep:
    """`train_step` for one SAE at one site, on a plain HF model with torch hooks.

    - local: a no_grad pass that a hook at the site ends by raising `_Stop` (nnsight: the clean
      pass's `tracer.stop()`); the SAE reconstructs the captured activation: MSE + sparsity/AuxK.
    - e2e: a no_grad clean pass for the logits (+ hooks on every later block's output for e2e+ds),
      then a grad pass with the site replaced by the SAE reconstruction; KL (+ downstream MSE) +
      sparsity/AuxK. Like `passes.spliced_pass`, for resid_pre.L / resid_post.L sites the blocks
      before the site are skipped (they return the reconstruction of the cached clean activation,
      the embedding is still computed); for other sites a hook replaces the activation in place.
    - gtopk: the clean pass runs with grad instead: the site activation is made a leaf that
      requires grad (the frozen model builds no graph before it), and `torch.autograd.grad` of the
      next-token CE gives dL/dx (nnsight: `x.requires_grad_()` and `with loss.backward()`). This
      pass also gives the logits, so gtopk never runs the model without grad.
    """

    def __init__(self, model, site, cfg: TrainConfig):
        self.model, self.site, self.cfg = model, site, cfg
        path, self.side = site_path(model, site)
        self.module = model.get_submodule(path)
        self.blocks = block_list(model)
        self.as_tuple = get_arch(model).block_tuple
        later = later_sites(model, [site]) if cfg.loss == "e2e+ds" else []
        paths = [site_path(model, s) for s in later]
        self.later = [(model.get_submodule(path), side) for path, side in paths]

    def _run(self, tokens, after: list, fn=None):
        """Forward `tokens` with the hook `fn` at the site (if any), appending the later residuals
        to `after`. Returns the logits, or None when a hook stopped the pass."""
        with contextlib.ExitStack() as stack:
            if fn is not None:
                stack.enter_context(hooked(self.module, self.side, fn))
            for module, side in self.later:
                stack.enter_context(hooked(module, side, after.append))
            # nnsight passes an all-ones attention mask with the ids; do the same (same kernels)
            mask = torch.ones_like(tokens)
            try:
                return self.model(input_ids=tokens, attention_mask=mask).logits
            except _Stop:
                return None

    def __call__(self, tokens, sae: SAE, dead: torch.Tensor):
        cfg = self.cfg
        e2e, gtopk = cfg.loss != "local", cfg.sae == "gtopk"
        acts, clean_after, g = {}, [], None

        def grab(x):
            if gtopk and not x.requires_grad:
                x.requires_grad_(True)
            acts["x"] = x
            if not (e2e or gtopk):
                raise _Stop

        if gtopk:  # clean pass with grad: dL/dx at the site
            logits = self._run(tokens, clean_after, grab)
            (g,) = torch.autograd.grad(next_token_ce(logits, tokens), acts["x"])
            logits, clean_after = logits.detach(), [a.detach() for a in clean_after]
        else:
            with torch.no_grad():
                logits = self._run(tokens, clean_after, grab)
        x = acts["x"].detach()

        logs, loss = {}, torch.zeros(())
        if e2e:
            outs, sp_after = {}, []
            n_skip = _skippable(self.site)
            if n_skip:  # blocks before the site see no SAE: feed the cached clean activation
                outs["x"] = sae(x, grad=g)
                with skipping(self.blocks[:n_skip], outs["x"].x_hat, self.as_tuple):
                    sp_logits = self._run(tokens, sp_after)
            else:

                def splice(x_site):
                    outs["x"] = sae(x_site, grad=g)
                    return outs["x"].x_hat

                sp_logits = self._run(tokens, sp_after, splice)
            out = outs["x"]
            kl = losses.kl_loss(logits, sp_logits)
            loss = loss + cfg.kl_coeff * kl
            logs["kl"] = kl.item()
            if sp_after:
                ds = losses.downstream_mse(sp_after, clean_after)
                loss = loss + cfg.ds_coeff * ds
                logs["ds_mse"] = ds.item()
        else:
            out = sae(x, grad=g)
        mse = losses.mse_loss(out.x_hat, x)
        if not e2e:
            loss = loss + mse
        if cfg.sae == "relu":
            loss = loss + cfg.sparsity * losses.sparsity_loss(out.c, x.shape[-1], cfg.sparsity_p)
        elif cfg.auxk_coeff > 0 and bool(dead.any()):
            aux = losses.auxk_loss(
                x - out.x_hat.detach(), out.pre, sae.decoder_directions(), dead, sae.cfg.n_aux
            )
            loss = loss + cfg.auxk_coeff * aux
        logs["mse"] = mse.item()
        logs["l0"] = (out.c != 0).float().sum(-1).mean().item()
        return loss, logs


# --- timing --------------------------------------------------------------------------------------


def max_rss_mib() -> float:
    """The process's max RSS so far (a high-water mark: it never goes down)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def time_paths(paths: dict, batches, cfg: TrainConfig, site, d_model, args, device) -> dict:
    """Train one fresh SAE per path (the same seeded init) with `paths[name](tokens, sae) -> loss`
    on the same batches. The paths take turns every step (in alternating order) so that they
    share whatever else the machine is doing; the steps after `args.warmup_steps` are timed."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else lambda: None
    state = {}
    for name in paths:
        torch.manual_seed(args.seed)
        sae = SAE(cfg.sae_config(str(site), d_model)).to(device)
        opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
        state[name] = dict(sae=sae, opt=opt, time=0.0, peak=0, step_peak=0, first_loss=None)
    for i, tokens in enumerate(batches):
        for name in list(paths)[:: 1 if i % 2 == 0 else -1]:
            st, sae = state[name], state[name]["sae"]
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                resident = torch.cuda.memory_allocated(device)
            sync()
            t0 = time.perf_counter()
            loss = paths[name](tokens, sae)
            if st["first_loss"] is None:
                st["first_loss"] = loss.item()
            st["opt"].zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_parallel_decoder_grad_()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
            st["opt"].step()
            sae.normalize_decoder_()
            sync()
            if i >= args.warmup_steps:
                st["time"] += time.perf_counter() - t0
            if cuda:
                peak = torch.cuda.max_memory_allocated(device)
                st["peak"] = max(st["peak"], peak)
                st["step_peak"] = max(st["step_peak"], peak - resident)
    n_tok = args.steps * batches[0].numel()
    res = {}
    for name, st in state.items():
        res[name] = dict(
            tok_s=n_tok / st["time"],
            ms_step=1000 * st["time"] / args.steps,
            first_loss=st["first_loss"],
        )
        if cuda:  # absolute peak (both model copies resident) and the step's own peak above it
            res[name] |= dict(peak_mib=st["peak"] / 2**20, step_peak_mib=st["step_peak"] / 2**20)
    return res


def paths(lm, plain, site, cfg: TrainConfig, dead: torch.Tensor) -> dict:
    """The two implementations of one step's loss, as `(tokens, sae) -> loss`."""
    torch_step = TorchStep(plain, site, cfg)
    return {
        "nnsight": lambda tokens, sae: train_step(lm, tokens, {site: sae}, cfg, {site: dead})[0],
        "torch": lambda tokens, sae: torch_step(tokens, sae, dead)[0],
    }


def parse_combos(text: str | None) -> list[tuple[str, str]]:
    if not text:
        return [(s, loss) for s in SAE_KINDS for loss in LOSSES]
    combos = []
    for item in text.split(","):
        sae, _, loss = item.strip().partition(":")
        if sae not in SAE_KINDS or loss not in LOSSES:
            raise SystemExit(
                f"bad combo {item!r}: use sae:loss with sae in {SAE_KINDS}, "
                f"loss in {LOSSES}, e.g. relu:local,gtopk:e2e"
            )
        combos.append((sae, loss))
    return combos


def make_cfg(sae: str, loss: str, args) -> TrainConfig:
    ds = loss == "e2e+ds"
    return TrainConfig(
        sites=(args.site,),
        sae=sae,
        loss=loss,
        dict_ratio=args.dict_ratio,
        k=args.k if sae != "relu" else None,
        sparsity=1.0,
        kl_coeff=0.5 if ds else 1.0,
        ds_coeff=2.5 if ds else 0.0,
        batch_size=args.batch_size,
        seed=args.seed,
    )


def table(rows: list[dict]) -> str:
    """Plain-text table of the per-combo rows (memory columns as measured: GPU or RSS)."""
    cols = [
        ("sae", "sae", "{}"),
        ("loss", "loss", "{}"),
        ("tok/s nnsight", "nnsight_tok_s", "{:.0f}"),
        ("tok/s torch", "torch_tok_s", "{:.0f}"),
        ("ms/step nnsight", "nnsight_ms_step", "{:.1f}"),
        ("ms/step torch", "torch_ms_step", "{:.1f}"),
        ("overhead %", "overhead_pct", "{:+.1f}"),
        ("overhead ms", "overhead_ms", "{:+.1f}"),
    ]
    if "max_rss_mib" in rows[0]:
        cols.append(("max RSS so far MiB", "max_rss_mib", "{:.0f}"))
    else:
        cols += [
            ("GPU peak MiB nnsight", "nnsight_peak_mib", "{:.0f}"),
            ("torch", "torch_peak_mib", "{:.0f}"),
            ("step MiB nnsight", "nnsight_step_peak_mib", "{:.1f}"),
            ("torch", "torch_step_peak_mib", "{:.1f}"),
        ]
    cols += [("loss step 1", "first_loss", "{:.5g}"), ("|dloss|", "loss_abs_diff", "{:.1e}")]
    cells = [[h for h, _, _ in cols]] + [[f.format(r[k]) for _, k, f in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="storyworld", help="storyworld, a hub id or a local HF dir")
    p.add_argument("--site", default="resid_pre.3")
    p.add_argument("--data", default="storyworld", help="token_dataset source")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-ctx", type=int, default=None, help="default: the model's n_ctx")
    p.add_argument("--dict-ratio", type=float, default=8.0)
    p.add_argument("--k", type=int, default=16, help="topk / gtopk active latents")
    p.add_argument("--steps", type=int, default=20, help="timed steps per combo and path")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before them")
    p.add_argument(
        "--dead-frac",
        type=float,
        default=0.0,
        help="fraction of latents marked dead for AuxK (topk/gtopk); a fresh run has "
        "none, a long one some",
    )
    p.add_argument("--combos", default=None, help="e.g. relu:local,gtopk:e2e (default: all 9)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.json"))
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 0 or args.batch_size < 1:
        raise SystemExit("need --steps >= 1, --warmup-steps >= 0, --batch-size >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    combos = parse_combos(args.combos)
    device = torch.device(args.device)

    lm = load_model(args.model, device=str(device))
    # A second, untouched copy of the same weights: nnsight replaces the `forward` of every
    # module of `lm._module` with its controller, so that one is not plain torch.
    plain = AutoModelForCausalLM.from_pretrained(
        lm._module.name_or_path,
        dtype=lm._module.dtype,
        attn_implementation=lm._module.config._attn_implementation,
    )
    plain = plain.to(device).eval().requires_grad_(False)
    info = model_info(lm)
    site = parse_site(args.site, info["n_layers"])
    n_ctx = args.n_ctx or info["n_ctx"]
    n_batches = args.warmup_steps + args.steps
    data = token_dataset(
        args.data, lm.tokenizer, n_ctx, n_tokens=n_batches * args.batch_size * n_ctx
    )
    if len(data) < n_batches * args.batch_size:
        raise SystemExit(f"{args.data!r} gave {len(data)} rows; need {n_batches * args.batch_size}")
    batches = list(data.tokens[: n_batches * args.batch_size].to(device).split(args.batch_size))
    d_model = info["d_model"]

    cuda = device.type == "cuda"
    keys = ("model", "site", "data", "batch_size", "steps", "warmup_steps", "dict_ratio", "k")
    settings = dict(
        device=str(device),
        gpu=torch.cuda.get_device_name(device) if cuda else None,
        cpu=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        python=platform.python_version(),
        **{m.__name__: m.__version__ for m in (torch, nnsight, transformers)},
        **{key: getattr(args, key) for key in keys + ("dead_frac", "seed")},
        n_ctx=n_ctx,
        tokens_per_step=args.batch_size * n_ctx,
        d_model=d_model,
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        memory="CUDA max_memory_allocated per path (MiB): absolute (both model copies resident) "
        "and the step's peak above what was allocated before it"
        if cuda
        else "process max RSS so far (MiB; a high-water mark, both model copies loaded)",
    )
    print(json.dumps(settings), flush=True)

    rows = []
    for sae_kind, loss_kind in combos:
        cfg = make_cfg(sae_kind, loss_kind, args)
        d_sae = cfg.sae_config(str(site), d_model).d_sae
        gen = torch.Generator().manual_seed(args.seed)
        dead = (torch.rand(d_sae, generator=gen) < args.dead_frac).to(device)
        res = time_paths(
            paths(lm, plain, site, cfg, dead), batches, cfg, site, d_model, args, device
        )
        nn, th = res["nnsight"], res["torch"]
        row = dict(sae=sae_kind, loss=loss_kind, d_sae=d_sae)
        for name, r in res.items():
            row |= {f"{name}_{k}": v for k, v in r.items() if k != "first_loss"}
        row |= dict(
            overhead_pct=(nn["ms_step"] / th["ms_step"] - 1) * 100,
            overhead_ms=nn["ms_step"] - th["ms_step"],
            first_loss=nn["first_loss"],
            loss_abs_diff=abs(nn["first_loss"] - th["first_loss"]),
        )
        if not cuda:
            row["max_rss_mib"] = max_rss_mib()
        rows.append(row)
        print(
            f"{sae_kind}:{loss_kind}  nnsight {nn['ms_step']:.1f} ms/step, torch "
            f"{th['ms_step']:.1f} ms/step, |dloss| {row['loss_abs_diff']:.1e}",
            flush=True,
        )

    print(
        f"\n{args.model} {site}, batch {args.batch_size} x {n_ctx}, {args.steps} timed steps "
        f"(+{args.warmup_steps} warmup), {device}, {settings['threads']} threads"
    )
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
