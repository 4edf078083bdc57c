"""Sequences cut from the events table when loading: windows, training chunks, targets, any cutoff."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from purchasepred.data import prepare as prep
from purchasepred.data.sequences import (
    NEVER, PaddedRows, check_sorted, chunk_ranges, cut_index, gather, next_rows, targets, users_before,
)
from purchasepred.data.tensors import SPLITS, PreparedData
from purchasepred.errors import DatasetError
from purchasepred.features import CART, PAD, PURCHASE, VIEW

# three users: 7 has 5 events (t = 10..14), 8 has 1 (t = 20), 9 has 2 (t = 30, 31)
USER = np.array([7, 7, 7, 7, 7, 8, 9, 9])
SEQ = np.array([1, 2, 3, 4, 5, 1, 1, 2])
AT = np.array([10, 11, 12, 13, 14, 20, 30, 31])


def window_index(users, max_len: int) -> np.ndarray:
    return cut_index(users.first_row, users.first_row + users.n_events, max_len)


def test_window_index_takes_the_last_events_before_the_cutoff() -> None:
    users = users_before(USER, AT, cutoff_us=31)  # user 9's second event is at the cutoff: not before
    assert users.user_idx.tolist() == [7, 8, 9] and users.n_events.tolist() == [5, 1, 1]
    assert window_index(users, 3).tolist() == [[2, 3, 4], [-1, -1, 5], [-1, -1, 6]]
    only_early = users_before(USER, AT, cutoff_us=12)
    assert only_early.user_idx.tolist() == [7] and window_index(only_early, 3).tolist() == [[-1, 0, 1]]
    assert users_before(USER, AT, cutoff_us=10).user_idx.tolist() == []


def test_padded_rows_cut_a_batch_of_sequences_from_the_events() -> None:
    users = users_before(USER, AT, cutoff_us=31)
    item = np.array([70, 71, 72, 73, 74, 80, 90, 91], dtype=np.int32)
    inputs = PaddedRows({"item_idx": item, "ts": AT}, users.first_row, users.first_row + users.n_events, 3)
    # the whole column, as cut_index cuts it, in the stored width
    assert inputs["item_idx"].tolist() == [[72, 73, 74], [PAD, PAD, 80], [PAD, PAD, 90]]
    assert inputs["item_idx"].dtype == np.int32 and list(inputs) == ["item_idx", "ts"] and len(inputs) == 2
    # a batch: any users, in any order, each row the same as in the whole column
    batch = inputs.take(np.array([2, 0]))
    assert batch["item_idx"].tolist() == [[PAD, PAD, 90], [72, 73, 74]] and batch["ts"].tolist() == [[0, 0, 30], [12, 13, 14]]
    # arrays given whole (as tests build them) read back unchanged
    whole = {"item_idx": np.array([[0, 5, 6], [0, 0, 7]]), "ts": np.array([[0, 1, 2], [0, 0, 3]])}
    padded = PaddedRows.whole(whole)
    assert all(np.array_equal(padded[c], v) for c, v in whole.items())
    assert padded.take(np.array([1]))["item_idx"].tolist() == [[0, 0, 7]]
    # per sequence: the events it holds, and how many of them a per-event mask marks
    assert (inputs.end - inputs.start()).tolist() == [3, 1, 1]
    assert inputs.count(item % 2 == 0).tolist() == [2, 1, 1]  # 72, 74 | 80 | 90
    kept = inputs.subset(np.array([False, True, True]))
    assert kept.n_sequences == 2 and kept["item_idx"].tolist() == [[PAD, PAD, 80], [PAD, PAD, 90]]
    # compact: the same sequences over only the rows they read (here rows 5 and 6 of 8)
    small = kept.compact()
    assert small.columns["item_idx"].tolist() == [80, 90] and small.columns["ts"].tolist() == [20, 30]
    assert all(np.array_equal(small[c], kept[c]) for c in kept) and small.take(np.array([1]))["ts"].tolist() == [[0, 0, 30]]
    # overlapping and empty sequences, and a sequence longer than max_len (its first rows are never read)
    odd = PaddedRows({"item_idx": item}, np.array([0, 1, 5, 7]), np.array([5, 3, 5, 8]), 3).compact()
    assert padded.compact() is padded  # (every row is read: kept as it is)
    assert odd.columns["item_idx"].tolist() == [71, 72, 73, 74, 91]  # (row 0 is never read)
    assert odd["item_idx"].tolist() == [[72, 73, 74], [PAD, 71, 72], [PAD, PAD, PAD], [PAD, PAD, 91]]
    # a window's inputs are one sequence per user
    from datetime import datetime

    from purchasepred.data.tensors import SplitData

    with pytest.raises(ValueError, match="2 input sequences for 3 users"):
        SplitData(split="test", window_start=datetime(2019, 10, 1), window_end=datetime(2019, 10, 2), start_ts=0,
                  user_idx=np.arange(3), n_events=np.ones(3), features=whole, truth_users=np.zeros(0),
                  truth_items=np.zeros((0, 1)), n_relevant=np.zeros(0))


def test_chunks_run_back_from_the_most_recent_event() -> None:
    users = users_before(USER, AT, cutoff_us=100)
    chunk_user, chunk_no, first, end = chunk_ranges(users, 2)
    index = cut_index(first, end, 2)
    assert chunk_user.tolist() == [7, 7, 7, 8, 9]
    assert chunk_no.tolist() == [0, 1, 2, 0, 0]
    assert index.tolist() == [[3, 4], [1, 2], [-1, 0], [-1, 5], [6, 7]]
    column = np.array([11, 12, 13, 14, 15, 21, 31, 32])
    assert gather(column, index).tolist() == [[14, 15], [12, 13], [PAD, 11], [PAD, 21], [31, 32]]


def test_targets_stop_at_the_cutoff_and_the_horizon() -> None:
    # one user: a view of item 3 at 0, a cart of item 4 at 5, a purchase of item 9 at 100
    events = {
        "ts": np.array([0, 5, 100]), "item_idx": np.array([3, 4, 9]),
        "next_row": np.array([1, 2, -1]), "next_purchase_row": np.array([2, 2, -1]),
        "next_cart_row": np.array([1, -1, -1]),
    }
    t = targets(events, start_ts=100, eval_seconds=1000.0)
    # the next event at 100 is at the cutoff: no target; the purchase at 100 as well
    assert t["next_target"].tolist() == [4, PAD, PAD]
    assert t["purchase_target"].tolist() == [PAD, PAD, PAD]
    assert t["cart_target"].tolist() == [4, PAD, PAD]
    t = targets(events, start_ts=101, eval_seconds=96.0)  # the purchase is 100 s after event 0, 95 s after event 1
    assert t["next_target"].tolist() == [4, 9, PAD]
    assert t["purchase_target"].tolist() == [PAD, 9, PAD]
    assert t["cart_target"].tolist() == [4, PAD, PAD]


def test_next_rows_stay_within_the_user() -> None:
    """Each row's next event, next purchase and next cart of the same user (a purchase's next purchase
    is the one after it), -1 where the user has none; gather() reads a column through them."""
    user = np.array([7, 7, 7, 7, 8, 8, 9])
    item = np.array([10, 11, 12, 13, 20, 21, 30])
    kind = np.array([VIEW, PURCHASE, CART, PURCHASE, VIEW, CART, PURCHASE])
    got = next_rows(user, kind)
    assert got["next_row"].tolist() == [1, 2, 3, -1, 5, -1, -1]
    # user 7's purchases are rows 1 and 3; user 9's purchase (row 6) is not user 8's next purchase
    assert got["next_purchase_row"].tolist() == [1, 3, 3, -1, -1, -1, -1]
    assert got["next_cart_row"].tolist() == [2, 2, -1, -1, 5, -1, -1]
    assert got["next_row"].dtype == np.int32
    assert gather(item, got["next_purchase_row"]).tolist() == [11, 13, 13, PAD, PAD, PAD, PAD]
    empty = next_rows(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert all(v.shape == (0,) for v in empty.values())
    assert gather(np.zeros(0, dtype=np.int64), np.array([-1]), missing=NEVER).tolist() == [NEVER]


def test_check_sorted_names_what_is_wrong() -> None:
    assert check_sorted(USER, SEQ, AT) is None
    assert "ordered by user_idx" in check_sorted(USER[::-1], SEQ, AT)
    assert "seq" in check_sorted(USER, np.array([1, 2, 4, 3, 5, 1, 1, 2]), AT)
    assert "time order" in check_sorted(USER, SEQ, np.array([10, 11, 9, 13, 14, 20, 30, 31]))


def test_every_cutoff_uses_only_earlier_events(synth_prepared: prep.PrepareSummary) -> None:
    data = PreparedData(synth_prepared.out)
    n_tokens = {}
    for split in SPLITS:
        window = data.split(split)
        arrays = data.train(split)
        assert len(arrays["item_idx"]) > 0
        real = arrays["item_idx"] != PAD
        assert arrays["ts"][real].max() < window.start_ts and window.features["ts"].max() < window.start_ts
        # a window keeps no padded copy of its inputs: they are cut from the events' own columns
        assert all(np.shares_memory(v, data._events[c]) for c, v in window.features.columns.items())
        for target in ("next_target", "purchase_target", "cart_target"):
            assert not (arrays[target][~real] != PAD).any(), target  # no target on padding
        n_tokens[split] = int(real.sum())
        # the chunks' columns hold the events they read and nothing else (no event at or after the window;
        # the refit on every event reads nearly all of them and keeps the events' columns as they are)
        small = arrays.compact()  # (what the trainer sends to a GPU)
        if split != "all":
            assert len(small.columns["item_idx"]) == n_tokens[split] and small.columns["ts"].max() < window.start_ts
        rows = np.arange(0, arrays.n_sequences, 7)
        assert all(np.array_equal(small.take(rows)[c], arrays.take(rows)[c]) for c in arrays)
    # each later cutoff sees more; before "all", every user with a next event to learn is in training
    assert n_tokens["valid"] < n_tokens["test"] < n_tokens["all"] <= synth_prepared.manifest["n_events"]
    _, about = data.train_chunks("all")
    users, counts = np.unique(data._events["user_idx"], return_counts=True)
    assert set(about["user_idx"].tolist()) == set(users[counts >= 2].tolist())


def test_unsorted_events_are_refused(synth_prepared: prep.PrepareSummary, tmp_path: Path) -> None:
    out = tmp_path / "p"
    out.mkdir()
    for path in synth_prepared.out.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    duckdb.execute("copy (select * from read_parquet(?) order by seq, user_idx) to '" + str(out / "events.parquet") + "'",
                   [str(synth_prepared.out / "events.parquet")])
    with pytest.raises(DatasetError, match=r"events.parquet: rows are not ordered by user_idx; prepare the dataset again"):
        PreparedData(out).train()


def test_inputs_keep_their_stored_width_and_the_model_sees_int64(synth_prepared: prep.PrepareSummary) -> None:
    """Window inputs and training rows are kept as events.parquet stores them (ids int32, the small
    features int8; 25 and 37 bytes a token instead of 72 and 96 as int64): ModelScorer and the trainer
    widen each batch, so the scores equal those of an all-int64 copy of the same inputs."""
    import dataclasses

    import torch

    from purchasepred.config import ModelConfig
    from purchasepred.eval.rankers import ModelScorer, Popularity
    from purchasepred.models.transformer import TransformerRecommender

    data = PreparedData(synth_prepared.out)
    split = data.split("valid")
    widths = {c: v.dtype for c, v in split.features.items()}
    assert widths["item_idx"] == np.int32 and widths["hour_id"] == np.int8 and widths["ts"] == np.int64, widths
    arrays = data.train("valid")
    assert arrays["item_idx"].dtype == np.int32 and arrays["event_type_id"].dtype == np.int8
    assert all(arrays[t].dtype == np.int32 for t in ("next_target", "purchase_target", "cart_target"))

    torch.manual_seed(0)
    model = TransformerRecommender(ModelConfig(d_model=16, n_layers=1), data.vocab, data.max_len).eval()
    events = data.events_before(split.window_start)
    pop = Popularity(events, data.vocab.n_items, split.start_ts, 7.0)
    wide = dataclasses.replace(split, features={c: v.astype(np.int64) for c, v in split.features.items()})
    users = split.user_idx[:300]
    assert torch.equal(ModelScorer(model, split, pop, torch.device("cpu"))(users),
                       ModelScorer(model, wide, pop, torch.device("cpu"))(users))
