"""`evaluate`: the transformer, the blend and the baselines on one split, one code path.

Everything that is fitted (the history baseline's weights and half-life, the blend weight, the
choice of the default ranker, the probability calibration) is fitted on the **valid** window and
only then applied to the test window. See :mod:`purchasepred.eval.protocol` for the protocol.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from purchasepred.config import Config
from purchasepred.features import FIRST_ID
from purchasepred.data.tensors import PreparedData, SplitData
from purchasepred.errors import DatasetError
from purchasepred.eval.calibration import Calibration, calibration_pairs, fit_platt, reliability, reliability_bins
from purchasepred.eval.protocol import evaluate_scorer
from purchasepred.eval.rankers import (
    Blend, BlendWeights, CachedScorer, CategoryAffinity, History, HistoryParams, ModelScorer, Popularity, UserEvents,
    conversion_prior, fit_blend, fit_history,
)
from purchasepred.eval.candidates import recall
from purchasepred.eval.rerank import (
    FeatureBuilder, ListwiseMLP, Precomputed, TwoStage, ViewScorer, available_learners, fit_learner, load_learner,
    labels_of, out_of_fold, training_set, training_set_with_carts,
)
from purchasepred.eval.propensity import Propensity, PropensityParams, fit_propensity
from purchasepred.eval.tifu import TifuKNN, TifuParams, build_tifu, fit_tifu

RANKERS = ("popularity", "history", "model", "blend", "tifu_knn", "propensity", "two_stage")
BASELINES = ("popularity", "history", "tifu_knn")


@dataclass
class ValidFit:
    """What is fitted on the valid window and reused by evaluate and export."""

    history: HistoryParams
    blend: BlendWeights
    default: str
    valid_ndcg10: dict[str, float]
    calibration: Calibration
    dataset_hash: str
    checkpoint_sha256: str | None = None
    popularity_calibration: Calibration | None = None
    default_reason: str = "best NDCG@10 on the valid window"
    settings: dict[str, Any] = field(default_factory=dict)  # fit_settings(cfg) of the fit
    tifu: TifuParams | None = None
    two_stage: dict[str, Any] | None = None
    """The re-ranker: chosen learner, every learner fitted on valid, their out-of-fold valid NDCG@10."""
    propensity: PropensityParams | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ValidFit:
        return cls(
            history=HistoryParams(**d["history"]), blend=BlendWeights(**d["blend"]), default=d["default"],
            valid_ndcg10=d["valid_ndcg10"], calibration=Calibration(**d["calibration"]),
            dataset_hash=d["dataset_hash"], checkpoint_sha256=d.get("checkpoint_sha256"),
            popularity_calibration=Calibration(**d["popularity_calibration"]) if d.get("popularity_calibration") else None,
            default_reason=d.get("default_reason", cls.default_reason), settings=d.get("settings", {}),
            tifu=TifuParams(**d["tifu"]) if d.get("tifu") else None, two_stage=d.get("two_stage"),
            propensity=PropensityParams(**d["propensity"]) if d.get("propensity") else None,
        )


FIT_VERSION = 3
"""Bumped when the rankers fitted on valid change (a ranker added, the re-ranker's features): a cached
fit of an older version is stale."""


def fit_settings(cfg: Config) -> dict[str, Any]:
    """The settings a valid fit depends on: a cached fit made with others is stale."""
    return {"fit_version": FIT_VERSION,
            "popularity_days": cfg.eval.popularity_days, "min_valid_buyers": cfg.eval.min_valid_buyers,
            "seed": cfg.eval.seed, "export_k": cfg.export.k, "calibration_users": cfg.eval.calibration_users}


@dataclass
class Window:
    """Rankers built for one window, from the events before it."""

    split: SplitData
    events: UserEvents
    popularity: Popularity
    cutoff_ts: int
    prior: torch.Tensor
    affinity: CategoryAffinity
    rankers: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # the events before the cutoff, with sessions
    features: FeatureBuilder | None = None


def build_window(data: PreparedData, name: str, cfg: Config, model: torch.nn.Module, device: torch.device,
                 fitted: ValidFit | None = None) -> Window:
    split = data.split(name)
    raw = data.events_before_detail(split.window_start)
    ts = split.start_ts
    events = UserEvents(raw)
    popularity = Popularity(raw, data.vocab.n_items, ts, cfg.eval.popularity_days)
    w = Window(split, events, popularity, ts, conversion_prior(raw, data.vocab.n_items),
               CategoryAffinity(events, data.items["category_idx"]), raw=raw)
    w.rankers["popularity"] = popularity
    w.rankers["model"] = ModelScorer(model, split, popularity, device)
    if fitted is not None:
        w.rankers["history"] = History(events, popularity, ts, fitted.history)
        w.rankers["blend"] = Blend(w.rankers["model"], w.rankers["history"], fitted.blend, w.prior, w.affinity)
        w.rankers["tifu_knn"] = Lazy(lambda: build_tifu(raw, data.vocab.n_items, ts, popularity.normalized,
                                                        fitted.tifu or TifuParams()))
        w.rankers["propensity"] = Lazy(lambda: Propensity(raw, data.vocab.n_items, data.items["category_idx"], ts,
                                                          fitted.propensity or PropensityParams()))
        w.rankers["two_stage"] = Lazy(lambda: TwoStage(features(w, data, model, device, fitted.history),
                                                        chosen_learner(fitted)))
    return w


class Lazy:
    """A ranker built on first use (export scores with one ranker; the others need not be built)."""

    def __init__(self, build: Any) -> None:
        self._build, self._ranker = build, None

    def get(self) -> Any:
        if self._ranker is None:
            self._ranker = self._build()
        return self._ranker

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        return self.get()(users)


def features(w: Window, data: PreparedData, model: torch.nn.Module, device: torch.device,
             history: HistoryParams) -> FeatureBuilder:
    """The re-ranker's candidates and features as of the window's cutoff (built once per window)."""
    if w.features is None:
        personal = History(w.events, w.popularity, w.cutoff_ts, history).personal
        tifu = w.rankers.get("tifu_knn")
        tifu = tifu.get() if isinstance(tifu, Lazy) else tifu
        heads = ModelScorer(model, w.split, w.popularity, device, view=True)  # both heads from one encoding
        w.features = FeatureBuilder(w.raw, data.vocab.n_items, w.cutoff_ts, data.items["category_idx"], w.popularity.scores,
                                    w.prior, personal, history.half_life_days, model=heads,
                                    view_model=ViewScorer(heads), tifu=tifu, propensity=w.rankers.get("propensity"))
    return w.features


def chosen_learner(fitted: ValidFit) -> Any:
    """The learner chosen on valid; a ValidFit made by hand without one gets a seeded, untrained MLP."""
    if not fitted.two_stage:
        return ListwiseMLP()
    return load_learner(fitted.two_stage["learners"][fitted.two_stage["chosen"]])


def _ndcg10(scorer: Any, split: SplitData) -> float:
    return float(evaluate_scorer(scorer, split, [10], n_boot=0)["ndcg@10"])


def fit_on_valid(data: PreparedData, cfg: Config, model: torch.nn.Module, device: torch.device,
                 checkpoint_sha256: str | None = None) -> tuple[ValidFit, Window]:
    """Fit history weights, blend beta, default ranker and calibration on the valid window."""
    valid = build_window(data, "valid", cfg, model, device)
    if len(valid.split.truth_users) == 0:
        raise DatasetError(
            f"the valid window of {data.path} has no purchases, so nothing can be fitted or compared on it; "
            "prepare again with --eval-days auto (it chooses windows that hold buyers, or says how much more data it takes)"
        )
    window_days = float(data.manifest["settings"]["eval_days"])
    params, hist_score = fit_history(valid.events, valid.popularity, valid.split, valid.cutoff_ts, window_days,
                                     lambda s: _ndcg10(s, valid.split))
    history = History(valid.events, valid.popularity, valid.cutoff_ts, params)
    valid.rankers["history"] = history
    scores = {"popularity": _ndcg10(valid.popularity, valid.split), "history": hist_score}
    scores["model"], weights, scores["blend"] = _fit_blend_on(valid, history)
    valid.rankers["blend"] = Blend(valid.rankers["model"], history, weights, valid.prior, valid.affinity)
    tifu_params, scores["tifu_knn"], vectors = fit_tifu(valid.raw, data.vocab.n_items, valid.cutoff_ts,
                                                        valid.popularity.normalized, lambda s: _ndcg10(s, valid.split))
    valid.rankers["tifu_knn"] = TifuKNN(vectors, valid.popularity.normalized, tifu_params.k, tifu_params.alpha)
    category = data.items["category_idx"]
    valid.rankers["propensity"], scores["propensity"] = fit_propensity(
        valid.raw, data.vocab.n_items, category, valid.cutoff_ts, lambda s: _ndcg10(s, valid.split))
    propensity = valid.rankers["propensity"].params
    two_stage, scores["two_stage"] = fit_two_stage(valid, data, model, device, params)
    n_buyers = len(valid.split.truth_users)
    if n_buyers < cfg.eval.min_valid_buyers:
        default = max(BASELINES, key=lambda r: (scores[r], -RANKERS.index(r)))
        reason = (f"the stronger baseline on valid: only {n_buyers} valid buyers, fewer than eval.min_valid_buyers "
                  f"= {cfg.eval.min_valid_buyers} needed to choose a learned ranker")
    else:
        default = max(RANKERS, key=lambda r: (scores[r], -RANKERS.index(r)))
        reason = f"best NDCG@10 on the valid window's {n_buyers} buyers"
    labels, scores_ = calibration_pairs(valid, default, cfg.export.k, cfg.eval.seed, cfg.eval.calibration_users)
    calibration = fit_platt(labels, scores_)
    fitted = ValidFit(history=params, blend=weights, default=default, default_reason=reason, valid_ndcg10=scores,
                    calibration=calibration, dataset_hash=data.manifest["content_hash"],
                    checkpoint_sha256=checkpoint_sha256, settings=fit_settings(cfg),
                    popularity_calibration=fit_platt(*calibration_pairs(valid, "popularity", cfg.export.k, cfg.eval.seed,
                                                                          cfg.eval.calibration_users)),
                    tifu=tifu_params, two_stage=two_stage, propensity=propensity)
    return fitted, valid


def _fit_blend_on(valid: Window, history: History) -> tuple[float, BlendWeights, float]:
    """The model's NDCG@10 on valid, and the blend's weights and NDCG@10. The model's scores are computed
    once for the ~35 points of the blend's grid, and freed when this returns."""
    model_scores = CachedScorer(valid.rankers["model"])
    model_ndcg = _ndcg10(model_scores, valid.split)
    weights, blend_ndcg = fit_blend(
        lambda w: _ndcg10(Blend(model_scores, history, w, valid.prior, valid.affinity), valid.split))
    return model_ndcg, weights, blend_ndcg


def fit_two_stage(valid: Window, data: PreparedData, model: torch.nn.Module, device: torch.device,
                  history: HistoryParams) -> tuple[dict[str, Any], float]:
    """Fit every available learner on the valid buyers' candidates; choose by out-of-fold NDCG@10."""
    fb = features(valid, data, model, device, history)
    split = valid.split
    sets = {"purchases": training_set(fb, split.truth_users, split.truth_items)}
    kinds = available_learners()
    if any(labels_of(k) == "carts" for k in kinds):
        sets["carts"] = training_set_with_carts(fb, split.truth_users, split.truth_items, *data.carts_in(split))
    oof = {}
    for kind in kinds:
        ts = sets[labels_of(kind)]
        pred = out_of_fold(ts, kind)
        # scored on the valid buyers' purchases only, whatever the learner was fitted on
        oof[kind] = _ndcg10(Precomputed(ts.users, ts.rows, ts.items, pred, fb.pop_norm), split)
    chosen = max(oof, key=lambda k: (oof[k], k == "lightgbm"))
    learners = {kind: fit_learner(sets[labels_of(kind)], kind) for kind in oof}
    valid.rankers["two_stage"] = TwoStage(fb, learners[chosen])
    fitted = {"chosen": chosen, "valid_oof_ndcg@10": oof,
              "valid_recall": recall(fb.generator, split.truth_users, split.truth_items, split.n_relevant),
              "learners": {kind: learner.to_dict() for kind, learner in learners.items()}}
    return fitted, oof[chosen]


def _seen_mask(window: Window) -> np.ndarray:
    """(Ut, M) True where the bought item appears among the user's events before the window."""
    split = window.split
    rows, idx = window.events.ranges(split.truth_users)
    seen = np.zeros(split.truth_items.shape, dtype=bool)
    user_items = window.events.item[idx]
    for j in range(split.truth_items.shape[1]):
        t = split.truth_items[rows, j]
        hit = np.zeros(len(split.truth_users), dtype=bool)
        np.logical_or.at(hit, rows, user_items == t)
        seen[:, j] = hit
    return seen & (split.truth_items >= FIRST_ID)


def evaluate(data: PreparedData, cfg: Config, model: torch.nn.Module, device: torch.device, split: str,
             ks: list[int], fitted: ValidFit, log: Any = None) -> dict[str, Any]:
    """All rankers on ``split`` (valid or test) with breakdowns. Returns the metrics.json body."""
    w = build_window(data, split, cfg, model, device, fitted)
    if len(w.split.truth_users) == 0:
        raise DatasetError(
            f"the {split} window of {data.path} ({w.split.window_start} .. {w.split.window_end}) has no purchases, so "
            f"there is nothing to evaluate; {'evaluate --split valid, or ' if split == 'test' else ''}"
            "prepare again with --eval-days auto (it chooses windows that hold buyers)"
        )
    has_history = w.split.rows_of(w.split.truth_users) >= 0
    seen = _seen_mask(w)
    unknown = (w.split.truth_items < -1)
    subsets = {"seen_items": seen, "new_items": ~seen & ((w.split.truth_items >= FIRST_ID) | unknown)}
    results: dict[str, Any] = {}
    for name in RANKERS:
        if log:
            log(f"scoring {name}")
        results[name] = evaluate_scorer(w.rankers[name], w.split, ks, cfg.eval.bootstrap, cfg.eval.seed,
                                        breakdowns={"with_history": has_history, "without_history": ~has_history},
                                        subsets=subsets)
    two_stage: dict[str, Any] = {}
    candidates: dict[str, Any] = {}
    if fitted.two_stage:
        fb = features(w, data, model, device, fitted.history)
        two_stage = {
            "chosen": fitted.two_stage["chosen"],
            "valid_oof_ndcg@10": fitted.two_stage["valid_oof_ndcg@10"],
            f"{split}_ndcg@10": {
                kind: evaluate_scorer(TwoStage(fb, load_learner(d)), w.split, [10], 0)["ndcg@10"]
                for kind, d in fitted.two_stage["learners"].items()},
        }
        candidates = {"valid": fitted.two_stage["valid_recall"],
                      split: recall(fb.generator, w.split.truth_users, w.split.truth_items, w.split.n_relevant)}
    calib = fitted.calibration
    y, score = calibration_pairs(w, fitted.default, cfg.export.k, cfg.eval.seed, cfg.eval.calibration_users)
    p = calib(score)
    # uncalibrated: the score read as a probability (the model's log-probability, exponentiated)
    # (a log-probability is exponentiated; non-negative scores are scaled by their maximum; other scores,
    # such as a re-ranker's, go through a sigmoid)
    if fitted.default in ("model", "blend"):
        p_raw = np.clip(np.exp(np.minimum(score, 0.0)), 0.0, 1.0)
    elif len(score) and score.min() < 0:
        p_raw = 1.0 / (1.0 + np.exp(-np.clip(score, -50.0, 50.0)))
    else:
        p_raw = np.clip(score / (score.max() or 1.0), 0.0, 1.0)
    return {
        "split": split,
        "k": ks,
        "model": results["model"],
        "blend": results["blend"],
        "two_stage": results["two_stage"],
        "propensity": results["propensity"],
        "baselines": {"popularity": results["popularity"], "history": results["history"],
                      "tifu_knn": results["tifu_knn"]},
        "default": fitted.default,
        "default_reason": fitted.default_reason,
        "default_metrics": results[fitted.default],
        "warnings": _warnings(w.split, split, cfg),
        "beats_history": bool(results["model"][f"ndcg@{ks[0]}"] > results["history"][f"ndcg@{ks[0]}"]),
        "default_beats_history": bool(results[fitted.default][f"ndcg@{ks[0]}"] >= results["history"][f"ndcg@{ks[0]}"]),
        "fitted_on_valid": {
            "history_params": asdict(fitted.history),
            "blend_weights": asdict(fitted.blend),
            "tifu_params": asdict(fitted.tifu) if fitted.tifu else None,
            "propensity_params": asdict(fitted.propensity) if fitted.propensity else None,
            "valid_ndcg@10": fitted.valid_ndcg10,
        },
        "calibration": {
            "method": "platt scaling of the default ranker's score on the valid window's top-K (all users)",
            "a": calib.a, "b": calib.b,
            "ece": reliability(y, p)["ece"], "brier": reliability(y, p)["brier"],
            "ece_uncalibrated": reliability(y, p_raw)["ece"], "brier_uncalibrated": reliability(y, p_raw)["brier"],
            "pairs": int(len(y)), "base_rate": float(np.mean(y)) if len(y) else math.nan,
            "bins": {"calibrated": reliability_bins(y, p), "raw": reliability_bins(y, p_raw)},
        },
        "window": {"start": str(w.split.window_start), "end": str(w.split.window_end)},
        "candidates": candidates,
        "two_stage_learners": two_stage,
    }


def _warnings(split: SplitData, name: str, cfg: Config) -> list[str]:
    n = len(split.truth_users)
    if n >= cfg.eval.min_buyers:
        return []
    return [f"only {n} buyer(s) in the {name} window (fewer than eval.min_buyers = {cfg.eval.min_buyers}): its "
            "metrics and intervals rest on too few users to compare rankers; use a longer window or more data"]
