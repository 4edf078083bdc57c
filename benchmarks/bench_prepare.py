"""Benchmark `purchasepred prepare` against DuckDB's bare CSV scan (not a test; never gates CI).

Generates (or reuses, cached under --cache-dir) a synthetic REES46 log of --rows rows, then in one run:

1. the bare scan: ``select count(*) from read_csv(path)`` in this process (after one warm-up read,
   so both sides see a warm page cache);
2. ``purchasepred prepare`` end to end in a child process (wall time, and peak RSS from the
   child's own rusage via ``os.wait4``);
3. the same with ``--memory-limit`` (default 1GB).

Targets (issue 2): prepare at most 6x the bare scan at 8M rows, peak RSS under 2 GB, and it still
completes under a 1GB memory limit.

Example: python benchmarks/bench_prepare.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

from purchasepred.data.synth import generate


def synth_file(rows: int, seed: int, views_per_purchase: float, days: int, cache_dir: Path) -> tuple[Path, float | None]:
    """The cached synthetic log for these settings (generated when absent) and the seconds it took."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"synth_rows{rows}_seed{seed}_vpp{views_per_purchase:g}_days{days}.csv"
    if path.is_file() and path.stat().st_size > 0:
        return path, None
    t0 = time.perf_counter()
    generate(path, rows=rows, views_per_purchase=views_per_purchase, days=days, seed=seed)
    return path, time.perf_counter() - t0


def bare_scan(path: Path, threads: int | None) -> tuple[float, float, int]:
    """Seconds of ``count(*)`` (the issue's baseline) and of a scan that materialises every column."""
    con = duckdb.connect()
    if threads:
        con.execute("set threads = ?", [threads])
    con.execute("select count(*) from read_csv(?)", [str(path)]).fetchone()  # warm-up
    t0 = time.perf_counter()
    n = con.execute("select count(*) from read_csv(?)", [str(path)]).fetchone()[0]
    count_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    con.execute("select max(columns(*)) from read_csv(?)", [str(path)]).fetchall()
    full_s = time.perf_counter() - t0
    con.close()
    return count_s, full_s, int(n)


def run_prepare(path: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """`python -m purchasepred prepare` in a child process: wall seconds, peak RSS (MB), manifest.

    A failed run (out of memory under a limit, say) is reported with its error line, not raised.
    """
    cmd = [sys.executable, "-m", "purchasepred", "--quiet", "prepare", str(path), "--out", str(out), "--force", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    rss_mb = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    if proc.returncode != 0:
        lines = [line for line in (stderr.decode() + stdout.decode()).splitlines() if line.strip()]
        return {"seconds": seconds, "prepare_s": None, "rss_mb": rss_mb, "manifest": None,
                "error": f"exit {proc.returncode}: {lines[-1] if lines else '(no output)'}"}
    manifest = json.loads((out / "manifest.json").read_text())
    return {"seconds": seconds, "prepare_s": manifest["duration_s"], "rss_mb": rss_mb, "manifest": manifest,
            "error": None}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8_000_000, help="rows of the synthetic log (default 8M)")
    ap.add_argument("--memory-limit", default="1GB", help="DuckDB memory limit of the third run (default 1GB)")
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads for all runs (default: all cores)")
    ap.add_argument("--views-per-purchase", type=float, default=60.0)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-days", type=float, default=7.0)
    ap.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "purchasepred-bench",
                    help="where the synthetic log is cached between runs")
    ap.add_argument("--keep", action="store_true", help="keep the prepared folders (printed at the end)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    path, gen_s = synth_file(args.rows, args.seed, args.views_per_purchase, args.days, args.cache_dir)
    size_mb = path.stat().st_size / 1e6
    print(f"input: {path} ({size_mb:,.0f} MB, {'generated in %.1f s' % gen_s if gen_s is not None else 'cached'})",
          flush=True)

    extra = ["--eval-days", str(args.eval_days)]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    work = Path(tempfile.mkdtemp(prefix="bench-prepare-", dir=args.cache_dir))
    try:
        scan_s, full_s, n = bare_scan(path, args.threads)
        print(f"bare scan: {scan_s:.2f} s ({n:,} rows); every column read: {full_s:.2f} s", flush=True)
        plain = run_prepare(path, work / "plain", extra)
        print(f"prepare: {plain['seconds']:.2f} s, peak RSS {plain['rss_mb']:,.0f} MB"
              + (f"  FAILED {plain['error']}" if plain["error"] else ""), flush=True)
        limited = run_prepare(path, work / "limited", extra + ["--memory-limit", args.memory_limit])
        print(f"prepare --memory-limit {args.memory_limit}: {limited['seconds']:.2f} s, "
              f"peak RSS {limited['rss_mb']:,.0f} MB"
              + (f"  FAILED {limited['error']}" if limited["error"] else ""), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    m = plain["manifest"] or {}
    same = bool(m) and limited["manifest"] is not None and all(
        m[k] == limited["manifest"][k] for k in ("rows_kept", "n_events", "n_sessions", "n_train_sequences"))
    ratio = plain["seconds"] / scan_s

    def secs(run: dict[str, Any]) -> str:
        return f"{run['seconds']:.2f}" + (" FAILED" if run["error"] else "")

    header = ["rows", "bare scan s", "prepare s", "ratio", "peak RSS MB",
              f"{args.memory_limit} limit s", f"{args.memory_limit} limit RSS MB"]
    values = [f"{n:,}", f"{scan_s:.2f}", secs(plain), f"{ratio:.1f}x", f"{plain['rss_mb']:,.0f}",
              secs(limited), f"{limited['rss_mb']:,.0f}"]
    widths = [max(len(h), len(v)) for h, v in zip(header, values)]
    print()
    print(" | ".join(h.rjust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    print(" | ".join(v.rjust(w) for v, w in zip(values, widths)))
    print()
    print(f"a scan that reads every column takes {full_s:.2f} s (prepare / that: {plain['seconds'] / full_s:.1f}x)")
    print(f"cores {os.cpu_count()}, threads {args.threads or 'all'}; prepare's own duration_s "
          f"{plain['prepare_s']} / {limited['prepare_s']} (the rest is interpreter start and imports)")
    if m:
        print(f"kept {m['rows_kept']:,} rows, {m['n_events']:,} events, {m['n_users']:,} users, "
              f"{m['n_train_sequences']:,} train sequences; same counts under the limit: {same}")
    for run in (plain, limited):
        if run["error"]:
            print(f"failed run: {run['error']}")
    ok = plain["error"] is None
    print(f"targets: ratio <= 6x: {'yes' if ok and ratio <= 6 else 'NO'}; peak RSS < 2 GB: "
          f"{'yes' if ok and plain['rss_mb'] < 2048 else 'NO'}; completes under {args.memory_limit}: "
          f"{'yes' if limited['error'] is None else 'NO'}")
    if args.keep:
        print(f"prepared folders kept in {work}")
    if args.json:
        args.json.write_text(json.dumps({
            "rows": n, "input_mb": size_mb, "bare_scan_s": scan_s, "full_scan_s": full_s, "prepare_s": plain["seconds"],
            "ratio": ratio, "peak_rss_mb": plain["rss_mb"], "limit": args.memory_limit,
            "limit_prepare_s": limited["seconds"], "limit_peak_rss_mb": limited["rss_mb"],
            "errors": [plain["error"], limited["error"]],
            "cores": os.cpu_count(), "threads": args.threads,
        }, indent=2))


if __name__ == "__main__":
    main()
