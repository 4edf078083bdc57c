"""A built wheel carries sql/ and configs/ inside the package, and finds them once installed.

Built offline, without build isolation (hatchling comes from the dev extras), in about a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("hatchling", reason="the wheel test needs hatchling (pip install -e '.[dev]')")
    out = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(REPO)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = out.glob("purchasepred-*.whl")
    return whl


def test_wheel_carries_sql_and_configs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "purchasepred/sql/01_load_csv.sql" in names
    assert "purchasepred/configs/default.yaml" in names
    for path in sorted((REPO / "sql").glob("*.sql")):
        assert f"purchasepred/sql/{path.name}" in names, path.name
    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert f"purchasepred/configs/{path.name}" in names, path.name
    assert "purchasepred/cli.py" in names
    assert "purchasepred/report/template.html" in names and "purchasepred/sql/report.sql" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "purchasepred = purchasepred.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    # no tests, caches or data in the wheel
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n or n.endswith((".csv", ".parquet"))]


def test_installed_wheel_prepares_from_its_own_files(wheel: Path, tmp_path: Path) -> None:
    """Unpacked (as pip install would), the package uses its own sql/ and configs/, not the checkout's."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import sys, purchasepred\n"
        "from pathlib import Path\n"
        "from purchasepred.resources import sql_dir, configs_dir\n"
        "from purchasepred.config import load_config\n"
        "from purchasepred.data.prepare import prepare\n"
        "site = Path(sys.argv[1]).resolve()\n"
        "assert Path(purchasepred.__file__).resolve().is_relative_to(site), purchasepred.__file__\n"
        "assert sql_dir().resolve() == site / 'purchasepred' / 'sql', sql_dir()\n"
        "assert configs_dir().resolve() == site / 'purchasepred' / 'configs', configs_dir()\n"
        "cfg = load_config(sets=['prepare.eval_days=1', 'prepare.max_len=4'])\n"
        "m = prepare([sys.argv[2]], Path(sys.argv[3]), cfg.prepare).manifest\n"
        "assert m['rows_kept'] == 18, m['rows_kept']\n"
        "print('ok')\n"
    )
    tiny = REPO / "tests" / "fixtures" / "tiny.csv"
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(site), str(tiny), str(tmp_path / "prepared")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"
