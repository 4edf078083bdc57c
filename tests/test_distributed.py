"""Data-parallel training: torchrun with 2 CPU processes (gloo) against one process.

The in-process tests are fast: the loss weighting that makes averaged gradients those of the global
batch, and the refusal to resume on another world size. The torchrun tests start real process
groups (about a minute on a 2-core box) and run with ``python -m pytest -m distributed``:

- 2 processes with the same global batch give the losses, valid metrics and weights of 1 process
  (dropout 0, full softmax) within ``REL_TOL``; measured on this box: 1.2e-7 relative on losses,
  identical valid metrics;
- rank 1's process writes nothing under the run folders (an audit hook records its writes);
- SIGKILL of rank 1, then ``--resume`` on 2 processes, ends exactly like the uninterrupted run;
- ``export`` on 2 processes writes the rows of 1 process into the one CSV (the parts joined in rank
  order, no part left), and a failing rank leaves no CSV and no parts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from purchasepred.config import Config, ModelConfig, PrepareConfig, TrainConfig, load_config
from purchasepred.features import Vocab
from purchasepred.data.prepare import prepare
from purchasepred.data.synth import generate
from purchasepred.data.tensors import PreparedData
from purchasepred.errors import CheckpointError, DatasetError
from purchasepred.models.transformer import TransformerRecommender
from purchasepred.train import distributed
from purchasepred.train.trainer import Trainer, multitask_loss

SETS = ["model.d_model=16", "model.n_layers=1", "model.dropout=0", "train.batch_size=64", "train.device=cpu",
        "train.seed=3", "train.purchase_weight=50", "train.patience=0"]
EPOCHS = 3
REL_TOL = 1e-5  # 2 ranks vs 1 process: the same sums in another order (measured 1.2e-7)


# ------------------------------------------------------------------------------ in-process
def _random_batch(b: int, t: int, n_items: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    batch = {k: torch.randint(1, 4, (b, t), generator=g) for k in
             ("brand_idx", "category_idx", "event_type_id", "price_bucket", "hour_id", "weekday_id", "gap_bucket")}
    batch["item_idx"] = torch.randint(2, n_items, (b, t), generator=g)
    batch["item_idx"][: b // 2, : t // 2] = 0  # left padding in half the rows
    batch["ts"] = torch.arange(t).repeat(b, 1) * 60
    batch["next_target"] = torch.where(batch["item_idx"] > 0, torch.randint(2, n_items, (b, t), generator=g), 0)
    buy = (torch.rand(b, t, generator=g) < 0.1) & (batch["item_idx"] > 0)
    batch["purchase_target"] = torch.where(buy, torch.randint(2, n_items, (b, t), generator=g), 0)
    batch["cart_target"] = torch.where(torch.rand(b, t, generator=g) < 0.05, 3, 0)
    return batch


def test_weighted_shard_losses_average_to_the_global_batch_gradient() -> None:
    torch.manual_seed(0)
    model = TransformerRecommender(ModelConfig(d_model=16, n_layers=1, n_heads=2, dropout=0.0), Vocab(40, 5, 5), 8).double()
    train_cfg = TrainConfig(purchase_weight=50.0, cart_weight=2.0)
    batch = _random_batch(12, 8, 40, torch.Generator().manual_seed(1))

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]

    whole = grads(multitask_loss(model, model.encode, batch, train_cfg, None)[0])
    world = 3
    shards = [{k: v[rows] for k, v in batch.items()} for rows in torch.arange(12).tensor_split(world)]
    counts = [torch.stack([(s[k] > 0).sum() for k in ("next_target", "purchase_target", "cart_target")]).double()
              for s in shards]
    total = sum(counts)
    averaged = [torch.zeros_like(g) for g in whole]
    for shard, rows in zip(shards, counts, strict=True):
        shares = distributed.row_shares(rows, total, world)
        for acc, g in zip(averaged, grads(multitask_loss(model, model.encode, shard, train_cfg, None, shares)[0]), strict=True):
            acc += g / world  # what DDP's all-reduce does
    unweighted = [torch.zeros_like(g) for g in whole]
    for shard in shards:
        for acc, g in zip(unweighted, grads(multitask_loss(model, model.encode, shard, train_cfg, None)[0]), strict=True):
            acc += g / world
    for a, b in zip(averaged, whole, strict=True):  # the loss parts are summed in float32, hence not 1e-12
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(a, b, rtol=1e-2) for a, b in zip(unweighted, whole, strict=True))  # a mean of means is not it


def test_row_shares_give_nothing_to_a_part_without_rows() -> None:
    shares = distributed.row_shares(torch.tensor([3.0, 0.0, 0.0]), torch.tensor([4.0, 2.0, 0.0]), 2)
    assert shares.tolist() == [1.5, 0.0, 0.0]


def test_without_torchrun_nothing_is_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d, device = distributed.setup(torch.device("cpu"))
    assert not d.enabled and d.is_main and d.world_size == 1 and device == torch.device("cpu")
    assert distributed.shard(torch.arange(5), d).tolist() == [0, 1, 2, 3, 4]
    assert distributed.gather("x", d) == ["x"]


def test_rank_shares_cover_the_global_batch_once() -> None:
    rows = torch.arange(7)
    parts = [distributed.shard(rows, distributed.Dist(rank=r, world_size=3)) for r in range(3)]
    assert torch.cat(parts).tolist() == rows.tolist() and [len(p) for p in parts] == [3, 2, 2]


def test_no_rank_gets_an_empty_share_of_a_batch() -> None:
    """A last global batch of fewer rows than ranks would leave a rank an empty batch (the model takes
    none): epoch_steps leaves that batch out; every other batch, and every batch of one process, stays."""
    from purchasepred.train.trainer import epoch_steps

    for world_size in (1, 2, 3, 8):
        for n_train in range(world_size, 60):
            size = 16
            steps = epoch_steps(n_train, size, world_size)
            order = torch.arange(n_train)
            shares = [[distributed.shard(order[i * size:(i + 1) * size], distributed.Dist(rank=r, world_size=world_size))
                       for r in range(world_size)] for i in range(steps)]
            assert all(len(s) > 0 for batch in shares for s in batch), (world_size, n_train)
            left_out = n_train - steps * size if steps * size < n_train else 0
            assert left_out < world_size, (world_size, n_train)  # at most a few rows, never a whole batch
    assert epoch_steps(33, 16, 1) == 3 and epoch_steps(33, 16, 2) == 2 and epoch_steps(34, 16, 2) == 3
    with pytest.raises(DatasetError, match=r"^2 training sequence\(s\) for 3 processes: .*--nproc_per_node 2 or fewer"):
        epoch_steps(2, 16, 3)


# ------------------------------------------------------------------------------ data and runs
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def data(root: Path) -> PreparedData:
    generate(root / "events.csv", rows=30_000, days=30, seed=0)
    prepare([str(root / "events.csv")], root / "prepared", PrepareConfig(eval_days=3, max_len=20))
    return PreparedData(root / "prepared")


def make_cfg(root: Path, epochs: int = EPOCHS) -> Config:
    return load_config(sets=[*SETS, f"train.epochs={epochs}", f"train.checkpoints_dir={root / 'checkpoints'}",
                             f"train.output_dir={root / 'output'}"])


def _run_dir(root: Path, name: str) -> Path:
    return root / "checkpoints" / name


def test_resuming_on_another_world_size_is_refused(root: Path, data: PreparedData) -> None:
    Trainer(make_cfg(root, 1), data, "ws").fit()
    last = _run_dir(root, "ws") / "last.pt"
    payload = torch.load(last, weights_only=True)
    assert payload["world_size"] == 1 and len(payload["rng"]["torch_by_rank"]) == 1
    payload["world_size"] = 2  # as written by torchrun --nproc_per_node 2
    torch.save(payload, last)
    meta_path = _run_dir(root, "ws") / "metadata.json"
    meta = json.loads(meta_path.read_text())
    assert meta["world_size"] == 1
    meta["checkpoints"]["last.pt"] = __import__("hashlib").sha256(last.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"trained by 2 process\(es\) and this is 1.*torchrun --nproc_per_node 2"):
        Trainer(make_cfg(root, 2), data, "ws").fit(resume=True)


# ------------------------------------------------------------------------------ torchrun
AUDIT_HOOK = '''
import os, sys
if os.environ.get("RANK") is not None and os.environ.get("PP_WATCH"):
    _watch = tuple(os.environ["PP_WATCH"].split(os.pathsep))
    _fd = os.open(os.path.join(os.environ["PP_AUDIT"], "writes-rank" + os.environ["RANK"]),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def _hook(event, args):
        path = None
        if event == "open" and args and isinstance(args[0], (str, os.PathLike)):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            path = args[0] if writes else None
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir") and args:
            path = args[0]
        if path is not None and os.path.abspath(os.fspath(path)).startswith(_watch):
            os.write(_fd, (event + " " + os.fspath(path) + "\\n").encode())

    sys.addaudithook(_hook)

if os.environ.get("RANK") is not None and os.environ.get("PP_FAIL_RANK") == os.environ["RANK"]:
    _fail = os.environ["PP_FAIL_OPEN"]  # this rank's writes to a path containing it fail (a full disk)

    def _fail_hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, os.PathLike)) and _fail in os.fspath(args[0]):
            mode = args[1]
            if isinstance(mode, str) and "w" in mode:
                raise OSError(28, "No space left on device (injected)", os.fspath(args[0]))

    sys.addaudithook(_fail_hook)
'''


def torchrun(root: Path, name: str, *extra: str, nproc: int = 2) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "hook"), *sys.path]),
           "PP_WATCH": os.pathsep.join([str(root / "checkpoints"), str(root / "output")]), "PP_AUDIT": str(root / "audit" / name)}
    (root / "audit" / name).mkdir(parents=True, exist_ok=True)
    args = ["train", "--data", str(root / "prepared"), "--run-name", name, "--epochs", str(EPOCHS)]
    for s in (*SETS, f"train.checkpoints_dir={root / 'checkpoints'}", f"train.output_dir={root / 'output'}"):
        args += ["--set", s]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "purchasepred", "--quiet", *args, *extra]
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def hook(root: Path) -> None:
    (root / "hook").mkdir(exist_ok=True)
    (root / "hook" / "sitecustomize.py").write_text(AUDIT_HOOK)


@pytest.fixture(scope="module")
def one_process(root: Path, data: PreparedData) -> dict[str, Any]:
    Trainer(make_cfg(root), data, "one").fit()
    return json.loads((_run_dir(root, "one") / "metadata.json").read_text())


@pytest.fixture(scope="module")
def two_processes(root: Path, data: PreparedData, hook: None) -> dict[str, Any]:
    proc = torchrun(root, "two")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads((_run_dir(root, "two") / "metadata.json").read_text())


@pytest.mark.distributed
def test_two_processes_train_like_one_with_the_same_global_batch(
    root: Path, one_process: dict[str, Any], two_processes: dict[str, Any],
) -> None:
    assert two_processes["world_size"] == 2 and one_process["world_size"] == 1
    assert len(two_processes["epochs"]) == len(one_process["epochs"]) == EPOCHS
    worst = 0.0
    for got, want in zip(two_processes["epochs"], one_process["epochs"], strict=True):
        for key in ("view_loss", "purchase_loss"):
            assert got[key] == pytest.approx(want[key], rel=REL_TOL), (got["epoch"], key)
            worst = max(worst, abs(got[key] - want[key]) / abs(want[key]))
        assert got["valid"]["users"] == want["valid"]["users"]
        assert got["valid"]["ndcg@10"] == pytest.approx(want["valid"]["ndcg@10"], abs=1e-6)
    print(f"largest relative loss difference, 2 processes vs 1: {worst:.2e}")
    two = torch.load(_run_dir(root, "two") / "last.pt", weights_only=True)
    one = torch.load(_run_dir(root, "one") / "last.pt", weights_only=True)
    assert two["step"] == one["step"] and two["world_size"] == 2 and len(two["rng"]["torch_by_rank"]) == 2
    # A key bias adds the same amount to every score of a softmax row: its gradient is exactly zero
    # and what it holds is float noise that Adam scales to lr-sized steps. Every other weight agrees.
    d = one["model"]["blocks.0.qkv.bias"].shape[0] // 3
    key_bias = {"repeat_k.bias": slice(None), "blocks.0.qkv.bias": slice(d, 2 * d)}
    worst_weight = 0.0
    for name, w in one["model"].items():
        diff = (two["model"][name] - w).abs()
        if name in key_bias:
            diff[key_bias[name]] = 0
        worst_weight = max(worst_weight, float(diff.max()))
    print(f"largest weight difference after {EPOCHS} epochs (key biases aside): {worst_weight:.1e}")
    assert worst_weight < 1e-5


@pytest.mark.distributed
def test_only_rank_zero_writes_the_run_files(root: Path, two_processes: dict[str, Any]) -> None:
    run_dir = _run_dir(root, "two")
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metadata.json"]
    assert sorted(p.name for p in (root / "output" / "two").iterdir()) == ["train_history.json", "train_steps.jsonl"]
    audit = root / "audit" / "two"
    rank0 = (audit / "writes-rank0").read_text()
    assert all(name in rank0 for name in ("last.pt", "metadata.json", "train_steps.jsonl"))  # the hook sees writes
    assert (audit / "writes-rank1").read_text() == ""


def _worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (children, grandchildren)."""
    found, todo = {}, [launcher]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            todo.append(child)
            try:
                env = dict(kv.split("=", 1) for kv in Path(f"/proc/{child}/environ").read_text().split("\0") if "=" in kv)
            except OSError:
                continue
            if "RANK" in env and "purchasepred" in Path(f"/proc/{child}/cmdline").read_text():
                found[int(env["RANK"])] = child
    return found


