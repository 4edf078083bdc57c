"""Any store's event log: the input mapping, its presets and its up-front checks.

Hand-written fixtures of each preset (``tests/fixtures/tiny_<preset>.csv``) and, when the folder is
there, the real logs in ``<repo>/../shared/data`` (see its SOURCES.md).

* tiny_retailrocket.csv: 9 rows, times in ms; line 7 'click' (unknown), line 8 'not-a-time'.
* tiny_taobao.csv: no header; line 3 'fav' (ignored by the preset), line 6 three fields, line 9 no user.
* tiny_tianchi.csv: CRLF, no trailing newline, hour-only times; line 4 repeats line 3 exactly, line 5
  is behavior_type 2 (favourite, ignored), line 8 is dated 2014-12-32.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import gzip

import duckdb
import pytest
import zstandard

from conftest import FIXTURES, TINY, TINY_CFG, clean_failure, collide_item_hashes, invoke, open_prepared, rows
from purchasepred.cli import prepare_table
from purchasepred.config import InputConfig, PrepareConfig, load_config
from purchasepred.data.inputs import PRESETS, inspect_json, reject_hint
from purchasepred.data.prepare import check_inputs, define_clean_text, load_manifest, prepare
from purchasepred.errors import ConfigError, InputError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TAOBAO_REAL = SHARED / "taobao_userbehavior" / "UserBehavior_head.csv"
TIANCHI_REAL = SHARED / "tianchi_mobile" / "user_behavior_sample.csv"
RR = FIXTURES / "tiny_retailrocket.csv"
TAOBAO = FIXTURES / "tiny_taobao.csv"
TIANCHI = FIXTURES / "tiny_tianchi.csv"
CFG = PrepareConfig(max_len=4, eval_days=1)
CONTENT = ("events", "users", "items", "brands", "categories", "windows", "truth")


def conserved(m: dict) -> bool:
    return m["rows_read"] == m["rows_kept"] + m["rows_rejected"] + m["rows_duplicate"] + m["rows_ignored"]


def same(a: Path, b: Path) -> bool:
    con = duckdb.connect()
    for t in CONTENT:
        pa, pb = str(a / f"{t}.parquet"), str(b / f"{t}.parquet")
        n = con.execute("select count(*) from (select * from read_parquet(?) except all select * from read_parquet(?))"
                        " union all select count(*) from (select * from read_parquet(?) except all select * from read_parquet(?))",
                        [pa, pb, pb, pa]).fetchall()
        if n != [(0,), (0,)]:
            return False
    return True


def test_retailrocket_preset(tmp_path: Path) -> None:
    res = prepare([str(RR)], tmp_path / "p", CFG, input_cfg=InputConfig(schema="retailrocket"))
    m = res.manifest
    assert (m["rows_read"], m["rows_rejected"], m["rows_duplicate"], m["rows_ignored"], m["rows_kept"]) == (9, 2, 0, 0, 7)
    assert conserved(m) and not any(res.audits.values())
    assert m["rejects_by_reason"] == {"unknown event_type": 1, "unparseable event_time": 1}
    assert m["events_by_type"] == {"cart": 1, "purchase": 2, "view": 4}
    assert m["input_schemas"] == ["retailrocket"]
    con = open_prepared(tmp_path / "p")
    assert rows(con, "select line, reason, raw from rejects order by line") == [
        (7, "unknown event_type", "1433224400000,992329,click,355908,"),
        (8, "unparseable event_time", "not-a-time,992329,view,248676,"),
    ]
    # milliseconds since the epoch, UTC
    assert rows(con, "select min(event_at) from events") == [(datetime(2015, 6, 2, 5, 2, 12, 117000),)]
    assert rows(con, "select user_id from users order by user_idx") == [("111",), ("257597",), ("992329",)]
    assert rows(con, "select count(*) from categories") == [(0,)]  # no category column: all unknown


def test_taobao_preset_headerless_with_ignored_values(tmp_path: Path) -> None:
    res = prepare([str(TAOBAO)], tmp_path / "p", CFG, input_cfg=InputConfig(schema="taobao"))
    m = res.manifest
    assert (m["rows_read"], m["rows_rejected"], m["rows_duplicate"], m["rows_ignored"], m["rows_kept"]) == (9, 2, 0, 1, 6)
    assert conserved(m) and not any(res.audits.values())
    assert m["ignored_by_value"] == {"fav": 1}
    assert m["events_by_type"] == {"cart": 1, "purchase": 2, "view": 3}
    con = open_prepared(tmp_path / "p")
    # no header: line numbers count from the first line
    assert rows(con, "select line, reason, raw from rejects order by line") == [
        (6, "wrong field count", "1,2576651,149192"),
        (9, "missing user_id", ",2268318,2520377,pv,1511600200"),
    ]
    assert rows(con, "select category from categories order by category") == [("2520377",), ("2520771",)]
    assert rows(con, "select event_at from events where user_idx = 2 order by seq limit 1") == [(datetime(2017, 11, 24, 17, 21, 10),)]


def test_taobao_without_its_ignore_rejects_fav(tmp_path: Path) -> None:
    m = prepare([str(TAOBAO)], tmp_path / "p", CFG, input_cfg=InputConfig(schema="taobao", ignore=[])).manifest
    assert (m["rows_rejected"], m["rows_ignored"]) == (3, 0)
    assert m["rejects_by_reason"]["unknown event_type"] == 1
    assert conserved(m)


def test_tianchi_preset_crlf_hour_times(tmp_path: Path) -> None:
    res = prepare([str(TIANCHI)], tmp_path / "p", CFG, input_cfg=InputConfig(schema="tianchi"))
    m = res.manifest
    assert (m["rows_read"], m["rows_rejected"], m["rows_duplicate"], m["rows_ignored"], m["rows_kept"]) == (9, 1, 1, 1, 6)
    assert conserved(m) and not any(res.audits.values())
    assert m["ignored_by_value"] == {"2": 1}
    table = prepare_table(m, tmp_path / "p", 0.1)  # the summary names the raw value as one, not a bare 2
    cells = [(str(k), str(v)) for k, v in zip(table.columns[0]._cells, table.columns[1]._cells, strict=True)]
    assert ("  ignored: event value '2'", "1") in cells
    # the window after the log, which export predicts, is named as one and shows no "buyers 0"
    nxt = [v for k, v in cells if k == "window all (next, for export)"]
    assert len(nxt) == 1 and "users with inputs" in nxt[0] and "buyers" not in nxt[0], cells
    assert m["events_by_type"] == {"cart": 1, "purchase": 2, "view": 3}
    con = open_prepared(tmp_path / "p")
    assert rows(con, "select line, reason, raw from rejects") == [
        (8, "unparseable event_time", "10001082,53616768,4,,9762,2014-12-32 15"),
    ]
    assert rows(con, "select max(event_at) from events") == [(datetime(2014, 12, 13, 10),)]


def test_a_mapping_without_preset_equals_the_preset(tmp_path: Path) -> None:
    """The taobao preset is nothing but a mapping: the same keys given by hand give the same dataset."""
    spec = {k: v for k, v in PRESETS["taobao"].items()}
    by_hand = InputConfig(**spec)
    prepare([str(TAOBAO)], tmp_path / "preset", CFG, input_cfg=InputConfig(schema="taobao"))
    m = prepare([str(TAOBAO)], tmp_path / "hand", CFG, input_cfg=by_hand).manifest
    assert m["input_schemas"] == ["custom"]
    assert same(tmp_path / "preset", tmp_path / "hand")


def test_custom_mapping_delimiter_strptime_and_optional_columns(tmp_path: Path) -> None:
    raw = tmp_path / "shop.csv"
    raw.write_text(
        "Kunde;Artikel;Zeit;Aktion;Preis;Extra\n"
        "u1;a;01.10.2019 10:00;Ansicht;9,5;x\n"
        "u1;a;01.10.2019 10:05;Kauf;10;x\n"
        "u2;b;01.10.2019 11:00;ANSICHT;;x\n"
        "u2;b;02.10.2019 11:00;Kauf;-1;x\n"
        "u2;b;02.10.2019 12:00;Retoure;1;x\n"
    )
    icfg = InputConfig(user="kunde", item="Artikel", time="Zeit", event_type="Aktion", price="Preis",
                       time_format="%d.%m.%Y %H:%M", view=["ansicht"], purchase=["Kauf"], ignore=["retoure"],
                       delimiter=";")
    res = prepare([str(raw)], tmp_path / "p", PrepareConfig(max_len=3, eval_days=0.5), input_cfg=icfg)
    m = res.manifest
    assert (m["rows_read"], m["rows_rejected"], m["rows_ignored"], m["rows_kept"]) == (5, 2, 1, 2)
    assert m["rejects_by_reason"] == {"negative price": 1, "unparseable price": 1}  # "9,5" is not a number
    assert m["input_mappings"][0]["columns"] == {
        "event_time": "Zeit", "event_type": "Aktion", "product_id": "Artikel", "price": "Preis", "user_id": "Kunde"}
    con = open_prepared(tmp_path / "p")
    assert rows(con, "select line, raw from rejects order by line") == [(2, "u1;a;01.10.2019 10:00;Ansicht;9,5;x"),
                                                                        (5, "u2;b;02.10.2019 11:00;Kauf;-1;x")]
    assert rows(con, "select event_at from events order by event_at") == [
        (datetime(2019, 10, 1, 10, 5),), (datetime(2019, 10, 1, 11, 0),)]

    # the shop's times are Berlin's (summer time: +02:00), without a preset too
    prepare([str(raw)], tmp_path / "berlin", PrepareConfig(max_len=3, eval_days=0.5),
            input_cfg=replace(icfg, time_zone="Europe/Berlin"))
    assert rows(open_prepared(tmp_path / "berlin"), "select event_at from events order by event_at") == [
        (datetime(2019, 10, 1, 8, 5),), (datetime(2019, 10, 1, 9, 0),)]


def test_decimal_comma_prices(tmp_path: Path) -> None:
    # one event per item, so that each item's price is the one its line wrote
    lines = [("a", "9,5"), ("b", "1.234,56"), ("c", "1.234"), ("d", "12"), ("e", "+0,25"), ("f", "12.5"),
             ("g", "1,2,3"), ("h", "12.34,5"), ("i", "1e3"), ("j", "-1,5"), ("k", ""), ("l", "0.500"), ("m", "1.234.567,8"),
             ("n", "12,"), ("o", ",5"), ("p", "-,5"), ("q", ","), ("r", ".5")]
    raw = tmp_path / "shop.csv"
    raw.write_text("Kunde;Artikel;Zeit;Aktion;Preis\n" + "".join(
        f"u{i % 3};{item};2019-10-0{1 + i % 2} 1{i % 10}:00:00;Kauf;{price}\n" for i, (item, price) in enumerate(lines)))
    icfg = InputConfig(user="Kunde", item="Artikel", time="Zeit", event_type="Aktion", price="Preis",
                       purchase=["Kauf"], delimiter=";", decimal_separator=",")
    res = prepare([str(raw)], tmp_path / "p", PrepareConfig(max_len=3, eval_days=0.5, min_item_count=1), input_cfg=icfg)
    m = res.manifest
    # 0.500: a group never leads with 0; ',' alone is no number, '.5' is not one under the comma
    assert m["rejects_by_reason"] == {"unparseable price": 7, "negative price": 2}
    assert m["input_mappings"][0]["decimal_separator"] == ","
    con = open_prepared(tmp_path / "p")
    assert [r[0] for r in rows(con, "select raw from rejects order by line")] == [
        "u2;f;2019-10-02 15:00:00;Kauf;12.5", "u0;g;2019-10-01 16:00:00;Kauf;1,2,3",
        "u1;h;2019-10-02 17:00:00;Kauf;12.34,5", "u2;i;2019-10-01 18:00:00;Kauf;1e3", "u0;j;2019-10-02 19:00:00;Kauf;-1,5",
        "u2;l;2019-10-02 11:00:00;Kauf;0.500", "u0;p;2019-10-02 15:00:00;Kauf;-,5", "u1;q;2019-10-01 16:00:00;Kauf;,",
        "u2;r;2019-10-02 17:00:00;Kauf;.5"]
    assert dict(rows(con, "select product_id, price from items")) == {
        "a": 9.5, "b": 1234.56, "c": 1234.0, "d": 12.0, "e": 0.25, "k": None, "m": 1234567.8, "n": 12.0, "o": 0.5}
    # the default '.' reads the same file as before: '9,5', '-1,5', '1.234.567,8', '12,', ',5', '-,5' and ',' do not
    # parse, '12.5', '1e3', '.5' do
    m = prepare([str(raw)], tmp_path / "dot", PrepareConfig(max_len=3, eval_days=0.5, min_item_count=1),
                input_cfg=replace(icfg, decimal_separator=None)).manifest
    assert m["rejects_by_reason"] == {"unparseable price": 11}
    assert m["input_mappings"][0]["decimal_separator"] == "."


def test_a_typed_parquet_price_ignores_the_decimal_comma(tmp_path: Path) -> None:
    # the mapping's decimal comma is for prices written as text; a DOUBLE column reads as it is
    pq = tmp_path / "rr.parquet"
    con = duckdb.connect()
    con.execute("copy (select *, 1.5::double as price from read_csv(?, all_varchar = true) where timestamp <> 'not-a-time') "
                "to '" + str(pq).replace("'", "''") + "'", [str(RR)])
    icfg = InputConfig(schema="retailrocket", price="price", decimal_separator=",")
    m = prepare([str(pq)], tmp_path / "pq", CFG, input_cfg=icfg).manifest
    assert (m["rows_read"], m["rows_rejected"], m["rows_kept"]) == (8, 1, 7)
    assert m["input_mappings"][0]["decimal_separator"] == "."
    assert {r[0] for r in rows(open_prepared(tmp_path / "pq"), "select price from items")} == {1.5}


def test_parquet_with_a_mapping_matches_csv(tmp_path: Path) -> None:
    # a typed Parquet file (BIGINT timestamp) without the line whose time does not parse
    pq = tmp_path / "rr.parquet"
    con = duckdb.connect()
    con.execute("copy (select timestamp::bigint as timestamp, * exclude (timestamp) from read_csv(?, all_varchar = true) "
                "where timestamp <> 'not-a-time') to '" + str(pq).replace("'", "''") + "'", [str(RR)])
    icfg = InputConfig(schema="retailrocket")
    prepare([str(RR)], tmp_path / "csv", CFG, input_cfg=icfg)
    m = prepare([str(pq)], tmp_path / "pq", CFG, input_cfg=icfg).manifest
    assert (m["rows_read"], m["rows_rejected"], m["rows_kept"]) == (8, 1, 7)
    assert same(tmp_path / "pq", tmp_path / "csv")


def test_a_tsv_file_is_tab_separated_and_another_delimiter_is_named(tiny_prepared, tmp_path: Path) -> None:
    # tiny.csv has no quoted field: the same rows with tabs
    text = TINY.read_text()
    assert '"' not in text
    (tmp_path / "tiny.tsv").write_text(text.replace(",", "\t"))
    prepare([str(tmp_path / "tiny.tsv")], tmp_path / "tsv", TINY_CFG)
    assert same(tmp_path / "tsv", tiny_prepared.out)
    # a semicolon file read with the default comma: the one-line error says what to set
    (tmp_path / "tiny.csv").write_text(text.replace(",", ";"))
    with pytest.raises(InputError) as err:
        prepare([str(tmp_path / "tiny.csv")], tmp_path / "semi", TINY_CFG)
    assert "header lacks required column(s)" in str(err.value)
    assert str(err.value).endswith("""the header is one column with ',' but splits on ';': set --set 'input.delimiter=";"'""")
    assert "\n" not in str(err.value)
    # a .tsv that is really comma-separated: the same hint, for the comma
    (tmp_path / "comma.tsv").write_text(text)
    with pytest.raises(InputError) as err:
        prepare([str(tmp_path / "comma.tsv")], tmp_path / "comma", TINY_CFG)
    assert str(err.value).endswith("""the header is one column with '\\t' but splits on ',': set --set 'input.delimiter=","'""")


def _rejects(out: Path) -> list[tuple]:
    return rows(open_prepared(out), "select line, reason, raw, value from rejects order by line")


def test_latin1_and_utf16_files_read_as_their_utf8_copy(tmp_path: Path) -> None:
    text = TINY.read_text().replace("apple", "\u00e4pfel").replace("electronics", "\u00e9lectronique")
    assert "\u00e4pfel" in text
    (tmp_path / "utf8.csv").write_bytes(text.encode("utf-8"))
    (tmp_path / "latin1.csv").write_bytes(text.encode("latin-1"))
    (tmp_path / "utf16.csv").write_bytes(text.encode("utf-16-le"))  # no byte order mark
    (tmp_path / "utf16bom.csv").write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    prepare([str(tmp_path / "utf8.csv")], tmp_path / "utf8", TINY_CFG)
    rejected = _rejects(tmp_path / "utf8")
    assert len(rejected) == 5  # tiny.csv's rejects: the same lines, reasons, text and values in every encoding
    for name, encoding, recorded in (("latin1", "latin-1", "latin-1"), ("utf16", "utf-16", "utf-16"),
                                     ("utf16bom", "UTF16", "utf-16"), ("utf16bom", None, "utf-16")):
        out = tmp_path / f"{name}-{encoding}"
        m = prepare([str(tmp_path / f"{name}.csv")], out, TINY_CFG, input_cfg=InputConfig(encoding=encoding)).manifest
        assert m["input_mappings"][0]["encoding"] == recorded
        assert same(out, tmp_path / "utf8"), name
        assert _rejects(out) == rejected, name
    assert rows(open_prepared(tmp_path / "latin1-latin-1"), "select brand from brands where brand like '%pfel'") == [
        ("\u00e4pfel",)]
    # a UTF-8 and a UTF-16 file together, input.encoding unset: each read in its own (UTF-16 is detected)
    m = prepare([str(tmp_path / "utf8.csv"), str(tmp_path / "utf16.csv")], tmp_path / "both", TINY_CFG).manifest
    assert [mp["encoding"] for mp in m["input_mappings"]] == ["utf-8", "utf-16"]
    assert m["rows_read"] == 2 * load_manifest(tmp_path / "utf8")["rows_read"]


def test_a_file_in_another_encoding_says_which_to_set(tmp_path: Path) -> None:
    text = TINY.read_text().replace("apple", "\u00e4pfel")
    cases = {
        "utf16.csv": (b"\xff\xfe" + text.encode("utf-16-le"), "utf-8", "UTF-16 text, but input.encoding is utf-8"),
        "utf16be.csv": (text.encode("utf-16-be"), "utf-16", "UTF-16 big-endian text, which prepare does not read"),
        "utf8.csv": (text.encode("utf-8"), "utf-16", "input.encoding is utf-16 but the file is not UTF-16 text"),
        "utf8-as-latin1.csv": (text.encode("utf-8"), "latin-1", "UTF-8 text (its non-ASCII bytes are valid UTF-8), but "
                               "input.encoding is latin-1, which would garble it"),
        "bom-as-latin1.csv": (b"\xef\xbb\xbf" + TINY.read_bytes(), "latin-1", "UTF-8 text (it starts with a UTF-8 byte order mark)"),
        "broken-utf16.csv": (text.encode("utf-16-le").replace("\u00e4".encode("utf-16-le"), b"\x00\xd8", 1), "utf-16",
                             "not valid UTF-16 throughout"),
        "latin1.csv": (text.encode("latin-1"), None, "if the file is Latin-1 (ISO-8859-1) text, pass --set input.encoding=latin-1"),
    }
    for name, (data, encoding, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        out = tmp_path / "work" / name
        if name == "latin1.csv":  # the header is ASCII: some lines are rejected, and the manifest warns
            m = prepare([str(tmp_path / name)], out, TINY_CFG).manifest
            n = m["rejects_by_reason"]["invalid utf-8"]
            assert n == text.count("\u00e4pfel") and f"{n:,} line(s) rejected as invalid utf-8; {needle}" in m["warnings"]
            continue
        with pytest.raises(InputError) as err:
            prepare([str(tmp_path / name)], out, TINY_CFG, input_cfg=InputConfig(encoding=encoding))
        assert needle in str(err.value) and str(err.value).startswith(str(tmp_path / name)), name
        assert not out.exists()


def _packed(kind: str, data: bytes, inner: str) -> bytes:
    import bz2
    import gzip
    import io
    import lzma
    import zipfile

    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(inner, data)
        return buf.getvalue()
    if kind == "zstd-long":  # (a frame that asks for a 256 MB window: its header alone says so)
        import zstandard

        params = zstandard.ZstdCompressionParameters.from_level(3, window_log=28)
        c = zstandard.ZstdCompressor(compression_params=params).compressobj()
        return c.compress(data) + c.flush()
    if kind == "zstd-dict":
        import zstandard

        samples = [f"{i},view,{i * 7 % 1000},x,brand{i % 50},{i % 300}.00,{i % 977},s-{i % 13}\n".encode() * 3 for i in range(2000)]
        return zstandard.ZstdCompressor(dict_data=zstandard.train_dictionary(2048, samples)).compress(data)
    if kind.startswith("tar"):
        import tarfile

        import zstandard

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT if kind == "tar-gnu" else tarfile.PAX_FORMAT) as t:
            info = tarfile.TarInfo(inner)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        return {"tar.gz": gzip.compress, "tar.zst": zstandard.ZstdCompressor().compress}.get(kind, bytes)(buf.getvalue())
    return {"xz": lzma.compress, "bz2": bz2.compress, "gzip": gzip.compress,
            "zstd": lambda d: b"\x28\xb5\x2f\xfd" + d, "7z": lambda d: b"7z\xbc\xaf\x27\x1c" + d}[kind](data)


@pytest.mark.parametrize("name, kind, needle", [
    ("events.zip", "zip", "a ZIP archive; unzip it first (unzip {path}) and pass the CSV file(s) inside"),
    ("events.csv.xz", "xz", "an xz-compressed file; decompress it first (xz -dk {path})"),
    ("events.csv.bz2", "bz2", "a bzip2-compressed file; decompress it first (bunzip2 -k {path})"),
    ("events.7z", "7z", "a 7-Zip archive; extract it first (7z x {path})"),
    ("events.tar", "tar-gnu", "a tar archive; extract it first (tar -xf {path}) and pass the CSV file(s) inside"),
    ("events.tar.gz", "tar.gz", "a tar archive; extract it first (tar -xf {path})"),
    ("events.tar.zst", "tar.zst", "a tar archive; extract it first (tar -xf {path})"),
    ("events.csv", "gzip", "gzip-compressed data in a file whose name does not end in .gz; rename it to {path}.gz"),
    ("events.csv", "zstd", "zstd-compressed data in a file whose name does not end in .zst; rename it to {path}.zst"),
    ("events.csv.zst", "gzip", "not a readable zstd file (no zstd frame at byte 0); re-download or re-compress it"),
    ("events.csv.zst", "zstd-long", "a zstd file written with a window over 128 MB (zstd --long), which prepare's readers "
                                    "cannot take; compress it again without --long, e.g. zstd -dc --long=31 {path} | zstd -o"),
    ("events.csv.zst", "zstd-dict", "a zstd file compressed with a dictionary (zstd -D), which prepare cannot use; "
                                    "decompress it first, e.g. zstd -d -D DICTIONARY {path}"),
])
def test_an_archive_or_other_compression_says_what_to_do(tmp_path: Path, name: str, kind: str, needle: str) -> None:
    path = tmp_path / name
    path.write_bytes(_packed(kind, TINY.read_bytes(), "tiny.csv"))
    with pytest.raises(InputError) as err:
        prepare([str(path)], tmp_path / "work" / "p", TINY_CFG)
    assert str(err.value).startswith(f"{path}: " + needle.format(path=path))
    assert not (tmp_path / "work" / "p").exists()


def test_text_that_happens_to_spell_ustar_is_no_tar_archive(tmp_path: Path) -> None:
    """A tar header has 'ustar' and a NUL (or two spaces and a NUL) at byte 257; a log whose text has
    'ustar' there (a brand 'mustard') is read as the log it is."""
    from purchasepred.data.inputs import _check_not_archive

    _check_not_archive(tmp_path / "log.csv", b"x" * 256 + b"mustard,1,2\n")
    with pytest.raises(InputError, match="a tar archive"):
        _check_not_archive(tmp_path / "log.csv", b"x" * 257 + b"ustar  \x00")


def _setup_connection(setup_sql: str, **variables: object) -> duckdb.DuckDBPyConnection:
    """A connection in UTC with ``setup_sql`` (00_setup.sql's text) run and the macros' variables set."""
    from purchasepred.resources import connect

    con = connect()
    con.execute("set TimeZone = 'UTC'")
    con.execute(setup_sql)
    # (as prepare does for each load: clean_text's form for the empty texts and null_values given; no
    # macro reads empty_texts as a variable)
    define_clean_text(con, bool(variables.pop("empty_texts", False)), bool(variables.get("null_values")))
    for name, value in variables.items():
        con.execute(f"set variable {name} = ?", [value])
    return con


@pytest.mark.parametrize("time_format, zone, text, expected", [
    ("iso", None, "2024-07-01 10:00:00", "2024-07-01 10:00:00"),
    ("iso", None, "2024-07-01 10:00:00+02:00", "2024-07-01 08:00:00"),
    ("iso", "Europe/Berlin", "2024-07-01 10:00:00", "2024-07-01 08:00:00"),  # (summer: +02:00)
    ("iso", "Europe/Berlin", "2024-01-15 10:00:00", "2024-01-15 09:00:00"),  # (winter: +01:00)
    ("iso", "Europe/Berlin", "2024-07-01T10:00:00.5", "2024-07-01 08:00:00.5"),
    ("iso", "Europe/Berlin", "2024-07-02 09:00", "2024-07-02 07:00:00"),
    ("iso", "Europe/Berlin", "2024-07-02", "2024-07-01 22:00:00"),
    # a time that names its zone is that instant, whatever input.time_zone says
    ("iso", "Europe/Berlin", "2024-07-01 10:00:00 UTC", "2024-07-01 10:00:00"),
    ("iso", "Europe/Berlin", "2024-07-01T10:00:00Z", "2024-07-01 10:00:00"),
    ("iso", "Europe/Berlin", "2024-07-01 10:00:00+0300", "2024-07-01 07:00:00"),
    ("iso", "Europe/Berlin", "2024-07-01T10:00:00.5-05", "2024-07-01 15:00:00.5"),
    ("iso", "Europe/Berlin", "2024-07-01 10:00:00-02:00:00", "2024-07-01 12:00:00"),
    ("iso", "Europe/Berlin", "2024-07-01 09:00:00 America/New_York", "2024-07-01 13:00:00"),
    # the clock change: the hour it skips and the hour it repeats read at +01:00 (ICU)
    ("iso", "Europe/Berlin", "2024-03-31 02:30:00", "2024-03-31 01:30:00"),
    ("iso", "Europe/Berlin", "2024-10-27 02:30:00", "2024-10-27 01:30:00"),
    ("iso", "Asia/Kolkata", "2024-07-01 10:00:00", "2024-07-01 04:30:00"),
    ("iso", "Europe/Berlin", "soon", None),
    ("%d.%m.%Y %H:%M", "Europe/Berlin", "15.01.2024 10:00", "2024-01-15 09:00:00"),
    ("%d.%m.%Y %H:%M %z", "Europe/Berlin", "15.01.2024 10:00 +0000", "2024-01-15 10:00:00"),
    ("unix_s", "Europe/Berlin", "1719828000", "2024-07-01 10:00:00"),  # (unix times are UTC)
])
def test_time_zone_of_times_written_without_one(time_format: str, zone: str | None, text: str, expected: str | None) -> None:
    """00_setup.sql's parse_time under input.time_zone (input_time_zone), for each way a time is written."""
    from purchasepred.resources import sql_dir

    con = _setup_connection((sql_dir() / "00_setup.sql").read_text(), time_format=time_format, input_time_zone=zone)
    got = con.execute("select parse_time(?)::timestamp", [text]).fetchone()[0]
    assert got == (datetime.fromisoformat(expected) if expected else None)


_UTC_TIMES = [
    "2019-10-01 00:00:13 UTC", "2019-10-01T00:00:13 UTC", "2019-10-01 00:00:13.5 UTC", " 2019-10-01 00:00:13 UTC",
    "2019-10-01 24:00:00 UTC", "2019-10-01 UTC", "2019-10-01 00:00 UTC", "2019-02-30 00:00:00 UTC",
    "2019-10-01 00:00:13  UTC", "2019-10-01 00:00:13+02 UTC", "2019-10-01 00:00:13 +02:00 UTC", "1969-12-31 23:59:59 UTC",
    "10000-01-01 00:00:00 UTC", "-2019-10-01 00:00:13 UTC", "2019-10-01 00:00:13 utc", "soon UTC", " UTC", "UTC",
    "2019-10-01 00:00:13", "2019-10-01 00:00:13+02:00", "2019-10-01 00:00:13 Europe/Berlin",
]


@pytest.mark.parametrize("zone", [None, "Europe/Berlin"])
def test_the_utc_fast_path_reads_every_time_as_the_general_path(zone: str | None) -> None:
    """parse_time tries a time ending in ' UTC' with the plain TIMESTAMP cast first (utc_time): on every
    spelling, odd ones included, it gives what the general path (00_setup.sql without that step) gives."""
    from purchasepred.resources import sql_dir

    setup = (sql_dir() / "00_setup.sql").read_text()
    assert setup.count("        utc_time(t),\n") == 2
    fast = _setup_connection(setup, time_format="iso", input_time_zone=zone)
    general = _setup_connection(setup.replace("        utc_time(t),\n", ""), time_format="iso", input_time_zone=zone)
    query = "select t, parse_time(t)::timestamp from unnest(?::varchar[]) as u(t) order by t"
    got, want = fast.execute(query, [_UTC_TIMES]).fetchall(), general.execute(query, [_UTC_TIMES]).fetchall()
    assert got == want
    assert dict(got)["2019-10-01 00:00:13 UTC"] == datetime(2019, 10, 1, 0, 0, 13)


@pytest.mark.parametrize("separator, null_values", [(".", None), (".", ["NA", "12"]), (",", None)])
def test_price_of_is_the_price_of_the_cleaned_text(separator: str, null_values: list[str] | None) -> None:
    """price_of (the load's price) skips clean_text where it cannot change the number: it equals
    parse_price(clean_text(t)) for padded, blank, listed and malformed prices."""
    from purchasepred.resources import sql_dir

    texts = ["12.5", " 12.5 ", "  ", "", "1e3 ", " nan", "inf", "12. ", "\t12", " -3", "1 2", "+ 5", " .5", "NA",
             " NA", "12", " 12", "1.234,5", " 12,5", "abc", None]
    con = _setup_connection((sql_dir() / "00_setup.sql").read_text(), decimal_separator=separator,
                            null_values=null_values, empty_texts=True)
    got = con.execute("select list(price_of(t) is not distinct from parse_price(clean_text(t)) order by i) "
                      "from unnest(?::varchar[]) with ordinality as u(t, i)", [texts]).fetchone()[0]
    assert got == [True] * len(texts)
    assert con.execute("select price_of(' 12 ')").fetchone()[0] == (None if null_values else 12.0)


def test_item_texts_take_apart_what_the_load_put_together() -> None:
    """staged holds an event's item, category_id, category_code and brand as one text and their lengths
    (item_text_of, item_lens_of): item_texts gives the four back, whatever they hold (NULLs anywhere,
    several-byte characters, texts that run together alike, a text of over 2 MB)."""
    from purchasepred.resources import sql_dir

    fours = [("1003", "2053013555631882655", "electronics.smartphone", "apple"), ("a", None, None, None),
             ("ab", "c", None, None), ("a", "bc", None, None), ("a", None, "bc", None), ("a", None, None, "bc"),
             ("ü€😀", None, "x", "é"), ("1", "2", "3", "4"), ("x" * 2_200_000, "y", None, "z"), (None, "c", None, "b")]
    con = _setup_connection((sql_dir() / "00_setup.sql").read_text())
    got = con.execute("""
        select item_texts(item_text_of(f[1], f[2], f[3], f[4]), item_lens_of(f[1], f[2], f[3])), i
        from unnest(?::varchar[][]) with ordinality as u(f, i) order by i""", [[list(f) for f in fours]]).fetchall()
    assert [tuple(texts.values()) for texts, _ in got] == fours
    # ("ab", "c") and ("a", "bc") share one item_text: their lengths tell them apart
    assert con.execute("select item_text_of('ab', 'c', null, null) = item_text_of('a', 'bc', null, null)").fetchone()[0]


def test_items_whose_texts_run_together_alike_stay_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two items whose item, category_id, category_code and brand written one after another are the same
    text (item_text) are two items, each with its own category and brand: their lengths (item_lens) tell
    them apart, in their hashes and, where every hash is made one (after clean), in exact_keys.sql's
    join, which gives the same tables."""
    header = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
    lines = [header]
    for day in range(1, 29):
        for user in (1, 2, 3):
            lines.append(f"2019-10-{day:02d} 10:00:0{user} UTC,view,12,3,x.y,b,1.00,{user},s{user}-{day}")
            lines.append(f"2019-10-{day:02d} 11:00:0{user} UTC,purchase,1,23,x.y,b,2.00,{user},s{user}-{day}")
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    cfg = PrepareConfig(eval_days=7)
    want = prepare([str(tmp_path / "log.csv")], tmp_path / "want", cfg)
    assert rows(open_prepared(want.out), "select product_id, category, brand, n_events, n_purchases from items order by product_id") == [
        ("1", "23", "b", 84, 84), ("12", "3", "b", 84, 0)]

    shared = collide_item_hashes(monkeypatch)
    got = prepare([str(tmp_path / "log.csv")], tmp_path / "got", cfg)
    assert shared == [2]
    assert got.manifest["content_hash"] == want.manifest["content_hash"]


def test_category_and_brand_texts_are_cleaned_once_per_distinct_item(tmp_path: Path) -> None:
    """The load stores an item's category and brand as the file wrote them (attr_text), and 03_clean.sql
    cleans them after its distinct: events whose texts differ only in spaces around them are one item with
    one attr_code (two such events, otherwise the same, are exact duplicates), blank ones are absent, and
    the tables are those of the log written without the spaces.
    Where the mapping lists null_values, a listed text (spaces around it too) reads as absent."""
    header = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
    plain, padded, listed = [header], [header], [header]
    for day in range(1, 29):
        for user in (1, 2, 3):
            for hour, (kind, item) in enumerate((("view", 12), ("purchase", 12), ("view", 7)), start=10):
                pad = " " * ((day + user + hour) % 3)  # (none, one or two spaces, in turn)
                at = f"2019-10-{day:02d} {hour}:00:0{user} UTC"
                brand = "b" if item == 12 else ""
                plain.append(f"{at},{kind},{item},3,x.y,{brand},1.00,{user},s{user}-{day}")
                padded.append(f"{at},{kind},{item},{pad}3,x.y{pad},{pad}{brand}{pad if brand else '  '},1.00,{user},s{user}-{day}")
                listed.append(f"{at},{kind},{item},{pad}3,x.y{pad},{pad}{brand or 'NA'}{pad},1.00,{user},s{user}-{day}")
                if day == 1:  # each event twice, the second with other spaces: an exact duplicate, left out
                    plain.append(plain[-1])
                    padded.append(padded[-1].replace(f",{pad}3,", ",3 ,"))
                    listed.append(listed[-1].replace(f",{pad}3,", ",3 ,"))
    for name, lines in (("plain", plain), ("padded", padded), ("listed", listed)):
        (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n")
    cfg = PrepareConfig(eval_days=7, min_item_count=1)
    prepare([str(tmp_path / "plain.csv")], tmp_path / "plain", cfg)
    prepare([str(tmp_path / "padded.csv")], tmp_path / "padded", cfg)
    prepare([str(tmp_path / "listed.csv")], tmp_path / "listed", cfg, input_cfg=InputConfig(null_values=["NA"]))
    got = rows(open_prepared(tmp_path / "padded"), "select product_id, category, brand, n_events from items order by product_id")
    assert got == [("12", "3", "b", 168), ("7", "3", None, 84)]
    assert same(tmp_path / "padded", tmp_path / "plain") and same(tmp_path / "listed", tmp_path / "plain")


def test_time_zone_names_are_places() -> None:
    """A zone is taken by the name of a place (any case) or UTC/GMT, never by an abbreviation."""
    from purchasepred.data.inputs import time_zone_name

    assert [time_zone_name(n) for n in (" europe/berlin ", "Etc/GMT-2", "japan", "utc", "GMT")] == [
        "Europe/Berlin", "Etc/GMT-2", "Japan", "UTC", "GMT"]
    assert [time_zone_name(n) for n in ("EST", "BST", "CST6CDT", "NZ", "", "Mars/Olympus")] == [None] * 6


@pytest.mark.parametrize("values, expected", [
    (["1570000000", "1570000123.5"], "unix_s"), (["1570000000123"], "unix_ms"), (["1570000000123456"], "unix_us"),
    (["1570000000123456789"], "unix_ns"), (["1570000000", "1570000000123"], None), (["15700"], None),
    (["13.10.2019 10:00"], "%d.%m.%Y %H:%M"), (["13/10/2019 10:00:00"], "%d/%m/%Y %H:%M:%S"),
    (["10/13/2019 10:00:00", "10/12/2019 09:00:00"], "%m/%d/%Y %H:%M:%S"), (["10/13/2019 1:05 PM"], "%m/%d/%Y %I:%M %p"),
    (["20191013100000"], "%Y%m%d%H%M%S"), (["yesterday"], None), ([" "], None),
    (["2019-10-01 02:26:55 UTC", "2019-10-01T02:26:55+02:00", "2019-10-01 02:26"], "iso"), (["2019-13-01 00:00:00"], None),
])
def test_guess_time_format(values: list[str], expected: str | None) -> None:
    from purchasepred.data.inputs import guess_time_format

    assert guess_time_format(values) == expected


def test_reject_hints_name_the_key_that_fixes_them() -> None:
    from purchasepred.data.inputs import reject_hint

    assert "--set 'input.view=[wishlist]'" in reject_hint("unknown event_type", ["wishlist", "share"])
    assert reject_hint("unparseable event_time", ["1570000000123"]).endswith("--set 'input.time_format=\"unix_ms\"'")
    both = reject_hint("unparseable event_time", ["10/12/2019 10:00:00"])  # day and month both <= 12
    assert '"%d/%m/%Y %H:%M:%S"' in both and '"%m/%d/%Y %H:%M:%S" if the month comes first' in both
    assert "or the strptime format" in reject_hint("unparseable event_time", ["the third of October"])
    assert reject_hint("event_time out of range", ["1570000000"]).endswith("--set input.time_format=unix_s")
    assert reject_hint("event_time out of range", ["1999-12-31 23:59:59"]) is None  # a real time, only old
    assert reject_hint("unparseable price", ["9,99", "1.234,56"]).endswith("--set input.decimal_separator=,")
    assert reject_hint("unparseable price", ["cheap"]) is None
    assert reject_hint("negative price", ["-1"]) is None and reject_hint("unknown event_type", []) is None
    assert reject_hint("unparseable price", ["1,234", "2,500"]) is None  # a US thousand, or a decimal comma?
    assert reject_hint("unparseable price", ["1,234", "9,99"]).endswith("--set input.decimal_separator=,")
    # never the format the mapping already has (a time that is only in the future, a broken one)
    assert reject_hint("event_time out of range", ["1900000000000"], ("unix_ms",)) is None
    assert reject_hint("unparseable event_time", ["1570000000123"], ("unix_ms",)) is None
    # the value is quoted for the shell; an empty value gives no hint
    assert "--set 'input.view=[it'\"'\"'s]'" in reject_hint("unknown event_type", ["it's"])
    assert reject_hint("unknown event_type", ["", " "]) is None


def test_rejects_keep_the_failing_value_and_fixable_reasons_warn(tmp_path: Path) -> None:
    raw = tmp_path / "shop.csv"
    lines = ["Kunde;Artikel;Zeit;Aktion;Preis"]
    for i in range(60):
        action = ("Ansicht", "Kauf", "Merkliste", "Ansicht", "Teilen", "Merkliste")[i % 6]
        price = ("9,99", "12", "1.234,56")[i % 3]
        lines.append(f"u{i % 5};A{i % 7};2019-10-{1 + i % 9:02d} 1{i % 10}:00:00;{action};{price}")
    lines.append("u1;A1;2019-10-09 23:00:00;Kauf;-3")  # fixable by no key: no warning
    raw.write_text("\n".join(lines) + "\n")
    icfg = InputConfig(user="Kunde", item="Artikel", time="Zeit", event_type="Aktion", price="Preis",
                       view=["Ansicht"], purchase=["Kauf"], delimiter=";")
    m = prepare([str(raw)], tmp_path / "p", PrepareConfig(max_len=3, eval_days=1, min_item_count=1), input_cfg=icfg).manifest
    # (an unknown event is rejected for that before its price is read: the price rejects are all '9,99')
    assert m["rejects_by_reason"] == {"unknown event_type": 30, "unparseable price": 20, "negative price": 1}
    assert m["reject_examples"] == {"unknown event_type": {"Merkliste": 20, "Teilen": 10},
                                    "unparseable price": {"9,99": 20}, "negative price": {"-3": 1}}
    warned = [w for w in m["warnings"] if "rejected" in w]
    assert len(warned) == 2
    assert warned[0].startswith("30 line(s) rejected: unknown event_type; event values 'Merkliste', 'Teilen' are not in the")
    assert warned[1].startswith("20 line(s) rejected: unparseable price; prices such as") and "decimal_separator=," in warned[1]
    con = open_prepared(tmp_path / "p")
    assert rows(con, "select line, reason, value from rejects where line in (4, 62) order by line") == [
        (4, "unknown event_type", "Merkliste"), (62, "negative price", "-3")]


def test_a_reason_under_one_percent_of_the_rows_does_not_warn(tmp_path: Path) -> None:
    raw = tmp_path / "shop.csv"
    good = [f"u{i % 9},A{i % 7},2019-10-{1 + i % 9:02d} 1{i % 10}:00:00,{('view', 'purchase')[i % 2]}" for i in range(120)]
    raw.write_text("user,item,time,event\n" + "\n".join(good + ["u1,A1,2019-10-09 23:00:00,wishlist"]) + "\n")
    icfg = InputConfig(user="user", item="item", time="time", event_type="event")
    cfg = PrepareConfig(max_len=3, eval_days=1, min_item_count=1)
    m = prepare([str(raw)], tmp_path / "p", cfg, input_cfg=icfg).manifest
    assert m["rejects_by_reason"] == {"unknown event_type": 1} and m["reject_examples"] == {"unknown event_type": {"wishlist": 1}}
    assert not [w for w in m["warnings"] if "rejected" in w]  # 1 of 121 rows: under 1%
    raw.write_text("user,item,time,event\n" + "\n".join(good[:90] + ["u1,A1,2019-10-09 23:00:00,wishlist"]) + "\n")
    m = prepare([str(raw)], tmp_path / "p", cfg, force=True, input_cfg=icfg).manifest  # 1 of 91: over 1%
    assert [w for w in m["warnings"] if "rejected" in w] == [
        "1 line(s) rejected: unknown event_type; event values 'wishlist' are not in the mapping: name each, e.g. --set "
        "'input.view=[wishlist]' (or input.cart, input.purchase, input.remove_from_cart), or leave them out with "
        "--set 'input.ignore=[...]'"]


def test_no_valid_rows_names_the_time_format_to_set(tmp_path: Path) -> None:
    raw = tmp_path / "shop.csv"
    raw.write_text("user,item,time,event\n" + "".join(f"u{i},i{i},{13 + i % 9}.10.2019 10:{i:02d},view\n" for i in range(20)))
    with pytest.raises(InputError) as err:
        prepare([str(raw)], tmp_path / "p", CFG, input_cfg=InputConfig(user="user", item="item", time="time", event_type="event"))
    assert "no valid rows (rejected: unparseable event_time 20)" in str(err.value)
    assert str(err.value).endswith("""read with --set 'input.time_format="%d.%m.%Y %H:%M"'""")


def test_no_valid_rows_for_their_field_count_names_the_delimiter_or_the_schema(tmp_path: Path) -> None:
    rows_ = "".join(f"{i};{i + 100};7;pv;{1511544070 + i}\n" for i in range(12))
    raw = tmp_path / "semicolons.csv"
    raw.write_text(rows_)
    with pytest.raises(InputError) as err:
        prepare([str(raw)], tmp_path / "p", CFG, input_cfg=InputConfig(schema="taobao"))
    assert "no valid rows (rejected: wrong field count 12)" in str(err.value)
    assert str(err.value).endswith("line 1 has 1 field(s) split by ',' where the mapping reads 5 (user_id,item_id,"
                                   """category_id,behavior_type,timestamp): split by ';' it has 5, --set 'input.delimiter=";"'""")
    # four fields a line by any delimiter (a log of another shape): the schema or the columns to set
    raw.write_text("".join(f"{i},{i + 100},pv,{1511544070 + i}\n" for i in range(12)))
    with pytest.raises(InputError) as err:
        prepare([str(raw)], tmp_path / "p", CFG, input_cfg=InputConfig(schema="taobao"))
    assert str(err.value).endswith("line 1 has 4 field(s) split by ',' where the mapping reads 5 (user_id,item_id,"
                                   "category_id,behavior_type,timestamp); name the log's schema with --schema, or set "
                                   "input.delimiter, input.header or input.columns")


def test_a_file_whose_first_rows_all_fail_stops_before_it_is_loaded(tmp_path: Path, monkeypatch) -> None:
    from purchasepred.data import prepare as prepare_module

    monkeypatch.setattr(prepare_module, "SAMPLE_ROWS", 10)
    raw = tmp_path / "shop.csv"
    rows_ = [f"u{i % 4},i{i % 3},{1 + i % 28:02d}.10.2019 10:{i % 60:02d},view" for i in range(40)]
    raw.write_text("user,item,time,event\n" + "\n".join(rows_) + "\n")
    icfg = InputConfig(user="user", item="item", time="time", event_type="event")
    with pytest.raises(InputError) as err:
        prepare([str(raw)], tmp_path / "p", CFG, input_cfg=icfg)
    assert str(err.value).startswith(f"{raw}: no valid rows among its first 10 (rejected: unparseable event_time 10); "
                                     "stopped before loading the rest; event times such as")
    assert str(err.value).endswith("""read with --set 'input.time_format="%d.%m.%Y %H:%M"'""")
    assert not (tmp_path / "p").exists()
    # a sample whose records all fail for a reason that may be the file's own (unmapped event values:
    # the log may be sorted by type; times that no format reads) is loaded whole
    for event, time_ in (("wishlist", "2019-10-01 10:00:00"), ("view", "0000-00-00 00:00:00")):
        raw.write_text("user,item,time,event\n" + "".join(f"u{i},i{i},{time_},{event}\n" for i in range(12)))
        with pytest.raises(InputError) as err:
            prepare([str(raw)], tmp_path / "p", CFG, input_cfg=icfg)
        assert "no valid rows (rejected: " in str(err.value) and "first at" in str(err.value), event
    # and so is one with failures that no mapping key fixes (a missing user): the error after the load
    # counts every line and names the first
    raw.write_text("user,item,time,event\n,i1,01.10.2019 10:00,view\n" + "\n".join(rows_) + "\n")
    with pytest.raises(InputError) as err:
        prepare([str(raw)], tmp_path / "p", CFG, input_cfg=icfg)
    assert "no valid rows (rejected: unparseable event_time 40, missing user_id 1); first at" in str(err.value)
    # and a sample with one valid record is loaded too
    raw.write_text("user,item,time,event\nu9,i1,2019-10-01 10:00:00,view\n" + "\n".join(rows_) + "\n")
    m = prepare([str(raw)], tmp_path / "p", CFG, input_cfg=icfg).manifest
    assert (m["rows_kept"], m["rows_rejected"]) == (1, 40)


def test_epoch_micro_and_nanoseconds_read_as_milliseconds(tmp_path: Path) -> None:
    con = duckdb.connect()
    for unit, scale in (("us", 1000), ("ns", 1_000_000)):
        con.execute("copy (select case when timestamp = 'not-a-time' then timestamp else (timestamp::bigint * ?)::varchar end "
                    "as timestamp, * exclude (timestamp) from read_csv(?, all_varchar = true)) to '"
                    + str(tmp_path / f"rr_{unit}.csv").replace("'", "''") + "'", [scale, str(RR)])
    prepare([str(RR)], tmp_path / "ms", CFG, input_cfg=InputConfig(schema="retailrocket"))
    for unit in ("us", "ns"):
        m = prepare([str(tmp_path / f"rr_{unit}.csv")], tmp_path / unit, CFG,
                    input_cfg=InputConfig(schema="retailrocket", time_format=f"unix_{unit}")).manifest
        assert m["rows_kept"] == 7 and same(tmp_path / unit, tmp_path / "ms"), unit


def test_rees46_outputs_unchanged_by_naming_the_preset(tiny_prepared, tmp_path: Path) -> None:
    prepare([str(TINY)], tmp_path / "p", TINY_CFG, input_cfg=InputConfig(schema="rees46"))
    assert same(tmp_path / "p", tiny_prepared.out)


@pytest.mark.parametrize("icfg, needles", [
    (InputConfig(schema="retailrocket", user="visitor"), ["input.user names column 'visitor'", "timestamp, visitorid"]),
    (InputConfig(schema="retailrocket", brand="brand"), ["input.brand names column 'brand'"]),
    (InputConfig(user="visitorid", item="itemid", time="timestamp"), ["input.event_type is not mapped"]),
    (InputConfig(schema="retailrocket", session="visitorid"), ["mapped to more than one field"]),
    (InputConfig(schema="retailrocket", time_format="epoch"), ["input.time_format 'epoch'"]),
    (InputConfig(schema="retailrocket", time_format="%Y-%Q"), ["input.time_format '%Y-%Q' is not a strptime format DuckDB "
                                                               "reads (Failed to parse format specifier %Y-%Q"]),
    (InputConfig(schema="retailrocket", view=["view"], cart=["view"]), ["mapped to both input.view and input.cart"]),
    (InputConfig(schema="retailrocket", decimal_separator=";"), ["input.decimal_separator must be '.' or ','"]),
    (InputConfig(schema="retailrocket", encoding="cp1252"), ["input.encoding 'cp1252' is not one prepare reads"]),
    (InputConfig(schema="retailrocket", time_zone="Europe/Berln"), [
        "input.time_zone 'Europe/Berln' is not a time zone prepare takes (did you mean 'Europe/Berlin'?); use an IANA name"]),
    (InputConfig(schema="retailrocket", time_zone="UTC+2"), [
        "input.time_zone 'UTC+2' is not a time zone prepare takes; for a fixed offset of +02:00 set Etc/GMT-2 (the sign"]),
    (InputConfig(schema="retailrocket", time_zone="+05:30"), ["name the place whose clock it is, e.g. Asia/Kolkata"]),
    (InputConfig(schema="retailrocket", time_zone="Z"), ["'Z' is not a time zone prepare takes; Z is UTC: set UTC"]),
    # abbreviations, which ICU reads its own way (BST: Bangladesh), known to it or not
    (InputConfig(schema="retailrocket", time_zone="BST"), ["'BST' is not a time zone prepare takes; BST is an abbreviation"]),
    (InputConfig(schema="retailrocket", time_zone="cest"), ["cest is an abbreviation", "name the place"]),
])
def test_bad_mappings_fail_before_any_work(tmp_path: Path, icfg: InputConfig, needles: list[str]) -> None:
    out = tmp_path / "work" / "p"
    with pytest.raises(InputError) as err:
        prepare([str(RR)], out, CFG, input_cfg=icfg)
    for needle in needles:
        assert needle in str(err.value)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


@pytest.fixture(scope="module")
def synth_logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic log long enough for the CLI's window checks, written as Taobao and RetailRocket files."""
    from purchasepred.data.synth import generate

    root = tmp_path_factory.mktemp("logs")
    rees = root / "rees.csv"
    generate(rees, rows=4_000, days=20, seed=3)
    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    src = con.read_csv(str(rees), all_varchar=True)  # noqa: F841 - read by the queries below
    taobao, rr = root / "taobao.csv", root / "rr.csv"
    con.execute("""copy (select user_id, product_id, category_id,
                           case event_type when 'view' then 'pv' when 'purchase' then 'buy' else event_type end,
                           epoch(event_time::timestamptz)::bigint
                        from src where event_type <> 'remove_from_cart')
                   to '""" + str(taobao).replace("'", "''") + "' (header false)")
    con.execute("""copy (select (epoch(event_time::timestamptz) * 1000)::bigint as timestamp, user_id as visitorid,
                           case event_type when 'cart' then 'addtocart' when 'purchase' then 'transaction' else event_type end
                               as event, product_id as itemid, '' as transactionid
                        from src where event_type <> 'remove_from_cart')
                   to '""" + str(rr).replace("'", "''") + "' (header true)")
    return taobao, rr


