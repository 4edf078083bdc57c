"""Files the package writes: hashing, atomic writes, strict JSON, output paths.

The lowest layer: imports nothing of the package but ``errors``, and never torch. Every file a
command produces goes through :func:`atomic_path` (temporary name beside the target, flushed, then
renamed), so a killed or failing command leaves the previous file or nothing, never half a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from purchasepred.errors import PurchasePredError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder`` (0 when it does not exist); a file removed while it is
    walked (a spill file DuckDB dropped meanwhile) counts as 0."""
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def tmp_path(path: Path) -> Path:
    """The hidden temporary name beside ``path`` that this process writes before renaming."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path`` is
    untouched. The caller writes the temporary path however it likes (a CSV writer, torch.save,
    gzip) and may check it before the block ends."""
    tmp = tmp_path(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _strict(obj: Any) -> Any:
    """NaN/inf -> null, numpy scalars/arrays -> Python, anything else unknown -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, tensors
        return _strict(obj.tolist())
    return str(obj)


def to_json(obj: Any) -> str:
    """Strict JSON (RFC 8259): what jq, JavaScript and Go parse; NaN becomes null."""
    return json.dumps(_strict(obj), indent=2, allow_nan=False)


def write_json(path: Path, obj: Any, next_step: str = "free disk space or choose a writable --set train.output_dir") -> None:
    """Create the folder, then write ``obj`` as strict JSON atomically (one red line on failure)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, to_json(obj))
    except OSError as err:
        raise PurchasePredError(f"could not write {path} ({err.strerror or err}); {next_step}") from None


def check_new_output(path: Path, force: bool, flag: str = "--out") -> None:
    """The one rule for a file a command is about to write: a directory is refused, an existing
    file needs --force, and the folder it goes into must be creatable and writable."""
    if path.is_dir():
        raise PurchasePredError(f"{flag} {path} is a directory; give a file path such as {path / 'out.csv'}")
    if path.exists() and not force:
        raise PurchasePredError(f"{path} already exists; pass --force to overwrite it or choose another {flag}")
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise PurchasePredError(f"cannot create folder {path.parent} ({parent} is a file, not a folder); choose a writable {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PurchasePredError(f"folder {parent} is not writable; choose another {flag} or fix its permissions")


def make_parents(path: Path) -> list[Path]:
    """Create the folders above ``path``; returns those created (for :func:`remove_empty`)."""
    missing = [p for p in reversed(path.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker is not None else (err.strerror or str(err))
        raise PurchasePredError(f"cannot create folder {path.parent} ({why}); choose another path") from None
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove folders made by :func:`make_parents`, deepest first, as long as they are empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            break
