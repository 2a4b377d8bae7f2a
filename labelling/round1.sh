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
# r1b: round 1 left the train split short of answers (all dev and test prompts, 368 train ones), so 240 more
# harmful train prompts (the first 240 of labelling/round1b-harmful.jsonl, drawn with seed 3, none used by r1 or round 2), same settings.
$IG eval --prompts labelling/round1b-harmful.jsonl:240 --methods sample --temperature 0.7 --top-p 0.9 \
  --out "$OUT/r1b-t07p09" "${COMMON[@]}"
# r1c: to pass 2,000 labelled answers, the other 240 prompts of round1b-harmful.jsonl (round1c-harmful.jsonl)
# and a second answer (engine seed 1) to 100 benign train prompts, same settings.
$IG eval --prompts labelling/round1c-harmful.jsonl --prompts pool-benign-train:100 --methods sample \
  --temperature 0.7 --top-p 0.9 --out "$OUT/r1c-t07p09" --max-new-tokens 96 --seed 1 --sample-seed 0 \
  --batch-size 16 --no-progress
