"""Training SAEs on a frozen model: one config, one step function, one loop.

Each step is one clean pass and (for e2e losses) one spliced pass through nnsight
(`saelab.passes`):

- `local`: stop the clean pass after the last site; each SAE reconstructs its own clean
  activation (MSE + sparsity), Braun et al. 2024 §2.1 baseline.
- `e2e`: clean logits under no_grad, then every SAE spliced in at once; loss is
  KL(P_clean || P_sae) + sparsity (Braun et al. 2024 §2.2).
- `e2e+ds`: e2e plus MSE between spliced and clean residual streams at every later layer
  (Braun et al. 2024 §2.3).

`relu` SAEs pay an Lp sparsity penalty; `topk`/`gtopk` SAEs fix L0 = k and add AuxK for dead
latents (Gao et al. 2024 §A.2); `gtopk` gets dL/dx from the clean pass (Olmo et al. 2024 §3).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from saelab import losses
from saelab.cache import ActivationCache, evaluate_cached
from saelab.models import Site, model_info, parse_site, sort_sites
from saelab.passes import Clean, clean_pass, later_sites, spliced_pass
from saelab.sae import SAE, SAEConfig, save_sae

SAE_KINDS = ("relu", "topk", "gtopk")
LOSSES = ("local", "e2e", "e2e+ds")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; validated on construction."""

    sites: tuple[str, ...] = ("resid_pre.3",)  # one or several sites (a str is accepted)
    sae: str = "relu"  # relu | topk | gtopk
    loss: str = "local"  # local | e2e | e2e+ds
    dict_ratio: float = 8.0  # d_sae = dict_ratio * d_in, unless d_sae is given
    d_sae: int | None = None
    sparsity: float = 1.0  # phi, the Lp sparsity coefficient (relu only)
    sparsity_p: float = 1.0
    k: int | None = None  # active latents per token (topk / gtopk)
    kl_coeff: float = 1.0  # e2e and e2e+ds
    ds_coeff: float = 0.0  # e2e+ds: weight of the mean downstream-layer MSE
    beta: float = 1.0  # gtopk gradient weight
    value_mode: str = "plain"  # gtopk: selected latents carry ReLU(z) or ReLU(score)
    grad_norm: str = "unit"  # gtopk: per-token unit-norm gradient
    auxk_coeff: float = 1 / 32  # topk / gtopk
    dead_tokens: int = 200_000  # a latent is dead after this many tokens without firing
    lr: float = 1e-3
    warmup: int = 50  # steps
    min_lr_frac: float = 0.1  # cosine decay ends at min_lr_frac * lr
    grad_clip: float = 10.0
    batch_size: int = 32
    n_tokens: int = 1_000_000  # training tokens (n_steps = n_tokens // (batch_size * n_ctx))
    log_every: int = 10  # steps
    eval_every: int = 0  # steps between evaluations (0: only at the end)
    eval_tokens: int = 32_768
    checkpoint_every: int = 100  # steps
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.sites, str):
            object.__setattr__(self, "sites", (self.sites,))
        object.__setattr__(self, "sites", tuple(str(parse_site(s)) for s in self.sites))
        if not self.sites:
            raise ValueError("sites is empty; give at least one site such as 'resid_pre.3'")
        _check_in("sae", self.sae, SAE_KINDS)
        _check_in("loss", self.loss, LOSSES)
        if self.sae in ("topk", "gtopk") and (self.k is None or self.k < 1):
            raise ValueError(f"sae={self.sae!r} needs k >= 1 (active latents), got k={self.k}")
        if self.d_sae is not None and self.d_sae < 1:
            raise ValueError(f"d_sae must be >= 1, got {self.d_sae}")
        if self.k is not None and self.d_sae is not None and self.k > self.d_sae:
            raise ValueError(f"k={self.k} > d_sae={self.d_sae}; k must be at most d_sae")
        for name in ("dict_ratio", "lr", "batch_size", "n_tokens", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("sparsity", "kl_coeff", "ds_coeff", "beta", "auxk_coeff", "warmup",
                     "eval_every", "checkpoint_every", "grad_clip"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.loss == "e2e+ds" and self.ds_coeff == 0:
            raise ValueError("loss='e2e+ds' needs ds_coeff > 0 (paper: kl_coeff=0.5, ds_coeff=2.5)")
        if not 0 <= self.min_lr_frac <= 1:
            raise ValueError(f"min_lr_frac must be in [0, 1], got {self.min_lr_frac}")

    def sae_config(self, site: str, d_in: int, model_name: str = "") -> SAEConfig:
        """The SAEConfig of the SAE at `site` for a model of width `d_in`."""
        d_sae = self.d_sae or int(round(self.dict_ratio * d_in))
        if self.k is not None and self.k > d_sae:
            raise ValueError(f"k={self.k} > d_sae={d_sae} (dict_ratio {self.dict_ratio} x {d_in})")
        return SAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            architecture=self.sae,
            k=self.k if self.sae != "relu" else None,
            beta=self.beta,
            value_mode=self.value_mode,
            grad_norm=self.grad_norm,
            site=site,
            hook_name=parse_site(site).hook_name,
            model_name=model_name,
        )

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown TrainConfig fields {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**d)


def _check_in(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(valid)}")


def lr_at(step: int, total: int, lr: float, warmup: int, min_frac: float) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `min_frac * lr` at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass
class Run:
    """A finished (or resumed) run: its SAEs by site name, its log, and where it lives."""

    saes: dict[str, SAE]
    log: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    cfg: TrainConfig | None = None

    @property
    def sae(self) -> SAE:
        """The SAE of a single-site run."""
        if len(self.saes) != 1:
            raise ValueError(f"run has {len(self.saes)} SAEs ({list(self.saes)}); use run.saes")
        return next(iter(self.saes.values()))


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


def train_step(
    lm,
    tokens: torch.Tensor | None,
    saes: dict[Site, SAE],
    cfg: TrainConfig,
    dead,
    acts: dict[Site, torch.Tensor] | None = None,
):
    """One step's loss and its parts for `tokens [B, T]`; `dead` maps site -> bool mask [d_sae].

    `acts` (site -> `[B, T, d_in]`, from an activation cache) replaces the clean pass of a local
    loss; `tokens` and `lm` are then unused. Returns (loss, logs, outs) where outs maps
    site -> ForwardOutput (for dead-latent counts).
    """
    sites = sort_sites(list(saes))
    gtopk = cfg.sae == "gtopk"
    later = later_sites(lm, sites) if cfg.loss == "e2e+ds" else []
    e2e = cfg.loss != "local"
    if acts is not None:
        clean = Clean(acts, None, None, [])
    else:
        clean = clean_pass(lm, tokens, sites, later, logits=e2e, grads=gtopk)
    logs: dict[str, float] = {}
    loss = torch.zeros(())
    if e2e:
        sp = spliced_pass(lm, tokens, saes, clean, later)
        outs = sp.outs
        kl = losses.kl_loss(clean.logits, sp.logits)
        loss = loss + cfg.kl_coeff * kl
        logs["kl"] = kl.item()
        if later:
            ds = losses.downstream_mse(sp.later, clean.later)
            loss = loss + cfg.ds_coeff * ds
            logs["ds_mse"] = ds.item()
    else:
        outs = {s: saes[s](clean.acts[s], grad=(clean.grads or {}).get(s)) for s in sites}
    for s in sites:
        out, x, sae = outs[s], clean.acts[s], saes[s]
        mse = losses.mse_loss(out.x_hat, x)
        if not e2e:
            loss = loss + mse
        if cfg.sae == "relu":
            loss = loss + cfg.sparsity * losses.sparsity_loss(out.c, x.shape[-1], cfg.sparsity_p)
        elif cfg.auxk_coeff > 0 and bool(dead[s].any()):
            aux = losses.auxk_loss(
                x - out.x_hat.detach(), out.pre, sae.decoder_directions(), dead[s], sae.cfg.n_aux
            )
            loss = loss + cfg.auxk_coeff * aux
        tag = "" if len(sites) == 1 else f"{s}/"
        logs[f"{tag}mse"] = mse.item()
        logs[f"{tag}l0"] = (out.c != 0).float().sum(-1).mean().item()
    return loss, logs, outs


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from (corrupt, truncated, or from another config)."""


CKPT_KEYS = ("cfg", "step", "log", "saes", "opt", "since_fire")


def _atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file beside `path`, then rename: `path` is always a whole file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact


def load_checkpoint(path: Path, cfg: TrainConfig, sites) -> dict:
    """Read and check a training checkpoint; a bad one is an error and stays on disk untouched.

    Never starts over silently: a truncated file (a disk filled up, a copy cut short) would
    otherwise throw away the run it belongs to. Tensors load on the CPU; `load_state_dict`
    copies them to the SAEs' device (and keeps Adam's step counts on the CPU, where it wants them).
    """
    hint = "it was left in place; move it away (or pass resume=False) to start the run over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError by damage type
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e}); {hint}"
        ) from e
    missing = [k for k in CKPT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}, so it is not a training "
                              f"checkpoint or is damaged; {hint}")  # fmt: skip
    if state["cfg"] != asdict(cfg):
        diff = {k: (state["cfg"].get(k), v) for k, v in asdict(cfg).items()
                if state["cfg"].get(k) != v}  # fmt: skip
        raise CheckpointError(
            f"{path} was written by a different TrainConfig; refusing to resume. "
            f"Differences (checkpoint, now): {diff}"
        )
    names = {str(s) for s in sites}
    if set(state["saes"]) != names or set(state["since_fire"]) != names:
        raise CheckpointError(f"checkpoint {path} holds sites {sorted(state['saes'])}, "
                              f"expected {sorted(names)}; {hint}")  # fmt: skip
    return state


def _facts(lm, data, cfg: TrainConfig) -> dict:
    """d_in, n_layers, the model's positions, model name and device, from `lm` or a cache."""
    cache = data if isinstance(data, ActivationCache) else None
    if cache is not None:
        cache.check_training(cfg, lm)
    if lm is None:
        if cache is None:
            raise ValueError("lm is None: only an activation cache (saelab.cache) trains without "
                             "the model; pass the model to train on tokens")  # fmt: skip
        m = cache.manifest
        return dict(d_in=m["d_in"], n_layers=m["n_layers"], n_ctx=m["model_n_ctx"],
                    model_name=m["model"], device=torch.device("cpu"))  # fmt: skip
    info = model_info(lm)
    name = getattr(lm.config, "_name_or_path", "") or info["model_type"]
    return dict(d_in=info["d_model"], n_layers=info["n_layers"], n_ctx=info["n_ctx"],
                model_name=name, device=torch.device(lm.device))  # fmt: skip


