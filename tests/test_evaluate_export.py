"""`evaluate` and `export` through their library entry points (purchasepred.pipeline) on a tiny run.

One 30k-row synthetic log is prepared and a 16-wide, one-layer model trained for 2 epochs once per
module; every test reads that run. Exports go to their own files so the tests stay independent.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
from collections import defaultdict
from datetime import timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from purchasepred.config import Config, PrepareConfig, load_config
from purchasepred.data.prepare import prepare
from purchasepred.data.synth import generate
from purchasepred.data.tensors import PreparedData
from purchasepred.errors import CheckpointError, PurchasePredError
from purchasepred.eval.protocol import evaluate_scorer
from purchasepred.export.recommend import COLUMNS
from purchasepred.pipeline import evaluate_run, export_run
from purchasepred.train.trainer import Trainer

HEADER = "user_id,item_id,rank,score,source,purchase_probability"
SOURCES = {"model", "blend", "history", "popularity", "tifu_knn", "propensity", "two_stage"}
RUN = "E"


class Trained:
    def __init__(self, root: Path, raw: Path, data: PreparedData, cfg: Config) -> None:
        self.root, self.raw, self.data, self.cfg = root, raw, data, cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("evaluate_export")
    raw = root / "events.csv"
    generate(raw, rows=30_000, days=30, seed=0)
    prepare([str(raw)], root / "prepared", PrepareConfig(eval_days=3, max_len=20))
    data = PreparedData(root / "prepared")
    cfg = load_config(sets=[
        "model.d_model=16", "model.n_layers=1", "train.batch_size=64", "train.epochs=2", "train.device=cpu",
        "eval.bootstrap=100", f"train.checkpoints_dir={root / 'checkpoints'}", f"train.output_dir={root / 'output'}",
        f"train.data={root / 'prepared'}",
    ])
    Trainer(cfg, data, RUN).fit()
    return Trained(root, raw, data, cfg)


@pytest.fixture(scope="module")
def metrics(trained: Trained) -> tuple[dict, Path]:
    done = evaluate_run(trained.cfg, RUN, "test", [5, 10])
    return done.result, done.path


@pytest.fixture(scope="module")
def raw_events(trained: Trained) -> dict[str, set[str]]:
    """Raw user_id -> the raw product_ids the user had any event on."""
    seen: dict[str, set[str]] = defaultdict(set)
    with open(trained.raw, newline="") as fh:
        for row in csv.DictReader(fh):
            seen[row["user_id"]].add(row["product_id"])
    return seen


def read_csv(path: Path) -> tuple[str, list[dict[str, str]]]:
    text = path.read_text()
    header = text.splitlines()[0]
    return header, list(csv.DictReader(text.splitlines()))


def check_export(path: Path, data: PreparedData, k: int) -> list[dict[str, str]]:
    """The export contract: header, every user, exactly k distinct items ranked 1..k, sources, probabilities."""
    header, rows = read_csv(path)
    assert header == HEADER and tuple(header.split(",")) == COLUMNS
    by_user: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_user[row["user_id"]].append(row)
    assert set(by_user) == {str(u) for u in data.users["user_id"]}
    for user, recs in by_user.items():
        assert [int(r["rank"]) for r in recs] == list(range(1, k + 1)), user
        assert len({r["item_id"] for r in recs}) == k, user
        assert len({r["source"] for r in recs}) == 1 and recs[0]["source"] in SOURCES, user
        scores = [float(r["score"]) for r in recs]
        assert all(math.isfinite(s) for s in scores) and scores == sorted(scores, reverse=True), user
        assert all(0.0 <= float(r["purchase_probability"]) <= 1.0 for r in recs), user
    return rows


# ------------------------------------------------------------------------------ evaluate
def test_metrics_json_has_models_baselines_blend_and_calibration(trained: Trained, metrics: tuple[dict, Path]) -> None:
    result, path = metrics
    assert path == trained.root / "output" / RUN / "metrics_k5-10.json"  # not the default cutoffs: its own file
    saved = json.loads(path.read_text())
    assert {"model", "baselines", "blend", "default", "calibration"} <= saved.keys()
    assert set(saved["baselines"]) == {"popularity", "history", "tifu_knn"}
    n_buyers = len(trained.data.split("test").truth_users)
    for body in (saved["model"], saved["blend"], saved["two_stage"], saved["propensity"], *saved["baselines"].values()):
        assert {"ndcg@10", "hr@10", "mrr", "users", "ndcg@10_ci", "ndcg@5", "hr@5"} <= body.keys()
        assert body["users"] == n_buyers > 0
        assert 0 <= body["ndcg@10"] <= 1 and 0 <= body["hr@10"] <= 1 and 0 <= body["mrr"] <= 1
        assert body["ndcg@5"] <= body["hr@5"] + 1e-12 and body["hr@5"] <= body["hr@10"]
        lo, hi = body["ndcg@10_ci"]
        assert lo <= body["ndcg@10"] <= hi
        for segment in ("with_history", "without_history", "seen_items", "new_items"):
            assert "users" in body[segment], segment
        assert body["with_history"]["users"] + body["without_history"]["users"] == n_buyers
    # the two-stage ranker's candidate recall on both windows, per generator and for the union
    for window in ("valid", "test"):
        recall = saved["candidates"][window]
        assert 0 <= recall["own"]["recall"] <= recall["union"]["recall"] <= 1
        assert recall["union"]["mean_candidates"] >= recall["popularity"]["mean_candidates"] > 0
    learners = saved["two_stage_learners"]
    assert set(learners["test_ndcg@10"]) == set(learners["valid_oof_ndcg@10"]) >= {"torch", "lightgbm"}
    assert saved["default"] in SOURCES
    calibration = saved["calibration"]
    for key in ("ece", "brier"):
        assert 0 <= calibration[key] <= 1, key
    assert saved["split"] == "test" and saved["k"] == [5, 10]
    assert saved["dataset"]["content_hash"] == trained.data.manifest["content_hash"]
    assert (trained.root / "output" / RUN / "ranker.json").is_file()  # what was fitted on valid


def test_truth_is_distinct_items_per_buyer(trained: Trained) -> None:
    for name in ("valid", "test"):
        split = trained.data.split(name)
        for items, n in zip(split.truth_items, split.n_relevant, strict=True):
            real = items[items != -1]
            assert len(real) == len(set(real.tolist())) == n


def test_rankers_see_only_events_before_the_window(trained: Trained) -> None:
    for name in ("valid", "test"):
        split = trained.data.split(name)
        start = int(split.window_start.replace(tzinfo=timezone.utc).timestamp())  # naive UTC
        real = split.features["item_idx"] > 0
        assert split.features["ts"][real].max() < start, name
        assert trained.data.events_before(split.window_start)["ts"].max() < start, name


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON (RFC 8259)")

    return json.loads(text, parse_constant=refuse)


def test_metrics_json_is_strict_json(metrics: tuple[dict, Path]) -> None:
    _strict_json(metrics[1].read_text())


def test_corrupt_metadata_is_a_clear_error(trained: Trained) -> None:
    run_dir = trained.root / "checkpoints" / "E-corrupt"
    shutil.copytree(trained.root / "checkpoints" / RUN, run_dir)
    (run_dir / "metadata.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="metadata.json"):
        evaluate_run(trained.cfg, "E-corrupt", "test")


def test_evaluate_unknown_run_is_a_clear_error(trained: Trained) -> None:
    with pytest.raises(CheckpointError, match="purchasepred train --run-name nope"):
        evaluate_run(trained.cfg, "nope")


def test_history_beats_popularity_and_random_on_synth(trained: Trained, metrics: tuple[dict, Path]) -> None:
    result, _ = metrics
    history = result["baselines"]["history"]["ndcg@10"]
    popularity = result["baselines"]["popularity"]["ndcg@10"]
    split = trained.data.split("test")
    gen = torch.Generator().manual_seed(0)
    n_items = trained.data.vocab.n_items

    def random_scorer(users: np.ndarray) -> torch.Tensor:
        return torch.rand(len(users), n_items, generator=gen)

    random = evaluate_scorer(random_scorer, split, [10], n_boot=0)["ndcg@10"]
    assert history > popularity > random, (history, popularity, random)
    assert history > 2 * random


def elsewhere(cfg: Config, folder: Path) -> Config:
    """The run's config writing metrics.json (and its valid-window fit) under another output root."""
    other = copy.deepcopy(cfg)
    other.train.output_dir = str(folder)
    return other


