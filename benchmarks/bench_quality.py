"""Quality on synth data: NDCG@10, HR@10 and MRR on the test window for popularity, history, the
transformer and the blend (95% bootstrap intervals), at views-per-purchase 60 and 4000.

Variants measure the design choices: the repeat path on/off, carts as a weaker purchase signal,
and the purchase weight. Run by hand (CPU: tens of minutes for the default set):

    python benchmarks/bench_quality.py --rows 1000000 --vpp 60,4000
    python benchmarks/bench_quality.py --rows 1000000 --vpp 60 --variants default,no_repeat,carts,pw1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from purchasepred.config import PrepareConfig, load_config
from purchasepred.data.prepare import prepare
from purchasepred.data.synth import generate
from purchasepred.data.tensors import PreparedData
from purchasepred.pipeline import evaluate_run
from purchasepred.train.trainer import Trainer

VARIANTS = {
    "default": [],
    "no_repeat": ["model.repeat_path=false"],
    "carts": ["train.cart_weight=30"],
    "pw1": ["train.purchase_weight=1"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--vpp", default="60,4000")
    p.add_argument("--variants", default="default")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--eval-days", type=float, default=7.0)
    p.add_argument("--workdir", default="/tmp/purchasepred-quality")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra config overrides")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for vpp in [float(v) for v in args.vpp.split(",")]:
        raw = work / f"synth_{args.rows}_vpp{vpp:g}.csv"
        if not raw.exists():
            generate(raw, rows=args.rows, views_per_purchase=vpp, days=30, seed=0)
        data_dir = work / f"prepared_{args.rows}_vpp{vpp:g}_eval{args.eval_days:g}"
        if not (data_dir / "manifest.json").exists():
            prepare([str(raw)], data_dir, PrepareConfig(eval_days=args.eval_days), force=True)
        data = PreparedData(data_dir)
        for variant in args.variants.split(","):
            name = f"q-{args.rows}-vpp{vpp:g}-{variant}"
            cfg = load_config(sets=[
                f"train.epochs={args.epochs}", f"train.data={data_dir}",
                f"train.checkpoints_dir={work / 'checkpoints'}", f"train.output_dir={work / 'output'}",
                *VARIANTS[variant], *args.sets,
            ])
            run_dir = work / "checkpoints" / name
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
                shutil.rmtree(work / "output" / name, ignore_errors=True)
            t0 = time.perf_counter()
            summary = Trainer(cfg, data, name).fit()
            train_s = time.perf_counter() - t0
            res = evaluate_run(cfg, name).result
            row = {"vpp": vpp, "variant": variant, "train_s": round(train_s, 1), "epochs": summary.epochs_done,
                   "tokens_per_s": round(summary.tokens_per_s), "default": res["default"],
                   "buyers": res["model"]["users"], "purchases_in_data": data.manifest["events_by_type"].get("purchase", 0)}
            for r, m in (("popularity", res["baselines"]["popularity"]), ("history", res["baselines"]["history"]),
                         ("transformer", res["model"]), ("blend", res["blend"])):
                row[r] = {"ndcg@10": m["ndcg@10"], "ci": m["ndcg@10_ci"], "hr@10": m["hr@10"], "mrr": m["mrr"]}
            d = res["default_metrics"]["ndcg@10"]
            row["default_vs_history"] = d / res["baselines"]["history"]["ndcg@10"] - 1
            results.append(row)
            print(f"\nvpp {vpp:g}, {variant}: {data.manifest['events_by_type']}, buyers in test {row['buyers']}, "
                  f"train {train_s:.0f}s, {summary.tokens_per_s:,.0f} tokens/s")
            print(f"| ranker | NDCG@10 [95% CI] | HR@10 | MRR |\n|---|---|---|---|")
            for r in ("popularity", "history", "transformer", "blend"):
                m = row[r]
                print(f"| {r}{' (default)' if {'transformer': 'model'}.get(r, r) == res['default'] else ''} | "
                      f"{m['ndcg@10']:.4f} [{m['ci'][0]:.4f}, {m['ci'][1]:.4f}] | {m['hr@10']:.4f} | {m['mrr']:.4f} |")
            print(f"default ({res['default']}) vs history: {row['default_vs_history'] * 100:+.1f}% NDCG@10", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
