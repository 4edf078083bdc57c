"""Locate the SQL files and configs both in a source checkout and in an installed wheel.

The wheel carries ``sql/`` and ``configs/`` inside the package (``purchasepred/sql``); a source
checkout or editable install keeps them at the repository root.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_PKG = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PKG / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"purchasepred is installed without its {name}/ folder (looked in {_PKG})")


def sql_dir() -> Path:
    return _find("sql")


def configs_dir() -> Path:
    return _find("configs")


_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def named_queries(filename: str) -> dict[str, str]:
    """Split an aiosql-style file of ``sql/`` into ``{name: query}`` on ``-- name: x`` lines."""
    return split_named((sql_dir() / filename).read_text())


def split_named(text: str) -> dict[str, str]:
    """``{name: query}`` of an aiosql-style text (what comes before the first ``-- name:`` is its header)."""
    parts = _NAME.split(text)
    return {parts[i]: parts[i + 1].strip().rstrip(";") for i in range(1, len(parts), 2)}


def define_ids(con: Any) -> None:
    """Define the id macros of ``sql/ids.sql`` (pad_id(), first_id(), purchase_id(), ...) on ``con``."""
    con.execute((sql_dir() / "ids.sql").read_text())


def quiet_progress(con: Any) -> None:
    """DuckDB's progress tracked on ``con`` but not drawn (see :func:`connect`)."""
    con.execute("set enable_progress_bar = true")
    con.execute("set enable_progress_bar_print = false")


def connect() -> Any:
    """An in-memory DuckDB connection as this package opens them all: DuckDB's progress tracked (its
    ``query_progress``, which prepare's steps report) but never drawn (DuckDB draws a bar on stdout for
    any statement over 2 s when called from a script; commands show their steps through rich, library
    calls print nothing), and with the id macros."""
    import duckdb

    con = duckdb.connect(":memory:")
    quiet_progress(con)
    define_ids(con)
    return con
