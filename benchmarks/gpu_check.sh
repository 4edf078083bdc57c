#!/usr/bin/env bash
# The device check, run on a lent GPU machine by hand (one call): GPU tests, then training
# throughput of purchasepred against the plain PyTorch reference, bf16, with and without compile.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
timeout 150 python3 benchmarks/bench_train.py --device cuda --batch 1024 --bf16 --steps 20 --warmup 3 \
    --json "$OUT/bench_eager.json" 2>&1 | tee "$OUT/bench_eager.txt"
timeout 200 python3 benchmarks/bench_train.py --device cuda --batch 1024 --bf16 --compile --items 200000 --steps 20 --warmup 3 \
    --json "$OUT/bench_compile.json" 2>&1 | tee "$OUT/bench_compile.txt"
