"""Trainer: the training loop, readable top to bottom.

Prepared train sequences become contiguous tensors once (on the GPU when training there); each
step indexes a batch out of them. Loss = view_loss + purchase_weight * purchase_loss
(+ cart_weight * cart_loss). AdamW (no decay on embeddings, norms, biases), linear warmup then
cosine decay, gradient clipping. After each epoch: NDCG@10 / HR@10 on the valid window (the
evaluation protocol's code path), ``last.pt`` always, ``best.pt`` when valid NDCG@10 improves,
early stopping after ``patience`` epochs without improvement.

Resuming restores model, optimizer, step, RNG states and the position inside the epoch, so a run
stopped and resumed ends exactly where an uninterrupted run ends (CPU, same seed).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from purchasepred.config import Config, config_from_dict, dump_yaml
from purchasepred.data.tensors import PreparedData
from purchasepred.errors import CheckpointError, ConfigError, DatasetError
from purchasepred.eval.protocol import evaluate_scorer
from purchasepred.eval.rankers import ModelScorer, Popularity
from purchasepred.data.features import Vocab
from purchasepred.models.transformer import TransformerRecommender
from purchasepred.fileio import atomic_write_text, sha256_file, write_json
from purchasepred.runs import pick_device, run_paths
from purchasepred.train import checkpoint as ckpt
from purchasepred.models.batching import trim_padding


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices of Linear layers only; never on embeddings, norms or biases."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, torch.nn.Linear) and name == "weight":
                decay.append(p)
            else:
                no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


LOG_EVERY = 10  # steps between progress reports (each one syncs with the device)
STEP_LOG = "train_steps.jsonl"  # output/<run>/: the logged steps, resume and early-stop points (read by `report`)


def _fold(acc: dict[str, float], running: torch.Tensor) -> None:
    """Move the device-side running sums into the float accumulators (one host sync)."""
    view, purchase, cart, tokens = running.tolist()
    acc["view"] += view
    acc["purchase"] += purchase
    acc["cart"] += cart
    acc["tokens"] += tokens
    running.zero_()


def lr_at(step: int, total: int, peak: float, warmup_frac: float) -> float:
    warmup = max(1, int(total * warmup_frac))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


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


def multitask_loss(
    model: TransformerRecommender, encode: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    batch: dict[str, torch.Tensor], t: Any, sample: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """view_loss + purchase_weight * purchase_loss + cart_weight * cart_loss, and the parts.

    ``encode`` is ``model.encode`` or its torch.compile'd version (the heads stay eager: their
    row counts change every batch)."""
    h = encode(batch)  # (B, T, D)
    parts: dict[str, torch.Tensor] = {}
    b, p = torch.nonzero(batch["next_target"] > 0, as_tuple=True)
    parts["view"] = (model.view_nll(h[b, p], batch["next_target"][b, p], sample) if len(b) and t.view_weight
                     else h.new_zeros(()))
    for name, key in (("purchase", "purchase_target"), ("cart", "cart_target")):
        if name == "cart" and t.cart_weight == 0:
            parts[name] = h.new_zeros(())
            continue
        b, p = torch.nonzero(batch[key] > 0, as_tuple=True)
        parts[name] = (-model.purchase_log_prob(h, b, p, batch, batch[key][b, p], sample).mean()
                       if len(b) else h.new_zeros(()))
    loss = t.view_weight * parts["view"].float() + t.purchase_weight * parts["purchase"].float() + t.cart_weight * parts["cart"].float()
    return loss, parts


class Trainer:
    """Trains a TransformerRecommender on a prepared dataset."""

    def __init__(self, cfg: Config, data: PreparedData, run_name: str) -> None:
        self.cfg, self.data, self.run_name = cfg, data, run_name
        self.run_dir, self.out_dir = run_paths(cfg, run_name)
        self.device = pick_device(cfg.train.device)
        self.notes: list[str] = []
        self._stop_requested = False

    # ------------------------------------------------------------------ setup
    def _tensors(self) -> dict[str, torch.Tensor]:
        arrays = self.data.train()
        n = len(arrays["item_idx"])
        if n == 0:
            raise DatasetError(
                f"{self.data.path} has no training sequences before the valid window; the log is too short for "
                f"--eval-days {self.data.manifest['settings']['eval_days']} (prepare again with a smaller --eval-days)"
            )
        if not self.data.manifest.get("events_by_type", {}).get("purchase"):
            self.notes.append(
                f"{self.data.path} has no purchase events at all: only the view head (next item) is trained; "
                "the purchase head cannot learn and evaluate/export cannot fit anything (they need purchases in the "
                "valid window); prepare a log that contains purchases"
            )
        elif not (arrays["purchase_target"] > 0).any():
            self.notes.append(
                "no purchase is followed by a known item before the valid window: the purchase head cannot learn "
                "(it is trained on nothing); the view head still trains"
            )
        return {k: torch.as_tensor(v).to(self.device) for k, v in arrays.items()}

    def _build(self) -> None:
        t = self.cfg.train
        torch.manual_seed(t.seed)
        self.vocab: Vocab = self.data.vocab
        self.model = TransformerRecommender(self.cfg.model, self.vocab, self.data.max_len).to(self.device)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, t.weight_decay), lr=t.lr, betas=(0.9, 0.98),
            fused=self.device.type == "cuda",
        )
        self.encode = self.model.encode
        if t.compile and self.device.type == "cuda":
            self.encode = torch.compile(self.model.encode)  # type: ignore[assignment]
        elif t.compile:
            self.notes.append("--compile is used on CUDA only; running eagerly")
        self.train_data = self._tensors()
        self.n_train = len(self.train_data["item_idx"])
        self.steps_per_epoch = math.ceil(self.n_train / t.batch_size)
        self.total_steps = self.steps_per_epoch * t.epochs
        counts = torch.as_tensor(self.data.items["n_events"], dtype=torch.float64)
        q = counts.clamp(min=0) ** 0.75
        q[:2] = 0
        self.sample_q = (q / q.sum().clamp(min=1e-12)).float().to(self.device)
        self.log_q = torch.log(self.sample_q.clamp(min=1e-30))
        # valid window: inputs, truth, popularity fallback for users with no input
        self.valid = self.data.split("valid")
        events = self.data.events_before(self.valid.window_start)
        cutoff_ts = int(self.valid.window_start.replace(tzinfo=timezone.utc).timestamp())
        self.popularity = Popularity(events, self.vocab.n_items, cutoff_ts, self.cfg.eval.popularity_days)
        if len(self.valid.truth_users) == 0 and self.data.manifest.get("events_by_type", {}).get("purchase"):
            self.notes.append(
                "the valid window has no purchases: valid NDCG cannot be measured, so best.pt is the last epoch "
                "and early stopping is off; evaluate and export fit on valid purchases and will refuse this run "
                "(prepare with a larger --eval-days)"
            )

    def _loss(self, batch: dict[str, torch.Tensor], negatives: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = (negatives, self.log_q) if negatives is not None else None
        return multitask_loss(self.model, self.encode, batch, self.cfg.train, sample)

    # ------------------------------------------------------------------ evaluation
    def evaluate_valid(self) -> dict[str, Any]:
        if len(self.valid.truth_users) == 0:
            return {"users": 0, "ndcg@10": float("nan"), "hr@10": float("nan")}
        scorer = ModelScorer(self.model, self.valid, self.popularity, self.device)
        return evaluate_scorer(scorer, self.valid, [10], n_boot=0)

    # ------------------------------------------------------------------ state
    def _payload(self, epoch: int, batch_in_epoch: int, step: int, acc: dict[str, float], state: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": step, "total_steps": self.total_steps},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": step,
            "running": dict(acc),
            "config": self.cfg.to_dict(),
            "vocab": asdict(self.vocab),
            "max_len": self.data.max_len,
            "dataset_hash": self.data.manifest["content_hash"],
            "best_ndcg": state["best_ndcg"],
            "best_epoch": state["best_epoch"],
            "bad_epochs": state["bad_epochs"],
            "history": state["history"],
        }

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
        if problems:
            raise CheckpointError(
                f"cannot resume run {self.run_name} on {self.data.path}: " + "; ".join(problems)
                + ". Use the dataset it was trained on, or start a new --run-name"
            )

    def _metadata(self, state: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
        return {
            "run_name": self.run_name,
            "created_at": state.get("created_at"),
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": ckpt.versions(),
            "git_commit": ckpt.git_commit(),
            "device": str(self.device),
            "dataset": {"path": str(self.data.path), "content_hash": self.data.manifest["content_hash"]},
            "purchase_weight": self.cfg.train.purchase_weight,
            "epochs_done": state["epochs_done"],
            "best_epoch": state["best_epoch"],
            "best_valid_ndcg@10": state["best_ndcg"],
            "epochs": state["history"],
            "timings": timings,
            "checkpoints": state["sha256"],
            "notes": self.notes,
        }

    def _save(self, files: dict[str, dict[str, Any]], state: dict[str, Any], timings: dict[str, float]) -> None:
        """Write checkpoints, then metadata.json, so that a kill at any instant leaves a loadable run.

        Each file is staged (written, flushed, hashed), its hash recorded in metadata.json as pending,
        then renamed into place; the final metadata.json records it as committed. A failing write
        (disk full) replaces nothing: the previous checkpoints and metadata.json stay as they were."""
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
                state["sha256"][name] = sha
        finally:
            for tmp, _ in staged.values():
                tmp.unlink(missing_ok=True)
        ckpt.write_metadata(self.run_dir, self._metadata(state, timings))

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

    def _append_steps(self, records: list[dict[str, Any]], fresh: bool) -> None:
        """Append ``records`` to output/<run>/train_steps.jsonl (a fresh run starts the file), then clear them.

        A step logged after the last checkpoint of a killed process is logged again after --resume;
        readers keep the last line of each step."""
        lines = [json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in r.items()})
                 for r in records]
        with open(self.out_dir / STEP_LOG, "w" if fresh else "a", encoding="utf-8") as fh:
            fh.writelines(line + "\n" for line in lines)
        records.clear()

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        resume: bool = False,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        on_epoch: Callable[[EpochStats], None] | None = None,
        stop_after_epoch: int | None = None,
    ) -> TrainSummary:
        t = self.cfg.train
        t_start = time.perf_counter()
        last_path, best_path = self.run_dir / "last.pt", self.run_dir / "best.pt"
        if resume:
            meta = ckpt.read_metadata(self.run_dir) if (self.run_dir / "metadata.json").is_file() else {}
            payload = ckpt.load_checkpoint(last_path, ckpt.accepted_sha256(meta, "last.pt"))
        elif last_path.exists() or (self.run_dir / "metadata.json").exists():
            raise CheckpointError(
                f"run {self.run_name} already exists in {self.run_dir}; pass --resume to continue it or choose another --run-name"
            )
        self._build()
        state: dict[str, Any] = {
            "best_ndcg": None, "best_epoch": None, "bad_epochs": 0, "history": [], "epochs_done": 0,
            "sha256": {}, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        resumed_sums: torch.Tensor | None = None
        steps_log: list[dict[str, Any]] = []  # appended to STEP_LOG when a checkpoint is written
        epoch, batch_start, step, acc = 0, 0, 0, {"view": 0.0, "purchase": 0.0, "cart": 0.0, "n": 0.0, "tokens": 0.0, "seconds": 0.0}
        if resume:
            self._check_compatible(payload)
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            torch.set_rng_state(payload["rng"]["torch"])
            if payload["rng"]["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
            epoch, batch_start, step = payload["epoch"], payload["batch_in_epoch"], payload["step"]
            acc.update(payload.get("running", {}))
            if "running_sums" in payload:
                resumed_sums = payload["running_sums"]
            state.update(best_ndcg=payload["best_ndcg"], best_epoch=payload["best_epoch"],
                         bad_epochs=payload["bad_epochs"], history=list(payload["history"]),
                         epochs_done=epoch)
            state["sha256"] = self._resumed_hashes(meta)
            steps_log.append({"event": "resume", "epoch": epoch, "batch": batch_start, "step": step})
            state["created_at"] = meta.get("created_at", state["created_at"])
            if epoch >= t.epochs:
                raise ConfigError(
                    f"run {self.run_name} has already trained {epoch} epoch(s); pass --epochs larger than {epoch} to continue it"
                )
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
        timings = {"setup_s": round(time.perf_counter() - t_start, 3)}

        interrupted = early = False
        previous_handler = signal.getsignal(signal.SIGINT)

        def request_stop(signum: int, frame: Any) -> None:
            self._stop_requested = True

        try:
            signal.signal(signal.SIGINT, request_stop)
        except ValueError:  # not the main thread: Ctrl-C handling stays with the caller
            previous_handler = None
        autocast = self.device.type == "cuda" and t.bf16
        try:
            while epoch < t.epochs:
                self.model.train()
                perm = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(t.seed * 1000 + epoch)).to(self.device)
                t_epoch = time.perf_counter()
                running = torch.zeros(4, device=self.device)  # view, purchase, cart loss sums; tokens
                if resumed_sums is not None:
                    running.copy_(resumed_sums)
                    resumed_sums = None
                for bi in range(batch_start, self.steps_per_epoch):
                    idx = perm[bi * t.batch_size:(bi + 1) * t.batch_size]
                    batch = {k: v[idx] for k, v in self.train_data.items()}
                    if not t.compile:  # compiled graphs keep a fixed width
                        batch = trim_padding(batch)
                    negatives = None
                    if t.loss == "sampled":
                        negatives = torch.multinomial(self.sample_q, t.negatives, replacement=True)
                    lr = lr_at(step, self.total_steps, t.lr, t.warmup_frac)
                    for g in self.optimizer.param_groups:
                        g["lr"] = lr
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                        loss, parts = self._loss(batch, negatives)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if t.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                    self.optimizer.step()
                    step += 1
                    # running sums stay on the device: no host sync per step, only when reported
                    running += torch.stack([parts["view"].detach().float(), parts["purchase"].detach().float(),
                                            parts["cart"].detach().float(), (batch["item_idx"] > 0).sum().float()])
                    acc["n"] += 1
                    if (bi + 1) % LOG_EVERY == 0 or bi + 1 == self.steps_per_epoch:
                        logged = {"epoch": epoch, "batch": bi + 1, "batches": self.steps_per_epoch, "lr": lr,
                                  "view_loss": float(parts["view"].detach()), "purchase_loss": float(parts["purchase"].detach()),
                                  "tokens_per_s": (acc["tokens"] + float(running[3])) / max(acc["seconds"] + time.perf_counter() - t_epoch, 1e-9)}
                        steps_log.append({"step": step, **logged, "cart_loss": float(parts["cart"].detach())})
                        if on_step is not None:
                            on_step(logged)
                    if self._stop_requested:
                        acc["seconds"] += time.perf_counter() - t_epoch
                        payload_now = self._payload(epoch, bi + 1, step, acc, state)
                        payload_now["running_sums"] = running.cpu()  # as is: resuming sums exactly the same way
                        self._save({"last.pt": payload_now}, state, timings)
                        if self.out_dir.is_dir():
                            self._append_steps(steps_log, fresh=not resume and epoch == 0)
                        interrupted = True
                        break
                if interrupted:
                    break
                _fold(acc, running)
                acc["seconds"] += time.perf_counter() - t_epoch
                valid = self.evaluate_valid()
                n = max(acc["n"], 1.0)
                stats = EpochStats(
                    epoch=epoch + 1, view_loss=acc["view"] / n, purchase_loss=acc["purchase"] / n, cart_loss=acc["cart"] / n,
                    valid=valid, seconds=round(acc["seconds"], 3), tokens_per_s=acc["tokens"] / max(acc["seconds"], 1e-9), lr=lr,
                )
                state["history"].append(asdict(stats))
                epoch += 1
                batch_start = 0
                acc = {"view": 0.0, "purchase": 0.0, "cart": 0.0, "n": 0.0, "tokens": 0.0, "seconds": 0.0}
                state["epochs_done"] = epoch
                score = valid.get("ndcg@10", float("nan"))
                improved = not math.isnan(score) and (state["best_ndcg"] is None or score > state["best_ndcg"])
                no_valid = math.isnan(score)
                if improved or no_valid:
                    state["best_ndcg"] = None if no_valid else score
                    state["best_epoch"] = epoch
                    state["bad_epochs"] = 0
                else:
                    state["bad_epochs"] += 1
                files = {"best.pt": self._payload(epoch, 0, step, acc, state)} if improved or no_valid else {}
                files["last.pt"] = self._payload(epoch, 0, step, acc, state)
                self._save(files, state, timings)
                self.out_dir.mkdir(parents=True, exist_ok=True)
                write_json(self.out_dir / "train_history.json", state["history"])
                if t.patience and not no_valid and state["bad_epochs"] >= t.patience and epoch < t.epochs:
                    steps_log.append({"event": "early_stop", "epoch": epoch, "step": step})
                self._append_steps(steps_log, fresh=not resume and epoch == 1)
                if on_epoch is not None:
                    on_epoch(stats)
                if t.patience and not no_valid and state["bad_epochs"] >= t.patience and epoch < t.epochs:
                    early = True
                    self.notes.append(f"early stop after epoch {epoch}: no better valid NDCG@10 for {t.patience} epochs")
                    break
                if stop_after_epoch is not None and epoch >= stop_after_epoch:
                    interrupted = True
                    break
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        timings["train_s"] = round(sum(h["seconds"] for h in state["history"]), 3)
        timings["total_s"] = round(time.perf_counter() - t_start, 3)
        ckpt.write_metadata(self.run_dir, self._metadata(state, timings))
        tok = [h["tokens_per_s"] for h in state["history"]]
        return TrainSummary(
            run_name=self.run_name, run_dir=self.run_dir, output_dir=self.out_dir, epochs_done=state["epochs_done"],
            best_epoch=state["best_epoch"], best_valid_ndcg10=state["best_ndcg"], seconds=timings["total_s"],
            tokens_per_s=float(np.mean(tok)) if tok else 0.0,
            checkpoint=best_path if best_path.exists() else last_path,
            interrupted=interrupted, early_stopped=early, notes=list(self.notes), history=state["history"],
        )
