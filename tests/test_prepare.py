"""The prepare pipeline: golden outputs per SQL step, audits, input formats and real data.

The golden tests read ``tests/fixtures/tiny.csv`` (24 hand-written rows, lines 2..25 of the file):

* user 100: a view repeated a minute later (collapsed), an exact duplicate cart (line 5), a 58-minute
  gap inside session s-a (split), a purchase in the valid window and one in the test window;
* user 200: no user_session at all (sessions made by the 30-minute gap), the rare item 1004 (one
  event, empty category/brand, price 0), a time without the " UTC" suffix;
* user 300: a session ending in a purchase before the valid window (train targets, two chunks);
* user 400: the same item in the same user_session 21 hours apart (kept, and a new session);
* rejected: line 14 click, 17 eight fields, 18 no user_id, 19 "yesterday", 21 price -2.00.

With min_item_count 2, items are numbered by frequency: 1003 (7 events) -> 2, 1001 (5) -> 3,
1002 (4) -> 4, and 1004 (1) -> 1 (unknown). Users by raw id: 100 -> 2, 200 -> 3, 300 -> 4, 400 -> 5.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from conftest import (
    SYNTH_CFG,
    TINY,
    TINY_CFG,
    TINY_COMPETITION,
    collide_item_hashes,
    open_prepared,
    rows,
)
from purchasepred.config import PrepareConfig
from purchasepred.data import prepare as prep
from purchasepred.data.prepare import LOAD_JSON, LOAD_PARQUET, QUERY_FILES, STEPS, prepare
from purchasepred.data.sequences import NEVER, gather
from purchasepred.data.synth import generate
from purchasepred.data.tensors import PreparedData
from purchasepred.errors import DatasetError, InputError
from purchasepred.features import PAD
from purchasepred.resources import connect, define_ids, named_queries, sql_dir

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rees46_multicat"
CAT_PHONE = "2053013555631882655"  # 19 digits, above 2**53: a float would change it
CAT_OTHER = "2232732093077520756"

# the event tables that must come out the same whatever the input format
CONTENT_TABLES = ("events", "users", "items", "brands", "categories", "windows", "truth")


def same_tables(a: Path, b: Path, tables: tuple[str, ...] = CONTENT_TABLES) -> dict[str, int]:
    """Rows that differ between two prepared folders, per table (0 everywhere when identical)."""
    con = duckdb.connect()
    diff = {}
    for t in tables:
        pa, pb = str(a / f"{t}.parquet"), str(b / f"{t}.parquet")
        n = con.execute(
            "select (select count(*) from (select * from read_parquet(?) except all select * from read_parquet(?)))"
            " + (select count(*) from (select * from read_parquet(?) except all select * from read_parquet(?)))",
            [pa, pb, pb, pa],
        ).fetchone()[0]
        diff[t] = n
    return diff


# --------------------------------------------------------------------------------------------------
# golden outputs on the hand-written fixture, step by step


def test_counts_add_up(tiny_prepared: prep.PrepareSummary) -> None:
    m = tiny_prepared.manifest
    assert (m["rows_read"], m["rows_rejected"], m["rows_duplicate"], m["rows_kept"]) == (24, 5, 1, 18)
    assert m["rows_read"] == m["rows_kept"] + m["rows_rejected"] + m["rows_duplicate"]
    assert m["rows_collapsed"] == 1
    assert m["n_events"] == m["rows_kept"] - m["rows_collapsed"] == 17
    assert m["rejects_by_reason"] == {
        "missing user_id": 1,
        "negative price": 1,
        "unknown event_type": 1,
        "unparseable event_time": 1,
        "wrong field count": 1,
    }
    assert m["events_by_type"] == {"cart": 1, "purchase": 3, "remove_from_cart": 1, "view": 12}
    assert (m["n_users"], m["n_raw_items"], m["n_items"], m["n_brands"], m["n_categories"]) == (4, 4, 3, 2, 2)
    assert m["n_sessions"] == 9
    assert len(PreparedData(tiny_prepared.out).train()["item_idx"]) == 4  # training chunks with a target
    assert m["views_per_purchase"] == 4.0
    assert m["input_schemas"] == ["rees46"]
    assert tiny_prepared.audits and not any(tiny_prepared.audits.values())


def test_reject_lines_in_a_file_of_many_row_groups(tmp_path: Path) -> None:
    """Line numbers come from the records' order in staged: exact across row groups and threads."""
    header = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
    bad = {5: "click", 150_001: "negative", 299_990: "fields", 299_999: "click"}
    lines = [header]
    for line in range(2, 300_002):
        minute = line // 1000
        kind, price = ("view", "1.00")
        if bad.get(line) == "click":
            kind = "click"
        if bad.get(line) == "negative":
            price = "-1.00"
        row = (f"2019-10-{1 + minute // 1440:02d} {minute // 60 % 24:02d}:{minute % 60:02d}:00 UTC,"
               f"{kind},{line % 97},1,,,{price},{line % 501},")
        lines.append(row + ",extra" if bad.get(line) == "fields" else row)
    raw = tmp_path / "big.csv"
    raw.write_text("\n".join(lines) + "\n")
    out = tmp_path / "p"
    prepare([str(raw)], out, PrepareConfig(eval_days=0.5, threads=2))
    got = rows(open_prepared(out), "select line, reason from rejects order by line")
    assert got == [(5, "unknown event_type"), (150_001, "negative price"), (299_990, "wrong field count"),
                   (299_999, "unknown event_type")]


def test_load_keeps_every_line(tiny_db: duckdb.DuckDBPyConnection) -> None:
    # 23 lines split into the header's fields, one (line 17, eight fields) could not be
    assert rows(tiny_db, "select count(*) from staged") == [(23,)]
    assert rows(tiny_db, "select file_path, line, reason, raw from raw_rejects") == [
        (str(TINY), 17, "wrong field count",
         "2019-10-02 10:00:00 UTC,view,1001,2053013555631882655,electronics.smartphone,apple,100.00,200"),
    ]
    # category_id is read as text: all 19 digits survive
    assert rows(tiny_db, "select distinct category_key from item_attrs where category_key is not null order by 1") == [
        (CAT_PHONE,), (CAT_OTHER,),
    ]


def test_rejects_have_reason_and_line(tiny_db: duckdb.DuckDBPyConnection) -> None:
    assert rows(tiny_db, "select distinct file_path from rejects") == [(str(TINY),)]
    assert rows(tiny_db, "select line, reason, raw from rejects order by line") == [
        (14, "unknown event_type",
         "2019-10-02 09:30:00 UTC,click,1001,2053013555631882655,electronics.smartphone,apple,100.00,200,"),
        (17, "wrong field count",
         "2019-10-02 10:00:00 UTC,view,1001,2053013555631882655,electronics.smartphone,apple,100.00,200"),
        (18, "missing user_id",
         "2019-10-02 10:05:00 UTC,view,1001,2053013555631882655,electronics.smartphone,apple,100.00,,s-z"),
        (19, "unparseable event_time",
         "yesterday,view,1001,2053013555631882655,electronics.smartphone,apple,100.00,200,s-z"),
        (21, "negative price", "2019-10-03 14:00:00 UTC,view,1003,2232732093077520756,,,-2.00,200,s-y"),
    ]
    # the line numbers point at the right lines of the file
    lines = TINY.read_text().splitlines()
    for line, raw in rows(tiny_db, "select line, raw from rejects"):
        assert lines[line - 1] == raw


def test_validate_types_the_valid_rows(tiny_db: duckdb.DuckDBPyConnection) -> None:
    # typed while read: the valid records of staged (which holds each event's item, category and brand as
    # one item_text: clean's item_attrs has them apart, by the event's item_hash)
    tiny_db.execute("""create view loaded as select s.*, a.item_key, a.category_key, a.category_code, a.brand
        from staged as s join item_attrs as a using (item_hash, item_text, item_lens) where s.reject_reason is null""")
    assert rows(tiny_db, "select count(*) from loaded") == [(19,)]  # 23 parsed - 4 invalid
    assert rows(tiny_db, "select reject_reason, count(*) from staged group by 1 order by 1") == [
        ("missing user_id", 1), ("negative price", 1), ("unknown event_type", 1), ("unparseable event_time", 1), (None, 19),
    ]
    # a time without the " UTC" suffix is read as UTC too
    assert rows(tiny_db, "select event_at from loaded where user_key = '200' and item_key = '1003' order by 1") == [
        (datetime(2019, 10, 2, 9, 0),), (datetime(2019, 10, 2, 9, 50),),
    ]
    # empty text fields become NULL; price 0.00 is valid
    assert rows(tiny_db, "select category_key, category_code, brand, price from loaded where item_key = '1004'") == [
        (None, None, None, 0.0),
    ]
    assert rows(tiny_db, "select count(*) from loaded where session_hash is null") == [(4,)]


def _text_views(con: duckdb.DuckDBPyConnection) -> None:
    """sessionized holds codes: these views add the user and item keys back, to all its distinct events
    (clean_text, collapsed repeat views included, with its flags as booleans: is_repeat_view, and
    is_user_start, the user's first position) and to the kept ones (sessionized_text)."""
    con.execute("""create or replace view clean_text as
        select k.user_key, i.item_key, c.*, c.flags & 1 = 1 as is_repeat_view, coalesce(c.seq = 1, false) as is_user_start
        from sessionized as c join user_keys as k on k.user_code = c.user_idx - 1
        join attr_codes as a using (attr_code) join item_keys as i using (item_code)""")
    con.execute("""create or replace view sessionized_text as
        select k.user_key, s.* from sessionized as s join user_keys as k on k.user_code = s.user_idx - 1
        where s.flags & 1 = 0""")


def test_clean_removes_duplicates_and_collapses_repeat_views(tiny_db: duckdb.DuckDBPyConnection) -> None:
    _text_views(tiny_db)
    # 19 valid rows, one exact duplicate (the cart of line 5) left out
    assert rows(tiny_db, "select count(*) from clean_text") == [(18,)]
    assert rows(tiny_db, "select user_key, item_key, event_at from clean_text where event_type_id = 2") == [
        ("100", "1001", datetime(2019, 10, 1, 10, 2)),
    ]
    assert rows(tiny_db, "select user_key, item_key, event_at from clean_text where is_repeat_view") == [
        ("100", "1001", datetime(2019, 10, 1, 10, 1)),
    ]
    # not collapsed: the same item again after another item (user 300), or 21 hours later (user 400),
    # and a user's first event with no user_session (user 200)
    assert rows(tiny_db, "select count(*) from clean_text where user_key = '300' and item_key = '1003' and event_type_id = 1") == [(2,)]
    assert rows(tiny_db, "select count(*) from clean_text where user_key = '400' and not is_repeat_view") == [(2,)]
    assert rows(tiny_db, "select event_at from clean_text where user_key = '200' and is_user_start") == [
        (datetime(2019, 10, 2, 9, 0),),
    ]
    assert rows(tiny_db, "select count(*) from sessionized where flags is null") == [(0,)]
    # one first event per user, at position 1
    assert rows(tiny_db, "select count(*), count(distinct user_key) from clean_text where is_user_start") == [(4, 4)]
    # stored in the one order every later step reads: user, then time
    # one shard (a small input): its rows in the sort's order (shards would come in no fixed order)
    assert rows(tiny_db, "select list(user_idx) = list_sort(list(user_idx)) from sessionized") == [(True,)]
    # a collapsed view has no place in the user's history
    assert rows(tiny_db, "select seq, session_no, gap_seconds, flags & 4 from sessionized where flags & 1 = 1") == [
        (None, None, None, 0),
    ]
    # codes sort like the text they stand for
    for table, key, code in (("user_keys", "user_key", "user_code"), ("item_keys", "item_key", "item_code")):
        assert rows(tiny_db, f"select list({key} order by {code}) = list_sort(list({key})) from {table}") == [(True,)]