def test_cli_schema_flag_and_set_mapping(tmp_path: Path, synth_logs: tuple[Path, Path]) -> None:
    taobao, rr = synth_logs
    result = invoke("prepare", taobao, "--schema", "taobao", "--out", tmp_path / "p", "--eval-days", "3")
    assert result.exit_code == 0, result.output
    m = load_manifest(tmp_path / "p")
    assert m["input_schemas"] == ["taobao"] and m["rows_rejected"] == 0 and conserved(m)
    result = invoke("prepare", rr, "--out", tmp_path / "q", "--eval-days", "3", "--set", "input.user=visitorid",
                    "--set", "input.item=itemid", "--set", "input.time=timestamp", "--set", "input.event_type=event",
                    "--set", "input.time_format=unix_ms", "--set", "input.cart=[addtocart]",
                    "--set", "input.purchase=transaction")
    assert result.exit_code == 0, result.output
    assert load_manifest(tmp_path / "q")["input_schemas"] == ["custom"]
    assert same(tmp_path / "q", _prepared(tmp_path / "r", rr, "retailrocket"))
    # the same events in both files (only Taobao's has categories): the same event sequences
    q = ("select user_idx, seq, product_id, event_type_id, event_at, session_no from read_parquet(?) "
         "join read_parquet(?) using (item_code) order by all")
    con = duckdb.connect()
    assert con.execute(q, [str(tmp_path / "q" / f) for f in ("events.parquet", "items.parquet")]).fetchall() == \
        con.execute(q, [str(tmp_path / "p" / f) for f in ("events.parquet", "items.parquet")]).fetchall()


