"""Tests for the synthetic REES46-style event log generator."""

from __future__ import annotations

import collections
import csv
import gzip
import random
import re
from datetime import datetime
from pathlib import Path

import pytest

from purchasepred import fileio
from purchasepred.data.synth import COMPETITION_HEADER, REES46_HEADER, SynthSummary, generate

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
PRICE_RE = re.compile(r"^\d+\.\d\d$")


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, list(reader)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[SynthSummary, list[list[str]]]:
    out = tmp_path_factory.mktemp("synth") / "events.csv"
    summary = generate(out, rows=200_000, views_per_purchase=60.0, seed=0)
    header, rows = _read(out)
    assert ",".join(header) == REES46_HEADER
    return summary, rows


@pytest.mark.parametrize(
    ("schema", "header"), [("rees46", REES46_HEADER), ("competition", COMPETITION_HEADER)]
)
def test_header_and_row_count(tmp_path: Path, schema: str, header: str) -> None:
    out = tmp_path / f"{schema}.csv"
    summary = generate(out, rows=1_000, schema=schema, seed=3)
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == header
    assert len(lines) == 1 + 1_000
    assert text.endswith("\n") and '"' not in text
    _, rows = _read(out)
    assert all(len(r) == len(header.split(",")) for r in rows)
    assert summary.rows == 1_000 and summary.path == out


def test_minimum_rows_exact(tmp_path: Path) -> None:
    out = tmp_path / "tiny.csv"
    s = generate(out, rows=100, seed=1)
    assert len(out.read_text().splitlines()) == 101
    assert sum(s.events_by_type.values()) == 100


