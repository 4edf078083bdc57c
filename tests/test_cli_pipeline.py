"""The CLI end to end through Typer's CliRunner: `run`, `train` (and `--resume`), `evaluate`, `export`,
and their error paths (exit code 1, one red line naming the problem and the next step, no traceback).

Every test runs inside its own temporary working directory, where the default ./prepared,
./checkpoints and ./output folders are created.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from purchasepred.data.synth import generate
from conftest import invoke, clean_failure

TINY = ["--set", "model.d_model=16", "--set", "model.n_layers=1", "--set", "train.device=cpu"]
def ok(result) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "error:" not in result.output


@pytest.fixture(scope="module")
def raw_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli_raw") / "events.csv"
    generate(path, rows=20_000, days=30, seed=2)
    return path


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------ run
def test_run_on_a_tiny_synth_writes_metrics_recommendations_and_summary(work: Path) -> None:
    result = invoke("run", "--rows", "20000", "--epochs", "1", *TINY, "--set", "eval.bootstrap=100", "--run-name", "t")
    ok(result)
    out = work / "output" / "t"
    for name in ("metrics.json", "recommendations.csv", "run_summary.json"):
        assert (out / name).is_file(), name
    assert (work / "checkpoints" / "t" / "last.pt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"model", "baselines", "blend", "default", "calibration"} <= metrics.keys()
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["run"] == "t" and summary["epochs_done"] == 1
    assert set(summary["test"]) == {"popularity", "history", "tifu_knn", "model", "blend", "propensity", "two_stage"}
    assert summary["test"][summary["default"]] == metrics["default_metrics"]["ndcg@10"]
    assert summary["default"] == metrics["default"]
    assert summary["test"]["model"] == metrics["model"]["ndcg@10"]
    # refit by default: the test numbers from the model refit before the test window, export from all events
    assert metrics["model_checkpoint"]["checkpoint"] == "refit_test.pt" and metrics["model_checkpoint"]["refit"]
    assert summary["test_model"] == metrics["model_checkpoint"]
    assert summary["export_model"]["checkpoint"] == "refit_all.pt"
    assert set(summary["refit_seconds"]) == {"test", "all"} and all(v > 0 for v in summary["refit_seconds"].values())
    assert "refit_test.pt" in result.output and "refit_all.pt" in result.output
    assert Path(summary["recommendations"]).resolve() == (out / "recommendations.csv").resolve()
    with open(out / "recommendations.csv", newline="") as fh:
        assert next(csv.reader(fh)) == ["user_id", "item_id", "rank", "score", "source", "purchase_probability"]
    # the same run name again is refused without --force
    again = invoke("run", "--rows", "20000", "--epochs", "1", *TINY, "--run-name", "t")
    clean_failure(again, "'t' exists", "--force")
    assert (out / "metrics.json").is_file()


# ------------------------------------------------------------------------------ train, resume, evaluate, export
def test_train_resume_evaluate_export(work: Path, raw_csv: Path) -> None:
    ok(invoke("prepare", str(raw_csv), "--out", "prepared", "--eval-days", "3", "--max-len", "20"))
    ok(invoke("train", "--epochs", "1", "--run-name", "a", "--batch-size", "64", *TINY))
    run_dir = work / "checkpoints" / "a"
    assert {"last.pt", "best.pt", "config.yaml", "metadata.json"} <= {p.name for p in run_dir.iterdir()}
    assert (work / "output" / "a").is_dir()
    assert json.loads((run_dir / "metadata.json").read_text())["epochs_done"] == 1

    # continue the same run to 2 epochs in total
    ok(invoke("train", "--run-name", "a", "--epochs", "2", "--batch-size", "64", "--resume", *TINY))
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["epochs_done"] == 2 and [e["epoch"] for e in meta["epochs"]] == [1, 2]

    # nothing left to do, or no --resume on an existing run: clear errors
    clean_failure(invoke("train", "--run-name", "a", "--epochs", "2", "--batch-size", "64", "--resume", *TINY),
                  "--epochs larger than 2")
    clean_failure(invoke("train", "--run-name", "a", "--epochs", "3", "--batch-size", "64", *TINY),
                  "already exists", "--resume")
    clean_failure(invoke("train", "--epochs", "3", "--resume", *TINY), "--run-name")

    ok(invoke("evaluate", "--run", "a", "--set", "eval.bootstrap=100"))
    test_metrics = work / "output" / "a" / "metrics.json"
    before = test_metrics.read_bytes()
    assert json.loads(before)["split"] == "test"
    # another --k or --split writes its own file: metrics.json (the test window) is never replaced
    ok(invoke("evaluate", "--run", "a", "--k", "5,10", "--set", "eval.bootstrap=100"))
    ok(invoke("evaluate", "--run", "a", "--split", "valid", "--set", "eval.bootstrap=100"))
    metrics = json.loads((work / "output" / "a" / "metrics_k5-10.json").read_text())
    assert {"ndcg@5", "ndcg@10", "hr@10", "mrr"} <= metrics["model"].keys()
    assert json.loads((work / "output" / "a" / "metrics_valid.json").read_text())["split"] == "valid"
    assert test_metrics.read_bytes() == before

    ok(invoke("export", "--run", "a", "--k", "5"))
    recs = work / "output" / "a" / "recommendations.csv"
    assert recs.read_text().splitlines()[0] == "user_id,item_id,rank,score,source,purchase_probability"
    clean_failure(invoke("export", "--run", "a"), "already exists", "--force")
    ok(invoke("export", "--run", "a", "--force", "--filter-seen"))


# ------------------------------------------------------------------------------ error paths
def test_evaluate_unknown_run_is_one_line(work: Path) -> None:
    clean_failure(invoke("evaluate", "--run", "nope"), "nope", "purchasepred train")


def test_export_unknown_run_is_one_line(work: Path) -> None:
    clean_failure(invoke("export", "--run", "nope"), "nope", "purchasepred train")


@pytest.mark.parametrize("args, needles", [
    (["--purchase-weight", "-1"], ["purchase_weight", "-1"]),
    (["--epochs", "0"], ["epochs", "0"]),
    (["--set", "train.lr=0"], ["train.lr"]),
    (["--set", "train.purchase_wieght=3"], ["train.purchase_wieght", "train.purchase_weight"]),
])
def test_train_rejects_bad_settings(work: Path, args: list[str], needles: list[str]) -> None:
    clean_failure(invoke("train", *args), *needles)
    assert not (work / "checkpoints").exists()


def test_train_before_prepare_names_the_folder_and_the_command(work: Path) -> None:
    line = clean_failure(invoke("train", "--epochs", "1", "--run-name", "x", *TINY), "prepared", "purchasepred prepare")
    assert "x" not in {p.name for p in work.iterdir()}
    assert not (work / "checkpoints" / "x").exists(), line
    clean_failure(invoke("train", "--data", "elsewhere", "--epochs", "1", *TINY), "elsewhere", "purchasepred prepare")
    assert not (work / "checkpoints").exists() and not (work / "elsewhere").exists()


def test_evaluate_rejects_a_bad_split_and_bad_k(work: Path) -> None:
    clean_failure(invoke("evaluate", "--run", "a", "--split", "train"), "--split", "train", "--help", code=2)
    clean_failure(invoke("evaluate", "--run", "a", "--k", "0"), "--k")
    clean_failure(invoke("evaluate", "--run", "a", "--k", "ten"), "--k", "ten")


def test_every_command_has_help() -> None:
    for command in ("synth", "prepare", "train", "evaluate", "export", "run"):
        result = invoke(command, "--help")
        assert result.exit_code == 0, command
        assert "Example:" in result.output, command