def _prepared(out: Path, path: Path, schema: str) -> Path:
    prepare([str(path)], out, PrepareConfig(eval_days=3), input_cfg=InputConfig(schema=schema))
    return out


def test_cli_bad_mapping_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "work" / "p"
    result = invoke("prepare", RR, "--out", out, "--schema", "retailrocket", "--set", "input.user=who")
    clean_failure(result, str(RR), "input.user names column 'who'")
    assert not out.exists() and not out.parent.exists()
    with pytest.raises(ConfigError, match="input.schema"):
        load_config(sets=["input.schema=amazon"])
    result = invoke("prepare", TAOBAO, "--out", out)  # a headerless log needs its preset
    clean_failure(result, str(TAOBAO), "--schema")


@pytest.mark.skipif(not TAOBAO_REAL.is_file(), reason=f"{TAOBAO_REAL} is absent")
def test_real_taobao_userbehavior(tmp_path: Path) -> None:
    res = prepare([str(TAOBAO_REAL)], tmp_path / "p", PrepareConfig(eval_days=1), input_cfg=InputConfig(schema="taobao"))
    m = res.manifest
    assert (m["rows_read"], m["rows_rejected"], m["rows_ignored"]) == (4_321, 0, 128)
    assert m["ignored_by_value"] == {"fav": 128}
    assert conserved(m) and not any(res.audits.values())
    assert (m["rows_duplicate"], m["rows_kept"], m["rows_collapsed"], m["n_users"]) == (0, 4_193, 6, 43)
    # 3,276 items in the file, 96 of them seen only in fav rows
    assert m["n_raw_items"] == 3_180
    assert m["events_by_type"] == {"cart": 190, "purchase": 77, "view": 3_920}
    # the stray 2017-09-11 row of the original is kept (it is a valid time)
    assert m["first_event_at"].startswith("2017-09-11")


