"""Export throughput: users x catalog scoring, top-K and the checked CSV, on a large synth dataset.

Target (issue 4): 640k users x 30k items in under 2 minutes on a 2-core CPU. The model weights are
random (speed does not depend on them); everything else is the real export path. In the same run,
the plain baseline: the same users scored by popularity only (one shared list, no model), which
is the floor any export costs (top-K + CSV + check). Run by hand:

    python benchmarks/bench_export.py --rows 13000000 --items 30000     # ~640k users, 30k items
"""

from __future__ import annotations

import argparse
import resource
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=13_000_000)
    p.add_argument("--items", type=int, default=30_000)
    p.add_argument("--workdir", default="/tmp/purchasepred-bench")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rankers", default="popularity,model,blend")
    args = p.parse_args()
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
    data = PreparedData(data_dir)
    cfg = Config()
    torch.manual_seed(0)
    model = TransformerRecommender(cfg.model, data.vocab, data.max_len).eval()
    n_users, n_items = len(data.users["user_idx"]), data.vocab.n_items - 2
    print(f"users {n_users:,}  items {n_items:,}  k {args.k}  threads {torch.get_num_threads()}")
    print(f"{'ranker':>12} {'seconds':>9} {'users/s':>10} {'vs popularity':>14}")
    base = None
    for ranker in args.rankers.split(","):
        fitted = ValidFit(history=HistoryParams(), blend=BlendWeights(beta=1.0, gamma=1.0, delta=0.5), default=ranker, valid_ndcg10={},
                        calibration=Calibration(a=1.0, b=-4.0), dataset_hash=data.manifest["content_hash"],
                        popularity_calibration=Calibration(a=1.0, b=-6.0))
        out = work / f"recs_{ranker}.csv"
        t = time.perf_counter()
        summary = export(data, cfg, model, torch.device("cpu"), fitted, out, args.k, False, True)
        dt = time.perf_counter() - t
        base = base or dt
        print(f"{ranker:>12} {dt:>9.1f} {summary.users / dt:>10,.0f} {dt / base:>13.2f}x", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:,.0f} MB")


if __name__ == "__main__":
    main()
