"""Batch helpers shared by training and scoring."""

from __future__ import annotations

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
