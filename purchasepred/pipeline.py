"""Library entry points behind every command: one call each, returning a summary dataclass.

The CLI parses, calls one of these, and prints the summary; scripts and notebooks call them the
same way. Progress reaches the caller through plain callbacks (:class:`Hooks`), never through
rich objects, so this module prints nothing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from purchasepred.config import EvalConfig, Config
from purchasepred.data.prepare import PrepareSummary, prepare
from purchasepred.data.tensors import PreparedData
from purchasepred.errors import CheckpointError, DatasetError, Interrupted, PurchasePredError
from purchasepred.eval.evaluate import ValidFit, evaluate, fit_on_valid, fit_settings
from purchasepred.export.recommend import ExportSummary, export
from purchasepred.fileio import check_new_output, remove_empty, write_json
from purchasepred.runs import latest_run, load_model, pick_device, run_paths
from purchasepred.checkpoint import read_metadata
from purchasepred.train import distributed
from purchasepred.train.trainer import EpochStats, RefitSummary, Trainer, TrainSummary

Log = Callable[[str], None]


@dataclass
class Hooks:
    """Progress callbacks; every one optional. ``step`` names the stage a long command is in."""

    log: Log | None = None
    step: Callable[[str], None] | None = None
    detail: Callable[[str], None] | None = None  # what the current stage is doing now; may come from another thread
    on_step: Callable[[dict[str, Any]], None] | None = None
    on_epoch: Callable[[EpochStats], None] | None = None
    on_export: Callable[[int, int], None] | None = None

    def say(self, msg: str) -> None:
        if self.log:
            self.log(msg)

    def stage(self, name: str) -> None:
        if self.step:
            self.step(name)

    def now(self, text: str) -> None:
        if self.detail:
            self.detail(text)


# ------------------------------------------------------------------------------------------ runs
@dataclass
class LoadedRun:
    name: str
    run_dir: Path
    out_dir: Path
    data: PreparedData
    model: torch.nn.Module  # the model trained before the valid window (best.pt, else last.pt)
    device: torch.device
    meta: dict[str, Any]
    checkpoint: str = "best.pt"  # the file ``model`` was loaded from
    train_cfg: Config | None = None  # the settings it was trained with


def source_sha256(meta: dict[str, Any]) -> str | None:
    """The sha256 of the checkpoint evaluate and export start from (best.pt, else last.pt)."""
    return meta.get("checkpoints", {}).get("best.pt") or meta.get("checkpoints", {}).get("last.pt")


def resolve_run(cfg: Config, run: str | None, hooks: Hooks | None = None) -> str:
    """The run a command works on: the one named, or the latest trained one (said in one line)."""
    if run:
        return run
    name, when = latest_run(cfg)
    (hooks or Hooks()).say(f"using the latest run '{name}' (trained {when}; pass --run to choose another)")
    return name


def load_run(cfg: Config, run: str, data: Path | None = None) -> LoadedRun:
    run_dir, out_dir = run_paths(cfg, run)
    if not run_dir.is_dir():
        raise CheckpointError(
            f"run {run!r} does not exist in {run_dir.parent}/; train it first: purchasepred train --run-name {run}"
        )
    meta = read_metadata(run_dir) if (run_dir / "metadata.json").is_file() else {}
    recorded = meta.get("dataset", {})
    data_path = Path(data) if data else Path(recorded.get("path", cfg.train.data))
    dataset = PreparedData(data_path)
    if recorded.get("content_hash") and recorded["content_hash"] != dataset.manifest["content_hash"]:
        again = (f"pass --data with the dataset it was trained on ({recorded.get('path')})" if data else
                 f"{data_path} was prepared again after run {run!r} was trained (content hash "
                 f"{recorded['content_hash'][:12]} then, {dataset.manifest['content_hash'][:12]} now); prepare the "
                 f"same raw files with the settings in {run_dir / 'config.yaml'} into {data_path} to get it back, "
                 "or train a new run on the new data")
        raise CheckpointError(f"run {run!r} was trained on another dataset than {data_path}; {again}")
    device = pick_device(cfg.train.device)
    which = "best" if (run_dir / "best.pt").is_file() else "last"
    model, train_cfg, meta = load_model(run_dir, which, dataset, device)
    return LoadedRun(run, run_dir, out_dir, dataset, model, device, meta, f"{which}.pt", train_cfg)


def scoring_model(run: LoadedRun, split: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model that scores ``split`` ('valid', 'test', or 'all' for export), and what it was trained on.

    The valid window is always scored by the model that chose the settings on it. The test window and
    export use the model refit on the events before the test window / on all events, when the run has
    one made from its current checkpoint (:func:`refit_run`); otherwise that same model."""
    record = run.meta.get("refits", {}).get(split) if split in ("test", "all") else None
    if record and record.get("source", {}).get("sha256") == source_sha256(run.meta):
        model, _, _ = load_model(run.run_dir, record["checkpoint"].removesuffix(".pt"), run.data, run.device)
        return model, {"checkpoint": record["checkpoint"], "refit": True, "epochs": record["epochs"],
                       "trained_on": record["trained_on"]}
    valid = run.data.split("valid").window_start
    return run.model, {"checkpoint": run.checkpoint, "refit": False,
                       "epochs": run.meta.get("best_epoch") if run.checkpoint == "best.pt" else run.meta.get("epochs_done"),
                       "trained_on": f"every event before {valid:%Y-%m-%d %H:%M:%S}, the start of the valid window"}


