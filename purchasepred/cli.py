"""Typer app: parse -> build config -> call one library function -> print one summary.

torch is imported inside the commands that need it, so `--help`, `synth` and `prepare` start fast.
"""

from __future__ import annotations

import atexit
import functools
import gc
import json
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from typer import _click
from typer.core import TyperGroup

from purchasepred import __version__
from purchasepred import console as ui
from purchasepred.config import Config
from purchasepred.errors import Interrupted, PurchasePredError
from purchasepred.fileio import check_new_output, make_parents, remove_empty

def _usage_message(message: str) -> str:
    """A usage error as the user should read it: without pydantic's "Value error, " (typer checks choices
    through pydantic), with the closest choice to a mistyped one ("did you mean 'taobao'?"), and an unknown
    option with the one option it is close to, not click's list of loosely alike ones."""
    import difflib
    import re

    message = message.replace(": Value error, ", ": ")
    unknown = re.fullmatch(r"No such option: (\S+) \(Possible options: ([^)]*)\)", message)
    if unknown:  # (click lists what is loosely alike: --quiet and --set for --out; keep only a close one)
        options = unknown[2].split(", ")
        close = [o for o in options if o.startswith(unknown[1])] or difflib.get_close_matches(unknown[1], options, n=1, cutoff=0.75)
        return f"No such option: {unknown[1]}" + (f"; did you mean {close[0]}?" if close else "")
    found = re.search(r"'([^']*)' is not one of ((?:'[^']*'(?:, )?)+)", message)
    if found:
        close = difflib.get_close_matches(found[1].lower(), re.findall(r"'([^']*)'", found[2]), n=1, cutoff=0.75)
        if close:
            message = message.rstrip(".") + f"; did you mean '{close[0]}'?"
    return message


class OneLineErrors(TyperGroup):
    """Usage errors (an unknown option, a value not among the choices) as one red line naming the
    value and the help to read, exit code 2, instead of click's framed box."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _click.exceptions.NoArgsIsHelpError:
            return super().main(args, prog_name, complete_var, standalone_mode=True, **extra)
        except _click.exceptions.UsageError as err:
            where = f" (see {err.ctx.command_path} --help)" if err.ctx is not None else ""
            ui.error(_usage_message(" ".join(err.format_message().split())) + where)
            raise SystemExit(err.exit_code) from None
        raise SystemExit(rv if isinstance(rv, int) else 0)

    def get_help_option(self, ctx: Any) -> Any:
        return _switch(super().get_help_option(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _switch(command.get_help_option(ctx))
        return command


def _switch(option: Any) -> Any:
    """--help is a switch: shown without a '<bool>' metavar, as the other switches."""
    if option is not None:
        option.metavar = ""
    return option


app = typer.Typer(
    name="purchasepred",
    cls=OneLineErrors,
    help="Predict which items each shopper will buy next, from a raw e-commerce event log.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}
_DEFAULTS = Config()


def default(key: str) -> str:
    """' (default X)' for a config-backed flag, read from the dataclass defaults."""
    section, name = key.split(".")
    value = getattr(getattr(_DEFAULTS, section), name)
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return f" \\[default: {value}]"


def _set_quiet(value: bool) -> bool:
    if value:
        ui.set_quiet(True)
    return value


def _set_debug(value: bool) -> bool:
    if value:
        _state["debug"] = True
    return value


def _version(value: bool) -> None:
    if value:
        ui.console.print(f"purchasepred {__version__}")
        raise typer.Exit()


# accepted before or after the subcommand: `purchasepred -q train` and `purchasepred train -q`
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.", callback=_set_quiet,
                                        is_eager=True, expose_value=False, metavar="")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Tracebacks on errors; the full resolved config.",
                                        callback=_set_debug, is_eager=True, expose_value=False, metavar="")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file overriding configs/default.yaml.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any key: --set train.lr=0.001 (repeatable).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output.", metavar="")]
RunOpt = Annotated[Optional[str], typer.Option("--run", help="Run name (a folder under checkpoints/) \\[default: the latest run].")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Prepared dataset \\[default: the one the run was trained on].")]


class SynthSchema(str, Enum):
    rees46 = "rees46"
    competition = "competition"


class InputSchema(str, Enum):
    """prepare --schema: the input presets (config.SchemaName, purchasepred.data.inputs.PRESETS)."""

    rees46 = "rees46"
    competition = "competition"
    retailrocket = "retailrocket"
    taobao = "taobao"
    tianchi = "tianchi"


class Split(str, Enum):
    test = "test"
    valid = "valid"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Loss(str, Enum):
    full = "full"
    sampled = "sampled"


def _value(choice: Optional[Enum]) -> Optional[str]:
    return None if choice is None else str(choice.value)


@app.callback()
def _root(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.", metavar="")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Tracebacks on errors; the full resolved config.",
                                        metavar="")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.",
                                          metavar="")] = False,
) -> None:
    """Commands: synth, prepare, train, evaluate, export, run (all four). Each has --help with an example."""
    # each invocation starts from what was given here; the command's own -q adds to it. Under torchrun
    # rank 0 alone reports.
    ui.set_quiet(quiet or os.environ.get("RANK", "0") != "0")
    _state["debug"] = debug


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a PurchasePredError (or anything unexpected) into one red line and exit 1 (130 for Ctrl-C)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Interrupted as err:
            ui.error(f"{err}. Continue with: {err.command}" if err.command else str(err))
            raise typer.Exit(err.exit_code) from None
        except PurchasePredError as err:
            if _state["debug"]:
                traceback.print_exc()
            ui.error(str(err))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            ui.error("interrupted")
            raise typer.Exit(130) from None
        except RuntimeError as err:
            if str(err) != "Query interrupted":  # (DuckDB's Ctrl-C during a query on the calling thread)
                _unexpected(err)
            ui.error("interrupted")
            raise typer.Exit(130) from None
        except Exception as err:  # noqa: BLE001 - the last line of defence: one line, no traceback
            _unexpected(err)

    return wrapper


def _unexpected(err: Exception) -> NoReturn:
    """An error no command expects: one line (its traceback with --debug), exit 1."""
    if _state["debug"]:
        traceback.print_exc()
    ui.error(f"unexpected {type(err).__name__}: {err}; rerun with --debug for the traceback and report it")
    raise typer.Exit(1) from None


def _command_line(words: list[str], config: Optional[Path], sets: Optional[list[str]], flags: dict[str, Any],
                  switches: dict[str, bool], drop_sets: tuple[str, ...] = ()) -> str:
    """A command line that repeats the user's config file, flags and --set values."""
    if config is not None:
        words += ["--config", str(config)]
    for flag, value in flags.items():
        if value is not None:
            words += [flag, str(value.value if isinstance(value, Enum) else value)]
    for item in sets or []:
        if item.split("=", 1)[0].strip() not in drop_sets:
            words += ["--set", item]
    words += [flag for flag, on in switches.items() if on]
    return " ".join(shlex.quote(w) for w in words)


