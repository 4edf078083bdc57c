"""Quality on synth data: NDCG@10, HR@10 and MRR on the test window for popularity, history,
TIFU-KNN, the transformer, the blend and the two-stage ranker (95% bootstrap intervals), with the
recall of each candidate generator, at views-per-purchase 60 and 4000. The targets count against
the stronger of history and TIFU-KNN.

Variants (ablations) measure the design choices: the view loss on/off, the purchase weight
(1, 10, 100 = default, 1000), the repeat path on/off, carts as a weaker purchase signal, and the
learning-rate strategy for rare purchase signals (batches that always carry purchase targets, the
purchase head's own learning rate; --model-only reports them on valid and test). Run by hand
(CPU: tens of minutes for the default set; --set train.loss=sampled on a CPU):

    python benchmarks/bench_quality.py --rows 1000000 --vpp 60,4000
    python benchmarks/bench_quality.py --rows 1000000 --vpp 60 --variants default,no_view,pw1,pw10,pw1000,no_repeat,carts
    python benchmarks/bench_quality.py --rows 1000000 --vpp 60 --model-only --variants default,share50,head_lr3,share50_head_lr3
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
from purchasepred.pipeline import evaluate_run, refit_run
from purchasepred.train.trainer import Trainer

VARIANTS = {
    "default": [],
    "no_repeat": ["model.repeat_path=false"],
    "carts": ["train.cart_weight=30"],
    "pw1": ["train.purchase_weight=1"],
    "pw10": ["train.purchase_weight=10"],
    "pw1000": ["train.purchase_weight=1000"],
    "no_view": ["train.view_weight=0"],
    # the learning-rate strategy for rare purchase signals: batches that always carry purchase targets
    # (half of every batch from the chunks with purchase targets), the purchase head's own learning rate
    "share50": ["train.purchase_share=0.5"],
    "head_lr3": ["train.purchase_head_lr=3"],
    "share50_head_lr3": ["train.purchase_share=0.5", "train.purchase_head_lr=3"],
}
ROWS = ("popularity", "history", "tifu_knn", "transformer", "blend", "propensity", "two_stage")


def model_only_row(cfg, name: str, vpp: float, variant: str, train_s: float, summary, data: PreparedData,
                   refit_s: dict[str, float] | None = None) -> dict:
    """The transformer alone on valid (where a default is chosen) and on test, with 95% intervals;
    after a refit also on test with the model refit before the test window (``transformer_refit``)."""
    from purchasepred.eval.evaluate import build_window
    from purchasepred.eval.protocol import evaluate_scorer
    from purchasepred.eval.rankers import History, HistoryParams
    from purchasepred.pipeline import load_run, scoring_model

    run = load_run(cfg, name)
    row = {"vpp": vpp, "variant": variant, "train_s": round(train_s, 1), "epochs": summary.epochs_done,
           "refit_s": refit_s}
    for split in ("valid", "test"):
        w = build_window(run.data, split, cfg, run.model, run.device)
        row[f"{split}_buyers"] = int(len(w.split.truth_users))
        scorers = [("transformer", w.rankers["model"]),
                   ("history", History(w.events, w.popularity, w.cutoff_ts, HistoryParams()))]
        if refit_s and split == "test":
            refit = build_window(run.data, split, cfg, scoring_model(run, "test")[0], run.device)
            scorers.append(("transformer_refit", refit.rankers["model"]))
        for r, scorer in scorers:
            m = evaluate_scorer(scorer, w.split, [10], cfg.eval.bootstrap, cfg.eval.seed)
            row.setdefault(r, {})[split] = {"ndcg@10": m["ndcg@10"], "ci": m["ndcg@10_ci"], "hr@10": m["hr@10"],
                                            "mrr": m["mrr"]}
    v, t = row["transformer"]["valid"], row["transformer"]["test"]
    print(f"| {vpp:g} | {variant} | {v['ndcg@10']:.4f} [{v['ci'][0]:.4f}, {v['ci'][1]:.4f}] | "
          f"{t['ndcg@10']:.4f} [{t['ci'][0]:.4f}, {t['ci'][1]:.4f}] | {t['hr@10']:.4f} | {t['mrr']:.4f} | "
          f"{train_s:.0f}s |", flush=True)
    if refit_s:
        r = row["transformer_refit"]["test"]
        print(f"| {vpp:g} | {variant}, refit before test | | {r['ndcg@10']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] | "
              f"{r['hr@10']:.4f} | {r['mrr']:.4f} | refit {refit_s['test']:.0f}s (test) + {refit_s['all']:.0f}s (all) |",
              flush=True)
    return row


def train(cfg, data: PreparedData, name: str, run_dir: Path, work: Path, refit: bool):
    """Train the run from scratch (and refit it, as `run` does): (summary, training seconds, refit seconds)."""
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
        shutil.rmtree(work / "output" / name, ignore_errors=True)
    t0 = time.perf_counter()
    summary = Trainer(cfg, data, name).fit()
    train_s = time.perf_counter() - t0
    refit_s = None
    if refit:
        refit_s = {r.split: r.seconds for r in refit_run(cfg, name)}
        print(f"refit {name}: {refit_s} s (training before the valid window: {train_s:.0f} s)", flush=True)
    return summary, train_s, refit_s


def reused(run_dir: Path, refit: bool):
    """A trained run's (summary, training seconds, refit seconds) from its metadata."""
    from types import SimpleNamespace

    from purchasepred.checkpoint import read_metadata

    meta = read_metadata(run_dir)
    # the valid-window fit is what a change to the rankers changes: never reuse it
    (run_dir.parent.parent / "output" / run_dir.name / "ranker.json").unlink(missing_ok=True)
    epochs = meta["epochs"]
    summary = SimpleNamespace(epochs_done=meta["epochs_done"],
                              tokens_per_s=sum(e["tokens_per_s"] for e in epochs) / max(len(epochs), 1))
    recorded = meta.get("refits", {})
    if refit and not {"test", "all"} <= recorded.keys():
        raise SystemExit(f"--reuse --refit: {run_dir} has no recorded refits; run without --reuse")
    refit_s = {split: recorded[split]["seconds"] for split in ("test", "all")} if refit else None
    return summary, meta["timings"]["train_s"], refit_s


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
    p.add_argument("--refit", action="store_true",
                   help="after training, refit on the events before the test window and on all events (as `run` does) "
                        "and score the test window with the first; reports the refits' seconds")
    p.add_argument("--reuse", action="store_true",
                   help="score the run already trained in --workdir under these settings (its checkpoints and, with "
                        "--refit, its refits) instead of training it again: for a change to the rankers, which leaves "
                        "the transformer as it was; its training seconds are the recorded ones")
    p.add_argument("--model-only", action="store_true",
                   help="ablations: score only the transformer (and history with its default weights) on test, "
                        "without the valid-window fits of the other rankers")
    args = p.parse_args()
    if args.model_only:
        print("| vpp | variant | transformer valid NDCG@10 [95% CI] | test NDCG@10 [95% CI] | test HR@10 | test MRR | train |\n"
              "|---|---|---|---|---|---|---|", flush=True)
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
            if args.reuse and (run_dir / "metadata.json").is_file():
                summary, train_s, refit_s = reused(run_dir, args.refit)
                print(f"reusing the trained run {run_dir} (trained {train_s:.0f} s; refits {refit_s})", flush=True)
            else:
                summary, train_s, refit_s = train(cfg, data, name, run_dir, work, args.refit)
            if args.model_only:
                results.append(model_only_row(cfg, name, vpp, variant, train_s, summary, data, refit_s))
                continue
            t0 = time.perf_counter()
            res = evaluate_run(cfg, name).result
            print(f"evaluate {name}: {time.perf_counter() - t0:.0f} s; test scored with {res['model_checkpoint']}", flush=True)
            row = {"vpp": vpp, "variant": variant, "train_s": round(train_s, 1), "epochs": summary.epochs_done,
                   "refit_s": refit_s, "test_model": res["model_checkpoint"],
                   "tokens_per_s": round(summary.tokens_per_s), "default": res["default"],
                   "buyers": res["model"]["users"], "purchases_in_data": data.manifest["events_by_type"].get("purchase", 0)}
            bodies = {"popularity": res["baselines"]["popularity"], "history": res["baselines"]["history"],
                      "tifu_knn": res["baselines"]["tifu_knn"], "transformer": res["model"], "blend": res["blend"],
                      "propensity": res["propensity"], "two_stage": res["two_stage"]}
            for r, m in bodies.items():
                row[r] = {"ndcg@10": m["ndcg@10"], "ci": m["ndcg@10_ci"], "hr@10": m["hr@10"], "mrr": m["mrr"],
                          "new_items_ndcg@10": m["new_items"].get("ndcg@10")}
            d = res["default_metrics"]["ndcg@10"]
            best = max(("history", "tifu_knn"), key=lambda r: row[r]["ndcg@10"])
            default_row = row[{"model": "transformer"}.get(res["default"], res["default"])]
            row["default_vs_history"] = d / res["baselines"]["history"]["ndcg@10"] - 1
            row["best_baseline"] = best
            row["default_vs_best_baseline"] = d / row[best]["ndcg@10"] - 1
            row["intervals_overlap"] = bool(default_row["ci"][0] <= row[best]["ci"][1])
            row["candidates"] = res["candidates"]
            row["two_stage_learners"] = res["two_stage_learners"]
            results.append(row)
            print(f"\nvpp {vpp:g}, {variant}: {data.manifest['events_by_type']}, buyers in test {row['buyers']}, "
                  f"train {train_s:.0f}s, {summary.tokens_per_s:,.0f} tokens/s")
            print("| ranker | NDCG@10 [95% CI] | HR@10 | MRR |\n|---|---|---|---|")
            for r in ROWS:
                m = row[r]
                print(f"| {r}{' (default)' if {'transformer': 'model'}.get(r, r) == res['default'] else ''} | "
                      f"{m['ndcg@10']:.4f} [{m['ci'][0]:.4f}, {m['ci'][1]:.4f}] | {m['hr@10']:.4f} | {m['mrr']:.4f} |")
            print(f"default ({res['default']}) vs history: {row['default_vs_history'] * 100:+.1f}% NDCG@10; vs the "
                  f"stronger of history and TIFU-KNN ({best}): {row['default_vs_best_baseline'] * 100:+.1f}%, intervals "
                  f"{'overlap' if row['intervals_overlap'] else 'do not overlap'}")
            learners = res["two_stage_learners"]
            if learners:
                print(f"re-ranker learners (chosen on valid: {learners['chosen']}): valid out-of-fold NDCG@10 "
                      f"{learners['valid_oof_ndcg@10']}, test NDCG@10 {learners['test_ndcg@10']}")
            if res["candidates"]:
                print("| generator | N | recall valid | recall test | candidates per user |\n|---|---|---|---|---|")
                for g, v in res["candidates"]["valid"].items():
                    if g != "users":
                        t = res["candidates"]["test"][g]
                        print(f"| {g} | {v['n'] or 'all'} | {v['recall']:.4f} | {t['recall']:.4f} | {t['mean_candidates']:.0f} |")
            print(flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
