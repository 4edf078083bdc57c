"""TransformerRecommender and its losses: shapes, causality, padding, learning, gradients, heads.

Everything here runs on tiny random batches (no dataset): a catalog of a few dozen items, one or
two layers, d_model 16-32, CPU, eval mode where outputs are compared.
"""

from __future__ import annotations

import math

import pytest
import torch

from purchasepred.config import Config, ModelConfig
from purchasepred.models import losses
from purchasepred.models.losses import full_log_prob, linear_logsumexp, mean_nll, sampled_log_prob
from purchasepred.features import FEATURES, N_EVENT_TYPES, N_GAP, N_HOUR, N_PRICE, N_WEEKDAY, Vocab
from purchasepred.models.transformer import SIDE_FEATURES, TransformerRecommender
from purchasepred.train.trainer import multitask_loss

VOCAB = Vocab(n_items=40, n_brands=9, n_categories=7)
MAX_LEN = 12
HIGH = {
    "item_idx": VOCAB.n_items, "brand_idx": VOCAB.n_brands, "category_idx": VOCAB.n_categories,
    "event_type_id": N_EVENT_TYPES, "price_bucket": N_PRICE, "hour_id": N_HOUR, "weekday_id": N_WEEKDAY,
    "gap_bucket": N_GAP,
}
PURCHASE_ONLY = ("buy_proj.weight", "buy_proj.bias", "buy_bias", "repeat_q.weight", "repeat_q.bias",
                 "repeat_k.weight", "repeat_k.bias", "gate.weight", "gate.bias", "repeat_bias")


def make_model(seed: int = 0, d: int = 16, layers: int = 2, repeat: bool = True, dropout: float = 0.0,
               max_len: int = MAX_LEN) -> TransformerRecommender:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=d, n_layers=layers, n_heads=2, dropout=dropout, repeat_path=repeat)
    return TransformerRecommender(cfg, VOCAB, max_len)


