"""Synthetic e-commerce event logs in the REES46 "multi category store" CSV schema.

The generator is fully vectorised (numpy only, no per-row / per-session / per-user
Python loops) and deterministic for a seed: the same arguments give byte-identical
files. The data has structure a recommender can learn:

* a catalogue of items in categories and brands, with Zipf-like item popularity
  inside each category and skewed category popularity;
* users with skewed activity and 1-3 preferred categories (~85% of their fresh
  views), sessions spread over ``days`` with a daily traffic cycle;
* revisits: inside a session (~25% of views) and across a user's sessions
  (~20% of a returning user's views, biased towards recent sessions);
* a hidden per-item *appeal* (independent of popularity): a view turns into a
  cart + purchase with probability ``∝ appeal[item] * (1 + min(prior views of
  the item by the user, 5))``, calibrated so that views : purchases ≈
  ``views_per_purchase``; about as many carts again are abandoned.

So a user's later purchases are predictable from their earlier views (a
"previously viewed, by count" baseline beats random by a wide margin) and the
item appeal gives a model something extra to learn.
"""

from __future__ import annotations

import gzip
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from purchasepred.fileio import atomic_path

__all__ = ["SynthSummary", "generate", "REES46_HEADER", "COMPETITION_HEADER", "EVENT_TYPES"]

REES46_HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
COMPETITION_HEADER = "event_time,event_type,item_id,category_code,brand,price,user_id,user_session"
EVENT_TYPES = ("view", "cart", "purchase")

# --- structure knobs -------------------------------------------------------------------
_ROWS_MARGIN = 1.05  # generate ~5% more rows, then keep the first `rows` by time
_MEAN_SESSION_VIEWS = 5.5  # geometric session lengths (in views)
_P_SESSION_REVISIT = 0.18  # per view at position > 0 (with chance repeats ~25-30% of views)
_P_USER_REVISIT = 0.22  # per other view of a returning user: copy an item from earlier sessions
_P_FOCUS = 0.60  # fresh view from the session's focus category
_P_PREFERRED = 0.85  # ... or from any preferred category of the user (cumulative)
_ITEM_ZIPF = 1.1
_CAT_ZIPF = 1.0
_APPEAL_SIGMA = 1.0
_MAX_INTEREST = 5  # purchase weight grows with prior views of the item, capped here
_SESSION_BREAK_S = 1800  # minimum pause between a user's sessions (> cart + purchase delays)
_CHUNK_ROWS = 1 << 18
_GZIP_LEVEL = 6

# hourly traffic weights (UTC wall clock): quiet nights, lunch bump, evening peak
_HOURS = np.arange(24, dtype=np.float64)
_HOURLY = (
    0.15
    + 0.5 * np.exp(-(((_HOURS - 13.0) / 3.0) ** 2))
    + 1.0 * np.exp(-(((_HOURS - 20.0) / 2.5) ** 2))
    + 0.35 * ((_HOURS >= 8) & (_HOURS <= 23))
)
_HOURLY = _HOURLY / _HOURLY.sum()

