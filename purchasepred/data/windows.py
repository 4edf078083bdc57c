"""The valid and test windows: choose ``--eval-days`` from the log (``auto``, the default) or check a
given value, before ``07_split.sql`` runs with the number.

The windows keep the split's meaning: with T the last event, test is the last ``eval_days`` up to T,
valid the ``eval_days`` before it, and a window's inputs are the events strictly before its start.
A window is only useful with *buyers who have earlier events* (their purchases can be ranked from
their history), and training needs users with two events before the valid window.

``auto``: 7 days when the log spans several weeks (at least 28 days) and both 7-day windows hold such
buyers; otherwise the largest window on a fixed grid of lengths, at most a quarter of the span, in
which valid and test each hold ``TARGET_BUYERS`` of them; failing that, the window that gives the
weaker of the two the most (at least one each). The search is a bounded pass over ``GRID``: it always
ends, and the same log always gives the same value. No torch here (data layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import duckdb
import numpy as np

from purchasepred.errors import InputError
from purchasepred.resources import define_ids, named_queries

SPLITS = ("valid", "test")
LONG_LOG_DAYS = 28.0
"""A log spanning at least this many days gets the standard 7-day windows."""
STANDARD_DAYS = 7.0
TARGET_BUYERS = 30
"""Buyers with earlier events wanted in each window on a short log: eval.min_buyers' default, below
which evaluate says its numbers are only indicative."""
GRID: tuple[float, ...] = tuple(sorted(
    {d for d in (round(m * 10.0 ** k, 6) for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 7.5) for k in range(-4, 1))
     if d <= STANDARD_DAYS} | {STANDARD_DAYS}))
"""Candidate window lengths in days, from 0.0001 (8.6 s) to 7: short decimals, so that the printed
value is exactly the one that was checked and can be passed back as --eval-days."""

_US_PER_S = 1_000_000
_EPOCH = datetime(1970, 1, 1)


def duration(seconds: float) -> str:
    """'7.0 days', '2 h 50 min', '10 min 48 s', '8.6 s'."""
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    s = int(round(seconds))
    if s >= 3600:
        m = int(round(seconds / 60))
        return f"{m // 60} h {m % 60} min"
    if s >= 60:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    return f"{seconds:.1f} s"


def _n_distinct(values: np.ndarray) -> int:
    """How many distinct values: the same count as len(np.unique(values)), whose first call imports
    numpy.ma (0.05 s of every prepare, to check for a masked array)."""
    if values.size == 0:
        return 0
    ordered = np.sort(values)
    return int(np.count_nonzero(ordered[1:] != ordered[:-1])) + 1


def _when(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=int(us))).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class Counts:
    """What one window length gives (valid and test), as 07_split.sql and the loader will see it."""

    days: float
    start_us: dict[str, int]
    end_us: dict[str, int]
    users_with_inputs: dict[str, int]
    buyers: dict[str, int]
    returning: dict[str, int]
    """Buyers in the window with an event before its start."""
    train_users: int
    """Users with two events before the valid window (training sequences need a next event)."""

    def usable(self) -> bool:
        return self.train_users > 0 and all(self.returning[s] > 0 for s in SPLITS)

    def weaker(self) -> int:
        return min(self.returning[s] for s in SPLITS)

    def returning_text(self) -> str:
        return f"valid {self.returning['valid']:,}, test {self.returning['test']:,} buyers with earlier events"

    def window(self, split: str) -> str:
        return f"{_when(self.start_us[split])} .. {_when(self.end_us[split])}"

    def describe(self) -> str:
        parts = [f"{s} {self.window(s)}: {self.users_with_inputs[s]:,} users with inputs, {self.buyers[s]:,} buyers, "
                 f"{self.returning[s]:,} with earlier events" for s in SPLITS]
        return "; ".join(parts) + f"; {self.train_users:,} users with two events before valid (training)"

    def problems(self) -> dict[str, str]:
        """``{valid|test|train: what is wrong and what it breaks}`` for the windows of this length."""
        out: dict[str, str] = {}
        breaks = {"valid": "training cannot be measured on it and evaluate/export have nothing to fit on",
                  "test": "evaluate --split test cannot score it (training, evaluate --split valid and export still work)"}
        for s in SPLITS:
            where = f"the {s} window ({self.window(s)})"
            if self.users_with_inputs[s] == 0:
                out[s] = f"{where} has no users with inputs (no events before it): {breaks[s]}"
            elif self.buyers[s] == 0:
                out[s] = f"{where} has no buyers: {breaks[s]}"
            elif self.returning[s] == 0:
                out[s] = f"none of the {self.buyers[s]:,} buyers in {where} has earlier events: {breaks[s]}"
        if self.train_users == 0:
            out["train"] = "no user has two events before the valid window: train has nothing to learn from"
        return out


@dataclass(frozen=True)
class LogFacts:
    """The few numbers the choice needs, read once from the kept events."""

    first_us: int
    last_us: int
    user_first: np.ndarray
    """Sorted first-event times of all users."""
    user_second: np.ndarray
    """Sorted second-event times of the users with at least two events."""
    p_user: np.ndarray
    p_at: np.ndarray
    p_first: np.ndarray
    """Per purchase (in time order): buyer, time, the buyer's first event."""
    con: Any = field(repr=False)
    eval_us_query: str = field(repr=False)

    @property
    def span_s(self) -> float:
        return (self.last_us - self.first_us) / _US_PER_S

    def eval_us(self, days: float) -> int:
        # the same expression as 07_split.sql, so that the windows checked here are the ones it makes
        return int(self.con.execute(self.eval_us_query, [float(days) * 86400.0]).fetchone()[0])

    def counts(self, days: float) -> Counts:
        length = self.eval_us(days)
        test_start = self.last_us - length
        starts = {"valid": test_start - length, "test": test_start}
        ends = {"valid": test_start, "test": self.last_us + 1}
        inputs, buyers, returning = {}, {}, {}
        for s in SPLITS:
            inside = (self.p_at >= starts[s]) & (self.p_at < ends[s])
            buyers[s] = _n_distinct(self.p_user[inside])
            returning[s] = _n_distinct(self.p_user[inside & (self.p_first < starts[s])])
            inputs[s] = int(np.searchsorted(self.user_first, starts[s], side="left"))
        train = int(np.searchsorted(self.user_second, starts["valid"], side="left"))
        return Counts(days, starts, ends, inputs, buyers, returning, train)

    def describe(self) -> str:
        """Span, purchases and when they fall."""
        text = (f"the log spans {duration(self.span_s)} ({_when(self.first_us)} .. {_when(self.last_us)}) "
                f"with {len(self.p_at):,} purchase(s)")
        if len(self.p_at) == 0:
            return text
        q = [int(v) for v in np.percentile(self.p_at, [25, 50, 75], method="lower")]
        when = (f"at {', '.join(_when(t) for t in self.p_at)}" if len(self.p_at) <= 4 else
                f"first {_when(self.p_at[0])}, quartiles {', '.join(_when(t) for t in q)}, last {_when(self.p_at[-1])}")
        return text + f" ({when}; {self.n_returning_purchases():,} by shoppers with earlier events)"

    def n_returning_purchases(self) -> int:
        return int((self.p_first < self.p_at).sum())


