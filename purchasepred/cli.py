"""Typer app: parse -> build config -> call one library function -> print one summary.

torch is imported inside the commands that need it, so `--help`, `synth` and `prepare` start fast.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from purchasepred import __version__
from purchasepred import console as ui
from purchasepred.errors import PurchasePredError
from purchasepred.paths import make_parents, remove_empty

app = typer.Typer(
    name="purchasepred",
    help="Predict which items each shopper will buy next, from a raw e-commerce event log.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file overriding configs/default.yaml.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any key: --set train.lr=0.001 (repeatable).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]


def _version(value: bool) -> None:
    if value:
        ui.console.print(f"purchasepred {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    ui.set_quiet(quiet)
    _state["debug"] = debug


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a PurchasePredError (or anything unexpected) into one red line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except PurchasePredError as err:
            if _state["debug"]:
                traceback.print_exc()
            ui.error(str(err))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            ui.error("interrupted")
            raise typer.Exit(130) from None
        except Exception as err:  # noqa: BLE001 - the last line of defence: one line, no traceback
            if _state["debug"]:
                traceback.print_exc()
            ui.error(f"unexpected {type(err).__name__}: {err}; rerun with --debug for the traceback and report it")
            raise typer.Exit(1) from None

    return wrapper


def _refuse_existing(path: Path, force: bool, flag: str = "--force") -> None:
    if path.exists() and not force:
        raise PurchasePredError(f"{path} already exists; pass {flag} to overwrite it or choose another path")
    if path.is_dir():
        raise PurchasePredError(f"{path} is a directory; give a file path")


@app.command()
@handle_errors
def synth(
    out: Annotated[Path, typer.Argument(help="CSV to write (.csv or .csv.gz).")],
    rows: Annotated[int, typer.Option(help="Rows to generate.")] = 200_000,
    views_per_purchase: Annotated[float, typer.Option(help="Views per purchase (real REES46 ~60; the headline case 4000).")] = 60.0,
    days: Annotated[int, typer.Option(help="Days the log spans.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed (output is deterministic for a seed).")] = 0,
    schema: Annotated[str, typer.Option(help="rees46 (product_id, category_id) or competition (item_id, no category_id).")] = "rees46",
    items: Annotated[Optional[int], typer.Option(help="Catalogue size (default: about one item per 250 rows).")] = None,
    force: ForceOpt = False,
) -> None:
    """Generate a synthetic REES46-schema event log with learnable structure.

    Example: purchasepred synth demo.csv --rows 1000000 --views-per-purchase 4000
    """
    from purchasepred.data.synth import generate

    if schema not in ("rees46", "competition"):
        raise PurchasePredError(f"--schema must be rees46 or competition, got {schema!r}")
    _refuse_existing(out, force)
    created = make_parents(out)
    try:
        with ui.steps("synth") as step:
            s = generate(out, rows=rows, views_per_purchase=views_per_purchase, days=days, seed=seed,
                         schema=schema, progress=step, items=items)  # type: ignore[arg-type]
    except ValueError as err:
        remove_empty(created)
        raise PurchasePredError(str(err)) from None
    except BaseException:
        remove_empty(created)
        raise
    ui.show(ui.summary_table(f"synth -> {s.path}", [
        ("rows", s.rows), ("users", s.n_users), ("items", s.n_items), ("sessions", s.n_sessions),
        ("events by type", s.events_by_type), ("from", str(s.start)), ("to", str(s.end)), ("seconds", s.seconds),
    ]))


@app.command()
@handle_errors
def prepare(
    raw: Annotated[list[str], typer.Argument(help="Raw event files or globs (.csv, .csv.gz, .parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Prepared dataset folder to create.")] = Path("prepared"),
    session_gap: Annotated[Optional[float], typer.Option(help="Minutes of inactivity that start a new session.")] = None,
    max_len: Annotated[Optional[int], typer.Option(help="Events per sequence.")] = None,
    min_item_count: Annotated[Optional[int], typer.Option(help="Items seen fewer times become 'unknown'.")] = None,
    eval_days: Annotated[Optional[float], typer.Option(help="Days in the test window and in the valid window (fractions allowed).")] = None,
    memory_limit: Annotated[Optional[str], typer.Option(help="DuckDB memory limit, e.g. 1GB (spills to disk beyond).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="DuckDB threads.")] = None,
    force: ForceOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Turn a raw event log into sessionized, encoded sequence tables (SQL files run in DuckDB).

    Example: purchasepred prepare 'logs/2019-Oct*.csv.gz' --out prepared --eval-days 7
    """
    from purchasepred.config import load_config
    from purchasepred.data.prepare import prepare as run_prepare

    cfg = load_config(config, {
        "prepare.session_gap_minutes": session_gap, "prepare.max_len": max_len,
        "prepare.min_item_count": min_item_count, "prepare.eval_days": eval_days,
        "prepare.memory_limit": memory_limit, "prepare.threads": threads,
    }, set_)
    ui.info(f"prepare settings: {cfg.prepare}")
    created = [] if out.exists() else make_parents(out)
    try:
        with ui.steps("prepare") as step:
            summary = run_prepare(raw, out, cfg.prepare, force=force, step=step)
    except BaseException:
        remove_empty(created)  # nothing partial: not even the empty parent folders of --out
        raise
    ui.show(prepare_table(summary.manifest, summary.out, summary.seconds))


