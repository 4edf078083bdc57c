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
    force: ForceOpt = False,
) -> None:
    """Generate a synthetic REES46-schema event log with learnable structure.

    Example: purchasepred synth demo.csv --rows 1000000 --views-per-purchase 4000
    """
    from purchasepred.data.synth import generate

    if schema not in ("rees46", "competition"):
        raise PurchasePredError(f"--schema must be rees46 or competition, got {schema!r}")
    _refuse_existing(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with ui.steps("synth") as step:
            s = generate(out, rows=rows, views_per_purchase=views_per_purchase, days=days, seed=seed,
                         schema=schema, progress=step)  # type: ignore[arg-type]
    except ValueError as err:
        raise PurchasePredError(str(err)) from None
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
    with ui.steps("prepare") as step:
        summary = run_prepare(raw, out, cfg.prepare, force=force, step=step)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
