"""The purchase-funnel ranker: its formula on a hand-made log, no leakage, carts as signal, the fit on valid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from purchasepred.eval.propensity import PROPENSITY_GRID, Propensity, PropensityParams, fit_propensity
from purchasepred.features import CART, PURCHASE, VIEW

CUTOFF = 1000
CATEGORY = np.array([0, 1, 2, 2, 3, 3])  # items 2, 3 in category 2; items 4, 5 in category 3


def log(rows: list[tuple[int, int, int, int]]) -> dict[str, np.ndarray]:
    """(user, item, event type, ts) rows -> the arrays the ranker reads."""
    a = np.array(rows, dtype=np.int64)
    return {"user_idx": a[:, 0], "item_idx": a[:, 1], "event_type_id": a[:, 2], "ts": a[:, 3]}


ROWS = [
    (2, 2, VIEW, 1), (2, 2, VIEW, 2), (2, 4, VIEW, 3),
    (3, 3, VIEW, 1), (3, 5, VIEW, 2), (3, 5, VIEW, 3), (3, 5, CART, 4), (3, 5, PURCHASE, 5),
]


def by_hand(rows: list[tuple[int, int, int, int]], user: int, p: PropensityParams) -> list[float]:
    """The module docstring's formula, one item at a time in plain Python."""
    rows = [r for r in rows if r[3] < CUTOFF]
    views = {i: sum(1 for r in rows if r[1] == i and r[2] == VIEW) for i in range(6)}
    acted = {i: sum(1 for r in rows if r[1] == i and r[2] in (CART, PURCHASE)) for i in range(6)}
    rate = (sum(acted.values()) + 1) / (sum(views.values()) + 1)
    cat_views = {c: sum(views[i] + 0.1 for i in range(6) if CATEGORY[i] == c) for c in range(4)}
    in_cat = {i: (views[i] + 0.1) / sum(views[j] + 0.1 for j in range(6) if CATEGORY[j] == CATEGORY[i]) for i in range(6)}
    mine = sorted((r for r in rows if r[0] == user), key=lambda r: r[3])
    n = len(mine)
    weight = {}
    for pos, r in enumerate(mine):
        back = n - 1 - pos
        place = math.sqrt(back + 1) - math.sqrt(back) if p.recency == "sqrt" else 1.0
        weight[pos] = place * (1.0 if r[2] == VIEW else p.cart_weight)
    total = sum(weight.values())
    out = []
    for i in range(6):
        revisit = sum(w for pos, w in weight.items() if mine[pos][1] == i) / total
        seen = sum(1 for r in mine if r[1] == i and r[2] == VIEW)
        own = sum(1 for r in mine if CATEGORY[r[1]] == CATEGORY[i]) / n
        cat = p.category_share * own + (1 - p.category_share) * cat_views[CATEGORY[i]] / sum(cat_views.values())
        view_p = p.revisit * revisit + (1 - p.revisit) * cat * in_cat[i]
        conversion = (acted[i] + p.prior_events) / (views[i] + p.prior_events / rate)
        out.append(view_p * (1 + min(seen, p.interest_cap)) * conversion)
    return out


@pytest.mark.parametrize("params", [
    PropensityParams(),
    PropensityParams(revisit=0.5, category_share=0.7, interest_cap=1, prior_events=5.0, recency="uniform", cart_weight=3.0),
])
def test_propensity_is_the_funnel_formula_on_a_hand_made_log(params: PropensityParams) -> None:
    ranker = Propensity(log(ROWS), 6, CATEGORY, CUTOFF, params)
    got = ranker(np.array([2, 3]))
    for row, user in enumerate((2, 3)):
        assert got[row, 2:].tolist() == pytest.approx(by_hand(ROWS, user, params)[2:], rel=1e-5)


def test_the_newest_event_weighs_most_with_sqrt_recency() -> None:
    rows = [(2, 2, VIEW, 1), (2, 3, VIEW, 2), (2, 4, VIEW, 3), (2, 5, VIEW, 4)]  # one view each, 5 newest
    params = PropensityParams(revisit=1.0, prior_events=1e9)  # the revisit term alone, one conversion for all
    s = Propensity(log(rows), 6, CATEGORY, CUTOFF, params)(np.array([2]))[0]
    assert s[5] > s[4] > s[3] > s[2] > 0
    flat = Propensity(log(rows), 6, CATEGORY, CUTOFF, PropensityParams(revisit=1.0, prior_events=1e9, recency="uniform"))
    assert torch.allclose(flat(np.array([2]))[0, 2:], torch.full((4,), float(flat(np.array([2]))[0, 2])))


def test_a_category_nobody_viewed_is_not_impossible() -> None:
    # items 4 and 5 (category 3) were only bought, never viewed; a cold user and a log of purchases only
    rows = [(2, 2, VIEW, 1), (2, 3, VIEW, 2), (3, 4, PURCHASE, 3)]
    assert (Propensity(log(rows), 6, CATEGORY, CUTOFF)(np.array([9]))[0, 2:] > 0).all()
    bought = [(2, 2, PURCHASE, 1), (3, 5, PURCHASE, 2)]
    assert (Propensity(log(bought), 6, CATEGORY, CUTOFF)(np.array([9]))[0, 2:] > 0).all()


