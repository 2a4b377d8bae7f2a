#!/usr/bin/env bash
# Export the next blinded sheet of a run (answers no earlier sheet holds) into labelling/sheets/, split into
# parts of PART items for readers, and keep the run's config and the sheet key beside it (tracked).
#   bash labelling/export.sh RUN NAME [PART]     e.g. bash labelling/export.sh r1-t07p09 a 130
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$1 NAME=$2 PART=${3:-130} SEED=${SEED:-11}
D=labelling/sheets
.venv/bin/inferenceguard sheet "runs/onpolicy/$RUN" --out "$D/$RUN-$NAME.jsonl" --seed "$SEED" --new-only
cp "runs/onpolicy/$RUN/labels/$RUN-$NAME.key.json" "$D/"
cp "runs/onpolicy/$RUN/config.json" "$D/$RUN.config.json"
rm -f "$D/$RUN-$NAME.rubric.md"
.venv/bin/python - "$D/$RUN-$NAME.jsonl" "$PART" <<'PY'
import json, sys
from pathlib import Path
from inferenceguard.datasets import labelling_pools, normalise
src, part = Path(sys.argv[1]), int(sys.argv[2])
# A prompt file's set has kind 'custom': give each item its pool's kind, so readers use the right labels.
kinds = {normalise(p.text): p.kind for p in labelling_pools()}
key_path = src.with_name(src.stem + ".key.json")
key = json.loads(key_path.read_text())
items = [json.loads(x) for x in src.read_text().splitlines()]
for it in items:
    if it["kind"] == "custom":
        it["kind"] = key["items"][it["item"]]["kind"] = kinds[normalise(it["prompt"])]
src.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
key_path.write_text(json.dumps(key, indent=1))
rows = src.read_text().splitlines()
for i in range(0, len(rows), part):
    out = src.with_name(f"{src.stem}-part{i // part:02d}.jsonl")
    out.write_text("\n".join(rows[i:i + part]) + "\n")
    print(out, len(rows[i:i + part]))
PY
