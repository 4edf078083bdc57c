"""The rules of pyproject.toml's [tool.ruff] (pyflakes, pycodestyle, bugbear) hold for the package,
the tests and the benchmarks: an undefined or shadowed name, an unused import, a zip that would
silently drop rows, or a line over 140 characters fails here, not in a user's run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing() -> None:
    pytest.importorskip("ruff", reason="ruff comes with the dev extras: pip install -e '.[dev]'")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                           "purchasepred", "tests", "benchmarks"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ruff_reads_the_project_rules(tmp_path: Path) -> None:
    """The check above is only as strict as the rules it reads: with pyproject.toml's settings, a zip
    without strict= (bugbear) must be reported, so a lost [tool.ruff] section cannot pass silently."""
    pytest.importorskip("ruff", reason="ruff comes with the dev extras: pip install -e '.[dev]'")
    probe = tmp_path / "probe.py"
    probe.write_text("pairs = list(zip([1], [2]))\n")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                           "--config", str(ROOT / "pyproject.toml"), str(probe)],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "B905" in done.stdout, done.stdout + done.stderr
