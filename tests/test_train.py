"""Trainer: run folders, metadata, checkpoints (weights-only, sha256), resume, determinism.

One small synthetic dataset (30k rows) is prepared per module; the runs use a 16-wide, one-layer
model on CPU. Run A trains 3 epochs uninterrupted; run B is the same run stopped after epoch 1 and
resumed; run C is stopped in the middle of epoch 2 and resumed. Tests that damage a run work on a
copy of its folder.
"""

from __future__ import annotations

import itertools
import hashlib
import json
import math
import pickle
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from purchasepred.config import Config, PrepareConfig, load_config
from purchasepred.data.prepare import prepare
from purchasepred.data.synth import generate
from purchasepred.data.tensors import PreparedData
from purchasepred.errors import CheckpointError, ConfigError, DatasetError, PurchasePredError
from purchasepred.models.transformer import TransformerRecommender
from purchasepred import checkpoint as ckpt
from purchasepred.runs import load_model
from purchasepred.models.batching import trim_padding
from purchasepred.train.trainer import CAP_ROUND, TARGETS, Trainer, TrainSummary, lr_at, param_groups
from conftest import Payload

TINY = ["model.d_model=16", "model.n_layers=1", "train.batch_size=64", "train.device=cpu", "train.seed=3",
        "train.purchase_weight=50"]


