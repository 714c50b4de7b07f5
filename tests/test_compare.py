"""Reading a sweep: interpolation at matched CE, closest runs, target fallbacks."""

import math

import pandas as pd
import pytest

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