@pytest.mark.skipif(not TIANCHI_REAL.is_file(), reason=f"{TIANCHI_REAL} is absent")
def test_real_tianchi_mobile(tmp_path: Path) -> None:
    res = prepare([str(TIANCHI_REAL)], tmp_path / "p", PrepareConfig(eval_days=2), input_cfg=InputConfig(schema="tianchi"))
    m = res.manifest
    assert (m["rows_read"], m["rows_rejected"], m["rows_ignored"]) == (1_999, 0, 18)
    assert conserved(m) and not any(res.audits.values())
    # 142 exact duplicate rows (hour-only times make them common); one of the 35 buys is one of them
    assert (m["rows_duplicate"], m["rows_kept"], m["n_users"], m["n_raw_items"]) == (142, 1_839, 34, 1_680)
    assert m["events_by_type"] == {"cart": 70, "purchase": 34, "view": 1_735}
    assert (m["first_event_at"], m["last_event_at"]) == ("2014-11-18 10:00:00", "2014-12-18 23:00:00")


# --------------------------------------------------------------------------------------------------
# run settings: per-step results, memory limit as a share of RAM, the spill folder, a stable hash


def test_steps_in_manifest_and_a_stable_content_hash(tmp_path: Path) -> None:
    m = prepare([str(TINY)], tmp_path / "p", TINY_CFG, input_cfg=InputConfig()).manifest
    names = [s["step"] for s in m["steps"]]
    assert names == ["inspect inputs", "setup", "load", "validate", "clean", "sessionize", "vocab", "encode",
                     "split", "audits", "write tables"]
    rows_of = {s["step"]: s["rows"] for s in m["steps"]}
    # clean counts the user and item keys it codes; sessionize the kept events
    assert (rows_of["load"], rows_of["validate"], rows_of["clean"], rows_of["sessionize"], rows_of["encode"]) == (23, 5, 8, 17, 17)
    # encode writes events.parquet itself: the step "write tables" writes the seven other tables
    assert rows_of["write tables"] == 7 and (tmp_path / "p" / "events.parquet").is_file()
    assert all(s["seconds"] >= 0 for s in m["steps"])
    # the same input and settings give the same hash, whatever the timings; other settings another one
    again = prepare([str(TINY)], tmp_path / "again", TINY_CFG).manifest
    assert again["content_hash"] == m["content_hash"]
    other = prepare([str(TINY)], tmp_path / "q", PrepareConfig(max_len=5, eval_days=1)).manifest
    assert other["content_hash"] != m["content_hash"]


