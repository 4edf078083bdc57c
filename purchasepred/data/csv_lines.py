"""Where records and line ends sit in a CSV file's bytes (UTF-8 or latin-1; the quote is '"'), found
with numpy a block at a time: the physical line of each rejected record of a file whose records and
lines differ (physical_lines), and the first line end that DuckDB's CSV reader stops at (stray_line_end).

The physical line of each rejected record of a CSV file whose records and lines differ:

prepare numbers a rejected record by its place among the file's records (a record's rowid in staged,
02_validate.sql), and DuckDB's CSV reader numbers the lines it cannot split by its own count, which
takes in empty lines but not the line breaks inside quoted fields. Both are the record's line in the
file only when every line holds one record. A file with empty lines (the reader skips them) or with
quoted fields over several lines has more lines than records, and there both numbers drift from the
line an editor shows. For such a file (prepare knows it from its line count: LineCounts), one pass
over its bytes here finds where each record starts:

- a line break ends a record where the quotes before it are balanced (the file's quote is '"', a quote
  inside a quoted field is doubled: both keep the count's parity right);
- a line that starts a record and holds nothing (or only a carriage return) is empty, and not a record;
- any other line that starts after a record's end starts the next record, the header first.

The pass reads the file in blocks with numpy (no Python loop per line) and keeps only the records
asked for. It checks its own count against DuckDB's: where they differ (a quote left open, which
DuckDB reads another way), it answers None and the record numbers stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from purchasepred.data.inputs import open_bytes

BLOCK = 1 << 24
_NL, _CR, _QUOTE = 10, 13, 34


def delimiter_byte(delimiter: str, encoding: str) -> int:
    """The last byte of a file's delimiter in its encoding: what the quote scans here look for before a
    quote that opens a field."""
    return delimiter.encode(encoding)[-1]


@dataclass(frozen=True)
class RejectLines:
    """Physical lines (1-based) by DuckDB's line of a structural reject and by the staged index (the
    1-based place among the file's records that the reader parsed) of a typed one."""

    structural: dict[int, int]
    typed: dict[int, int]


@dataclass
class _Scan:
    """What one block leaves to the next."""

    lines: int = 0  # line breaks so far
    quotes: int = 0  # quotes so far
    last_break: int = -1  # byte offset of the last line break (-1: the file's start)
    last_break_ends: bool = True  # whether it ended a record (the file's start does)
    last_byte: int = -1  # the block's last byte
    continuations: int = 0  # lines so far that began inside a quoted field
    records: int = 0  # records so far (the header is the first)
    structural: int = 0  # records so far that DuckDB could not split


# quotes inside unquoted fields (55" tv) a file may hold before the passes here give up (each costs a
# look at the block's quotes after it)
MAX_LITERAL_QUOTES = 1000


@dataclass
class _TextQuotes:
    """The quotes inside unquoted fields met so far, and whether the block before ended in one."""

    count: int = 0
    at_end: bool = False


def _field_quotes(block: np.ndarray, quotes: np.ndarray, quotes_before: int, last: int, delimiter: int,
                  text: _TextQuotes) -> np.ndarray | None:
    """The quotes of ``block`` (at ``quotes``) that open or close a quoted field, in a file whose blocks
    before held ``quotes_before`` of them and ended in the byte ``last`` (-1 at the file's start). A quote
    that opens a field follows the delimiter's last byte ``delimiter``, a line end, or the first quote of
    a doubled pair; one where quotes are closed that follows anything else sits inside an unquoted field
    (55" tv), and DuckDB reads it as text: it is left out and counted in ``text`` (None once the file has
    more than MAX_LITERAL_QUOTES of them)."""
    before = np.where(quotes > 0, block[np.maximum(quotes - 1, 0)], last)
    field_start = (before == delimiter) | (before == _NL) | (before == _CR) | (before == _QUOTE) | (before == -1)
    if text.at_end and len(quotes) and quotes[0] == 0:
        field_start[0] = False
    keep = np.ones(len(quotes), dtype=bool)
    start = 0
    while True:
        rest = np.flatnonzero(keep[start:]) + start  # (the quotes not left out, from start on)
        opening = (quotes_before + np.count_nonzero(keep[:start]) + np.arange(len(rest))) % 2 == 0
        bad = np.flatnonzero(opening & ~field_start[rest])
        if len(bad) == 0:
            kept = quotes[keep]
            text.at_end = bool(block[-1] == _QUOTE) and not (len(kept) and kept[-1] == len(block) - 1)
            return kept
        first = int(rest[bad[0]])
        keep[first] = False
        text.count += 1
        if first + 1 < len(quotes) and quotes[first + 1] == quotes[first] + 1:
            field_start[first + 1] = False  # (x""y: a quote after a quote that is text is text too)
        if text.count > MAX_LITERAL_QUOTES:
            return None
        start = first + 1


