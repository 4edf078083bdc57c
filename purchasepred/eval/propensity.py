"""The purchase funnel as a ranker: P(buy i) = P(the user views i) x P(buy | view of i).

A ranker with a handful of parameters, fitted on the valid window, for the regime where purchases are
too rare for a learned ranker to find this structure on its own (a few thousand views per purchase):

- **Which items the user will look at next.** With weight ``revisit``, an item the user looked at
  before (each past event weighted by its type, and by how recent it is among the user's events:
  the k-th event back from the newest weighs ``sqrt(k + 1) - sqrt(k)`` over ``sqrt(n)``, or all alike),
  and otherwise a fresh pick: a category from the user's own category shares (weight
  ``category_share``, the rest by global popularity), then an item by its views in that category.
- **Whether a view of it ends in a purchase.** The item's carts and purchases per view, shrunk towards
  the store's rate with ``prior_events`` pseudo-events (carts are drawn by the same appeal as
  purchases, and there are more of them: at 4000 views per purchase the purchases alone cannot
  separate items), times the user's interest: 1 + the user's views of the item so far, capped at
  ``interest_cap``.

Only events strictly before the cutoff are used. Scores are expected purchases up to a per-user
factor, so they order items within a user; they are not probabilities.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from purchasepred.eval.candidates import before_cutoff
from purchasepred.eval.rankers import UserEvents, coordinate_ascent
from purchasepred.features import CART, PURCHASE, VIEW, per_event_type


@dataclass(frozen=True)
class PropensityParams:
    revisit: float = 0.22
    """Share of a user's next views that go back to items of their own history."""
    category_share: float = 0.85
    """Share of a fresh view that follows the user's own categories (the rest: global category popularity)."""
    interest_cap: int = 5
    """A purchase per view grows with 1 + the user's earlier views of the item, up to 1 + this."""
    prior_events: float = 1.0
    """Pseudo-events (carts and purchases) shrinking an item's rate per view towards the store's."""
    recency: str = "sqrt"
    """How a past event's weight falls with its place back from the newest: 'sqrt' or 'uniform'."""
    cart_weight: float = 1.0
    """Weight of a past cart or purchase against a view in the revisit term."""


PROPENSITY_GRID: dict[str, tuple[Any, ...]] = {
    "revisit": (0.1, 0.22, 0.35, 0.5),
    "category_share": (0.7, 0.85, 0.95),
    "interest_cap": (2, 5, 10),
    "prior_events": (0.5, 1.0, 2.0, 5.0, 20.0),
    "recency": ("sqrt", "uniform"),
    "cart_weight": (1.0, 3.0),
}


