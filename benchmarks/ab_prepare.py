"""Compare `purchasepred prepare` at two git revisions on one log, in alternating runs (not a test).

The box moves 10-20% from run to run, so a change is measured against the code before it in the same
sitting, alternating: A, B, A, B, ... Each revision is exported with ``git archive`` into a folder of
its own, and every run is a child ``python -m purchasepred prepare`` with that folder first on
``PYTHONPATH`` and the current directory set outside every checkout: started inside one, ``python -m``
puts the current directory first on ``sys.path`` and imports that checkout's package whatever
``PYTHONPATH`` says (which made earlier hand-run A/B comparisons compare a tree with itself). Each run
checks that it imported its own revision.

Per run: wall seconds, user and system CPU seconds of the child, the gigabytes it read from disk (the
input not in the page cache, and spill read back: the kernel's count of the child's input blocks), and the seconds of each step from
its manifest (bench_prepare.py measures peak RSS and spill). At the end, the medians per revision, and whether the two revisions' tables
have the same rows in the same order (every table but the manifest).

Example: python benchmarks/ab_prepare.py HEAD~1 HEAD --rows 8000000 --rounds 3
         python benchmarks/ab_prepare.py main WORKTREE --rows 1000000 -- --memory-limit 1GB
(WORKTREE: the working tree as it is, committed or not.)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from bench_prepare import median, synth_file

REPO = Path(__file__).resolve().parents[1]
STEPS = ("load", "clean", "sessionize", "vocab", "encode", "split", "audits")


def export(rev: str, into: Path) -> Path:
    """The files of ``rev`` (or of the working tree, tracked and untracked but not ignored, for
    WORKTREE) in ``into``."""
    into.mkdir(parents=True)
    if rev == "WORKTREE":
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                               capture_output=True).stdout.split(b"\0")
        for name in filter(None, files):
            src, dst = REPO / name.decode(), into / name.decode()
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(src.read_bytes())
        return into
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_once(tree: Path, log: Path, out: Path, extra: list[str], cwd: Path) -> dict:
    """One prepare of ``log`` by the package in ``tree``: its seconds, CPU (the child's; the import check's
    child is counted too, a few hundredths of a second) and steps."""
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    probe = subprocess.run([sys.executable, "-c", "import purchasepred; print(purchasepred.__file__)"],
                           cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()
    if not Path(probe).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the child imported {probe}, not the package in {tree}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "purchasepred", "-q", "prepare", str(log), "--out", str(out),
                           "--force", *extra], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed in {tree}: {proc.stderr.strip().splitlines()[-1:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "wall": wall, "user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime,
        "read_gb": (after.ru_inblock - before.ru_inblock) * 512 / 1e9,
        "steps": {s["step"]: s["seconds"] for s in manifest["steps"]},
    }


def same_tables(a: Path, b: Path) -> dict[str, bool]:
    """Per table of two prepared folders: the same rows in the same order."""
    con = duckdb.connect()
    got = {}
    for path in sorted(a.glob("*.parquet")):
        q = ("select count(*) from (select *, row_number() over () as n from read_parquet(?)) as x "
             "full join (select *, row_number() over () as n from read_parquet(?)) as y using (n) "
             "where x is distinct from y")
        got[path.stem] = con.execute(q, [str(path), str(b / path.name)]).fetchone()[0] == 0
    return got


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev_a")
    ap.add_argument("rev_b")
    ap.add_argument("--rows", type=int, default=8_000_000, help="rows of the cached synthetic log (bench_prepare)")
    ap.add_argument("--log", type=Path, help="a log of your own instead of the synthetic one")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "purchasepred-bench")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # prepare's options for both, after --
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.extra = extra
    log = args.log or synth_file(args.rows, 0, 60.0, 30, args.cache_dir)[0]
    with tempfile.TemporaryDirectory(prefix="purchasepred-ab-") as tmp:
        work = Path(tmp)
        trees = {rev: export(rev, work / f"tree{i}") for i, rev in enumerate((args.rev_a, args.rev_b))}
        runs: dict[str, list[dict]] = {rev: [] for rev in trees}
        for r in range(args.rounds):
            for i, (rev, tree) in enumerate(trees.items()):
                got = run_once(tree, log, work / f"out{i}", args.extra, cwd=work)
                runs[rev].append(got)
                steps = " ".join(f"{s} {got['steps'].get(s, 0):.2f}" for s in STEPS)
                print(f"round {r + 1} {rev:>12}: {got['wall']:6.2f} s, {got['user']:6.2f} user, {got['sys']:5.2f} sys, "
                      f"{got['read_gb']:5.2f} GB read | {steps}",
                      flush=True)
        print(f"\nmedians over {args.rounds} rounds, {log.name}{' ' + ' '.join(args.extra) if args.extra else ''}:")
        for rev, rs in runs.items():
            steps = " ".join(f"{s} {median([x['steps'].get(s, 0) for x in rs]):.2f}" for s in STEPS)
            print(f"  {rev:>12}: {median([x['wall'] for x in rs]):6.2f} s, {median([x['user'] for x in rs]):6.2f} user | {steps}")
        a, b = (median([x["wall"] for x in rs]) for rs in runs.values())
        print(f"  {args.rev_b} / {args.rev_a}: {b / a:.3f}")
        print(f"  same rows in the same order: {same_tables(work / 'out0', work / 'out1')}")


if __name__ == "__main__":
    main()
