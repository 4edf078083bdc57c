"""Candidate generators for two-stage ranking, and their recall on a window.

Every generator scores items for a batch of users from the events strictly before the cutoff,
and proposes its top ``n`` items with a positive score (``model`` and ``popularity`` always propose
``n``). The union of the proposals is what the re-ranker (:mod:`purchasepred.eval.rerank`) orders;
its recall is the ceiling of any re-ranker.

- ``own``: the items the user touched, by the history score (type weights, half-life decay);
- ``cooc``: neighbours of the user's items by co-occurrence in sessions (count over the square root of
  both items' session counts), seeded by the user's history scores;
- ``bought_after_viewed``: items bought within ``bav_days`` after viewing (or carting) an item, as a
  share of that item's viewers, seeded the same way (TIFU-KNN's neighbour idea, item side);
- ``trending``: items whose recent counts grow, in the categories the user shops in;
- ``popularity``: the global popularity list;
- ``model``: the transformer purchase head's top-n (only when a model scorer is given);
- ``propensity``: the purchase-funnel ranker's top-n (:mod:`purchasepred.eval.propensity`; only when
  one is given).

Candidates are returned as flat (row, item) arrays sorted by row then item id, with one bit per
generator that proposed the pair: no dense users x items matrix outlives a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from purchasepred.features import CART, FIRST_ID, PURCHASE, VIEW, per_event_type

GENERATORS = ("own", "cooc", "bought_after_viewed", "trending", "popularity", "model", "propensity")
TYPE_W = np.array(per_event_type(view=1.0, cart=3.0, purchase=10.0))


@dataclass(frozen=True)
class CandidateConfig:
    own: int = 50
    cooc: int = 40
    bought_after_viewed: int = 30
    trending: int = 20
    popularity: int = 20
    model: int = 40
    propensity: int = 40
    neighbours: int = 30
    """Neighbours kept per item in the item-to-item tables."""
    session_cap: int = 20
    """Only the last this many distinct items of a session form co-occurrence pairs."""
    bav_days: float = 3.0
    """A purchase counts as 'bought after viewing' an item viewed up to this many days before."""
    trend_days: float = 3.0
    """Trending: type-weighted counts of the last trend_days against the trend_days before."""

    def n(self, generator: str) -> int:
        return int(getattr(self, generator))


def before_cutoff(ts: np.ndarray, cutoff_ts: int) -> np.ndarray:
    """True for events a window's rankers may use: before ``cutoff_ts``, the window's ``start_ts``
    (the first whole second at or after its start, so that for whole-second event times this is the
    exact filter of ``events_before``). Drops anything a caller passes from the window or after it."""
    return np.asarray(ts).astype(np.int64) < cutoff_ts


def top_n_mask(scores: torch.Tensor, n: int) -> torch.Tensor:
    """(B, V) bool: each row's n best finite scores, ties at the boundary broken by the lower item id,
    so that the set does not depend on how topk orders equal values."""
    rows, items = top_n(scores, n)
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    mask[rows, items] = True
    return mask


def top_n(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, items) of each row's n best finite scores (the set of :func:`top_n_mask`), in no order.

    ``torch.topk`` takes every score above the n-th and fills the rest from the scores tied with it,
    in an order of its own; only rows where more are tied than it took are redone (the lowest ids)."""
    vals, idx = torch.topk(scores, n, dim=1)  # (B, n)
    kth = vals[:, -1:]
    took = (vals == kth).sum(1)
    redo = (((scores == kth).sum(1) > took) & torch.isfinite(kth[:, 0])).nonzero().squeeze(1)
    if len(redo):
        s, edge = scores[redo], kth[redo]
        tied = s == edge
        room = n - (s > edge).sum(1, keepdim=True)
        take = (s > edge) | (tied & (torch.cumsum(tied.int(), dim=1) <= room))
        idx[redo] = take.nonzero()[:, 1].view(len(redo), n)
        vals[redo] = s.gather(1, idx[redo])
    keep = torch.isfinite(vals)
    return torch.arange(len(scores))[:, None].expand_as(idx)[keep], idx[keep]


