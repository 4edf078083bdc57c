"""Benchmark `purchasepred prepare` on a log of many files against the same rows as one file (not a test).

A store that exports a file per day or per hour gives prepare hundreds or thousands of files. prepare
reads consecutive files of one format, mapping and header in one scan (``load_groups``); this
benchmark measures what a file costs. For each --files count, the first --rows rows of the cached
synthetic REES46 log (bench_prepare.synth_file) are written as that many files of the --format, and
in one run, each --repeats times, alternating:

1. ``purchasepred prepare`` of the one file (the plain baseline),
2. the same of the N files, in one scan per run of files (as shipped),
3. the same of the N files, file by file (``LOAD_GROUP_FILES = 1``: how prepare loaded them before),

each in a child process: wall seconds, the load step's seconds, and whether the tables are
byte-identical to the baseline's (md5 of every table but rejects, whose file names differ). Ratios
are against the baseline.

Example: python benchmarks/bench_many_files.py --rows 2000000 --files 200 2000 --format csv parquet jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from bench_prepare import median, synth_file

# the tables compared (rejects name their files, which differ between one file and its parts)
TABLES = ("events", "users", "items", "brands", "categories", "windows", "truth")
FORMATS = {"csv": "(format csv, header true)", "csv.gz": "(format csv, header true, compression gzip)",
           "parquet": "(format parquet)", "jsonl": "(format json)"}


def write_parts(src: Path, rows: int, files: int, fmt: str, folder: Path) -> list[Path]:
    """The first ``rows`` rows of ``src`` as ``files`` files of about equal size, in row order, plus the
    same rows as one file (returned first)."""
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("set preserve_insertion_order = true")
    con.execute("create table t as select * from read_csv(?, all_varchar = true) limit ?", [str(src), rows])
    n = con.execute("select count(*) from t").fetchone()[0]
    per = -(-n // files)
    con.execute("create table parts as select *, (row_number() over () - 1) // ? as part from t", [per])
    paths = [folder / f"one.{fmt}"]
    # (the formats are this file's own literals; the paths are this benchmark's own folders)
    con.execute(f"copy t to '{paths[0]}' {FORMATS[fmt]}")
    for part in range(files):
        paths.append(folder / f"part{part:05d}.{fmt}")
        con.execute(f"copy (select * exclude (part) from parts where part = {part}) to '{paths[-1]}' {FORMATS[fmt]}")
    return paths


def run(paths: list[Path], out: Path, one_scan: bool) -> tuple[float, float, str]:
    """prepare of ``paths`` in a child process: wall seconds, its load step's seconds, md5 of its tables."""
    code = ("import sys; from purchasepred.cli import main; import purchasepred.data.prepare as p; "
            f"p.LOAD_GROUP_FILES = {1000 if one_scan else 1}; sys.argv = sys.argv[1:]; main()")
    cmd = [sys.executable, "-c", code, "purchasepred", "--quiet", "prepare", *map(str, paths), "--out", str(out), "--force"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    manifest = json.loads((out / "manifest.json").read_text())
    load = next(s["seconds"] for s in manifest["steps"] if s["step"] == "load")
    digest = hashlib.md5(b"".join((out / f"{t}.parquet").read_bytes() for t in TABLES)).hexdigest()[:8]
    return seconds, load, digest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows of the log (default 2M)")
    ap.add_argument("--files", type=int, nargs="+", default=[200], help="how many files the rows are cut into (default 200)")
    ap.add_argument("--format", nargs="+", default=["csv"], choices=list(FORMATS), help="file formats (default csv)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating (the median is reported)")
    ap.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "purchasepred-bench",
                    help="where the synthetic log is cached (bench_prepare's)")
    args = ap.parse_args(argv)

    src, _ = synth_file(8_000_000 if args.rows <= 8_000_000 else args.rows, 0, 60.0, 30, args.cache_dir)
    print(f"{'format':8} | {'files':>6} | {'one file s':>10} | {'one scan s':>10} | {'by file s':>9} | {'load one/scan/by':>18} | "
          f"{'scan/one':>8} | {'by/one':>6} | tables")
    for fmt in args.format:
        for files in args.files:
            work = Path(tempfile.mkdtemp(prefix="bench-many-", dir=args.cache_dir))
            try:
                one, *parts = write_parts(src, args.rows, files, fmt, work / "in")
                times: dict[str, list[tuple[float, float, str]]] = {"one": [], "scan": [], "by": []}
                for _ in range(max(1, args.repeats)):
                    times["one"].append(run([one], work / "o_one", True))
                    times["scan"].append(run(parts, work / "o_scan", True))
                    times["by"].append(run(parts, work / "o_by", False))
                med = {k: median([t[0] for t in v]) for k, v in times.items()}
                load = {k: median([t[1] for t in v]) for k, v in times.items()}
                digests = {t[2] for v in times.values() for t in v}
                print(f"{fmt:8} | {files:>6,} | {med['one']:>10.2f} | {med['scan']:>10.2f} | {med['by']:>9.2f} | "
                      f"{load['one']:>5.2f}/{load['scan']:>5.2f}/{load['by']:>5.2f} | {med['scan'] / med['one']:>7.2f}x | "
                      f"{med['by'] / med['one']:>5.2f}x | {'identical' if len(digests) == 1 else 'DIFFER ' + str(digests)}",
                      flush=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
