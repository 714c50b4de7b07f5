"""Training SAEs on a frozen model: one step, then the loop, then `train` / `train_many`.

A step is one clean pass and, for objectives that splice the SAE in, one spliced pass through
nnsight (`saelab.core.passes`). The loss is the sum of weighted named terms: the objective's
(`saelab.core.objectives`: MSE, KL, downstream MSE) and each SAE's own (`SAE.loss_terms`:
sparsity, AuxK, L0). ARCHITECTURE.md draws the data flow of a step. The config lives in
`saelab.core.config`, the run folder and checkpoints in `saelab.core.checkpoint`.

    cfg = TrainConfig(sites=("resid_pre.3",), sae=SAEConfig.create(architecture="topk", k=16),
                      loss="e2e")
    run = train(lm, data, cfg, "outputs/x")
"""

from __future__ import annotations

import json
import math
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saelab.core import losses, ranks, schedule, tracking
from saelab.core.checkpoint import CheckpointError, checkpoint_step, save_checkpoint, start_files
from saelab.core.config import TrainConfig
from saelab.core.locks import writer_lock
from saelab.core.metrics import evaluate_many
from saelab.core.models import Site, sort_sites
from saelab.core.passes import Clean, batch_positions, input_sites, spliced_pass
from saelab.core.progress import Heartbeat, duration, progress_bar
from saelab.core.progress import say as say_line
from saelab.core.sae import SAE, save_sae
from saelab.core.setup import (
    Context,
    Member,
    batches,
    check_sweep,
    context,
    member,
    shared_clean_pass,
)
from saelab.core.unembed import Streamed


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


# --- one step ------------------------------------------------------------------------------------


def compute_loss(lm, tokens, saes: dict[Site, SAE], cfg: TrainConfig, dead, acts=None, keep=None,
                 clean: Clean | None = None, obj=None, kl_scale=None):  # fmt: skip
    """One step's loss and its parts for `tokens [B, T]`; `dead` maps site -> bool mask [d_sae].

    `acts` (site -> `[B, T, d_in]`, from an activation cache) replaces the clean pass of an
    objective that needs no model; `tokens` and `lm` are then unused. `keep` (positions `[T']`)
    restricts the SAEs, their losses and the splice to those positions (`TrainConfig.
    exclude_positions`); the objective's KL is still over every position. `clean` (from
    `shared_clean_pass`) is a clean pass already run on `tokens`, shared by several SAEs. `obj`:
    the objective of this step (default `cfg.loss`; `schedule.objective_at`), `kl_scale` a
    factor on its KL coefficient (the fine-tune's balance), or a function of the step's logs
    that gives it (the switch step measures it on its own batch). Returns
    (loss, logs, outs): the weighted sum of every term, `{name: unweighted value}` plus each
    site's `mse` (in the SAE's normalised units, whatever the objective; the evaluation's is in
    raw units) and `l0`, and site -> ForwardOutput at the kept positions.
    """
    sites, obj = sort_sites(list(saes)), obj or cfg.loss
    if acts is not None:
        clean = Clean(acts, None, None, [])
    elif clean is None:
        clean = shared_clean_pass(lm, tokens, [saes], cfg, obj)
    if obj.needs_logits and clean.kl_target is None and not isinstance(clean.logits, Streamed):
        # once per batch, shared by a sweep's SAEs (streamed logits have no materialised side)
        clean.kl_target = losses.kl_target(clean.logits, in_place=True)
        clean.logits = None  # they are the target's probabilities now
    inputs = clean.seen_by_saes(keep, saes[sites[0]].dtype)  # what the SAEs see, in their dtype
    grad = inputs.grads or {}
    spliced = None
    if obj.spliced:
        later = obj.later(lm, sites)
        spliced = spliced_pass(lm, tokens, saes, clean, later, keep=keep)
        outs = spliced.outs
    else:  # each SAE reads its input site (a transcoder: another than the one it writes)
        reads = input_sites(saes)
        outs = {s: saes[s](inputs.acts[reads[s]], grad=grad.get(reads[s])) for s in sites}
    terms = obj.terms(inputs, spliced, outs, sites, saes)
    tag = (lambda s: "") if len(sites) == 1 else (lambda s: f"{s}/")
    for s in sites:  # the SAE's own terms in its own (normalised) units; act_scale 1 if unscaled
        sae, out = saes[s], outs[s]
        own = sae.loss_terms(sae.normalize(inputs.acts[s]),
                             out._replace(x_hat=sae.normalize(out.x_hat)), dead[s])  # fmt: skip
        terms |= {f"{tag(s)}{name}": term for name, term in own.items()}
    logs = {name: value.item() for name, (_, value) in terms.items()}
    for s in sites:
        if f"{tag(s)}mse" not in logs:  # in the SAE's own units, as the local objective's term,
            norm = saes[s].normalize  # so one training-curve panel compares every objective
            logs[f"{tag(s)}mse"] = losses.mse_loss(norm(outs[s].x_hat), norm(inputs.acts[s])).item()
        logs[f"{tag(s)}l0"] = outs[s].stats()[1]
    if kl_scale is not None:
        terms = schedule.scaled(terms, kl_scale(logs) if callable(kl_scale) else kl_scale)
    loss = sum((coeff * value for coeff, value in terms.values()), torch.zeros(()))
    return loss, logs, outs


