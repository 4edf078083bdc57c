"""`prepare`: run the SQL files of ``sql/`` in a fixed order on one DuckDB connection.

raw files -> raw_input/raw_rejects -> rejects/loaded -> clean -> sessionized -> vocabularies ->
events -> windows/truth -> sequences/train_sequences, then audits (queries that must return no
rows), then Parquet tables and ``manifest.json`` in a temporary folder renamed into place only
when complete. Values reach SQL as DuckDB variables (``set variable x = ?``), never as SQL text.
"""

from __future__ import annotations

import hashlib
import json
from glob import escape as glob_escape
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb

from purchasepred import __version__
from purchasepred.config import PrepareConfig
from purchasepred.data.inputs import (
    InputFile, _canonical, _schema, check_path, duckdb_literal, expand, inspect_csv, is_parquet,
)
from purchasepred.data.windows import Choice, choose, item_warnings
from purchasepred.errors import DatasetError, InputError, PurchasePredError
from purchasepred.resources import named_queries, sql_dir
from purchasepred.fileio import sha256_file, to_json

SCHEMA_VERSION = 1

# The run order. A test checks that it names every .sql file present.
STEPS: list[tuple[str, str]] = [
    ("setup", "00_setup.sql"),
    ("load", "01_load_csv.sql"),  # run once per CSV input; 01_load_parquet.sql per Parquet input
    ("validate", "02_validate.sql"),
    ("clean", "03_clean.sql"),
    ("sessionize", "04_sessionize.sql"),
    ("vocab", "05_vocab.sql"),
    ("encode", "06_encode.sql"),
    ("split", "07_split.sql"),
    ("sequences", "08_sequences.sql"),
]
LOAD_PARQUET = "01_load_parquet.sql"
QUERY_FILES = ("audits.sql", "stats.sql", "windows.sql")

OUTPUT_TABLES = (
    "events", "users", "items", "brands", "categories", "windows", "truth",
    "sequences", "train_sequences", "rejects",
)



@dataclass
class PrepareSummary:
    out: Path
    manifest: dict[str, Any]
    seconds: float
    audits: dict[str, int] = field(default_factory=dict)


def sql_hashes() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(sql_dir().glob("*.sql"))}


def _set(con: duckdb.DuckDBPyConnection, name: str, value: Any) -> None:
    # the variable name is one of ours (a literal in this module), the value is bound
    con.execute(f"set variable {name} = ?", [value])


def _rows(con: duckdb.DuckDBPyConnection, query: str) -> list[dict[str, Any]]:
    cur = con.execute(query)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]


def _inspect(paths: list[Path], con: duckdb.DuckDBPyConnection) -> list[InputFile]:
    files = []
    for path in paths:
        check_path(path)
        if is_parquet(path):
            _set(con, "input_path", str(path))
            _set(con, "input_glob", duckdb_literal(path))
            try:
                names = [r["column_name"] for r in _rows(con, named_queries("stats.sql")["parquet_columns"])]
            except duckdb.Error as err:
                raise InputError(f"{path}: not a readable Parquet file ({_first_line(err)})") from None
            columns = tuple(_canonical(n) for n in names)
            files.append(InputFile(path, "parquet", _schema(columns, names, path), columns, path.stat().st_size))
        else:
            files.append(inspect_csv(path))
    return files


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is an existing file; choose a folder path for the prepared dataset")
    if out.exists():
        if not force:
            raise InputError(f"--out {out} already exists; pass --force to replace it or choose another folder")
        if any(out.iterdir()) and not (out / "manifest.json").is_file():
            raise InputError(f"--out {out} is a non-empty folder that is not a prepared dataset; refusing to replace it even with --force")


