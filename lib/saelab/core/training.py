"""Training SAEs on a frozen model: one config, one step function, a loop read top to bottom.

A step is one clean pass and, for objectives that splice the SAE in, one spliced pass through
nnsight (`saelab.core.passes`). The loss is the sum of weighted named terms: the objective's
(`saelab.core.objectives`: MSE, KL, downstream MSE) and each SAE's own (`SAE.loss_terms`:
sparsity, AuxK, L0). ARCHITECTURE.md draws the data flow of a step.

    cfg = TrainConfig(sites=("resid_pre.3",), sae=SAEConfig(architecture="topk", k=16), loss="e2e")
    run = train(lm, data, cfg, "outputs/x")
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from saelab.core import losses
from saelab.core.cache import ActivationCache, evaluate_cached
from saelab.core.models import Site, model_info, model_name, parse_site, sort_sites
from saelab.core.objectives import OBJECTIVES, Objective, objective
from saelab.core.passes import (
    Clean,
    clean_pass,
    excluded_positions,
    kept_positions,
    sae_inputs,
    spliced_pass,
)
from saelab.core.progress import progress_bar
from saelab.core.sae import SAE, SAEConfig, architectures, check_number, is_int, save_sae

LOSSES = tuple(OBJECTIVES)


DEAD_TOKENS_CAP = 10_000_000  # sparsify's dead_feature_threshold (Gao et al. 2024 use 10M too)


def default_dead_tokens(n_tokens: int) -> int:
    """`TrainConfig.dead_tokens` when left None: min(10M, n_tokens // 10), at least 1.

    Gao et al. 2024 and sparsify call a latent dead after 10M tokens without firing, in runs of
    billions of tokens; a 10M window would flag nothing in a run of 600k tokens, so short runs use
    a tenth of their length (a latent silent for the last tenth of the run gets AuxK's gradient).
    """
    return max(1, min(DEAD_TOKENS_CAP, n_tokens // 10))


def _sae_field_names() -> set[str]:
    """Every field of every registered architecture's config."""
    from saelab.core.sae import architecture

    return {f.name for a in architectures() for f in fields(architecture(a).cfg_class)}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; validated on construction.

    `sae` is the SAE's config (`SAEConfig(architecture=..., ...)`, a dict of its fields, or an
    architecture name for its defaults); its `d_in` / `d_sae` are filled in per site. The
    pre-nesting flat form (`sae="topk", k=16, dict_ratio=8, ...`) is accepted by `from_dict`.
    """

    sites: tuple[str, ...] = ("resid_pre.3",)  # one or several sites (a str is accepted)
    sae: SAEConfig = field(default_factory=lambda: SAEConfig(architecture="relu"))
    loss: str = "local"  # an objective: local | e2e | e2e+ds
    kl_coeff: float = 1.0  # e2e and e2e+ds
    ds_coeff: float = 0.0  # e2e+ds: weight of the mean downstream-layer MSE
    # positions the SAEs leave clean and out of their losses and metrics; None: the BOS position
    # (0) when the data prepends one, else none (ARCHITECTURE.md §6)
    exclude_positions: tuple[int, ...] | None = None
    # start from a saved (or SAELens-exported) SAE instead of a fresh init: its weights, and its
    # activation scale; architecture, d_in and d_sae must match `sae` (single-site runs)
    init_from: str | None = None
    # AuxK: a latent is dead after this many tokens without firing. None: scaled to the run,
    # min(10M, n_tokens // 10) (`default_dead_tokens`: sparsify's 10M dead_feature_threshold for
    # long runs, a tenth of the run for short ones), resolved on construction, so the config and
    # train_config.json hold the number used (`dataclasses.replace` keeps it: pass None again
    # when changing n_tokens)
    dead_tokens: int | None = None
    lr: float = 1e-3
    warmup: int = 50  # steps
    min_lr_frac: float = 0.1  # cosine decay ends at min_lr_frac * lr
    grad_clip: float = 10.0
    batch_size: int = 32
    n_tokens: int = 1_000_000  # training tokens (n_steps = n_tokens // (batch_size * n_ctx))
    log_every: int = 10  # steps per train record; each holds the mean of those steps' values
    eval_every: int = 0  # steps between evaluations (0: only at the end)
    eval_tokens: int = 32_768
    # evaluations count alive / dead latents over this many SAE positions of the eval data
    # (e2e_sae's 500k window; `metrics.evaluate`), capped at the data with a warning; None: over
    # the eval tokens only
    alive_tokens: int | None = 500_000
    checkpoint_every: int = 100  # steps
    seed: int = 0

    def __new__(cls, *args, **kwargs):
        moved = sorted(set(kwargs) - {f.name for f in fields(cls)} & _sae_field_names())
        if moved:
            sae = kwargs.get("sae", "relu")
            name = sae if isinstance(sae, str) else getattr(sae, "architecture", "...")
            inner = ", ".join(f"{m}=..." for m in moved)
            raise TypeError(
                f"TrainConfig({moved[0]}=...) is an SAE field now: write "
                f"TrainConfig(sae=SAEConfig(architecture={name!r}, {inner}), ...); "
                "TrainConfig.from_dict still reads the flat form"
            )
        return object.__new__(cls)

    def __post_init__(self):
        if isinstance(self.sites, str):
            object.__setattr__(self, "sites", (self.sites,))
        object.__setattr__(self, "sites", tuple(str(parse_site(s)) for s in self.sites))
        if not self.sites:
            raise ValueError("sites is empty; give at least one site such as 'resid_pre.3'")
        sae = self.sae
        if isinstance(sae, str):
            sae = SAEConfig(architecture=sae)
        elif isinstance(sae, dict):
            sae = SAEConfig(**sae)
        elif not isinstance(sae, SAEConfig):
            raise ValueError(f"sae={sae!r} must be an SAEConfig, a dict of its fields or a name")
        object.__setattr__(self, "sae", sae)
        if self.exclude_positions is not None:
            ex = self.exclude_positions
            if isinstance(ex, int | str) or not all(is_int(p) and p >= 0 for p in ex):
                raise ValueError(f"exclude_positions={ex!r} must be None or a list of ints >= 0")
            object.__setattr__(self, "exclude_positions", tuple(sorted(set(ex))))
        if self.loss not in OBJECTIVES:
            raise ValueError(f"loss={self.loss!r} is not valid; choose one of {list(OBJECTIVES)}")
        for name in ("batch_size", "n_tokens", "log_every"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int > 0")
        if self.dead_tokens is None:
            object.__setattr__(self, "dead_tokens", default_dead_tokens(self.n_tokens))
        if self.alive_tokens is not None and (not is_int(self.alive_tokens)
                                              or self.alive_tokens < 1):  # fmt: skip
            raise ValueError(f"alive_tokens={self.alive_tokens!r} must be None or an int >= 1")
        for name in ("dead_tokens", "warmup", "eval_every", "eval_tokens", "checkpoint_every",
                     "seed"):  # fmt: skip
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ValueError(f"{name}={value!r} must be an int >= 0")
        check_number("lr", self.lr, 0.0, inclusive=False)
        for name in ("kl_coeff", "ds_coeff", "grad_clip"):
            check_number(name, getattr(self, name))
        self.objective  # noqa: B018  (the objective checks its own coefficients)
        if self.init_from is not None:
            object.__setattr__(self, "init_from", str(self.init_from))
            if len(self.sites) != 1:
                raise ValueError(f"init_from needs a single-site run, got sites={self.sites}")
        check_number("min_lr_frac", self.min_lr_frac)
        if self.min_lr_frac > 1:
            raise ValueError(f"min_lr_frac must be in [0, 1], got {self.min_lr_frac}")

    @property
    def objective(self) -> Objective:
        """The training objective named by `loss`, with its coefficients."""
        return objective(self.loss, kl_coeff=self.kl_coeff, ds_coeff=self.ds_coeff)

    def sae_config(
        self, site: str, d_in: int, model_name: str = "", model_path: str = ""
    ) -> SAEConfig:
        """The SAEConfig of the SAE at `site` for a model of width `d_in`."""
        try:
            return self.sae.for_site(d_in, site, parse_site(site).hook_name, model_name, model_path)
        except ValueError as e:
            raise ValueError(f"{e} (dict_ratio {self.sae.dict_ratio} x {d_in})") from e

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from a dict: the nested form (`"sae": {...}`) or the flat pre-nesting one.

        In the flat form (`{"sae": "topk", "k": 16, "dict_ratio": 8, ...}`, as old presets,
        `train_config.json` files and checkpoints hold) the SAE's fields are gathered into
        `sae`; fields that the architecture does not have (a relu run's `k: null`) are dropped.
        """
        d = dict(d)
        known = {f.name for f in fields(cls)}
        sae_fields = _sae_field_names()
        unknown = set(d) - known - sae_fields
        if unknown:
            raise ValueError(
                f"unknown TrainConfig fields {sorted(unknown)}; known: {sorted(known)}, and the "
                f"SAE's (under 'sae'): {sorted(sae_fields)}"
            )
        flat = {k: d.pop(k) for k in list(d) if k not in known}
        if flat or isinstance(d.get("sae", "relu"), str):
            from saelab.core.sae import architecture

            name = d.get("sae", "relu")
            own = {f.name for f in fields(architecture(name).cfg_class)}
            d["sae"] = SAEConfig(architecture=name, **{k: v for k, v in flat.items() if k in own})
        return cls(**d)


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


def train_step(
    lm,
    tokens: torch.Tensor | None,
    saes: dict[Site, SAE],
    cfg: TrainConfig,
    dead,
    acts: dict[Site, torch.Tensor] | None = None,
    keep: torch.Tensor | None = None,
    clean: Clean | None = None,
):
    """One step's loss and its parts for `tokens [B, T]`; `dead` maps site -> bool mask [d_sae].

    `acts` (site -> `[B, T, d_in]`, from an activation cache) replaces the clean pass of an
    objective that needs no model; `tokens` and `lm` are then unused. `keep` (positions `[T']`)
    restricts the SAEs, their losses and the splice to those positions (`TrainConfig.
    exclude_positions`); the objective's KL is still over every position. `clean` (from
    `shared_clean_pass`) is a clean pass already run on `tokens`, shared by several SAEs. Returns
    (loss, logs, outs): the weighted sum of every term, `{name: unweighted value}` plus each
    site's `mse` and `l0`, and site -> ForwardOutput at the kept positions.
    """
    sites = sort_sites(list(saes))
    obj = cfg.objective
    later = obj.later(lm, sites) if obj.spliced else []
    if acts is not None:
        clean = Clean(acts, None, None, [])
    elif clean is None:
        clean = shared_clean_pass(lm, tokens, [saes], cfg)
    if obj.needs_logits and clean.kl_target is None:  # once per batch, shared by a sweep's SAEs
        clean.kl_target = losses.kl_target(clean.logits, in_place=True)
        clean.logits = None  # they are the target's probabilities now
    inputs = sae_inputs(clean, keep, saes[sites[0]].dtype)  # what the SAEs see, in their dtype
    grad = inputs.grads or {}
    if obj.spliced:
        spliced = spliced_pass(lm, tokens, saes, clean, later, keep=keep)
        outs = spliced.outs
    else:
        spliced = None
        outs = {s: saes[s](inputs.acts[s], grad=grad.get(s)) for s in sites}
    terms = obj.terms(inputs, spliced, outs, sites, saes)
    tag = (lambda s: "") if len(sites) == 1 else (lambda s: f"{s}/")
    for s in sites:
        sae, out = saes[s], outs[s]
        # the SAE's own terms in its own (normalised) units; act_scale is 1 when unscaled
        out = out._replace(x_hat=sae.normalize(out.x_hat))
        own = sae.loss_terms(sae.normalize(inputs.acts[s]), out, dead[s])
        terms |= {f"{tag(s)}{name}": term for name, term in own.items()}
    loss = torch.zeros(())
    for coeff, value in terms.values():
        loss = loss + coeff * value
    logs = {name: value.item() for name, (_, value) in terms.items()}
    for s in sites:
        out, x = outs[s], inputs.acts[s]
        if f"{tag(s)}mse" not in logs:
            logs[f"{tag(s)}mse"] = losses.mse_loss(out.x_hat, x).item()
        logs[f"{tag(s)}l0"] = out.stats()[1]
    return loss, logs, outs


# --- the state of a run, its checkpoint and its log ----------------------------------------------


@dataclass
class TrainState:
    """What a checkpoint holds: the SAEs, Adam, steps taken, the log, tokens since each fired."""

    saes: dict[Site, SAE]
    opt: torch.optim.Optimizer
    since_fire: dict[Site, torch.Tensor]
    step: int = 0
    log: list[dict] = field(default_factory=list)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for sae in self.saes.values() for p in sae.parameters()]


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from (corrupt, truncated, or from another config)."""


CKPT_KEYS = ("cfg", "step", "log", "saes", "opt", "since_fire")


def _atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file beside `path`, then rename: `path` is always a whole file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact


def data_fingerprint(data) -> str:
    """sha256 of the token rows a run trains on (an activation cache: those it was written from)."""
    from saelab.core.cache import fingerprint

    if isinstance(data, ActivationCache):
        return data.manifest["tokens_sha256"]
    return fingerprint(data.tokens)


def save_checkpoint(path: Path, state: TrainState, cfg: TrainConfig, data_fp: str = "") -> None:
    """Write `state` to `path` atomically, with the fingerprint of the training data."""
    _atomic_save(
        dict(
            cfg=asdict(cfg),
            data=data_fp,
            step=state.step,
            log=state.log,
            saes={str(s): sae.state_dict() for s, sae in state.saes.items()},
            opt=state.opt.state_dict(),
            since_fire={str(s): v for s, v in state.since_fire.items()},
        ),
        path,
    )


def _as_config_dict(d: dict) -> dict:
    """A checkpoint's config in today's nested form (old checkpoints hold the flat one)."""
    try:
        return asdict(TrainConfig.from_dict(d))
    except (TypeError, ValueError):
        return d


def load_checkpoint(path: Path, cfg: TrainConfig, sites, data_fp: str | None = None) -> dict:
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
    then, now = _as_config_dict(state["cfg"]), asdict(cfg)
    if then != now:
        diff = {k: (then.get(k), v) for k, v in now.items() if then.get(k) != v}
        raise CheckpointError(
            f"{path} was written by a different TrainConfig; refusing to resume. "
            f"Differences (checkpoint, now): {diff}"
        )
    if data_fp is not None and state.get("data") and state["data"] != data_fp:
        raise CheckpointError(
            f"{path} was trained on other data (token fingerprint {state['data'][:12]}, now "
            f"{data_fp[:12]}); refusing to resume. Give the same data, or start the run over"
        )
    names = {str(s) for s in sites}
    if set(state["saes"]) != names or set(state["since_fire"]) != names:
        raise CheckpointError(f"checkpoint {path} holds sites {sorted(state['saes'])}, "
                              f"expected {sorted(names)}; {hint}")  # fmt: skip
    return state


def restore(state: TrainState, saved: dict) -> None:
    """Load a checked checkpoint (`load_checkpoint`) into `state`."""
    for s, sae in state.saes.items():
        sae.load_state_dict(saved["saes"][str(s)])
    state.opt.load_state_dict(saved["opt"])
    device = next(iter(state.saes.values())).device
    state.since_fire = {s: saved["since_fire"][str(s)].to(device) for s in state.saes}
    state.step, state.log = saved["step"], saved["log"]


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an `out_dir` that holds a run unless asked to resume it or to replace it."""
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; choose one")
    has_saes = (out / "saes").is_dir() and any((out / "saes").iterdir())
    has_ckpt = (out / "checkpoint.pt").exists()
    if resume and has_saes and not has_ckpt:
        raise FileExistsError(
            f"{out} holds finished SAEs but no checkpoint.pt, so resume=True cannot continue "
            "that run; pass overwrite=True to train it again, or choose another out_dir"
        )
    if not resume and not overwrite and (has_saes or has_ckpt):
        what = " and ".join(n for n, h in (("saes/", has_saes), ("checkpoint.pt", has_ckpt)) if h)
        raise FileExistsError(
            f"{out} holds a run ({what}); pass resume=True to continue it, overwrite=True to "
            "replace it, or choose another out_dir"
        )


