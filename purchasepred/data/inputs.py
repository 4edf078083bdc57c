"""Find and check raw input files, and map their columns and event values, before DuckDB reads them.

A file's mapping is a preset (``--schema NAME``, or detected from the header for the two REES46
forms) overlaid with the keys of the config's ``input:`` section. Each problem becomes one :class:`InputError` line
naming the file and what to do.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import functools
import glob
import gzip
import io
import json
import re
import shlex
import zlib
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, Literal, get_args

from purchasepred.config import InputConfig, SchemaName, file_entry
from purchasepred.errors import InputError

# compressed text (CSV or JSON lines): DuckDB's readers decompress it by the name's ending, in any case;
# prepare reads the head of each to inspect it (_open_text_head)
COMPRESSED_SUFFIXES = {".gz": "gzip", ".zst": "zstd"}
# files whose delimiter is a tab unless input.delimiter says otherwise
TAB_SUFFIXES = (".tsv", ".tsv.gz", ".tsv.zst", ".tab", ".tab.gz", ".tab.zst")
# delimiters a one-column header is checked for, to say which one the file seems to use
OTHER_DELIMITERS = {"\t": '"\\t"', ";": '";"', "|": '"|"', ",": '","'}
PARQUET_SUFFIXES = (".parquet", ".pq")
# newline-delimited JSON: one event object per line, each also compressed (any other name is read as CSV)
JSON_SUFFIXES = tuple(name + comp for name in (".jsonl", ".ndjson", ".json") for comp in ("", *COMPRESSED_SUFFIXES))
# the head of a JSON lines file whose records' keys are the columns a mapping may name (records may
# leave keys out: a key that only records after it have is not found)
JSON_HEAD_BYTES = 1 << 20
# how far the head grows when the first record is longer than JSON_HEAD_BYTES
JSON_MAX_HEAD_BYTES = 64 << 20

# The canonical columns every later step sees, keyed by the mapping's field name (``input.<field>``).
CANONICAL = {
    "time": "event_time",
    "event_type": "event_type",
    "item": "product_id",
    "category": "category_id",
    "category_code": "category_code",
    "brand": "brand",
    "price": "price",
    "user": "user_id",
    "session": "user_session",
}
REQUIRED_FIELDS = ("user", "item", "time", "event_type")
# canonical event names in the order of their ids (1 view, 2 cart, 3 purchase, 4 remove_from_cart;
# sql/00_setup.sql defines the same ids for SQL)
EVENTS = ("view", "cart", "purchase", "remove_from_cart")
TIME_FORMATS = ("iso", "unix_s", "unix_ms", "unix_us", "unix_ns")
DECIMAL_SEPARATORS = (".", ",")
UTF8_BOM = b"\xef\xbb\xbf"
# CSV text encodings DuckDB's reader decodes itself (UTF-16: little-endian only)
ENCODINGS = ("utf-8", "latin-1", "utf-16")

_REES46 = {
    "time": "event_time", "event_type": "event_type", "item": "product_id", "category": "category_id",
    "category_code": "category_code", "brand": "brand", "price": "price", "user": "user_id",
    "session": "user_session", "time_format": "iso", "view": ["view"], "cart": ["cart"],
    "purchase": ["purchase"], "remove_from_cart": ["remove_from_cart"], "ignore": [], "delimiter": ",",
    "encoding": "utf-8", "decimal_separator": ".", "header": True, "columns": None, "event": None,
    "time_zone": None, "null_values": None,
}
PRESETS: dict[str, dict[str, Any]] = {
    # REES46 "multi category store" (Kaggle); told apart from the next one by its header
    "rees46": _REES46,
    # the competition export of it: item_id, no category_id
    "competition": {**_REES46, "item": "item_id", "category": None},
    # RetailRocket events.csv: timestamp (ms),visitorid,event,itemid,transactionid
    "retailrocket": {
        **_REES46, "time": "timestamp", "event_type": "event", "item": "itemid", "user": "visitorid",
        "category": None, "category_code": None, "brand": None, "price": None, "session": None,
        "time_format": "unix_ms", "view": ["view"], "cart": ["addtocart"], "purchase": ["transaction"],
        "remove_from_cart": [],
    },
    # Taobao UserBehavior.csv (Tianchi 649): no header; pv/cart/fav/buy; unix seconds. fav is ignored
    "taobao": {
        **_REES46, "time": "timestamp", "event_type": "behavior_type", "item": "item_id", "user": "user_id",
        "category": "category_id", "category_code": None, "brand": None, "price": None, "session": None,
        "time_format": "unix_s", "view": ["pv"], "cart": ["cart"], "purchase": ["buy"], "remove_from_cart": [],
        "ignore": ["fav"], "header": False,
        "columns": ["user_id", "item_id", "category_id", "behavior_type", "timestamp"],
    },
    # Tianchi mobile recommendation 2014: behavior_type 1 browse, 2 favourite (ignored), 3 cart, 4 buy;
    # time to the hour
    "tianchi": {
        **_REES46, "time": "time", "event_type": "behavior_type", "item": "item_id", "user": "user_id",
        "category": "item_category", "category_code": None, "brand": None, "price": None, "session": None,
        "time_format": "%Y-%m-%d %H", "view": ["1"], "cart": ["3"], "purchase": ["4"], "remove_from_cart": [],
        "ignore": ["2"],
    },
}
MAPPING_KEYS = tuple(_REES46)


def expand(raw: list[str]) -> list[Path]:
    """Paths and globs -> existing files, in the order given (globs sorted)."""
    if not raw:
        raise InputError("no input given; pass one or more CSV, Parquet or JSON lines files or globs, "
                         "e.g. purchasepred prepare 'logs/2019-*.csv.gz'")
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


# compressed files and archives that prepare does not read, by their first bytes (a pattern): what to do instead
_DECOMPRESS = "decompress it first ({tool}) or compress the CSV with gzip or zstd, which prepare reads as they are"
ARCHIVES = {
    rb"PK\x03\x04": "a ZIP archive; unzip it first (unzip {path}) and pass the CSV file(s) inside, e.g. 'folder/*.csv'",
    rb"7z\xbc\xaf\x27\x1c": "a 7-Zip archive; extract it first (7z x {path}) and pass the CSV file(s) inside",
    rb"\xfd7zXZ\x00": "an xz-compressed file; " + _DECOMPRESS.replace("{tool}", "xz -dk {path}"),
    rb"BZh[1-9]1AY&SY": "a bzip2-compressed file; " + _DECOMPRESS.replace("{tool}", "bunzip2 -k {path}"),
    # (a tar archive's first header has its magic at byte 257; also inside a .tar.gz or .tar.zst, read decompressed)
    rb"[\s\S]{257}ustar(\x00|  \x00)": "a tar archive; extract it first (tar -xf {path}) and pass the CSV file(s) inside",
    # (a .gz or .zst name is read decompressed: only another name gets here)
    rb"\x1f\x8b": "gzip-compressed data in a file whose name does not end in .gz; rename it to {path}.gz and pass that",
    rb"\x28\xb5\x2f\xfd": "zstd-compressed data in a file whose name does not end in .zst; rename it to {path}.zst and pass that",
}


def _check_not_archive(path: Path, head: bytes) -> None:
    """InputError naming what to do when ``head`` starts like an archive or compressed file prepare does not read."""
    archive = next((hint for magic, hint in ARCHIVES.items() if re.match(magic, head)), None)
    if archive is not None:
        raise InputError(f"{path}: {archive.format(path=path)}")


@functools.cache
def _time_zones() -> dict[str, str]:
    """The time zones prepare takes, by their lower-case spelling: DuckDB's (ICU's) names of a place
    (Europe/Berlin, Etc/GMT-2, Japan) and UTC/GMT, not the abbreviations ICU also knows (EST is a fixed
    -05:00 with no summer time, BST is Asia/Dhaka, IST India, CST Chicago): each means something else
    to someone."""
    return {name.lower(): name for name in _all_zone_names()
            if "/" in name or name.upper() in ("UTC", "GMT") or (len(name) > 4 and name.isalpha())}


def time_zone_name(name: str) -> str | None:
    """The spelling DuckDB knows of time zone ``name`` (in any case, spaces around it), None when prepare
    does not take it (_time_zones)."""
    return _time_zones().get(str(name).strip().lower())


def _time_zone_problem(value: str) -> str:
    """Why input.time_zone ``value`` is not taken, and what to set instead."""
    text = value.strip()
    offset = re.fullmatch(r"(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?", text, flags=re.IGNORECASE)
    if text.upper() == "Z":
        fix = "Z is UTC: set UTC, or leave input.time_zone unset (times without a zone are then read as UTC)"
    elif offset and int(offset[2]) <= 14 and offset[3] in (None, "00"):
        etc = f"Etc/GMT{'-' if offset[1] == '+' else '+'}{int(offset[2])}"
        fix = (f"for a fixed offset of {offset[1]}{int(offset[2]):02d}:00 set {etc} (the sign of Etc names is reversed), "
               "but if the shop's clock follows summer time name its place instead, e.g. Europe/Berlin")
    elif offset:
        fix = "name the place whose clock it is, e.g. Asia/Kolkata for +05:30"
    elif text.lower() in {n.lower() for n in _all_zone_names()} or re.fullmatch(r"[A-Za-z]{2,5}", text):
        fix = (f"{text} is an abbreviation, which means different zones to different people (EST has no summer "
               "time, BST is Bangladesh, CST Chicago); name the place, e.g. America/New_York, Europe/London")
    else:
        close = difflib.get_close_matches(text, [n for n in _time_zones().values() if "/" in n], n=1, cutoff=0.6)
        fix = (f"(did you mean '{close[0]}'?); " if close else "") + "use an IANA name such as Europe/Berlin, America/New_York or UTC"
    return f"input.time_zone {value!r} is not a time zone prepare takes{'' if fix.startswith('(') else ';'} {fix}"


@functools.cache
def _all_zone_names() -> tuple[str, ...]:
    """Every time zone name DuckDB (ICU) knows, abbreviations included."""
    import duckdb

    return tuple(name for (name,) in duckdb.connect().execute("select name from pg_timezone_names()").fetchall())


def encoding_name(name: str) -> str | None:
    """The ENCODINGS key for a spelling of it ('UTF8', 'latin1', 'ISO-8859-1', 'UTF-16'), None when unknown."""
    key = name.strip().lower().replace("_", "-")
    aliases = {"utf8": "utf-8", "latin1": "latin-1", "iso-8859-1": "latin-1", "iso8859-1": "latin-1", "utf16": "utf-16"}
    key = aliases.get(key, key)
    return key if key in ENCODINGS else None


def compression_of(path: Path) -> str | None:
    """gzip or zstd when ``path``'s name says it is compressed (in any case), else None."""
    return next((c for suffix, c in COMPRESSED_SUFFIXES.items() if path.name.lower().endswith(suffix)), None)