def test_evaluate_valid_split_and_default_k(trained: Trained, tmp_path: Path) -> None:
    done = evaluate_run(elsewhere(trained.cfg, tmp_path), RUN, "valid")
    result, path = done.result, done.path
    assert path == tmp_path / RUN / "metrics_valid.json"  # metrics.json stays the test window
    assert result["split"] == "valid" and result["k"] == [10]
    assert result["model"]["users"] == len(trained.data.split("valid").truth_users)
    assert json.loads(path.read_text())["split"] == "valid"


# ------------------------------------------------------------------------------ export
@pytest.fixture(scope="module")
def exported(trained: Trained, metrics: tuple[dict, Path]) -> Path:
    summary = export_run(trained.cfg, RUN)
    assert summary.path == trained.root / "output" / RUN / "recommendations.csv"
    return summary.path


def test_export_contract(trained: Trained, exported: Path, metrics: tuple[dict, Path]) -> None:
    rows = check_export(exported, trained.data, k=10)
    assert len(rows) == 10 * len(trained.data.users["user_id"])
    sources = {r["source"] for r in rows}
    assert sources <= {metrics[0]["default"], "popularity"}
    assert not list(exported.parent.glob(".*tmp*")), "temporary export file left behind"


def test_export_uses_raw_ids(trained: Trained, exported: Path, raw_events: dict[str, set[str]]) -> None:
    _, rows = read_csv(exported)
    raw_items = set().union(*raw_events.values())
    assert {r["user_id"] for r in rows} <= set(raw_events)
    assert {r["item_id"] for r in rows} <= raw_items
    # internal indices are small integers; the synth's raw ids are not
    n_items = trained.data.vocab.n_items
    assert all(int(r["item_id"]) > n_items for r in rows)