def _prepared(root: Path, seed: int) -> PreparedData:
    raw = root / f"events-{seed}.csv"
    generate(raw, rows=30_000, days=30, seed=seed)
    out = root / f"prepared-{seed}"
    prepare([str(raw)], out, PrepareConfig(eval_days=3, max_len=20))
    return PreparedData(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    return _prepared(tmp_path_factory.mktemp("train_data"), seed=0)


@pytest.fixture(scope="module")
def other_data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    return _prepared(tmp_path_factory.mktemp("train_data_other"), seed=1)


def make_cfg(root: Path, epochs: int, *extra: str) -> Config:
    return load_config(sets=[*TINY, f"train.epochs={epochs}", f"train.checkpoints_dir={root / 'checkpoints'}",
                             f"train.output_dir={root / 'output'}", *extra])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def run_a(root: Path, data: PreparedData) -> TrainSummary:
    """3 epochs, never stopped."""
    return Trainer(make_cfg(root, 3), data, "A").fit()


@pytest.fixture(scope="module")
def run_b(root: Path, data: PreparedData) -> tuple[TrainSummary, TrainSummary]:
    """The same run stopped after epoch 1, then resumed by a new trainer to 3 epochs."""
    first = Trainer(make_cfg(root, 3), data, "B").fit(stop_after_epoch=1)
    second = Trainer(make_cfg(root, 3), data, "B").fit(resume=True)
    return first, second


def _losses_and_valid(history: list[dict[str, Any]]) -> list[tuple]:
    return [(h["epoch"], h["view_loss"], h["purchase_loss"], h["cart_loss"], json.dumps(h["valid"], sort_keys=True))
            for h in history]


def test_chunks_holding_only_the_events_they_read_train_the_same(root: Path, data: PreparedData, run_a: TrainSummary,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the trainer's chunks hold only the events they read (PaddedRows.compact): forced here on the
    CPU, the run is the same, loss for loss."""
    monkeypatch.setattr(Trainer, "_compact_chunks", lambda self: True)
    trainer = Trainer(make_cfg(root, 3), data, "compact")
    summary = trainer.fit()
    assert len(trainer.train_data.columns["item_idx"]) < len(data._events["item_idx"])
    assert _losses_and_valid(summary.history) == _losses_and_valid(run_a.history)


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _copy_run(root: Path, name: str, new: str) -> Path:
    dst = root / "checkpoints" / new
    shutil.copytree(root / "checkpoints" / name, dst)
    return dst


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ run folders
def test_run_writes_checkpoints_config_metadata_and_output(root: Path, run_a: TrainSummary, data: PreparedData) -> None:
    run_dir = root / "checkpoints" / "A"
    for name in ("last.pt", "best.pt", "config.yaml", "metadata.json"):
        assert (run_dir / name).is_file(), name
    assert (root / "output" / "A").is_dir()
    assert not list(run_dir.glob(".*tmp*")), "temporary checkpoint files left behind"
    assert run_a.epochs_done == 3 and not run_a.interrupted
    assert run_a.run_dir == run_dir and run_a.checkpoint == run_dir / "best.pt"
    assert run_a.tokens_per_s > 0

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["purchase_weight"] == 50
    assert config["model"]["d_model"] == 16 and config["train"]["epochs"] == 3

    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["run_name"] == "A" and meta["epochs_done"] == 3 and meta["purchase_weight"] == 50
    assert {"purchasepred", "python", "torch", "duckdb", "numpy"} <= meta["versions"].keys()
    assert meta["versions"]["torch"] == torch.__version__
    assert "git_commit" in meta
    assert meta["dataset"]["content_hash"] == data.manifest["content_hash"]
    assert len(meta["epochs"]) == 3
    for i, epoch in enumerate(meta["epochs"], start=1):
        assert epoch["epoch"] == i
        for key in ("view_loss", "purchase_loss", "cart_loss", "seconds", "tokens_per_s", "lr"):
            assert isinstance(epoch[key], (int, float)), key
        assert epoch["view_loss"] > 0 and epoch["purchase_loss"] > 0 and epoch["tokens_per_s"] > 0
        assert {"ndcg@10", "hr@10", "users"} <= epoch["valid"].keys()
        assert 0 <= epoch["valid"]["ndcg@10"] <= 1 and epoch["valid"]["users"] > 0
    assert meta["timings"]["train_s"] > 0
    for name in ("last.pt", "best.pt"):
        assert meta["checkpoints"][name] == _sha256(run_dir / name), name
    best = max(meta["epochs"], key=lambda e: e["valid"]["ndcg@10"])
    assert meta["best_valid_ndcg@10"] == best["valid"]["ndcg@10"]
    assert meta["best_epoch"] == run_a.best_epoch
    assert (root / "output" / "A" / "train_history.json").is_file()


def test_checkpoints_load_weights_only(root: Path, run_a: TrainSummary, data: PreparedData) -> None:
    run_dir = root / "checkpoints" / "A"
    last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "rng", "epoch", "step", "config", "vocab", "dataset_hash"):
        assert key in last, key
    assert last["epoch"] == 3 and last["batch_in_epoch"] == 0
    assert last["config"]["train"]["purchase_weight"] == 50
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == run_a.best_epoch
    model, cfg, meta = load_model(run_dir, "last", data)
    assert isinstance(model, TransformerRecommender) and not model.training
    _assert_same_state(model.state_dict(), last["model"])
    assert cfg.train.purchase_weight == 50 and meta["run_name"] == "A"


# ------------------------------------------------------------------------------ determinism, resume
def test_two_fresh_runs_are_identical(run_a: TrainSummary, run_b: tuple[TrainSummary, TrainSummary]) -> None:
    first, _ = run_b  # B is a fresh run with A's configuration, stopped after its first epoch
    assert first.interrupted and first.epochs_done == 1
    assert _losses_and_valid(first.history) == _losses_and_valid(run_a.history[:1])


def test_resume_after_an_epoch_ends_like_an_uninterrupted_run(
    root: Path, run_a: TrainSummary, run_b: tuple[TrainSummary, TrainSummary],
) -> None:
    _, resumed = run_b
    assert resumed.epochs_done == 3 and not resumed.interrupted
    assert _losses_and_valid(resumed.history) == _losses_and_valid(run_a.history)
    assert resumed.best_valid_ndcg10 == run_a.best_valid_ndcg10 and resumed.best_epoch == run_a.best_epoch
    a = torch.load(root / "checkpoints" / "A" / "last.pt", weights_only=True)
    b = torch.load(root / "checkpoints" / "B" / "last.pt", weights_only=True)
    _assert_same_state(a["model"], b["model"])
    assert a["step"] == b["step"]
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    meta = json.loads((root / "checkpoints" / "B" / "metadata.json").read_text())
    assert meta["epochs_done"] == 3 and len(meta["epochs"]) == 3
    assert meta["checkpoints"]["last.pt"] == _sha256(root / "checkpoints" / "B" / "last.pt")
    assert meta["checkpoints"]["best.pt"] == _sha256(root / "checkpoints" / "B" / "best.pt")


@pytest.fixture(scope="module")
def run_c(root: Path, data: PreparedData) -> tuple[int, TrainSummary, TrainSummary]:
    """The same run stopped in the middle of epoch 2 (as Ctrl-C does), then resumed to 3 epochs."""
    trainer = Trainer(make_cfg(root, 3), data, "C")
    stopped_at: list[int] = []

    def stop_in_epoch_two(s: dict[str, Any]) -> None:
        if s["epoch"] == 1 and not stopped_at and s["batch"] < s["batches"]:
            stopped_at.append(s["batch"])
            trainer._stop_requested = True  # what the SIGINT handler sets

    stopped = trainer.fit(on_step=stop_in_epoch_two)
    assert stopped_at, "on_step was never called inside epoch 2 before its last batch"
    resumed = Trainer(make_cfg(root, 3), data, "C").fit(resume=True)
    return stopped_at[0], stopped, resumed


def test_resume_from_the_middle_of_an_epoch(root: Path, run_a: TrainSummary,
                                            run_c: tuple[int, TrainSummary, TrainSummary]) -> None:
    stopped_at, stopped, resumed = run_c
    assert stopped.interrupted and stopped.epochs_done == 1
    assert resumed.epochs_done == 3 and not resumed.interrupted
    same_valid = [json.dumps(h["valid"], sort_keys=True) for h in resumed.history]
    assert same_valid == [json.dumps(h["valid"], sort_keys=True) for h in run_a.history]
    for got, want in zip(resumed.history, run_a.history, strict=True):
        for key in ("view_loss", "purchase_loss", "cart_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), (got["epoch"], key)
    a = torch.load(root / "checkpoints" / "A" / "last.pt", weights_only=True)
    c = torch.load(root / "checkpoints" / "C" / "last.pt", weights_only=True)
    _assert_same_state(a["model"], c["model"])
    assert a["step"] == c["step"]


def test_resume_from_the_middle_of_an_epoch_logs_identical_losses(
    run_a: TrainSummary, run_c: tuple[int, TrainSummary, TrainSummary],
) -> None:
    _, _, resumed = run_c
    assert _losses_and_valid(resumed.history) == _losses_and_valid(run_a.history)


def test_resume_a_finished_run_without_more_epochs_is_refused(root: Path, data: PreparedData, run_a: TrainSummary) -> None:
    with pytest.raises(ConfigError, match="larger than 3"):
        Trainer(make_cfg(root, 3), data, "A").fit(resume=True)


def test_starting_an_existing_run_without_resume_is_refused(root: Path, data: PreparedData, run_a: TrainSummary) -> None:
    before = _sha256(root / "checkpoints" / "A" / "last.pt")
    with pytest.raises(CheckpointError, match="already exists.*--resume"):
        Trainer(make_cfg(root, 3), data, "A").fit()
    assert _sha256(root / "checkpoints" / "A" / "last.pt") == before


def test_resume_of_a_missing_run_is_a_clear_error(root: Path, data: PreparedData) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer(make_cfg(root, 3), data, "never-trained").fit(resume=True)


def test_resume_on_another_dataset_is_refused(root: Path, data: PreparedData, other_data: PreparedData,
                                              run_a: TrainSummary) -> None:
    assert other_data.manifest["content_hash"] != data.manifest["content_hash"]
    run_dir = _copy_run(root, "A", "A-other-data")
    before = {p.name: _sha256(p) for p in run_dir.iterdir()}
    with pytest.raises(CheckpointError, match="dataset") as err:
        Trainer(make_cfg(root, 4), other_data, "A-other-data").fit(resume=True)
    assert "content_hash" in str(err.value) and "A-other-data" in str(err.value)
    assert {p.name: _sha256(p) for p in run_dir.iterdir()} == before  # nothing overwritten
    with pytest.raises(CheckpointError, match="another dataset"):
        load_model(run_dir, "best", other_data)


def test_resume_with_other_model_settings_is_refused(root: Path, data: PreparedData, run_a: TrainSummary) -> None:
    _copy_run(root, "A", "A-wider")
    with pytest.raises(CheckpointError, match="model settings differ"):
        Trainer(make_cfg(root, 4, "model.d_model=32"), data, "A-wider").fit(resume=True)


def test_truncated_checkpoint_is_detected_by_sha256(root: Path, data: PreparedData, run_a: TrainSummary) -> None:
    run_dir = _copy_run(root, "A", "A-truncated")
    last = run_dir / "last.pt"
    content = last.read_bytes()
    last.write_bytes(content[: len(content) - 100])
    with pytest.raises(CheckpointError, match="sha256"):
        Trainer(make_cfg(root, 4), data, "A-truncated").fit(resume=True)
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(run_dir, "last", data)
    # without a recorded hash the damage is still caught, by the loader
    (run_dir / "metadata.json").unlink()
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        Trainer(make_cfg(root, 4), data, "A-truncated").fit(resume=True)


def test_checkpoint_with_a_pickled_object_is_refused_and_never_run(
    root: Path, data: PreparedData, run_a: TrainSummary, tmp_path: Path,
) -> None:
    # sanity: the payload does run code when unpickled without weights_only
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe)))
    assert probe.exists()

    marker = tmp_path / "marker"
    run_dir = _copy_run(root, "A", "A-evil")
    payload = torch.load(run_dir / "last.pt", weights_only=True)
    payload["model"]["evil"] = Payload(marker)
    torch.save(payload, run_dir / "last.pt")
    meta = json.loads((run_dir / "metadata.json").read_text())
    meta["checkpoints"]["last.pt"] = _sha256(run_dir / "last.pt")  # the hash matches: only the loader can refuse
    (run_dir / "metadata.json").write_text(json.dumps(meta))

    with pytest.raises(CheckpointError, match="refused"):
        ckpt.load_checkpoint(run_dir / "last.pt", meta["checkpoints"]["last.pt"])
    with pytest.raises(CheckpointError, match="refused"):
        Trainer(make_cfg(root, 4), data, "A-evil").fit(resume=True)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(run_dir, "last", data)
    assert not marker.exists()


# ------------------------------------------------------------------------------ other settings
@pytest.mark.parametrize("name, extra", [
    ("sampled", ["train.loss=sampled", "train.negatives=64", "train.cart_weight=1"]),
    ("no-repeat", ["model.repeat_path=false"]),
])
def test_other_training_settings_run(root: Path, data: PreparedData, name: str, extra: list[str]) -> None:
    handler = signal.getsignal(signal.SIGINT)
    summary = Trainer(make_cfg(root, 1, *extra), data, name).fit()
    assert signal.getsignal(signal.SIGINT) is handler  # the Ctrl-C handler is put back
    (epoch,) = summary.history
    assert all(math.isfinite(epoch[k]) for k in ("view_loss", "purchase_loss", "cart_loss"))
    assert epoch["purchase_loss"] > 0 and 0 <= epoch["valid"]["ndcg@10"] <= 1
    assert (epoch["cart_loss"] > 0) == ("train.cart_weight=1" in extra)
    saved = yaml.safe_load((root / "checkpoints" / name / "config.yaml").read_text())
    assert saved["train"]["loss"] == ("sampled" if name == "sampled" else "full")
    assert saved["model"]["repeat_path"] == (name != "no-repeat")


def test_steps_take_their_width_and_target_rows_from_host_arrays(root: Path, data: PreparedData) -> None:
    """What Trainer.batch reads off host arrays (no device read-back) is what the batch holds: the
    width trim_padding would cut to and each loss part's target count; compiled steps keep the full
    width and the epoch's capacities, which cover every batch of the epoch."""
    size = 4  # small batches, so that some of them are all short histories
    trainer = Trainer(make_cfg(root, 1, f"train.batch_size={size}"), data, "host-rows")
    trainer._build()
    order = trainer.epoch_order(0)
    host = data.train(trainer.train_split)  # the same chunks, cut on the host (PaddedRows)
    trimmed = 0
    for i in range(min(trainer.steps_per_epoch, 200)):
        batch, rows = trainer.batch(order, i)
        index = order[i * size:(i + 1) * size]
        full = {k: torch.from_numpy(v).long() for k, v in host.take(index.numpy()).items()}
        want = trim_padding(full)
        assert set(batch) == set(want) and all(torch.equal(batch[k], want[k]) for k in want)
        trimmed += batch["item_idx"].shape[1] < full["item_idx"].shape[1]
        counts = tuple(int((full[key] > 0).sum()) for key in TARGETS)
        assert rows.mine == rows.total == rows.caps == counts
    assert trimmed > 0  # the data has short histories: the check above compared real cuts
    caps = trainer.epoch_caps(order)
    width = trainer.train_data.width
    for i in range(trainer.steps_per_epoch):
        batch, rows = trainer.batch(order, i, caps)
        assert batch["item_idx"].shape[1] == width and rows.caps == caps
        assert all(c >= m for c, m in zip(caps, rows.mine, strict=True))
    assert all(c % CAP_ROUND == 0 or c == size * width for c in caps)


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON (RFC 8259)")

    return json.loads(text, parse_constant=refuse)


def test_metadata_is_strict_json(root: Path, run_a: TrainSummary) -> None:
    _strict_json((root / "checkpoints" / "A" / "metadata.json").read_text())
    _strict_json((root / "output" / "A" / "train_history.json").read_text())


@pytest.mark.parametrize("which", ["checkpoints_dir", "output_dir"])
def test_uncreatable_run_folder_is_a_clear_error(root: Path, data: PreparedData, tmp_path: Path, which: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = make_cfg(root, 1, f"train.{which}={blocker / 'runs'}")
    with pytest.raises(PurchasePredError, match="a-file"):
        Trainer(cfg, data, f"blocked-{which}").fit()


# ------------------------------------------------------------------------------ schedule, groups
def test_lr_warmup_then_cosine() -> None:
    total, peak = 100, 1.0
    lrs = [lr_at(s, total, peak, 0.1) for s in range(total + 1)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10], strict=True))  # warmup rises
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # then decays
    assert lrs[total] == pytest.approx(0.05) and min(lrs) > 0


def test_param_groups_decay_only_linear_weights() -> None:
    from purchasepred.config import ModelConfig
    from purchasepred.models.transformer import Vocab

    model = TransformerRecommender(ModelConfig(d_model=16, n_layers=1), Vocab(20, 5, 5), 10)
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith("weight") for n in decayed)
    for n in decayed:
        module = model.get_submodule(n.rsplit(".", 1)[0])
        assert isinstance(module, torch.nn.Linear), n
    kept = {names[id(p)] for p in no_decay["params"]}
    assert {"item.weight", "position.weight", "ln_f.weight", "view_bias", "buy_bias", "repeat_bias"} <= kept
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert decayed.isdisjoint(kept)