def rewrite_target(path: Path, out: str) -> str:
    """``out`` (a file name in the current folder), or else the first of ``<stem>.fixed<suffix>``,
    ``<stem>.fixed2<suffix>``, ... that names no file there: a hint's command must not write onto its own
    input (a shell that sends a filter's output to its input empties it first), another input, or any
    other file the user has."""
    stem, suffix = Path(out).stem, Path(out).suffix
    names = [out, f"{stem}.fixed{suffix}", *(f"{stem}.fixed{i}{suffix}" for i in range(2, 100))]
    for name in names:
        try:
            free = not Path(name).exists() and Path(name).resolve() != path.resolve()
        except OSError:
            free = False
        if free:
            return name
    return names[-1]


def csv_rewrite_hint(path: Path, command: str) -> tuple[str, str]:
    """rewrite_hint of ``path`` through ``command`` to a CSV file (events.csv, or rewrite_target's other
    name), and that file's name."""
    out = rewrite_target(path, "events.csv")
    return rewrite_hint(path, command, out=out), out


def rewrite_hint(path: Path, command: str, in_place: str | None = None, out: str = "events.jsonl") -> str:
    """A shell line that writes ``path``'s text through the filter ``command`` to ``out`` (rewrite_target:
    never ``path`` itself): for a plain file ``in_place`` (a command on the file itself) when given; a
    compressed file is decompressed into the filter first (a filter on its bytes would ruin the only copy)."""
    out = rewrite_target(path, out)
    quoted = shlex.quote(str(path))
    tool = {"gzip": "gzip -dc", "zstd": "zstd -dc"}.get(compression_of(path) or "")
    if tool is not None:
        return f"{tool} {quoted} | {command} > {out}"
    return in_place.format(path=quoted) if in_place else f"{command} < {quoted} > {out}"


# the bytes of a CSV file's text that inspect_csv reads to tell its encoding, line ends and header
CSV_HEAD_BYTES = 1 << 16


def _open_text_head(path: Path, n_bytes: int = CSV_HEAD_BYTES) -> bytes:
    """The first ``n_bytes`` of ``path``'s text, decompressed when its name ends in .gz or .zst (zstd across
    frames: pzstd and appended files write several; DuckDB decompresses the body)."""
    compression = compression_of(path)
    try:
        if compression == "zstd":
            _check_zstd_complete(path)
        with open_bytes(path) as fh:
            chunks, n = [], 0
            while n < n_bytes and (chunk := fh.read(n_bytes - n)):  # (a zstd stream may read short)
                chunks.append(chunk)
                n += len(chunk)
            return b"".join(chunks)
    except (OSError, EOFError, zlib.error) as err:
        if compression is None:
            raise InputError(f"{path}: could not be read ({err}); check the file and its permissions") from None
        quoted, why = shlex.quote(str(path)), str(err).lower()
        if compression == "zstd" and ("memory" in why or "window" in why):
            raise InputError(f"{path}: a zstd file written with a window over 128 MB (zstd --long), which prepare's readers "
                             f"cannot take; compress it again without --long, e.g. zstd -dc --long=31 {quoted} | zstd -o "
                             "events.csv.zst") from None
        if compression == "zstd" and "dictionary" in why:
            raise InputError(f"{path}: a zstd file compressed with a dictionary (zstd -D), which prepare cannot use; "
                             f"decompress it first, e.g. zstd -d -D DICTIONARY {quoted}") from None
        raise InputError(f"{path}: not a readable {compression} file ({err}); re-download or re-compress it") from None


@contextmanager
def open_bytes(path: Path) -> Iterator[BinaryIO]:
    """``path``'s bytes, decompressed when its name ends in .gz or .zst (zstd across frames, by Python
    3.14's compression.zstd, else the zstandard package); a zstd error is raised as OSError."""
    compression = compression_of(path)
    if compression == "gzip":
        with gzip.open(path, "rb") as fh:
            yield fh  # type: ignore[misc]
        return
    if compression != "zstd":
        with open(path, "rb") as fh:
            yield fh
        return
    try:
        from compression import zstd  # type: ignore[import-not-found]  # (Python 3.14+)

        errors: tuple[type[BaseException], ...] = (zstd.ZstdError,)
    except ImportError:
        import zstandard

        errors = (zstandard.ZstdError,)
        zstd = None
    try:
        if zstd is not None:
            with zstd.open(path, "rb") as fh:
                yield fh
        else:
            with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as fh:
                yield fh
    except errors as err:
        raise OSError(str(err)) from None


