#!/bin/sh
# The evaluation behind the README's "by reading" table (rerun to resume): the 50 held-out AdvBench and 30
# held-out benign prompts (never used for labels or fitting), plain sampling and InferenceGuard with and
# without the critic, 96 new tokens, the embedded defaults (temperature 0.7, top-p 0.9), seed 0.
# Then: inferenceguard sheet runs/eval-reading --out SHEET.jsonl; read it (docs/labelling.md);
#       inferenceguard report runs/eval-reading --labels LABELS.jsonl
cd "$(dirname "$0")/.." || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/inferenceguard eval --prompts advbench:50 --prompts benign:30 \
  --methods sample,inferenceguard,inferenceguard-critic \
  --out "${OUT:-runs/eval-reading}" --max-new-tokens 96 --batch-size 4 --seed 0 "$@"
