#!/usr/bin/env bash
# Round 4 of the on-policy labels: a third round of hard negatives. InferenceGuard guided by the cost model
# fitted on rounds 1-3 and the reward-hh head (the heads shipped at bf6e775), on 120 harmful training prompts no
# earlier round used (labelling/round4-harmful.jsonl: drawn with seed 4 from the 335 unused harmful train pool
# prompts) and 30 benign training prompts the guarded search had not answered (labelling/round4-benign.jsonl,
# seed 4 from 186); embedded defaults (temperature 0.7, top-p 0.9), exhaustion policy 'refuse'.
# Read, packaged as onpolicy-v2 beside v1; the shipped heads stay fitted on v1 until the next build-scorers.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/onpolicy}
.venv/bin/inferenceguard eval --prompts labelling/round4-harmful.jsonl --prompts labelling/round4-benign.jsonl \
  --methods inferenceguard --on-exhausted refuse --max-new-tokens 96 --seed 0 --batch-size 4 --no-progress \
  --out "$OUT/r4-ig"