ZSTD_MAGIC = 0xFD2FB528
ZSTD_BLOCK_HEADER_BYTES = 3


def _check_zstd_complete(path: Path) -> None:
    """OSError unless the zstd file ``path`` is whole: its frames (RFC 8878), walked by their headers and
    block headers without decompressing (a few thousand small reads per GB), end exactly where the
    file ends. DuckDB's reader takes a zstd file cut short (a download stopped half-way) without an
    error, as its rows up to the cut: prepare would quietly read part of the log."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        pos = 0
        while pos < size:
            fh.seek(pos)
            if pos + 4 > size:  # (cut inside a frame's magic number)
                pos = size + 1
                break
            magic = int.from_bytes(fh.read(4), "little")
            if magic & 0xFFFFFFF0 == 0x184D2A50:  # a skippable frame: its size, then its bytes
                pos += 8 + int.from_bytes(fh.read(4), "little")
                continue
            if magic != ZSTD_MAGIC:
                raise OSError(f"no zstd frame at byte {pos:,}")
            descriptor = fh.read(1)[0] if pos + 5 <= size else 0
            fcs_flag, single_segment, checksum, dict_flag = descriptor >> 6, descriptor >> 5 & 1, descriptor >> 2 & 1, descriptor & 3
            pos += 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag] + ((1 if single_segment else 0), 2, 4, 8)[fcs_flag]
            last = False
            while not last and pos + ZSTD_BLOCK_HEADER_BYTES <= size:
                fh.seek(pos)
                header = int.from_bytes(fh.read(ZSTD_BLOCK_HEADER_BYTES), "little")
                last, block_type, block_size = bool(header & 1), header >> 1 & 3, header >> 3
                pos += ZSTD_BLOCK_HEADER_BYTES + (1 if block_type == 1 else block_size)
            if not last:
                pos = size + 1  # (cut inside a block header)
            pos += 4 * checksum
    if pos != size:
        raise OSError(f"it ends inside a zstd frame, at byte {size:,}: the file is cut short")


def _canonical(name: str) -> str:
    """A header name as the mapping matches it: trimmed, unquoted, lower case."""
    return name.strip().strip('"').strip().lower()


@dataclass(frozen=True)
class Mapping:
    """How one file's columns and event values become the canonical columns."""

    schema: str
    """The preset it starts from ("custom" when none)."""
    columns: dict[str, str]
    """Canonical column -> the file's own column name, for every mapped column the file has."""
    time_format: str
    events: dict[str, str]
    """Raw event value (lower case) -> canonical event name, or "ignore"."""
    delimiter: str
    header: bool
    decimal_separator: str = "."
    """Of prices written as text (a Parquet file's numeric price column is always read with '.')."""
    encoding: str = "utf-8"
    """Of a CSV file's text (one of ENCODINGS)."""
    event: str | None = None
    """The canonical event of every row of a file without an event-type column (input.event)."""
    entry: str | None = None
    """The input.files entry the file's keys come from ("input.files entry 2 (orders*.csv)"), or None."""
    time_zone: str | None = None
    """The zone of its times written without one (input.time_zone, as DuckDB spells it); None: UTC."""
    null_values: tuple[str, ...] = ()
    """Texts that read as no value in any column (input.null_values, see null_texts)."""

    def to_dict(self) -> dict[str, Any]:
        out = {"schema": self.schema, "columns": self.columns, "time_format": self.time_format,
               "events": self.events, "delimiter": self.delimiter, "decimal_separator": self.decimal_separator,
               "encoding": self.encoding, "header": self.header}
        # (each only when set: the manifest of a log mapped without them has the keys it had)
        if self.event is not None:
            out["event"] = self.event
        if self.time_zone is not None:
            out["time_zone"] = self.time_zone
        if self.null_values:
            out["null_values"] = list(self.null_values)
        if self.entry is not None:
            out["from"] = self.entry
        return out


# the texts that exports write for "no value" (MySQL and PostgreSQL clients, Hive, Python's str(None),
# pandas' NaN): a reject hint or warning that shows one names input.null_values
NULL_LIKE = ("NULL", "null", "Null", "\\N", "None", "none", "NaN", "nan", "N/A", "n/a", "nil", "undefined")


def null_texts(values: list[Any] | None) -> tuple[str, ...]:
    """input.null_values as the texts a field is compared with (its surrounding spaces trimmed first): each
    value trimmed, an unquoted YAML null as NULL, null and Null, empty ones left out (an empty field is
    absent anyway), in order, each once."""
    out: list[str] = []
    for value in values or []:
        for text in (("NULL", "null", "Null") if value is None else (str(value).strip(),)):
            if text and text not in out:
                out.append(text)
    return tuple(out)


def null_values_hint(values: list[str], entry: str | None = None, already: tuple[str, ...] = ()) -> str:
    """What to set so that ``values`` (texts an export writes for no value) read as absent, beside the
    mapping's null_values ``already``."""
    one = len(values) == 1
    listed = ", ".join(json.dumps(v) for v in dict.fromkeys([*already, *values]))
    return (f"{', '.join(quoted(v) for v in values)} {'is' if one else 'are'} how the export writes no value, "
            f"{setting('null_values', f'[{listed}]', entry)} reads {'it' if one else 'them'} as absent")


def quoted(text: str) -> str:
    """A text as a message shows it: in single quotes as written ('\\N', not repr's '\\\\N'), repr() where
    that would mislead (a quote or an unprintable character in it)."""
    return f"'{text}'" if text.isprintable() and "'" not in text else repr(text)


def setting(key: str, value: str, entry: str | None = None) -> str:
    """How to set input ``key`` to ``value`` (YAML text) for a file: a --set of the input keys, or, for a
    file mapped by an input.files ``entry``, the key in that entry (a --set would change the other files)."""
    if entry is not None:
        return f"{key}: {value} in {entry}"
    return f"--set {shlex.quote(f'input.{key}={value}')}"


@dataclass(frozen=True)
class InputFile:
    path: Path
    format: Literal["csv", "parquet", "json"]
    schema: str
    names: tuple[str, ...]
    """The file's own column names in file order (from its header, or input.columns; JSON lines: the keys of
    its records, a nested one as its dotted path, e.g. context.user.id)."""
    mapping: Mapping
    size: int
    json_paths: tuple[str, ...] = ()
    """JSON lines: the JSON path of each name ($."context"."user"."id")."""
    parquet_paths: tuple[tuple[str, ...], ...] = ()
    """Parquet: the column of each name, as the parts of its path (a field of a STRUCT column: several)."""


@dataclass(frozen=True)
class FileEntry:
    """One entry of input.files: its number (from 1), its glob and its keys (as InputConfig types)."""

    no: int
    match: str
    keys: dict[str, Any]

    @property
    def label(self) -> str:
        return f"input.files entry {self.no} ({self.match})"

    def matches(self, path: Path) -> bool:
        """Whether the glob matches the end of ``path`` as given or resolved, in any case."""
        pattern = self.match.lower()
        return any(Path(str(p).lower()).match(pattern) for p in (path, path.resolve()))

    def overlay(self, icfg: InputConfig) -> InputConfig:
        """The keys of a file this entry maps: ``icfg``'s overlaid with the entry's. An entry that names a
        schema starts from that preset alone; an entry's event replaces an event_type (and its values)
        set above, and its event_type an event."""
        keys = self.keys
        if keys.get("schema") is not None:
            return InputConfig(**keys)
        cleared: dict[str, Any] = {}
        if keys.get("event") is not None and "event_type" not in keys:
            cleared = {"event_type": None, **{k: None for k in (*EVENTS, "ignore") if k not in keys}}
        if keys.get("event_type") is not None and "event" not in keys:
            cleared = {"event": None}
        return replace(icfg, files=None, **{**cleared, **keys})


