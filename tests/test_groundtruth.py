"""Ground-truth recovery metrics on planted synthetic latents and concepts."""

import pandas as pd
import pytest
import torch

from saelab.studies import groundtruth as gt


def _pairwise_auroc(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Brute force: P(score_pos > score_neg) + 0.5 P(tie), over all (pos, neg) pairs."""
    out = torch.empty(y.shape[1], s.shape[1], dtype=torch.float64)
    for c in range(y.shape[1]):
        p, n = s[y[:, c]], s[~y[:, c]]  # [P, n_lat], [Q, n_lat]
        diff = p[:, None, :] - n[None, :, :]
        out[c] = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean((0, 1))
    return out


def _planted(n=400, seed=0):
    """Concepts y [n, 3]; latents: indicator of concept 0, never-firing, noisy concept 1, random."""
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, 3, generator=g) < torch.tensor([0.2, 0.3, 0.5])
    acts = torch.stack(
        [
            y[:, 0].float() * 2.0,  # exactly concept 0
            torch.zeros(n),  # dead
            y[:, 1].float() * torch.rand(n, generator=g),  # fires only on concept 1, graded
            torch.relu(torch.randn(n, generator=g)),  # unrelated
        ],
        1,
    )
    return acts, y


def test_indicator_latent_has_auroc_and_f1_one_and_dead_latent_half():
    acts, y = _planted()
    auc = gt.auroc(acts, y)
    fi = gt.f1_at_firing(acts, y)
    assert auc.shape == fi.f1.shape == (3, 4)
    assert auc[0, 0] == pytest.approx(1.0)
    assert fi.f1[0, 0] == pytest.approx(1.0)
    assert fi.precision[0, 0] == fi.recall[0, 0] == 1.0
    assert torch.allclose(auc[:, 1], torch.full((3,), 0.5))  # never fires: all ties
    assert (fi.f1[:, 1] == 0).all() and (fi.precision[:, 1] == 0).all()
    # latent 2 fires only on concept 1 (precision 1) with graded values: AUROC 1 as well
    assert fi.precision[1, 2] == 1.0 and auc[1, 2] == pytest.approx(1.0)


def test_auroc_matches_pairwise_brute_force_with_ties():
    g = torch.Generator().manual_seed(1)
    n = 300
    # heavy ties: mostly exact zeros, and a few repeated positive values
    acts = torch.relu(torch.randn(n, 7, generator=g)) * (torch.rand(n, 7, generator=g) < 0.3)
    acts[::5, 3] = 1.0
    acts = (acts * 4).round() / 4  # more ties among the positives
    y = torch.rand(n, 5, generator=g) < torch.linspace(0.05, 0.6, 5)
    y[:, 4] = (acts[:, 2] > 0.5) ^ (torch.rand(n, generator=g) < 0.05)  # a latent's noisy concept
    got = gt.auroc(acts, y, chunk=3)  # chunks that do not divide n_lat
    want = _pairwise_auroc(acts, y)
    assert torch.allclose(got.double(), want, atol=1e-6)
    assert got[4, 2] > 0.75


def test_auroc_is_nan_for_a_concept_without_positives():
    acts, y = _planted()
    y[:, 2] = False
    auc = gt.auroc(acts, y)
    assert auc[2].isnan().all() and not auc[:2].isnan().any()
    table = gt.best_latents(["a", "b=x", "b=y"], y, auc, gt.f1_at_firing(acts, y))
    assert table.auroc_latent.tolist()[2] == -1 and table.n_pos.tolist()[2] == 0
    s = gt.summarize(table)
    assert s["n_concepts"] == 2


def test_best_latents_picks_the_planted_latent():
    acts, y = _planted()
    auc, fi = gt.auroc(acts, y), gt.f1_at_firing(acts, y)
    table = gt.best_latents(["is_a", "c=one", "c=two"], y, auc, fi)
    assert table.label.tolist() == ["is_a", "c", "c"]
    assert table.loc[0, "auroc_latent"] == 0 and table.loc[0, "f1_latent"] == 0
    assert table.loc[1, "auroc_latent"] == 2 and table.loc[1, "precision"] == 1.0
    assert table.loc[0, "freq"] == pytest.approx(float(y[:, 0].float().mean()))
    lab = gt.per_label(table.assign(method="m"))
    assert lab.label.tolist() == ["is_a", "c"]
    assert lab.loc[1, "f1"] == pytest.approx((table.f1[1] + table.f1[2]) / 2)


def test_explained_fraction_threshold_min_fires_and_concept_mask():
    # 5 latents x 2 concepts: precisions chosen around the threshold
    precision = torch.tensor([[0.95, 0.5, 0.89, 1.0, 0.2], [0.1, 0.92, 0.3, 0.0, 0.97]])
    alive = torch.tensor([True, True, True, True, False])
    n_fire = torch.tensor([50.0, 50.0, 50.0, 2.0, 0.0])
    ex = gt.explained_fraction(precision, alive, 0.9)
    assert ex.explained.tolist() == [True, True, False, True, False]  # dead latent 4 never counts
    assert ex.fraction == pytest.approx(3 / 4) and ex.n_alive == 4 and ex.n_excluded == 0
    assert ex.best_concept.tolist()[:4] == [0, 1, 0, 0]
    ex = gt.explained_fraction(precision, alive, 0.9, n_fire=n_fire, min_fires=10)
    assert ex.explained.tolist() == [True, True, False, False, False]  # latent 3 fired twice
    assert ex.fraction == pytest.approx(2 / 4) and ex.n_excluded == 1
    ex = gt.explained_fraction(precision, alive, 0.9, concept_mask=torch.tensor([False, True]))
    assert ex.explained.tolist() == [False, True, False, False, False]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="tokens"):
        gt.auroc(torch.zeros(5, 2), torch.zeros(4, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="tokens"):
        gt.f1_at_firing(torch.zeros(5, 2), torch.zeros(4, 1, dtype=torch.bool))


def test_summarize_counts_concepts_above_f1_threshold():
    t = pd.DataFrame({"n_pos": [5, 5, 5, 0], "auroc": [0.9, 0.7, 0.5, float("nan")],
                      "f1": [0.8, 0.6, 0.1, 0.0]})  # fmt: skip
    s = gt.summarize(t)
    assert s["mean_auroc"] == pytest.approx(0.7) and s["frac_f1_gt_0.5"] == pytest.approx(2 / 3)


def test_average_ranks_share_ties_and_are_centred():
    x = torch.tensor([[2.0, 0.0], [0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    r = gt.average_ranks(x)
    # column 0: 0,0 -> ranks 1,2 (avg 1.5); 1 -> 3; 2,2,2 -> 4,5,6 (avg 5); mean rank 3.5
    assert r[:, 0].tolist() == [1.5, -2.0, 1.5, -0.5, -2.0, 1.5]
    assert r[:, 1].tolist() == [0.0] * 6  # a never-firing latent: one tie, centred to 0


def test_base_rates_flag_concepts_above_half_and_give_the_always_on_f1():
    y = torch.zeros(10, 3, dtype=torch.bool)
    y[:8, 0], y[:5, 1], y[:1, 2] = True, True, True  # base rates 0.8, 0.5, 0.1
    br = gt.base_rates(y, ["common", "half", "rare"])
    assert br.base_rate.tolist() == pytest.approx([0.8, 0.5, 0.1])
    assert br.always_on_f1.tolist() == pytest.approx([1.6 / 1.8, 1 / 1.5, 0.2 / 1.1])
    assert br.excluded.tolist() == [True, False, False]  # "more than half" only
    # an always-on latent reaches exactly that F1
    f1 = gt.f1_at_firing(torch.ones(10, 1), y).f1[:, 0]
    assert f1.tolist() == pytest.approx(br.always_on_f1.tolist())
    assert gt.base_rates(y, list("abc"), max_rate=0.05).excluded.all()


def test_summarize_leaves_out_concepts_above_the_base_rate():
    t = pd.DataFrame({"n_pos": [5, 5, 5], "freq": [0.9, 0.2, 0.1], "auroc": [0.9, 0.7, 0.5],
                      "f1": [0.95, 0.6, 0.2]})  # fmt: skip
    s = gt.summarize(t, max_base_rate=0.5)
    assert s["n_concepts"] == 2 and s["mean_f1"] == pytest.approx(0.4)
    assert s["mean_auroc"] == pytest.approx(0.6) and s["frac_f1_gt_0.5"] == pytest.approx(0.5)
    assert gt.summarize(t)["n_concepts"] == 3
