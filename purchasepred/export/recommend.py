"""`export`: top-K distinct items for every user in the data, for the window after the last event.

Inputs are all events (the "all" split). Users with at least one event on a known item are ranked
by the default ranker chosen on the valid window (model, blend, history or popularity); the others
get the popularity list. Scores are computed for a batch of users at a time (``export.user_batch``
x catalog floats), never for the whole users x items matrix. The CSV goes to a temporary file, is
checked (every user present, exactly K distinct items each), and only then renamed into place.

Under torchrun (``torchrun --nproc_per_node N -m purchasepred export ...``) each rank scores a
contiguous share of the same user order into its own part file ``.<out>.part-<rank>-of-<N>`` beside
the target (checked like the CSV); once every rank has written its part, rank 0 checks each part
and their union and joins them, header once, into the one CSV (:func:`join_parts`). A failure on any
rank reaches every rank: no target, no parts. Parts are joined in rank order, so the CSV lists users
in the same order as one process.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from purchasepred.config import Config
from purchasepred.features import FIRST_ID
from purchasepred.data.inputs import duckdb_literal
from purchasepred.resources import named_queries
from purchasepred.data.tensors import PreparedData, reader_connection
from purchasepred.errors import PurchasePredError
from purchasepred.fileio import atomic_path, check_new_output, make_parents, remove_empty
from purchasepred.eval.protocol import top_k
from purchasepred.eval.evaluate import ValidFit, build_window
from purchasepred.train import distributed
from purchasepred.train.distributed import Dist

COLUMNS = ("user_id", "item_id", "rank", "score", "source", "purchase_probability")


@dataclass
class ExportSummary:
    path: Path
    users: int
    rows: int
    k: int
    by_source: dict[str, int]
    seconds: float
    model_checkpoint: dict[str, Any] | None = None  # the model that scored (set by pipeline.export_run)




def export(data: PreparedData, cfg: Config, model: torch.nn.Module, device: torch.device, fitted: ValidFit,
           out: Path, k: int, filter_seen: bool, force: bool,
           progress: Callable[[int, int], None] | None = None, d: Dist = Dist()) -> ExportSummary:
    """The checked CSV at ``out``. Under torchrun (``d.enabled``) every rank calls it with its own
    ``d``; rank 0 returns the summary of the whole CSV, the other ranks that of their share."""
    t0 = time.perf_counter()
    n_catalog = data.vocab.n_items - FIRST_ID
    if k > n_catalog:
        raise PurchasePredError(f"--k {k} is larger than the catalog ({n_catalog} items with an id); lower --k")
    check_new_output(out, force)
    created = make_parents(out)
    try:
        return _export(data, cfg, model, device, fitted, out, k, filter_seen, progress, t0, d)
    except BaseException:
        remove_empty(created)  # nothing partial: not even the folder made for --out
        raise


def _export(data: PreparedData, cfg: Config, model: torch.nn.Module, device: torch.device, fitted: ValidFit,
            out: Path, k: int, filter_seen: bool, progress: Callable[[int, int], None] | None, t0: float,
            d: Dist = Dist()) -> ExportSummary:
    w = build_window(data, "all", cfg, model, device, fitted)
    users = data.users["user_idx"].astype(np.int64)
    user_ids = data.users["user_id"]
    product = data.items["product_id"]
    ranker = w.rankers[fitted.default]
    popularity = w.popularity
    warm = w.events.has_events(users)
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
    # under torchrun: this rank's contiguous share of that order, into its own part file
    share = distributed.shard(torch.from_numpy(order), d).numpy()
    target = part_path(out, d.rank, d.world_size) if d.enabled else out
    try:
        with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(",".join(COLUMNS) + "\n")
            for start in range(0, len(share), batch):
                pick = share[start:start + batch]
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
                    progress(min(start + batch, len(share)), len(share))
            fh.close()
            _verify(tmp, len(share), k)
    except BaseException:
        if d.enabled:
            _after_parts(out, k, False, len(share), by_source, d, device)  # tells the other ranks, removes this part
        raise
    if d.enabled:
        n_users, by_source = _after_parts(out, k, True, len(share), by_source, d, device)
    else:
        n_users = len(users)
    return ExportSummary(out, n_users, n_users * k, k, {s: n for s, n in by_source.items() if n},
                         time.perf_counter() - t0)


def part_path(out: Path, rank: int, world_size: int) -> Path:
    """The hidden part file of ``rank`` beside the target CSV ``out``."""
    return out.with_name(f".{out.name}.part-{rank}-of-{world_size}")


def _after_parts(out: Path, k: int, wrote: bool, n_share: int, by_source: dict[str, int], d: Dist,
                 device: torch.device) -> tuple[int, dict[str, int]]:
    """Every rank, once its part is written (``wrote``) or has failed: the users and sources of the
    whole CSV, joined by rank 0. Any rank's failure becomes every rank's: parts removed, no target."""
    mine = part_path(out, d.rank, d.world_size)
    if distributed.any_rank(not wrote, d, device):  # also the barrier: every part is on disk after it
        mine.unlink(missing_ok=True)
        if not wrote:
            return 0, {}  # the caller re-raises this rank's own error
        raise PurchasePredError(f"export failed on another rank (see its error above); nothing was written to {out}")
    shares = distributed.gather((n_share, by_source), d)
    error: BaseException | None = None
    if d.is_main:
        try:
            join_parts([part_path(out, r, d.world_size) for r in range(d.world_size)], [n for n, _ in shares], out, k)
        except BaseException as err:  # noqa: BLE001 - re-raised below, after the other ranks have heard of it
            error = err
    if distributed.any_rank(error is not None, d, device):
        mine.unlink(missing_ok=True)
        raise error or PurchasePredError(f"rank 0 could not join the export parts (see its error); nothing was written to {out}")
    if not d.is_main:
        return n_share, by_source
    total: dict[str, int] = {}
    for _, part in shares:
        for src, n in part.items():
            total[src] = total.get(src, 0) + n
    return sum(n for n, _ in shares), total


def join_parts(parts: list[Path], n_users: list[int], out: Path, k: int) -> None:
    """Check each part (``n_users[i]`` users, exactly ``k`` distinct items each), concatenate them
    (header once) into a temporary file beside ``out``, check the union (every user exactly once)
    and rename it over ``out``. The parts are removed whatever happens; on failure ``out`` is untouched."""
    try:
        for part, n in zip(parts, n_users, strict=True):
            if not part.is_file():
                raise PurchasePredError(f"export part {part} is missing; nothing was written to {out} (this is a bug, please report it)")
            _verify(part, n, k)
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as dst:
                for i, part in enumerate(parts):
                    with open(part, "rb") as src:
                        header = src.readline()
                        if i == 0:
                            dst.write(header)
                        shutil.copyfileobj(src, dst, 1 << 24)
            _verify(tmp, sum(n_users), k)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)


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
    for u, its, sc, src, pr in zip(user_ids, items, scores, source, prob, strict=True):
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