def file_entries(icfg: InputConfig) -> list[FileEntry]:
    """input.files, checked: InputError naming every invalid entry."""
    entries, problems = [], []
    for no, entry in enumerate(icfg.files or [], start=1):
        pattern, keys, wrong = file_entry(no, entry)
        problems += wrong
        if pattern is not None:
            entries.append(FileEntry(no, pattern, keys))
    if problems:
        raise InputError("; ".join(problems))
    return entries


def file_configs(icfg: InputConfig, paths: list[Path]) -> list[tuple[InputConfig, FileEntry | None]]:
    """Each file's input keys and the input.files entry they come from (the first whose glob matches the
    end of its path; None: the input keys alone). Every entry must be the first match of one of ``paths``:
    one that matches none is a typo, one that only files an earlier entry also matches is never used;
    neither is a silent no-op (InputError naming each)."""
    entries = file_entries(icfg)
    firsts = [next((e for e in entries if e.matches(path)), None) for path in paths]
    used = {e.no for e in firsts if e is not None}
    problems = []
    shown = ", ".join(map(str, paths[:5])) + (", ..." if len(paths) > 5 else "")
    for e in entries:
        hit = next((i for i, path in enumerate(paths) if e.matches(path)), None)
        if hit is None:
            problems.append(f"{e.label} matches none of the input files ({shown}); its glob is matched against the "
                            "end of each file's path, e.g. 'orders*.csv' or '2024/*.csv'")
        elif e.no not in used:
            problems.append(f"{e.label} is never used: {paths[hit]} takes {firsts[hit].label}, "
                            "the first that matches; put the more specific entry first")
    if problems:
        raise InputError("; ".join(problems))
    return [(e.overlay(icfg) if e else replace(icfg, files=None), e) for e in firsts]


def check_input_config(icfg: InputConfig) -> None:
    """Problems of the mapping that do not depend on a file: one InputError listing them all (those of
    input.files entries too, each named with its entry)."""
    problems = _config_problems(icfg)
    for e in file_entries(icfg):
        problems += [f"{e.label}: {p}" for p in _config_problems(e.overlay(icfg)) if p not in problems]
    if problems:
        raise InputError("; ".join(problems))


def _config_problems(icfg: InputConfig) -> list[str]:
    problems = []
    if icfg.event is not None and icfg.event not in EVENTS:
        problems.append(f"input.event must be one of {', '.join(EVENTS)}, got {icfg.event!r}")
    if icfg.event is not None and icfg.event_type is not None:
        problems.append(f"input.event ({icfg.event}) and input.event_type ({icfg.event_type}) are both set: a file has an "
                        "event-type column or one event for every row; unset one")
    if icfg.event is not None:
        problems += [f"input.{k} has no effect beside input.event ({icfg.event}), which makes every row one event; "
                     "unset it" for k in (*EVENTS, "ignore") if getattr(icfg, k)]
    if icfg.schema is not None and icfg.schema not in PRESETS:
        problems.append(f"input.schema {icfg.schema!r} is not a preset; choose one of {', '.join(PRESETS)}")
    fmt = icfg.time_format
    if fmt is not None and fmt not in TIME_FORMATS and "%" not in fmt:
        problems.append(f"input.time_format {fmt!r} is not {', '.join(TIME_FORMATS)} or a strptime format such as '%Y-%m-%d %H:%M'")
    elif fmt is not None and fmt not in TIME_FORMATS:
        why = _strptime_problem(fmt)
        if why:
            problems.append(f"input.time_format {fmt!r} is not a strptime format DuckDB reads ({why}); "
                            "see https://duckdb.org/docs/sql/functions/dateformat")
    if icfg.time_zone is not None and time_zone_name(icfg.time_zone) is None:
        problems.append(_time_zone_problem(icfg.time_zone))
    nulls = icfg.null_values
    if nulls is not None and (not isinstance(nulls, list) or any(isinstance(v, (list, dict)) for v in nulls)):
        problems.append(f"input.null_values must be a list of texts such as ['NULL', '\\N'], got {nulls!r}")
    elif nulls is not None:
        odd = [v for v in nulls if isinstance(v, str) and v and (not v.strip() or not v.isprintable())]
        if odd:
            problems.append(f"input.null_values has {odd[0]!r}, a control character: YAML reads \\N in double quotes "
                            "as one; write '\\N' in single quotes (or unquoted)")
    if icfg.delimiter is not None and len(icfg.delimiter) != 1:
        problems.append(f"input.delimiter must be one character, got {icfg.delimiter!r} (a tab is \"\\t\")")
    if icfg.encoding is not None and encoding_name(icfg.encoding) is None:
        problems.append(f"input.encoding {icfg.encoding!r} is not one prepare reads; use {', '.join(ENCODINGS)} "
                        "(or convert the file to UTF-8 first, e.g. iconv -f CP1252 -t UTF-8)")
    if icfg.decimal_separator is not None and icfg.decimal_separator not in DECIMAL_SEPARATORS:
        problems.append(f"input.decimal_separator must be '.' or ',', got {icfg.decimal_separator!r} "
                        "(quote it: --set 'input.decimal_separator=\",\"')")
    seen: dict[str, str] = {}
    for event in (*EVENTS, "ignore"):
        for value in getattr(icfg, event) or []:
            key = str(value).strip().lower()
            if key in seen and seen[key] != event:
                problems.append(f"event value {value!r} is mapped to both input.{seen[key]} and input.{event}")
            seen[key] = event
    for field in CANONICAL:
        name = getattr(icfg, field)
        if name is not None and not str(name).strip():
            problems.append(f"input.{field} is empty; name a column or leave it unset")
    return problems


def _detect(names: list[str]) -> str | None:
    """The REES46 forms are told apart by the header; other schemas must be named."""
    lower = {_canonical(n) for n in names}
    if "product_id" in lower:
        return "rees46"
    if "item_id" in lower and "event_time" in lower:
        return "competition"
    return None


def _explicit(icfg: InputConfig) -> dict[str, Any]:
    return {k: getattr(icfg, k) for k in MAPPING_KEYS if getattr(icfg, k) is not None}


def _spec(icfg: InputConfig, names: list[str] | None, fmt: str | None = None) -> tuple[str | None, dict[str, Any]]:
    """The preset a file's mapping starts from (named, or detected from ``names``; None: none) and every
    mapping key of it overlaid with the input keys set (without a preset: no columns, REES46's formats).
    A CSV file (``fmt``) set to have no header is detected by its input.columns, as a header would be."""
    explicit = _explicit(icfg)
    if fmt == "csv" and explicit.get("header") is False and explicit.get("columns"):
        names = [str(c) for c in explicit["columns"]]
    base = icfg.schema or (_detect(names) if names is not None else None)
    spec = dict(PRESETS[base]) if base else {**{k: None for k in CANONICAL}, **{
        k: _REES46[k] for k in ("time_format", "time_zone", "delimiter", "encoding", "decimal_separator", "header", "columns",
                                 "ignore", "event", *EVENTS)}}
    return base, {**spec, **explicit}


def _repeated(field: str, name: str, spellings: list[str], fmt: str) -> str:
    """The problem of a mapped column that several of a file's columns match (in any case)."""
    if fmt == "json":
        return (f"key {name!r} (input.{field}) is spelled {len(spellings)} ways in the records ({', '.join(spellings)}; "
                "the mapping reads keys in any case); make them agree")
    return f"column {name!r} (input.{field}) appears {len(spellings)} times in the header; keep one"


