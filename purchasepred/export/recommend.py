"""`export`: top-K distinct items for every user in the data, for the window after the last event.

Inputs are all events (the "all" split). Users with at least one event on a known item are ranked
by the default ranker chosen on the valid window (model, blend, history or popularity); the others
get the popularity list. Scores are computed for a batch of users at a time (``export.user_batch``
x catalog floats), never for the whole users x items matrix. The CSV goes to a temporary file, is
checked (every user present, exactly K distinct items each), and only then renamed into place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from purchasepred.config import Config
from purchasepred.data.features import FIRST_ID
from purchasepred.data.inputs import duckdb_literal
from purchasepred.resources import named_queries
from purchasepred.data.tensors import PreparedData, reader_connection
from purchasepred.errors import PurchasePredError
from purchasepred.fileio import atomic_path, check_new_output, make_parents, remove_empty
from purchasepred.eval.protocol import top_k
from purchasepred.eval.evaluate import ValidFit, build_window

COLUMNS = ("user_id", "item_id", "rank", "score", "source", "purchase_probability")


@dataclass
class ExportSummary:
    path: Path
    users: int
    rows: int
    k: int
    by_source: dict[str, int]
    seconds: float




def export(data: PreparedData, cfg: Config, model: torch.nn.Module, device: torch.device, fitted: ValidFit,
           out: Path, k: int, filter_seen: bool, force: bool,
           progress: Callable[[int, int], None] | None = None) -> ExportSummary:
    t0 = time.perf_counter()
    n_catalog = data.vocab.n_items - FIRST_ID
    if k > n_catalog:
        raise PurchasePredError(f"--k {k} is larger than the catalog ({n_catalog} items with an id); lower --k")
    check_new_output(out, force)
    created = make_parents(out)
    try:
        return _export(data, cfg, model, device, fitted, out, k, filter_seen, progress, t0)
    except BaseException:
        remove_empty(created)  # nothing partial: not even the folder made for --out
        raise


def _export(data: PreparedData, cfg: Config, model: torch.nn.Module, device: torch.device, fitted: ValidFit,
            out: Path, k: int, filter_seen: bool, progress: Callable[[int, int], None] | None, t0: float) -> ExportSummary:
    w = build_window(data, "all", cfg, model, device, fitted)
    users = data.users["user_idx"].astype(np.int64)
    user_ids = data.users["user_id"]
    product = data.items["product_id"]
    ranker = w.rankers[fitted.default]
    popularity = w.popularity
    lo = np.searchsorted(w.events.user, users, "left")
    hi = np.searchsorted(w.events.user, users, "right")
    warm = hi > lo
    use_ranker = fitted.default != "popularity"
    by_source = {fitted.default: 0, "popularity": 0}
    batch = cfg.export.user_batch
    # users with no event on a known item all get the same list: rank the catalog once for them
    pop = popularity.scores.clone()
    pop[:FIRST_ID] = float("-inf")
    pop_val, pop_top = (t[0].numpy() for t in top_k(pop[None, :], k))
    # users in order of history length: each batch then has one width (no padding columns to
    # compute) and is scored as one block; the CSV lists users in that order
    n_events = np.zeros(len(users), dtype=np.int64)
    rows = w.split.rows_of(users)
    n_events[rows >= 0] = w.split.n_events[rows[rows >= 0]]
    order = np.argsort(n_events, kind="stable")
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(COLUMNS) + "\n")
        for start in range(0, len(users), batch):
            pick = order[start:start + batch]
            u = users[pick]
            # rows scored one by one over the catalog: the ranker's users, and under
            # --filter-seen anyone with history; only these cost a users x catalog block
            dense = warm[pick] & (use_ranker or filter_seen)
            val = np.empty((len(u), k), dtype=np.float32)
            top = np.empty((len(u), k), dtype=np.int64)
            val[~dense], top[~dense] = pop_val, pop_top
            if dense.any():
                ud = u[dense]
                scores = ranker(ud).float() if use_ranker else popularity(ud)
                scores[:, :FIRST_ID] = float("-inf")
                if filter_seen:
                    rows, idx = w.events.ranges(ud)
                    scores[torch.as_tensor(rows), torch.as_tensor(w.events.item[idx])] = float("-inf")
                v, t = top_k(scores, k)
                del scores
                val[dense], top[dense] = v.numpy(), t.numpy()
            if not np.isfinite(val).all():
                # filter_seen removed too much for some user: fill from popularity, unseen first
                val, top = _fill_from_popularity(val, top, popularity.scores.numpy())
            source = np.where(dense & use_ranker, fitted.default, "popularity")
            prob = np.where(source[:, None] == "popularity", fitted_pop(fitted, val), fitted.calibration(val))
            for src in (fitted.default, "popularity"):
                by_source[src] = by_source.get(src, 0) + int((source == src).sum())
            _write_rows(fh, user_ids[pick], product[top], val, source, prob, k)
            if progress:
                progress(min(start + batch, len(users)), len(users))
        fh.close()
        _verify(tmp, len(users), k)
    return ExportSummary(out, len(users), len(users) * k, k, {s: n for s, n in by_source.items() if n},
                         time.perf_counter() - t0)


def fitted_pop(fitted: ValidFit, scores: np.ndarray) -> np.ndarray:
    return fitted.popularity_calibration(scores) if fitted.popularity_calibration else np.zeros_like(scores)


def _fill_from_popularity(val: np.ndarray, top: np.ndarray, pop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-pop, kind="stable")
    order = order[order >= FIRST_ID]
    for i in np.where(~np.isfinite(val).all(1))[0]:
        keep = np.isfinite(val[i])
        chosen = list(top[i][keep])
        for item in order:
            if len(chosen) == len(top[i]):
                break
            if item not in chosen:
                chosen.append(item)
        top[i] = chosen
        val[i] = np.where(keep, val[i], pop[top[i]] - 1e6)[: len(chosen)]
    return val, top


def _write_rows(fh: Any, user_ids: np.ndarray, items: np.ndarray, scores: np.ndarray, source: np.ndarray,
                prob: np.ndarray, k: int) -> None:
    ranks = [str(r) for r in range(1, k + 1)]
    lines = []
    for u, its, sc, src, pr in zip(user_ids, items, scores, source, prob):
        us = _csv_field(str(u))
        for r in range(k):
            lines.append(f"{us},{_csv_field(str(its[r]))},{ranks[r]},{sc[r]:.6g},{src},{pr[r]:.6g}")
    fh.write("\n".join(lines))
    fh.write("\n")


def _csv_field(value: str) -> str:
    if any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _verify(path: Path, n_users: int, k: int) -> None:
    con = reader_connection()
    con.execute("set variable path = ?", [duckdb_literal(path)])
    con.execute("set variable k = ?", [k])
    bad_users, n_seen = con.execute(named_queries("read.sql")["export_check"]).fetchone()
    if n_seen != n_users or bad_users:
        raise PurchasePredError(
            f"export check failed for {path}: {n_seen} users written of {n_users}, {bad_users} without exactly {k} "
            "distinct items; nothing was written (this is a bug, please report it)"
        )
