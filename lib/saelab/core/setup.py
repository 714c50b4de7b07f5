"""What a run needs before its first step: the model's facts, the step count, seeded SAEs and
Adam, activation scales, the batch order, a sweep's shared clean pass and its evaluations, and
the two records the loop works on: `Context` (what every member's step shares) and `Member`
(one run of a sweep and its state).

`saelab.core.training` reads top to bottom without these; each is small and tested through it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saelab.core import ranks, schedule
from saelab.core.cache import ActivationCache
from saelab.core.checkpoint import (
    TrainState,
    append_log,
    check_out_dir,
    data_fingerprint,
    describe_data,
    load_checkpoint,
    restore,
)
from saelab.core.config import TrainConfig
from saelab.core.models import (
    Site,
    check_rows_fit,
    model_fingerprint,
    model_info,
    model_name,
    parse_site,
    sort_sites,
)
from saelab.core.passes import (
    Clean,
    batch_positions,
    clean_pass,
    excluded_positions,
    input_sites,
    read_sites,
    sae_positions,
    select,
    special_ids,
)
from saelab.core.ranks import World
from saelab.core.sae import SAE, load_sae
from saelab.core.tracking import Tracked

# what every config of a `train_many` sweep shares: they fix the batches and the clean pass
SHARED = {
    "sites": lambda c: c.sites,
    "loss": lambda c: c.loss.name,  # the objective; its coefficients may differ
    # the fine-tune's objective and switch step (its coefficients and balance may differ)
    "finetune": lambda c: c.finetune and (c.finetune.loss.name, c.finetune.fraction),
    "batch_size": lambda c: c.batch_size,
    "n_tokens": lambda c: c.n_tokens,
    "seed": lambda c: c.seed,
    "exclude_positions": lambda c: c.exclude_positions,
}


def check_sweep(cfgs: list[TrainConfig], out_dirs: list) -> None:
    """Refuse a sweep whose configs differ in a shared field, or whose out_dirs repeat."""
    if not cfgs:
        raise ValueError("train_many needs at least one TrainConfig")
    if len(out_dirs) != len(cfgs):
        raise ValueError(f"{len(cfgs)} configs but {len(out_dirs)} out_dirs")
    for name, get in SHARED.items():
        values = [get(c) for c in cfgs]
        if any(v != values[0] for v in values):
            raise ValueError(
                f"train_many: every config must share {name} (it fixes the batches and the clean "
                f"pass), got {values}; train configs that differ in it separately"
            )
    named = [str(Path(o).resolve()) for o in out_dirs if o is not None]
    if len(set(named)) != len(named):
        raise ValueError(f"train_many: out_dirs repeat: {named}")


def model_facts(lm, data, cfg: TrainConfig) -> dict:
    """d_in, n_layers, the model's positions, model name and device, from `lm` or a cache."""
    cache = data if isinstance(data, ActivationCache) else None
    if cache is not None:
        cache.check_training(cfg, lm)
    if lm is None:
        if cache is None:
            raise ValueError("lm is None: only an activation cache (saelab.core.cache) trains "
                             "without the model; pass the model to train on tokens")  # fmt: skip
        m = cache.manifest
        return dict(d_in=m["d_in"], n_layers=m["n_layers"], n_ctx=m["model_n_ctx"],
                    model_name=m["model"], device=torch.device("cpu"),
                    model_fp=m.get("model_fingerprint"))  # fmt: skip
    info = model_info(lm)
    name, path = model_name(lm)
    return dict(d_in=info["d_model"], n_layers=info["n_layers"], n_ctx=info["n_ctx"],
                model_name=name, model_path=path, device=torch.device(lm.device),
                model_fp=model_fingerprint(lm))  # fmt: skip


def n_steps_of(cfg: TrainConfig, data, facts: dict) -> int:
    """Optimiser steps of the run; refuses data that cannot fill one batch."""
    check_rows_fit(data.n_ctx, facts["n_ctx"])
    n_steps = cfg.n_tokens // (cfg.batch_size * data.n_ctx)
    if n_steps < 1:
        raise ValueError(
            f"n_tokens={cfg.n_tokens} is less than one batch ({cfg.batch_size} x {data.n_ctx})"
        )
    if len(data) < cfg.batch_size:
        raise ValueError(
            f"dataset {data.source!r} has {len(data)} rows of {data.n_ctx} tokens, fewer than one "
            f"batch of {cfg.batch_size}; give more tokens or a smaller batch_size"
        )
    return n_steps


