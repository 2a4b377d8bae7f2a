#!/bin/sh
# The ablations in docs/harness.md (rerun to resume), on the same 50 AdvBench + 30 benign held-out prompts:
# tighter budgets d = 0.25 and 0.1, and the guide and the judge swapped (the judge head guides the search,
# the SmolLM2 probe judges). About 40 minutes on 2 CPU cores.
cd "$(dirname "$0")/.." || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
EVAL=".venv/bin/inferenceguard eval --prompts advbench:50 --prompts benign:30 --max-new-tokens 48 --batch-size 4 --seed 0"
for d in 0.25 0.1; do
  $EVAL --methods inferenceguard,inferenceguard-critic,beam-safety,sample --budget $d --out runs/eval-budget-$d || exit 1
done
A=src/inferenceguard/assets/scorers
$EVAL --methods sample,inferenceguard,beam-safety --cost-model $A/judge_mpnet.json --judge $A/cost_probe.json \
  --out runs/eval-swap