# ------------------------------------------------------------------------------------------ synth
@app.command()
@handle_errors
def synth(
    out: Annotated[Path, typer.Argument(help="CSV to write (.csv or .csv.gz).")],
    rows: Annotated[int, typer.Option(help="Rows to generate.")] = 200_000,
    views_per_purchase: Annotated[float, typer.Option(help="Views per purchase (real REES46 ~60; the headline case 4000).")] = 60.0,
    days: Annotated[int, typer.Option(help="Days the log spans.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed (output is deterministic for a seed).")] = 0,
    schema: Annotated[SynthSchema, typer.Option(
        help="rees46 (product_id, category_id) or competition (item_id, no category_id).")] = SynthSchema.rees46,
    items: Annotated[Optional[int], typer.Option(help="Catalogue size \\[default: about one item per 250 rows].")] = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Generate a synthetic REES46-schema event log with learnable structure.

    Example: purchasepred synth demo.csv --rows 1000000 --views-per-purchase 4000
    """
    from purchasepred.data.synth import generate

    check_new_output(out, force, flag="OUT")
    created = make_parents(out)
    try:
        with ui.steps("synth") as step:
            s = generate(out, rows=rows, views_per_purchase=views_per_purchase, days=days, seed=seed,
                         schema=schema.value, progress=step, items=items)  # type: ignore[arg-type]
    except ValueError as err:
        remove_empty(created)
        raise PurchasePredError(str(err)) from None
    except BaseException:
        remove_empty(created)
        raise
    ui.show(ui.summary_table(f"synth -> {s.path}", [
        ("rows", s.rows), ("users", s.n_users), ("items", s.n_items), ("sessions", s.n_sessions),
        ("events by type", s.events_by_type), ("from", str(s.start)), ("to", str(s.end)), ("seconds", f"{s.seconds:.1f}"),
    ]))


# ------------------------------------------------------------------------------------------ prepare
EVAL_DAYS_HELP = ("Days in the test window and in the valid window (fractions allowed), or auto: chosen from the "
                  "log's span and purchase times.")


def runs_trained_on(cfg: Config, data: Path) -> list[str]:
    """Names of the runs in checkpoints/ whose metadata.json names ``data`` as their dataset."""
    names = []
    for meta_path in sorted(Path(cfg.train.checkpoints_dir).glob("*/metadata.json")):
        try:
            recorded = json.loads(meta_path.read_text()).get("dataset", {}).get("path")
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        if recorded and Path(recorded).resolve() == data.resolve():
            names.append(meta_path.parent.name)
    return names


@contextmanager
def numpy_blas_threads_off() -> Iterator[None]:
    """numpy's own OpenBLAS (the one its wheels bundle) starts a thread per further core when numpy is
    imported, and each spins for about 0.1 s waiting for work: 0.12 CPU-s of an `import numpy` on this
    project's 2-core box (0.22 against 0.10 s user), taken from DuckDB's threads in prepare, which does no
    matrix products. Where numpy is not imported yet and OPENBLAS_NUM_THREADS is not set, it is set to 1
    while the command's prepare runs (its threads import numpy), and removed after, when they have ended, so
    that a process that goes on to import torch (a test run, a caller of the app) keeps torch's own BLAS
    threads. `run` does not set it: it imports torch within the call."""
    if "numpy" in sys.modules or "OPENBLAS_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        os.environ.pop("OPENBLAS_NUM_THREADS", None)


@app.command()
@handle_errors
def prepare(
    raw: Annotated[list[str], typer.Argument(help="Raw event files or globs (.csv, .tsv, .parquet, .jsonl, .ndjson, .json; .gz, .zst).")],
    out: Annotated[Path, typer.Option("--out", help="Prepared dataset folder to create.")] = Path("prepared"),
    session_gap: Annotated[Optional[float], typer.Option(
        help="Minutes of inactivity that start a new session." + default("prepare.session_gap_minutes"))] = None,
    max_len: Annotated[Optional[int], typer.Option(help="Events per sequence." + default("prepare.max_len"))] = None,
    min_item_count: Annotated[Optional[int], typer.Option(
        help="Items seen fewer times become 'unknown'." + default("prepare.min_item_count"))] = None,
    eval_days: Annotated[Optional[str], typer.Option(help=EVAL_DAYS_HELP + default("prepare.eval_days"))] = None,
    memory_limit: Annotated[Optional[str], typer.Option(
        help="DuckDB memory limit: a share of RAM such as 50% or a size such as 1GB; spills to --temp-dir beyond."
        + default("prepare.memory_limit"))] = None,
    threads: Annotated[Optional[int], typer.Option(help="DuckDB threads \\[default: all cores].")] = None,
    temp_dir: Annotated[Optional[Path], typer.Option(
        help="Folder for DuckDB's spill files \\[default: a hidden folder next to --out].")] = None,
    schema: Annotated[Optional[InputSchema], typer.Option(
        help="Input preset (rees46 and competition are also detected by header); map any other log with "
        "--set input.user=COLUMN ... (README: input mapping).")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Try the input mapping on the first 10,000 records of each file: what is valid, what "
        "fails and the --set that fixes it. Prepares and writes nothing; exit 1 when a file has no valid record.",
        metavar="",
    )] = False,
    force: ForceOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Turn a raw event log into sessionized, encoded sequence tables (SQL files run in DuckDB).

    Example: purchasepred prepare 'logs/2019-Oct*.csv.gz' --out prepared --eval-days 7
    Example: purchasepred prepare UserBehavior.csv --schema taobao --out prepared
    """
    from purchasepred.config import load_config
    from purchasepred.data.prepare import prepare as run_prepare

    cfg = load_config(config, {
        "prepare.session_gap_minutes": session_gap, "prepare.max_len": max_len,
        "prepare.min_item_count": min_item_count, "prepare.eval_days": eval_days,
        "prepare.memory_limit": memory_limit, "prepare.threads": threads,
        "prepare.temp_dir": str(temp_dir) if temp_dir is not None else None, "input.schema": _value(schema),
    }, set_)
    ui.info(_prepare_line(cfg))
    if check:
        _check_mapping(raw, cfg)
        return
    trained = runs_trained_on(cfg, out) if force and out.exists() else []
    created = [] if out.exists() else make_parents(out)
    try:
        with ui.steps("prepare") as step, numpy_blas_threads_off():
            summary = run_prepare(raw, out, cfg.prepare, force=force, step=step, need_buyers_in=("valid",),
                                  input_cfg=cfg.input, step_progress=step.progress)
    except BaseException:
        remove_empty(created)  # nothing partial: not even the empty parent folders of --out
        raise
    ui.show(prepare_table(summary.manifest, summary.out, summary.seconds))
    for warning in summary.manifest.get("warnings", []):
        ui.warn(warning)
    if trained:
        ui.warn(f"{out} was replaced, and run(s) {', '.join(trained)} were trained on the old data: evaluate and "
                "export will refuse them until it is prepared again from the same files and settings (their "
                "config.yaml records them), or train new runs")


def _prepare_line(cfg: Config) -> str:
    """prepare's settings and input mapping in one line, written as the options and --set values that give
    them (what a user can copy into another command, shell-quoted), not as Python objects."""
    from purchasepred.data.inputs import setting

    p = cfg.prepare
    days = p.eval_days if isinstance(p.eval_days, str) else f"{p.eval_days:g}"
    settings = (f"--session-gap {p.session_gap_minutes:g} --max-len {p.max_len} --min-item-count {p.min_item_count} "
                f"--eval-days {days} --memory-limit {p.memory_limit or 'none (DuckDB: 80% of RAM)'}"
                + (f" --threads {p.threads}" if p.threads else " (threads: all cores)")
                + (f" --temp-dir {shlex.quote(str(p.temp_dir))}" if p.temp_dir else ""))
    mapping = {k: v for k, v in vars(cfg.input).items() if v is not None}
    words = [f"--schema {mapping.pop('schema')}"] if "schema" in mapping else []
    words += [setting(k, _flow(v)) for k, v in mapping.items()]  # (shell-quoted: a line to copy)
    return f"prepare: {settings}; input: {' '.join(words) or 'detected from the header'}"


def _flow(value: Any) -> str:
    """A --set value in one line: a list or table as YAML ([pv, buy], {match: a.csv, event: view}), a plain
    word as it is, any other text quoted with its escapes ("\\t", "a b"), a number or true/false as YAML."""
    import yaml

    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**9).strip()
    if isinstance(value, str) and value.isprintable() and not any(c in value for c in " ,:[]{}#'\"") and value:
        return value
    return json.dumps(value, ensure_ascii=False)