def start_files(out: Path, cfg: TrainConfig, log: list[dict]) -> None:
    """Create `out/` with `train_config.json` and a `metrics.jsonl` holding `log`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    # a fresh run starts a fresh log; a resumed one drops the lines the stopped run wrote
    # after its checkpoint, and the temp file of a checkpoint write it was killed in
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    for tmp in out.glob(".checkpoint.pt.tmp*"):
        tmp.unlink()


def begin_files(out: Path | None, cfg: TrainConfig, state: TrainState, data_record: dict,
                overwrite: bool) -> bool:  # fmt: skip
    """Write a run's `train_config.json`, `metrics.jsonl` and `data.json` (after its first step,
    so a run that fails at once leaves an old run's files as they were); with `overwrite`, the
    old run's SAEs go. Returns True (the files are started)."""
    if out is not None:
        if overwrite and (out / "saes").exists():
            shutil.rmtree(out / "saes")  # asked for
        start_files(out, cfg, state.log)
        (out / "data.json").write_text(json.dumps(data_record, indent=2) + "\n")
    return True


def write_log(state: TrainState, rec: dict, out: Path | None) -> None:
    """Append `rec` to the run's log, and to `out/metrics.jsonl` when `out` is given."""
    state.log.append(rec)
    if out is not None:
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


