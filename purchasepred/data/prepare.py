"""`prepare`: run the SQL files of ``sql/`` in a fixed order on one DuckDB connection.

raw files (typed and validated as they are read, through the input mapping) -> staged/raw_rejects ->
rejects -> clean -> sessionized -> vocabularies -> events (the sequence store) -> windows/truth,
then audits (queries that must return no rows), then Parquet tables and ``manifest.json`` in a
temporary folder renamed into place only when complete. Values reach SQL as DuckDB variables
(``set variable x = ?``), never as SQL text; the mapping's column names are bound too (the CSV
reader's column struct) or quoted by DuckDB's own expression API (Parquet). Each step's seconds and
rows go into the manifest's ``steps``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from glob import escape as glob_escape
import os
import shutil
import sys
import threading
import time
import zlib
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from purchasepred import __version__
from purchasepred.config import InputConfig, PrepareConfig
from purchasepred.data.inputs import (
    NULL_LIKE, OTHER_DELIMITERS, InputFile, check_input_config, check_path, duckdb_literal, expand, file_configs,
    guess_time_format, inspect_csv, inspect_json, inspect_parquet, is_json, is_parquet, null_values_hint, quoted, reject_hint,
    csv_rewrite_hint, open_bytes, rewrite_hint, setting,
)
from purchasepred.errors import DatasetError, InputError, PurchasePredError
from purchasepred.resources import connect, named_queries, quiet_progress, split_named, sql_dir
from purchasepred.fileio import folder_bytes, to_json

# (numpy, and the modules that import it, are imported where they are used: numpy by LineCounts' thread,
# beside DuckDB's setup and load, instead of on a command's single-threaded start, where its 0.14 s
# import kept the second core idle; see LineCounts)
if TYPE_CHECKING:
    from purchasepred.data.windows import Choice

# 2: no sequences / train_sequences tables. The events table, in (user_idx, seq) order, is the sequence
# store; the loader cuts window inputs and training chunks (for any cutoff) from it (data/sequences.py).
# 3: events has no next_* columns (next event, purchase and cart): the loader finds them from the
# rows (data/sequences.next_rows), which costs less than prepare's joins, sort and storage. And a
# user's events at the same time, of the same type and item, in different sessions are ordered by the
# sessions' md5 instead of their text (04_sessionize.sql sorts on codes and hashes, not on text).
# 4: rejects has a value column, the text of the field a line failed on (the manifest's reject_examples
# and the hints read it); no other table changed.
# 5: sessions are stored as DuckDB's 64-bit hash() of their text instead of their 128-bit md5 (10x cheaper
# to take: 0.6 s of the 8M-row load), so a user's events at the same time, of the same type and item,
# in different sessions are ordered by that hash; the manifest records session_hash_check.
# 6: events store the item's item_code (items has it beside the product_id) instead of its product_id,
# and no ts (the loader takes it from event_at: read.sql): writing the text ids and ts was a third of
# encode's 2 s at 8M rows. items has the column item_code.
# 7: events store no hour_id, weekday_id (the loader takes them from event_at: read.sql) and no
# is_session_start (a user's session starts where its session_no changes; the manifest's n_sessions is
# counted by sessionize): each column cost about 0.15 CPU-s of encode's Parquet write at 8M rows.
SCHEMA_VERSION = 7
# the text whose DuckDB hash() the manifest records (session_hash_check)
SESSION_HASH_PROBE = "purchasepred session"

# manifest keys that measure a run rather than define the dataset: left out of content_hash
RUN_KEYS = ("duration_s", "created_at", "content_hash", "steps", "memory_limit", "spill_bytes")

# The run order. A test checks that it names every .sql file present.
STEPS: list[tuple[str, str]] = [
    ("setup", "00_setup.sql"),
    ("load", "01_load_csv.sql"),  # run once per CSV input; 01_load_parquet.sql per Parquet input, 01_load_json.sql per JSON lines
    ("validate", "02_validate.sql"),
    ("clean", "03_clean.sql"),
    ("sessionize", "04_sessionize.sql"),
    ("vocab", "05_vocab.sql"),
    ("encode", "06_encode.sql"),
    ("split", "07_split.sql"),
]
LOAD_PARQUET = "01_load_parquet.sql"
LOAD_JSON = "01_load_json.sql"
QUERY_FILES = ("audits.sql", "stats.sql", "windows.sql", "exact_order.sql", "exact_keys.sql")

OUTPUT_TABLES = ("events", "users", "items", "brands", "categories", "windows", "truth", "rejects")
# outputs that their step writes itself (06_encode.sql's events: _encode), not the step "write tables"
WRITTEN_BY_STEPS = ("events",)
# Intermediate tables that no step after the named one reads: dropped when it is done (the manifest's
# counts of them taken first), so that the sorts and joins after it have the memory, and the spill
# folder, to themselves. A table in OUTPUT_TABLES is kept (the golden tests write the intermediate ones).
DONE_WITH = {"sessionize": ("staged", "item_attrs", "item_hash_codes"), "vocab": ("attr_counts", "shard_users", "shard_attr_counts"),
             "encode": ("user_keys", "item_keys"), "split": ("sessionized", "attr_codes")}
DROP = {table: f"drop table {table}" for tables in DONE_WITH.values() for table in tables}  # our names, not input
# Columns of a table that no step after the named one reads, dropped when it is done (as DONE_WITH; kept
# where the table is an output): after clean, staged's item and attribute texts (item_text, item_lens: sessionize joins on
# item_hash) and the rejected and ignored records' texts (validate has read them, and ignored_by_value is
# counted before the drop: _count_and_drop). At 8M rows DuckDB's in-memory
# tables then hold 0.49 GB less while sessionize sorts (1.28 -> 0.79 GB for staged): less to spill.
DONE_WITH_COLUMNS = {"clean": ("staged", ("item_text", "item_lens", "raw", "value"))}
DROP_COLUMN = {(table, column): f"alter table {table} drop column {column}"  # our names, not input
               for table, columns in DONE_WITH_COLUMNS.values() for column in columns}
# 04_sessionize.sql packs an event's type and item code into one 4-byte sort key: item codes stay below this
MAX_ITEMS = 1 << 30



def _rss_bytes() -> int | None:
    """This process's resident memory now (Linux's /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _Sampler:
    """A daemon thread that calls ``sample()`` every ``every`` seconds, from ``_start_sampling`` (called
    by a subclass once its state is set) until ``close``."""

    def __init__(self, every: float, name: str) -> None:
        self._every = every
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _start_sampling(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self.sample()

    def sample(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class StepPeaks(_Sampler):
    """The peak resident memory and spill (bytes in the spill folder) of the step that runs, sampled
    every ``every`` seconds by a thread; ``take`` hands them over at the end of a step and starts
    again for the next one."""

    def __init__(self, spill: Path, every: float = 0.1) -> None:
        super().__init__(every, "purchasepred-step-peaks")
        self._spill = spill
        self._rss: int | None = None
        self._spilled = 0
        self._start_sampling()

    def sample(self) -> None:
        rss, spilled = _rss_bytes(), folder_bytes(self._spill)
        with self._lock:
            if rss is not None:
                self._rss = max(self._rss or 0, rss)
            self._spilled = max(self._spilled, spilled)

    def take(self) -> tuple[int | None, int]:
        """(peak resident bytes or None, peak spill bytes) since the last take."""
        self.sample()
        with self._lock:
            peaks = (self._rss, self._spilled)
            self._rss, self._spilled = None, 0
        return peaks


class StepProgress(_Sampler):
    """How far the running step is: DuckDB's own estimate for the query each watched connection runs
    (``query_progress``, 0-100; -1 when a connection runs none), read by a thread every ``every``
    seconds and handed to ``report(step, percent)`` whenever it has grown by a whole point. Watched are
    the long queries: a file's load, sessionize's pass over its shards, encode's write, each watched
    (``watch``) where it runs, and each statement of a step of several (clean, vocab, split), as
    ``part`` (i, n) of the step: the i-th of n equal shares (0-based), so that the step's percent
    grows through them. Several connections (the shards) count as the mean of the highest value each has shown.
    Reports name the step they measure and come from that thread; none comes after ``close``, nor
    after a report that raised (a caller's callback, the display: it ends the reports, never the
    prepare)."""

    def __init__(self, report: Callable[[str, float], None], every: float = 0.5) -> None:
        super().__init__(every, "purchasepred-step-progress")
        self._report: Callable[[str, float], None] | None = report
        self._name: str | None = None
        self._conns: list[duckdb.DuckDBPyConnection] = []
        self._seen: list[float] = []  # per connection: the highest progress it has shown, -1 before any
        self._part = (0, 1)
        self._last = 0.0
        self._start_sampling()

    def start(self, name: str) -> None:
        """From now on, step ``name`` runs, with nothing watched yet."""
        with self._lock:
            self._name = name
            self._watch([])

    def watch(self, conns: list[duckdb.DuckDBPyConnection], part: tuple[int, int] = (0, 1)) -> None:
        """Measure the current step on ``conns``, from where ``part`` starts (0 for a step of one long
        query; sessionize's second, exact-order pass over its shards counts from 0 again); ``[]`` when its
        long query is done."""
        with self._lock:
            self._watch(conns, part)

    def _watch(self, conns: list[duckdb.DuckDBPyConnection], part: tuple[int, int] = (0, 1)) -> None:
        self._conns, self._seen, self._part = list(conns), [-1.0] * len(conns), part
        if part[0] == 0:  # (a later part goes on from the last report: its start is news when that lagged)
            self._last = 0.0

    def sample(self) -> None:
        with self._lock:
            if self._name is None or not self._conns or self._report is None:
                return
            for i, con in enumerate(self._conns):
                try:
                    self._seen[i] = max(self._seen[i], float(con.query_progress()))
                except duckdb.Error:  # a shard's connection, closed when the shards are done
                    pass
            done, parts = self._part
            percent = min(100.0, (100.0 * done + sum(max(v, 0.0) for v in self._seen) / len(self._seen)) / parts)
            if percent >= self._last + 1:
                self._last = percent
                try:
                    self._report(self._name, percent)
                except Exception:  # noqa: BLE001 (see the class: no more reports)
                    self._report = None

    def close(self) -> None:
        super().close()
        with self._lock:
            self._name = None


@dataclass
class StepTimes:
    """Seconds, output rows, peak memory and spill of each step, in run order (dbt's run results, for
    prepare)."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    spill_bytes: int = 0
    peaks: StepPeaks | None = None

    def record(self, name: str, seconds: float, rows: int | None, con: duckdb.DuckDBPyConnection | None = None) -> None:
        rss, spilled = self.peaks.take() if self.peaks is not None else (None, 0)
        if con is not None:
            now = con.execute("select coalesce(sum(size), 0) from duckdb_temporary_files()").fetchone()[0]
            spilled = max(spilled, int(now))
        self.spill_bytes = max(self.spill_bytes, spilled)
        self.steps.append({"step": name, "seconds": round(seconds, 3), "rows": rows,
                           "peak_rss_mb": None if rss is None else round(rss / 2**20),
                           "spill_mb": round(spilled / 2**20)})


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
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _inspect(paths: list[Path], con: duckdb.DuckDBPyConnection, icfg: InputConfig) -> list[InputFile]:
    """Every file's mapping (the input keys overlaid with its input.files entry), checked before any work:
    a missing column, an unmapped field or an entry that matches no file is an error."""
    files = []
    for path, (file_cfg, entry) in zip(paths, file_configs(icfg, paths), strict=True):
        check_path(path)
        label = entry.label if entry else None
        if is_parquet(path):
            try:
                rel = con.read_parquet(duckdb_literal(path))
                columns = list(zip(rel.columns, rel.types, strict=True))
            except duckdb.Error as err:
                raise InputError(f"{path}: not a readable Parquet file ({_first_line(err)})") from None
            files.append(inspect_parquet(path, file_cfg, label, columns))
        elif is_json(path):
            files.append(inspect_json(path, file_cfg, label, partial(_find_json_keys, con)))
        else:
            files.append(inspect_csv(path, file_cfg, label))
    return files


def _find_json_keys(con: duckdb.DuckDBPyConnection, path: Path, encoding: str,
                    candidates: dict[str, list[str]]) -> dict[str, str]:
    """(JSON lines) for each name, the first of its candidate JSON paths that some record of ``path`` has:
    one scan of the whole file (inputs.inspect_json calls it only for a column its head lacks)."""
    flat = [(name, json_path) for name, json_paths in candidates.items() for json_path in json_paths]
    _set(con, "input_glob", duckdb_literal(path))
    _set(con, "input_encoding", encoding)
    _set(con, "json_paths", [json_path for _, json_path in flat])
    with _reading_file(path, encoding, "json"):
        hits = [r[0] for r in con.execute(named_queries("stats.sql")["json_keys_found"]).fetchall()]
    found: dict[str, str] = {}
    for i in hits:
        found.setdefault(*flat[i - 1])
    return found


def _set_time_range(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
    """The event times a load accepts (00_setup.sql's reject_reason): from 2000 to a day after ``now``."""
    _set(con, "min_event_at", datetime(2000, 1, 1))
    _set(con, "max_event_at", (now + timedelta(days=1)).replace(tzinfo=None))


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
    input_cfg: InputConfig | None = None,
    step_progress: Callable[[str, float], None] | None = None,
) -> PrepareSummary:
    """Prepare a dataset folder from raw event files. Library entry point (no printing).

    ``step(name)`` is called as each step starts; ``step_progress(name, percent)``, from a thread of
    its own, as the long steps (loading a file, sessionize, encode) move on (see StepProgress).

    ``need_buyers_in``: windows ("valid", "test") that a given --eval-days must leave with buyers who
    have earlier events, else InputError (see :func:`purchasepred.data.windows.choose`).
    ``input_cfg`` maps a store's own columns and event values (default: the REES46 forms, told apart
    by their header)."""
    t0 = time.perf_counter()
    step = step or (lambda name: None)
    input_cfg = input_cfg or InputConfig()
    out = Path(out)
    check_input_config(input_cfg)
    _check_out(out, force)
    paths = expand(raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_folders(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        hashes = InputHashes(paths)
        try:
            manifest, audits = _run(paths, tmp, cfg, input_cfg, step, now or datetime.now(timezone.utc), need_buyers_in,
                                    step_progress)
            digests = hashes.finish()
        finally:
            hashes.close()
        for entry in manifest["inputs"]:  # (the run's rows of each file, with its size and digest)
            entry.update(size=Path(entry["path"]).stat().st_size, sha256=digests[entry["path"]])
        manifest["content_hash"] = _content_hash(manifest)
        manifest["duration_s"] = round(time.perf_counter() - t0, 3)
        (tmp / "manifest.json").write_text(to_json(manifest))
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareSummary(out=out, manifest=manifest, seconds=time.perf_counter() - t0, audits=audits)


class LineCounts:
    """The lines of each CSV file to load (line feeds, + 1 when the last line has none), counted in a
    thread of its own beside the load: an uncompressed UTF-8 or latin-1 file at 0.3 s of CPU per GB
    (numpy; bytes.count took 0.5 s for the counting alone); a compressed one costs its decompression
    more (gzip about 2.7 s per GB of text in Python's zlib, zstd less); UTF-16 counts 16-bit units. See
    reread_short_groups. Blocks of 256 KB, which stay in the CPU's cache between the read and the count:
    the 1,076 MB synth log 0.29-0.35 CPU-s against 0.36-0.43 in 4 MB blocks."""

    BLOCK = 1 << 18

    def __init__(self, files: list[InputFile]) -> None:
        self._todo = [(f.path, f.mapping.encoding == "utf-16") for f in files
                      if f.format == "csv" and f.mapping.encoding in ("utf-8", "latin-1", "utf-16")]
        self._lines: dict[str, int] = {}
        self._thread = threading.Thread(target=self._count_all, name="purchasepred-input-lines", daemon=True)
        self._thread.start()

    def _count_all(self) -> None:
        import numpy  # noqa: F401 (here, while the main thread sets up and loads: see the import note at the top)

        for path, wide in self._todo:
            try:
                self._lines[str(path)] = self._count(path, 2 if wide else 1)
            except Exception:  # (a file that cannot be read again is not counted; the load says why)
                continue

    @classmethod
    def _count(cls, path: Path, width: int) -> int:
        """The line feeds of ``path``'s text in units of ``width`` bytes (2: UTF-16, little-endian, as
        prepare refuses big-endian), + 1 when the last unit is not one; a block's odd byte is carried over."""
        import numpy as np

        unit, newline = (np.uint8, b"\n") if width == 1 else (np.dtype("<u2"), b"\n\x00")
        n, last, carry, buf = 0, newline, b"", bytearray(cls.BLOCK)
        with open_bytes(path) as fh:
            while k := fh.readinto(buf):
                chunk = carry + buf[:k] if carry else memoryview(buf)[:k]
                whole = len(chunk) - len(chunk) % width
                carry = bytes(chunk[whole:])
                if whole:
                    n += int(np.count_nonzero(np.frombuffer(chunk, unit, whole // width) == 10))
                    last = bytes(chunk[whole - width:whole])
        return n + (last != newline)

    def result(self) -> dict[str, int]:
        """The counts by path (waits for the thread); a file not counted is left out."""
        self._thread.join()
        return dict(self._lines)


def _rows_read(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """The records read from each file by path, the lines the reader could not split included."""
    return {r["file_path"]: int(r["n"]) for r in _rows(con, named_queries("stats.sql")["rows_read_by_file"])}


def _fewer_records(f: InputFile, rows: dict[str, int], lines: dict[str, int]) -> bool:
    """Whether ``f`` was counted (LineCounts) and read fewer records than its lines less its header."""
    return str(f.path) in lines and rows[str(f.path)] + int(f.mapping.header) < lines[str(f.path)]


def reread_short_groups(con: duckdb.DuckDBPyConnection, groups: list[tuple[int, list[InputFile]]],
                        lines: dict[str, int], sql: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    """Load again, on one thread of DuckDB's CSV reader, each group (load_groups) with a file that read
    fewer records (with the lines the reader could not split) than its lines less its header (_fewer_records);
    the warnings for the files that read more that way, and the records each file read in the end.

    DuckDB's parallel CSV reader (2.0.1, with rejects stored) can leave out every record from a line it
    cannot split to the end of the file, with no error and no reject, when that line starts a few bytes
    into one of its buffers (01_load_csv.sql's 16 MB; the file's last one). On one thread it reads the
    file whole. A quoted field over several lines and empty lines (the reader skips them) also make a
    file read fewer records than it has lines: such a group is loaded twice, to the same records.
    Compressed files are counted too, at the cost of a second decompression beside DuckDB's."""
    rows = _rows_read(con)
    warnings = []
    for first_no, group in groups:
        if not any(_fewer_records(f, rows, lines) for f in group):
            continue
        _unload(con, first_no, group)
        _load_group(con, first_no, group, sql, parallel=False)
        again = _rows_read(con)
        warnings += [f"{f.path}: DuckDB's parallel CSV reader (version {duckdb.__version__}) left out "
                     f"{again[str(f.path)] - rows[str(f.path)]:,} of its lines, from one it could not split on; prepare "
                     "read it again on one thread, and every line is in" for f in group if again[str(f.path)] > rows[str(f.path)]]
        rows = again
    return warnings, rows


def find_reject_lines(con: duckdb.DuckDBPyConnection, files: list[InputFile], lines: dict[str, int],
                      rows: dict[str, int]) -> list[str]:
    """The physical line of every rejected record of each counted file that has more lines than records
    (empty lines, quoted fields over several lines), into reject_lines for 02_validate.sql
    (data/csv_lines.py); the warning for a file whose records that pass cannot place, where the
    rejects' lines stay record numbers."""
    warnings = []
    for f in files:
        path = str(f.path)
        if not _fewer_records(f, rows, lines) or f.mapping.encoding == "utf-16":
            continue
        rejected = con.execute(named_queries("stats.sql")["rejected_records"], [path]).fetchall()
        if not rejected:
            continue
        from purchasepred.data.csv_lines import delimiter_byte, physical_lines

        found = physical_lines(f.path, int(f.mapping.header), rows[path], [n for structural, n in rejected if structural],
                               [n for structural, n in rejected if not structural],
                               delimiter_byte(f.mapping.delimiter, f.mapping.encoding))
        if found is None:
            warnings.append(f"{path}: the line of each of its rejects counts records, not lines: its lines could not be "
                            "matched to the records DuckDB read (a quote inside an unquoted field, as in 55\" tv, or one left "
                            "open), and after an empty line or a quoted field over several lines the numbers run behind "
                            "the file's lines")
            continue
        for structural, by in ((True, found.structural), (False, found.typed)):
            con.execute("insert into reject_lines select ?, ?, unnest(?::bigint[]), unnest(?::bigint[])",
                        [path, structural, list(by.keys()), list(by.values())])
    return warnings


class InputHashes:
    """The sha256 of each input file, for the manifest, taken beside the DuckDB work.

    A background thread hashes at the lowest CPU priority, so that it takes only CPU that DuckDB leaves
    idle (its single-threaded window passes, Python between steps). At normal priority it took CPU
    from every step: 8M rows on 2 cores, prepare took 13.5-14.6 s with the hash beside it, 12.2-13.3 s
    without it, 12.4-12.6 s with it at the lowest priority. ``finish`` stops the thread after its
    current block and hashes what is left in the calling thread, at normal priority, so that a machine
    kept busy by other work cannot starve the last part."""

    BLOCK = 1 << 20

    def __init__(self, paths: list[Path]) -> None:
        self._todo = [p for p in paths if p.is_file()]
        self._digests: dict[str, str] = {}
        self._current: tuple[Path, Any, Any] | None = None  # (path, open file, sha256 so far)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._background, name="purchasepred-input-sha256", daemon=True)
        self._thread.start()

    def _step(self) -> bool:
        """Hash the next block of the current file (opening the next file first); False when all are done."""
        with self._lock:
            if self._current is None:
                if not self._todo:
                    return False
                path = self._todo.pop(0)
                self._current = (path, open(path, "rb"), hashlib.sha256())
            path, fh, digest = self._current
            block = fh.read(self.BLOCK)
            if block:
                digest.update(block)
            else:
                fh.close()
                self._digests[str(path)] = digest.hexdigest()
                self._current = None
            return True

    def _background(self) -> None:
        _lowest_priority()
        try:
            while not self._stop.is_set() and self._step():
                pass
        except BaseException as err:  # raised again by finish(), in the caller's thread
            self._error = err

    def finish(self) -> dict[str, str]:
        """Every file's sha256 by path: what the thread has not hashed yet is hashed here."""
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        while self._step():
            pass
        return dict(self._digests)

    def close(self) -> None:
        """Stop the thread and close the file it had open (after a failure, or after finish)."""
        self._stop.set()
        self._thread.join()
        if self._current is not None:
            self._current[1].close()
            self._current = None


def _lowest_priority() -> None:
    """Nice this thread to 19 (Linux: a thread id names only that thread; elsewhere the call would
    name a process, so it is left alone). Best effort: a refusal only leaves the priority as it was."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass


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
    keep = {k: v for k, v in manifest.items() if k not in RUN_KEYS}
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


def memory_limit_bytes(limit: str) -> str:
    """'50%' -> that share of this machine's RAM (or of the cgroup's limit, if lower) as 'NNNMB';
    any other value is passed to DuckDB as it is."""
    text = str(limit).strip()
    if not text.endswith("%"):
        return text
    try:
        share = float(text[:-1]) / 100
    except ValueError:
        raise InputError(f"--memory-limit {limit!r} is not a share of RAM; use e.g. 50% or a size such as 2GB") from None
    if not 0 < share <= 1:
        raise InputError(f"--memory-limit {limit!r} must be a share between 0% and 100%; use e.g. 50%")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        cgroup = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if cgroup.isdigit():
            total = min(total, int(cgroup))
    except OSError:
        pass
    return f"{max(int(total * share) >> 20, 64)}MB"


def _spill_dir(tmp: Path, cfg: PrepareConfig) -> Path:
    if not cfg.temp_dir:
        return tmp / "spill"
    root = Path(cfg.temp_dir)
    if root.exists() and not root.is_dir():
        raise InputError(f"--temp-dir {root} is a file; pass a folder for DuckDB's spill files")
    return root / f"purchasepred-spill-{os.getpid()}"


def _run(
    paths: list[Path], tmp: Path, cfg: PrepareConfig, icfg: InputConfig, step: Callable[[str], None], now: datetime,
    need_buyers_in: tuple[str, ...] = (), step_progress: Callable[[str, float], None] | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
    # an in-memory database (faster than a file) that still spills to temp_dir under memory_limit
    con = connect()
    spill = _spill_dir(tmp, cfg)
    times = StepTimes(peaks=StepPeaks(spill))
    progress = StepProgress(step_progress or (lambda name, percent: None), PROGRESS_EVERY)
    memory_limit = None
    beside: EventAudits | None = None
    try:
        memory_limit = _configure(con, cfg, spill)

        step("inspect inputs")
        t = time.perf_counter()
        files = _inspect(paths, con, icfg)
        times.record("inspect inputs", time.perf_counter() - t, len(files))
        lines = LineCounts(files)  # (beside the load: reread_short_groups)
        _set(con, "session_gap_seconds", float(cfg.session_gap_minutes) * 60.0)
        _set(con, "min_item_count", int(cfg.min_item_count))
        _set_time_range(con, now)

        # (sessionize and encode run the named queries of their files: _sessionize, _encode)
        sql = {name: (sql_dir() / name).read_text() for step, name in STEPS if step not in ("sessionize", "encode")}
        sql.update({name: (sql_dir() / name).read_text() for name in (LOAD_PARQUET, LOAD_JSON)})
        before_drop: dict[str, Any] = {}
        for name, filename in STEPS:
            t = time.perf_counter()
            if name == "load":
                reread, before_drop["rows_read_by_file"] = _load_all(con, files, sql, lines, step, progress)
                n_staged = con.execute("select count(*) from staged").fetchone()[0]
                if n_staged == 0 and con.execute("select count(*) from raw_rejects").fetchone()[0] == 0:
                    raise InputError(f"{', '.join(map(str, paths))}: no event rows could be read")
                times.record(name, time.perf_counter() - t, n_staged, con)
                continue
            progress.start(name)  # (first, as for the load)
            step(name)
            if name == "split":  # windows.py picks (auto) or checks the window length 07_split.sql uses
                from purchasepred.data.windows import choose

                choice = choose(con, cfg.eval_days, need_buyers_in, ", ".join(map(str, paths)))
                cfg = replace(cfg, eval_days=choice.days)
                _set(con, "eval_seconds", float(choice.days) * 86400.0)
            _run_step(con, name, filename, sql, tmp, progress)
            if name == "clean":
                _check_item_count(con, paths)
                _exact_keys(con)
            times.record(name, time.perf_counter() - t, _step_rows(con, name), con)
            if name == "validate":
                _check_some_valid(con, paths, files)
            before_drop.update(_count_and_drop(con, name))
            if name == "encode":
                beside = EventAudits(con)  # (beside split: see EventAudits)

        audits = _audit_and_write(con, tmp, beside, times, step)
        manifest = _manifest(con, files, cfg, choice, before_drop)
        manifest["warnings"] = reread + manifest["warnings"]
    finally:
        if beside is not None:
            beside.close()
        progress.close()
        times.peaks.close()
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    manifest["steps"] = times.steps
    manifest["spill_bytes"] = times.spill_bytes
    manifest["memory_limit"] = memory_limit
    return manifest, audits


def _audit_and_write(con: duckdb.DuckDBPyConnection, tmp: Path, beside: EventAudits | None, times: StepTimes,
                     step: Callable[[str], None]) -> dict[str, int]:
    """The steps "audits" (_audit; DatasetError where one fails) and "write tables" (the output tables
    that no step wrote itself); the audits' counts."""
    step("audits")
    t = time.perf_counter()
    audits = _audit(con, tmp, beside)
    times.record("audits", time.perf_counter() - t, len(audits))
    failed = {k: v for k, v in audits.items() if v}
    if failed:
        raise DatasetError(f"prepared data failed audits {failed}; this is a bug, please report it with the input")

    step("write tables")
    t = time.perf_counter()
    written = [table for table in OUTPUT_TABLES if table not in WRITTEN_BY_STEPS]
    for table in written:
        _write_parquet(con, table, tmp / f"{table}.parquet")
    times.record("write tables", time.perf_counter() - t, len(written), con)
    return audits


def _load_all(con: duckdb.DuckDBPyConnection, files: list[InputFile], sql: dict[str, str], lines: LineCounts,
              step: Callable[[str], None], progress: StepProgress) -> tuple[list[str], dict[str, int]]:
    """The load step: every group of files (load_groups), each a step line of its own, then the groups
    the parallel reader cut short loaded again (reread_short_groups); the warnings, and the records each
    file read (with the lines the reader could not split): the manifest's rows_read of each input, as no
    later step adds or removes a row of staged or raw_rejects."""
    groups = load_groups(files)
    for file_no, group in groups:
        label = f"load {group[0].path.name}" + (f" .. {group[-1].path.name} ({len(group):,} files)" if len(group) > 1 else "")
        progress.start(label)  # (first: no report of the step before follows)
        step(label)
        progress.watch([con])
        _load_group(con, file_no, group, sql)
    counts = lines.result()
    warnings, rows = reread_short_groups(con, groups, counts, sql)
    return warnings + find_reject_lines(con, files, counts, rows), rows


# 04_sessionize.sql's query shard_counts groups each shard's kept events by user_idx (for users) and by
# attr_code (for attr_counts): dense integers, whose range DuckDB knows from sessionized's statistics. Up
# to 2^perfect_ht_threshold groups (DuckDB's default: 12 bits, 4,096), it aggregates into a table indexed
# by the value instead of a hash table: at 8M rows, users 0.23 -> 0.14 CPU-s and attr_counts 0.71 -> 0.57
# with the threshold raised to their 19 and 15 bits. The table holds every possible group's states (each
# thread of each query its own, initialized in full), so the threshold is raised only as far as such
# tables of PERFECT_GROUP_BYTES a group stay within PERFECT_GROUPS_BYTES for all threads of all the
# shards; beyond that DuckDB's hash aggregate runs as before.
PERFECT_GROUP_BYTES = 160  # (above the two aggregates' states: users' about 48 bytes, attr_counts' about 130)
PERFECT_GROUPS_BYTES = 256 << 20


@contextmanager
def _perfect_group_bys(con: duckdb.DuckDBPyConnection, parallel: int = 1) -> Iterator[None]:
    """perfect_ht_threshold raised on ``con``, for the duration, to the bits of the users and the item
    attributes that fit (see above), with ``parallel`` such queries at a time (the shards)."""
    threads = int(con.execute("select current_setting('threads')").fetchone()[0])
    counts = con.execute("select (select count(*) from user_keys), (select count(*) from attr_codes)").fetchone()
    # (n values and NULL: the bits DuckDB asks of a group column whose statistics span n values)
    bits = [b for b in ((int(n) + 1).bit_length() for n in counts)
            if (1 << b) * PERFECT_GROUP_BYTES * threads * parallel <= PERFECT_GROUPS_BYTES]
    before = int(con.execute("select current_setting('perfect_ht_threshold')").fetchone()[0])
    if not bits or max(bits) <= before:
        yield
        return
    _set(con, "perfect_ht_threshold", max(bits))
    con.execute("set perfect_ht_threshold = getvariable('perfect_ht_threshold')")
    try:
        yield
    finally:
        _set(con, "perfect_ht_threshold", before)
        con.execute("set perfect_ht_threshold = getvariable('perfect_ht_threshold')")


# audits.sql's queries that read only events.parquet, users and items: final once encode has written
# the events, so they run beside split (EventAudits)
EVENT_AUDITS = ("events_unique_key", "events_ids_in_range", "every_event_maps_back")


class EventAudits:
    """EVENT_AUDITS run on a connection of their own (a cursor) in a thread, started once encode is done,
    while the main connection runs split: short queries with parts on one thread (about 0.3 s at 8M rows
    on 1.2-1.4 cores of 2), which the audits' scans of events.parquet (0.3-0.4 s) fill. _audit runs the
    truth's audit on the main connection, then waits for these counts (the step "audits" shows that
    wait: 0.01-0.1 s at 8M, where the four audits took 0.3-0.4 s after split)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._cur = con.cursor()
        quiet_progress(self._cur)
        # (the view events reads the file a variable names, and variables are the connection's own)
        _set(self._cur, "events_file", con.execute("select getvariable('events_file')").fetchone()[0])
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="purchasepred-audits")
        self._future = self._pool.submit(self._count)

    def _count(self) -> dict[str, int]:
        queries = named_queries("audits.sql")
        return {name: len(self._cur.execute(queries[name]).fetchall()) for name in EVENT_AUDITS}

    def result(self) -> dict[str, int]:
        """The counts by audit (waits for the thread; raises its error)."""
        return self._future.result()

    def close(self) -> None:
        """Stop the query still running (after a failure or Ctrl-C), then close the connection."""
        if not self._future.done():
            self._cur.interrupt()
        self._pool.shutdown(wait=True)
        self._cur.close()


def _audit(con: duckdb.DuckDBPyConnection, tmp: Path, beside: EventAudits | None = None) -> dict[str, int]:
    """The rows each query of audits.sql returns (0 where it holds): those of ``beside`` from it, the
    others run here. Where events.parquet is out of
    order (events_unique_key fails), it is sorted once (06_encode.sql's sort_file) and the audits run
    again: encode writes the events from an ORDER BY, and a DuckDB whose Parquet writer did not keep
    that order should cost time, not a failed prepare. Duplicate keys, which a sort cannot mend, still
    fail."""
    queries = named_queries("audits.sql")
    own = {name: len(con.execute(q).fetchall()) for name, q in queries.items() if beside is None or name not in EVENT_AUDITS}
    done = beside.result() if beside is not None else {}
    audits = {name: own[name] if name in own else done[name] for name in queries}
    if audits["events_unique_key"]:
        con.execute(named_queries(dict(STEPS)["encode"])["sort_file"])
        sorted_file = tmp / "events.sorted.parquet"
        _write_parquet(con, "events_in_order", sorted_file)
        os.replace(sorted_file, tmp / "events.parquet")
        audits = {name: len(con.execute(q).fetchall()) for name, q in queries.items()}
    return audits


def _run_step(con: duckdb.DuckDBPyConnection, name: str, filename: str, sql: dict[str, str], tmp: Path,
              progress: StepProgress) -> None:
    """One step after the load: its SQL file (sessionize and encode through their own functions), a
    DuckDB error turned into one line that names the file."""
    try:
        if name == "sessionize":
            _sessionize(con, progress)
        elif name == "encode":
            _encode(con, tmp, progress)
        else:
            _run_statements(con, sql[filename], progress)
    except duckdb.Error as err:
        raise PurchasePredError(
            f"prepare step {filename} failed: {_first_line(err)}; if memory ran out, lower --threads or set --memory-limit"
        ) from None


def _run_statements(con: duckdb.DuckDBPyConnection, text: str, progress: StepProgress) -> None:
    """The statements of ``text`` one by one, each watched as its share of the step (StepProgress)."""
    # (the connection's own parser: duckdb.extract_statements would open DuckDB's default connection, a
    # second database, 0.03-0.04 s of every prepare's start)
    statements = con.extract_statements(text)
    try:
        for i, statement in enumerate(statements):
            progress.watch([con], (i, len(statements)))
            con.execute(statement)
    finally:
        progress.watch([])


def _configure(con: duckdb.DuckDBPyConnection, cfg: PrepareConfig, spill: Path) -> str | None:
    """UTC, the spill folder, the memory limit (returned as DuckDB reads it) and threads."""
    con.execute("set TimeZone = 'UTC'")
    _set(con, "temp_dir", str(spill))
    con.execute("set temp_directory = getvariable('temp_dir')")
    memory_limit = None
    if cfg.memory_limit:
        memory_limit = memory_limit_bytes(cfg.memory_limit)
        _set(con, "memory_limit", memory_limit)
        try:
            con.execute("set memory_limit = getvariable('memory_limit')")
        except duckdb.Error as err:
            raise InputError(f"--memory-limit {cfg.memory_limit!r} is not a size DuckDB understands ({_first_line(err)}); "
                             "use e.g. 2GB or 50%") from None
    if cfg.threads:
        _set(con, "threads", cfg.threads)
        con.execute("set threads = getvariable('threads')")
    con.execute("set preserve_insertion_order = true")
    return memory_limit


# what a step's line in the summary counts: the rows of the table it makes
_STEP_ROWS = {
    "validate": "select count(*) from rejects",
    "clean": "select (select count(*) from user_keys) + (select count(*) from item_keys)",
    "sessionize": "select count(*) from kept_events",
    "vocab": "select count(*) from items",
    "encode": "select count(*) from events",
    "split": "select count(*) from truth",
}


def _count_and_drop(con: duckdb.DuckDBPyConnection, step: str) -> dict[str, Any]:
    """After ``step``: the manifest's counts of the tables it is the last reader of, then those tables
    (DONE_WITH) and columns (DONE_WITH_COLUMNS) dropped, unless their table is an output."""
    stats = named_queries("stats.sql")
    counts: dict[str, Any] = {}
    if step == "clean":
        counts["ignored_by_value"] = {r["value"]: int(r["n"]) for r in _rows(con, stats["ignored_by_value"])}
    if step == "sessionize":
        counts.update(_rows(con, stats["counts_input"])[0])
        counts.update(_rows(con, stats["counts_clean"])[0])
    for table in DONE_WITH.get(step, ()):
        if table not in OUTPUT_TABLES:
            con.execute(DROP[table])
    if step in DONE_WITH_COLUMNS and DONE_WITH_COLUMNS[step][0] not in OUTPUT_TABLES:
        table, columns = DONE_WITH_COLUMNS[step]
        for column in columns:
            con.execute(DROP_COLUMN[table, column])
    return counts


def _step_rows(con: duckdb.DuckDBPyConnection, name: str) -> int | None:
    query = _STEP_ROWS.get(name)
    return None if query is None else int(con.execute(query).fetchone()[0])


# the most files one scan of the load reads (load_groups)
LOAD_GROUP_FILES = 1000


def load_groups(files: list[InputFile]) -> list[tuple[int, list[InputFile]]]:
    """``files`` in order, cut into the groups the load reads in one scan each, each with the number of
    its first file (files are numbered from 1, in order): consecutive files of one
    format and mapping (a log of many daily files), CSV and Parquet ones also of one header, JSON lines
    ones of the same mapped keys; at most LOAD_GROUP_FILES. A Parquet file with a column of its own
    named file_index (the reader's column that tells the files apart) loads alone. Each file costs about
    50 ms alone (its statements, its sample), a small part of that in a group."""
    def groups_with(f: InputFile, last: InputFile) -> bool:
        if f.format != last.format or f.mapping != last.mapping:
            return False
        if f.format == "json":  # (only the mapped keys are read, each line's text is its raw)
            return _mapped_json_paths(f) == _mapped_json_paths(last)
        # (a CSV file's columns are renamed as read: its own file_index is extra_column_N)
        return f.names == last.names and f.parquet_paths == last.parquet_paths and not (
            f.format == "parquet" and "file_index" in {n.lower() for n in f.names})

    groups: list[list[InputFile]] = []
    for f in files:
        last = groups[-1][-1] if groups else None
        if last is not None and groups_with(f, last) and len(groups[-1]) < LOAD_GROUP_FILES:
            groups[-1].append(f)
        else:
            groups.append([f])
    numbered, first = [], 1
    for group in groups:
        numbered.append((first, group))
        first += len(group)
    return numbered


def _mapped_json_paths(f: InputFile) -> list[tuple[str, str]]:
    """(JSON lines) each mapped column's canonical name and JSON path, in the file's order of keys."""
    canonical = {raw: canon for canon, raw in f.mapping.columns.items()}
    return [(canonical[raw], path) for raw, path in zip(f.names, f.json_paths, strict=True) if raw in canonical]


def _load_group(con: duckdb.DuckDBPyConnection, first_no: int, group: list[InputFile], sql: dict[str, str],
                parallel: bool = True) -> None:
    """Load ``group`` (load_groups) in one scan, its files numbered from ``first_no`` (CSV: read by
    DuckDB's reader on all threads, or on one: reread_short_groups). When the scan fails, what it stored
    is taken out and each file is loaded on its own, so that the error names it."""
    if len(group) == 1:
        with _reading(group[0]):
            _load_files(con, first_no, group, sql, parallel)
        return
    try:
        _load_files(con, first_no, group, sql, parallel)
    except duckdb.Error:
        _unload(con, first_no, group)
        for i, f in enumerate(group):
            _load_group(con, first_no + i, [f], sql, parallel)


def _unload(con: duckdb.DuckDBPyConnection, first_no: int, group: list[InputFile]) -> None:
    """Take out what a load of ``group`` (its files numbered from ``first_no``) stored."""
    con.execute("delete from staged where file_no between ? and ?", [first_no, first_no + len(group) - 1])
    con.execute("delete from raw_rejects where list_contains(?, file_path)", [[str(f.path) for f in group]])
    con.execute("delete from input_files where file_no between ? and ?", [first_no, first_no + len(group) - 1])
    # (the reader makes its reject tables when it first stores one)
    made = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
    if "load_reject_errors" in made:
        con.execute("delete from load_reject_errors")
    if "load_reject_scans" in made:
        con.execute("delete from load_reject_scans")


def _load_files(con: duckdb.DuckDBPyConnection, first_no: int, group: list[InputFile], sql: dict[str, str],
                parallel: bool = True) -> None:
    q = _open_records(con, first_no, group, sql, parallel)
    _check_sample(con, group[0])
    con.execute(q["load"])
    # each file's records are contiguous in staged, in file order: a file's first_row is its least rowid
    # (NULL for a file none of whose lines the reader could split); the files are the load's (input_paths,
    # numbered from input_file_no)
    header = 1 if group[0].mapping.header and group[0].format == "csv" else 0
    con.execute("""insert into input_files
        select getvariable('input_file_no') + i - 1 as file_no, getvariable('input_paths')[i] as file_path, ?, s.first_row
        from range(1, len(getvariable('input_paths')) + 1) as f(i)
        left join (select file_no, min(rowid) as first_row from staged where file_no >= getvariable('input_file_no')
                   group by file_no) as s
            on s.file_no = getvariable('input_file_no') + i - 1
        order by i""", [header])


@contextmanager
def _reading(f: InputFile) -> Iterator[None]:
    """A DuckDB error while reading ``f`` as one line that names the file."""
    with _reading_file(f.path, f.mapping.encoding, f.format, f.mapping.delimiter):
        yield


@contextmanager
def _reading_file(path: Path, encoding: str, fmt: str, delimiter: str = ",") -> Iterator[None]:
    try:
        yield
    except duckdb.Error as err:
        if encoding == "utf-16" and "utf-16" in str(err).lower():
            raise InputError(f"{path}: not valid UTF-16 throughout ({_first_line(err)}): DuckDB's reader stops at a "
                             "broken character and cannot say where; convert it with iconv -c -f UTF-16LE -t UTF-8 "
                             "(-c drops broken characters) and prepare the UTF-8 file") from None
        if fmt == "json" and "state machine reached an invalid state" in str(err):
            # (the reader's one failure on JSON lines, read without quotes: a line end unlike the others)
            fix = rewrite_hint(path, "sed 's/\\r$//'", "sed -i 's/\\r$//' {path}")
            raise InputError(f"{path}: could not be read: its lines do not all end alike (\\n in some, \\r\\n in others, "
                             f"or a stray \\r); make them one kind first, e.g. {fix}") from None
        if fmt == "csv" and encoding in ("utf-8", "latin-1") and "state machine reached an invalid state" in str(err):
            from purchasepred.data.csv_lines import delimiter_byte

            _raise_stray_line_end(path, delimiter_byte(delimiter, encoding))
        raise InputError(f"{path}: could not be read ({_first_line(err)}); check that it is a complete, uncorrupted file") from None


def _raise_stray_line_end(path: Path, delimiter: int) -> None:
    """InputError naming the first line whose end DuckDB's CSV reader stops at (data/csv_lines.py), where
    there is one (``delimiter``: the last byte of the file's): its own error names no line."""
    from purchasepred.data.csv_lines import stray_line_end

    try:
        with open_bytes(path) as fh:
            line = stray_line_end(fh, delimiter)
    except (OSError, EOFError, zlib.error):
        return
    if line is not None:
        fix, out = csv_rewrite_hint(path, "tr -d '\\r'")
        raise InputError(f"{path}: could not be read: line {line:,} ends otherwise than the first line (\\r\\n among \\n "
                         "or the reverse) or holds a carriage return (\\r) outside quotes, where DuckDB's CSV reader "
                         f"stops; make every line end in \\n first, e.g. {fix}, and prepare {out}") from None


def _open_records(con: duckdb.DuckDBPyConnection, file_no: int, group: list[InputFile], sql: dict[str, str],
                  parallel: bool = True) -> dict[str, str]:
    """The view ``input_records`` of the files of ``group`` (one, or CSV files of one mapping and header:
    load_groups) under their mapping (the parameters of the load set), and the named parts of its load
    file (the part "load" is still to run). ``parallel``: CSV read by DuckDB's reader on all threads."""
    f = group[0]
    m = f.mapping
    _set(con, "input_parallel", parallel)
    _set(con, "input_file_no", file_no)
    _set(con, "input_paths", [str(g.path) for g in group])
    # the reader opens exactly these files (CSV: a list, read in one scan)
    _set(con, "input_glob", [duckdb_literal(g.path) for g in group])
    one_scan = len(group) > 1
    _set(con, "time_format", m.time_format)
    _set(con, "input_time_zone", m.time_zone)
    _set(con, "null_values", list(m.null_values) or None)
    _set(con, "decimal_separator", m.decimal_separator)
    _set(con, "event_keys", list(m.events))
    # each key's event type id (00_setup.sql's mapped_event_id: 0 for ignored), and that of the one event of a
    # file without an event-type column (input.event), else NULL
    con.execute("set variable event_ids = list_transform(?::varchar[], lambda n: mapped_event_id(n))", [list(m.events.values())])
    con.execute("set variable input_event_id = mapped_event_id(?::varchar)", [m.event])
    # (JSON lines and Parquet hold empty texts, which clean_text reads as NULL; DuckDB's CSV reader never gives one)
    define_clean_text(con, empty_texts=f.format in ("json", "parquet"), null_values=bool(m.null_values))
    _set(con, "input_delimiter", m.delimiter)
    _set(con, "input_encoding", m.encoding)
    _set(con, "input_header", m.header)
    _set(con, "input_format", "json" if f.format == "json" else "csv")  # (the reader's reject reasons)
    # the file's columns in file order: mapped ones under their canonical name, the others extra_column_N
    canonical = {raw: canon for canon, raw in m.columns.items()}
    names = []
    for i, raw in enumerate(f.names, start=1):
        names.append(canonical.get(raw, f"extra_column_{i}"))
    _set(con, "input_names", names)
    if f.format == "parquet":
        rel = con.read_parquet([duckdb_literal(g.path) for g in group])
        rel.select(*[
            duckdb.ColumnExpression(*parts).cast(con.sqltype("VARCHAR")).alias(name)
            for parts, name in zip(f.parquet_paths, names, strict=True)
        ], *([duckdb.ColumnExpression("file_index")] if one_scan else [])).create_view("parquet_columns", replace=True)
        q = split_named(sql[LOAD_PARQUET])
    elif f.format == "json":
        # only the mapped keys are read: each line's (01_load_json.sql) under their canonical names; the
        # load is CSV's
        mapped = _mapped_json_paths(f)
        _set(con, "json_paths", [path for _, path in mapped])
        _set(con, "input_names", [name for name, _ in mapped])
        con.execute(split_named(sql[LOAD_JSON])["records"])
        con.table("json_fields").select(
            "record_problem", "record_text", "file_index",
            *[duckdb.SQLExpression(f"fields[{i}]").alias(name) for i, (name, _) in enumerate(mapped, start=1)],
        ).create_view("input_records", replace=True)
        return split_named(sql["01_load_csv.sql"])
    else:
        _set(con, "input_columns", {name: "VARCHAR" for name in names})
        q = split_named(sql["01_load_csv.sql"])
    con.execute(q["records"])
    return q


# 00_setup.sql's clean_text in each of its forms, by (empty texts read as NULL, the mapping lists null_values)
CLEAN_TEXT = {
    (False, False): "create or replace macro clean_text(t) as trimmed_text(t)",
    (True, False): "create or replace macro clean_text(t) as trimmed_nonempty_text(t)",
    (False, True): "create or replace macro clean_text(t) as not_listed_null(trimmed_text(t))",
    (True, True): "create or replace macro clean_text(t) as not_listed_null(trimmed_nonempty_text(t))",
}

# 00_setup.sql's attr_text in each of its forms, by (the mapping lists null_values)
ATTR_TEXT = {
    False: "create or replace macro attr_text(t) as t",
    True: "create or replace macro attr_text(t) as clean_text(t)",
}


def define_clean_text(con: duckdb.DuckDBPyConnection, empty_texts: bool, null_values: bool) -> None:
    """00_setup.sql's clean_text for one load: the form of it that fits the mapping (empty texts read as
    NULL, the mapping's null_values listed), chosen here so that no value tests a setting; and attr_text,
    the text as written where the mapping lists no null_values (03_clean.sql cleans it), else clean_text."""
    con.execute(CLEAN_TEXT[empty_texts, null_values])
    con.execute(ATTR_TEXT[null_values])


# records of each file checked before it is loaded (_check_sample)
SAMPLE_ROWS = 10_000


def _sample(con: duckdb.DuckDBPyConnection, f: InputFile, rows: int, null_like: bool = False) -> dict[str, Any]:
    """How the first ``rows`` records of ``f`` (its view input_records) fare under its mapping: records
    read, valid, ignored, each reject reason's count, commonest failing values and the hint that fixes
    it (inputs.reject_hint), and (CSV) the lines the reader could not split. The reader's rejects of
    these lines are cleared: a load stores them again. With ``null_like`` (prepare --check; a run warns
    from its tables instead: null_like_warnings), the values kept that read like "no value"."""
    stats = named_queries("stats.sql")
    _set(con, "sample_rows", rows)
    # (the first records read by one thread: 0.02 s, where the parallel reader's first read took 0.03-0.06 s
    # for the same 10,000, its second thread reading a buffer of its own meanwhile)
    parallel = con.execute("select getvariable('input_parallel')").fetchone()[0]
    _set(con, "input_parallel", False)
    try:
        by_reason = _rows(con, stats["sample_rejects"])
    finally:
        _set(con, "input_parallel", parallel)
    found = []
    if null_like:
        _set(con, "null_like", list(NULL_LIKE))
        found = _rows(con, stats["sample_null_like"])
    listed = (*f.mapping.null_values, *(r["value"] for r in found))  # (each suggestion lists them all)
    kept = [f"{r['field']} {quoted(r['value'])} in {int(r['n']):,} sampled record{'' if r['n'] == 1 else 's'} would be "
            + _null_like_advice(r["field"], r["value"], f.mapping.entry, listed) for r in found]
    counts = {r["reason"]: int(r["n"]) for r in by_reason}
    records = sum(counts.values())
    unreadable: dict[str, int] | None = {}
    if f.format != "parquet":
        # (the reader stores its rejects only when its scan reached the end: a sample cut short has none)
        found = {r["reason"]: int(r["n"]) for r in _rows(con, stats["sample_unreadable"])}
        unreadable = found if records < rows or found else None
        con.execute(stats["sample_reader_rejects_done"])
    con.execute(stats["sample_done"])
    return {
        "path": str(f.path), "format": f.format, "schema": f.mapping.schema, "mapping": f.mapping.to_dict(),
        "records": records, "valid": counts.get(None, 0), "ignored": counts.get("ignored", 0),
        "unreadable_lines": unreadable,
        "rejected": {r["reason"]: {"n": int(r["n"]), "examples": list(r["examples"]),
                                   "hint": reject_hint(r["reason"], list(r["examples"]), (f.mapping.time_format,),
                                                       f.mapping.entry, f.mapping.null_values)}
                     for r in by_reason if r["reason"] not in (None, "ignored")},
        "null_like": kept,  # (warnings: values kept that read like "no value")
    }


def _check_sample(con: duckdb.DuckDBPyConnection, f: InputFile) -> None:
    """Stop before loading a file whose first SAMPLE_ROWS records all fail because the mapping is wrong for
    the whole file, naming the key that fixes it: its times read with a format that fits none of them
    while another one fits all the examples, or its prices with a decimal comma. On a log of millions of
    rows the whole load would otherwise run first. Unmapped event values and broken times are left to
    the whole load (a log sorted by event type can start with 10,000 records of a type the store means
    to reject; one sorted by time with 10,000 zero dates), and so is a file shorter than the sample
    (no valid rows: one error after validate, as before)."""
    sample = _sample(con, f, SAMPLE_ROWS)
    rejected = sample["rejected"]
    if sample["records"] < SAMPLE_ROWS or len(rejected) != 1 or sample["records"] != sum(r["n"] for r in rejected.values()):
        return
    (reason, why), = rejected.items()
    # (a price hint is only ever the decimal comma; a time hint is also given when no format fits)
    whole_file = reason == "unparseable price" or (
        reason == "unparseable event_time" and guess_time_format(why["examples"]) is not None)
    if whole_file and why["hint"] is not None:
        raise InputError(f"{f.path}: no valid rows among its first {why['n']:,} (rejected: {reason} {why['n']:,}); "
                         f"stopped before loading the rest; {why['hint']}")


def check_inputs(raw: list[str], input_cfg: InputConfig | None = None, rows: int = SAMPLE_ROWS) -> list[dict[str, Any]]:
    """``prepare --check``: each input file's mapping and how its first ``rows`` records fare under it
    (see _sample), without preparing or writing anything: a mapping tried on a log of any size in a
    second or two; a run of files that prepare loads in one scan (load_groups) is one sample, of its
    first records ("files": how many, "last_path"). Mapping problems that need no data are the same
    one-line InputError as prepare's."""
    input_cfg = input_cfg or InputConfig()
    check_input_config(input_cfg)
    paths = expand(raw)
    con = connect()
    try:
        con.execute("set TimeZone = 'UTC'")
        files = _inspect(paths, con, input_cfg)
        _set_time_range(con, datetime.now(timezone.utc))
        con.execute((sql_dir() / dict(STEPS)["setup"]).read_text())
        sql = {name: (sql_dir() / name).read_text() for name in ("01_load_csv.sql", LOAD_PARQUET, LOAD_JSON)}
        out = []
        for file_no, group in load_groups(files):  # (as prepare loads them: a run of files of one mapping, one sample)
            with _reading(group[0]):
                _open_records(con, file_no, group, sql)
                out.append({**_sample(con, group[0], rows, null_like=True), "files": len(group),
                            "last_path": str(group[-1].path)})
        return out
    finally:
        con.close()


# seconds between two reads of DuckDB's progress while a step runs
PROGRESS_EVERY = 0.5

def _watch_nothing(conns: list[duckdb.DuckDBPyConnection]) -> None:
    """StepProgress.watch where no progress is reported (a direct call of a step's function)."""


# sessionize cuts the users into as many shards as DuckDB has threads, but no more than one per this
# many valid rows (a shard costs a connection and a thread, worth it only on enough rows)
MIN_SHARD_ROWS = 1_000_000


def _sessionize(con: duckdb.DuckDBPyConnection, progress: StepProgress | None = None) -> None:
    """04_sessionize.sql: its views and an empty ``sessionized`` once, then its query "shard" for each
    shard of users, side by side (see the file). Where the short sort key left two different events
    of a user tied, all again with the order by every column (exact_order.sql)."""
    q = named_queries(dict(STEPS)["sessionize"])
    shards = _user_shards(con)
    con.execute(q["define"])
    _run_shards(con, _sort_once(con, q, shards, progress), shards, progress, q["shard_counts"])
    if _short_key_left_ties(con):
        con.execute(q["define"])
        con.execute(named_queries("exact_order.sql")["exact_order"])
        _run_shards(con, _sort_once(con, q, shards, progress), shards, progress, q["shard_counts"])
    con.execute("drop table if exists sorted_all")


# sessionize sorts the events once for all shards (its query sort_once) when there are more shards than this
SORT_ONCE_SHARDS = 2


def _sort_once(con: duckdb.DuckDBPyConnection, q: dict[str, str], shards: list[tuple[str, str]],
               progress: StepProgress | None = None) -> str:
    """The query each shard runs: with more than SORT_ONCE_SHARDS shards, the events of all of them
    sorted first, once, by all threads (04_sessionize.sql's sort_once), and each shard's pass reads
    its range ("shard_of_sorted"); else each shard sorts its own events ("shard")."""
    if len(shards) <= SORT_ONCE_SHARDS:
        return q["shard"]
    _set(con, "shard_first_user_key", shards[0][0])
    _set(con, "shard_last_user_key", shards[-1][1])
    (progress.watch if progress is not None else _watch_nothing)([con])
    con.execute(q["sort_once"])
    return q["shard_of_sorted"]


def _encode(con: duckdb.DuckDBPyConnection, tmp: Path, progress: StepProgress | None = None) -> None:
    """06_encode.sql: its ordered view of the events written straight to events.parquet, then the view
    ``events`` over that file for the steps after it (a table of 7M events stored only to be written
    and scanned a few times cost 0.3-0.4 s more at 8M rows, and its memory)."""
    q = named_queries(dict(STEPS)["encode"])
    con.execute(q["define"])
    events_file = tmp / "events.parquet"
    watch = progress.watch if progress is not None else _watch_nothing
    watch([con])
    _write_parquet(con, "encoded_events", events_file)
    watch([])
    _set(con, "events_file", str(events_file))
    con.execute(q["events"])


def _write_parquet(con: duckdb.DuckDBPyConnection, source: str, path: Path) -> None:
    """The table or view ``source`` (our name, not input) to ``path``, in its order, in Parquet's format
    version 2 encodings (integers and times delta-coded) and without dictionary pages: the writer built a
    dictionary for each column chunk and gave most of them up. events.parquet at 8M rows: its write
    1.23 -> 0.92 s, 2.19 -> 1.66 CPU-s, the file 120 -> 92 MB, and a scan of it no slower (DuckDB, Arrow
    and Spark read these encodings). A row group holds at most 64 MB; written in order, each chunk of the
    source (about 123K events) is one."""
    con.execute("copy (from query_table(?)) to ? (format parquet, compression snappy, row_group_size_bytes '64MB', "
                "parquet_version v2, dictionary_size_limit 1)", [source, str(path)])


def _user_shards(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """The shards' (first, last) user keys: ranges of about as many users each, in key order."""
    threads = int(con.execute("select current_setting('threads')").fetchone()[0])
    n_valid = con.execute("select count(*) from staged where reject_reason is null").fetchone()[0]
    n = max(1, min(threads, n_valid // MIN_SHARD_ROWS))
    return [tuple(r) for r in con.execute(
        "select min(user_key), max(user_key) from (select user_key, ntile(?) over (order by user_code) as shard "
        "from user_keys) group by shard order by shard", [n]).fetchall()]


def _run_shards(con: duckdb.DuckDBPyConnection, query: str, shards: list[tuple[str, str]],
                progress: StepProgress | None = None, counts: str | None = None) -> None:
    """``query`` once per shard, then ``counts`` (where given, with _perfect_group_bys): on ``con`` itself
    for one shard, else each on a connection of its own to the same database (a cursor, with this
    connection's session settings and variables) in a thread of its own. The first shard's error (or
    Ctrl-C) interrupts the others and is raised here.

    ``counts`` runs in the shard's transaction, so it reads the shard's own rows: a shard that finishes
    first counts its rows on the core the other shards leave idle (04_sessionize.sql: shard_counts).

    Each thread that runs a query works on it beside DuckDB's ``threads - 1`` shared workers. Where
    ``threads`` is below the CPUs this process may use (--threads set as a cap), it is lowered by N - 1
    (at least 1) while N shards run, so that the cap holds. Where it is all of them (the default), it is
    left as it is: the workers take part in the shards' scans, joins and sorts, and DuckDB's relaunch of
    its threads at each change stalled prepare for 0.05-0.1 s. On this project's 2-core box at 8M rows,
    sessionize 3.43 -> 3.08 s median over six alternating rounds (prepare 12.76 -> 12.28 s), and 3.70 ->
    3.44 s over five more.

    Each shard's connection inserts in a transaction of its own, and they commit one after another in
    shard order, once all have run: a transaction's rows join the table when it commits, so the table
    holds the shards in user order, each in its own order, the same rows in the same order run to run
    (06_encode.sql sorts the events all the same: it joins their ids). A failed shard commits nothing."""
    session = con.execute(
        "select current_setting('TimeZone'), getvariable('session_gap_seconds'), current_setting('threads')").fetchone()
    threads = int(session[2])

    stop = threading.Event()
    watch = progress.watch if progress is not None else _watch_nothing

    def one(cur: duckdb.DuckDBPyConnection, first: str, last: str) -> None:
        if cur is not con:  # (committed below, in shard order)
            cur.execute("begin transaction")
        _shard_session(cur, session[0], session[1], first, last)
        if not stop.is_set():
            cur.execute(query)
        if counts is not None and not stop.is_set():
            with _perfect_group_bys(cur, len(shards)):
                cur.execute(counts)

    if len(shards) == 1:
        watch([con])
        try:
            one(con, *shards[0])
        finally:
            watch([])
        return
    cursors: list[duckdb.DuckDBPyConnection] = []
    lower = threads < available_cpus()
    if lower:
        _set(con, "shard_threads", max(1, threads - len(shards) + 1))
        con.execute("set threads = getvariable('shard_threads')")
    try:
        cursors = [con.cursor() for _ in shards]
        watch(cursors)
        with ThreadPoolExecutor(max_workers=len(shards)) as pool:
            futures = [pool.submit(one, cur, *shard) for cur, shard in zip(cursors, shards, strict=True)]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in futures:
                    if future in done and future.exception() is not None:
                        raise future.exception()
                for cur in cursors:
                    cur.execute("commit")
            except BaseException:
                stop.set()
                _interrupt_until_done(cursors, futures)
                raise
    finally:
        watch([])  # (before the cursors close: no sample reads a closing one)
        for cur in cursors:
            cur.close()
        if lower:
            _set(con, "shard_threads", threads)
            con.execute("set threads = getvariable('shard_threads')")


def _shard_session(cur: duckdb.DuckDBPyConnection, time_zone: str, gap_seconds: float, first: str, last: str) -> None:
    """A shard's connection as _run_shards runs it: DuckDB's progress not drawn, the session's time zone
    and session gap, and the shard's range of user keys."""
    quiet_progress(cur)
    _set(cur, "time_zone", time_zone)
    cur.execute("set TimeZone = getvariable('time_zone')")
    _set(cur, "session_gap_seconds", gap_seconds)
    _set(cur, "shard_first_user_key", first)
    _set(cur, "shard_last_user_key", last)


def _interrupt_until_done(cursors: list[duckdb.DuckDBPyConnection], futures: list[Any]) -> None:
    """Interrupt every cursor until every future is done: an interrupt reaches only a query already
    running, and a shard still setting up would start its query after it."""
    while True:
        for cur in cursors:
            cur.interrupt()
        if not wait(futures, timeout=0.05).not_done:
            return


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the platform tells it), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (macOS, Windows)
        return os.cpu_count() or 1


def _short_key_left_ties(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether 04_sessionize.sql's short sort key left two different events of a user in no fixed order."""
    return bool(con.execute("select bool_or(flags & 2 = 2) from sessionized").fetchone()[0])


def _exact_keys(con: duckdb.DuckDBPyConnection) -> bool:
    """Where two rows of 03_clean.sql's item_attrs share a hash, make its keys row numbers (exact_keys.sql),
    so that sessionize's join on them is the join on the text; whether it did."""
    q = named_queries("exact_keys.sql")
    if not any(con.execute(q["hash_collisions"]).fetchone()):
        return False
    con.execute(q["exact_keys"])
    return True


def _check_item_count(con: duckdb.DuckDBPyConnection, paths: list[Path]) -> None:
    n_items = con.execute("select count(*) from item_keys").fetchone()[0]
    if n_items >= MAX_ITEMS:
        raise InputError(f"{', '.join(map(str, paths))}: {n_items:,} distinct item ids, more than prepare handles "
                         f"({MAX_ITEMS - 1:,}); check that the item column is mapped to the item id")


def _check_some_valid(con: duckdb.DuckDBPyConnection, paths: list[Path], files: list[InputFile]) -> None:
    n_valid = con.execute("select count(*) from staged where reject_reason is null").fetchone()[0]
    if n_valid:
        return
    reasons = _rows(con, named_queries("stats.sql")["rejects_by_reason"])
    shown = ", ".join(f"{r['reason']} {r['n']}" for r in reasons[:4])
    first = con.execute("select file_path, line, reason from rejects order by file_path, line limit 1").fetchone()
    where = f"; first at {first[0]} line {first[1]}: {first[2]}" if first else ""
    hints = [h for *_, h in _reject_hints(con, files, field_counts=True)[:2]]
    hint = "".join(f"; {h}" for h in hints)
    raise InputError(
        f"{', '.join(map(str, paths))}: no valid rows (rejected: {shown}){where}; fix the input or check its schema{hint}"
    )


def latin1_hint(entry: str | None = None) -> str:
    """What to say when lines are rejected as invalid UTF-8 (a store's export in a Western European code
    page); ``entry``: the input.files entry of the file."""
    return f"if the file is Latin-1 (ISO-8859-1) text, pass {setting('encoding', 'latin-1', entry)}"


# a reason with a hint (inputs.reject_hint) warns when at least this share of a file's rows failed for it
HINT_SHARE = 0.01


def _reject_hints(con: duckdb.DuckDBPyConnection, files: list[InputFile],
                  field_counts: bool = False) -> list[tuple[InputFile, str, int, str]]:
    """(file, reason, lines, hint) for each reject reason of each file that its own mapping can fix (an
    unmapped event value, a time format, a decimal comma, the Latin-1 encoding; with ``field_counts``, for
    a log with no valid rows, the delimiter or schema that splits its lines into the mapping's columns:
    a few lines cut short in a log are broken lines, not a wrong mapping), commonest first; the hint names
    the key to set, in the file's input.files entry when it has one."""
    by_path = {str(f.path): f for f in files}
    out = []
    for r in _rows(con, named_queries("stats.sql")["rejects_by_file"]):
        f = by_path[r["file_path"]]
        if r["reason"] == "invalid utf-8":
            hint = latin1_hint(f.mapping.entry)
        elif r["reason"] == "wrong field count":
            hint = _field_count_hint(con, f) if field_counts else None
        else:
            hint = reject_hint(r["reason"], list(r["examples"]), (f.mapping.time_format,), f.mapping.entry,
                               f.mapping.null_values)
        if hint:
            out.append((f, r["reason"], int(r["n"]), hint))
    return out


def _field_count_hint(con: duckdb.DuckDBPyConnection, f: InputFile) -> str | None:
    """For lines rejected for their field count: how many fields the first one has against the mapping's
    columns (a log named with the wrong --schema, or split by the wrong delimiter, fails on every line)."""
    if f.format != "csv":
        return None
    row = con.execute("select line, raw from rejects where file_path = ? and reason = 'wrong field count' "
                      "order by line limit 1", [str(f.path)]).fetchone()
    if row is None or row[1] is None:
        return None

    def fields(delimiter: str) -> int:
        return len(next(csv.reader([row[1]], delimiter=delimiter), []))

    def named(delimiter: str) -> str:
        return "tab" if delimiter == "\t" else quoted(delimiter)

    hint = (f"line {row[0]} has {fields(f.mapping.delimiter)} field(s) split by {named(f.mapping.delimiter)} where the "
            f"mapping reads {len(f.names)} ({','.join(f.names)})")
    other = [(d, q) for d, q in OTHER_DELIMITERS.items() if d != f.mapping.delimiter and fields(d) == len(f.names)]
    if other:  # (the line splits into the mapping's columns by another delimiter)
        (d, q), *_ = other
        return f"{hint}: split by {named(d)} it has {len(f.names)}, {setting('delimiter', q, f.mapping.entry)}"
    return f"{hint}; name the log's schema with --schema, or set input.delimiter, input.header or input.columns"


# what a kept value that reads like "no value" does to the prepared data (null_like_warnings)
_NULL_LIKE_EFFECT = {
    "user_id": "one user, of the events of every visitor without an id",
    "product_id": "one item, of the events without an item",
    "brand": "a brand of that name",
    "category": "a category of that name",
}
_NULL_LIKE_FIX = {"user_id": "rejects those records (missing user_id)", "product_id": "rejects those records (missing item id)",
                  "brand": "leaves those events without a brand", "category": "leaves those events without a category"}


def _null_like_advice(field: str, value: str, entry: str | None, already: tuple[str, ...]) -> str:
    """What a kept ``value`` of ``field`` that reads like "no value" makes, and the key that reads it as absent."""
    return (f"kept as {_NULL_LIKE_EFFECT[field]}; if {null_values_hint([value], entry, already)} and "
            f"{_NULL_LIKE_FIX[field]}")


def null_like_warnings(con: duckdb.DuckDBPyConnection, files: list[InputFile]) -> list[str]:
    """A warning for each user, item, brand or category whose raw value is a text that exports write for
    "no value" (NULL, \\N, None, NaN, ...: inputs.NULL_LIKE) and that the mapping kept as a value, with the
    key that reads it as absent: a --set when every file has the same mapping of it, else where to add it
    (the tables do not tell which file wrote it)."""
    _set(con, "null_like", list(NULL_LIKE))
    kinds = {(f.mapping.entry, f.mapping.null_values) for f in files}
    out = []
    found = _rows(con, named_queries("stats.sql")["null_like_values"])
    for r in found:
        field, value, n = r["field"], r["value"], int(r["n"])
        what = f"{field} {quoted(value)} ({n:,} event{'' if n == 1 else 's'}) was "
        if len(kinds) == 1:  # (the --set lists every value found, beside those set)
            (entry, already), = kinds
            out.append(what + _null_like_advice(field, value, entry, (*already, *(x["value"] for x in found))))
        else:
            where = sorted({f.mapping.entry or "the input keys" for f in files})
            out.append(what + f"kept as {_NULL_LIKE_EFFECT[field]}; if {quoted(value)} is how the export writes no "
                       f"value, add it to null_values where the files that write it are mapped ({', '.join(where)}), "
                       f"which {_NULL_LIKE_FIX[field]}")
    return out


def reject_warnings(con: duckdb.DuckDBPyConnection, files: list[InputFile], rows_read: dict[str, int]) -> list[str]:
    """A warning for each fixable reject reason of a file (_reject_hints) that at least HINT_SHARE of the
    file's rows failed for (one broken time among thousands is a broken time, not a format to change), and
    for any line rejected as invalid UTF-8 (most likely the whole file is in another encoding); named after
    the file when there are several."""
    out = []
    for f, reason, n, hint in _reject_hints(con, files):
        if reason == "invalid utf-8" or n >= HINT_SHARE * rows_read.get(str(f.path), 0):
            what = f"{n:,} line(s) rejected as invalid utf-8" if reason == "invalid utf-8" else f"{n:,} line(s) rejected: {reason}"
            out.append(f"{f.path}: {what}; {hint}" if len(files) > 1 else f"{what}; {hint}")
    return out


def _reject_examples(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, int]]:
    """reason -> {value: lines}: the commonest failing field values of each reason (stats.sql)."""
    examples: dict[str, dict[str, int]] = {}
    for r in _rows(con, named_queries("stats.sql")["reject_examples"]):
        examples.setdefault(r["reason"], {})[r["value"]] = int(r["n"])
    return examples


def _manifest(con: duckdb.DuckDBPyConnection, files: list[InputFile], cfg: PrepareConfig, choice: Choice,
              before_drop: dict[str, Any]) -> dict[str, Any]:
    """``before_drop``: the counts of the intermediate tables, taken before they were dropped."""
    from purchasepred.data.windows import item_warnings

    q = named_queries("stats.sql")
    kept = {k: int(before_drop[k]) for k in ("rows_read", "rows_rejected", "rows_ignored")}
    kept["rows_duplicate"] = int(before_drop["rows_valid"]) - int(before_drop["rows_kept"])
    kept.update({k: int(before_drop[k]) for k in ("rows_kept", "rows_collapsed")})
    _set(con, "n_sessions", int(before_drop["n_sessions"]))
    counts = {**kept, **_rows(con, q["counts"])[0]}
    rejects = {r["reason"]: int(r["n"]) for r in _rows(con, q["rejects_by_reason"])}
    by_type = {r["event_type"]: int(r["n"]) for r in _rows(con, q["events_by_type"])}
    ignored = before_drop["ignored_by_value"]
    windows = {r.pop("split"): r for r in _rows(con, q["windows"])}
    n_purchase = by_type.get("purchase", 0)
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{k: (int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in counts.items()},
        "rejects_by_reason": rejects,
        "reject_examples": _reject_examples(con),
        "ignored_by_value": ignored,
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
        "input_mappings": _unique([f.mapping.to_dict() for f in files]),
        # (prepare adds each file's size and sha256)
        "inputs": [{"path": str(f.path), "rows_read": before_drop["rows_read_by_file"][str(f.path)]} for f in files],
        "sql_sha256": sql_hashes(),
        # DuckDB's hash() of a fixed text: sessions are stored as their hash() (00_setup.sql), which orders
        # tied events of different sessions, so a DuckDB whose hash() differs gives another content hash
        "session_hash_check": int(con.execute("select hash(?)", [SESSION_HASH_PROBE]).fetchone()[0]),
        "tables": {t: f"{t}.parquet" for t in OUTPUT_TABLES},
    }
    manifest["warnings"] = (choice.warnings + item_warnings(manifest, cfg.min_item_count)
                            + reject_warnings(con, files, before_drop["rows_read_by_file"]) + null_like_warnings(con, files))
    check_conservation(manifest)
    return manifest


def check_conservation(manifest: dict[str, Any]) -> None:
    """Every row read is kept, rejected, a duplicate or ignored: a real check, not an ``assert``
    (``python -O`` strips those), so prepare refuses to finish a dataset that lost rows."""
    parts = ("rows_kept", "rows_rejected", "rows_duplicate", "rows_ignored")
    if manifest["rows_read"] != sum(manifest[p] for p in parts):
        counts = ", ".join(f"{p} {manifest[p]:,}" for p in parts)
        raise DatasetError(f"prepare lost track of rows: rows_read {manifest['rows_read']:,} but {counts}; "
                           "nothing was written. Report this with the input file")


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for item in items:
        seen.setdefault(json.dumps(item, sort_keys=True), item)
    return list(seen.values())


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
