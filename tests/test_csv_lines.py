"""Rejects carry their physical line in files whose lines and records differ (data/csv_lines.py):
empty lines, quoted fields over several lines, LF and CRLF line ends, and the scan's block edges
anywhere (a block of a few bytes cuts between a carriage return and its line feed, and inside quotes)."""

from __future__ import annotations

import gzip
import io
import random
import subprocess
from pathlib import Path

import duckdb
import pytest

from purchasepred.config import PrepareConfig
from purchasepred.data import prepare as prep
from purchasepred.data import csv_lines
from purchasepred.data.csv_lines import physical_lines, stray_line_end
from purchasepred.errors import InputError

HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
CFG = PrepareConfig(eval_days=1, min_item_count=1)


def write_log(path: Path, seed: int, eol: str, n: int = 300) -> list[tuple[int, str]]:
    """A log with empty lines (one or two), quoted fields holding line breaks (and doubled quotes), and
    typed and structural rejects; returns each reject's (physical line, reason)."""
    rnd = random.Random(seed)
    out, line, want = [HEADER + eol], 2, []
    for i in range(n):
        if rnd.random() < 0.08:
            k = rnd.choice([1, 2])
            out.append(eol * k)
            line += k
        code = "a.b"
        if rnd.random() < 0.1:
            code = '"x' + rnd.choice(["\n", eol, "\n\n", eol + eol]) + 'y ""q"""'
        fields = [f"2020-01-0{1 + i * 9 // n} 10:{i % 60:02d}:00 UTC", "purchase" if i % 4 == 0 else "view", str(i % 11),
                  "10", code, "br", "3.0", f"u{i % 13}", f"s{i % 13}"]
        kind = rnd.random()
        if kind < 0.05:
            fields[6] = "-5"
            want.append((line, "negative price"))
        elif kind < 0.10:
            fields = fields[:4]
            want.append((line, "wrong field count"))
        elif kind < 0.13:
            fields[0] = "not a time"
            want.append((line, "unparseable event_time"))
        record = ",".join(fields)
        out.append(record + eol)
        line += record.count("\n") + 1
    path.write_text("".join(out), newline="")
    return want


def reject_rows(folder: Path) -> list[tuple[int, str]]:
    return duckdb.connect().execute("select line, reason from read_parquet(?) order by line",
                                    [str(folder / "rejects.parquet")]).fetchall()


@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("block", [5, 1 << 24], ids=["tiny_blocks", "default_blocks"])
@pytest.mark.parametrize("seed", [0, 5])
def test_rejects_carry_their_physical_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, eol: str, block: int, seed: int) -> None:
    monkeypatch.setattr(csv_lines, "BLOCK", block)
    raw = tmp_path / "log.csv"
    want = write_log(raw, seed, eol)
    assert {reason for _, reason in want} == {"negative price", "wrong field count", "unparseable event_time"}
    summary = prep.prepare([str(raw)], tmp_path / "p", CFG)
    assert reject_rows(tmp_path / "p") == sorted(want)
    assert not [w for w in summary.manifest["warnings"] if "counts records, not lines" in w]


def test_a_file_with_one_record_per_line_is_not_scanned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No empty line and no quoted line break: the record numbers are the lines, and the file is not read again."""
    raw = tmp_path / "plain.csv"
    rows = [f"2020-01-0{1 + i // 10} 10:00:{i:02d} UTC,{'purchase' if i % 3 == 0 else 'view'},{i % 4},10,a.b,br,3.0,u{i % 5},s"
            for i in range(60)]
    rows[20] = rows[20].replace(",3.0,", ",-5,")
    rows[40] = "2020-01-05 10:00:00 UTC,view,1"
    raw.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(csv_lines, "physical_lines", lambda *a: pytest.fail("scanned a file with one record per line"))
    prep.prepare([str(raw)], tmp_path / "p", CFG)
    assert reject_rows(tmp_path / "p") == [(22, "negative price"), (42, "wrong field count")]


def test_records_the_scan_cannot_place_keep_their_numbers_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the scan counts the records otherwise than DuckDB (here: made to), the rejects keep their
    record numbers and the run says so for that file."""
    raw = tmp_path / "log.csv"
    write_log(raw, 0, "\n")
    monkeypatch.setattr(csv_lines, "physical_lines", lambda *a: None)
    summary = prep.prepare([str(raw)], tmp_path / "p", CFG)
    assert [w for w in summary.manifest["warnings"] if w.startswith(f"{raw}:") and "counts records, not lines" in w]
    assert reject_rows(tmp_path / "p")


def test_the_scan_answers_none_when_its_count_differs(tmp_path: Path) -> None:
    raw = tmp_path / "a.csv"
    raw.write_bytes(b'h\n1\n\n"2\n3"\n4')
    assert physical_lines(raw, 1, 3, [], [1, 2, 3]) is not None
    assert physical_lines(raw, 1, 3, [], [1, 2, 3]).typed == {1: 2, 2: 4, 3: 6}
    assert physical_lines(raw, 1, 4, [], [1]) is None  # DuckDB read 4 records: not this file's count
    assert physical_lines(raw, 1, 3, [9], []) is None  # a structural line that starts no record
    raw.write_bytes(b'h\r\n\r\n1\r\n"2\r\n\r\n3"\r\n')
    got = physical_lines(raw, 1, 2, [3], [1])  # DuckDB's line 3 is the physical 3 (the empty line counts)
    assert got is not None and (got.structural, got.typed) == ({3: 3}, {1: 4})
    assert physical_lines(raw, 1, 2, [3], [2]) is None  # one record parsed, not two