def evaluate_run(lm, state: TrainState, data, cfg: TrainConfig, excluded=()) -> dict:
    """An eval record of the run's SAEs: `saelab.core.metrics.evaluate`, or SAE-only on a cache."""
    return evaluate_runs(lm, [state], data, [cfg], excluded)[0]


def evaluate_runs(lm, states: list[TrainState], data, cfgs: list[TrainConfig],
                  excluded=()) -> list[dict]:  # fmt: skip
    """Eval records of several runs: those with the same eval settings share each batch's clean
    pass (`saelab.core.metrics.evaluate_many`; of one run, that is `evaluate`), and each record
    equals the run's own evaluation. On a cache (`lm` None) each run is evaluated alone, SAE-only
    (`evaluate_cached`)."""
    from saelab.core.metrics import evaluate_many

    recs: list[dict | None] = [None] * len(states)
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault((cfg.eval_tokens, cfg.batch_size, cfg.alive_tokens), []).append(i)
    for (n_tok, bs, alive), idx in groups.items():
        kw = dict(n_tokens=n_tok, batch_size=bs, exclude_positions=excluded, alive_tokens=alive)
        sets = [{str(s): v for s, v in states[i].saes.items()} for i in idx]
        if lm is None:
            reps = [evaluate_cached(named, data, **kw) for named in sets]
        else:
            reps = evaluate_many(lm, sets, data, **kw)
        for i, rep in zip(idx, reps, strict=True):
            recs[i] = {"step": states[i].step, "kind": "eval", **rep}
    return recs


