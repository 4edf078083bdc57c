"""--eval-days auto (the default) and the checks of a given value (purchasepred/data/windows.py).

Oracles are independent of windows.py: the windows and truth tables that 07_split.sql writes and the
sequences the loader cuts from events. A buyer "with earlier events" in a window is a user in its
truth who also has a row in its sequences (an event before the window's start).
"""

from __future__ import annotations

import csv
import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from conftest import open_prepared, rows
from purchasepred.cli import app
from purchasepred.data.tensors import PreparedData
from purchasepred.config import PrepareConfig
from purchasepred.data.prepare import prepare
from purchasepred.data.synth import REES46_HEADER, generate
from purchasepred.data.windows import GRID, TARGET_BUYERS, load_facts
from purchasepred.errors import InputError

REAL = (Path(__file__).resolve().parents[2] / "shared" / "data" / "rees46_multicat"
        / "2019-10-01_sessions-starting-before-0242UTC.csv")
runner = CliRunner()


def flat(text: str) -> str:
    """Printed text with table borders and line breaks removed (wrapped cells read as one line)."""
    return " ".join(re.sub(r"[│┃]", " ", text).split())


def not_items(warnings: list[str]) -> list[str]:
    return [w for w in warnings if "--min-item-count" not in w]


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def returning(out: Path, split: str) -> int:
    """Buyers in the window with an event before its start, read from truth and sequences."""
    return rows(open_prepared(out), """
        select count(distinct t.user_idx) from truth as t
        join sequences as s on s.split = t.split and s.user_idx = t.user_idx where t.split = ?""", [split])[0][0]


def window_start(out: Path, split: str) -> datetime:
    return rows(open_prepared(out), "select window_start from windows where split = ?", [split])[0][0]


def last_event(out: Path) -> datetime:
    return rows(open_prepared(out), "select max(event_at) from events")[0][0]


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


def write_log(path: Path, events: list[tuple[datetime, str, int, int]]) -> Path:
    """(time, event_type, product, user) rows in the REES46 schema."""
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(REES46_HEADER.split(","))
        for at, kind, product, user in events:
            w.writerow([at.strftime("%Y-%m-%d %H:%M:%S UTC"), kind, product, 7, "", "", "1.00", user, ""])
    return path


def two_purchase_log(path: Path) -> Path:
    """683 rows over 11 minutes (one a second), two purchases: the log of the issue that never split."""
    t0 = datetime(2019, 10, 1)
    events = [(t0 + timedelta(seconds=i), "purchase" if i in (100, 600) else "view", i % 97, i % 250)
              for i in range(683)]
    return write_log(path, events)


@pytest.fixture(scope="module")
def long_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("long") / "events.csv"
    generate(path, rows=20_000, days=30, seed=1)
    return path


@pytest.fixture(scope="module")
def short_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("short") / "events.csv"
    generate(path, rows=20_000, days=6, seed=3)
    return path


# ------------------------------------------------------------------------------------------------ auto
def test_auto_on_a_log_of_several_weeks_is_seven_days(long_log: Path, tmp_path: Path) -> None:
    m = prepare([str(long_log)], tmp_path / "p", PrepareConfig(max_len=20)).manifest
    assert m["settings"]["eval_days"] == 7.0
    assert m["eval_days_choice"]["requested"] == "auto" and m["eval_days_choice"]["chosen"] == 7.0
    assert "7-day" in m["eval_days_choice"]["why"]
    last = last_event(tmp_path / "p")
    assert window_start(tmp_path / "p", "test") == last - timedelta(days=7)
    assert window_start(tmp_path / "p", "valid") == last - timedelta(days=14)
    assert returning(tmp_path / "p", "valid") > 0 and returning(tmp_path / "p", "test") > 0
    assert not_items(m["warnings"]) == []