def step(ctx: Context, m: Member, batch: torch.Tensor, clean: Clean | None = None,
         tokens: torch.Tensor | None = None) -> dict:  # fmt: skip
    """One optimiser step of `m` on `batch` (tokens `[B, T]`, or cached activations
    `[B, T, d_in]` with their `tokens`): the positions the SAEs see (`ctx.keep` less special
    tokens, `passes.batch_positions`), loss, backward, one all-reduce, the SAEs' before-step
    hook (e.g. removing the gradient parallel to unit decoder rows), clip, Adam, the after-step
    hook (e.g. decoder renormalisation), dead-latent counters. Returns the step's log values
    (loss first), equal on every rank. A non-finite loss stops the run before the step is taken
    (`NonFiniteLoss`). From `schedule.switch_step` on, the step trains with the fine-tune's
    objective; the first such step measures its KL scale, a `finetune` record the loop logs
    (`m.pending`) and every later step reads back from the log (`schedule.kl_scale`)."""
    cfg, state, saes = m.cfg, m.state, m.state.saes
    sites = list(saes)
    obj, scale = schedule.objective_at(cfg, state.step, ctx.n_steps), None
    if obj is not cfg.loss and cfg.finetune.balance:
        scale = schedule.kl_scale(state.log)
        if scale is None:  # the switch: MSE / KL on this batch, the same on every rank

            def scale(logs: dict) -> float:
                measured = schedule.balance_scale(logs, lambda t: ranks.mean(t, ctx.world))
                m.pending.append({"step": state.step, "kind": "finetune", "kl_scale": measured,
                                  "loss": obj.to_dict()})  # fmt: skip
                return measured

    lr = lr_at(state.step, ctx.n_steps, cfg.lr, cfg.warmup, cfg.min_lr_frac)
    for g in state.opt.param_groups:
        g["lr"] = lr
    dead = {s: v >= cfg.dead_tokens for s, v in state.since_fire.items()}
    acts = {sites[0]: batch.float()} if ctx.cache is not None else None  # fp16 caches: fp32
    tokens = tokens if acts is not None else batch
    keep = batch_positions(tokens, ctx.keep, ctx.special) if tokens is not None else ctx.keep
    tokens = None if acts is not None else tokens
    loss, logs, outs = compute_loss(ctx.lm, tokens, saes, cfg, dead, acts, keep, clean, obj, scale)
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    fired = [outs[s].stats()[0] for s in sites]
    scalars = torch.tensor([loss.item(), *logs.values()], dtype=torch.float64)
    scalars, fired = ranks.sync_step(state.params, scalars, fired, ctx.world)
    if not math.isfinite(float(scalars[0])):  # the same decision on every rank
        ckpt = m.last_ckpt
        where = f"{ckpt} (step {checkpoint_step(ckpt)})" if ckpt and ckpt.exists() else "none"
        raise NonFiniteLoss(f"loss is {float(scalars[0])} at step {state.step}; stopped. Last "
                            f"good checkpoint: {where}")  # fmt: skip
    for sae in saes.values():
        sae.before_step_()
    if cfg.grad_clip > 0:  # 0 means no clipping, not a zero gradient
        torch.nn.utils.clip_grad_norm_(state.params, cfg.grad_clip)
    state.opt.step()
    n_tok = outs[sites[0]].stats()[2] * ctx.world.size  # global tokens the SAEs saw this step
    for s, f in zip(sites, fired, strict=True):
        saes[s].after_step_(outs[s])
        state.since_fire[s] = torch.where(f, 0, state.since_fire[s] + n_tok)
    state.step += 1
    return {"loss": float(scalars[0]), "lr": lr} | dict(
        zip(logs, scalars[1:].tolist(), strict=True))  # fmt: skip


