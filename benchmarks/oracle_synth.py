"""How high can NDCG@10 go on the project's synthetic logs? An oracle that knows the generator's hidden state.

Not a test. The synthetic generator (purchasepred/data/synth.py) draws a purchase from a view with a
probability proportional to the item's hidden *appeal* times the user's interest (1 + prior views of
the item, capped at 5), and draws the views themselves from three sources: copies of the same
session's views, copies of the user's earlier views (recent ones more likely), and fresh picks (the
user's 1-3 hidden preferred categories, else a category by popularity; an item by its popularity in
the category). This script re-runs the generator's random draws for the same settings to recover that
hidden state (appeal, preferred categories, user ids), reads the prepared folder's test truth (the
exact protocol `evaluate` scores), and ranks every item for every test buyer by its expected number of
purchases in the test week given the user's views before it:

    appeal[i] * (1 + min(prior views of i, 5)) * (P_copy * recency weight of i in the user's history
                                                    + P_fresh * P(fresh pick is i | user's categories))

with the generator's own constants. This is close to the Bayes-optimal ranking (it leaves out a
view's effect on later views in the same week), so its NDCG@10 is an estimate of the ceiling that no
ranker can beat by much on that data. Variants drop one piece of hidden knowledge at a time, to show
which one the gap to the rankers lies in.

Example (after `benchmarks/bench_quality.py --rows 1000000 --vpp 60 --workdir /tmp/pq1m`):
    python benchmarks/oracle_synth.py --rows 1000000 --vpp 60 \
        --prepared /tmp/pq1m/prepared_1000000_vpp60_eval7
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np

from purchasepred.data import synth
from purchasepred.eval.metrics import bootstrap_ci, ndcg_at_k

K = 10


def hidden_state(rows: int, vpp: float, days: int, seed: int, items: int | None) -> dict:
    """The generator's catalogue, events and hidden per-user state for these settings (same draws as generate)."""
    n_items, n_cats, n_brands, n_users = synth.sizes(rows, items)
    rng = np.random.default_rng([int(seed), 1])
    cat = synth._catalogue(rng, n_items, n_cats, n_brands)
    start = datetime(2019, 10, 1)
    ev = synth.simulate_events(seed, rows, vpp, days, start, n_users, cat)
    order = np.argsort(ev["time"], kind="stable")[:rows]
    user_ids = synth._unique_ints(rng, ev["n_users"], 510_000_000, 600_000_000)  # _string_tables' first draw
    return {
        "cat": cat,
        "time": ev["time"][order] + int(start.timestamp() - datetime(1970, 1, 1).timestamp()),
        "type": ev["type"][order],
        "item": ev["item"][order].astype(np.int64),
        "user": ev["session_user"][ev["session"][order]],
        "pref": ev["pref"],
        "n_pref": ev["n_pref"],
        "user_ids": user_ids,
    }


def fresh_pick_probs(cat: dict) -> tuple[np.ndarray, np.ndarray]:
    """P(item | its category) of a fresh pick, and P(category) of a pick by global popularity."""
    item_cat = cat["item_cat"]
    cdf = cat["item_cdf"]
    prev = np.concatenate(([0.0], cdf[:-1]))
    first = np.concatenate(([True], item_cat[1:] != item_cat[:-1]))
    prev[first] = item_cat[first]
    p_item = cdf - prev
    cat_pop = np.diff(np.concatenate(([0.0], cat["cat_pop_cdf"])))
    return p_item, cat_pop