def test_sessionize_splits_by_gap_and_session_id(tiny_db: duckdb.DuckDBPyConnection) -> None:
    _text_views(tiny_db)
    got = dict(rows(tiny_db, "select user_key, list(session_no order by seq) from sessionized_text group by 1"))
    assert got == {
        "100": [1, 1, 2, 3, 4, 4],  # 58 min inside s-a; s-b; s-c
        "200": [1, 1, 2, 2],  # no user_session: 10 min, then 40 min
        "300": [1, 1, 1, 1, 1],
        "400": [1, 2],  # same s-e, 21 hours apart
    }
    assert rows(tiny_db, "select list(gap_seconds order by seq) from sessionized_text where user_key = '200'") == [
        ([None, 600.0, 2400.0, 300.0],),
    ]
    assert rows(tiny_db, "select list(seq order by seq) from sessionized_text where user_key = '100'") == [([1, 2, 3, 4, 5, 6],)]


def test_vocabularies(tiny_db: duckdb.DuckDBPyConnection) -> None:
    assert rows(tiny_db, "select user_idx, user_id, n_events from users order by user_idx") == [
        (2, "100", 6), (3, "200", 4), (4, "300", 5), (5, "400", 2),
    ]
    # most frequent first (not raw id order); the item seen once shares the unknown id 1
    query = "select item_idx, product_id, n_events, n_purchases, brand_idx, category_idx from items order by n_events desc"
    assert rows(tiny_db, query) == [
        (2, "1003", 7, 1, 1, 3),
        (3, "1001", 5, 1, 2, 2),
        (4, "1002", 4, 1, 3, 2),
        (1, "1004", 1, 0, 1, 1),
    ]
    assert rows(tiny_db, "select brand_idx, brand, n_events from brands order by brand_idx") == [
        (2, "apple", 5), (3, "samsung", 4),
    ]
    assert rows(tiny_db, "select category_idx, category, category_code, n_events from categories order by category_idx") == [
        (2, CAT_PHONE, "electronics.smartphone", 9), (3, CAT_OTHER, None, 7),
    ]


EVENTS_GOLDEN = [
    # user_idx, seq, type, item, brand, category, price_bucket, hour, weekday, gap_bucket, session, is_start
    (2, 1, 1, 3, 2, 2, 15, 11, 2, 1, 1, True),    # 10-01 10:00 view 1001 (Tue)
    (2, 2, 2, 3, 2, 2, 15, 11, 2, 8, 1, False),   # 10:02 cart (the 10:01 view collapsed), gap 120 s
    (2, 3, 1, 4, 3, 2, 13, 12, 2, 13, 2, True),   # 11:00 view 1002, 58 min later: new session
    (2, 4, 3, 4, 3, 2, 13, 14, 4, 19, 3, True),   # 10-03 13:00 purchase 1002 (valid window)
    (2, 5, 1, 3, 2, 2, 15, 12, 6, 19, 4, True),   # 10-05 11:00 view 1001
    (2, 6, 3, 3, 2, 2, 15, 12, 6, 10, 4, False),  # 11:05 purchase 1001 (test window)
    (3, 1, 1, 2, 1, 3, 7, 10, 3, 1, 1, True),     # 10-02 09:00 view 1003, no brand, price 5.50
    (3, 2, 1, 3, 2, 2, 15, 10, 3, 11, 1, False),  # 09:10
    (3, 3, 1, 2, 1, 3, 7, 10, 3, 13, 2, True),    # 09:50, 40 min later
    (3, 4, 1, 1, 1, 1, 1, 10, 3, 10, 2, False),   # 09:55 the rare item 1004: ids 1, price 0 -> bucket 1
    (4, 1, 1, 2, 1, 3, 7, 13, 2, 1, 1, True),
    (4, 2, 1, 4, 3, 2, 13, 13, 2, 10, 1, False),
    (4, 3, 1, 2, 1, 3, 7, 13, 2, 7, 1, False),
    (4, 4, 4, 4, 3, 2, 13, 13, 2, 7, 1, False),   # remove_from_cart
    (4, 5, 3, 2, 1, 3, 7, 13, 2, 9, 1, False),    # purchase
    (5, 1, 1, 2, 1, 3, 7, 16, 5, 1, 1, True),     # 10-04 15:00 (Fri)
    (5, 2, 1, 2, 1, 3, 7, 13, 6, 18, 2, True),    # 10-05 12:00 = T, the last event
]


def test_encode_events(tiny_prepared: prep.PrepareSummary, tiny_db: duckdb.DuckDBPyConnection) -> None:
    # the features as the loader reads them (read.sql takes hour_id and weekday_id from event_at); a
    # session starts where the user's session_no changes
    tiny_db.execute("set variable path = ?", [str(tiny_prepared.out / "events.parquet")])
    got = rows(tiny_db, f"""
        select user_idx, seq, r.event_type_id, r.item_idx, r.brand_idx, r.category_idx, r.price_bucket, r.hour_id,
            r.weekday_id, r.gap_bucket, e.session_no,
            coalesce(e.session_no <> lag(e.session_no) over (partition by user_idx order by seq), true) as is_session_start
        from ({named_queries("read.sql")["sequence_events"].rstrip().rstrip(";")}) as r
        join events as e using (user_idx, seq)
        order by user_idx, seq""")
    assert got == EVENTS_GOLDEN
    # events.parquet stores none of what its readers take from the other columns (schema 7)
    assert not {"hour_id", "weekday_id", "is_session_start", "ts"} & {c[0] for c in tiny_db.execute("describe events").fetchall()}
    assert rows(tiny_db, "select epoch(event_at), product_id from events join items using (item_code) "
                         "where user_idx = 2 and seq = 1") == [(1569924000, "1001")]

    assert rows(tiny_db, "select sum(session_no::integer = session_no) from events") == [(17,)]


def test_loader_finds_each_events_next_event_purchase_and_cart(tiny_prepared: prep.PrepareSummary) -> None:
    """The training targets' sources (next event, next purchase, next cart: item and time), found when
    loading from the events rows (PAD at NEVER where there is none)."""
    data = PreparedData(tiny_prepared.out)
    ev = {**data._events, **data._next_rows}
    rows_ = np.flatnonzero(ev["user_idx"] == 2)

    def at(rows: str, column: str, missing: int) -> list[int]:
        return gather(ev[column], ev[rows][rows_], missing=missing).tolist()

    got = list(zip(ev["seq"][rows_].tolist(), at("next_row", "item_idx", PAD), at("next_purchase_row", "item_idx", PAD),
                   at("next_purchase_row", "ts", NEVER), at("next_cart_row", "item_idx", PAD), strict=True))
    assert got == [
        (1, 3, 4, 1570107600, 3),
        (2, 4, 4, 1570107600, PAD),
        (3, 4, 4, 1570107600, PAD),
        (4, 3, 3, 1570273500, PAD),
        (5, 3, 3, 1570273500, PAD),
        (6, PAD, PAD, NEVER, PAD),
    ]
    assert at("next_row", "ts", NEVER)[-1] == NEVER


def test_split_windows_and_truth(tiny_prepared: prep.PrepareSummary, tiny_db: duckdb.DuckDBPyConnection) -> None:
    assert rows(tiny_db, "select split, window_start, window_end, start_ts from windows order by window_start") == [
        ("valid", datetime(2019, 10, 3, 12), datetime(2019, 10, 4, 12), 1570104000),
        ("test", datetime(2019, 10, 4, 12), datetime(2019, 10, 5, 12, 0, 0, 1), 1570190400),
        ("all", datetime(2019, 10, 5, 12, 0, 0, 1), datetime(2019, 10, 6, 12, 0, 0, 1), 1570276801),
    ]
    assert rows(tiny_db, "select split, user_idx, product_id, item_idx, n_purchases, first_purchase_at from truth order by split") == [
        ("test", 2, "1001", 3, 1, datetime(2019, 10, 5, 11, 5)),
        ("valid", 2, "1002", 4, 1, datetime(2019, 10, 3, 13)),
    ]
    w = tiny_prepared.manifest["windows"]
    assert w["valid"] == {"window_start": "2019-10-03 12:00:00", "window_end": "2019-10-04 12:00:00",
                          "n_users_with_inputs": 3, "n_users_with_purchases": 1, "n_purchased_pairs": 1}
    assert w["test"]["window_start"] == "2019-10-04 12:00:00"
    assert (w["test"]["n_users_with_inputs"], w["all"]["n_users_with_inputs"]) == (3, 4)


def test_sequences_are_left_padded(tiny_db: duckdb.DuckDBPyConnection) -> None:
    q = "select split, user_idx, n_events, item_idx, event_type_id from sequences order by split, user_idx"
    assert rows(tiny_db, q) == [
        ("all", 2, 6, [4, 4, 3, 3], [1, 3, 1, 3]),  # the last 4 of 6 events
        ("all", 3, 4, [2, 3, 2, 1], [1, 1, 1, 1]),
        ("all", 4, 5, [4, 2, 4, 2], [1, 1, 4, 3]),
        ("all", 5, 2, [0, 0, 2, 2], [0, 0, 1, 1]),
        ("test", 2, 4, [3, 3, 4, 4], [1, 2, 1, 3]),  # user 400's first event is inside the test window
        ("test", 3, 4, [2, 3, 2, 1], [1, 1, 1, 1]),
        ("test", 4, 5, [4, 2, 4, 2], [1, 1, 4, 3]),
        ("valid", 2, 3, [0, 3, 3, 4], [0, 1, 2, 1]),  # only what happened before 10-03 12:00
        ("valid", 3, 4, [2, 3, 2, 1], [1, 1, 1, 1]),
        ("valid", 4, 5, [4, 2, 4, 2], [1, 1, 4, 3]),
    ]
    assert rows(tiny_db, """
        select last_event_at, brand_idx, category_idx, price_bucket, hour_id, weekday_id, gap_bucket, ts
        from sequences where split = 'valid' and user_idx = 2""") == [(
        datetime(2019, 10, 1, 11), [0, 2, 2, 3], [0, 2, 2, 2], [0, 15, 15, 13], [0, 11, 11, 12], [0, 2, 2, 2],
        [0, 1, 8, 13], [0, 1569924000, 1569924120, 1569927600],
    )]


def test_train_sequences_targets(tiny_db: duckdb.DuckDBPyConnection) -> None:
    q = """select user_idx, chunk, n_events, item_idx, next_target, purchase_target, cart_target
           from train_sequences order by user_idx, chunk"""
    assert rows(tiny_db, q) == [
        # next event 10-03 13:00 is past the valid start: no target at the last position
        (2, 0, 3, [0, 3, 3, 4], [0, 3, 4, 0], [0, 0, 0, 0], [0, 3, 0, 0]),
        # the rare item 1004 (unknown id 1) is nobody's target: 0 after item 2
        (3, 0, 4, [2, 3, 2, 1], [3, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]),
        # 5 events before the valid window: chunk 0 is the most recent 4, chunk 1 the one before
        (4, 0, 4, [4, 2, 4, 2], [2, 4, 2, 0], [2, 2, 2, 0], [0, 0, 0, 0]),
        (4, 1, 1, [0, 0, 0, 2], [0, 0, 0, 4], [0, 0, 0, 2], [0, 0, 0, 0]),
    ]


