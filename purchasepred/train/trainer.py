"""Trainer: the training loop, readable top to bottom.

Prepared train sequences become contiguous tensors once (on the GPU when training there); each
step indexes a batch out of them. Loss = view_loss + purchase_weight * purchase_loss
(+ cart_weight * cart_loss). AdamW (no decay on embeddings, norms, biases), linear warmup then
cosine decay to ``lr_floor`` x the peak, gradient clipping. After each epoch: NDCG@10 / HR@10 on
the valid window (the evaluation protocol's code path), ``last.pt`` always, ``best.pt`` when valid
NDCG@10 improves, early stopping after ``patience`` epochs without improvement (recorded, so that
``--resume`` of a stopped run trains nothing unless ``--epochs`` is raised).

Resuming restores model, optimizer, step, RNG states and the position inside the epoch, so a run
stopped and resumed ends exactly where an uninterrupted run ends (CPU, same seed).

The pieces, in the order ``fit`` uses them: :meth:`Trainer.restore` (a checkpoint -> a
:class:`RunState`), :func:`sigint_guard` (Ctrl-C asks the loop to save and stop),
:func:`train_step` (one optimizer step), :meth:`Trainer.end_epoch` (valid metrics, best/early
stop, checkpoints).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from purchasepred.config import Config, PrepareConfig, TrainConfig, config_from_dict, dump_yaml
from purchasepred.features import Vocab
from purchasepred.data.tensors import PreparedData
from purchasepred.errors import CheckpointError, ConfigError, DatasetError
from purchasepred.eval.protocol import Ranking, evaluate_scorer, metrics, rank
from purchasepred.eval.rankers import ModelScorer, Popularity
from purchasepred.fileio import atomic_write_text, sha256_file, write_json
from purchasepred.models.batching import DeviceRows, target_rows
from purchasepred.models.losses import masked_mean
from purchasepred.models.transformer import TransformerRecommender
from purchasepred.runs import pick_device, run_paths
from purchasepred import checkpoint as ckpt
from purchasepred.train import distributed

LOG_EVERY = 10  # steps between progress reports (each one syncs with the device)
STEP_LOG = "train_steps.jsonl"  # output/<run>/: the logged steps, resume and early-stop points (read by `report`)
FEW_STEPS = 50  # fewer optimizer steps than this in a whole run: the summary says how to get more
# AdamW betas. beta2 = 0.98 rather than PyTorch's 0.999: the second-moment estimate then forgets in
# ~50 steps instead of ~1000, which suits the sparse, bursty gradients of item embedding rows and
# short runs (the Transformer / BERT4Rec setting).
ADAM_BETAS = (0.9, 0.98)
LOSS_PARTS = ("view", "purchase", "cart")
TARGETS = ("next_target", "purchase_target", "cart_target")  # the rows of each loss part
PURCHASE_PART = TARGETS.index("purchase_target")
CAP_ROUND = 64  # compiled steps: target rows gathered per loss part, rounded up to a multiple of this


# the parameters only the purchase head uses (the catalog projection and item appeal, the repeat
# pointer and the gate); the encoder and the item table are shared with the view head
PURCHASE_HEAD = ("buy_proj", "buy_bias", "repeat_q", "repeat_k", "repeat_bias", "gate")


def param_groups(model: torch.nn.Module, weight_decay: float, head_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Weight decay on matrices of Linear layers only; never on embeddings, norms or biases. Each
    group's ``lr_scale`` multiplies the schedule's learning rate: with ``head_lr_scale`` != 1 the
    purchase head's parameters (PURCHASE_HEAD) form two groups of their own with that scale."""
    head = {id(p) for name, p in model.named_parameters() if name.split(".")[0] in PURCHASE_HEAD}
    split = head_lr_scale != 1.0
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            decayed = isinstance(module, torch.nn.Linear) and name == "weight"
            groups.setdefault((split and id(p) in head, decayed), []).append(p)
    return [{"params": groups.get((in_head, decayed), []), "weight_decay": weight_decay if decayed else 0.0,
             "lr_scale": head_lr_scale if in_head else 1.0}
            for in_head in ((False, True) if split else (False,)) for decayed in (True, False)]


def purchase_batches(carry: torch.Tensor, rest: torch.Tensor, n_carry: int, steps: int, batch: int, seed: int,
                     epoch: int) -> torch.Tensor:
    """Epoch ``epoch``'s row order: ``steps`` batches of ``batch`` rows, each holding ``n_carry`` rows
    of ``carry`` (the chunks with purchase targets) and the others from ``rest``, in a seeded order
    inside the batch. Each pool is read as an endless stream of seeded permutations, epoch after epoch,
    so that every row of a pool comes once before any comes twice: the pool that gets more than its
    share is oversampled, the other comes round more slowly. A function of (seed, epoch): resumable."""

    def stream(pool: torch.Tensor, which: int, n: int) -> torch.Tensor:
        start = epoch * n
        first, last = start // len(pool), (start + n - 1) // len(pool)
        perms = [pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed((seed * 2 + which) * 1_000_003 + r))]
                 for r in range(first, last + 1)]
        offset = start - first * len(pool)
        return torch.cat(perms)[offset:offset + n]

    rows = torch.cat([stream(carry, 0, steps * n_carry).view(steps, n_carry),
                      stream(rest, 1, steps * (batch - n_carry)).view(steps, batch - n_carry)], 1)
    mix = torch.rand(steps, batch, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).argsort(1)
    return rows.gather(1, mix).flatten()


def epoch_steps(n_train: int, batch_size: int, world_size: int = 1) -> int:
    """Steps per epoch over ``n_train`` sequences, the last batch short. Under torchrun a last batch of
    fewer rows than ranks would leave a rank an empty share, which the model cannot take: that batch
    is left out (a different few rows each epoch: the order is reshuffled). Fewer sequences than ranks
    cannot give every rank one: refused."""
    if n_train < world_size:
        raise DatasetError(f"{n_train} training sequence(s) for {world_size} processes: each process needs at least one; "
                           f"run torchrun with --nproc_per_node {max(n_train, 1)} or fewer, or prepare a longer log")
    steps = math.ceil(n_train / batch_size)
    if world_size > 1 and n_train > batch_size and 0 < n_train % batch_size < world_size:
        steps -= 1
    return steps