def physical_lines(path: Path, header_lines: int, n_records: int, structural: list[int],
                   typed: list[int], delimiter: int = 44) -> RejectLines | None:
    """The physical line of each structural reject (by DuckDB's line) and typed reject (by staged index)
    of a UTF-8 or latin-1 CSV file (compressed or not) that DuckDB read as ``n_records`` records after its
    header (structural rejects included), whose delimiter ends in the byte ``delimiter``; None where this
    pass counts the records otherwise (or meets over MAX_LITERAL_QUOTES quotes inside unquoted fields)."""
    want_structural = np.unique(np.asarray(structural, dtype=np.int64))
    want_typed = np.unique(np.asarray(typed, dtype=np.int64))
    found_structural: dict[int, int] = {}
    found_typed: dict[int, int] = {}
    scan = _Scan()
    offset = 0
    text = _TextQuotes()
    with open_bytes(path) as fh:
        buf = bytearray(BLOCK)
        while k := fh.readinto(buf):
            block = np.frombuffer(buf, np.uint8, k)
            quotes = _field_quotes(block, np.flatnonzero(block == _QUOTE), scan.quotes, scan.last_byte, delimiter, text)
            if quotes is None:
                return None
            _starts(block, np.flatnonzero(block == _NL), quotes, offset, scan, header_lines,
                    want_structural, want_typed, found_structural, found_typed)
            scan.quotes += len(quotes)
            scan.last_byte = int(block[-1])
            offset += k
    if offset - 1 > scan.last_break:  # a last line with no line break after it
        _last_line(offset, scan, header_lines, want_structural, want_typed, found_structural, found_typed)
    if (scan.records - header_lines != n_records or len(found_structural) != len(want_structural)
            or len(found_typed) != len(want_typed)):
        return None
    return RejectLines(found_structural, found_typed)


def _starts(block: np.ndarray, breaks: np.ndarray, quotes: np.ndarray, offset: int, scan: _Scan, header_lines: int,
            want_structural: np.ndarray, want_typed: np.ndarray,
            found_structural: dict[int, int], found_typed: dict[int, int]) -> None:
    """The lines that the block's line breaks end: which start a record, and the wanted ones' lines."""
    if len(breaks) == 0:
        return
    quotes_before = scan.quotes + np.searchsorted(quotes, breaks)
    ends = quotes_before % 2 == 0  # this break ends a record
    at = breaks + offset
    previous = np.concatenate(([scan.last_break], at[:-1]))
    previous_ends = np.concatenate(([scan.last_break_ends], ends[:-1]))
    byte_before = np.where(breaks > 0, block[np.maximum(breaks - 1, 0)], scan.last_byte)
    length = at - previous - 1 - ((byte_before == _CR) & (at - previous > 1))
    _classify(np.arange(scan.lines + 1, scan.lines + len(breaks) + 1), ~previous_ends, length, scan, header_lines,
              want_structural, want_typed, found_structural, found_typed)
    scan.lines += len(breaks)
    scan.last_break = int(at[-1])
    scan.last_break_ends = bool(ends[-1])


def _last_line(size: int, scan: _Scan, header_lines: int, want_structural: np.ndarray, want_typed: np.ndarray,
               found_structural: dict[int, int], found_typed: dict[int, int]) -> None:
    length = size - scan.last_break - 1 - (scan.last_byte == _CR)
    _classify(np.array([scan.lines + 1]), np.array([not scan.last_break_ends]), np.array([length]), scan, header_lines,
              want_structural, want_typed, found_structural, found_typed)