@pytest.mark.distributed
def test_sigkill_of_one_rank_then_resume_ends_like_an_uninterrupted_run(
    root: Path, two_processes: dict[str, Any], hook: None,
) -> None:
    run_dir = _run_dir(root, "killed")
    proc = torchrun(root, "killed")
    deadline = time.monotonic() + 300
    while not (run_dir / "last.pt").is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    workers = _worker_pids(proc.pid)
    assert set(workers) == {0, 1}, workers
    os.kill(workers[1], signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0, "training finished before rank 1 was killed"
    stopped = json.loads((run_dir / "metadata.json").read_text())["epochs_done"]
    assert stopped < EPOCHS
    resumed = torchrun(root, "killed", "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    meta = json.loads((run_dir / "metadata.json").read_text())
    def losses_and_valid(epochs: list[dict[str, Any]]) -> list[tuple]:
        return [(e["epoch"], e["view_loss"], e["purchase_loss"], json.dumps(e["valid"], sort_keys=True)) for e in epochs]

    assert losses_and_valid(meta["epochs"]) == losses_and_valid(two_processes["epochs"])
    a = torch.load(run_dir / "last.pt", weights_only=True)
    b = torch.load(_run_dir(root, "two") / "last.pt", weights_only=True)
    assert a["step"] == b["step"]
    for name in b["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


# ------------------------------------------------------------------------------ export under torchrun
def torchrun_export(root: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # "--": torchrun's own parser takes --run for an abbreviation of its --run-path and stops
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "purchasepred", "--",
           "--quiet", "export", "--run", "one", "--out", str(out)]
    for s in (*SETS, f"train.checkpoints_dir={root / 'checkpoints'}", f"train.output_dir={root / 'output'}"):
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "hook"), *sys.path]), **(env or {})}
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def _rows(path: Path) -> list[str]:
    header, *rows = path.read_text().splitlines()
    assert header == "user_id,item_id,rank,score,source,purchase_probability"
    return rows