def resolve_mapping(icfg: InputConfig, names: list[str] | None, path: Path, fmt: str = "csv",
                    entry: str | None = None) -> tuple[Mapping, list[str]]:
    """The mapping of one file: a preset (named, or detected from the REES46 header) overlaid with the
    keys set in ``input:`` (``icfg``: those of the file, with its input.files ``entry``, named in the
    errors). Returns it with the file's column names (``input.columns`` when headerless). Every problem
    (a missing column, a required field unmapped) is an InputError before any work."""
    fix = f"fix {entry}" if entry else f"fix the input mapping (--schema {{{','.join(PRESETS)}}} or --set input.FIELD=COLUMN)"
    given = _explicit(icfg)
    base, spec = _spec(icfg, names, fmt)
    event = spec["event"]
    preset_event_column = spec["event_type"] if event is not None else None
    if event is not None:  # one event for every row: no event-type column is read
        spec["event_type"] = None
    header = bool(spec["header"]) if fmt == "csv" else True
    if not header:
        if not spec["columns"]:
            raise InputError(f"{path}: input.header is false but input.columns does not name the file's columns; "
                             "set e.g. --set 'input.columns=[user_id,item_id,behavior_type,timestamp]'")
        names = [str(c) for c in spec["columns"]]
    elif names is None:
        raise InputError(f"{path}: has no header to map; pass --schema or --set input.header=false with input.columns")
    lower = [_canonical(n) for n in names]
    if preset_event_column is not None and _canonical(str(preset_event_column)) in lower:
        # (a preset's event column that the file has: its values would be silently overruled)
        raise InputError(f"{path}: input.event ({event}) would read every row as a {event}, but the file has the "
                         f"event-type column {preset_event_column!r} of the {base} schema; unset input.event to read "
                         f"its values (mapping them with input.view, input.purchase, ...){' in ' + entry if entry else ''}")
    if base is None and not any(k in given for k in (*CANONICAL, "event")):
        missing = [c for c in ("event_time", "event_type", "product_id", "user_id") if c not in lower]
        shown = ", ".join("product_id (or item_id)" if c == "product_id" else c for c in missing)
        raise InputError(
            f"{path}: header lacks required column(s) {shown}; "
            f"found {', '.join(names) or 'nothing'}. Expected the REES46 header event_time,event_type,product_id,"
            f"category_id,category_code,brand,price,user_id,user_session; for another log name a preset with --schema "
            f"({', '.join(PRESETS)}) or map its columns, e.g. --set input.user=COLUMN (see the README's input mapping)")
    columns: dict[str, str] = {}
    problems: list[str] = []
    lacking: list[str] = []  # required columns of the preset that the header lacks
    for field, canon in CANONICAL.items():
        name = spec[field]
        if name is None:
            if field in REQUIRED_FIELDS and not (field == "event_type" and event is not None):
                problems.append(f"input.{field} is not mapped (required: which column is the {field}"
                                + ("; or input.event, the one event of every row of a file without one)"
                                   if field == "event_type" else ")"))
            continue
        hits = [i for i, n in enumerate(lower) if n == _canonical(str(name))]
        if not hits:
            if field in given:
                problems.append(f"input.{field} names column {name!r}, which the file does not have" + {
                    "json": " (no record has that key; a nested key is named by its dotted path, e.g. context.user.id)",
                    "parquet": " (a field of a STRUCT column is named by its dotted path, e.g. context.user.id)",
                }.get(fmt, ""))
            elif field in REQUIRED_FIELDS:
                lacking.append(str(name))
            continue  # an optional column of the preset that this file lacks: absent (NULL)
        if len(hits) > 1:
            problems.append(_repeated(field, str(name), [names[i] for i in hits], fmt))
            continue
        columns[canon] = names[hits[0]]
    used = list(columns.values())
    for raw in sorted({c for c in used if used.count(c) > 1}):
        fields = [f for f, c in CANONICAL.items() if columns.get(c) == raw]
        problems.append(f"column {raw!r} is mapped to more than one field ({', '.join('input.' + f for f in fields)})")
    if lacking:
        event_column = spec["event_type"] in lacking
        problems.insert(0, f"header lacks required column(s) {', '.join(lacking)}; the {base} schema needs them"
                        + ("; for a file whose rows are all one event set input.event" if event_column else ""))
    if problems:
        found = f"; found {', '.join(names)}" if names else ""
        raise InputError(f"{path}: " + "; ".join(problems) + found + f"; {fix}")
    events = {str(v).strip().lower(): e for e in (*EVENTS, "ignore") for v in spec[e] or []}
    if event is None and not any(e in events.values() for e in EVENTS):
        raise InputError(f"{path}: the mapping names no raw value for any event type; set e.g. --set 'input.view=[pv]'")
    mapping = Mapping(schema=base or "custom", columns=columns, time_format=str(spec["time_format"]), events=events,
                      delimiter=str(spec["delimiter"]), header=header, decimal_separator=str(spec["decimal_separator"]),
                      encoding=encoding_name(str(spec["encoding"])) or "utf-8", event=event, entry=entry,
                      time_zone=time_zone_name(spec["time_zone"]) if spec["time_zone"] is not None else None,
                      null_values=null_texts(spec.get("null_values")))
    return mapping, names


def _check_line_ends(path: Path, cr_only: bool) -> None:
    """InputError when the head's lines end in a carriage return alone (classic Mac OS), which DuckDB's
    CSV reader does not take for a line end (one line of all the file's rows)."""
    if cr_only:
        fix, out = csv_rewrite_hint(path, "tr '\\r' '\\n'")
        raise InputError(f"{path}: its lines end in a carriage return alone (\\r, old Mac line ends), which the reader "
                         f"does not split on; make them \\n first, e.g. {fix}, and prepare {out}")


# the filter that takes out a text's empty and blank lines before its first other line, and a UTF-8 byte
# order mark before them (octal escapes: mawk, gawk and BSD awk)
DROP_LEADING_BLANK_LINES = "awk 'NR == 1 { sub(/^\\357\\273\\277/, \"\") } f || /[^ \\t\\r]/ { f = 1; print }'"


def _check_no_leading_empty_lines(path: Path, head: bytes) -> None:
    """InputError when a file read with a header (UTF-8 or latin-1, not UTF-16: the caller's part) starts
    with empty or blank lines, after a UTF-8 byte order mark if it has one: the reader would take the
    first for the header (a file with no header is read whole: the reader skips empty lines). A file
    whose head has no line feed is left to _check_line_ends (its lines may end in a carriage return
    alone)."""
    head = head.removeprefix(UTF8_BOM)
    if head[:1] not in (b"\n", b"\r", b" ", b"\t") or b"\n" not in head:
        return
    blank = head[:len(head) - len(head.lstrip(b" \t\r\n"))]
    n = blank.count(b"\n")
    if n == 0:  # (spaces before the header's first name, on its own line: not this)
        return
    fix, out = csv_rewrite_hint(path, DROP_LEADING_BLANK_LINES)
    raise InputError(f"{path}: starts with {n:,} empty line(s) before its header, which the reader would take for "
                     f"the header; take them out first, e.g. {fix}, and prepare {out}")


def _check_not_blank(path: Path, head: bytes, head_bytes: int) -> None:
    """InputError for a text file whose head (``head_bytes`` read) holds nothing but white space: empty
    when the head is the whole file, else it starts with more empty or blank lines than the head holds."""
    if head.strip():
        return
    if len(head) < head_bytes:
        raise InputError(f"{path}: the file is empty; pass a CSV with a header and event rows")
    fix, out = csv_rewrite_hint(path, DROP_LEADING_BLANK_LINES)
    raise InputError(f"{path}: its first {len(head):,} bytes are empty or blank lines, before any header or event; "
                     f"take them out first, e.g. {fix}, and prepare {out}")


