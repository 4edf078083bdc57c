"""`purchasepred report`: one self-contained HTML page per run (or several runs side by side).

A tiny `run` (which writes the report at its end) and a second run trained with a resume and never
evaluated or exported are made once per module; the tests parse the page: every section and figure,
every <img> a real PNG equal to its file under figures/, every number equal to the JSON value it came
from (rounded as shown), the notes of the missing sections, the CLI's errors. The `browser` test
renders the page in headless Chromium and checks the screenshot.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import duckdb
import pytest

from conftest import clean_failure, invoke
from purchasepred.report.build import SECTIONS, COMPARE, RunFiles, Source, _read_steps, data_section, fmt, sig4

TINY = ["--set", "model.d_model=16", "--set", "model.n_layers=1", "--set", "train.device=cpu", "--set", "train.batch_size=64"]
RUN_FIGURES = {"data_funnel", "data_events_per_day", "train_loss", "train_valid_ndcg", "train_lr_speed",
               "quality_rankers", "quality_breakdowns", "calibration_reliability", "recs_long_tail",
               "recs_categories", "recs_sources"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def ok(result) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "error:" not in result.output


class Page(HTMLParser):
    """The parts of a report the tests check: headings, figures, numbers, notes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.h1: list[str] = []
        self.h2: list[str] = []
        self.figures: dict[str, dict[str, str]] = {}
        self.numbers: list[tuple[dict[str, str], str]] = []
        self.notes: list[str] = []
        self.scripts = 0
        self.external: list[str] = []
        self._open: list[tuple[str, dict[str, str]]] = []
        self._text: list[str] = []
        self._figure: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("data:", "#")):
                self.external.append(a[key])
        if tag == "figure":
            self._figure = a["id"].removeprefix("fig-")
            self.figures[self._figure] = {}
        if tag == "img" and self._figure:
            self.figures[self._figure]["src"] = a["src"]
            self.figures[self._figure]["alt"] = a.get("alt", "")
        if tag in ("h1", "h2", "figcaption", "span", "p"):
            self._open.append((tag, a))
            self._text = []

    def handle_data(self, data: str) -> None:
        self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        if not self._open or self._open[-1][0] != tag:
            return
        _, a = self._open.pop()
        text = "".join(self._text).strip()
        if tag == "h1":
            self.h1.append(text)
        elif tag == "h2":
            self.h2.append(text)
        elif tag == "figcaption" and self._figure:
            self.figures[self._figure]["caption"] = text
        elif tag == "span" and a.get("class") == "n":
            self.numbers.append((a, text))
        elif tag == "p" and a.get("class") == "note":
            self.notes.append(text)