def test_memory_limit_share_and_temp_dir(tmp_path: Path) -> None:
    from purchasepred.data.prepare import memory_limit_bytes

    assert memory_limit_bytes("2GB") == "2GB"
    mb = int(memory_limit_bytes("50%")[:-2])
    assert 64 <= mb and mb * 2 ** 20 <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.51
    with pytest.raises(InputError, match="between 0% and 100%"):
        memory_limit_bytes("150%")
    spill = tmp_path / "spill"
    m = prepare([str(TINY)], tmp_path / "p", PrepareConfig(max_len=4, eval_days=1, memory_limit="25%",
                                                            temp_dir=str(spill))).manifest
    assert m["memory_limit"].endswith("MB")
    assert not spill.exists() or list(spill.iterdir()) == []  # its own subfolder is removed afterwards
    result = invoke("prepare", TINY, "--out", tmp_path / "w" / "p", "--memory-limit", "lots%")
    clean_failure(result, "lots%", "--memory-limit")


REES46_REAL = SHARED / "rees46_multicat" / "2019-10-01_sessions-starting-before-0242UTC.csv"


@pytest.mark.parametrize("path, schema", [(REES46_REAL, "rees46"), (TAOBAO_REAL, "taobao"), (TIANCHI_REAL, "tianchi")])
def test_run_end_to_end_on_each_real_sample(path: Path, schema: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole job on each store's real rows: every ranker fitted on valid and scored on test, even where
    a window holds a handful of buyers (the Tianchi sample once crashed the re-ranker's fit)."""
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    monkeypatch.chdir(tmp_path)
    result = invoke("run", path, "--set", f"input.schema={schema}", "--epochs", "1", "--no-refit",
                    "--set", "model.d_model=16", "--set", "model.n_layers=1", "--set", "eval.bootstrap=50",
                    "--run-name", schema, "--quiet")
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "output" / schema / "metrics.json").read_text())
    assert set(m["fitted_on_valid"]["valid_ndcg@10"]) == {"popularity", "history", "model", "blend", "tifu_knn",
                                                           "propensity", "two_stage"}
    assert (tmp_path / "output" / schema / "recommendations.csv").stat().st_size > 0


def test_check_inputs_on_csv_and_parquet_matches_what_prepare_counts(tmp_path: Path) -> None:
    from purchasepred.data.prepare import check_inputs

    pq = tmp_path / "rr.parquet"
    duckdb.connect().execute("copy (select * from read_csv(?, all_varchar = true)) to '" + str(pq).replace("'", "''") + "'",
                             [str(RR)])
    icfg = InputConfig(schema="retailrocket")
    csv_check, pq_check = check_inputs([str(RR), str(pq)], icfg)
    m = prepare([str(RR)], tmp_path / "p", CFG, input_cfg=icfg).manifest
    for c in (csv_check, pq_check):
        assert c["records"] == m["rows_read"] and c["ignored"] == m["rows_ignored"]
        assert {r: v["n"] for r, v in c["rejected"].items()} == m["rejects_by_reason"]
        assert c["valid"] == m["rows_read"] - m["rows_rejected"] - m["rows_ignored"]
    assert csv_check["rejected"]["unknown event_type"]["examples"] == ["click"]
    assert check_inputs([str(RR)], icfg, rows=3)[0]["records"] == 3


def test_the_sample_check_leaves_rejects_and_counts_as_a_whole_load_makes_them(tmp_path: Path, monkeypatch) -> None:
    # reader rejects (a wrong field count, bytes that are not UTF-8) and typed ones (a bad time) before and
    # after the sample's end: the same manifest counts and rejects with a 5-record sample as with none
    from purchasepred.data import prepare as prepare_module

    lines = [",".join(("2019-10-0%d 1%d:00:00 UTC" % (1 + i % 3, i % 10), "view", f"{100 + i % 7}", "5", "", "b", "1",
                       f"{i % 4}", "s")).encode() for i in range(30)]
    lines[2] = lines[2] + b",extra"
    lines[3] = lines[3].replace(b",b,", b",caf\xe9,")
    lines[6] = lines[6].replace(b"UTC", b"soon")
    lines[20] = lines[20] + b",extra"
    lines[22] = lines[22].replace(b",b,", b",caf\xe9,")
    raw = tmp_path / "log.csv"
    raw.write_bytes(TINY.read_bytes().split(b"\n")[0] + b"\n" + b"\n".join(lines) + b"\n")
    made = {}
    for n in (5, 10**9):
        monkeypatch.setattr(prepare_module, "SAMPLE_ROWS", n)
        m = prepare([str(raw)], tmp_path / f"p{n}", CFG).manifest
        made[n] = ({k: m[k] for k in ("rows_read", "rows_kept", "rows_rejected", "rejects_by_reason")},
                   rows(open_prepared(tmp_path / f"p{n}"), "select line, reason, raw, value from rejects order by line"))
    assert made[5] == made[10**9]
    assert made[5][0]["rejects_by_reason"] == {"invalid utf-8": 2, "wrong field count": 2, "unparseable event_time": 1}
    assert [r[0] for r in made[5][1]] == [4, 5, 8, 22, 24]


def test_check_inputs_names_unreadable_lines_only_when_it_read_them_all(tmp_path: Path) -> None:
    from purchasepred.data.prepare import check_inputs

    text = TINY.read_text().replace("apple", "\u00e4pfel")
    (tmp_path / "latin1.csv").write_bytes(text.encode("latin-1"))
    whole = check_inputs([str(tmp_path / "latin1.csv")])[0]  # shorter than the sample: read to its end
    body = text.splitlines()[1:]
    bad = [line for line in body if "\u00e4pfel" in line or line.count(",") != 8]
    assert set(whole["unreadable_lines"]) == {"invalid utf-8"} or set(whole["unreadable_lines"]) == {
        "invalid utf-8", "wrong field count"}
    assert sum(whole["unreadable_lines"].values()) == len(bad) and whole["records"] == len(body) - len(bad)
    cut = check_inputs([str(TINY)], rows=3)[0]  # a sample cut short: the reader has not named them
    assert cut["records"] == 3 and cut["unreadable_lines"] is None


