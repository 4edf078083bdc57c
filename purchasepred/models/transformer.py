"""TransformerRecommender: a causal (SASRec-style) pre-LN encoder over a user's events, with a view
head, a purchase head and an explicit repeat path.

Each event is one token: item + brand + category + event type + price bucket + hour + weekday +
gap bucket + position embeddings. The seven side features are looked up at once: their tables,
concatenated, are read by one ``embedding_bag`` sum with offsets (id 0 weighted 0, as padding).
Sequences are left-padded with 0; an event attends to itself and to earlier events only (never to
padding).

Heads (all scored against the one item embedding table, so every score is over the full catalog):
- view: the next event's item, ``h_t @ E^T + b_view``.
- purchase (catalog): ``(W_p h_t) @ E^T + b_buy`` - b_buy learns each item's appeal to buyers.
- purchase (repeat path): a pointer over the user's own earlier events j <= t. Its score for
  occurrence j is ``q_t . k_j / sqrt(d) + bias[type_j, recency_bucket(ts_t - ts_j)] + b_buy[item_j]``; an item's
  repeat probability is the pointer mass summed over its occurrences (so frequency counts). A gate
  ``g_t = sigmoid(w . h_t)`` mixes them: ``p(i) = g p_repeat(i) + (1 - g) p_catalog(i)`` (RepeatNet).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from purchasepred.config import ModelConfig
from purchasepred.features import (
    FEATURES, N_EVENT_TYPES, N_GAP, N_HOUR, N_PRICE, N_WEEKDAY, UNKNOWN, Vocab,
)
from purchasepred.models.losses import full_log_prob, masked_mean, mean_nll, sampled_log_prob

N_RECENCY = 26  # floor(log2(1 + seconds)), capped
SIDE_FEATURES = tuple(f for f in FEATURES if f != "item_idx")  # embedded together by one fused lookup
NEG = -1e4  # "impossible" log-weight: finite, so that gradients stay finite where a row has no history


def recency_bucket(delta_seconds: Tensor) -> Tensor:
    return torch.log2(1.0 + delta_seconds.clamp(min=0).float()).floor().clamp(max=N_RECENCY - 1).long()


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))  # (B, H, T, d/H)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TransformerRecommender(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab: Vocab, max_len: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg, self.vocab, self.max_len = cfg, vocab, max_len
        self.item = nn.Embedding(vocab.n_items, d, padding_idx=0)
        self.brand = nn.Embedding(vocab.n_brands, d, padding_idx=0)
        self.category = nn.Embedding(vocab.n_categories, d, padding_idx=0)
        self.event_type = nn.Embedding(N_EVENT_TYPES, d, padding_idx=0)
        self.price = nn.Embedding(N_PRICE, d, padding_idx=0)
        self.hour = nn.Embedding(N_HOUR, d, padding_idx=0)
        self.weekday = nn.Embedding(N_WEEKDAY, d, padding_idx=0)
        self.gap = nn.Embedding(N_GAP, d, padding_idx=0)
        self.position = nn.Embedding(max_len, d)
        # the side tables stay separate parameters (checkpoint names unchanged); encode reads them as
        # one table: row offsets[f] + id of feature f
        sizes = [self._side_table(f).num_embeddings for f in SIDE_FEATURES]
        self.register_buffer("side_offsets", torch.tensor([0, *sizes[:-1]]).cumsum(0), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.view_bias = nn.Parameter(torch.zeros(vocab.n_items))
        self.buy_proj = nn.Linear(d, d)
        self.buy_bias = nn.Parameter(torch.zeros(vocab.n_items))
        self.repeat_q = nn.Linear(d, d)
        self.repeat_k = nn.Linear(d, d)
        self.repeat_bias = nn.Parameter(torch.zeros(N_EVENT_TYPES, N_RECENCY))
        self.gate = nn.Linear(d, 1)
        self.apply(self._init)

    def _side_table(self, feature: str) -> nn.Embedding:
        return {"brand_idx": self.brand, "category_idx": self.category, "event_type_id": self.event_type,
                "price_bucket": self.price, "hour_id": self.hour, "weekday_id": self.weekday,
                "gap_bucket": self.gap}[feature]

    def side_embedding(self, ids: Tensor) -> Tensor:
        """(B, T, 7) side-feature ids (SIDE_FEATURES order) -> (B, T, D), the sum of their embeddings.

        One fused lookup: the tables concatenated, offsets added, one ``embedding_bag`` sum; id 0
        (padding / missing) gets weight 0, so it adds nothing and its row learns nothing, as the
        separate tables' ``padding_idx=0`` did."""
        b, t, f = ids.shape
        table = torch.cat([self._side_table(name).weight for name in SIDE_FEATURES])  # (sum of sizes, D)
        weights = (ids != 0).to(table.dtype).view(b * t, f)
        out = F.embedding_bag((ids + self.side_offsets).view(b * t, f), table, per_sample_weights=weights, mode="sum")
        return out.view(b, t, -1)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    # ----------------------------------------------------------------- encoder
    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, T) feature ids -> (B, T, D) causal hidden states (padding positions: unused values).

        Sequences arrive left-padded. Each row is rotated so that its events come first (padding
        last), which makes plain causal attention exact: no event ever sees a padding position, and
        attention runs on the fused ``is_causal`` kernels (flash attention on GPUs) with no mask
        tensor. Position ids follow the events, and the output is rotated back.
        """
        items = batch["item_idx"]
        b, t = items.shape
        n_pad = (items == 0).sum(1, keepdim=True)  # (B, 1)
        cols = torch.arange(t, device=items.device)[None, :]  # (1, T)
        src = (cols + n_pad) % t  # (B, T): rotated column j holds original column src
        side = torch.stack([batch[k] for k in SIDE_FEATURES], -1).gather(1, src[:, :, None].expand(-1, -1, len(SIDE_FEATURES)))
        x = self.item(items.gather(1, src)) + self.side_embedding(side) + self.position(self.max_len - t + src)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        back = (cols - n_pad) % t  # original column c is rotated column back[c]
        return x.gather(1, back[:, :, None].expand(-1, -1, x.shape[-1]))

    # ----------------------------------------------------------------- heads
    def view_nll(self, h: Tensor, targets: Tensor, sample: tuple[Tensor, Tensor] | None = None,
                 mask: Tensor | None = None) -> Tensor:
        """Mean view loss over (N, D) rows (fused full softmax, or sampled); with ``mask`` (N,) the
        mean over the rows where it is set (the padding rows of a fixed-size batch weigh 0)."""
        if sample is None:
            return mean_nll(h, self.item.weight, self.view_bias, targets, mask)
        return -masked_mean(sampled_log_prob(h, self.item.weight, self.view_bias, targets, *sample), mask)

    def _repeat_log_alpha(self, h_rows: Tensor, seq: dict[str, Tensor], pos: Tensor) -> tuple[Tensor, Tensor]:
        """Pointer log-weights over the sequence for each row: (N, T), NEG where not allowed, and
        the (N, T) mask of allowed occurrences (earlier or current events with a known item).

        h_rows (N, D) are the hidden states at positions ``pos`` (N,) of sequences ``seq`` (each
        (N, T), already gathered per row); ``seq['h']`` (N, T, D) the hidden states of all positions.
        """
        n, t = seq["item_idx"].shape
        q = self.repeat_q(h_rows)  # (N, D)
        k = self.repeat_k(seq["h"])  # (N, T, D)
        scores = torch.einsum("nd,ntd->nt", q, k).float() / math.sqrt(q.shape[-1])
        ts_now = seq["ts"].gather(1, pos[:, None])  # (N, 1)
        rec = recency_bucket(ts_now - seq["ts"])  # (N, T)
        # the item's appeal to buyers (shared with the catalog path) ranks items inside the history too
        scores = scores + self.repeat_bias[seq["event_type_id"], rec] + self.buy_bias[seq["item_idx"]].float()
        positions = torch.arange(t, device=pos.device)[None, :]
        allowed = (positions <= pos[:, None]) & (seq["item_idx"] > UNKNOWN)
        scores = scores.masked_fill(~allowed, NEG)
        log_alpha = scores - torch.logsumexp(scores, dim=-1, keepdim=True)
        return log_alpha.masked_fill(~allowed, NEG), allowed

    def purchase_log_prob(
        self, h: Tensor, seq_idx: Tensor, pos: Tensor, batch: dict[str, Tensor], targets: Tensor,
        sample: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """log p_buy(target) for rows at (seq_idx, pos) of a batch whose hidden states are h (B, T, D)."""
        h_rows = h[seq_idx, pos]  # (N, D)
        p = self.buy_proj(h_rows)
        if sample is None:
            log_cat = full_log_prob(p, self.item.weight, self.buy_bias, targets)
        else:
            log_cat = sampled_log_prob(p, self.item.weight, self.buy_bias, targets, *sample)
        if not self.cfg.repeat_path:
            return log_cat
        seq = {k: batch[k][seq_idx] for k in ("item_idx", "event_type_id", "ts")}
        seq["h"] = h[seq_idx]
        log_alpha, allowed = self._repeat_log_alpha(h_rows, seq, pos)  # (N, T)
        hit = seq["item_idx"] == targets[:, None]
        log_rep = torch.logsumexp(log_alpha.masked_fill(~hit, NEG), dim=-1)  # (N,); ~NEG when never seen
        gate = self.gate(h_rows).squeeze(-1).float()
        has_history = allowed.any(-1)
        mixed = torch.logaddexp(F.logsigmoid(gate) + log_rep, F.logsigmoid(-gate) + log_cat)
        return torch.where(has_history, mixed, log_cat)

    @torch.no_grad()
    def score_view(self, h_last: Tensor) -> Tensor:
        """(U, V) log p(next viewed item) from the hidden states (U, D) at the last position."""
        return torch.log_softmax(torch.addmm(self.view_bias, h_last, self.item.weight.t()).float(), -1)

    @torch.no_grad()
    def score_purchase(self, batch: dict[str, Tensor], h: Tensor | None = None) -> Tensor:
        """(U, V) log p_buy(item) at each sequence's last position: the ranking scores.

        p = g p_repeat + (1 - g) p_catalog, where p_repeat is zero outside the user's own history:
        every other item scores log(1 - g) + log p_catalog (one in-place pass over the catalog), and
        only the at most T history items get the exact mixture, scattered in. ``h``: ``encode(batch)``
        when the caller has it already (the view head reads the same states).
        """
        h = self.encode(batch) if h is None else h
        u, t, _ = h.shape
        h_last = h[:, -1]  # (U, D)
        scores = torch.addmm(self.buy_bias, self.buy_proj(h_last), self.item.weight.t()).float()  # (U, V)
        lse = torch.logsumexp(scores, -1, keepdim=True)  # (U, 1)
        if not self.cfg.repeat_path:
            return scores.sub_(lse)
        pos = torch.full((u,), t - 1, dtype=torch.long, device=h.device)
        seq = {k: batch[k] for k in ("item_idx", "event_type_id", "ts")}
        seq["h"] = h
        log_alpha, allowed = self._repeat_log_alpha(h_last, seq, pos)
        alpha = log_alpha.exp() * allowed  # (U, T)
        items = batch["item_idx"]
        same = (items[:, :, None] == items[:, None, :]).float()  # (U, T, T)
        p_rep = (same @ alpha[:, :, None]).squeeze(-1)  # (U, T): repeat mass of the item at each position
        g = torch.sigmoid(self.gate(h_last).float()) * allowed.any(-1, keepdim=True).float()  # (U, 1)
        p_cat = (scores.gather(1, items) - lse).exp()  # (U, T)
        mixed = torch.log(g * p_rep + (1 - g) * p_cat + 1e-30)  # (U, T)
        scores.add_(torch.log1p(-g.clamp(max=1 - 1e-6)) - lse)
        return scores.scatter_(1, items, mixed)
