"""Benchmark `purchasepred prepare` against DuckDB reading the same file (not a test; never gates CI).

For each --rows size, a synthetic REES46 log is generated (or reused, cached under --cache-dir), then
in one run:

1. the baselines, in this process after one warm-up read (so every side sees a warm page cache):
   DuckDB's bare ``select count(*) from read_csv(path)`` and a scan that reads every column, each
   --baseline-repeats times (default 3), alternating, their medians used for the ratios;
2. ``purchasepred prepare`` end to end in a child process under the default memory settings (--repeats
   times, default 1; the median run is the one reported): wall
   seconds, peak RSS (the child's own VmHWM, polled), peak bytes spilled (the size of its
   --temp-dir, polled), and the per-step seconds from its manifest;
3. the same with ``--memory-limit`` (default 1GB);
4. (before 2) the floor: the typed copy, sort and Parquet write that any prepare of the file must do,
   each alone (``floor_steps``), so that "/floor" says how much prepare adds on top of them.

Targets (issue 10): at most 10x the bare count(*) at 8M rows under the default memory settings, peak
RSS under 2 GB with --memory-limit 1GB, and a cost per row that stays flat from 1M to 50M rows.
The machine is shared and timings are noisy: compare ratios from the same run, not seconds. Its speed
also drifts by 10-20% over minutes, between the baselines (run first) and the prepare runs: each prepare
run therefore also has a bare count(*) taken just before it, and "/count paired" is the median of those
runs' own ratios (beside "/count", the median run over the medians of the baselines), and "/count best"
the fastest prepare run over the fastest count(*) of the run (baselines and paired ones): the
ratio of the box's quietest moments, where both of the others also carry its slow ones. Each prepare
run also reports the gigabytes its child read from disk (a page cache that lost part of the input
makes the load slower by the disk's speed: at 50M rows 5.85 GB read, the load 30.0 s against 23.8
warm) and this process's own RSS at the time.

Example: python benchmarks/bench_prepare.py --rows 1000000 8000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb

from purchasepred.cli import step_line
from purchasepred.data.prepare import _rss_bytes, _write_parquet
from purchasepred.data.synth import generate
from purchasepred.fileio import folder_bytes


def synth_file(rows: int, seed: int, views_per_purchase: float, days: int, cache_dir: Path) -> tuple[Path, float | None]:
    """The cached synthetic log for these settings (generated when absent) and the seconds it took."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"synth_rows{rows}_seed{seed}_vpp{views_per_purchase:g}_days{days}.csv"
    if path.is_file() and path.stat().st_size > 0:
        return path, None
    t0 = time.perf_counter()
    generate(path, rows=rows, views_per_purchase=views_per_purchase, days=days, seed=seed)
    return path, time.perf_counter() - t0


class CountNow:
    """A bare ``count(*)`` of ``path`` on demand (the issue's baseline), on one connection warmed up by a
    first count (a new connection's first scan costs more; ``rows`` is its result). bare_scan takes its
    baselines through it, and a count is also taken right before each prepare run, since the box's speed
    drifts by 10-20% over minutes: each run is also set against the baseline of its own moment (the
    "paired" ratio)."""

    def __init__(self, path: Path, threads: int | None) -> None:
        self.path = path
        self.con = duckdb.connect()
        if threads:
            self.con.execute("set threads = ?", [threads])
        self.rows = int(self.con.execute("select count(*) from read_csv(?)", [str(path)]).fetchall()[0][0])  # warm-up

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.con.execute("select count(*) from read_csv(?)", [str(self.path)]).fetchall()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.con.close()