# --- the loop ------------------------------------------------------------------------------------


def record(ctx: Context, m: Member, logs: dict, tokens_per_s: float) -> None:
    """Add a step's `logs` to `m`'s running sums; every `log_every` steps (and at the last, and
    before a fine-tune switches objective) write a train record holding their mean: one batch in
    `log_every` would be mostly batch noise to a plateau test."""
    lr = logs.pop("lr")
    for k, v in logs.items():
        m.sums[k] = m.sums.get(k, 0.0) + v
    m.n_summed += 1
    # also at the last step, and at the last before a fine-tune: one objective per record
    ends = (ctx.n_steps, schedule.switch_step(m.cfg, ctx.n_steps))
    if m.state.step % m.cfg.log_every == 0 or m.state.step in ends:
        means = {k: v / m.n_summed for k, v in m.sums.items()}
        m.sums, m.n_summed = {}, 0
        warn_if_diverging(m, means["loss"])
        m.log({"step": m.state.step, "kind": "train", "loss": means.pop("loss"), "lr": lr}
              | means | {"tokens_per_s": tokens_per_s})  # fmt: skip


DIVERGED = 1e3  # a train record's loss this many times its first one: diverging


def warn_if_diverging(m: Member, loss: float) -> None:
    """Warn once when `m`'s loss has grown past DIVERGED x its first record's: a run that
    diverges without going non-finite (MSE 2.6e32) would otherwise finish and save quietly."""
    if m.first_loss is None:
        m.first_loss = loss
    elif not m.warned_diverging and loss > DIVERGED * abs(m.first_loss):
        m.warned_diverging = True
        warnings.warn(f"loss {loss:.3g} at step {m.state.step} is over {DIVERGED:g}x its first "
                      f"value {m.first_loss:.3g}: the run is diverging (lr={m.cfg.lr:g}; try a "
                      "lower lr or grad_clip)", stacklevel=2)  # fmt: skip


def log_evaluations(ctx: Context, members: list[Member]) -> None:
    """Evaluate each of `members` (`metrics.evaluate_many`: those with the same eval settings
    share each batch's clean pass, and each record equals the run's own evaluation) and log it.
    On a cache without a model (`ctx.lm` None) the cache is the source: SAE-only metrics."""
    groups: dict[tuple, list[Member]] = {}
    for m in members:
        groups.setdefault((m.cfg.eval_tokens, m.cfg.batch_size, m.cfg.alive_tokens), []).append(m)
    source, data = (ctx.cache, None) if ctx.lm is None else (ctx.lm, ctx.eval_data)
    for (n_tokens, batch_size, alive_tokens), group in groups.items():
        sets = [{str(s): sae for s, sae in m.state.saes.items()} for m in group]
        reps = evaluate_many(source, sets, data, n_tokens, batch_size, ctx.excluded, alive_tokens,
                             exclude_tokens=ctx.data_record.get("excluded_tokens", ()))  # fmt: skip
        for m, rep in zip(group, reps, strict=True):
            m.log({"step": m.state.step, "kind": "eval", **rep})