def _top_per_row(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, keep: int,
                 n_cols: int) -> torch.Tensor:
    """A sparse COO (n_rows x n_cols) with each row's ``keep`` largest entries (ties by column id)."""
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    start = np.searchsorted(rows, rows, "left")
    first = np.arange(len(rows)) - start < keep
    rows, cols, vals = rows[first], cols[first], vals[first]
    index = torch.as_tensor(np.stack([rows, cols]), dtype=torch.int64)
    return torch.sparse_coo_tensor(index, torch.as_tensor(vals, dtype=torch.float32), (n_rows, n_cols),
                                   check_invariants=False).coalesce()


def _count_pairs(a: np.ndarray, b: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    key = a.astype(np.int64) * n_items + b.astype(np.int64)
    uniq, counts = np.unique(key, return_counts=True)
    return uniq // n_items, uniq % n_items, counts.astype(np.float64)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which range, index) for every index of the ranges [start, start + length)."""
    which = np.repeat(np.arange(len(starts)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return which, np.repeat(starts, lengths) + offsets


class ItemGraph:
    """Item-to-item tables from the events strictly before ``cutoff_ts``, each row the ``neighbours`` best:
    ``cooc`` (session co-occurrence, symmetric) and ``bav`` (row = viewed item, column = bought item)."""

    CHUNK = 200_000  # sessions per batch of pairs (bounded memory)

    def __init__(self, events: dict[str, np.ndarray], n_items: int, cutoff_ts: int, cfg: CandidateConfig) -> None:
        before = before_cutoff(events["ts"], cutoff_ts)  # later events are dropped, whatever is passed
        user = events["user_idx"][before].astype(np.int64)
        item = events["item_idx"][before].astype(np.int64)
        etype = events["event_type_id"][before].astype(np.int64)
        ts = events["ts"][before].astype(np.int64)
        session = events["session_no"][before].astype(np.int64)
        self.n_items = n_items
        # ---- sessions: distinct items per (user, session), the last session_cap of them
        order = np.lexsort((-ts, item, session, user))
        u, s, it, t = user[order], session[order], item[order], ts[order]
        first = np.ones(len(u), dtype=bool)  # first (= latest) occurrence of an item in its session
        first[1:] = (u[1:] != u[:-1]) | (s[1:] != s[:-1]) | (it[1:] != it[:-1])
        u, s, it, t = u[first], s[first], it[first], t[first]
        order = np.lexsort((-t, s, u))  # latest first inside each session
        u, s, it = u[order], s[order], it[order]
        new = np.ones(len(u), dtype=bool)
        new[1:] = (u[1:] != u[:-1]) | (s[1:] != s[:-1])
        sess_id = np.cumsum(new) - 1
        starts = np.flatnonzero(new)
        pos = np.arange(len(u)) - starts[sess_id]
        keep = pos < cfg.session_cap
        it, sess_id = it[keep], sess_id[keep]
        starts = np.searchsorted(sess_id, np.arange(sess_id[-1] + 1 if len(sess_id) else 0), "left")
        lengths = np.diff(np.append(starts, len(sess_id)))
        n_sessions = np.bincount(it, minlength=n_items).astype(np.float64)
        acc: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0))
        for c in range(0, len(starts), self.CHUNK):
            st, ln = starts[c:c + self.CHUNK], lengths[c:c + self.CHUNK]
            # every ordered pair (x, y), x != y, of each session: element i paired with its whole session
            elem_which, elem = _ranges(st, ln)
            pair_src = np.repeat(elem, ln[elem_which])
            _, pair_dst = _ranges(st[elem_which], ln[elem_which])
            ok = pair_src != pair_dst
            a, b, cnt = _count_pairs(it[pair_src[ok]], it[pair_dst[ok]], n_items)
            keys = np.concatenate([acc[0], a * n_items + b])
            vals = np.concatenate([acc[1], cnt])
            uk, inv = np.unique(keys, return_inverse=True)
            acc = (uk, np.bincount(inv, weights=vals, minlength=len(uk)))
        a, b, cnt = acc[0] // n_items, acc[0] % n_items, acc[1]
        sim = cnt / np.sqrt(np.maximum(n_sessions[a] * n_sessions[b], 1.0))
        self.cooc = _top_per_row(a, b, sim, n_items, cfg.neighbours, n_items)
        # ---- bought after viewed: for each purchase, the user's views and carts in the bav_days before
        order = np.lexsort((ts, user))
        user, item, etype, ts = user[order], item[order], etype[order], ts[order]
        buys = np.flatnonzero(etype == PURCHASE)
        span = int(cfg.bav_days * 86400)
        key = user * (1 << 34) + ts  # ts in seconds fits 34 bits until 2514
        lo = np.searchsorted(key, key[buys] - span, "left")
        hi = np.searchsorted(key, key[buys], "left")
        which, idx = _ranges(lo, hi - lo)
        viewed = (etype[idx] == VIEW) | (etype[idx] == CART)
        src, dst = item[idx[viewed]], item[buys[which[viewed]]]
        ok = src != dst
        # one count per (purchase, viewed item) pair at most
        key = np.unique((which[viewed][ok].astype(np.int64) * n_items + src[ok]) * n_items + dst[ok])
        a, b, cnt = _count_pairs(key // n_items % n_items, key % n_items, n_items)
        viewers = np.zeros(n_items)
        looked = (etype == VIEW) | (etype == CART)
        vu = np.unique(user[looked] * n_items + item[looked])
        np.add.at(viewers, vu % n_items, 1.0)
        self.bav = _top_per_row(a, b, cnt / (viewers[a] + 5.0), n_items, cfg.neighbours, n_items)
        # transposed (neighbour x seed item), for seeds @ table as table^T @ seeds^T
        self._t = {"cooc": self.cooc.t().coalesce(), "bav": self.bav.t().coalesce()}

    def spread(self, seeds: torch.Tensor, table: str) -> torch.Tensor:
        """(B, V) seeds @ table: each seed item's weight passed on to its neighbours."""
        return torch.sparse.mm(self._t[table], seeds.t().contiguous()).t().contiguous()


def trending_scores(events: dict[str, np.ndarray], n_items: int, cutoff_ts: int, days: float) -> np.ndarray:
    """recent * (recent + 1) / (before + 1) with type-weighted counts of the last ``days`` and the
    ``days`` before them: how much of an item is bought and viewed now, and how fast that grows."""
    item, ts = events["item_idx"].astype(np.int64), events["ts"].astype(np.int64)
    w = TYPE_W[events["event_type_id"].astype(np.int64)]
    span = days * 86400
    recent = (ts >= cutoff_ts - span) & before_cutoff(ts, cutoff_ts)
    before = (ts >= cutoff_ts - 2 * span) & (ts < cutoff_ts - span)
    r = np.bincount(item[recent], weights=w[recent], minlength=n_items)
    b = np.bincount(item[before], weights=w[before], minlength=n_items)
    return r * (r + 1.0) / (b + 1.0)


@dataclass
class Candidates:
    """Flat (user row, item) pairs sorted by row then item, with a bit per generator."""

    users: np.ndarray  # (B,) the users of the batch
    rows: np.ndarray  # (P,) row into users
    items: np.ndarray  # (P,)
    flags: np.ndarray  # (P,) int, bit g set when GENERATORS[g] proposed the pair
    scores: dict[str, np.ndarray]  # generator -> (P,) its score for the pair (0 if none)


class CandidateGenerator:
    """The generators of one window. ``personal(users) -> (B, V)`` is the user's own history score,
    ``affinity_share(users) -> (B, V)`` the share of the user's events in each item's category,
    ``model`` an optional scorer returning (B, V) purchase log-probabilities, ``propensity`` an optional
    scorer returning (B, V) positive expected purchases."""

    def __init__(self, graph: ItemGraph, personal: Any, affinity_share: Any, trending: np.ndarray,
                 popularity: torch.Tensor, cfg: CandidateConfig, model: Any = None, propensity: Any = None) -> None:
        self.graph, self.personal, self.affinity_share, self.cfg, self.model = graph, personal, affinity_share, cfg, model
        self.propensity = propensity
        self.trending = torch.as_tensor(trending, dtype=torch.float32)
        self.popularity = popularity
        given = {"model": model is not None, "propensity": propensity is not None}
        self.generators = tuple(g for g in GENERATORS if given.get(g, True))

    def score_matrices(self, users: np.ndarray) -> dict[str, torch.Tensor]:
        """generator -> (B, V) its scores (items 0 and 1 never proposed)."""
        own = self.personal(users)
        out = {"own": own, "cooc": self.graph.spread(own, "cooc"),
               "bought_after_viewed": self.graph.spread(own, "bav"),
               "trending": self.affinity_share(users) * self.trending[None, :],
               "popularity": self.popularity[None, :].expand(len(users), -1)}
        if self.model is not None:
            out["model"] = self.model(users).float()
        if self.propensity is not None:
            out["propensity"] = self.propensity(users).float()
        return out

    def __call__(self, users: np.ndarray) -> Candidates:
        mats = self.score_matrices(users)
        b, v = len(users), len(self.popularity)
        bits = torch.zeros(b, v, dtype=torch.int32)
        for g, name in enumerate(GENERATORS):
            if name not in mats:
                continue
            m = mats[name]
            n = min(self.cfg.n(name), v - 2)
            if name == "popularity":  # the same list for every user: chosen once
                m = m[:1]
            masked = m.clone() if name in ("model", "popularity", "propensity") else m.masked_fill(m <= 0, float("-inf"))
            masked[:, :FIRST_ID] = float("-inf")
            rows, items = top_n(masked, n)
            if name == "popularity":
                rows, items = torch.arange(b).repeat_interleave(len(items)), items.repeat(b)
            bits[rows, items] |= 1 << g
        r, i = torch.nonzero(bits, as_tuple=True)  # row-major: sorted by row, then item
        scores = {name: m[r, i].numpy().astype(np.float32) for name, m in mats.items()}
        return Candidates(users, r.numpy(), i.numpy(), bits[r, i].numpy(), scores)


def recall(gen: CandidateGenerator, users: np.ndarray, truth: np.ndarray, n_relevant: np.ndarray,
           batch: int = 512) -> dict[str, Any]:
    """Per generator and for the union: mean over users of |proposed and bought| / |bought|, and the
    mean number of candidates. ``truth`` (U, M) as in the protocol (-1 padding, < -1 unknown items:
    never recalled)."""
    hits = {g: 0.0 for g in (*gen.generators, "union")}
    sizes = {g: 0.0 for g in (*gen.generators, "union")}
    for s in range(0, len(users), batch):
        c = gen(users[s:s + batch])
        t = truth[s:s + batch]
        found = (c.items[:, None] == t[c.rows]).any(1)  # (P,) the pair is a purchase of the window
        per_user_n = n_relevant[s:s + batch].astype(np.float64)
        for g, name in enumerate(GENERATORS):
            if name in hits:
                on = (c.flags >> g) & 1 == 1
                hits[name] += (np.bincount(c.rows[on & found], minlength=len(t)) / per_user_n).sum()
                sizes[name] += on.sum()
        hits["union"] += (np.bincount(c.rows[found], minlength=len(t)) / per_user_n).sum()
        sizes["union"] += len(c.rows)
    n = max(len(users), 1)
    cfg = gen.cfg
    return {g: {"recall": hits[g] / n, "mean_candidates": sizes[g] / n,
                "n": (cfg.n(g) if g != "union" else None)} for g in hits} | {"users": int(len(users))}
