"""Numbers over training seeds: the unit a claim about a training method needs.

A difference between two SAE training methods is a claim about training, so its spread is the
spread over training seeds, not over tokens or latents of one SAE. Every study reports each number
as the mean over the seeds of its sweep with a 95% t-interval (NaN with one seed):

- `seed_stats(values)`: mean, sample SD, n and the t-interval of the mean;
- `seed_rows` / `over_seeds`: one summary.json shape for the studies' per-seed numbers, a record
  `{key, method, metric, ..., mean, sd, n, lo, hi, seeds, per_seed}` per number;
- `seed_stat`, `seed_text`: look one up, print it.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy.stats import t


def seed_stats(values, level: float = 0.95) -> dict:
    """Mean, sample SD, n and the t-interval of the mean over seeds (NaN bounds for n < 2)."""
    v = np.asarray([x for x in values if x == x], dtype=float)
    n = len(v)
    mean = float(v.mean()) if n else float("nan")
    if n < 2:
        return dict(mean=mean, sd=float("nan"), n=n, lo=float("nan"), hi=float("nan"))

    sd = float(v.std(ddof=1))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return dict(mean=mean, sd=sd, n=n, lo=mean - half, hi=mean + half)


def seed_rows(seed: int, key: str, table, cols=None, **fields) -> list[dict]:
    """Long rows `{seed, key, method, metric, value, **fields}` of one seed's numbers.

    `table` is either a DataFrame indexed by method (one row each; `cols`: the columns to take,
    default every numeric one) or a number (a scalar summary key: `method` None and `metric` =
    key unless `fields` name them).
    `key` names the summary.json entry that holds the seed-0 value; `fields` (e.g. `alpha=0.5`)
    qualify every row. Non-numeric cells are skipped.
    """

    if not hasattr(table, "iterrows"):  # `fields` may name the method and metric
        return [dict(seed=int(seed), key=key, method=None, metric=key) | fields
                | dict(value=float(table))]  # fmt: skip
    cols = list(table.columns) if cols is None else list(cols)
    rows = []
    for method, r in table.iterrows():
        for c in cols:
            v = r.get(c)
            if isinstance(v, numbers.Number) and not isinstance(v, bool):
                rows.append(dict(seed=int(seed), key=key, method=method, metric=c, **fields,
                                 value=float(v)))  # fmt: skip
    return rows


def over_seeds(rows: list[dict]) -> list[dict]:
    """Mean and 95% t-interval over seeds of each number in `rows` (from `seed_rows`).

    Rows agreeing in every field but `seed` and `value` are one number measured per seed; each
    gives a record `{key, method, metric, (fields), mean, sd, n, lo, hi, seeds, per_seed}`
    (`seed_stats`: NaN values are left out of the statistics, and with fewer than two
    seeds `sd`, `lo` and `hi` are NaN), `per_seed` the values in the order of `seeds`.
    """
    groups: dict[tuple, list[tuple[int, float]]] = {}
    for r in rows:
        q = tuple((k, v) for k, v in r.items() if k not in ("seed", "value"))
        groups.setdefault(q, []).append((int(r["seed"]), float(r["value"])))
    out = []
    for q, sv in groups.items():
        sv.sort()
        values = [v for _, v in sv]
        out.append(dict(q) | seed_stats(values) | dict(seeds=[s for s, _ in sv], per_seed=values))
    return out


def seed_stat(records: list[dict], **match) -> dict:
    """The one record of `over_seeds(...)` whose fields equal `match` (a clear error if none)."""
    hits = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} seed records match {match}")
    return hits[0]


def seed_text(rec: dict, fmt: str = ".3f") -> str:
    """`mean [lo, hi] over n seeds`, or `mean (1 seed)` when there is no interval."""
    if rec["n"] < 2:
        return f"{rec['mean']:{fmt}} ({rec['n']} seed)"
    return f"{rec['mean']:{fmt}} [{rec['lo']:{fmt}}, {rec['hi']:{fmt}}] over {rec['n']} seeds"


def interval_sign(rec: dict) -> str:
    """ "lower" / "higher" when the interval of `rec` (a `seed_stats` record: mean, lo, hi, n)
    excludes 0, else "unclear"; with one seed there is no interval and the mean's sign decides."""
    lo, hi = (rec["lo"], rec["hi"]) if rec.get("n", 0) > 1 else (rec["mean"], rec["mean"])
    return "lower" if hi < 0 else "higher" if lo > 0 else "unclear"
