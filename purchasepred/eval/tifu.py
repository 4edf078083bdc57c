"""TIFU-KNN (Hu et al., SIGIR 2020), adapted to event logs: a baseline ranker and a re-ranker feature.

Personal term. A user's "baskets" are their sessions, newest last. Each basket is a vector over
items: every event adds ``w[type]`` (view 1, cart 3, purchase 3, as in ``History``). Baskets are
grouped, newest first, into groups of ``group_size``; inside a group the basket ``p`` places
from the group's newest is weighted ``r_basket ** p`` and the group is the mean of its weighted
baskets; the group ``g`` places from the newest is weighted ``r_group ** g`` and the user vector
is the mean of the weighted groups (the paper's time-decayed item frequencies).

Neighbour term. The ``k`` users whose vectors are most cosine-similar (the user excluded), their
vectors averaged. Score = ``alpha * personal + (1 - alpha) * neighbours``; popularity, scaled far
below, orders what both leave at zero (cold users get popularity).

Only events before the cutoff are used (later ones are dropped here too, whatever the caller
passes; see :func:`purchasepred.eval.candidates.before_cutoff`). Similarities are computed per block of scored users against the sparse
(users x items) matrix, so no users x users matrix is ever held; ``k``, ``alpha`` and the decays
are fitted on the valid window (:func:`fit_tifu`).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from purchasepred.features import PAD, per_event_type
from purchasepred.eval.candidates import before_cutoff
from purchasepred.eval.rankers import ScoreCache

TYPE_WEIGHTS = np.array(per_event_type(view=1.0, cart=3.0, purchase=3.0))
POP_SCALE = 1e-6  # popularity in [0, 1e-6]: orders only what the two terms leave at zero


@dataclass(frozen=True)
class TifuParams:
    k: int = 100
    """Nearest neighbours (users) averaged in the neighbour term."""
    alpha: float = 0.7
    """Weight of the personal term; 1 - alpha goes to the neighbours."""
    group_size: int = 3
    """Sessions per group."""
    r_basket: float = 0.9
    """Decay of a session inside its group, per step back in time."""
    r_group: float = 0.7
    """Decay of a group, per group back in time."""


class TifuVectors:
    """The users' TIFU vectors as a sparse (users x items) matrix, built from events before ``cutoff_ts``.

    ``events``: arrays user_idx, item_idx, event_type_id, ts, session_no (any order).
    """

    def __init__(self, events: dict[str, np.ndarray], n_items: int, cutoff_ts: int,
                 group_size: int, r_basket: float, r_group: float) -> None:
        keep = before_cutoff(events["ts"], cutoff_ts)
        user = events["user_idx"][keep].astype(np.int64)
        item = events["item_idx"][keep].astype(np.int64)
        etype = events["event_type_id"][keep].astype(np.int64)
        session = events["session_no"][keep].astype(np.int64)
        ts = events["ts"][keep].astype(np.int64)
        order = np.lexsort((ts, session, user))
        user, item, etype, session = user[order], item[order], etype[order], session[order]
        self.n_items = n_items
        self.n_users = int(user.max()) + 1 if len(user) else 1
        # basket number per event, counted from each user's newest session (0 = newest)
        new_basket = np.ones(len(user), dtype=bool)
        new_basket[1:] = (user[1:] != user[:-1]) | (session[1:] != session[:-1])
        basket = np.cumsum(new_basket) - 1  # global basket ordinal
        first_of_user = np.searchsorted(user, user, "left")
        last_of_user = np.searchsorted(user, user, "right") - 1
        n_baskets = basket[last_of_user] - basket[first_of_user] + 1 if len(user) else basket
        back = basket[last_of_user] - basket  # 0 = newest session
        group, pos = back // group_size, back % group_size
        n_groups = (n_baskets - 1) // group_size + 1
        # the oldest group may hold fewer sessions than group_size
        group_len = np.minimum(group_size, n_baskets - group * group_size)
        w = TYPE_WEIGHTS[etype] * r_basket ** pos / group_len * r_group ** group / n_groups
        key = user * n_items + item
        uniq, inverse = np.unique(key, return_inverse=True)
        value = np.bincount(inverse, weights=w, minlength=len(uniq))
        nz = value > 0
        uniq, value = uniq[nz], value[nz]
        rows, cols = uniq // n_items, uniq % n_items
        self.indptr = np.searchsorted(rows, np.arange(self.n_users + 1), "left").astype(np.int64)
        self.indices = cols.astype(np.int64)
        self.values = value.astype(np.float32)
        norm = np.sqrt(np.bincount(rows, weights=value.astype(np.float64) ** 2, minlength=self.n_users))
        self.norm = norm.astype(np.float32)
        unit = self.values / np.maximum(self.norm[rows], 1e-12)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": we use only its matmul
            warnings.simplefilter("ignore", UserWarning)
            self._unit = torch.sparse_csr_tensor(torch.as_tensor(self.indptr), torch.as_tensor(self.indices),
                                                 torch.as_tensor(unit), size=(self.n_users, n_items),
                                                 check_invariants=False)
        self.k_hint = 0  # neighbours are found for at least this many (a grid over k sets it)
        self._neighbour_cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def _rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in ``users``, entry index) of every stored entry of ``users`` (absent users: none)."""
        u = np.clip(users, 0, self.n_users - 1)
        lo = np.where(users < self.n_users, self.indptr[u], 0)
        hi = np.where(users < self.n_users, self.indptr[u + 1], 0)
        lengths = hi - lo
        rows = np.repeat(np.arange(len(users)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, np.repeat(lo, lengths) + offsets

    def dense(self, users: np.ndarray, weights: np.ndarray | None = None) -> torch.Tensor:
        """(B, V) the users' vectors; with ``weights`` (B, n) and ``users`` (B, n): weighted sums of rows."""
        if users.ndim == 1:
            users, weights = users[:, None], np.ones((len(users), 1), dtype=np.float32)
        b, n = users.shape
        rows, idx = self._rows(users.reshape(-1))
        out = torch.zeros(b, self.n_items)
        out.index_put_((torch.as_tensor(rows // n), torch.as_tensor(self.indices[idx])),
                       torch.as_tensor(self.values[idx] * weights.reshape(-1)[rows]), accumulate=True)
        return out

    BLOCK = 256  # scored users per similarity block: (BLOCK, users) floats at a time

    def neighbours(self, users: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, k) the most cosine-similar other users, best first, and their similarities.

        Ties break by user id (ascending). Users with an empty vector get similarity 0 to everyone.
        Neighbours are found for ``max(k, k_hint)`` and cached per batch of users, so that a grid
        over k finds them once."""
        want = max(1, min(k, self.n_users - 1))
        key = users.tobytes()
        hit = self._neighbour_cache.get(key)
        if hit is None or hit[0].shape[1] < want:
            kk = max(1, min(max(k, self.k_hint), self.n_users - 1))
            parts = [self._neighbours_block(users[s:s + self.BLOCK], kk) for s in range(0, len(users), self.BLOCK)]
            hit = (np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, kk), dtype=np.int64),
                   np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, kk), dtype=np.float32))
            if len(self._neighbour_cache) > 64:
                self._neighbour_cache.clear()
            self._neighbour_cache[key] = hit
        return hit[0][:, :want], hit[1][:, :want]

    def _neighbours_block(self, users: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        inside = users < self.n_users
        query = self.dense(users)  # (B, V)
        query /= torch.as_tensor(np.maximum(self.norm[np.clip(users, 0, self.n_users - 1)], 1e-12))[:, None]
        query[torch.as_tensor(~inside)] = 0.0
        sims = torch.sparse.mm(self._unit, query.t().contiguous()).t().contiguous()  # (B, N)
        sims[torch.as_tensor(np.nonzero(inside)[0]), torch.as_tensor(users[inside])] = -1.0  # never oneself
        sims[:, PAD] = -1.0  # user 0 is padding
        # deterministic ties: a penalty growing with the user id, below float32 resolution of distinct sims
        sims -= torch.arange(self.n_users, dtype=torch.float32)[None, :] * (1e-7 / self.n_users)
        val, idx = torch.topk(sims, k, dim=1)
        return idx.numpy(), val.clamp(min=0.0).numpy()


class TifuKNN:
    """alpha * personal + (1 - alpha) * mean of the k nearest users' vectors (+ popularity, far below)."""

    def __init__(self, vectors: TifuVectors, popularity_normalized: torch.Tensor, k: int, alpha: float,
                 terms: ScoreCache | None = None) -> None:
        """``terms``: a cache of neighbour terms shared by the points of a grid over alpha (same vectors)."""
        self.vectors, self.popularity, self.k, self.alpha, self.terms = vectors, popularity_normalized, k, alpha, terms

    def neighbour_term(self, users: np.ndarray) -> torch.Tensor:
        """(B, V) the mean of the k nearest users' vectors (shared with the cache, if any: not to modify)."""
        if self.terms is not None:
            return self.terms.get((users.tobytes(), self.k), lambda: self._neighbour_term(users))
        return self._neighbour_term(users)

    def _neighbour_term(self, users: np.ndarray) -> torch.Tensor:
        nbr, sim = self.vectors.neighbours(users, self.k)
        has = (sim > 0).astype(np.float32)  # a neighbour with nothing in common contributes nothing
        return self.vectors.dense(nbr, has / self.k)

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        scores = self.vectors.dense(users).mul_(self.alpha)
        if self.alpha < 1.0:
            for s in range(0, len(users), TifuVectors.BLOCK):  # bounded (block x k) neighbour rows at a time
                scores[s:s + TifuVectors.BLOCK].add_(self.neighbour_term(users[s:s + TifuVectors.BLOCK]).mul(1.0 - self.alpha))
        return scores.add_(POP_SCALE * self.popularity[None, :])


TIFU_GRID = {
    "decay": ((3, 0.9, 0.7), (3, 1.0, 0.9), (7, 0.9, 0.6), (1, 1.0, 0.8)),  # (group_size, r_basket, r_group)
    "k": (20, 100, 300),
    "alpha": (0.5, 0.7, 0.9, 1.0),
}


def fit_tifu(events: dict[str, np.ndarray], n_items: int, cutoff_ts: int, popularity_normalized: torch.Tensor,
             objective) -> tuple[TifuParams, float, TifuVectors]:
    """Grid search on the valid window; ``objective(scorer) -> NDCG@10``. Returns the best params,
    their score and the vectors built with them. Neighbours are found once per decay setting (for the
    largest k; smaller k take a prefix), and each k's neighbour term once for every alpha."""
    best: tuple[TifuParams, float, TifuVectors | None] = (TifuParams(), -1.0, None)
    for (m, rb, rg) in TIFU_GRID["decay"]:
        vectors = TifuVectors(events, n_items, cutoff_ts, m, rb, rg)
        vectors.k_hint = max(TIFU_GRID["k"])
        terms = ScoreCache()  # each k's neighbour term once, for every alpha
        for k, alpha in itertools.product(TIFU_GRID["k"], TIFU_GRID["alpha"]):
            if alpha == 1.0 and k != TIFU_GRID["k"][0]:
                continue  # without the neighbour term k changes nothing
            score = objective(TifuKNN(vectors, popularity_normalized, k, alpha, terms))
            if score > best[1]:
                best = (TifuParams(k=k, alpha=alpha, group_size=m, r_basket=rb, r_group=rg), score, vectors)
    params, score, vectors = best
    if vectors is None:  # the grid always scores its first point, so this cannot happen
        raise RuntimeError("fit_tifu evaluated no parameters")
    return params, score, vectors


def build_tifu(events: dict[str, np.ndarray], n_items: int, cutoff_ts: int, popularity_normalized: torch.Tensor,
               params: TifuParams) -> TifuKNN:
    vectors = TifuVectors(events, n_items, cutoff_ts, params.group_size, params.r_basket, params.r_group)
    return TifuKNN(vectors, popularity_normalized, params.k, params.alpha)