def lr_at(step: int, total: int, peak: float, warmup_frac: float, floor: float = 0.05) -> float:
    """Linear warmup to ``peak``, then cosine decay to ``floor * peak`` at step ``total``."""
    warmup = max(1, int(total * warmup_frac))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class EpochStats:
    epoch: int
    view_loss: float
    purchase_loss: float
    cart_loss: float
    valid: dict[str, Any]
    seconds: float
    tokens_per_s: float
    lr: float


@dataclass
class TrainSummary:
    run_name: str
    run_dir: Path
    output_dir: Path
    epochs_done: int
    best_epoch: int | None
    best_valid_ndcg10: float | None
    seconds: float
    tokens_per_s: float
    checkpoint: Path
    interrupted: bool = False
    early_stopped: bool = False
    notes: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunState:
    """Everything the loop carries from step to step, and what a checkpoint restores."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already trained
    step: int = 0  # optimizer steps so far (the learning-rate schedule's position)
    best_ndcg: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs since valid NDCG@10 last improved
    early_stopped_at: int | None = None  # the epoch after which patience ran out
    history: list[dict[str, Any]] = field(default_factory=list)  # one EpochStats dict per epoch
    checkpoint_sha256: dict[str, str] = field(default_factory=dict)
    created_at: str = field(default_factory=now_utc)
    timings: dict[str, float] = field(default_factory=dict)
    # the epoch in progress: loss sums stay on the device (no host sync per step) until the epoch ends
    loss_sums: torch.Tensor | None = None  # (4,) view, purchase, cart loss sums; real tokens
    epoch_steps: int = 0
    epoch_seconds: float = 0.0
    # logged steps and events, appended to STEP_LOG when a checkpoint is written
    steps_log: list[dict[str, Any]] = field(default_factory=list)
    step_log_started: bool = False  # a fresh run starts the file; a resumed one appends


def multitask_loss(
    model: TransformerRecommender, encode: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    batch: dict[str, torch.Tensor], train_cfg: TrainConfig, sample: tuple[torch.Tensor, torch.Tensor] | None,
    part_weights: torch.Tensor | None = None, caps: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """view_loss + purchase_weight * purchase_loss + cart_weight * cart_loss, and the parts.

    Each part is the mean over its target rows (positions where ``batch[key] > 0``), gathered into
    a fixed number of rows per part: ``caps`` (view, purchase, cart), each at least the part's
    target count in this batch (the trainer knows the counts on the host, see :class:`StepRows`);
    None: every position of the batch. Rows past the targets weigh 0. Nothing here reads a value
    back or makes a shape from one (no ``nonzero``, no boolean indexing): a step never waits for the
    device, and under torch.compile forward and loss are one graph. ``encode`` is ``model.encode``.
    ``part_weights`` (3,) scale the view, purchase and cart parts (distributed training: this
    rank's share of the global batch, see ``distributed.row_shares``)."""
    h = encode(batch)  # (B, T, D)
    b, t = batch["item_idx"].shape
    caps = caps if caps is not None else (b * t,) * len(TARGETS)
    parts: dict[str, torch.Tensor] = {}
    for name, key, cap in zip(LOSS_PARTS, TARGETS, caps, strict=True):
        if cap == 0 or (name == "cart" and train_cfg.cart_weight == 0):
            parts[name] = h.new_zeros(())
            continue
        seq, pos, rows = target_rows(batch[key] > 0, cap)
        targets = batch[key][seq, pos]
        if name == "view":
            # computed even when train.view_weight is 0 (an ablation): every parameter then still takes
            # part, as DistributedDataParallel requires, with a zero gradient through the view head
            parts[name] = model.view_nll(h[seq, pos], targets, sample, rows)
        else:
            parts[name] = -masked_mean(model.purchase_log_prob(h, seq, pos, batch, targets, sample), rows)
    if part_weights is not None:
        view, purchase, cart = (parts[name].float() * w for name, w in zip(LOSS_PARTS, part_weights, strict=True))
    else:
        view, purchase, cart = (parts[name].float() for name in LOSS_PARTS)
    loss = train_cfg.view_weight * view + train_cfg.purchase_weight * purchase + train_cfg.cart_weight * cart
    return loss, parts


class MultitaskLoss(torch.nn.Module):
    """:func:`multitask_loss` as a module, so that DistributedDataParallel can wrap it (DDP averages
    the gradients of what its forward computes) and torch.compile can take it whole."""

    def __init__(self, model: TransformerRecommender, train_cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.train_cfg = model, train_cfg

    def forward(self, batch: dict[str, torch.Tensor], sample: tuple[torch.Tensor, torch.Tensor] | None,
                part_weights: torch.Tensor | None = None, caps: tuple[int, int, int] | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return multitask_loss(self.model, self.model.encode, batch, self.train_cfg, sample, part_weights, caps)


@dataclass(frozen=True)
class StepRows:
    """One step's target rows per loss part (view, purchase, cart), known on the host."""

    caps: tuple[int, int, int]  # rows the loss gathers (at least ``mine``; the rest weigh 0)
    mine: tuple[int, int, int]  # this rank's target rows
    total: tuple[int, int, int]  # the global batch's (every rank's) target rows


def round_caps(counts: Any, limit: int) -> tuple[int, int, int]:
    """Row capacities for compiled steps: each count rounded up to a multiple of :data:`CAP_ROUND`
    (fewer distinct shapes, fewer recompilations), at most ``limit`` (every position of a batch)."""
    return tuple(min(limit, -(-int(c) // CAP_ROUND) * CAP_ROUND) for c in counts)  # type: ignore[return-value]


def compile_loss(loss_module: torch.nn.Module, mode: str | None = None) -> torch.nn.Module:
    """torch.compile of the loss module: encoder, heads and losses as one graph (their backward
    compiled with it). Shapes are static (``dynamic=False``): the batch width and the row caps are
    fixed per epoch (see ``Trainer.epoch_caps``), so each new set of them compiles once. ``mode`` is
    torch.compile's (``reduce-overhead``: CUDA graphs, which fixed shapes allow; the benchmark's
    ``--compile-mode``)."""
    return torch.compile(loss_module, dynamic=False, mode=mode)  # type: ignore[return-value]


LossFn = Callable[[dict[str, torch.Tensor], "tuple[torch.Tensor, torch.Tensor] | None"],
                  "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


def train_step(
    model: torch.nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
    lr: float, train_cfg: TrainConfig, sample: tuple[torch.Tensor, torch.Tensor] | None = None,
    autocast: bool = False,
) -> dict[str, torch.Tensor]:
    """One optimizer step: set the learning rate, forward (bf16 autocast when asked), backward,
    clip, update. Returns the loss parts, detached, still on the device (no host sync)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    device_type = next(model.parameters()).device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
        loss, parts = loss_fn(batch, sample)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if train_cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
    optimizer.step()
    return {name: part.detach() for name, part in parts.items()}


@contextmanager
def sigint_guard(on_sigint: Callable[[], None]) -> Iterator[None]:
    """Inside the block Ctrl-C calls ``on_sigint`` (the loop then saves a checkpoint and stops)
    instead of raising KeyboardInterrupt; the previous handler is put back on exit. Outside the
    main thread no handler can be installed and Ctrl-C stays with the caller."""
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: on_sigint())
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def with_prepared_settings(cfg: Config, settings: dict[str, Any]) -> Config:
    """``cfg`` with the prepare settings a dataset was really built with (from its manifest)."""
    known = {f: settings[f] for f in PrepareConfig.__dataclass_fields__ if f in settings}
    return replace(cfg, prepare=replace(cfg.prepare, **known))


@dataclass
class RefitSummary:
    split: str  # 'test' or 'all': trained on every event before that window
    checkpoint: Path
    epochs: int
    training_rows: int
    steps: int
    seconds: float
    record: dict[str, Any]  # what metadata.json holds under refits.<split>


def refit_name(split: str) -> str:
    """The checkpoint (stem) of the model refit on the events before ``split``'s window."""
    return f"refit_{split}"


class Trainer:
    """Trains a TransformerRecommender on a prepared dataset: on the events before the valid window
    (``fit``, which chooses the epochs on valid), or, for a refit, before the test window or on all
    events (``train_split`` 'test' or 'all', :meth:`refit`)."""

    def __init__(self, cfg: Config, data: PreparedData, run_name: str, train_split: str = "valid") -> None:
        self.cfg = with_prepared_settings(cfg, data.manifest.get("settings", {}))
        self.data, self.run_name, self.train_split = data, run_name, train_split
        self.run_dir, self.out_dir = run_paths(cfg, run_name)
        self.dist, self.device = distributed.setup(pick_device(cfg.train.device))
        self.notes: list[str] = []
        self._stop_requested = False

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        resume: bool = False,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        on_epoch: Callable[[EpochStats], None] | None = None,
        stop_after_epoch: int | None = None,
    ) -> TrainSummary:
        started = time.perf_counter()
        if not resume:
            self._refuse_existing_run()
        payload = self._resume_payload() if resume else None
        self._build()
        run = self.restore(payload) if payload is not None else RunState()
        distributed.barrier(self.dist)  # every rank has checked the run folder before rank 0 writes to it
        self._prepare_folders()
        run.timings["setup_s"] = round(time.perf_counter() - started, 3)
        with sigint_guard(self.request_stop):
            while run.epoch < self.cfg.train.epochs:
                self.model.train()
                order = self.epoch_order(run.epoch)
                on_device = order.to(self.device)  # one copy per epoch; each step slices it there
                caps = self.epoch_caps(order) if self.compiled else None
                epoch_started = time.perf_counter()
                for batch_index in range(run.batch_in_epoch, self.steps_per_epoch):
                    parts = self.step(run, *self.batch(order, batch_index, caps, on_device))
                    report = run.batch_in_epoch % LOG_EVERY == 0 or run.batch_in_epoch == self.steps_per_epoch
                    if report and self.dist.is_main:
                        self.log_step(run, parts, epoch_started, on_step)
                    if self.stop_requested(report):
                        run.epoch_seconds += time.perf_counter() - epoch_started
                        self._save({"last.pt": self._payload(run)}, run)
                        self._append_steps(run)
                        return self._finish(run, started, interrupted=True)
                stats = self.end_epoch(run, time.perf_counter() - epoch_started)
                if on_epoch is not None and self.dist.is_main:
                    on_epoch(stats)
                if run.early_stopped_at is not None:
                    break
                if stop_after_epoch is not None and run.epoch >= stop_after_epoch:
                    return self._finish(run, started, interrupted=True)
        return self._finish(run, started)

    def request_stop(self) -> None:
        """Ask the loop to save a checkpoint and stop after the current step (what Ctrl-C does)."""
        self._stop_requested = True

    def stop_requested(self, report: bool) -> bool:
        """Whether to stop now. Distributed ranks agree on it at each progress report."""
        if not self.dist.enabled:
            return self._stop_requested
        return report and distributed.any_rank(self._stop_requested, self.dist, self.device)

    # ------------------------------------------------------------------ setup
    def _tensors(self) -> DeviceRows:
        chunks = self.data.train(self.train_split)
        if chunks.n_sequences == 0:
            raise DatasetError(
                f"{self.data.path} has no training sequences before the {self.train_split} window; the log is too short for "
                f"--eval-days {self.data.manifest['settings']['eval_days']} (prepare again with a smaller --eval-days)"
            )
        # per sequence, on the host: target rows of each loss part and leading padding columns, so that
        # each step's row counts and width are known without reading anything back from the device
        self.target_counts = np.stack([chunks.count(chunks.columns[key] > 0) for key in TARGETS], 1)
        # (the left columns before a chunk's first event: every event has an item id >= 1, audits.sql)
        self.lead_padding = chunks.max_len - (chunks.end - chunks.start())
        if not self.data.manifest.get("events_by_type", {}).get("purchase"):
            self.notes.append(
                f"{self.data.path} has no purchase events at all: only the view head (next item) is trained; "
                "the purchase head cannot learn and evaluate/export cannot fit anything (they need purchases in the "
                "valid window); prepare a log that contains purchases"
            )
        elif not self.target_counts[:, PURCHASE_PART].any():
            self.notes.append(
                "no purchase is followed by a known item before the valid window: the purchase head cannot learn "
                "(it is trained on nothing); the view head still trains"
            )
        if self._compact_chunks():
            chunks = chunks.compact()
        return DeviceRows(chunks.columns, chunks.start(), chunks.end, chunks.max_len, self.device)

    def _compact_chunks(self) -> bool:
        """Whether only the events the chunks read go to the device (half of them for the valid window of a
        month's log): on a GPU. On the CPU the columns are the events' own arrays, shared, and a compact
        copy would add memory."""
        return self.device.type != "cpu"

    def _check_valid_window(self) -> None:
        """Refuse, before any training, a dataset whose valid window evaluate could never fit on."""
        has_purchases = bool(self.data.manifest.get("events_by_type", {}).get("purchase"))
        valid = self.valid
        if has_purchases and len(valid.truth_users) == 0:
            raise DatasetError(
                f"the valid window of {self.data.path} ({valid.window_start:%Y-%m-%d %H:%M} .. "
                f"{valid.window_end:%Y-%m-%d %H:%M}) has no purchases: valid NDCG@10 could not be measured and "
                "evaluate/export fit on valid purchases, so they could never use this run; prepare again with a "
                "larger --eval-days (or a log with purchases in those days)"
            )
        if len(valid.truth_users) and not np.isin(valid.truth_users, valid.user_idx).any():
            self.notes.append(
                "no buyer of the valid window has events before it: valid NDCG@10 only measures the popularity "
                "fallback, so best.pt and early stopping cannot tell epochs apart (prepare with a larger --eval-days)"
            )

    def _build(self) -> None:
        train_cfg = self.cfg.train
        torch.manual_seed(train_cfg.seed)
        self.vocab: Vocab = self.data.vocab
        self.model = TransformerRecommender(self.cfg.model, self.vocab, self.data.max_len).to(self.device)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, train_cfg.weight_decay, train_cfg.purchase_head_lr), lr=train_cfg.lr, betas=ADAM_BETAS,
            fused=self.device.type == "cuda",
        )
        self.compiled = train_cfg.compile and self.device.type == "cuda"
        if train_cfg.compile and not self.compiled:
            self.notes.append("--compile is used on CUDA only; running eagerly")
        self.loss_module: torch.nn.Module = MultitaskLoss(self.model, train_cfg)
        if self.dist.enabled:  # a head without rows in a rank's share leaves its parameters unused there
            self.loss_module = torch.nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        if self.compiled:  # encoder, heads and losses: one graph (fixed shapes: see batch())
            self.loss_module = compile_loss(self.loss_module)
        self.train_data = self._tensors()
        # valid window: inputs, truth, popularity fallback for users with no input
        self.valid = self.data.split("valid")
        self._check_valid_window()
        self.n_train = self.train_data.n_sequences
        self._purchase_pools()
        # (purchase_share batches are always full)
        self.steps_per_epoch = epoch_steps(self.n_train, train_cfg.batch_size,
                                           1 if self.carry is not None else self.dist.world_size)
        self.total_steps = self.steps_per_epoch * train_cfg.epochs
        if self.total_steps < FEW_STEPS:
            self.notes.append(
                f"{self.n_train} training sequences at batch {train_cfg.batch_size} gave {self.steps_per_epoch} "
                f"step(s) per epoch, {self.total_steps} in all: too few gradient steps to learn much; lower "
                "--batch-size or raise --epochs"
            )
        counts = torch.as_tensor(self.data.items["n_events"], dtype=torch.float64)
        q = counts.clamp(min=0) ** 0.75
        q[:2] = 0
        self.sample_q = (q / q.sum().clamp(min=1e-12)).float().to(self.device)
        self.log_q = torch.log(self.sample_q.clamp(min=1e-30))
        events = self.data.events_before(self.valid.window_start)
        cutoff_ts = int(self.valid.window_start.replace(tzinfo=timezone.utc).timestamp())
        self.popularity = Popularity(events, self.vocab.n_items, cutoff_ts, self.cfg.eval.popularity_days)

    def _purchase_pools(self) -> None:
        """With train.purchase_share: the chunks with and without purchase targets and the rows of each
        batch drawn from the first. An epoch keeps its number of steps (the same compute as plain
        batches), every batch full."""
        self.carry: torch.Tensor | None = None
        share, size = self.cfg.train.purchase_share, self.cfg.train.batch_size
        if not share or self.n_train <= size:
            return
        has = torch.as_tensor(self.target_counts[:, PURCHASE_PART] > 0)
        carry, rest = has.nonzero().squeeze(1), (~has).nonzero().squeeze(1)
        if len(carry) == 0 or len(rest) == 0:
            self.notes.append("train.purchase_share: every training chunk or none carries purchase targets; batches "
                              "are plain random draws")
            return
        self.carry, self.rest = carry, rest
        self.n_carry = min(max(round(share * size), 1), size - 1)

    def _refuse_existing_run(self) -> None:
        if (self.run_dir / "last.pt").exists() or (self.run_dir / "metadata.json").exists():
            raise CheckpointError(
                f"run {self.run_name} already exists in {self.run_dir}; pass --resume to continue it or choose another --run-name"
            )

    def _resume_payload(self) -> dict[str, Any]:
        meta = ckpt.read_metadata(self.run_dir) if (self.run_dir / "metadata.json").is_file() else {}
        payload = ckpt.load_checkpoint(self.run_dir / "last.pt", ckpt.accepted_sha256(meta, "last.pt"))
        payload["_metadata"] = meta
        return payload

    def _prepare_folders(self) -> None:
        """Check both run folders are writable, clear a killed run's temporary files, save config.yaml
        (rank 0)."""
        if not self.dist.is_main:
            return
        for folder in (self.run_dir, self.out_dir):
            existed = folder.exists()
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".write-test-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
                if folder == self.out_dir and not existed:
                    folder.rmdir()  # checked now, created at the end of the first epoch
            except OSError as err:
                raise CheckpointError(
                    f"cannot write to {folder} ({err.strerror or err}); choose writable --set train.checkpoints_dir / "
                    "train.output_dir folders"
                ) from None
        for stale in self.run_dir.glob(".*.tmp-*"):  # temporary files of a training process that was killed
            if stale.is_file():
                stale.unlink(missing_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", dump_yaml(self.cfg))

    # ------------------------------------------------------------------ one step
    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation of the training sequences (seeded by seed and epoch: resumable),
        on the host."""
        seed = self.cfg.train.seed * 1000 + epoch
        if self.carry is not None:  # train.purchase_share: a share of every batch carries purchase targets
            return purchase_batches(self.carry, self.rest, self.n_carry, self.steps_per_epoch, self.cfg.train.batch_size,
                                    self.cfg.train.seed, epoch)
        return torch.randperm(self.n_train, generator=torch.Generator().manual_seed(seed))

    def _global_rows(self, order: torch.Tensor, batch_index: int) -> torch.Tensor:
        size = self.cfg.train.batch_size
        return order[batch_index * size:(batch_index + 1) * size]

    def epoch_caps(self, order: torch.Tensor) -> tuple[int, int, int]:
        """Compiled steps: the target rows gathered per loss part for the whole epoch, the most any of
        its batches (this rank's share) holds, rounded up to :data:`CAP_ROUND` so that one graph
        serves the epoch and, mostly, the next ones."""
        most = np.zeros(len(TARGETS), dtype=np.int64)
        for batch_index in range(self.steps_per_epoch):
            rows = distributed.shard(self._global_rows(order, batch_index), self.dist).numpy()
            most = np.maximum(most, self.target_counts[rows].sum(0))
        limit = min(self.cfg.train.batch_size, self.n_train) * self.train_data.width
        return round_caps(most, limit)

    def batch(self, order: torch.Tensor, batch_index: int, caps: tuple[int, int, int] | None = None,
              on_device: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], StepRows]:
        """This rank's share of a batch, and its target rows. Eager steps drop the left columns that
        are padding in every row and gather exactly their target rows; compiled steps keep the full
        width and the epoch's ``caps``, so that their shapes stay fixed. Counts and width come from
        host arrays; the rows are sliced out of ``on_device`` (``order`` copied to the device once
        per epoch), so a step neither reads from nor waits on the device."""
        on_device = on_device if on_device is not None else order.to(self.device)
        global_rows = self._global_rows(order, batch_index)
        rows = distributed.shard(global_rows, self.dist)
        mine: Any = tuple(int(x) for x in self.target_counts[rows.numpy()].sum(0))
        total: Any = tuple(int(x) for x in self.target_counts[global_rows.numpy()].sum(0))
        first = 0
        if caps is None:
            first = int(self.lead_padding[rows.numpy()].min())
            first = 0 if first >= self.train_data.width else first  # no event at all: nothing to trim
        index = distributed.shard(self._global_rows(on_device, batch_index), self.dist)
        batch = self.train_data.take(index, first)
        return batch, StepRows(caps=caps if caps is not None else mine, mine=mine, total=total)

    def step(self, run: RunState, batch: dict[str, torch.Tensor], rows: StepRows) -> dict[str, torch.Tensor]:
        """:func:`train_step` at the schedule's learning rate, then the epoch's running sums."""
        train_cfg = self.cfg.train
        sample = None
        if train_cfg.loss == "sampled":
            negatives = torch.multinomial(self.sample_q, train_cfg.negatives, replacement=True)
            sample = (distributed.from_main(negatives, self.dist), self.log_q)  # one set shared by all ranks
        lr = lr_at(run.step, self.total_steps, train_cfg.lr, train_cfg.warmup_frac, train_cfg.lr_floor)
        autocast = self.device.type == "cuda" and train_cfg.bf16
        shares = None
        if self.dist.enabled:  # every rank knows the global batch's counts: no collective needed
            shares = distributed.row_shares(torch.tensor(rows.mine, dtype=torch.float32),
                                            torch.tensor(rows.total, dtype=torch.float32), self.dist.world_size)
            if self.device.type == "cuda":  # pinned, so that the copy does not wait for the device
                shares = shares.pin_memory()
            shares = shares.to(self.device, non_blocking=True)

        def loss_fn(b: dict[str, torch.Tensor], s: tuple[torch.Tensor, torch.Tensor] | None):
            return self.loss_module(b, s, shares, rows.caps)

        parts = train_step(self.model, loss_fn, self.optimizer, batch, lr, train_cfg, sample, autocast)
        losses = torch.stack([parts[name].float() for name in LOSS_PARTS])
        if shares is not None:  # this rank's part of the global batch's mean losses
            losses = losses * shares / self.dist.world_size
        if run.loss_sums is None:
            run.loss_sums = torch.zeros(4, device=self.device)
        run.loss_sums += torch.cat([losses, (batch["item_idx"] > 0).sum().float()[None]])
        run.step += 1
        run.batch_in_epoch += 1
        run.epoch_steps += 1
        return parts

    def log_step(self, run: RunState, parts: dict[str, torch.Tensor], epoch_started: float,
                 on_step: Callable[[dict[str, Any]], None] | None) -> None:
        """Progress of the step just taken: to ``on_step`` and to the step log (one host sync)."""
        seconds = run.epoch_seconds + time.perf_counter() - epoch_started
        tokens = float(run.loss_sums[3]) if run.loss_sums is not None else 0.0
        logged = {"epoch": run.epoch, "batch": run.batch_in_epoch, "batches": self.steps_per_epoch,
                  "lr": lr_at(run.step - 1, self.total_steps, self.cfg.train.lr, self.cfg.train.warmup_frac, self.cfg.train.lr_floor),
                  "view_loss": float(parts["view"]), "purchase_loss": float(parts["purchase"]),
                  "tokens_per_s": tokens / max(seconds, 1e-9)}
        run.steps_log.append({"step": run.step, **logged, "cart_loss": float(parts["cart"])})
        if on_step is not None:
            on_step(logged)

    def _append_steps(self, run: RunState) -> None:
        """Append the pending step records to output/<run>/train_steps.jsonl (a fresh run starts the
        file), then clear them. A step logged after the last checkpoint of a killed process is logged
        again after --resume; readers keep the last line of each step. Rank 0 writes; before the
        first epoch's end (no output folder yet) the records are dropped."""
        if not self.dist.is_main or not self.out_dir.is_dir():
            return
        lines = [json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in r.items()})
                 for r in run.steps_log]
        with open(self.out_dir / STEP_LOG, "a" if run.step_log_started else "w", encoding="utf-8") as fh:
            fh.writelines(line + "\n" for line in lines)
        run.steps_log.clear()
        run.step_log_started = True

    # ------------------------------------------------------------------ the end of an epoch
    @torch.no_grad()
    def evaluate_valid(self) -> dict[str, Any]:
        """NDCG@10 / HR@10 on the valid window; distributed ranks each rank a share of the buyers."""
        users = self.valid.truth_users
        if len(users) == 0:
            return {"users": 0, "ndcg@10": float("nan"), "hr@10": float("nan")}
        scorer = ModelScorer(self.model, self.valid, self.popularity, self.device)
        if not self.dist.enabled:
            return evaluate_scorer(scorer, self.valid, [10], n_boot=0)
        mine = torch.arange(len(users)).tensor_split(self.dist.world_size)[self.dist.rank].numpy()
        part = rank(scorer, users[mine], 10, truth=self.valid.truth_items[mine])
        shares = distributed.gather((part.top, part.top_scores, part.best_rank), self.dist)
        whole = Ranking(users, *(np.concatenate([share[i] for share in shares]) for i in range(3)))
        return metrics(whole, self.valid, [10], n_boot=0)

    def end_epoch(self, run: RunState, seconds: float) -> EpochStats:
        """Valid metrics, best epoch / patience, checkpoints and metadata.json, train_history.json."""
        train_cfg = self.cfg.train
        run.epoch_seconds += seconds
        sums = distributed.sum_over_ranks(run.loss_sums, self.dist) if run.loss_sums is not None else None
        view, purchase, cart, tokens = sums.tolist() if sums is not None else [0.0] * 4
        n = max(run.epoch_steps, 1)
        stats = EpochStats(
            epoch=run.epoch + 1, view_loss=view / n, purchase_loss=purchase / n, cart_loss=cart / n,
            valid=self.evaluate_valid(), seconds=round(run.epoch_seconds, 3),
            tokens_per_s=tokens / max(run.epoch_seconds, 1e-9),
            lr=lr_at(run.step - 1, self.total_steps, train_cfg.lr, train_cfg.warmup_frac, train_cfg.lr_floor),
        )
        run.history.append(asdict(stats))
        run.epoch, run.batch_in_epoch = run.epoch + 1, 0
        run.loss_sums, run.epoch_steps, run.epoch_seconds = None, 0, 0.0
        score = stats.valid.get("ndcg@10", float("nan"))
        no_valid = math.isnan(score)  # nothing to compare: every epoch is "best" (the last one)
        improved = not no_valid and (run.best_ndcg is None or score > run.best_ndcg)
        if improved or no_valid:
            run.best_ndcg, run.best_epoch, run.bad_epochs = (None if no_valid else score), run.epoch, 0
        else:
            run.bad_epochs += 1
        if train_cfg.patience and not no_valid and run.bad_epochs >= train_cfg.patience and run.epoch < train_cfg.epochs:
            run.early_stopped_at = run.epoch
            run.steps_log.append({"event": "early_stop", "epoch": run.epoch, "step": run.step})
            self.notes.append(f"early stop after epoch {run.epoch}: no better valid NDCG@10 for {train_cfg.patience} epochs")
        files = {"best.pt": self._payload(run)} if improved or no_valid else {}
        files["last.pt"] = self._payload(run)
        self._save(files, run)
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.out_dir / "train_history.json", run.history)
            self._append_steps(run)
        return stats

    def _finish(self, run: RunState, started: float, interrupted: bool = False) -> TrainSummary:
        run.timings["train_s"] = round(sum(h["seconds"] for h in run.history), 3)
        run.timings["total_s"] = round(time.perf_counter() - started, 3)
        if self.dist.is_main:
            ckpt.write_metadata(self.run_dir, self._metadata(run))
        distributed.teardown(self.dist)
        best_path, last_path = self.run_dir / "best.pt", self.run_dir / "last.pt"
        tokens_per_s = [h["tokens_per_s"] for h in run.history]
        return TrainSummary(
            run_name=self.run_name, run_dir=self.run_dir, output_dir=self.out_dir, epochs_done=run.epoch,
            best_epoch=run.best_epoch, best_valid_ndcg10=run.best_ndcg, seconds=run.timings["total_s"],
            tokens_per_s=float(np.mean(tokens_per_s)) if tokens_per_s else 0.0,
            checkpoint=best_path if best_path.exists() else last_path,
            interrupted=interrupted, early_stopped=run.early_stopped_at is not None, notes=list(self.notes),
            history=run.history,
        )

    # ------------------------------------------------------------------ refit
    def refit(self, epochs: int, source: dict[str, Any],
              on_epoch: Callable[[int, int], None] | None = None) -> RefitSummary:
        """A fresh model trained on every event before ``train_split``'s window with the run's settings
        and learning-rate schedule, stopped after ``epochs`` (the epoch chosen on valid): no valid
        metrics (those events are now training data), no early stopping, no resume. Writes
        ``refit_<split>.pt`` (model, config, vocabulary, dataset hash) and records it in metadata.json
        under ``refits`` with ``source`` (the checkpoint and sha256 whose choices it repeats)."""
        if self.train_split == "valid":
            raise ValueError("a refit trains on the events before the test window or on all of them")
        started = time.perf_counter()
        self._build()
        run, history = RunState(), []
        for epoch in range(epochs):
            self.model.train()
            order = self.epoch_order(epoch)
            on_device = order.to(self.device)  # as in fit: one copy per epoch
            caps = self.epoch_caps(order) if self.compiled else None
            epoch_started = time.perf_counter()
            for batch_index in range(self.steps_per_epoch):
                self.step(run, *self.batch(order, batch_index, caps, on_device))
            seconds = time.perf_counter() - epoch_started
            view, purchase, cart, tokens = run.loss_sums.tolist() if run.loss_sums is not None else [0.0] * 4
            n = max(run.epoch_steps, 1)
            history.append({"epoch": epoch + 1, "view_loss": view / n, "purchase_loss": purchase / n,
                            "cart_loss": cart / n, "seconds": round(seconds, 3), "tokens_per_s": tokens / max(seconds, 1e-9)})
            run.loss_sums, run.epoch_steps = None, 0
            if on_epoch is not None:
                on_epoch(epoch + 1, epochs)
        window = self.data.split(self.train_split).window_start
        name = refit_name(self.train_split) + ".pt"
        record = {
            "checkpoint": name, "epochs": epochs, "window_start": str(window),
            "trained_on": f"every event before {window:%Y-%m-%d %H:%M:%S}, the start of the {self.train_split} window"
                          if self.train_split == "test" else "every event of the dataset",
            "training_rows": self.n_train, "steps": run.step, "planned_epochs": self.cfg.train.epochs,
            "seconds": 0.0, "source": source, "history": history,
        }
        payload = {"model": self.model.state_dict(), "config": self.cfg.to_dict(), "vocab": asdict(self.vocab),
                   "max_len": self.data.max_len, "dataset_hash": self.data.manifest["content_hash"],
                   "refit": {k: v for k, v in record.items() if k != "history"}}
        tmp, sha = ckpt.stage_checkpoint(self.run_dir / name, payload)
        try:
            meta = ckpt.read_metadata(self.run_dir)
            meta.setdefault("checkpoints_pending", {})[name] = sha
            ckpt.write_metadata(self.run_dir, meta)
            ckpt.commit_checkpoint(tmp, self.run_dir / name)
        finally:
            tmp.unlink(missing_ok=True)
        record["seconds"] = round(time.perf_counter() - started, 3)
        meta = ckpt.read_metadata(self.run_dir)
        meta.setdefault("checkpoints", {})[name] = sha
        meta.get("checkpoints_pending", {}).pop(name, None)
        meta.setdefault("refits", {})[self.train_split] = record
        ckpt.write_metadata(self.run_dir, meta)
        distributed.teardown(self.dist)
        return RefitSummary(self.train_split, self.run_dir / name, epochs, self.n_train, run.step, record["seconds"], record)

    # ------------------------------------------------------------------ checkpoints
    def _payload(self, run: RunState) -> dict[str, Any]:
        """The checkpoint of ``run`` (called on every rank: it gathers each rank's RNG state)."""
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": run.step, "total_steps": self.total_steps},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "torch_by_rank": distributed.gather(torch.get_rng_state(), self.dist),
            },
            "world_size": self.dist.world_size,
            "epoch": run.epoch,
            "batch_in_epoch": run.batch_in_epoch,
            "step": run.step,
            "running": {"n": float(run.epoch_steps), "seconds": run.epoch_seconds},
            "config": self.cfg.to_dict(),
            "vocab": asdict(self.vocab),
            "max_len": self.data.max_len,
            "dataset_hash": self.data.manifest["content_hash"],
            "best_ndcg": run.best_ndcg,
            "best_epoch": run.best_epoch,
            "bad_epochs": run.bad_epochs,
            "early_stopped_at": run.early_stopped_at,
            "history": run.history,
        }
        if run.loss_sums is not None:  # inside an epoch: resuming sums exactly the same way
            payload["running_sums"] = distributed.sum_over_ranks(run.loss_sums.clone(), self.dist).cpu()
        return payload

    def restore(self, payload: dict[str, Any]) -> RunState:
        """Load model, optimizer and RNG states from a checkpoint; the RunState to continue from."""
        self._check_compatible(payload)
        meta = payload.get("_metadata", {})
        epoch = payload["epoch"]
        self._refuse_finished(payload, epoch)
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        by_rank = payload["rng"].get("torch_by_rank", [payload["rng"]["torch"]])
        torch.set_rng_state(by_rank[self.dist.rank])
        if payload["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
        run = RunState(
            epoch=epoch, batch_in_epoch=payload["batch_in_epoch"], step=payload["step"],
            best_ndcg=payload["best_ndcg"], best_epoch=payload["best_epoch"], bad_epochs=payload["bad_epochs"],
            history=list(payload["history"]), checkpoint_sha256=self._resumed_hashes(meta),
            epoch_steps=int(payload.get("running", {}).get("n", 0)),
            epoch_seconds=float(payload.get("running", {}).get("seconds", 0.0)),
        )
        run.created_at = meta.get("created_at", run.created_at)
        run.steps_log.append({"event": "resume", "epoch": epoch, "batch": run.batch_in_epoch, "step": run.step})
        run.step_log_started = True
        if "running_sums" in payload:  # summed over ranks when saved: rank 0 carries them on
            sums = payload["running_sums"].to(self.device)
            run.loss_sums = sums if self.dist.is_main else torch.zeros_like(sums)
        if self._stopped_early(payload, epoch) is not None:  # --epochs was raised: patience starts afresh
            run.bad_epochs = 0
        return run

    def _stopped_early(self, payload: dict[str, Any], epoch: int) -> int | None:
        """The epoch a run stopped early at (recorded; inferred for checkpoints from before it was)."""
        if "early_stopped_at" in payload:
            return payload["early_stopped_at"]
        saved = payload["config"]["train"]
        patience = saved.get("patience", 0)
        stopped = patience and payload["bad_epochs"] >= patience and epoch < saved["epochs"] and payload["batch_in_epoch"] == 0
        return epoch if stopped else None

    def _refuse_finished(self, payload: dict[str, Any], epoch: int) -> None:
        target = self.cfg.train.epochs
        stopped_at = self._stopped_early(payload, epoch)
        if stopped_at is not None:
            planned = payload["config"]["train"]["epochs"]
            if target <= planned:
                raise ConfigError(
                    f"run {self.run_name} is finished: it stopped early at epoch {stopped_at} of {planned} (no better "
                    f"valid NDCG@10 for {payload['config']['train'].get('patience')} epochs); pass --epochs larger than "
                    f"{planned} to train it further"
                )
        elif epoch >= target:
            raise ConfigError(
                f"run {self.run_name} has already trained {epoch} epoch(s); pass --epochs larger than {epoch} to continue it"
            )

    def _check_compatible(self, payload: dict[str, Any]) -> None:
        problems = []
        if payload.get("dataset_hash") != self.data.manifest["content_hash"]:
            problems.append("it was trained on another dataset (manifest content_hash differs)")
        if payload.get("vocab") != asdict(self.vocab):
            problems.append(f"vocabulary sizes differ (checkpoint {payload.get('vocab')}, data {asdict(self.vocab)})")
        if payload.get("max_len") != self.data.max_len:
            problems.append(f"max_len differs ({payload.get('max_len')} vs {self.data.max_len})")
        saved = config_from_dict(payload["config"])
        if asdict(saved.model) != asdict(self.cfg.model):
            problems.append(f"model settings differ (checkpoint {asdict(saved.model)})")
        for key in ("purchase_share", "purchase_head_lr"):  # they shape the epochs and the optimizer's groups
            if getattr(saved.train, key) != getattr(self.cfg.train, key):
                problems.append(f"train.{key} differs (checkpoint {getattr(saved.train, key)}, now {getattr(self.cfg.train, key)})")
        world_size = payload.get("world_size", 1)
        if world_size != self.dist.world_size:
            again = (f"torchrun --nproc_per_node {world_size} -m purchasepred train ... --resume" if world_size > 1
                     else "purchasepred train ... --resume without torchrun")
            problems.append(
                f"it was trained by {world_size} process(es) and this is {self.dist.world_size} (a run resumes exactly "
                f"only on as many: {again})"
            )
        if problems:
            raise CheckpointError(
                f"cannot resume run {self.run_name} on {self.data.path}: " + "; ".join(problems)
                + ". Use the dataset it was trained on, or start a new --run-name"
            )

    def _metadata(self, run: RunState) -> dict[str, Any]:
        return {
            "run_name": self.run_name,
            "created_at": run.created_at,
            "updated_at": now_utc(),
            "versions": ckpt.versions(),
            "git_commit": ckpt.git_commit(),
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "dataset": {"path": str(self.data.path), "content_hash": self.data.manifest["content_hash"]},
            "purchase_weight": self.cfg.train.purchase_weight,
            "epochs_done": run.epoch,
            "best_epoch": run.best_epoch,
            "best_valid_ndcg@10": run.best_ndcg,
            "early_stopped_at": run.early_stopped_at,
            "epochs": run.history,
            "timings": run.timings,
            "checkpoints": run.checkpoint_sha256,
            "notes": self.notes,
        }

    def _save(self, files: dict[str, dict[str, Any]], run: RunState) -> None:
        """Write checkpoints, then metadata.json, so that a kill at any instant leaves a loadable run.

        Each file is staged (written, flushed, hashed), its hash recorded in metadata.json as pending,
        then renamed into place; the final metadata.json records it as committed. A failing write
        (disk full) replaces nothing: the previous checkpoints and metadata.json stay as they were.
        Only rank 0 writes."""
        if not self.dist.is_main:
            return
        staged: dict[str, tuple[Path, str]] = {}
        try:
            for name, payload in files.items():
                staged[name] = ckpt.stage_checkpoint(self.run_dir / name, payload)
            if (self.run_dir / "metadata.json").is_file():
                meta = ckpt.read_metadata(self.run_dir)
                meta["checkpoints_pending"] = {name: sha for name, (_, sha) in staged.items()}
                ckpt.write_metadata(self.run_dir, meta)
            for name, (tmp, sha) in staged.items():
                ckpt.commit_checkpoint(tmp, self.run_dir / name)
                run.checkpoint_sha256[name] = sha
        finally:
            for tmp, _ in staged.values():
                tmp.unlink(missing_ok=True)
        ckpt.write_metadata(self.run_dir, self._metadata(run))

    def _resumed_hashes(self, meta: dict[str, Any]) -> dict[str, str]:
        """The hash of each checkpoint on disk that metadata.json accepts (committed or pending)."""
        hashes = dict(meta.get("checkpoints", {}))
        for name in ("last.pt", "best.pt"):
            path = self.run_dir / name
            accepted = ckpt.accepted_sha256(meta, name)
            if path.is_file() and accepted is not None:
                actual = sha256_file(path)
                if actual in accepted:
                    hashes[name] = actual
        return hashes