@pytest.fixture(scope="module")
def views_and_orders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One synthetic log's views and purchases three ways: as two tables of their own (views.csv with no
    event column; orders.csv with other column names, a strptime time, ';' and a price; orders.parquet the
    same), and as one REES46 file of the same events (no sessions, categories or brands; prices only on
    purchases)."""
    from purchasepred.data.synth import generate

    root = tmp_path_factory.mktemp("views_orders")
    generate(root / "rees.csv", rows=4_000, days=20, seed=5)
    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    src = con.read_csv(str(root / "rees.csv"), all_varchar=True)  # noqa: F841 - read by the queries below
    paths = {name: root / name for name in ("views.csv", "orders.csv", "orders.parquet", "combined.csv")}
    con.execute("create view v as select user_id as customer, product_id as sku, event_time as viewed_at from src "
                "where event_type = 'view'")
    con.execute("create view o as select product_id as article, user_id as buyer, "
                "strftime(event_time::timestamptz, '%d.%m.%Y %H:%M:%S') as ordered_at, price as amount from src "
                "where event_type = 'purchase'")
    con.execute("create view c as select event_time, event_type, product_id, '' as category_id, '' as category_code, "
                "'' as brand, case when event_type = 'purchase' then price end as price, user_id, '' as user_session "
                "from src where event_type in ('view', 'purchase')")
    for view, path, options in (("v", paths["views.csv"], "header"), ("o", paths["orders.csv"], "header, delimiter ';'"),
                                ("o", paths["orders.parquet"], "format parquet"), ("c", paths["combined.csv"], "header")):
        con.execute(f"copy {view} to '{str(path).replace(chr(39), chr(39) * 2)}' ({options})")
    return paths


PER_FILE = InputConfig(user="customer", item="sku", time="viewed_at", files=[
    {"match": "views.csv", "event": "view"},
    {"match": "orders*", "event": "purchase", "user": "buyer", "item": "article", "time": "ordered_at",
     "time_format": "%d.%m.%Y %H:%M:%S", "price": "amount", "delimiter": ";"},
])


@pytest.mark.parametrize("orders", ["orders.csv", "orders.parquet"])
def test_views_and_orders_in_files_of_their_own_equal_one_log(tmp_path: Path, views_and_orders: dict[str, Path],
                                                                orders: str) -> None:
    """input.files maps each file on its own (input.event for a file with no event column): the dataset is
    the one the same events give as one REES46 log."""
    cfg = PrepareConfig(eval_days=3)
    paths = [views_and_orders["views.csv"], views_and_orders[orders]]
    m = prepare([str(p) for p in paths], tmp_path / "p", cfg, input_cfg=PER_FILE).manifest
    one = prepare([str(views_and_orders["combined.csv"])], tmp_path / "one", cfg).manifest
    assert m["rows_read"] == one["rows_read"] and m["rows_rejected"] == 0 and conserved(m)
    assert m["events_by_type"] == one["events_by_type"] and set(m["events_by_type"]) == {"view", "purchase"}
    assert [(mp.get("event"), mp["from"]) for mp in m["input_mappings"]] == [
        ("view", "input.files entry 1 (views.csv)"), ("purchase", "input.files entry 2 (orders*)")]
    assert [i["rows_read"] for i in m["inputs"]] == [len(views_and_orders["views.csv"].read_text().splitlines()) - 1,
                                                     one["events_by_type"]["purchase"]]
    assert same(tmp_path / "p", tmp_path / "one")


def test_an_entry_overrides_the_event_keys_and_a_preset_entry_starts_from_its_preset(
        tmp_path: Path, views_and_orders: dict[str, Path]) -> None:
    """The input keys map one file and an entry another: an entry's event replaces an event_type set above
    (and an entry's event_type an event), and an entry that names a schema takes nothing from above."""
    views, combined = views_and_orders["views.csv"], views_and_orders["combined.csv"]
    cfg = PrepareConfig(eval_days=3)
    # the REES46 file mapped by the input keys, the views by an entry with event: view
    rees_keys = InputConfig(user="user_id", item="product_id", time="event_time", event_type="event_type",
                            files=[{"match": "views.csv", "event": "view", "user": "customer", "item": "sku",
                                    "time": "viewed_at"}])
    a = prepare([str(combined), str(views)], tmp_path / "a", cfg, input_cfg=rees_keys).manifest
    # the views mapped by the input keys (event: view), the REES46 file by an entry with its event_type
    view_keys = InputConfig(user="customer", item="sku", time="viewed_at", event="view",
                            files=[{"match": "combined.csv", "event_type": "event_type", "user": "user_id",
                                    "item": "product_id", "time": "event_time"}])
    b = prepare([str(combined), str(views)], tmp_path / "b", cfg, input_cfg=view_keys).manifest
    # the same, the REES46 file by its preset: nothing of the input keys applies to it
    preset = replace(view_keys, files=[{"match": "combined.csv", "schema": "rees46"}])
    c = prepare([str(combined), str(views)], tmp_path / "c", cfg, input_cfg=preset).manifest
    n_views, n_purchases = len(views.read_text().splitlines()) - 1, combined.read_text().count(",purchase,")
    for m in (a, b, c):  # (the views twice: once in each file)
        assert m["rows_rejected"] == 0 and m["rows_read"] == 2 * n_views + n_purchases and conserved(m)
    assert a["events_by_type"] == b["events_by_type"] == c["events_by_type"]
    assert same(tmp_path / "a", tmp_path / "b") and same(tmp_path / "b", tmp_path / "c")


def test_a_per_file_preset_and_mappings_without_input_event_or_entries_keep_their_manifest(tmp_path: Path) -> None:
    """An entry may name a preset: a RetailRocket and a Taobao file prepare together. A mapping without
    input.event or an entry writes no new key (the tables of other logs are byte-identical as before)."""
    icfg = InputConfig(files=[{"match": "tiny_retailrocket.csv", "schema": "retailrocket"},
                              {"match": "TINY_TAOBAO.CSV", "schema": "taobao"}])  # (globs match in any case)
    m = prepare([str(RR), str(TAOBAO)], tmp_path / "p", CFG, input_cfg=icfg).manifest
    rr = prepare([str(RR)], tmp_path / "rr", CFG, input_cfg=InputConfig(schema="retailrocket")).manifest
    tb = prepare([str(TAOBAO)], tmp_path / "tb", CFG, input_cfg=InputConfig(schema="taobao")).manifest
    assert m["input_schemas"] == ["retailrocket", "taobao"]
    for key in ("rows_read", "rows_rejected", "rows_ignored"):
        assert m[key] == rr[key] + tb[key]
    assert [i["rows_read"] for i in m["inputs"]] == [rr["rows_read"], tb["rows_read"]]
    assert [mp.pop("from") for mp in m["input_mappings"]] == ["input.files entry 1 (tiny_retailrocket.csv)",
                                                             "input.files entry 2 (TINY_TAOBAO.CSV)"]
    assert m["input_mappings"] == rr["input_mappings"] + tb["input_mappings"]
    assert all("event" not in mp and "from" not in mp for mp in rr["input_mappings"] + tb["input_mappings"])


def test_hints_and_errors_of_a_file_mapped_by_an_entry_name_the_entry(tmp_path: Path,
                                                                      views_and_orders: dict[str, Path]) -> None:
    """A --set would change every file: what to fix in a file mapped by an entry is said as the key in that
    entry, and the warnings after the load are worked out per file, with its own time format."""
    views, orders = views_and_orders["views.csv"], views_and_orders["orders.csv"]
    no_format = replace(PER_FILE, files=[PER_FILE.files[0], {k: v for k, v in PER_FILE.files[1].items() if k != "time_format"}])
    checked = check_inputs([str(views), str(orders)], no_format)
    assert checked[0]["rejected"] == {} and checked[1]["valid"] == 0
    assert checked[1]["rejected"]["unparseable event_time"]["hint"].endswith(
        'read with time_format: "%d.%m.%Y %H:%M:%S" in input.files entry 2 (orders*)')
    warned = [w for w in prepare([str(views), str(orders)], tmp_path / "p", CFG, input_cfg=no_format).manifest["warnings"]
              if "rejected" in w]
    n_orders = len(orders.read_text().splitlines()) - 1
    assert len(warned) == 1 and warned[0].startswith(f"{orders}: {n_orders} line(s) rejected: unparseable event_time; ")
    assert warned[0].endswith('read with time_format: "%d.%m.%Y %H:%M:%S" in input.files entry 2 (orders*)')
    bad_column = replace(PER_FILE, files=[PER_FILE.files[0], {**PER_FILE.files[1], "price": "amnt"}])
    with pytest.raises(InputError, match=r"input.price names column 'amnt'.*; fix input.files entry 2 \(orders\*\)$"):
        prepare([str(views), str(orders)], tmp_path / "bad", CFG, input_cfg=bad_column)
    # after the load: 5% of the views have day-first times, the orders are read with a day-first format
    mixed = tmp_path / "views.csv"
    lines = views.read_text().splitlines()
    for i in range(1, len(lines), 20):
        user, item, at = lines[i].split(",")
        lines[i] = f"{user},{item},{at[8:10]}.{at[5:7]}.{at[:4]} {at[11:19]}"
    mixed.write_text("\n".join(lines) + "\n")
    m = prepare([str(mixed), str(orders)], tmp_path / "q", PrepareConfig(eval_days=3), input_cfg=PER_FILE).manifest
    n = m["rejects_by_reason"]["unparseable event_time"]
    assert n == len(range(1, len(lines), 20))
    assert [w for w in m["warnings"] if "rejected" in w] == [
        f"{mixed}: {n} line(s) rejected: unparseable event_time; event times such as "
        + ", ".join(repr(v) for v in list(m["reject_examples"]["unparseable event_time"])[:3])
        + ' read with time_format: "%d.%m.%Y %H:%M:%S" in input.files entry 1 (views.csv)']


@pytest.mark.parametrize("files, needles", [
    ([{"match": "order.csv", "event": "purchase"}, {"match": "nothing.csv", "event": "view"}],
     ["input.files entry 1 (order.csv) matches none of the input files (", "input.files entry 2 (nothing.csv) matches none"]),
    ([{"match": "*.csv", "event": "view"}, {"match": "orders.csv", "event": "purchase"}],
     ["input.files entry 2 (orders.csv) is never used: ", "orders.csv takes input.files entry 1 (*.csv), the first that "
      "matches; put the more specific entry first"]),
    ([{"match": "views.csv", "evnt": "view"}], ["unknown key 'evnt' in input.files entry 1 (did you mean 'event'?)"]),
    ([{"event": "view"}], ["input.files entry 1 has no match"]),
    ([{"match": "views.csv", "event": "buy"}], ["input.event in input.files entry 1 must be one of view, cart, purchase"]),
    ([{"match": "views.csv", "event": "view"}, {"match": "orders.csv", "time_format": "epoch"}],
     ["input.files entry 2 (orders.csv): input.time_format 'epoch'"]),
    (["orders.csv", {"match": "views.csv", "evnt": "view"}], ["input.files entry 1 must be a mapping",
                                                            "unknown key 'evnt' in input.files entry 2"]),
    ([{"match": "views.csv", "event": "view", "event_type": "kind"}],
     ["input.files entry 1 (views.csv): input.event (view) and input.event_type (kind) are both set"]),
    ([{"match": "views.csv", "event": "view", "ignore": ["x"]}],
     ["input.files entry 1 (views.csv): input.ignore has no effect beside input.event (view)"]),
    ([{"match": "views.csv"}], ["views.csv: input.event_type is not mapped", "or input.event, the one event of every row",
                                "fix input.files entry 1 (views.csv)"]),
])
def test_bad_file_entries_fail_before_any_work(tmp_path: Path, views_and_orders: dict[str, Path], files: list,
                                               needles: list[str]) -> None:
    out = tmp_path / "work" / "p"
    icfg = replace(PER_FILE, files=files)
    with pytest.raises(InputError) as err:
        prepare([str(views_and_orders["views.csv"]), str(views_and_orders["orders.csv"])], out, CFG, input_cfg=icfg)
    for needle in needles:
        assert needle in str(err.value)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_input_event_never_overrules_an_event_column_silently(tmp_path: Path, views_and_orders: dict[str, Path]) -> None:
    combined = views_and_orders["combined.csv"]
    with pytest.raises(InputError, match=r"combined.csv: input.event \(purchase\) would read every row as a purchase, but "
                                         r"the file has the event-type column 'event_type' of the rees46 schema"):
        prepare([str(combined)], tmp_path / "p", CFG, input_cfg=InputConfig(event="purchase"))
    with pytest.raises(InputError, match=r"input.view has no effect beside input.event \(purchase\)"):
        prepare([str(combined)], tmp_path / "p", CFG, input_cfg=InputConfig(event="purchase", view=["pv"]))
    rees_view = tmp_path / "rview.csv"  # a REES46 header without its event column
    rees_view.write_text("event_time,product_id,user_id\n2019-10-01 00:00:00 UTC,1,2\n")
    with pytest.raises(InputError, match="header lacks required column.s. event_type; the rees46 schema needs them; for "
                                         "a file whose rows are all one event set input.event"):
        prepare([str(rees_view)], tmp_path / "p", CFG)


def test_cli_per_file_mapping_with_set_and_check(tmp_path: Path, views_and_orders: dict[str, Path]) -> None:
    views, orders = views_and_orders["views.csv"], views_and_orders["orders.csv"]
    sets = ["--set", "input.user=customer", "--set", "input.item=sku", "--set", "input.time=viewed_at", "--set",
            "input.files=[{match: views.csv, event: view}, {match: 'orders*', event: purchase, user: buyer, item: article, "
            "time: ordered_at, time_format: '%d.%m.%Y %H:%M:%S', price: amount, delimiter: ';'}]"]
    result = invoke("prepare", views, orders, "--check", *sets)
    assert result.exit_code == 0, result.output
    assert "every row: view (input.event)" in result.output and "every row: purchase (input.event)" in result.output
    assert "input.files entry 2 (orders*)" in result.output
    result = invoke("prepare", views, orders, "--out", tmp_path / "p", "--eval-days", "3", *sets)
    assert result.exit_code == 0, result.output
    prepare([str(views), str(orders)], tmp_path / "q", PrepareConfig(eval_days=3), input_cfg=PER_FILE)
    assert same(tmp_path / "p", tmp_path / "q")
    with pytest.raises(ConfigError, match=r"unknown key 'evnt' in input.files entry 1 \(did you mean 'event'\?\)"):
        load_config(sets=["input.files=[{match: a.csv, evnt: view}]"])
    with pytest.raises(ConfigError, match="input.files in --set must be a list, and this text is not one YAML reads: quote"):
        load_config(sets=["input.files=[{match: *.csv, event: view}]"])  # (* starts a YAML alias)
    assert load_config(sets=["input.files={match: a.csv, event: view}"]).input.files == [{"match": "a.csv", "event": "view"}]
    result = invoke("prepare", views, orders, "--out", tmp_path / "r", "--set", "input.files=[{match: x.csv, event: view}]")
    clean_failure(result, "input.files entry 1 (x.csv) matches none of the input files")


def test_parquet_empty_texts_read_as_missing_like_the_csv_s_empty_fields(tmp_path: Path) -> None:
    """A Parquet file whose text columns hold '' where the CSV has empty fields (DuckDB's CSV reader gives
    NULL, never '') prepares to the CSV's tables, rejects and counts: clean_text reads '' as NULL for
    Parquet and JSON lines (empty_texts), where for CSV that test drops out."""
    pq = tmp_path / "tiny_empty.parquet"
    con = duckdb.connect()
    con.execute("copy (select coalesce(columns(*), '') from read_csv(?, all_varchar = true, ignore_errors = true)) to '"
                + str(pq).replace("'", "''") + "'", [str(TINY)])
    assert con.execute("select count(*) from read_parquet(?) where brand = '' or user_session = ''", [str(pq)]).fetchone()[0] > 0
    c = prepare([str(TINY)], tmp_path / "c", TINY_CFG).manifest
    m = prepare([str(pq)], tmp_path / "p", TINY_CFG).manifest
    assert conserved(m) and m["rejects_by_reason"] == {k: v for k, v in c["rejects_by_reason"].items() if k != "wrong field count"}
    assert same(tmp_path / "p", tmp_path / "c")


# ---- JSON lines ---------------------------------------------------------------------------------------

def _tiny_as_json_lines(path: Path, nested: bool = False) -> Path:
    """tests/fixtures/tiny.csv as JSON lines, record for record: every field a string (nested: numbers as
    numbers, empty fields left out, the user under ctx.user.id); its one line with a wrong field count
    stays as it is (no JSON). The records are the CSV's lines less its header: line numbers one lower."""
    import csv

    header, *records = list(csv.reader(TINY.open()))
    lines = []
    for r in records:
        if len(r) != len(header):
            lines.append(",".join(r))
            continue
        d: dict = dict(zip(header, r, strict=True))
        if nested:
            d = {k: v for k, v in d.items() if v != ""}
            if "price" in d:
                d["price"] = float(d["price"])
            user = d.pop("user_id", None)
            d["ctx"] = {"user": {"id": int(user)}} if user else {}
        lines.append(json.dumps(d))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("nested", [False, True])
def test_json_lines_give_the_tables_of_the_same_csv(tmp_path: Path, nested: bool) -> None:
    """A log as JSON lines (REES46 detected by its keys; or a nested user key mapped by its dotted path)
    prepares to the same tables as the CSV; each reject keeps its line, reason and value, with the
    line's own text; the CSV's line that the reader could not split is malformed JSON here."""
    jsonl = _tiny_as_json_lines(tmp_path / "tiny.jsonl", nested)
    icfg = InputConfig(schema="rees46", user="ctx.user.id") if nested else None
    m = prepare([str(jsonl)], tmp_path / "j", TINY_CFG, input_cfg=icfg).manifest
    c = prepare([str(TINY)], tmp_path / "c", TINY_CFG).manifest
    assert conserved(m) and (m["rows_read"], m["rows_rejected"]) == (c["rows_read"], c["rows_rejected"])
    assert m["input_mappings"][0]["schema"] == "rees46"
    assert m["input_mappings"][0]["columns"]["user_id"] == ("ctx.user.id" if nested else "user_id")
    assert same(tmp_path / "j", tmp_path / "c")
    text = jsonl.read_text().splitlines()
    got = rows(open_prepared(tmp_path / "j"), "select line, reason, value, raw from rejects order by line")
    want = rows(open_prepared(tmp_path / "c"), "select line - 1, reason, value from rejects order by line")
    assert [g[:2] for g in got] == [(line, "malformed json" if reason == "wrong field count" else reason)
                                    for line, reason, _ in want]
    assert [g[2] for g in got] == [("-2.0" if nested and v == "-2.00" else v) for _, _, v in want]
    assert [g[3] for g in got] == [text[line - 1] for line, *_ in got]


@pytest.mark.parametrize("name", ["edge.jsonl", "edge.ndjson.gz", "edge.jsonl.zst"])
def test_json_lines_reject_every_line_that_is_no_event_object(tmp_path: Path, name: str) -> None:
    """An empty line, a line that is not UTF-8, one with a raw control character, an array, an object with
    text after it: each a reject with its line number and text (CRLF line ends); the other lines load."""
    import gzip

    good = [json.dumps({"u": f"u{k % 4}", "i": f"i{k % 3}", "t": f"2019-10-0{1 + k % 5} 1{k % 10}:00:00",
                        "e": "purchase" if k % 3 == 0 else "view"}) for k in range(30)]
    bad = [b"", b'{"u": "b", "i": "\xff", "t": "2019-10-01 10:00:00", "e": "view"}',
           b'{"u": "c", "i": "y\x01", "t": "2019-10-01 10:00:00", "e": "view"}', b"[1, 2]",
           b'{"u": "d", "i": "z", "t": "2019-10-01 10:00:00", "e": "view"} and more', b"   "]
    lines = [g.encode() for g in good[:5]] + bad + [g.encode() for g in good[5:]]
    data = b"\r\n".join(lines) + b"\r\n"
    path = tmp_path / name
    import zstandard

    pack = {".gz": gzip.compress, ".zst": zstandard.ZstdCompressor().compress}.get(Path(name).suffix, bytes)
    path.write_bytes(pack(data))
    icfg = InputConfig(user="u", item="i", time="t", event_type="e")
    m = prepare([str(path)], tmp_path / "p", PrepareConfig(max_len=4, eval_days=1, min_item_count=1), input_cfg=icfg).manifest
    assert (m["rows_read"], m["rows_rejected"]) == (36, 6) and conserved(m)
    assert m["rejects_by_reason"] == {"empty line": 2, "invalid utf-8": 1, "malformed json": 3}
    got = rows(open_prepared(tmp_path / "p"), "select line, reason, raw from rejects order by line")
    assert [g[:2] for g in got] == [(6, "empty line"), (7, "invalid utf-8"), (8, "malformed json"),
                                    (9, "malformed json"), (10, "malformed json"), (11, "empty line")]
    assert [g[2] for g in got[2:5]] == [b.decode() for b in bad[2:5]] and got[0][2] == ""
    assert any("invalid utf-8" in w and "input.encoding=latin-1" in w for w in m["warnings"])


def test_json_lines_that_are_not_one_object_per_line_fail_with_the_fix(tmp_path: Path) -> None:
    """A JSON array, an object over several lines, an empty file, a key the records lack (the dotted path
    of a nested one named), UTF-16: one line each, before any work."""
    cases = {
        "array.json": ('[{"a": 1},\n{"a": 2}]\n', "line 1 is a JSON array, not one object per line; write one object "
                                                   "per line first, e.g. jq -c '.[]'"),
        "pretty.json": ('\n{\n  "a": 1\n}\n', "line 2 is not a JSON object on one line"),
        "empty.jsonl": ("\n\n", "the file is empty; pass a file of JSON lines"),
        "nested.jsonl": ('{"ts": 1, "type": "view", "sku": "a", "context": {"user": {"id": 1}}}\n',
                         "input.user names column 'context.user', which the file does not have (no record has that key; "
                         "a nested key is named by its dotted path, e.g. context.user.id); found ts, type, sku, "
                         "context.user.id"),
    }
    mixed = (b'{"context": {"user": "a"}, "sku": "x", "ts": 1, "type": "view"}\n'
             b'{"context": {"user": "a"}, "sku": "y", "ts": 2, "type": "view"}\r\n')
    more = {
        "seq.jsonl": (b'\x1e{"a": 1}\n', "line 1 is a JSON text sequence (RFC 7464: each record starts with the byte "
                                         "0x1E); take those bytes out first, e.g. tr -d"),
        "latin.jsonl": (b'{"a": "caf\xe9"}\n', "line 1 is not UTF-8 text; if the file is Latin-1 (ISO-8859-1) text set "
                                              "--set input.encoding=latin-1"),
        "utf16.jsonl": ('{"a": 1}\n'.encode("utf-16"), "UTF-16 text, not JSON lines in UTF-8 or Latin-1; convert it"),
        "mixed.jsonl": (mixed, "could not be read: its lines do not all end alike (\\n in some, \\r\\n in others, or a stray "
                        "\\r); make them one kind first, e.g. sed -i"),
        "cases.jsonl": (b'{"Sku": "x", "context": {"user": "a"}, "ts": 1, "type": "view"}\n{"sku": "y"}\n',
                        "key 'sku' (input.item) is spelled 2 ways in the records (Sku, sku; the mapping reads keys in any "
                        "case); make them agree"),
        "dotted.jsonl": (b'{"context.user": "flat", "context": {"user": "a"}, "sku": "x", "ts": 1, "type": "view"}\n',
                         "'context.user' is both a key with a dot in its name and a nested key in the records; rename"),
        # a compressed file is decompressed into the fix (a filter on its bytes, sed -i above all, would ruin it)
        "mixed.jsonl.gz": (mixed, "or a stray \\r); make them one kind first, e.g. gzip -dc {path} | sed 's/\\r$//' > events.jsonl"),
        "array.json.zst": (b'[{"a": 1},\n{"a": 2}]\n', "one object per line first, e.g. zstd -dc {path} | jq -c '.[]' > events.jsonl"),
        "seq.jsonl.gz": (b'\x1e{"a": 1}\n', "take those bytes out first, e.g. gzip -dc {path} | tr -d '\\036' > events.jsonl"),
    }
    icfg = InputConfig(user="context.user", item="sku", time="ts", event_type="type")
    for name, (data, message) in {**cases, **more}.items():
        path = tmp_path / name
        data = data.encode() if isinstance(data, str) else data
        pack = {".gz": gzip.compress, ".zst": zstandard.ZstdCompressor().compress}.get(path.suffix, bytes)
        path.write_bytes(pack(data))
        message = message.format(path=path) if "{path}" in message else message
        with pytest.raises(InputError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
            prepare([str(path)], tmp_path / "p", CFG, input_cfg=icfg)
        assert not (tmp_path / "p").exists()


def test_json_lines_keys_the_head_lacks_prices_as_numbers_and_odd_lines(tmp_path: Path) -> None:
    """Keys that records only have after the first 1 MB (a REES46 export's brand and price, a mapped key)
    are found in the whole file (a key no record has is still an error); prices written as JSON numbers
    read with '.' under a decimal comma; a NUL byte or a line over the reader's 2 MB limit is a reject of
    its own line, deep nesting reads; a first record longer than the head is read."""
    def rees(k: int) -> dict:
        d = {"event_time": f"2019-10-{1 + k * 9 // 12000:02d} {k % 24:02d}:{k % 60:02d}:00 UTC",
             "event_type": "purchase" if k % 7 == 0 else "view", "product_id": str(1000 + k % 50),
             "category_id": "2053013555631882655", "user_id": str(k % 300), "user_session": f"s{k % 300}"}
        if k >= 9000:  # (an exporter that leaves null fields out)
            d.update(brand="apple", price="12.50", category_code="x.y")
        return d
    late = tmp_path / "late.jsonl"
    late.write_text("".join(json.dumps(rees(k)) + "\n" for k in range(12000)))
    assert late.read_bytes().index(b'"brand"') > 1 << 20
    csv_twin = tmp_path / "late.csv"
    header = list(rees(9000))
    csv_twin.write_text(",".join(header) + "\n" + "".join(",".join(rees(k).get(h, "") for h in header) + "\n"
                                                          for k in range(12000)))
    cfg = PrepareConfig(max_len=4, eval_days=1, min_item_count=1)
    m = prepare([str(late)], tmp_path / "j", cfg).manifest
    prepare([str(csv_twin)], tmp_path / "c", cfg)
    assert {"brand", "price", "category_code"} <= set(m["input_mappings"][0]["columns"])
    assert same(tmp_path / "j", tmp_path / "c") and rows(open_prepared(tmp_path / "j"), "select count(*) from brands") == [(1,)]
    with pytest.raises(InputError, match="input.price names column 'prce', which the file does not have .no record has"):
        prepare([str(late)], tmp_path / "x", cfg, input_cfg=InputConfig(price="prce"))

    odd = [{"u": f"u{k % 3}", "i": f"i{k % 2}", "t": 1569888000 + 600 * k, "e": "purchase" if k % 4 == 3 else "view",
            "p": [2.999, 1.5][k % 2]} for k in range(40)]
    lines = [json.dumps(r) for r in odd]
    lines[0] = json.dumps({**odd[0], "pad": "z" * (1 << 20)})  # (longer than the head)
    lines[5] = lines[5].replace('"u2"', '"u\x002"')  # (a raw NUL: no JSON)
    lines[6] = lines[6][:-1] + ', "deep": ' + "[" * 100000 + "]" * 100000 + "}"  # (valid JSON, deeper than Python reads)
    lines[7] = lines[7][:-1] + ', "blob": "' + "z" * 3_000_000 + '"}'
    path = tmp_path / "odd.jsonl"
    path.write_text("\n".join(lines) + "\n")
    icfg = InputConfig(user="u", item="i", time="t", event_type="e", price="p", time_format="unix_s", decimal_separator=",")
    m = prepare([str(path)], tmp_path / "o", replace(cfg, eval_days=0.05), input_cfg=icfg).manifest
    assert m["input_mappings"][0]["decimal_separator"] == "."
    assert m["rejects_by_reason"] == {"malformed json": 1, "line too long (over 2 MB)": 1} and conserved(m)
    assert rows(open_prepared(tmp_path / "o"), "select line, reason from rejects order by line") == [
        (6, "malformed json"), (8, "line too long (over 2 MB)")]
    assert dict(rows(open_prepared(tmp_path / "o"), "select product_id, price from items")) == {"i0": 2.999, "i1": 1.5}


def test_json_lines_head_records_of_known_keys_still_show_what_is_new(tmp_path: Path) -> None:
    """inspect_json reads the keys of a record whose top-level keys it has seen, with no nested object,
    only once: a later record with the same keys whose value is now an object still shows its nested
    keys, an empty object stays a value, and a price written as text in any record (one of known keys
    included) keeps the mapping's decimal separator; prices that are all numbers read with '.'."""
    def line(k: int, **changes: object) -> str:
        return json.dumps({"u": f"u{k % 3}", "i": f"i{k % 2}", "t": 1569888000 + 60 * k, "e": "view", "p": 1.5,
                           "ctx": "web", **changes})

    icfg = InputConfig(user="u", item="i", time="t", event_type="e", price="p", time_format="unix_s",
                       decimal_separator=",")
    path = tmp_path / "shapes.jsonl"
    path.write_text("\n".join([*(line(k) for k in range(50)), line(50, ctx={"page": {"id": 7}}), line(51, ctx={}),
                                *(line(k) for k in range(52, 60))]) + "\n")
    f = inspect_json(path, icfg)
    assert f.names == ("u", "i", "t", "e", "p", "ctx", "ctx.page.id")
    assert f.json_paths[-1] == '$."ctx"."page"."id"' and f.mapping.decimal_separator == "."
    path.write_text("\n".join([*(line(k) for k in range(50)), line(50, p="1,5"), line(51, p=None)]) + "\n")
    assert inspect_json(path, icfg).mapping.decimal_separator == ","
    path.write_text("\n".join(line(k, p=None) for k in range(5)) + "\n")  # (no price written: as text)
    assert inspect_json(path, icfg).mapping.decimal_separator == ","
    # a price written as "" or as one of the null_values is no price: the others, numbers, read with '.'
    path.write_text("\n".join([*(line(k) for k in range(50)), line(50, p="NULL"), line(51, p=""), line(52, p=" ")]) + "\n")
    assert inspect_json(path, icfg).mapping.decimal_separator == ","  # (' ' and NULL: text, unless listed)
    path.write_text("\n".join([*(line(k) for k in range(50)), line(50, p="NULL"), line(51, p="")]) + "\n")
    assert inspect_json(path, icfg).mapping.decimal_separator == ","
    assert inspect_json(path, replace(icfg, null_values=["NULL"])).mapping.decimal_separator == "."
    path.write_text("\n".join([line(0, ctx={"a": 1}, p="NULL"), *(line(k) for k in range(1, 9))]) + "\n")  # (nested)
    assert inspect_json(path, replace(icfg, null_values=["NULL"])).mapping.decimal_separator == "."


def test_null_values_read_as_absent_and_what_warns_without_them(tmp_path: Path) -> None:
    """tiny.csv with every empty field written as NULL or \\N (a MySQL or PostgreSQL export; a price too):
    under input.null_values those read as absent, so the tables are tiny.csv's (the record without a user
    is rejected as missing user_id, as there); the setting is in the manifest's mapping and the --check
    table. Without it, the prices fail with a hint that names input.null_values, and a brand 'NULL' kept
    as a value warns; a YAML null in the list is NULL, null and Null, a quoted 'None' its own text."""
    lines = TINY.read_text().splitlines()
    out, k = [lines[0]], 0
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) == 9:
            for i, v in enumerate(fields):
                if v == "" and i >= 3:
                    fields[i], k = ("NULL", "\\N")[k % 2], k + 1
            if fields[6] == "5.50":
                fields[6] = "\\N"  # (a price the export does not have)
        out.append(",".join(fields))
    twin = tmp_path / "mysql.csv"
    twin.write_text("\n".join(out) + "\n")
    cfg = replace(TINY_CFG, min_item_count=1)
    base = prepare([str(TINY)], tmp_path / "base", cfg).manifest
    no_price = tmp_path / "no_price.csv"  # tiny.csv with those prices left empty: what the twin means
    no_price.write_text(TINY.read_text().replace(",5.50,", ",,"))
    prepare([str(no_price)], tmp_path / "empty", cfg)
    m = prepare([str(twin)], tmp_path / "nulls", cfg, input_cfg=InputConfig(null_values=[None, "\\N"])).manifest
    assert same(tmp_path / "nulls", tmp_path / "empty") and m["rejects_by_reason"] == base["rejects_by_reason"]
    assert m["input_mappings"][0]["null_values"] == ["NULL", "null", "Null", "\\N"]
    assert "null_values" not in base["input_mappings"][0] and not any("null_values" in w for w in m["warnings"])

    m = prepare([str(twin)], tmp_path / "raw", cfg).manifest
    assert m["rejects_by_reason"]["unparseable price"] == 7
    assert any(w.startswith("7 line(s) rejected: unparseable price; '\\N' is how the export writes no value, "
                            "--set 'input.null_values=[\"\\\\N\"]' reads it as absent") for w in m["warnings"]), m["warnings"]
    brand = [w for w in m["warnings"] if w.startswith("brand 'NULL'")]
    assert brand and "--set 'input.null_values=[\"NULL\"]' reads it as absent and leaves those events without a brand" in brand[0]
    assert rows(open_prepared(tmp_path / "raw"), "select count(*) from brands where brand = 'NULL'") == [(1,)]

    # a user id the export wrote as None is one user of many visitors: a warning; quoted, 'None' is the text
    none_user = tmp_path / "none_user.csv"
    none_user.write_text(TINY.read_text().replace(",200,", ",None,"))
    m = prepare([str(none_user)], tmp_path / "u", cfg).manifest
    assert any(w.startswith("user_id 'None' (") and "rejects those records (missing user_id)" in w for w in m["warnings"])
    m = prepare([str(none_user)], tmp_path / "v", cfg, input_cfg=InputConfig(null_values=["None"])).manifest
    assert m["rejects_by_reason"]["missing user_id"] > base["rejects_by_reason"]["missing user_id"]
    assert not any("None" in w for w in m["warnings"])

    result = invoke("prepare", "--check", twin, "--set", "input.null_values=[NULL, '\\N']")
    assert result.exit_code == 0, result.output
    assert "'NULL', 'null', 'Null', '\\\\N'" in result.output and "(input.null_values)" in result.output
    assert "would be kept as" not in result.output
    result = invoke("prepare", "--check", twin, "--set", "input.null_values=['\\N']")
    assert result.exit_code == 0, result.output
    assert "brand 'NULL' in 4 sampled records would be kept as a brand of that name" in " ".join(result.output.split())
    with pytest.raises(InputError, match=re.escape("input.null_values must be a list of texts such as ['NULL', '\\N'], got 'NULL'")):
        prepare([str(twin)], tmp_path / "w", cfg, input_cfg=InputConfig(null_values="NULL"))  # type: ignore[arg-type]
    # a time or event type written as NULL has no format or event name to set (the record stays rejected):
    # the hint is about the other values; a price's null hint keeps the mapping's null values and comes
    # with the decimal comma's
    assert reject_hint("unparseable event_time", ["NULL"]) is None
    assert reject_hint("unparseable event_time", ["NULL", "02.10.2019 18:00:00"], ("iso",), None, ("NULL",)) == (
        "event times such as '02.10.2019 18:00:00' read with --set 'input.time_format=\"%d.%m.%Y %H:%M:%S\"'")
    assert reject_hint("unknown event_type", ["NULL"]) is None
    assert "'click' are not in the mapping" in reject_hint("unknown event_type", ["NULL", "click"])
    assert '--set \'input.null_values=["NULL", "nan"]\'' in reject_hint("non-finite price", ["nan"], null_values=("NULL",))
    both = reject_hint("unparseable price", ["\\N", "1.234,5"])
    assert "input.null_values=[\"\\\\N\"]" in both and both.endswith("have a decimal comma: --set input.decimal_separator=,")

    # as --set: NULL alone is YAML's null, read as NULL, null and Null; None is its text; "\N" in double
    # quotes is YAML's escape of a control character: one clear error
    assert load_config(None, None, ["input.null_values=NULL"]).input.null_values == [None]
    assert load_config(None, None, ["input.null_values=None"]).input.null_values == ["None"]
    assert load_config(None, None, ["input.null_values=NULL,\\N"]).input.null_values == ["NULL", "\\N"]
    with pytest.raises(InputError, match=r"a control character: YAML reads \\N in double quotes as one"):
        prepare([str(twin)], tmp_path / "w", cfg, input_cfg=load_config(None, None, ['input.null_values=["\\N"]']).input)

    # two such texts kept: each warning's --set lists both (following one keeps the other)
    both_kept = tmp_path / "both.csv"
    both_kept.write_text(TINY.read_text().replace(",300,", ",\\N,").replace(",apple,", ",NULL,"))
    m = prepare([str(both_kept)], tmp_path / "both", cfg).manifest
    kept = [w for w in m["warnings"] if " was kept as " in w]
    assert [w.split(" (")[0] for w in kept] == ["brand 'NULL'", "user_id '\\N'"]
    assert all("--set 'input.null_values=[\"NULL\", \"\\\\N\"]'" in w for w in kept), kept

    # files mapped by different entries: the warning says where to add the value, not a --set that would
    # not reach them
    icfg = InputConfig(files=[{"match": "mysql.csv", "null_values": ["\\N"]}, {"match": "tiny.csv"}])
    m = prepare([str(twin), str(TINY)], tmp_path / "two", cfg, input_cfg=icfg).manifest
    (warning,) = [w for w in m["warnings"] if w.startswith("user_id 'NULL' (1 event) was kept as one user")]
    assert "add it to null_values where the files that write it are mapped (input.files entry 1 (mysql.csv), " \
           "input.files entry 2 (tiny.csv))" in warning and "--set" not in warning


def test_cli_json_lines_as_in_the_readme_beside_a_csv(tmp_path: Path) -> None:
    """The README's JSON lines example (nested user, unix seconds), --check, and a JSON lines file and a
    CSV in one prepare (input.files): the tables of one CSV of the same events."""
    records = [{"ts": 1569888000 + 600 * k, "type": "purchase" if k % 4 == 3 else "view", "sku": f"A-{k % 3}",
                "context": {"user": {"id": k % 5}}, "price": 9.5} for k in range(40)]
    jsonl = tmp_path / "events-1.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records[:30]))
    orders = tmp_path / "orders.csv"  # the last 10 events as a CSV of their own
    orders.write_text("user,item,ts,type,price\n" + "".join(
        f"{r['context']['user']['id']},{r['sku']},{r['ts']},{r['type']},{r['price']}\n" for r in records[30:]))
    whole = tmp_path / "whole.csv"
    whole.write_text("user,item,ts,type,price\n" + "".join(
        f"{r['context']['user']['id']},{r['sku']},{r['ts']},{r['type']},{r['price']}\n" for r in records))
    sets = ["--set", "input.user=context.user.id", "--set", "input.item=sku", "--set", "input.time=ts",
            "--set", "input.time_format=unix_s", "--set", "input.event_type=type", "--set", "input.price=price"]
    result = invoke("prepare", tmp_path / "events-*.jsonl", "--check", *sets)
    assert result.exit_code == 0, result.output
    assert "JSON lines / utf-8" in result.output and "lines the reader could not read" in result.output
    result = invoke("prepare", tmp_path / "events-*.jsonl", orders, "--out", tmp_path / "p", "--eval-days", "0.05",
                    "--min-item-count", "1", *sets, "--set", "input.files=[{match: orders.csv, user: user, item: item}]")
    assert result.exit_code == 0, result.output
    result = invoke("prepare", whole, "--out", tmp_path / "q", "--eval-days", "0.05", "--min-item-count", "1",
                    "--set", "input.user=user", "--set", "input.item=item", "--set", "input.time=ts", "--set",
                    "input.time_format=unix_s", "--set", "input.event_type=type", "--set", "input.price=price")
    assert result.exit_code == 0, result.output
    assert load_manifest(tmp_path / "p")["rows_kept"] == 40 and same(tmp_path / "p", tmp_path / "q")


def test_rejects_keep_their_line_numbers_across_the_readers_buffers(tmp_path: Path) -> None:
    """A file of several of the load's 16 MB read buffers (01_load_csv.sql) read in parallel: the insert
    keeps the file's order, so the line number of every reject, typed (from its row's place) or split
    by the reader, is its line in the file."""
    raw = tmp_path / "big.csv"
    n = 300_000
    bad = {40_001: ("yesterday", "unparseable event_time"), 131_072: ("2019-13-45 99:00:00 UTC", "unparseable event_time"),
           250_000: ("click", "unknown event_type"), 299_999: ("-1", "negative price")}
    split = 180_001  # a line the reader cannot split into the file's fields
    with raw.open("w") as fh:
        fh.write("event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n")
        for i in range(2, n + 2):  # (i: the line number; line 1 is the header)
            f = [f"2019-10-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00 UTC", "view", str(1000 + i % 500),
                 "2053013555631882655", "electronics.smartphone.accessories", "apple", f"{i % 97}.99",
                 str(500_000_000 + i % 20_000), f"session-{i % 20_000:08d}-{i // 1000:06d}-aaaaaaaaaaaaaaaa"]
            if i in bad:
                f[{"unparseable event_time": 0, "unknown event_type": 1, "negative price": 6}[bad[i][1]]] = bad[i][0]
            fh.write(",".join(f) + (",x\n" if i == split else "\n"))
    assert raw.stat().st_size > 2 * 16 * 1024 * 1024  # at least three buffers
    prepare([str(raw)], tmp_path / "p", PrepareConfig(eval_days=1, min_item_count=1))
    lines = raw.read_text().splitlines()
    got = duckdb.connect().execute("select line, reason, raw from read_parquet(?) order by line",
                                   [str(tmp_path / "p" / "rejects.parquet")]).fetchall()
    assert [(line, reason) for line, reason, _ in got] == sorted(
        [(i, reason) for i, (_, reason) in bad.items()] + [(split, "wrong field count")])
    for line, _, text in got:
        assert lines[line - 1] == text


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
def test_records_the_parallel_reader_leaves_out_are_read_again(tmp_path: Path, suffix: str) -> None:
    """DuckDB's parallel CSV reader (2.0.1) leaves out every record from a line it cannot split to the
    end of the file, with no error and no reject, when that line starts a few bytes into the file's last
    16 MB buffer; so it does in a compressed file. prepare counts the file's lines beside the load
    (LineCounts; a compressed file decompressed again for it) and loads such a file again on one thread
    (reread_short_groups): every record is in, and the warning says what happened."""
    raw = tmp_path / "shop.csv"
    buffer = 16 * 1024 * 1024

    def row(i: int, session: str = "") -> str:
        return (f"2019-10-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00 UTC,view,{1000 + i % 500},2053013555631882655,"
                f"electronics.smartphone,apple,{i % 97}.99,{500_000_000 + i % 20_000},{session or f's-{i % 20_000}'}\n")

    with raw.open("w") as fh:
        fh.write("event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n")
        i, at = 0, fh.tell()
        while at < buffer - 300:
            i += 1
            at += fh.write(row(i))
        head = row(i + 1, "x")
        fh.write(row(i + 1, "x" * (buffer + 5 - at - len(head) + 1)))  # the next line starts 5 bytes into the last buffer
        bad_line = i + 3  # (the header is line 1)
        fh.write("2019-10-01 00:00:13 UTC,view,1,2,electronics\n")  # five fields
        for j in range(i + 2, i + 20_002):
            fh.write(row(j))
    n_lines = len(raw.read_bytes().splitlines())
    if suffix:
        packed = raw.with_name(raw.name + suffix)
        packed.write_bytes(gzip.compress(raw.read_bytes(), 1) if suffix == ".gz" else zstandard.ZstdCompressor().compress(raw.read_bytes()))
        raw.unlink()
        raw = packed
    m = prepare([str(raw)], tmp_path / "p", PrepareConfig(eval_days=1, min_item_count=1)).manifest
    assert m["inputs"][0]["rows_read"] == n_lines - 1
    assert m["rows_rejected"] == 1 and m["rows_kept"] + m["rows_duplicate"] + m["rows_collapsed"] == n_lines - 2
    got = duckdb.connect().execute("select line, reason from read_parquet(?)", [str(tmp_path / "p" / "rejects.parquet")]).fetchall()
    assert got == [(bad_line, "wrong field count")]
    reread = [w for w in m["warnings"] if "parallel CSV reader" in w]
    assert reread in ([], [f"{raw}: DuckDB's parallel CSV reader (version {duckdb.__version__}) left out 20,001 of its lines, "
                           "from one it could not split on; prepare read it again on one thread, and every line is in"])
    assert duckdb.__version__ != "2.0.1" or reread  # (the version this was found on has the problem)


def test_a_csv_line_over_the_read_buffer_is_rejected(tmp_path: Path) -> None:
    """The reader's longest line is its buffer (the load's 16 MB, 01_load_csv.sql): a 2.5 MB line is a
    record (DuckDB's default buffer rejected it), a 17 MB one a reject with its line number."""
    raw = tmp_path / "shop.csv"
    lines = ["event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"]
    long = {20: 2_500_000, 30: 17_000_000}
    for i in range(40):
        lines.append(f"2019-10-{1 + i % 9:02d} 1{i % 10}:00:00 UTC,{('view', 'purchase')[i % 2]},{1000 + i % 3},"
                     f"2053013555631882655,{'x' * long.get(i, 0) or 'electronics'},apple,1.00,{i % 4},s{i}")
    raw.write_text("\n".join(lines) + "\n")
    m = prepare([str(raw)], tmp_path / "p", PrepareConfig(eval_days=1, min_item_count=1)).manifest
    assert m["rows_read"] == 40 and m["rejects_by_reason"] == {"malformed csv: line size over maximum": 1}
    got = duckdb.connect().execute("select line, reason from read_parquet(?)", [str(tmp_path / "p" / "rejects.parquet")]).fetchall()
    assert got == [(32, "malformed csv: line size over maximum")]  # (and the 2.5 MB line is one of the 39 records)


def test_a_csv_with_carriage_return_line_ends_says_how_to_convert_it(tmp_path: Path) -> None:
    """Lines ending in a lone \\r (classic Mac OS): one clear error naming the file and the tr that fixes
    it, no traceback from the header's csv parse, and no output."""
    raw = tmp_path / "mac.csv"
    raw.write_bytes(TINY.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r"))
    with pytest.raises(InputError, match=r"mac\.csv: its lines end in a carriage return alone .* e\.g\. tr '\\r' '\\n' < "):
        prepare([str(raw)], tmp_path / "p", TINY_CFG)
    assert not (tmp_path / "p").exists()
    fixed = tmp_path / "events.csv"
    fixed.write_bytes(raw.read_bytes().replace(b"\r", b"\n"))  # (what the tr of the message does)
    assert prepare([str(fixed)], tmp_path / "q", TINY_CFG).manifest["rows_read"] == 24


def test_a_headerless_file_named_with_rees46_columns_needs_no_schema(tmp_path: Path) -> None:
    """input.header false with input.columns that are the REES46 header's names: the file maps as that
    header would (it failed with "header lacks required column(s) ;", naming none), to the same tables."""
    lines = TINY.read_text().splitlines(keepends=True)
    raw = tmp_path / "noheader.csv"
    raw.write_text("".join(lines[1:]))
    columns = lines[0].strip().split(",")
    got = prepare([str(raw)], tmp_path / "p", TINY_CFG, input_cfg=InputConfig(header=False, columns=columns))
    want = prepare([str(TINY)], tmp_path / "want", TINY_CFG)
    for table in ("events", "users", "items", "truth"):
        a, b = (duckdb.connect().read_parquet(str(d / f"{table}.parquet")).fetchall() for d in (tmp_path / "p", tmp_path / "want"))
        assert a == b, table
    assert got.manifest["n_events"] == want.manifest["n_events"]


@pytest.mark.parametrize("suffix, bom", [("", b""), (".gz", b""), ("", b"\xef\xbb\xbf"), (".gz", b"\xef\xbb\xbf")],
                         ids=["plain", "gz", "bom", "bom-gz"])
def test_empty_lines_before_the_header_are_one_clear_error_with_the_fix(tmp_path: Path, suffix: str, bom: bytes) -> None:
    """The reader would take the first empty line for the header ("header lacks ...; found nothing"):
    prepare says what the file starts with and the awk that takes the lines out (a UTF-8 byte order mark
    before them too), and the mended file prepares."""
    text = bom + b"\n\r\n" + TINY.read_bytes()
    raw = tmp_path / f"log.csv{suffix}"
    raw.write_bytes(gzip.compress(text) if suffix else text)
    with pytest.raises(InputError, match=r"starts with 2 empty line\(s\) before its header") as err:
        prepare([str(raw)], tmp_path / "p", TINY_CFG)
    assert not (tmp_path / "p").exists()
    fix = str(err.value).split("e.g. ")[1].split(", and prepare")[0]
    subprocess.run(fix, shell=True, cwd=tmp_path, check=True)
    assert prepare([str(tmp_path / "events.csv")], tmp_path / "p", TINY_CFG).manifest["n_events"] > 0


def test_more_blank_lines_than_the_head_holds_are_not_an_empty_file(tmp_path: Path) -> None:
    """A file whose first 64 KB (the head inspect reads) are blank lines is not called empty: the error
    says what it starts with and gives the awk that takes them out, and the mended file prepares; a
    file of a few blank lines is still empty."""
    raw = tmp_path / "log.csv"
    raw.write_bytes(b"\n" * 70_000 + TINY.read_bytes())
    with pytest.raises(InputError, match=r"its first 65,536 bytes are empty or blank lines") as err:
        prepare([str(raw)], tmp_path / "p", TINY_CFG)
    fix = str(err.value).split("e.g. ")[1].split(", and prepare")[0]
    subprocess.run(fix, shell=True, cwd=tmp_path, check=True)
    assert (tmp_path / "events.csv").read_bytes() == TINY.read_bytes()
    assert prepare([str(tmp_path / "events.csv")], tmp_path / "p", TINY_CFG).manifest["n_events"] > 0
    few = tmp_path / "few.csv"
    few.write_bytes(b"\n \n")
    with pytest.raises(InputError, match=r"few\.csv: the file is empty"):
        prepare([str(few)], tmp_path / "q", TINY_CFG)


def test_a_file_with_no_header_may_start_with_empty_lines(tmp_path: Path) -> None:
    """Read with no header (the taobao preset), empty lines first are skipped like any other empty line."""
    raw = tmp_path / "UserBehavior.csv"
    raw.write_bytes(b"\n\n" + TAOBAO.read_bytes())
    got = prepare([str(raw)], tmp_path / "p", CFG, input_cfg=InputConfig(schema="taobao")).manifest
    want = prepare([str(TAOBAO)], tmp_path / "want", CFG, input_cfg=InputConfig(schema="taobao")).manifest
    assert (got["n_events"], got["rows_rejected"]) == (want["n_events"], want["rows_rejected"])


def test_the_empty_lines_check_leaves_other_files_to_their_own_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blank lines of spaces count as empty ones; a file of carriage-return line ends gets its own hint,
    not this one; a UTF-16 file is not looked at byte by byte; a fix never writes onto another file
    that is there (another input)."""
    monkeypatch.chdir(tmp_path)
    Path("events.csv").write_bytes(TINY.read_bytes())
    blank = tmp_path / "blank.csv"
    blank.write_bytes(b"  \r\n\t\n" + TINY.read_bytes())
    with pytest.raises(InputError, match=r"starts with 2 empty line\(s\).* > events\.fixed\.csv, and prepare events\.fixed\.csv") as err:
        prepare([str(blank)], tmp_path / "p", TINY_CFG)
    subprocess.run(str(err.value).split("e.g. ")[1].split(", and prepare")[0], shell=True, check=True)
    assert Path("events.fixed.csv").read_bytes() == TINY.read_bytes()
    cr = tmp_path / "cr.csv"
    cr.write_bytes(b"\r" + TINY.read_bytes().replace(b"\n", b"\r"))
    with pytest.raises(InputError, match=r"end in a carriage return alone"):
        prepare([str(cr)], tmp_path / "p", TINY_CFG)
    wide = tmp_path / "wide.csv"
    wide.write_bytes(("\n" + TINY.read_text()).encode("utf-16-le"))
    with pytest.raises(InputError) as err:
        prepare([str(wide)], tmp_path / "p", TINY_CFG)
    assert "empty line" not in str(err.value)
