"""Invariants on random small logs (hypothesis): whatever the rows, prepare accounts for every one
of them, no window's inputs reach its cutoff, every kept event maps back to its raw ids, and export gives
every user exactly K distinct items.

A log is a few users and items (one user id written twice, once with a leading space; 19-digit ids),
valid and invalid event types, times in a ten-day range in three spellings plus unparseable and
out-of-range ones, good and bad prices, empty fields, fields with commas and quotes, and exact
duplicates. An oracle written here, independently of the SQL, says which rows are valid, why the others
are not, and which valid rows are exact duplicates.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import open_prepared
from purchasepred.config import Config, ModelConfig, PrepareConfig
from purchasepred.data.prepare import prepare
from purchasepred.data.synth import REES46_HEADER
from purchasepred.data.tensors import PreparedData
from purchasepred.errors import InputError
from purchasepred.eval.calibration import Calibration
from purchasepred.eval.evaluate import RANKERS, ValidFit
from purchasepred.eval.rankers import BlendWeights, HistoryParams
from purchasepred.export.recommend import export
from purchasepred.models.transformer import TransformerRecommender

# 15 random logs per test keep the suite fast; PURCHASEPRED_EXAMPLES=500 searches harder (by hand, nightly)
SETTINGS = settings(max_examples=int(os.environ.get("PURCHASEPRED_EXAMPLES", "15")), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

START = datetime(2019, 10, 1)
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S UTC", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ")
BAD_TIMES = ("not a time", "", "1999-06-01 00:00:00 UTC", "2999-01-01 00:00:00 UTC")
USERS = ("1", "2", " 2", "9876543210987654321", "")
ITEMS = ("10", "11", "12", "13", "1234567890123456789", "")
# " view " (spaces), other spellings and an empty type are all in: the empty one must be rejected
TYPES = ("view", "view", "view", "cart", "purchase", "remove_from_cart", "VIEW", "Purchase", " view ", "click", "")
PRICES = ("1.5", "1.50", "0", "", "-2", "NaN", "inf", "abc", " 3 ")
BRANDS = ("acme", "", "a,b", 'q"x')
SESSIONS = ("s1", "s2", "")
EVENT_TYPES = ("view", "cart", "purchase", "remove_from_cart")


@st.composite
def times(draw: Any) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(BAD_TIMES))
    at = START + timedelta(seconds=draw(st.integers(0, 10 * 86400)))
    return at.strftime(draw(st.sampled_from(TIME_FORMATS)))


ROW = st.tuples(times(), st.sampled_from(TYPES), st.sampled_from(ITEMS), st.sampled_from(("5", "6", "")),
                st.sampled_from(("a.b", "")), st.sampled_from(BRANDS), st.sampled_from(PRICES),
                st.sampled_from(USERS), st.sampled_from(SESSIONS))


@st.composite
def logs(draw: Any) -> list[tuple[str, ...]]:
    rows = draw(st.lists(ROW, min_size=1, max_size=40))
    copies = draw(st.lists(st.integers(0, len(rows) - 1), max_size=8))  # exact duplicates, anywhere
    for i in copies:
        rows.insert(draw(st.integers(0, len(rows))), rows[i])
    return rows


# ------------------------------------------------------------------------------------------------ the oracle
def _time(text: str) -> datetime | None:
    for fmt in TIME_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
    return None


def _none(text: str) -> str | None:
    return text.strip(" ") or None


def judge(row: tuple[str, ...]) -> tuple[str | None, tuple | None]:
    """(reject reason or None, the row's normalised key when valid), in validate's order of checks."""
    t, etype, item, category, code, brand, price, user, session = row
    at = _time(t)
    value = None
    if price.strip(" "):
        try:
            value = float(price)
        except ValueError:
            value = "unparseable"
    if not user.strip(" "):
        return "missing user_id", None
    if not item.strip(" "):
        return "missing item id", None
    if at is None:
        return "unparseable event_time", None
    if at < datetime(2000, 1, 1) or at > datetime.now() + timedelta(days=1):
        return "event_time out of range", None
    if etype.strip(" ").lower() not in EVENT_TYPES:
        return "unknown event_type", None
    if value == "unparseable":
        return "unparseable price", None
    if value is not None and not math.isfinite(value):
        return "non-finite price", None
    if value is not None and value < 0:
        return "negative price", None
    key = (at, etype.strip(" ").lower(), item.strip(" "), user.strip(" "), _none(session), _none(category),
           _none(code), _none(brand), value)
    return None, key


def write_log(path: Path, rows: list[tuple[str, ...]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(REES46_HEADER.split(","))
    w.writerows(rows)
    path.write_text(buf.getvalue())


def prepared(rows: list[tuple[str, ...]], work: Path, cfg: PrepareConfig) -> dict[str, Any] | None:
    """The manifest, or None when prepare refused a log without a single valid row (checked here)."""
    write_log(work / "log.csv", rows)
    verdicts = [judge(r) for r in rows]
    try:
        return prepare([str(work / "log.csv")], work / "out", cfg).manifest
    except InputError as err:
        assert all(reason for reason, _ in verdicts), f"prepare refused a log with valid rows: {err}"
        assert "no valid rows" in str(err) and not (work / "out").exists()
        assert [p.name for p in work.iterdir()] == ["log.csv"]
        return None


PREPARE_CFG = st.builds(PrepareConfig, max_len=st.sampled_from([2, 3, 5]), eval_days=st.sampled_from([0.5, 1.0, 2.0]),
                        min_item_count=st.sampled_from([1, 2]), session_gap_minutes=st.sampled_from([30.0, 600.0]))


# ------------------------------------------------------------------------------------------------ prepare invariants
@SETTINGS
@given(rows=logs(), cfg=PREPARE_CFG)
def test_prepare_conserves_rows_and_never_leaks_and_maps_back(rows: list[tuple[str, ...]], cfg: PrepareConfig) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        m = prepared(rows, work, cfg)
        if m is None:
            return
        con = open_prepared(work / "out")
        verdicts = [judge(r) for r in rows]
        valid_keys = [key for reason, key in verdicts if reason is None]

        # 1. every row accounted for: read = kept + rejected + duplicates, each count as the oracle says
        assert m["rows_read"] == len(rows) == m["rows_kept"] + m["rows_rejected"] + m["rows_duplicate"]
        assert m["rejects_by_reason"] == dict(Counter(reason for reason, _ in verdicts if reason))
        assert con.execute("select count(*) from rejects").fetchone()[0] == m["rows_rejected"]
        assert m["rows_duplicate"] == len(valid_keys) - len(set(valid_keys))
        assert m["rows_kept"] == len(set(valid_keys))
        assert m["n_events"] == m["rows_kept"] - m["rows_collapsed"]
        lines = sorted(r[0] for r in con.execute("select line from rejects").fetchall())
        assert lines == [i + 2 for i, (reason, _) in enumerate(verdicts) if reason], "rejects name the wrong lines"

        # 2. no window's inputs at or after its cutoff, and each window's inputs are exactly the events before it
        events = con.execute("select user_idx, seq, event_at, item_code, item_idx from events order by user_idx, seq").fetchall()
        by_user: dict[int, list[tuple]] = defaultdict(list)
        for e in events:
            by_user[e[0]].append(e)
        windows = {s: (start, end, start_ts) for s, start, end, start_ts in
                   con.execute("select split, window_start, window_end, start_ts from windows").fetchall()}
        assert set(windows) == {"valid", "test", "all"}
        for split, user, n_events, last_at, items, ts in con.execute(
                "select split, user_idx, n_events, last_event_at, item_idx, ts from sequences").fetchall():
            start, _, start_ts = windows[split]
            before = [e for e in by_user[user] if e[2] < start]
            assert last_at < start and max(ts) < start_ts, (split, user)
            assert n_events == len(before) and last_at == before[-1][2]
            assert [i for i in items if i] == [e[4] for e in before[-cfg.max_len:]]
        users_with_inputs = {(s, u) for s, u in con.execute("select split, user_idx from sequences").fetchall()}
        for split, (start, _, _) in windows.items():
            assert users_with_inputs >= {(split, u) for u, evs in by_user.items() if evs[0][2] < start}
        valid_start, _, valid_ts = windows["valid"]
        for last_at, ts in con.execute("select last_event_at, ts from train_sequences").fetchall():
            assert last_at < valid_start and max(ts) < valid_ts
        for split, first_at in con.execute("select split, first_purchase_at from truth").fetchall():
            assert windows[split][0] <= first_at < windows[split][1]

        # 3. every kept event maps back to raw ids: the same user, item, time and type as a valid raw row
        raw = {(k[3], k[2], k[0], k[1]) for k in valid_keys}
        kept = con.execute("""
            select u.user_id, i.product_id, e.event_at,
                   case e.event_type_id when 1 then 'view' when 2 then 'cart' when 3 then 'purchase'
                        else 'remove_from_cart' end
            from events as e join users as u using (user_idx) join items as i using (item_code)""").fetchall()
        assert len(kept) == m["n_events"] and set(kept) <= raw
        assert {r[0] for r in con.execute("select user_id from users").fetchall()} == {k[3] for k in valid_keys}
        assert {r[0] for r in con.execute("select product_id from items").fetchall()} == {k[2] for k in valid_keys}


# ------------------------------------------------------------------------------------------------ export invariant
@SETTINGS
@given(rows=logs(), cfg=PREPARE_CFG, k=st.integers(1, 6), ranker=st.sampled_from(RANKERS),
       filter_seen=st.booleans(), user_batch=st.sampled_from([1, 2, 64]))
def test_export_gives_every_user_k_distinct_items(rows: list[tuple[str, ...]], cfg: PrepareConfig, k: int,
                                                  ranker: str, filter_seen: bool, user_batch: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        m = prepared(rows, work, cfg)
        assume(m is not None and m["n_items"] >= 1)
        data = PreparedData(work / "out")
        k = min(k, m["n_items"])
        config = Config()
        config.export.user_batch = user_batch
        torch.manual_seed(0)
        model = TransformerRecommender(ModelConfig(d_model=16, n_layers=1), data.vocab, data.max_len).eval()
        fitted = ValidFit(history=HistoryParams(), blend=BlendWeights(beta=1.0, gamma=1.0, delta=0.5), default=ranker,
                        valid_ndcg10={},
                        calibration=Calibration(a=1.0, b=-4.0), dataset_hash=m["content_hash"],
                        popularity_calibration=Calibration(a=1.0, b=-6.0))
        out = work / "recs" / "recommendations.csv"
        summary = export(data, config, model, torch.device("cpu"), fitted, out, k, filter_seen, force=False)
        with open(out, newline="") as fh:
            recs = list(csv.DictReader(fh))
        by_user: dict[str, list[dict[str, str]]] = defaultdict(list)
        for r in recs:
            by_user[r["user_id"]].append(r)
        assert set(by_user) == set(data.users["user_id"]) and summary.users == len(by_user)
        known = {p for p in data.items["product_id"] if p}
        for user, got in by_user.items():
            assert [int(r["rank"]) for r in got] == list(range(1, k + 1)), user
            assert len({r["item_id"] for r in got}) == k and {r["item_id"] for r in got} <= known, user
            scores = [float(r["score"]) for r in got]
            assert all(np.isfinite(scores)) and scores == sorted(scores, reverse=True), user
            assert all(0.0 <= float(r["purchase_probability"]) <= 1.0 for r in got), user
        assert sorted(p.name for p in out.parent.iterdir()) == ["recommendations.csv"]  # no temporary file left
