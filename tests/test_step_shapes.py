"""Fixed-shape training steps: target rows gathered into a fixed number of slots, mask-weighted
losses equal to the plain per-row computation, nothing read back from the device inside a step, and
a step torch.compile takes as one graph.

Tiny random batches on CPU (the models of test_model.py); the reference losses are written out
the obvious way: ``torch.nonzero`` picks the target rows, the view loss is ``F.cross_entropy`` over
materialised logits, the purchase loss the mean of ``purchase_log_prob`` over the picked rows.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from purchasepred.config import TrainConfig
from purchasepred.data.sequences import PaddedRows
from purchasepred.models.batching import DeviceRows, target_rows
from purchasepred.models.losses import mean_nll, sampled_log_prob
from purchasepred.models.transformer import TransformerRecommender
from purchasepred.train.trainer import (
    CAP_ROUND, LOSS_PARTS, TARGETS, MultitaskLoss, compile_loss, multitask_loss, param_groups, round_caps, train_step,
)
from test_model import MAX_LEN, VOCAB, make_batch, make_model


# ---------------------------------------------------------------------------------------- target rows
@pytest.mark.parametrize("density", [0.0, 0.03, 0.5, 1.0])
@pytest.mark.parametrize("extra", [0, 7])
def test_target_rows_are_the_nonzero_positions_in_order(density: float, extra: int) -> None:
    g = torch.Generator().manual_seed(int(density * 100) + extra)
    mask = torch.rand(5, 9, generator=g) < density
    n = int(mask.sum())
    seq, pos, rows = target_rows(mask, n + extra)
    assert seq.shape == pos.shape == rows.shape == (n + extra,)
    b, p = torch.nonzero(mask, as_tuple=True)
    assert torch.equal(seq[:n], b) and torch.equal(pos[:n], p)
    assert rows[:n].all() and not rows[n:].any()
    assert (seq[n:] == 0).all() and (pos[n:] == 0).all()  # the spare slots point at a valid position


def test_target_rows_refuse_more_targets_than_slots() -> None:
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, 1] = mask[2, 3] = mask[2, 0] = True
    with pytest.raises(RuntimeError, match="capacity"):
        target_rows(mask, 2)


def test_device_rows_cut_the_same_sequences_as_the_host() -> None:
    """DeviceRows (the trainer's batches, cut where the columns live) against PaddedRows (the host's cut)
    on random ranges, with and without left columns dropped."""
    rng = np.random.default_rng(0)
    n_events, width = 200, 6
    columns = {"item_idx": rng.integers(2, 50, n_events).astype(np.int32), "hour_id": rng.integers(1, 25, n_events).astype(np.int8),
               "ts": np.sort(rng.integers(0, 10**9, n_events))}
    end = rng.integers(1, n_events + 1, 40)
    first = np.maximum(end - rng.integers(1, 2 * width, 40), 0)
    host = PaddedRows(columns, first, end, width)
    device = DeviceRows(columns, host.start(), end, width, torch.device("cpu"))
    assert device.n_sequences == 40 and device.width == width
    for first_col in (0, 2):
        index = torch.as_tensor(rng.permutation(40)[:16])
        got = device.take(index, first_col)
        want = host.take(index.numpy())
        assert set(got) == set(want)
        for c, v in want.items():
            assert got[c].dtype == torch.int64 and torch.equal(got[c], torch.from_numpy(v[:, first_col:]).long()), c


def test_round_caps() -> None:
    assert round_caps([0, 1, CAP_ROUND, CAP_ROUND + 1], 10_000) == (0, CAP_ROUND, CAP_ROUND, 2 * CAP_ROUND)
    assert round_caps([90, 5], 100) == (100, CAP_ROUND)  # never more than every position


# ---------------------------------------------------------------------------------------- masked mean
def test_mean_nll_with_a_mask_is_the_mean_over_its_rows() -> None:
    g = torch.Generator().manual_seed(3)
    h = torch.randn(10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(17, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(17, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 17, (10,), generator=g)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], dtype=torch.bool)
    out = mean_nll(h, w, b, y, mask)
    ref = F.cross_entropy(h[mask] @ w.t() + b, y[mask])
    torch.testing.assert_close(out, ref)
    for a, r in zip(torch.autograd.grad(2.5 * out, (h, w, b)), torch.autograd.grad(2.5 * ref, (h, w, b)), strict=True):
        torch.testing.assert_close(a, r)  # rows outside the mask get exactly zero gradient
    assert torch.autograd.gradcheck(lambda h, w, b: mean_nll(h, w, b, y, mask), (h, w, b))
    none = mean_nll(h, w, b, y, torch.zeros(10, dtype=torch.bool))  # no target row: 0, and no gradient
    assert float(none.detach()) == 0.0
    assert all(float(gr.abs().max()) == 0.0 for gr in torch.autograd.grad(none, (h, w, b)))


# ---------------------------------------------------------------------------------------- multitask loss
def _batch(purchases: bool, seed: int = 11) -> dict[str, torch.Tensor]:
    """8 sequences, rows 0-3 left-padded; row 5 has no target of any kind; purchases (some of items
    seen earlier, so that the repeat path has something to copy) and carts are sparse."""
    batch = make_batch(b=8, pad=[0, 2, 5, 11, 0, 0, 1, 3], seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    items = batch["item_idx"]
    nxt = torch.zeros_like(items)
    nxt[:, :-1] = items[:, 1:]
    nxt[5] = 0
    batch["next_target"] = nxt
    real = items > 0
    buy = (torch.rand(items.shape, generator=g) < 0.15) & real
    buy[5] = False
    seen = items[torch.arange(8), torch.randint(0, MAX_LEN, (8,), generator=g)].clamp(min=2)[:, None].expand_as(items)
    new = torch.randint(2, VOCAB.n_items, items.shape, generator=g)
    bought = torch.where(torch.rand(items.shape, generator=g) < 0.5, seen, new)
    batch["purchase_target"] = torch.where(buy, bought, 0) if purchases else torch.zeros_like(items)
    cart = (torch.rand(items.shape, generator=g) < 0.1) & real
    cart[5] = False
    batch["cart_target"] = torch.where(cart, new, 0)
    return batch


def reference_loss(model: TransformerRecommender, batch: dict[str, torch.Tensor], cfg: TrainConfig,
                   sample: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The per-row computation written out: nonzero rows, materialised logits, plain means."""
    h = model.encode(batch)
    parts = {}
    b, p = torch.nonzero(batch["next_target"] > 0, as_tuple=True)
    y = batch["next_target"][b, p]
    if sample is None:
        parts["view"] = F.cross_entropy(h[b, p] @ model.item.weight.t() + model.view_bias, y)
    else:
        parts["view"] = -sampled_log_prob(h[b, p], model.item.weight, model.view_bias, y, *sample).mean()
    for name, key in (("purchase", "purchase_target"), ("cart", "cart_target")):
        b, p = torch.nonzero(batch[key] > 0, as_tuple=True)
        if len(b) == 0 or (name == "cart" and cfg.cart_weight == 0):
            parts[name] = h.new_zeros(())
            continue
        parts[name] = -model.purchase_log_prob(h, b, p, batch, batch[key][b, p], sample).mean()
    loss = cfg.view_weight * parts["view"] + cfg.purchase_weight * parts["purchase"] + cfg.cart_weight * parts["cart"]
    return loss, parts


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}


