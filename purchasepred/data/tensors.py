"""Prepared Parquet tables -> numpy arrays, read once; training turns them into contiguous tensors.

Queries live in ``sql/read.sql``; paths and values reach them as DuckDB variables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import tempfile

import duckdb
import numpy as np

from purchasepred.data.inputs import duckdb_literal
from purchasepred.data.prepare import load_manifest
from purchasepred.data.sequences import (
    PaddedRows, check_sorted, chunk_ranges, next_rows, targets, users_before,
)
from purchasepred.resources import connect, named_queries
from purchasepred.errors import DatasetError
from purchasepred.features import CART, FEATURES, FIRST_ID, PAD, Vocab

SEQ_COLUMNS = (*FEATURES, "ts")
TARGETS = ("next_target", "purchase_target", "cart_target")
SPLITS = ("valid", "test", "all")


@dataclass
class SplitData:
    """One window: the users with inputs before it, their last events, and the purchase truth."""

    split: str
    window_start: datetime
    window_end: datetime  # exclusive: the last event of the log + 1 microsecond for test
    start_ts: int  # window_start in unix seconds: the cutoff every ranker counts ages from
    user_idx: np.ndarray  # (U,) users with at least one event before the window
    n_events: np.ndarray  # (U,) events before the window (all of them, not only the last max_len)
    features: PaddedRows  # SEQ_COLUMNS, each (U, L), cut a batch of users at a time (a dict of (U, L) arrays is wrapped)
    truth_users: np.ndarray  # (Ut,) users with at least one purchase in the window
    truth_items: np.ndarray  # (Ut, M) item ids, -1 padding; rare items get unique ids < -1 (never hit)
    n_relevant: np.ndarray  # (Ut,) distinct products bought

    def __post_init__(self) -> None:
        if not isinstance(self.features, PaddedRows):
            self.features = PaddedRows.whole(self.features)
        if self.features.columns and self.features.n_sequences != len(self.user_idx):
            raise ValueError(f"{self.features.n_sequences} input sequences for {len(self.user_idx)} users")

    def rows_of(self, users: np.ndarray) -> np.ndarray:
        """The row of each user in ``user_idx`` (the users with inputs), -1 for users without."""
        users = np.asarray(users, dtype=np.int64)
        if len(self.user_idx) == 0:
            return np.full(len(users), -1, dtype=np.int64)
        pos = np.searchsorted(self.user_idx, users).clip(max=len(self.user_idx) - 1)
        return np.where(self.user_idx[pos] == users, pos, -1)


def reader_connection() -> duckdb.DuckDBPyConnection:
    """A DuckDB connection for reading; if it ever spills, it does so in the system temp folder
    (DuckDB's default would be ``.tmp`` in the working directory)."""
    con = connect()
    con.execute("set variable spill = ?", [str(Path(tempfile.gettempdir()) / "purchasepred-duckdb")])
    con.execute("set temp_directory = getvariable('spill')")
    return con


class PreparedData:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.manifest = load_manifest(self.path)
        self.max_len = int(self.manifest["max_len"])
        self._con = reader_connection()
        self._q = named_queries("read.sql")

    def _fetch(self, query: str, path_name: str, **variables: Any) -> dict[str, np.ndarray]:
        self._con.execute("set variable path = ?", [duckdb_literal(self.path / f"{path_name}.parquet")])
        for name, value in variables.items():
            self._con.execute(f"set variable {name} = ?", [value])  # names are ours, values bound
        try:
            return self._con.execute(self._q[query]).fetchnumpy()
        except duckdb.Error as err:
            raise DatasetError(f"{self.path}/{path_name}.parquet could not be read ({err}); prepare the dataset again") from None

    @cached_property
    def vocab(self) -> Vocab:
        m = self.manifest
        return Vocab(n_items=int(m["n_items"]) + FIRST_ID, n_brands=int(m["n_brands"]) + FIRST_ID,
                     n_categories=int(m["n_categories"]) + FIRST_ID)

    @cached_property
    def items(self) -> dict[str, np.ndarray]:
        """item_idx -> raw product_id for items with an id (index i holds item i; 0 and 1 empty)."""
        rows = self._fetch("items", "items")
        n = self.vocab.n_items
        product = np.empty(n, dtype=object)
        product[:] = ""
        n_events = np.zeros(n, dtype=np.int64)
        n_purchases = np.zeros(n, dtype=np.int64)
        category = np.ones(n, dtype=np.int64)
        known = rows["item_idx"] >= FIRST_ID
        category[rows["item_idx"][known]] = rows["category_idx"][known]
        product[rows["item_idx"][known]] = rows["product_id"][known]
        n_events[rows["item_idx"][known]] = rows["n_events"][known]
        n_purchases[rows["item_idx"][known]] = rows["n_purchases"][known]
        return {"product_id": product, "n_events": n_events, "n_purchases": n_purchases, "category_idx": category}

    @cached_property
    def users(self) -> dict[str, np.ndarray]:
        return self._fetch("users", "users")

    @cached_property
    def _events(self) -> dict[str, np.ndarray]:
        """The events table as token columns in (user, position) order, read once."""
        events = self._fetch("sequence_events", "events")
        why = check_sorted(events["user_idx"], events["seq"], events["at_us"])
        if why:
            raise DatasetError(f"{self.path}/events.parquet: {why}; prepare the dataset again")
        return events

    @cached_property
    def _next_rows(self) -> dict[str, np.ndarray]:
        """The rows of each event's next event, purchase and cart (the training targets' sources), found
        when training first asks: evaluate and export need none of them (12 bytes per event)."""
        events = self._events
        return next_rows(events["user_idx"], events["event_type_id"])

    def _window(self, name: str) -> dict[str, np.ndarray]:
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return self._fetch("split_window", "windows", split=name)

    def train(self, split: str = "valid") -> PaddedRows:
        """Training chunks of every event strictly before ``split``'s window (valid: the events that
        choose settings; test and all: the refits), with the targets that fall before it: each column
        (N, max_len), left-padded, ordered by user and chunk (chunk 0 the most recent), cut a batch
        of chunks at a time (:class:`PaddedRows`)."""
        return self.train_chunks(split)[0]

    def train_chunks(self, split: str = "valid") -> tuple[PaddedRows, dict[str, np.ndarray]]:
        """``train(split)`` and, per chunk, where it comes from: user_idx, chunk, n_events (real tokens)
        and last_at_us (the time of its last event, in microseconds)."""
        window = self._window(split)
        events = self._events
        start_us = int(window["window_start"][0].astype("datetime64[us]").astype(np.int64))
        users = users_before(events["user_idx"], events["at_us"], start_us)
        chunk_user, chunk_no, first, end = chunk_ranges(users, self.max_len)
        eval_seconds = float(self.manifest["settings"]["eval_days"]) * 86400.0
        per_event = targets({**events, **self._next_rows}, int(window["start_ts"][0]), eval_seconds)
        # the inputs in their stored widths (ids int32, the small features int8, ts int64) and the targets
        # as int32 item ids, per event: a chunk is cut from them when a batch needs it (the trainer
        # widens each batch to int64)
        columns = {c: per_event[c].astype(np.int32) for c in TARGETS}
        columns.update({c: events[c] for c in SEQ_COLUMNS})
        chunks = PaddedRows(columns, first, end, self.max_len)
        # a chunk is a training row when it has something to predict
        keep = chunks.count((columns["next_target"] != PAD) | (columns["purchase_target"] != PAD)
                            | (columns["cart_target"] != PAD)) > 0
        for c in TARGETS:  # the unknown item 1 is not a target anyone can learn or rank
            columns[c][columns[c] < FIRST_ID] = PAD
        chunks = chunks.subset(keep)
        about = {
            "user_idx": chunk_user[keep], "chunk": chunk_no[keep], "n_events": chunks.end - chunks.start(),
            "last_at_us": events["at_us"][chunks.end - 1],
        }
        return chunks, about

    def split(self, name: str) -> SplitData:
        window = self._window(name)
        events = self._events
        start_us = int(window["window_start"][0].astype("datetime64[us]").astype(np.int64))
        inputs = users_before(events["user_idx"], events["at_us"], start_us)
        truth = self._fetch("split_truth", "truth", split=name)
        users, starts = np.unique(truth["user_idx"], return_index=True)
        counts = np.diff(np.append(starts, len(truth["user_idx"])))
        width = int(counts.max()) if len(counts) else 1
        items = np.full((len(users), width), -1, dtype=np.int64)
        rare = -2 - np.arange(len(truth["item_idx"]))
        ids = np.where(truth["item_idx"] >= FIRST_ID, truth["item_idx"], rare)
        for j in range(width):  # a few columns at most: vectorised over users
            has = counts > j
            items[has, j] = ids[starts[has] + j]
        data = SplitData(
            split=name,
            window_start=window["window_start"][0].astype("datetime64[us]").item(),
            window_end=window["window_end"][0].astype("datetime64[us]").item(),
            start_ts=int(window["start_ts"][0]),
            user_idx=inputs.user_idx,
            n_events=inputs.n_events,
            features=PaddedRows({c: events[c] for c in SEQ_COLUMNS}, inputs.first_row, inputs.first_row + inputs.n_events,
                                self.max_len),
            truth_users=users.astype(np.int64),
            truth_items=items,
            n_relevant=counts.astype(np.int64),
        )
        return data

    def carts_in(self, split: SplitData) -> tuple[np.ndarray, np.ndarray]:
        """(user_idx, item_idx) of the carts inside ``split``'s window, of items with an id, by users with
        events before it (the users a ranker scores): a weaker label than a purchase."""
        e = self._events
        start_us = int(np.datetime64(split.window_start, "us").astype(np.int64))
        end_us = int(np.datetime64(split.window_end, "us").astype(np.int64))
        at = np.flatnonzero((e["at_us"] >= start_us) & (e["at_us"] < end_us) & (e["event_type_id"] == CART)
                            & (e["item_idx"] >= FIRST_ID))
        at = at[np.isin(e["user_idx"][at], split.user_idx)]  # on the few carts, not on every event
        return e["user_idx"][at].astype(np.int64), e["item_idx"][at].astype(np.int64)

    def events_before(self, window_start: Any) -> dict[str, np.ndarray]:
        """Every event with a known item strictly before ``window_start`` (for baselines)."""
        return self._fetch("events_before", "events", before_at=window_start)

    def events_before_detail(self, window_start: Any) -> dict[str, np.ndarray]:
        """``events_before`` plus session_no, price_bucket and category_idx (two-stage ranking)."""
        return self._fetch("events_before_detail", "events", before_at=window_start)