def _check_mapping(raw: list[str], cfg: Config) -> None:
    """``prepare --check``: each file's sample under the mapping, as a table and warnings with the fixes."""
    from purchasepred.data.prepare import HINT_SHARE, SAMPLE_ROWS, check_inputs, latin1_hint

    samples = check_inputs(raw, cfg.input, SAMPLE_ROWS)
    for s in samples:
        m = s["mapping"]
        rows: list[tuple[str, Any]] = [
            ("mapping from", m.get("from", "the input keys")),
            ("schema", s["schema"]),
            ("columns", ", ".join(f"{canon} <- {col}" for canon, col in m["columns"].items())),
            ("time format", m["time_format"] + (f", times without a zone in {m['time_zone']}" if m.get("time_zone") else "")),
            ("events", f"every row: {m['event']} (input.event)" if m.get("event") else
             ", ".join(f"{raw_value} -> {event}" for raw_value, event in m["events"].items())),
            {"csv": ("delimiter / encoding / decimal", f"{m['delimiter']!r} / {m['encoding']} / {m['decimal_separator']!r}"),
             "json": ("format / encoding / decimal", f"JSON lines / {m['encoding']} / {m['decimal_separator']!r}"),
             "parquet": ("format / decimal", f"Parquet / {m['decimal_separator']!r}")}[s["format"]],
            *([("no value", ", ".join(repr(v) for v in m["null_values"]) + " (input.null_values)")]
              if m.get("null_values") else []),
            ("records sampled", s["records"]),
            ("valid", s["valid"]),
            ("ignored (by the mapping)", s["ignored"]),
        ]
        unreadable = s["unreadable_lines"]
        could_not = "lines the reader could not " + ("read" if s["format"] == "json" else "split")
        if unreadable is None:  # (the reader names them only after reading the whole file)
            rows.append((could_not, "not counted: the file is longer than the sample"))
        else:
            rows.append((could_not, sum(unreadable.values())))
            rows += [(f"  unreadable: {reason}", n) for reason, n in unreadable.items()]
        rows += [(f"  rejected: {reason}", _with_examples(r["n"], [repr(v[:40]) for v in r["examples"]]))
                 for reason, r in s["rejected"].items()]
        what = s["path"] + (f" .. {s['last_path']} ({s['files']:,} files)" if s.get("files", 1) > 1 else "")
        ui.show(ui.summary_table(f"prepare --check {what} (first {SAMPLE_ROWS:,} records)", rows))
        # as prepare warns: a fixable reason of at least HINT_SHARE of the records (one broken time among
        # thousands is a broken time, not a format to change)
        for reason, r in s["rejected"].items():
            if r["hint"] and r["n"] >= HINT_SHARE * max(s["records"], 1):
                ui.warn(f"{s['path']}: {r['n']:,} of {s['records']:,} sampled records rejected: {reason}; {r['hint']}")
        if unreadable and unreadable.get("invalid utf-8"):
            ui.warn(f"{s['path']}: {unreadable['invalid utf-8']:,} line(s) are not UTF-8; {latin1_hint(m.get('from'))}")
        for advice in s.get("null_like", []):
            ui.warn(f"{s['path']}: {advice}")
    bad = [s["path"] for s in samples if s["valid"] == 0]
    if bad:
        ui.error(f"no valid record in the first {SAMPLE_ROWS:,} of {', '.join(bad)}; fix the mapping (see above) "
                 "and run --check again")
        raise typer.Exit(1)


