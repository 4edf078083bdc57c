"""Creating output folders so that a failed command can leave nothing behind."""

from __future__ import annotations

from pathlib import Path

from purchasepred.errors import PurchasePredError


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
