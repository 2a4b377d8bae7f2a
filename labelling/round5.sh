#!/usr/bin/env bash
# Round 5 of the on-policy labels: a fourth round of hard negatives. InferenceGuard guided by the heads shipped at
# 2692a8d (the round-3 cost probe, reward-hh), on 130 harmful training prompts no earlier round used
# (labelling/round5-harmful.jsonl: drawn with seed 5 from the 215 unused harmful train pool prompts) and 30 benign
# training prompts the guarded search had not answered (labelling/round5-benign.jsonl, seed 5 from 156); embedded
# defaults (temperature 0.7, top-p 0.9), exhaustion policy 'refuse'. Read and packaged as onpolicy-v4.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/onpolicy}
.venv/bin/inferenceguard eval --prompts labelling/round5-harmful.jsonl --prompts labelling/round5-benign.jsonl \
  --methods inferenceguard --on-exhausted refuse --max-new-tokens 96 --seed 0 --batch-size 4 --no-progress \
  --out "$OUT/r5-ig"
