"""`purchasepred prepare` end to end through Typer's CliRunner: the happy path and every bad input.

Every failure must end in exit code 1, one error line that names the file, no traceback, and no
output folder (nor a hidden ``.NAME.tmp-*`` folder) left behind.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import duckdb
import pytest
import zstandard
from typer.testing import CliRunner

from conftest import TINY
from purchasepred import __version__
from purchasepred.cli import app
from purchasepred.data.prepare import OUTPUT_TABLES, SCHEMA_VERSION, sql_hashes

MANIFEST_KEYS = {
    "rows_read", "rows_rejected", "rejects_by_reason", "rows_duplicate", "rows_kept", "n_users", "n_items",
    "n_brands", "n_categories", "n_sessions", "events_by_type", "windows", "max_len", "inputs", "sql_sha256",
    "package_version", "schema_version", "duration_s",
}
TINY_ARGS = ["--eval-days", "1", "--max-len", "4"]

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["prepare", *args], catch_exceptions=False)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_clean_failure(result, needle: str, work: Path, out: Path | None = None) -> str:
    """Exit 1, exactly one error line mentioning ``needle``, no traceback, nothing left in ``work``."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = error_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert needle in lines[0], lines[0]
    leftovers = [p.name for p in work.iterdir() if p.name.startswith(".") or (out is not None and p == out)]
    assert leftovers == [], leftovers
    return lines[0]


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """An input folder and an empty work folder that receives --out."""
    src, work = tmp_path / "in", tmp_path / "work"
    src.mkdir()
    work.mkdir()
    return src, work


def test_happy_path(dirs: tuple[Path, Path]) -> None:
    _, work = dirs
    out = work / "prepared"
    result = invoke(str(TINY), "--out", str(out), *TINY_ARGS)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in work.iterdir()) == ["prepared"]  # no temporary folder left
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{t}.parquet" for t in OUTPUT_TABLES] + ["manifest.json"])
    m = json.loads((out / "manifest.json").read_text())
    assert MANIFEST_KEYS <= set(m)
    assert (m["rows_read"], m["rows_rejected"], m["rows_duplicate"], m["rows_kept"]) == (24, 5, 1, 18)
    assert m["rows_read"] == m["rows_kept"] + m["rows_rejected"] + m["rows_duplicate"]
    assert sum(m["rejects_by_reason"].values()) == m["rows_rejected"]
    assert (m["n_users"], m["n_items"], m["n_brands"], m["n_categories"], m["n_sessions"]) == (4, 3, 2, 2, 9)
    assert m["events_by_type"] == {"cart": 1, "purchase": 3, "remove_from_cart": 1, "view": 12}
    assert set(m["windows"]) == {"valid", "test", "all"}
    assert m["windows"]["test"]["window_start"] == "2019-10-04 12:00:00"
    assert m["max_len"] == 4
    assert m["inputs"] == [{"path": str(TINY), "size": TINY.stat().st_size,
                            "sha256": hashlib.sha256(TINY.read_bytes()).hexdigest(), "rows_read": m["rows_read"]}]
    assert m["sql_sha256"] == sql_hashes() and "01_load_csv.sql" in m["sql_sha256"]
    assert (m["package_version"], m["schema_version"]) == (__version__, SCHEMA_VERSION)
    # DuckDB's hash() of a fixed text, which the content hash covers: sessions are stored as their hash()
    assert m["session_hash_check"] == duckdb.connect().execute("select hash('purchasepred session')").fetchone()[0]
    assert isinstance(m["duration_s"], float) and m["duration_s"] >= 0
    # the summary table is printed: each row's label with the manifest's number
    table = {k.strip(): v.strip() for k, v in re.findall(r"^│ +(\S.*?) +│ +(.*?) │$", result.stdout, re.M)}
    assert {k: table.get(k) for k in ("rows read", "rejected", "exact duplicates removed", "kept", "users", "sessions")} == {
        "rows read": "24", "rejected": "5", "exact duplicates removed": "1", "kept": "18", "users": "4", "sessions": "9"}
    assert {r: int(table[f"rejected: {r}"].split()[0]) for r in m["rejects_by_reason"]} == m["rejects_by_reason"]
    # with the failing field's commonest values where it has one (not a missing id, not a wrong field count)
    assert m["reject_examples"] == {"negative price": {"-2.00": 1}, "unknown event_type": {"click": 1},
                                   "unparseable event_time": {"yesterday": 1}}
    assert table["rejected: negative price"] == "1 (e.g. '-2.00' 1)"
    assert table["rejected: unknown event_type"] == "1 (e.g. 'click' 1)"
    assert re.fullmatch(r"\d+\.\d", table["seconds"]), table["seconds"]
    # each step's line: seconds, rows where the step makes a table, its peak memory on Linux
    for st in m["steps"]:
        line = table[f"step {st['step']}"]
        assert line.startswith(f"{st['seconds']:.2f} s"), line
        assert ("rows" in line) == (st["rows"] is not None), line
        if st["rows"] is not None:
            assert f"{st['rows']:,} rows" in line, line
        if st["peak_rss_mb"] is not None:
            assert f"peak {st['peak_rss_mb']:,} MB" in line, line


