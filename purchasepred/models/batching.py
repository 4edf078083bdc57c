"""Batch helpers shared by training and scoring."""

from __future__ import annotations

from typing import Any

import torch

from purchasepred.features import PAD


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the left columns that are padding in every row (exact: padding is masked anyway).

    Sequences are left-padded and position embeddings are aligned to the right end, so cutting
    all-padding columns changes no output; short histories then cost what they are worth.
    """
    real = batch["item_idx"] != PAD
    if not bool(real.any()):
        return batch
    first = int(real.any(0).to(torch.int8).argmax())
    return {k: v[:, first:] for k, v in batch.items()} if first > 0 else batch


def target_rows(mask: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The True positions of a (B, T) mask as ``cap`` fixed-size rows: sequence index, position and
    a 0/1 weight, each (cap,), in row-major order (the order of ``torch.nonzero``).

    Slots past the last True position point at (0, 0) with weight 0. Shapes depend on ``cap`` only
    and nothing is read back to the host, so a step keeps fixed shapes and never waits for the
    device (``torch.nonzero`` does both). The k-th True position is where the running count first
    reaches k (a ``searchsorted`` over the cumulative count). A mask with more than ``cap`` True
    positions is an error (raised asynchronously on a GPU), never a silent truncation.
    """
    b, t = mask.shape
    running = mask.reshape(-1).to(torch.long).cumsum(0)  # (B*T,) True positions up to each one
    total = running[-1] if b * t else running.new_zeros(())
    torch._assert_async(total <= cap, "more target rows than the step's capacity")
    k = torch.arange(1, cap + 1, device=mask.device)
    valid = k <= total
    flat = torch.where(valid, torch.searchsorted(running, k), 0) if b * t else torch.zeros_like(k)
    return flat // max(t, 1), flat % max(t, 1), valid


class DeviceRows:
    """Left-padded sequences cut on the device from per-event columns (data.sequences.PaddedRows with
    its arrays moved there): sequence i is the event rows ``[start[i], end[i])``, at most ``width`` of
    them, PAD on the left. A batch is cut where the columns live, from a device index, so a step
    neither copies its batch from the host nor waits for it; the device holds each column once per
    event that a sequence reads (PaddedRows.compact leaves the others out of the training chunks) and
    16 bytes per sequence, not every sequence padded to ``width``."""

    def __init__(self, columns: dict[str, Any], start: Any, end: Any, width: int, device: torch.device) -> None:
        self.columns = {c: torch.as_tensor(v).to(device) for c, v in columns.items()}
        self.start, self.end = torch.as_tensor(start).to(device), torch.as_tensor(end).to(device)
        self.width = width
        self._offsets = torch.arange(width, device=device)

    @property
    def n_sequences(self) -> int:
        return len(self.end)

    def take(self, index: torch.Tensor, first: int = 0) -> dict[str, torch.Tensor]:
        """Every column of the sequences at ``index`` as int64 (what the model and the losses take),
        each (len(index), width - first): the ``first`` left columns, padding in every row, left out."""
        rows = self.end[index][:, None] - self.width + self._offsets[None, first:]
        pad = rows < self.start[index][:, None]
        rows = rows.clamp(min=0)
        return {c: v[rows].long().masked_fill_(pad, PAD) for c, v in self.columns.items()}
