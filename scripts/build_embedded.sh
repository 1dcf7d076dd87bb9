#!/usr/bin/env bash
# Rebuild the four shipped checkpoints of the embedded world from nothing, on CPU, with the same
# commands a user runs: pretrain clip-tiny, then fine-tune it with TeCoA, PMG-AFT and FARE, then
# run the mini benchmark. About 45 minutes on 2 CPU cores. Usage: bash scripts/build_embedded.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PMG_OFFLINE=1

EPS=4            # /255: training and benchmark radius, calibrated for 32x32 images (docs/BENCHMARK.md)
SEED=0

python -m pmg_core pretrain --steps 3000 --batch-size 128 --seed "$SEED" --out checkpoints/clip-tiny.safetensors

finetune=(--model clip-tiny --dataset synth-finetune --eps "$EPS" --steps 2 --step-size 2
          --max-steps 400 --batch-size 128 --lr 0.02 --warmup 40 --seed "$SEED")
python -m pmg_core train --method tecoa "${finetune[@]}" --out checkpoints/tecoa-tiny.safetensors
python -m pmg_core train --method pmg-aft "${finetune[@]}" --out checkpoints/pmg-aft-tiny.safetensors
python -m pmg_core train --method fare "${finetune[@]}" --out checkpoints/fare-tiny.safetensors

python -m pmg_core eval --models clip-tiny,tecoa-tiny,pmg-aft-tiny,fare-tiny --datasets mini \
    --eps "$EPS" --steps 10 --step-size 1 --seed "$SEED" --out benchmarks/mini.json
