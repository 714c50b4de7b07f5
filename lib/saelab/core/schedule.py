"""The objective schedule: train with one objective, fine-tune with another over the last part.

    cfg = TrainConfig(loss="local", finetune=Finetune(fraction=0.1))   # local, then KL + MSE

Karvonen 2025 (arXiv 2503.17272) trains an SAE on MSE and fine-tunes it with KL + MSE over the
last few percent of its tokens, closing 20-50% of the CE-loss gap to end-to-end training at a
fraction of its cost. `Finetune` says what the last `fraction` of the steps train with (by default
`e2e+mse`, half KL and half MSE) and whether the KL is balanced: KL and MSE differ in scale by
orders of magnitude, so at the switch the KL coefficient is multiplied by `MSE / KL` measured on
the switch step's batch (over every rank), and the fine-tune's loss starts the size the MSE had.
A sparsity coefficient tuned for the MSE phase then means the same in the fine-tune (Karvonen
2025 §3, transferring penalties across the phases). ARCHITECTURE.md §4 ("The fine-tune").

The scale is measured once and kept in the run's log (a `{"kind": "finetune"}` record at the
switch step), which the checkpoint holds, so a run resumed after the switch uses the same scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saelab.core.objectives import Objective, objective
from saelab.core.sae import Term, check_number


@dataclass(frozen=True)
class Finetune:
    """The last `fraction` of a run's steps train with `loss`; `balance`: scale its KL term to
    the MSE's size at the switch (Karvonen 2025). `fraction` 1 fine-tunes from the first step
    (with `TrainConfig.init_from`, a pretrained SAE)."""

    loss: Objective = field(
        default_factory=lambda: objective("e2e+mse", kl_coeff=0.5, mse_coeff=0.5)
    )
    fraction: float = 0.1
    balance: bool = True

    def __post_init__(self):
        if isinstance(self.loss, str):
            object.__setattr__(self, "loss", objective(self.loss))
        elif isinstance(self.loss, dict):
            object.__setattr__(self, "loss", objective(**self.loss))
        if not isinstance(self.loss, Objective):
            raise ValueError(f"finetune loss={self.loss!r} must be an Objective, its name, or a "
                             "dict with 'name' and its coefficients")  # fmt: skip
        check_number("finetune fraction", self.fraction, 0.0, inclusive=False)
        if self.fraction > 1:
            raise ValueError(f"finetune fraction={self.fraction!r} must be in (0, 1]: the part "
                             "of the run's steps that fine-tune")  # fmt: skip
        if not isinstance(self.balance, bool):
            raise ValueError(f"finetune balance={self.balance!r} must be True or False")
        if self.balance and "kl_coeff" not in self.loss.to_dict():
            raise ValueError(f"finetune balance=True scales a KL term, and loss="
                             f"{self.loss.name!r} has none; use e2e, e2e+mse or e2e+ds, or "
                             "balance=False")  # fmt: skip

    def to_dict(self) -> dict:
        """`{"loss": {"name", coeffs}, "fraction", "balance"}`, what `Finetune(**d)` reads."""
        return {"loss": self.loss.to_dict(), "fraction": self.fraction, "balance": self.balance}


def as_finetune(value) -> Finetune | None:
    """`TrainConfig.finetune` from a `Finetune`, a dict of its fields, or None."""
    if value is None or isinstance(value, Finetune):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"loss", "fraction", "balance"})
        if unknown:
            raise ValueError(f"finetune has no field {unknown[0]!r}; its fields: loss, "
                             "fraction, balance")  # fmt: skip
        return Finetune(**value)
    raise ValueError(f"finetune={value!r} must be None, a Finetune or a dict of its fields")


def switch_step(cfg, n_steps: int) -> int:
    """The first step that fine-tunes: `n_steps` less `fraction` of them (at least one), or
    `n_steps` (never) without a fine-tune."""
    if cfg.finetune is None:
        return n_steps
    return n_steps - max(1, min(n_steps, round(cfg.finetune.fraction * n_steps)))


def objective_at(cfg, step: int, n_steps: int) -> Objective:
    """The objective step `step` (0-based) of an `n_steps` run trains with."""
    return cfg.finetune.loss if step >= switch_step(cfg, n_steps) else cfg.loss


def objectives(cfg) -> list[Objective]:
    """Every objective a run trains with, in order."""
    return [cfg.loss] + ([cfg.finetune.loss] if cfg.finetune is not None else [])


def kl_scale(log: list[dict]) -> float | None:
    """The KL scale the run's `{"kind": "finetune"}` record holds, or None before the switch."""
    for rec in reversed(log):
        if rec.get("kind") == "finetune":
            return rec["kl_scale"]
    return None


def balance_scale(logs: dict[str, float], mean_over_ranks) -> float:
    """`MSE / KL` of one step's unweighted values (`training.compute_loss`'s logs: each site's
    `mse` in its SAE's units, and `kl`), the MSE summed over sites; both averaged over ranks by
    `mean_over_ranks(tensor [2]) -> tensor [2]` so that every rank uses the same scale."""
    mse = sum(v for name, v in logs.items() if name.split("/")[-1] == "mse")
    both = mean_over_ranks(torch.tensor([mse, logs["kl"]], dtype=torch.float64))
    if not bool(both[1] > 0):
        raise ValueError(f"the fine-tune's balance needs a KL > 0 at the switch, got "
                         f"{float(both[1])}: the SAE already reproduces the model's output; "
                         "use balance=False")  # fmt: skip
    return float(both[0] / both[1])


def scaled(terms: dict[str, Term], scale: float) -> dict[str, Term]:
    """`terms` with the KL's coefficient multiplied by `scale`."""
    coeff, value = terms["kl"]
    return terms | {"kl": (coeff * scale, value)}