def prepare(
    raw: list[str],
    out: Path,
    cfg: PrepareConfig,
    force: bool = False,
    step: Callable[[str], None] | None = None,
    now: datetime | None = None,
    need_buyers_in: tuple[str, ...] = (),
) -> PrepareSummary:
    """Prepare a dataset folder from raw event files. Library entry point (no printing).

    ``need_buyers_in``: windows ("valid", "test") that a given --eval-days must leave with buyers who
    have earlier events, else InputError (see :func:`purchasepred.data.windows.choose`)."""
    t0 = time.perf_counter()
    step = step or (lambda name: None)
    out = Path(out)
    _check_out(out, force)
    paths = expand(raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_folders(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            hashes = pool.submit(lambda: {str(p): sha256_file(p) for p in paths if p.is_file()})
            manifest, audits = _run(paths, tmp, cfg, step, now or datetime.now(timezone.utc), need_buyers_in)
            digests = hashes.result()
        manifest["inputs"] = [
            {"path": str(p), "size": p.stat().st_size, "sha256": digests[str(p)]} for p in paths
        ]
        manifest["content_hash"] = _content_hash(manifest)
        manifest["duration_s"] = round(time.perf_counter() - t0, 3)
        (tmp / "manifest.json").write_text(to_json(manifest))
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareSummary(out=out, manifest=manifest, seconds=time.perf_counter() - t0, audits=audits)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_work_folders(out: Path) -> None:
    """Remove hidden work folders ('.OUT.tmp-PID', '.OUT.old-PID') of prepare runs that were killed."""
    for folder in out.parent.glob(f".{glob_escape(out.name)}.*-*"):
        kind, _, pid = folder.name[len(out.name) + 2:].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and folder.is_dir() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _content_hash(manifest: dict[str, Any]) -> str:
    """Hash of what defines the dataset (inputs, settings, SQL, counts), not of when it was made."""
    keep = {k: v for k, v in manifest.items() if k not in ("duration_s", "created_at", "content_hash")}
    keep["inputs"] = [{"sha256": i["sha256"], "size": i["size"]} for i in manifest.get("inputs", [])]
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _run(
    paths: list[Path], tmp: Path, cfg: PrepareConfig, step: Callable[[str], None], now: datetime,
    need_buyers_in: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict[str, int]]:
    # an in-memory database (faster than a file) that still spills to tmp/spill under memory_limit
    con = duckdb.connect(":memory:")
    try:
        con.execute("set TimeZone = 'UTC'")
        _set(con, "temp_dir", str(tmp / "spill"))
        con.execute("set temp_directory = getvariable('temp_dir')")
        if cfg.memory_limit:
            _set(con, "memory_limit", cfg.memory_limit)
            try:
                con.execute("set memory_limit = getvariable('memory_limit')")
            except duckdb.Error as err:
                raise InputError(f"--memory-limit {cfg.memory_limit!r} is not a size DuckDB understands ({_first_line(err)}); use e.g. 2GB") from None
        if cfg.threads:
            _set(con, "threads", cfg.threads)
            con.execute("set threads = getvariable('threads')")
        con.execute("set preserve_insertion_order = true")

        step("inspect inputs")
        files = _inspect(paths, con)
        _set(con, "session_gap_seconds", float(cfg.session_gap_minutes) * 60.0)
        _set(con, "min_item_count", int(cfg.min_item_count))
        _set(con, "max_len", int(cfg.max_len))
        _set(con, "min_event_at", datetime(2000, 1, 1))
        _set(con, "max_event_at", (now + timedelta(days=1)).replace(tzinfo=None))

        sql = {name: (sql_dir() / name).read_text() for _, name in STEPS}
        sql[LOAD_PARQUET] = (sql_dir() / LOAD_PARQUET).read_text()
        for name, filename in STEPS:
            if name == "load":
                for f in files:
                    step(f"load {f.path.name}")
                    _load_one(con, f, sql)
                n_loaded = con.execute("select count(*) from raw_input").fetchone()[0]
                if n_loaded == 0 and con.execute("select count(*) from raw_rejects").fetchone()[0] == 0:
                    raise InputError(f"{', '.join(map(str, paths))}: no event rows could be read")
                continue
            step(name)
            if name == "split":  # windows.py picks (auto) or checks the window length 07_split.sql uses
                choice = choose(con, cfg.eval_days, need_buyers_in, ", ".join(map(str, paths)))
                cfg = replace(cfg, eval_days=choice.days)
                _set(con, "eval_seconds", float(choice.days) * 86400.0)
            try:
                con.execute(sql[filename])
            except duckdb.Error as err:
                raise PurchasePredError(
                    f"prepare step {filename} failed: {_first_line(err)}; if memory ran out, lower --threads or set --memory-limit"
                ) from None
            if name == "validate":
                _check_some_valid(con, paths)

        step("audits")
        audits = {name: len(con.execute(q).fetchall()) for name, q in named_queries("audits.sql").items()}
        failed = {k: v for k, v in audits.items() if v}
        if failed:
            raise DatasetError(f"prepared data failed audits {failed}; this is a bug, please report it with the input")

        step("write tables")
        for table in OUTPUT_TABLES:
            # row groups of ~64 MB: the writer buffers one per thread, and list columns are wide
            con.table(table).write_parquet(str(tmp / f"{table}.parquet"), compression="snappy", row_group_size_bytes="64MB")
        manifest = _manifest(con, files, cfg, choice)
    finally:
        con.close()
    shutil.rmtree(tmp / "spill", ignore_errors=True)
    return manifest, audits


def _load_one(con: duckdb.DuckDBPyConnection, f: InputFile, sql: dict[str, str]) -> None:
    _set(con, "input_path", str(f.path))
    _set(con, "input_glob", duckdb_literal(f.path))  # the reader opens exactly this file
    try:
        if f.format == "parquet":
            con.execute(sql[LOAD_PARQUET])
        else:
            extra = 0
            columns = {}
            for name in f.columns:
                if name in columns or not name:
                    extra += 1
                    name = f"extra_column_{extra}"
                columns[name] = "VARCHAR"
            _set(con, "input_columns", columns)
            con.execute(sql["01_load_csv.sql"])
    except duckdb.Error as err:
        raise InputError(f"{f.path}: could not be read ({_first_line(err)}); check that it is a complete, uncorrupted file") from None


def _check_some_valid(con: duckdb.DuckDBPyConnection, paths: list[Path]) -> None:
    n_valid = con.execute("select count(*) from loaded").fetchone()[0]
    if n_valid:
        return
    reasons = _rows(con, named_queries("stats.sql")["rejects_by_reason"])
    shown = ", ".join(f"{r['reason']} {r['n']}" for r in reasons[:4])
    first = con.execute("select file_path, line, reason from rejects order by file_path, line limit 1").fetchone()
    where = f"; first at {first[0]} line {first[1]}: {first[2]}" if first else ""
    raise InputError(
        f"{', '.join(map(str, paths))}: no valid rows (rejected: {shown}){where}; fix the input or check its schema"
    )


def _manifest(con: duckdb.DuckDBPyConnection, files: list[InputFile], cfg: PrepareConfig, choice: Choice) -> dict[str, Any]:
    q = named_queries("stats.sql")
    counts = _rows(con, q["counts"])[0]
    rejects = {r["reason"]: int(r["n"]) for r in _rows(con, q["rejects_by_reason"])}
    by_type = {r["event_type"]: int(r["n"]) for r in _rows(con, q["events_by_type"])}
    windows = {r.pop("split"): r for r in _rows(con, q["windows"])}
    n_purchase = by_type.get("purchase", 0)
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{k: (int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in counts.items()},
        "rejects_by_reason": rejects,
        "events_by_type": by_type,
        "views_per_purchase": round(by_type.get("view", 0) / n_purchase, 2) if n_purchase else None,
        "windows": windows,
        "max_len": cfg.max_len,
        "settings": {
            "session_gap_minutes": cfg.session_gap_minutes,
            "min_item_count": cfg.min_item_count,
            "eval_days": cfg.eval_days,
            "max_len": cfg.max_len,
        },
        "eval_days_choice": choice.to_dict(),
        "input_schemas": sorted({f.schema for f in files}),
        "sql_sha256": sql_hashes(),
        "tables": {t: f"{t}.parquet" for t in OUTPUT_TABLES},
    }
    manifest["warnings"] = choice.warnings + item_warnings(manifest, cfg.min_item_count)
    assert manifest["rows_read"] == manifest["rows_kept"] + manifest["rows_rejected"] + manifest["rows_duplicate"], manifest
    return manifest


def load_manifest(data: Path) -> dict[str, Any]:
    """Read a prepared dataset's manifest, or explain what to run."""
    data = Path(data)
    path = data / "manifest.json"
    if not data.exists():
        raise DatasetError(f"prepared dataset {data} does not exist; run `purchasepred prepare RAW.csv --out {data}` first")
    if not path.is_file():
        raise DatasetError(f"{data} is not a prepared dataset (no manifest.json); run `purchasepred prepare RAW.csv --out {data}`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON ({err}); prepare the dataset again") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(
            f"{data} was prepared with schema_version {manifest.get('schema_version')}, this purchasepred expects "
            f"{SCHEMA_VERSION}; prepare it again with this version"
        )
    missing = [t for t in OUTPUT_TABLES if not (data / f"{t}.parquet").is_file()]
    if missing:
        raise DatasetError(f"{data} is incomplete (missing {', '.join(missing)}.parquet); prepare it again")
    return manifest