def load_facts(con: duckdb.DuckDBPyConnection) -> LogFacts:
    define_ids(con)
    q = named_queries("windows.sql")
    first_us, last_us = con.execute(q["bounds"]).fetchone()
    first = con.execute(q["user_first"]).fetchnumpy()["first_us"]
    second = con.execute(q["user_second"]).fetchnumpy()["second_us"]
    purchases = con.execute(q["purchases"]).fetchnumpy()
    return LogFacts(
        first_us=int(first_us), last_us=int(last_us),
        user_first=np.sort(np.asarray(first, dtype=np.int64)),
        user_second=np.sort(np.asarray(second, dtype=np.int64)),
        p_user=np.asarray(purchases["user_idx"], dtype=np.int64),
        p_at=np.asarray(purchases["at_us"], dtype=np.int64),
        p_first=np.asarray(purchases["first_us"], dtype=np.int64),
        con=con, eval_us_query=q["eval_us"],
    )


def search(facts: LogFacts) -> tuple[Counts, str] | None:
    """The auto choice and why, or None when no window length on the grid is usable."""
    span = duration(facts.span_s)
    if facts.span_s >= LONG_LOG_DAYS * 86400:
        c = facts.counts(STANDARD_DAYS)
        if c.usable():
            return c, f"the log spans {span} (at least {LONG_LOG_DAYS:g} days): the standard 7-day windows"
    limit = min(STANDARD_DAYS, facts.span_s / 86400 / 4)
    tried = [facts.counts(d) for d in reversed(GRID) if d <= limit]  # largest first
    usable = [c for c in tried if c.usable()]
    if not usable:
        return None
    quarter = f"a quarter of it ({duration(limit * 86400)})"
    for c in usable:
        if c.weaker() >= TARGET_BUYERS:
            return c, (f"the log spans {span}: the largest window up to {quarter} in which valid and test each "
                       f"hold at least {TARGET_BUYERS} buyers with earlier events")
    best = max(usable, key=lambda c: (c.weaker(), c.days))
    return best, (f"the log spans {span}: no window up to {quarter} gives valid and test {TARGET_BUYERS} buyers "
                  "with earlier events each; this one gives the weaker window the most")