def _when(value: str) -> str:
    """'2019-10-01 02:49:59.000001' -> '2019-10-01 02:49:59' (window ends are exclusive by 1 us)."""
    return str(value).split(".")[0]


def prepare_table(m: dict[str, Any], out: Path, seconds: float) -> Any:
    from purchasepred.data.inputs import quoted
    from purchasepred.data.windows import duration

    rows: list[tuple[str, Any]] = [
        ("rows read", m["rows_read"]),
        ("rejected", m["rows_rejected"]),
    ]
    examples = m.get("reject_examples", {})
    rows += [(f"  rejected: {reason}", _with_examples(n, [f"{v[:40]!r} {k:,}" for v, k in examples.get(reason, {}).items()]))
             for reason, n in m["rejects_by_reason"].items()]
    if m.get("rows_ignored"):
        rows.append(("ignored (by the mapping)", m["rows_ignored"]))
        # (the raw event value, quoted: Tianchi's favourite is '2', which alone read like a count)
        rows += [(f"  ignored: event value {quoted(value)}", n) for value, n in m["ignored_by_value"].items()]
    vpp = m["views_per_purchase"]
    rows += [
        ("exact duplicates removed", m["rows_duplicate"]),
        ("kept", m["rows_kept"]),
        ("repeat views collapsed", m["rows_collapsed"]),
        ("events", m["n_events"]),
        ("users", m["n_users"]),
        ("items (with an id / raw)", f"{m['n_items']:,} / {m['n_raw_items']:,}"),
        ("sessions", m["n_sessions"]),
        ("events by type", m["events_by_type"]),
        ("views per purchase", f"{vpp:,.1f}" if vpp is not None else "no purchases"),
    ]
    choice = m.get("eval_days_choice")
    if choice:
        rows.append(("eval days", f"{choice['chosen']:g} ({duration(choice['chosen'] * 86400)}) - {choice['why']}"))
    for split, w in m["windows"].items():
        # ("all": the window after the log that export predicts, from every event: no buyers yet)
        label = "window all (next, for export)" if split == "all" else f"window {split}"
        buyers = "" if split == "all" else f", buyers {w['n_users_with_purchases']:,}"
        rows.append((label, f"{_when(w['window_start'])} .. {_when(w['window_end'])}  "
                     f"users with inputs {w['n_users_with_inputs']:,}{buyers}"))
    rows += [(f"  step {s['step']}", step_line(s)) for s in m.get("steps", [])]
    rows.append(("seconds", f"{seconds:.1f}"))
    return ui.summary_table(f"prepare -> {out}", rows)