def make_batch(b: int = 4, t: int = MAX_LEN, pad: list[int] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random (B, T) features, left-padded with 0: row r has ``pad[r]`` padding positions."""
    g = torch.Generator().manual_seed(seed)
    pad = pad if pad is not None else [r % 3 for r in range(b)]
    batch = {name: torch.randint(2 if name == "item_idx" else 1, high, (b, t), generator=g) for name, high in HIGH.items()}
    gaps = torch.randint(1, 5000, (b, t), generator=g)
    batch["ts"] = 1_570_000_000 + gaps.cumsum(1)
    for r, p in enumerate(pad):
        for name in batch:
            batch[name][r, :p] = 0
    return batch


def with_left_padding(batch: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    return {k: torch.cat([torch.zeros(v.shape[0], extra, dtype=v.dtype), v], dim=1) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------- encoder
def test_output_shapes() -> None:
    model = make_model().eval()
    batch = make_batch(b=3)
    h = model.encode(batch)
    assert h.shape == (3, MAX_LEN, 16)
    assert torch.isfinite(h).all()
    rows, pos = torch.tensor([0, 1, 2, 2]), torch.tensor([MAX_LEN - 1, 5, 3, MAX_LEN - 1])
    targets = torch.tensor([2, 3, 4, 39])
    assert model.view_nll(h[rows, pos], targets).shape == ()
    lp = model.purchase_log_prob(h, rows, pos, batch, targets)
    assert lp.shape == (4,) and (lp <= 1e-6).all()
    scores = model.score_purchase(batch)
    assert scores.shape == (3, VOCAB.n_items)
    # a sequence shorter than max_len uses the last positions' embeddings
    assert model.encode(make_batch(b=2, t=5, pad=[0, 1])).shape == (2, 5, 16)


@pytest.mark.parametrize("t", [0, 3, 7, MAX_LEN - 2])
def test_causal_future_event_does_not_change_earlier_outputs(t: int) -> None:
    model = make_model(seed=1).eval()
    pad = [0, min(1, t), min(3, t)]  # left padding in two rows (event t+1 is always a real event)
    batch = make_batch(b=3, pad=pad, seed=2)
    changed = {k: v.clone() for k, v in batch.items()}
    g = torch.Generator().manual_seed(99)
    for name, high in HIGH.items():  # every feature of event t+1 changes (item, brand, type, time, ...)
        new = torch.randint(2, high, (3,), generator=g)
        new = torch.where(new == batch[name][:, t + 1], (new - 2 + 1) % (high - 2) + 2, new)
        changed[name][:, t + 1] = new
    changed["ts"][:, t + 1] += 777
    assert all(not torch.equal(changed[n][:, t + 1], batch[n][:, t + 1]) for n in FEATURES)
    with torch.no_grad():
        h0, h1 = model.encode(batch), model.encode(changed)
        for r, p in enumerate(pad):  # real events up to t; padding outputs are unused
            torch.testing.assert_close(h1[r, p: t + 1], h0[r, p: t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(h1[:, t + 1], h0[:, t + 1])
        # the purchase head at t (catalog and repeat path) does not look ahead either
        rows = torch.arange(3).repeat_interleave(3)
        pos = torch.full_like(rows, t)
        targets = torch.cat([batch["item_idx"][:, t + 1], changed["item_idx"][:, t + 1], batch["item_idx"][:, t]])
        targets = targets.view(3, 3).t().reshape(-1)  # row-major: rows 0,0,0,1,1,1,...
        keep = torch.tensor([pad[r] <= t for r in rows.tolist()])  # rows whose position t is an event
        p0 = model.purchase_log_prob(h0, rows[keep], pos[keep], batch, targets[keep])
        p1 = model.purchase_log_prob(h1, rows[keep], pos[keep], changed, targets[keep])
        torch.testing.assert_close(p1, p0, rtol=0, atol=1e-5)


def test_left_padding_does_not_change_the_last_output() -> None:
    model = make_model(seed=3).eval()
    short = make_batch(b=2, t=6, pad=[0, 2], seed=4)
    with torch.no_grad():
        ref_h = model.encode(short)[:, -1]
        ref_scores = model.score_purchase(short)
        for extra in (1, 3, MAX_LEN - 6):
            padded = with_left_padding(short, extra)
            torch.testing.assert_close(model.encode(padded)[:, -1], ref_h, rtol=0, atol=1e-5)
            torch.testing.assert_close(model.score_purchase(padded), ref_scores, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------- learning
def trainer_loss(model: TransformerRecommender, batch: dict[str, torch.Tensor], purchase_weight: float,
                 cart_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The trainer's own multi-task loss (the function Trainer._loss calls)."""
    cfg = Config()
    cfg.train.purchase_weight, cfg.train.cart_weight = purchase_weight, cart_weight
    return multitask_loss(model, model.encode, batch, cfg.train, None)


def _training_batch(b: int = 8, seed: int = 5) -> dict[str, torch.Tensor]:
    batch = make_batch(b=b, pad=[r % 4 for r in range(b)], seed=seed)
    items = batch["item_idx"]
    nxt = torch.zeros_like(items)
    nxt[:, :-1] = items[:, 1:]
    batch["next_target"] = nxt  # next event's item (0 after padding / at the end)
    purchase = torch.zeros_like(items)
    purchase[:, MAX_LEN // 2] = items[:, 4]  # bought an item seen earlier (the repeat path can copy it)
    purchase[:, MAX_LEN - 1] = torch.arange(2, 2 + b)  # and something new
    batch["purchase_target"] = purchase
    batch["cart_target"] = torch.zeros_like(items)
    return batch


def test_overfits_one_small_batch() -> None:
    model = make_model(seed=6, d=32, layers=1).train()
    batch = _training_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    curve = []
    for _ in range(100):
        loss, _ = trainer_loss(model, batch, purchase_weight=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
    assert curve[0] > 2 * math.log(VOCAB.n_items) * 0.8  # starts near chance for both heads
    assert curve[-1] < 0.1 * curve[0], curve[::10]


def _grads(model: TransformerRecommender, loss: torch.Tensor) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def test_purchase_weight_zero_gives_no_gradient_from_the_purchase_head() -> None:
    model = make_model(seed=7).train()
    batch = _training_batch()
    torch.manual_seed(0)  # dropout is 0, but keep the two passes identical anyway
    loss0, parts0 = trainer_loss(model, batch, 0.0)
    assert float(parts0["purchase"].detach()) > 0  # the purchase loss is computed, just weighted by 0
    g0 = _grads(model, loss0)
    for name in PURCHASE_ONLY:
        assert g0[name] is None or torch.count_nonzero(g0[name]) == 0, name
    # the shared parameters get exactly the view loss's gradient
    h = model.encode(batch)
    b, p = torch.nonzero(batch["next_target"] > 0, as_tuple=True)
    g_view = _grads(model, model.view_nll(h[b, p], batch["next_target"][b, p]))
    for name, g in g_view.items():
        if name in PURCHASE_ONLY:
            continue
        torch.testing.assert_close(g0[name], g, rtol=1e-5, atol=1e-8, msg=name)
    # sanity: with a positive weight the purchase-only parameters do learn
    loss1, _ = trainer_loss(model, batch, 1.0)
    g1 = _grads(model, loss1)
    for name in PURCHASE_ONLY:
        assert g1[name] is not None and torch.count_nonzero(g1[name]) > 0, name


# ---------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_logsumexp_matches_torch(dtype: torch.dtype, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(11, 6, generator=g, dtype=dtype), torch.randn(23, 6, generator=g, dtype=dtype)
    b = torch.randn(23, generator=g, dtype=dtype) if with_bias else None
    ref = torch.logsumexp(h @ w.t() + (b if b is not None else 0), dim=-1)
    for chunk in (None, 1, 4, 100):
        out = linear_logsumexp(h, w, b, chunk=chunk)
        assert out.shape == (11,)
        torch.testing.assert_close(out.to(dtype), ref, rtol=1e-5, atol=1e-5)


def test_linear_logsumexp_gradcheck() -> None:
    g = torch.Generator().manual_seed(1)
    h = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(13, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h, w, b: linear_logsumexp(h, w, b, chunk=3), (h, w, b))
    assert torch.autograd.gradcheck(lambda h, w: linear_logsumexp(h, w, None, chunk=2), (h, w))
    # and it agrees with the plain cross-entropy gradient
    y = torch.tensor([0, 3, 12, 5, 5, 1, 7])
    (gh, gw, gb) = torch.autograd.grad(-full_log_prob(h, w, b, y).sum(), (h, w, b))
    (rh, rw, rb) = torch.autograd.grad(
        torch.nn.functional.cross_entropy(h @ w.t() + b, y, reduction="sum"), (h, w, b))
    for a, r in ((gh, rh), (gw, rw), (gb, rb)):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("chunk", [None, 3])
def test_mean_nll_is_the_mean_cross_entropy(chunk: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if chunk is not None:  # force several chunks through the fused loop
        monkeypatch.setattr(losses, "_chunk_rows", lambda *args, **kwargs: chunk)
    g = torch.Generator().manual_seed(4)
    h = torch.randn(10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(17, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(17, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 17, (10,), generator=g)
    out = mean_nll(h, w, b, y)
    ref = torch.nn.functional.cross_entropy(h @ w.t() + b, y)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(3.0 * out, (h, w, b))  # a non-unit upstream gradient
    refs = torch.autograd.grad(3.0 * ref, (h, w, b))
    for a, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(a, r)
    assert torch.autograd.gradcheck(lambda h, w, b: mean_nll(h, w, b, y), (h, w, b))
    assert torch.autograd.gradcheck(lambda h, w: mean_nll(h, w, None, y), (h, w))


def test_view_nll_is_the_mean_full_softmax_log_prob() -> None:
    model = make_model(seed=12).eval()
    g = torch.Generator().manual_seed(5)
    h = torch.randn(9, 16, generator=g)
    y = torch.randint(2, VOCAB.n_items, (9,), generator=g)
    logits = h @ model.item.weight.t() + model.view_bias
    expected = torch.nn.functional.cross_entropy(logits, y)
    torch.testing.assert_close(model.view_nll(h, y), expected, rtol=1e-5, atol=1e-5)


def test_sampled_log_prob_with_every_item_as_negative_is_the_full_softmax() -> None:
    g = torch.Generator().manual_seed(2)
    n_items = 30
    h, w, b = torch.randn(9, 8, generator=g), torch.randn(n_items, 8, generator=g), torch.randn(n_items, generator=g)
    targets = torch.randint(0, n_items, (9,), generator=g)
    log_q = torch.full((n_items,), -math.log(n_items))
    out = sampled_log_prob(h, w, b, targets, torch.arange(n_items), log_q)
    assert out.shape == (9,)
    torch.testing.assert_close(out, full_log_prob(h, w, b, targets), rtol=1e-5, atol=1e-5)


def test_sampled_log_prob_approaches_the_full_softmax_with_many_negatives() -> None:
    g = torch.Generator().manual_seed(3)
    n_items, k = 50, 20_000
    h, w = torch.randn(4, 8, generator=g), torch.randn(n_items, 8, generator=g)
    targets = torch.arange(n_items)
    # uniform q: the estimate orders the whole catalog like the full softmax
    uniform = torch.full((n_items,), 1.0 / n_items)
    negatives = torch.multinomial(uniform, k, replacement=True, generator=g)
    for row in range(4):
        hr = h[row].expand(n_items, -1)
        sampled = sampled_log_prob(hr, w, None, targets, negatives, torch.log(uniform))
        full = full_log_prob(hr, w, None, targets)
        assert sampled.shape == (n_items,)
        assert torch.equal(sampled.argsort(descending=True), full.argsort(descending=True))
    # skewed q, many negatives: log-Q correction makes the estimate (accidental hits of the target
    # removed from the negatives) log p - log(K q_t) - log(1 - p + p / (K q_t)), p the full softmax
    q = torch.rand(n_items, generator=g) + 0.2
    q = q / q.sum()
    negatives = torch.multinomial(q, k, replacement=True, generator=g)
    for row in range(4):
        hr = h[row].expand(n_items, -1)
        sampled = sampled_log_prob(hr, w, None, targets, negatives, torch.log(q))
        full = full_log_prob(hr, w, None, targets)
        p, kq = full.exp(), k * q
        expected = full - torch.log(kq) - torch.log(1 - p + p / kq)
        diff = sampled - expected  # one shared Monte Carlo error per row (the negatives are shared)
        assert float(diff.abs().max()) < 0.1
        assert float(diff.std()) < 0.01


# ---------------------------------------------------------------------------------------- heads
@pytest.mark.parametrize("repeat", [True, False])
def test_score_purchase_is_a_distribution_matching_purchase_log_prob(repeat: bool) -> None:
    model = make_model(seed=8, repeat=repeat).eval()
    batch = make_batch(b=4, pad=[0, 1, 5, MAX_LEN - 1], seed=9)
    scores = model.score_purchase(batch)
    torch.testing.assert_close(scores.exp().sum(1), torch.ones(4), rtol=0, atol=1e-4)
    # the ranking scores are the training head's log-probabilities at the last position
    with torch.no_grad():
        h = model.encode(batch)
        rows = torch.arange(4).repeat_interleave(VOCAB.n_items)
        targets = torch.arange(VOCAB.n_items).repeat(4)
        pos = torch.full_like(rows, MAX_LEN - 1)
        lp = model.purchase_log_prob(h, rows, pos, batch, targets).view(4, VOCAB.n_items)
    torch.testing.assert_close(scores[:, 2:], lp[:, 2:], rtol=1e-4, atol=1e-4)


def test_repeat_path_puts_mass_on_the_users_own_items() -> None:
    model = make_model(seed=10, repeat=True).eval()
    batch = make_batch(b=3, pad=[0, 4, 8], seed=11)
    batch["item_idx"][0, 3] = 1  # an unknown (rare) item in the history gets no repeat mass
    with torch.no_grad():
        model.gate.bias.fill_(30.0)  # the gate picks the repeat path
        p = model.score_purchase(batch).exp()
    for r in range(3):
        seen = torch.unique(batch["item_idx"][r][batch["item_idx"][r] > 1])
        unseen = torch.ones(VOCAB.n_items, dtype=torch.bool)
        unseen[seen] = False
        assert (p[r, seen] > 1e-4).all(), r
        assert float(p[r, seen].sum()) > 0.99
        assert float(p[r, unseen].sum()) < 1e-3
    # with the path off, the same history items get only the catalog's mass
    plain = make_model(seed=10, repeat=False).eval()
    plain.load_state_dict(model.state_dict())
    q = plain.score_purchase(batch).exp()
    seen0 = torch.unique(batch["item_idx"][0][batch["item_idx"][0] > 1])
    assert float(q[0, seen0].sum()) < 0.9


# ---------------------------------------------------------------------------------------- fused side lookup
def test_fused_side_lookup_equals_the_separate_tables_and_leaves_padding_rows_alone() -> None:
    model = make_model(d=16).double()
    batch = make_batch(b=5, seed=3)
    batch["brand_idx"][0, 5] = 0  # a real event with a missing brand: adds nothing
    side = torch.stack([batch[k] for k in SIDE_FEATURES], -1)
    tables = [model._side_table(k) for k in SIDE_FEATURES]
    separate = sum(table(batch[k]) for k, table in zip(SIDE_FEATURES, tables, strict=True))
    fused = model.side_embedding(side)
    torch.testing.assert_close(fused, separate, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(fused.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (fused * upstream).sum().backward()
    fused_grads = [t.weight.grad.clone() for t in tables]
    model.zero_grad(set_to_none=True)
    (sum(table(batch[k]) for k, table in zip(SIDE_FEATURES, tables, strict=True)) * upstream).sum().backward()
    for table, got in zip(tables, fused_grads, strict=True):
        torch.testing.assert_close(got, table.weight.grad, rtol=1e-12, atol=1e-12)
        assert not got[0].any()  # id 0 (padding / missing) learns nothing
    assert set(SIDE_FEATURES) | {"item_idx"} == set(FEATURES)


def test_checkpoint_parameter_names_are_unchanged_by_the_fused_lookup() -> None:
    names = set(make_model().state_dict())
    assert {"brand.weight", "category.weight", "event_type.weight", "price.weight", "hour.weight",
            "weekday.weight", "gap.weight"} <= names and "side_offsets" not in names
