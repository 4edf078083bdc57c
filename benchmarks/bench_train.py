"""Training throughput: purchasepred's step against a plain PyTorch reference of the same sizes.

Both sides train on the same random batches (B sequences of max_len events, every position with a
next-item target, ~2% with a purchase target) with the same loss: full softmax over the catalog
(or sampled softmax with log-Q correction). The reference is the obvious PyTorch code:
nn.TransformerEncoder (pre-LN, causal mask) over summed embeddings, logits = h @ E^T materialised,
F.cross_entropy. tokens/s counts every position of every sequence. Run by hand:

    python benchmarks/bench_train.py                       # CPU: 30k and 200k items, full and sampled
    python benchmarks/bench_train.py --device cuda --batch 1024 --bf16 --compile
    python benchmarks/bench_train.py --baseline-tree ../main-before   # also another checkout's step, alternated

purchasepred's side is the trainer's own step: ``train_step`` over ``MultitaskLoss`` with the target
rows counted on the host per batch (``--rows counted``, what the trainer does; under ``--compile`` the
most of any batch, rounded up, as the trainer does per epoch), or every position of the batch
(``--rows all``: the fixed-shape variant that needs no counts, for comparison). ``--compile``
compiles what the trainer compiles (encoder, heads and losses as one graph) and the reference's loss.
``--baseline-tree DIR`` runs DIR's own copy of this benchmark (purchasepred side only) in a child
process between the measurements, so that a change can be compared with the code before it in the
same run; its line shows its tokens/s and the ratio of this tree to it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from purchasepred.config import ModelConfig, TrainConfig
from purchasepred.models.transformer import FEATURES, TransformerRecommender, Vocab
from purchasepred.train.trainer import TARGETS, MultitaskLoss, compile_loss, param_groups, round_caps, train_step


def random_batch(b: int, t: int, n_items: int, device: torch.device, g: torch.Generator) -> dict[str, torch.Tensor]:
    def r(hi: int) -> torch.Tensor:
        return torch.randint(1, hi, (b, t), generator=g).to(device)

    batch = {
        "item_idx": torch.randint(2, n_items, (b, t), generator=g).to(device), "brand_idx": r(50), "category_idx": r(50),
        "event_type_id": r(4), "price_bucket": r(32), "hour_id": r(25), "weekday_id": r(8), "gap_bucket": r(28),
        "ts": torch.arange(t).repeat(b, 1).to(device) * 60,
    }
    batch["next_target"] = torch.randint(2, n_items, (b, t), generator=g).to(device)
    buy = torch.rand(b, t, generator=g) < 0.02
    batch["purchase_target"] = torch.where(buy, torch.randint(2, n_items, (b, t), generator=g), 0).to(device)
    batch["cart_target"] = torch.zeros(b, t, dtype=torch.long, device=device)
    return batch


class Reference(nn.Module):
    """The plain PyTorch baseline: same embeddings and encoder size, logits materialised."""

    def __init__(self, n_items: int, d: int, layers: int, heads: int, t: int) -> None:
        super().__init__()
        self.item = nn.Embedding(n_items, d, padding_idx=0)
        self.other = nn.ModuleDict({f: nn.Embedding(64, d) for f in FEATURES if f != "item_idx"})
        self.pos = nn.Embedding(t, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.1, batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.buy = nn.Linear(d, d)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(t))

    def loss(self, batch: dict[str, torch.Tensor], negatives: torch.Tensor | None, log_q: torch.Tensor, w: float) -> torch.Tensor:
        x = self.item(batch["item_idx"]) + self.pos.weight[None]
        for f, emb in self.other.items():
            x = x + emb(batch[f].clamp(max=63))
        h = self.encoder(x, mask=self.mask, is_causal=True)  # (B, T, D)
        y = batch["next_target"].reshape(-1)
        hv = h.reshape(-1, h.shape[-1])
        buy_rows = batch["purchase_target"].reshape(-1) > 0
        hb, yb = self.buy(hv[buy_rows]), batch["purchase_target"].reshape(-1)[buy_rows]
        if negatives is None:
            view = F.cross_entropy(hv @ self.item.weight.t(), y)
            purchase = F.cross_entropy(hb @ self.item.weight.t(), yb)
        else:
            def sampled(hh: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
                pos = (hh * self.item.weight[yy]).sum(-1) - log_q[yy]
                neg = hh @ self.item.weight[negatives].t() - log_q[negatives]
                neg = neg.masked_fill(negatives[None] == yy[:, None], float("-inf"))
                return -(pos - torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1)).mean()
            view, purchase = sampled(hv, y), sampled(hb, yb)
        return view + w * purchase


def run(kind: str, n_items: int, loss: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    t_cfg = TrainConfig(purchase_weight=100.0, loss=loss, negatives=args.negatives, grad_clip=1.0)
    batches = [random_batch(args.batch, args.max_len, n_items, device, g) for _ in range(3)]
    q = torch.ones(n_items, device=device)
    q[:2] = 0
    q = q / q.sum()
    log_q = torch.log(q.clamp(min=1e-30))
    if kind == "purchasepred":
        model = TransformerRecommender(ModelConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, dropout=0.1),
                                       Vocab(n_items, 64, 64), args.max_len).to(device)
        loss_module = MultitaskLoss(model, t_cfg)
        loss_module = compile_loss(loss_module, args.compile_mode) if args.compile else loss_module
        # target rows per batch, counted on the host before timing (the trainer reads them off host arrays)
        counts = [tuple(int((b[key] > 0).sum()) for key in TARGETS) for b in batches]
        if args.rows == "all":
            caps = [None] * len(batches)
        elif args.compile:  # one capacity for all batches, as the trainer's per-epoch caps
            caps = [round_caps(np.max(counts, axis=0), args.batch * args.max_len)] * len(batches)
        else:
            caps = counts
    else:
        model = Reference(n_items, args.d_model, args.layers, args.heads, args.max_len).to(device)
        ref = torch.compile(model.loss, mode=args.compile_mode) if args.compile else model.loss
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-3, fused=device.type == "cuda")
    autocast = device.type == "cuda" and args.bf16

    def one(i: int) -> None:
        neg = torch.multinomial(q, args.negatives, replacement=True) if loss == "sampled" else None
        batch = batches[i % len(batches)]
        if kind == "purchasepred":  # the trainer's own step
            cap = caps[i % len(batches)]
            train_step(model, lambda b, s: loss_module(b, s, None, cap), opt, batch, 1e-3, t_cfg,
                       (neg, log_q) if neg is not None else None, autocast)
            return
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):  # the plain loop
            step_loss = ref(batch, neg, log_q, 100.0)
        opt.zero_grad(set_to_none=True)
        step_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    try:
        for i in range(args.warmup):
            one(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for i in range(args.steps):
            one(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    except (RuntimeError, MemoryError) as err:  # e.g. the reference's logits do not fit
        return {"tokens_per_s": math.nan, "error": str(err).splitlines()[0][:120]}
    out = {"tokens_per_s": args.steps * args.batch * args.max_len / dt, "step_ms": 1000 * dt / args.steps}
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def run_tree(tree: Path, n_items: int, loss: str, args: argparse.Namespace) -> dict[str, float]:
    """The purchasepred side as measured by another checkout's copy of this benchmark (child process,
    that checkout's package first on the path)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tree.json"
        cmd = [sys.executable, str(tree / "benchmarks" / "bench_train.py"), "--device", args.device, "--items", str(n_items),
               "--losses", loss, "--skip-reference", "--json", str(out)]
        for name in ("batch", "max_len", "d_model", "layers", "heads", "negatives", "steps", "warmup"):
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        cmd += ["--bf16"] * args.bf16 + ["--compile"] * args.compile
        cmd += ["--compile-mode", args.compile_mode] if args.compile_mode else []
        env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
        done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            return {"tokens_per_s": math.nan, "error": (done.stderr.strip().splitlines() or ["failed"])[-1][:120]}
        return json.loads(out.read_text())["rows"][0]["ours"]


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median tokens/s (its other fields with it)."""
    ok = sorted((r for r in runs if r["tokens_per_s"] == r["tokens_per_s"]), key=lambda r: r["tokens_per_s"])
    return ok[(len(ok) - 1) // 2] if ok else runs[0]


def _ram_gb() -> float:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--items", default="30000,200000")
    p.add_argument("--losses", default="full,sampled")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--negatives", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="alternate both sides this many times; medians reported")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode for both sides (reduce-overhead: CUDA graphs)")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--rows", choices=("counted", "all"), default="counted",
                   help="target rows the loss gathers: counted per batch (the trainer's way) or every position")
    p.add_argument("--baseline-tree", type=Path, default=None,
                   help="another checkout (e.g. a git worktree of main): measure its step too, alternated")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    mode = f"/{args.compile_mode}" if args.compile_mode else ""
    print(f"device={device} batch={args.batch} max_len={args.max_len} d_model={args.d_model} layers={args.layers} "
          f"bf16={args.bf16} compile={args.compile}{mode} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"repeats={args.repeats} rows={args.rows}")
    tree_cols = f" {'baseline-tree tok/s':>20} {'vs tree':>8}" if args.baseline_tree else ""
    print(f"{'items':>8} {'loss':>8} {'purchasepred tok/s':>20} {'reference tok/s':>18} {'ratio':>7}{tree_cols}")
    for n_items in [int(x) for x in args.items.split(",")]:
        for loss in args.losses.split(","):
            logits_gb = args.batch * args.max_len * n_items * 4 * 3 / 1e9  # logits, their grad, softmax
            ours_runs, ref_runs, tree_runs = [], [], []
            for _ in range(args.repeats):  # alternated, so that a busy neighbour slows both sides alike
                ours_runs.append(run("purchasepred", n_items, loss, args, device))
                if args.baseline_tree:
                    tree_runs.append(run_tree(args.baseline_tree, n_items, loss, args))
                if args.skip_reference:
                    ref_runs.append({"tokens_per_s": math.nan})
                elif loss == "full" and device.type == "cpu" and logits_gb > 0.5 * _ram_gb():
                    ref_runs.append({"tokens_per_s": math.nan,
                                     "error": f"needs ~{logits_gb:.0f} GB for its logits, more than half of RAM ({_ram_gb():.0f} GB)"})
                else:
                    ref_runs.append(run("reference", n_items, loss, args, device))
            ours, ref = _median(ours_runs), _median(ref_runs)
            ratio = ours["tokens_per_s"] / ref["tokens_per_s"] if ref["tokens_per_s"] == ref["tokens_per_s"] else math.nan
            row = {"items": n_items, "loss": loss, "ours": ours, "reference": ref, "ratio": ratio}
            note = f"  (reference: {ref['error']})" if "error" in ref else ""
            tree_col = ""
            if args.baseline_tree:
                tree = _median(tree_runs)
                row["baseline_tree"], row["vs_tree"] = tree, ours["tokens_per_s"] / tree["tokens_per_s"]
                tree_col = f" {tree['tokens_per_s']:>20,.0f} {row['vs_tree']:>8.2f}"
                note += f"  (baseline tree: {tree['error']})" if "error" in tree else ""
            rows.append(row)
            print(f"{n_items:>8} {loss:>8} {ours['tokens_per_s']:>20,.0f} {ref['tokens_per_s']:>18,.0f} {ratio:>7.2f}"
                  f"{tree_col}{note}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