def png_of(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,"), src[:40]
    return base64.b64decode(src.split(",", 1)[1], validate=True)


def check_png(data: bytes) -> tuple[int, int]:
    """Magic bytes, then the IHDR chunk first: returns (width, height)."""
    assert data[:8] == PNG_MAGIC
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert data[-8:-4] == b"IEND"
    return width, height


def resolve(body: Any, pointer: str) -> Any:
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        body = body[int(part)] if isinstance(body, list) else body[part]
    return body


# ------------------------------------------------------------------ the runs, made once
@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """output/t: `run` (prepare, train, evaluate, export, report); checkpoints/r: trained on t's data
    for one epoch, resumed to two, with another learning rate, never evaluated or exported."""
    root = tmp_path_factory.mktemp("report")
    old = Path.cwd()
    os.chdir(root)
    try:
        result = invoke("run", "--rows", "20000", "--epochs", "2", *TINY, "--set", "eval.bootstrap=100", "--run-name", "t")
        ok(result)
        assert "report" in result.output and "output/t/report.html" in result.output.replace("\n", "")
        data = ["--data", "output/t/prepared"]
        ok(invoke("train", *data, "--epochs", "1", "--run-name", "r", *TINY, "--set", "train.lr=0.003"))
        ok(invoke("train", *data, "--epochs", "2", "--run-name", "r", "--resume", *TINY, "--set", "train.lr=0.003"))
        yield root
    finally:
        os.chdir(old)


@pytest.fixture()
def in_work(work: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(work)
    return work


def read_page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ one full run
def test_run_writes_a_report_with_every_section_and_figure(in_work: Path) -> None:
    path = in_work / "output" / "t" / "report.html"
    page = read_page(path)
    assert page.h2 == list(SECTIONS)
    assert set(page.figures) == RUN_FIGURES
    assert page.scripts == 0 and page.external == []  # opens offline, no JavaScript
    assert not page.notes, page.notes
    for name, fig in page.figures.items():
        data = png_of(fig["src"])
        width, height = check_png(data)
        assert width >= 400 and height >= 150, (name, width, height)
        assert (in_work / "output" / "t" / "figures" / f"{name}.png").read_bytes() == data
        assert len(fig["caption"]) > 40 and fig["alt"], name


def test_every_number_in_the_page_equals_the_json_it_came_from(in_work: Path) -> None:
    page = read_page(in_work / "output" / "t" / "report.html")
    cache: dict[str, Any] = {}
    pointers = set()
    for attrs, text in page.numbers:
        if "data-file" not in attrs:
            continue
        file = attrs["data-file"]
        if file not in cache:
            cache[file] = json.loads(Path(file).read_text())
        value = resolve(cache[file], attrs["data-ptr"])
        shown = float(text.replace(",", ""))
        if isinstance(value, int):
            assert shown == value, (file, attrs["data-ptr"], text, value)
        else:
            assert shown == sig4(value), (file, attrs["data-ptr"], text, value)
        pointers.add((Path(file).name, attrs["data-ptr"]))
    expected = {
        ("manifest.json", "/rows_read"), ("manifest.json", "/rows_rejected"), ("manifest.json", "/rows_duplicate"),
        ("manifest.json", "/rows_kept"), ("manifest.json", "/rows_collapsed"), ("manifest.json", "/n_events"),
        ("manifest.json", "/views_per_purchase"), ("manifest.json", "/n_users"), ("manifest.json", "/n_items"),
        ("manifest.json", "/settings/eval_days"),
        ("metadata.json", "/best_epoch"), ("metadata.json", "/best_valid_ndcg@10"),
        ("train_history.json", "/0/view_loss"), ("train_history.json", "/1/purchase_loss"), ("train_history.json", "/1/lr"),
        ("train_history.json", "/1/tokens_per_s"), ("train_history.json", "/1/valid/ndcg@10"),
        ("metrics.json", "/model/ndcg@10"), ("metrics.json", "/model/ndcg@10_ci/0"), ("metrics.json", "/model/ndcg@10_ci/1"),
        ("metrics.json", "/blend/hr@10"), ("metrics.json", "/blend/mrr_ci/1"), ("metrics.json", "/baselines/history/ndcg@10"),
        ("metrics.json", "/baselines/popularity/mrr"), ("metrics.json", "/model/new_items/ndcg@10"),
        ("metrics.json", "/calibration/ece"), ("metrics.json", "/calibration/brier"),
        ("metrics.json", "/calibration/ece_uncalibrated"), ("metrics.json", "/calibration/brier_uncalibrated"),
    }
    assert expected <= pointers, expected - pointers
    # a number the page shows from a JSON file but gets wrong is caught: tamper with one and compare
    metrics = cache[str(Path("output/t/metrics.json"))]
    assert sig4(metrics["model"]["ndcg@10"]) != sig4(metrics["model"]["ndcg@10"] + 0.001)


def test_recommendation_numbers_match_the_csv_and_the_prepared_tables(in_work: Path) -> None:
    page = read_page(in_work / "output" / "t" / "report.html")
    derived = {a["data-derived"]: t for a, t in page.numbers if "data-derived" in a}
    with open(in_work / "output" / "t" / "recommendations.csv", newline="") as fh:
        recs = list(csv.DictReader(fh))
    prepared = in_work / "output" / "t" / "prepared"
    con = duckdb.connect()
    catalog = con.execute("select product_id from read_parquet(?) where item_idx >= 2",
                          [str(prepared / "items.parquet")]).fetchall()
    touched = set(con.execute(
        "select u.user_id, i.product_id from read_parquet(?) e join read_parquet(?) u using (user_idx) "
        "join read_parquet(?) i using (item_code)",
        [str(prepared / "events.parquet"), str(prepared / "users.parquet"), str(prepared / "items.parquet")]).fetchall())
    users = {r["user_id"] for r in recs}
    items = {r["item_id"] for r in recs}
    seen = sum((r["user_id"], r["item_id"]) in touched for r in recs)
    assert derived["rows"] == fmt(len(recs)) and derived["users"] == fmt(len(users))
    assert derived["items_recommended"] == fmt(len(items)) and derived["catalog_items"] == fmt(len(catalog))
    assert derived["coverage_pct"] == fmt(100 * len(items) / len(catalog))
    assert derived["seen_pct"] == fmt(100 * seen / len(recs))
    assert derived["k"] == fmt(len(recs) // len(users))
    for source in {r["source"] for r in recs}:
        assert derived[f"source:{source}:rows"] == fmt(sum(r["source"] == source for r in recs))


def test_metrics_and_step_log_carry_what_the_report_draws(in_work: Path) -> None:
    metrics = json.loads((in_work / "output" / "t" / "metrics.json").read_text())
    for ranker in (metrics["model"], metrics["blend"], metrics["baselines"]["history"]):
        for key in ("hr@10", "mrr"):
            lo, hi = ranker[f"{key}_ci"]
            assert lo <= ranker[key] <= hi
    cal = metrics["calibration"]
    for bins in cal["bins"].values():
        assert sum(b["pairs"] for b in bins) == cal["pairs"]
        assert [b["mean_p"] for b in bins] == sorted(b["mean_p"] for b in bins)
        assert max(b["pairs"] for b in bins) - min(b["pairs"] for b in bins) <= 1  # equal-count bins
    steps = [json.loads(line) for line in (in_work / "output" / "t" / "train_steps.jsonl").read_text().splitlines()]
    assert all("event" not in s for s in steps)
    batches = steps[0]["batches"]
    per_epoch = len([b for b in range(1, batches + 1) if b % 10 == 0 or b == batches])
    assert [s["step"] for s in steps] == sorted({s["step"] for s in steps}) and len(steps) == 2 * per_epoch
    assert steps[-1]["step"] == 2 * batches and {"view_loss", "purchase_loss", "cart_loss", "lr", "tokens_per_s"} <= steps[-1].keys()


def test_the_verdict_is_in_words(in_work: Path) -> None:
    text = (in_work / "output" / "t" / "report.html").read_text()
    metrics = json.loads((in_work / "output" / "t" / "metrics.json").read_text())
    beats = metrics["model"]["ndcg@10"] > metrics["baselines"]["history"]["ndcg@10"]
    assert ("The transformer beats the history baseline" if beats else "does NOT beat the history baseline") in text
    assert "The default ranker" in text


# ------------------------------------------------------------------ missing pieces, resume points
def test_a_run_without_evaluate_or_export_still_reports(in_work: Path) -> None:
    result = invoke("report", "--run", "r")
    ok(result)
    page = read_page(in_work / "output" / "r" / "report.html")
    assert page.h2 == list(SECTIONS)
    assert {"data_funnel", "data_events_per_day", "train_loss", "train_valid_ndcg", "train_lr_speed"} == set(page.figures)
    left_out = [n for n in page.notes if n.startswith("Left out")]
    assert len(left_out) == 3
    assert sum("purchasepred evaluate --run r" in n for n in left_out) == 2
    assert any("purchasepred export --run r" in n for n in left_out)
    assert "Quality left out" in result.output
    steps = [json.loads(line) for line in (in_work / "output" / "r" / "train_steps.jsonl").read_text().splitlines()]
    assert [s for s in steps if s.get("event") == "resume"] == [{"event": "resume", "epoch": 1, "batch": 0, "step": steps[0]["batches"]}]
    assert "at epoch 1 batch 0" in (in_work / "output" / "r" / "report.html").read_text()


def test_step_log_keeps_the_last_line_of_each_step(tmp_path: Path) -> None:
    out = tmp_path / "output" / "x"
    out.mkdir(parents=True)
    lines = [
        {"step": 10, "epoch": 0, "batch": 10, "batches": 20, "lr": 0.1, "view_loss": 9.0, "purchase_loss": 1.0},
        {"step": 20, "epoch": 0, "batch": 20, "batches": 20, "lr": 0.1, "view_loss": 8.0, "purchase_loss": 1.0},
        {"event": "resume", "epoch": 0, "batch": 10, "step": 10},
        {"step": 20, "epoch": 0, "batch": 20, "batches": 20, "lr": 0.1, "view_loss": 7.0, "purchase_loss": 1.0},
        {"event": "early_stop", "epoch": 3, "step": 60},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + '\n{"step": 30, "epo'  # the last line cut by a kill
    (out / "train_steps.jsonl").write_text(text)
    run = RunFiles("x", tmp_path / "checkpoints" / "x", out)
    _read_steps(run)
    assert [(s["step"], s["view_loss"]) for s in run.steps] == [(10, 9.0), (20, 7.0)]
    assert [r["x"] for r in run.resumes] == [0.5] and run.early_stop == 3.0


def test_text_from_the_data_is_escaped(tmp_path: Path) -> None:
    manifest = {"rows_read": 3, "rows_rejected": 1, "rows_duplicate": 0, "rows_kept": 2, "rows_collapsed": 0,
                "n_events": 2, "n_users": 1, "n_items": 1, "n_raw_items": 1, "n_sessions": 1, "views_per_purchase": None,
                "rejects_by_reason": {"<script>alert(1)</script>": 1}, "events_by_type": {"view": 2},
                "settings": {"eval_days": 1}, "windows": {}, "first_event_at": "<b>", "last_event_at": "x"}
    run = RunFiles("x", tmp_path / "c", tmp_path / "o", manifest=Source(tmp_path / "manifest.json", manifest),
                   prepared=tmp_path / "nowhere")

    class NoFigures:
        def add(self, name: str, draw: Any, caption: str, alt: str) -> str:
            return ""

    text = data_section(run, NoFigures(), {})  # type: ignore[arg-type]
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<b>" not in text and "&lt;b&gt;" in text
    assert "events.parquet is missing" in text


# ------------------------------------------------------------------ several runs
def test_several_runs_side_by_side(in_work: Path) -> None:
    ok(invoke("report", "--run", "t", "--run", "r", "--out", "cmp/both.html"))
    page = read_page(in_work / "cmp" / "both.html")
    assert page.h2 == [COMPARE] + list(SECTIONS) * 2
    assert page.h1[1:] == ["Run t", "Run r"]
    assert {"compare-compare_curves", "compare-compare_quality"} <= set(page.figures)
    assert {f"t-{f}" for f in RUN_FIGURES} <= set(page.figures)
    for fig in page.figures.values():
        check_png(png_of(fig["src"]))
    text = (in_work / "cmp" / "both.html").read_text()
    assert "<td>train.lr</td>" in text and "<td>eval.bootstrap</td>" in text  # settings that differ
    assert "<td>model.d_model</td>" not in text  # the same in both
    assert (in_work / "output" / "t" / "figures" / "compare-compare_curves.png").is_file()
    # the same report again overwrites it (a report of ours), a user's file needs --force
    ok(invoke("report", "--run", "t", "--run", "r", "--out", "cmp/both.html"))


# ------------------------------------------------------------------ errors
def test_report_errors_are_one_line(in_work: Path) -> None:
    clean_failure(invoke("report", "--run", "nope"), "'nope' not found", "known runs: r, t")
    clean_failure(invoke("report", "--run", "t", "--run", "t"), "twice")
    clean_failure(invoke("report", "--run", "../t"), "plain folder name")
    mine = in_work / "mine.html"
    mine.write_text("<html>my own page</html>")
    clean_failure(invoke("report", "--run", "t", "--out", mine), "mine.html already exists", "--force")
    assert mine.read_text() == "<html>my own page</html>"
    ok(invoke("report", "--run", "t", "--out", mine, "--force"))
    assert "purchasepred report" in mine.read_text()
    (in_work / "adir").mkdir(exist_ok=True)
    clean_failure(invoke("report", "--run", "t", "--out", in_work / "adir"), "is a directory")
    bad = in_work / "output" / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "metrics.json").write_text("{not json")
    clean_failure(invoke("report", "--run", "bad"), "metrics.json is not valid JSON")
    shutil.rmtree(bad)


def test_report_does_not_import_torch(in_work: Path) -> None:
    code = ("import sys\n"
            "from purchasepred.config import load_config\n"
            "from purchasepred.report.build import build_report\n"
            "build_report(load_config(), ['t'], force=True)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=in_work, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ------------------------------------------------------------------ a real browser
@pytest.mark.browser
def test_the_page_renders_in_headless_chromium(in_work: Path, tmp_path: Path) -> None:
    """The screenshot is a PNG with the page's figures in it: many distinct colours, no blank page."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    shot = tmp_path / "shot.png"
    page = (in_work / "output" / "t" / "report.html").resolve()
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,4000",
         "--hide-scrollbars", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    width, height = check_png(shot.read_bytes())
    assert (width, height) == (1280, 4000)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import image

    pixels = image.imread(str(shot))[:, :, :3]  # (H, W, 3) floats in [0, 1]
    assert pixels.std() > 0.05  # not blank
    # the figures are drawn: their blue (#1f77b4) bars and lines are on the page
    blue = ((abs(pixels[:, :, 0] - 0x1f / 255) < 0.05) & (abs(pixels[:, :, 1] - 0x77 / 255) < 0.05)
            & (abs(pixels[:, :, 2] - 0xb4 / 255) < 0.05))
    assert blue.sum() > 5000
    # the page is laid out down to the bottom of a 4000-pixel window (the sections, not one broken image)
    rows_with_ink = (pixels.std(axis=(1, 2)) > 0.01).nonzero()[0]
    assert rows_with_ink.max() > 3000
    keep = os.environ.get("PURCHASEPRED_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
