"""Run folders: names, paths, the latest run, the device, and loading a trained model.

``checkpoints/<run>/`` holds what training writes (``last.pt``, ``best.pt``, ``config.yaml``,
``metadata.json``); ``output/<run>/`` what evaluate, export and report write. Everything that
finds, names or opens a run lives here, so train, evaluate, export and pipeline agree on it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from purchasepred.config import Config, config_from_dict
from purchasepred.features import Vocab
from purchasepred.data.tensors import PreparedData
from purchasepred.errors import CheckpointError, ConfigError
from purchasepred.models.transformer import TransformerRecommender
from purchasepred import checkpoint as ckpt


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for but MPS is not available; use --device auto or cpu")
    return torch.device(name)


def check_run_name(run_name: str) -> str:
    """A run name is one folder name: it cannot reach outside checkpoints/ and output/."""
    if not run_name or run_name in (".", "..") or any(c in run_name for c in ("/", "\\", "\0")):
        raise ConfigError(
            f"run name {run_name!r} must be a plain folder name (no '/' or '\\', not '.' or '..'); "
            "choose e.g. --run-name exp1"
        )
    return run_name


def run_paths(cfg: Config, run_name: str) -> tuple[Path, Path]:
    check_run_name(run_name)
    return Path(cfg.train.checkpoints_dir) / run_name, Path(cfg.train.output_dir) / run_name


def load_model(run_dir: Path, which: str = "best", data: PreparedData | None = None,
               device: torch.device | None = None) -> tuple[TransformerRecommender, Config, dict[str, Any]]:
    """Load a trained model for evaluation/export (weights-only, sha256-checked)."""
    if not run_dir.is_dir():
        raise CheckpointError(f"run {run_dir.name} does not exist in {run_dir.parent}; "
                              f"train it first: purchasepred train --run-name {run_dir.name}")
    meta = ckpt.read_metadata(run_dir)
    name = f"{which}.pt"
    payload = ckpt.load_checkpoint(run_dir / name, ckpt.accepted_sha256(meta, name))
    cfg = config_from_dict(payload["config"])
    vocab = Vocab(**payload["vocab"])
    if data is not None:
        if payload["dataset_hash"] != data.manifest["content_hash"] or asdict(data.vocab) != payload["vocab"]:
            raise CheckpointError(
                f"run {run_dir.name} was trained on another dataset than {data.path} (manifest hash or vocabulary differ); "
                f"pass --data with the dataset it was trained on ({meta.get('dataset', {}).get('path')})"
            )
    model = TransformerRecommender(cfg.model, vocab, int(payload["max_len"]))
    model.load_state_dict(payload["model"])
    model.to(device or torch.device("cpu")).eval()
    return model, cfg, meta


def latest_run(cfg: Config) -> tuple[str, str]:
    """(name, when) of the most recently trained run in ``checkpoints/`` (by metadata.json)."""
    root = Path(cfg.train.checkpoints_dir)
    runs = sorted((p for p in root.glob("*/metadata.json") if p.is_file()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise CheckpointError(
            f"no trained run in {root}/; train one first: purchasepred train --purchase-weight 100 "
            "(or name one with --run)"
        )
    meta = ckpt.read_metadata(runs[-1].parent)
    return runs[-1].parent.name, str(meta.get("updated_at") or meta.get("created_at") or "at an unknown time")