def oracle_scores(h: dict, users: np.ndarray, start_ts: int, use: set[str], prior: float = 1.0) -> np.ndarray:
    """(len(users), n_items) expected test-week purchases of each item; `use` names the hidden pieces known
    (an estimated appeal is shrunk with `prior` pseudo-events)."""
    cat = h["cat"]
    n_items = cat["n_items"]
    p_item, cat_pop = fresh_pick_probs(cat)
    item_cat = cat["item_cat"]
    before = (h["time"] < start_ts) & (h["type"] == 0)
    hv_user, hv_item = h["user"][before], h["item"][before]
    # views are in time order; group them by user, keeping that order
    o = np.argsort(hv_user, kind="stable")
    hv_user, hv_item = hv_user[o], hv_item[o]
    starts = np.searchsorted(hv_user, users, side="left")
    ends = np.searchsorted(hv_user, users, side="right")
    appeal = cat["appeal"] if "appeal" in use else np.ones(n_items)
    if "appeal_estimated" in use:
        # (carts + purchases) / views of each item before the window (both are drawn in proportion to
        # the appeal), shrunk towards the mean rate with `prior` pseudo-events
        acted = (h["time"] < start_ts) & (h["type"] > 0)
        v = np.bincount(hv_item, minlength=n_items).astype(float)
        p = np.bincount(h["item"][acted], minlength=n_items).astype(float)
        rate = p.sum() / max(v.sum(), 1.0)
        appeal = (p + prior) / (v + prior / rate)
    out = np.zeros((users.size, n_items))
    # the mixture of a test-week view's sources among views that are not same-session copies
    p_copy = synth._P_USER_REVISIT if "recency" in use or "copy" in use else 0.0
    for r, (u, a, b) in enumerate(zip(users, starts, ends, strict=True)):
        items = hv_item[a:b]
        e = items.size
        prior = np.bincount(items, minlength=n_items)
        copy = np.zeros(n_items)
        if e:
            k = np.arange(e)[::-1]  # views back from the end of the history
            w = np.sqrt((k + 1) / e) - np.sqrt(k / e) if "recency" in use else np.full(e, 1.0 / e)
            copy = np.bincount(items, weights=w, minlength=n_items)
        if "categories" in use:
            prefs = h["pref"][u, : h["n_pref"][u]]
            cat_w = synth._P_PREFERRED * np.bincount(prefs, minlength=cat["n_cats"]) / prefs.size
            cat_w = cat_w + (1 - synth._P_PREFERRED) * cat_pop
        else:  # the categories of the user's own views, smoothed by popularity
            seen = np.bincount(item_cat[items], minlength=cat["n_cats"]).astype(float)
            cat_w = synth._P_PREFERRED * seen / max(seen.sum(), 1.0) + (1 - synth._P_PREFERRED) * cat_pop
        fresh = cat_w[item_cat] * p_item
        view_w = (p_copy * copy + (1 - p_copy) * fresh) if e else fresh
        out[r] = appeal * (1.0 + np.minimum(prior, synth._MAX_INTEREST)) * view_w
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--vpp", type=float, default=60.0)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--prepared", type=Path, required=True, help="the prepared folder of the same synthetic log")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()

    h = hidden_state(args.rows, args.vpp, args.days, args.seed, args.items)
    prep = args.prepared
    con = duckdb.connect()
    start_ts = con.execute("select start_ts from read_parquet(?) where split = ?",
                           [str(prep / "windows.parquet"), args.split]).fetchone()[0]
    truth = con.execute(
        "select u.user_id, t.product_id from read_parquet(?) as t join read_parquet(?) as u using (user_idx) "
        "where t.split = ? order by u.user_id, t.product_id",
        [str(prep / "truth.parquet"), str(prep / "users.parquet"), args.split],
    ).fetchall()
    pid_to_item = {int(p): i for i, p in enumerate(h["cat"]["product_ids"].tolist())}
    uid_to_user = {int(u): i for i, u in enumerate(h["user_ids"].tolist())}
    by_user: dict[int, list[int]] = {}
    for uid, pid in truth:
        by_user.setdefault(uid_to_user[int(uid)], []).append(pid_to_item[int(pid)])
    users = np.array(sorted(by_user), dtype=np.int64)
    m = max(len(v) for v in by_user.values())
    truth_m = np.full((users.size, m), -1, dtype=np.int64)
    for r, u in enumerate(users):
        truth_m[r, : len(by_user[u])] = by_user[u]
    n_rel = (truth_m >= 0).sum(1)
    # the mapping is right when the generator's own purchases in the window are the truth
    in_win = (h["time"] >= start_ts) & (h["type"] == 2)
    gen_pairs = set(zip(h["user"][in_win].tolist(), h["item"][in_win].tolist(), strict=True))
    truth_pairs = {(u, i) for u, items in by_user.items() for i in items}
    print(f"{args.split}: {users.size:,} buyers, {len(truth_pairs):,} (user, item) purchases; "
          f"all in the generator's window: {truth_pairs <= gen_pairs}")

    variants = {
        "oracle (every hidden piece)": {"appeal", "recency", "categories"},
        "oracle, appeal estimated from the log": {"appeal_estimated", "recency", "categories"},
        "oracle, categories from the user's views": {"appeal", "recency"},
        "oracle, no recency (uniform over history)": {"appeal", "copy", "categories"},
        "oracle, appeal and categories estimated": {"appeal_estimated", "recency"},
    }
    print(f"| ranker | NDCG@{K} [95% CI] |\n|---|---|")
    for name, use in variants.items():
        # an estimated appeal is shrunk by the best of a few prior strengths on this very window:
        # optimistic, as a ceiling should be
        tried = [
            (ndcg_at_k(np.argsort(-oracle_scores(h, users, start_ts, use, prior), axis=1, kind="stable")[:, :K],
                       truth_m, n_rel, K), prior)
            for prior in ((0.5, 1.0, 2.0, 5.0, 20.0) if "appeal_estimated" in use else (1.0,))
        ]
        nd, prior = max(tried, key=lambda t: t[0].mean())
        lo, hi = bootstrap_ci(nd)
        note = f" (prior {prior:g} events)" if "appeal_estimated" in use else ""
        print(f"| {name}{note} | {nd.mean():.4f} [{lo:.4f}, {hi:.4f}] |", flush=True)


if __name__ == "__main__":
    main()
