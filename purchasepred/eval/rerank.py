"""Two-stage ranking: candidates (:mod:`purchasepred.eval.candidates`), then a learned re-ranker.

Features of each (user, candidate) pair, computed as of a cutoff from the events strictly before it:
which generators proposed it and their scores (own history score, co-occurrence, bought-after-
viewed, trending, popularity, the transformer's purchase log-probability), the transformer's view
log-probability, the purchase-funnel ranker's score against the user's best
(:mod:`purchasepred.eval.propensity`), the user's history on the item by event type (half-life-decayed and raw counts of
views, carts, purchases; days since the last touch; touched in the last session), the item's
smoothed conversion rate, popularity and its trend, purchases so far, the item's price bucket
against the user's usual one, the user's share of events in the item's category, the TIFU-KNN
neighbour term and how active the user is.

The re-ranker is fitted on the **valid** window (buyers of that window, their candidates, label =
bought in the window) and applied to the test window and, for export, as of the end of the data.
Four learners are tried: LightGBM's LambdaRank (optional dependency ``lightgbm``) on purchases, the
same on graded labels with carts, the same boosted from the propensity ranker's score, and a small
listwise MLP in torch (ListNet softmax cross-entropy per user). Each is scored out of fold on valid
(users split in two halves by id, each half ranked by the learner fitted on the other); the best one
is refitted on all valid buyers and kept. Items that are not candidates rank below every candidate,
by popularity.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from purchasepred.eval.candidates import (
    GENERATORS, CandidateConfig, CandidateGenerator, Candidates, ItemGraph, before_cutoff, trending_scores,
)
from purchasepred.features import CART, PURCHASE, UNKNOWN, VIEW, per_event_type
from purchasepred.eval.rankers import ModelScorer

FEATURES = (
    *(f"gen_{g}" for g in GENERATORS),
    "own", "cooc", "bought_after_viewed", "trending", "popularity", "model_buy_logp", "model_view_logp",
    "decayed_views", "decayed_carts", "decayed_purchases", "n_views", "n_carts", "n_purchases",
    "days_since_touch", "in_last_session",
    "item_conversion", "item_popularity", "item_trend", "item_purchases",
    "price_vs_user", "abs_price_vs_user", "category_share", "tifu_neighbours", "user_events", "propensity",
)
NEVER_DAYS = 60.0  # days_since_touch of an item never touched
BELOW = -1000.0  # non-candidates score BELOW + popularity in [0, 1]: under every candidate


def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths = hi - lo
    rows = np.repeat(np.arange(len(lo)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, np.repeat(lo, lengths) + offsets


class FeatureBuilder:
    """Candidates and their feature matrix for batches of users, as of one cutoff.

    ``raw``: the events before the cutoff (user_idx, item_idx, event_type_id, ts, session_no,
    price_bucket, category_idx); ``personal(users) -> (B, V)`` the history ranker's own-item score;
    ``model`` / ``view_model``: optional (B, V) purchase and view log-probability scorers;
    ``tifu``: an optional TIFU-KNN ranker whose neighbour term becomes a feature; ``propensity``: an
    optional purchase-funnel ranker, a candidate generator and a feature."""

    CACHE = 8  # batches of features kept (evaluate asks for the same buyers once per learner)

    def __init__(self, raw: dict[str, np.ndarray], n_items: int, cutoff_ts: int, item_category: np.ndarray,
                 popularity: torch.Tensor, conversion: torch.Tensor, personal: Any, half_life_days: float,
                 cfg: CandidateConfig = CandidateConfig(), model: Any = None, view_model: Any = None,
                 tifu: Any = None, propensity: Any = None) -> None:
        keep = before_cutoff(raw["ts"], cutoff_ts)
        ev = {k: np.asarray(v)[keep].astype(np.int64) for k, v in raw.items()}
        order = np.lexsort((ev["ts"], ev["user_idx"]))
        self.ev = {k: v[order] for k, v in ev.items()}
        self.n_items, self.cutoff_ts, self.half_life = n_items, cutoff_ts, half_life_days
        self.model, self.view_model, self.tifu = model, view_model, tifu
        self.item_category = np.asarray(item_category, dtype=np.int64)
        self.n_categories = int(self.item_category.max()) + 1 if len(self.item_category) else 2
        e = self.ev
        age = (cutoff_ts - e["ts"]).clip(min=0) / 86400.0
        self.decay = 0.5 ** (age / half_life_days)
        # item-level signals
        self.popularity = popularity.float()
        self.pop_norm = self.popularity / (self.popularity.max() + 1e-9)
        self.conversion = conversion.numpy().astype(np.float32)
        trend_now = trending_scores(e, n_items, cutoff_ts, cfg.trend_days)
        span = cfg.trend_days * 86400
        w = np.array(per_event_type(view=1.0, cart=3.0, purchase=10.0))[e["event_type_id"]]
        recent, before = e["ts"] >= cutoff_ts - span, (e["ts"] >= cutoff_ts - 2 * span) & (e["ts"] < cutoff_ts - span)
        # (every event left is before the cutoff: 'recent' needs no upper bound)
        r = np.bincount(e["item_idx"][recent], weights=w[recent], minlength=n_items)
        b = np.bincount(e["item_idx"][before], weights=w[before], minlength=n_items)
        self.item_trend = np.log((r + 1.0) / (b + 1.0)).astype(np.float32)
        self.item_purchases = np.log1p(np.bincount(e["item_idx"][e["event_type_id"] == PURCHASE], minlength=n_items)).astype(np.float32)
        n_ev = np.bincount(e["item_idx"], minlength=n_items)
        price_sum = np.bincount(e["item_idx"], weights=e["price_bucket"], minlength=n_items)
        self.item_price = (price_sum / np.maximum(n_ev, 1)).astype(np.float32)
        self.generator = CandidateGenerator(ItemGraph(e, n_items, cutoff_ts, cfg), personal, self.category_share,
                                            trend_now, self.popularity, cfg, model, propensity)
        self._cache: dict[bytes, tuple[Candidates, np.ndarray]] = {}

    def _user_ranges(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = self.ev["user_idx"]
        return _ranges(np.searchsorted(u, users, "left"), np.searchsorted(u, users, "right"))

    def _category_shares(self, users: np.ndarray) -> np.ndarray:
        rows, idx = self._user_ranges(users)
        cat = self.item_category[self.ev["item_idx"][idx]]
        w = np.array(per_event_type(view=1.0, cart=3.0, purchase=3.0))[self.ev["event_type_id"][idx]] * (cat != UNKNOWN)
        share = np.bincount(rows * self.n_categories + cat, weights=w,
                            minlength=len(users) * self.n_categories).reshape(len(users), self.n_categories)
        return share / np.maximum(share.sum(1, keepdims=True), 1e-9)

    def category_share(self, users: np.ndarray) -> torch.Tensor:
        """(B, V) the user's share of (type-weighted) events in each item's category."""
        return torch.as_tensor(self._category_shares(users), dtype=torch.float32)[:, torch.as_tensor(self.item_category)]

    def __call__(self, users: np.ndarray) -> tuple[Candidates, np.ndarray]:
        """The candidates of ``users`` and their (P, len(FEATURES)) float32 features."""
        key = users.tobytes()
        if key not in self._cache:
            if len(self._cache) >= self.CACHE:
                self._cache.clear()
            self._cache[key] = self._compute(users)
        return self._cache[key]

    def _compute(self, users: np.ndarray) -> tuple[Candidates, np.ndarray]:
        c = self.generator(users)
        n, v = len(c.rows), self.n_items
        x = np.zeros((n, len(FEATURES)), dtype=np.float32)
        col = {f: i for i, f in enumerate(FEATURES)}
        for g, name in enumerate(GENERATORS):
            x[:, col[f"gen_{name}"]] = (c.flags >> g) & 1
        for name in ("own", "cooc", "bought_after_viewed"):
            x[:, col[name]] = np.log1p(10.0 * c.scores[name])
        x[:, col["trending"]] = np.log1p(c.scores["trending"])
        x[:, col["popularity"]] = np.log1p(c.scores["popularity"])
        if "model" in c.scores:
            x[:, col["model_buy_logp"]] = c.scores["model"]
        if self.view_model is not None:
            x[:, col["model_view_logp"]] = self.view_model(users).float()[c.rows, c.items].numpy()
        # the user's history on the item, by event type
        rows, idx = self._user_ranges(users)
        e = self.ev
        pair = rows * v + e["item_idx"][idx]
        uniq, inv = np.unique(pair, return_inverse=True)
        et = e["event_type_id"][idx]
        keys = c.rows * v + c.items
        # one spare slot past the end: candidates the user never touched land there (and match nothing)
        n_u = len(uniq) + 1
        where = np.searchsorted(np.append(uniq, np.iinfo(np.int64).max), keys)
        found = np.append(uniq, -1)[where] == keys
        for t, (dname, cname) in {VIEW: ("decayed_views", "n_views"), CART: ("decayed_carts", "n_carts"),
                                  PURCHASE: ("decayed_purchases", "n_purchases")}.items():
            m = et == t
            dec = np.bincount(inv[m], weights=self.decay[idx][m], minlength=n_u)
            cnt = np.bincount(inv[m], minlength=n_u)
            x[:, col[dname]] = np.where(found, dec[where], 0.0)
            x[:, col[cname]] = np.where(found, np.log1p(cnt[where]), 0.0)
        last = np.full(n_u, -1, dtype=np.int64)
        np.maximum.at(last, inv, e["ts"][idx])
        last_session = np.full(len(users), -1, dtype=np.int64)
        np.maximum.at(last_session, rows, e["session_no"][idx])
        in_last = np.zeros(n_u, dtype=np.int64)
        np.maximum.at(in_last, inv, (e["session_no"][idx] == last_session[rows]).astype(np.int64))
        x[:, col["days_since_touch"]] = np.where(found, np.minimum((self.cutoff_ts - last[where]) / 86400.0, NEVER_DAYS),
                                                 NEVER_DAYS)
        x[:, col["in_last_session"]] = np.where(found, in_last[where], 0)
        # the item
        x[:, col["item_conversion"]] = self.conversion[c.items]
        x[:, col["item_popularity"]] = np.log1p(self.popularity.numpy()[c.items])
        x[:, col["item_trend"]] = self.item_trend[c.items]
        x[:, col["item_purchases"]] = self.item_purchases[c.items]
        # the user against the item
        n_user = np.bincount(rows, minlength=len(users)).astype(np.float64)
        user_price = np.bincount(rows, weights=e["price_bucket"][idx], minlength=len(users)) / np.maximum(n_user, 1)
        diff = np.where(n_user[c.rows] > 0, self.item_price[c.items] - user_price[c.rows], 0.0)
        x[:, col["price_vs_user"]], x[:, col["abs_price_vs_user"]] = diff, np.abs(diff)
        x[:, col["category_share"]] = self._category_shares(users)[c.rows, self.item_category[c.items]]
        if self.tifu is not None:
            x[:, col["tifu_neighbours"]] = np.log1p(100.0 * self.tifu.neighbour_term(users)[c.rows, c.items].numpy())
        x[:, col["user_events"]] = np.log1p(n_user[c.rows])
        if "propensity" in c.scores:  # log of the score over the user's best candidate's (<= 0)
            p = c.scores["propensity"].astype(np.float64)
            best = np.zeros(len(users))
            np.maximum.at(best, c.rows, p)
            x[:, col["propensity"]] = np.log(np.maximum(p, 1e-30) / np.maximum(best[c.rows], 1e-30))
        return c, x


class ViewScorer:
    """The transformer's view head: (B, V) log p(next viewed item) at the last input event, read from
    a :class:`ModelScorer` made with ``view=True`` (the batch it just scored costs no second encoding)."""

    def __init__(self, scorer: ModelScorer) -> None:
        self.scorer = scorer

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        return self.scorer.view_scores(users)


def _groups(rows: np.ndarray) -> np.ndarray:
    """Sizes of consecutive runs of equal row ids (rows are sorted)."""
    return np.diff(np.flatnonzero(np.r_[True, rows[1:] != rows[:-1], True])) if len(rows) else np.zeros(0, np.int64)


# ------------------------------------------------------------------------------------------------ learners
class LambdaRankGBM:
    """LightGBM's LambdaRank (optimises NDCG@10 directly)."""

    kind = "lightgbm"
    labels = "purchases"  # the training set it fits (labels_of)
    ROUNDS = 200
    PARAMS = dict(objective="lambdarank", learning_rate=0.05, num_leaves=31, min_data_in_leaf=20,
                  bagging_fraction=0.8, bagging_freq=1, feature_fraction=0.8, lambdarank_truncation_level=20,
                  eval_at=[10], deterministic=True, force_row_wise=True, num_threads=1, verbose=-1, seed=0)

    def __init__(self, booster: Any = None) -> None:
        self.booster = booster

    @staticmethod
    def available() -> bool:
        try:
            import lightgbm  # noqa: F401
        except ImportError:
            return False
        return True

    def fit(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> LambdaRankGBM:
        import lightgbm as lgb

        train = lgb.Dataset(x, label=y.astype(np.int32), group=_groups(rows), feature_name=list(FEATURES),
                            init_score=self._base(x), free_raw_data=True)
        self.booster = lgb.train(self.PARAMS, train, num_boost_round=self.ROUNDS)
        return self

    def _base(self, x: np.ndarray) -> np.ndarray | None:
        """The score boosting starts from (LightGBM's init_score; None: 0)."""
        return None

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.booster is None:  # fitted on no list with a purchase: nothing learned, every pair alike
            return np.zeros(len(x), np.float32)
        # rows are scored independently: every thread count gives the same predictions
        return (self.booster.predict(x, num_threads=torch.get_num_threads()).astype(np.float32) if len(x)
                else np.zeros(0, np.float32))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.booster.model_to_string() if self.booster is not None else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LambdaRankGBM:
        import lightgbm as lgb

        return cls(lgb.Booster(model_str=d["model"]) if d["model"] is not None else None)


class ListwiseMLP:
    """A two-layer MLP over standardised features, trained with ListNet's softmax cross-entropy per user
    (full batch, AdamW, a fixed number of steps; seeded)."""

    kind = "torch"
    labels = "purchases"
    HIDDEN, STEPS, LR = 64, 300, 0.01

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(len(FEATURES), self.HIDDEN), torch.nn.GELU(),
                                       torch.nn.Linear(self.HIDDEN, 1))
        self.mean = np.zeros(len(FEATURES), dtype=np.float32)
        self.std = np.ones(len(FEATURES), dtype=np.float32)

    def fit(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> ListwiseMLP:
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        xt = torch.as_tensor((x - self.mean) / self.std)
        group = torch.as_tensor(np.repeat(np.arange(len(_groups(rows))), _groups(rows)))
        n_groups = int(group.max()) + 1 if len(group) else 0
        yt = torch.as_tensor(y, dtype=torch.float32)
        target = yt / torch.zeros(n_groups).index_add_(0, group, yt).clamp(min=1.0)[group]
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.LR, weight_decay=1e-4)
        for _ in range(self.STEPS):
            s = self.net(xt).squeeze(-1)  # (P,)
            top = torch.zeros(n_groups).scatter_reduce(0, group, s.detach(), "amax", include_self=False)
            lse = torch.log(torch.zeros(n_groups).index_add_(0, group, torch.exp(s - top[group]))) + top
            loss = -(target * (s - lse[group])).sum() / n_groups
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return self

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.net(torch.as_tensor((x - self.mean) / self.std)).squeeze(-1).numpy().astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        buf = io.BytesIO()
        torch.save(self.net.state_dict(), buf)
        return {"kind": self.kind, "state": base64.b64encode(buf.getvalue()).decode("ascii"),
                "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ListwiseMLP:
        m = cls()
        m.net.load_state_dict(torch.load(io.BytesIO(base64.b64decode(d["state"])), weights_only=True))
        m.mean, m.std = np.asarray(d["mean"], dtype=np.float32), np.asarray(d["std"], dtype=np.float32)
        return m


class LambdaRankGBMCarts(LambdaRankGBM):
    """LightGBM's LambdaRank fitted on graded labels (``training_set_with_carts``): purchase 2, cart 1."""

    kind = "lightgbm_carts"
    labels = "carts"


class LambdaRankOnFunnel(LambdaRankGBMCarts):
    """LightGBM's LambdaRank on graded labels, boosted from the propensity ranker's score (its log against
    the user's best candidate, as LightGBM's init_score): the trees learn corrections to the purchase
    funnel instead of rebuilding it from a few hundred lists. Without a propensity ranker the feature is
    0 and this is ``lightgbm_carts``."""

    kind = "lightgbm_funnel"
    BASE = FEATURES.index("propensity")
    ROUNDS = 40

    def _base(self, x: np.ndarray) -> np.ndarray:
        return x[:, self.BASE].astype(np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return super().predict(x) + x[:, self.BASE] if len(x) else np.zeros(0, np.float32)


LEARNERS = {"lightgbm": LambdaRankGBM, "torch": ListwiseMLP, "lightgbm_carts": LambdaRankGBMCarts,
            "lightgbm_funnel": LambdaRankOnFunnel}


def load_learner(d: dict[str, Any]) -> Any:
    return LEARNERS[d["kind"]].from_dict(d)


# ------------------------------------------------------------------------------------------------ the ranker
class TwoStage:
    """Candidates scored by a learner; every other item below them, by popularity."""

    def __init__(self, features: FeatureBuilder, learner: Any) -> None:
        self.features, self.learner = features, learner

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        c, x = self.features(users)
        scores = (BELOW + self.features.pop_norm)[None, :].repeat(len(users), 1)
        pred = np.clip(self.learner.predict(x), BELOW + 10.0, -BELOW)
        scores[torch.as_tensor(c.rows), torch.as_tensor(c.items)] = torch.as_tensor(pred)
        return scores


class Precomputed:
    """A scorer that reads per-pair predictions made beforehand (out-of-fold scores on valid)."""

    def __init__(self, users: np.ndarray, rows: np.ndarray, items: np.ndarray, pred: np.ndarray,
                 pop_norm: torch.Tensor) -> None:
        self.row_of = {int(u): i for i, u in enumerate(users)}
        self.rows, self.items, self.pred, self.pop_norm = rows, items, pred, pop_norm

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        scores = (BELOW + self.pop_norm)[None, :].repeat(len(users), 1)
        where = np.array([self.row_of.get(int(u), -1) for u in users])
        pos = np.full(len(self.row_of), -1)
        pos[where[where >= 0]] = np.flatnonzero(where >= 0)
        keep = pos[self.rows] >= 0
        scores[torch.as_tensor(pos[self.rows][keep]), torch.as_tensor(self.items[keep])] = torch.as_tensor(
            np.clip(self.pred[keep], BELOW + 10.0, -BELOW))
        return scores


@dataclass
class TrainingSet:
    users: np.ndarray
    rows: np.ndarray  # (P,) row into users
    items: np.ndarray
    x: np.ndarray
    y: np.ndarray


def training_set(features: FeatureBuilder, users: np.ndarray, truth: np.ndarray, batch: int = 512) -> TrainingSet:
    """Candidates and features of ``users`` (a window's buyers) with label = bought in the window."""
    parts = []
    for s in range(0, len(users), batch):
        c, x = features(users[s:s + batch])
        y = (c.items[:, None] == truth[s:s + batch][c.rows]).any(1).astype(np.float32)
        parts.append((c.rows + s, c.items, x, y))
    if not parts:
        z = np.zeros(0, np.int64)
        return TrainingSet(users, z, z, np.zeros((0, len(FEATURES)), np.float32), np.zeros(0, np.float32))
    return TrainingSet(users, *(np.concatenate([p[i] for p in parts]) for i in range(4)))


def training_set_with_carts(features: FeatureBuilder, buyers: np.ndarray, bought: np.ndarray, cart_users: np.ndarray,
                            cart_items: np.ndarray, batch: int = 512) -> TrainingSet:
    """Like ``training_set``, with graded labels: 2 = bought in the window, 1 = put in the cart there but
    not bought, 0 = neither; its users are the buyers and the users who only carted (more lists to
    learn from where purchases are rare). ``cart_users, cart_items``: one (user, item) per cart."""
    carters = np.setdiff1d(np.unique(cart_users), buyers)
    users = np.concatenate([buyers, carters])
    order = np.argsort(users, kind="stable")
    users = users[order]
    purchases = np.concatenate([bought, np.full((len(carters), bought.shape[1]), -1, bought.dtype)])[order]
    ts = training_set(features, users, purchases, batch)
    if len(users) == 0:
        return ts
    # a candidate is carted when its (row, item) is among the carts' (row, item)
    at = np.searchsorted(users, cart_users)
    known = (at < len(users)) & (users[np.minimum(at, len(users) - 1)] == cart_users)
    span = np.int64(max(int(ts.items.max(initial=0)), int(cart_items.max(initial=0))) + 1)
    carted = np.isin(ts.rows.astype(np.int64) * span + ts.items, at[known].astype(np.int64) * span + cart_items[known])
    ts.y = np.where(ts.y > 0, 2.0, np.where(carted, 1.0, 0.0)).astype(np.float32)
    return ts


def _with_positives(ts: TrainingSet, keep_user: np.ndarray) -> np.ndarray:
    """Pairs of the kept users that have at least one positive candidate (others teach a ranker nothing)."""
    pos_users = np.zeros(len(ts.users), dtype=bool)
    pos_users[ts.rows[ts.y > 0]] = True
    return keep_user[ts.rows] & pos_users[ts.rows]


def fold_of(users: np.ndarray) -> np.ndarray:
    """0 or 1 per user id, a fixed hash (Knuth's multiplicative) so folds do not follow id order."""
    return ((users.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32) >> np.uint64(16)).astype(np.int64) % 2


def out_of_fold(ts: TrainingSet, kind: str) -> np.ndarray:
    """Predictions for every pair of ``ts``, each half of the users scored by a learner fitted on the other."""
    fold = fold_of(ts.users)
    pred = np.zeros(len(ts.rows), dtype=np.float32)
    for f in (0, 1):
        test = fold[ts.rows] == f
        pred[test] = _fit_on(ts, kind, fold != f).predict(ts.x[test])
    return pred


def fit_learner(ts: TrainingSet, kind: str) -> Any:
    """The learner fitted on every user with a positive candidate; with none (no valid buyer's purchase
    among its candidates: a tiny log) it stays unfitted: the LambdaRank learners score every pair
    alike (the funnel learner: by the propensity score), the MLP by its seeded initial weights."""
    return _fit_on(ts, kind, np.ones(len(ts.users), dtype=bool))


def _fit_on(ts: TrainingSet, kind: str, keep_user: np.ndarray) -> Any:
    """A ``kind`` learner fitted on the kept users that have a positive candidate; unfitted when none has
    (out of fold too: a fold is scored as the learner that would be kept)."""
    train = _with_positives(ts, keep_user)
    if not train.any():
        return LEARNERS[kind]()
    return LEARNERS[kind]().fit(ts.x[train], ts.y[train], ts.rows[train])


def available_learners() -> list[str]:
    return [k for k, cls in LEARNERS.items() if not issubclass(cls, LambdaRankGBM) or LambdaRankGBM.available()]


def labels_of(kind: str) -> str:
    """Which training set a learner fits: "purchases" (label = bought) or "carts" (graded, with carts)."""
    return LEARNERS[kind].labels
