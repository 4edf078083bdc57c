"""The report's figures: plain data in, PNG bytes out (matplotlib, Agg backend, imported lazily).

Every function draws one figure with labelled axes (units in the labels), the baselines in grey with
hatching and the models in colour, intervals as error bars, and returns the PNG bytes.
"""

from __future__ import annotations

import io
import math
from typing import Any

BASELINE_COLORS = {"popularity": "#9e9e9e", "history": "#616161"}
MODEL_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
TYPE_COLORS = {"view": "#1f77b4", "cart": "#ff7f0e", "purchase": "#2ca02c", "remove_from_cart": "#9467bd"}
WIDTH = 9.0  # inches; at DPI this is about the page's content width
DPI = 110


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "svg.fonttype": "none",
    })
    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    _plt().close(fig)
    return buf.getvalue()


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def ranker_style(name: str, order: list[str]) -> dict[str, Any]:
    """Baselines grey and hatched, models in colour (in a fixed order, so a ranker keeps its colour)."""
    if name in BASELINE_COLORS:
        return {"color": BASELINE_COLORS[name], "hatch": "//", "edgecolor": "white"}
    models = [n for n in order if n not in BASELINE_COLORS]
    return {"color": MODEL_COLORS[models.index(name) % len(MODEL_COLORS)], "edgecolor": "white"}