def checkpoint(ctx: Context, members: list[Member], final: bool = False) -> None:
    """Save the checkpoint of each member due one (every `checkpoint_every` steps, or `final`)."""
    for m in members:
        every = m.cfg.checkpoint_every
        if m.out is not None and (final or (every and m.state.step % every == 0)):
            save_checkpoint(m.out / "checkpoint.pt", m.state, m.cfg, ctx.data_fp,
                            ctx.facts.get("model_fp"))  # fmt: skip
            m.last_ckpt = m.out / "checkpoint.pt"


def loop(ctx: Context, members: list[Member], start: int, progress: bool) -> None:
    """Steps `start`..`n_steps`: one batch and one shared clean pass, one `step` per member,
    their logs, due evaluations, then due checkpoints (which hold the log with them)."""
    cfg0, n_steps, w = members[0].cfg, ctx.n_steps, ctx.world
    obj = cfg0.loss.name + (f"→{cfg0.finetune.loss.name}" if cfg0.finetune else "")
    desc = (f"{obj}/{cfg0.sae.architecture}" if len(members) == 1
            else f"{len(members)} SAEs ({obj})")  # fmt: skip
    say = progress and w.main
    n_tok_step = cfg0.batch_size * ctx.data.n_ctx  # global: batch_size is the global batch
    _say(say, f"training {desc}: {n_steps - start} steps of {n_tok_step:,} tokens"
              + (f" (from step {start})" if start else ""))  # fmt: skip
    bar = progress_bar(say, total=n_steps, initial=start, desc=desc)
    beat = Heartbeat(desc, n_steps, "steps", n_tok_step, start, enabled=say and bar.disable)
    data, t0 = batches(ctx.data, cfg0, start=start), time.time()
    # a cache's rows come with their tokens, in the same order, for the special-token positions
    rows = (batches(ctx.cache.token_dataset(), cfg0, start=start)
            if ctx.cache is not None and ctx.special is not None else None)  # fmt: skip
    for i in range(start, n_steps):
        batch = ranks.shard(next(data), w).to(ctx.device)
        tokens = ranks.shard(next(rows), w).to(ctx.device) if rows is not None else None
        clean = None
        if len(members) > 1 and ctx.cache is None:  # members share the schedule (setup.SHARED)
            clean = shared_clean_pass(ctx.lm, batch, [m.state.saes for m in members], cfg0,
                                      schedule.objective_at(cfg0, i, n_steps))  # fmt: skip
        for m in members:
            try:
                logs = step(ctx, m, batch, clean, tokens)
            except NonFiniteLoss:
                bar.close()
                raise
            tps = (i + 1 - start) * n_tok_step / (time.time() - t0 + 1e-9)
            if not m.started:
                begin(ctx, m)
            for rec in m.pending:  # the fine-tune's switch record, once the run's files exist
                m.log(rec)
            m.pending.clear()
            record(ctx, m, logs, tps)
            if len(members) == 1:
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()
                                 if "l0" in k or k in ("kl", "mse")})  # fmt: skip
        log_evaluations(ctx, [m for m in members if m.cfg.eval_every and i + 1 < n_steps
                       and (i + 1) % m.cfg.eval_every == 0])  # fmt: skip
        checkpoint(ctx, members)
        bar.update()
        beat.tick(i + 1)
        if i + 1 - start == 5 and n_steps - start >= 20:
            rate = 5 / (time.time() - t0 + 1e-9)
            _say(say, f"{desc}: {n_tok_step * rate:,.0f} tokens/s, "
                      f"ETA {duration((n_steps - i - 1) / rate)}")  # fmt: skip
    bar.close()
    elapsed = time.time() - t0
    rate = (n_steps - start) * n_tok_step / (elapsed + 1e-9)
    _say(say, f"{desc}: {n_steps - start} steps in {duration(elapsed)} ({rate:,.0f} tokens/s)")