def test_settings_change_the_outputs(tmp_path: Path) -> None:
    cfg = PrepareConfig(session_gap_minutes=60, max_len=4, min_item_count=1, eval_days=2)
    m = prepare([str(TINY)], tmp_path / "p", cfg).manifest
    con = open_prepared(tmp_path / "p")
    # a 60-minute gap keeps user 100's 58-minute pause and user 200's 40 minutes in one session
    assert m["n_sessions"] == 3 + 1 + 1 + 2
    # min_item_count 1: the item seen once gets its own id
    assert rows(con, "select item_idx, product_id from items order by item_idx") == [
        (2, "1003"), (3, "1001"), (4, "1002"), (5, "1004"),
    ]
    assert m["n_items"] == 4
    # two-day windows: valid starts 10-01 12:00, so user 300's purchase at 12:10 is in it
    assert rows(con, "select split, user_idx, product_id from truth order by split, product_id") == [
        ("test", 2, "1001"), ("test", 2, "1002"), ("valid", 4, "1003"),
    ]


def test_future_events_are_rejected(tmp_path: Path) -> None:
    # with "now" on 2019-10-03, anything after 2019-10-04 00:00 is out of range
    now = datetime(2019, 10, 3, tzinfo=timezone.utc)
    m = prepare([str(TINY)], tmp_path / "p", TINY_CFG, now=now).manifest
    assert m["rejects_by_reason"]["event_time out of range"] == 4
    assert m["rows_rejected"] == 9
    assert m["rows_read"] == m["rows_kept"] + m["rows_rejected"] + m["rows_duplicate"]
    con = open_prepared(tmp_path / "p")
    assert rows(con, "select line from rejects where reason = 'event_time out of range' order by line") == [
        (22,), (23,), (24,), (25,),
    ]


def test_progress_callback_names_every_step(tmp_path: Path) -> None:
    seen: list[str] = []
    prepare([str(TINY)], tmp_path / "p", TINY_CFG, step=seen.append)
    for name, _ in STEPS:
        if name == "load":
            assert f"load {TINY.name}" in seen
        else:
            assert name in seen
    assert "audits" in seen


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_the_input_hash_runs_at_the_lowest_priority_and_only_its_own_thread_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import os
    import threading

    priorities: dict[str, set[int]] = {}
    real_step = prep.InputHashes._step

    def spy(self: prep.InputHashes) -> bool:
        name = threading.current_thread().name
        priorities.setdefault(name, set()).add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real_step(self)

    monkeypatch.setattr(prep.InputHashes, "_step", spy)
    monkeypatch.setattr(prep.InputHashes, "BLOCK", 64)  # many blocks: the thread hashes some of them
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    m = prepare([str(TINY)], tmp_path / "p", TINY_CFG).manifest
    assert priorities["purchasepred-input-sha256"] == {19}
    assert priorities.get(threading.current_thread().name, {before}) == {before}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    assert m["inputs"][0]["sha256"] == hashlib.sha256(TINY.read_bytes()).hexdigest()


def test_prepare_tracks_duckdbs_progress_but_never_draws_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare() is a library call that prints nothing, but DuckDB draws a progress bar on stdout for
    each statement that runs over 2 s when its settings say so (as they do in a script): prepare's
    connection, every shard's and the event audits' have drawing off, and tracking on (StepProgress reads it)."""
    real_connect, real_configure, real_cursor = duckdb.connect, prep._configure, prep.quiet_progress
    seen: list[tuple[bool, bool]] = []

    def connect(*args: Any, **kwargs: Any) -> duckdb.DuckDBPyConnection:
        con = real_connect(*args, **kwargs)
        con.execute("set enable_progress_bar = false")  # both the other way round: connect() must set them
        con.execute("set enable_progress_bar_print = true")
        return con

    def settings(con: duckdb.DuckDBPyConnection) -> tuple[bool, bool]:
        return con.execute("select current_setting('enable_progress_bar'), current_setting('enable_progress_bar_print')").fetchone()

    def configure(con: duckdb.DuckDBPyConnection, *args: Any) -> str | None:
        limit = real_configure(con, *args)
        seen.append(settings(con))
        return limit

    def quiet_progress(con: duckdb.DuckDBPyConnection) -> None:
        real_cursor(con)
        seen.append(settings(con))

    monkeypatch.setattr(duckdb, "connect", connect)
    monkeypatch.setattr(prep, "_configure", configure)
    monkeypatch.setattr(prep, "quiet_progress", quiet_progress)  # the shards' cursors and the event audits' (EventAudits)
    monkeypatch.setattr(prep, "MIN_SHARD_ROWS", 1)
    prepare([str(TINY)], tmp_path / "p", replace(TINY_CFG, threads=2))
    assert len(seen) == 4 and set(seen) == {(True, False)}, seen


class _FakeProgress:
    """A connection whose query_progress() returns the given values in turn, then raises as a closed one does."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def query_progress(self) -> float:
        if not self.values:
            raise duckdb.ConnectionException("Connection already closed!")
        return self.values.pop(0)


def test_step_progress_reports_each_whole_point_of_the_current_step() -> None:
    """StepProgress (sampled by hand here: its thread waits an hour) reports the step it measures,
    only when the percent grew by a whole point (-1, no query, is no news); shards count as the mean of
    the highest value each has shown (a closed one keeps its last); a step with nothing to watch and a
    closed StepProgress report nothing."""
    got: list[tuple[str, float]] = []
    progress = prep.StepProgress(lambda name, percent: got.append((name, percent)), every=3600)
    try:
        progress.start("load a.csv")
        progress.watch([_FakeProgress([-1, 10, 10.5, 30, -1])])
        for _ in range(5):
            progress.sample()
        assert got == [("load a.csv", 10), ("load a.csv", 30)]

        progress.start("clean")
        progress.sample()
        assert got[2:] == []

        got.clear()
        progress.start("sessionize")
        progress.watch([_FakeProgress([20, 80]), _FakeProgress([-1, 40, 100])])
        for _ in range(3):
            progress.sample()
        assert got == [("sessionize", 10), ("sessionize", 60), ("sessionize", 90)]
        progress.watch([_FakeProgress([50])])  # the second pass over the shards counts from 0 again
        progress.sample()
        assert got[3:] == [("sessionize", 50)]
        progress.watch([_FakeProgress([100])])

        got.clear()  # a step of four statements: each a quarter, its start news when the last report lagged
        progress.start("vocab")
        progress.watch([_FakeProgress([-1, 40])], (0, 4))
        progress.sample()
        progress.sample()
        progress.watch([_FakeProgress([-1])], (1, 4))
        progress.sample()
        progress.watch([_FakeProgress([-1, 2, 80])], (3, 4))
        for _ in range(3):
            progress.sample()
        assert got == [("vocab", 10), ("vocab", 25), ("vocab", 75), ("vocab", 95)]
    finally:
        progress.close()
    progress.sample()  # (as a late read would be)
    assert len(got) == 4


def test_a_step_of_several_statements_watches_each_as_its_share() -> None:
    """clean, vocab and split run their statements one by one, each watched as the i-th of n shares
    (StepProgress), and nothing is watched after them, also when one fails."""
    calls: list[tuple[int, tuple[int, int] | None]] = []

    class Recorder:
        def watch(self, conns: list[Any], part: tuple[int, int] | None = None) -> None:
            calls.append((len(conns), part))

    con = duckdb.connect()
    prep._run_statements(con, "create table a as select 1 as x; create table b as select x + 1 as y from a;\n"
                              "create table c as select y * 2 as z from b", Recorder())  # type: ignore[arg-type]
    assert con.execute("select z from c").fetchall() == [(4,)]
    assert calls == [(1, (0, 3)), (1, (1, 3)), (1, (2, 3)), (0, None)]
    calls.clear()
    with pytest.raises(duckdb.Error):
        prep._run_statements(con, "select 1; select * from missing_table; select 2", Recorder())  # type: ignore[arg-type]
    assert calls == [(1, (0, 3)), (1, (1, 3)), (0, None)]


