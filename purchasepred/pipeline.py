"""Library entry points behind `evaluate`, `export` and `run` (usable without Typer)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from purchasepred.config import Config
from purchasepred.data.tensors import PreparedData
from purchasepred.errors import CheckpointError
from purchasepred.eval.evaluate import ValidFit, evaluate, fit_on_valid
from purchasepred.export.recommend import ExportSummary, export
from purchasepred.fileio import check_new_output, write_json
from purchasepred.train.checkpoint import read_metadata
from purchasepred.runs import load_model, pick_device, run_paths


@dataclass
class LoadedRun:
    name: str
    run_dir: Path
    out_dir: Path
    data: PreparedData
    model: torch.nn.Module
    device: torch.device
    meta: dict[str, Any]


def load_run(cfg: Config, run: str, data: Path | None = None) -> LoadedRun:
    run_dir, out_dir = run_paths(cfg, run)
    if not run_dir.is_dir():
        raise CheckpointError(
            f"run {run!r} does not exist in {run_dir.parent}/; train it first: purchasepred train --run-name {run}"
        )
    meta = read_metadata(run_dir) if (run_dir / "metadata.json").is_file() else {}
    data_path = Path(data) if data else Path(meta.get("dataset", {}).get("path", cfg.train.data))
    dataset = PreparedData(data_path)
    device = pick_device(cfg.train.device)
    which = "best" if (run_dir / "best.pt").is_file() else "last"
    model, _, meta = load_model(run_dir, which, dataset, device)
    return LoadedRun(run, run_dir, out_dir, dataset, model, device, meta)


def fitted_for(run: LoadedRun, cfg: Config, log: Callable[[str], None] | None = None) -> ValidFit:
    """The valid-window fit of a run, cached in output/<run>/ranker.json (refit when stale)."""
    path = run.out_dir / "ranker.json"
    sha = run.meta.get("checkpoints", {}).get("best.pt") or run.meta.get("checkpoints", {}).get("last.pt")
    if path.is_file():
        try:
            fitted = ValidFit.from_dict(json.loads(path.read_text()))
            if fitted.dataset_hash == run.data.manifest["content_hash"] and fitted.checkpoint_sha256 == sha:
                return fitted
        except (KeyError, TypeError, json.JSONDecodeError):
            pass
    if log:
        log("fitting history weights, blend weight and calibration on the valid window")
    fitted, _ = fit_on_valid(run.data, cfg, run.model, run.device, sha)
    write_json(path, fitted.to_dict())
    return fitted


def evaluate_run(cfg: Config, run: str, split: str = "test", ks: list[int] | None = None, data: Path | None = None,
                 log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], Path]:
    loaded = load_run(cfg, run, data)
    fitted = fitted_for(loaded, cfg, log)
    result = evaluate(loaded.data, cfg, loaded.model, loaded.device, split, ks or cfg.eval.k, fitted, log)
    result["run"] = run
    result["dataset"] = {"path": str(loaded.data.path), "content_hash": loaded.data.manifest["content_hash"]}
    path = loaded.out_dir / "metrics.json"
    write_json(path, result)
    return result, path


def export_run(cfg: Config, run: str, out: Path | None = None, k: int | None = None, filter_seen: bool | None = None,
               force: bool = False, data: Path | None = None, log: Callable[[str], None] | None = None,
               progress: Callable[[int, int], None] | None = None) -> ExportSummary:
    loaded = load_run(cfg, run, data)
    target = Path(out) if out else loaded.out_dir / "recommendations.csv"
    check_new_output(target, force)  # before the valid-window fit, which can take minutes on big data
    fitted = fitted_for(loaded, cfg, log)
    return export(loaded.data, cfg, loaded.model, loaded.device, fitted, target, k or cfg.export.k,
                  cfg.export.filter_seen if filter_seen is None else filter_seen, force, progress)


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    write_json(path, summary)
