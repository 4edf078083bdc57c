"""Purchase probabilities: Platt scaling of a ranker's score, fitted on the valid window.

The purchase head is trained with purchase_weight x its loss and only on positions followed by a
purchase, so its output is "which item, given a purchase", inflated relative to P(buy). What a user
needs is P(this user buys this item in the next window). We fit ``p = sigmoid(a * score + b)`` on
the valid window's top-K (user, item) pairs of every user with inputs (label: bought in the window)
and report ECE (10 equal-width bins) and Brier score on the evaluated window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from purchasepred.eval.protocol import rank

MAX_USERS = 50_000


@dataclass
class Calibration:
    a: float = 0.0
    b: float = -5.0
    mean: float = 0.0
    scale: float = 1.0

    def __call__(self, score: np.ndarray) -> np.ndarray:
        z = self.a * (np.asarray(score, dtype=np.float64) - self.mean) / self.scale + self.b
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def calibration_pairs(window: Any, ranker: str, k: int, seed: int = 0,
                      max_users: int = MAX_USERS) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of the top-k items of (a seeded sample of up to ``max_users``) users with
    inputs before the window."""
    split = window.split
    users = split.user_idx
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    ranking = rank(window.rankers[ranker], users, k)
    truth_row = {int(u): i for i, u in enumerate(split.truth_users)}
    labels = np.zeros(ranking.top.shape, dtype=np.float64)
    for i, u in enumerate(users):
        r = truth_row.get(int(u))
        if r is not None:
            labels[i] = np.isin(ranking.top[i], split.truth_items[r])
    scores = ranking.top_scores.astype(np.float64)
    ok = np.isfinite(scores)
    return labels[ok], scores[ok]


def fit_platt(y: np.ndarray, s: np.ndarray, iters: int = 50) -> Calibration:
    """Logistic regression of y on the standardised score by Newton's method (2 parameters)."""
    if len(y) == 0:
        return Calibration()
    mean, scale = float(s.mean()), float(s.std() or 1.0)
    x = (s - mean) / scale
    a, b = 1.0, float(np.log((y.mean() + 1e-6) / (1 - y.mean() + 1e-6)))
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * x + b, -50, 50)))
        g = np.array([np.sum((p - y) * x), np.sum(p - y)])
        w = p * (1 - p) + 1e-9
        h = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return Calibration(a=float(a), b=float(b), mean=mean, scale=scale)


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, float]:
    """Expected calibration error (equal-width bins) and Brier score."""
    if len(y) == 0:
        return {"ece": float("nan"), "brier": float("nan")}
    p = np.clip(p, 0.0, 1.0)
    which = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for bin_ in range(bins):
        m = which == bin_
        if m.any():
            ece += m.mean() * abs(p[m].mean() - y[m].mean())
    return {"ece": float(ece), "brier": float(np.mean((p - y) ** 2))}


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """The reliability diagram: pairs sorted by p in ``bins`` bins of equal count (probabilities of a
    rare purchase crowd into the first equal-width bin of :func:`reliability`), each with its pairs,
    p range, mean predicted probability and observed purchase rate."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    order = np.argsort(p, kind="stable")
    return [{"pairs": int(len(i)), "p_min": float(p[i].min()), "p_max": float(p[i].max()),
             "mean_p": float(p[i].mean()), "rate": float(np.mean(y[i]))}
            for i in np.array_split(order, min(bins, len(p))) if len(i)]
