"""Shared helpers for the prepare tests: fixture paths, tiny prepared datasets, Parquet readers."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
import torch
from typer.testing import CliRunner

from purchasepred.cli import app
from purchasepred.config import PrepareConfig
from purchasepred.data import prepare as prep
from purchasepred.data.synth import SynthSummary, generate

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "tiny.csv"
TINY_COMPETITION = FIXTURES / "tiny_competition.csv"

# The golden tests read the hand-written fixture with these settings: one-day windows at the end
# (test = [2019-10-04 12:00, T], valid = the day before) and sequences of four events.
TINY_CFG = PrepareConfig(session_gap_minutes=30, max_len=4, min_item_count=2, eval_days=1)

# Intermediate tables of the SQL steps, written next to the usual outputs for the golden tests.
STEP_TABLES = ("staged", "raw_rejects", "clean", "sessionized")


def open_prepared(out: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per Parquet table of a prepared folder."""
    con = duckdb.connect()
    for path in sorted(Path(out).glob("*.parquet")):
        con.read_parquet(str(path)).create_view(path.stem)
    return con


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