def init_sae(sae: SAE, path: str) -> None:
    """Load the weights (and activation scale) of the SAE at `path` into `sae`, checking fit."""
    src = load_sae(path, device=sae.device)
    mine, theirs = sae.cfg, src.cfg
    # pre_subtract_b_dec changes what the weights compute (sparsify and many SAELens SAEs set it)
    for name in ("architecture", "d_in", "d_sae", "normalize_activations", "pre_subtract_b_dec"):
        if getattr(mine, name) != getattr(theirs, name):
            raise ValueError(
                f"init_from={path!r}: its {name} is {getattr(theirs, name)!r} but this run's SAE "
                f"has {getattr(mine, name)!r}; set TrainConfig.sae to match"
            )
    if getattr(theirs, "normalize_decoder", True) != getattr(mine, "normalize_decoder", True):
        raise ValueError(f"init_from={path!r}: its decoder rows are used as stored "
                         "(normalize_decoder=False); set it in TrainConfig.sae too")  # fmt: skip
    sae.load_state_dict(src.state_dict(), strict=True)


def new_state(cfg: TrainConfig, sites: list[Site], facts: dict) -> TrainState:
    """Seeded SAEs (one per site), Adam over all their parameters, nothing fired yet."""
    torch.manual_seed(cfg.seed)
    # Built on the CPU from the seeded CPU generator, then moved: the same init on every device.
    device = facts["device"]
    saes = {s: SAE.from_config(cfg.sae_config(str(s), facts["d_in"], facts["model_name"],
                                              facts.get("model_path", ""))).to(device)
            for s in sites}  # fmt: skip
    if cfg.init_from is not None:
        (site,) = sites
        init_sae(saes[site], cfg.init_from)
    params = [p for sae in saes.values() for p in sae.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    since_fire = {s: torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device)
                  for s, sae in saes.items()}  # fmt: skip
    return TrainState(saes, opt, since_fire)


@dataclass
class ActStats:
    """What a run measures of a site's activations before training (`activation_stats`)."""

    mean_norm: float  # E||x||, for the activation scale
    mean: torch.Tensor  # [d_in] E[x], for a decoder bias from the data
    sample: torch.Tensor  # [n, d_in] the first SAMPLE activations, for the geometric median


SAMPLE = 8192  # activations kept for the geometric median (openai/sparse_autoencoder: a sample)


@torch.no_grad()
def estimate_act_scales(lm, data, saes: dict, keep, batch_size: int, n_tokens: int = 2**16,
                        known: dict | None = None, special=None) -> dict:  # fmt: skip
    """Set each normalising SAE's `act_scale` from the mean norm of the activations it reads (its
    input site: for a transcoder the MLP's input, not the site it writes).

    Reads the first ~`n_tokens` rows of `data` in stored order (the same on every rank), at the
    kept positions: E||x * act_scale|| = sqrt(d_in) (SAELens' "expected_average_only_in").
    `known` ({site: ActStats}, filled in here) carries what a sweep has already measured on the
    same data, positions and batch size, so its members share one pass. Returns {site name:
    mean raw norm} for the log.
    """
    sites = [s for s, sae in saes.items() if sae.cfg.normalize_activations != "none"]
    reads = input_sites(saes)  # a transcoder's scale is its input's: it works on x * act_scale
    stats = site_stats(lm, data, saes, list(dict.fromkeys(reads[s] for s in sites)), keep,
                       batch_size, n_tokens, known, special)  # fmt: skip
    for s in sites:
        saes[s].set_act_scale(stats[reads[s]].mean_norm)
    return {str(s): stats[reads[s]].mean_norm for s in sites}