def prepare_table(m: dict[str, Any], out: Path, seconds: float) -> Any:
    rows: list[tuple[str, Any]] = [
        ("rows read", m["rows_read"]),
        ("rejected", m["rows_rejected"]),
    ]
    rows += [(f"  rejected: {reason}", n) for reason, n in m["rejects_by_reason"].items()]
    rows += [
        ("exact duplicates removed", m["rows_duplicate"]),
        ("kept", m["rows_kept"]),
        ("repeat views collapsed", m["rows_collapsed"]),
        ("events", m["n_events"]),
        ("users", m["n_users"]),
        ("items (with an id / raw)", f"{m['n_items']:,} / {m['n_raw_items']:,}"),
        ("sessions", m["n_sessions"]),
        ("events by type", m["events_by_type"]),
        ("views per purchase", m["views_per_purchase"] if m["views_per_purchase"] is not None else "no purchases"),
    ]
    for split, w in m["windows"].items():
        rows.append((f"window {split}", f"{w['window_start']} .. {w['window_end']}  "
                     f"users with inputs {w['n_users_with_inputs']:,}, buyers {w['n_users_with_purchases']:,}"))
    rows.append(("seconds", seconds))
    return ui.summary_table(f"prepare -> {out}", rows)


def _run_name(given: Optional[str]) -> str:
    from datetime import datetime

    return given or datetime.now().strftime("run-%Y%m%d-%H%M%S")