# ------------------------------------------------------------------ Data
def funnel(stages: list[tuple[str, int, str]]) -> bytes:
    """Horizontal bars, top to bottom: (label, rows, kind) with kind 'in', 'out' or 'keep'."""
    plt = _plt()
    colors = {"in": "#1f77b4", "out": "#d62728", "keep": "#2ca02c"}
    fig, ax = plt.subplots(figsize=(WIDTH, 0.42 * len(stages) + 1.0), layout="constrained")
    y = list(range(len(stages)))[::-1]
    values = [v for _, v, _ in stages]
    ax.barh(y, values, color=[colors[k] for _, _, k in stages], height=0.65)
    ax.set_yticks(y, [s for s, _, _ in stages])
    top = max(values + [1])
    for yi, v in zip(y, values, strict=True):
        ax.text(v + top * 0.01, yi, f"{v:,}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel("rows")
    ax.grid(axis="y", visible=False)
    ax.set_title("prepare: from raw rows to model events")
    return _png(fig)


def events_per_day(days: list[Any], by_type: dict[str, list[int]], windows: dict[str, tuple[Any, Any]]) -> bytes:
    """Events per day, one line per event type (log y), valid and test windows shaded."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 3.4), layout="constrained")
    for name, counts in by_type.items():
        ax.plot(days, [c if c > 0 else float("nan") for c in counts], marker="o", markersize=2.5, linewidth=1.2,
                label=name, color=TYPE_COLORS.get(name))
    shades = {"valid": "#ffd54f", "test": "#ef9a9a"}
    for split, (start, end) in windows.items():
        if split in shades:
            ax.axvspan(start, end, color=shades[split], alpha=0.35, label=f"{split} window", linewidth=0)
    ax.set_yscale("log")
    ax.set_ylabel("events per day (log scale)")
    ax.set_xlabel("day (UTC)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.autofmt_xdate(rotation=30)
    return _png(fig)


# ------------------------------------------------------------------ Training
def losses(epochs: list[dict[str, Any]], steps: list[dict[str, Any]], resumes: list[float],
           early_stop: float | None) -> bytes:
    """One panel per task (view, purchase, cart): logged steps as a thin line, epoch means as dots;
    x is the (fractional) epoch, so steps and epochs share one axis."""
    plt = _plt()
    tasks = [t for t in ("view", "purchase", "cart")
             if any(_finite(e.get(f"{t}_loss")) and e.get(f"{t}_loss") for e in epochs)
             or any(_finite(s.get(f"{t}_loss")) and s.get(f"{t}_loss") for s in steps)] or ["view", "purchase"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(WIDTH, 3.0), layout="constrained", squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        key = f"{task}_loss"
        sx = [s["x"] for s in steps if _finite(s.get(key))]
        sy = [s[key] for s in steps if _finite(s.get(key))]
        if sx:
            ax.plot(sx, sy, linewidth=0.8, alpha=0.6, color="#1f77b4", label="logged step")
        ex = [e["epoch"] for e in epochs if _finite(e.get(key))]
        ey = [e[key] for e in epochs if _finite(e.get(key))]
        ax.plot(ex, ey, "o-", color="#0d47a1", markersize=4, linewidth=1.4, label="epoch mean")
        for i, r in enumerate(resumes):
            ax.axvline(r, color="#6a1b9a", linestyle="--", linewidth=1, label="resumed" if i == 0 else None)
        if early_stop is not None:
            ax.axvline(early_stop, color="#d62728", linestyle=":", linewidth=1.4, label="early stop")
        ax.set_title(f"{task} loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy (nats)")
    axes[0][0].legend(frameon=False)
    return _png(fig)


def valid_curve(epochs: list[dict[str, Any]], best_epoch: int | None) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 3.0), layout="constrained")
    x = [e["epoch"] for e in epochs]
    for key, label, style in (("ndcg@10", "valid NDCG@10", "o-"), ("hr@10", "valid HR@10", "s--")):
        y = [e.get("valid", {}).get(key) for e in epochs]
        ax.plot(x, [v if _finite(v) else float("nan") for v in y], style, markersize=4, label=label)
    best = next((e for e in epochs if e["epoch"] == best_epoch), None)
    if best is not None and _finite(best.get("valid", {}).get("ndcg@10")):
        ax.plot([best_epoch], [best["valid"]["ndcg@10"]], "*", color="#d62728", markersize=16,
                label=f"best epoch ({best_epoch})", zorder=5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("score on the valid window (0-1)")
    ax.set_xticks(x)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def lr_speed(epochs: list[dict[str, Any]], steps: list[dict[str, Any]]) -> bytes:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(WIDTH, 2.8), layout="constrained")
    if steps:
        a1.plot([s["x"] for s in steps], [s["lr"] for s in steps], linewidth=1.2, label="logged step")
    a1.plot([e["epoch"] for e in epochs], [e["lr"] for e in epochs], "o", markersize=4, color="#0d47a1", label="end of epoch")
    a1.set_xlabel("epoch")
    a1.set_ylabel("learning rate")
    a1.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    a1.legend(frameon=False)
    a1.set_title("learning rate")
    x = [e["epoch"] for e in epochs]
    a2.bar(x, [e["tokens_per_s"] for e in epochs], color="#1f77b4", width=0.6)
    a2.set_xticks(x)
    a2.set_xlabel("epoch")
    a2.set_ylabel("tokens / s")
    a2.set_title("training speed")
    return _png(fig)


# ------------------------------------------------------------------ Quality
def rankers(metrics: dict[str, dict[str, Any]], keys: list[str], title_of: dict[str, str]) -> bytes:
    """One panel per metric key (ndcg@10, hr@10, mrr): a bar per ranker with its 95% interval; one legend."""
    plt = _plt()
    names = list(metrics)
    fig, axes = plt.subplots(1, len(keys), figsize=(WIDTH, 3.3), layout="constrained", squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for i, name in enumerate(names):
            m = metrics[name]
            v = m.get(key)
            ci = m.get(f"{key}_ci") or [None, None]
            err = None
            if _finite(v) and all(_finite(c) for c in ci):
                err = [[max(v - ci[0], 0.0)], [max(ci[1] - v, 0.0)]]
            label = title_of.get(name, name) + (" (baseline)" if name in BASELINE_COLORS else "")
            ax.bar([i], [v if _finite(v) else 0.0], yerr=err, capsize=4, width=0.7, label=label,
                   error_kw={"elinewidth": 1.2, "ecolor": "black"}, **ranker_style(name, names))
        ax.set_xticks([])
        ax.set_title(key.upper())
        ax.set_ylim(0, 1)
        ax.grid(axis="x", visible=False)
    axes[0][0].set_ylabel("score on the test window (0-1)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(names), 6), frameon=False)
    return _png(fig)


def breakdowns(metrics: dict[str, dict[str, Any]], segments: list[tuple[str, str]], key: str,
               title_of: dict[str, str]) -> bytes:
    """Grouped bars: per segment (x), one bar per ranker; segment labels carry the number of users."""
    plt = _plt()
    names = list(metrics)
    fig, ax = plt.subplots(figsize=(WIDTH, 3.2), layout="constrained")
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        vals = []
        for seg, _ in segments:
            v = metrics[name].get(seg, {}).get(key)
            vals.append(v if _finite(v) else 0.0)
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(segments))]
        label = title_of.get(name, name) + (" (baseline)" if name in BASELINE_COLORS else "")
        ax.bar(xs, vals, width=width, label=label, **ranker_style(name, names))
    ax.set_xticks(range(len(segments)), [label for _, label in segments])
    ax.set_ylabel(f"{key.upper()}, test window (0-1)")
    ax.grid(axis="x", visible=False)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


# ------------------------------------------------------------------ Calibration
def reliability(bins: dict[str, list[dict[str, Any]]], base_rate: float | None) -> bytes:
    """Observed purchase rate against mean predicted probability per bin (log-log), raw and calibrated;
    a bin without any purchase sits on the bottom edge as a downward triangle."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH * 0.66, 4.4), layout="constrained")
    styles = {"raw": ("#757575", "s", "raw score read as a probability"), "calibrated": ("#1f77b4", "o", "calibrated (Platt)")}
    pos = [v for rows in bins.values() for r in rows for v in (r["mean_p"], r["rate"]) if v > 0]
    lo = max(min(pos) / 2, 1e-6) if pos else 1e-4
    hi = min(max(max(pos) * 1.5, lo * 10), 1.0) if pos else 1.0
    for name, rows in bins.items():
        color, marker, label = styles.get(name, ("#333333", "^", name))
        pts = [(max(r["mean_p"], lo), r["rate"], r["pairs"]) for r in rows]
        if not pts:
            continue
        total = sum(c for _, _, c in pts)
        x = [a for a, _, _ in pts]
        y = [b if b > 0 else lo for _, b, _ in pts]
        ax.plot(x, y, "-", color=color, linewidth=1, alpha=0.6)
        size = [25 + 150 * c / total for _, _, c in pts]
        hit = [i for i, (_, b, _) in enumerate(pts) if b > 0]
        miss = [i for i, (_, b, _) in enumerate(pts) if b <= 0]
        ax.scatter([x[i] for i in hit], [y[i] for i in hit], s=[size[i] for i in hit], color=color, marker=marker,
                   label=label, zorder=3, clip_on=False)
        if miss:
            ax.scatter([x[i] for i in miss], [lo] * len(miss), s=40, color=color, marker="v", zorder=3, clip_on=False,
                       label=f"{label}: bin without a purchase")
    ax.plot([lo, hi], [lo, hi], ":", color="black", linewidth=1, label="perfect calibration")
    if base_rate and base_rate > 0:
        ax.axhline(base_rate, color="#2ca02c", linestyle="--", linewidth=1, label="base rate (share of pairs bought)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("mean predicted purchase_probability in the bin (log)")
    ax.set_ylabel("observed purchase rate in the bin (log)")
    ax.legend(frameon=False, loc="upper left", fontsize=7.5)
    return _png(fig)


# ------------------------------------------------------------------ Recommendations
def long_tail(deciles: list[dict[str, Any]]) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 3.0), layout="constrained")
    x = [d["decile"] for d in deciles]
    ax.bar([v - 0.2 for v in x], [100 * d["event_share"] for d in deciles], width=0.4, color="#9e9e9e", hatch="//",
           edgecolor="white", label="share of events (catalog)")
    ax.bar([v + 0.2 for v in x], [100 * d["slot_share"] for d in deciles], width=0.4, color="#1f77b4",
           label="share of recommendation slots")
    ax.set_xticks(x, [f"{v}" for v in x])
    ax.set_xlabel("catalog popularity decile (1 = the most-interacted 10% of items)")
    ax.set_ylabel("share (%)")
    ax.grid(axis="x", visible=False)
    ax.legend(frameon=False)
    return _png(fig)