def test_export_refuses_an_existing_file_without_force(trained: Trained, exported: Path, tmp_path: Path) -> None:
    out = tmp_path / "recs.csv"
    out.write_text("keep me\n")
    with pytest.raises(PurchasePredError, match="already exists.*--force"):
        export_run(trained.cfg, RUN, out=out)
    assert out.read_text() == "keep me\n"
    summary = export_run(trained.cfg, RUN, out=out, k=5, force=True)
    assert summary.rows == 5 * summary.users
    check_export(out, trained.data, k=5)


def test_export_filter_seen_leaves_out_items_the_user_had_events_on(
    trained: Trained, tmp_path: Path, raw_events: dict[str, set[str]],
) -> None:
    out = tmp_path / "unseen.csv"
    export_run(trained.cfg, RUN, out=out, filter_seen=True)
    rows = check_export(out, trained.data, k=10)
    offending = [(r["user_id"], r["item_id"]) for r in rows if r["item_id"] in raw_events[r["user_id"]]]
    assert offending == []


def test_export_k_larger_than_the_catalog_is_refused(trained: Trained, tmp_path: Path) -> None:
    with pytest.raises(PurchasePredError, match="larger than the catalog"):
        export_run(trained.cfg, RUN, out=tmp_path / "big.csv", k=trained.data.vocab.n_items)
    assert not (tmp_path / "big.csv").exists()


