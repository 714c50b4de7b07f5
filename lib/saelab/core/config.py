"""`TrainConfig`: everything that defines a training run, validated on construction.

    cfg = TrainConfig(sites=("resid_pre.3",), sae=SAEConfig.create(architecture="topk", k=16),
                      loss=objective("e2e", kl_coeff=1.0))

The SAE's fields live in its `SAEConfig` (`saelab.core.sae`), the objective's coefficients in its
`Objective` (`saelab.core.objectives`); this holds the rest: sites, optimisation, budget,
evaluation and checkpoint cadence. `to_dict` / `from_dict` round-trip it through JSON
(`train_config.json`, checkpoints, the torchrun entry point).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from saelab.core.models import parse_site
from saelab.core.objectives import Local, Objective, objective
from saelab.core.sae import SAEConfig, check_number, is_int
from saelab.core.schedule import Finetune, as_finetune

DEAD_TOKENS_CAP = 10_000_000  # sparsify's dead_feature_threshold (Gao et al. 2024 use 10M too)


def default_dead_tokens(n_tokens: int) -> int:
    """`TrainConfig.dead_tokens` when left None: min(10M, n_tokens // 10), at least 1.

    Gao et al. 2024 and sparsify call a latent dead after 10M tokens without firing, in runs of
    billions of tokens; a 10M window would flag nothing in a run of 600k tokens, so short runs use
    a tenth of their length (a latent silent for the last tenth of the run gets AuxK's gradient).
    """
    return max(1, min(DEAD_TOKENS_CAP, n_tokens // 10))


def _as_sae_config(sae) -> SAEConfig:
    if isinstance(sae, SAEConfig):
        return sae
    if isinstance(sae, str):  # an architecture name: its defaults
        return SAEConfig.create(architecture=sae)
    if isinstance(sae, dict):
        return SAEConfig.create(**sae)
    raise ValueError(f"sae={sae!r} must be an SAEConfig, a dict of its fields or a name")


def _as_objective(loss) -> Objective:
    if isinstance(loss, Objective):
        return loss
    if isinstance(loss, str):  # an objective's name: its default coefficients
        return objective(loss)
    if isinstance(loss, dict) and "name" in loss:
        return objective(**loss)
    raise ValueError(f"loss={loss!r} must be an Objective (`saelab.objective(name, ...)`), its "
                     "name, or a dict with 'name' and its coefficients")  # fmt: skip


B_DEC_INITS = ("auto", "mean", "geometric_median", "zeros")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; validated on construction.

    `sae`: the SAE's config (an `SAEConfig`, a dict of its fields with `architecture`, or an
    architecture name for its defaults); its `d_in` / `d_sae` are filled in per site. `loss`: the
    objective (an `Objective` with its coefficients, a dict with `name`, or a name for its
    defaults).
    """

    sites: tuple[str, ...] = ("resid_pre.3",)  # one or several sites (a str is accepted)
    sae: SAEConfig = field(default_factory=lambda: SAEConfig.create(architecture="relu"))
    loss: Objective = field(default_factory=Local)  # local | e2e | e2e+ds, with coefficients
    # the last part of the run trains with another objective (`saelab.core.schedule`: local,
    # then a balanced KL + MSE fine-tune, Karvonen 2025); a Finetune or a dict of its fields
    finetune: Finetune | None = None
    # positions the SAEs leave clean and out of their losses and metrics; None: the BOS position
    # (0) when the data prepends one, else none (ARCHITECTURE.md §6)
    exclude_positions: tuple[int, ...] | None = None
    # token ids the SAEs never see, wherever they are in a row (left clean in the splice, out of
    # every SAE loss and metric); None: the tokenizer's special tokens (BOS, EOS, PAD: a
    # document's BOS mid-row is an attention sink; SAELens' exclude_special_tokens); (): none
    exclude_tokens: tuple[int, ...] | None = None
    # start from a saved (or SAELens-exported) SAE instead of a fresh init: its weights, and its
    # activation scale; architecture, d_in and d_sae must match `sae` (single-site runs)
    init_from: str | None = None
    # the decoder bias at the start (`setup.init_b_dec`): "mean" or "geometric_median" of the
    # training activations, "zeros", or "auto": "mean" for SAEs that subtract b_dec from their
    # input and for the TopK family (openai/sparse_autoencoder, SAELens), else "zeros"
    b_dec_init: str = "auto"
    # AuxK: a latent is dead after this many tokens without firing. None: `default_dead_tokens`,
    # resolved on construction, so the config and train_config.json hold the number used
    # (`dataclasses.replace` keeps it: pass None again when changing n_tokens)
    dead_tokens: int | None = None
    lr: float = 1e-3
    warmup: int = 50  # steps
    min_lr_frac: float = 0.1  # cosine decay ends at min_lr_frac * lr
    grad_clip: float = 10.0  # max global grad norm; 0: no clipping (as common trainers)
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

    def __post_init__(self):
        sites = (self.sites,) if isinstance(self.sites, str) else self.sites
        object.__setattr__(self, "sites", tuple(str(parse_site(s)) for s in sites))
        if not self.sites:
            raise ValueError("sites is empty; give at least one site such as 'resid_pre.3'")
        object.__setattr__(self, "sae", _as_sae_config(self.sae))
        object.__setattr__(self, "loss", _as_objective(self.loss))
        object.__setattr__(self, "finetune", as_finetune(self.finetune))
        if self.finetune is not None and self.finetune.loss == self.loss:
            raise ValueError(f"finetune loss {self.finetune.loss.to_dict()} is the run's own "
                             "loss: a fine-tune switches to another objective")  # fmt: skip
        if self.exclude_positions is not None:
            ex = self.exclude_positions
            if isinstance(ex, int | str) or not all(is_int(p) and p >= 0 for p in ex):
                raise ValueError(f"exclude_positions={ex!r} must be None or a list of ints >= 0")
            object.__setattr__(self, "exclude_positions", tuple(sorted(set(ex))))
        if self.exclude_tokens is not None:
            ex = self.exclude_tokens
            if isinstance(ex, int | str) or not all(is_int(t) and t >= 0 for t in ex):
                raise ValueError(f"exclude_tokens={ex!r} must be None or a list of token ids")
            object.__setattr__(self, "exclude_tokens", tuple(sorted(set(ex))))
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init={self.b_dec_init!r} is not valid; choose one of "
                             f"{list(B_DEC_INITS)}")  # fmt: skip
        self._check_counts()
        check_number("lr", self.lr, 0.0, inclusive=False)
        check_number("grad_clip", self.grad_clip)
        check_number("min_lr_frac", self.min_lr_frac)
        if self.min_lr_frac > 1:
            raise ValueError(f"min_lr_frac must be in [0, 1], got {self.min_lr_frac}")
        if self.init_from is not None:
            object.__setattr__(self, "init_from", str(self.init_from))
            if len(self.sites) != 1:
                raise ValueError(f"init_from needs a single-site run, got sites={self.sites}")

    def _check_counts(self) -> None:
        for name in ("batch_size", "n_tokens", "log_every"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int > 0")
        if self.dead_tokens is None:
            object.__setattr__(self, "dead_tokens", default_dead_tokens(self.n_tokens))
        alive = self.alive_tokens
        if alive is not None and (not is_int(alive) or alive < 1):
            raise ValueError(f"alive_tokens={alive!r} must be None or an int >= 1")
        for name in ("dead_tokens", "warmup", "eval_every", "eval_tokens", "checkpoint_every",
                     "seed"):  # fmt: skip
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ValueError(f"{name}={value!r} must be an int >= 0")

    def sae_config(self, site: str, d_in: int, model_name: str = "", model_path: str = ""):
        """The SAEConfig of the SAE at `site` for a model of width `d_in`."""
        try:
            return self.sae.for_site(d_in, site, parse_site(site).hook_name, model_name, model_path)
        except ValueError as e:
            raise ValueError(f"{e} (dict_ratio {self.sae.dict_ratio} x {d_in})") from e

    def to_dict(self) -> dict:
        """The config as JSON-ready dict: `sae` as its fields, `loss` as `{"name", coeffs}`,
        `finetune` as `Finetune.to_dict` (or None)."""
        ft = self.finetune.to_dict() if self.finetune is not None else None
        return asdict(self) | {"loss": self.loss.to_dict(), "finetune": ft}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from `to_dict`'s form (`"sae": {"architecture": ..., ...}`, `"loss":
        {"name": ..., ...}`, or names for defaults); an unknown key is an error listing the
        known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {known} (the SAE's "
                             "fields go under 'sae', the objective's coefficients under "
                             "'loss')")  # fmt: skip
        return cls(**d)