def categories(rows: list[dict[str, Any]]) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 0.38 * len(rows) + 1.2), layout="constrained")
    y = list(range(len(rows)))[::-1]
    labels = [r["category"] if len(r["category"]) <= 40 else r["category"][:39] + "…" for r in rows]
    ax.barh([v + 0.2 for v in y], [100 * r["slot_share"] for r in rows], height=0.4, color="#1f77b4",
            label="share of recommendation slots")
    ax.barh([v - 0.2 for v in y], [100 * r["event_share"] for r in rows], height=0.4, color="#9e9e9e", hatch="//",
            edgecolor="white", label="share of catalog events")
    ax.set_yticks(y, labels)
    ax.set_xlabel("share (%)")
    ax.grid(axis="y", visible=False)
    ax.legend(frameon=False, loc="lower right")
    return _png(fig)


def sources(rows: list[dict[str, Any]]) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 0.45 * len(rows) + 1.0), layout="constrained")
    y = list(range(len(rows)))[::-1]
    users = [r["users"] for r in rows]
    ax.barh(y, users, color=["#9e9e9e" if r["source"] == "popularity" else "#1f77b4" for r in rows], height=0.6)
    ax.set_yticks(y, [r["source"] for r in rows])
    top = max(users + [1])
    for yi, v in zip(y, users, strict=True):
        ax.text(v + top * 0.01, yi, f"{v:,}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel("users")
    ax.grid(axis="y", visible=False)
    return _png(fig)


# ------------------------------------------------------------------ several runs
def runs_curves(curves: dict[str, dict[str, list[tuple[float, float]]]], panels: list[tuple[str, str]]) -> bytes:
    """One panel per (key, y label); in each, one line per run. ``curves[run][key]`` is [(epoch, value)]."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(WIDTH, 3.0), layout="constrained", squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for i, (run, c) in enumerate(curves.items()):
            pts = [(x, y) for x, y in c.get(key, []) if _finite(y)]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", markersize=3.5, color=MODEL_COLORS[i % len(MODEL_COLORS)], label=run)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    axes[0][0].legend(frameon=False)
    return _png(fig)


def runs_quality(values: dict[str, dict[str, tuple[float, list[Any]]]], rankers_: list[str], key: str,
                 title_of: dict[str, str]) -> bytes:
    """Grouped bars: per ranker (x), one bar per run, with the 95% interval."""
    plt = _plt()
    runs = list(values)
    fig, ax = plt.subplots(figsize=(WIDTH, 3.2), layout="constrained")
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        for j, name in enumerate(rankers_):
            v, ci = values[run].get(name, (float("nan"), [None, None]))
            if not _finite(v):
                continue
            err = [[max(v - ci[0], 0.0)], [max(ci[1] - v, 0.0)]] if all(_finite(c) for c in ci) else None
            style = {"hatch": "//", "edgecolor": "white"} if name in BASELINE_COLORS else {"edgecolor": "white"}
            ax.bar([j + (i - (len(runs) - 1) / 2) * width], [v], width=width, yerr=err, capsize=3,
                   color=MODEL_COLORS[i % len(MODEL_COLORS)], alpha=0.55 if name in BASELINE_COLORS else 1.0,
                   label=run if j == 0 else None, **style)
    ax.set_xticks(range(len(rankers_)), [title_of.get(n, n) + (" (baseline)" if n in BASELINE_COLORS else "") for n in rankers_])
    ax.set_ylabel(f"{key.upper()}, test window (0-1)")
    ax.grid(axis="x", visible=False)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="run")
    return _png(fig)
