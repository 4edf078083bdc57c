"""The evaluation protocol, one code path for every ranker (model, blend, baselines).

1. Users scored: every user with at least one purchase in the window (valid or test). Users with
   no event before the window are scored too (cold users: rankers fall back to popularity).
2. Candidates: **all** items with an id (no sampled negatives). Padding (0) and the shared
   'unknown' id (1) are never recommended; purchases of such rare items stay in the truth and
   count as misses for every ranker.
3. Relevance: binary, an item is relevant if the user bought it in the window.
4. Metrics per user, then averaged: NDCG@K = DCG@K / IDCG@K with IDCG over min(|bought|, K)
   positions; HR@K = 1 if any bought item is in the top K; MRR = 1 / rank of the best-ranked
   bought item in the full ranking (ties share the average rank).
5. Uncertainty: a 95% percentile bootstrap over users (seeded), and the number of users scored.
6. Items already seen are not filtered (repeat purchases are real) unless asked.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from purchasepred.features import FIRST_ID
from purchasepred.data.tensors import SplitData
from purchasepred.eval.metrics import bootstrap_ci, hit_rate_at_k, ndcg_at_k, reciprocal_rank

# A scorer takes a batch of user ids and returns (B, V) scores, higher is better.
Scorer = Callable[[np.ndarray], torch.Tensor]


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (values, item ids) of each row, ties broken by the lower item id: one fixed rule, so
    that a user's top 10 is the same whatever other k are asked for (``torch.topk`` orders ties
    arbitrarily, and differently for different k).

    ``torch.topk`` of k + 1 finds the rows where the k-th value is tied across the boundary; only
    those are redone (every larger score, then the lowest ids among the tied); the k results are then
    ordered by (score desc, id asc)."""
    extra = min(k + 1, scores.shape[1])  # one more: a tie across the boundary shows as vals[k] == vals[k-1]
    vals, idx = torch.topk(scores, extra, dim=1)
    tied = (vals[:, k:] == vals[:, k - 1:k]).any(1).nonzero().squeeze(1)
    vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
    if len(tied):
        s, edge = scores[tied], vals[tied, k - 1:k]
        on_edge = s == edge
        need = k - (s > edge).sum(1)
        take = (s > edge) | (on_edge & (on_edge.cumsum(1) <= need[:, None]))
        idx[tied] = take.nonzero()[:, 1].view(len(tied), k)
        vals[tied] = s.gather(1, idx[tied])
    idx, perm = torch.sort(idx, dim=1)
    vals, perm = torch.sort(vals.gather(1, perm), dim=1, descending=True, stable=True)
    return vals, idx.gather(1, perm)


@dataclass
class Ranking:
    users: np.ndarray  # (U,)
    top: np.ndarray  # (U, K) item ids, best first
    top_scores: np.ndarray  # (U, K)
    best_rank: np.ndarray  # (U,) 1-based rank of the best bought item; 0 when none can be ranked
    best_rank_in: dict[str, np.ndarray] = field(default_factory=dict)
    """subset name -> (U,) the same rank over the bought items of that subset only (see ``rank``)."""


def _best_rank(scores: torch.Tensor, t_scores: torch.Tensor) -> torch.Tensor:
    """(B,) 1-based rank (ties share the average rank) of each row's best score among ``t_scores``
    (B, M; -inf where not an item to rank); 0 for rows with none."""
    s_best = t_scores.max(1, keepdim=True).values  # (B, 1)
    greater = (scores > s_best).sum(1).float()
    ties = (scores == s_best).sum(1).float() - 1
    r = 1 + greater + ties / 2
    return torch.where(torch.isfinite(t_scores).any(1), r, torch.zeros_like(r))


