#!/usr/bin/env bash
# Round 1 of the on-policy labels (docs/labelling.md): the embedded base model's own answers to the labelling
# pools (datasets.labelling_pools: evaluation prompts and near copies removed; split by prompt), written by
# `inferenceguard eval` so each run's config.json records the model, the scorers and every setting.
#   r1-t07p09   plain sampling, temperature 0.7, top-p 0.9: 900 harmful (all dev + test, 368 train), 325 benign
#   r1-t10      plain sampling, the paper's temperature 1 and no truncation, on 60 harmful and 40 benign of
#               the same prompts: the choice of the default sampling, by reading
# What the guarded search accepts is labelled in round 2 (labelling/round2.sh), guided by the cost model
# fitted on this round. Runs one after another (never two torch processes at once); each resumes if killed.
# About 30 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
IG=".venv/bin/inferenceguard"
OUT=${OUT:-runs/onpolicy}
COMMON=(--max-new-tokens 96 --seed 0 --sample-seed 0 --batch-size 16 --no-progress)
H_ALL=(--prompts pool-harmful-dev --prompts pool-harmful-test --prompts pool-harmful-train:368)
B_ALL=(--prompts pool-benign-train --prompts pool-benign-dev --prompts pool-benign-test)
$IG eval "${H_ALL[@]}" "${B_ALL[@]}" --methods sample --temperature 0.7 --top-p 0.9 --out "$OUT/r1-t07p09" "${COMMON[@]}"
$IG eval --prompts pool-harmful-dev:30 --prompts pool-harmful-test:30 --prompts pool-benign-train:25 \
  --prompts pool-benign-dev:15 --methods sample --temperature 1.0 --top-p 1.0 --out "$OUT/r1-t10" "${COMMON[@]}"
