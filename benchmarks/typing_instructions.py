"""Count the CPU instructions of the load's typing (00_setup.sql's typed_records) at two revisions (not a test).

Wall and CPU seconds on this shared box move 10-20% from run to run, more than a change to one macro
of the load is worth; the number of instructions a run executes does not (two runs agree to 0.1%). This
runs DuckDB under valgrind's callgrind (``valgrind`` must be installed): for each revision, a child
process reads the first --rows records of a synthetic REES46 log into memory as text and then types them
with that revision's 00_setup.sql into a table (``create table as select * from staged_records(...)``, what
the load stores, or ``typed_records`` at a revision without it), on one thread; the same child without
the typing gives the fixed part (interpreter, imports, the read), which is subtracted. What is left
is the instructions of typing and storing the records, per revision, and their ratio.

The macros read the load's variables, set here as prepare sets them for the REES46 form; both the names
of earlier revisions and today's are set, so that one harness serves both.

Example: python benchmarks/typing_instructions.py 63b850c WORKTREE --rows 500000
(WORKTREE: sql/00_setup.sql as it is in the working tree.)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# the child: read the log into memory as text, then (mode "typed") type it with the given setup file
CHILD = r'''
import datetime, sys
import duckdb
from purchasepred.resources import connect
setup, csv, mode = sys.argv[1:4]
con = connect()
con.execute("set threads = 1")
con.execute(open(setup).read())
def s(name, value):
    con.execute(f"set variable {name} = ?", [value])
events = ["view", "cart", "purchase", "remove_from_cart"]
for name in ("null_values", "input_time_zone", "input_event", "input_event_id"):
    con.execute(f"set variable {name} = NULL")
s("time_format", "iso"); s("decimal_separator", "."); s("event_keys", events); s("event_names", events)
con.execute("set variable event_ids = [1, 2, 3, 4]::tinyint[]")
s("empty_texts", False); s("input_delimiter", ","); s("input_file_no", 1)
s("input_names", "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session".split(","))
s("min_event_at", datetime.datetime(2000, 1, 1)); s("max_event_at", datetime.datetime(2100, 1, 1))
con.execute("create table recs as select * from read_csv(?, all_varchar = true)", [csv])
if mode == "typed":
    # what the load stores: staged_records where the revision has it (staged holding the item's texts as one)
    has_staged = con.execute("select count(*) from duckdb_functions() where function_name = 'staged_records'").fetchone()[0]
    con.execute(f"create table typed as select * from {'staged_records' if has_staged else 'typed_records'}('recs')")
'''


def setup_file(rev: str, folder: Path) -> Path:
    """00_setup.sql at ``rev`` (WORKTREE: the working tree's) as a file."""
    if rev == "WORKTREE":
        return ROOT / "sql" / "00_setup.sql"
    path = folder / f"00_setup.{re.sub(r'[^A-Za-z0-9_.-]', '_', rev)}.sql"
    path.write_text(subprocess.run(["git", "show", f"{rev}:sql/00_setup.sql"], cwd=ROOT, check=True,
                                   capture_output=True, text=True).stdout)
    return path


def instructions(setup: Path, csv: Path, mode: str, child: Path) -> int:
    """The instructions callgrind counts for one run of the child."""
    run = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, str(child),
                          str(setup), str(csv), mode], capture_output=True, text=True, cwd=ROOT)
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or not found:
        raise SystemExit(f"callgrind run failed ({mode}, {setup}): {run.stderr.strip().splitlines()[-1:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("revs", nargs=2, help="two git revisions (or WORKTREE) whose sql/00_setup.sql to compare")
    ap.add_argument("--rows", type=int, default=500_000, help="records of the synthetic log to type (default 500,000)")
    ap.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "purchasepred-bench")
    args = ap.parse_args(argv)

    from purchasepred.data.synth import generate

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    csv = args.cache_dir / f"synth_rows{args.rows}_seed0_vpp60_days30.csv"
    if not csv.is_file():
        generate(csv, rows=args.rows, views_per_purchase=60.0, days=30, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        child = Path(tmp) / "child.py"
        child.write_text(CHILD)
        fixed = instructions(ROOT / "sql" / "00_setup.sql", csv, "read", child)
        print(f"{args.rows:,} records read as text: {fixed / 1e6:,.0f}M instructions (interpreter, imports, read)")
        cost = {}
        for rev in args.revs:
            cost[rev] = instructions(setup_file(rev, Path(tmp)), csv, "typed", child) - fixed
            print(f"{rev:>12}: typing and storing them {cost[rev] / 1e6:,.0f}M instructions "
                  f"({cost[rev] / args.rows:,.0f} per record)")
        a, b = args.revs
        print(f"{b} / {a}: {cost[b] / cost[a]:.3f}")


if __name__ == "__main__":
    main()
