"""Ranking metrics as pure numpy functions over per-user arrays.

``ranked`` (U, K) holds each user's top-K item ids, best first; ``truth`` (U, M) the items each user
bought in the window (padding -1, never matching; unknown items get unique ids < -1 so they count as
relevant but can never be hit); ``n_relevant`` (U,) the number of distinct items bought.
"""

from __future__ import annotations

import numpy as np


def hits_matrix(ranked: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(U, K) bool: ranked[u, r] is relevant and is its first occurrence in the ranking."""
    hits = (ranked[:, :, None] == truth[:, None, :]).any(-1) & (ranked >= 0)
    # a repeated item in a ranking earns nothing the second time
    k = ranked.shape[1]
    if k > 1:
        same = ranked[:, :, None] == ranked[:, None, :]  # (U, K, K)
        earlier = np.tril(np.ones((k, k), dtype=bool), -1)[None]
        hits &= ~(same & earlier).any(-1)
    return hits


def ndcg_at_k(ranked: np.ndarray, truth: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k with binary relevance; IDCG over min(n_relevant, k) positions."""
    ranked = ranked[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits_matrix(ranked, truth) * discounts[: ranked.shape[1]]).sum(1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])
    idcg = ideal_cum[np.minimum(n_relevant, k)]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def hit_rate_at_k(ranked: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """Per-user 1.0 if any bought item is in the top k."""
    return hits_matrix(ranked[:, :k], truth).any(1).astype(np.float64)


def reciprocal_rank(best_rank: np.ndarray) -> np.ndarray:
    """Per-user 1 / (rank of the best-ranked bought item), 1-based over the full catalog; 0 if none."""
    best_rank = np.asarray(best_rank, dtype=np.float64)
    return np.divide(1.0, best_rank, out=np.zeros_like(best_rank), where=best_rank > 0)


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over users (resampling users)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or n_boot == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 100):  # bounded memory for many users
        stop = min(start + 100, n_boot)
        idx = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[idx].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