def bare_scan(path: Path, threads: int | None, repeats: int = 3) -> tuple[list[float], list[float], list[float], int]:
    """Seconds of ``count(*)`` (the issue's baseline), of a scan that materialises every column, and of
    ``count(*)`` with the 16 MB read buffer prepare's load uses (LOAD_BUFFER: shown beside the baseline,
    not used in the ratios), ``repeats`` times each, alternating (all move by 10-20% from run to run on a
    shared box: the ratios use their medians)."""
    count = CountNow(path, threads)
    count_s, full_s, buffered_s = [], [], []
    for _ in range(repeats):
        count_s.append(count())
        t0 = time.perf_counter()
        count.con.execute("select max(columns(*)) from read_csv(?)", [str(path)]).fetchall()
        full_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        count.con.execute("select count(*) from read_csv(?, buffer_size = ?)", [str(path), LOAD_BUFFER]).fetchall()
        buffered_s.append(time.perf_counter() - t0)
    count.close()
    return count_s, full_s, buffered_s, count.rows


# the read buffer of prepare's CSV load (sql/01_load_csv.sql), in bytes
LOAD_BUFFER = 16 * 1024 * 1024


# The REES46 columns of the synthetic logs, all read as text (as prepare reads them)
_COLUMNS = {name: "VARCHAR" for name in (
    "event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price", "user_id", "user_session")}


def floor_steps(path: Path, threads: int | None, temp_dir: Path) -> dict[str, float]:
    """Seconds of the three things any prepare of this file must do at least once, each as one bare
    DuckDB statement with nothing else in it: read every column (with the load's read buffer,
    LOAD_BUFFER) and type the time and price into a table in file order (rejected lines need their
    line numbers), the session as its hash as prepare stores it (the 36-character text costs more to
    store than the hash costs to take); sort the rows by a 24-byte fixed-width key (user, time, type
    and item, session) carrying the events' columns; write those rows to Parquet as prepare writes its
    events (numbers only: events.parquet stores no text). Their sum is a floor for this design on this
    machine: prepare adds dictionaries, duplicates, sessions, vocabularies, features, windows and
    audits on top. The table the sort reads is built untimed from hashes of the text keys."""
    con = duckdb.connect()
    if threads:
        con.execute("set threads = ?", [threads])
    con.execute("set preserve_insertion_order = true")
    con.execute("set enable_progress_bar = false")
    con.execute("set TimeZone = 'UTC'")
    con.execute("set temp_directory = ?", [str(temp_dir)])
    src = "read_csv(?, header = true, auto_detect = false, columns = getvariable('columns'), buffer_size = ?)"
    con.execute("set variable columns = ?", [_COLUMNS])
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    con.execute(f"""create table typed as select
        try_strptime(event_time, '%Y-%m-%d %H:%M:%S UTC') as event_at, event_type, product_id, category_id,
        category_code, brand, try_cast(price as double) as price, user_id,
        hash(user_session) as session_hash
        from {src}""", [str(path), LOAD_BUFFER])
    seconds["typed copy"] = time.perf_counter() - t0
    con.execute("""create table keyed as select
        (hash(user_id) >> 33)::integer as user_code, event_at, (hash(product_id) >> 34)::uinteger as type_item,
        (session_hash >> 34)::integer as session_prefix, session_hash,
        (hash(category_id) >> 44)::integer as category_code, (hash(brand) >> 44)::integer as brand_code, price,
        (hash(product_id) >> 40)::integer as item_code
        from typed""")
    con.execute("drop table typed")
    t0 = time.perf_counter()
    con.execute("create table sorted as select * from keyed order by user_code, event_at, type_item, session_prefix")
    seconds["sort"] = time.perf_counter() - t0
    con.execute("drop table keyed")
    t0 = time.perf_counter()
    _write_parquet(con, "sorted", temp_dir / "floor.parquet")  # (as prepare writes its tables)
    seconds["write"] = time.perf_counter() - t0
    con.close()
    (temp_dir / "floor.parquet").unlink(missing_ok=True)
    return seconds


