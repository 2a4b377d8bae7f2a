#!/bin/sh
# The default-stack evaluation behind the README's table (rerun to resume): the 50 held-out AdvBench and
# 30 held-out benign prompts, every method, 48 new tokens. About 35 minutes on 2 CPU cores.
# Extra arguments are passed on (e.g. --no-progress); the ablations are in eval_ablations.sh.
cd "$(dirname "$0")/.." || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/inferenceguard eval --prompts advbench:50 --prompts benign:30 \
  --methods sample,bon,bon-lagrangian,bon-safety,beam,beam-lagrangian,beam-safety,inferenceguard,args-cost,args,args-lagrangian,inferenceguard-critic,recontrol,recontrol-lagrangian \
  --out runs/eval-default --max-new-tokens 48 --batch-size 4 --seed 0 "$@"
