"""GPU paths (run with `python -m pytest -m gpu` on a CUDA machine): bf16 autocast, torch.compile,
tensors on the device, and that a CUDA-trained run evaluates and exports."""

from __future__ import annotations

import json

import pytest
import torch

from purchasepred.config import PrepareConfig, load_config
from purchasepred.data.prepare import prepare
from purchasepred.data.synth import generate
from purchasepred.data.tensors import PreparedData
from purchasepred.pipeline import evaluate_run, export_run
from purchasepred.train.trainer import RunState, Trainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    raw = root / "raw.csv"
    generate(raw, rows=40_000, days=30, seed=3)
    prepare([str(raw)], root / "prepared", PrepareConfig(eval_days=3))
    return root


@pytest.mark.parametrize("compile_", [False, True])
def test_cuda_bf16_train_evaluate_export(dataset, compile_):
    name = f"gpu-compile-{compile_}"
    cfg = load_config(sets=[
        "train.epochs=2", "train.device=cuda", "train.bf16=true", f"train.compile={str(compile_).lower()}",
        f"train.checkpoints_dir={dataset / 'ck'}", f"train.output_dir={dataset / 'out'}",
        f"train.data={dataset / 'prepared'}", "eval.bootstrap=50",
    ])
    summary = Trainer(cfg, PreparedData(dataset / "prepared"), name).fit()
    assert summary.epochs_done == 2
    assert summary.tokens_per_s > 0
    meta = json.loads((dataset / "ck" / name / "metadata.json").read_text())
    assert meta["device"].startswith("cuda")
    assert all(e["view_loss"] == e["view_loss"] for e in meta["epochs"])  # no NaN under bf16
    result = evaluate_run(cfg, name).result
    assert result["model"]["ndcg@10"] > result["baselines"]["popularity"]["ndcg@10"] * 0.5
    exp = export_run(cfg, name)
    assert exp.rows == exp.users * exp.k


def test_sampled_loss_on_cuda(dataset):
    cfg = load_config(sets=[
        "train.epochs=1", "train.device=cuda", "train.loss=sampled", "train.negatives=256",
        f"train.checkpoints_dir={dataset / 'ck'}", f"train.output_dir={dataset / 'out'}",
    ])
    summary = Trainer(cfg, PreparedData(dataset / "prepared"), "gpu-sampled").fit()
    assert summary.epochs_done == 1


@pytest.mark.parametrize("loss, compile_", [("full", False), ("sampled", False), ("full", True)])
def test_a_training_step_never_waits_for_the_device(dataset, loss, compile_):
    """The trainer's whole step (batch slicing, negatives, forward, losses, backward, clipping, fused
    AdamW, running sums) under torch.cuda.set_sync_debug_mode('error'), which turns every
    synchronising call (a .item(), nonzero, a blocking copy) into an error."""
    cfg = load_config(sets=[
        "train.device=cuda", "train.bf16=true", f"train.compile={str(compile_).lower()}", f"train.loss={loss}",
        f"train.checkpoints_dir={dataset / 'ck'}", f"train.output_dir={dataset / 'out'}",
    ])
    trainer = Trainer(cfg, PreparedData(dataset / "prepared"), f"gpu-sync-{loss}-{compile_}")
    trainer._build()
    assert trainer.compiled == compile_
    run = RunState()
    order = trainer.epoch_order(0)
    on_device = order.to(trainer.device)
    caps = trainer.epoch_caps(order) if compile_ else None
    trainer.step(run, *trainer.batch(order, 0, caps, on_device))  # compilation and allocations first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, min(4, trainer.steps_per_epoch)):
            trainer.step(run, *trainer.batch(order, i, caps, on_device))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(run.loss_sums).all()