@torch.no_grad()
def init_b_dec(lm, data, saes: dict, method: str, keep, batch_size: int, n_tokens: int = 2**16,
               known: dict | None = None, special=None) -> dict:  # fmt: skip
    """Set each SAE's decoder bias from its site's activations (`method`: "mean" or
    "geometric_median", in the SAE's units: times its act_scale), as openai/sparse_autoencoder
    and SAELens do before training; "zeros" leaves it. Returns {site name: ||b_dec||} for the
    log. Call after the activation scale is set; `known` as in `estimate_act_scales`."""
    if method == "zeros":
        return {}
    stats = site_stats(lm, data, saes, list(saes), keep, batch_size, n_tokens, known, special)
    out = {}
    for s, sae in saes.items():
        raw = stats[s].mean if method == "mean" else geometric_median(stats[s].sample)
        sae.b_dec.copy_(raw.to(sae.b_dec) * sae.act_scale)
        out[str(s)] = float(sae.b_dec.norm())
    return out


def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """The point `[d]` minimising the summed distance to the rows of `x [n, d]` (Weiszfeld's
    iteration from the mean)."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - y).norm(dim=1).clamp_min(1e-12)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - y).norm() <= tol * y.norm().clamp_min(1e-12):
            return new.float()
        y = new
    return y.float()


def site_stats(lm, data, saes: dict, sites: list, keep, batch_size: int, n_tokens: int,
               known: dict | None, special=None) -> dict:  # fmt: skip
    """`activation_stats` of `sites`, taken from `known` where it has them (and added to it)."""
    known = {} if known is None else known
    todo = [s for s in sites if s not in known]
    if todo:
        device = next(iter(saes.values())).device
        known.update(activation_stats(lm, data, todo, keep, batch_size, n_tokens, device, special))
    return known


def activation_stats(lm, data, sites: list[Site], keep, batch_size: int, n_tokens: int,
                     device=None, special=None) -> dict[Site, ActStats]:  # fmt: skip
    """The mean norm, mean and first SAMPLE activations of each site over the first ~`n_tokens`
    rows of `data` (a TokenDataset: one clean pass per batch; an ActivationCache: its rows), at
    `keep` less the positions holding a token in `special` (`passes.batch_positions`)."""
    tokens = data.token_dataset().tokens if isinstance(data, ActivationCache) else data.tokens
    n_rows = max(1, min(len(data), n_tokens // data.n_ctx))
    sums, count = dict.fromkeys(sites, 0.0), 0
    means = dict.fromkeys(sites, 0.0)
    samples: dict = {s: [] for s in sites}
    for i in range(0, n_rows, batch_size):
        rows = torch.arange(i, min(i + batch_size, n_rows))
        if isinstance(data, ActivationCache):
            acts = {sites[0]: data.rows(rows)}
        else:
            acts = clean_pass(lm, data.tokens[rows].to(device), sites).acts
        seen = batch_positions(tokens[rows], keep, special)
        for s in sites:
            x = select(acts[s], seen, torch.float32)
            sums[s] += float(x.norm(dim=-1).sum())
            flat = x.reshape(-1, x.shape[-1])
            means[s] = means[s] + flat.double().sum(0)
            if sum(len(t) for t in samples[s]) < SAMPLE:
                samples[s].append(flat[:SAMPLE].cpu())
        count += x[..., 0].numel()
    if count == 0:
        raise ValueError(f"every position of the first {n_rows} rows holds a token the SAEs "
                         f"leave out (special ids {[] if special is None else special.tolist()}): "
                         "nothing to train on; is "
                         "the text all unknown tokens? (exclude_tokens=() keeps them)")  # fmt: skip
    return {s: ActStats(sums[s] / count, (means[s] / count).float(),
                        torch.cat(samples[s])[:SAMPLE]) for s in sites}  # fmt: skip


def shared_clean_pass(lm, tokens: torch.Tensor, saes: list[dict[Site, SAE]],
                      cfg: TrainConfig, obj=None) -> Clean:  # fmt: skip
    """One clean pass on `tokens [B, T]` serving every SAE set in `saes` (one per config of a
    sweep, same sites): activations, and the logits, later residuals and dL/dx where the
    objective (`obj`, default `cfg.loss`) or any SAE needs them."""
    sites = sort_sites(list(saes[0]))
    obj = obj or cfg.loss
    later = obj.later(lm, sites) if obj.spliced else []
    grads = any(sae.needs_grad for group in saes for sae in group.values())
    return clean_pass(lm, tokens, read_sites(saes), later, logits=obj.needs_logits, grads=grads)


def batches(data, cfg: TrainConfig, start: int = 0):
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


# --- the records the loop works on --------------------------------------------------------------


@dataclass
class Member:
    """One run of a sweep: its config, folder, state, and what the loop keeps for it."""

    cfg: TrainConfig
    out: Path | None  # where it writes (None: nowhere, or not the main rank)
    state: TrainState
    last_ckpt: Path | None = None  # the last good checkpoint, named if the loss goes non-finite
    started: bool = False  # its files are written once its first step has succeeded
    sums: dict[str, float] = field(default_factory=dict)  # log values since the last record
    n_summed: int = 0
    first_loss: float | None = None  # the first train record's loss (divergence warning)
    warned_diverging: bool = False
    tracked: Tracked | None = None  # its W&B / TensorBoard runs (`saelab.core.tracking`)
    pending: list[dict] = field(default_factory=list)  # records a step made, for the loop to log

    def log(self, rec: dict) -> None:
        self.state.log.append(rec)
        if self.out is not None:
            append_log(self.out, rec)
        if self.tracked:
            self.tracked.log(rec)


@dataclass
class Context:
    """What every member's step shares: the model, the data and its facts, the positions."""

    lm: object
    data: object
    eval_data: object
    cache: ActivationCache | None
    sites: list[Site]
    device: torch.device
    n_steps: int
    excluded: tuple[int, ...]
    keep: torch.Tensor
    world: World
    data_fp: str
    data_record: dict
    overwrite: bool
    facts: dict  # d_in, n_layers, n_ctx, model name/path, device (`setup.model_facts`)
    # {site: ActStats}, measured once for every member that needs them (the members share
    # data, positions and batch size: `SHARED`)
    act_stats: dict = field(default_factory=dict)
    special: torch.Tensor | None = None  # token ids the SAEs never see (`exclude_tokens`)

    @classmethod
    def for_steps(cls, lm, sites: list[Site], facts: dict, keep: torch.Tensor | None = None,
                  n_steps: int = 10**9) -> Context:  # fmt: skip
        """A context for calling `training.step` on batches of one's own (benchmarks): no data,
        nothing written, one process; `keep` None trains on every position."""
        return cls(lm, None, None, None, sites, facts["device"], n_steps, (), keep, World(), "",
                   {}, False, facts)  # fmt: skip


