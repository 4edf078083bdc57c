"""`report`: one self-contained HTML page with the figures a person wants to see after a run.

Inputs are only what the run wrote (read, never changed): the prepared dataset's ``manifest.json`` and
Parquet tables (queried with DuckDB, ``sql/report.sql``), ``checkpoints/<run>/metadata.json`` and
``config.yaml``, ``output/<run>/train_history.json``, ``train_steps.jsonl``, ``metrics.json``,
``run_summary.json`` and the recommendations CSV. This module never imports torch.

Output: ``output/<run>/report.html`` (or ``--out``), the figures embedded as base64 PNG data URIs (no
network, no JavaScript), and the same figures as PNG files under ``output/<run>/figures/``. Every
number shown from a JSON file is a ``<span class="n">`` carrying the file (``data-file``) and the JSON
pointer (``data-ptr``) it came from, rounded to 4 significant digits; numbers computed from the
Parquet tables or the CSV carry ``data-derived`` instead. A missing piece (no evaluate, no export, no
prepared dataset) leaves its section as a note, never an error.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from string import Template
from typing import Any, Callable

import duckdb
import yaml

from purchasepred import __version__
from purchasepred.config import Config
from purchasepred.data.inputs import duckdb_literal
from purchasepred.resources import connect, named_queries
from purchasepred.errors import PurchasePredError
from purchasepred.fileio import atomic_write_bytes, check_new_output, make_parents
from purchasepred.report import figures as figs

SECTIONS = ("Data", "Training", "Quality", "Calibration", "Recommendations")
COMPARE = "Runs side by side"
GENERATOR = '<meta name="generator" content="purchasepred report">'
TITLES = {"model": "transformer"}  # ranker keys of metrics.json -> the names people read
BASELINES = ("popularity", "history")
SEGMENTS = (("with_history", "users with history"), ("without_history", "users without history"),
            ("seen_items", "purchases of seen items"), ("new_items", "purchases of new items"))


@dataclass
class ReportSummary:
    path: Path
    runs: list[str]
    figures: list[Path]
    notes: list[str]
    seconds: float


@dataclass
class Source:
    """One file the report read: where it is (shown in data-file) and its parsed body."""

    path: Path
    body: Any


@dataclass
class RunFiles:
    name: str
    run_dir: Path
    out_dir: Path
    manifest: Source | None = None
    metadata: Source | None = None
    history: Source | None = None
    metrics: Source | None = None
    summary: Source | None = None
    config: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    early_stop: float | None = None
    prepared: Path | None = None
    recs: Path | None = None


# ------------------------------------------------------------------ reading a run
def _check_name(run: str) -> None:
    # the rule of runs.check_run_name, which the report cannot import: runs.py loads torch
    if not run or run in (".", "..") or any(c in run for c in ("/", "\\", "\0")):
        raise PurchasePredError(f"run name {run!r} must be a plain folder name (no '/' or '\\', not '.' or '..')")


def _read_json(path: Path) -> Source | None:
    if not path.is_file():
        return None
    try:
        return Source(path, json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PurchasePredError(f"{path} is not valid JSON ({err}); rerun the command that wrote it") from None


def known_runs(cfg: Config) -> list[str]:
    roots = [Path(cfg.train.checkpoints_dir), Path(cfg.train.output_dir)]
    return sorted({p.name for root in roots if root.is_dir() for p in root.iterdir() if p.is_dir()})


def load_run(cfg: Config, name: str) -> RunFiles:
    _check_name(name)
    run = RunFiles(name, Path(cfg.train.checkpoints_dir) / name, Path(cfg.train.output_dir) / name)
    if not run.run_dir.is_dir() and not run.out_dir.is_dir():
        known = known_runs(cfg)
        raise PurchasePredError(
            f"run {name!r} not found (neither {run.run_dir} nor {run.out_dir} exists); "
            + (f"known runs: {', '.join(known)}" if known else "make one with: purchasepred run --run-name " + name)
        )
    run.metadata = _read_json(run.run_dir / "metadata.json")
    run.history = _read_json(run.out_dir / "train_history.json")
    run.metrics = _read_json(run.out_dir / "metrics.json")
    run.summary = _read_json(run.out_dir / "run_summary.json")
    if (run.run_dir / "config.yaml").is_file():
        try:
            run.config = yaml.safe_load((run.run_dir / "config.yaml").read_text()) or {}
        except yaml.YAMLError as err:
            raise PurchasePredError(f"{run.run_dir / 'config.yaml'} is not valid YAML ({err})") from None
    _read_steps(run)
    candidates = [
        (run.metadata.body.get("dataset", {}).get("path") if run.metadata else None),
        (run.summary.body.get("prepared") if run.summary else None),
        (run.metrics.body.get("dataset", {}).get("path") if run.metrics else None),
        str(run.out_dir / "prepared"),
        (run.config.get("train", {}).get("data") if run.config else None),
    ]
    for c in candidates:
        if c and (Path(c) / "manifest.json").is_file():
            run.prepared = Path(c)
            run.manifest = _read_json(Path(c) / "manifest.json")
            break
    recs = [run.summary.body.get("recommendations") if run.summary else None, str(run.out_dir / "recommendations.csv")]
    run.recs = next((Path(r) for r in recs if r and Path(r).is_file()), None)
    return run


def _read_steps(run: RunFiles) -> None:
    """train_steps.jsonl: the last line of each step (a killed process's steps are logged again after
    --resume), the resume points and the early stop, each at its fractional epoch."""
    path = run.out_dir / "train_steps.jsonl"
    if not path.is_file():
        notes = run.metadata.body.get("notes", []) if run.metadata else []
        found = [int(m.group(1)) for n in notes if (m := re.search(r"early stop after epoch (\d+)", str(n)))]
        run.early_stop = float(found[-1]) if found else None
        return
    steps: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed process
        if not isinstance(rec, dict):
            continue
        if rec.get("event") == "resume":
            run.resumes.append(rec)
        elif rec.get("event") == "early_stop":
            run.early_stop = float(rec["epoch"])
        elif "step" in rec and rec.get("batches"):
            rec["x"] = rec["epoch"] + rec["batch"] / rec["batches"]
            steps[int(rec["step"])] = rec
    run.steps = [steps[s] for s in sorted(steps)]
    batches = run.steps[-1]["batches"] if run.steps else 0
    for r in run.resumes:
        r["x"] = r["epoch"] + (r.get("batch", 0) / batches if batches else 0.0)


# ------------------------------------------------------------------ HTML pieces
def sig4(value: float) -> float:
    """The value as shown: 4 significant digits."""
    return float(f"{value:.4g}")


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        shown = sig4(value)
        return f"{shown:,.0f}" if abs(shown) >= 1000 else f"{value:.4g}"
    return str(value)


def _pointer(keys: tuple[Any, ...]) -> str:
    return "".join("/" + str(k).replace("~", "~0").replace("/", "~1") for k in keys)


def _get(body: Any, keys: tuple[Any, ...]) -> Any:
    for k in keys:
        if isinstance(body, list):
            body = body[int(k)] if isinstance(k, int) or str(k).isdigit() else None
        elif isinstance(body, dict):
            body = body.get(k)
        else:
            return None
        if body is None:
            return None
    return body


def n(src: Source | None, *keys: Any) -> str:
    """A number from a JSON file, with where it came from."""
    value = _get(src.body, keys) if src else None
    if src is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return f'<span class="n-missing">{html.escape(fmt(value))}</span>'
    return (f'<span class="n" data-file="{html.escape(str(src.path))}" data-ptr="{html.escape(_pointer(keys))}">'
            f"{fmt(value)}</span>")


def d(value: Any, what: str, unit: str = "") -> str:
    """A number computed by the report from the Parquet tables or the CSV."""
    return f'<span class="n" data-derived="{html.escape(what)}">{fmt(value)}</span>{html.escape(unit)}'


def esc(text: Any) -> str:
    return html.escape(str(text))


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def table(header: list[str] | None, rows: list[list[str]]) -> str:
    """``rows`` hold HTML already escaped (from :func:`n`, :func:`d`, :func:`esc`)."""
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(
        ('<td class="num">' if i else "<td>") + f"{c}</td>"
        for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def kv(rows: list[tuple[str, str]]) -> str:
    return table(None, [[esc(k), v] for k, v in rows])


class Figures:
    """Writes each figure as figures/<name>.png and returns its <figure> with the PNG embedded."""

    def __init__(self, folder: Path, prefix: str = "") -> None:
        self.folder = folder
        self.prefix = prefix
        self.written: list[Path] = []

    def add(self, name: str, draw: Callable[[], bytes], caption: str, alt: str) -> str:
        png = draw()
        path = self.folder / f"{self.prefix}{name}.png"
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, png)
        self.written.append(path)
        data = base64.b64encode(png).decode("ascii")
        return (f'<figure id="fig-{esc(self.prefix + name)}"><img src="data:image/png;base64,{data}" alt="{esc(alt)}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>")


def _con(run: RunFiles, q: dict[str, str]) -> duckdb.DuckDBPyConnection:
    con = connect()
    prepared = run.prepared or Path(".")
    tables = (run.manifest.body if run.manifest else {}).get("tables", {})
    for name in ("events", "items", "users", "categories"):
        con.execute(f"set variable {name} = ?", [duckdb_literal(prepared / tables.get(name, f"{name}.parquet"))])
    con.execute("set variable recs = ?", [duckdb_literal(run.recs) if run.recs else ""])
    return con


def _records(con: duckdb.DuckDBPyConnection, query: str) -> list[dict[str, Any]]:
    cur = con.execute(query)
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


# ------------------------------------------------------------------ sections
def data_section(run: RunFiles, fig: Figures, q: dict[str, str]) -> str:
    m = run.manifest
    if m is None:
        return note(f"Left out: the prepared dataset of run {run.name} was not found (looked for a manifest.json at the "
                    "path recorded in metadata.json and in output/<run>/prepared); rerun purchasepred prepare.")
    b = m.body
    stages: list[tuple[str, int, str]] = [("rows read", int(b["rows_read"]), "in")]
    reasons = b.get("rejects_by_reason", {})
    stages += [(f"rejected: {r}", int(c), "out") for r, c in reasons.items()] or [("rejected", int(b["rows_rejected"]), "out")]
    stages += [("exact duplicates removed", int(b["rows_duplicate"]), "out"), ("kept", int(b["rows_kept"]), "keep"),
               ("repeat views collapsed", int(b["rows_collapsed"]), "out"), ("events (the model's input)", int(b["n_events"]), "keep")]
    out = [fig.add("data_funnel", lambda: figs.funnel(stages),
                   "Row funnel of prepare, top to bottom: raw rows read, rows rejected (by reason), exact duplicates, "
                   "rows kept, consecutive repeat views collapsed, and the events left for training (bar length = rows).",
                   "bar chart of the row funnel")]
    funnel_rows = [("rows read", n(m, "rows_read")), ("rejected", n(m, "rows_rejected"))]
    funnel_rows += [(f"  rejected: {r}", n(m, "rejects_by_reason", r)) for r in reasons]
    funnel_rows += [("exact duplicates removed", n(m, "rows_duplicate")), ("kept", n(m, "rows_kept")),
                    ("repeat views collapsed", n(m, "rows_collapsed")), ("events", n(m, "n_events"))]
    out.append("<h3>Row funnel</h3>" + kv(funnel_rows))
    if run.prepared and (run.prepared / "events.parquet").is_file():
        rows = _records(_con(run, q), q["events_per_day"])
        days = sorted({r["day"] for r in rows})
        types = [t for t in ("view", "cart", "purchase", "remove_from_cart") if any(r["event_type"] == t for r in rows)]
        counts = {(r["day"], r["event_type"]): int(r["n"]) for r in rows}
        by_type = {t: [counts.get((day, t), 0) for day in days] for t in types}
        windows = {s: (datetime.fromisoformat(w["window_start"]), datetime.fromisoformat(w["window_end"]))
                   for s, w in b.get("windows", {}).items()}
        out.append(fig.add("data_events_per_day", lambda: figs.events_per_day(days, by_type, windows),
                           "Events per day by type (log scale, UTC days); shaded: the valid window (yellow) and the test "
                           "window (red). The model learns from the days before each window and is scored on its purchases.",
                           "line chart of events per day by type with the evaluation windows shaded"))
    else:
        out.append(note(f"Events per day left out: {run.prepared}/events.parquet is missing."))
    items = f"{n(m, 'n_items')} with an id / {n(m, 'n_raw_items')} raw"
    facts = [("users", n(m, "n_users")), ("items", items), ("sessions", n(m, "n_sessions")),
             ("views per purchase", n(m, "views_per_purchase"))]
    facts += [(f"events: {t}", n(m, "events_by_type", t)) for t in b.get("events_by_type", {})]
    facts += [("first / last event", f"{esc(b.get('first_event_at'))} / {esc(b.get('last_event_at'))}")]
    for s, w in b.get("windows", {}).items():
        if s in ("valid", "test"):
            facts.append((f"{s} window", f"{esc(w['window_start'])} .. {esc(w['window_end'])}: "
                                         f"{n(m, 'windows', s, 'n_users_with_purchases')} buyers, "
                                         f"{n(m, 'windows', s, 'n_users_with_inputs')} users with inputs"))
    out.append("<h3>Users, items, windows</h3>" + kv(facts))
    settings = [(k, n(m, "settings", k)) for k in b.get("settings", {})]
    settings += [("input schemas", esc(", ".join(b.get("input_schemas", [])))),
                 ("prepared dataset", esc(run.prepared))]
    out.append("<h3>Settings prepare used</h3>" + kv(settings))
    return "".join(out)


def training_section(run: RunFiles, fig: Figures) -> str:
    h = run.history
    if h is None or not h.body:
        return note(f"Left out: run {run.name} has no {run.out_dir / 'train_history.json'} (no finished epoch); "
                    f"train it: purchasepred train --run-name {run.name}")
    epochs = h.body
    best = run.metadata.body.get("best_epoch") if run.metadata else None
    out = [
        fig.add("train_loss", lambda: figs.losses(epochs, run.steps, [r["x"] for r in run.resumes], run.early_stop),
                "Training loss per task (lower is better): the thin line is each logged step, the dots the epoch means; "
                "x is the epoch (epoch k ends at k). Dashed purple: resumed from a checkpoint; dotted red: early stop.",
                "line charts of view, purchase and cart loss"),
        fig.add("train_valid_ndcg", lambda: figs.valid_curve(epochs, best),
                "Valid-window NDCG@10 and HR@10 after each epoch (higher is better); the red star is the best epoch, "
                "whose checkpoint (best.pt) evaluate and export use.",
                "line chart of valid NDCG@10 per epoch with the best epoch marked"),
        fig.add("train_lr_speed", lambda: figs.lr_speed(epochs, run.steps),
                "Left: the learning rate (warmup, then cosine decay) per logged step. Right: training speed per epoch "
                "in tokens per second (the first epoch includes warm-up costs).",
                "learning rate per step and tokens per second per epoch"),
    ]
    if not run.steps:
        out.append(note(f"Per-step curves left out: {run.out_dir / 'train_steps.jsonl'} is missing "
                        "(a run trained before step logging); the epoch curves are shown."))
    md = run.metadata
    facts = [("epochs done", n(md, "epochs_done")), ("best epoch", n(md, "best_epoch")),
             ("best valid NDCG@10", n(md, "best_valid_ndcg@10")),
             ("early stop", f"after epoch {fmt(int(run.early_stop))}" if run.early_stop is not None else "no"),
             ("resumed", ", ".join(f"at epoch {r['epoch']} batch {r.get('batch', 0)} (step {r['step']})" for r in run.resumes)
              or "never"),
             ("device", esc(md.body.get("device")) if md else "n/a"),
             ("training time (s)", n(md, "timings", "train_s")), ("total time (s)", n(md, "timings", "total_s"))]
    rows = [[n(h, i, "epoch"), n(h, i, "view_loss"), n(h, i, "purchase_loss"), n(h, i, "cart_loss"),
             n(h, i, "valid", "ndcg@10"), n(h, i, "valid", "hr@10"), n(h, i, "lr"), n(h, i, "tokens_per_s"),
             n(h, i, "seconds")] for i in range(len(epochs))]
    out.append("<h3>Run</h3>" + kv(facts))
    out.append("<h3>Per epoch</h3>" + table(["epoch", "view loss", "purchase loss", "cart loss", "valid NDCG@10",
                                              "valid HR@10", "learning rate", "tokens/s", "seconds"], rows))
    return "".join(out)


def rankers_of(metrics: dict[str, Any], k0: int) -> dict[str, tuple[str, ...]]:
    """Ranker name -> its keys in metrics.json: baselines first, then the models, then any later ranker."""
    found: dict[str, tuple[str, ...]] = {}
    for name in metrics.get("baselines", {}):
        found[name] = ("baselines", name)
    for key, value in metrics.items():
        if key not in ("default_metrics", "baselines") and isinstance(value, dict) and f"ndcg@{k0}" in value:
            found[key] = (key,)
    return found


def quality_section(run: RunFiles, fig: Figures) -> str:
    mt = run.metrics
    if mt is None:
        return note(f"Left out: run {run.name} has no {run.out_dir / 'metrics.json'}; "
                    f"run purchasepred evaluate --run {run.name}")
    b = mt.body
    ks = b["k"]
    k0 = ks[0]
    found = rankers_of(b, k0)
    metrics = {name: _get(b, keys) for name, keys in found.items()}
    keys = [f"ndcg@{k}" for k in ks] + [f"hr@{k0}", "mrr"]
    out = [fig.add("quality_rankers", lambda: figs.rankers(metrics, keys, TITLES),
                   f"NDCG@K, HR@{k0} and MRR of each ranker on the {b['split']} window (higher is better), whiskers: "
                   "95% bootstrap interval over users. Grey hatched bars are the baselines, coloured bars the models; "
                   "where two intervals overlap, the difference between them is not clear.",
                   "bar charts of ranking quality per ranker with intervals")]
    out.append(f'<p class="{"verdict" if b.get("default_beats_history") else "verdict bad"}">{verdict(mt, found)}</p>')
    header = ["ranker"]
    for k in ks:
        header += [f"NDCG@{k}", "95% interval"]
    header += [f"HR@{k0}", "95% interval", "MRR", "95% interval", "users"]
    rows = []
    for name, path in found.items():
        label = esc(TITLES.get(name, name) + (" (baseline)" if name in BASELINES else "")
                    + (" (default)" if b.get("default") == name else ""))
        row = [label]
        for key in [f"ndcg@{k}" for k in ks] + [f"hr@{k0}", "mrr"]:
            ci = _get(b, path + (f"{key}_ci",))
            row += [n(mt, *path, key), f"[{n(mt, *path, f'{key}_ci', 0)}, {n(mt, *path, f'{key}_ci', 1)}]" if ci else "n/a"]
        row.append(n(mt, *path, "users"))
        rows.append(row)
    out.append(f"<h3>Test window {esc(b['window']['start'])} .. {esc(b['window']['end'])}</h3>" + table(header, rows))
    first = next(iter(metrics.values()))
    segments = [(s, f"{label}\n(n = {first.get(s, {}).get('users', 0):,})") for s, label in SEGMENTS]
    out.append(fig.add("quality_breakdowns", lambda: figs.breakdowns(metrics, segments, f"ndcg@{k0}", TITLES),
                       f"NDCG@{k0} by segment (n = buyers in it): users with and without events before the window, and "
                       "purchases of items the user had already seen versus new ones. Models usually win on new items, "
                       "the history baseline on seen ones.",
                       "grouped bar chart of NDCG by segment per ranker"))
    brows = [[esc(TITLES.get(name, name))] + [n(mt, *path, s, f"ndcg@{k0}") for s, _ in SEGMENTS]
             for name, path in found.items()]
    first_path = next(iter(found.values()))
    out.append(table([f"NDCG@{k0}"] + [f"{label} ({fmt(_get(b, first_path + (s, 'users')))})" for s, label in SEGMENTS], brows))
    return "".join(out)


def verdict(mt: Source, found: dict[str, tuple[str, ...]]) -> str:
    """The comparison in words: transformer against history (do the intervals overlap?), the default ranker."""
    b = mt.body
    k0 = b["k"][0]
    key = f"ndcg@{k0}"
    hist = _get(b, found["history"] + (key,)) if "history" in found else None
    parts = []
    if "model" in found and hist is not None:
        mv = _get(b, ("model", key))
        mci, hci = _get(b, ("model", f"{key}_ci")), _get(b, found["history"] + (f"{key}_ci",))
        overlap = bool(mci and hci and None not in mci + hci and mci[0] <= hci[1] and hci[0] <= mci[1])
        parts.append(f"The transformer {'beats' if mv > hist else 'does NOT beat'} the history baseline on NDCG@{k0} "
                     f"({n(mt, 'model', key)} vs {n(mt, *found['history'], key)})"
                     + ("; their 95% intervals overlap, so the difference is not conclusive." if overlap else
                        "; their 95% intervals do not overlap." if mci and hci else "."))
    default = b.get("default")
    if default in found and hist:
        dv = _get(b, found[default] + (key,))
        parts.append(f"The default ranker, {esc(TITLES.get(default, default))} (chosen on the valid window, used by export), "
                     f"scores {n(mt, *found[default], key)}, {(dv / hist - 1) * 100:+.1f}% against history.")
    best = max(found, key=lambda r: _get(b, found[r] + (key,)) or -1.0)
    parts.append(f"Best on this window: {esc(TITLES.get(best, best))}.")
    return " ".join(parts)


def calibration_section(run: RunFiles, fig: Figures) -> str:
    mt = run.metrics
    if mt is None or "calibration" not in mt.body:
        return note(f"Left out: run {run.name} has no {run.out_dir / 'metrics.json'} with calibration; "
                    f"run purchasepred evaluate --run {run.name}")
    c = mt.body["calibration"]
    out = []
    if c.get("bins"):
        out.append(fig.add("calibration_reliability", lambda: figs.reliability(c["bins"], c.get("base_rate")),
                           "Reliability diagram of purchase_probability on the evaluated window's top-K pairs: each marker "
                           "is a bin of pairs with equal counts (size = pairs), at its mean predicted probability (x) "
                           "and observed purchase rate (y), log axes. On the dotted diagonal the probability is right; "
                           "below it, it is too high.",
                           "reliability diagram, raw and calibrated"))
    else:
        out.append(note("Reliability diagram left out: this metrics.json predates the per-bin calibration data; "
                        f"rerun purchasepred evaluate --run {run.name}."))
    out.append(table(["purchase_probability", "ECE", "Brier"], [
        ["calibrated (Platt, fitted on valid)", n(mt, "calibration", "ece"), n(mt, "calibration", "brier")],
        ["raw score read as a probability", n(mt, "calibration", "ece_uncalibrated"), n(mt, "calibration", "brier_uncalibrated")],
    ]))
    out.append(kv([("pairs (user, item) scored", n(mt, "calibration", "pairs")),
                   ("base rate (share of pairs bought)", n(mt, "calibration", "base_rate")),
                   ("Platt a, b", f"{n(mt, 'calibration', 'a')}, {n(mt, 'calibration', 'b')}")]))
    return "".join(out)


def recommendations_section(run: RunFiles, fig: Figures, q: dict[str, str]) -> str:
    if run.recs is None:
        return note(f"Left out: run {run.name} has no recommendations CSV ({run.out_dir / 'recommendations.csv'}); "
                    f"run purchasepred export --run {run.name}")
    if run.prepared is None:
        return note(f"Left out: {run.recs} exists but the prepared dataset it was made from was not found.")
    con = _con(run, q)
    o = _records(con, q["recs_overview"])[0]
    src = _records(con, q["recs_by_source"])
    deciles = _records(con, q["recs_popularity_deciles"])
    cats = _records(con, q["recs_top_categories"])
    for r in deciles + cats:
        r["event_share"], r["slot_share"] = float(r["event_share"] or 0), float(r["slot_share"] or 0)
    coverage = 100 * o["items_recommended"] / o["catalog_items"] if o["catalog_items"] else float("nan")
    seen = 100 * o["rows_seen"] / o["rows"] if o["rows"] else float("nan")
    facts = [("file", esc(run.recs)), ("users", d(o["users"], "users")), ("rows", d(o["rows"], "rows")),
             ("items per user", d(o["rows"] // o["users"] if o["users"] else 0, "k")),
             ("distinct items recommended", d(o["items_recommended"], "items_recommended")),
             ("catalog items (with an id)", d(o["catalog_items"], "catalog_items")),
             ("catalog coverage", d(coverage, "coverage_pct", " %")),
             ("recommended items the user has already seen", d(seen, "seen_pct", " %"))]
    out = ["<h3>Overview</h3>" + kv(facts)]
    out.append(fig.add("recs_long_tail", lambda: figs.long_tail(deciles),
                       "Long tail: the catalog split into ten popularity deciles by events (1 = the most-interacted 10% of "
                       "items). Grey: the decile's share of all events; blue: its share of recommendation slots. Blue far "
                       "above grey on decile 1 means the recommendations ignore the tail.",
                       "bar chart of event share and recommendation share per popularity decile"))
    out.append(fig.add("recs_categories", lambda: figs.categories(cats),
                       "The ten categories with the most recommendation slots (blue) against their share of catalog "
                       "events (grey); a category far above its grey bar is pushed more than it is used.",
                       "bar chart of the top categories"))
    out.append(fig.add("recs_sources", lambda: figs.sources(src),
                       "Where each user's list comes from: the default ranker, or the popularity list for users without "
                       "usable history (bar = users).",
                       "bar chart of users per source"))
    out.append(table(["source", "users", "rows"], [[esc(r["source"]), d(r["users"], f"source:{r['source']}:users"),
                                                    d(r["rows"], f"source:{r['source']}:rows")] for r in src]))
    return "".join(out)


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def compare_section(runs: list[RunFiles], fig: Figures) -> str:
    names = [r.name for r in runs]
    settings = {r.name: {**_flat(r.config), **{f"prepared.{k}": v for k, v in
                                                (r.manifest.body.get("settings", {}) if r.manifest else {}).items()}}
                for r in runs}
    keys = sorted({k for s in settings.values() for k in s})
    differ = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in settings.values()}) > 1]
    out = ["<h3>Settings that differ</h3>"]
    out.append(table(["setting"] + names, [[esc(k)] + [esc(fmt(settings[r].get(k))) for r in names] for k in differ])
               if differ else "<p>The runs use the same settings.</p>")
    k0 = next((r.metrics.body["k"][0] for r in runs if r.metrics), 10)
    header = ["run", "epochs", "best valid NDCG@10"]
    order: list[str] = []
    for r in runs:
        if r.metrics:
            order += [x for x in rankers_of(r.metrics.body, k0) if x not in order]
    header += [f"test NDCG@{k0}: {TITLES.get(x, x)}" for x in order] + ["default"]
    rows = []
    for r in runs:
        row = [esc(r.name), n(r.metadata, "epochs_done"), n(r.metadata, "best_valid_ndcg@10")]
        found = rankers_of(r.metrics.body, k0) if r.metrics else {}
        row += [n(r.metrics, *found[x], f"ndcg@{k0}") if x in found else "n/a" for x in order]
        row.append(esc(TITLES.get(r.metrics.body.get("default"), r.metrics.body.get("default"))) if r.metrics else "n/a")
        rows.append(row)
    out.append("<h3>Metrics</h3>" + table(header, rows))
    curves = {r.name: {
        "ndcg": [(e["epoch"], e.get("valid", {}).get("ndcg@10")) for e in (r.history.body if r.history else [])],
        "purchase": [(e["epoch"], e.get("purchase_loss")) for e in (r.history.body if r.history else [])],
        "view": [(e["epoch"], e.get("view_loss")) for e in (r.history.body if r.history else [])],
    } for r in runs}
    out.append(fig.add("compare_curves", lambda: figs.runs_curves(curves, [
        ("ndcg", "valid NDCG@10 (0-1)"), ("purchase", "purchase loss (nats)"), ("view", "view loss (nats)")]),
        "The runs on one axis, one colour per run: valid NDCG@10 (higher is better) and the purchase and view "
        "losses (lower is better) per epoch.", "line charts comparing the runs per epoch"))
    values = {}
    for r in runs:
        found = rankers_of(r.metrics.body, k0) if r.metrics else {}
        values[r.name] = {x: (_get(r.metrics.body, p + (f"ndcg@{k0}",)), _get(r.metrics.body, p + (f"ndcg@{k0}_ci",)) or [None, None])
                          for x, p in found.items()}
    if any(values.values()):
        out.append(fig.add("compare_quality", lambda: figs.runs_quality(values, order, f"ndcg@{k0}", TITLES),
                           f"Test NDCG@{k0} per ranker, one colour per run, whiskers: 95% bootstrap interval; the baselines "
                           "are paler and hatched. Runs are comparable only when their test windows are the same data.",
                           "grouped bar chart of test NDCG per ranker and run"))
    else:
        out.append(note("Quality comparison left out: none of the runs has a metrics.json."))
    return "".join(out)


def _sections(run: RunFiles, fig: Figures, q: dict[str, str]) -> list[tuple[str, str]]:
    return [("Data", data_section(run, fig, q)), ("Training", training_section(run, fig)),
            ("Quality", quality_section(run, fig)), ("Calibration", calibration_section(run, fig)),
            ("Recommendations", recommendations_section(run, fig, q))]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ------------------------------------------------------------------ the command
def default_out(cfg: Config, run: str) -> Path:
    return Path(cfg.train.output_dir) / run / "report.html"


def _is_our_report(path: Path, ours: Path) -> bool:
    """output/<run>/report.html, or a file that a report wrote (its generator tag): regenerated freely."""
    if not path.is_file():
        return False
    if path.resolve() == ours.resolve():
        return True
    with open(path, "rb") as fh:
        return GENERATOR in fh.read(4096).decode("utf-8", "replace")


def build_report(cfg: Config, runs: list[str], out: Path | None = None, force: bool = False,
                 log: Callable[[str], None] | None = None) -> ReportSummary:
    """Write the report of ``runs`` (the first one names the default path and holds the figures)."""
    t0 = time.perf_counter()
    if not runs:
        raise PurchasePredError("give at least one --run R")
    if len(set(runs)) != len(runs):
        raise PurchasePredError(f"--run names a run twice ({', '.join(runs)}); give each run once")
    loaded = [load_run(cfg, r) for r in runs]
    ours = default_out(cfg, runs[0])
    target = Path(out) if out else ours
    check_new_output(target, force or _is_our_report(target, ours))
    q = named_queries("report.sql")
    folder = loaded[0].out_dir / "figures"
    body: list[str] = []
    notes: list[str] = []
    written: list[Path] = []
    many = len(loaded) > 1
    nav = []
    if many:
        fig = Figures(folder, "compare-")
        if log:
            log("comparing the runs")
        body.append(f'<section id="compare"><h2>{esc(COMPARE)}</h2>{compare_section(loaded, fig)}</section>')
        nav.append(("compare", COMPARE))
        written += fig.written
    for run in loaded:
        fig = Figures(folder, f"{run.name}-" if many else "")
        parts = []
        for title, content in _sections(run, fig, q):
            if log:
                log(f"{run.name}: {title.lower()}")
            sid = _slug(f"{title}-{run.name}" if many else title)
            parts.append(f'<section id="{sid}"><h2>{esc(title)}</h2>{content}</section>')
            nav.append((sid, f"{title} ({run.name})" if many else title))
            if content.startswith('<p class="note">Left out'):
                notes.append(f"{run.name}: {title} left out")
        written += fig.written
        body.append(f'<article class="run" id="run-{esc(_slug(run.name))}">'
                    + (f"<h1>Run {esc(run.name)}</h1>" if many else "") + "".join(parts) + "</article>")
    nav_html = "<nav><ul>" + "".join(f'<li><a href="#{esc(i)}">{esc(t)}</a></li>' for i, t in nav) + "</ul></nav>"
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page = Template((Path(__file__).resolve().parent / "template.html").read_text(encoding="utf-8")).substitute(
        title=esc(f"purchasepred report: {', '.join(runs)}"),
        subtitle=esc(f"generated {now} by purchasepred {__version__} from {', '.join(str(r.out_dir) for r in loaded)}; "
                     "every figure is also a PNG in ") + esc(folder),
        body=nav_html + "\n".join(body),
    )
    make_parents(target)
    atomic_write_bytes(target, page.encode("utf-8"))
    return ReportSummary(target, runs, written, notes, time.perf_counter() - t0)
