"""Has a training run converged? A stated, checkable criterion for reference sweeps.

A run counts as converged when its training loss has **plateaued over the last 20% of its
steps**: the mean logged loss of the last 10% of steps is less than `tol` (2%) below the mean of
the 10% before (ARCHITECTURE.md §5). With `TrainConfig`'s cosine schedule (decay to
`min_lr_frac * lr`) the rate is near its floor there, so a loss still falling faster than that
was taken to mean more tokens would still change the SAE.

Under a decaying schedule the test partly measures the schedule: annealing alone lowers the
loss over the last steps, so a run can pass while its held-out result still moves with more
tokens. The doubling test (the held-out result at twice the budget) is what measures that;
ARCHITECTURE.md §5 gives both, LOG.md the measurements. Each train record holds the mean of its
`log_every` steps (`saelab.core.training.record`), so the test does not read single batches.
"""

from __future__ import annotations

import math


def loss_plateau(log: list[dict], last: float = 0.2, tol: float = 0.02, key: str = "loss") -> dict:
    """The plateau check of one run's training log (`Run.log`: records with `kind == "train"`,
    `step` and the logged term `key`).

    `key` is the total `loss` by default; a TopK SAE's total adds AuxK, which is 0 while no
    latent is dead and jumps when one dies, so its plateau is better read on `mse`.

    Splits the steps after `(1 - last) * n_steps` (or after a fine-tune's switch, if later)
    into two halves and compares their mean loss.
    Returns `first`, `second` (the two means), `change` ((first - second) / |first|: the relative
    fall over the second half), `n` (records in the window) and `converged` (change < tol).
    Raises ValueError when the window holds fewer than 4 logged losses (log more often:
    `TrainConfig.log_every`).
    """
    train = [r for r in log if r.get("kind") == "train" and key in r]
    # a fine-tune (`TrainConfig.finetune`) changes the loss's units at its switch: the window
    # then holds only the fine-tune's own records
    switch = min((r["step"] for r in log if r.get("kind") == "finetune"), default=0)
    train = [r for r in train if r["step"] > switch]
    if not 0 < last <= 1:
        raise ValueError(f"last={last!r} must be in (0, 1]: the fraction of steps to check")
    if not train:
        have = sorted({k for r in log if r.get("kind") == "train" for k in r})
        raise ValueError(f"the log has no training {key!r} (records with kind='train'; they "
                         f"have {have})")  # fmt: skip
    n_steps = max(r["step"] for r in train)
    start = max((1 - last) * n_steps, switch)
    window = [r for r in train if r["step"] > start]
    if len(window) < 4:
        raise ValueError(
            f"only {len(window)} logged losses in the last {last:.0%} of {n_steps} steps; "
            "need 4 or more (lower TrainConfig.log_every)"
        )
    mid = (start + n_steps) / 2
    a = [r[key] for r in window if r["step"] <= mid]
    b = [r[key] for r in window if r["step"] > mid]
    first, second = sum(a) / len(a), sum(b) / len(b)
    change = (first - second) / abs(first) if first else math.nan
    return dict(first=first, second=second, change=change, n=len(window),
                converged=bool(change < tol))  # fmt: skip
