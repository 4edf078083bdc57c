"""The live step lines of prepare and run: a step's percent reaches its own line only."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress, TextColumn

from purchasepred import console as ui


def _progress() -> Progress:
    return Progress(TextColumn("{task.description} {task.fields[status]}"), console=Console(file=io.StringIO()))


def test_a_steps_percent_shows_on_its_line_until_it_is_done() -> None:
    progress = _progress()
    step = ui.StepLines(progress, "prepare")
    step("load a.csv")
    step.progress("load a.csv", 41.6)
    assert [(t.description, t.fields["status"]) for t in progress.tasks] == [("prepare: load a.csv", " 42%")]
    step("clean")
    step.progress("load a.csv", 97)  # a late report of the step before: dropped
    step.progress("clean", 50)
    step("")
    assert [(t.description, t.fields["status"], t.finished) for t in progress.tasks] == [
        ("prepare: load a.csv", "", True),  # a done step keeps its time, not its last percent
        ("prepare: clean", "", True),
    ]


def test_run_shows_what_its_current_stage_is_doing() -> None:
    bars = ui.Bars("run demo")
    bars.progress = _progress()
    bars.stage("prepare")
    bars.detail("load demo.csv  37%")
    assert [(t.description, t.fields["status"]) for t in bars.progress.tasks] == [("run demo: prepare", "load demo.csv  37%")]
    bars.stage("train")
    bars.detail("x")
    assert [(t.description, t.fields["status"]) for t in bars.progress.tasks] == [
        ("run demo: prepare", ""), ("run demo: train", "x")]


def test_square_brackets_in_messages_tables_and_step_lines_are_printed_as_written(monkeypatch) -> None:
    # rich would take [pv] or [1] for a style tag and drop it: every message is text, not markup
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setitem(ui._state, "quiet", False)  # (a test before may have run a command with --quiet)
    monkeypatch.setattr(ui, "console", Console(file=out, width=200, color_system=None, emoji=False))
    monkeypatch.setattr(ui, "err_console", Console(file=err, width=200, color_system=None, emoji=False))
    ui.info("mapping {'view': [pv]}")
    ui.info("C:\\logs\\ :ok:")
    ui.warn("name each, e.g. --set 'input.view=[click]'")
    ui.error("logs[1].csv: set e.g. --set 'input.view=[pv]'")
    ui.show(ui.summary_table("prepare -> out[2]", [("rejected: [x]", "1 (e.g. '[bold]' 1)")]))
    ui.show(ui.grid_table("by [segment]", ["[a]", "b"], [["[c]", 1]]))
    printed = out.getvalue() + err.getvalue()
    for text in ("mapping {'view': [pv]}", "C:\\logs\\ :ok:\n", "warning: name each, e.g. --set 'input.view=[click]'",
                 "error: logs[1].csv: set e.g. --set 'input.view=[pv]'", "prepare -> out[2]", "rejected: [x]",
                 "1 (e.g. '[bold]' 1)", "by [segment]", "[a]", "[c]"):
        assert text in printed, text
    drawn = io.StringIO()
    monkeypatch.setattr(ui, "console", Console(file=drawn, width=200, color_system=None, emoji=False))
    with ui.steps("prepare") as step:  # the step lines as prepare draws them
        step("load shop[pv].csv", status="[bold]")
    assert "prepare: load shop[pv].csv" in drawn.getvalue() and "[bold]" in drawn.getvalue()


def test_without_a_terminal_progress_is_a_line_per_stage_in_order(monkeypatch) -> None:
    # piped to a file, rich's live display printed its last frame once at the end: the stage lines after
    # the epochs they started, each epoch twice (its bar too) and bars cut at 80 columns
    out = io.StringIO()
    monkeypatch.setitem(ui._state, "quiet", False)
    monkeypatch.setattr(ui, "console", Console(file=out, width=80, color_system=None, emoji=False))
    with ui.Bars("run demo", epochs=8) as bars:
        bars.stage("prepare")
        bars.detail("load demo.csv  37%")
        bars.stage("train")
        bars.on_step({"epoch": 0, "batch": 1, "batches": 2, "view_loss": 6.6, "purchase_loss": 3.5,
                      "tokens_per_s": 8000.0, "lr": 1e-3})
        bars.log("epoch 1: view loss 6.9081")
        bars.on_export(1, 2)
        bars.stage("export")
    assert out.getvalue().splitlines() == ["run demo: prepare", "run demo: train", "epoch 1: view loss 6.9081",
                                           "run demo: export"]
    drawn = io.StringIO()
    monkeypatch.setattr(ui, "console", Console(file=drawn, width=80, color_system=None, emoji=False))
    with ui.steps("prepare") as step:
        step("load a.csv")
        step.progress("load a.csv", 50)  # (no percent lines in a log)
        step("clean", status="x")
    assert drawn.getvalue().splitlines() == ["prepare: load a.csv", "prepare: clean  x"]


def test_quiet_prints_no_stage_lines_without_a_terminal(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setitem(ui._state, "quiet", True)
    monkeypatch.setattr(ui, "console", Console(file=out, width=80, color_system=None, emoji=False))
    with ui.Bars("run demo") as bars, ui.steps("prepare") as step:
        bars.stage("prepare")
        step("load a.csv")
    assert out.getvalue() == ""
