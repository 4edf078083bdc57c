"""TIFU-KNN, candidate generators and the learned re-ranker: behaviour on hand-made logs, no leakage."""

from __future__ import annotations

import numpy as np
import torch

from purchasepred.eval.tifu import TifuKNN, TifuVectors

DAY = 86400
CUTOFF = 100 * DAY


def log(rows: list[tuple[int, int, int, int, int]]) -> dict[str, np.ndarray]:
    """(user, item, event type, day, session) rows -> the arrays the rankers read."""
    a = np.array(rows, dtype=np.int64)
    return {"user_idx": a[:, 0], "item_idx": a[:, 1], "event_type_id": a[:, 2], "ts": a[:, 3] * DAY,
            "session_no": a[:, 4], "price_bucket": np.full(len(a), 5), "category_idx": np.full(len(a), 2)}


def tifu(events: dict[str, np.ndarray], k: int, alpha: float, n_items: int = 20) -> TifuKNN:
    pop = torch.zeros(n_items)
    pop[12] = 1.0  # a popular item nobody similar touched
    return TifuKNN(TifuVectors(events, n_items, CUTOFF, 2, 0.9, 0.7), pop, k, alpha)


def top(scorer, user: int, n: int) -> list[int]:
    s = scorer(np.array([user]))[0]
    s[:2] = float("-inf")
    return torch.topk(s, n).indices.tolist()


BASE = [
    # user 2: item 5 in every session, item 7 once, item 6 once
    (2, 5, 1, 90, 1), (2, 5, 1, 90, 1), (2, 7, 1, 91, 2), (2, 5, 3, 92, 3), (2, 6, 1, 93, 4), (2, 5, 1, 94, 5),
    # user 3: the same items as user 2, and it bought item 9
    (3, 5, 1, 90, 1), (3, 7, 1, 91, 2), (3, 6, 1, 92, 3), (3, 5, 1, 93, 4), (3, 9, 3, 94, 5),
    # user 4: something else entirely, heavily
    (4, 10, 1, 90, 1), (4, 11, 3, 91, 2), (4, 12, 3, 92, 3), (4, 12, 3, 93, 4),
]


def test_tifu_alpha_one_ranks_own_frequent_items_first() -> None:
    scorer = tifu(log(BASE), k=1, alpha=1.0)
    # item 6's one session is more recent than item 7's: the decay orders them
    assert top(scorer, 2, 3) == [5, 6, 7]
    # with alpha = 1 nothing of user 3's purchase leaks in: item 9 is ranked by popularity only
    s = scorer(np.array([2]))[0]
    assert s[9] == 0.0 and s[12] > 0.0


def test_tifu_neighbour_term_recommends_what_a_near_identical_user_bought() -> None:
    scorer = tifu(log(BASE), k=1, alpha=0.5)
    nbr, sim = scorer.vectors.neighbours(np.array([2]), 1)
    assert nbr[0, 0] == 3 and sim[0, 0] > 0.5
    ranked = top(scorer, 2, 5)
    assert ranked.index(9) < 4, ranked  # among user 2's own three items
    assert ranked.index(9) < ranked.index(12)  # above the popular item user 3 never touched
    # without the neighbour term item 9 is not above the popular item
    alone = top(tifu(log(BASE), k=1, alpha=1.0), 2, 5)
    assert alone.index(12) < (alone.index(9) if 9 in alone else 99)


def test_tifu_ignores_events_at_or_after_the_cutoff() -> None:
    later = BASE + [(2, 12, 3, 100, 6), (2, 13, 3, 101, 7), (3, 14, 3, 120, 6)]
    a, b = tifu(log(BASE), k=2, alpha=0.6), tifu(log(later), k=2, alpha=0.6)
    users = np.array([2, 3, 4])
    assert torch.equal(a(users), b(users))


def test_tifu_cold_user_gets_popularity() -> None:
    scorer = tifu(log(BASE), k=2, alpha=0.6)
    assert top(scorer, 17, 1) == [12]  # beyond every known user