def test_a_failing_progress_report_ends_the_reports_not_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A report that raises (a caller's callback, the display) ends the reports quietly: no exception
    reaches threading's hook (which would print a traceback into the live display), close() returns."""
    escaped: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
    calls: list[float] = []

    def report(name: str, percent: float) -> None:
        calls.append(percent)
        raise RuntimeError("display gone")

    progress = prep.StepProgress(report, every=0.001)
    progress.start("load a.csv")
    progress.watch([_FakeProgress([float(i) for i in range(1, 10_000)])])
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    progress.close()
    assert calls[:1] == [1.0] and len(calls) == 1 and escaped == []


def test_each_step_has_its_peak_memory_and_spill(tiny_prepared: prep.PrepareSummary) -> None:
    steps = tiny_prepared.manifest["steps"]
    assert [s["step"] for s in steps][:3] == ["inspect inputs", "setup", "load"]
    for s in steps:
        assert isinstance(s["spill_mb"], int) and s["spill_mb"] >= 0
        if sys.platform.startswith("linux"):
            assert isinstance(s["peak_rss_mb"], int) and s["peak_rss_mb"] > 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident memory is read from /proc")
def test_step_peaks_are_per_step(tmp_path: Path) -> None:
    """What a step spilled and allocated counts for that step, and the next step starts from what is
    there when it starts (sampled by hand here: the thread samples too slowly to be relied on)."""
    spill = tmp_path / "spill"
    spill.mkdir()
    peaks = prep.StepPeaks(spill, every=3600)
    try:
        rss0, spilled0 = peaks.take()
        assert spilled0 == 0 and rss0 is not None
        (spill / "a.tmp").write_bytes(b"x" * 3_000_000)
        block = bytearray(200 * 2**20)  # touched below, so that it is resident
        block[:: 4096] = b"y" * len(block[:: 4096])
        peaks.sample()
        (spill / "a.tmp").unlink()
        del block
        (spill / "b.tmp").write_bytes(b"x" * 1000)
        rss1, spilled1 = peaks.take()
        assert spilled1 == 3_000_000
        assert rss1 >= rss0 + 190 * 2**20
        rss2, spilled2 = peaks.take()
        assert spilled2 == 1000
        assert rss2 < rss1 - 150 * 2**20
    finally:
        peaks.close()


def test_finish_hashes_in_the_callers_thread_what_the_background_thread_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background thread that never gets the CPU (here: one that is never started) does not hold up
    prepare: finish() hashes every file itself, across block and file boundaries."""
    import hashlib
    import threading

    files = [tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "empty.csv"]
    for i, f in enumerate(files[:2]):
        f.write_bytes(bytes(range(256)) * (40 + i) + b"tail")
    files[2].write_bytes(b"")
    monkeypatch.setattr(threading.Thread, "start", lambda self: None)
    monkeypatch.setattr(threading.Thread, "join", lambda self, timeout=None: None)
    monkeypatch.setattr(prep.InputHashes, "BLOCK", 1000)
    hashes = prep.InputHashes(files + [tmp_path / "missing.csv"])
    assert hashes.finish() == {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    hashes.close()


def test_a_read_error_in_the_hash_thread_is_raised_by_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(b"x" * 10_000)

    def broken(self: prep.InputHashes) -> bool:
        raise OSError("disk went away")

    monkeypatch.setattr(prep.InputHashes, "_step", broken)
    hashes = prep.InputHashes([f])
    with pytest.raises(OSError, match="disk went away"):
        hashes.finish()
    hashes.close()


# --------------------------------------------------------------------------------------------------
# the run order and the audits


def test_run_order_matches_sql_files() -> None:
    present = {p.name for p in sql_dir().glob("*.sql")}
    step_files = [f for _, f in STEPS]
    assert len(step_files) == len(set(step_files))
    assert len({n for n, _ in STEPS}) == len(STEPS)
    # every numbered file is a step; every step exists
    numbered = {f for f in present if re.match(r"^\d\d_", f)}
    assert numbered == set(step_files) | {LOAD_PARQUET, LOAD_JSON}
    assert [f[:2] for f in step_files] == sorted(f[:2] for f in step_files)
    assert LOAD_PARQUET[:2] == LOAD_JSON[:2] == dict(STEPS)["load"][:2]
    # the other files are collections of named queries (audits, stats, and readers of the output),
    # but for ids.sql: the id macros every connection defines
    for f in present - numbered - {"ids.sql"}:
        assert named_queries(f), f"{f} is neither a numbered step nor a file of named queries"
    assert set(QUERY_FILES) <= present
    # the manifest hashes every SQL file
    assert set(prep.sql_hashes()) == present
    # every file starts with a header comment
    for f in present:
        assert (sql_dir() / f).read_text().startswith("--"), f


def test_audits_pass_on_synthetic_data(synth_prepared: prep.PrepareSummary) -> None:
    assert synth_prepared.audits == {name: 0 for name in named_queries("audits.sql")}
    con = open_prepared(synth_prepared.out)
    define_ids(con)  # the id conventions the audits use
    con.execute("set variable max_len = ?", [SYNTH_CFG.max_len])
    for name, query in named_queries("audits.sql").items():
        assert con.execute(query).fetchall() == [], name


def test_audits_catch_broken_data(synth_prepared: prep.PrepareSummary) -> None:
    """The audits are not vacuous: tampered tables make them return rows."""
    con = open_prepared(synth_prepared.out)
    define_ids(con)
    audits = named_queries("audits.sql")
    for view in ("events", "truth"):
        con.execute(f"drop view {view}")
    con.execute("create or replace table events as select * from read_parquet(?) union all "
                "(select * from read_parquet(?) limit 1)", [str(synth_prepared.out / "events.parquet")] * 2)
    assert con.execute(audits["events_unique_key"]).fetchall()
    # no duplicate, but out of the (user_idx, seq) order the loader reads
    con.execute("create or replace table events as select * from read_parquet(?) order by user_idx, seq desc",
                [str(synth_prepared.out / "events.parquet")])
    assert con.execute(audits["events_unique_key"]).fetchall()
    con.execute("create or replace table truth as select * replace (first_purchase_at - interval 100 day as first_purchase_at) "
                "from read_parquet(?)", [str(synth_prepared.out / "truth.parquet")])
    assert con.execute(audits["truth_inside_window"]).fetchall()
    # ids out of range, or missing (NULL, as a join that found no row for the event's attr_code would give)
    events = str(synth_prepared.out / "events.parquet")
    assert not con.execute(audits["events_ids_in_range"].replace("from events as e", "from read_parquet(?) as e"),
                           [events]).fetchall()
    for broken in ("brand_idx - 5 as brand_idx", "null::integer as brand_idx", "null::integer as category_idx",
                   "case when seq = 1 then null else item_idx end as item_idx"):
        con.execute(f"create or replace table events as select * replace ({broken}) from read_parquet(?)", [events])
        assert len(con.execute(audits["events_ids_in_range"]).fetchall()) > 0, broken
    # an event that does not map back: another item's id, a user past the last, an item code past the last
    assert not con.execute(audits["every_event_maps_back"].replace("from events as e", "from read_parquet(?) as e"),
                           [events]).fetchall()
    for broken in ("item_idx + 1 as item_idx", "user_idx + 100000 as user_idx", "item_code + 100000 as item_code"):
        con.execute(f"create or replace table events as select * replace ({broken}) from read_parquet(?)", [events])
        assert len(con.execute(audits["every_event_maps_back"]).fetchall()) > 0, broken
    # users or items that a lookup by position would misread (a gap in the numbering, a missing raw id) fail every event
    con.execute("create or replace table events as select * from read_parquet(?)", [events])
    n_events = con.execute("select count(*) from events").fetchone()[0]
    for table in ("users", "items"):
        con.execute(f"drop view {table}")
        con.execute(f"create table {table} as select * from read_parquet(?)", [str(synth_prepared.out / f"{table}.parquet")])
    assert con.execute(audits["every_event_maps_back"]).fetchall() == []
    for table, broken in (("users", "user_idx + (user_idx > 5)::int as user_idx"), ("items", "item_code * 2 as item_code"),
                          ("items", "case when item_code = 1 then null else product_id end as product_id")):
        con.execute(f"create or replace table {table} as select * replace ({broken}) from read_parquet(?)",
                    [str(synth_prepared.out / f"{table}.parquet")])
        assert len(con.execute(audits["every_event_maps_back"]).fetchall()) == n_events, broken
        con.execute(f"create or replace table {table} as select * from read_parquet(?)", [str(synth_prepared.out / f"{table}.parquet")])


def _audit_query(monkeypatch: pytest.MonkeyPatch, name: str, query: str) -> None:
    """audits.sql, as prepare reads it, with the audit ``name`` added or replaced by ``query``."""
    real = prep.named_queries

    def broken(filename: str) -> dict[str, str]:
        q = real(filename)
        if filename == "audits.sql":
            q[name] = query
        return q

    monkeypatch.setattr(prep, "named_queries", broken)


def test_failed_audit_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _audit_query(monkeypatch, "always_fails", "select 1")
    out = tmp_path / "work" / "p"
    with pytest.raises(DatasetError, match="always_fails"):
        prepare([str(TINY)], out, TINY_CFG)
    assert list(out.parent.iterdir()) == []


def test_an_event_audit_run_beside_split_still_fails_the_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audits of events.parquet run on a connection of their own beside split (EventAudits): one
    that finds rows fails the prepare as the others do, and leaves nothing behind."""
    _audit_query(monkeypatch, "events_ids_in_range", "select user_idx, seq from events limit 3")
    out = tmp_path / "work" / "p"
    with pytest.raises(DatasetError, match=r"failed audits \{'events_ids_in_range': 3\}"):
        prepare([str(TINY)], out, TINY_CFG)
    assert list(out.parent.iterdir()) == []


def test_a_failure_while_the_event_audits_run_stops_their_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Split failing while the event audits run beside it: the error is the split's, and the audits'
    thread and connection are gone when prepare returns."""
    import purchasepred.data.windows as windows

    def fail(*args: Any, **kwargs: Any) -> None:
        raise InputError("no window for you")

    monkeypatch.setattr(windows, "choose", fail)
    with pytest.raises(InputError, match="no window for you"):
        prepare([str(TINY)], tmp_path / "p", TINY_CFG)
    assert not [t for t in threading.enumerate() if t.name.startswith("purchasepred-audits")]


def test_shard_counts_group_users_and_items_in_perfect_hash_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """While a shard counts its events per user and item (04_sessionize.sql's shard_counts), DuckDB's
    perfect hash aggregate takes group columns of as many bits as the users and the item attributes need
    (above its default 12), where its tables fit the budget, shared by the shards counting at once; the
    setting is put back after."""
    con = connect()
    con.execute("create table user_keys as select i::varchar as user_key, i::integer as user_code from range(1, 5001) t(i)")
    con.execute("create table attr_codes as select i::integer as attr_code from range(1, 101) t(i)")
    con.execute("create table kept_events as select (i % 5000 + first_id())::integer as user_idx, i as seq from range(20000) t(i)")
    group_by_user = "explain select user_idx, count(*), max(seq) from kept_events group by user_idx"

    def threshold() -> int:
        return int(con.execute("select current_setting('perfect_ht_threshold')").fetchone()[0])

    assert threshold() == 12 and "Perfect Hash Group By" not in con.execute(group_by_user).fetchall()[0][1]
    with prep._perfect_group_bys(con):
        assert threshold() == 13  # (5,000 users and NULL: 13 bits)
        assert "Perfect Hash Group By" in con.execute(group_by_user).fetchall()[0][1]
    assert threshold() == 12
    threads = int(con.execute("select current_setting('threads')").fetchone()[0])
    monkeypatch.setattr(prep, "PERFECT_GROUPS_BYTES", (1 << 13) * prep.PERFECT_GROUP_BYTES * threads)
    with prep._perfect_group_bys(con):
        assert threshold() == 13  # (one query's tables within the budget)
    with prep._perfect_group_bys(con, parallel=2):
        assert threshold() == 12  # (two shards' tables over it; the 100 attributes need fewer than 12 bits)
    monkeypatch.setattr(prep, "PERFECT_GROUPS_BYTES", (1 << 13) * prep.PERFECT_GROUP_BYTES * threads - 1)
    with prep._perfect_group_bys(con):
        assert threshold() == 12  # (the users' tables over the budget)


def test_synthetic_invariants(synth_csv, synth_prepared: prep.PrepareSummary) -> None:
    _, summary = synth_csv
    m = synth_prepared.manifest
    max_len = SYNTH_CFG.max_len
    assert m["rows_read"] == summary.rows == 20_000
    assert m["rows_read"] == m["rows_kept"] + m["rows_rejected"] + m["rows_duplicate"]
    assert m["rows_rejected"] == 0
    assert m["n_events"] == m["rows_kept"] - m["rows_collapsed"] == sum(m["events_by_type"].values())
    assert m["n_users"] == summary.n_users
    assert m["n_sessions"] >= summary.n_sessions
    assert m["events_by_type"]["purchase"] + m["events_by_type"]["cart"] <= (
        summary.events_by_type["purchase"] + summary.events_by_type["cart"])

    con = open_prepared(synth_prepared.out)
    n_items = rows(con, "select max(item_idx) from items")[0][0]
    n_users = rows(con, "select max(user_idx) from users")[0][0]
    assert n_items == m["n_items"] + 1 and n_users == m["n_users"] + 1
    windows = {s: (start, ts) for s, start, ts in rows(con, "select split, window_start, start_ts from windows")}

    seqs = rows(con, "select split, user_idx, n_events, last_event_at, item_idx, event_type_id, ts from sequences")
    assert {s for s, *_ in seqs} == {"valid", "test", "all"}
    for split, user_idx, n_events, last_at, items, types, ts in seqs:
        pad = max_len - min(n_events, max_len)
        assert len(items) == len(types) == len(ts) == max_len
        assert items[:pad] == [0] * pad and 0 not in items[pad:]  # padding only on the left
        assert types[:pad] == [0] * pad and all(1 <= t <= 4 for t in types[pad:])
        assert all(1 <= i <= n_items for i in items[pad:])
        assert 2 <= user_idx <= n_users
        start, start_ts = windows[split]
        assert last_at < start and max(ts) < start_ts  # no input at or after the window start
        assert max(ts) < start.replace(tzinfo=timezone.utc).timestamp()
        assert ts[pad:] == sorted(ts[pad:])

    # each sequence ends with the user's last event before the window
    assert rows(con, """
        with last as (
            select w.split, e.user_idx, arg_max(e.item_idx, e.seq) as item_idx
            from events e join windows w on e.event_at < w.window_start group by all
        )
        select count(*) from sequences s join last l using (split, user_idx) where s.item_idx[-1] <> l.item_idx
        """) == [(0,)]

    train = rows(con, "select n_events, item_idx, next_target, purchase_target, last_event_at from train_sequences")
    assert train
    for n_events, items, nxt, purchase, last_at in train:
        pad = max_len - n_events
        assert items[:pad] == [0] * pad and 0 not in items[pad:]
        assert nxt[:pad] == [0] * pad and purchase[:pad] == [0] * pad
        assert all(0 <= t <= n_items for t in nxt + purchase)
        assert last_at < windows["valid"][0]
    assert rows(con, "select count(*) from truth t join windows w using (split) "
                     "where t.first_purchase_at < w.window_start or t.first_purchase_at >= w.window_end") == [(0,)]


def test_same_result_with_one_or_two_threads(synth_csv, synth_prepared: prep.PrepareSummary, tmp_path: Path) -> None:
    path, _ = synth_csv
    cfg = PrepareConfig(max_len=SYNTH_CFG.max_len, eval_days=SYNTH_CFG.eval_days, threads=1)
    prepare([str(path)], tmp_path / "p1", cfg)
    assert same_tables(tmp_path / "p1", synth_prepared.out) == {t: 0 for t in CONTENT_TABLES}


# --------------------------------------------------------------------------------------------------
# inputs: schemas, formats, several files


def test_csv_gz_input(tiny_prepared: prep.PrepareSummary, tmp_path: Path) -> None:
    gz = tmp_path / "tiny.csv.gz"
    gz.write_bytes(gzip.compress(TINY.read_bytes()))
    m = prepare([str(gz)], tmp_path / "p", TINY_CFG).manifest
    assert same_tables(tmp_path / "p", tiny_prepared.out) == {t: 0 for t in CONTENT_TABLES}
    assert (m["rows_read"], m["rows_rejected"], m["rows_duplicate"]) == (24, 5, 1)
    assert rows(open_prepared(tmp_path / "p"), "select line from rejects order by line") == [(14,), (17,), (18,), (19,), (21,)]


@pytest.mark.parametrize("name, frames", [("tiny.csv.zst", 1), ("TINY.CSV.ZST", 3)])
def test_csv_zst_input(tiny_prepared: prep.PrepareSummary, tmp_path: Path, name: str, frames: int) -> None:
    """A zstd-compressed CSV reads as the CSV does, in any case of its name and across frames (pzstd
    and appended files write several)."""
    import zstandard

    data = TINY.read_bytes()
    cuts = [len(data) * k // frames for k in range(frames + 1)]
    path = tmp_path / name
    path.write_bytes(b"".join(zstandard.ZstdCompressor(write_checksum=True).compress(data[a:b])
                              for a, b in itertools.pairwise(cuts)))
    m = prepare([str(path)], tmp_path / "p", TINY_CFG).manifest
    assert same_tables(tmp_path / "p", tiny_prepared.out) == {t: 0 for t in CONTENT_TABLES}
    assert (m["rows_read"], m["rows_rejected"], m["rows_duplicate"]) == (24, 5, 1)
    assert rows(open_prepared(tmp_path / "p"), "select line from rejects order by line") == [(14,), (17,), (18,), (19,), (21,)]


def test_a_zst_file_cut_short_fails_before_any_work(tmp_path: Path) -> None:
    """DuckDB reads a zstd file cut short as the rows before the cut, without an error: prepare walks
    its frames first and refuses it, at every length of the cut (a whole frame cut off cannot be told)."""
    import zstandard

    from purchasepred.data.inputs import _check_zstd_complete

    whole = zstandard.ZstdCompressor(write_checksum=True).compress(TINY.read_bytes() * 40)
    path = tmp_path / "cut.csv.zst"
    path.write_bytes(whole)
    _check_zstd_complete(path)
    for cut in range(1, len(whole)):
        path.write_bytes(whole[:cut])
        with pytest.raises(OSError, match="cut short"):
            _check_zstd_complete(path)
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError) as err:
        prepare([str(path)], tmp_path / "work" / "p", TINY_CFG)
    assert str(err.value).startswith(f"{path}: not a readable zstd file (it ends inside a zstd frame, at byte")
    assert "re-download or re-compress it" in str(err.value)
    assert not (tmp_path / "work" / "p").exists()


def _in_zone(line: str, zone: str) -> str:
    """A line of tiny.csv with its UTC event time (with or without ' UTC') as ``zone``'s wall-clock time."""
    from zoneinfo import ZoneInfo

    when, _, rest = line.partition(",")
    try:
        at = datetime.strptime(when.removesuffix(" UTC"), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return line  # (the header, an unparseable time)
    return at.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S") + "," + rest


@pytest.mark.parametrize("split", [False, True])
def test_times_written_in_a_local_time_zone(tiny_prepared: prep.PrepareSummary, tmp_path: Path, split: bool) -> None:
    """input.time_zone reads times written without a zone as that zone's wall-clock time: tiny.csv with
    its times in Kolkata's (+05:30) gives the tables of the UTC original; as one file, and as a Kolkata
    file beside a UTC one (its own zone in an input.files entry)."""
    from purchasepred.config import InputConfig

    lines = TINY.read_text().splitlines()
    local = [_in_zone(line, "Asia/Kolkata") for line in lines]
    assert local[1].startswith("2019-10-01 15:30:00,view,1001") and local[14].startswith("2019-10-02 15:20:00,view")
    if split:  # (the first twelve events in Kolkata time, the rest as they were)
        (tmp_path / "kolkata.csv").write_text("\n".join(local[:13]) + "\n")
        (tmp_path / "utc.csv").write_text("\n".join(lines[:1] + lines[13:]) + "\n")
        paths = [tmp_path / "kolkata.csv", tmp_path / "utc.csv"]
        icfg = InputConfig(files=[{"match": "kolkata.csv", "time_zone": "asia/kolkata"}])
    else:
        (tmp_path / "kolkata.csv").write_text("\n".join(local) + "\n")
        paths, icfg = [tmp_path / "kolkata.csv"], InputConfig(time_zone=" Asia/Kolkata ")
    m = prepare([str(p) for p in paths], tmp_path / "p", TINY_CFG, input_cfg=icfg).manifest
    assert same_tables(tmp_path / "p", tiny_prepared.out) == {t: 0 for t in CONTENT_TABLES}
    assert m["input_mappings"][0]["time_zone"] == "Asia/Kolkata"
    assert "time_zone" not in m["input_mappings"][-1] or not split
    assert (m["rows_read"], m["rows_rejected"]) == (24, 5)
    if not split:
        assert rows(open_prepared(tmp_path / "p"), "select line, reason from rejects order by line") == rows(
            open_prepared(tiny_prepared.out), "select line, reason from rejects order by line")


def _tiny_in_files(folder: Path) -> list[Path]:
    """tiny.csv cut into three files with its header each (the second gzipped), its rejects spread over them."""
    header, *lines = TINY.read_text().splitlines(keepends=True)
    folder.mkdir()
    paths = [folder / "day1.csv", folder / "day2.csv.gz", folder / "day3.csv"]
    for path, part in zip(paths, (lines[:9], lines[9:16], lines[16:]), strict=True):
        data = (header + "".join(part)).encode()
        path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return paths


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_parquet_and_json_files_of_one_mapping_load_in_one_scan_as_file_by_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """As CSV files below: consecutive Parquet (or JSON lines) files of one mapping load in one scan, to
    the dataset a load file by file gives (each file's records tell it by the reader's file_index)."""
    con = duckdb.connect()
    paths = []
    for i, path in enumerate(_tiny_in_files(tmp_path / "csv")):
        paths.append(tmp_path / f"day{i + 1}{suffix}")
        con.read_csv(str(path), all_varchar=True, ignore_errors=True).to_table(f"day{i}")
        con.execute(f"copy day{i} to '{paths[-1]}' (format {'parquet' if suffix == '.parquet' else 'json'})")
    steps: list[str] = []
    m = prepare([str(p) for p in paths], tmp_path / "one_scan", TINY_CFG, step=steps.append).manifest
    assert f"load day1{suffix} .. day3{suffix} (3 files)" in steps
    assert [i["rows_read"] for i in m["inputs"]] == [9, 6, 8] and m["rows_rejected"] == 4
    monkeypatch.setattr(prep, "LOAD_GROUP_FILES", 1)
    prepare([str(p) for p in paths], tmp_path / "by_file", TINY_CFG)
    assert same_tables(tmp_path / "one_scan", tmp_path / "by_file", (*CONTENT_TABLES, "rejects")) == {
        t: 0 for t in (*CONTENT_TABLES, "rejects")}
    query = "select file_path, line, reason from rejects order by file_path, line"
    assert rows(open_prepared(tmp_path / "one_scan"), query) == rows(open_prepared(tmp_path / "by_file"), query)

    if suffix != ".parquet":
        return
    # files with a column of their own named file_index (the reader's name for the file) load one by one
    odd = [tmp_path / f"odd{i + 1}.parquet" for i in range(len(paths))]
    for path, out in zip(paths, odd, strict=True):
        own = duckdb.ConstantExpression(7).alias("FILE_INDEX")
        con.read_parquet(str(path)).select(duckdb.StarExpression(), own).write_parquet(str(out))
    monkeypatch.setattr(prep, "LOAD_GROUP_FILES", 1000)
    steps.clear()
    prepare([str(p) for p in odd], tmp_path / "odd", TINY_CFG, step=steps.append)
    assert [s for s in steps if s.startswith("load")] == ["load odd1.parquet", "load odd2.parquet", "load odd3.parquet"]
    assert same_tables(tmp_path / "odd", tmp_path / "by_file") == {t: 0 for t in CONTENT_TABLES}


def test_files_of_one_mapping_load_in_one_scan_as_file_by_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Consecutive CSV files of one mapping and header load in one scan (one step), and the dataset is
    the one a load file by file gives: every table, each reject's file, line and text; a file the scan
    cannot read is then loaded on its own, and its error names it."""
    paths = _tiny_in_files(tmp_path / "in")
    # --check samples such a run as prepare loads it: one sample of its first records
    samples = prep.check_inputs([str(p) for p in paths], rows=100)
    assert [(s["files"], Path(s["path"]).name, Path(s["last_path"]).name, s["records"], s["unreadable_lines"])
            for s in samples] == [(3, "day1.csv", "day3.csv", 23, {"wrong field count": 1})]
    steps: list[str] = []
    m = prepare([str(p) for p in paths], tmp_path / "one_scan", TINY_CFG, step=steps.append).manifest
    assert "load day1.csv .. day3.csv (3 files)" in steps
    assert [i["rows_read"] for i in m["inputs"]] == [9, 7, 8] and m["rows_rejected"] == 5
    monkeypatch.setattr(prep, "LOAD_GROUP_FILES", 1)
    steps.clear()
    prepare([str(p) for p in paths], tmp_path / "by_file", TINY_CFG, step=steps.append)
    assert [s for s in steps if s.startswith("load")] == ["load day1.csv", "load day2.csv.gz", "load day3.csv"]
    assert same_tables(tmp_path / "one_scan", tmp_path / "by_file", (*CONTENT_TABLES, "rejects")) == {
        t: 0 for t in (*CONTENT_TABLES, "rejects")}
    query = "select file_path, line, reason, raw from rejects order by file_path, line"
    got = rows(open_prepared(tmp_path / "one_scan"), query)
    assert got == rows(open_prepared(tmp_path / "by_file"), query)
    assert [(Path(f).name, line, reason) for f, line, reason, _ in got] == [
        ("day2.csv.gz", 5, "unknown event_type"), ("day2.csv.gz", 8, "wrong field count"),
        ("day3.csv", 2, "missing user_id"), ("day3.csv", 3, "unparseable event_time"), ("day3.csv", 5, "negative price")]

    monkeypatch.setattr(prep, "LOAD_GROUP_FILES", 1000)
    full = gzip.compress(TINY.read_bytes() * 400)
    paths[1].write_bytes(full[: len(full) // 2])  # (its head reads: the scan fails)
    steps.clear()
    with pytest.raises(InputError, match=re.escape(f"{paths[1]}: could not be read")):
        prepare([str(p) for p in paths], tmp_path / "cut", TINY_CFG, step=steps.append)
    assert [s for s in steps if s.startswith("load")] == ["load day1.csv .. day3.csv (3 files)"]
    assert not (tmp_path / "cut").exists()


def test_crlf_and_byte_order_mark(tiny_prepared: prep.PrepareSummary, tmp_path: Path) -> None:
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(b"\xef\xbb\xbf" + TINY.read_bytes().replace(b"\n", b"\r\n"))
    prepare([str(crlf)], tmp_path / "p", TINY_CFG)
    assert same_tables(tmp_path / "p", tiny_prepared.out) == {t: 0 for t in CONTENT_TABLES}
    con = open_prepared(tmp_path / "p")
    assert rows(con, "select line, raw from rejects where reason = 'wrong field count'") == [
        (17, "2019-10-02 10:00:00 UTC,view,1001,2053013555631882655,electronics.smartphone,apple,100.00,200"),
    ]


def test_several_files_and_globs(tiny_prepared: prep.PrepareSummary, tmp_path: Path) -> None:
    header, *body = TINY.read_text().splitlines(keepends=True)
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "part_1.csv").write_text(header + "".join(body[:12]))  # lines 2..13
    (parts / "part_2.csv").write_text(header + "".join(body[12:]))  # lines 14..25 -> 2..13
    for raw in ([str(parts / "part_1.csv"), str(parts / "part_2.csv")], [str(parts / "part_*.csv")]):
        out = tmp_path / f"p{len(raw)}"
        m = prepare(raw, out, TINY_CFG).manifest
        assert same_tables(out, tiny_prepared.out) == {t: 0 for t in CONTENT_TABLES}
        assert (m["rows_read"], m["rows_rejected"], m["rows_duplicate"], m["rows_kept"]) == (24, 5, 1, 18)
        assert [i["path"] for i in m["inputs"]] == [str(parts / "part_1.csv"), str(parts / "part_2.csv")]
        # line numbers are per file
        assert rows(open_prepared(out), "select file_path, line, reason from rejects order by file_path, line") == [
            (str(parts / "part_2.csv"), 2, "unknown event_type"),
            (str(parts / "part_2.csv"), 5, "wrong field count"),
            (str(parts / "part_2.csv"), 6, "missing user_id"),
            (str(parts / "part_2.csv"), 7, "unparseable event_time"),
            (str(parts / "part_2.csv"), 9, "negative price"),
        ]


def test_same_file_twice_and_a_copy(tiny_prepared: prep.PrepareSummary, tmp_path: Path) -> None:
    # the same path given twice (directly and through a glob) is read once
    m = prepare([str(TINY), str(TINY.parent / "tiny.*")], tmp_path / "once", TINY_CFG).manifest
    assert m["rows_read"] == 24 and len(m["inputs"]) == 1
    # a copy under another name only adds exact duplicates and its own rejects
    copy = tmp_path / "copy.csv"
    shutil.copy(TINY, copy)
    m = prepare([str(TINY), str(copy)], tmp_path / "twice", TINY_CFG).manifest
    assert (m["rows_read"], m["rows_rejected"], m["rows_duplicate"], m["rows_kept"]) == (48, 10, 20, 18)
    assert same_tables(tmp_path / "twice", tiny_prepared.out) == {t: 0 for t in CONTENT_TABLES}


def test_parquet_input(tiny_prepared: prep.PrepareSummary, tmp_path: Path) -> None:
    # text columns, as written from the CSV; the eight-field line cannot be carried over
    pq = tmp_path / "tiny.parquet"
    con = duckdb.connect()
    con.read_csv(str(TINY), all_varchar=True, ignore_errors=True).write_parquet(str(pq))
    m = prepare([str(pq)], tmp_path / "p", TINY_CFG).manifest
    assert (m["rows_read"], m["rows_rejected"], m["rows_duplicate"], m["rows_kept"]) == (23, 4, 1, 18)
    assert same_tables(tmp_path / "p", tiny_prepared.out) == {t: 0 for t in CONTENT_TABLES}
    assert rows(open_prepared(tmp_path / "p"), "select distinct file_path from rejects") == [(str(pq),)]


def test_parquet_with_struct_columns(tiny_prepared: prep.PrepareSummary, tmp_path: Path) -> None:
    """A field of a STRUCT column is mapped by its dotted path, as a nested JSON key (any case, a typed
    price read with '.'); the file's own dotted column name beside the same path is one error."""
    from purchasepred.config import InputConfig

    pq = tmp_path / "nested.parquet"
    con = duckdb.connect()
    con.read_csv(str(TINY), all_varchar=True, ignore_errors=True).create_view("tiny")
    con.execute(f"""copy (select event_time as ts, event_type as kind, {{'id': user_id, 'Session': user_session}} as who,
        {{'sku': product_id, 'brand': brand, 'price': price::double,
          'category': {{'id': category_id, 'code': category_code}}}} as product from tiny) to '{pq}'""")
    icfg = InputConfig(user="who.id", session="WHO.session", item="product.sku", time="ts", event_type="kind",
                       brand="product.brand", price="product.price", category="product.category.id",
                       category_code="product.category.code", decimal_separator=",")
    m = prepare([str(pq)], tmp_path / "p", TINY_CFG, input_cfg=icfg).manifest
    assert (m["rows_read"], m["rows_rejected"], m["rows_duplicate"], m["rows_kept"]) == (23, 4, 1, 18)
    assert same_tables(tmp_path / "p", tiny_prepared.out) == {t: 0 for t in CONTENT_TABLES}
    assert m["input_mappings"][0]["columns"]["user_session"] == "who.Session"
    assert m["input_mappings"][0]["decimal_separator"] == "."

    clash = tmp_path / "clash.parquet"
    con.execute(f"copy (select 'x' as \"who.id\", * from '{pq}') to '{clash}'")
    with pytest.raises(InputError, match="'who.id' is both a column with a dot in its name and a field of a STRUCT column"):
        prepare([str(clash)], tmp_path / "q", TINY_CFG, input_cfg=icfg)
    with pytest.raises(InputError, match=r"input.user names column 'who.user', which the file does not have \(a field of "
                                         r"a STRUCT column is named by its dotted path"):
        prepare([str(pq)], tmp_path / "q", TINY_CFG, input_cfg=replace(icfg, user="who.user"))


def test_typed_parquet_matches_csv(synth_csv, synth_prepared: prep.PrepareSummary, tmp_path: Path) -> None:
    # typed columns (timestamp, BIGINT category_id, DOUBLE price) give the same dataset as the CSV
    path, _ = synth_csv
    pq = tmp_path / "synth.parquet"
    con = duckdb.connect()
    rel = con.read_csv(str(path))
    assert "BIGINT" in [str(t) for t in rel.types]
    rel.write_parquet(str(pq))
    prepare([str(pq)], tmp_path / "p", SYNTH_CFG)
    assert same_tables(tmp_path / "p", synth_prepared.out) == {t: 0 for t in CONTENT_TABLES}


def test_nineteen_digit_category_ids_survive(tiny_db: duckdb.DuckDBPyConnection, synth_csv, synth_prepared) -> None:
    assert rows(tiny_db, "select category from categories where category = ?", [CAT_PHONE]) == [(CAT_PHONE,)]
    assert float(CAT_PHONE) != int(CAT_PHONE)  # a float round trip would have changed it
    # on synthetic data every raw category_id is found, digit for digit, in the categories table
    path, _ = synth_csv
    con = open_prepared(synth_prepared.out)
    raw = {r[0] for r in con.execute(
        "select distinct category_id from read_csv(?, all_varchar = true)", [str(path)]).fetchall()}
    assert raw and all(len(c) == 19 for c in raw)
    got = {r[0] for r in rows(con, "select category from categories")}
    assert raw == got


def test_competition_schema_upper_case_header(tmp_path: Path) -> None:
    """item_id instead of product_id, no category_id, columns in another order, upper-case names."""
    m = prepare([str(TINY_COMPETITION)], tmp_path / "p", PrepareConfig(max_len=3, eval_days=0.01)).manifest
    assert m["input_schemas"] == ["competition"]
    assert (m["rows_read"], m["rows_rejected"], m["rows_duplicate"], m["rows_kept"], m["rows_collapsed"]) == (7, 0, 0, 7, 1)
    assert (m["n_users"], m["n_items"], m["n_raw_items"], m["n_brands"], m["n_categories"], m["n_sessions"]) == (2, 2, 3, 1, 1, 3)
    assert m["events_by_type"] == {"cart": 1, "purchase": 1, "view": 4}  # "VIEW" is a view
    con = open_prepared(tmp_path / "p")
    assert rows(con, "select item_idx, product_id, category_idx, category, price from items order by n_events desc") == [
        (2, "55", 2, "home.kitchen", 10.0), (3, "56", 2, "home.kitchen", 20.0), (1, "57", 1, None, None),
    ]
    assert rows(con, "select user_idx, user_id from users order by 1") == [(2, "7"), (3, "8")]
    assert rows(con, """select user_idx, list(item_idx order by seq), list(price_bucket order by seq),
                              list(session_no order by seq) from events group by 1 order by 1""") == [
        (2, [2, 3, 3], [8, 10, 10], [1, 1, 1]),
        (3, [2, 1, 2], [8, 1, 8], [1, 2, 2]),
    ]
    assert rows(con, "select split, user_idx, item_idx from sequences where split = 'test' order by 2") == [
        ("test", 2, [2, 3, 3]), ("test", 3, [0, 0, 2]),
    ]


def test_competition_schema_parquet_and_synth(tmp_path: Path) -> None:
    # a competition-schema Parquet file with upper-case column names reads like the CSV
    pq = tmp_path / "comp.parquet"
    duckdb.connect().read_csv(str(TINY_COMPETITION), all_varchar=True).write_parquet(str(pq))
    cfg = PrepareConfig(max_len=3, eval_days=0.01)
    prepare([str(TINY_COMPETITION)], tmp_path / "csv", cfg)
    m = prepare([str(pq)], tmp_path / "pq", cfg).manifest
    assert m["input_schemas"] == ["competition"]
    assert same_tables(tmp_path / "pq", tmp_path / "csv") == {t: 0 for t in CONTENT_TABLES}
    # the generator's competition export prepares and passes the audits
    comp = tmp_path / "comp.csv.gz"
    summary = generate(comp, rows=5_000, days=10, seed=2, schema="competition")
    res = prepare([str(comp)], tmp_path / "synth", PrepareConfig(max_len=10, eval_days=2))
    assert res.manifest["input_schemas"] == ["competition"]
    assert res.manifest["rows_read"] == summary.rows and res.manifest["rows_rejected"] == 0
    assert not any(res.audits.values())
    assert res.manifest["n_categories"] >= 1


def test_ties_across_sessions_follow_the_values_not_the_file(tmp_path: Path) -> None:
    """One user's views of one item at the same second in sessions a and b, then a view of it in a 10 s
    later: the tie is broken by the sessions' hash (a fixed function of the value), so the result is
    the same whatever the file order, and a repeat view is collapsed only when it follows its own
    session's view."""
    # the premise: session b's hash sorts before a's (the sort key holds its top 30 bits)
    assert rows(duckdb.connect(), "select hash('b') >> 34 < hash('a') >> 34") == [(True,)]
    header = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
    lines = [
        "2020-01-01 10:00:00 UTC,view,1,10,a.b,x,1.0,u1,b\n",
        "2020-01-01 10:00:00 UTC,view,1,10,a.b,x,1.0,u1,a\n",
        "2020-01-01 10:00:10 UTC,view,1,10,a.b,x,1.0,u1,b\n",
        "2020-01-03 10:02:00 UTC,purchase,2,11,,y,2.0,u2,s2\n",
    ]
    got = []
    for i, order in enumerate((lines, lines[::-1], [lines[1], lines[3], lines[0], lines[2]])):
        raw = tmp_path / f"ties{i}.csv"
        raw.write_text(header + "".join(order))
        m = prepare([str(raw)], tmp_path / f"p{i}", PrepareConfig(eval_days=1, min_item_count=1)).manifest
        con = open_prepared(tmp_path / f"p{i}")
        got.append((m["rows_collapsed"], m["n_events"], m["n_sessions"],
                    rows(con, "select seq, session_no from events where user_idx = 2 order by seq")))
    assert got[0] == got[1] == got[2]
    # b, a, b: the last view follows a's view, so nothing is collapsed
    assert got[0] == (0, 4, 4, [(1, 1), (2, 2), (3, 3)])


def test_duckdb_hash_is_the_one_the_session_order_was_made_with() -> None:
    """Sessions are stored as DuckDB's hash() of their text, which orders one user's tied events of
    different sessions. A DuckDB whose hash() gives other values orders such ties otherwise: it changes
    the manifest's session_hash_check (and so the content hash), and this test says so first."""
    got = rows(duckdb.connect(), "select hash(?), hash('a'), hash('b')", [prep.SESSION_HASH_PROBE])
    assert got == [(1004098775538444574, 12561829011207016135, 10660095401860160745)], (
        "DuckDB's hash() changed: prepared tables may order tied events of different sessions otherwise")


def test_the_short_sort_key_holds_the_extreme_values() -> None:
    """The packed parts of the sort key stay in range at their extremes: a session hash of all ones
    (its prefix must not overflow INTEGER), the largest item code under the limit prepare checks, and
    a purchase (the highest type rank), next to a view with no session (prefix 0)."""
    con = duckdb.connect()
    define_ids(con)
    con.execute((sql_dir() / "00_setup.sql").read_text())
    con.execute("""insert into staged (file_no, event_at, event_type_id, item_text, item_lens, user_key, session_hash)
        values (1, timestamp '2020-01-01 10:00:00', purchase_id(), 'b', item_lens_of('b', null, null), 'u', 18446744073709551615::ubigint),
               (1, timestamp '2020-01-01 10:00:00', view_id(), 'a', item_lens_of('a', null, null), 'u', null)""")
    con.execute("update staged set item_hash = hash(item_text, item_lens)")  # (as the load does)
    con.execute((sql_dir() / "03_clean.sql").read_text())
    con.execute(named_queries("04_sessionize.sql")["define"])
    con.execute("set variable shard_first_user_key = 'u'")
    con.execute("set variable shard_last_user_key = 'u'")
    got = rows(con, "select type_item, session_prefix from sorted_events")
    assert got == [(1, 0), ((3 << 30) | 2, 1 << 30)]
    # the pass takes the event's type and item back from the key (the sort carries only the key)
    con.execute("set variable session_gap_seconds = 1800")
    con.execute(named_queries("04_sessionize.sql")["shard"])
    assert rows(con, "select event_type_id, item_code from sessionized join attr_codes using (attr_code)") == [(1, 1), (3, 2)]
    assert rows(con, "select view_id(), purchase_id()") == [(1, 3)]
    # the item code fills the 30 bits below the type rank
    assert prep.MAX_ITEMS == 1 << 30


def test_more_items_than_the_sort_key_holds_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An item column with more distinct values than the packed sort key holds stops prepare with one
    line naming the file and the count, and leaves nothing behind."""
    monkeypatch.setattr(prep, "MAX_ITEMS", 4)  # the tiny fixture has 4 items
    with pytest.raises(InputError, match=r"tiny\.csv: 4 distinct item ids, more than prepare handles \(3\)"):
        prepare([str(TINY)], tmp_path / "p", TINY_CFG)
    assert not (tmp_path / "p").exists()


def test_ties_the_short_sort_key_leaves_are_sorted_by_every_column(tmp_path: Path) -> None:
    """Three views of one item by one user at the same second in the same session, at three prices:
    the short sort key cannot order them, so prepare sorts by every column. Whatever the file order,
    the cheapest comes first and is kept; the other two repeat it and are collapsed."""
    header = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
    lines = [
        "2020-01-01 10:00:00 UTC,view,1,10,a.b,x,3.0,u1,a\n",
        "2020-01-01 10:00:00 UTC,view,1,10,a.b,x,1.0,u1,a\n",
        "2020-01-01 10:00:00 UTC,view,1,10,a.b,x,2.0,u1,a\n",
    ]
    tail = "2020-01-03 10:02:00 UTC,purchase,2,11,,y,2.0,u2,s2\n"
    got = set()
    for i, order in enumerate(itertools.permutations(lines)):
        raw = tmp_path / f"ties{i}.csv"
        raw.write_text(header + "".join(order) + tail)
        m = prepare([str(raw)], tmp_path / f"p{i}", PrepareConfig(eval_days=1, min_item_count=1)).manifest
        con = open_prepared(tmp_path / f"p{i}")
        got.add((m["rows_collapsed"], m["n_events"], rows(con, "select product_id, price from items order by product_id")[0]))
    assert got == {(2, 2, ("1", 1.0))}


@pytest.mark.parametrize("threads", [2, 3])
def test_sessionize_in_shards_gives_the_same_dataset(synth_csv, synth_prepared: prep.PrepareSummary, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """Users cut into shards sessionized side by side (forced here on 20k rows) give the same tables
    and counts as one pass; each shard ran on a connection of its own, and covered its own users."""
    path, _ = synth_csv
    monkeypatch.setattr(prep, "MIN_SHARD_ROWS", 1000)
    seen: list[list[tuple[str, str]]] = []
    real = prep._user_shards
    monkeypatch.setattr(prep, "_user_shards", lambda con: seen.append(real(con)) or seen[-1])
    cfg = PrepareConfig(max_len=SYNTH_CFG.max_len, eval_days=SYNTH_CFG.eval_days, threads=threads)
    m = prepare([str(path)], tmp_path / "p", cfg).manifest
    assert len(seen) == 1 and len(seen[0]) == threads
    firsts, lasts = zip(*seen[0], strict=True)
    keys = rows(open_prepared(synth_prepared.out), "select min(user_id), max(user_id) from users")[0]
    assert (firsts[0], lasts[-1]) == keys  # the shards cover every user, in key order, without overlap
    assert all(f <= last for f, last in zip(firsts, lasts, strict=True)) and all(a < b for a, b in zip(lasts[:-1], firsts[1:], strict=True))
    assert same_tables(tmp_path / "p", synth_prepared.out) == {t: 0 for t in CONTENT_TABLES}
    counts = ("rows_kept", "rows_collapsed", "rows_duplicate", "n_events", "n_sessions", "n_users")
    assert {k: m[k] for k in counts} == {k: synth_prepared.manifest[k] for k in counts}
    assert m["content_hash"] == synth_prepared.manifest["content_hash"]


def test_a_failing_shard_stops_the_others_and_threads_stay_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """One shard fails at once while another has billions of rows to sum: the other is interrupted
    (its row is never inserted, even when it had not started its query yet), the error is raised, and
    DuckDB's threads are back to what they were; while the shards ran, threads, a cap below the
    machine's CPUs, was lowered so that the shards' own threads stay within it."""
    monkeypatch.setattr(prep, "available_cpus", lambda: 8)
    con = duckdb.connect()
    con.execute("set threads = 3")
    con.execute("set variable session_gap_seconds = 1.0")
    con.execute("create table counted (n bigint, threads varchar)")
    query = ("insert into counted select sum(i % 7), current_setting('threads') from range(case when "
             "getvariable('shard_first_user_key') = 'b' then error('boom')::bigint else 5000000000 end) r(i)")
    with pytest.raises(duckdb.Error, match="boom"):
        prep._run_shards(con, query, [("a", "a"), ("b", "b")])
    assert rows(con, "select count(*) from counted") == [(0,)]
    assert rows(con, "select current_setting('threads')") == [(3,)]
    prep._run_shards(con, "insert into counted select 0, current_setting('threads')", [("a", "a"), ("b", "b")])
    assert rows(con, "select threads from counted") == [("2",), ("2",)]


def test_shards_on_all_cpus_leave_threads_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """threads at (or above) the CPUs prepare may use, its default: the shards run beside DuckDB's own
    workers, with no relaunch of its threads."""
    monkeypatch.setattr(prep, "available_cpus", lambda: 2)
    con = duckdb.connect()
    con.execute("set threads = 2")
    con.execute("set variable session_gap_seconds = 1.0")
    con.execute("create table counted (n bigint, threads varchar)")
    prep._run_shards(con, "insert into counted select 0, current_setting('threads')", [("a", "a"), ("b", "b")])
    assert rows(con, "select threads from counted") == [("2",), ("2",)]
    assert rows(con, "select current_setting('threads')") == [(2,)]


@pytest.mark.parametrize("sort_once", [False, True])
def test_ties_are_sorted_by_every_column_in_every_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        sort_once: bool) -> None:
    """The tie of test_ties_the_short_sort_key_leaves_are_sorted_by_every_column in the second of two
    shards: the exact sort is redone for all shards, and the tie is settled the same way, whether each
    shard sorts its own events or they are sorted once for all (04_sessionize.sql's sort_once)."""
    monkeypatch.setattr(prep, "MIN_SHARD_ROWS", 1)
    monkeypatch.setattr(prep, "SORT_ONCE_SHARDS", 1 if sort_once else 2)
    header = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
    raw = tmp_path / "ties.csv"
    raw.write_text(header + "2020-01-03 10:02:00 UTC,purchase,2,11,,y,2.0,u0,s2\n"
                   + "2020-01-01 10:00:00 UTC,view,1,10,a.b,x,3.0,u1,a\n"
                   + "2020-01-01 10:00:00 UTC,view,1,10,a.b,x,1.0,u1,a\n"
                   + "2020-01-01 10:00:00 UTC,view,1,10,a.b,x,2.0,u1,a\n")
    calls: list[int] = []
    real = prep._run_shards
    monkeypatch.setattr(prep, "_run_shards", lambda con, q, shards, *rest: calls.append(
        (len(shards), "sorted_all" in con.execute("select sql from duckdb_views() where view_name = 'sorted_events'").fetchone()[0]))
        or real(con, q, shards, *rest))
    m = prepare([str(raw)], tmp_path / "p", PrepareConfig(eval_days=1, min_item_count=1, threads=2)).manifest
    assert calls == [(2, sort_once), (2, sort_once)]  # the short key's pass, then the exact one
    assert (m["rows_collapsed"], m["n_events"]) == (2, 2)
    assert rows(open_prepared(tmp_path / "p"), "select product_id, price from items order by product_id")[0] == ("1", 1.0)


def _events_in_file_order(folder: Path) -> list[tuple]:
    return duckdb.connect().execute("select * from read_parquet(?)", [str(folder / "events.parquet")]).fetchall()


@pytest.mark.parametrize("sort_once", [False, True])
def test_four_shards_write_the_events_of_one_in_order(
        synth_csv: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sort_once: bool) -> None:
    """Four shards (four threads), each committing its rows in shard order (_run_shards): the events are
    written in user_idx, seq order (the audit's fallback sort is made to fail here), and they are the
    rows, in the order, of a run in one shard."""
    path, _ = synth_csv
    cfg = PrepareConfig(eval_days=7, threads=4)
    one = prepare([str(path)], tmp_path / "one", cfg)  # (20k rows: one shard)
    monkeypatch.setattr(prep, "MIN_SHARD_ROWS", 1)
    monkeypatch.setattr(prep, "SORT_ONCE_SHARDS", 1 if sort_once else 8)
    shards: list[int] = []
    monkeypatch.setattr(prep, "_user_shards", lambda con, real=prep._user_shards: shards.append(len(real(con))) or real(con))
    real_write = prep._write_parquet

    def write(con: duckdb.DuckDBPyConnection, source: str, out: Path) -> None:
        assert source != "events_in_order", "events.parquet came out of order"
        real_write(con, source, out)

    monkeypatch.setattr(prep, "_write_parquet", write)
    four = prepare([str(path)], tmp_path / "four", cfg)
    assert shards == [4]
    assert four.manifest["content_hash"] == one.manifest["content_hash"]
    assert _events_in_file_order(tmp_path / "four") == _events_in_file_order(tmp_path / "one")


def test_events_written_out_of_order_are_sorted_before_the_audits_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DuckDB that does not keep encode's order (here: events.parquet written in a shuffled order)
    costs a sort of the written file, not a failed prepare: the same events, in the same order."""
    want = prepare([str(TINY)], tmp_path / "ordered", TINY_CFG)
    real_write = prep._write_parquet

    def shuffled(con: duckdb.DuckDBPyConnection, source: str, out: Path) -> None:
        if source != "encoded_events":
            return real_write(con, source, out)
        con.sql("select * from encoded_events order by hash(user_idx, seq)").write_parquet(str(out))

    monkeypatch.setattr(prep, "_write_parquet", shuffled)
    got = prepare([str(TINY)], tmp_path / "shuffled", TINY_CFG)
    assert got.audits["events_unique_key"] == 0
    assert got.manifest["content_hash"] == want.manifest["content_hash"]
    assert _events_in_file_order(tmp_path / "shuffled") == _events_in_file_order(tmp_path / "ordered")


def test_the_exact_sort_gives_the_short_keys_order_where_that_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sorting by every column refines the short key: on data where the short key leaves no tie, both
    give the same tables."""
    fast = prepare([str(TINY)], tmp_path / "fast", TINY_CFG).manifest
    monkeypatch.setattr(prep, "_short_key_left_ties", lambda con: True)
    exact = prepare([str(TINY)], tmp_path / "exact", TINY_CFG).manifest
    assert exact["content_hash"] == fast["content_hash"]
    for table in prep.OUTPUT_TABLES:
        a, b = (duckdb.connect().read_parquet(str(d / f"{table}.parquet")).fetchall() for d in (tmp_path / "fast", tmp_path / "exact"))
        assert a == b, table


def test_items_whose_hashes_collide_are_joined_on_their_text(synth_csv: tuple[Path, Any], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """sessionize joins each event's item, category and brand to their codes on item_hash, DuckDB's
    hash() of the four: where two distinct rows of item_attrs share it (made here: a tenth of the items
    given one hash, in staged and item_attrs alike, after clean), exact_keys.sql makes the keys row
    numbers first, and every table is the one of a join on the text. Without it the join would give
    those items' events once per row of the shared hash."""
    path, _ = synth_csv
    cfg = PrepareConfig(eval_days=7)
    want = prepare([str(path)], tmp_path / "want", cfg)
    taken: list[bool] = []
    shared = collide_item_hashes(monkeypatch, "hash(item_text) % 10 = 0")
    monkeypatch.setattr(prep, "_exact_keys", lambda con, real=prep._exact_keys: taken.append(real(con)) or taken[-1])
    got = prepare([str(path)], tmp_path / "got", cfg)
    assert len(shared) == 1 and shared[0] > 1
    assert taken == [True]
    assert got.manifest["content_hash"] == want.manifest["content_hash"]
    assert same_tables(tmp_path / "got", tmp_path / "want") == dict.fromkeys(CONTENT_TABLES, 0)


def test_staged_gives_up_the_texts_only_clean_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After clean, staged no longer holds the item and attribute texts or the rejected records' texts
    (DONE_WITH_COLUMNS: less memory while sessionize sorts); where staged is an output (the golden
    tests) it keeps them. The tables are the same either way (the manifest's content hash differs: it
    lists staged among the files)."""
    seen: list[set[str]] = []
    real = prep._run_step

    def run_step(con: duckdb.DuckDBPyConnection, name: str, *args: Any, **kwargs: Any) -> None:
        if name == "sessionize":
            seen.append({r[0] for r in con.execute("select column_name from duckdb_columns() where table_name = 'staged'").fetchall()})
        real(con, name, *args, **kwargs)

    monkeypatch.setattr(prep, "_run_step", run_step)
    lean = prepare([str(TINY)], tmp_path / "lean", TINY_CFG)
    monkeypatch.setattr(prep, "OUTPUT_TABLES", prep.OUTPUT_TABLES + ("staged",))
    kept = prepare([str(TINY)], tmp_path / "kept", TINY_CFG)
    dropped = set(prep.DONE_WITH_COLUMNS["clean"][1])
    assert dropped <= seen[1] and not dropped & seen[0]
    assert {"user_key", "item_hash", "event_at", "reject_reason", "file_no"} <= seen[0]
    assert (lean.manifest["rows_kept"], lean.manifest["n_events"]) == (kept.manifest["rows_kept"], kept.manifest["n_events"])
    assert same_tables(tmp_path / "lean", tmp_path / "kept") == dict.fromkeys(CONTENT_TABLES, 0)


def test_exact_keys_only_where_hashes_collide() -> None:
    """exact_keys.sql runs only where two rows of item_attrs share a hash (the tiny fixture's do not)."""
    con = duckdb.connect()
    con.execute("create table item_attrs (item_key varchar, category_key varchar, category_code varchar, brand varchar, "
                "item_text varchar, item_lens hugeint, item_hash ubigint)")
    con.execute("create table staged (item_text varchar, item_lens hugeint, item_hash ubigint, reject_reason varchar)")
    lens = "(1::hugeint << 84) | 1"  # (00_setup.sql's item_lens_of('1' or '2', null, 'a'))
    con.execute(f"insert into item_attrs values ('1', null, 'a', 'x', '1ax', {lens}, 7), ('2', null, 'a', 'x', '2ax', {lens}, 8)")
    con.execute(f"insert into staged values ('1ax', {lens}, 7, null), ('2ax', {lens}, 8, null)")
    assert prep._exact_keys(con) is False
    con.execute("update item_attrs set item_hash = 7")
    con.execute("update staged set item_hash = 7")
    assert prep._exact_keys(con) is True
    assert rows(con, "select item_text, item_hash from staged order by item_text") == [("1ax", 1), ("2ax", 2)]
    assert rows(con, "select item_key, item_hash from item_attrs order by item_key") == [("1", 1), ("2", 2)]


def test_extra_columns_quotes_and_time_zones(tmp_path: Path) -> None:
    """Unknown extra columns are ignored; quoted fields keep commas and quotes; offsets become UTC."""
    raw = tmp_path / "odd.csv"
    raw.write_text(
        "rank,event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        '1,2019-10-01 10:00:00+02:00,view,1,5,"a,b","x ""y""",1.5,9,s\n'
        '2,2019-10-01T09:00:00Z,purchase,1,5,"a,b","x ""y""",1.5,9,s\n'
        "3,2019-10-01 09:30:00 UTC,view,2,5,a,,1e1,9,s\n"
    )
    m = prepare([str(raw)], tmp_path / "p", PrepareConfig(eval_days=0.01, max_len=3)).manifest
    assert (m["rows_read"], m["rows_rejected"], m["n_events"]) == (3, 0, 3)
    con = open_prepared(tmp_path / "p")
    assert rows(con, "select seq, event_at, event_type_id, product_id from events join items using (item_code) order by seq") == [
        (1, datetime(2019, 10, 1, 8), 1, "1"),
        (2, datetime(2019, 10, 1, 9), 3, "1"),
        (3, datetime(2019, 10, 1, 9, 30), 1, "2"),
    ]
    assert rows(con, "select brand from brands") == [('x "y"',)]
    assert rows(con, "select category, category_code from categories") == [("5", "a,b")]
    assert rows(con, "select price from items order by product_id") == [(1.5,), (10.0,)]


def test_mixed_schemas_in_one_run(tiny_prepared: prep.PrepareSummary, tmp_path: Path) -> None:
    m = prepare([str(TINY), str(TINY_COMPETITION)], tmp_path / "p", TINY_CFG).manifest
    assert m["input_schemas"] == ["competition", "rees46"]
    assert m["rows_read"] == 24 + 7
    assert m["n_users"] == 4 + 2


# --------------------------------------------------------------------------------------------------
# the real REES46 sample (skipped when it is absent)


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"{REAL_DATA} is absent")
def test_real_rees46_sample_exact_counts(tmp_path: Path) -> None:
    files = sorted(REAL_DATA.glob("*.csv"))
    assert files
    res = prepare([str(REAL_DATA / "*.csv")], tmp_path / "p", PrepareConfig(eval_days=0.02))
    m = res.manifest
    assert (m["rows_read"], m["rows_rejected"], m["rows_duplicate"], m["rows_kept"]) == (14_500, 0, 4, 14_496)
    assert m["rejects_by_reason"] == {}
    assert (m["rows_collapsed"], m["n_events"]) == (3_118, 11_378)
    assert (m["n_users"], m["n_raw_items"], m["n_items"], m["n_brands"], m["n_categories"]) == (3_465, 5_640, 1_741, 512, 334)
    assert m["n_sessions"] == 3_879  # 3,874 user_session values, 5 of them split by the 00:20-02:10 lull
    assert m["events_by_type"] == {"cart": 138, "purchase": 185, "view": 11_055}
    assert m["views_per_purchase"] == 59.76
    assert (m["first_event_at"], m["last_event_at"]) == ("2019-10-01 00:00:00", "2019-10-01 02:49:59")
    assert {s: (w["window_start"], w["n_users_with_inputs"], w["n_users_with_purchases"], w["n_purchased_pairs"])
            for s, w in m["windows"].items()} == {
        "valid": ("2019-10-01 01:52:23", 473, 11, 11),
        "test": ("2019-10-01 02:21:11", 918, 150, 160),
        "all": ("2019-10-01 02:49:59.000001", 3_465, 0, 0),
    }
    assert len(PreparedData(res.out).train()["item_idx"]) == 167
    assert m["inputs"] == [{
        "path": str(files[0]), "size": 1_935_788,
        "sha256": "2e6cc28e401f817ec888cc3b68077743d9dc74e6b8ed1dec442de6d6b3ec5675", "rows_read": 14_500,
    }]
    assert not any(res.audits.values())
    con = open_prepared(tmp_path / "p")
    # every user_session survives as at least one session; 19-digit category ids are exact
    assert rows(con, "select count(*) from categories where category = '2053013555631882655'") == [(1,)]
    raw_cats = con.execute("select count(distinct category_id) from read_csv(?, all_varchar = true)", [str(files[0])]).fetchone()[0]
    assert rows(con, "select count(*) from categories") == [(raw_cats,)]
    json.dumps(m)  # the manifest is plain JSON


def test_row_conservation_is_checked_even_under_python_O() -> None:
    ok = {"rows_read": 10, "rows_kept": 6, "rows_rejected": 2, "rows_duplicate": 1, "rows_ignored": 1}
    prep.check_conservation(ok)
    with pytest.raises(DatasetError, match="lost track of rows: rows_read 11"):
        prep.check_conservation({**ok, "rows_read": 11})
    code = "import purchasepred.data.prepare as p; p.check_conservation({'rows_read': 2, 'rows_kept': 1, " \
           "'rows_rejected': 0, 'rows_duplicate': 0, 'rows_ignored': 0})"
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "lost track of rows" in out.stderr


def test_prepare_reports_how_far_its_long_steps_are(synth_csv: tuple[Path, Any], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With DuckDB's progress read every 0.5 ms, prepare of the 20k-row log reports percents for its
    steps (loading the file, sessionize, encode, and the statements of the others) under the names its
    step callback gave them, growing within each step."""
    monkeypatch.setattr(prep, "PROGRESS_EVERY", 0.0005)
    path, _ = synth_csv
    steps: list[str] = []
    got: list[tuple[str, float]] = []
    prepare([str(path)], tmp_path / "p", SYNTH_CFG, step=steps.append,
            step_progress=lambda name, percent: got.append((name, percent)))
    assert got, "no progress reported"
    names = {name for name, _ in got}
    assert names <= {"setup", f"load {path.name}", "validate", "clean", "sessionize", "vocab", "encode", "split"}, names
    assert names <= set(steps), names
    for name in names:
        percents = [p for n, p in got if n == name]
        assert all(0 < p <= 100 for p in percents) and percents == sorted(set(percents)), (name, percents)