def median(xs: list[float]) -> float:
    """The lower middle of the sorted values (one of the runs, not an average of two)."""
    return sorted(xs)[(len(xs) - 1) // 2]


def _runs(xs: list[float]) -> str:
    return "median of " + ", ".join(f"{x:.2f}" for x in xs) if len(xs) > 1 else "one run"


def _vm_hwm_kb(pid: int) -> int:
    """The peak resident set size of a live process in kB (Linux /proc), 0 where unavailable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_prepare(path: Path, out: Path, extra: list[str], temp_dir: Path) -> dict[str, Any]:
    """`python -m purchasepred prepare` in a child process: wall seconds, peak RSS (MB), peak spill
    (bytes in its --temp-dir), manifest. A failed run is reported with its error line, not raised."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "purchasepred", "--quiet", "prepare", str(path), "--out", str(out), "--force",
           "--temp-dir", str(temp_dir), *extra]
    peak = [0]
    hwm_kb = [0]
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], folder_bytes(temp_dir))
            hwm_kb[0] = max(hwm_kb[0], _vm_hwm_kb(proc.pid))

    watcher = threading.Thread(target=poll, daemon=True)
    log = temp_dir.parent / f"{out.name}.log"
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    returncode = os.waitstatus_to_exitcode(status)
    # The child's own high-water mark (VmHWM, reset at exec) where /proc has it: ru_maxrss of a child
    # also counts the RSS this process had when it forked (Linux keeps it across fork and exec), which
    # after the baselines' DuckDB scans of a 50M-row file was ~11 GB. ru_maxrss: kilobytes on Linux,
    # bytes on macOS.
    rss_mb = hwm_kb[0] / 1024 if hwm_kb[0] else usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    if returncode != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        return {"seconds": seconds, "rss_mb": rss_mb, "spill_bytes": peak[0], "manifest": None,
                "error": f"exit {returncode}: {lines[-1] if lines else '(no output)'}"}
    manifest = json.loads((out / "manifest.json").read_text())
    # (the child's CPU split into user and system time, and its page faults: on this project's VM the same
    # 3.7-3.8M faults of a 50M-row prepare cost 21-61 s of system time from one run to the next)
    return {"seconds": seconds, "rss_mb": rss_mb, "spill_bytes": max(peak[0], manifest.get("spill_bytes", 0)),
            "read_gb": usage.ru_inblock * 512 / 1e9, "parent_rss_mb": (_rss_bytes() or 0) / 2**20,
            "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "minor_faults": usage.ru_minflt,
            "manifest": manifest, "error": None}