# --- the loop ------------------------------------------------------------------------------------


def init_sae(sae: SAE, path: str) -> None:
    """Load the weights (and activation scale) of the SAE at `path` into `sae`, checking fit."""
    from saelab.core.sae import load_sae

    src = load_sae(path, device=sae.device)
    mine, theirs = sae.cfg, src.cfg
    for name in ("architecture", "d_in", "d_sae", "normalize_activations"):
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
    saes = {s: SAE(cfg.sae_config(str(s), facts["d_in"], facts["model_name"],
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


@torch.no_grad()
def estimate_act_scales(lm, data, saes: dict, keep, batch_size: int, n_tokens: int = 2**16) -> dict:
    """Set each normalising SAE's `act_scale` from the mean norm of its site's activations.

    Reads the first ~`n_tokens` rows of `data` in stored order (the same on every rank), at the
    kept positions: E||x * act_scale|| = sqrt(d_in) (SAELens' "expected_average_only_in").
    Returns {site: mean raw norm} for the log.
    """
    sites = [s for s, sae in saes.items() if sae.cfg.normalize_activations != "none"]
    if not sites:
        return {}
    n_rows = max(1, min(len(data), n_tokens // data.n_ctx))
    sums, count = dict.fromkeys(sites, 0.0), 0
    for i in range(0, n_rows, batch_size):
        rows = torch.arange(i, min(i + batch_size, n_rows))
        if isinstance(data, ActivationCache):
            acts = {sites[0]: data.rows(rows)}
        else:
            device = next(iter(saes.values())).device
            acts = clean_pass(lm, data.tokens[rows].to(device), sites).acts
        for s in sites:
            x = sae_inputs(Clean({s: acts[s]}, None, None, []), keep).acts[s]
            sums[s] += float(x.norm(dim=-1).sum())
        count += x[..., 0].numel()
    means = {s: sums[s] / count for s in sites}
    for s in sites:
        saes[s].set_act_scale(means[s])
    return {str(s): m for s, m in means.items()}


def optimise(lm, batch, state: TrainState, cfg: TrainConfig, lr: float, cache, w, ckpt,
             keep: torch.Tensor | None = None, clean: Clean | None = None) -> dict:  # fmt: skip
    """One optimiser step on `batch` (tokens `[B, T]`, or cached activations `[B, T, d_in]`).

    `keep`: the positions the SAEs train on (`train_step`); `clean`: a shared clean pass on
    `batch` (`shared_clean_pass`). Returns the step's log values (loss first), equal on every
    rank. A non-finite loss stops the run before the step is taken (`NonFiniteLoss`).
    """
    from saelab.core import distributed as dd

    saes, sites, params = state.saes, list(state.saes), state.params
    for g in state.opt.param_groups:
        g["lr"] = lr
    dead = {s: v >= cfg.dead_tokens for s, v in state.since_fire.items()}
    if cache is not None:
        acts = {sites[0]: batch.float()}  # fp16 caches train in fp32
        loss, logs, outs = train_step(lm, None, saes, cfg, dead, acts=acts, keep=keep)
    else:
        loss, logs, outs = train_step(lm, batch, saes, cfg, dead, keep=keep, clean=clean)
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    fired = [outs[s].stats()[0] for s in sites]
    scalars = torch.tensor([loss.item(), *logs.values()], dtype=torch.float64)
    scalars, fired = dd.sync_step(params, scalars, fired, w)  # one all-reduce (distributed)
    if not math.isfinite(float(scalars[0])):  # the same decision on every rank
        where = f"{ckpt} (step {_ckpt_step(ckpt)})" if ckpt and ckpt.exists() else "none"
        raise NonFiniteLoss(
            f"loss is {float(scalars[0])} at step {state.step}; stopped. Last good checkpoint: "
            f"{where}"
        )
    for sae in saes.values():
        sae.before_step_()
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    state.opt.step()
    n_tok = outs[sites[0]].stats()[2] * w.size  # global tokens the SAEs saw this step
    for s, f in zip(sites, fired, strict=True):
        saes[s].after_step_(outs[s])
        state.since_fire[s] = torch.where(f, 0, state.since_fire[s] + n_tok)
    return {"loss": float(scalars[0])} | dict(zip(logs, scalars[1:].tolist(), strict=True))


def train(
    lm,
    data,
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    eval_data=None,
    progress: bool = True,
    overwrite: bool = False,
) -> Run:
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
    """
    return train_many(lm, data, [cfg], [out_dir], resume, eval_data, progress, overwrite)[0]


# fields every config of a `train_many` sweep shares: they fix the batches and the clean pass
SHARED_FIELDS = ("sites", "loss", "batch_size", "n_tokens", "seed", "exclude_positions")


def check_sweep(cfgs: list[TrainConfig], out_dirs: list) -> None:
    """Refuse a sweep whose configs differ in a shared field, or whose out_dirs repeat."""
    if not cfgs:
        raise ValueError("train_many needs at least one TrainConfig")
    if len(out_dirs) != len(cfgs):
        raise ValueError(f"{len(cfgs)} configs but {len(out_dirs)} out_dirs")
    for name in SHARED_FIELDS:
        values = [getattr(c, name) for c in cfgs]
        if any(v != values[0] for v in values):
            raise ValueError(
                f"train_many: every config must share {name} (it fixes the batches and the clean "
                f"pass), got {values}; train configs that differ in it separately"
            )
    named = [str(Path(o).resolve()) for o in out_dirs if o is not None]
    if len(set(named)) != len(named):
        raise ValueError(f"train_many: out_dirs repeat: {named}")


def shared_clean_pass(
    lm, tokens: torch.Tensor, saes: list[dict[Site, SAE]], cfg: TrainConfig
) -> Clean:
    """One clean pass on `tokens [B, T]` serving every SAE set in `saes` (one per config of a
    sweep, same sites): activations, and the logits, later residuals and dL/dx where the
    objective or any SAE needs them."""
    sites = sort_sites(list(saes[0]))
    obj = cfg.objective
    later = obj.later(lm, sites) if obj.spliced else []
    grads = any(sae.needs_grad for group in saes for sae in group.values())
    return clean_pass(lm, tokens, sites, later, logits=obj.needs_logits, grads=grads)


@dataclass
class _Member:
    """One run of a sweep: its config, files and state."""

    cfg: TrainConfig
    out: Path | None
    state: TrainState
    resumed: bool
    started: bool = False  # its files are written once its first step has succeeded

    @property
    def ckpt(self) -> Path | None:
        return self.out / "checkpoint.pt" if self.out is not None else None


def _say(progress: bool, text: str) -> None:
    """A progress line on stdout (under `make run` it reaches the terminal; ARCHITECTURE.md)."""
    if progress:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _duration(seconds: float) -> str:
    m, sec = divmod(int(round(seconds)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def train_many(
    lm,
    data,
    cfgs: list[TrainConfig],
    out_dirs: list | None = None,
    resume: bool = False,
    eval_data=None,
    progress: bool = True,
    overwrite: bool = False,
) -> list[Run]:
    """Train several SAE configs on the same batches from one clean pass per batch (a sweep).

    `cfgs` share `SHARED_FIELDS` (sites, objective, batch size, token budget, seed, excluded
    positions) and may differ in anything else (the SAE, lr, coefficients). Each batch's clean
    pass runs once for all of them: for local objectives that is all the model work, for e2e
    ones each SAE still runs its own spliced pass, on the shared clean logits (and dL/dx). Each
    config gets exactly the run `train(lm, data, cfg, out_dir)` would give (same init, batches
    and steps; tests/test_train.py), with its own `out_dirs[i]`, files, checkpoint and resume.
    Returns one `Run` per config.
    """
    # imported here, not at the top, so `python -m saelab.core.distributed` runs a fresh module
    from saelab.core import distributed as dd

    # 1. check everything before anything is written
    cfgs = list(cfgs)
    out_dirs = list(out_dirs) if out_dirs is not None else [None] * len(cfgs)
    check_sweep(cfgs, out_dirs)
    cfg0 = cfgs[0]
    w = dd.world()
    facts = _facts(lm, data, cfg0)
    for cfg in cfgs[1:]:
        _facts(lm, data, cfg)  # an activation cache checks each config
    cache = data if isinstance(data, ActivationCache) else None
    sites = sort_sites([parse_site(s, facts["n_layers"]) for s in cfg0.sites])
    n_steps = _n_steps(cfg0, data, facts)
    dd.check_batch(cfg0.batch_size, w)
    if lm is not None and cfg0.objective.spliced:
        cfg0.objective.later(lm, sites)  # e.g. e2e+ds with no later layer: refused now
    if eval_data is None:
        eval_data = cache.token_dataset() if cache is not None and lm is not None else data
    excluded = excluded_positions(cfg0.exclude_positions, data)
    keep = kept_positions(data.n_ctx, excluded, facts["device"])
    outs = [Path(o) if o is not None else None for o in out_dirs]
    for out in outs:
        if out is not None:
            check_out_dir(out, resume, overwrite)
    data_fp = data_fingerprint(data) if any(o is not None for o in outs) else ""

    # 2. the states: fresh and seeded, or resumed from their checkpoints
    members = []
    for cfg, out in zip(cfgs, outs, strict=True):
        state = new_state(cfg, sites, facts)
        dd.broadcast_params(state.params, w)
        ckpt = out / "checkpoint.pt" if out is not None else None
        resumed = resume and ckpt is not None and ckpt.exists()
        if resumed:
            restore(state, load_checkpoint(ckpt, cfg, sites, data_fp))  # act_scale comes too
        elif cfg.init_from is None:  # an initial SAE brings its activation scale
            norms = estimate_act_scales(lm, data, state.saes, keep, cfg.batch_size)
            if norms:
                state.log.append({"step": 0, "kind": "act_scale", "mean_norm": norms})
        dd.check_same_step(state.step, facts["device"], w)
        members.append(_Member(cfg, out, state, resumed))
    steps = {m.state.step for m in members}
    if len(steps) > 1:
        raise CheckpointError(f"the sweep's checkpoints stand at different steps {sorted(steps)}; "
                              "resume its runs separately with train()")  # fmt: skip
    step = steps.pop()
    writes = w.main
    data_record = _describe(data) | {"excluded_positions": list(excluded)}
    own_ckpt = {id(m): (m.ckpt if m.resumed else None) for m in members}  # last good checkpoint

    # 3. the loop: one batch, one shared clean pass, one optimiser step per config
    for m in members:
        for sae in m.state.saes.values():
            sae.train()
    descs = [f"{c.loss}/{c.sae.architecture}" for c in cfgs]
    desc = descs[0] if len(cfgs) == 1 else f"{len(cfgs)} SAEs ({cfg0.loss})"
    bar = progress_bar(progress and w.main, total=n_steps, initial=step, desc=desc)
    say = progress and w.main
    n_tok_step = cfg0.batch_size * data.n_ctx
    _say(say, f"training {desc}: {n_steps - step} steps of {n_tok_step:,} tokens"
              + (f" (from step {step})" if step else ""))  # fmt: skip
    batches = _batches(data, cfg0, start=step)
    t0, step0, eta_said = time.time(), step, False
    # each train record holds the mean over the steps since the last one, not the last batch's
    # value: a plateau test on one batch in `log_every` reads mostly batch-to-batch noise
    since = {id(m): {} for m in members}
    while step < n_steps:
        batch = dd.shard(next(batches), w).to(facts["device"])
        clean = None
        if len(members) > 1 and cache is None:
            clean = shared_clean_pass(lm, batch, [m.state.saes for m in members], cfg0)
        for m in members:
            cfg, state = m.cfg, m.state
            lr = lr_at(state.step, n_steps, cfg.lr, cfg.warmup, cfg.min_lr_frac)
            try:
                logs = optimise(lm, batch, state, cfg, lr, cache, w, own_ckpt[id(m)], keep, clean)
            except NonFiniteLoss:
                bar.close()
                raise
            if not m.started:
                m.started = begin_files(m.out if writes else None, cfg, state, data_record,
                                        overwrite)  # fmt: skip
            state.step += 1
            log_to = m.out if writes else None
            acc = since[id(m)]
            for k, v in logs.items():
                acc[k] = acc.get(k, 0.0) + v
            acc[None] = acc.get(None, 0) + 1  # steps summed
            if state.step % cfg.log_every == 0 or state.step == n_steps:
                n_tok = batch.shape[0] * batch.shape[1] * w.size
                tps = (state.step - step0) * n_tok / (time.time() - t0 + 1e-9)
                n = acc.pop(None)
                logs = {k: v / n for k, v in acc.items()}
                acc.clear()
                rec = {"step": state.step, "kind": "train", "loss": logs.pop("loss"), "lr": lr}
                write_log(state, rec | logs | {"tokens_per_s": tps}, log_to)
                if len(members) == 1:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()
                                     if "l0" in k or k in ("kl", "mse")})  # fmt: skip
        # the members due an evaluation share its clean passes (`evaluate_runs`); then the
        # checkpoints, which hold the log with the evaluation in it
        due = [m for m in members if m.cfg.eval_every and m.state.step < n_steps
               and m.state.step % m.cfg.eval_every == 0]  # fmt: skip
        for m, rec in zip(due, _evaluate(lm, due, cache, eval_data, excluded), strict=True):
            write_log(m.state, rec, m.out if writes else None)
        for m in members:
            cfg, state = m.cfg, m.state
            if (m.ckpt is not None and writes and cfg.checkpoint_every
                    and state.step % cfg.checkpoint_every == 0):  # fmt: skip
                save_checkpoint(m.ckpt, state, cfg, data_fp)
                own_ckpt[id(m)] = m.ckpt
        step += 1
        bar.update()
        if not eta_said and (step - step0 >= 5 or step == n_steps) and n_steps - step0 >= 20:
            rate = (step - step0) / (time.time() - t0 + 1e-9)
            _say(say, f"{desc}: {n_tok_step * rate * w.size:,.0f} tokens/s, "
                      f"ETA {_duration((n_steps - step) / rate)}")  # fmt: skip
            eta_said = True
    bar.close()
    elapsed = time.time() - t0
    rate = (step - step0) * n_tok_step * w.size / (elapsed + 1e-9)
    _say(say, f"{desc}: {step - step0} steps in {_duration(elapsed)} ({rate:,.0f} tokens/s)")

    # 4. the final evaluation, checkpoint and SAEs of each config
    runs = []
    for m in members:
        if not m.started:  # a resume of a finished checkpoint takes no step
            begin_files(m.out if writes else None, m.cfg, m.state, data_record, overwrite)

    def evaluated(m) -> bool:
        last = m.state.log[-1] if m.state.log else {}
        return last.get("kind") == "eval" and last["step"] == m.state.step

    due = [m for m in members if not evaluated(m)]
    for m, rec in zip(due, _evaluate(lm, due, cache, eval_data, excluded), strict=True):
        write_log(m.state, rec, m.out if writes else None)
    for m in members:
        cfg, state = m.cfg, m.state
        if m.ckpt is not None and writes:
            save_checkpoint(m.ckpt, state, cfg, data_fp)
        extra = {"train_config": asdict(cfg), "data": data_record}
        if m.out is not None and writes:
            for s, sae in state.saes.items():
                save_sae(sae, m.out / "saes" / str(s), extra=extra)
        runs.append((m, extra))
    dd.barrier(w)  # no rank returns (and tears the group down) before rank 0 has written
    for m, extra in runs:
        for sae in m.state.saes.values():
            sae.eval()
            sae.extra = extra
    return [Run({str(s): sae for s, sae in m.state.saes.items()}, m.state.log, m.out, m.cfg)
            for m, _ in runs]  # fmt: skip


def _evaluate(lm, members: list, cache, eval_data, excluded) -> list[dict]:
    """Eval records of `members` (shared clean passes on the model; SAE-only on a cache)."""
    if not members:
        return []
    return evaluate_runs(lm, [m.state for m in members], cache if lm is None else eval_data,
                         [m.cfg for m in members], excluded)  # fmt: skip


def _describe(data) -> dict:
    """The data record of a run (`data.json`, and each saved SAE's `extra.data`)."""
    if isinstance(data, ActivationCache):
        m = data.manifest
        return dict(source=m.get("source", ""), split=m.get("split", ""), rows=len(data),
                    n_ctx=data.n_ctx, prepend_bos=data.prepend_bos,
                    activation_cache=str(data.path))  # fmt: skip
    return data.describe()


def _n_steps(cfg: TrainConfig, data, facts: dict) -> int:
    """Optimiser steps of the run; refuses data that cannot fill one batch."""
    if data.n_ctx > facts["n_ctx"]:
        raise ValueError(f"data n_ctx={data.n_ctx} exceeds the model's {facts['n_ctx']} positions")
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


def _facts(lm, data, cfg: TrainConfig) -> dict:
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
                    model_name=m["model"], device=torch.device("cpu"))  # fmt: skip
    info = model_info(lm)
    name, path = model_name(lm)
    return dict(d_in=info["d_model"], n_layers=info["n_layers"], n_ctx=info["n_ctx"],
                model_name=name, model_path=path, device=torch.device(lm.device))  # fmt: skip


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