def begin(ctx: Context, m: Member) -> None:
    """Write `m`'s run files (`checkpoint.start_files`, and its tracked runs' ids), once."""
    if m.out is not None:
        start_files(m.out, m.cfg, m.state.log, ctx.data_record, ctx.overwrite)
        if m.tracked:
            tracking.save_ids(m.out, m.tracked)
    m.started = True


def _say(enabled: bool, text: str) -> None:
    """A progress line on stdout (under `make run` it reaches the terminal; ARCHITECTURE.md)."""
    if enabled:
        say_line(text)


# --- train and train_many ------------------------------------------------------------------------


def train(lm, data, cfg: TrainConfig, out_dir: str | Path | None = None, resume: bool = False,
          eval_data=None, progress: bool = True, overwrite: bool = False,
          log_to=None) -> Run:  # fmt: skip
    """Train one SAE per site of `cfg` on `data` through the frozen `lm`; tokens `[B, n_ctx]`.

    `data` is a TokenDataset, or an `ActivationCache` (`saelab.core.cache`: SAEs whose objective
    needs no model, from stored activations `[B, n_ctx, d_in]`, same row order, same result; `lm`
    may then be None and the evaluation reports only the SAE's own metrics). SAEs live on the
    model's device. Writes `out_dir/{metrics.jsonl, checkpoint.pt, train_config.json,
    saes/<site>/}`. With `resume=True` it continues from `out_dir/checkpoint.pt` and ends where
    an uninterrupted run would. Evaluations (`saelab.core.metrics.evaluate`) use `eval_data`
    (default: `data`, or a cache's tokens). Under torch.distributed (`saelab.core.distributed`)
    each rank trains on its slice of every global batch of `cfg.batch_size` rows and only rank 0
    writes. The returned SAEs are in eval mode.

    Nothing finished is lost: an `out_dir` that holds `saes/` or `checkpoint.pt` is refused
    unless `resume=True` (continue it; refused if it holds SAEs but no checkpoint) or
    `overwrite=True` (replace it). `train_config.json` and `metrics.jsonl` are written only
    once the first step has succeeded, and a resume checks that the data is the same (its
    token fingerprint).

    `log_to`: "wandb", "tensorboard", both, or their options (`saelab.core.tracking`): every
    record of `metrics.jsonl` also goes there, with the config; a resume continues the same
    tracked run. It is not part of the config: watching a run does not change it.
    """
    return train_many(lm, data, [cfg], [out_dir], resume, eval_data, progress, overwrite,
                      log_to)[0]  # fmt: skip


def train_many(lm, data, cfgs: list[TrainConfig], out_dirs: list | None = None,
               resume: bool = False, eval_data=None, progress: bool = True,
               overwrite: bool = False, log_to=None) -> list[Run]:  # fmt: skip
    """Train several SAE configs on the same batches from one clean pass per batch (a sweep).

    `cfgs` share `setup.SHARED` (sites, objective, batch size, token budget, seed, excluded
    positions) and may differ in anything else (the SAE, lr, the objective's coefficients). Each
    batch's clean pass runs once for all of them: for local objectives that is all the model
    work, for e2e ones each SAE still runs its own spliced pass, on the shared clean logits (and
    dL/dx). Each config gets exactly the run `train(lm, data, cfg, out_dir)` would give (same
    init, batches and steps; tests/test_train.py), with its own `out_dirs[i]`, files, checkpoint
    and resume. Returns one `Run` per config. `log_to` as `train`'s: one tracked run per config,
    grouped as one sweep.
    """
    cfgs = list(cfgs)
    out_dirs = list(out_dirs) if out_dirs is not None else [None] * len(cfgs)
    check_sweep(cfgs, out_dirs)
    options = tracking.trackers(log_to)  # bad names refused before any work
    if any(o.name == "tensorboard" and o.log_dir is None for o in options) and None in out_dirs:
        raise ValueError("log_to='tensorboard' writes to <out_dir>/tensorboard: give every run "
                         "an out_dir, or pass TensorBoard(log_dir=...)")  # fmt: skip
    with ExitStack() as held:  # one writer per out_dir (rank 0 writes): core/locks.py
        for out in out_dirs if ranks.world().main else []:
            if out is not None:
                held.enter_context(writer_lock(out, "train"))
        return _sweep(lm, data, cfgs, out_dirs, resume, eval_data, progress, overwrite, options)