def test_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    generate(a, rows=20_000, seed=7)
    generate(b, rows=20_000, seed=7)
    generate(c, rows=20_000, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_gzip_output_same_content(tmp_path: Path) -> None:
    plain, gz = tmp_path / "e.csv", tmp_path / "e.csv.gz"
    generate(plain, rows=5_000, seed=2)
    generate(gz, rows=5_000, seed=2)
    with gzip.open(gz, "rb") as f:
        assert f.read() == plain.read_bytes()
    gz2 = tmp_path / "again" / "e.csv.gz"
    generate(gz2, rows=5_000, seed=2)
    assert gz2.read_bytes() == gz.read_bytes()  # no timestamp in the gzip header


def test_field_formats_and_order(big) -> None:
    summary, rows = big
    times = [r[0] for r in rows]
    assert times == sorted(times)
    assert all(TIME_RE.match(t) for t in times)
    assert {r[1] for r in rows} == {"view", "cart", "purchase"}
    cat_ids = {r[3] for r in rows}
    assert all(len(c) == 19 and c.isdigit() and int(c) > 2**53 for c in cat_ids)
    assert all(r[2].isdigit() and 7 <= len(r[2]) <= 8 for r in rows[:5000])
    assert all(r[7].isdigit() and len(r[7]) == 9 for r in rows[:5000])
    assert all(UUID_RE.match(r[8]) for r in rows[:5000])
    assert all(PRICE_RE.match(r[6]) for r in rows[:5000])
    # catalogue strings: some empty codes / brands, dotted codes, lowercase brands
    codes = {r[4] for r in rows}
    assert "" in codes and all(c == "" or re.fullmatch(r"[a-z_]+(\.[a-z_]+){1,2}", c) for c in codes)
    brands = {r[5] for r in rows}
    assert "" in brands and all(b == "" or re.fullmatch(r"[a-z0-9]+", b) for b in brands)
    # an item always has the same attributes
    attrs = {}
    for r in rows:
        assert attrs.setdefault(r[2], tuple(r[3:7])) == tuple(r[3:7])
    # a session belongs to one user
    owner = {}
    for r in rows:
        assert owner.setdefault(r[8], r[7]) == r[7]


def test_summary_matches_file(big) -> None:
    summary, rows = big
    counts = collections.Counter(r[1] for r in rows)
    assert summary.events_by_type == {k: counts[k] for k in ("view", "cart", "purchase")}
    assert summary.rows == len(rows) == 200_000
    assert summary.n_users == len({r[7] for r in rows})
    assert summary.n_items == len({r[2] for r in rows})
    assert summary.n_sessions == len({r[8] for r in rows})
    assert summary.start.strftime("%Y-%m-%d %H:%M:%S UTC") == rows[0][0]
    assert summary.end.strftime("%Y-%m-%d %H:%M:%S UTC") == rows[-1][0]
    assert summary.start >= datetime(2019, 10, 1) and summary.end < datetime(2019, 11, 1)
    assert 150 <= summary.n_items <= 800
    assert 4.0 <= len(rows) / summary.n_sessions <= 8.0


def test_views_per_purchase_ratio(big) -> None:
    summary, _ = big
    ratio = summary.events_by_type["view"] / summary.events_by_type["purchase"]
    assert 60 / 1.25 <= ratio <= 60 * 1.25
    # carts: one before every purchase plus about as many abandoned
    assert 1.5 <= summary.events_by_type["cart"] / summary.events_by_type["purchase"] <= 2.5


def test_rare_purchases(tmp_path: Path) -> None:
    s = generate(tmp_path / "rare.csv", rows=200_000, views_per_purchase=4000.0, seed=0)
    assert s.events_by_type["purchase"] >= 1
    assert s.events_by_type["view"] / s.events_by_type["purchase"] > 2000


def test_frequent_purchases(tmp_path: Path) -> None:
    s = generate(tmp_path / "often.csv", rows=5_000, views_per_purchase=1.0, seed=0)
    assert sum(s.events_by_type.values()) == 5_000
    assert s.events_by_type["purchase"] > 0


def test_purchases_follow_views_and_carts(big) -> None:
    _, rows = big
    viewed: set[tuple[str, str]] = set()
    carted: set[tuple[str, str]] = set()  # (session, item)
    n_purchases = 0
    for t, kind, item, *_, user, session in rows:
        if kind == "view":
            viewed.add((user, item))
        elif kind == "cart":
            assert (user, item) in viewed
            carted.add((session, item))
        else:
            n_purchases += 1
            assert (user, item) in viewed, f"purchase without earlier view: {user} {item} at {t}"
            assert (session, item) in carted, f"purchase without cart: {session} {item} at {t}"
    assert n_purchases > 0


def test_history_baseline_beats_random(big) -> None:
    _, rows = big
    cut = rows[int(len(rows) * 0.8)][0]
    history: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    bought: dict[str, set[str]] = collections.defaultdict(set)
    for r in rows:
        if r[0] < cut:
            if r[1] == "view":
                history[r[7]][r[2]] += 1
        elif r[1] == "purchase":
            bought[r[7]].add(r[2])
    catalogue = sorted({r[2] for r in rows})
    rng = random.Random(0)
    hits_count = hits_random = hits_shuffled = 0
    for user, items in bought.items():
        seen = history.get(user, collections.Counter())
        by_count = [i for i, _ in seen.most_common(10)]
        shuffled = list(seen)
        rng.shuffle(shuffled)
        hits_count += bool(items.intersection(by_count))
        hits_shuffled += bool(items.intersection(shuffled[:10]))
        hits_random += bool(items.intersection(rng.sample(catalogue, 10)))
    n = len(bought)
    assert n >= 100
    hr_count, hr_random = hits_count / n, hits_random / n
    assert hr_count > 0.2
    assert hr_count > 3 * max(hr_random, 1 / len(catalogue))
    # interest accumulates: more-viewed items are the better guess within the history
    assert hits_count > hits_shuffled


def test_start_time_respected(tmp_path: Path) -> None:
    start = datetime(2020, 2, 28, 13, 30, 0)
    s = generate(tmp_path / "s.csv", rows=2_000, days=3, start=start, seed=4)
    assert s.start >= start
    _, rows = _read(tmp_path / "s.csv")
    assert rows[0][0] >= "2020-02-28 13:30:00 UTC"
    assert rows[-1][0] < "2020-03-03 00:00:00 UTC"


@pytest.mark.parametrize(
    "kwargs",
    [{"rows": 99}, {"rows": 0}, {"views_per_purchase": 0.5}, {"days": 0}, {"schema": "other"}],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict) -> None:
    out = tmp_path / "x.csv"
    with pytest.raises(ValueError):
        generate(out, **kwargs)
    assert not out.exists()


def test_atomic_write_and_progress(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "events.csv"
    messages: list[str] = []
    generate(out, rows=1_000, progress=messages.append)
    assert out.exists() and len(messages) >= 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["events.csv"]
    # overwriting is the caller's decision: an existing file is simply replaced
    generate(out, rows=500, seed=9)
    assert len(out.read_text().splitlines()) == 501


def test_temp_file_removed_on_error(tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", boom)
    out = tmp_path / "events.csv.gz"
    with pytest.raises(OSError, match="disk full"):
        generate(out, rows=1_000)
    assert list(tmp_path.iterdir()) == []
