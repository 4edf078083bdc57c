"""Catalog-wide softmax pieces that never hold the full (rows x items) logit matrix.

``linear_logsumexp(h, W, b)`` returns ``logsumexp(h @ W.T + b, dim=-1)`` computed over chunks of
rows. Forward keeps, per row, the softmax-weighted mean item vector ``E = softmax(hW^T) W`` (the
gradient with respect to ``h``), so backward only recomputes the softmax once to get the gradient
of ``W``. That is the same three matrix products as the plain ``F.cross_entropy(h @ W.T, y)`` (which
keeps a rows x items matrix alive between forward and backward), at a fraction of the memory: a
batch of 256 x 50 positions over 200k items would otherwise need 10 GB of logits.

Cross-entropy is then ``lse - target_logit`` with the target logit from ordinary autograd, and the
purchase head's mixture with the repeat path uses ``target_logit - lse`` as the catalog log-prob.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _compute_dtype(h: Tensor, weight: Tensor) -> torch.dtype:
    """bf16/fp16 when the rows come from autocast, else the weight's dtype. Backward runs outside
    autocast, so both operands are cast explicitly to the same dtype."""
    return h.dtype if h.dtype in (torch.bfloat16, torch.float16) else weight.dtype


def _chunk_rows(n_rows: int, n_items: int, device: torch.device | None = None) -> int:
    """Rows per chunk so that a chunk's logits hold about 16M floats on CPU (64 MB, cache and
    memory friendly) and 256M on a GPU (few, large matrix products keep it busy)."""
    budget = 1 << 28 if device is not None and device.type == "cuda" else 1 << 24
    return max(1, min(n_rows, budget // max(n_items, 1)))


def _logits(h: Tensor, w: Tensor, bias: Tensor | None, acc: torch.dtype) -> Tensor:
    """(C, V) logits in the accumulation dtype, bias folded into the product."""
    out = torch.addmm(bias, h, w.t()) if bias is not None else h @ w.t()
    return out if out.dtype == acc else out.to(acc)


class _LinearLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, chunk: int) -> Tensor:  # type: ignore[override]
        n = h.shape[0]
        acc = torch.promote_types(h.dtype, torch.float32)  # accumulate in fp32 (fp64 stays fp64)
        cd = _compute_dtype(h, weight)
        hc, wc = h.to(cd), weight.to(cd)
        lse = torch.empty(n, device=h.device, dtype=acc)
        grad_h = torch.empty(n, weight.shape[1], device=h.device, dtype=acc)
        bias_c = bias.to(cd) if bias is not None else None
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            logits = _logits(hc[start:stop], wc, bias_c, acc)  # (C, V)
            chunk_lse = torch.logsumexp(logits, dim=-1)
            lse[start:stop] = chunk_lse
            probs = logits.sub_(chunk_lse[:, None]).exp_()
            grad_h[start:stop] = (probs.to(cd) @ wc).to(acc)  # (C, D)
        ctx.save_for_backward(h, weight, bias, lse, grad_h)
        ctx.chunk = chunk
        return lse

    @staticmethod
    def backward(ctx, grad_lse: Tensor):  # type: ignore[override]
        h, weight, bias, lse, grad_h_unit = ctx.saved_tensors
        acc = lse.dtype
        cd = _compute_dtype(h, weight)
        hc, wc = h.to(cd), weight.to(cd)
        g = grad_lse.to(acc)
        bias_c = bias.to(cd) if bias is not None else None
        grad_h = (grad_h_unit * g[:, None]).to(h.dtype) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=acc) if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros(bias.shape, device=bias.device, dtype=acc) if bias is not None and ctx.needs_input_grad[2] else None
        if grad_w is not None or grad_b is not None:
            for start in range(0, h.shape[0], ctx.chunk):
                stop = min(start + ctx.chunk, h.shape[0])
                logits = _logits(hc[start:stop], wc, bias_c, acc)
                probs = logits.sub_(lse[start:stop, None]).exp_().mul_(g[start:stop, None])  # (C, V)
                if grad_w is not None:
                    grad_w += (probs.to(cd).t() @ hc[start:stop]).to(acc)
                if grad_b is not None:
                    grad_b += probs.sum(0)
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None,
        )


class _MeanLinearLogSumExp(torch.autograd.Function):
    """sum_i m_i logsumexp(h_i W^T + b) / sum_i m_i for 0/1 row weights m (padding rows of a
    fixed-size batch weigh 0): every gradient is computed in the forward pass (each row's weight
    m_i / sum(m) is known), backward only scales them. Three matrix products per chunk, like the
    unfused F.cross_entropy(h @ W.T), but no (N, V) logits are ever kept; the weights touch only
    (C, D) and (C,) pieces (a 0/1 product is exact in any dtype), never the (C, V) blocks."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor, chunk: int) -> Tensor:  # type: ignore[override]
        n = h.shape[0]
        acc = torch.promote_types(h.dtype, torch.float32)
        cd = _compute_dtype(h, weight)
        hc, wc = h.to(cd), weight.to(cd)
        m_acc, m_cd = mask.to(acc), mask.to(cd)
        total = torch.zeros((), device=h.device, dtype=acc)
        grad_h = torch.empty(h.shape, device=h.device, dtype=h.dtype)
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=acc)
        grad_b = torch.zeros(bias.shape, device=bias.device, dtype=acc) if bias is not None else None
        bias_c = bias.to(cd) if bias is not None else None
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            m = m_cd[start:stop, None]  # (C, 1)
            logits = torch.addmm(bias_c, hc[start:stop], wc.t()) if bias_c is not None else hc[start:stop] @ wc.t()
            # few passes over the (C, V) block, all in the compute dtype (bf16 under autocast):
            # max, one fused softmax (fp32 inside), and lse = max - log p(argmax), exact since p(argmax) >= 1/V
            top, arg = logits.max(dim=-1)
            probs = torch.softmax(logits, dim=-1)
            del logits
            p_top = probs.gather(1, arg[:, None]).squeeze(1).to(acc)
            total += ((top.to(acc) - torch.log(p_top)) * m_acc[start:stop]).sum()
            grad_h[start:stop] = ((probs @ wc) * m).to(h.dtype)
            grad_w.add_((probs.t() @ (hc[start:stop] * m)).to(acc))
            if grad_b is not None:
                grad_b += (probs.t() @ m).squeeze(1).to(acc)
        # d mean / d logits = m_i probs / sum(m): scale the (small) results, not the (C, V) blocks
        n_rows = m_acc.sum().clamp(min=1)
        grad_h.div_(n_rows.to(grad_h.dtype))
        grad_w.div_(n_rows)
        if grad_b is not None:
            grad_b.div_(n_rows)
        ctx.save_for_backward(grad_h, grad_w, grad_b if grad_b is not None else torch.empty(0))
        ctx.has_bias = bias is not None
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total / n_rows

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        grad_h, grad_w, grad_b = ctx.saved_tensors
        g = grad_out.to(grad_w.dtype)
        return (
            grad_h * g.to(grad_h.dtype),
            (grad_w * g).to(ctx.dtypes[0]),
            (grad_b * g).to(ctx.dtypes[1]) if ctx.has_bias else None,
            None,
            None,
        )


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """The mean of ``values`` (N,) over the rows where ``mask`` (N,) is set (all rows when None);
    0 when no row is. A fixed-shape mean: no host sync, the row count stays on the device."""
    if mask is None:
        return values.mean() if values.shape[0] else values.new_zeros(())
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1)


