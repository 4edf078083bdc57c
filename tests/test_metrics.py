"""Ranking metrics against hand-computed values, and the protocol's ranking step on fixed scores.

Conventions (purchasepred.eval.metrics): ``ranked`` (U, K) item ids best first; ``truth`` (U, M)
bought items, -1 padding, unique ids < -1 for bought items too rare to have an id (relevant but
never hittable); ``n_relevant`` the number of distinct bought items.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pytest
import torch

from purchasepred.data.tensors import SplitData
from purchasepred.eval.metrics import bootstrap_ci, hit_rate_at_k, hits_matrix, ndcg_at_k, reciprocal_rank
from purchasepred.eval.protocol import evaluate_scorer, rank, top_k


def d(rank_: int) -> float:
    """The DCG discount of a 1-based rank."""
    return 1.0 / math.log2(rank_ + 1)


def one(ranked: list[int], truth: list[int], n_rel: int, k: int) -> tuple[float, float]:
    r, t = np.array([ranked]), np.array([truth])
    return float(ndcg_at_k(r, t, np.array([n_rel]), k)[0]), float(hit_rate_at_k(r, t, k)[0])


def test_fewer_relevant_than_k() -> None:
    ndcg, hr = one([5, 6, 7, 8, 9], [6, 9, -1], 2, k=5)
    assert ndcg == pytest.approx((d(2) + d(5)) / (d(1) + d(2)))
    assert hr == 1.0


def test_no_hits() -> None:
    ndcg, hr = one([5, 6, 7, 8, 9], [10, 11, -1], 2, k=5)
    assert ndcg == 0.0 and hr == 0.0
    # a hit just beyond the cutoff does not count
    ndcg, hr = one([5, 6, 7, 8, 9], [9, -1, -1], 1, k=4)
    assert ndcg == 0.0 and hr == 0.0


def test_no_relevant_items_at_all_is_zero_not_nan() -> None:
    ndcg = ndcg_at_k(np.array([[2, 3]]), np.array([[-1]]), np.array([0]), 2)
    assert ndcg.tolist() == [0.0]


def test_duplicates_in_truth_count_once() -> None:
    # the same item bought twice is one relevant item: n_relevant counts distinct items
    ndcg, hr = one([5, 6, 7], [6, 6, -1], 1, k=3)
    assert ndcg == pytest.approx(d(2) / d(1))
    assert hr == 1.0
    assert hits_matrix(np.array([[5, 6, 7]]), np.array([[6, 6, -1]])).tolist() == [[False, True, False]]


def test_rare_bought_items_are_relevant_but_never_hit() -> None:
    # two purchases of items without an id (-2, -3) raise the ideal DCG; nothing can match them
    ndcg, hr = one([6, 1, 2, 7], [6, -2, -3], 3, k=4)
    assert ndcg == pytest.approx(d(1) / (d(1) + d(2) + d(3)))
    assert hr == 1.0
    # negative ids in a ranking (padding) never match the truth's padding or rare ids
    ndcg, hr = one([-1, -2, 6], [6, -1, -2], 3, k=3)
    assert ndcg == pytest.approx(d(3) / (d(1) + d(2) + d(3)))
    ndcg, hr = one([-1, -2, -3], [-1, -2, -3], 3, k=3)
    assert ndcg == 0.0 and hr == 0.0


def test_duplicate_items_in_a_ranking_count_once() -> None:
    ndcg, _ = one([6, 6, 7], [6, 7, -1], 2, k=3)
    assert ndcg == pytest.approx((d(1) + d(3)) / (d(1) + d(2)))
    ndcg, _ = one([6, 6, 6], [6, -1, -1], 1, k=3)
    assert ndcg == pytest.approx(1.0)


def test_idcg_uses_min_of_bought_and_k() -> None:
    truth = list(range(10, 22))  # 12 items bought
    ndcg, hr = one([10, 11, 12], truth, 12, k=3)
    assert ndcg == pytest.approx(1.0)
    ndcg, _ = one([99, 10, 11], truth, 12, k=3)
    assert ndcg == pytest.approx((d(2) + d(3)) / (d(1) + d(2) + d(3)))
    # a ranking shorter than k is scored against the same ideal
    ndcg, _ = one([10], truth[:2], 2, k=3)
    assert ndcg == pytest.approx(d(1) / (d(1) + d(2)))


def test_several_users_at_once() -> None:
    ranked = np.array([[5, 6, 7], [5, 6, 7], [7, 8, 9]])
    truth = np.array([[6, -1], [1, -2], [7, 9]])
    n_rel = np.array([1, 2, 2])
    np.testing.assert_allclose(ndcg_at_k(ranked, truth, n_rel, 3), [d(2), 0.0, (d(1) + d(3)) / (d(1) + d(2))])
    np.testing.assert_allclose(ndcg_at_k(ranked, truth, n_rel, 1), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(hit_rate_at_k(ranked, truth, 3), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(hit_rate_at_k(ranked, truth, 1), [0.0, 0.0, 1.0])


def test_reciprocal_rank() -> None:
    np.testing.assert_allclose(reciprocal_rank(np.array([1, 4, 0, 2.5])), [1.0, 0.25, 0.0, 0.4])


def test_bootstrap_ci_brackets_the_mean_and_is_seeded() -> None:
    values = np.random.default_rng(0).random(300)
    lo, hi = bootstrap_ci(values, n_boot=500, seed=7)
    assert lo < values.mean() < hi
    assert hi - lo < 0.2
    assert bootstrap_ci(values, n_boot=500, seed=7) == (lo, hi)
    assert bootstrap_ci(values, n_boot=500, seed=8) != (lo, hi)
    assert bootstrap_ci(np.full(20, 0.5), n_boot=100) == (0.5, 0.5)
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([]), n_boot=100))
    assert all(math.isnan(v) for v in bootstrap_ci(values, n_boot=0))


# ------------------------------------------------------------------ the protocol's ranking step
SCORES = torch.tensor([9.0, 9.0, 0.9, 0.5, 0.5, 0.1])  # items 0 and 1 (padding, unknown) are never ranked


def fixed(users: np.ndarray) -> torch.Tensor:
    return SCORES[None, :].expand(len(users), -1).clone()


def test_rank_best_rank_over_the_full_catalog_with_ties() -> None:
    truth = np.array([[3, -1], [5, -1], [-2, -1], [5, 3], [2, -3]])
    r = rank(fixed, np.arange(5), k=3, truth=truth)
    assert r.top.tolist() == [[2, 3, 4]] * 5  # ties broken by the lower item id
    # item 3 ties with item 4 behind item 2: rank 2.5 (ties share the average rank)
    np.testing.assert_allclose(r.best_rank, [2.5, 4.0, 0.0, 2.5, 1.0])


def test_evaluate_scorer_on_a_hand_made_split() -> None:
    truth = np.array([[3, -1], [5, -1], [-2, -1], [2, 5]])
    split = SplitData(
        split="test", window_start=datetime(2019, 10, 1), window_end=datetime(2019, 10, 2), start_ts=1569888000,
        user_idx=np.arange(4), n_events=np.ones(4, dtype=np.int64), features={},
        truth_users=np.arange(4), truth_items=truth, n_relevant=np.array([1, 1, 1, 2]),
    )
    out = evaluate_scorer(fixed, split, [1, 3], n_boot=50)
    assert out["users"] == 4
    # top-3 is [2, 3, 4] (3 and 4 tie; the lower id first): user 0's item 3 is at rank 2
    assert out["ndcg@3"] == pytest.approx((d(2) + 0 + 0 + d(1) / (d(1) + d(2))) / 4)
    assert out["hr@3"] == pytest.approx(2 / 4)
    assert out["ndcg@1"] == pytest.approx(1 / 4)
    assert out["mrr"] == pytest.approx((1 / 2.5 + 1 / 4 + 0 + 1) / 4)
    lo, hi = out["ndcg@3_ci"]
    assert lo <= out["ndcg@3"] <= hi


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_top_k_orders_by_score_then_lower_item_id(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 4, (30, 40), generator=g).float()  # many ties, also across the k boundary
    scores[0] = float("-inf")
    vals, ids = top_k(scores.clone(), k)
    expected = torch.sort(scores, dim=1, descending=True, stable=True)
    assert torch.equal(ids, expected.indices[:, :k]) and torch.equal(vals, expected.values[:, :k])


def test_a_metric_does_not_depend_on_the_other_cutoffs_asked_for() -> None:
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 3, (60,), generator=g).float()  # a ranker with many tied scores

    def scorer(users: np.ndarray) -> torch.Tensor:
        return coarse[None, :].expand(len(users), -1).clone()

    rng = np.random.default_rng(1)
    truth = rng.integers(2, 60, size=(50, 3))
    split = SplitData(
        split="test", window_start=datetime(2019, 10, 1), window_end=datetime(2019, 10, 2), start_ts=1569888000,
        user_idx=np.arange(50), n_events=np.ones(50, dtype=np.int64), features={},
        truth_users=np.arange(50), truth_items=truth, n_relevant=np.full(50, 3),
    )
    alone = evaluate_scorer(scorer, split, [10], n_boot=0)
    among = evaluate_scorer(scorer, split, [5, 10, 20], n_boot=0)
    assert alone["ndcg@10"] > 0
    assert alone["ndcg@10"] == among["ndcg@10"] and alone["hr@10"] == among["hr@10"]


def test_purchase_subsets_from_one_ranking_equal_the_restricted_split_ranked_again() -> None:
    from purchasepred.eval.protocol import restricted

    g = torch.Generator().manual_seed(2)
    table = torch.randint(0, 5, (40, 30), generator=g).float()  # per-user scores with ties

    def scorer(users: np.ndarray) -> torch.Tensor:
        return table[torch.as_tensor(users)].clone()

    rng = np.random.default_rng(3)
    truth = rng.integers(2, 30, size=(40, 3))
    truth[rng.random((40, 3)) < 0.3] = -1  # padding
    truth[5, 0] = -7  # a purchase of an item too rare to have an id
    keep = rng.random((40, 3)) < 0.5
    keep[7] = False  # a user left with no purchase in the subset
    split = SplitData(
        split="test", window_start=datetime(2019, 10, 1), window_end=datetime(2019, 10, 2), start_ts=1569888000,
        user_idx=np.arange(40), n_events=np.ones(40, dtype=np.int64), features={},
        truth_users=np.arange(40), truth_items=truth, n_relevant=(truth != -1).sum(1),
    )
    subsets = {"some": keep & (truth != -1), "none": np.zeros_like(keep)}
    once = evaluate_scorer(scorer, split, [3, 10], n_boot=30, subsets=subsets)
    again = evaluate_scorer(scorer, restricted(split, subsets["some"]), [3, 10], n_boot=30)
    assert once["some"] == again and 0 < again["users"] < 40
    assert once["none"] == {"users": 0}
    assert {k: v for k, v in once.items() if k not in subsets} == evaluate_scorer(scorer, split, [3, 10], n_boot=30)
