"""Reading a sweep: interpolation at matched CE, closest runs, target fallbacks."""

import math

import pandas as pd
import pytest
from scipy import stats

from saelab.studies import compare

SWEEP = pd.DataFrame(
    dict(
        method=["local", "local", "e2e", "e2e", "topk"],
        ce_increase=[0.01, 0.1, 0.05, 0.5, 0.2],
        l0=[100.0, 10.0, 40.0, 4.0, 8.0],
        alive=[512, 500, 512, 400, 2000],
    )
)


def test_matched_interpolates_log_linearly_and_marks_unreached_targets():
    t = compare.matched(SWEEP, ["local", "e2e"], 0.075)
    w = (0.075 - 0.01) / (0.1 - 0.01)  # linear in CE, log-linear in L0
    assert t.loc["local", "l0"] == pytest.approx(
        math.exp((1 - w) * math.log(100) + w * math.log(10))
    )
    assert math.isnan(compare.matched(SWEEP, ["local"], 0.3).loc["local", "l0"])
    frac = pd.DataFrame(dict(method="local", ce_increase=[0.0, 0.2], f=[0.0, 0.4]))
    assert compare.interpolate_at(frac, "ce_increase", "f", 0.05) == pytest.approx(0.1)  # linear
    empty = compare.matched(SWEEP, [], 0.1)  # a sweep without ReLU methods: an empty table
    assert empty.empty and list(empty.columns) == ["ce_increase", "l0", "alive"]


def test_match_target_and_closest():
    assert compare.match_target(SWEEP, ["local", "e2e"], 0.07) == 0.07
    assert compare.match_target(SWEEP, ["local", "e2e"]) == pytest.approx((0.05 + 0.1) / 2)
    no_overlap = compare.match_target(SWEEP, ["local", "topk"])  # ranges [0.01,0.1] and [0.2]
    assert no_overlap == pytest.approx(math.exp(sum(map(math.log, [0.01, 0.1, 0.2])) / 3))
    picked = compare.closest(SWEEP, ["local", "e2e", "topk"], 0.04)
    assert picked.loc["local", "ce_increase"] == 0.1  # log distance: 0.04 is nearer 0.1 than 0.01
    assert picked.loc["e2e", "ce_increase"] == 0.05
    with pytest.raises(ValueError, match="not in the sweep"):
        compare.closest(SWEEP, ["gtopk"], 0.1)


def test_load_sweep_names_what_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="05_pareto run"):
        compare.load_sweep(tmp_path)
    SWEEP.assign(run=[f"r{i}" for i in range(5)]).to_csv(tmp_path / "sweep.csv", index=False)
    with pytest.raises(FileNotFoundError, match="no saved SAE"):
        compare.load_sweep(tmp_path)


def test_log_ce_interpolation_differs_from_linear_across_a_jump():
    """Across a jump (CE 0.05 -> 0.7) linear and log-CE interpolation disagree; both are exact
    at the runs and NaN outside the sweep."""
    jump = pd.DataFrame(dict(method="local", ce_increase=[0.05, 0.7], l0=[40.0, 4.0]))
    lin = compare.interpolate_at(jump, "ce_increase", "l0", 0.2)
    log = compare.interpolate_at(jump, "ce_increase", "l0", 0.2, log_x=True)
    w_lin = (0.2 - 0.05) / (0.7 - 0.05)
    w_log = math.log(0.2 / 0.05) / math.log(0.7 / 0.05)
    assert lin == pytest.approx(40 * 0.1**w_lin) and log == pytest.approx(40 * 0.1**w_log)
    assert log < lin  # log CE puts 0.2 further along towards the sparse end
    assert compare.interpolate_at(jump, "ce_increase", "l0", 0.05, log_x=True) == pytest.approx(40)
    assert math.isnan(compare.interpolate_at(jump, "ce_increase", "l0", 0.9, log_x=True))
    t = compare.matched(jump, ["local"], 0.2, cols=("l0",), log_x=True)
    assert t.loc["local", "l0"] == pytest.approx(log)


