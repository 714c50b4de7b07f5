"""Figures say what they show: no panel that draws noise as a trend, one legend for shared
styles, no unlabelled log axis (saelab.studies.plots, saelab.studies.compare)."""

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from saelab.studies import compare, plots  # noqa: E402


def _sweep(alive):
    rows = [dict(method=m, point=f"p{i}", seed=s, l0=l0 * (1 + 0.02 * s), alive=alive(i),
                 ce_increase=ce * (1 + 0.05 * s))
            for m, f in (("local", 1.0), ("e2e", 0.4)) for i, (l0, ce) in
            enumerate([(40 * f, 0.01), (20 * f, 0.04), (10 * f, 0.2)]) for s in (0, 1)]  # fmt: skip
    df = pd.DataFrame(rows)
    return df, df.groupby(["method", "point"], as_index=False).mean(numeric_only=True)


def test_pareto_leaves_out_an_alive_panel_with_no_spread_and_says_its_range():
    seeds, means = _sweep(lambda i: 511 + (i % 2))
    fig = compare.pareto_plot(means, seeds=seeds, target=0.05)
    assert len(fig.axes) == 1 and "every setting keeps 511-512 alive" in fig._suptitle.get_text()
    ax = fig.axes[0]
    assert any(line.get_label() == "matched at CE +0.05" for line in ax.get_lines())
    seeds, means = _sweep(lambda i: 300 + 100 * i)  # latents die: the panel is drawn
    assert len(compare.pareto_plot(means, seeds=seeds).axes) == 2


def test_pareto_promises_whiskers_only_over_several_seeds():
    seeds, means = _sweep(lambda i: 512)
    title = compare.pareto_plot(means, seeds=seeds).axes[0].get_legend().get_title().get_text()
    assert "whiskers" in title
    assert (
        "every setting keeps 512 alive"
        in compare.pareto_plot(means, seeds=seeds)._suptitle.get_text()
    )
    fig = compare.pareto_plot(means, seeds=seeds, target=0.05)
    fig.canvas.draw()  # the legend sits right of the panel, covering none of its points
    box = fig.axes[0].get_legend().get_window_extent()
    assert box.x0 > fig.axes[0].get_window_extent().x1
    one = seeds[seeds.seed == 0]
    title = compare.pareto_plot(means, seeds=one).axes[0].get_legend().get_title().get_text()
    assert title == "method"


def test_train_curves_share_one_legend_and_label_their_log_axes():
    logs = {name: [{"kind": "train", "step": s, "loss": 5.0 / s * f, "l0": 100.0 / s,
                    "mse": 1.0 / s, **({"kl": 2.0 / s} if name != "local" else {})}
                   for s in range(1, 60)]
            for name, f in (("local", 1.0), ("e2e", 2.0), ("e2e+ds", 3.0))}  # fmt: skip
    fig = plots.train_curves(logs)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    assert [t.get_text() for t in legends[0].get_texts()] == ["local", "e2e", "e2e+ds"]
    fig.canvas.draw()
    for ax in fig.axes:
        if ax.get_visible() and ax.get_yscale() == "log":  # more than one labelled tick
            labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
            lo, hi = ax.get_ylim()
            shown = [t for t in ax.get_yticks() if lo <= t <= hi]
            assert len(labels) >= 2 and len(shown) >= 2, (ax.get_title(), labels)


def test_a_metric_that_hardly_moves_is_not_drawn_as_a_trend():
    df = pd.DataFrame({"beta": [0.0, 1.0, 4.0], "nmse": [0.1433, 0.1432, 0.1471]})
    fig = plots.metric_lines(df, "beta", ["nmse"])
    lo, hi = fig.axes[0].get_ylim()
    assert hi - lo >= 0.1 * df.nmse.mean() * 0.99


def test_single_runs_can_be_drawn_as_points_not_a_curve():
    df = pd.DataFrame({"beta": [0.0, 1.0, 4.0], "dead_frac": [0.01, 0.005, 0.0]})
    joined = plots.metric_lines(df, "beta", ["dead_frac"]).axes[0]
    dots = plots.metric_lines(df, "beta", ["dead_frac"], connect=False).axes[0]
    assert len(joined.lines) >= 1 and not dots.lines
    assert len(dots.collections[0].get_offsets()) == 3


def test_the_density_legend_counts_silent_latents_in_its_own_sample():
    freq = torch.tensor(np.r_[np.zeros(3), np.full(13, 0.01)], dtype=torch.float32)
    fig = plots.density_hist({"local": freq}, n_tokens=4096)
    leg = fig.axes[0].get_legend()
    assert leg.get_title().get_text() == "SAE, on 4,096 tokens"
    assert [t.get_text() for t in leg.get_texts()] == ["local (3 of 16 never fired)"]


def test_pair_by_k_draws_each_seed_beside_the_mean():
    grid = [(m, k, s) for m in ("topk", "gtopk") for k in (8, 16, 32) for s in (0, 1)]
    runs = pd.DataFrame([dict(method=m, k=k, seed=s, ce_increase=0.1 / k * (1 + 0.1 * s),
                              nmse=0.2 / k, dead_frac=0.01 * s) for m, k, s in grid])  # fmt: skip
    means = runs.groupby(["method", "k"], as_index=False).mean(numeric_only=True)
    fig = plots.pair_by_k(means, seeds=runs)
    ax = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(runs)
    assert "mean over seeds" in ax.get_legend().get_texts()[0].get_text()
    assert "each of 2 seeds" in fig._suptitle.get_text()
    assert not plots.pair_by_k(means).axes[0].collections  # no seeds given: lines only
