#!/usr/bin/env bash
# Round 3 of the on-policy labels: a second round of hard negatives. InferenceGuard guided by the cost model
# fitted on rounds 1-2 (the heads shipped after the round-2 `build-scorers`), on 150 harmful training prompts
# no earlier round used (labelling/round3-harmful.jsonl: drawn with seed 3 from the 297 unused harmful train
# pool prompts) and 20 benign training prompts whose plain samples were labelled in round 1 but which the
# guarded search had not answered (labelling/round3-benign.jsonl = lines 31-50 of round2-benign.jsonl);
# embedded defaults (temperature 0.7, top-p 0.9), exhaustion policy 'refuse'.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/onpolicy}
.venv/bin/inferenceguard eval --prompts labelling/round3-harmful.jsonl --prompts labelling/round3-benign.jsonl \
  --methods inferenceguard --on-exhausted refuse --max-new-tokens 96 --seed 0 --batch-size 4 --no-progress \
  --out "$OUT/r3-ig"