def valid_fit(run: LoadedRun, cfg: Config, hooks: Hooks | None = None) -> ValidFit:
    """The valid-window fit of a run, cached in output/<run>/ranker.json (refit when stale)."""
    path = run.out_dir / "ranker.json"
    sha = source_sha256(run.meta)
    if path.is_file():
        try:
            fitted = ValidFit.from_dict(json.loads(path.read_text()))
            if (fitted.dataset_hash == run.data.manifest["content_hash"] and fitted.checkpoint_sha256 == sha
                    and fitted.settings == fit_settings(cfg)):
                return fitted
        except (KeyError, TypeError, json.JSONDecodeError):
            pass
    (hooks or Hooks()).say("fitting history weights, blend weight and calibration on the valid window")
    fitted, _ = fit_on_valid(run.data, cfg, run.model, run.device, sha)
    write_json(path, fitted.to_dict())
    return fitted


# ------------------------------------------------------------------------------------------ train
def train_run(cfg: Config, run_name: str, resume: bool = False, hooks: Hooks | None = None) -> TrainSummary:
    """Train (or resume) ``run_name`` on ``cfg.train.data``."""
    hooks = hooks or Hooks()
    trainer = Trainer(cfg, PreparedData(Path(cfg.train.data)), run_name)
    return trainer.fit(resume=resume, on_step=hooks.on_step, on_epoch=hooks.on_epoch)


# ------------------------------------------------------------------------------------------ refit
def refit_run(cfg: Config, run: str, hooks: Hooks | None = None, data: Path | None = None,
              splits: tuple[str, ...] = ("test", "all")) -> list[RefitSummary]:
    """Refit a trained run for the test numbers and for export: a fresh model with the run's settings,
    trained for the number of epochs chosen on valid (its best epoch) on every event before the test
    window ('test': what evaluate scores the test window with) and on every event ('all': what
    export recommends with). Ranker weights, the re-ranker and the calibration stay fitted on valid."""
    hooks = hooks or Hooks()
    loaded = load_run(cfg, run, data)
    meta = loaded.meta
    epochs = meta.get("best_epoch") if loaded.checkpoint == "best.pt" else meta.get("epochs_done")
    if not epochs:
        raise CheckpointError(f"run {run!r} has no finished epoch whose choice a refit could repeat; train it first")
    train_cfg = loaded.train_cfg or cfg
    # the run's settings; where to write and which device: this command's
    train_cfg.train.device, train_cfg.train.checkpoints_dir = cfg.train.device, cfg.train.checkpoints_dir
    train_cfg.train.output_dir = cfg.train.output_dir
    source = {"checkpoint": loaded.checkpoint, "sha256": source_sha256(meta), "best_epoch": epochs}
    done = []
    for split in splits:
        hooks.stage(f"refit ({'events before the test window' if split == 'test' else 'all events'}, {epochs} epochs)")
        done.append(Trainer(train_cfg, loaded.data, run, train_split=split).refit(epochs, source))
        meta = read_metadata(loaded.run_dir)
    return done