def check_schedule(cfgs: list[TrainConfig], n_steps: int, n_ctx: int) -> None:
    """Refuse an evaluation smaller than one row; warn of a warmup the run never finishes."""
    for cfg in cfgs:
        if cfg.eval_tokens < n_ctx:
            raise ValueError(f"eval_tokens={cfg.eval_tokens} is less than one row of n_ctx="
                             f"{n_ctx} tokens (the evaluation would read one row anyway); give "
                             f"at least {n_ctx}")  # fmt: skip
        if cfg.warmup >= n_steps:
            warnings.warn(f"warmup={cfg.warmup} steps but the run has {n_steps}: the learning "
                          f"rate never reaches lr={cfg.lr:g}; lower warmup or raise n_tokens",
                          stacklevel=3)  # fmt: skip


def context(lm, data, cfgs: list[TrainConfig], out_dirs: list, eval_data, resume: bool,
            overwrite: bool) -> Context:  # fmt: skip
    """Check everything a sweep needs before anything is written, and gather what its steps
    share (`Context`)."""
    cfg0, w = cfgs[0], ranks.world()
    facts = [model_facts(lm, data, cfg) for cfg in cfgs][0]  # an activation cache checks each
    cache = data if isinstance(data, ActivationCache) else None
    sites = sort_sites([parse_site(s, facts["n_layers"]) for s in cfg0.sites])
    for cfg in cfgs:
        check_reads(cfg, sites, cache)
    n_steps = n_steps_of(cfg0, data, facts)
    check_schedule(cfgs, n_steps, data.n_ctx)
    ranks.check_batch(cfg0.batch_size, w)
    for obj in schedule.objectives(cfg0):
        if lm is not None and obj.spliced:
            obj.later(lm, sites)  # e.g. e2e+ds with no later layer: refused now
    if eval_data is None:
        eval_data = cache.token_dataset() if cache is not None and lm is not None else data
    excluded = excluded_positions(cfg0.exclude_positions, data)
    tokens_out = excluded_tokens(cfg0.exclude_tokens, lm, cache)
    for out in out_dirs:
        if out is not None:
            check_out_dir(Path(out), resume, overwrite)
    data_fp = data_fingerprint(data) if any(o is not None for o in out_dirs) else ""
    return Context(lm, data, eval_data, cache, sites, facts["device"], n_steps, excluded,
                   sae_positions(data, excluded, facts["device"]), w, data_fp,
                   describe_data(data) | {"excluded_positions": list(excluded),
                                          "excluded_tokens": list(tokens_out)}, overwrite,
                   facts, special=torch.tensor(tokens_out, dtype=torch.long)
                   if tokens_out else None)  # fmt: skip