def _sweep(lm, data, cfgs, out_dirs, resume, eval_data, progress, overwrite,
           options=()) -> list[Run]:  # fmt: skip
    """`train_many`'s body, run while it holds its out_dirs' locks."""
    ctx = context(lm, data, cfgs, out_dirs, eval_data, resume, overwrite)
    members = [member(ctx, cfg, out, resume) for cfg, out in zip(cfgs, out_dirs, strict=True)]
    steps = {m.state.step for m in members}
    if len(steps) > 1:
        raise CheckpointError(f"the sweep's checkpoints stand at different steps {sorted(steps)}; "
                              "resume its runs separately with train()")  # fmt: skip
    try:
        if options and ctx.world.main:  # only rank 0 tracks, as only rank 0 writes
            track(ctx, members, out_dirs, options)
        for m in members:
            for sae in m.state.saes.values():
                sae.train()
        loop(ctx, members, steps.pop(), progress)

        for m in members:  # the final evaluation, checkpoint and SAEs
            if not m.started:  # a resume of a finished checkpoint takes no step
                begin(ctx, m)
        log_evaluations(ctx, [m for m in members if not _evaluated(m)])
        checkpoint(ctx, members, final=True)
        extra = {"data": ctx.data_record}
        for m in members:
            if m.out is not None:
                for s, sae in m.state.saes.items():
                    save_sae(sae, m.out / "saes" / str(s),
                             extra={"train_config": m.cfg.to_dict()} | extra)  # fmt: skip
    except BaseException:
        for m in members:
            if m.tracked:
                m.tracked.close(ok=False)
        raise
    for m in members:
        if m.tracked:
            m.tracked.close(ok=True)
    ranks.barrier(ctx.world)  # no rank returns (and tears the group down) before rank 0 has written
    for m in members:
        for sae in m.state.saes.values():
            sae.eval()
            sae.extra = {"train_config": m.cfg.to_dict()} | extra
    return [Run({str(s): sae for s, sae in m.state.saes.items()}, m.state.log,
                Path(o) if o is not None else None, m.cfg)
            for m, o in zip(members, out_dirs, strict=True)]  # fmt: skip


def track(ctx: Context, members: list[Member], out_dirs: list, options: list) -> None:
    """Open each member's tracked runs (`saelab.core.tracking`): named by its folder, grouped
    by the folders' parent when a sweep has several, with its config, data and model. A resumed
    member continues its tracked runs; a tracker with no run to continue (a fresh run, or one
    added on resume) gets the records the member holds already (the activation scale, the
    decoder bias, and on resume everything up to the checkpoint)."""
    outs = [Path(o) if o is not None else None for o in out_dirs]
    parents = {o.parent.name for o in outs if o is not None}
    group = (parents.pop() if len(parents) == 1 else f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
             ) if len(members) > 1 else None  # fmt: skip
    facts = json.loads(json.dumps(ctx.facts, default=str))
    for i, (m, out) in enumerate(zip(members, outs, strict=True)):
        name = out.name if out is not None else f"{m.cfg.loss.name}-{m.cfg.sae.architecture}-{i}"
        config = m.cfg.to_dict() | {"data": ctx.data_record, "model": facts}
        resumed = m.last_ckpt is not None  # restored from its checkpoint (`setup.member`)
        m.tracked = tracking.open_run(options, out, name, config, group, resumed, m.state.step)
        for rec in m.state.log:  # what a new tracked run has not seen (a resumed one has)
            m.tracked.log(rec, only_new=True)


def _evaluated(m: Member) -> bool:
    last = m.state.log[-1] if m.state.log else {}
    return last.get("kind") == "eval" and last["step"] == m.state.step