def inspect_csv(path: Path, icfg: InputConfig, entry: str | None = None) -> InputFile:
    """The mapping of one CSV file (``icfg``: its keys, from its input.files ``entry`` when it has one)."""
    head = _open_text_head(path, CSV_HEAD_BYTES)
    _check_not_blank(path, head, CSV_HEAD_BYTES)
    _check_not_archive(path, head)
    order = {b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}.get(head[:2]) or _utf16_order(head)
    if order is None and (icfg.header if icfg.header is not None else PRESETS[icfg.schema]["header"] if icfg.schema else True):
        _check_no_leading_empty_lines(path, head)
    if order == "utf-16-be":  # DuckDB's reader decodes little-endian UTF-16 only (big-endian read as no rows)
        raise InputError(f"{path}: UTF-16 big-endian text, which prepare does not read; convert it to UTF-8 first "
                         "(iconv -f UTF-16BE -t UTF-8)")
    if icfg.encoding is None:  # UTF-16 is told by its byte order mark or its NULs, per file; else UTF-8
        encoding = "utf-16" if order else "utf-8"
        icfg = replace(icfg, encoding=encoding)
    else:
        encoding = encoding_name(icfg.encoding) or "utf-8"
        if order is not None and encoding != "utf-16":
            raise InputError(f"{path}: UTF-16 text, but input.encoding is {encoding}; leave input.encoding unset "
                             "(UTF-16 files are detected) or set it to utf-16")
        if encoding == "utf-16" and order is None:
            raise InputError(f"{path}: input.encoding is utf-16 but the file is not UTF-16 text (no byte order mark, "
                             "no NUL in every other byte); leave input.encoding unset for UTF-8")
    if encoding == "utf-16":
        # (a cut at the end of the head may split a character: only the lines before it are read)
        text = head.decode("utf-16-le", errors="replace").removeprefix("\ufeff")
        _check_line_ends(path, "\r" in text and "\n" not in text)
        first, _, rest_text = text.partition("\n")
        header_line, rest = first.rstrip("\r"), rest_text.encode("utf-8")
    else:
        if b"\x00" in head:
            raise InputError(f"{path}: binary data, not a CSV text file (NUL bytes); "
                             "pass a .csv (or .gz, .zst), .parquet or .jsonl event log")
        bom = head.startswith(UTF8_BOM)
        if encoding == "latin-1":
            _check_latin1(path, head)
        if bom:
            head = head[3:]
        _check_line_ends(path, b"\r" in head and b"\n" not in head)
        first, _, rest = head.partition(b"\n")
        try:
            header_line = first.decode(encoding).rstrip("\r")
        except UnicodeDecodeError:
            raise InputError(f"{path}: the header is not UTF-8 text; if the file is Latin-1 (ISO-8859-1) text set "
                             f"{setting('encoding', 'latin-1', entry)}, else convert it to UTF-8 (is this a CSV event log?)") from None
    header = PRESETS[icfg.schema]["header"] if icfg.schema else True
    header = icfg.header if icfg.header is not None else header
    if icfg.delimiter is None and path.name.lower().endswith(TAB_SUFFIXES):
        icfg = replace(icfg, delimiter="\t")
    delim = icfg.delimiter or (PRESETS[icfg.schema]["delimiter"] if icfg.schema else ",")
    raw_names = next(csv.reader(io.StringIO(header_line), delimiter=delim), []) if header else None
    try:
        mapping, names = resolve_mapping(icfg, raw_names, path, entry=entry)
    except InputError as err:
        hint = _delimiter_hint(raw_names, delim, entry) if raw_names is not None else None
        if hint is None:
            raise
        raise InputError(f"{err}; {hint}") from None
    if header and not rest.strip(b"\r\n\t "):
        raise InputError(f"{path}: has a header but no event rows; pass a log with data")
    return InputFile(path=path, format="csv", schema=mapping.schema, names=tuple(names), mapping=mapping,
                     size=path.stat().st_size)


def inspect_json(path: Path, icfg: InputConfig, entry: str | None = None,
                 find_keys: Callable[[Path, str, dict[str, list[str]]], dict[str, str]] | None = None) -> InputFile:
    """The mapping of one file of JSON lines (one event object per line; ``icfg`` as for inspect_csv). Its
    columns are the keys of the records in its first JSON_HEAD_BYTES, in the order they first appear; a
    key of a nested object is named by its dotted path (context.user.id). A column the mapping names (or
    its preset has) that no record there has is looked for in the whole file by ``find_keys(path,
    encoding, {name: [JSON paths it may be]})`` -> {name: the path some record has} (exporters leave
    out keys whose value is null: a brand may first appear far down the file)."""
    head = _open_text_head(path, JSON_HEAD_BYTES)
    if len(head) == JSON_HEAD_BYTES and b"\n" not in head:  # (a first record longer than the head)
        head = _open_text_head(path, JSON_MAX_HEAD_BYTES)
    if not head.strip():
        raise InputError(f"{path}: the file is empty; pass a file of JSON lines with one event object per line")
    _check_not_archive(path, head)
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or _utf16_order(head):
        raise InputError(f"{path}: UTF-16 text, not JSON lines in UTF-8 or Latin-1; convert it to UTF-8 first "
                         "(iconv -f UTF-16 -t UTF-8)")
    encoding = encoding_name(icfg.encoding) if icfg.encoding is not None else "utf-8"
    if encoding == "utf-16":
        raise InputError(f"{path}: input.encoding is utf-16, but JSON lines are read in UTF-8 or Latin-1 only; unset "
                         f"it for this file{' (' + entry + ')' if entry else ''} or convert the file to UTF-8 first")
    if encoding == "latin-1":
        _check_latin1(path, head)
    icfg = replace(icfg, encoding=encoding)
    lines = head.removeprefix(UTF8_BOM).split(b"\n")
    if len(head) in (JSON_HEAD_BYTES, JSON_MAX_HEAD_BYTES) and len(lines) > 1:
        lines = lines[:-1]  # (the head cut a line short)
    paths, kinds = _head_keys(path, lines, encoding, entry, frozenset(('', *null_texts(icfg.null_values))))
    names = {name: sorted(p)[0] for name, p in paths.items()}
    lower = {_canonical(n) for n in names}
    wanted = [n for n in _mapped_names(icfg, list(names)) if _canonical(n) not in lower]
    if wanted and find_keys is not None:
        for name, json_path in find_keys(path, encoding, {n: _json_paths_of(n) for n in wanted}).items():
            names[name], paths[name] = json_path, {json_path}
    mapping, found = resolve_mapping(icfg, list(names), path, fmt="json", entry=entry)
    for name in found:
        if name in mapping.columns.values() and len(paths[name]) > 1:
            raise InputError(f"{path}: {name!r} is both a key with a dot in its name and a nested key in the records; "
                             "rename one of them in the export")
    price = mapping.columns.get("price")
    if price is not None and kinds.get(price) == {True}:
        # (prices written as JSON numbers read with '.' whatever the mapping says of prices written as text)
        mapping = replace(mapping, decimal_separator=".")
    return InputFile(path=path, format="json", schema=mapping.schema, names=tuple(found), mapping=mapping,
                     size=path.stat().st_size, json_paths=tuple(names[n] for n in found))