def test_auto_on_a_short_log_is_proportionate(short_log: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    m = prepare([str(short_log)], out, PrepareConfig(max_len=20)).manifest
    days = m["settings"]["eval_days"]
    span = (last_event(out) - rows(open_prepared(out), "select min(event_at) from events")[0][0]).total_seconds() / 86400
    assert days in GRID and days <= span / 4 < 7
    assert m["eval_days_choice"] == {"requested": "auto", "chosen": days, "why": m["eval_days_choice"]["why"]}
    assert window_start(out, "test") == last_event(out) - timedelta(days=days)
    got = {s: returning(out, s) for s in ("valid", "test")}
    assert min(got.values()) >= 1
    if "at least" in m["eval_days_choice"]["why"]:
        assert min(got.values()) >= TARGET_BUYERS
        # the largest such window: the next larger length on the grid (still <= span / 4) falls short
        larger = [d for d in GRID if days < d <= span / 4]
        if larger:
            prepare([str(short_log)], tmp_path / "q", PrepareConfig(max_len=20, eval_days=larger[0]))
            assert min(returning(tmp_path / "q", s) for s in ("valid", "test")) < TARGET_BUYERS
    assert f"valid {got['valid']:,}, test {got['test']:,} buyers with earlier events" in m["eval_days_choice"]["why"]


def test_counts_match_what_the_split_writes(short_log: Path, tmp_path: Path) -> None:
    """windows.py predicts users with inputs, buyers and buyers with earlier events exactly as the SQL makes them."""
    for days in (0.3, 1.0, 1.37):
        out = tmp_path / f"p{days}"
        m = prepare([str(short_log)], out, PrepareConfig(max_len=20, eval_days=days)).manifest
        con = duckdb.connect()
        con.read_parquet(str(out / "events.parquet")).create_view("kept_events")  # (prepare reads them from memory)
        con.read_parquet(str(out / "users.parquet")).create_view("users")
        c = load_facts(con).counts(days)
        for s in ("valid", "test"):
            assert c.users_with_inputs[s] == m["windows"][s]["n_users_with_inputs"], (days, s)
            assert c.buyers[s] == m["windows"][s]["n_users_with_purchases"], (days, s)
            assert c.returning[s] == returning(out, s), (days, s)
        two_before_valid = rows(open_prepared(out), "select count(*) from sequences where split = 'valid' and n_events >= 2")
        assert c.train_users == two_before_valid[0][0], days


# ------------------------------------------------------------------------------------------------ explicit values
def test_explicit_values_keep_todays_windows(long_log: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    result = cli("prepare", long_log, "--out", out, "--eval-days", "3", "--max-len", "20")
    assert result.exit_code == 0, result.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["settings"]["eval_days"] == 3.0
    assert m["eval_days_choice"] == {"requested": 3.0, "chosen": 3.0, "why": "given: --eval-days 3"}
    assert window_start(out, "test") == last_event(out) - timedelta(days=3)
    assert window_start(out, "valid") == last_event(out) - timedelta(days=6)
    assert "eval days 3 (3.0 days) - given: --eval-days 3" in flat(result.stdout)


@pytest.mark.parametrize("bad", ["abc", "-1", "0", "nan", "automatic"])  # ("Auto" is auto: test_config)
def test_bad_eval_days_is_one_line(bad: str, tmp_path: Path, long_log: Path) -> None:
    line = one_error_line(cli("prepare", long_log, "--out", tmp_path / "p", "--eval-days", bad))
    assert "prepare.eval_days" in line and "auto" in line
    assert not (tmp_path / "p").exists()


def test_explicit_value_without_buyers_names_the_facts_and_a_value_that_works(short_log: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    line = one_error_line(cli("prepare", short_log, "--out", out, "--eval-days", "0.0001", "--max-len", "20"))
    assert str(short_log) in line and "--eval-days 0.0001 does not work: " in line
    assert "the valid window" in line and "the log spans" in line and "purchase(s)" in line and "quartiles" in line
    assert "users with inputs" in line
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
    # the value it names is the auto choice, and it works
    auto = prepare([str(short_log)], tmp_path / "auto", PrepareConfig(max_len=20)).manifest["settings"]["eval_days"]
    assert f"--eval-days {auto:g} works" in line
    assert cli("prepare", short_log, "--out", out, "--eval-days", f"{auto:g}", "--max-len", "20").exit_code == 0


def test_two_purchases_end_with_one_message_not_a_loop(tmp_path: Path) -> None:
    raw = two_purchase_log(tmp_path / "two.csv")
    line = one_error_line(cli("prepare", raw, "--out", tmp_path / "p"))
    assert str(raw) in line and "no --eval-days gives usable windows" in line
    assert "the log spans 11 min 22 s" in line and "with 2 purchase(s) (at 2019-10-01 00:01:40, 2019-10-01 00:10:00" in line
    assert "users with inputs" in line and "add more days of log" in line
    # an explicit value says the same facts and that no value works, instead of advising another guess
    line = one_error_line(cli("prepare", raw, "--out", tmp_path / "p", "--eval-days", "0.001"))
    assert "no --eval-days works on this log" in line and "2 purchase(s)" in line
    assert "smaller" not in line and "larger" not in line
    assert [p.name for p in tmp_path.iterdir()] == ["two.csv"]


def test_no_training_pairs_before_valid(tmp_path: Path) -> None:
    """Users seen once before the valid window: nothing to train on (an error for the command, a
    warning in the library), whatever the buyers in the windows."""
    t0 = datetime(2019, 10, 1)
    events = [(t0 + timedelta(hours=u), "view", u % 3, u) for u in range(8)]
    events += [(t0 + timedelta(hours=10 + u), "view", 0, 100 + u) for u in range(3)]  # seen once in all
    events += [(t0 + timedelta(days=d, hours=u), kind, u % 3, u) for d in (5, 6) for u in range(8)
               for kind in ("view", "purchase")]
    raw = write_log(tmp_path / "once.csv", events)
    line = one_error_line(cli("prepare", raw, "--out", tmp_path / "p", "--eval-days", "1"))
    assert "no user has two events before the valid window" in line and "0 users with two events" in line
    m = prepare([str(raw)], tmp_path / "q", PrepareConfig(eval_days=1)).manifest
    assert len(PreparedData(tmp_path / "q").train()["item_idx"]) == 0
    assert any("no user has two events before the valid window" in w for w in m["warnings"])


def test_a_log_without_purchases(tmp_path: Path) -> None:
    t0 = datetime(2019, 10, 1)
    raw = write_log(tmp_path / "views.csv", [(t0 + timedelta(minutes=i), "view", i % 5, i % 7) for i in range(300)])
    line = one_error_line(cli("prepare", raw, "--out", tmp_path / "p"))
    assert "0 purchase(s)" in line and "the log has no purchases" in line


# ------------------------------------------------------------------------------------------------ warnings
def _without_late_purchases(src: Path, dst: Path, days: float) -> Path:
    header, *body = src.read_text().splitlines(keepends=True)
    last = max(datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S") for line in body)
    cut = (last - timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S")
    dst.write_text(header + "".join(line for line in body if not (",purchase," in line and line[:19] >= cut)))
    return dst


def test_test_window_without_buyers_warns_in_prepare_and_fails_run(long_log: Path, tmp_path: Path) -> None:
    raw = _without_late_purchases(long_log, tmp_path / "notest.csv", 4)
    out = tmp_path / "p"
    result = cli("prepare", raw, "--out", out, "--eval-days", "3", "--max-len", "20")
    assert result.exit_code == 0, result.output
    m = json.loads((out / "manifest.json").read_text())
    (warning,) = not_items(m["warnings"])
    assert "the test window" in warning and "has no buyers" in warning and "evaluate --split test cannot score it" in warning
    assert f"warning: {warning}" in flat(result.stderr)
    # run scores the test window: the same value is an error there, before any training
    with pytest.raises(InputError, match="the test window .* has no buyers"):
        prepare([str(raw)], tmp_path / "q", PrepareConfig(eval_days=3, max_len=20), need_buyers_in=("valid", "test"))
    assert not (tmp_path / "q").exists()
    # auto finds windows with buyers in both (the test window ends before the purchases stop)
    m = prepare([str(raw)], tmp_path / "r", PrepareConfig(max_len=20), need_buyers_in=("valid", "test")).manifest
    assert returning(tmp_path / "r", "test") > 0 and not_items(m["warnings"]) == []


def test_most_items_unknown_warns(tmp_path: Path) -> None:
    t0 = datetime(2019, 10, 1)
    # 6 users over 8 days; items 0-2 come back, items 100+ are seen once each
    events = []
    for day in range(8):
        for user in range(6):
            at = t0 + timedelta(days=day, hours=user)
            events += [(at, "view", user % 3, user), (at + timedelta(minutes=1), "view", 100 + day * 6 + user, user),
                       (at + timedelta(minutes=2), "purchase", user % 3, user)]
    raw = write_log(tmp_path / "rare.csv", events)
    result = cli("prepare", raw, "--out", tmp_path / "p")
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["warnings"] == [w for w in m["warnings"] if "items" in w] and len(m["warnings"]) == 1
    assert "48 of 51 items (94%)" in m["warnings"][0] and "--min-item-count 1" in m["warnings"][0]
    assert "48 of 51 items" in flat(result.stderr)
    result = cli("prepare", raw, "--out", tmp_path / "q", "--min-item-count", "1")
    assert json.loads((tmp_path / "q" / "manifest.json").read_text())["warnings"] == []
    assert "warning" not in result.stderr


# ------------------------------------------------------------------------------------------------ the real sample
@pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} is absent")
def test_real_sample_auto_and_explicit(tmp_path: Path) -> None:
    out = tmp_path / "p"
    result = cli("prepare", REAL, "--out", out)
    assert result.exit_code == 0, result.output
    m = json.loads((out / "manifest.json").read_text())
    days = m["settings"]["eval_days"]
    assert days in GRID and days < (2 * 3600 + 50 * 60) / 86400 / 4
    got = {s: returning(out, s) for s in ("valid", "test")}
    assert min(got.values()) >= TARGET_BUYERS  # the real sample has enough of them in its busy last hour
    for larger in [d for d in GRID if days < d <= (2 * 3600 + 49 * 60 + 59) / 86400 / 4]:
        prepare([str(REAL)], tmp_path / f"q{larger}", PrepareConfig(eval_days=larger))
        assert min(returning(tmp_path / f"q{larger}", s) for s in ("valid", "test")) < TARGET_BUYERS, larger
    assert f"eval days {days:g} " in flat(result.stdout) and "auto: the log spans 2 h 50 min" in flat(result.stdout)
    assert m["warnings"] == ["3,899 of 5,640 items (69%) are seen fewer than --min-item-count 2 times and share "
                             "the 'unknown' id: they can never be recommended (they still count as purchases); on "
                             "a short log pass --min-item-count 1"]
    # 0.02, the user's last guess: its valid window (01:52 .. 02:21, in the traffic gap) has no returning buyer
    line = one_error_line(cli("prepare", REAL, "--out", tmp_path / "x", "--eval-days", "0.02"))
    assert "none of the 11 buyers in the valid window (2019-10-01 01:52:23 .. 2019-10-01 02:21:11)" in line
    assert "the log spans 2 h 50 min (2019-10-01 00:00:00 .. 2019-10-01 02:49:59) with 185 purchase(s)" in line
    assert f"--eval-days {days:g} works" in line


@pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} is absent")
def test_real_sample_cut_to_two_purchases_ends_with_the_message(tmp_path: Path) -> None:
    header, *body = REAL.read_text().splitlines(keepends=True)
    third = [i for i, line in enumerate(body) if ",purchase," in line][2]
    raw = tmp_path / "head.csv"
    raw.write_text(header + "".join(body[:third]))
    line = one_error_line(cli("prepare", raw, "--out", tmp_path / "p"))
    assert "no --eval-days gives usable windows" in line and "with 2 purchase(s)" in line
