"""The SAE base class, the architecture registry, and saving/loading.

An architecture is one file under `saelab.core.architectures` (ARCHITECTURE.md §7): a config
subclass with its own fields and an `SAE` subclass that owns its init, activation
(`activation`), decoder constraint, whether it needs dL/dx, its own loss terms, any extra
parameters and its SAELens mapping. It is registered by name with `@register`; the factories
`SAEConfig.create(architecture=name, ...)` and `SAE.from_config(cfg)` look the classes up, so
callers never test architecture names. Shapes: `x [..., d_in]`, `c [..., d_sae]`.

    sae = SAE.from_config(SAEConfig.create(architecture="topk", d_in=64, d_sae=512, k=16))
    x_hat, c, pre = sae(x)
    save_sae(sae, "outputs/sae"); sae = load_sae("outputs/sae", d_in=64)
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import nnsight
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from saelab.core import sparse
from saelab.core.files import write_atomic
from saelab.core.integrity import SHA_KEY, tensors_sha256
from saelab.core.models import Site

if TYPE_CHECKING:
    from saelab.core.saelens import SAELensForm

CFG_FILE = "cfg.json"
NORMALIZATIONS = ("none", "expected_average_only_in")
WEIGHTS_FILE = "sae.safetensors"

# name -> SAE subclass; filled by `@register` when `saelab.core.architectures` is imported
_REGISTRY: dict[str, type[SAE]] = {}


def _load_architectures() -> None:
    import saelab.core.architectures  # noqa: F401  (each module registers itself)


def architectures() -> tuple[str, ...]:
    """Names of the registered architectures, in registration order."""
    _load_architectures()
    return tuple(_REGISTRY)


def architecture(name: str) -> type[SAE]:
    """The SAE class registered as `name`; a clear error lists the valid names."""
    _load_architectures()
    if name not in _REGISTRY:
        raise ValueError(f"architecture={name!r} is unknown; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def register(cls: type[SAE]) -> type[SAE]:
    """Class decorator: register an SAE subclass under `cls.cfg_class.architecture`'s default."""
    name = cls.cfg_class.__dataclass_fields__["architecture"].default
    if not name or name in _REGISTRY:
        raise ValueError(f"cannot register {cls.__name__} as {name!r} (empty or taken)")
    _REGISTRY[name] = cls
    return cls


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_number(name: str, value: Any, low: float = 0.0, inclusive: bool = True) -> None:
    """Raise unless `value` is a finite real number >= `low` (> `low` if not `inclusive`)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (value == low and not inclusive):
        rel = ">=" if inclusive else ">"
        raise ValueError(f"{name}={value!r} must be a finite number {rel} {low}")


def check_choice(name: str, value: Any, valid: tuple) -> None:
    """Raise unless `value` is one of `valid`, naming them."""
    if value not in valid:
        raise ValueError(f"{name}={value!r} is unknown; valid: {', '.join(map(str, valid))}")


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(d_in: int, d_sae: int, bytes_per_value: int = 4) -> None:
    """Refuse an SAE whose training state (parameters, gradients, Adam's two moments: 4 copies of
    `2 d_in d_sae + d_in + d_sae` floats) exceeds this machine's memory, before allocating it."""
    need = 4 * bytes_per_value * (2 * d_in * d_sae + d_in + d_sae)
    have = memory_bytes()
    if have is not None and need > have:
        raise ValueError(
            f"an SAE of d_in={d_in} x d_sae={d_sae} needs ~{need / 2**30:.1f} GiB to train "
            f"(parameters, gradients, Adam state) but this machine has {have / 2**30:.1f} GiB; "
            "lower dict_ratio or d_sae"
        )