_TOP = [
    "electronics", "appliances", "computers", "apparel", "furniture", "kids", "construction",
    "sport", "auto", "accessories", "country_yard", "medicine", "stationery", "home",
]
_MID = [
    "smartphone", "audio", "video", "kitchen", "environment", "notebook", "components",
    "peripherals", "shoes", "bedroom", "living_room", "toys", "tools", "bicycle", "fitness",
    "clocks", "camera", "tablet", "bag", "lighting",
]
_LEAF = [
    "headphone", "tv", "refrigerators", "washer", "vacuum", "keyboard", "mouse", "printer",
    "kettle", "blender", "sneakers", "boots", "sofa", "chair", "table", "lamp", "drill",
    "saw", "watch", "player", "charger", "cover", "monitor", "memory",
]
_SYLLABLES = [
    "ka", "lo", "mi", "ne", "ra", "so", "ti", "vo", "zen", "tek", "lux", "pro", "max", "nova",
    "bel", "cor", "dex", "fi", "gal", "hy", "jo", "kin", "lar", "mon", "nor", "pax", "qui",
    "ros", "sun", "tor", "ul", "vex", "wen", "xi", "yor", "zor",
]


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate` wrote. Counts are of distinct values present in the file."""

    path: Path
    rows: int
    n_users: int
    n_items: int
    n_sessions: int
    events_by_type: dict[str, int]  # keys 'view', 'cart', 'purchase'
    start: datetime  # first event time (naive, UTC)
    end: datetime  # last event time (naive, UTC)
    seconds: float


def generate(
    out: Path,
    rows: int = 100_000,
    views_per_purchase: float = 60.0,
    days: int = 30,
    seed: int = 0,
    schema: Literal["rees46", "competition"] = "rees46",
    start: datetime = datetime(2019, 10, 1),
    progress: Callable[[str], None] | None = None,
    items: int | None = None,
) -> SynthSummary:
    """Write a synthetic event log with exactly ``rows`` rows to ``out`` and summarise it.

    ``out`` is plain CSV, or gzip when its name ends with ``.gz``. It is written to a
    temporary file next to it and moved into place at the end (an existing ``out`` is
    replaced; the caller decides whether that is allowed). ``start`` is taken as UTC
    (an aware datetime is converted to UTC). Same arguments -> byte-identical file.
    ``items`` sets the catalogue size (default: about one item per 250 rows).
    """
    t0 = time.perf_counter()
    out = Path(out)
    rows, vpp, days = _checked(rows, views_per_purchase, days, schema, items)
    if start.tzinfo is not None:
        start = start.astimezone(timezone.utc).replace(tzinfo=None)
    start = start.replace(microsecond=0)

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    n_items, n_cats, n_brands, n_users = sizes(rows, items)
    say(f"catalogue: {n_items:,} items, {n_cats:,} categories, {n_brands:,} brands")
    rng = np.random.default_rng([int(seed), 1])
    cat = _catalogue(rng, n_items, n_cats, n_brands)
    ev = simulate_events(seed, rows, vpp, days, start, n_users, cat, say)

    # global time order (stable: generation order breaks ties), keep the first `rows`
    order = np.argsort(ev["time"], kind="stable")[:rows]
    t = ev["time"][order]
    etype = ev["type"][order]
    item = ev["item"][order]
    sess = ev["session"][order]

    say(f"writing {rows:,} rows to {out}")
    tables = _string_tables(rng, cat, ev["session_user"], ev["n_users"], schema)
    midnight = datetime(start.year, start.month, start.day)
    start_sod = start.hour * 3600 + start.minute * 60 + start.second
    wall = t + start_sod  # seconds since `midnight`
    header = REES46_HEADER if schema == "rees46" else COMPETITION_HEADER
    _write_atomic(out, header, wall, etype, item, sess, tables, midnight)

    counts = np.bincount(etype, minlength=3)
    summary = SynthSummary(
        path=out,
        rows=rows,
        n_users=int(np.count_nonzero(np.bincount(ev["session_user"][sess], minlength=1))),
        n_items=int(np.count_nonzero(np.bincount(item, minlength=1))),
        n_sessions=int(np.count_nonzero(np.bincount(sess, minlength=1))),
        events_by_type={name: int(counts[i]) for i, name in enumerate(EVENT_TYPES)},
        start=midnight + timedelta(seconds=int(wall[0])),
        end=midnight + timedelta(seconds=int(wall[-1])),
        seconds=time.perf_counter() - t0,
    )
    say(
        f"done: {rows:,} rows ({summary.events_by_type['view']:,} views, "
        f"{summary.events_by_type['cart']:,} carts, {summary.events_by_type['purchase']:,} purchases) "
        f"in {summary.seconds:.1f}s"
    )
    return summary


def _checked(rows: int, views_per_purchase: float, days: int, schema: str, items: int | None) -> tuple[int, float, int]:
    """generate's arguments checked (one clear ValueError each) and normalised: (rows, vpp, days)."""
    if isinstance(rows, bool) or int(rows) != rows or rows < 100:
        raise ValueError(f"rows must be an integer >= 100, got {rows!r}")
    try:
        vpp = float(views_per_purchase)
    except (TypeError, ValueError):
        vpp = float("nan")
    if not math.isfinite(vpp) or vpp < 1:
        raise ValueError(f"views_per_purchase must be a finite number >= 1, got {views_per_purchase!r}")
    if isinstance(days, bool) or int(days) != days or days < 1:
        raise ValueError(f"days must be an integer >= 1, got {days!r}")
    if schema not in ("rees46", "competition"):
        raise ValueError(f"schema must be 'rees46' or 'competition', got {schema!r}")
    if items is not None and (isinstance(items, bool) or int(items) != items or items < 10):
        raise ValueError(f"items must be an integer >= 10, got {items!r}")
    return int(rows), vpp, int(days)


def sizes(rows: int, items: int | None = None) -> tuple[int, int, int, int]:
    """(items, categories, brands, users) of a log of ``rows`` rows (``items`` overrides the catalogue size)."""
    n_items = int(items) if items is not None else max(200, rows // 250)
    return n_items, max(10, n_items // 150), max(10, n_items // 40), max(50, rows // 20)


def simulate_events(seed: int, rows: int, vpp: float, days: int, start: datetime, n_users: int, cat: dict,
                    say: Callable[[str], None] = lambda msg: None) -> dict:
    """The simulated events (at least ``rows``, in generation order) and the hidden state behind them:
    ``_simulate`` with a margin of extra rows, grown and drawn again (a new seed) on a shortfall."""
    margin = _ROWS_MARGIN
    for attempt in range(20):
        say(f"simulating ~{int(rows * margin):,} events for ~{n_users:,} users")
        ev = _simulate(np.random.default_rng([int(seed), 2, attempt]), rows, margin, vpp, days, start, n_users, cat)
        if ev["time"].size >= rows:
            return ev
        margin *= 1.25
    raise RuntimeError("synthetic generator could not reach the requested row count")  # pragma: no cover


# --- catalogue -------------------------------------------------------------------------


def _unique_ints(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """n distinct int64 values in [low, high), in random order."""
    return low + rng.choice(high - low, size=n, replace=False).astype(np.int64)


def _catalogue(rng: np.random.Generator, n_items: int, n_cats: int, n_brands: int) -> dict:
    # categories: popularity (Zipf over a random rank) and size (lognormal, >= 1 item each)
    cat_rank = rng.permutation(n_cats) + 1
    cat_pop = cat_rank.astype(np.float64) ** -_CAT_ZIPF
    cat_pop /= cat_pop.sum()
    size_w = rng.lognormal(0.0, 0.8, n_cats) * (0.5 + cat_pop * n_cats) ** 0.5
    extra = rng.multinomial(n_items - n_cats, size_w / size_w.sum())
    cat_size = 1 + extra
    item_cat = np.repeat(np.arange(n_cats), cat_size)  # items are grouped by category
    cat_first = np.concatenate(([0], np.cumsum(cat_size)[:-1]))

    # within-category Zipf popularity over a random rank; global "cat + cdf" array for
    # vectorised sampling with one searchsorted
    pos_in_cat = np.arange(n_items) - cat_first[item_cat]
    rank = np.empty(n_items, dtype=np.int64)
    rank[np.argsort(item_cat * float(n_items) + rng.random(n_items), kind="stable")] = pos_in_cat
    w = (rank + 1.0) ** -_ITEM_ZIPF
    cw = np.cumsum(w)
    seg_start = np.concatenate(([0.0], cw))[cat_first]
    seg_total = np.add.reduceat(w, cat_first)
    within = (cw - seg_start[item_cat]) / seg_total[item_cat]
    last = cat_first + cat_size - 1
    within[last] = 1.0
    item_cdf = item_cat + within

    cat_ids, cat_codes = _category_codes(rng, n_cats)

    item_brand, names = _brands(rng, n_items, n_brands, item_cat, cat_size)

    # prices: lognormal around a category level, 2 decimals, ~1% zero
    cat_level = np.exp(rng.normal(math.log(60.0), 1.0, n_cats))
    price = cat_level[item_cat] * np.exp(rng.normal(0.0, 0.5, n_items))
    cents = np.maximum(np.round(price * 100.0), 50).astype(np.int64)
    cents[rng.random(n_items) < 0.01] = 0

    product_ids = _unique_ints(rng, n_items, 1_000_000, 60_000_000)
    appeal = np.exp(rng.normal(0.0, _APPEAL_SIGMA, n_items))  # hidden, independent of popularity

    return {
        "n_items": n_items,
        "n_cats": n_cats,
        "cat_pop_cdf": np.cumsum(cat_pop),
        "cat_first": cat_first,
        "cat_last": last,
        "item_cat": item_cat,
        "item_cdf": item_cdf,
        "item_brand": item_brand,
        "brand_names": names,
        "cents": cents,
        "product_ids": product_ids,
        "cat_ids": cat_ids,
        "cat_codes": cat_codes,
        "appeal": appeal,
    }


def _category_codes(rng: np.random.Generator, n_cats: int) -> tuple[np.ndarray, list[str]]:
    """Category ids and their category_code text (some empty), drawn from the code space."""
    cat_ids = _unique_ints(rng, n_cats, 2_053_013_552_000_000_000, 2_053_013_560_000_000_000)
    codes_2 = [f"{a}.{b}" for a in _TOP for b in _MID]
    codes_3 = [f"{a}.{b}.{c}" for a in _TOP for b in _MID for c in _LEAF]
    space = codes_2 + codes_3
    pick = rng.choice(len(space), size=n_cats, replace=n_cats > len(space))
    # prefer short (2-level) codes a bit more often than their share of the space
    short = rng.random(n_cats) < 0.4
    pick = np.where(short, pick % len(codes_2), pick)
    empty_code = rng.random(n_cats) < 0.35
    cat_codes = ["" if empty_code[c] else space[int(pick[c])] for c in range(n_cats)]
    return cat_ids, cat_codes


def _brands(rng: np.random.Generator, n_items: int, n_brands: int, item_cat: np.ndarray,
            cat_size: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each item's brand (-1: none) and the brand names."""
    n_cats = len(cat_size)
    # brands: each has a home category (every category gets at least one), sized like categories
    home = np.concatenate(
        (np.arange(n_cats), rng.choice(n_cats, size=n_brands - n_cats, p=cat_size / cat_size.sum()))
    )
    home.sort(kind="stable")
    brand_first = np.searchsorted(home, np.arange(n_cats))
    brand_count = np.bincount(home, minlength=n_cats)
    local = brand_first[item_cat] + np.floor(
        brand_count[item_cat] * rng.random(n_items) ** 2
    ).astype(np.int64)
    anywhere = rng.integers(0, n_brands, n_items)
    item_brand = np.where(rng.random(n_items) < 0.85, local, anywhere)
    item_brand[rng.random(n_items) < 0.15] = -1  # empty brand
    n_space = len(_SYLLABLES) ** 2 + len(_SYLLABLES) ** 3
    bpick = rng.choice(n_space, size=min(n_brands, n_space), replace=False)
    names = []
    s = len(_SYLLABLES)
    for k in bpick.tolist():
        if k < s * s:
            names.append(_SYLLABLES[k // s] + _SYLLABLES[k % s])
        else:
            k -= s * s
            names.append(_SYLLABLES[k // (s * s)] + _SYLLABLES[(k // s) % s] + _SYLLABLES[k % s])
    names += [f"brand{k}" for k in range(len(names), n_brands)]
    return item_brand, names


# --- events ----------------------------------------------------------------------------


def _calibrated_probs(w: np.ndarray, bins: np.ndarray, n_bins: int, mask: np.ndarray | None,
                      target: float) -> np.ndarray:
    """p = min(1, s * w) with sum(p over mask) == target, solved exactly.

    ``w`` is a function of ``bins`` (few distinct values), so the clipping point is found
    on per-bin counts instead of sorting every event.
    """
    sel = bins if mask is None else bins[mask]
    counts = np.bincount(sel, minlength=n_bins).astype(np.float64)
    values = np.zeros(n_bins)
    values[bins] = w  # same value for every event of a bin
    keep = (counts > 0) & (values > 0)
    counts, values = counts[keep], values[keep]
    if target <= 0 or counts.size == 0:
        return np.zeros(w.shape)
    if target >= counts.sum():
        return (w > 0).astype(np.float64)
    order = np.argsort(-values, kind="stable")
    v, c = values[order], counts[order]
    clipped = np.concatenate(([0.0], np.cumsum(c)[:-1]))  # C_k: events in bins above k
    mass = np.cumsum((c * v)[::-1])[::-1]  # U_k: weight in bins k..end
    with np.errstate(divide="ignore", invalid="ignore"):
        s_k = (target - clipped) / mass
    prev_v = np.concatenate(([np.inf], v[:-1]))
    ok = (s_k > 0) & (s_k * v <= 1.0 + 1e-12) & (s_k * prev_v >= 1.0 - 1e-12)
    k = int(np.argmax(ok)) if ok.any() else 0
    return np.minimum(1.0, s_k[k] * w)


def _simulate(rng: np.random.Generator, rows: int, margin: float, vpp: float, days: int,
              start: datetime, n_users_target: int, cat: dict) -> dict:
    # purchases = V / vpp, carts ~ 2 * purchases
    n_views_target = int(math.ceil(rows * margin / (1.0 + 3.0 / vpp))) + 1
    sess = _sessions(rng, n_views_target, n_users_target, days, start)
    view_item, pref, n_pref = _view_items(rng, sess, cat)
    vidx, etime, etype = _purchases(rng, sess, view_item, cat, vpp)
    return {
        "time": etime,
        "type": etype,
        "item": view_item[vidx].astype(np.int32),
        "session": sess["sess_of_view"][vidx].astype(np.int32),
        "session_user": sess["sess_user"],
        "n_users": sess["nu"],
        # hidden state, for benchmarks/oracle_synth.py (not written to the file)
        "pref": pref,
        "n_pref": n_pref,
    }


def _sessions(rng: np.random.Generator, n_views_target: int, n_users_target: int, days: int,
              start: datetime) -> dict:
    """Sessions (lengths, users, start times) and every view's session, position and time."""
    window = days * 86400
    # sessions and their lengths (in views)
    p_geo = 1.0 / _MEAN_SESSION_VIEWS
    chunks: list[np.ndarray] = []
    total = 0
    while total < n_views_target:
        n_draw = int((n_views_target - total) * p_geo * 1.1) + 16
        part = rng.geometric(p_geo, n_draw)
        chunks.append(part)
        total += int(part.sum())
    lens_all = np.concatenate(chunks)
    n_sess = int(np.searchsorted(np.cumsum(lens_all), n_views_target)) + 1
    lens = lens_all[:n_sess].astype(np.int64)

    # users: everyone gets one session, the rest by a skewed activity weight
    nu = min(n_users_target, n_sess)
    activity = rng.lognormal(0.0, 1.4, nu)
    sess_user = np.concatenate(
        (np.arange(nu), rng.choice(nu, size=n_sess - nu, p=activity / activity.sum()))
    ).astype(np.int64)

    # raw session starts: uniform day, hour from the daily cycle, relative to `start`
    start_sod = start.hour * 3600 + start.minute * 60 + start.second
    t_wall = (rng.integers(0, days, n_sess) * 86400 + rng.choice(24, size=n_sess, p=_HOURLY) * 3600
              + rng.integers(0, 3600, n_sess))
    t_raw = (t_wall - start_sod) % window
    order = np.lexsort((t_raw, sess_user))
    sess_user = sess_user[order]
    t_raw = t_raw[order]

    n_views = int(lens.sum())
    sess_first = np.concatenate(([0], np.cumsum(lens)[:-1]))
    sess_of_view = np.repeat(np.arange(n_sess), lens)
    pos = np.arange(n_views) - sess_first[sess_of_view]

    # gaps between views: seconds to minutes; offsets inside the session
    gaps = np.clip(np.rint(rng.lognormal(math.log(25.0), 1.0, n_views)), 1, 1800).astype(np.int64)
    gaps[sess_first] = 0
    cg = np.cumsum(gaps)
    view_off = cg - cg[sess_first][sess_of_view]
    duration = view_off[sess_first + lens - 1]

    # a user's sessions are ordered and never overlap: start_i >= end_{i-1} + break.
    # t_i = max(raw_i - D_i, t_{i-1}) per user, via one maximum.accumulate with per-user offsets
    user_change = np.concatenate(([True], sess_user[1:] != sess_user[:-1]))
    user_first_sess = np.flatnonzero(user_change)  # indexed by user (users are 0..nu-1, sorted)
    slot = duration + _SESSION_BREAK_S
    excl = np.cumsum(slot) - slot
    d = excl - excl[user_first_sess][sess_user]
    big = np.int64(1 << 40)
    acc = np.maximum.accumulate(t_raw - d + sess_user * big)
    sess_start = acc - sess_user * big + d
    view_time = sess_start[sess_of_view] + view_off
    return {"sess_user": sess_user, "sess_of_view": sess_of_view, "sess_first": sess_first, "pos": pos,
            "user_first_sess": user_first_sess, "view_time": view_time, "n_views": n_views, "n_sess": n_sess,
            "nu": nu}


def _view_items(rng: np.random.Generator, sess: dict, cat: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every view's item (fresh picks or copies of earlier views), and the users' preferred categories."""
    sess_user, sess_of_view, sess_first = sess["sess_user"], sess["sess_of_view"], sess["sess_first"]
    pos, user_first_sess = sess["pos"], sess["user_first_sess"]
    n_views, n_sess, nu = sess["n_views"], sess["n_sess"], sess["nu"]
    # --- items of views: fresh picks or copies of earlier views (same session / same user)
    u_of_view = sess_user[sess_of_view]
    first_view_of_user = sess_first[user_first_sess]
    sf = sess_first[sess_of_view]
    earlier = sf - first_view_of_user[u_of_view]  # views in the user's earlier sessions
    r = rng.random((4, n_views))
    in_sess = (pos > 0) & (r[0] < _P_SESSION_REVISIT)
    cross = ~in_sess & (earlier > 0) & (r[1] < _P_USER_REVISIT)
    src = np.arange(n_views)
    src[in_sess] = sf[in_sess] + (r[2][in_sess] * pos[in_sess]).astype(np.int64)
    # recent sessions more likely: offset back from this session's start, biased to small
    src[cross] = sf[cross] - 1 - (earlier[cross] * r[3][cross] ** 2).astype(np.int64)
    while True:
        nxt = src[src]
        if np.array_equal(nxt, src):
            break
        src = nxt
    fresh = np.flatnonzero(src == np.arange(n_views))
    del r

    # preferred categories (1-3 per user) and a focus category per session
    n_pref = rng.choice(3, size=nu, p=[0.4, 0.35, 0.25]) + 1
    pref = np.searchsorted(cat["cat_pop_cdf"], rng.random((nu, 3)), side="right")
    pref = np.minimum(pref, cat["n_cats"] - 1)
    sess_focus = pref[sess_user, (rng.random(n_sess) * n_pref[sess_user]).astype(np.int64)]
    fu = u_of_view[fresh]
    rr = rng.random((4, fresh.size))
    any_pref = pref[fu, (rr[1] * n_pref[fu]).astype(np.int64)]
    global_cat = np.minimum(np.searchsorted(cat["cat_pop_cdf"], rr[2], side="right"), cat["n_cats"] - 1)
    fcat = np.where(rr[0] < _P_FOCUS, sess_focus[sess_of_view[fresh]],
                    np.where(rr[0] < _P_PREFERRED, any_pref, global_cat))
    fitem = np.searchsorted(cat["item_cdf"], fcat + rr[3], side="right")
    fitem = np.clip(fitem, cat["cat_first"][fcat], cat["cat_last"][fcat])
    del rr
    item_tab = np.empty(n_views, dtype=np.int64)
    item_tab[fresh] = fitem
    view_item = item_tab[src]
    del item_tab, src
    return view_item, pref, n_pref


def _purchases(rng: np.random.Generator, sess: dict, view_item: np.ndarray, cat: dict,
               vpp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Carts and purchases drawn from the views: (source view of every event, times, types)."""
    n_items, n_views, view_time = cat["n_items"], sess["n_views"], sess["view_time"]
    u_of_view = sess["sess_user"][sess["sess_of_view"]]
    # prior views of the same item by the same user (views are ordered by user, then time)
    key = u_of_view * n_items + view_item
    korder = np.argsort(key, kind="stable")
    ks = key[korder]
    grp_start = np.concatenate(([True], ks[1:] != ks[:-1]))
    idx = np.arange(n_views)
    rank_in_grp = idx - np.maximum.accumulate(np.where(grp_start, idx, 0))
    prior = np.empty(n_views, dtype=np.int64)
    prior[korder] = rank_in_grp
    del key, korder, ks, grp_start, rank_in_grp

    # purchases and carts among viewed items: appeal x accumulated interest
    interest = np.minimum(prior, _MAX_INTEREST)
    bins = view_item * (_MAX_INTEREST + 1) + interest
    n_bins = n_items * (_MAX_INTEREST + 1)
    w = cat["appeal"][view_item] * (1.0 + interest)
    p_buy = _calibrated_probs(w, bins, n_bins, None, n_views / vpp)
    buy = rng.random(n_views) < p_buy
    n_buy = int(buy.sum())
    p_cart = _calibrated_probs(w, bins, n_bins, ~buy, float(n_buy))
    abandon = (rng.random(n_views) < p_cart) & ~buy
    buy_idx = np.flatnonzero(buy)
    ab_idx = np.flatnonzero(abandon)
    cart_buy_t = view_time[buy_idx] + rng.integers(3, 45, buy_idx.size)
    purchase_t = cart_buy_t + rng.integers(30, 900, buy_idx.size)  # minutes after the cart
    cart_ab_t = view_time[ab_idx] + rng.integers(3, 45, ab_idx.size)

    vidx = np.concatenate((np.arange(n_views), buy_idx, ab_idx, buy_idx))
    etime = np.concatenate((view_time, cart_buy_t, cart_ab_t, purchase_t))
    etype = np.concatenate((
        np.zeros(n_views, np.uint8), np.ones(buy_idx.size + ab_idx.size, np.uint8),
        np.full(buy_idx.size, 2, np.uint8),
    ))
    return vidx, etime, etype


# --- CSV writing -----------------------------------------------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _digits(x: np.ndarray, width: int) -> np.ndarray:
    """Fixed-width decimal ASCII digits of non-negative ints, shape (n, width) uint8."""
    p = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((x.astype(np.int64)[:, None] // p) % 10 + 48).astype(np.uint8)


def _fixed(a: np.ndarray) -> np.ndarray:
    """(n, w) uint8 -> 1-D array of S{w}."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return a.view(f"S{a.shape[1]}").reshape(-1)


def _string_tables(rng: np.random.Generator, cat: dict, sess_user: np.ndarray, n_users: int,
                   schema: str) -> dict:
    # per item: "product_id,category_id,category_code,brand,price," (or the competition subset)
    ic = cat["item_cat"].tolist()
    pid = cat["product_ids"].tolist()
    cents = cat["cents"].tolist()
    brand = cat["item_brand"].tolist()
    bnames = cat["brand_names"]
    codes = cat["cat_codes"]
    cids = [str(c) for c in cat["cat_ids"].tolist()]
    if schema == "rees46":
        items = [
            f"{pid[i]},{cids[ic[i]]},{codes[ic[i]]},{bnames[brand[i]] if brand[i] >= 0 else ''},"
            f"{cents[i] // 100}.{cents[i] % 100:02d},".encode()
            for i in range(len(pid))
        ]
    else:
        items = [
            f"{pid[i]},{codes[ic[i]]},{bnames[brand[i]] if brand[i] >= 0 else ''},"
            f"{cents[i] // 100}.{cents[i] % 100:02d},".encode()
            for i in range(len(pid))
        ]
    item_s = np.array(items, dtype=f"S{max(len(b) for b in items)}")

    # per session: "user_id,uuid\n" (47 bytes); uuid4-looking, deterministic from the seed
    n_sess = sess_user.size
    user_ids = _unique_ints(rng, n_users, 510_000_000, 600_000_000)
    raw = np.frombuffer(rng.bytes(16 * n_sess), dtype=np.uint8).reshape(n_sess, 16)
    nib = np.empty((n_sess, 32), dtype=np.uint8)
    nib[:, 0::2] = raw >> 4
    nib[:, 1::2] = raw & 15
    nib[:, 12] = 4  # version nibble
    nib[:, 16] = 8 | (nib[:, 16] & 3)  # variant nibble
    hexd = _HEX[nib]
    row = np.empty((n_sess, 47), dtype=np.uint8)
    row[:, 0:9] = _digits(user_ids[sess_user], 9)
    row[:, 9] = ord(",")
    uu = row[:, 10:46]
    uu[:, 0:8] = hexd[:, 0:8]
    uu[:, 9:13] = hexd[:, 8:12]
    uu[:, 14:18] = hexd[:, 12:16]
    uu[:, 19:23] = hexd[:, 16:20]
    uu[:, 24:36] = hexd[:, 20:32]
    uu[:, [8, 13, 18, 23]] = ord("-")
    row[:, 46] = ord("\n")

    # time of day "HH:MM:SS"
    s = np.arange(86400)
    hms = np.empty((86400, 8), dtype=np.uint8)
    hms[:, 0:2] = _digits(s // 3600, 2)
    hms[:, 2] = ord(":")
    hms[:, 3:5] = _digits((s // 60) % 60, 2)
    hms[:, 5] = ord(":")
    hms[:, 6:8] = _digits(s % 60, 2)
    return {
        "item": item_s,
        "session": _fixed(row),
        "hms": _fixed(hms),
        "type": np.array([b"view,", b"cart,", b"purchase,"], dtype="S9"),
    }


def _write_atomic(out: Path, header: str, wall: np.ndarray, etype: np.ndarray, item: np.ndarray,
                  sess: np.ndarray, tables: dict, midnight: datetime) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    n_days = int(wall[-1] // 86400) + 1
    dates = np.array(
        [(midnight + timedelta(days=k)).strftime("%Y-%m-%d ").encode() for k in range(n_days)],
        dtype="S11",
    )
    wi = tables["item"].dtype.itemsize
    rec_t = np.dtype({
        "names": ["date", "hms", "utc", "type", "item", "sess"],
        "formats": ["S11", "S8", "S5", "S9", f"S{wi}", "S47"],
        "offsets": [0, 11, 19, 24, 33, 33 + wi],
        "itemsize": 33 + wi + 47,
    })
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as raw:
            if out.name.endswith(".gz"):
                fh = gzip.GzipFile(filename=out.name[:-3], mode="wb", fileobj=raw,
                                   compresslevel=_GZIP_LEVEL, mtime=0)
            else:
                fh = raw
            try:
                fh.write(header.encode() + b"\n")
                n = wall.size
                for lo in range(0, n, _CHUNK_ROWS):
                    hi = min(n, lo + _CHUNK_ROWS)
                    w = wall[lo:hi]
                    rec = np.empty(hi - lo, dtype=rec_t)
                    rec["date"] = dates[w // 86400]
                    rec["hms"] = tables["hms"][w % 86400]
                    rec["utc"] = b" UTC,"
                    rec["type"] = tables["type"][etype[lo:hi]]
                    rec["item"] = tables["item"][item[lo:hi]]
                    rec["sess"] = tables["session"][sess[lo:hi]]
                    b = rec.view(np.uint8)
                    fh.write(b[b != 0].tobytes())
            finally:
                if fh is not raw:
                    fh.close()