@app.command()
@handle_errors
def train(
    data: Annotated[Optional[Path], typer.Option("--data", help="Prepared dataset folder.")] = None,
    purchase_weight: Annotated[Optional[float], typer.Option(help="Weight of the purchase loss (headline setting 100).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Total epochs (with --resume: the total to reach).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per step.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    run_name: Annotated[Optional[str], typer.Option(help="Run folder name (default: a timestamp).")] = None,
    loss: Annotated[Optional[str], typer.Option(help="full softmax, or sampled with log-Q correction.")] = None,
    negatives: Annotated[Optional[int], typer.Option(help="Negatives per step for --loss sampled.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue --run-name from its last.pt.")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model (CUDA).")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train the Transformer (view + purchase multi-task) on a prepared dataset.

    Example: purchasepred train --data prepared --purchase-weight 100 --epochs 8 --run-name demo
    """
    from purchasepred.config import dump_yaml, load_config
    from purchasepred.data.tensors import PreparedData
    from purchasepred.train.trainer import PurchasePred

    if resume and not run_name:
        raise PurchasePredError("--resume needs --run-name R (the run to continue)")
    cfg = load_config(config, {
        "train.data": str(data) if data else None, "train.purchase_weight": purchase_weight, "train.epochs": epochs,
        "train.batch_size": batch_size, "train.lr": lr, "train.device": device, "train.seed": seed,
        "train.loss": loss, "train.negatives": negatives, "train.compile": True if compile_ else None,
    }, set_)
    name = _run_name(run_name)
    if not ui.is_quiet():
        ui.console.print(f"[bold]resolved config[/] (run {name}):\n{dump_yaml(cfg)}")
    dataset = PreparedData(Path(cfg.train.data))
    trainer = PurchasePred(cfg, dataset, name)
    progress = ui.make_progress()
    with progress:
        bar: dict[str, Any] = {}

        def on_step(s: dict[str, Any]) -> None:
            if "id" not in bar or bar.get("epoch") != s["epoch"]:
                bar["id"] = progress.add_task(f"epoch {s['epoch'] + 1}/{cfg.train.epochs}", total=s["batches"], status="")
                bar["epoch"] = s["epoch"]
            if s["batch"] % 5 == 0 or s["batch"] == s["batches"]:
                progress.update(bar["id"], completed=s["batch"], status=(
                    f"view {s['view_loss']:.3f} buy {s['purchase_loss']:.3f} {s['tokens_per_s']:,.0f} tok/s lr {s['lr']:.2e}"))

        def on_epoch(st: Any) -> None:
            if ui.is_quiet():
                return
            progress.console.print(
                f"epoch {st.epoch}: view loss {st.view_loss:.4f}, purchase loss {st.purchase_loss:.4f}, "
                f"valid NDCG@10 {st.valid.get('ndcg@10', float('nan')):.4f}, HR@10 {st.valid.get('hr@10', float('nan')):.4f}, "
                f"{st.tokens_per_s:,.0f} tokens/s, {st.seconds:.1f}s")

        summary = trainer.fit(resume=resume, on_step=on_step, on_epoch=on_epoch)
    for note in summary.notes:
        ui.info(f"[yellow]note:[/] {note}")
    ui.show(ui.summary_table(f"train {summary.run_name}", [
        ("epochs done", summary.epochs_done),
        ("best epoch", summary.best_epoch if summary.best_epoch is not None else "-"),
        ("best valid NDCG@10", summary.best_valid_ndcg10 if summary.best_valid_ndcg10 is not None else "n/a (no valid purchases)"),
        ("wall time s", summary.seconds),
        ("tokens/s", summary.tokens_per_s),
        ("device", str(trainer.device)),
        ("checkpoint", str(summary.checkpoint)),
    ]))
    if summary.interrupted:
        again = _resume_command(summary.run_name, cfg.train.epochs, cfg.train.data, config, set_, {
            "--purchase-weight": purchase_weight, "--batch-size": batch_size, "--lr": lr, "--device": device,
            "--seed": seed, "--loss": loss, "--negatives": negatives,
        }, compile_)
        ui.error(f"training interrupted; checkpoint saved. Continue with: {again}")
        raise typer.Exit(130)


def _resume_command(run_name: str, epochs: int, data: str, config: Optional[Path], sets: Optional[list[str]],
                    flags: dict[str, Any], compile_: bool) -> str:
    """The train command that continues a run: the same data, config file, flags and --set values."""
    import shlex

    words = ["purchasepred", "train", "--run-name", run_name, "--data", data, "--epochs", str(epochs)]
    if config is not None:
        words += ["--config", str(config)]
    for flag, value in flags.items():
        if value is not None:
            words += [flag, str(value)]
    if compile_:
        words.append("--compile")
    for item in sets or []:
        if item.split("=", 1)[0].strip() not in ("train.epochs", "train.data", "train.run_name"):
            words += ["--set", item]
    words.append("--resume")
    return " ".join(shlex.quote(w) for w in words)


def _ks(value: Optional[str]) -> Optional[list[int]]:
    if value is None:
        return None
    try:
        ks = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise PurchasePredError(f"--k expects integers separated by commas such as 5,10,20, got {value!r}") from None
    if not ks or min(ks) < 1:
        raise PurchasePredError(f"--k values must be >= 1, got {value!r}")
    return ks


def metrics_tables(result: dict[str, Any]) -> list[Any]:
    ks = result["k"]
    rows = []
    order = [("popularity", result["baselines"]["popularity"]), ("history", result["baselines"]["history"]),
             ("transformer", result["model"]), ("blend", result["blend"])]
    order += [(name, result["baselines"][name]) for name in ("tifu_knn",) if name in result["baselines"]]
    order += [("two_stage", result["two_stage"])] if "two_stage" in result else []
    for name, m in order:
        row: list[Any] = [name + (" (default)" if result["default"] == {"transformer": "model"}.get(name, name) else "")]
        for k in ks:
            lo, hi = m[f"ndcg@{k}_ci"]
            row += [f"{m[f'ndcg@{k}']:.4f} [{lo:.4f}, {hi:.4f}]", m[f"hr@{k}"]]
        row += [m["mrr"], m["users"]]
        rows.append(row)
    cols = ["ranker"] + [c for k in ks for c in (f"NDCG@{k} [95% CI]", f"HR@{k}")] + ["MRR", "users"]
    k0 = ks[0]
    brows = []
    for name, m in order:
        brows.append([name] + [m.get(b, {}).get(f"ndcg@{k0}", float("nan")) if m.get(b, {}).get("users") else float("nan")
                               for b in ("with_history", "without_history", "seen_items", "new_items")])
    first = result["model"]
    bcols = [f"NDCG@{k0} by segment",
             f"users with history ({first['with_history']['users']})",
             f"without ({first['without_history']['users']})",
             f"seen items ({first['seen_items']['users']})",
             f"new items ({first['new_items']['users']})"]
    c = result["calibration"]
    crow = [["purchase_probability (Platt, fitted on valid)", c["ece"], c["brier"], c["ece_uncalibrated"], c["brier_uncalibrated"], c["pairs"]]]
    tables = []
    if result.get("candidates"):
        windows = [w for w in result["candidates"] if w != "valid"] + ["valid"]
        gens = [g for g in result["candidates"]["valid"] if g != "users"]
        crows_ = [[g, result["candidates"]["valid"][g]["n"] or "all"]
                  + [f"{result['candidates'][w][g]['recall']:.3f} ({result['candidates'][w][g]['mean_candidates']:.0f})"
                     for w in windows] for g in gens]
        tables.append(ui.grid_table("candidate recall (mean candidates per user)", ["generator", "N", *windows], crows_))
    return [
        ui.grid_table(f"evaluate {result['run']} on the {result['split']} window {result['window']['start']} .. {result['window']['end']}", cols, rows),
        ui.grid_table("breakdowns", bcols, brows),
        ui.grid_table("calibration", ["", "ECE", "Brier", "ECE raw", "Brier raw", "pairs"], crow),
        *tables,
    ]


def _verdict(result: dict[str, Any]) -> str:
    k = result["k"][0]
    m, h = result["model"][f"ndcg@{k}"], result["baselines"]["history"][f"ndcg@{k}"]
    d = result["default_metrics"][f"ndcg@{k}"]
    msg = (f"transformer {'beats' if m > h else 'does NOT beat'} the history baseline on NDCG@{k} ({m:.4f} vs {h:.4f}); "
           f"default ranker '{result['default']}' (chosen on valid) scores {d:.4f} ({(d / h - 1) * 100 if h else float('nan'):+.1f}% vs history)")
    return msg


@app.command()
@handle_errors
def evaluate(
    run: Annotated[str, typer.Option("--run", help="Run name (a folder under checkpoints/).")],
    k: Annotated[Optional[str], typer.Option("--k", help="Cutoffs, e.g. 5,10,20.")] = None,
    split: Annotated[str, typer.Option("--split", help="test or valid.")] = "test",
    data: Annotated[Optional[Path], typer.Option("--data", help="Prepared dataset (default: the one the run was trained on).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """NDCG@K, HR@K and MRR of the transformer, the blend and the baselines (full-catalog ranking).

    Example: purchasepred evaluate --run demo --k 5,10,20
    """
    from purchasepred.config import load_config
    from purchasepred.pipeline import evaluate_run

    if split not in ("test", "valid"):
        raise PurchasePredError(f"--split must be test or valid, got {split!r}")
    cfg = load_config(config, {"eval.k": _ks(k)}, set_)
    with ui.steps("evaluate") as step:
        result, path = evaluate_run(cfg, run, split, cfg.eval.k, data, log=step)
    for table in metrics_tables(result):
        ui.show(table)
    ui.info(_verdict(result))
    ui.info(f"metrics written to {path}")


@app.command()
@handle_errors
def export(
    run: Annotated[str, typer.Option("--run", help="Run name (a folder under checkpoints/).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="CSV to write (default output/RUN/recommendations.csv).")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Items per user.")] = None,
    filter_seen: Annotated[bool, typer.Option("--filter-seen", help="Leave out items the user already interacted with.")] = False,
    force: ForceOpt = False,
    data: Annotated[Optional[Path], typer.Option("--data", help="Prepared dataset (default: the one the run was trained on).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write the top-K items for every user (user_id,item_id,rank,score,source,purchase_probability).

    Example: purchasepred export --run demo --k 10 --out recs.csv
    """
    from purchasepred.config import load_config
    from purchasepred.pipeline import export_run

    cfg = load_config(config, {"export.k": k, "export.filter_seen": True if filter_seen else None}, set_)
    progress = ui.make_progress()
    with progress:
        task: dict[str, Any] = {}

        def on_progress(done: int, total: int) -> None:
            if "id" not in task:
                task["id"] = progress.add_task("export users", total=total, status="")
            progress.update(task["id"], completed=done)

        summary = export_run(cfg, run, out, cfg.export.k, cfg.export.filter_seen, force, data,
                             log=lambda m: progress.console.print(m) if not ui.is_quiet() else None, progress=on_progress)
    ui.show(export_table(summary))


def export_table(summary: Any) -> Any:
    return ui.summary_table(f"export -> {summary.path}", [
        ("users", summary.users), ("rows", summary.rows), ("k", summary.k),
        ("users by source", summary.by_source), ("seconds", summary.seconds),
    ])


@app.command("run")
@handle_errors
def run_all(
    raw: Annotated[Optional[list[str]], typer.Argument(help="Raw event files or globs; none: generate the demo dataset.")] = None,
    run_name: Annotated[Optional[str], typer.Option(help="Run name (default 'demo' without RAW, else a timestamp).")] = None,
    rows: Annotated[int, typer.Option(help="Demo dataset rows (without RAW).")] = 300_000,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
    purchase_weight: Annotated[Optional[float], typer.Option(help="Weight of the purchase loss.")] = None,
    eval_days: Annotated[Optional[float], typer.Option(help="Days per evaluation window.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run of this name.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """prepare -> train -> evaluate -> export in one command, with one summary.

    Example: purchasepred run            (the bundled synthetic demo, a few minutes on a laptop CPU)
    """
    import shutil

    from purchasepred.config import load_config
    from purchasepred.data.prepare import prepare as run_prepare
    from purchasepred.data.synth import generate
    from purchasepred.data.tensors import PreparedData
    from purchasepred.pipeline import evaluate_run, export_run, write_summary
    from purchasepred.train.trainer import PurchasePred, run_paths

    name = run_name or ("demo" if not raw else _run_name(None))
    cfg = load_config(config, {"train.epochs": epochs, "train.purchase_weight": purchase_weight,
                               "prepare.eval_days": eval_days}, set_)
    run_dir, out_dir = run_paths(cfg, name)
    if run_dir.exists() or out_dir.exists():
        if not force:
            raise PurchasePredError(f"run {name!r} exists ({run_dir} / {out_dir}); pass --force to replace it or choose --run-name")
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    inputs = list(raw or [])
    with ui.steps(f"run {name}") as step:
        if not inputs:
            step("synth demo data")
            demo = out_dir / "demo_events.csv"
            generate(demo, rows=rows, views_per_purchase=60.0, days=30, seed=cfg.train.seed)
            inputs = [str(demo)]
        step("prepare")
        prepared = out_dir / "prepared"
        prep = run_prepare(inputs, prepared, cfg.prepare, force=False)
        cfg.train.data = str(prepared)
        step("train")
        trainer = PurchasePred(cfg, PreparedData(prepared), name)
        summary = trainer.fit(on_epoch=lambda st: ui.info(
            f"  epoch {st.epoch}: view {st.view_loss:.4f} buy {st.purchase_loss:.4f} valid NDCG@10 "
            f"{st.valid.get('ndcg@10', float('nan')):.4f} ({st.tokens_per_s:,.0f} tokens/s)"))
        step("evaluate")
        result, metrics_path = evaluate_run(cfg, name, "test", cfg.eval.k)
        step("export")
        exp = export_run(cfg, name)
    ui.show(prepare_table(prep.manifest, prep.out, prep.seconds))
    for table in metrics_tables(result):
        ui.show(table)
    ui.show(export_table(exp))
    k0 = cfg.eval.k[0]
    summary_json = {
        "run": name, "inputs": inputs, "prepared": str(prepared),
        "rows_read": prep.manifest["rows_read"], "rows_rejected": prep.manifest["rows_rejected"],
        "epochs_done": summary.epochs_done, "best_valid_ndcg@10": summary.best_valid_ndcg10,
        "train_seconds": summary.seconds, "tokens_per_s": summary.tokens_per_s,
        "test": {r: (result["baselines"][r] if r in ("popularity", "history") else result[r])[f"ndcg@{k0}"]
                 for r in ("popularity", "history", "model", "blend")},
        "default": result["default"], "metrics": str(metrics_path), "recommendations": str(exp.path),
    }
    write_summary(out_dir / "run_summary.json", summary_json)
    ui.show(ui.summary_table(f"run {name}", [
        ("rows read / rejected", f"{prep.manifest['rows_read']:,} / {prep.manifest['rows_rejected']:,}"),
        ("epochs, best valid NDCG@10", f"{summary.epochs_done}, "
         + (f"{summary.best_valid_ndcg10:.4f}" if summary.best_valid_ndcg10 is not None else "n/a")),
        (f"test NDCG@{k0} popularity / history", f"{summary_json['test']['popularity']:.4f} / {summary_json['test']['history']:.4f}"),
        (f"test NDCG@{k0} transformer / blend", f"{summary_json['test']['model']:.4f} / {summary_json['test']['blend']:.4f}"),
        ("default ranker (chosen on valid)", result["default"]),
        ("metrics", str(metrics_path)), ("recommendations", str(exp.path)), ("checkpoint", str(summary.checkpoint)),
    ]))
    ui.info(_verdict(result))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
