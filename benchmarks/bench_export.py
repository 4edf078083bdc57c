"""Export throughput: users x catalog scoring, top-K and the checked CSV, on a large synth dataset.

Target (issue 4): 640k users x 30k items in under 2 minutes on a 2-core CPU. The model weights are
random (speed does not depend on them); everything else is the real export path. In the same run,
the plain baseline: the same users scored by popularity only (one shared list, no model), which
is the floor any export costs (top-K + CSV + check). Run by hand:

    python benchmarks/bench_export.py --rows 13000000 --items 30000     # ~640k users, 30k items
    python benchmarks/bench_export.py --rows 13000000 --items 30000 --nproc 2   # also under torchrun (gloo, CPU)
    python benchmarks/bench_export.py --rows 40000000 --items 200000 --device cuda --rankers model   # 2M users, GPU

With ``--nproc N`` the same exports run again under ``torchrun --nproc_per_node N`` (gloo on CPU,
NCCL on CUDA: each rank scores a share of the users into its part file, rank 0 joins them) and
the seconds are reported against 1 process. torchrun gives each rank one CPU thread unless
OMP_NUM_THREADS is set; 1 process uses all of them.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from purchasepred.config import Config, PrepareConfig
from purchasepred.data.prepare import prepare
from purchasepred.data.synth import generate
from purchasepred.data.tensors import PreparedData
from purchasepred.eval.calibration import Calibration
from purchasepred.eval.evaluate import ValidFit
from purchasepred.eval.rankers import BlendWeights, HistoryParams
from purchasepred.export.recommend import export
from purchasepred.models.transformer import TransformerRecommender
from purchasepred.train import distributed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=13_000_000)
    p.add_argument("--items", type=int, default=30_000)
    p.add_argument("--workdir", default="/tmp/purchasepred-bench")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rankers", default="popularity,model,blend")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--nproc", type=int, default=1, help="also run the exports under torchrun with N processes")
    args = p.parse_args()
    d, device = distributed.setup(torch.device(args.device))  # under torchrun (the --nproc pass): this rank's place
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    raw = work / f"synth_rows{args.rows}_items{args.items}_seed0.csv"
    if not raw.exists():
        t = time.perf_counter()
        generate(raw, rows=args.rows, seed=0, items=args.items)
        print(f"synth {args.rows:,} rows: {time.perf_counter() - t:.1f}s")
    data_dir = work / f"prepared_rows{args.rows}_items{args.items}"
    if not (data_dir / "manifest.json").exists():
        t = time.perf_counter()
        prepare([str(raw)], data_dir, PrepareConfig(), force=True)
        print(f"prepare: {time.perf_counter() - t:.1f}s")
    distributed.barrier(d)
    data = PreparedData(data_dir)
    cfg = Config()
    torch.manual_seed(0)
    model = TransformerRecommender(cfg.model, data.vocab, data.max_len).to(device).eval()
    n_users, n_items = len(data.users["user_idx"]), data.vocab.n_items - 2
    say = print if d.is_main else (lambda *a, **kw: None)
    if not d.enabled:
        print(f"users {n_users:,}  items {n_items:,}  k {args.k}  threads {torch.get_num_threads()}  device {device}")
        print(f"{'ranker':>12} {'seconds':>9} {'users/s':>10} {'vs popularity':>14}")
    base = None
    seconds = {}
    for ranker in args.rankers.split(","):
        fitted = ValidFit(history=HistoryParams(), blend=BlendWeights(beta=1.0, gamma=1.0, delta=0.5), default=ranker, valid_ndcg10={},
                        calibration=Calibration(a=1.0, b=-4.0), dataset_hash=data.manifest["content_hash"],
                        popularity_calibration=Calibration(a=1.0, b=-6.0))
        out = work / f"recs_{ranker}.csv"
        distributed.barrier(d)
        t = time.perf_counter()
        summary = export(data, cfg, model, device, fitted, out, args.k, False, True, d=d)
        dt = time.perf_counter() - t
        seconds[ranker] = dt
        base = base or dt
        if d.enabled:
            say(f"TORCHRUN {ranker} {dt:.3f} {summary.users}", flush=True)
        else:
            print(f"{ranker:>12} {dt:>9.1f} {summary.users / dt:>10,.0f} {dt / base:>13.2f}x", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if d.enabled:
        say(f"TORCHRUN rss {rss:.0f}", flush=True)
        distributed.teardown(d)
        return
    print(f"peak RSS {rss:,.0f} MB")
    if args.nproc > 1:
        torchrun_pass(args, seconds)


def torchrun_pass(args: argparse.Namespace, one: dict[str, float]) -> None:
    """The same exports under torchrun --nproc_per_node N; seconds of each export vs 1 process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           __file__, "--rows", str(args.rows), "--items", str(args.items), "--workdir", args.workdir, "--k", str(args.k),
           "--rankers", args.rankers, "--device", args.device]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"torchrun --nproc_per_node {args.nproc} failed:\n{done.stderr[-3000:]}")
    lines = [line.split() for line in done.stdout.splitlines() if line.startswith("TORCHRUN ")]
    print(f"torchrun --nproc_per_node {args.nproc} ({os.environ.get('OMP_NUM_THREADS', 1)} thread(s) per rank), "
          f"launcher wall {wall:.1f}s including start-up and data loading")
    print(f"{'ranker':>12} {'1 proc s':>9} {f'{args.nproc} procs s':>11} {'speed-up':>9}")
    for _, ranker, secs, *_ in (x for x in lines if x[1] != "rss"):
        print(f"{ranker:>12} {one[ranker]:>9.1f} {float(secs):>11.1f} {one[ranker] / float(secs):>8.2f}x", flush=True)
    for _, _, rss in (x for x in lines if x[1] == "rss"):
        print(f"rank 0 peak RSS {float(rss):,.0f} MB")


if __name__ == "__main__":
    main()