def test_bracket_names_the_runs_either_side_and_whether_they_are_close():
    runs = pd.DataFrame(dict(method=["local"] * 3 + ["e2e"] * 2, run=list("abcde"),
                             ce_increase=[0.05, 0.09, 0.115, 0.02, 0.5]))  # fmt: skip
    b = compare.bracket(runs, ["local", "e2e"], 0.1)
    assert (b.loc["local", "run_below"], b.loc["local", "run_above"]) == ("b", "c")
    assert b.loc["local", "bracketed"]  # 0.09 and 0.115: both within 20% of 0.1
    assert not b.loc["e2e", "bracketed"]  # 0.02 and 0.5: a jump, interpolation is a guess
    assert b.loc["e2e", "below"] == 0.02 and b.loc["e2e", "above"] == 0.5
    one_side = compare.bracket(runs, ["local"], 0.01)
    assert math.isnan(one_side.loc["local", "below"]) and not one_side.loc["local", "bracketed"]


def _sweep(l0s, ces, seeds=(0, 1), method="local"):
    pairs = list(enumerate(zip(l0s, ces, strict=True)))
    return pd.DataFrame([dict(method=method, seed=s, run=f"{method}_{i}_seed={s}", l0=l0,
                              ce_increase=ce) for s in seeds for i, (l0, ce) in pairs])  # fmt: skip


def test_doubling_reads_each_budget_at_the_target_and_gives_the_relative_change():
    half = _sweep([20.0, 10.0], [0.04, 0.08])
    full = pd.concat([_sweep([16.0, 12.0, 10.0, 8.0], [0.04, 0.055, 0.065, 0.08]),
                      _sweep([4.0, 2.0], [0.04, 0.08], seeds=(0,), method="e2e")])  # fmt: skip
    d = compare.doubling(half, full, ["local", "e2e"], 0.06)
    assert list(d.method) == ["local", "local"]  # e2e: not in the half sweep, so no row
    # half: log-linear in L0 halfway between 20 and 10; full: halfway between 12 and 10
    assert d.half.iloc[0] == pytest.approx(math.sqrt(200))
    assert d.full.iloc[0] == pytest.approx(math.sqrt(120))
    assert d.change.iloc[0] == pytest.approx(math.sqrt(120 / 200) - 1)
    # the half sweep's runs are 33% away from the target; the full one has runs within 20%
    assert not d.bracketed_half.any() and d.bracketed_full.all()
    unreached = compare.doubling(half, full, ["local"], 0.2)
    assert unreached.half.isna().all() and unreached.change.isna().all()


@pytest.mark.parametrize(
    "changes, verdict",
    [([0.01, 0.02], "settled"), ([-0.25, -0.24], "moving"), ([0.3, 0.31], "moving"),
     ([-0.3, 0.0], "undecided"), ([0.05], "undecided"), ([-0.06, float("nan")], "undecided"),
     ([float("nan")], "undecided"), ([], "undecided")],
)  # fmt: skip
def test_settled_reads_the_seed_interval_against_the_tolerance(changes, verdict):
    got = compare.settled(changes, tol=0.1)
    assert got["verdict"] == verdict and got["settled"] == (verdict == "settled")
    assert got["n"] == sum(1 for c in changes if c == c)


def test_seeds_to_decide_is_the_first_n_whose_interval_clears_the_edge():
    # 12_doubling/doubling's e2e ratio: -11.0% with SD 5.1 points over 3 seeds, 1 point past -10%
    n = compare.seeds_to_decide(-0.110, 0.051, tol=0.1)
    assert 90 <= n <= 110
    half = stats.t.ppf(0.975, n - 1) * 0.051 / math.sqrt(n)
    assert -0.110 + half <= -0.1 < -0.110 + stats.t.ppf(0.975, n - 2) * 0.051 / math.sqrt(n - 1)
    assert compare.seeds_to_decide(-0.1, 0.05) is None  # a mean on the edge: no n decides
    assert compare.seeds_to_decide(0.0, 0.01) == 2  # well inside: two seeds settle it
    assert compare.settled([-0.0516, -0.1452, -0.1331])["seeds_needed"] > 50
    assert compare.settled([0.05])["seeds_needed"] is None  # one seed: no spread to use