def test_export_into_a_path_under_a_file_fails_clearly(trained: Trained, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(PurchasePredError, match="cannot create folder"):
        export_run(trained.cfg, RUN, out=blocker / "recs.csv")


def test_export_into_a_folder_without_write_permission_fails_clearly(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The permission check itself, also where the tests run as root (see the chmod test below)."""
    folder = tmp_path / "denied"
    folder.mkdir()
    real_access = os.access

    def access(path: object, mode: int, *args: object, **kwargs: object) -> bool:
        if Path(str(path)) == folder and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(PurchasePredError, match="not writable") as err:
        export_run(trained.cfg, RUN, out=folder / "recs.csv")
    assert str(folder) in str(err.value)
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_export_into_a_read_only_folder_fails_clearly(trained: Trained, tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PurchasePredError, match="not writable") as err:
            export_run(trained.cfg, RUN, out=folder / "recs.csv")
        assert str(folder) in str(err.value)
        with pytest.raises(PurchasePredError, match="cannot create folder"):
            export_run(trained.cfg, RUN, out=folder / "sub" / "recs.csv")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_export_with_the_propensity_ranker_as_the_default(trained: Trained, metrics: tuple[dict, Path],
                                                           tmp_path: Path) -> None:
    """Whatever wins on valid, the funnel ranker can be the default: export ranks with it, fitted on valid."""
    from purchasepred.eval.propensity import Propensity, PropensityParams

    root = trained.root
    shutil.copytree(root / "checkpoints" / RUN, root / "checkpoints" / "E-prop")
    shutil.copytree(root / "output" / RUN, root / "output" / "E-prop", ignore=shutil.ignore_patterns("*.csv"))
    path = root / "output" / "E-prop" / "ranker.json"
    fitted = json.loads(path.read_text())
    assert set(fitted["propensity"]) == set(PropensityParams.__dataclass_fields__)
    fitted["default"] = "propensity"
    path.write_text(json.dumps(fitted))
    out = export_run(trained.cfg, "E-prop", out=tmp_path / "recs.csv").path
    rows = check_export(out, trained.data, k=10)
    assert "propensity" in {r["source"] for r in rows} <= {"propensity", "popularity"}
    # the top item of a warm user is the ranker's, as of the end of the data, with the parameters fitted on valid
    data = trained.data
    cut = data.split("all")
    ranker = Propensity(data.events_before_detail(cut.window_start), data.vocab.n_items, data.items["category_idx"],
                        cut.start_ts, PropensityParams(**fitted["propensity"]))
    first = next(r for r in rows if r["source"] == "propensity" and r["rank"] == "1")
    uidx = int(data.users["user_idx"][list(data.users["user_id"]).index(first["user_id"])])
    scores = ranker(np.array([uidx]))[0]
    scores[:2] = float("-inf")
    assert data.items["product_id"][int(scores.argmax())] == first["item_id"]


def test_cold_users_get_the_popularity_list(trained: Trained, exported: Path, metrics: tuple[dict, Path]) -> None:
    """Users with no event on an item that has an id get popularity; the others the default ranker."""
    data, default = trained.data, metrics[0]["default"]
    events = data.events_before(data.split("all").window_start)
    warm_users = set(np.unique(events["user_idx"]).tolist())
    cold = {str(uid) for uidx, uid in zip(data.users["user_idx"], data.users["user_id"], strict=True) if int(uidx) not in warm_users}
    _, rows = read_csv(exported)
    lists: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r["user_id"] in cold:
            assert r["source"] == "popularity"
            lists[r["user_id"]].append(r["item_id"])
        else:
            assert r["source"] == default
    assert len({tuple(v) for v in lists.values()}) <= 1  # one list for every cold user


def test_evaluate_and_export_are_deterministic(trained: Trained, metrics: tuple[dict, Path], tmp_path: Path) -> None:
    again = evaluate_run(elsewhere(trained.cfg, tmp_path / "again"), RUN, "test", [5, 10]).result
    assert json.dumps(again, sort_keys=True, default=str) == json.dumps(metrics[0], sort_keys=True, default=str)
    first, second = tmp_path / "one.csv", tmp_path / "two.csv"
    export_run(trained.cfg, RUN, out=first)
    export_run(trained.cfg, RUN, out=second)
    assert first.read_bytes() == second.read_bytes()


# ------------------------------------------------------------------------------------------ refit
def test_refit_before_test_and_on_all_events_scores_the_test_window_and_export(trained: Trained) -> None:
    from purchasepred.checkpoint import read_metadata, write_metadata
    from purchasepred.pipeline import load_run, refit_run, scoring_model

    root, cfg = trained.root, trained.cfg
    shutil.copytree(root / "checkpoints" / RUN, root / "checkpoints" / "E-refit")
    shutil.copytree(root / "output" / RUN, root / "output" / "E-refit", ignore=shutil.ignore_patterns("*.csv"))
    done = refit_run(cfg, "E-refit")
    run_dir = root / "checkpoints" / "E-refit"
    meta = read_metadata(run_dir)
    assert [r.split for r in done] == ["test", "all"] and set(meta["refits"]) == {"test", "all"}
    assert all(r.epochs == meta["best_epoch"] and r.seconds > 0 and r.checkpoint.is_file() for r in done)
    rows = {s: len(trained.data.train(s)["item_idx"]) for s in ("valid", "test", "all")}
    # the test refit sees every event before the test window, the export refit every event
    assert done[0].training_rows == rows["test"] > rows["valid"] and done[1].training_rows == rows["all"] > rows["test"]
    assert meta["refits"]["test"]["source"]["sha256"] == meta["checkpoints"]["best.pt"]
    loaded = load_run(cfg, "E-refit")
    test_model, used = scoring_model(loaded, "test")
    assert used["checkpoint"] == "refit_test.pt" and used["refit"] and used["epochs"] == meta["best_epoch"]
    assert not torch.equal(test_model.item.weight, loaded.model.item.weight)  # a fresh model, not best.pt
    assert scoring_model(loaded, "valid")[1]["checkpoint"] == "best.pt"  # valid: the model that chose on it
    assert scoring_model(loaded, "all")[1]["checkpoint"] == "refit_all.pt"
    # seeded: the same refit again gives the same weights
    again = Trainer(loaded.train_cfg, trained.data, "E-refit", train_split="test")
    again.refit(meta["best_epoch"], meta["refits"]["test"]["source"])
    assert torch.equal(scoring_model(load_run(cfg, "E-refit"), "test")[0].item.weight, test_model.item.weight)
    result = evaluate_run(cfg, "E-refit", "test", [10]).result
    assert result["model_checkpoint"]["checkpoint"] == "refit_test.pt"
    assert evaluate_run(cfg, "E-refit", "valid", [10]).result["model_checkpoint"]["checkpoint"] == "best.pt"
    # refits made from another best.pt (the run was trained further) are not used
    meta = read_metadata(run_dir)
    meta["refits"]["test"]["source"]["sha256"] = "0" * 64
    write_metadata(run_dir, meta)
    assert scoring_model(load_run(cfg, "E-refit"), "test")[1]["checkpoint"] == "best.pt"


def test_a_smaller_calibration_sample_changes_only_the_calibration(trained: Trained, metrics: tuple[dict, Path]) -> None:
    root = trained.root
    shutil.copytree(root / "checkpoints" / RUN, root / "checkpoints" / "E-cal")
    shutil.copytree(root / "output" / RUN, root / "output" / "E-cal", ignore=shutil.ignore_patterns("*.csv"))
    cfg = copy.deepcopy(trained.cfg)
    cfg.eval.calibration_users = 40
    small = evaluate_run(cfg, "E-cal", "test", [5, 10]).result  # the cached valid fit is stale: fitted again
    full = metrics[0]
    k = trained.cfg.export.k
    assert 0 < small["calibration"]["pairs"] <= 40 * k < full["calibration"]["pairs"]
    fitted = json.loads((root / "output" / "E-cal" / "ranker.json").read_text())
    assert fitted["settings"]["calibration_users"] == 40
    for ranker in ("model", "blend", "propensity", "two_stage"):
        assert small[ranker] == full[ranker], ranker