@dataclass(frozen=True, kw_only=True)
class SAEConfig:
    """Shape, architecture and provenance of an SAE; each architecture subclasses it.

    `SAEConfig.create(architecture="topk", k=16, ...)` builds the registered subclass
    (`TopKConfig(k=16, ...)`), so one factory takes every architecture's fields; the base class
    itself is not an SAE's config. `d_in` / `d_sae` may stay None in a
    training spec (`TrainConfig.sae`): they are filled in from the model (`d_sae = round(
    dict_ratio * d_in)` unless given) when the SAE is built.
    """

    architecture: str = ""
    d_in: int | None = None
    d_sae: int | None = None
    dict_ratio: float = 8.0  # d_sae = dict_ratio * d_in when d_sae is not given
    pre_subtract_b_dec: bool = False  # z = (x - b_dec) W_enc + b_enc (Gao et al. 2024 §2.2)
    # "expected_average_only_in" (SAELens' name) | "none": the SAE works on x * act_scale, with
    # act_scale estimated once before training so that E||x * act_scale|| = sqrt(d_in); then
    # coefficients mean the same on every model (measured: LOG.md 2026-12-01, ARCHITECTURE.md §6)
    normalize_activations: str = "expected_average_only_in"
    site: str = ""
    hook_name: str = ""
    model_name: str = ""  # the name the model was loaded by ("storyworld", "gpt2")
    model_path: str = ""  # its local directory, when it was loaded from one

    # `from_dict`: the value of a field a saved cfg.json lacks (it was written before the field
    # existed), when that differs from today's default
    saved_defaults: ClassVar[dict[str, Any]] = {"normalize_activations": "none"}

    @staticmethod
    def create(**kw: Any) -> SAEConfig:
        """The config of architecture `kw["architecture"]` from its fields: `SAEConfig.create(
        architecture="topk", k=16)` is `TopKConfig(k=16)`. A field the architecture lacks is an
        error that lists its fields."""
        return _config_class(kw)(**kw)

    def __post_init__(self):
        if type(self) is SAEConfig:
            raise ValueError("SAEConfig is the base of the architectures' configs; build one "
                             "with SAEConfig.create(architecture=..., ...); valid: "
                             f"{architectures()}")  # fmt: skip
        own = type(self).__dataclass_fields__["architecture"].default
        if self.architecture != own:
            raise ValueError(f"{type(self).__name__} has architecture={own!r}, "
                             f"got architecture={self.architecture!r}")  # fmt: skip
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"{name}={value!r} must be a positive int")
        check_number("dict_ratio", self.dict_ratio, 0.0, inclusive=False)
        if not isinstance(self.pre_subtract_b_dec, bool):
            raise ValueError(f"pre_subtract_b_dec={self.pre_subtract_b_dec!r} must be a bool")
        check_choice("normalize_activations", self.normalize_activations, NORMALIZATIONS)
        for name in ("site", "hook_name", "model_name", "model_path"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a str")

    @property
    def needs_grad(self) -> bool:
        """Whether encoding needs dL/dx at the site (gradient-informed selection)."""
        return False

    def input_site(self, site: Site) -> Site:
        """The site this SAE reads when it is trained at, and spliced into, `site`: `site`
        itself; a transcoder reads another (`architectures/transcoder.py`) and refuses a `site`
        it cannot write, naming the valid ones."""
        return site

    def for_site(self, d_in: int, site: str = "", hook_name: str = "", model_name: str = "",
                 model_path: str = ""):  # fmt: skip
        """This spec with the shape and provenance of a site of width `d_in` filled in."""

        d_sae = self.d_sae or int(round(self.dict_ratio * d_in))
        return replace(self, d_in=d_in, d_sae=d_sae, site=site or self.site,
                       hook_name=hook_name or self.hook_name,
                       model_name=model_name or self.model_name,
                       model_path=model_path or self.model_path)  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> SAEConfig:
        """A config from a dict holding `architecture`; keys of other architectures are ignored.

        Used for saved `cfg.json` files, which also hold SAELens' field names.
        """
        if "architecture" not in d:
            raise ValueError(f"an SAE config needs 'architecture'; got keys {sorted(d)}")
        target = architecture(d["architecture"]).cfg_class
        kw = {f.name: d[f.name] for f in fields(target) if f.name in d}
        # saved before the field existed: what those SAEs were (normalize_activations: raw
        # activations; relu's decoder_init: unit rows)
        return target(**(target.saved_defaults | kw))


def _config_class(kw: dict) -> type[SAEConfig]:
    """The config class of architecture `kw["architecture"]`, after checking `kw`'s field names."""
    arch = kw.get("architecture")
    if arch is None:
        raise ValueError(f"an SAE config needs architecture=...; valid: {architectures()}")
    cls = architecture(arch).cfg_class
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise ValueError(f"architecture={arch!r} has no field(s) {unknown}; its fields: "
                         f"{sorted(known)}")  # fmt: skip
    return cls


class ForwardOutput:
    """`x_hat [..., d_in]`, latents `c [..., d_sae]` (zero off the active set), `pre [..., d_sae]`.

    Unpacks as `x_hat, c, pre = sae(x)`. The TopK family's sparse path (`saelab.core.sparse`)
    fills `codes` instead of `c`: `c` is then built densely on first access (still
    differentiable), and `pre` carries no autograd (it only selected the latents). `enc_in` is
    the encoder's input `[N, d_in]` on that path, for loss terms that encode more latents (AuxK).
    """

    __slots__ = ("x_hat", "pre", "codes", "enc_in", "_c", "_stats")

    def __init__(self, x_hat: Tensor, c: Tensor | None = None, pre: Tensor | None = None,
                 codes=None, enc_in: Tensor | None = None):  # fmt: skip
        if c is None and codes is None:
            raise ValueError("ForwardOutput needs c or codes")
        self.x_hat, self._c, self.pre, self.codes, self.enc_in = x_hat, c, pre, codes, enc_in
        self._stats = None

    @property
    def c(self) -> Tensor:
        """Latents `[..., d_sae]`, dense."""
        if self._c is None:
            self._c = self.codes.dense().view(*self.x_hat.shape[:-1], self.codes.d_sae)
        return self._c

    def __iter__(self):
        return iter((self.x_hat, self.c, self.pre))

    def _replace(self, **kw) -> ForwardOutput:
        """A copy with the given fields replaced (as NamedTuple._replace)."""
        have = dict(x_hat=self.x_hat, c=self._c, pre=self.pre, codes=self.codes,
                    enc_in=self.enc_in)  # fmt: skip
        return ForwardOutput(**(have | kw))

    def save(self) -> ForwardOutput:
        """nnsight: mark every tensor to be kept past the trace (`spliced_pass`)."""

        for name in ("x_hat", "_c", "pre", "enc_in"):
            if getattr(self, name) is not None:
                nnsight.save(getattr(self, name))
        if self.codes is not None:
            for t in self.codes[:4]:
                nnsight.save(t)
        return self

    @torch.no_grad()
    def stats(self) -> tuple[Tensor, float, int]:
        """`(fired [d_sae] bool, mean L0 per token, tokens)`, from one pass over the latents."""
        if self._stats is None:
            if self.codes is not None:
                fired, l0 = self.codes.fired(), self.codes.l0()
                n = self.codes.n_tokens
            else:
                c = self._c.detach().flatten(0, -2)
                counts = torch.count_nonzero(c, dim=0)  # one pass: per-latent firing counts
                fired, n = counts > 0, c.shape[0]
                l0 = float(counts.sum()) / max(1, n)
            self._stats = (fired, l0, n)
        return self._stats


Term = tuple[float, Tensor]  # (coefficient, unweighted scalar loss); the trainer sums coeff * value


class SAE(nn.Module):
    """Sparse autoencoder `x [..., d_in] -> c [..., d_sae] -> x_hat [..., d_in]`.

    `SAE.from_config(cfg)` builds the class registered for `cfg.architecture`, freshly
    initialised (from the global RNG). The base class holds what
    every architecture shares: `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`,
    `b_dec [d_in]`, the affine encoder and decoder, and unit-norm decoder rows kept by
    projection (Gao et al. 2024 §A.1). Subclasses override `activation` and, where they differ,
    `init_params`, `decoder_directions`, the constraint hooks and `loss_terms`.
    """

    cfg_class: ClassVar[type[SAEConfig]] = SAEConfig
    # `TrainConfig.b_dec_init="auto"` starts b_dec at the data's mean (openai's TopK does)
    b_dec_from_data: ClassVar[bool] = False

    @staticmethod
    def from_config(cfg: SAEConfig) -> SAE:
        """A new SAE of `cfg`'s architecture (the class registered as `cfg.architecture`)."""
        if not isinstance(cfg, SAEConfig):
            raise TypeError(f"SAE.from_config needs an SAEConfig, got {type(cfg).__name__}")
        return architecture(cfg.architecture)(cfg)

    def __init__(self, cfg: SAEConfig):
        if type(self) is SAE:
            raise TypeError("SAE is the base of the architectures; build one with "
                            "SAE.from_config(cfg)")  # fmt: skip
        super().__init__()
        if not isinstance(cfg, self.cfg_class):
            raise TypeError(f"{type(self).__name__} needs a {self.cfg_class.__name__}, "
                            f"got {type(cfg).__name__}")  # fmt: skip
        if cfg.d_in is None or cfg.d_sae is None:
            raise ValueError(f"building an SAE needs d_in and d_sae, got {cfg.d_in}, {cfg.d_sae}; "
                             "use cfg.for_site(d_in)")  # fmt: skip
        check_fits(cfg.d_in, cfg.d_sae)
        self.cfg = cfg
        W_enc, b_enc, W_dec = self.init_params(cfg.d_in, cfg.d_sae)
        self.W_enc = nn.Parameter(W_enc.contiguous())
        self.W_dec = nn.Parameter(W_dec.contiguous())
        self.b_enc = nn.Parameter(b_enc)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        # Every SAE has one (1.0 with normalize_activations="none"; ARCHITECTURE.md §6): set
        # before training (`set_act_scale`), saved and loaded with the weights, so a loaded SAE
        # takes and returns raw activations. Multiplying by 1.0 is exact, so unscaled SAEs
        # compute what they computed without it.
        self.register_buffer("act_scale", torch.tensor(1.0))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict`; a state without `act_scale` loads as 1.0 where the SAE
        does not normalise (`with_act_scale`: checkpoints written before every SAE had one)."""
        return super().load_state_dict(with_act_scale(self.cfg, state_dict), strict, assign)

    def init_params(self, d_in: int, d_sae: int) -> tuple[Tensor, Tensor, Tensor]:
        """`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]` at initialisation."""
        # Gao et al. 2024 §A.1: random unit-norm decoder rows and encoder = decoder transpose
        # (each latent reads the direction it writes), which keeps latents from dying early.
        W_dec = F.normalize(torch.randn(d_sae, d_in), dim=-1)
        return W_dec.T.clone(), torch.zeros(d_sae), W_dec

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the parameters."""
        return self.W_enc.dtype

    @property
    def needs_grad(self) -> bool:
        """Whether `encode` needs dL/dx at the site (`grad`)."""
        return self.cfg.needs_grad

    def decoder_directions(self) -> Tensor:
        """The dictionary's rows `[d_sae, d_in]` as `decode` uses them: unit norm for every
        architecture but the transcoders, whose rows carry the output's scale (studies that
        want directions normalise them)."""
        return self.W_dec  # kept at unit norm by `normalize_decoder_` after each step

    def normalize(self, x: Tensor) -> Tensor:
        """`x [..., d_in]` in the units the SAE works in: `x * act_scale` (or `x` unchanged)."""
        return x * self.act_scale

    @torch.no_grad()
    def set_act_scale(self, mean_norm: float) -> None:
        """Set `act_scale = sqrt(d_in) / mean_norm` from the mean norm of raw activations."""
        if self.cfg.normalize_activations == "none":
            raise ValueError("normalize_activations='none': this SAE's act_scale stays 1.0")
        if not (mean_norm > 0 and math.isfinite(mean_norm)):
            raise ValueError(f"mean activation norm {mean_norm!r} must be finite and > 0")
        self.act_scale.fill_(math.sqrt(self.cfg.d_in) / mean_norm)

    def encoder_input(self, x: Tensor) -> Tensor:
        """What the encoder multiplies: `x * act_scale` (minus `b_dec` with pre_subtract_b_dec)."""
        x = self.normalize(x)
        return x - self.b_dec if self.cfg.pre_subtract_b_dec else x

    def pre_acts(self, x: Tensor) -> Tensor:
        """Encoder pre-activations `z [..., d_sae]` of raw `x [..., d_in]` (normalised here)."""
        x_in = self.encoder_input(x)
        # addmm: the bias is added inside the matmul, not in a second pass over [N, d_sae]
        pre = torch.addmm(self.b_enc, x_in.reshape(-1, x_in.shape[-1]), self.W_enc)
        return pre.view(*x_in.shape[:-1], pre.shape[-1])

    def activation(self, pre: Tensor, grad: Tensor | None) -> Tensor:
        """Latents `c [..., d_sae]` from pre-activations `pre [..., d_sae]` (architecture rule)."""
        raise NotImplementedError

    def check_grad(self, x: Tensor, grad: Tensor | None) -> None:
        """Raise unless `grad` (dL/dx, `[..., d_in]` like `x`) is given where it is needed."""
        if self.needs_grad:
            if grad is None:
                raise ValueError(f"architecture={self.cfg.architecture!r} needs grad (dL/dx at "
                                 "the site, [..., d_in])")  # fmt: skip
            if grad.shape != x.shape:
                raise ValueError(f"grad has shape {tuple(grad.shape)}, x has {tuple(x.shape)}")

    def encode(self, x: Tensor, grad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latents `c [..., d_sae]` and pre-activations `[..., d_sae]` of `x [..., d_in]`.

        `grad [..., d_in]` is dL/dx at the clean activation, required when `needs_grad`; other
        architectures ignore it. Always the dense path (`forward` may take the sparse one).
        """
        self.check_grad(x, grad)
        pre = self.pre_acts(x)
        return self.activation(pre, grad if self.needs_grad else None), pre

    def decode(self, c: Tensor) -> Tensor:
        """Reconstruction `x_hat [..., d_in]` of latents `c [..., d_sae]`, in raw units."""
        return (c @ self.decoder_directions() + self.b_dec) / self.act_scale

    # "auto": the sparse kernels where the architecture has them (`sparse_codes`) and they pay
    # at this shape (`sparse_pays`); "sparse": wherever it has them; "dense": never. Not part of
    # the config: both paths compute the same function (tests/test_sparse.py).
    kernels: str = "auto"

    @property
    def uses_sparse(self) -> bool:
        """Whether `forward` takes the sparse path (`saelab.core.sparse`)."""
        if self.kernels not in ("auto", "sparse", "dense"):
            raise ValueError(f"kernels={self.kernels!r} is unknown; valid: auto, sparse, dense")
        if self.kernels == "dense" or type(self).sparse_codes is SAE.sparse_codes:
            return False
        return self.kernels == "sparse" or self.sparse_pays()

    def sparse_pays(self) -> bool:
        """Whether the sparse kernels beat the dense path at this SAE's shape (`kernels="auto"`)."""
        return True

    def sparse_codes(self, x_in: Tensor, pre: Tensor, grad: Tensor | None):
        """The selected latents as `sparse.SparseCodes`, for `x_in [N, d_in]` (the encoder's
        input, with autograd), `pre [N, d_sae]` (without) and `grad [N, d_in]` or None.
        Architectures with a sparse path override this; the base class has none."""
        raise NotImplementedError

    def forward(self, x: Tensor, grad: Tensor | None = None) -> ForwardOutput:
        """Encode and decode `x [..., d_in]` (`grad [..., d_in]` when `needs_grad`)."""
        if not self.uses_sparse:
            c, pre = self.encode(x, grad)
            return ForwardOutput(self.decode(c), c, pre)
        self.check_grad(x, grad)

        lead, d_in = x.shape[:-1], x.shape[-1]
        x_in = self.encoder_input(x).reshape(-1, d_in)
        with torch.no_grad():  # the dense matmul only selects; gradients take the sparse path
            pre = torch.addmm(self.b_enc, x_in, self.W_enc)
        g = grad.reshape(-1, d_in) if self.needs_grad else None
        codes = self.sparse_codes(x_in, pre, g)
        x_hat = (sparse.decode(codes, self.decoder_directions()) + self.b_dec) / self.act_scale
        return ForwardOutput(x_hat.view(*lead, d_in), pre=pre.view(*lead, -1), codes=codes,
                             enc_in=x_in)  # fmt: skip

    def loss_terms(self, x: Tensor, out: ForwardOutput, dead: Tensor) -> dict[str, Term]:
        """The architecture's own loss terms for input `x [..., d_in]` and its output.

        `x` and `out.x_hat` are in the SAE's own units (`normalize`: raw times `act_scale`).
        `dead [d_sae]` marks latents that have not fired for `TrainConfig.dead_tokens` tokens.
        Returns `{name: (coefficient, scalar)}`; none by default.
        """
        return {}

    @property
    def per_token_k(self) -> int | None:
        """How many latents the SAE selects for every token, where that number is fixed (the
        per-token TopK selections: topk, gtopk); None otherwise (`metrics.selected_latents`)."""
        return None

    # --- SAELens v6 interop (`saelab.core.saelens`; ARCHITECTURE.md §7) --------------------------

    # The SAELens architectures this class reads. Declared by each class for itself and never
    # inherited (`saelens.reader`): a subclass does not read what its parent reads.
    saelens_reads: ClassVar[tuple[str, ...]] = ()

    def to_saelens(self, scale: float, allow_reduced: bool = False) -> SAELensForm:
        """This SAE as SAELens writes it, beyond the shared `W_enc`, `W_dec`, `b_enc`, `b_dec`
        (`saelens.raw_weights`): SAELens' architecture name, extra raw-unit weights (thresholds
        `[d_sae]` divided by `scale`, the act_scale), cfg fields and metadata. `allow_reduced`:
        an SAE that selects with dL/dx may export what it reduces to without it. Raises where
        SAELens has no equivalent."""
        ok = [n for n in architectures() if architecture(n).to_saelens is not SAE.to_saelens]
        raise ValueError(f"architecture={self.cfg.architecture!r} has no SAELens equivalent; "
                         f"exportable: {sorted(ok)}")  # fmt: skip

    @classmethod
    def saelens_fields(cls, meta: dict, w: dict[str, Tensor], where: str) -> dict[str, Any]:
        """This architecture's config fields read from a SAELens `cfg.json` dict `meta` of an
        architecture in `saelens_reads`. Turns the SAELens weights `w` (name -> float tensor,
        changed in place) into this class's state; raises, naming `where`, what it cannot
        reproduce exactly."""
        return {}

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Remove from W_dec.grad its component along each row (before the optimiser step)."""
        # Gao et al. 2024 (openai/sparse_autoencoder): the parallel component only changes the
        # norm, which normalize_decoder_ undoes; removing it keeps Adam's moments meaningful.
        if self.W_dec.grad is None:
            return
        u = F.normalize(self.W_dec, dim=-1)
        self.W_dec.grad -= (self.W_dec.grad * u).sum(-1, keepdim=True) * u

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Project W_dec rows back to unit norm (after the optimiser step)."""
        self.W_dec.copy_(F.normalize(self.W_dec, dim=-1))

    def before_step_(self) -> None:
        """Called by the trainer after backward, before clipping and the optimiser step."""
        self.remove_parallel_decoder_grad_()

    @torch.no_grad()
    def after_step_(self, out: ForwardOutput) -> None:
        """Called by the trainer after the optimiser step with the step's output."""
        self.normalize_decoder_()


def with_act_scale(cfg: SAEConfig, state: dict) -> dict:
    """`state` (tensor name -> tensor) with `act_scale = 1.0` added when it lacks one and `cfg`
    does not normalise: such SAEs were saved without the buffer (only normalising SAEs had it)."""
    if "act_scale" in state or cfg.normalize_activations != "none":
        return state
    return {**state, "act_scale": torch.tensor(1.0)}


@contextmanager
def eval_mode(saes):
    """Put SAEs (an iterable) in eval mode for the block, restoring each one's mode after.

    Only architectures with a train/inference difference care (BatchTopK's global threshold).
    """
    saes = list(saes)
    was = [sae.training for sae in saes]
    for sae in saes:
        sae.eval()
    try:
        yield
    finally:
        for sae, mode in zip(saes, was, strict=True):
            sae.train(mode)


# --- saving and loading --------------------------------------------------------------------------


def library_version() -> str:
    """saelab's version, recorded in every saved SAE."""
    try:
        return version("saelab")
    except Exception:  # not installed: fall back to the source tree's version
        import saelab  # here, not at the top: `saelab` imports this module

        return getattr(saelab, "__version__", "unknown")


def save_sae(sae: SAE, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write `path/cfg.json` (SAELens field names where they exist) and `path/sae.safetensors`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    k = getattr(cfg, "k", None)
    meta: dict[str, Any] = {
        # SAELens names first, so SAELens-style tooling can read the shape and provenance.
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "architecture": cfg.architecture,
        "activation_fn_str": "topk" if k is not None else cfg.architecture,
        "activation_fn_kwargs": {"k": k} if k is not None else {},
        "apply_b_dec_to_input": cfg.pre_subtract_b_dec,
        "normalize_activations": "none",
        "hook_name": cfg.hook_name,
        "model_name": cfg.model_name,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "device": str(sae.device),
    }
    meta.update(asdict(cfg))  # ours: every field of the architecture's config
    meta["saelab_version"] = library_version()
    if extra:
        meta["extra"] = extra
    text = json.dumps(meta, indent=2, default=str) + "\n"
    tensors = {name: p.detach().contiguous().cpu() for name, p in sae.state_dict().items()}
    meta_st = {SHA_KEY: tensors_sha256(tensors)}  # verified by load_sae (integrity.py)
    write_atomic(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata=meta_st))
    write_atomic(path / CFG_FILE, lambda tmp: tmp.write_text(text))
    return path


def _read_cfg(cfg_path: Path) -> tuple[dict, SAEConfig]:
    """`cfg.json`'s dict and the config it describes; clear errors for a missing or bad file."""
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no SAE config at {cfg_path}")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"SAE config {cfg_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"SAE config {cfg_path} must hold a JSON object")
    for name in ("d_in", "d_sae", "architecture"):
        if name not in meta:
            raise ValueError(f"SAE config {cfg_path} lacks the required field {name!r}")
    if meta.get("k") is None and isinstance(meta.get("activation_fn_kwargs"), dict):
        meta["k"] = meta["activation_fn_kwargs"].get("k")  # a SAELens-only config
    try:
        return meta, SAEConfig.from_dict(meta)
    except ValueError as e:
        raise ValueError(f"SAE config {cfg_path}: {e}") from e


def _read_weights(weights_path: Path) -> dict[str, Tensor]:
    """The tensors of `sae.safetensors`; clear errors for a missing, corrupt or non-finite file."""
    if not weights_path.is_file():
        raise FileNotFoundError(f"no SAE weights at {weights_path}")
    try:
        tensors = load_file(weights_path)
    except Exception as e:  # safetensors raises its own error type on a truncated/corrupt file
        raise ValueError(
            f"cannot read SAE weights {weights_path} (truncated or corrupt?): {e}"
        ) from e
    with safe_open(weights_path, "pt") as f:
        stored = (f.metadata() or {}).get(SHA_KEY)
    if stored is not None and stored != tensors_sha256(tensors):
        raise ValueError(
            f"SAE weights {weights_path} do not match the checksum saved with them (the file is "
            "damaged); restore it from a copy or train it again"
        )
    bad = sorted(name for name, t in tensors.items()
                 if t.is_floating_point() and not torch.isfinite(t).all())  # fmt: skip
    if bad:
        raise ValueError(f"SAE weights {weights_path} hold NaN or inf values in {bad}; refusing "
                         "to load a broken SAE")  # fmt: skip
    return tensors


def _dtype(name, stored: torch.dtype, cfg_path: Path) -> torch.dtype:
    """The torch dtype `cfg.json` names (`"float32"`, `"torch.bfloat16"`), or `stored` if none."""
    if name is None:
        return stored
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"SAE config in {cfg_path} names dtype {name!r}, not a floating-point "
                         "torch dtype (e.g. 'float32', 'bfloat16')")  # fmt: skip
    return dtype


def load_sae(
    path: str | os.PathLike,
    d_in: int | None = None,
    device: str | torch.device | None = None,
    sae_id: str | None = None,
) -> SAE:
    """Load an SAE written by `save_sae` or by SAELens; `d_in` (if given) must match the site.

    The architecture's class is looked up by name and its full state (parameters and buffers)
    is loaded strictly: a missing, extra or misshapen tensor is an error. A folder SAELens wrote
    (`sae_weights.safetensors`) is read by `saelab.core.saelens.load_saelens`; with `sae_id`,
    `path` names a SAELens pretrained release, fetched through sae_lens' registry;
    `hf://org/repo[@revision]/folder` is a folder of a Hub repository (`push_to_hub`'s layout),
    fetched into the Hub client's cache. A folder EleutherAI sparsify wrote (its `cfg.json` has no
    `architecture`) is read by `saelab.core.sparsify_io.load_sparsify`. Returned in eval mode.
    """
    from saelab.core import saelens  # here, not at the top: saelens builds on this module

    if sae_id is not None:
        sae = saelens.load_pretrained(str(path), sae_id)
        return sae.to(device) if device is not None else sae
    if str(path).startswith("hf://"):  # a folder of a Hub repository (`saelab.core.hub`)
        from saelab.core import hub

        path = hub.download(str(path))
    path = Path(path)
    from saelab.core import sparsify_io  # here, not at the top: it builds on this module

    if sparsify_io.is_sparsify_folder(path):  # sae.safetensors too, but sparsify's cfg.json
        sae = sparsify_io.load_sparsify(path)
        if d_in is not None and sae.cfg.d_in != d_in:
            raise ValueError(f"SAE at {path} has d_in={sae.cfg.d_in} but the site has d_in={d_in}")
        return sae.to(device) if device is not None else sae
    if not (path / WEIGHTS_FILE).exists() and saelens.is_saelens_folder(path):
        sae = saelens.load_saelens(path)
        if d_in is not None and sae.cfg.d_in != d_in:
            raise ValueError(f"SAE at {path} has d_in={sae.cfg.d_in} but the site has d_in={d_in}")
        return sae.to(device) if device is not None else sae
    if (path / CFG_FILE).is_file() and not any(
        (path / w).exists() for w in (WEIGHTS_FILE, saelens.WEIGHTS)
    ):
        raise FileNotFoundError(f"no SAE weights in {path}: a saelab SAE folder holds "
                                f"{WEIGHTS_FILE}, a SAELens one {saelens.WEIGHTS}")  # fmt: skip
    meta, cfg = _read_cfg(path / CFG_FILE)
    if d_in is not None and cfg.d_in != d_in:
        raise ValueError(f"SAE at {path} has d_in={cfg.d_in} but the site has d_in={d_in}")
    weights_path = path / WEIGHTS_FILE
    tensors = with_act_scale(cfg, _read_weights(weights_path))
    with torch.random.fork_rng(devices=[]):  # building the module must not move the global RNG
        sae = SAE.from_config(cfg)
    expected = {name: tuple(t.shape) for name, t in sae.state_dict().items()}
    if set(tensors) != set(expected):
        raise ValueError(
            f"SAE weights {weights_path} hold tensors {sorted(tensors)}, "
            f"expected {sorted(expected)} for architecture={cfg.architecture!r}"
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"SAE weights {weights_path}: {name} has shape {tuple(tensors[name].shape)}, "
                f"expected {shape} from the config"
            )
    # The SAE's dtype is its config's, as in SAELens; the file may store the weights more
    # compactly (outputs/reference keeps float16 matrices: ARCHITECTURE.md §6).
    sae = sae.to(dtype=_dtype(meta.get("dtype"), tensors["W_enc"].dtype, cfg_path=path))
    sae.load_state_dict(tensors, strict=True)
    sae.extra = meta.get("extra") or {}  # provenance: the training config and data
    sae.eval()
    return sae.to(device) if device is not None else sae