def _head_keys(path: Path, lines: list[bytes], encoding: str, entry: str | None,
               absent: frozenset[str]) -> tuple[dict[str, set[str]], dict[str, set[bool]]]:
    """The keys of the records of a JSON lines head, in the order they first appear: each dotted name's JSON
    paths (two: a key with a dot and a nested one), and whether its values are numbers (True) or not
    (False), leaving out null and the texts in ``absent`` (empty, or the mapping's null_values: no
    value either). A record with no nested object whose top-level keys were seen adds only the types
    of its values (most records of a log: a 1 MB head in 19-20 ms instead of 43 ms)."""
    paths: dict[str, set[str]] = {}
    kinds: dict[str, set[bool]] = {}
    # top-level keys of records with no object -> the types of their values, and which are absent texts
    flat: dict[tuple[str, ...], set[tuple[tuple[type, ...], tuple[bool, ...]]]] = {}
    first = True
    for no, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode(encoding))
        except UnicodeDecodeError:
            if first:
                raise InputError(f"{path}: line {no} is not UTF-8 text; if the file is Latin-1 (ISO-8859-1) text set "
                                 f"{setting('encoding', 'latin-1', entry)}, else convert it to UTF-8") from None
            continue
        except (ValueError, RecursionError):
            record = None
        if first and not isinstance(record, dict):
            _not_json_lines(path, no, raw)
        first = False
        if not isinstance(record, dict):
            continue
        types = tuple(map(type, record.values()))
        if dict not in types:  # (an empty {} takes the long way: it is a value)
            shape = tuple(record)
            try:
                marks = tuple(map(absent.__contains__, record.values()))
            except TypeError:  # (a list value: no text)
                marks = tuple(isinstance(v, str) and v in absent for v in record.values())
            if shape in flat:
                flat[shape].add((types, marks))
                continue
            flat[shape] = {(types, marks)}
        for name, json_path, value in _json_keys(record):
            paths.setdefault(name, set()).add(json_path)
            if value is not None and dict in types and not (isinstance(value, str) and value.strip() in absent):
                kinds.setdefault(name, set()).add(isinstance(value, (int, float)) and not isinstance(value, bool))
    for shape, seen in flat.items():  # (a top-level key's dotted name is the key)
        for types, marks in seen:
            for key, kind, mark in zip(shape, types, marks, strict=True):
                if kind is not type(None) and not mark:
                    kinds.setdefault(key, set()).add(kind in (int, float))
    return paths, kinds


def inspect_parquet(path: Path, icfg: InputConfig, entry: str | None, columns: list[tuple[str, Any]]) -> InputFile:
    """The mapping of one Parquet file (``icfg`` as for inspect_csv) from its ``columns``: (name, DuckDB
    type) in file order. A field of a STRUCT column is named by its dotted path (context.user.id), as a
    nested key of JSON lines; those the mapping reads are read besides every top-level column. A typed
    price reads with '.' whatever the mapping says of prices written as text."""
    top = [name for name, _ in columns]
    types = dict(columns)
    nested = {".".join(parts): (parts, kind) for name, column in columns for parts, kind in _struct_fields((name,), column)}
    clash = {_canonical(n) for n in top} & {_canonical(n) for n in nested}
    both = sorted(clash & {_canonical(n) for n in _mapped_names(icfg, top)})
    if both:
        raise InputError(f"{path}: {both[0]!r} is both a column with a dot in its name and a field of a STRUCT column; "
                         "rename one of them in the export")
    nested = {n: v for n, v in nested.items() if _canonical(n) not in clash}
    mapping, _ = resolve_mapping(icfg, top + list(nested), path, fmt="parquet", entry=entry)
    read_nested = [n for n in nested if n in mapping.columns.values()]
    price = mapping.columns.get("price")
    price_type = types[price] if price in types else nested[price][1] if price in nested else None
    if price is not None and str(price_type) != "VARCHAR":
        mapping = replace(mapping, decimal_separator=".")
    return InputFile(path=path, format="parquet", schema=mapping.schema, names=(*top, *read_nested), mapping=mapping,
                     size=path.stat().st_size, parquet_paths=(*((n,) for n in top), *(nested[n][0] for n in read_nested)))


