"""The studies' per-seed summary records (`saelab.studies.stats`: `seed_rows`, `over_seeds`)."""

import math

import pandas as pd
import pytest

from saelab.studies import stats


def test_over_seeds_gives_mean_interval_and_per_seed_values_per_number():
    rows = []
    for s, (a, b) in enumerate([(1.0, 10.0), (3.0, 20.0)]):
        t = pd.DataFrame({"l0": [a, b], "run": ["x", "y"]}, index=["local", "e2e"])
        rows += stats.seed_rows(s, "matched", t)  # the string column is skipped
        rows += stats.seed_rows(s, "ratio", b / a)
    recs = stats.over_seeds(rows)
    assert len(recs) == 3
    loc = stats.seed_stat(recs, key="matched", method="local", metric="l0")
    assert loc["mean"] == 2.0 and loc["n"] == 2 and loc["lo"] < 2.0 < loc["hi"]
    assert loc["seeds"] == [0, 1] and loc["per_seed"] == [1.0, 3.0]
    r = stats.seed_stat(recs, key="ratio", method=None, metric="ratio")
    assert r["per_seed"] == pytest.approx([10.0, 20 / 3])
    assert stats.seed_text(r).endswith("over 2 seeds")


def test_one_seed_has_nan_interval_and_extra_fields_qualify_records():
    rows = stats.seed_rows(0, "ratios", 2.0, alpha=0.5)
    rows += stats.seed_rows(0, "ratios", 3.0, alpha=1.0)
    recs = stats.over_seeds(rows)
    assert [r["alpha"] for r in recs] == [0.5, 1.0]
    assert recs[0]["n"] == 1 and math.isnan(recs[0]["lo"]) and math.isnan(recs[0]["hi"])
    assert stats.seed_text(recs[0]) == "2.000 (1 seed)"
    with pytest.raises(KeyError, match="0 seed records"):
        stats.seed_stat(recs, alpha=2.0)


def test_interval_sign_needs_the_interval_to_exclude_zero():
    assert stats.interval_sign(dict(mean=-0.2, lo=-0.3, hi=-0.1, n=2)) == "lower"
    assert stats.interval_sign(dict(mean=0.2, lo=0.1, hi=0.3, n=2)) == "higher"
    assert stats.interval_sign(dict(mean=-0.2, lo=-0.5, hi=0.1, n=2)) == "unclear"
    # one seed: no interval, the sign of the mean
    assert stats.interval_sign(dict(mean=-0.2, lo=math.nan, hi=math.nan, n=1)) == "lower"
    assert stats.interval_sign(stats.seed_stats([1.0, 1.2, 0.9])) == "higher"