def rank(
    scorer: Scorer,
    users: np.ndarray,
    k: int,
    truth: np.ndarray | None = None,
    batch: int = 2048,
    exclude: Callable[[np.ndarray, torch.Tensor], None] | None = None,
    subsets: dict[str, np.ndarray] | None = None,
) -> Ranking:
    """Top-k items per user (and, with ``truth``, the rank of the best bought item).

    ``subsets``: name -> (U, M) bool masks over ``truth``; for each, the rank of the best bought item
    among those kept (``best_rank_in``), from the same scores: a breakdown by purchase (seen or new
    items) costs no second scoring."""
    tops, top_scores, best = [], [], []
    best_in: dict[str, list[np.ndarray]] = {name: [] for name in subsets or {}}
    for start in range(0, len(users), batch):
        u = users[start:start + batch]
        scores = scorer(u).float()  # (B, V)
        scores[:, :FIRST_ID] = float("-inf")
        if exclude is not None:
            exclude(u, scores)
        kk = min(k, scores.shape[1] - FIRST_ID)
        val, idx = top_k(scores, kk)
        tops.append(idx.cpu().numpy())
        top_scores.append(val.cpu().numpy())
        if truth is not None:
            t = torch.as_tensor(truth[start:start + batch], device=scores.device)
            valid = t >= FIRST_ID
            t_scores = scores.gather(1, t.clamp(min=0)).masked_fill(~valid, float("-inf"))
            best.append(_best_rank(scores, t_scores).cpu().numpy())
            for name, mask in (subsets or {}).items():
                keep = torch.as_tensor(mask[start:start + batch], device=scores.device)
                best_in[name].append(_best_rank(scores, t_scores.masked_fill(~keep, float("-inf"))).cpu().numpy())
    empty = np.zeros((0, k), dtype=np.int64)
    return Ranking(
        users=users,
        top=np.concatenate(tops) if tops else empty,
        top_scores=np.concatenate(top_scores) if top_scores else empty.astype(np.float32),
        best_rank=np.concatenate(best) if best else np.zeros(0),
        best_rank_in={name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in best_in.items()},
    )


def metrics(ranking: Ranking, split: SplitData, ks: list[int], n_boot: int = 1000, seed: int = 0,
            user_mask: np.ndarray | None = None) -> dict[str, Any]:
    """Averages (and bootstrap intervals) over the users of ``ranking`` (the split's buyers)."""
    truth, n_rel = split.truth_items, split.n_relevant
    top, best = ranking.top, ranking.best_rank
    if user_mask is not None:
        truth, n_rel, top, best = truth[user_mask], n_rel[user_mask], top[user_mask], best[user_mask]
    out: dict[str, Any] = {"users": int(len(top))}
    for k in ks:
        nd = ndcg_at_k(top, truth, n_rel, k)
        hr = hit_rate_at_k(top, truth, k)
        _mean_and_ci(out, f"ndcg@{k}", nd, n_boot, seed)
        _mean_and_ci(out, f"hr@{k}", hr, n_boot, seed)
    _mean_and_ci(out, "mrr", reciprocal_rank(best), n_boot, seed)
    return out


def _mean_and_ci(out: dict[str, Any], key: str, per_user: np.ndarray, n_boot: int, seed: int) -> None:
    """``out[key]`` = the mean over users, ``out[key + '_ci']`` = its 95% bootstrap interval."""
    out[key] = float(per_user.mean()) if len(per_user) else float("nan")
    out[f"{key}_ci"] = list(bootstrap_ci(per_user, n_boot, seed))


def restricted(split: SplitData, keep: np.ndarray) -> SplitData:
    """The split with truth restricted to ``keep`` (U, M) (users left with nothing are dropped)."""
    n_keep = keep.sum(1)
    users = n_keep > 0
    items = np.where(keep, split.truth_items, -1)[users]
    return dataclasses.replace(split, truth_users=split.truth_users[users], truth_items=items, n_relevant=n_keep[users])


def evaluate_scorer(scorer: Scorer, split: SplitData, ks: list[int], n_boot: int = 1000, seed: int = 0,
                    breakdowns: dict[str, np.ndarray] | None = None,
                    subsets: dict[str, np.ndarray] | None = None) -> dict[str, object]:
    """Rank all items for every buyer in the window and compute the metrics (and breakdowns).

    ``breakdowns``: name -> (U,) user masks; ``subsets``: name -> (U, M) masks over the purchases
    (``truth_items``), each scored as the split restricted to them (:func:`restricted`: users left
    without a purchase are dropped), from the one ranking."""
    ranking = rank(scorer, split.truth_users, max(ks), truth=split.truth_items, subsets=subsets)
    result: dict[str, object] = metrics(ranking, split, ks, n_boot, seed)
    for name, mask in (breakdowns or {}).items():
        result[name] = metrics(ranking, split, ks, n_boot, seed, user_mask=mask) if mask.any() else {"users": 0}
    for name, keep in (subsets or {}).items():
        users = keep.sum(1) > 0
        if not users.any():
            result[name] = {"users": 0}
            continue
        part = Ranking(ranking.users[users], ranking.top[users], ranking.top_scores[users],
                       ranking.best_rank_in[name][users])
        result[name] = metrics(part, restricted(split, keep), ks, n_boot, seed)
    return result
