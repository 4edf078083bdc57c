"""Rankers that score every item for a batch of users: the two baselines, the model, the blend.

All of them see only events strictly before the window they rank for.

- ``Popularity``: event-type weighted counts (view 1, cart 3, purchase 10) over the last
  ``popularity_days`` before the cutoff, all-time counts breaking ties. The same list for everyone.
- ``History`` (in the spirit of TIFU-KNN's personal term, a repeat-purchase ranker): each of the
  user's past events on an item adds ``w[type] * 0.5 ** (age / half_life)``; popularity, scaled
  below any history score, orders the rest and ranks cold users. Its parameters (cart and purchase
  weights relative to a view, half-life) are fitted on the valid window by grid search.
- ``ModelScorer``: the transformer's purchase log-probabilities at the last input event;
  popularity for users with no input.
- ``Blend``: model log-probability + beta * log1p(10 * history score) + gamma * log(item
  conversion prior) + delta * log(category affinity); weights fitted on valid. The prior (purchases per view, smoothed) is
  the signal history lacks: which of the items a user keeps looking at people actually buy.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from purchasepred.features import CART, PURCHASE, VIEW, per_event_type
from purchasepred.data.tensors import SplitData
from purchasepred.models.batching import trim_padding

POPULARITY_WEIGHTS = np.array(per_event_type(view=1.0, cart=3.0, purchase=10.0))


class UserEvents:
    """Events sorted by user, with the index ranges of a batch of users. The columns keep the widths
    they come in (a prepared window's: user and item int32, type int8, ts int64), and are the caller's
    own arrays when these are already in user order, as a prepared window's are: no int64 copy of
    every event (32 bytes an event). Arithmetic on a batch's items widens with its int64 rows."""

    def __init__(self, events: dict[str, np.ndarray]) -> None:
        columns = [np.asarray(events[c]) for c in ("user_idx", "item_idx", "event_type_id", "ts")]
        user = columns[0]
        if len(user) > 1 and np.any(user[1:] < user[:-1]):
            order = np.argsort(user, kind="stable")
            columns = [c[order] for c in columns]
        self.user, self.item, self.etype, self.ts = columns

    def _bounds(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each of ``users``' events start and end. The users are taken in the width of ``user``
        first: np.searchsorted would otherwise convert every event's user to the wider type on each
        call (15 ms at 12M events, against 0.6 ms)."""
        users = np.asarray(users)
        # (an id beyond the stored width: no event has it; the slow path finds none)
        if users.dtype != self.user.dtype and (not len(users) or np.iinfo(self.user.dtype).max >= users.max()):
            users = users.astype(self.user.dtype)
        return np.searchsorted(self.user, users, "left"), np.searchsorted(self.user, users, "right")

    def has_events(self, users: np.ndarray) -> np.ndarray:
        """(B,) whether each of ``users`` has an event."""
        lo, hi = self._bounds(users)
        return hi > lo

    def ranges(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, event indices) of every event of ``users``: rows index into ``users``."""
        lo, hi = self._bounds(users)
        lengths = hi - lo
        # int64 rows: callers index (rows x catalogue) blocks with rows * n_items
        rows = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, np.repeat(lo, lengths) + offsets


class ScoreCache:
    """Score blocks kept by key up to ``max_bytes`` in all (beyond that, computed and not kept): a grid
    search on the valid window asks for the same users' model scores or TIFU-KNN neighbour terms at
    every grid point. Returned tensors are shared: callers must not modify them in place."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes, self.used = max_bytes, 0
        self._blocks: dict[Any, torch.Tensor] = {}

    def get(self, key: Any, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        hit = self._blocks.get(key)
        if hit is None:
            hit = compute()
            size = hit.nelement() * hit.element_size()
            if self.used + size <= self.max_bytes:
                self._blocks[key] = hit
                self.used += size
        return hit


class CachedScorer:
    """``scorer``'s scores of each batch of users computed once (up to the cache's bytes); each call
    returns a copy, which callers such as :class:`Blend` may modify in place."""

    def __init__(self, scorer: Callable[[np.ndarray], torch.Tensor], cache: ScoreCache | None = None) -> None:
        self.scorer, self.cache = scorer, cache or ScoreCache()

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        return self.cache.get(users.tobytes(), lambda: self.scorer(users)).clone()


class Popularity:

    def __init__(self, events: dict[str, np.ndarray], n_items: int, cutoff_ts: int, days: float) -> None:
        items = events["item_idx"].astype(np.int64)
        w = POPULARITY_WEIGHTS[events["event_type_id"].astype(np.int64)]
        recent = events["ts"] >= cutoff_ts - days * 86400
        alltime = np.bincount(items, weights=w, minlength=n_items)
        scores = np.bincount(items[recent], weights=w[recent], minlength=n_items)
        scores = scores + alltime / (alltime.max() + 1.0) * 0.5  # ties among recent broken by all-time
        self.scores = torch.as_tensor(scores, dtype=torch.float32)
        self.normalized = self.scores / (self.scores.max() + 1e-9)  # in [0, 1]

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        return self.scores[None, :].expand(len(users), -1).clone()


@dataclass(frozen=True)
class HistoryParams:
    cart: float = 3.0
    """Weight of a cart event relative to a view."""
    purchase: float = 3.0
    """Weight of a past purchase relative to a view (the repeat-purchase effect)."""
    half_life_days: float = 7.0
    """An event's weight halves every this many days before the cutoff."""


class History:
    POP_SCALE = 1e-3  # popularity in [0, 1e-3]: below any single recent event's weight

    def __init__(self, events: UserEvents, popularity: Popularity, cutoff_ts: int, params: HistoryParams) -> None:
        self.events, self.popularity, self.params = events, popularity, params
        self.type_w = np.array(per_event_type(view=1.0, cart=params.cart, purchase=params.purchase))
        age = (cutoff_ts - events.ts).clip(min=0) / 86400.0
        self.weight = self.type_w[events.etype] * 0.5 ** (age / params.half_life_days)

    def personal(self, users: np.ndarray) -> torch.Tensor:
        """(B, V) the history term alone (0 for items the user never touched)."""
        rows, idx = self.events.ranges(users)
        scores = torch.zeros(len(users), len(self.popularity.scores))
        scores.index_put_(
            (torch.as_tensor(rows), torch.as_tensor(self.events.item[idx])),
            torch.as_tensor(self.weight[idx], dtype=torch.float32),
            accumulate=True,
        )
        return scores

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        return self.personal(users) + self.POP_SCALE * self.popularity.normalized[None, :]

    def personal_sparse(self, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The history term as (rows, items, weight) triples, one per (user, item) touched."""
        rows, idx = self.events.ranges(users)
        key = rows * len(self.popularity.scores) + self.events.item[idx]
        uniq, inverse = np.unique(key, return_inverse=True)
        weight = np.bincount(inverse, weights=self.weight[idx], minlength=len(uniq))
        n = len(self.popularity.scores)
        return (torch.as_tensor(uniq // n), torch.as_tensor(uniq % n), torch.as_tensor(weight, dtype=torch.float32))


class ModelScorer:
    """(B, V) purchase log-probabilities at each user's last input event; popularity for users with no input.

    With ``view=True`` every call also computes the view head's log-probabilities from the same
    encoder states (one encoding for both heads) and keeps the last batch's for :meth:`view_scores`."""

    SUB_BATCH = 512

    def __init__(self, model: torch.nn.Module, split: SplitData, popularity: Popularity, device: torch.device,
                 view: bool = False) -> None:
        self.model, self.split, self.popularity, self.device, self.view = model, split, popularity, device, view
        self._last_view: tuple[bytes, torch.Tensor] | None = None

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        heads = self._heads(users, self.view)
        if self.view:
            self._last_view = (users.tobytes(), heads[1])
        return heads[0]

    def view_scores(self, users: np.ndarray) -> torch.Tensor:
        """(B, V) log p(next viewed item): the last call's when it was for the same users."""
        if self._last_view is not None and self._last_view[0] == users.tobytes():
            return self._last_view[1]
        return self._heads(users, True)[1]

    @torch.no_grad()
    def _heads(self, users: np.ndarray, view: bool) -> tuple[torch.Tensor, ...]:
        rows = self.split.rows_of(users)
        has = rows >= 0
        was_training = self.model.training
        self.model.eval()
        try:
            if has.all() and len(users) <= self.SUB_BATCH:  # the common export case: no copy
                return self._score(rows, view)
            n_out = 2 if view else 1
            outs = tuple(torch.empty(len(users), len(self.popularity.scores)) for _ in range(n_out))
            if not has.all():  # users with no input: the log of normalized popularity
                for out in outs:
                    out[torch.as_tensor(~has)] = torch.log(self.popularity.normalized + 1e-12)[None, :]
            where = np.nonzero(has)[0]
            # short histories together, so that each sub-batch drops its all-padding columns
            order = where[np.argsort(self.split.n_events[rows[where]], kind="stable")]
            for start in range(0, len(order), self.SUB_BATCH):
                pick = torch.as_tensor(order[start:start + self.SUB_BATCH])
                for out, part in zip(outs, self._score(rows[pick.numpy()], view), strict=True):
                    out[pick] = part
            return outs
        finally:
            self.model.train(was_training)

    def _score(self, rows: np.ndarray, view: bool) -> tuple[torch.Tensor, ...]:
        # the batch's inputs, cut from the events in their stored widths (PaddedRows); the model takes int64 ids
        batch = trim_padding({c: torch.from_numpy(v).to(self.device, torch.long, non_blocking=True)
                              for c, v in self.split.features.take(rows).items()})
        h = self.model.encode(batch)
        buy = self.model.score_purchase(batch, h).float().cpu()
        return (buy, self.model.score_view(h[:, -1]).cpu()) if view else (buy,)


def conversion_prior(events: dict[str, np.ndarray], n_items: int, strength: float = 20.0) -> torch.Tensor:
    """log of each item's smoothed purchase rate per view, from the events before the cutoff:
    (purchases + 0.3 carts + strength * global rate) / (views + strength) (empirical Bayes)."""
    items, etype = events["item_idx"].astype(np.int64), events["event_type_id"].astype(np.int64)
    views = np.bincount(items[etype == VIEW], minlength=n_items).astype(np.float64)
    buys = np.bincount(items[etype == PURCHASE], minlength=n_items) + 0.3 * np.bincount(items[etype == CART], minlength=n_items)
    rate = (buys.sum() + 1.0) / (views.sum() + 1.0)
    return torch.as_tensor(np.log((buys + strength * rate) / (views + strength)), dtype=torch.float32)


class CategoryAffinity:
    """Each user's share of (type-weighted) events per category, read for every item:
    ``log(0.01 + share[user, category(item)])``: where a user shops, for items never seen."""

    def __init__(self, events: UserEvents, item_category: np.ndarray) -> None:
        self.events = events
        self.item_category = torch.as_tensor(item_category, dtype=torch.long)
        self.n_categories = int(item_category.max()) + 1 if len(item_category) else 2
        self.weight = np.array(per_event_type(view=1.0, cart=3.0, purchase=3.0))[events.etype]

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        rows, idx = self.events.ranges(users)
        share = torch.zeros(len(users), self.n_categories)
        share.index_put_((torch.as_tensor(rows), self.item_category[torch.as_tensor(self.events.item[idx])]),
                         torch.as_tensor(self.weight[idx], dtype=torch.float32), accumulate=True)
        share /= share.sum(1, keepdim=True).clamp(min=1e-9)
        share[:, 1] = 0.0  # the unknown category says nothing
        return torch.log(share.add_(0.01))[:, self.item_category]  # (B, V)


@dataclass(frozen=True)
class BlendWeights:
    beta: float = 0.0
    """Weight of log1p(10 * history score): the user's own past events on the item."""
    gamma: float = 0.0
    """Weight of the log item conversion prior (purchases per view)."""
    delta: float = 0.0
    """Weight of the log category affinity of the user."""


class Blend:
    """model log-probability + beta * log1p(10 * history) + gamma * log(conversion prior)
    + delta * log(category affinity)."""

    def __init__(self, model: ModelScorer, history: History, weights: BlendWeights,
                 prior: torch.Tensor | None = None, affinity: CategoryAffinity | None = None) -> None:
        self.model, self.history, self.w, self.prior, self.affinity = model, history, weights, prior, affinity

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        scores = self.model(users)  # (B, V), modified in place
        if self.w.gamma and self.prior is not None:
            scores.add_(self.w.gamma * self.prior[None, :])
        if self.w.delta and self.affinity is not None:
            scores.add_(self.affinity(users).mul_(self.w.delta))
        if self.w.beta:
            rows, items, weight = self.history.personal_sparse(users)
            scores.index_put_((rows, items), self.w.beta * torch.log1p(weight * 10.0), accumulate=True)
        return scores


HISTORY_GRID = {
    "cart": (1.0, 3.0, 10.0),
    "purchase": (0.3, 3.0, 10.0),
    "half_life_fraction": (0.1, 1.0, 4.0),  # times the window length
}
BLEND_GRID = {
    "beta": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
    "gamma": (0.0, 0.5, 1.0, 2.0, 4.0),
    "delta": (0.0, 0.25, 0.5, 1.0, 2.0),
}


def coordinate_ascent(start: Any, grid: dict[str, tuple[Any, ...]], objective: Callable[[Any], float],
                      sweeps: int = 2) -> tuple[Any, float]:
    """The best point of ``grid`` (field name -> values of the dataclass ``start``) found by changing one
    field at a time, ``sweeps`` times over the fields; ties keep the earlier point."""
    best, best_score = start, objective(start)
    for _ in range(sweeps):
        for name, values in grid.items():
            for v in values:
                cand = replace(best, **{name: v})
                if cand == best:
                    continue
                score = objective(cand)
                if score > best_score:
                    best, best_score = cand, score
    return best, best_score


def fit_blend(objective, start: BlendWeights = BlendWeights(beta=1.0)) -> tuple[BlendWeights, float]:
    """Coordinate ascent over BLEND_GRID (two sweeps): ~35 evaluations instead of the 175 of a full grid."""
    return coordinate_ascent(start, BLEND_GRID, objective)


def fit_history(events: UserEvents, popularity: Popularity, valid: SplitData, cutoff_ts: int,
                window_days: float, objective) -> tuple[HistoryParams, float]:
    """Grid search on the valid window; ``objective(scorer) -> NDCG@10``. Returns the best params."""
    best: tuple[HistoryParams, float] = (HistoryParams(half_life_days=window_days), -1.0)
    for cart, purchase, frac in itertools.product(*HISTORY_GRID.values()):
        params = HistoryParams(cart=cart, purchase=purchase, half_life_days=frac * window_days)
        score = objective(History(events, popularity, cutoff_ts, params))
        if score > best[1]:
            best = (params, score)
    return best
