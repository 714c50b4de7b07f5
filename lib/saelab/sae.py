"""Sparse autoencoders: ReLU (e2e_sae), TopK (Gao et al. 2024) and gradient TopK (Olmo et al. 2024).

One `SAE` module covers the three architectures; they differ only in the activation function
(`encode`) and in how the decoder is kept at unit norm. Shapes: `x [..., d_in]`, `c [..., d_sae]`.

    sae = SAE(SAEConfig(d_in=64, d_sae=512, architecture="topk", k=16))
    x_hat, c, pre = sae(x)
    save_sae(sae, "outputs/sae"); sae = load_sae("outputs/sae", d_in=64)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

ARCHITECTURES = ("relu", "topk", "gtopk")
VALUE_MODES = ("plain", "score")
GRAD_NORMS = ("unit", "rms", "none")
GRAD_EPS = 1e-8
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


@dataclass(frozen=True)
class SAEConfig:
    """Shape, activation function and provenance of an SAE."""

    d_in: int
    d_sae: int
    architecture: str
    k: int | None = None  # active latents per token (topk, gtopk)
    beta: float = 1.0  # weight of the gradient term in the gtopk score
    value_mode: str = (
        "plain"  # gtopk: selected latents carry ReLU(z) ("plain") or ReLU(s) ("score")
    )
    grad_norm: str = "unit"  # gtopk: how g = dL/dx is normalised before scoring
    pre_subtract_b_dec: bool = False  # z = (x - b_dec) W_enc + b_enc (Gao et al. 2024 §2.2)
    k_aux: int | None = None  # AuxK latents; None: min(d_in // 2, d_sae) (Gao et al. 2024 §A.2)
    site: str = ""
    hook_name: str = ""
    model_name: str = ""

    def __post_init__(self):
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture={self.architecture!r} is unknown; valid: {', '.join(ARCHITECTURES)}"
            )
        if self.architecture in ("topk", "gtopk"):
            if self.k is None:
                raise ValueError(f"k is required for architecture={self.architecture!r}")
            if not _is_int(self.k) or self.k < 1:
                raise ValueError(f"k={self.k!r} must be an int >= 1")
            if self.k > self.d_sae:
                raise ValueError(f"k={self.k} > d_sae={self.d_sae}")
        elif self.k is not None and (not _is_int(self.k) or not 1 <= self.k <= self.d_sae):
            raise ValueError(f"k={self.k!r} must be None or an int in [1, d_sae={self.d_sae}]")
        if isinstance(self.beta, bool) or not isinstance(self.beta, int | float):
            raise ValueError(f"beta={self.beta!r} must be a number >= 0")
        if not math.isfinite(self.beta) or self.beta < 0:
            raise ValueError(f"beta={self.beta!r} must be finite and >= 0")
        if self.value_mode not in VALUE_MODES:
            raise ValueError(
                f"value_mode={self.value_mode!r} is unknown; valid: {', '.join(VALUE_MODES)}"
            )
        if self.grad_norm not in GRAD_NORMS:
            raise ValueError(
                f"grad_norm={self.grad_norm!r} is unknown; valid: {', '.join(GRAD_NORMS)}"
            )
        if not isinstance(self.pre_subtract_b_dec, bool):
            raise ValueError(f"pre_subtract_b_dec={self.pre_subtract_b_dec!r} must be a bool")
        if self.k_aux is not None and (
            not _is_int(self.k_aux) or not 1 <= self.k_aux <= self.d_sae
        ):
            raise ValueError(
                f"k_aux={self.k_aux!r} must be None or an int in [1, d_sae={self.d_sae}]"
            )
        for name in ("site", "hook_name", "model_name"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a str")

    @property
    def n_aux(self) -> int:
        """AuxK latent count: `k_aux`, or d_in // 2 capped at d_sae (Gao et al. 2024 §A.2)."""
        return self.k_aux if self.k_aux is not None else max(1, min(self.d_in // 2, self.d_sae))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ForwardOutput(NamedTuple):
    """`x_hat [..., d_in]`, `c [..., d_sae]` (zero off the active set), `pre [..., d_sae]` (z)."""

    x_hat: Tensor
    c: Tensor
    pre: Tensor


class SAE(nn.Module):
    """Sparse autoencoder `x [..., d_in] -> c [..., d_sae] -> x_hat [..., d_in]`."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        if cfg.architecture == "relu":
            # e2e_sae (Braun et al. 2024 §2): nn.Linear's default encoder init and an orthogonal
            # decoder (rows normalised here too, which the forward pass does anyway). b_dec starts
            # at zero rather than nn.Linear's random bias, as for TopK.
            bound = 1 / math.sqrt(d_in)
            W_enc = torch.empty(d_in, d_sae).uniform_(-bound, bound)
            b_enc = torch.empty(d_sae).uniform_(-bound, bound)
            W_dec = nn.init.orthogonal_(torch.empty(d_sae, d_in))
            W_dec = F.normalize(W_dec, dim=-1)
        else:
            # Gao et al. 2024 §A.1: random unit-norm decoder rows and encoder = decoder transpose
            # (each latent reads the direction it writes), which keeps latents from dying early.
            W_dec = F.normalize(torch.randn(d_sae, d_in), dim=-1)
            W_enc = W_dec.T.clone()
            b_enc = torch.zeros(d_sae)
        self.W_enc = nn.Parameter(W_enc.contiguous())
        self.W_dec = nn.Parameter(W_dec.contiguous())
        self.b_enc = nn.Parameter(b_enc)
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the parameters."""
        return self.W_enc.dtype

    def decoder_directions(self) -> Tensor:
        """Unit-norm dictionary directions `[d_sae, d_in]`."""
        if self.cfg.architecture == "relu":
            # e2e_sae normalises inside forward, so gradients flow through the normalisation.
            return F.normalize(self.W_dec, dim=-1)
        # TopK keeps W_dec at unit norm by projection after each step (Gao et al. 2024 §A.1).
        return self.W_dec

    def pre_acts(self, x: Tensor) -> Tensor:
        """Encoder pre-activations `z [..., d_sae]` of `x [..., d_in]`."""
        if self.cfg.pre_subtract_b_dec:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def scores(self, pre: Tensor, grad: Tensor) -> Tensor:
        """gTopK scores `s = z + beta z |g W_dec^T| [..., d_sae]` (Olmo et al. 2024 §3)."""
        g = normalize_grad(grad.detach().to(pre.dtype), self.cfg.grad_norm)
        return pre + self.cfg.beta * pre * (g @ self.decoder_directions().T).abs()

    def encode(self, x: Tensor, grad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latents `c [..., d_sae]` and pre-activations `[..., d_sae]` of `x [..., d_in]`.

        `grad [..., d_in]` is dL/dx at the clean activation, required by gtopk; relu and topk
        ignore it.
        """
        pre = self.pre_acts(x)
        arch = self.cfg.architecture
        if arch == "relu":
            return F.relu(pre), pre
        if arch == "topk":
            values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, indices, F.relu(values)), pre
        if grad is None:
            raise ValueError("architecture='gtopk' needs grad (dL/dx at the site, [..., d_in])")
        if grad.shape != x.shape:
            raise ValueError(f"grad has shape {tuple(grad.shape)}, x has {tuple(x.shape)}")
        s = self.scores(pre, grad)
        indices = s.topk(self.cfg.k, dim=-1, sorted=False).indices
        # Olmo et al. do not settle which value a selected latent carries: the plain ReLU(z)
        # (default) or the score; with "score", gradients also flow through the score's |g W_dec^T|.
        carrier = pre if self.cfg.value_mode == "plain" else s
        values = F.relu(carrier.gather(-1, indices))
        return torch.zeros_like(pre).scatter(-1, indices, values), pre

    def decode(self, c: Tensor) -> Tensor:
        """Reconstruction `x_hat [..., d_in]` of latents `c [..., d_sae]`."""
        return c @ self.decoder_directions() + self.b_dec

    def forward(self, x: Tensor, grad: Tensor | None = None) -> ForwardOutput:
        """Encode and decode `x [..., d_in]` (`grad [..., d_in]` for gtopk)."""
        c, pre = self.encode(x, grad)
        return ForwardOutput(self.decode(c), c, pre)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Project W_dec rows back to unit norm (topk/gtopk; a no-op for relu)."""
        if self.cfg.architecture == "relu":
            return
        self.W_dec.copy_(F.normalize(self.W_dec, dim=-1))

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Remove from W_dec.grad its component along each row (topk/gtopk; no-op for relu)."""
        # Gao et al. 2024 (openai/sparse_autoencoder): the parallel component only changes the
        # norm, which normalize_decoder_ undoes; removing it keeps Adam's moments meaningful.
        if self.cfg.architecture == "relu" or self.W_dec.grad is None:
            return
        u = F.normalize(self.W_dec, dim=-1)
        self.W_dec.grad -= (self.W_dec.grad * u).sum(-1, keepdim=True) * u


def normalize_grad(grad: Tensor, mode: str) -> Tensor:
    """Normalise `grad [..., d_in]`: "unit" per token, "rms" by its batch RMS, or "none"."""
    # The scale of dL/dx depends on CE mean vs sum and on the batch size, and beta multiplies
    # it, so it is normalised to make beta comparable across runs (DESIGN.md §3, g-SAE).
    if mode == "unit":
        return grad / (grad.norm(dim=-1, keepdim=True) + GRAD_EPS)
    if mode == "rms":
        return grad / (grad.pow(2).mean().sqrt() + GRAD_EPS)
    if mode == "none":
        return grad
    raise ValueError(f"grad_norm={mode!r} is unknown; valid: {', '.join(GRAD_NORMS)}")


# --- saving and loading --------------------------------------------------------------------------

REQUIRED_FIELDS = ("d_in", "d_sae", "architecture")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("saelab")
    except Exception:  # not installed: fall back to the source tree's version
        import saelab

        return getattr(saelab, "__version__", "unknown")


def _atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_sae(sae: SAE, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write `path/cfg.json` (SAELens field names where they exist) and `path/sae.safetensors`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    meta: dict[str, Any] = {
        # SAELens names first, so SAELens-style tooling can read the shape and provenance.
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "architecture": cfg.architecture,
        "activation_fn_str": "relu" if cfg.architecture == "relu" else "topk",
        "activation_fn_kwargs": {"k": cfg.k} if cfg.architecture != "relu" else {},
        "apply_b_dec_to_input": cfg.pre_subtract_b_dec,
        "normalize_activations": "none",
        "hook_name": cfg.hook_name,
        "model_name": cfg.model_name,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "device": str(sae.device),
    }
    meta.update(asdict(cfg))  # ours: k, site, beta, value_mode, grad_norm, pre_subtract_b_dec...
    meta["saelab_version"] = _version()
    if extra:
        meta["extra"] = extra
    text = json.dumps(meta, indent=2, default=str) + "\n"
    tensors = {name: p.detach().contiguous().cpu() for name, p in sae.state_dict().items()}
    _atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))
    _atomic_write(path / CFG_FILE, lambda tmp: Path(tmp).write_text(text))
    return path


def load_sae(
    path: str | os.PathLike, d_in: int | None = None, device: str | torch.device | None = None
) -> SAE:
    """Load an SAE written by `save_sae`; `d_in` (if given) must match the site's width."""
    path = Path(path)
    cfg_path, weights_path = path / CFG_FILE, path / WEIGHTS_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no SAE config at {cfg_path}")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"SAE config {cfg_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"SAE config {cfg_path} must hold a JSON object")
    for name in REQUIRED_FIELDS:
        if name not in meta:
            raise ValueError(f"SAE config {cfg_path} lacks the required field {name!r}")
    kwargs = {f.name: meta[f.name] for f in fields(SAEConfig) if f.name in meta}
    if kwargs.get("k") is None and isinstance(meta.get("activation_fn_kwargs"), dict):
        kwargs["k"] = meta["activation_fn_kwargs"].get("k")  # a SAELens-only config
    try:
        cfg = SAEConfig(**kwargs)
    except ValueError as e:
        raise ValueError(f"SAE config {cfg_path}: {e}") from e
    if d_in is not None and cfg.d_in != d_in:
        raise ValueError(f"SAE at {path} has d_in={cfg.d_in} but the site has d_in={d_in}")

    if not weights_path.is_file():
        raise FileNotFoundError(f"no SAE weights at {weights_path}")
    try:
        tensors = load_file(weights_path)
    except Exception as e:  # safetensors raises its own error type on a truncated/corrupt file
        raise ValueError(
            f"cannot read SAE weights {weights_path} (truncated or corrupt?): {e}"
        ) from e
    expected = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_enc": (cfg.d_sae,),
        "b_dec": (cfg.d_in,),
    }
    if set(tensors) != set(expected):
        raise ValueError(
            f"SAE weights {weights_path} hold tensors {sorted(tensors)}, "
            f"expected {sorted(expected)}"
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"SAE weights {weights_path}: {name} has shape {tuple(tensors[name].shape)}, "
                f"expected {shape} from the config"
            )
    with torch.random.fork_rng(devices=[]):  # building the module must not move the global RNG
        sae = SAE(cfg)
    sae = sae.to(dtype=tensors["W_enc"].dtype)
    sae.load_state_dict(tensors)
    return sae.to(device) if device is not None else sae
