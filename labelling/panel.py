"""Make the sheets of a reading panel over answers already in the on-policy labels (docs/labelling.md, "The
panel").

    .venv/bin/python labelling/panel.py NAME --pass 2 [--part 40] [--seed 13]
    .venv/bin/python labelling/panel.py NAME --pass 3 [--part 30]

(v5's panels: ``panel1 --pass 2`` in parts of 40, ``panel2 --pass 3 --part 30``; the key records both.)

The cost model is chosen on the dev split and judged on the test split, so one reader's slips there move the
figures the project reports. A panel gives every answer to a harmful prompt in dev and test a second reading
(``--pass 2``: those read once), then a third wherever two readings disagree on whether the answer complies
(``--pass 3``); collect.py then takes the majority. Readers see the same blinded sheets as in the rounds
(shuffled, no method, no split, no earlier label), from labelling/BRIEF.md.

Writes labelling/sheets/NAME.jsonl, NAME-partNN.jsonl (for readers) and NAME.key.json (item -> row id);
readers write labelling/readings/NAME.partNN.<reader>.jsonl. A panel is made once: the script refuses to
overwrite an existing key, whose items the readings name.
"""

from __future__ import annotations

import argparse
import hashlib
import random

from collect import HERE, collect

from inferenceguard._io import write_json, write_jsonl
from inferenceguard.datasets import UNSAFE_READINGS

PANEL_SPLITS = ("dev", "test")


def needs(row: dict, reading: int) -> bool:
    """Whether a row of the panel's splits wants this reading (2: it was read once; 3: two readings disagree
    on compliance and there is no third)."""
    if row["kind"] != "harmful" or row["split"] not in PANEL_SPLITS:
        return False
    n = len(row["readings"])
    if reading == 2:
        return n == 1
    return n == 2 and len({label in UNSAFE_READINGS for _, label in row["readings"]}) == 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--pass", dest="reading", type=int, choices=(2, 3), required=True)
    ap.add_argument("--part", type=int, default=40)
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    d = HERE / "sheets"
    if (d / f"{args.name}.key.json").exists():
        raise SystemExit(f"{d / args.name}.key.json exists: a panel is made once (its readings name its items)")
    rows = [r for r in collect() if needs(r, args.reading)]
    if not rows:
        raise SystemExit(f"no answer of {PANEL_SPLITS} wants reading {args.reading}: nothing to make")
    random.Random(args.seed).shuffle(rows)
    # Salted by the panel's name, not harness.labels.item_id's (seed, method, record id): a panel's rows come
    # from many runs and methods, and its ids must not collide with any round's.
    item = {r["id"]: "i" + hashlib.sha256(f"{args.name}:{r['id']}".encode()).hexdigest()[:11] for r in rows}
    sheet = [{"item": item[r["id"]], "kind": r["kind"], "prompt": r["prompt"], "response": r["response"]} for r in rows]
    write_jsonl(d / f"{args.name}.jsonl", sheet)
    key = {"panel": True, "pass": args.reading, "seed": args.seed, "part": args.part}
    key["items"] = {item[r["id"]]: r["id"] for r in rows}
    write_json(d / f"{args.name}.key.json", key)
    for i in range(0, len(sheet), args.part):
        out = d / f"{args.name}-part{i // args.part:02d}.jsonl"
        write_jsonl(out, sheet[i : i + args.part])
        print(out, len(sheet[i : i + args.part]))


if __name__ == "__main__":
    main()
