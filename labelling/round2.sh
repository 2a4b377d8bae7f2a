#!/usr/bin/env bash
# Round 2 of the on-policy labels: hard negatives. InferenceGuard guided by the cost model fitted on round 1
# (the shipped heads after `inferenceguard build-scorers`), on fresh training prompts no round-1 answer used
# (the first 100 of labelling/round2-harmful.jsonl: harmful train prompts drawn with seed 2 from those not in r1, the first 30 of 50 benign
# train prompts), at the embedded defaults (temperature 0.7, top-p 0.9), exhaustion policy 'refuse'.
# What it accepted is labelled by reading, added to the labels, and the heads are refitted.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/onpolicy}
.venv/bin/inferenceguard eval --prompts labelling/round2-harmful.jsonl:100 --prompts labelling/round2-benign.jsonl:30 \
  --methods inferenceguard --on-exhausted refuse --max-new-tokens 96 --seed 0 --batch-size 4 --no-progress \
  --out "$OUT/r2-ig"
