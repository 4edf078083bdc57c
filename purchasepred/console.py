"""The only place that builds rich consoles, progress bars and summary tables."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
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

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def is_quiet() -> bool:
    return _state["quiet"]


def info(msg: str) -> None:
    if not _state["quiet"]:
        console.print(msg)


def error(msg: str) -> None:
    err_console.print(f"[bold red]error:[/] {msg}", soft_wrap=True)


def make_progress(transient: bool = False) -> Progress:
    """One progress factory for every command; disabled under --quiet or without a terminal."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=transient,
        disable=_state["quiet"],
    )


@contextmanager
def steps(title: str) -> Iterator[Any]:
    """A progress line per step: yields ``step(name)`` that marks the previous step done."""
    with Progress(
        SpinnerColumn(), TextColumn("[progress.description]{task.description}"), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"), console=console, disable=_state["quiet"],
    ) as progress:
        current: dict[str, Any] = {}

        def step(name: str, status: str = "") -> None:
            if "id" in current:
                progress.update(current["id"], completed=1)
            if name:
                current["id"] = progress.add_task(f"{title}: {name}", total=1, status=status)

        yield step
        step("")


def summary_table(title: str, rows: Iterable[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(str(key), _fmt(value))
    return table


def grid_table(title: str, columns: list[str], rows: Iterable[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
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