def _counts(batch: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    return tuple(int((batch[key] > 0).sum()) for key in TARGETS)  # type: ignore[return-value]


@pytest.mark.parametrize("loss", ["full", "sampled"])
@pytest.mark.parametrize("repeat", [True, False])
@pytest.mark.parametrize("caps", ["counted", "rounded", "all"])
@pytest.mark.parametrize("purchases", [True, False])
def test_multitask_loss_equals_the_per_row_reference(loss: str, repeat: bool, caps: str, purchases: bool) -> None:
    model = make_model(seed=4, d=16, layers=1, repeat=repeat).train()  # dropout 0: the passes are comparable
    batch = _batch(purchases)
    counts = _counts(batch)
    assert counts[0] > 0 and counts[2] > 0 and (counts[1] > 0) == purchases
    chosen = {"counted": counts, "rounded": tuple(c + 13 for c in counts), "all": None}[caps]
    cfg = TrainConfig(purchase_weight=50.0, cart_weight=3.0)
    sample = None
    if loss == "sampled":
        q = torch.ones(VOCAB.n_items)
        q[:2] = 0
        q = q / q.sum()
        sample = (torch.multinomial(q, 16, replacement=True, generator=torch.Generator().manual_seed(2)),
                  torch.log(q.clamp(min=1e-30)))
    got, got_parts = multitask_loss(model, model.encode, batch, cfg, sample, caps=chosen)
    want, want_parts = reference_loss(model, batch, cfg, sample)
    for name in LOSS_PARTS:
        torch.testing.assert_close(got_parts[name].float(), want_parts[name].float(), rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if not purchases:
        assert float(got_parts["purchase"].detach()) == 0.0
    got_g, want_g = _grads(model, got), _grads(model, want)
    for name, g in want_g.items():
        torch.testing.assert_close(got_g[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_a_batch_without_any_target_gives_zero_loss_and_finite_gradients() -> None:
    model = make_model(seed=5, d=16, layers=1).train()
    batch = _batch(purchases=False)
    for key in TARGETS:
        batch[key] = torch.zeros_like(batch[key])
    loss, parts = multitask_loss(model, model.encode, batch, TrainConfig(cart_weight=1.0), None, caps=(64, 64, 64))
    assert all(float(parts[name]) == 0.0 for name in LOSS_PARTS)
    grads = _grads(model, loss)
    assert all(torch.isfinite(g).all() and float(g.abs().max()) == 0.0 for g in grads.values())


# ---------------------------------------------------------------------------------------- no host sync
class _Ops(TorchDispatchMode):
    """Records every aten op a block runs (with whether any index argument is a boolean mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = str(func.overloadpacket.__name__)
        if name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                   for i in (args[1] if len(args) > 1 else [])):
            name = "index(bool)"
        self.seen.append(name)
        return func(*args, **(kwargs or {}))


# ops whose output shape or a host value depends on tensor contents: each one waits for the device
SYNCING = {"nonzero", "_local_scalar_dense", "masked_select", "index(bool)", "unique", "_unique2", "is_nonzero",
           "nonzero_numpy"}


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_a_training_step_reads_nothing_back_from_the_device(loss: str) -> None:
    model = make_model(seed=6, d=16, layers=1).train()
    batch = _batch(purchases=True)
    cfg = TrainConfig(purchase_weight=50.0, cart_weight=3.0, grad_clip=1.0)
    q = torch.full((VOCAB.n_items,), 1.0 / VOCAB.n_items)
    sample = (torch.multinomial(q, 16, replacement=True), torch.log(q)) if loss == "sampled" else None
    # fused, as the trainer builds it on CUDA (the CPU default, one tensor at a time, reads each
    # parameter's step count with .item(): a host value there, but a sync on a GPU)
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-3, fused=True)
    module = MultitaskLoss(model, cfg)
    caps = _counts(batch)
    with _Ops() as ops:
        train_step(model, lambda b, s: module(b, s, None, caps), opt, batch, 1e-3, cfg, sample)
    assert "addmm" in ops.seen or "mm" in ops.seen  # the mode did see the step
    assert not SYNCING & set(ops.seen), sorted(SYNCING & set(ops.seen))
    # the recorder does catch them: the per-row reference picks its rows with nonzero
    with _Ops() as ref_ops:
        reference_loss(model, batch, cfg, sample)
    assert "nonzero" in ref_ops.seen


# ---------------------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_the_loss_module_traces_as_one_graph(loss: str) -> None:
    model = make_model(seed=7, d=16, layers=1).train()
    batch = _batch(purchases=True)
    q = torch.full((VOCAB.n_items,), 1.0 / VOCAB.n_items)
    sample = (torch.multinomial(q, 16, replacement=True), torch.log(q)) if loss == "sampled" else None
    module = MultitaskLoss(model, TrainConfig(cart_weight=3.0))
    caps = round_caps(_counts(batch), batch["item_idx"].numel())
    explained = torch._dynamo.explain(module)(batch, sample, None, caps)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.slow
def test_a_compiled_step_matches_the_eager_step() -> None:
    """Gradients of one step, then the losses of three optimizer steps, eager and through
    compile_loss (inductor on CPU, forward and backward compiled), from the same weights."""
    torch._dynamo.reset()
    eager_model = make_model(seed=8, d=16, layers=1).train()
    compiled_model = copy.deepcopy(eager_model)
    cfg = TrainConfig(purchase_weight=50.0, cart_weight=3.0, grad_clip=1.0)
    eager, compiled = MultitaskLoss(eager_model, cfg), compile_loss(MultitaskLoss(compiled_model, cfg))
    batches = [_batch(purchases=True, seed=s) for s in (11, 12, 13)]
    caps = round_caps(torch.tensor([_counts(b) for b in batches]).amax(0).tolist(), batches[0]["item_idx"].numel())
    want = _grads(eager_model, eager(batches[0], None, None, caps)[0])
    got = _grads(compiled_model, compiled(batches[0], None, None, caps)[0])
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=name)
    # (parameters are not compared after Adam steps: repeat_k.bias has an exactly-zero gradient in
    # theory, rounding noise in practice, which Adam's normalisation turns into lr-sized moves)
    opts = [torch.optim.AdamW(param_groups(m, 0.01), lr=1e-2) for m in (eager_model, compiled_model)]
    for batch in batches:
        a = train_step(eager_model, lambda b, s: eager(b, s, None, caps), opts[0], batch, 1e-2, cfg)
        c = train_step(compiled_model, lambda b, s: compiled(b, s, None, caps), opts[1], batch, 1e-2, cfg)
        for name in LOSS_PARTS:
            assert math.isfinite(float(a[name])) and float(a[name]) > 0
            torch.testing.assert_close(c[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