# ------------------------------------------------------------------------------ first-hour fixes
def _scripted_valid(monkeypatch: pytest.MonkeyPatch, scores: list[float]) -> None:
    """Valid NDCG@10 follows ``scores``, one per epoch (the model still trains for real)."""
    calls = iter(scores)
    monkeypatch.setattr(Trainer, "evaluate_valid", lambda self: {"users": 1, "ndcg@10": next(calls), "hr@10": 0.0})


def test_an_early_stopped_run_is_finished_unless_epochs_are_raised(
    root: Path, data: PreparedData, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _scripted_valid(monkeypatch, [0.5, 0.4, 0.3, 0.6])
    first = Trainer(make_cfg(root, 4, "train.patience=1"), data, "early").fit()
    assert first.early_stopped and first.epochs_done == 2 and first.best_epoch == 1
    run_dir = root / "checkpoints" / "early"
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["early_stopped_at"] == 2 and meta["epochs_done"] == 2
    assert torch.load(run_dir / "last.pt", weights_only=True)["early_stopped_at"] == 2
    before = _sha256(run_dir / "last.pt")
    with pytest.raises(ConfigError, match="finished: it stopped early at epoch 2 of 4.*--epochs larger than 4"):
        Trainer(make_cfg(root, 4, "train.patience=1"), data, "early").fit(resume=True)
    assert _sha256(run_dir / "last.pt") == before  # no epoch was trained
    more = Trainer(make_cfg(root, 5, "train.patience=1"), data, "early").fit(resume=True)
    assert more.epochs_done == 3 and more.early_stopped  # patience starts afresh: one more epoch, no better
    assert json.loads((run_dir / "metadata.json").read_text())["early_stopped_at"] == 3


def test_a_checkpoint_from_before_the_stop_was_recorded_is_still_seen_as_finished(
    root: Path, data: PreparedData, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _scripted_valid(monkeypatch, [0.5, 0.4])
    Trainer(make_cfg(root, 4, "train.patience=1"), data, "early-old").fit()
    run_dir = root / "checkpoints" / "early-old"
    payload = torch.load(run_dir / "last.pt", weights_only=True)
    del payload["early_stopped_at"]  # as written before the stop was recorded
    torch.save(payload, run_dir / "last.pt")
    meta = json.loads((run_dir / "metadata.json").read_text())
    meta["checkpoints"]["last.pt"] = _sha256(run_dir / "last.pt")
    (run_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="stopped early at epoch 2"):
        Trainer(make_cfg(root, 4, "train.patience=1"), data, "early-old").fit(resume=True)


def test_few_gradient_steps_are_pointed_out(root: Path, data: PreparedData, run_a: TrainSummary) -> None:
    n_train = len(data.train()["item_idx"])
    few = Trainer(make_cfg(root, 1, "train.batch_size=100000"), data, "few-steps").fit()
    (note,) = [n for n in few.notes if "gradient steps" in n]
    assert f"{n_train} training sequences at batch 100000 gave 1 step(s) per epoch, 1 in all" in note
    assert "lower --batch-size or raise --epochs" in note
    assert note in json.loads((root / "checkpoints" / "few-steps" / "metadata.json").read_text())["notes"]
    steps_a = torch.load(root / "checkpoints" / "A" / "last.pt", weights_only=True)["step"]
    assert any("gradient steps" in n for n in run_a.notes) == (steps_a < 50)


def test_a_valid_window_without_purchases_fails_before_training(root: Path, data: PreparedData, tmp_path: Path) -> None:
    valid = data.split("valid")
    start, end = (f"{valid.window_start:%Y-%m-%d %H:%M:%S}", f"{valid.window_end:%Y-%m-%d %H:%M:%S}")
    header, *body = (data.path.parent / "events-0.csv").read_text().splitlines(keepends=True)
    kept = [line for line in body if not (",purchase," in line and start <= line[:19] < end)]
    assert len(kept) < len(body) and any(",purchase," in line for line in kept)
    (tmp_path / "events.csv").write_text(header + "".join(kept))
    prepare([str(tmp_path / "events.csv")], tmp_path / "prepared", PrepareConfig(eval_days=3, max_len=20))
    no_valid = PreparedData(tmp_path / "prepared")
    assert len(no_valid.split("valid").truth_users) == 0 and len(no_valid.split("test").truth_users) > 0
    with pytest.raises(DatasetError, match="valid window .* has no purchases") as err:
        Trainer(make_cfg(root, 8), no_valid, "no-valid").fit()
    message = str(err.value)
    assert "\n" not in message and f"{valid.window_start:%Y-%m-%d}" in message and "--eval-days" in message
    assert not (root / "checkpoints" / "no-valid").exists()


def test_config_yaml_records_the_settings_the_dataset_was_prepared_with(root: Path, run_a: TrainSummary) -> None:
    saved = yaml.safe_load((root / "checkpoints" / "A" / "config.yaml").read_text())
    assert (Config().prepare.eval_days, Config().prepare.max_len) != (3, 20)  # the defaults differ
    assert saved["prepare"]["eval_days"] == 3 and saved["prepare"]["max_len"] == 20
    assert torch.load(root / "checkpoints" / "A" / "last.pt", weights_only=True)["config"]["prepare"]["eval_days"] == 3


def test_a_checkpoint_written_before_the_loop_was_split_resumes_exactly(
    root: Path, data: PreparedData, run_a: TrainSummary,
) -> None:
    Trainer(make_cfg(root, 3), data, "legacy").fit(stop_after_epoch=1)
    run_dir = root / "checkpoints" / "legacy"
    payload = torch.load(run_dir / "last.pt", weights_only=True)
    for key in ("world_size", "early_stopped_at"):
        del payload[key]
    del payload["rng"]["torch_by_rank"]
    payload["running"] = {"view": 0.0, "purchase": 0.0, "cart": 0.0, "n": 0.0, "tokens": 0.0, "seconds": 0.0}
    torch.save(payload, run_dir / "last.pt")  # what the trainer wrote before RunState
    meta = json.loads((run_dir / "metadata.json").read_text())
    meta["checkpoints"]["last.pt"] = _sha256(run_dir / "last.pt")
    (run_dir / "metadata.json").write_text(json.dumps(meta))
    resumed = Trainer(make_cfg(root, 3), data, "legacy").fit(resume=True)
    assert _losses_and_valid(resumed.history) == _losses_and_valid(run_a.history)


# ------------------------------------------------------------------------------ purchase batches, head lr
def test_purchase_batches_give_every_batch_its_share_and_every_row_a_turn() -> None:
    from purchasepred.train.trainer import purchase_batches

    carry, rest = torch.arange(0, 30, 3), torch.tensor([i for i in range(30) if i % 3])  # 10 and 20 rows
    epochs = [purchase_batches(carry, rest, n_carry=4, steps=4, batch=8, seed=1, epoch=e) for e in range(3)]
    for order in epochs:
        assert ((order.view(4, 8) % 3 == 0).sum(1) == 4).all()  # 4 rows with purchase targets in every batch
    counts = torch.bincount(torch.cat(epochs), minlength=30)
    # 48 carrier slots over 10 carriers, 48 other slots over 20 others: each pool in turns, none skipped
    assert counts[carry].min() == 4 and counts[carry].max() == 5
    assert counts[rest].min() == 2 and counts[rest].max() == 3
    first = torch.bincount(epochs[0], minlength=30)
    assert first[rest].max() == 1  # within one epoch no other row comes twice before all have come
    assert torch.equal(epochs[1], purchase_batches(carry, rest, 4, 4, 8, 1, 1))  # a function of (seed, epoch)
    assert not torch.equal(epochs[0], purchase_batches(carry, rest, 4, 4, 8, 2, 0))


def test_purchase_share_puts_purchase_targets_in_every_batch(root: Path, data: PreparedData) -> None:
    plain = Trainer(make_cfg(root, 1), data, "share-plain")
    plain._build()
    shared = Trainer(make_cfg(root, 1, "train.purchase_share=0.5"), data, "share-half")
    shared._build()
    has = torch.from_numpy((data.train(shared.train_split)["purchase_target"] > 0).any(1))
    order = shared.epoch_order(0)
    size = shared.cfg.train.batch_size
    per_batch = [int(has[order[i * size:(i + 1) * size]].sum()) for i in range(shared.steps_per_epoch)]
    assert per_batch == [size // 2] * shared.steps_per_epoch
    assert has.float().mean() < 0.5 and shared.steps_per_epoch == plain.steps_per_epoch  # the same compute
    plain_order = plain.epoch_order(0)
    assert sorted(plain_order.tolist()) == list(range(plain.n_train))  # the default: one random permutation


def test_purchase_head_lr_scales_only_the_heads_own_parameters(root: Path, data: PreparedData, run_a: TrainSummary) -> None:
    from purchasepred.train.trainer import PURCHASE_HEAD, train_step

    trainer = Trainer(make_cfg(root, 1, "train.purchase_head_lr=4"), data, "head-lr")
    trainer._build()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    groups = trainer.optimizer.param_groups
    assert sum(len(g["params"]) for g in groups) == len(names)
    for g in groups:
        heads = {names[id(p)].split(".")[0] in PURCHASE_HEAD for p in g["params"]}
        assert heads == {g["lr_scale"] == 4.0}, (g["lr_scale"], heads)
    batch, rows = trainer.batch(trainer.epoch_order(0), 0)
    train_step(trainer.model, lambda b, s: trainer.loss_module(b, s, None, rows.caps), trainer.optimizer, batch, 1e-3,
               trainer.cfg.train)
    assert {g["lr"] for g in groups} == {1e-3, 4e-3}
    with pytest.raises(CheckpointError, match="purchase_head_lr differs"):  # run A has one group for all
        Trainer(make_cfg(root, 4, "train.purchase_head_lr=2"), data, "A").fit(resume=True)