def test_quiet_and_flags_reach_the_config(dirs: tuple[Path, Path]) -> None:
    _, work = dirs
    out = work / "p"
    result = runner.invoke(app, ["--quiet", "prepare", str(TINY), "--out", str(out), "--eval-days", "1",
                                 "--session-gap", "60", "--max-len", "3", "--min-item-count", "1",
                                 "--threads", "1", "--memory-limit", "500MB"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    m = json.loads((out / "manifest.json").read_text())
    assert m["settings"] == {"session_gap_minutes": 60.0, "min_item_count": 1, "eval_days": 1.0, "max_len": 3}
    assert (m["max_len"], m["n_sessions"], m["n_items"]) == (3, 7, 4)


def test_force_replaces_a_prepared_dataset(dirs: tuple[Path, Path]) -> None:
    _, work = dirs
    out = work / "prepared"
    assert invoke(str(TINY), "--out", str(out), *TINY_ARGS).exit_code == 0
    before = (out / "manifest.json").read_text()
    # without --force: refused, the dataset untouched
    result = invoke(str(TINY), "--out", str(out), "--eval-days", "1", "--max-len", "5")
    line = assert_clean_failure(result, str(out), work)
    assert "--force" in line
    assert (out / "manifest.json").read_text() == before
    # with --force: replaced, no old or temporary folder left
    result = invoke(str(TINY), "--out", str(out), "--eval-days", "1", "--max-len", "5", "--force")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["max_len"] == 5
    assert sorted(p.name for p in work.iterdir()) == ["prepared"]


def test_force_refuses_a_folder_that_is_not_a_dataset(dirs: tuple[Path, Path]) -> None:
    _, work = dirs
    out = work / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = invoke(str(TINY), "--out", str(out), *TINY_ARGS, "--force")
    assert_clean_failure(result, str(out), work)
    assert (out / "notes.txt").read_text() == "keep me"


def test_out_is_a_file(dirs: tuple[Path, Path]) -> None:
    _, work = dirs
    out = work / "taken"
    out.write_text("x")
    for extra in ([], ["--force"]):
        result = invoke(str(TINY), "--out", str(out), *TINY_ARGS, *extra)
        assert_clean_failure(result, str(out), work)
        assert out.read_text() == "x"


def _write_bad_inputs(src: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path given on the command line, text the error line must contain besides the path)."""
    (src / "folder").mkdir()
    (src / "empty.csv").write_bytes(b"")
    (src / "header_only.csv").write_text(TINY.read_text().splitlines()[0] + "\n")
    (src / "unknown_header.csv").write_text("when,what,item,who\n2019-10-01 00:00:00 UTC,view,1,2\n")
    (src / "garbage.csv").write_bytes(bytes(range(256)) * 40)
    (src / "garbage.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 4)
    duckdb.connect().sql("select 1 as a, 'x' as b").write_parquet(str(src / "unknown_header.parquet"))
    full = gzip.compress(TINY.read_bytes() * 400)
    (src / "truncated.csv.gz").write_bytes(full[: len(full) // 2])  # the header still reads
    (src / "truncated_head.csv.gz").write_bytes(gzip.compress(TINY.read_bytes())[:40])
    full_zst = zstandard.ZstdCompressor().compress(TINY.read_bytes() * 400)
    (src / "truncated.csv.zst").write_bytes(full_zst[: len(full_zst) // 2])  # (DuckDB alone reads the rows before the cut)
    (src / "no_valid_rows.csv").write_text(
        "event_time,event_type,product_id,user_id\n2019-10-01 00:00:00 UTC,click,1,2\nsoon,view,1,2\n"
    )
    return {
        "nonexistent": (src / "missing.csv", "no such file"),
        "directory": (src / "folder", "directory"),
        "empty": (src / "empty.csv", "empty"),
        "header_only": (src / "header_only.csv", "no event rows"),
        "unknown_header": (src / "unknown_header.csv", "event_time, event_type, product_id (or item_id), user_id"),
        "binary_garbage": (src / "garbage.csv", "binary"),
        "garbage_parquet": (src / "garbage.parquet", "Parquet"),
        "unknown_header_parquet": (src / "unknown_header.parquet", "event_time, event_type, product_id (or item_id), user_id"),
        "truncated_gz": (src / "truncated.csv.gz", "gzip"),
        "truncated_gz_head": (src / "truncated_head.csv.gz", "gzip"),
        "truncated_zst": (src / "truncated.csv.zst", "zstd file (it ends inside a zstd frame"),
        "no_valid_rows": (src / "no_valid_rows.csv", "no valid rows"),
    }


BAD = ["nonexistent", "directory", "empty", "header_only", "unknown_header", "binary_garbage",
       "garbage_parquet", "unknown_header_parquet", "truncated_gz", "truncated_gz_head", "truncated_zst",
       "no_valid_rows"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input(case: str, dirs: tuple[Path, Path]) -> None:
    src, work = dirs
    path, needle = _write_bad_inputs(src)[case]
    out = work / "prepared"
    result = invoke(str(path), "--out", str(out), *TINY_ARGS)
    line = assert_clean_failure(result, str(path), work, out)
    assert needle.lower() in line.lower()
    assert not out.exists()


def test_bad_file_among_good_ones(dirs: tuple[Path, Path]) -> None:
    src, work = dirs
    bad, _ = _write_bad_inputs(src)["truncated_gz"]
    out = work / "prepared"
    assert_clean_failure(invoke(str(TINY), str(bad), "--out", str(out), *TINY_ARGS), str(bad), work, out)


def test_glob_that_matches_nothing(dirs: tuple[Path, Path]) -> None:
    src, work = dirs
    pattern = str(src / "nothing-*.csv")
    out = work / "prepared"
    assert_clean_failure(invoke(pattern, "--out", str(out), *TINY_ARGS), pattern, work, out)


def test_unknown_header_names_the_missing_columns(dirs: tuple[Path, Path]) -> None:
    src, work = dirs
    path = src / "half.csv"
    path.write_text("event_time,event_type,brand\n2019-10-01 00:00:00 UTC,view,x\n")
    line = assert_clean_failure(invoke(str(path), "--out", str(work / "p")), str(path), work, work / "p")
    assert "column(s) product_id (or item_id), user_id;" in line  # only the missing ones


def test_bad_memory_limit(dirs: tuple[Path, Path]) -> None:
    _, work = dirs
    out = work / "prepared"
    line = assert_clean_failure(invoke(str(TINY), "--out", str(out), "--memory-limit", "lots"), "lots", work, out)
    assert "--memory-limit" in line


def test_debug_shows_the_traceback(dirs: tuple[Path, Path]) -> None:
    src, work = dirs
    result = runner.invoke(app, ["--debug", "prepare", str(src / "missing.csv"), "--out", str(work / "p")])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr


def test_output_is_independent_of_input_location(dirs: tuple[Path, Path]) -> None:
    """A copy of the input in another folder gives the same tables (paths only in manifest/rejects)."""
    src, work = dirs
    copy = src / "tiny.csv"
    shutil.copy(TINY, copy)
    assert invoke(str(TINY), "--out", str(work / "a"), *TINY_ARGS).exit_code == 0
    assert invoke(str(copy), "--out", str(work / "b"), *TINY_ARGS).exit_code == 0
    for table in ("events", "windows", "truth"):
        assert (work / "a" / f"{table}.parquet").read_bytes() == (work / "b" / f"{table}.parquet").read_bytes()


def test_check_tries_the_mapping_on_the_first_records_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["prepare", str(TINY), "--check", "--out", str(tmp_path / "p")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = {k.strip(): v.strip() for k, v in re.findall(r"^│ +(\S.*?) +│ +(.*?) │$", result.stdout, re.M)}
    # tiny.csv: 24 lines, one the reader cannot split; the 23 records as prepare's manifest counts them
    assert {k: table[k] for k in ("schema", "records sampled", "valid", "lines the reader could not split")} == {
        "schema": "rees46", "records sampled": "23", "valid": "19", "lines the reader could not split": "1"}
    assert table["rejected: unknown event_type"] == "1 (e.g. 'click')"
    assert "--set 'input.view=[click]'" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no --out, no spill folder, nothing
    # a mapping that fails every record: exit 1, the fix on stderr
    shop = tmp_path / "shop.csv"
    shop.write_text("user,item,time,event\n" + "".join(f"u{i},i{i % 3},{10 + i}.10.2019 10:00,view\n" for i in range(12)))
    result = runner.invoke(app, ["prepare", str(shop), "--check", "--set", "input.user=user", "--set", "input.item=item",
                                 "--set", "input.time=time", "--set", "input.event_type=event"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert """read with --set 'input.time_format="%d.%m.%Y %H:%M"'""" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: no valid record in the first 10,000 of {shop}; fix the mapping (see above) and run --check again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.csv"]


def test_prepare_keeps_numpy_s_blas_threads_off_while_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where numpy is not imported yet, OPENBLAS_NUM_THREADS is 1 while `prepare` runs (numpy's bundled
    OpenBLAS then starts no threads that spin on import) and unset after it, however it ends; a value of
    the user's own, or a numpy already imported, is left as it is."""
    import os
    import sys

    import purchasepred.cli as cli
    import purchasepred.data.prepare as prep
    from purchasepred.errors import InputError

    seen = []

    def spy(*args, **kwargs):  # (not prepare itself: its threads would import numpy a second time here)
        seen.append(os.environ.get("OPENBLAS_NUM_THREADS"))
        raise InputError("stopped here")

    monkeypatch.setattr(prep, "prepare", spy)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with monkeypatch.context() as m:
        m.delitem(sys.modules, "numpy")  # (put back as the block ends)
        result = invoke(str(TINY), "--out", str(tmp_path / "a"), *TINY_ARGS)
    assert result.exit_code == 1 and "stopped here" in result.output
    assert seen == ["1"] and "OPENBLAS_NUM_THREADS" not in os.environ

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    with cli.numpy_blas_threads_off():
        assert os.environ["OPENBLAS_NUM_THREADS"] == "3"
    assert os.environ["OPENBLAS_NUM_THREADS"] == "3"
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    with cli.numpy_blas_threads_off():  # (numpy imported)
        assert "OPENBLAS_NUM_THREADS" not in os.environ
