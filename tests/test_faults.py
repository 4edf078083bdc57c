"""Faults: a process killed or interrupted at any moment, or a disk that fills up, never leaves a
folder that looks finished, never loses the last good checkpoint, and a resumed run ends where an
uninterrupted one ends (CPU, one thread, same seed).

Real signals go to real processes (``python -m purchasepred ...``); the instants a signal cannot be
aimed at (between a checkpoint's rename and the metadata.json that records it, a full disk on the
second checkpoint) are simulated in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import invoke, clean_failure, wait_for, TINY
from purchasepred.config import Config, PrepareConfig, load_config
from purchasepred.data.prepare import prepare
from purchasepred.data.synth import generate
from purchasepred.data.tensors import PreparedData
from purchasepred import checkpoint as ckpt
from purchasepred.runs import load_model
from purchasepred.train.trainer import Trainer, TrainSummary

SETS = ["model.d_model=16", "model.n_layers=1", "train.batch_size=64", "train.device=cpu", "train.seed=3",
        "train.purchase_weight=50"]
EPOCHS = 3
def child(*args: Any, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.Popen([sys.executable, "-m", "purchasepred", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ data, reference
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def data(root: Path) -> PreparedData:
    generate(root / "events.csv", rows=12_000, days=30, seed=7)
    prepare([str(root / "events.csv")], root / "prepared", PrepareConfig(eval_days=3, max_len=20))
    return PreparedData(root / "prepared")


def make_cfg(root: Path, epochs: int = EPOCHS) -> Config:
    return load_config(sets=[*SETS, f"train.epochs={epochs}", f"train.checkpoints_dir={root / 'checkpoints'}",
                             f"train.output_dir={root / 'output'}", f"train.data={root / 'prepared'}"])


def train_args(root: Path, name: str, epochs: int = EPOCHS) -> list[str]:
    args = ["train", "--data", str(root / "prepared"), "--run-name", name, "--epochs", str(epochs)]
    for s in (*SETS, f"train.checkpoints_dir={root / 'checkpoints'}", f"train.output_dir={root / 'output'}"):
        args += ["--set", s]
    return args


@pytest.fixture(scope="module")
def reference(root: Path, data: PreparedData) -> TrainSummary:
    """The uninterrupted run every interrupted one must end like."""
    return Trainer(make_cfg(root), data, "reference").fit()


def valid_metrics(history: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(h["valid"], sort_keys=True) for h in history]


def assert_ends_like_the_reference(run_dir: Path, reference: TrainSummary) -> None:
    meta = json.loads((run_dir / "metadata.json").read_text())
    ref = json.loads((reference.run_dir / "metadata.json").read_text())
    assert meta["epochs_done"] == EPOCHS and [e["epoch"] for e in meta["epochs"]] == list(range(1, EPOCHS + 1))
    assert valid_metrics(meta["epochs"]) == valid_metrics(ref["epochs"])
    assert meta["best_valid_ndcg@10"] == ref["best_valid_ndcg@10"] == reference.best_valid_ndcg10
    assert meta["best_epoch"] == ref["best_epoch"]
    for got, want in zip(meta["epochs"], ref["epochs"], strict=True):
        for key in ("view_loss", "purchase_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), (got["epoch"], key)
    for name in ("last.pt", "best.pt"):
        assert meta["checkpoints"][name] == sha256(run_dir / name), name
    assert "checkpoints_pending" not in meta
    want = torch.load(reference.run_dir / "last.pt", weights_only=True)["model"]
    got = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not list(run_dir.glob(".*tmp*")), "temporary files left in the run folder"


# ------------------------------------------------------------------------------------------------ prepare, SIGKILL
@pytest.fixture(scope="module")
def killed_prepare(root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """prepare of a 300k-row log killed with SIGKILL mid-way, then a train and a prepare on the same --out."""
    big = root / "big.csv"
    generate(big, rows=300_000, days=30, seed=0)
    work = tmp_path_factory.mktemp("killed_prepare")
    out = work / "X"
    proc = child("-q", "prepare", big, "--out", out, cwd=work)
    wait_for(lambda: any(work.glob(".X.tmp-*")), proc, what="prepare started writing")
    time.sleep(0.3)  # well inside the DuckDB steps (the whole prepare takes seconds)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    state = {"rc": proc.returncode, "out": out, "work": work, "out_existed": out.exists(),
             "manifest_existed": (out / "manifest.json").exists()}
    state["train"] = invoke("train", "--data", out, "--run-name", "x", "--set", f"train.checkpoints_dir={work / 'ck'}",
                            "--set", f"train.output_dir={work / 'o'}")
    state["prepare"] = invoke("prepare", TINY, "--out", out, "--eval-days", "1", "--max-len", "4")
    return state


def test_sigkill_during_prepare_leaves_no_folder_that_looks_finished(killed_prepare: dict[str, Any]) -> None:
    s = killed_prepare
    assert s["rc"] == -signal.SIGKILL, "prepare finished before it was killed: give it a bigger input"
    assert not s["out_existed"] and not s["manifest_existed"]
    # a later train says there is no dataset there, and what to run
    clean_failure(s["train"], s["out"], "purchasepred prepare")
    assert not (s["work"] / "ck" / "x").exists()
    # and a later prepare to the same folder works without --force
    assert s["prepare"].exit_code == 0, s["prepare"].output
    m = json.loads((s["out"] / "manifest.json").read_text())
    assert m["rows_read"] == 24 and m["inputs"][0]["path"] == str(TINY)


def test_a_later_prepare_clears_the_killed_one_s_work_folder(killed_prepare: dict[str, Any]) -> None:
    assert killed_prepare["prepare"].exit_code == 0
    assert sorted(p.name for p in killed_prepare["work"].iterdir() if p.name.startswith(".")) == []


# ------------------------------------------------------------------------------------------------ train, SIGINT
def test_sigint_during_train_saves_a_checkpoint_and_hints_resume(root: Path, data: PreparedData) -> None:
    run_dir = root / "checkpoints" / "sigint"
    proc = child(*train_args(root, "sigint", epochs=50), cwd=root)
    wait_for(lambda: (run_dir / "last.pt").is_file(), proc, what="the first epoch's checkpoint")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out[-2000:], err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: training interrupted; checkpoint saved."), lines
    hint = lines[0].split("Continue with: ", 1)[1]
    words = shlex.split(hint)
    assert words[:2] == ["purchasepred", "train"] and words[-1] == "--resume"
    for flag, value in (("--run-name", "sigint"), ("--data", str(root / "prepared")), ("--epochs", "50")):
        assert words[words.index(flag) + 1] == value, (flag, hint)
    assert "model.d_model=16" in words and f"train.checkpoints_dir={root / 'checkpoints'}" in words

    # the checkpoint it saved is the one metadata.json records, and it loads weights-only
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["checkpoints"]["last.pt"] == sha256(run_dir / "last.pt") and "checkpoints_pending" not in meta
    saved = ckpt.load_checkpoint(run_dir / "last.pt", meta["checkpoints"]["last.pt"])
    assert saved["epoch"] >= 1 and saved["epoch"] < 50
    assert not list(run_dir.glob(".*tmp*"))

    # the hint runs as printed (only the number of epochs shortened so that the test stays short)
    target = saved["epoch"] + 1
    words[words.index("--epochs") + 1] = str(target)
    result = invoke(*words[1:])
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "metadata.json").read_text())["epochs_done"] == target


# ------------------------------------------------------------------------------------------------ train, SIGKILL
def test_sigkill_during_train_then_resume_ends_like_an_uninterrupted_run(
    root: Path, data: PreparedData, reference: TrainSummary,
) -> None:
    run_dir = root / "checkpoints" / "sigkill"
    proc = child(*train_args(root, "sigkill"), cwd=root)
    wait_for(lambda: (run_dir / "last.pt").is_file(), proc, what="the first epoch's checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "training finished before it was killed"
    stopped = json.loads((run_dir / "metadata.json").read_text())["epochs_done"] if (run_dir / "metadata.json").is_file() else 0
    assert stopped < EPOCHS
    result = invoke(*train_args(root, "sigkill"), "--resume")
    assert result.exit_code == 0, result.output
    assert_ends_like_the_reference(run_dir, reference)


class Killed(BaseException):
    """Stands for SIGKILL at one exact instant: nothing after it runs (except cleanups, which a kill skips)."""


def _kill_after_renames(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ckpt.write_metadata

    def write(run_dir: Path, meta: dict[str, Any]) -> None:
        if meta["epochs_done"] == 2 and "checkpoints_pending" not in meta:
            raise Killed  # epoch 2's checkpoints are in place; metadata.json still records epoch 1's
        real(run_dir, meta)

    monkeypatch.setattr(ckpt, "write_metadata", write)


def _kill_between_best_and_last(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ckpt.commit_checkpoint
    seen: list[str] = []

    def commit(tmp: Path, path: Path) -> None:
        seen.append(path.name)
        if path.name == "last.pt" and seen.count("last.pt") == 2:
            raise Killed  # epoch 2's best.pt (if it improved) is in place, last.pt is epoch 1's
        real(tmp, path)

    monkeypatch.setattr(ckpt, "commit_checkpoint", commit)


def _kill_after_pending_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ckpt.write_metadata

    def write(run_dir: Path, meta: dict[str, Any]) -> None:
        real(run_dir, meta)
        if "checkpoints_pending" in meta:
            raise Killed  # metadata.json names epoch 2's files; the files on disk are still epoch 1's

    monkeypatch.setattr(ckpt, "write_metadata", write)


@pytest.mark.parametrize("kill", [_kill_after_renames, _kill_between_best_and_last, _kill_after_pending_hashes],
                         ids=["after-renames", "between-best-and-last", "after-pending-hashes"])
def test_a_kill_at_any_instant_of_a_checkpoint_write_leaves_a_loadable_resumable_run(
    root: Path, data: PreparedData, reference: TrainSummary, monkeypatch: pytest.MonkeyPatch, kill: Any,
) -> None:
    name = f"instant-{kill.__name__}"
    with monkeypatch.context() as mp:
        kill(mp)
        with pytest.raises(Killed):
            Trainer(make_cfg(root), data, name).fit()
    run_dir = root / "checkpoints" / name
    for tmp in run_dir.glob(".*.tmp-*"):  # a real kill skips the cleanup that removed them here
        tmp.unlink()
    (run_dir / f".last.pt.tmp-{os.getpid() + 1}").write_bytes(b"half a checkpoint")  # as a killed process leaves
    # evaluate and export can load both checkpoints: each matches a hash metadata.json records
    for which in ("best", "last"):
        load_model(run_dir, which, data)
    # and the run resumes to the same end as if nothing had happened
    Trainer(make_cfg(root), data, name).fit(resume=True)
    assert_ends_like_the_reference(run_dir, reference)


# ------------------------------------------------------------------------------------------------ a full disk
def _disk_full_on(nth: int) -> Any:
    """torch.save fails with ENOSPC on the nth checkpoint file written (1: epoch 1's best.pt, 2: its last.pt, ...)."""

    def fault(monkeypatch: pytest.MonkeyPatch) -> None:
        real = torch.save
        writes: list[str] = []

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            writes.append(str(getattr(f, "name", f)))
            if len(writes) == nth:
                f.write(b"partial")  # some bytes reach the disk before it is full
                raise OSError(28, "No space left on device")
            real(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", save)

    fault.__name__ = f"_disk_full_on_checkpoint_{nth}"
    return fault


def _disk_full_on_second_last_pt(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.save
    writes: list[str] = []

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        name = str(getattr(f, "name", f))
        if ".last.pt.tmp" in name:
            writes.append(name)
            if len(writes) == 2:
                f.write(b"partial")
                raise OSError(28, "No space left on device")
        real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def _disk_full_on_second_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ckpt.atomic_write_text
    writes: list[Path] = []

    def write(path: Path, text: str) -> None:
        if path.name == "metadata.json":
            writes.append(path)
            if len(writes) == 2:
                raise OSError(28, "No space left on device")
        real(path, text)

    monkeypatch.setattr(ckpt, "atomic_write_text", write)


@pytest.mark.parametrize("fault, needles", [
    (_disk_full_on_second_last_pt, ["could not write checkpoint", "last.pt", "No space left on device",
                                    "previous checkpoint is kept", "--resume"]),
    (_disk_full_on_second_metadata, ["could not write", "metadata.json", "No space left on device", "--resume"]),
], ids=["checkpoint", "metadata"])
def test_a_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(
    root: Path, data: PreparedData, reference: TrainSummary, monkeypatch: pytest.MonkeyPatch, fault: Any,
    needles: list[str],
) -> None:
    name = f"disk-full-{fault.__name__}"
    run_dir = root / "checkpoints" / name
    with monkeypatch.context() as mp:
        fault(mp)
        clean_failure(invoke(*train_args(root, name)), *needles)
    assert not list(run_dir.glob(".*tmp*")), "temporary files left behind"
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["epochs_done"] == 1 and "checkpoints_pending" not in meta
    last = ckpt.load_checkpoint(run_dir / "last.pt", meta["checkpoints"]["last.pt"])
    assert last["epoch"] == 1
    for which in ("best", "last"):
        load_model(run_dir, which, data)
    result = invoke(*train_args(root, name), "--resume")
    assert result.exit_code == 0, result.output
    assert_ends_like_the_reference(run_dir, reference)


def test_a_full_disk_on_the_first_checkpoint_says_to_run_the_same_command_again(
    root: Path, data: PreparedData, reference: TrainSummary, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second file written is epoch 1's last.pt: no checkpoint exists yet, so --resume would be wrong."""
    run_dir = root / "checkpoints" / "disk-full-first"
    with monkeypatch.context() as mp:
        _disk_full_on(2)(mp)
        clean_failure(invoke(*train_args(root, "disk-full-first")), "last.pt", "No space left on device",
                      "no checkpoint of this run was saved yet", "run the same command again")
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]  # not even epoch 1's best.pt
    result = invoke(*train_args(root, "disk-full-first"))
    assert result.exit_code == 0, result.output
    assert_ends_like_the_reference(run_dir, reference)


def test_ctrl_c_during_a_duckdb_query_exits_130_not_as_an_unexpected_error() -> None:
    """DuckDB stops a query on the calling thread at Ctrl-C with RuntimeError('Query interrupted') (the
    load, or sessionize's sort of every shard's events): a command then exits 130 with 'interrupted', as
    for KeyboardInterrupt, while any other RuntimeError stays an unexpected error (exit 1)."""
    import _thread
    import threading

    import duckdb
    import typer

    from purchasepred.cli import handle_errors

    def long_query() -> None:
        threading.Timer(0.3, _thread.interrupt_main).start()
        duckdb.connect().execute("select sum(i) from range(100000000000) t(i)").fetchall()

    def other() -> None:
        raise RuntimeError("something else")

    for fn, code in ((long_query, 130), (other, 1)):
        with pytest.raises(typer.Exit) as exc:
            handle_errors(fn)()
        assert exc.value.exit_code == code
