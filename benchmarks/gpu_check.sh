#!/usr/bin/env bash
# The device check, run on a lent GPU machine by hand (one call): GPU tests, training throughput of
# purchasepred against the plain PyTorch reference (bf16, with and without compile), and the
# quality benchmark trained on the GPU. Every section has its own time limit.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
timeout ${T_TESTS:-150} python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
timeout ${T_EAGER:-100} python3 benchmarks/bench_train.py --device cuda --batch 1024 --bf16 --steps 10 --warmup 3 \
    --json "$OUT/bench_eager.json" 2>&1 | tee "$OUT/bench_eager.txt"
timeout ${T_COMPILE:-120} python3 benchmarks/bench_train.py --device cuda --batch 1024 --bf16 --compile --items 200000 --steps 10 --warmup 3 \
    --json "$OUT/bench_compile.json" 2>&1 | tee "$OUT/bench_compile.txt"
timeout ${T_QUALITY:-200} python3 benchmarks/bench_quality.py --rows 1000000 --vpp 60,4000 --variants default,no_repeat,carts \
    --set train.device=cuda --set eval.bootstrap=200 --json "$OUT/quality.json" 2>&1 | grep -v Warning | tee "$OUT/quality.txt"
