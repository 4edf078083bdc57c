"""Shared helpers for the prepare tests: fixture paths, tiny prepared datasets, Parquet readers."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from purchasepred.cli import app
from purchasepred.config import PrepareConfig
from purchasepred.data import prepare as prep
from purchasepred.data.sequences import users_before
from purchasepred.data.synth import SynthSummary, generate
from purchasepred.data.tensors import SEQ_COLUMNS, SPLITS, TARGETS, PreparedData

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "tiny.csv"
TINY_COMPETITION = FIXTURES / "tiny_competition.csv"

# The golden tests read the hand-written fixture with these settings: one-day windows at the end
# (test = [2019-10-04 12:00, T], valid = the day before) and sequences of four events.
TINY_CFG = PrepareConfig(session_gap_minutes=30, max_len=4, min_item_count=2, eval_days=1)

# Intermediate tables of the SQL steps, written next to the usual outputs for the golden tests.
STEP_TABLES = ("staged", "raw_rejects", "sessionized", "user_keys", "item_attrs", "item_keys", "attr_codes")


def collide_item_hashes(monkeypatch: pytest.MonkeyPatch, where: str = "true") -> list[int]:
    """Make prepare's item hashes collide: after clean (at its item count check), the rows of item_attrs
    and staged where ``where`` holds get one item_hash, 42, so that exact_keys.sql must make the keys
    exact. Returns the list that each prepare then appends the number of distinct items sharing it to."""
    real_check = prep._check_item_count
    shared: list[int] = []

    def collide(con: duckdb.DuckDBPyConnection, paths: list[Path]) -> None:
        real_check(con, paths)
        for table in ("item_attrs", "staged"):
            con.execute(f"update {table} set item_hash = 42 where {where}")
        shared.append(con.execute("select count(distinct item_key) from item_attrs where item_hash = 42").fetchone()[0])

    monkeypatch.setattr(prep, "_check_item_count", collide)
    return shared


def open_prepared(out: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per Parquet table of a prepared folder, and the
    sequences the loader cuts from its events as the tables ``sequences`` and ``train_sequences``."""
    con = duckdb.connect()
    for path in sorted(Path(out).glob("*.parquet")):
        con.read_parquet(str(path)).create_view(path.stem)
    if (Path(out) / "manifest.json").is_file():
        add_loaded_sequences(con, PreparedData(out))
    return con


def _insert_columns(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, Any]) -> None:
    """Create ``table`` from equal-length columns (lists of scalars or of lists), bound as parameters."""
    names = list(columns)
    select = ", ".join(f"unnest(${i + 1}) as {name}" for i, name in enumerate(names))
    con.execute(f"create table {table} as select {select}", [columns[n] for n in names])


def add_loaded_sequences(con: duckdb.DuckDBPyConnection, data: PreparedData) -> None:
    """``sequences`` (split, user_idx, n_events, last_event_at, one list column per token feature) and
    ``train_sequences`` (user_idx, chunk, n_events, last_event_at, features and targets): exactly what
    ``PreparedData.split`` and ``PreparedData.train_chunks`` return, as tables the tests query."""
    at_us = data._events["at_us"]
    split_cols: dict[str, list[Any]] = {k: [] for k in ("split", "user_idx", "n_events", "last_at_us", *SEQ_COLUMNS)}
    for name in SPLITS:
        s = data.split(name)
        inputs = users_before(data._events["user_idx"], at_us, int(np.datetime64(s.window_start, "us").astype(np.int64)))
        split_cols["split"] += [name] * len(s.user_idx)
        split_cols["user_idx"] += s.user_idx.tolist()
        split_cols["n_events"] += s.n_events.tolist()
        split_cols["last_at_us"] += at_us[inputs.first_row + inputs.n_events - 1].tolist()
        for c in SEQ_COLUMNS:
            split_cols[c] += s.features[c].tolist()
    _insert_columns(con, "sequences_raw", split_cols)
    arrays, about = data.train_chunks("valid")
    _insert_columns(con, "train_raw", {
        "user_idx": about["user_idx"].tolist(), "chunk": about["chunk"].tolist(),
        "n_events": about["n_events"].tolist(), "last_at_us": about["last_at_us"].tolist(),
        **{c: arrays[c].tolist() for c in (*SEQ_COLUMNS, *TARGETS)},
    })
    for table, raw in (("sequences", "sequences_raw"), ("train_sequences", "train_raw")):
        con.execute(f"create view {table} as select * exclude (last_at_us), make_timestamp(last_at_us) as last_event_at from {raw}")


def rows(con: duckdb.DuckDBPyConnection, query: str, params: list[Any] | None = None) -> list[tuple]:
    return con.execute(query, params or []).fetchall()


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory: pytest.TempPathFactory) -> prep.PrepareSummary:
    """tests/fixtures/tiny.csv prepared once with TINY_CFG, intermediate step tables included."""
    out = tmp_path_factory.mktemp("tiny") / "prepared"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prep, "OUTPUT_TABLES", prep.OUTPUT_TABLES + STEP_TABLES)
        return prep.prepare([str(TINY)], out, TINY_CFG)


@pytest.fixture()
def tiny_db(tiny_prepared: prep.PrepareSummary) -> duckdb.DuckDBPyConnection:
    con = open_prepared(tiny_prepared.out)
    yield con
    con.close()


@pytest.fixture(scope="session")
def synth_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary]:
    """A 20k-row synthetic REES46 log over 30 days (seed 1)."""
    path = tmp_path_factory.mktemp("synth") / "events.csv"
    return path, generate(path, rows=20_000, days=30, seed=1)


SYNTH_CFG = PrepareConfig(max_len=20, eval_days=3)


@pytest.fixture(scope="session")
def synth_prepared(synth_csv: tuple[Path, SynthSummary], tmp_path_factory: pytest.TempPathFactory) -> prep.PrepareSummary:
    path, _ = synth_csv
    return prep.prepare([str(path)], tmp_path_factory.mktemp("synth_out") / "prepared", SYNTH_CFG)


# ------------------------------------------------------------------ CLI helpers shared by the test files
runner = CliRunner()


def invoke(*args: Any):
    """Run the CLI in-process; every argument is turned into a string."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def clean_failure(result, *needles: str, code: int = 1) -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line (not an unexpected one) with every needle."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: ") and "unexpected" not in line, line
    for needle in needles:
        assert str(needle) in line, (needle, line)
    return line


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core box: one intra-op torch thread is much faster than two under load."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def wait_for(predicate: Any, proc: subprocess.Popen, timeout: float = 60.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail with the process's output if it ends or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


# ------------------------------------------------------------------ a hostile checkpoint payload
def _write_marker(path: str) -> str:
    Path(path).write_text("code from a checkpoint ran")
    return path


class Payload:
    """Unpickling this runs ``_write_marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (_write_marker, (self.marker,))
