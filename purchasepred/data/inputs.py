"""Find and check raw input files before DuckDB reads them.

Each problem becomes one :class:`InputError` line naming the file and what to do.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from purchasepred.errors import InputError

REQUIRED = ("event_time", "event_type", "product_id", "user_id")
OPTIONAL = ("category_id", "category_code", "brand", "price", "user_session")
ITEM_ALIASES = {"item_id": "product_id"}
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv.gz", ".gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class InputFile:
    path: Path
    format: Literal["csv", "parquet"]
    schema: Literal["rees46", "competition"]
    columns: tuple[str, ...]
    """Canonical, lower-cased column names in file order (extra columns keep their own names)."""
    size: int


def expand(raw: list[str]) -> list[Path]:
    """Paths and globs -> existing files, in the order given (globs sorted)."""
    if not raw:
        raise InputError("no input given; pass one or more CSV/Parquet files or globs, e.g. purchasepred prepare 'logs/2019-*.csv.gz'")
    out: list[Path] = []
    for item in raw:
        if any(ch in item for ch in "*?[") and not Path(item).exists():
            matches = sorted(glob.glob(item))
            if not matches:
                raise InputError(f"{item}: the pattern matches no file; check the path")
            out.extend(Path(m) for m in matches)
        else:
            out.append(Path(item))
    seen: set[Path] = set()
    unique = []
    for p in out:
        rp = p.resolve()
        if rp not in seen:
            seen.add(rp)
            unique.append(p)
    return unique


def _open_text_head(path: Path, n_bytes: int = 1 << 16) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read(n_bytes)
        with open(path, "rb") as fh:
            return fh.read(n_bytes)
    except (OSError, EOFError, zlib.error) as err:
        raise InputError(f"{path}: not a readable gzip file ({err}); re-download or re-compress it") from None


def _canonical(name: str) -> str:
    name = name.strip().strip('"').strip().lower()
    return ITEM_ALIASES.get(name, name)


def _schema(columns: tuple[str, ...], raw_names: list[str], path: Path) -> Literal["rees46", "competition"]:
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        shown = ["product_id (or item_id)" if c == "product_id" else c for c in missing]
        raise InputError(
            f"{path}: header lacks required column(s) {', '.join(shown)}; found {', '.join(raw_names) or 'nothing'}. "
            "Expected the REES46 header event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
        )
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise InputError(f"{path}: header names column(s) {', '.join(dupes)} more than once; keep one of each")
    return "competition" if "item_id" in [n.strip().strip('"').lower() for n in raw_names] else "rees46"


def inspect_csv(path: Path) -> InputFile:
    head = _open_text_head(path)
    if not head.strip():
        raise InputError(f"{path}: the file is empty; pass a CSV with a header and event rows")
    if b"\x00" in head:
        raise InputError(f"{path}: binary data, not a CSV text file (NUL bytes); pass a .csv, .csv.gz or .parquet event log")
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    first, _, rest = head.partition(b"\n")
    try:
        header_line = first.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        raise InputError(f"{path}: the header is not UTF-8 text; is this a CSV event log?") from None
    raw_names = next(csv.reader(io.StringIO(header_line)), [])
    columns = tuple(_canonical(n) for n in raw_names)
    schema = _schema(columns, raw_names, path)
    if not rest.strip(b"\r\n\t "):
        raise InputError(f"{path}: has a header but no event rows; pass a log with data")
    return InputFile(path=path, format="csv", schema=schema, columns=columns, size=path.stat().st_size)


def check_path(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path (globs must be quoted)")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; pass the CSV/Parquet files inside it, e.g. '{path}/*.csv'")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty; pass a CSV with a header and event rows")


def duckdb_literal(path: Path | str) -> str:
    """``path`` for DuckDB's file readers, which expand ``*``, ``?`` and ``[...]`` as glob patterns even in
    the name of an existing file: each is wrapped in brackets (``a[1].csv`` -> ``a[[]1].csv``), so the
    reader opens exactly this file and never another one that the pattern happens to match."""
    return re.sub(r"([\[*?])", r"[\1]", str(path))


def is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(PARQUET_SUFFIXES)
