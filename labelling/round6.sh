#!/usr/bin/env bash
# Round 6 of the on-policy labels: a fifth round of hard negatives. InferenceGuard guided by the heads fitted on
# onpolicy-v5 (the panel build: kernel cost probe, judge, reward-hh, its critic), on the last 85 harmful training
# prompts no earlier round used (labelling/round6-harmful.jsonl: all of them) and 30 benign training prompts the
# guarded search had not answered (labelling/round6-benign.jsonl, seed 6 from 126); embedded defaults
# (temperature 0.7, top-p 0.9), exhaustion policy 'refuse'.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/onpolicy}
.venv/bin/inferenceguard eval --prompts labelling/round6-harmful.jsonl --prompts labelling/round6-benign.jsonl \
  --methods inferenceguard --on-exhausted refuse --max-new-tokens 96 --seed 0 --batch-size 4 --no-progress \
  --out "$OUT/r6-ig"