def mean_nll(h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of (N, D) rows against the full (V, D) catalog, fused and chunked; with
    ``mask`` (N,) the mean over the rows where it is set (rows outside it cost their compute only)."""
    if h.shape[0] == 0:
        return h.new_zeros((), dtype=torch.float32)
    chunk = _chunk_rows(h.shape[0], weight.shape[0], h.device)
    rows = mask if mask is not None else torch.ones(h.shape[0], dtype=torch.bool, device=h.device)
    lse = _MeanLinearLogSumExp.apply(h, weight, bias, rows, chunk)
    return lse - masked_mean(target_logits(h, weight, bias, targets), rows)


def linear_logsumexp(h: Tensor, weight: Tensor, bias: Tensor | None = None, chunk: int | None = None) -> Tensor:
    """``logsumexp(h @ weight.T + bias, -1)`` for (N, D) rows against (V, D) items, chunked."""
    if h.shape[0] == 0:
        return h.new_zeros(0, dtype=torch.float32)
    chunk = chunk or _chunk_rows(h.shape[0], weight.shape[0], h.device)
    return _LinearLogSumExp.apply(h, weight, bias, chunk)


def target_logits(h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
    """The logit of each row's target item: (N,)."""
    acc = torch.promote_types(h.dtype, torch.float32)
    logit = (h.to(acc) * weight[targets].to(acc)).sum(-1)
    if bias is not None:
        logit = logit + bias[targets].to(acc)
    return logit


def full_log_prob(h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
    """log softmax(h W^T + b)[target] over the whole catalog, without the (N, V) matrix."""
    return target_logits(h, weight, bias, targets) - linear_logsumexp(h, weight, bias)


def sampled_log_prob(
    h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, negatives: Tensor, log_q: Tensor
) -> Tensor:
    """Sampled softmax with log-Q correction (shared negatives, accidental hits masked).

    ``negatives`` (K,) are item ids drawn from q; ``log_q`` (V,) the log sampling probability of
    every item. Returns an estimate of log p(target) over the catalog for each row (N,).
    """
    pos = target_logits(h, weight, bias, targets) - log_q[targets]  # (N,)
    neg = h @ weight[negatives].t()  # (N, K)
    if bias is not None:
        neg = neg + bias[negatives]
    neg = neg.float() - log_q[negatives][None, :]
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1)
    return pos - torch.logsumexp(logits, dim=1)