# ------------------------------------------------------------------------------------------ evaluate
@dataclass
class EvaluateSummary:
    result: dict[str, Any]
    path: Path


def rounded(obj: Any, digits: int = 6) -> Any:
    """``obj`` with every float rounded to ``digits`` significant digits (ints, NaN and the rest as they are)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def metrics_path(out_dir: Path, split: str, ks: list[int]) -> Path:
    """One file per split and cutoff list: metrics.json is the test window at the default cutoffs
    (the file run_summary.json points to); other splits or --k never replace it."""
    name = "metrics" if split == "test" else f"metrics_{split}"
    if ks != EvalConfig().k:
        name += "_k" + "-".join(map(str, ks))
    return out_dir / f"{name}.json"


def evaluate_run(cfg: Config, run: str | None = None, split: str = "test", ks: list[int] | None = None,
                 data: Path | None = None, hooks: Hooks | None = None) -> EvaluateSummary:
    hooks = hooks or Hooks()
    name = resolve_run(cfg, run, hooks)
    loaded = load_run(cfg, name, data)
    fitted = valid_fit(loaded, cfg, hooks)
    ks = ks or cfg.eval.k
    model, used = scoring_model(loaded, split)
    result = evaluate(loaded.data, cfg, model, loaded.device, split, ks, fitted, hooks.log)
    result["model_checkpoint"] = used
    result["run"] = name
    result["dataset"] = {"path": str(loaded.data.path), "content_hash": loaded.data.manifest["content_hash"]}
    result = rounded(result)
    path = metrics_path(loaded.out_dir, split, ks)
    write_json(path, result)
    return EvaluateSummary(result, path)


# ------------------------------------------------------------------------------------------ export
def export_run(cfg: Config, run: str | None = None, out: Path | None = None, k: int | None = None,
               filter_seen: bool | None = None, force: bool = False, data: Path | None = None,
               hooks: Hooks | None = None) -> ExportSummary:
    hooks = hooks or Hooks()
    name = resolve_run(cfg, run, hooks)
    target = Path(out) if out else run_paths(cfg, name)[1] / "recommendations.csv"
    check_new_output(target, force)  # before loading and fitting, which take minutes on big data
    loaded = load_run(cfg, name, data)
    # under torchrun: one process per rank (cuda:LOCAL_RANK on CUDA, gloo on CPU), each scoring a share
    d, device = distributed.setup(loaded.device)
    if device != loaded.device:
        loaded.model.to(device)
        loaded.device = device
    finished = False
    try:
        fitted = _valid_fit_once(loaded, cfg, hooks, d)
        model, used = scoring_model(loaded, "all")
        summary = export(loaded.data, cfg, model, loaded.device, fitted, target, k or cfg.export.k,
                         cfg.export.filter_seen if filter_seen is None else filter_seen, force, hooks.on_export, d)
        summary.model_checkpoint = used
        finished = True
        return summary
    finally:
        if finished:
            distributed.teardown(d)
        elif d.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _valid_fit_once(loaded: LoadedRun, cfg: Config, hooks: Hooks, d: distributed.Dist) -> ValidFit:
    """Under torchrun rank 0 fits (and caches ranker.json) first; the other ranks then read its cache."""
    if not d.enabled:
        return valid_fit(loaded, cfg, hooks)
    fitted, error = None, None
    if d.is_main:
        try:
            fitted = valid_fit(loaded, cfg, hooks)
        except BaseException as err:  # noqa: BLE001 - re-raised below, after the other ranks have heard of it
            error = err
    if distributed.any_rank(error is not None, d, loaded.device):
        raise error or PurchasePredError("rank 0 could not fit the rankers on the valid window (see its error); nothing was exported")
    return fitted if fitted is not None else valid_fit(loaded, cfg, hooks)


# ------------------------------------------------------------------------------------------ run
@dataclass
class RunSummary:
    name: str
    inputs: list[str]
    prepared: PrepareSummary | None
    train: TrainSummary
    evaluation: EvaluateSummary
    export: ExportSummary
    summary_path: Path
    report: Path
    body: dict[str, Any] = field(default_factory=dict)
    refits: list[RefitSummary] = field(default_factory=list)  # made by this call (none with refit=False)


def _prepared_in(out_dir: Path) -> Path:
    return out_dir / "prepared"


def run_all(cfg: Config, raw: list[str] | None, name: str, rows: int = 300_000, force: bool = False,
            resume: bool = False, resume_command: str = "", hooks: Hooks | None = None,
            refit: bool = True) -> RunSummary:
    """synth (without ``raw``) -> prepare -> train -> refit -> evaluate -> export, all in ``output/<name>/``.

    ``refit``: after training has chosen the epochs on valid, refit on the events before the test
    window (the model whose test numbers evaluate reports) and on all events (the model export uses);
    see :func:`refit_run`. Without it both use the model trained before the valid window.

    A failure removes the run's folders that this call created, so a retry needs no --force. An
    interrupt during training keeps them and raises :class:`Interrupted` with ``resume_command``
    (the caller's ``run ... --resume``), which continues training and then evaluates and exports."""
    hooks = hooks or Hooks()
    run_dir, out_dir = run_paths(cfg, name)
    existing = [p for p in (run_dir, out_dir) if p.exists()]
    if resume:
        if not (run_dir / "last.pt").is_file() or not _prepared_in(out_dir).is_dir():
            raise CheckpointError(f"run {name!r} has no interrupted training to resume (no {run_dir / 'last.pt'} "
                                  f"or {_prepared_in(out_dir)}); start it without --resume")
    elif existing and not force:
        raise PurchasePredError(f"run {name!r} exists ({', '.join(map(str, existing))}); pass --force to replace it "
                                "or choose another --run-name")
    elif existing:
        for folder in existing:
            shutil.rmtree(folder)
    created_here = not resume
    # the roots (checkpoints/, output/) this call creates go too when it fails: one chain per folder,
    # as make_parents would list them, for fileio.remove_empty
    roots = [[p for p in reversed(folder.parents) if not p.exists()] for folder in (run_dir, out_dir)]
    try:
        return _run_all(cfg, list(raw or []), name, rows, resume, run_dir, out_dir, hooks, refit)
    except Interrupted as stop:
        stop.command = resume_command
        raise
    except KeyboardInterrupt:
        if created_here and (run_dir / "last.pt").is_file():
            raise Interrupted(f"run {name!r} was interrupted; its checkpoints are kept", resume_command) from None
        _remove_if(created_here, roots, run_dir, out_dir)
        raise
    except PurchasePredError as err:
        _remove_if(created_here, roots, run_dir, out_dir)
        if created_here:  # its prepared folder is gone: the message names the input and the `run` flag instead
            raise type(err)(_for_run(str(err), _prepared_in(out_dir), raw)) from err
        raise
    except BaseException:
        _remove_if(created_here, roots, run_dir, out_dir)  # a failed run leaves nothing behind
        raise


def _for_run(message: str, prepared: Path, raw: list[str] | None) -> str:
    message = message.replace(str(prepared), f"the data prepared from {', '.join(raw) if raw else 'the demo log'}")
    return message.replace("prepare again with", "run again with").replace("prepare with", "run again with")


def _remove_if(created_here: bool, roots: list[list[Path]], *folders: Path) -> None:
    if created_here:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        for chain in roots:
            remove_empty(chain)  # only the empty ones, deepest first


def _run_all(cfg: Config, inputs: list[str], name: str, rows: int, resume: bool, run_dir: Path, out_dir: Path,
             hooks: Hooks, refit: bool = True) -> RunSummary:
    from purchasepred.data.synth import generate

    prepared = _prepared_in(out_dir)
    prep: PrepareSummary | None = None
    if not resume:
        out_dir.mkdir(parents=True)
        if not inputs:
            hooks.stage("synth demo data")
            demo = out_dir / "demo_events.csv"
            generate(demo, rows=rows, views_per_purchase=60.0, days=30, seed=cfg.train.seed)
            inputs = [str(demo)]
        hooks.stage("prepare")
        prep = prepare(inputs, prepared, cfg.prepare, force=False, need_buyers_in=("valid", "test"),
                       input_cfg=cfg.input,  # run scores test
                       step=hooks.now, step_progress=lambda name, percent: hooks.now(f"{name} {percent:3.0f}%"))
        n_items = prep.manifest["n_items"]
        if n_items < cfg.export.k:  # export would refuse it, after training: say so now
            raise DatasetError(f"{prepared} has {n_items} items with an id, fewer than the {cfg.export.k} recommendations "
                               f"per user of export.k; use a longer log, --min-item-count 1, or --set export.k={max(n_items, 1)}")
    cfg.train.data = str(prepared)
    meta = read_metadata(run_dir) if (run_dir / "metadata.json").is_file() else {}
    hooks.stage("train")
    if resume and (meta.get("epochs_done", 0) >= cfg.train.epochs or meta.get("early_stopped_at") is not None):
        summary = _finished_training(name, run_dir, out_dir, meta)
    else:
        summary = train_run(cfg, name, resume=resume, hooks=hooks)
    if summary.interrupted:
        raise Interrupted(f"training of run {name!r} was interrupted; checkpoint saved", "")
    refits: list[RefitSummary] = []
    if refit:
        meta = read_metadata(run_dir)
        current = meta.get("refits", {})
        missing = tuple(split for split in ("test", "all")
                        if current.get(split, {}).get("source", {}).get("sha256") != source_sha256(meta))
        if missing:  # a resumed run keeps the refits it already made from the same model
            refits = refit_run(cfg, name, hooks, splits=missing)
    hooks.stage("evaluate")
    evaluation = evaluate_run(cfg, name, "test", cfg.eval.k, hooks=hooks)
    hooks.stage("export")
    exported = export_run(cfg, name, hooks=hooks)
    result = evaluation.result
    k0 = result["k"][0]
    recorded = read_metadata(run_dir).get("refits", {}) if refit else {}
    body = {
        "run": name, "inputs": inputs, "prepared": str(prepared),
        "rows_read": prep.manifest["rows_read"] if prep else None,
        "rows_rejected": prep.manifest["rows_rejected"] if prep else None,
        "epochs_done": summary.epochs_done, "best_valid_ndcg@10": summary.best_valid_ndcg10,
        "train_seconds": summary.seconds, "tokens_per_s": summary.tokens_per_s,
        "refit_seconds": {split: recorded[split]["seconds"] for split in ("test", "all") if split in recorded} or None,
        "test_model": result["model_checkpoint"], "export_model": exported.model_checkpoint,
        "test": {r: (result["baselines"][r] if r in result["baselines"] else result[r])[f"ndcg@{k0}"]
                 for r in ("popularity", "history", "tifu_knn", "model", "blend", "propensity", "two_stage")},
        "default": result["default"], "metrics": str(evaluation.path), "recommendations": str(exported.path),
    }
    hooks.stage("report")
    from purchasepred.report.build import build_report

    body["report"] = str(out_dir / "report.html")
    path = out_dir / "run_summary.json"
    write_json(path, body)
    report = build_report(cfg, [name]).path
    return RunSummary(name, inputs, prep, summary, evaluation, exported, path, report, body, refits)


def _finished_training(name: str, run_dir: Path, out_dir: Path, meta: dict[str, Any]) -> TrainSummary:
    """The summary of a run whose training had already finished (a resumed `run` goes straight on)."""
    history = meta.get("epochs", [])
    best = run_dir / "best.pt"
    return TrainSummary(
        run_name=name, run_dir=run_dir, output_dir=out_dir, epochs_done=meta.get("epochs_done", 0),
        best_epoch=meta.get("best_epoch"), best_valid_ndcg10=meta.get("best_valid_ndcg@10"),
        seconds=float(meta.get("timings", {}).get("total_s", 0.0)),
        tokens_per_s=float(sum(h["tokens_per_s"] for h in history) / len(history)) if history else 0.0,
        checkpoint=best if best.is_file() else run_dir / "last.pt", history=history,
        notes=["training had already finished; evaluating and exporting"],
    )
