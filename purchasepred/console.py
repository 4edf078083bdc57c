"""The only place that builds rich consoles, progress bars and summary tables."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
import threading
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.text import Text
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=False, highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, emoji=False)

_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def is_quiet() -> bool:
    return _state["quiet"]


# Messages, table cells and progress lines are text, not rich markup or emoji codes: a square bracket
# (--set 'input.view=[pv]', a path such as logs[1].csv, a mapping's list), a trailing backslash or a
# ':ok:' in one is printed as it is (rich would drop the first as a style tag and replace the last).


def info(msg: str, bold: str = "") -> None:
    """``msg`` after ``bold`` (a title, printed in bold)."""
    if not _state["quiet"]:
        console.print(Text.assemble((bold, "bold"), msg))


def error(msg: str) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), " ", msg), soft_wrap=True)


def warn(msg: str) -> None:
    """A warning the user must see: on stderr, also under --quiet."""
    err_console.print(Text.assemble(("warning:", "bold yellow"), " ", msg), soft_wrap=True)


def _plain() -> bool:
    """Whether progress is written as plain lines: output to a file or a pipe (a log, CI), where a live
    display cannot redraw and rich prints its last frame once at the end, after every line printed
    while it ran (stage lines after the epochs they started, each epoch twice, bars cut at 80 columns)."""
    return not _state["quiet"] and not console.is_terminal


def _live_off() -> bool:
    """Whether a live progress display is off: under --quiet, or without a terminal (_plain)."""
    return _state["quiet"] or not console.is_terminal


def make_progress(transient: bool = False) -> Progress:
    """One progress factory for every command; disabled under --quiet or without a terminal (where the
    callers print a line as each stage starts instead: _plain)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}", markup=False),
        console=console,
        transient=transient,
        disable=_live_off(),
    )


class StepLines:
    """A progress line per step. ``step(name)`` marks the previous step done and starts a line for
    ``name``; ``step.progress(name, percent)``, from any thread, shows how far step ``name`` is, while
    it is still the current one (a late report of a finished step is dropped). A done step's line
    keeps its time, not its last percent."""

    def __init__(self, progress: Progress, title: str, echo: Callable[[str], None] | None = None) -> None:
        self._progress, self._title, self._echo = progress, title, echo  # (echo: each step's line as it starts)
        self._lock = threading.Lock()
        self._name: str | None = None
        self._status = ""  # the status the step started with, put back when it is done
        self._task: Any = None

    def __call__(self, name: str, status: str = "") -> None:
        with self._lock:
            if self._task is not None:
                self._progress.update(self._task, completed=1, status=self._status)
            self._name, self._status = name or None, status
            self._task = self._progress.add_task(f"{self._title}: {name}", total=1, status=status) if name else None
            if name and self._echo is not None:
                self._echo(f"{self._title}: {name}" + (f"  {status}" if status else ""))

    def progress(self, name: str, percent: float) -> None:
        with self._lock:
            if self._task is not None and self._name == name:
                self._progress.update(self._task, status=f"{percent:3.0f}%")


@contextmanager
def steps(title: str) -> Iterator[StepLines]:
    """A progress line per step: yields a :class:`StepLines`, called with each step's name."""
    plain = _plain()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}", style="progress.description", markup=False),
        TimeElapsedColumn(), TextColumn("{task.fields[status]}", markup=False), console=console,
        disable=_live_off(),
    ) as progress:
        step = StepLines(progress, title, _print_line if plain else None)
        yield step
        step("")


def _print_line(text: str) -> None:
    console.print(Text(text))  # (wrapped at the console's width, as every other line: COLUMNS=80 holds)


def _table(title: str, **kwargs: Any) -> Table:
    """A table at least as wide as its title (up to the console), so that the title is not broken mid-path."""
    return Table(title=Text(title), title_justify="left", min_width=min(len(title), console.width), **kwargs)


def summary_table(title: str, rows: Iterable[tuple[str, Any]]) -> Table:
    table = _table(title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(Text(str(key)), Text(_fmt(value)))
    return table


def grid_table(title: str, columns: list[str], rows: Iterable[list[Any]]) -> Table:
    table = _table(title)
    for i, col in enumerate(columns):
        table.add_column(Text(col), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[Text(_fmt(v)) for v in row])
    return table


def show(table: Table) -> None:
    if not _state["quiet"]:
        console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "-"
    return str(value)


class Bars:
    """One live display for a command: a line per stage, a bar per training epoch, an export bar
    and log lines above them. Its methods are the progress callbacks of ``pipeline.Hooks``."""

    def __init__(self, title: str, epochs: int | None = None) -> None:
        self.title, self.epochs = title, epochs
        self.progress = make_progress()
        self._plain = _plain()  # (a line as each stage starts; no bars: the epochs have their log lines)
        self._stage: Any = None
        self._lock = threading.Lock()  # stage() and detail() (prepare's progress thread)
        self._epoch: tuple[int, Any] | None = None
        self._export: Any = None

    def __enter__(self) -> Bars:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stage("")
        self.progress.stop()

    def hooks(self) -> dict[str, Any]:
        return {"log": self.log, "step": self.stage, "detail": self.detail, "on_step": self.on_step,
                "on_epoch": self.on_epoch, "on_export": self.on_export}

    def log(self, msg: str) -> None:
        if not _state["quiet"]:
            self.progress.console.print(Text(msg), soft_wrap=True)

    def stage(self, name: str) -> None:
        with self._lock:
            if self._stage is not None:
                self.progress.update(self._stage, total=1, completed=1, status="")
            self._stage = self.progress.add_task(f"{self.title}: {name}", total=None, status="") if name else None
            if name and self._plain:
                _print_line(f"{self.title}: {name}")

    def detail(self, text: str) -> None:
        """What the current stage is doing now (prepare's step and its percent), from any thread."""
        with self._lock:
            if self._stage is not None:
                self.progress.update(self._stage, status=text)

    def on_step(self, s: dict[str, Any]) -> None:
        if self._epoch is None or self._epoch[0] != s["epoch"]:
            of = f"/{self.epochs}" if self.epochs else ""
            self._epoch = (s["epoch"], self.progress.add_task(f"epoch {s['epoch'] + 1}{of}", total=s["batches"], status=""))
        self.progress.update(self._epoch[1], completed=s["batch"], status=(
            f"view {s['view_loss']:.3f} buy {s['purchase_loss']:.3f} {s['tokens_per_s']:,.0f} tok/s lr {s['lr']:.1e}"))

    def on_epoch(self, st: Any) -> None:
        valid = st.valid.get("ndcg@10", float("nan"))
        self.log(f"epoch {st.epoch}: view loss {st.view_loss:.4f}, purchase loss {st.purchase_loss:.4f}, valid NDCG@10 "
                 f"{valid:.4f}, {st.tokens_per_s:,.0f} tokens/s, {st.seconds:.1f} s")

    def on_export(self, done: int, total: int) -> None:
        if self._export is None:
            self._export = self.progress.add_task("export users", total=total, status="")
        self.progress.update(self._export, completed=done)
