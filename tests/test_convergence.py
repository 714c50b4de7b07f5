"""The convergence criterion of the reference sweeps: a loss plateau over the last 20% of steps."""

import math

import pytest

from saelab import loss_plateau


def _log(losses):
    return [{"step": i + 1, "kind": "train", "loss": v} for i, v in enumerate(losses)]


def test_flat_tail_converges_and_falling_tail_does_not():
    flat = [10 - 0.1 * i for i in range(80)] + [2.0] * 20  # flat over the last 20 steps
    r = loss_plateau(_log(flat))
    assert r["converged"] and r["change"] == pytest.approx(0.0) and r["n"] == 20
    falling = [10 * math.exp(-i / 40) for i in range(100)]  # still ~12% down per 10 steps
    r = loss_plateau(_log(falling))
    assert not r["converged"] and r["change"] == pytest.approx(1 - math.exp(-10 / 40), rel=0.05)
    assert loss_plateau(_log(falling), tol=0.5)["converged"]  # the threshold is the caller's


def test_evaluation_records_are_ignored_and_short_logs_refused():
    log = _log([1.0] * 50) + [{"step": 50, "kind": "eval", "ce_increase": 0.1}]
    assert loss_plateau(log)["converged"]
    with pytest.raises(ValueError, match="need 4 or more"):
        loss_plateau(_log([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="no training 'loss'"):
        loss_plateau([{"step": 1, "kind": "eval"}])
    with pytest.raises(ValueError, match=r"no training 'mse'.*'loss', 'step'"):
        loss_plateau(_log([1.0] * 10), key="mse")


def test_a_term_other_than_the_total_loss():
    """TopK's total adds AuxK, on and off with the dead latents: the plateau of `mse` is read."""
    log = [{"step": i + 1, "kind": "train", "mse": 1.0, "loss": 1.0 + (i % 2)} for i in range(50)]
    assert loss_plateau(log, key="mse")["change"] == 0.0
    with pytest.raises(ValueError, match="last=0"):
        loss_plateau(_log([1.0] * 10), last=0)