def _with_examples(n: int, shown: list[str]) -> Any:
    """A reject count, with the first 3 of its commonest failing values as shown when there are any:
    "1,200 (e.g. 'wishlist' 1,000, 'x' 200)"."""
    return f"{n:,} (e.g. {', '.join(shown[:3])})" if shown else n


def step_line(s: dict[str, Any]) -> str:
    """'4.41 s, 8,000,000 rows, peak 2,101 MB, spilled 812 MB' (what a manifest's step has of these)."""
    parts = [f"{s['seconds']:.2f} s"]
    if s.get("rows") is not None:
        parts.append(f"{s['rows']:,} rows")
    if s.get("peak_rss_mb") is not None:
        parts.append(f"peak {s['peak_rss_mb']:,} MB")
    if s.get("spill_mb"):
        parts.append(f"spilled {s['spill_mb']:,} MB")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------ train
def _run_name(given: Optional[str]) -> str:
    return given or datetime.now().strftime("run-%Y%m%d-%H%M%S")


def _config_line(cfg: Config, name: str) -> str:
    t, m = cfg.train, cfg.model
    return (f"run {name}: data {t.data}, {t.epochs} epochs, batch {t.batch_size}, lr {t.lr:g}, purchase weight "
            f"{t.purchase_weight:g}, loss {t.loss}, device {t.device}, model d{m.d_model} x {m.n_layers} layers "
            "(--debug prints the whole config)")