def check_reads(cfg: TrainConfig, sites: list[Site], cache) -> None:
    """Refuse a run whose SAEs read a site another SAE of it writes, or (a transcoder) a site an
    activation cache, which holds the one site it stores, does not have."""
    reads = {s: cfg.sae.input_site(s) for s in sites}  # a bad transcoder site is refused here
    for s, inp in reads.items():
        if inp == s:
            continue
        if inp in sites:
            raise ValueError(f"the SAE written at {s} reads {inp}, which another SAE of this "
                             f"run replaces; train them in separate runs")  # fmt: skip
        if cache is not None:
            raise ValueError(f"architecture={cfg.sae.architecture!r} reads {inp} and writes "
                             f"{s}; an activation cache holds one site: train it from tokens "
                             "through the model")  # fmt: skip


def excluded_tokens(exclude_tokens, lm, cache) -> tuple[int, ...]:
    """The token ids the SAEs never see: `exclude_tokens`, or (None) the special tokens of the
    model's tokenizer, or of the one an activation cache recorded."""
    if exclude_tokens is not None:
        return tuple(exclude_tokens)
    if lm is not None:
        return special_ids(lm.tokenizer)
    return tuple((cache.manifest if cache is not None else {}).get("special_ids") or ())


def b_dec_method(cfg: TrainConfig, saes: dict) -> str:
    """`cfg.b_dec_init`, with "auto" resolved: "mean" for SAEs that subtract b_dec from their
    input or whose class asks for it (`SAE.b_dec_from_data`: the TopK family, as openai does),
    else "zeros"."""
    if cfg.b_dec_init != "auto":
        return cfg.b_dec_init
    sae = next(iter(saes.values()))
    return "mean" if sae.cfg.pre_subtract_b_dec or sae.b_dec_from_data else "zeros"


def member(ctx: Context, cfg: TrainConfig, out_dir, resume: bool) -> Member:
    """A sweep member's state: fresh and seeded (its activation scale estimated), or resumed
    from its checkpoint (which brings the scale)."""
    out = Path(out_dir) if out_dir is not None else None
    state = new_state(cfg, ctx.sites, ctx.facts)
    ranks.broadcast_params(state.params, ctx.world)
    ckpt = out / "checkpoint.pt" if out is not None else None
    resumed = resume and ckpt is not None and ckpt.exists()
    if resumed:
        restore(state, load_checkpoint(ckpt, cfg, ctx.sites, ctx.data_fp,
                                       ctx.facts.get("model_fp")), ckpt)  # fmt: skip
    elif cfg.init_from is None:  # an initial SAE brings its activation scale
        norms = estimate_act_scales(ctx.lm, ctx.data, state.saes, ctx.keep, cfg.batch_size,
                                    known=ctx.act_stats, special=ctx.special)  # fmt: skip
        if norms:
            state.log.append({"step": 0, "kind": "act_scale", "mean_norm": norms})
        method = b_dec_method(cfg, state.saes)
        bias = init_b_dec(ctx.lm, ctx.data, state.saes, method, ctx.keep, cfg.batch_size,
                          known=ctx.act_stats, special=ctx.special)  # fmt: skip
        if bias:
            state.log.append({"step": 0, "kind": "b_dec_init", "method": method, "norm": bias})
    ranks.check_same_step(state.step, ctx.device, ctx.world)
    return Member(cfg, out if ctx.world.main else None, state, ckpt if resumed else None)