class Propensity:
    """(B, V) expected purchases of every item, up to a per-user factor, from the events before ``cutoff_ts``.

    ``events``: arrays user_idx, item_idx, event_type_id, ts (any order; ties in time keep their order)."""

    def __init__(self, events: dict[str, np.ndarray], n_items: int, item_category: np.ndarray, cutoff_ts: int,
                 params: PropensityParams = PropensityParams()) -> None:
        keep = before_cutoff(events["ts"], cutoff_ts)
        # (in their own widths, and no copy when every event is before the cutoff, as in a prepared window)
        columns = [np.asarray(events[c]) for c in ("user_idx", "item_idx", "event_type_id", "ts")]
        user, item, etype, ts = columns if keep.all() else [c[keep] for c in columns]
        in_order = np.all((user[1:] > user[:-1]) | ((user[1:] == user[:-1]) & (ts[1:] >= ts[:-1])))
        if not in_order:  # (a prepared window's events come by user and time: no sort then)
            order = np.lexsort((ts, user))  # stable: each user's events in time order
            user, item, etype, ts = user[order], item[order], etype[order], ts[order]
        self.events = UserEvents({"user_idx": user, "item_idx": item, "event_type_id": etype, "ts": ts})
        self.n_items = n_items
        self.category = np.asarray(item_category, dtype=np.int64)
        self.n_categories = int(self.category.max()) + 1 if len(self.category) else 2
        views = np.bincount(item[etype == VIEW], minlength=n_items).astype(np.float64)
        self._views = views
        self._acted = np.bincount(item[(etype == CART) | (etype == PURCHASE)], minlength=n_items).astype(np.float64)
        # views + 0.1 per item, so that no item or category is impossible (a category nobody viewed yet,
        # a log of purchases only); items without a (known) category form one more category: a log
        # without categories gets the global item popularity as its fresh pick
        smoothed = views + 0.1
        cat_views = np.bincount(self.category, weights=smoothed, minlength=self.n_categories)
        self.category_popularity = cat_views / max(cat_views.sum(), 1e-12)
        # an item's share of its category's views
        self.in_category = smoothed / np.bincount(self.category, weights=smoothed, minlength=self.n_categories)[self.category]
        self._category_t = torch.as_tensor(self.category)
        self._set_params(params)

    def _set_params(self, params: PropensityParams) -> None:
        if params.recency not in ("sqrt", "uniform"):
            raise ValueError(f"recency must be 'sqrt' or 'uniform', got {params.recency!r}")
        self.params = params
        rate = (self._acted.sum() + 1.0) / (self._views.sum() + 1.0)
        self.conversion = (self._acted + params.prior_events) / (self._views + params.prior_events / rate)
        self.type_weight = np.array(per_event_type(view=1.0, cart=params.cart_weight, purchase=params.cart_weight))
        self._fresh_item = torch.as_tensor(self.in_category * self.conversion, dtype=torch.float32)

    def with_params(self, params: PropensityParams) -> Propensity:
        """The same log under other parameters (the events are sorted and counted once: a grid search's case)."""
        other = copy.copy(self)
        other._set_params(params)
        return other

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        p = self.params
        b, v, c = len(users), self.n_items, self.n_categories
        rows, idx = self.events.ranges(users)
        item, etype = self.events.item[idx], self.events.etype[idx]
        n = np.bincount(rows, minlength=b)
        back = (np.cumsum(n)[rows] - 1) - np.arange(len(rows))  # 0 = the user's newest event
        place = np.sqrt(back + 1.0) - np.sqrt(back) if p.recency == "sqrt" else np.ones(len(rows))
        w = place * self.type_weight[etype]
        w = w / np.maximum(np.bincount(rows, weights=w, minlength=b), 1e-12)[rows]
        share = np.bincount(rows * c + self.category[item], minlength=b * c).reshape(b, c).astype(np.float64)
        total = share.sum(1, keepdims=True)
        own = np.divide(share, total, out=np.zeros_like(share), where=total > 0)
        cat_w = np.where(total > 0, p.category_share * own + (1 - p.category_share) * self.category_popularity,
                         self.category_popularity)
        cat_w *= np.where(n > 0, 1.0 - p.revisit, 1.0)[:, None]  # a cold user's views are all fresh picks
        # one dense (B, V) float32 block, like the other rankers': the fresh pick, times the rate per view
        score = torch.as_tensor(cat_w.astype(np.float32))[:, self._category_t]
        score.mul_(self._fresh_item[None, :])
        # the (user, item) pairs the user touched: the revisit term, and the interest on both terms
        uniq, inv = np.unique(rows * v + item, return_inverse=True)
        revisit = np.bincount(inv, weights=w, minlength=len(uniq))
        seen = np.bincount(inv, weights=(etype == VIEW).astype(np.float64), minlength=len(uniq))
        pr, pi = torch.as_tensor(uniq // v), torch.as_tensor(uniq % v)
        touched = score[pr, pi].double().numpy() + p.revisit * revisit * self.conversion[uniq % v]
        score[pr, pi] = torch.as_tensor(touched * (1.0 + np.minimum(seen, p.interest_cap)), dtype=torch.float32)
        return score


def fit_propensity(events: dict[str, np.ndarray], n_items: int, item_category: np.ndarray, cutoff_ts: int,
                   objective: Callable[[Propensity], float]) -> tuple[Propensity, float]:
    """Coordinate ascent over PROPENSITY_GRID on the valid window (two sweeps, from the defaults);
    ``objective(ranker) -> NDCG@10``. Returns the best ranker (its ``params``) and its score."""
    base = Propensity(events, n_items, item_category, cutoff_ts)
    best, score = coordinate_ascent(base.params, PROPENSITY_GRID, lambda p: objective(base.with_params(p)))
    return base.with_params(best), score