def _struct_fields(parts: tuple[str, ...], kind: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
    """The fields (not STRUCTs themselves) inside a column of DuckDB type ``kind`` named ``parts``, with
    their paths and types; none for a column that is no STRUCT (nor for the fields of a LIST's elements)."""
    if getattr(kind, "id", None) != "struct":
        return
    for child, child_kind in kind.children:
        if getattr(child_kind, "id", None) == "struct":
            yield from _struct_fields((*parts, child), child_kind)
        else:
            yield (*parts, child), child_kind


def _not_json_lines(path: Path, no: int, raw: bytes) -> None:
    """InputError for a file whose first record (line ``no``) is no JSON object on one line, with the fix."""
    text = raw.decode("utf-8", errors="replace").strip(" \t\r")
    if text.startswith("\x1e"):
        fix = rewrite_hint(path, "tr -d '\\036'")
        what = f"a JSON text sequence (RFC 7464: each record starts with the byte 0x1E); take those bytes out first, e.g. {fix}"
    elif text.startswith("["):
        fix = rewrite_hint(path, "jq -c '.[]'")
        what = f"a JSON array, not one object per line; write one object per line first, e.g. {fix}"
    else:
        fix = rewrite_hint(path, "jq -c .")
        what = ("not a JSON object on one line (prepare reads JSON lines: one event object per line, "
                'e.g. {"user": "u1", "item": "a", "time": "2019-10-01 10:00:00", "event": "view"}); '
                f"write each object on one line first, e.g. {fix}")
    raise InputError(f"{path}: line {no} is {what}; got {text[:60]!r}")


def _mapped_names(icfg: InputConfig, names: list[str]) -> list[str]:
    """The columns a file's mapping reads (its preset's, named or detected from ``names``, and the input keys)."""
    _, spec = _spec(icfg, names)
    if spec["event"] is not None:
        spec["event_type"] = None
    return [str(spec[f]) for f in CANONICAL if spec[f] is not None]


def _json_paths_of(name: str) -> list[str]:
    """The JSON paths a dotted column name may stand for: a key of that name, or the nested keys its dots part."""
    whole = _json_name_and_path((name,))[1]
    if "." not in name:
        return [whole]
    return [whole, _json_name_and_path(tuple(name.split(".")))[1]]


def _json_keys(record: dict[str, Any], keys: tuple[str, ...] = ()) -> Iterator[tuple[str, str, Any]]:
    """(dotted name, JSON path, value) of each value of ``record`` that is not an object, nested ones included."""
    for key, value in record.items():
        path = (*keys, str(key))
        if isinstance(value, dict) and value:
            yield from _json_keys(value, path)
        else:
            yield *_json_name_and_path(path), value


@functools.lru_cache(maxsize=4096)
def _json_name_and_path(keys: tuple[str, ...]) -> tuple[str, str]:
    """The dotted name and the JSON path of a value at ``keys`` (the records of a log share their keys:
    each path is worked out once, not once per record)."""
    return ".".join(keys), "$" + "".join("." + json.dumps(k, ensure_ascii=False) for k in keys)


def _check_latin1(path: Path, head: bytes) -> None:
    """InputError when a file read as Latin-1 is UTF-8 text, which Latin-1 would garble."""
    bom = head.startswith(UTF8_BOM)
    if bom or _non_ascii_utf8(head):
        why = "it starts with a UTF-8 byte order mark" if bom else "its non-ASCII bytes are valid UTF-8"
        raise InputError(f"{path}: UTF-8 text ({why}), but input.encoding is latin-1, which would garble it; leave "
                         "input.encoding unset for it (to prepare it with Latin-1 files, convert those first: "
                         "iconv -f LATIN1 -t UTF-8)")


def _non_ascii_utf8(head: bytes) -> bool:
    """Whether ``head`` has bytes above ASCII and all of them form valid UTF-8 (a character cut at the end
    of the head allowed): text in Latin-1 almost never does."""
    if max(head, default=0) < 0x80:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _utf16_order(head: bytes) -> str | None:
    """'utf-16-le' or 'utf-16-be' when ``head`` (no BOM) looks like UTF-16 text of mostly ASCII characters
    (a NUL in every other byte), else None."""
    sample = head[:4096]
    if len(sample) < 4:
        return None
    odd, even = sample[1::2], sample[0::2]
    if odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return None


def _strptime_problem(fmt: str) -> str | None:
    """Why DuckDB refuses ``fmt`` as a strptime format (an unknown specifier such as %Q), or None: checked
    before any file is read, where the reader's error would blame the file."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("select try_strptime('', ?)", [fmt])
    except duckdb.Error as err:
        return str(err).strip().splitlines()[0].removeprefix("Invalid Input Error: ")
    finally:
        con.close()
    return None


def _delimiter_hint(names: list[str], delim: str, entry: str | None = None) -> str | None:
    """What to set when a header read with ``delim`` is one column that another delimiter splits."""
    if len(names) != 1:
        return None
    for other, quoted in OTHER_DELIMITERS.items():
        if other != delim and other in names[0]:
            return f"the header is one column with {delim!r} but splits on {other!r}: set {setting('delimiter', quoted, entry)}"
    return None


# strptime formats a hint tries on event times that did not parse (day-first before month-first)
_TIME_FORMAT_GUESSES = (
    "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d/%m/%Y",
    "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %I:%M %p", "%m/%d/%Y",
    "%d-%m-%Y %H:%M:%S", "%d-%m-%Y %H:%M", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y%m%d%H%M%S", "%Y%m%d %H:%M:%S",
    "%d %b %Y %H:%M:%S", "%b %d %Y %H:%M:%S", "%d %b %Y %H:%M", "%Y-%m-%d %H",
)
# epoch units by the number of digits before the point (times from 2001 to 2286)
_EPOCH_DIGITS = {10: "unix_s", 13: "unix_ms", 16: "unix_us", 19: "unix_ns"}


def guess_time_format(values: list[str]) -> str | None:
    """The input.time_format that reads every one of ``values`` (event times that did not parse), or None."""
    values = [v.strip() for v in values if v and v.strip()]
    if not values:
        return None
    if all(re.fullmatch(r"\d+(\.\d+)?", v) for v in values):
        units = {_EPOCH_DIGITS.get(len(v.split(".")[0])) for v in values}
        if len(units) == 1 and None not in units:
            return units.pop()
    if all(_is_iso(v) for v in values):
        return "iso"
    return next((fmt for fmt in _TIME_FORMAT_GUESSES if _all_parse(values, fmt)), None)


def _is_iso(value: str) -> bool:
    """Whether ``value`` is an ISO 8601 time as time_format iso reads it (REES46's ' UTC' suffix too)."""
    if not re.match(r"\d{4}-\d{2}-\d{2}", value):
        return False
    try:
        datetime.fromisoformat(re.sub(r"( UTC|Z)$", "+00:00", value))
    except ValueError:
        return False
    return True


def _all_parse(values: list[str], fmt: str) -> bool:
    try:
        for v in values:
            datetime.strptime(v.strip(), fmt)
    except ValueError:
        return False
    return True


def reject_hint(reason: str, values: list[str], time_formats: tuple[str, ...] = (), entry: str | None = None,
                null_values: tuple[str, ...] = ()) -> str | None:
    """What to set when lines fail for ``reason`` with these field values (the commonest first), or None.
    ``time_formats``: those the mapping already reads times with (never suggested again); ``entry``: the
    input.files entry that maps the file (the key to set is there); ``null_values``: the mapping's (kept
    in the list a hint suggests)."""
    values = [v for v in values if v and v.strip()]
    if not values:
        return None
    nulls = list(dict.fromkeys(v.strip() for v in values if v.strip() in NULL_LIKE))
    if nulls and reason in ("unparseable price", "non-finite price"):
        rest = [v for v in values if v.strip() not in NULL_LIKE]
        other = reject_hint(reason, rest, time_formats, entry, null_values) if rest else None
        return (null_values_hint(nulls, entry, null_values) + " (a price is optional: those records are then kept)"
                + (f"; {other}" if other else ""))
    if nulls and reason in ("unknown event_type", "unparseable event_time", "event_time out of range"):
        # (a record with no event type or time stays rejected: no event name or time format fixes it)
        values = [v for v in values if v.strip() not in NULL_LIKE]
        if not values:
            return None
    shown = ", ".join(repr(v) for v in values[:3])
    if reason == "unknown event_type":
        return (f"event values {shown} are not in the mapping: name each, e.g. {setting('view', f'[{values[0]}]', entry)} "
                f"(or {', '.join(('' if entry else 'input.') + k for k in ('cart', 'purchase', 'remove_from_cart'))}), "
                f"or leave them out with {setting('ignore', '[...]', entry)}")
    if reason == "event_time out of range":  # a time read in the wrong epoch unit (unix_s as unix_ms: 1970)
        fmt = guess_time_format(values)
        if fmt in _EPOCH_DIGITS.values() and fmt not in time_formats:
            return f"event times such as {shown} read with {setting('time_format', fmt, entry)}"
        return None
    if reason == "unparseable event_time":
        fmt = guess_time_format(values)
        if fmt is not None and fmt not in time_formats:
            hint = f"event times such as {shown} read with {setting('time_format', json.dumps(fmt), entry)}"
            swapped = fmt.replace("%d", "%_").replace("%m", "%d").replace("%_", "%m")
            if swapped != fmt and swapped in _TIME_FORMAT_GUESSES and _all_parse(values, swapped):
                hint += f" (or {json.dumps(swapped)} if the month comes first: these examples fit both)"
            return hint
        if fmt is not None:
            return None  # the format the mapping has: these times are broken, not written another way
        return (f"event times such as {shown}: set {'time_format in ' + entry if entry else 'input.time_format'} to "
                f"{', '.join(TIME_FORMATS)} or the strptime format they are written in, e.g. '%d.%m.%Y %H:%M'")
    if reason == "unparseable price":
        decimal_comma = [re.fullmatch(r"[-+]?(\d+|[1-9]\d{0,2}(\.\d{3})+),\d+", v.strip()) for v in values]
        thousands = [re.fullmatch(r"[-+]?[1-9]\d{0,2}(,\d{3})+", v.strip()) for v in values]  # 1,234: a US thousand?
        if any(decimal_comma) and not all(thousands):
            return f"prices such as {shown} have a decimal comma: {setting('decimal_separator', ',', entry)}"
    return None


def check_path(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path (globs must be quoted)")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; pass the CSV, Parquet or JSON lines files inside it, e.g. '{path}/*.csv'")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty; pass a CSV with a header and event rows")


def duckdb_literal(path: Path | str) -> str:
    """``path`` for DuckDB's file readers, which expand ``*``, ``?`` and ``[...]`` as glob patterns even in
    the name of an existing file: each is wrapped in brackets (``a[1].csv`` -> ``a[[]1].csv``), so the
    reader opens exactly this file and never another one that the pattern happens to match."""
    return re.sub(r"([\[*?])", r"[\1]", str(path))


def is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(PARQUET_SUFFIXES)


def is_json(path: Path) -> bool:
    return path.name.lower().endswith(JSON_SUFFIXES)


assert tuple(PRESETS) == get_args(SchemaName), "config.SchemaName must list the presets"
