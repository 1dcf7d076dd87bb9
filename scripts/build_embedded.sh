#!/usr/bin/env bash
# Rebuild the five shipped checkpoints of the embedded world from nothing, on CPU, with the same
# commands a user runs: pretrain clip-tiny, then fine-tune it with TeCoA, PMG-AFT, TGA-ZSR and FARE, then
# run the mini benchmark. About 75 minutes on 2 CPU cores. Usage: bash scripts/build_embedded.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PMG_OFFLINE=1

EPS=8            # /255: training and benchmark radius, calibrated for 32x32 images (docs/BENCHMARK.md)
SEED=0

python -m pmg_core pretrain --steps 3000 --batch-size 128 --seed "$SEED" --out checkpoints/clip-tiny.safetensors

finetune=(--model clip-tiny --dataset synth-finetune --eps "$EPS" --steps 2 --step-size 4
          --max-steps 300 --batch-size 128 --warmup 30 --seed "$SEED")
python -m pmg_core train --method tecoa "${finetune[@]}" --lr 0.02 --out checkpoints/tecoa-tiny.safetensors
python -m pmg_core train --method pmg-aft "${finetune[@]}" --lr 0.02 --out checkpoints/pmg-aft-tiny.safetensors
python -m pmg_core train --method tga-zsr "${finetune[@]}" --lr 0.02 --out checkpoints/tga-zsr-tiny.safetensors
# FARE's squared-L2 loss on unnormalised embeddings starts near 64 (CE starts near 2): at lr 0.02 it
# diverges within 30 steps, so it trains at a tenth of the rate.
python -m pmg_core train --method fare "${finetune[@]}" --lr 0.002 --out checkpoints/fare-tiny.safetensors

python -m pmg_core eval --models clip-tiny,tecoa-tiny,pmg-aft-tiny,fare-tiny --datasets mini \
    --eps "$EPS" --steps 10 --step-size 2 --seed "$SEED" --out benchmarks/mini.json
