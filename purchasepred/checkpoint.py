"""Run folders and checkpoints.

``checkpoints/<run>/`` holds ``last.pt``, ``best.pt`` (model, optimizer, schedule step, RNG states,
epoch, step, config, vocabulary, dataset hash), ``config.yaml`` and ``metadata.json`` (versions,
git commit, dataset hash, per-epoch metrics, timings, and the sha256 of each checkpoint file).
Checkpoints are written to a temporary file, flushed and renamed, and loaded only with
``torch.load(weights_only=True)``: a checkpoint holding a pickled object is refused, never run.

A checkpoint file and metadata.json cannot be replaced in one step, so a checkpoint is committed
in three: stage (write and hash a temporary file), record its hash in metadata.json under
``checkpoints_pending``, rename it into place; the trainer then records it under ``checkpoints``.
A loader accepts either hash, so a process killed at any instant leaves a run that loads and resumes.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from purchasepred import __version__
from purchasepred.errors import CheckpointError
from purchasepred.fileio import atomic_write_text, sha256_file, tmp_path, to_json

FORMAT_VERSION = 1


def stage_checkpoint(path: Path, payload: dict[str, Any]) -> tuple[Path, str]:
    """Write ``payload`` to a flushed temporary file beside ``path``; returns (temporary file, sha256).

    Nothing is replaced yet: :func:`commit_checkpoint` renames the file into place."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp, sha256_file(tmp)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            next_step = ("the previous checkpoint is kept. Free disk space or fix permissions, then rerun with --resume"
                         if path.is_file() else
                         "no checkpoint of this run was saved yet. Free disk space or fix permissions, then run the "
                         "same command again")
            raise CheckpointError(f"could not write checkpoint {path} ({err.strerror or err}); {next_step}") from None
        raise


def commit_checkpoint(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write checkpoint {path} ({err.strerror or err}); the previous checkpoint is kept. "
            "Fix the folder's permissions, then rerun with --resume"
        ) from None


def accepted_sha256(metadata: dict[str, Any], name: str) -> set[str] | None:
    """The hashes metadata.json accepts for checkpoint ``name`` (None: it records none)."""
    found = {metadata.get("checkpoints", {}).get(name), metadata.get("checkpoints_pending", {}).get(name)}
    found.discard(None)
    return found or None


def load_checkpoint(path: Path, expected_sha256: str | Collection[str] | None = None) -> dict[str, Any]:
    """Load with weights_only=True after checking the sha256 recorded in metadata.json."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train the run first (purchasepred train --run-name ...)")
    if isinstance(expected_sha256, str):
        expected_sha256 = {expected_sha256}
    if expected_sha256 is not None and sha256_file(path) not in expected_sha256:
        raise CheckpointError(
            f"checkpoint {path} does not match the sha256 recorded in metadata.json (truncated or modified); "
            "use the other checkpoint of the run or train again"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means: not a safe checkpoint of ours
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely ({first[:200]}); it is corrupt or holds objects other "
            "than tensors and plain values, and is refused"
        ) from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a purchasepred checkpoint of format {FORMAT_VERSION}; train again")
    return payload


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    import duckdb
    import numpy

    return {
        "purchasepred": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "duckdb": duckdb.__version__,
        "numpy": numpy.__version__,
    }


def read_metadata(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metadata.json"
    if not path.is_file():
        raise CheckpointError(f"run folder {run_dir} has no metadata.json; it is not a finished purchasepred run")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None


def write_metadata(run_dir: Path, metadata: dict[str, Any]) -> None:
    try:
        atomic_write_text(run_dir / "metadata.json", to_json(metadata))
    except OSError as err:
        raise CheckpointError(
            f"could not write {run_dir / 'metadata.json'} ({err.strerror or err}); the previous one is kept. "
            "Free disk space or fix permissions, then rerun with --resume"
        ) from None