@pytest.fixture(scope="module")
def export_two(root: Path, one_process: dict[str, Any], hook: None) -> Path:
    """2 ranks first: rank 0 fits the rankers (ranker.json) while rank 1 waits, then both score."""
    out = root / "exports" / "two.csv"
    done = torchrun_export(root, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.distributed
def test_two_processes_export_the_rows_of_one(root: Path, export_two: Path) -> None:
    from purchasepred.pipeline import export_run

    one = export_run(make_cfg(root), "one", root / "exports" / "one.csv")
    rows_one, rows_two = _rows(one.path), _rows(export_two)
    assert len(rows_one) == one.users * one.k and len(set(r.split(",")[0] for r in rows_two)) == one.users
    assert sorted(rows_two) == sorted(rows_one)
    # parts are joined in rank order from the same user order: the same CSV as one process
    assert rows_two == rows_one
    assert sorted(p.name for p in export_two.parent.iterdir()) == ["one.csv", "two.csv"]  # no part, no temp file


@pytest.mark.distributed
def test_a_failing_rank_leaves_no_csv_and_no_parts(root: Path, export_two: Path) -> None:
    out = root / "exports_failing" / "recs.csv"
    done = torchrun_export(root, out, {"PP_FAIL_RANK": "1", "PP_FAIL_OPEN": ".recs.csv.part-1-of-2"})
    assert done.returncode != 0
    assert "No space left on device (injected)" in done.stderr  # rank 1's own error
    assert "export failed on another rank" in done.stderr  # what rank 0 says
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