def steps_line(run: dict[str, Any]) -> str:
    """Each step of the run's manifest as the prepare summary shows it (seconds, rows, peak RSS, spill),
    steps under 0.05 s left out."""
    m = run["manifest"] or {}
    return "; ".join(f"{s['step']} {step_line(s)}" for s in m.get("steps", []) if s["seconds"] >= 0.05)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 8_000_000],
                    help="sizes of the synthetic logs (default 1M and 8M; the issue also asks for 50M)")
    ap.add_argument("--memory-limit", default="1GB", help="DuckDB memory limit of the second run (default 1GB)")
    ap.add_argument("--no-limited", action="store_true", help="skip the run under --memory-limit")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor (typed copy + sort + write, see floor_steps)")
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads for all runs (default: all cores)")
    ap.add_argument("--views-per-purchase", type=float, default=60.0)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-days", type=float, default=7.0)
    ap.add_argument("--baseline-repeats", type=int, default=3,
                    help="runs of count(*) and of the full scan, alternating; the ratios use their medians (default 3)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of prepare under the default memory settings; the ratios use their median (default 1)")
    ap.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "purchasepred-bench",
                    help="where the synthetic logs are cached between runs")
    ap.add_argument("--delete-input", action="store_true", help="delete each synthetic log after its runs")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    results = []
    for rows in args.rows:
        path, gen_s = synth_file(rows, args.seed, args.views_per_purchase, args.days, args.cache_dir)
        size_mb = path.stat().st_size / 1e6
        print(f"input: {path} ({size_mb:,.0f} MB, {'generated in %.1f s' % gen_s if gen_s is not None else 'cached'})",
              flush=True)
        extra = ["--eval-days", str(args.eval_days)] + (["--threads", str(args.threads)] if args.threads else [])
        work = Path(tempfile.mkdtemp(prefix="bench-prepare-", dir=args.cache_dir))
        try:
            count_runs, full_runs, buffered_runs, n = bare_scan(path, args.threads, max(1, args.baseline_repeats))
            count_s, full_s = median(count_runs), median(full_runs)
            print(f"  count(*) {count_s:.2f} s ({n:,} rows; {_runs(count_runs)}); every column read {full_s:.2f} s "
                  f"({_runs(full_runs)}); count(*) with the load's 16 MB buffer {median(buffered_runs):.2f} s "
                  f"({_runs(buffered_runs)})", flush=True)
            floor = None
            if not args.no_floor:
                (work / "spill-floor").mkdir()
                floor = floor_steps(path, args.threads, work / "spill-floor")
                print(f"  floor {sum(floor.values()):.2f} s: " + ", ".join(f"{k} {v:.2f}" for k, v in floor.items()),
                      flush=True)
            runs = []
            paired_counts = []
            count_now = CountNow(path, args.threads)
            for _ in range(max(1, args.repeats)):
                shutil.rmtree(work / "plain", ignore_errors=True)
                paired_counts.append(count_now())
                runs.append(run_prepare(path, work / "plain", extra, work / "spill-plain"))
                plain = runs[-1]
                print(f"  prepare (default memory): {plain['seconds']:.1f} s, peak RSS {plain['rss_mb']:,.0f} MB, "
                      f"spill {plain['spill_bytes'] / 1e9:.2f} GB; count(*) just before it {paired_counts[-1]:.2f} s "
                      f"({plain['seconds'] / paired_counts[-1]:.1f}x); read from disk {plain.get('read_gb', 0):.2f} GB, "
                      f"this process's RSS {plain.get('parent_rss_mb', 0):,.0f} MB; CPU user {plain.get('user_s', 0):.1f} s, "
                      f"system {plain.get('sys_s', 0):.1f} s, {plain.get('minor_faults', 0):,} page faults"
                      + (f"  FAILED {plain['error']}" if plain["error"] else ""), flush=True)
                print(f"    steps: {steps_line(plain)}", flush=True)
            count_now.close()
            prepare_runs = [r["seconds"] for r in runs]
            paired = median([r["seconds"] / c for r, c in zip(runs, paired_counts, strict=True)])
            best = min(prepare_runs) / min(count_runs + paired_counts)
            plain = sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]  # the median run (lower middle)
            limited = None
            if not args.no_limited:
                shutil.rmtree(work / "plain", ignore_errors=True)
                limited = run_prepare(path, work / "limited", extra + ["--memory-limit", args.memory_limit],
                                      work / "spill-limited")
                print(f"  prepare --memory-limit {args.memory_limit}: {limited['seconds']:.1f} s, peak RSS "
                      f"{limited['rss_mb']:,.0f} MB, spill {limited['spill_bytes'] / 1e9:.2f} GB; CPU user "
                      f"{limited.get('user_s', 0):.1f} s, system {limited.get('sys_s', 0):.1f} s, "
                      f"{limited.get('minor_faults', 0):,} page faults"
                      + (f"  FAILED {limited['error']}" if limited["error"] else ""), flush=True)
                print(f"    steps: {steps_line(limited)}", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if args.delete_input:
                path.unlink(missing_ok=True)
        m = plain["manifest"] or {}
        results.append({
            "rows": n, "input_mb": size_mb, "count_s": count_s, "full_scan_s": full_s,
            "count_runs_s": count_runs, "full_scan_runs_s": full_runs, "count_load_buffer_runs_s": buffered_runs,
            "prepare_runs_s": prepare_runs, "paired_count_runs_s": paired_counts, "ratio_count_paired": paired,
            "ratio_count_best": best, "prepare_read_gb": [r.get("read_gb") for r in runs],
            "prepare_user_s": [r.get("user_s") for r in runs], "prepare_sys_s": [r.get("sys_s") for r in runs],
            "prepare_minor_faults": [r.get("minor_faults") for r in runs],
            "prepare_s": plain["seconds"], "prepare_duration_s": m.get("duration_s"), "memory_limit": m.get("memory_limit"),
            "ratio_count": plain["seconds"] / count_s, "ratio_full": plain["seconds"] / full_s,
            "floor": floor, "floor_s": None if floor is None else sum(floor.values()),
            "peak_rss_mb": plain["rss_mb"], "spill_bytes": plain["spill_bytes"], "steps": m.get("steps"),
            "limited": None if limited is None else {
                "memory_limit": args.memory_limit, "prepare_s": limited["seconds"], "peak_rss_mb": limited["rss_mb"],
                "spill_bytes": limited["spill_bytes"], "steps": (limited["manifest"] or {}).get("steps"),
                "error": limited["error"],
                "same_counts": bool(m) and limited["manifest"] is not None and all(
                    m[k] == limited["manifest"][k] for k in ("rows_kept", "n_events", "n_sessions", "n_users")),
                "same_content_hash": bool(m) and limited["manifest"] is not None
                and m["content_hash"] == limited["manifest"]["content_hash"],
            },
            "error": plain["error"], "cores": os.cpu_count(), "threads": args.threads,
        })

    header = ["rows", "count(*) s", "full scan s", "floor s", "prepare s", "/count", "/count paired", "/count best",
              "/full", "/floor", "s per M rows", "peak RSS MB", "spill GB", f"{args.memory_limit}: s", "RSS MB", "spill GB"]
    table = []
    for r in results:
        lim = r["limited"] or {}
        fl = r["floor_s"]
        table.append([f"{r['rows']:,}", f"{r['count_s']:.2f}", f"{r['full_scan_s']:.2f}",
                      f"{fl:.2f} ({fl / r['count_s']:.1f}x)" if fl else "-", f"{r['prepare_s']:.1f}",
                      f"{r['ratio_count']:.1f}x", f"{r['ratio_count_paired']:.1f}x",
                      f"{r['ratio_count_best']:.1f}x", f"{r['ratio_full']:.1f}x",
                      f"{r['prepare_s'] / fl:.1f}x" if fl else "-",
                      f"{r['prepare_s'] / (r['rows'] / 1e6):.2f}",
                      f"{r['peak_rss_mb']:,.0f}", f"{r['spill_bytes'] / 1e9:.2f}",
                      f"{lim['prepare_s']:.1f}" if lim else "-", f"{lim['peak_rss_mb']:,.0f}" if lim else "-",
                      f"{lim['spill_bytes'] / 1e9:.2f}" if lim else "-"])
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    print()
    print(" | ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in table:
        print(" | ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    print(f"\ncores {os.cpu_count()}, threads {args.threads or 'all'}; prepare s is the child's wall time "
          "(interpreter start and imports included); the default memory limit is "
          f"{results[0]['memory_limit'] if results else '?'}")
    for r in results:
        lim = r["limited"] or {}
        ok = r["error"] is None
        print(f"{r['rows']:,} rows: <= 10x count(*): {'yes' if ok and r['ratio_count'] <= 10 else 'NO'} "
              f"(paired: {'yes' if ok and r['ratio_count_paired'] <= 10 else 'NO'}, "
              f"best: {'yes' if ok and r['ratio_count_best'] <= 10 else 'NO'})"
              + (f"; {args.memory_limit}: RSS < 2 GB {'yes' if lim['peak_rss_mb'] < 2048 and not lim['error'] else 'NO'},"
                 f" same counts {lim['same_counts']}, same content_hash {lim['same_content_hash']}" if lim else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