def train(
    lm,
    data,
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    eval_data=None,
    progress: bool = True,
) -> Run:
    """Train one SAE per site of `cfg` on `data` through the frozen `lm`; tokens `[B, n_ctx]`.

    `data` is a TokenDataset, or an `ActivationCache` (`saelab.cache`: local relu/topk SAEs from
    stored activations `[B, n_ctx, d_in]`, same row order, same result; `lm` may then be None
    and the evaluation reports only the SAE's own metrics). SAEs live on the model's device.
    Writes `out_dir/{metrics.jsonl, checkpoint.pt, train_config.json, saes/<site>/}`. With
    `resume=True` it continues from `out_dir/checkpoint.pt` and ends where an uninterrupted run
    would. Evaluations (`saelab.metrics.evaluate`) use `eval_data` (default: `data`, or a
    cache's tokens). Under torch.distributed (`saelab.distributed`) each rank trains on its
    slice of every global batch of `cfg.batch_size` rows and only rank 0 writes.
    """
    # imported here, not at the top, so `python -m saelab.distributed` runs a fresh module
    from saelab import distributed as dd
    from saelab.metrics import evaluate

    w = dd.world()
    facts = _facts(lm, data, cfg)
    device = facts["device"]
    cache = data if isinstance(data, ActivationCache) else None
    sites = sort_sites([parse_site(s, facts["n_layers"]) for s in cfg.sites])
    if data.n_ctx > facts["n_ctx"]:
        raise ValueError(f"data n_ctx={data.n_ctx} exceeds the model's {facts['n_ctx']} positions")
    n_steps = cfg.n_tokens // (cfg.batch_size * data.n_ctx)
    if n_steps < 1:
        raise ValueError(
            f"n_tokens={cfg.n_tokens} is less than one batch ({cfg.batch_size} x {data.n_ctx})"
        )
    if len(data) < cfg.batch_size:  # before anything is written
        raise ValueError(
            f"dataset {data.source!r} has {len(data)} rows of {data.n_ctx} tokens, fewer than one "
            f"batch of {cfg.batch_size}; give more tokens or a smaller batch_size"
        )
    dd.check_batch(cfg.batch_size, w)
    if eval_data is None and cache is not None and lm is not None:
        eval_data = cache.token_dataset()  # the tokens the activations came from
    out = Path(out_dir) if out_dir is not None else None
    torch.manual_seed(cfg.seed)
    # Built on the CPU from the seeded CPU generator, then moved: the same init on every device.
    saes = {s: SAE(cfg.sae_config(str(s), facts["d_in"], facts["model_name"])).to(device)
            for s in sites}  # fmt: skip
    params = [p for sae in saes.values() for p in sae.parameters()]
    dd.broadcast_params(params, w)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    since_fire = {s: torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device)
                  for s, sae in saes.items()}  # fmt: skip
    step, log = 0, []
    ckpt = out / "checkpoint.pt" if out is not None else None
    resuming = resume and ckpt is not None and ckpt.exists()
    if resuming:  # checked before anything is written, so a refused resume changes nothing
        state = load_checkpoint(ckpt, cfg, sites)
        for s, sae in saes.items():
            sae.load_state_dict(state["saes"][str(s)])
        opt.load_state_dict(state["opt"])
        since_fire = {s: state["since_fire"][str(s)].to(device) for s in saes}
        step, log = state["step"], state["log"]
    dd.check_same_step(step, device, w)
    writes = out is not None and w.main
    if writes:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        # a fresh run starts a fresh log; a resumed one drops the lines the stopped run wrote
        # after its checkpoint, and the temp file of a checkpoint write it was killed in
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        for tmp in out.glob(".checkpoint.pt.tmp*"):
            tmp.unlink()

    def checkpoint():
        if ckpt is None or not w.main:
            return
        state = dict(
            cfg=asdict(cfg),
            step=step,
            log=log,
            saes={str(s): sae.state_dict() for s, sae in saes.items()},
            opt=opt.state_dict(),
            since_fire={str(s): v for s, v in since_fire.items()},
        )
        _atomic_save(state, ckpt)

    def write_log(rec: dict):
        log.append(rec)
        if writes:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    def run_eval():
        named = {str(s): v for s, v in saes.items()}
        if lm is None:
            rep = evaluate_cached(named, cache, cfg.eval_tokens, cfg.batch_size)
        else:
            rep = evaluate(lm, named, eval_data or data, n_tokens=cfg.eval_tokens,
                           batch_size=cfg.batch_size)  # fmt: skip
        write_log({"step": step, "kind": "eval", **rep})

    bar = tqdm(total=n_steps, initial=step, desc=f"{cfg.loss}/{cfg.sae}",
               disable=not (progress and w.main))  # fmt: skip
    batches = _batches(data, cfg, start=step)
    t0, step0 = time.time(), step
    while step < n_steps:
        batch = next(batches)  # tokens [B, T], or activations [B, T, d_in] from a cache
        n_tok = batch.shape[0] * batch.shape[1]  # global tokens this step
        batch = dd.shard(batch, w).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, n_steps, cfg.lr, cfg.warmup, cfg.min_lr_frac)
        dead = {s: v >= cfg.dead_tokens for s, v in since_fire.items()}
        if cache is not None:
            acts = {sites[0]: batch.float()}  # fp16 caches train in fp32
            loss, logs, outs = train_step(lm, None, saes, cfg, dead, acts=acts)
        else:
            loss, logs, outs = train_step(lm, batch, saes, cfg, dead)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        fired = [(outs[s].c.detach() != 0).flatten(0, -2).any(0) for s in sites]
        scalars = torch.tensor([loss.item(), *logs.values()], dtype=torch.float64)
        scalars, fired = dd.sync_step(params, scalars, fired, w)  # one all-reduce (distributed)
        if not math.isfinite(float(scalars[0])):  # the same decision on every rank
            bar.close()
            where = f"{ckpt} (step {_ckpt_step(ckpt)})" if ckpt and ckpt.exists() else "none"
            loss_value = float(scalars[0])
            raise NonFiniteLoss(
                f"loss is {loss_value} at step {step}; stopped. Last good checkpoint: {where}"
            )
        for sae in saes.values():
            sae.remove_parallel_decoder_grad_()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        for s, f in zip(sites, fired, strict=True):
            saes[s].normalize_decoder_()
            since_fire[s] = torch.where(f, 0, since_fire[s] + n_tok)
        step += 1
        bar.update()
        if step % cfg.log_every == 0 or step == n_steps:
            logs = dict(zip(logs, scalars[1:].tolist(), strict=True))
            rec = {
                "step": step,
                "kind": "train",
                "loss": float(scalars[0]),
                "lr": opt.param_groups[0]["lr"],
            }
            tps = (step - step0) * n_tok / (time.time() - t0 + 1e-9)
            rec |= logs | {"tokens_per_s": tps}
            write_log(rec)
            bar.set_postfix(
                {k: f"{v:.3g}" for k, v in logs.items() if "l0" in k or k in ("kl", "mse")}
            )
        if cfg.eval_every and step % cfg.eval_every == 0 and step < n_steps:
            run_eval()
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            checkpoint()
    bar.close()
    if not log or log[-1].get("kind") != "eval" or log[-1]["step"] != step:
        run_eval()
    checkpoint()
    if writes:
        for s, sae in saes.items():
            save_sae(sae, out / "saes" / str(s), extra={"train_config": asdict(cfg)})
    dd.barrier(w)  # no rank returns (and tears the group down) before rank 0 has written
    return Run({str(s): sae for s, sae in saes.items()}, log, out, cfg)


def _ckpt_step(path: Path) -> int | str:
    try:
        return torch.load(path, weights_only=False)["step"]
    except Exception:  # a report, not a load: never mask the original error
        return "?"


def _batches(data, cfg: TrainConfig, start: int = 0):
    """Endless shuffled global batches (a new seeded order each epoch), skipping `start`.

    Works on a TokenDataset (tokens `[B, T]`) and an ActivationCache (activations `[B, T, d]`),
    which share the row order, so cached and live training see the same rows at every step.
    """
    epoch, i = 0, 0
    while True:
        for b in data.batches(cfg.batch_size, shuffle=True, seed=cfg.seed + epoch):
            if i >= start:
                yield b
            i += 1
        epoch += 1