def test_a_log_without_categories_picks_fresh_items_by_their_views() -> None:
    rows = [(u, 2 + u % 4, VIEW, u) for u in range(2, 30)] + [(40, 3, VIEW, 1)]
    unknown = np.array([0, 1, 1, 1, 1, 1])  # every item in the unknown category
    ranker = Propensity(log(rows), 6, unknown, CUTOFF, PropensityParams(prior_events=1e9))  # one rate for all
    views = np.bincount(log(rows)["item_idx"], minlength=6)[2:]
    cold = ranker(np.array([99]))[0, 2:]
    assert torch.equal(torch.argsort(cold, descending=True, stable=True),
                       torch.as_tensor(np.argsort(-views, kind="stable")))
    assert (cold > 0).all()
    warm = ranker(np.array([40]))[0, 2:]
    assert warm.argmax() == 1 and (warm > 0).all()  # its own item first, then the others by their views


def test_propensity_ignores_events_at_or_after_the_cutoff() -> None:
    later = ROWS + [(2, 5, PURCHASE, CUTOFF), (2, 3, VIEW, CUTOFF + 5), (3, 2, CART, CUTOFF + 1), (4, 4, VIEW, CUTOFF)]
    users = np.array([2, 3, 4])
    a = Propensity(log(ROWS), 6, CATEGORY, CUTOFF)(users)
    b = Propensity(log(later), 6, CATEGORY, CUTOFF)(users)
    assert torch.equal(a, b)


def test_a_cold_user_gets_category_popularity_times_conversion() -> None:
    ranker = Propensity(log(ROWS), 6, CATEGORY, CUTOFF)
    cold = ranker(np.array([9]))[0]
    expected = ranker.category_popularity[CATEGORY] * ranker.in_category * ranker.conversion
    assert cold[2:].tolist() == pytest.approx(expected[2:].tolist(), rel=1e-5)


def test_carts_separate_items_that_purchases_alone_cannot() -> None:
    # two items viewed alike by many users, never bought; one of them was put in carts
    rows = [(u, i, VIEW, u) for u in range(2, 40) for i in (2, 3)] + [(5, 3, CART, 100), (6, 3, CART, 101)]
    s = Propensity(log(rows), 6, CATEGORY, CUTOFF)(np.array([50]))[0]  # a new user: no history of its own
    assert s[3] > s[2]


def test_fit_propensity_climbs_to_the_objectives_best_grid_point() -> None:
    events = log(ROWS)
    seen: list[PropensityParams] = []

    def objective(ranker: Propensity) -> float:  # peaks at revisit 0.35, prior 5, uniform recency
        p = ranker.params
        seen.append(p)
        return -abs(p.revisit - 0.35) - abs(p.prior_events - 5.0) / 10 + (p.recency == "uniform")

    ranker, score = fit_propensity(events, 6, CATEGORY, CUTOFF, objective)
    best = ranker.params
    assert (best.revisit, best.prior_events, best.recency) == (0.35, 5.0, "uniform")
    tried = list(seen)
    assert score == max(objective(Propensity(events, 6, CATEGORY, CUTOFF, p)) for p in tried)
    assert all(getattr(p, name) in values for p in tried for name, values in PROPENSITY_GRID.items())


def test_an_unknown_recency_is_refused() -> None:
    with pytest.raises(ValueError, match="recency"):
        Propensity(log(ROWS), 6, CATEGORY, CUTOFF, PropensityParams(recency="linear"))


def test_with_params_scores_like_a_ranker_built_with_them() -> None:
    other = PropensityParams(revisit=0.5, interest_cap=2, prior_events=20.0, recency="uniform", cart_weight=3.0)
    base = Propensity(log(ROWS), 6, CATEGORY, CUTOFF)
    users = np.array([2, 3, 9])
    assert torch.equal(base.with_params(other)(users), Propensity(log(ROWS), 6, CATEGORY, CUTOFF, other)(users))
    assert base.params == PropensityParams()  # the base is left as it was


def test_the_order_events_come_in_does_not_matter() -> None:
    shuffled = [ROWS[i] for i in np.random.default_rng(0).permutation(len(ROWS))]
    users = np.array([2, 3, 9])
    assert torch.equal(Propensity(log(shuffled), 6, CATEGORY, CUTOFF)(users),
                       Propensity(log(ROWS), 6, CATEGORY, CUTOFF)(users))


def test_user_events_keep_the_stored_widths_and_share_sorted_arrays() -> None:
    """UserEvents over a prepared window's arrays (user and item int32, type int8: already in user
    order) keeps them as they are, no int64 copy; it finds the same ranges as over int64 copies, for
    int64 users too; unsorted arrays are sorted by user, stably."""
    from purchasepred.eval.rankers import UserEvents

    wide = log(ROWS + [(9, 1, VIEW, 7), (9, 3, CART, 8)])
    narrow = {"user_idx": wide["user_idx"].astype(np.int32), "item_idx": wide["item_idx"].astype(np.int32),
              "event_type_id": wide["event_type_id"].astype(np.int8), "ts": wide["ts"]}
    events = UserEvents(narrow)
    assert all(getattr(events, a) is narrow[c] for a, c in (("user", "user_idx"), ("item", "item_idx"), ("etype", "event_type_id")))
    users = np.array([9, 4, 2, 3], dtype=np.int64)  # 4 has no event
    rows, idx = events.ranges(users)
    rows_w, idx_w = UserEvents(wide).ranges(users)
    assert rows.tolist() == rows_w.tolist() == [0, 0, 2, 2, 2, 3, 3, 3, 3, 3] and idx.tolist() == idx_w.tolist()
    assert events.item[idx].dtype == np.int32 and (rows * 100 + events.item[idx]).dtype == np.int64  # batch keys widen
    shuffled = {c: v[::-1].copy() for c, v in narrow.items()}
    back = UserEvents(shuffled)
    assert back.user.tolist() == sorted(narrow["user_idx"].tolist())
    assert back.ts[back.user == 3].tolist() == [5, 4, 3, 2, 1]  # stable: the given order within a user