def _random_log(rnd: random.Random) -> bytes:
    eol = rnd.choice([b"\n", b"\r\n"])
    parts = [b"h,a" + eol]
    for _ in range(rnd.randint(1, 8)):
        if rnd.random() < 0.1:
            parts.append(rnd.choice([eol, b"\n", b"\r\n"]))  # an empty line
        field = rnd.choice([b"x", b'"a\r\nb"', b'"a\rb"', b"y\rz", b'"q""r"', b'5"t', b'x""y', b"p"])
        parts.append(b"1," + field + rnd.choice([eol, eol, eol, b"\n", b"\r\n", b"\r"]))
    return b"".join(parts)


def test_stray_line_ends_are_where_duckdbs_reader_stops(tmp_path: Path) -> None:
    """On random small files of mixed line ends, empty lines, returns inside and outside quotes, doubled
    quotes and quotes inside unquoted fields: stray_line_end names a line only where DuckDB's reader (as
    the load sets it up) stops, it names one for nearly all such files, and it names the same one with
    blocks of a few bytes (cut anywhere, between a return and its line feed too)."""
    rnd = random.Random(7)
    raw = tmp_path / "r.csv"
    con = duckdb.connect()
    stops = named = 0
    for _ in range(200):
        data = _random_log(rnd)
        raw.write_bytes(data)
        try:
            con.execute("select * from read_csv(?, header = true, auto_detect = false, quote = '\"', escape = '\"', "
                        "columns = {'h': 'VARCHAR', 'a': 'VARCHAR'}, buffer_size = 16777216, store_rejects = true)", [str(raw)]).fetchall()
            stopped = False
        except duckdb.InvalidInputException as err:
            assert "state machine reached an invalid state" in str(err)
            stopped = True
        line = stray_line_end(io.BytesIO(data))
        assert line is None or stopped, data  # never a line where the reader reads the file
        stops += stopped
        named += line is not None
        for block in (1, 2, 3, 5):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(csv_lines, "BLOCK", block)
                assert stray_line_end(io.BytesIO(data)) == line, (block, data)
    assert stops > 40 and named >= 0.9 * stops, (stops, named)


def test_quotes_inside_unquoted_fields_are_text(tmp_path: Path) -> None:
    """55" tv: DuckDB reads the quote as text; so do the scans (else the quote count would put every
    line after it inside a quoted field), up to MAX_LITERAL_QUOTES of them."""
    assert stray_line_end(io.BytesIO(b'h,a\n1,55" tv\n1,x\r\n')) == 3
    # a doubled quote in an unquoted field is text too (it flipped the count: line 3 was named)
    assert stray_line_end(io.BytesIO(b'a,b\nx""y,1\n"p\r\nq",2\nz,3\r\nw,4\n')) == 5
    raw = tmp_path / "q.csv"
    raw.write_bytes(b'h,a\n1,55" tv\n\n1,"x\ny"\n1,2\n')
    got = physical_lines(raw, 1, 3, [], [1, 2, 3])
    assert got is not None and got.typed == {1: 2, 2: 4, 3: 6}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(csv_lines, "MAX_LITERAL_QUOTES", 0)
        assert physical_lines(raw, 1, 3, [], [1, 2, 3]) is None


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_a_stray_carriage_return_names_its_line_and_the_fix(tmp_path: Path, suffix: str) -> None:
    """DuckDB's reader stops at a return alone outside quotes with an error that names no line: prepare
    names the line and a tr that mends it, leaves nothing behind, and the mended file prepares."""
    rows = [f"2020-01-0{1 + i // 10} 10:00:{i:02d} UTC,{'purchase' if i % 3 == 0 else 'view'},{i % 4},10,a.b,br,3.0,u{i % 5},s"
            for i in range(60)]
    rows[30] = rows[30].replace("a.b", "a\rb")
    text = (HEADER + "\n" + "\n".join(rows) + "\n").encode()
    raw = tmp_path / f"log{suffix}"
    raw.write_bytes(gzip.compress(text) if suffix.endswith(".gz") else text)
    with pytest.raises(InputError, match=r"line 32 ends otherwise than the first line .* holds a carriage return") as err:
        prep.prepare([str(raw)], tmp_path / "p", CFG)
    assert not (tmp_path / "p").exists()
    fix = str(err.value).split("e.g. ")[1].split(", and prepare")[0]
    subprocess.run(fix, shell=True, cwd=tmp_path, check=True)
    prep.prepare([str(tmp_path / "events.csv")], tmp_path / "p", CFG)


def test_the_fix_never_writes_onto_its_own_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An input named events.csv in the current folder: the hint writes events.fixed.csv (a shell that
    sends tr's output to its own input empties it first)."""
    monkeypatch.chdir(tmp_path)
    rows = [f"2020-01-0{1 + i // 10} 10:00:{i:02d} UTC,view,{i % 4},10,a.b,br,3.0,u{i % 5},s" for i in range(30)]
    rows[5] = rows[5].replace("a.b", "a\rb")
    Path("events.csv").write_bytes((HEADER + "\n" + "\n".join(rows) + "\n").encode())
    with pytest.raises(InputError, match=r"tr -d '\\r' < events\.csv > events\.fixed\.csv, and prepare events\.fixed\.csv"):
        prep.prepare(["events.csv"], tmp_path / "p", CFG)
