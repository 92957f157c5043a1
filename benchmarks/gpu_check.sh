#!/usr/bin/env bash
# The GPU checks of issue 11 as one short script (a few minutes on one H100/H200; run from the repository root):
# paper-profile training throughput per speed variant at batch 16 and 64 (images/s, peak memory, compile time),
# and, with 2 or more GPUs, a 2-process DDP run (SyncBatchNorm, NCCL) started by torchrun on a small synthetic set.
set -euo pipefail
nvidia-smi -L
python benchmarks/gan_throughput.py --profile paper --device cuda \
  --variants fp32,bf16,channels_last,bf16+channels_last,compile,bf16+channels_last+compile \
  --batch-sizes 16,64 --steps 30 --warmup 5
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  tmp=$(mktemp -d)
  python -m coinseg synth "$tmp/data" --n-slices 400 --size 64
  python -m coinseg train-classifier "$tmp/data/manifest.csv" --out "$tmp/clf" --device cuda
  torchrun --standalone --nproc-per-node 2 -m coinseg train "$tmp/data/manifest.csv" --classifier "$tmp/clf" \
    --out "$tmp/coin" --device cuda --max-steps 100
  python -m coinseg train "$tmp/data/manifest.csv" --classifier "$tmp/clf" --out "$tmp/coin" --device cuda \
    --max-steps 150 --resume
  tail -3 "$tmp/coin/metrics.csv"
fi
