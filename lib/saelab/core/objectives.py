"""Training objectives: what an SAE is trained to preserve (Braun et al. 2024 §2).

An objective says what it needs from the frozen model and returns named loss terms; the training
step, the activation cache and the evaluation ask it instead of testing loss names.

| name | needs | terms |
|---|---|---|
| `local` | the site's clean activation only | MSE(x_hat, x) per site |
| `e2e` | clean logits; the SAE spliced into the model | kl_coeff * KL(P_clean ‖ P_sae) |
| `e2e+ds` | as e2e, plus the residual stream after the last site | + ds_coeff * downstream MSE |
| `e2e+mse` | as e2e | kl_coeff * KL + mse_coeff * MSE(x_hat, x) per site |

Each term is `(coefficient, unweighted scalar)`; the architecture adds its own (sparsity, AuxK,
L0) per SAE (`SAE.loss_terms`). An objective is a frozen config that owns its coefficients, as
e2e_sae's loss configs do: `TrainConfig(loss=objective("e2e+ds", kl_coeff=0.5, ds_coeff=2.5))`,
or `loss="e2e"` for the defaults. See ARCHITECTURE.md, "Adding an objective".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from saelab.core import losses
from saelab.core.models import Site
from saelab.core.passes import Clean, Spliced, kl, later_sites
from saelab.core.sae import ForwardOutput, Term, check_number


@dataclass(frozen=True)
class Objective:
    """Base objective; subclasses set the class flags and implement `terms`."""

    name: ClassVar[str] = ""
    needs_model: ClassVar[bool] = True  # False: stored activations suffice (activation cache)
    spliced: ClassVar[bool] = True  # the SAE's output runs through the rest of the model
    needs_logits: ClassVar[bool] = False  # the clean pass must return the logits

    def __post_init__(self):
        for f in fields(self):  # a float field is a coefficient; others are choices (subclass)
            if f.type in ("float", float):
                check_number(f.name, getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        """`{"name": ..., <coefficient>: ...}`, what `objective(**d)` reads back."""
        return {"name": self.name} | asdict(self)

    def later(self, lm, sites: list[Site]) -> list[Site]:
        """Sites after the last SAE whose clean and spliced values the terms need."""
        return []

    def terms(
        self,
        clean: Clean,
        spliced: Spliced | None,
        outs: dict[Site, ForwardOutput],
        sites: list[Site],
        saes: dict,
    ) -> dict[str, Term]:
        """Named loss terms `{name: (coefficient, scalar)}` of one step.

        `clean` holds what the SAEs saw (`Clean.seen_by_saes`: kept positions, the SAE's dtype)
        and the whole clean logits and later residuals; `outs` the SAEs' outputs in raw units.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class Local(Objective):
    """Reconstruct each site's own activation: MSE(x_hat, x) (Braun et al. 2024 §2.1)."""

    name: ClassVar[str] = "local"
    needs_model: ClassVar[bool] = False
    spliced: ClassVar[bool] = False

    def terms(self, clean, spliced, outs, sites, saes) -> dict[str, Term]:
        """`{"mse": (1, MSE)}`, or `{"<site>/mse": ...}` per site, in each SAE's own units."""
        tag = (lambda s: "") if len(sites) == 1 else (lambda s: f"{s}/")
        norm = {s: saes[s].normalize for s in sites}  # identity unless activations are normalised
        return {
            f"{tag(s)}mse": (1.0, losses.mse_loss(norm[s](outs[s].x_hat), norm[s](clean.acts[s])))
            for s in sites
        }


@dataclass(frozen=True)
class E2E(Objective):
    """KL(P_clean ‖ P_sae) of the output with every SAE spliced in (Braun et al. 2024 §2.2)."""

    name: ClassVar[str] = "e2e"
    needs_logits: ClassVar[bool] = True
    kl_coeff: float = 1.0

    def terms(self, clean, spliced, outs, sites, saes) -> dict[str, Term]:
        """`{"kl": (kl_coeff, KL)}`."""
        return {
            "kl": (
                self.kl_coeff,
                kl(clean.logits, spliced.logits, target=clean.kl_target),
            )
        }


@dataclass(frozen=True)
class E2EDownstream(E2E):
    """e2e plus MSE of every later residual stream to its clean value (Braun et al. 2024 §2.3)."""

    name: ClassVar[str] = "e2e+ds"
    ds_coeff: float = 0.0  # no default: refused below, so a run says what it weighs
    # "normalised": each later layer's squared error over its clean mean square, the same units
    # on every model; "raw": Braun et al.'s MSE, whose coefficients fit GPT-2's scale only
    ds_units: str = "normalised"

    def __post_init__(self):
        super().__post_init__()
        if self.ds_coeff == 0:
            raise ValueError("loss='e2e+ds' needs ds_coeff > 0, e.g. the paper's "
                             "objective('e2e+ds', kl_coeff=0.5, ds_coeff=2.5)")  # fmt: skip
        if self.ds_units not in ("normalised", "raw"):
            raise ValueError(f"ds_units={self.ds_units!r} is not valid; choose 'normalised' "
                             "(each layer's error over its clean mean square), 'raw'")  # fmt: skip

    def later(self, lm, sites: list[Site]) -> list[Site]:
        later = later_sites(lm, sites)
        if not later:
            raise ValueError(
                f"loss='e2e+ds' at {[str(s) for s in sites]} has no later layer to reconstruct "
                "(the last site is the model's last residual stream); use loss='e2e' or an "
                "earlier site"
            )
        return later

    def terms(self, clean, spliced, outs, sites, saes) -> dict[str, Term]:
        """`{"kl": (kl_coeff, KL), "ds_mse": (ds_coeff, mean error over later layers)}`, the
        error in `ds_units` (`losses.downstream_mse`)."""
        ds = losses.downstream_mse(spliced.later, clean.later, self.ds_units == "normalised")
        return super().terms(clean, spliced, outs, sites, saes) | {"ds_mse": (self.ds_coeff, ds)}


@dataclass(frozen=True)
class E2ELocal(E2E):
    """KL plus each site's own MSE: the fine-tune objective of Karvonen 2025 (arXiv 2503.17272),
    which `TrainConfig.finetune` switches to for the last part of a run (`saelab.core.schedule`
    balances its KL against the MSE there)."""

    name: ClassVar[str] = "e2e+mse"
    mse_coeff: float = 1.0

    def terms(self, clean, spliced, outs, sites, saes) -> dict[str, Term]:
        """`{"kl": (kl_coeff, KL), "mse": (mse_coeff, MSE)}` (`"<site>/mse"` per site when
        there are several), the MSE in each SAE's own units as the local objective's."""
        local = Local().terms(clean, spliced, outs, sites, saes)
        mse = {name: (self.mse_coeff, value) for name, (_, value) in local.items()}
        return super().terms(clean, spliced, outs, sites, saes) | mse


OBJECTIVES: dict[str, type[Objective]] = {o.name: o for o in (Local, E2E, E2EDownstream, E2ELocal)}


def objective(name: str, **coeffs: float) -> Objective:
    """The objective called `name` with its coefficients (`objective("e2e", kl_coeff=0.5)`);
    a name or a coefficient it does not have is an error listing the valid ones."""
    if name not in OBJECTIVES:
        raise ValueError(f"loss={name!r} is not valid; choose one of {list(OBJECTIVES)}")
    cls = OBJECTIVES[name]
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(coeffs) - set(known))
    if unknown:
        raise ValueError(f"objective {name!r} has no coefficient {unknown[0]!r}; its "
                         f"coefficients: {known or 'none'}")  # fmt: skip
    return cls(**coeffs)