@app.command()
@handle_errors
def train(
    data: Annotated[Optional[Path], typer.Option("--data", help="Prepared dataset folder." + default("train.data"))] = None,
    purchase_weight: Annotated[Optional[float], typer.Option(
        help="Weight of the purchase loss." + default("train.purchase_weight"))] = None,
    epochs: Annotated[Optional[int], typer.Option(
        help="Total epochs (with --resume: the total to reach)." + default("train.epochs"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per step." + default("train.batch_size"))] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate." + default("train.lr"))] = None,
    device: Annotated[Optional[Device], typer.Option(help="cuda > mps > cpu for auto." + default("train.device"))] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed." + default("train.seed"))] = None,
    run_name: Annotated[Optional[str], typer.Option(help="Run folder name \\[default: a timestamp].")] = None,
    loss: Annotated[Optional[Loss], typer.Option(help="Full softmax, or sampled with log-Q correction." + default("train.loss"))] = None,
    negatives: Annotated[Optional[int], typer.Option(help="Negatives per step for --loss sampled." + default("train.negatives"))] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue --run-name from its last.pt.", metavar="")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model (CUDA).", metavar="")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train the Transformer (view + purchase multi-task) on a prepared dataset.

    Example: purchasepred train --data prepared --purchase-weight 100 --epochs 8 --run-name demo
    """
    from purchasepred.config import dump_yaml, load_config
    from purchasepred.pipeline import Hooks, train_run

    if resume and not run_name:
        raise PurchasePredError("--resume needs --run-name R (the run to continue)")
    flags = {"--data": data, "--purchase-weight": purchase_weight, "--epochs": epochs, "--batch-size": batch_size,
             "--lr": lr, "--device": device, "--seed": seed, "--loss": loss, "--negatives": negatives}
    cfg = load_config(config, {
        "train.data": str(data) if data else None, "train.purchase_weight": purchase_weight, "train.epochs": epochs,
        "train.batch_size": batch_size, "train.lr": lr, "train.device": _value(device), "train.seed": seed,
        "train.loss": _value(loss), "train.negatives": negatives, "train.compile": True if compile_ else None,
    }, set_)
    name = _run_name(run_name)
    if _state["debug"]:
        ui.info(f" (run {name}):\n{dump_yaml(cfg)}", bold="resolved config")
    else:
        ui.info(_config_line(cfg, name))
    with ui.Bars(f"train {name}", cfg.train.epochs) as bars:
        summary = train_run(cfg, name, resume, Hooks(**bars.hooks()))
    for note in summary.notes:
        ui.warn(note)
    ui.show(train_table(summary))
    if summary.interrupted:
        flags.update({"--data": cfg.train.data, "--epochs": cfg.train.epochs})
        again = _command_line(["purchasepred", "train", "--run-name", name], config, set_, flags,
                              {"--compile": compile_, "--resume": True}, drop_sets=("train.epochs", "train.data"))
        raise Interrupted("training interrupted; checkpoint saved", again)


def train_table(summary: Any) -> Any:
    best = summary.best_valid_ndcg10
    return ui.summary_table(f"train {summary.run_name}", [
        ("epochs done", summary.epochs_done),
        ("best epoch", summary.best_epoch if summary.best_epoch is not None else "-"),
        ("best valid NDCG@10", round(best, 4) if best is not None else "n/a (no valid purchases)"),
        ("wall time s", f"{summary.seconds:.1f}"),
        ("tokens/s", round(summary.tokens_per_s)),
        ("checkpoint", str(summary.checkpoint)),
    ])


# ------------------------------------------------------------------------------------------ evaluate
def parse_ks(value: Optional[str]) -> Optional[list[int]]:
    if value is None:
        return None
    try:
        ks = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise PurchasePredError(f"--k expects integers separated by commas such as 5,10,20, got {value!r}") from None
    if not ks or min(ks) < 1:
        raise PurchasePredError(f"--k values must be >= 1, got {value!r}")
    return ks


RANKER_ROWS = (("popularity", "baseline"), ("history", "baseline"), ("tifu_knn", "baseline"), ("model", "transformer"),
               ("blend", "model"), ("propensity", "model"), ("two_stage", "model"))


def ranker_metrics(result: dict[str, Any], name: str) -> dict[str, Any]:
    return result["baselines"][name] if name in result["baselines"] else result[name]


def _label(result: dict[str, Any], name: str) -> str:
    shown = "transformer" if name == "model" else name
    return shown + (" *" if result["default"] == name else "")


def _ci(m: dict[str, Any], key: str) -> str:
    lo, hi = m.get(f"{key}_ci", [None, None])
    return f"[{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None and lo == lo else "-"


def metrics_tables(result: dict[str, Any]) -> list[Any]:
    """Fits 80 columns whatever --k: one row per ranker and metric."""
    ks = result["k"]
    rows = []
    for name, _ in RANKER_ROWS:
        m = ranker_metrics(result, name)
        first = True
        for key in [f"ndcg@{k}" for k in ks] + [f"hr@{k}" for k in ks] + ["mrr"]:
            rows.append([_label(result, name) if first else "", key.upper(),
                         m[key], _ci(m, key), m["users"] if first else ""])
            first = False
    k0 = ks[0]
    window = result["window"]
    main = ui.grid_table(f"evaluate {result['run']}: {result['split']} window {_when(window['start'])} .. "
                         f"{_when(window['end'])}", ["ranker (* default)", "metric", "value", "95% interval", "buyers"], rows)
    segs = ("with_history", "without_history", "seen_items", "new_items")
    first_m = result["model"]
    bcols = [f"NDCG@{k0}"] + [s.replace("_", " ") for s in segs]  # the buyers in a row: headers stay one line
    brows = []
    for name, _ in RANKER_ROWS:
        m = ranker_metrics(result, name)
        brows.append([_label(result, name)] + [m.get(s, {}).get(f"ndcg@{k0}", float("nan")) if m.get(s, {}).get("users")
                                               else float("nan") for s in segs])
    brows.append(["buyers"] + [int(first_m.get(s, {}).get("users", 0)) for s in segs])
    c = result["calibration"]
    crow = [["Platt on valid", c["ece"], c["brier"], c["ece_uncalibrated"], c["brier_uncalibrated"], c["pairs"]]]
    return [
        main,
        ui.grid_table("by segment", bcols, brows),
        ui.grid_table("purchase_probability calibration", ["", "ECE", "Brier", "ECE raw", "Brier raw", "pairs"], crow),
        *candidate_tables(result),
    ]


def candidate_tables(result: dict[str, Any]) -> list[Any]:
    """Recall of each candidate generator and of their union (the two-stage ranker's ceiling)."""
    cands = result.get("candidates")
    if not cands:
        return []
    windows = [w for w in cands if w != "valid"] + ["valid"]
    rows = [[g, cands["valid"][g]["n"] or "all"]
            + [f"{cands[w][g]['recall']:.3f} ({cands[w][g]['mean_candidates']:.0f})" for w in windows]
            for g in cands["valid"] if g != "users"]
    return [ui.grid_table("candidate recall (mean candidates per buyer)", ["generator", "N", *windows], rows)]


def _overlap(a: list[Any], b: list[Any]) -> bool:
    if None in a or None in b or a[0] != a[0] or b[0] != b[0]:
        return True  # no interval: nothing can be claimed
    return not (a[0] > b[1] or b[0] > a[1])


def verdict(result: dict[str, Any]) -> str:
    """One honest sentence: a claim only where the 95% intervals do not overlap."""
    k = result["k"][0]
    key = f"ndcg@{k}"
    m, h = result["model"], result["baselines"]["history"]
    if _overlap(m[f"{key}_ci"], h[f"{key}_ci"]):
        first = (f"transformer and history baseline are not distinguishable on NDCG@{k} ({m[key]:.4f} {_ci(m, key)} vs "
                 f"{h[key]:.4f} {_ci(h, key)}: the 95% intervals overlap)")
    else:
        first = (f"transformer {'beats' if m[key] > h[key] else 'does NOT beat'} the history baseline on NDCG@{k} "
                 f"({m[key]:.4f} {_ci(m, key)} vs {h[key]:.4f} {_ci(h, key)})")
    dm = result["default_metrics"]
    d = dm[key]
    why = result.get("default_reason", "chosen on valid")
    # the bar a learned default must clear: the stronger of history and TIFU-KNN, chosen on valid
    on_valid = result.get("fitted_on_valid", {}).get("valid_ndcg@10", {})
    strong = max((b for b in ("history", "tifu_knn") if b in result["baselines"]),
                 key=lambda b: (on_valid.get(b, result["baselines"][b][key]), b == "history"))
    sb = result["baselines"][strong]
    if result["default"] == strong:
        diff = "it is that baseline"
    elif not sb[key]:
        diff = f"{strong} scores 0"
    else:
        apart = "intervals apart" if not _overlap(dm.get(f"{key}_ci", [None, None]), sb[f"{key}_ci"]) else "intervals overlap"
        diff = f"{(d / sb[key] - 1) * 100:+.1f}% vs {strong}, the stronger baseline on valid; {apart}"
    return f"{first}; default ranker '{result['default']}' ({why}) scores {d:.4f} {_ci(dm, key)} ({diff})"


@app.command()
@handle_errors
def evaluate(
    run: RunOpt = None,
    k: Annotated[Optional[str], typer.Option("--k", help="Cutoffs, e.g. 5,10,20." + default("eval.k"))] = None,
    split: Annotated[Split, typer.Option("--split", help="The window to score.")] = Split.test,
    data: DataOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """NDCG@K, HR@K and MRR of the transformer, the blend and the baselines (full-catalog ranking).

    Example: purchasepred evaluate --run demo --k 5,10,20
    """
    from purchasepred.config import load_config
    from purchasepred.pipeline import Hooks, evaluate_run

    cfg = load_config(config, {"eval.k": parse_ks(k)}, set_)
    with ui.Bars("evaluate") as bars:
        done = evaluate_run(cfg, run, split.value, cfg.eval.k, data, Hooks(log=bars.log, step=bars.stage))
    for table in metrics_tables(done.result):
        ui.show(table)
    for warning in done.result.get("warnings", []):
        ui.warn(warning)
    ui.info(verdict(done.result))
    ui.info(f"{done.result['split']} window scored with {_model_line(done.result.get('model_checkpoint'))}")
    ui.info(f"metrics written to {done.path}")


# ------------------------------------------------------------------------------------------ export
@app.command()
@handle_errors
def export(
    run: RunOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="CSV to write \\[default: output/RUN/recommendations.csv].")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Items per user." + default("export.k"))] = None,
    filter_seen: Annotated[bool, typer.Option(
        "--filter-seen", help="Leave out items the user already interacted with.", metavar="")] = False,
    force: ForceOpt = False,
    data: DataOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write the top-K items for every user (user_id,item_id,rank,score,source,purchase_probability).

    Example: purchasepred export --run demo --k 10 --out recs.csv
    """
    from purchasepred.config import load_config
    from purchasepred.pipeline import Hooks, export_run

    cfg = load_config(config, {"export.k": k, "export.filter_seen": True if filter_seen else None}, set_)
    with ui.Bars("export") as bars:
        summary = export_run(cfg, run, out, cfg.export.k, cfg.export.filter_seen, force, data,
                             Hooks(log=bars.log, on_export=bars.on_export))
    ui.show(export_table(summary))


def export_table(summary: Any) -> Any:
    return ui.summary_table(f"export -> {summary.path}", [
        ("users", summary.users), ("rows", summary.rows), ("k", summary.k),
        ("users by source", summary.by_source), ("seconds", f"{summary.seconds:.1f}"),
    ])


# ------------------------------------------------------------------------------------------ report
@app.command()
@handle_errors
def report(
    run: Annotated[list[str], typer.Option("--run", help="Run name (repeatable: several runs side by side).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML file to write (default output/RUN/report.html).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite an existing --out that is not a purchasepred report.", metavar="")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """One self-contained HTML page (figures embedded, opens offline) with the data, training, quality,
    calibration and recommendation figures of a run; the figures also as PNG in output/RUN/figures/.

    Example: purchasepred report --run demo --run demo2 --out compare.html
    """
    from purchasepred.config import load_config
    from purchasepred.report.build import build_report

    cfg = load_config(config, {}, set_)
    with ui.steps("report") as step:
        summary = build_report(cfg, run, out, force, log=step)
    for line in summary.notes:
        ui.warn(line)
    ui.show(ui.summary_table(f"report -> {summary.path}", [
        ("runs", ", ".join(summary.runs)), ("figures", len(summary.figures)),
        ("figures folder", str(summary.figures[0].parent) if summary.figures else "-"), ("seconds", summary.seconds),
    ]))


# ------------------------------------------------------------------------------------------ run
@app.command("run")
@handle_errors
def run_all(
    raw: Annotated[Optional[list[str]], typer.Argument(help="Raw event files or globs; none: generate the demo dataset.")] = None,
    run_name: Annotated[Optional[str], typer.Option(help="Run name \\[default: 'demo' without RAW, else a timestamp].")] = None,
    rows: Annotated[int, typer.Option(help="Demo dataset rows (without RAW).")] = 300_000,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs." + default("train.epochs"))] = None,
    purchase_weight: Annotated[Optional[float], typer.Option(
        help="Weight of the purchase loss." + default("train.purchase_weight"))] = None,
    eval_days: Annotated[Optional[str], typer.Option(help=EVAL_DAYS_HELP + default("prepare.eval_days"))] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run of this name.", metavar="")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run: training, then evaluate and export.", metavar="")] = False,
    refit: Annotated[bool, typer.Option("--refit/--no-refit", help="After training chooses the epochs on valid, refit on "
                                        "the events before the test window (the test numbers) and on all events (export).",
                                        metavar="")] = True,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """prepare -> train -> refit -> evaluate -> export in one command, with one summary.

    Example: purchasepred run            (the bundled synthetic demo)
    """
    from purchasepred.config import load_config
    from purchasepred.pipeline import Hooks, run_all as pipeline_run_all

    name = run_name or ("demo" if not raw else _run_name(None))
    cfg = load_config(config, {"train.epochs": epochs, "train.purchase_weight": purchase_weight,
                               "prepare.eval_days": eval_days}, set_)
    again = _command_line(["purchasepred", "run", *(raw or []), "--run-name", name], config, set_,
                          {"--rows": rows if not raw else None, "--epochs": epochs, "--purchase-weight": purchase_weight,
                           "--eval-days": eval_days}, {"--resume": True, "--no-refit": not refit})
    with ui.Bars(f"run {name}", cfg.train.epochs) as bars:
        done = pipeline_run_all(cfg, raw, name, rows, force, resume, again, Hooks(**bars.hooks()), refit)
    for note in done.train.notes:
        ui.warn(note)
    if done.prepared is not None:
        ui.show(prepare_table(done.prepared.manifest, done.prepared.out, done.prepared.seconds))
        for warning in done.prepared.manifest.get("warnings", []):
            ui.warn(warning)
    ui.show(train_table(done.train))
    for table in metrics_tables(done.evaluation.result):
        ui.show(table)
    ui.show(export_table(done.export))
    result, body = done.evaluation.result, done.body
    k0 = result["k"][0]
    ui.show(ui.summary_table(f"run {name}", [
        ("rows read / rejected", f"{body['rows_read']:,} / {body['rows_rejected']:,}" if body["rows_read"] is not None else "(resumed)"),
        ("epochs, best valid NDCG@10", f"{done.train.epochs_done}, "
         + (f"{done.train.best_valid_ndcg10:.4f}" if done.train.best_valid_ndcg10 is not None else "n/a")),
        (f"test NDCG@{k0} popularity / history", f"{body['test']['popularity']:.4f} / {body['test']['history']:.4f}"),
        (f"test NDCG@{k0} transformer / blend", f"{body['test']['model']:.4f} / {body['test']['blend']:.4f}"),
        ("default ranker", f"{result['default']} ({result.get('default_reason', 'chosen on valid')})"),
        ("test numbers from", _model_line(body["test_model"])),
        ("recommendations from", _model_line(body["export_model"])),
        ("refit seconds (test / all)", " / ".join(f"{body['refit_seconds'][s]:.0f}" for s in ("test", "all")
                                                  if s in body["refit_seconds"]) if body["refit_seconds"] else "no refit"),
        ("metrics", str(done.evaluation.path)), ("recommendations", str(done.export.path)),
        ("checkpoint", str(done.train.checkpoint)), ("summary", str(done.summary_path)),
        ("report", str(done.report)),
    ]))
    for warning in result.get("warnings", []):
        ui.warn(warning)
    ui.info(verdict(result))


def _model_line(used: dict[str, Any] | None) -> str:
    """'refit_test.pt, 2 epochs on every event before ...' from a metrics.json model_checkpoint."""
    if not used:
        return "-"
    return f"{used['checkpoint']}, {used['epochs']} epoch(s) on {used['trained_on']}"


def main() -> None:
    # Objects are not collected at exit: Python's last collection walks every object the imports made
    # (typer, pydantic, rich, duckdb, numpy), 0.12-0.15 s of each run, only to free memory the process
    # gives back as it ends. gc.freeze() puts them out of its reach; every exit handler still runs and
    # every file is closed by the code that opened it. (The console script and `python -m` only: tests
    # and library calls keep the collector as it is.)
    atexit.register(gc.freeze)
    app()


if __name__ == "__main__":
    main()