def _classify(line: np.ndarray, continued: np.ndarray, length: np.ndarray, scan: _Scan, header_lines: int,
              want_structural: np.ndarray, want_typed: np.ndarray,
              found_structural: dict[int, int], found_typed: dict[int, int]) -> None:
    """Lines numbered ``line``, each a continuation of a quoted field or not and of ``length`` bytes: the
    records they start, DuckDB's line of each (the line less the continuations before it), and the
    staged index of each record that DuckDB parsed (its place among them)."""
    continuations = scan.continuations + np.cumsum(continued)
    starts = ~continued & (length > 0)
    record = scan.records + np.cumsum(starts)
    first = line[starts]
    duckdb_line = first - continuations[starts]
    number = record[starts]
    is_structural = np.isin(duckdb_line, want_structural) & (number > header_lines)
    structural_before = scan.structural + np.cumsum(is_structural) - is_structural
    staged_index = number - header_lines - structural_before
    for d, p in zip(duckdb_line[is_structural].tolist(), first[is_structural].tolist(), strict=True):
        found_structural[d] = p
    hit = ~is_structural & (number > header_lines) & np.isin(staged_index, want_typed)
    for s, p in zip(staged_index[hit].tolist(), first[hit].tolist(), strict=True):
        found_typed[s] = p
    scan.continuations = int(continuations[-1])
    scan.records = int(record[-1])
    scan.structural += int(np.count_nonzero(is_structural))


def stray_line_end(fh: BinaryIO, delimiter: int = 44) -> int | None:
    """The line (1-based) of the first line end, outside quotes, that is not of the kind the first line
    ends in (\\r\\n in a file of \\n, or \\n in a file of \\r\\n), or is a carriage return alone; None
    where there is none. DuckDB's CSV reader takes the first line's end for the file's, and stops at such
    a line with a bare "state machine reached an invalid state", naming no line. It takes any line end
    right after a closing quote, and a return that ends the file, and so does this. Quotes inside
    unquoted fields are text (_field_quotes; None after MAX_LITERAL_QUOTES of them before such a line).
    ``delimiter`` is the last byte of the file's delimiter."""
    crlf: bool | None = None  # the first line's kind, once its line break is read
    lines = quotes = 0
    last = -1  # the last byte of the block before
    pending: int | None = None  # the line of a return, outside quotes, that ended the block before
    text = _TextQuotes()
    while block := fh.read(BLOCK):
        b = np.frombuffer(block, np.uint8)
        if pending is not None and b[0] != _NL:
            return pending
        breaks, returns = np.flatnonzero(b == _NL), np.flatnonzero(b == _CR)
        quote_at = _field_quotes(b, np.flatnonzero(b == _QUOTE), quotes, last, delimiter, text)
        if quote_at is None:
            return None
        if crlf is None and len(breaks):
            crlf = bool((b[breaks[0] - 1] if breaks[0] > 0 else last) == _CR)
        stray = np.zeros(0, dtype=np.int64)
        inside = returns < len(b) - 1  # (a return that ends the block: its next byte is the next block's)
        return_before = np.where(returns > 0, b[np.maximum(returns - 1, 0)], last)
        if crlf is False:  # (an empty line \r\n is one DuckDB skips)
            # (a return before it that is no stray one ended a line after a closing quote)
            empty = inside & np.isin(return_before, (_NL, _CR, -1)) & (b[np.minimum(returns + 1, len(b) - 1)] == _NL)
            stray = returns[inside & ~empty]
        elif crlf:
            before = np.where(breaks > 0, b[np.maximum(breaks - 1, 0)], last)  # the byte before each line break
            # (an empty line \n is one DuckDB skips)
            stray = np.concatenate((returns[inside][b[returns[inside] + 1] != _NL], breaks[(before != _CR) & (before != _NL)]))
        # (DuckDB takes a line end of the other kind right after a closing quote, but not a return alone
        # in a file of \r\n)
        exempt = np.where(stray > 0, b[np.maximum(stray - 1, 0)], last) == _QUOTE
        if crlf:
            exempt &= b[stray] == _NL
        outside = ((quotes + np.searchsorted(quote_at, stray)) % 2 == 0) & ~exempt
        if outside.any():
            return lines + int(np.searchsorted(breaks, stray[outside].min())) + 1
        # a return that ends the block, outside quotes (in a file of \n: not after a closing quote): in a
        # file of \n one unless it starts an empty line; else (and for that empty line) one unless the
        # next block starts with \n or the file ends there
        ends_in_return = (crlf is not None and len(returns) > 0 and returns[-1] == len(b) - 1
                          and (quotes + len(quote_at)) % 2 == 0 and (crlf or return_before[-1] != _QUOTE))
        if ends_in_return and crlf is False and return_before[-1] not in (_NL, _CR, -1):
            return lines + len(breaks) + 1
        pending = lines + len(breaks) + 1 if ends_in_return else None
        lines += len(breaks)
        quotes += len(quote_at)
        last = int(b[-1])
    return None  # (a return that ends the file ends its last line)