def _more_data(facts: LogFacts) -> str:
    n = len(facts.p_at)
    if n == 0:
        return "the log has no purchases: prepare a log that contains purchases"
    k = facts.n_returning_purchases()
    if k == 0:
        return (f"none of its {n:,} purchase(s) is by a shopper seen before it: a log of more days is needed, "
                "in which shoppers come back and buy")
    per_s = k / max(facts.span_s, 1.0)
    one, target = 4 / per_s, 4 * TARGET_BUYERS / per_s
    if one <= facts.span_s:
        return (f"its {k:,} purchase(s) by returning shoppers fall so that no two equal windows at the end of the "
                f"log each hold one: a log of more days is needed (at its rate, about {duration(target)} would "
                f"give each window {TARGET_BUYERS})")
    return (f"at its rate ({k:,} purchase(s) by returning shoppers in {duration(facts.span_s)}) a log of about "
            f"{duration(one)} would give each window one such buyer, and about {duration(target)} "
            f"{TARGET_BUYERS}: add more days of log")


def _fix(facts: LogFacts) -> str:
    found = search(facts)
    if found is None:
        return "no --eval-days works on this log: " + _more_data(facts)
    c, _ = found
    return f"--eval-days {c.days:g} works ({c.returning_text()}); --eval-days auto chooses it"


@dataclass(frozen=True)
class Choice:
    requested: float | str
    days: float
    why: str
    counts: Counts
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "chosen": self.days, "why": self.why}


def choose(con: duckdb.DuckDBPyConnection, requested: float | str, need: tuple[str, ...], where: str) -> Choice:
    """The window length to split with, from the ``kept_events`` and ``users`` tables on ``con`` (windows.sql).

    ``auto`` must find usable windows or raise an InputError with the facts and how much more data it
    takes. A given number is kept; what is wrong with its windows is an InputError for the windows in
    ``need`` (and for training, when ``need`` is not empty), a warning otherwise. Why: the ``prepare``
    command needs valid (training is measured on it and evaluate/export fit on it; without it the run
    stops after training), while a test window without buyers leaves training, export and
    ``evaluate --split valid`` working, so it only warns; ``run`` scores the test window, so it needs
    both; the library default needs none, so that any log still prepares into a correct dataset (with
    the warnings in its manifest)."""
    facts = load_facts(con)
    if requested == "auto":
        found = search(facts)
        if found is None:
            raise InputError(_no_split(facts, where))
        c, why = found
        return Choice("auto", c.days, f"auto: {why} ({c.returning_text()})", c, [])
    days = float(requested)
    c = facts.counts(days)
    problems = c.problems()
    fatal = [p for k, p in problems.items() if k in need or (k == "train" and need)]
    if fatal:
        raise InputError(f"{where}: --eval-days {days:g} does not work: {'; '.join(fatal)}; {facts.describe()}; "
                         f"{c.describe()}; {_fix(facts)}")
    fix = _fix(facts) if problems else ""
    warnings = [f"--eval-days {days:g}: {p}; {fix}" for p in problems.values()]
    return Choice(days, days, f"given: --eval-days {days:g}", c, warnings)


def _no_split(facts: LogFacts, where: str) -> str:
    limit = min(STANDARD_DAYS, facts.span_s / 86400 / 4)
    tried = [facts.counts(d) for d in reversed(GRID) if d <= limit]
    example = ""
    if tried:
        best = max(tried, key=lambda c: (c.weaker(), c.train_users, c.days))
        example = f"; at --eval-days {best.days:g}: {best.describe()}"
    return (f"{where}: no --eval-days gives usable windows (valid and test, the last two equal stretches of the log "
            f"up to a quarter of it each, need a buyer with earlier events each, and training needs users with two "
            f"events before them): {facts.describe()}{example}; {_more_data(facts)}")


def item_warnings(manifest: dict[str, Any], min_item_count: int) -> list[str]:
    """Most items 'unknown' under --min-item-count: they can never be recommended."""
    raw, kept = int(manifest["n_raw_items"]), int(manifest["n_items"])
    lost = raw - kept
    if min_item_count <= 1 or not raw or lost * 2 <= raw:
        return []
    return [f"{lost:,} of {raw:,} items ({lost / raw:.0%}) are seen fewer than --min-item-count {min_item_count} "
            "times and share the 'unknown' id: they can never be recommended (they still count as purchases); "
            "on a short log pass --min-item-count 1"]
