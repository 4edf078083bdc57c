"""Padded sequence arrays cut from the events table when a dataset is loaded.

The prepared ``events`` table is the sequence store: one row per token, ordered by user and position
(``user_idx, seq``; a user's positions are in time order). A window's input sequence is a slice of
its user's rows, so prepare stores no copy of the events per window or per training chunk; this
module cuts the slices, for any cutoff, with index arithmetic (no Python loop over users):

* :func:`users_before`: per user with events before the cutoff, their first row and how many (a
  window's input is the last ``max_len`` of them);
* :func:`chunk_ranges`: every event before the cutoff, cut into chunks of ``max_len`` from the most
  recent one back (chunk 0 is the most recent);
* :class:`PaddedRows`: such sequences (a window's inputs, the training chunks) cut into left-padded
  arrays a batch at a time from the events' own columns (no padded copy of every column is kept);
* :func:`next_rows`: per event, the row of the same user's next event, next purchase and next cart,
  found once when loading (prepare stores no copy of them);
* :func:`targets`: per event, the training targets (next item, next purchase, next cart) that fall
  before the cutoff;
* :func:`cut_index` and :func:`gather`: the row numbers of a sequence, -1 for its padding, and a
  column at those rows, ``PAD`` where the index is -1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from purchasepred.features import CART, PAD, PURCHASE

# a "never" time for events without a next event / purchase / cart: compares as after every cutoff
NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Users:
    """Where each user's rows are in the sorted events, and how many precede a cutoff."""

    user_idx: np.ndarray  # (U,) users with at least one event before the cutoff
    first_row: np.ndarray  # (U,) the row of the user's first event
    n_events: np.ndarray  # (U,) the user's events before the cutoff (all of them)


def check_sorted(user_idx: np.ndarray, seq: np.ndarray, at_us: np.ndarray) -> str | None:
    """Why the rows are not in (user, position) order with time non-decreasing in a user, or None."""
    if len(user_idx) < 2:
        return None
    same = user_idx[1:] == user_idx[:-1]
    if np.any(user_idx[1:] < user_idx[:-1]):
        return "rows are not ordered by user_idx"
    if np.any(same & (seq[1:] != seq[:-1] + 1)) or np.any(~same & (seq[1:] != 1)) or seq[0] != 1:
        return "a user's seq is not 1, 2, 3, ... in row order"
    if np.any(same & (at_us[1:] < at_us[:-1])):
        return "a user's events are not in time order"
    return None


def users_before(user_idx: np.ndarray, at_us: np.ndarray, cutoff_us: int) -> Users:
    """The users with events strictly before ``cutoff_us`` (a user's earlier events are a prefix of
    their rows, since rows are in time order within a user)."""
    if len(user_idx) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Users(empty, empty, empty)
    users, first = np.unique(user_idx, return_index=True)
    before = np.add.reduceat((at_us < cutoff_us).astype(np.int64), first)
    keep = before > 0
    return Users(users[keep].astype(np.int64), first[keep].astype(np.int64), before[keep])


def cut_index(first: np.ndarray, end: np.ndarray, max_len: int) -> np.ndarray:
    """(N, max_len) row numbers of the last ``max_len`` rows of each range ``[first, end)``, -1 on the left."""
    index = end[:, None] - max_len + np.arange(max_len)[None, :]
    return np.where(index >= first[:, None], index, -1)


