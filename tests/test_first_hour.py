"""A new user's first hour with a real log: the headline commands as typed, Ctrl-C and resume, failed
runs that leave nothing behind, honest verdicts and defaults on few buyers, help, output at 80 columns
and readable numbers.

One small synthetic log (20k rows, 30 days) is shared by the module. ``work`` prepares it with
2-day windows (so the valid and test windows hold few buyers) and trains run ``a`` with a tiny
model once; the tests evaluate, export and run around it. The headline four lines and Ctrl-C
during ``run`` go through real processes, as a user types them (``-m slow``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY, clean_failure, invoke, wait_for
from purchasepred import cli
from purchasepred.data.synth import generate

SMALL = ["--set", "model.d_model=16", "--set", "model.n_layers=1", "--set", "train.device=cpu",
         "--set", "train.batch_size=64"]
FAST_EVAL = ["--set", "eval.bootstrap=50"]
README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent  # where the `purchasepred` console script is installed


def ok(result: Any) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "error:" not in result.output


def env(columns: int = 200) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS=str(columns),
                PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def shell(line: str, cwd: Path, columns: int = 200, timeout: float = 600) -> subprocess.CompletedProcess:
    """One command line typed in a shell, verbatim."""
    return subprocess.run(line, shell=True, cwd=cwd, env=env(columns), capture_output=True, text=True, timeout=timeout)


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def table_rows(text: str) -> dict[str, str]:
    """label -> value of the two-column summary tables in ``text``."""
    return {k.strip(): v.strip() for k, v in re.findall(r"^│ (\S.*?) +│ +(.*?) │$", text, re.M)}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("first_hour_raw") / "raw.csv"
    generate(path, rows=20_000, days=30, seed=5)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, raw: Path) -> dict[str, Any]:
    """A folder where raw.csv was prepared with 2-day windows and run 'a' trained for one epoch."""
    root = tmp_path_factory.mktemp("first_hour")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        prepared = invoke("prepare", raw, "--eval-days", "2", "--max-len", "20")
        ok(prepared)
        trained = invoke("train", "--run-name", "a", "--epochs", "1", *SMALL)
        ok(trained)
    manifest = json.loads((root / "prepared" / "manifest.json").read_text())
    return {"root": root, "train": trained, "manifest": manifest}


@pytest.fixture()
def in_work(work: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.chdir(work["root"])
    return work


def buyers(work: dict[str, Any], split: str) -> int:
    return work["manifest"]["windows"][split]["n_users_with_purchases"]


# ------------------------------------------------------------------ 1. the headline usage, verbatim
HEADLINE = ["purchasepred prepare raw.csv", "purchasepred train --purchase-weight 100", "purchasepred evaluate",
            "purchasepred export"]


@pytest.mark.slow
def test_the_four_headline_lines_run_verbatim_in_a_fresh_folder(raw: Path, tmp_path: Path) -> None:
    shutil.copy(raw, tmp_path / "raw.csv")
    # before any run: evaluate and export name the command that makes one, and create nothing
    for line in HEADLINE[2:]:
        done = shell(line, tmp_path)
        assert done.returncode == 1, done.stderr
        assert "purchasepred train" in error_line(done.stderr)
        assert listing(tmp_path) == {"raw.csv"}
    outs = []
    for line in HEADLINE:
        done = shell(line, tmp_path)
        assert done.returncode == 0, (line, done.stdout[-3000:], done.stderr[-3000:])
        assert "Traceback" not in done.stderr and "error:" not in done.stderr, (line, done.stderr)
        outs.append(done.stdout)
    (run,) = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    for out in outs[2:]:  # the latest run, said in one line
        said = [line for line in out.splitlines() if "latest run" in line]
        assert len(said) == 1 and said[0].startswith(f"using the latest run '{run}'"), said
    assert json.loads((tmp_path / "output" / run / "metrics.json").read_text())["run"] == run
    with open(tmp_path / "output" / run / "recommendations.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_user: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append(row)
    assert len(by_user) == json.loads((tmp_path / "prepared" / "manifest.json").read_text())["n_users"]
    for recs in by_user.values():  # the README's reading of `score`: higher is better, rank 1 first
        assert [int(r["rank"]) for r in recs] == list(range(1, 11))
        scores = [float(r["score"]) for r in recs]
        assert scores == sorted(scores, reverse=True)


# ------------------------------------------------------------------ 2. Ctrl-C during run, then the printed command


@pytest.mark.slow
def test_ctrl_c_during_run_exits_130_and_the_printed_command_finishes_the_run(raw: Path, tmp_path: Path) -> None:
    shutil.copy(raw, tmp_path / "raw.csv")
    line = ("purchasepred run raw.csv --run-name r --epochs 4 " + " ".join(SMALL + FAST_EVAL)
            + " --set train.patience=0")
    words = shlex.split(line)
    proc = subprocess.Popen([str(BIN / words[0]), *words[1:]], cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    run_dir, out_dir = tmp_path / "checkpoints" / "r", tmp_path / "output" / "r"
    wait_for(lambda: (run_dir / "last.pt").is_file(), proc, timeout=120.0, what="the first epoch's checkpoint")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out[-2000:], err)
    assert "Traceback" not in out + err
    first = error_line(err)
    assert "interrupted" in first and "Continue with: " in first
    words = shlex.split(first.split("Continue with: ", 1)[1])
    assert words[:3] == ["purchasepred", "run", "raw.csv"] and words[-1] == "--resume", words
    assert words[words.index("--run-name") + 1] == "r" and words[words.index("--epochs") + 1] == "4"
    assert json.loads((run_dir / "metadata.json").read_text())["epochs_done"] < 4
    assert not (out_dir / "metrics.json").exists()

    again = shell(shlex.join(words), tmp_path)  # the printed command, as printed
    assert again.returncode == 0, (again.stdout[-3000:], again.stderr[-3000:])
    assert "error:" not in again.stderr
    assert json.loads((run_dir / "metadata.json").read_text())["epochs_done"] == 4
    assert json.loads((out_dir / "metrics.json").read_text())["run"] == "r"
    with open(out_dir / "recommendations.csv", newline="") as fh:
        assert next(csv.reader(fh)) == ["user_id", "item_id", "rank", "score", "source", "purchase_probability"]
    assert json.loads((out_dir / "run_summary.json").read_text())["epochs_done"] == 4


# ------------------------------------------------------------------ 3, 4. a failed run leaves nothing; notes are warnings
@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory, raw: Path) -> dict[str, Any]:
    """`run` on a missing file, a directory and a 24-row log (too little data), each with the same run
    name, then the same name on a real log (with a setting the trainer writes a note about)."""
    root = tmp_path_factory.mktemp("failures")
    (root / "adir").mkdir()
    shutil.copy(TINY, root / "little.csv")
    state: dict[str, Any] = {"root": root, "results": {}, "new": {}}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for case, arg in (("missing", "nothere.csv"), ("directory", "adir"), ("too little data", "little.csv")):
            before = listing(root)
            state["results"][case] = invoke("run", arg, "--run-name", "r", "--epochs", "1", *SMALL)
            state["new"][case] = listing(root) - before
        state["retry"] = invoke("run", raw, "--run-name", "r", "--epochs", "1", *SMALL, *FAST_EVAL,
                                "--set", "train.compile=true")
    return state


@pytest.mark.parametrize("case, needle", [("missing", "nothere.csv"), ("directory", "adir"),
                                          ("too little data", "little.csv")])
def test_a_failed_run_leaves_nothing_new(failures: dict[str, Any], case: str, needle: str) -> None:
    line = clean_failure(failures["results"][case], needle)
    assert failures["new"][case] == set()
    assert "output/r" not in line and "checkpoints/r" not in line  # it names no folder that is gone


def test_a_retry_after_failed_runs_needs_no_force_and_a_refusal_names_only_existing_folders(
    failures: dict[str, Any], raw: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ok(failures["retry"])
    root = failures["root"]
    monkeypatch.chdir(root)
    assert (root / "output" / "r" / "metrics.json").is_file() and (root / "checkpoints" / "r" / "last.pt").is_file()
    line = clean_failure(invoke("run", raw, "--run-name", "r", "--epochs", "1", *SMALL), "--force")
    assert str(Path("checkpoints") / "r") in line and str(Path("output") / "r") in line
    shutil.rmtree(root / "checkpoints" / "r")
    line = clean_failure(invoke("run", raw, "--run-name", "r", "--epochs", "1", *SMALL), "--force")
    assert str(Path("output") / "r") in line and "checkpoints" not in line


def test_run_shows_the_trainer_s_notes_as_warnings_on_stderr(failures: dict[str, Any]) -> None:
    result = failures["retry"]
    ok(result)
    note = "--compile is used on CUDA only; running eagerly"
    assert f"warning: {note}" in result.stderr
    assert note not in result.stdout


# ------------------------------------------------------------------ 5. the verdict claims only what the intervals allow
def _result(model: tuple[float, float, float], history: tuple[float, float, float]) -> dict[str, Any]:
    def m(v: tuple[float, float, float]) -> dict[str, Any]:
        return {"ndcg@10": v[0], "ndcg@10_ci": [v[1], v[2]]}
    return {"k": [10], "model": m(model), "blend": m(model), "baselines": {"history": m(history)},
            "default": "blend", "default_metrics": m(model), "default_reason": "best NDCG@10 on the valid window"}


@pytest.mark.parametrize("model, history, words", [
    ((0.40, 0.35, 0.45), (0.38, 0.33, 0.43), "not distinguishable"),  # overlapping
    ((0.40, 0.36, 0.44), (0.30, 0.29, 0.37), "not distinguishable"),  # touching only at the ends: still overlap
    ((0.40, 0.38, 0.42), (0.30, 0.28, 0.32), "transformer beats the history baseline"),
    ((0.30, 0.28, 0.32), (0.40, 0.38, 0.42), "transformer does NOT beat the history baseline"),
])
def test_verdict_claims_a_winner_only_when_the_intervals_are_apart(model: Any, history: Any, words: str) -> None:
    text = cli.verdict(_result(model, history))
    assert words in text
    if words == "not distinguishable":
        assert "beats" not in text and "NOT beat" not in text
    assert "[" in text and "default ranker 'blend'" in text


def test_verdict_measures_the_default_against_the_stronger_baseline_on_valid() -> None:
    r = _result((0.44, 0.43, 0.45), (0.38, 0.37, 0.39))
    r["baselines"]["tifu_knn"] = {"ndcg@10": 0.42, "ndcg@10_ci": [0.40, 0.425]}
    r["fitted_on_valid"] = {"valid_ndcg@10": {"history": 0.30, "tifu_knn": 0.33}}
    text = cli.verdict(r)
    assert "+4.8% vs tifu_knn, the stronger baseline on valid; intervals apart" in text
    r["fitted_on_valid"]["valid_ndcg@10"]["history"] = 0.35  # history stronger on valid: the bar is history
    assert "+15.8% vs history" in cli.verdict(r)


def test_verdict_without_intervals_claims_nothing() -> None:
    r = _result((0.5, 0.5, 0.5), (0.1, 0.1, 0.1))
    r["model"]["ndcg@10_ci"] = [None, None]
    assert "not distinguishable" in cli.verdict(r)


# ------------------------------------------------------------------ 6. few valid buyers: the stronger baseline
def test_few_valid_buyers_make_the_stronger_baseline_the_default(in_work: dict[str, Any]) -> None:
    n = buyers(in_work, "valid")
    assert 0 < n < 50, "the fixture must have fewer valid buyers than eval.min_valid_buyers"
    result = invoke("evaluate", "--run", "a", *FAST_EVAL)
    assert result.exit_code == 0, result.output
    m = json.loads((in_work["root"] / "output" / "a" / "metrics.json").read_text())
    valid = m["fitted_on_valid"]["valid_ndcg@10"]
    assert max(valid, key=valid.get) in ("model", "blend", "propensity", "two_stage"), \
        "a learned ranker must win on valid for this to test anything"
    assert m["default"] == max(("popularity", "history", "tifu_knn"), key=lambda r: valid[r])
    assert f"only {n} valid buyers" in m["default_reason"] and "eval.min_valid_buyers = 50" in m["default_reason"]
    assert m["default_reason"] in " ".join(result.stdout.split())  # the summary says so


def test_min_valid_buyers_zero_lets_a_learned_ranker_be_the_default(in_work: dict[str, Any]) -> None:
    invoke("evaluate", "--run", "a", *FAST_EVAL)  # the fit with the default setting, cached in ranker.json
    result = invoke("evaluate", "--run", "a", *FAST_EVAL, "--set", "eval.min_valid_buyers=0")
    assert result.exit_code == 0, result.output
    m = json.loads((in_work["root"] / "output" / "a" / "metrics.json").read_text())
    valid = m["fitted_on_valid"]["valid_ndcg@10"]
    assert m["default"] == max(valid, key=valid.get) and m["default"] in ("model", "blend", "propensity", "two_stage")
    assert m["default_reason"].startswith("best NDCG@10")


# ------------------------------------------------------------------ 7, 8. warnings below eval.min_buyers; every interval
def _intervals(m: dict[str, Any]) -> list[tuple[str, float, list[Any]]]:
    out = []
    for key, value in m.items():
        if isinstance(value, dict):
            out += [(f"{key}.{k}", v, ci) for k, v, ci in _intervals(value)]
        elif f"{key}_ci" in m:
            out.append((key, value, m[f"{key}_ci"]))
    return out


def test_few_buyers_warn_even_under_quiet_and_every_interval_is_computed(in_work: dict[str, Any]) -> None:
    n = buyers(in_work, "valid")
    assert n < 30
    result = invoke("evaluate", "--run", "a", "--split", "valid", *FAST_EVAL, "--quiet")  # --quiet after the command
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    m = json.loads((in_work["root"] / "output" / "a" / "metrics_valid.json").read_text())
    assert len(m["warnings"]) == 1 and f"only {n} buyer(s) in the valid window" in m["warnings"][0]
    assert [line for line in result.stderr.splitlines() if line.strip()] == [f"warning: {m['warnings'][0]}"]
    for ranker in (m["model"], m["blend"], *m["baselines"].values()):
        found = _intervals(ranker)
        names = {name for name, _, _ in found}
        assert {"ndcg@10", "hr@10", "mrr", "with_history.ndcg@10", "with_history.hr@10", "with_history.mrr"} <= names
        assert any(name.startswith("seen_items.") for name in names)
        for name, value, (lo, hi) in found:
            assert lo is not None and hi is not None and lo <= value <= hi, (name, value, lo, hi)
    # enough buyers for the threshold: no warning
    result = invoke("evaluate", "--run", "a", "--split", "valid", *FAST_EVAL, "--set", f"eval.min_buyers={n}")
    assert result.exit_code == 0 and "warning" not in result.stderr
    assert json.loads((in_work["root"] / "output" / "a" / "metrics_valid.json").read_text())["warnings"] == []


def test_debug_and_quiet_work_after_the_subcommand(in_work: dict[str, Any]) -> None:
    for args in (["--debug", "evaluate", "--run", "nope"], ["evaluate", "--run", "nope", "--debug"]):
        result = invoke(*args)
        assert result.exit_code == 1 and "Traceback" in result.stderr and "purchasepred train" in result.stderr
    result = invoke("evaluate", "--run", "nope")  # without --debug (and after a --debug run): one line
    clean_failure(result, "nope")
    ok(result := invoke("export", "--run", "a", "--k", "3", "--out", "q.csv", "-q"))
    assert result.stdout == "" and (in_work["root"] / "q.csv").is_file()


@pytest.mark.parametrize("command, defaults", [
    ("train", {"--epochs": "8", "--purchase-weight": "100.0", "--batch-size": "256", "--run-name": "a timestamp"}),
    ("run", {"--epochs": "8", "--purchase-weight": "100.0", "--eval-days": "auto"}),
    ("prepare", {"--eval-days": "auto", "--max-len": "50"}),
    ("evaluate", {"--k": "10", "--run": "the latest run"}),
])
def test_help_shows_defaults_of_config_backed_flags_and_no_bool_metavar(command: str, defaults: dict[str, str]) -> None:
    text = cli_help(command)
    for flag, value in defaults.items():
        line = next(line for line in text.splitlines() if line.startswith(f"│ {flag} "))
        assert f"[default: {value}]" in line, line
    assert "<bool>" not in text and "BOOLEAN" not in text
    assert re.search(r"^│ --help +Show this message", text, re.M)
    assert "<bool>" not in cli_help()


def cli_help(*command: str) -> str:
    from typer.testing import CliRunner
    result = CliRunner().invoke(cli.app, [*command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    return result.stdout


# ------------------------------------------------------------------ 9. evaluate --k 5,10,20 fits 80 columns
def test_evaluate_with_three_cutoffs_fits_80_columns(in_work: dict[str, Any]) -> None:
    done = shell("purchasepred evaluate --run a --k 5,10,20 --set eval.bootstrap=50", in_work["root"], columns=80)
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    too_long = [line for line in text.splitlines() if len(line) > 80]
    assert too_long == []
    m = json.loads((in_work["root"] / "output" / "a" / "metrics_k5-10-20.json").read_text())
    for ranker in (m["model"], m["blend"], *m["baselines"].values()):
        for key in ("ndcg@5", "ndcg@10", "ndcg@20", "hr@5", "hr@10", "hr@20", "mrr"):
            lo, hi = ranker[f"{key}_ci"]
            assert f"{ranker[key]:.4f} │ [{lo:.4f}, {hi:.4f}]" in done.stdout, key  # whole cells, one line
    lines = done.stdout.splitlines()
    window = f"test window {cli._when(m['window']['start'])} .. {cli._when(m['window']['end'])}"
    assert any(f"evaluate a: {window}" in line for line in lines)  # the title on one line
    header = [line for line in lines if "with history" in line]
    assert len(header) == 1, header
    for name in ("without history", "seen items", "new items"):
        assert name in header[0]
    counts = next(line for line in lines if line.startswith("│ buyers"))
    for seg in ("with_history", "without_history", "seen_items", "new_items"):
        assert f" {m['model'][seg]['users']:,} " in counts


# ------------------------------------------------------------------ 10. the config: a line, all of it under --debug
def test_train_summarises_its_config_and_prints_it_whole_under_debug(in_work: dict[str, Any]) -> None:
    quiet_config = in_work["train"].stdout
    summary = " ".join(quiet_config.split("epoch 1:")[0].split())  # one sentence before the first epoch
    assert summary.startswith("run a: data prepared, 1 epochs, batch 64") and summary.endswith(
        "model d16 x 1 layers (--debug prints the whole config)"), summary
    assert "weight_decay" not in quiet_config and "popularity_days" not in quiet_config
    result = invoke("train", "--run-name", "dbg", "--epochs", "1", *SMALL, "--set", "train.checkpoints_dir=ck_dbg",
                    "--set", "train.output_dir=out_dbg", "--debug")
    ok(result)
    for key in ("session_gap_minutes:", "weight_decay:", "warmup_frac:", "popularity_days:", "min_valid_buyers:",
                "user_batch:", "d_model: 16"):
        assert key in result.stdout, key


# ------------------------------------------------------------------ 11. numbers a person can read
def _numbers(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def test_metrics_json_floats_have_six_significant_digits_and_counts_stay_integers(in_work: dict[str, Any]) -> None:
    ok_ = invoke("evaluate", "--run", "a", "--split", "valid", *FAST_EVAL)
    assert ok_.exit_code == 0, ok_.output
    text = (in_work["root"] / "output" / "a" / "metrics_valid.json").read_text()
    m = json.loads(text)
    floats = [x for x in _numbers(m) if isinstance(x, float)]
    assert len(floats) > 50
    assert all(float(f"{x:.6g}") == x for x in floats), [x for x in floats if float(f"{x:.6g}") != x][:5]
    assert any(len(repr(x).replace(".", "").lstrip("0")) >= 4 for x in floats)  # rounded, not truncated to nothing
    assert isinstance(m["model"]["users"], int) and m["model"]["users"] == buyers(in_work, "valid")
    assert m["k"] == [10] and isinstance(m["calibration"]["pairs"], int)


def test_summary_tables_show_seconds_with_one_decimal(in_work: dict[str, Any]) -> None:
    rows = table_rows(in_work["train"].stdout)
    assert re.fullmatch(r"\d+\.\d", rows["wall time s"]), rows["wall time s"]


def test_readme_documents_every_metrics_json_key_and_the_score_column(in_work: dict[str, Any]) -> None:
    text = README.read_text()
    section = text.split("### evaluate", 1)[1].split("### export", 1)[0]
    m = json.loads((in_work["root"] / "output" / "a" / "metrics_valid.json").read_text())
    documented = set(re.findall(r"^\| `([^`]+)` \|", section, re.M))
    missing = [k for k in m if k not in documented]
    ranker_keys = {re.sub(r"@\d+", "@K", k) for k in m["model"]}
    missing += [k for k in ranker_keys if f"<ranker>.{k}" not in documented]
    missing += [f"calibration.{k}" for k in m["calibration"] if f"calibration.{k}" not in documented]
    assert missing == []
    export = text.split("### export", 1)[1].split("###", 1)[0]
    assert "`score`" in export and "higher is better" in export and "log-probability" in export