def chunk_ranges(users: Users, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every event before the cutoff in chunks of ``max_len``, the most recent chunk first: (user of each
    chunk, chunk number, the user's first row, the chunk's end row, exclusive), ordered by user, chunk.
    Chunk i is the last ``max_len`` rows of ``[first[i], end[i])`` (:func:`cut_index`)."""
    n_chunks = -(-users.n_events // max_len)
    chunk_user = np.repeat(users.user_idx, n_chunks)
    starts = np.cumsum(n_chunks) - n_chunks
    chunk_no = np.arange(int(n_chunks.sum()), dtype=np.int64) - np.repeat(starts, n_chunks)
    end = np.repeat(users.first_row + users.n_events, n_chunks) - chunk_no * max_len
    return chunk_user, chunk_no, np.repeat(users.first_row, n_chunks), end


class PaddedRows(Mapping[str, np.ndarray]):
    """Sequences of events cut on demand from the events' own columns: sequence i is the last
    ``max_len`` rows of ``[first[i], end[i])``, PAD on the left, each column in its stored width.
    :meth:`take` cuts a batch of sequences; nothing keeps every sequence padded to ``max_len`` (a
    window's inputs, 25 bytes a token, were 1.3 GB at 1M users x 50; the training chunks, 37 bytes a
    token with their targets, about 20 GB for the whole REES46 log): 16 bytes per sequence instead,
    over columns of one value per event (the events' own arrays; the training targets add 12 bytes
    per event, for every event).
    ``rows[c]`` is column c of every sequence, (N, max_len), cut when asked."""

    def __init__(self, columns: Mapping[str, np.ndarray], first: np.ndarray, end: np.ndarray, max_len: int) -> None:
        self.columns, self.first, self.end, self.max_len = dict(columns), first, end, max_len

    @classmethod
    def whole(cls, arrays: Mapping[str, np.ndarray]) -> PaddedRows:
        """Sequences given whole as (N, L) left-padded arrays (as tests build them): sequence i is row i."""
        n, width = next(iter(arrays.values())).shape if arrays else (0, 0)
        first = np.arange(n, dtype=np.int64) * width
        return cls({c: v.reshape(-1) for c, v in arrays.items()}, first, first + width, width)

    @property
    def n_sequences(self) -> int:
        return len(self.end)

    def start(self) -> np.ndarray:
        """(N,) the first row each sequence holds (``end - start`` events, at most max_len)."""
        return np.maximum(self.first, self.end - self.max_len)

    def count(self, per_event: np.ndarray) -> np.ndarray:
        """(N,) how many events each sequence holds where ``per_event`` (one bool per event) is true."""
        totals = np.concatenate([[0], np.cumsum(per_event, dtype=np.int64)])
        return totals[self.end] - totals[self.start()]

    def subset(self, keep: np.ndarray) -> PaddedRows:
        """The sequences where ``keep`` is true (or at those positions), over the same columns."""
        return PaddedRows(self.columns, self.first[keep], self.end[keep], self.max_len)

    def compact(self) -> PaddedRows:
        """The same sequences over columns that hold only the rows some sequence reads, in their order:
        the training chunks sent to a GPU leave out the events after the window they train for and
        those of users with nothing to predict (about half of the events for the valid window of a
        month's log), which the device would otherwise hold for nothing. Itself when it would leave out
        less than a tenth (the refit on every event: a copy of every column for nothing)."""
        n = len(next(iter(self.columns.values()))) if self.columns else 0
        start = self.start()
        # +1 where a sequence starts, -1 where one ends: a row is read where the running sum is above 0
        marks = np.bincount(start, minlength=n + 1) - np.bincount(self.end, minlength=n + 1)
        read = np.cumsum(marks[:n]) > 0
        rows = np.flatnonzero(read)
        if len(rows) > 0.9 * n:
            return self
        before = np.concatenate([[0], np.cumsum(read, dtype=np.int64)])  # kept rows before each row
        return PaddedRows({c: v[rows] for c, v in self.columns.items()}, before[start], before[self.end], self.max_len)

    def index(self, rows: np.ndarray | None = None) -> np.ndarray:
        """(B, max_len) event rows of the sequences at ``rows`` (every sequence when None), -1 on the left."""
        if rows is None:
            return cut_index(self.first, self.end, self.max_len)
        return cut_index(self.first[rows], self.end[rows], self.max_len)

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Every column of the sequences at ``rows``: each (len(rows), max_len)."""
        index = self.index(np.asarray(rows, dtype=np.int64))
        return {c: gather(v, index, dtype=v.dtype) for c, v in self.columns.items()}

    def __getitem__(self, column: str) -> np.ndarray:
        v = self.columns[column]
        return gather(v, self.index(), dtype=v.dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.columns)


def next_rows(user_idx: np.ndarray, event_type_id: np.ndarray) -> dict[str, np.ndarray]:
    """Per event (rows in user, position order), the row of the same user's next event, next purchase
    and next cart after it, -1 where there is none: ``next_row``, ``next_purchase_row``,
    ``next_cart_row`` (a purchase's own next purchase is the one after it). Row numbers rather than
    copies of items and times: 4 bytes per event each below 2**31 rows, where six int64 columns of
    items and times took 48."""
    n = len(user_idx)
    dtype = np.int32 if n < np.iinfo(np.int32).max else np.int64
    rows = np.arange(n, dtype=np.int64)
    found = {"next_row": rows + 1}
    for name, type_id in (("next_purchase_row", PURCHASE), ("next_cart_row", CART)):
        at = np.flatnonzero(event_type_id == type_id)
        # the first row of that type after each row (n where there is none)
        found[name] = np.append(at, n)[np.searchsorted(at, rows, side="right")]
    out: dict[str, np.ndarray] = {}
    for name, row in found.items():
        ok = row < n
        if n:
            ok &= user_idx[np.where(ok, row, 0)] == user_idx
        out[name] = np.where(ok, row, -1).astype(dtype)
    return out


def targets(events: dict[str, np.ndarray], start_ts: int, eval_seconds: float) -> dict[str, np.ndarray]:
    """Per event, what training predicts after it, PAD where there is none before ``start_ts``:
    next_target (the next event's item), purchase_target and cart_target (the user's next purchase /
    cart, if within ``eval_seconds`` of the event). ``events`` holds item_idx, ts and the rows of
    :func:`next_rows`."""
    ts, item = events["ts"], events["item_idx"]

    def within(rows: np.ndarray) -> np.ndarray:
        at = gather(ts, rows, missing=NEVER)
        return np.where((at < start_ts) & (at - ts <= eval_seconds), gather(item, rows), PAD)

    next_at = gather(ts, events["next_row"], missing=NEVER)
    return {
        "next_target": np.where(next_at < start_ts, gather(item, events["next_row"]), PAD),
        "purchase_target": within(events["next_purchase_row"]),
        "cart_target": within(events["next_cart_row"]),
    }


def gather(column: np.ndarray, index: np.ndarray, dtype: type = np.int64, missing: int = PAD) -> np.ndarray:
    """``column`` at ``index`` (any shape), ``missing`` (PAD unless given) where the index is -1."""
    if column.size == 0:
        return np.full(index.shape, missing, dtype=dtype)
    out = column[np.maximum(index, 0)].astype(dtype, copy=False)
    out[index < 0] = missing
    return out
