"""Research features for choosing the cost model (docs/labelling.md, "How the cost model was chosen").

    .venv/bin/python labelling/features.py ROWS.jsonl OUT.npz

ROWS.jsonl: one {"prompt", "response"} per line. Writes, for SmolLM2's hidden-state layers LAYERS, the
mean over response tokens of the whole answer and of its first 16/32/48/64 tokens, the hidden state of the
last prompt token (the assistant header: the model's reading of the request), and of the last response
token; plus MiniLM and mpnet embeddings of the prompt and the response. Not part of the package: the shipped
scorers are built by `inferenceguard build-scorers` from the choice made with these.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from inferenceguard.models.loading import load_encoder, load_lm
from inferenceguard.scorers.embedded import _fit, probe_token_ids

LAYERS = (8, 15, 22, 30)
PREFIXES = (16, 32, 48, 64)


@torch.inference_mode()
def lm_features(lm, prompts, responses, max_length=320, batch_size=8):
    pairs = [_fit(p, r, max_length) for p, r in probe_token_ids(lm, prompts, responses)]
    H, L = lm.hidden_size, len(LAYERS)
    mean = np.zeros((len(pairs), 1 + len(PREFIXES), L * H), np.float32)
    plast = np.zeros((len(pairs), L * H), np.float32)
    rlast = np.zeros((len(pairs), L * H), np.float32)
    order = sorted(range(len(pairs)), key=lambda i: sum(map(len, pairs[i])))
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        T = max(len(pairs[i][0]) + len(pairs[i][1]) for i in idx)
        ids = torch.full((len(idx), T), lm.pad_id)
        mask = torch.zeros(len(idx), T, dtype=torch.long)
        for row, i in enumerate(idx):
            p, r = pairs[i]
            ids[row, : len(p) + len(r)] = torch.tensor(p + r)
            mask[row, : len(p) + len(r)] = 1
        hs = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        h = torch.cat([hs[x].float() for x in LAYERS], -1)  # (b, T, F)
        for row, i in enumerate(idx):
            p, r = pairs[i]
            plast[i] = h[row, len(p) - 1].numpy()
            if r:
                rlast[i] = h[row, len(p) + len(r) - 1].numpy()
                for j, cut in enumerate((None, *PREFIXES)):
                    rr = r[:cut]
                    mean[i, j] = h[row, len(p) : len(p) + len(rr)].mean(0).numpy()
        if k % 200 == 0:
            print(f"lm {k}/{len(order)}", file=sys.stderr, flush=True)
    return mean, plast, rlast


def main() -> None:
    rows = [json.loads(x) for x in open(sys.argv[1], encoding="utf-8") if x.strip()]
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    torch.set_num_threads(2)
    lm = load_lm(None)
    mean, plast, rlast = lm_features(lm, prompts, responses)
    out = {"lm_mean": mean, "lm_plast": plast, "lm_rlast": rlast}
    for name in ("minilm", "mpnet"):
        enc = load_encoder(name)
        out[f"{name}_p"] = enc.embed(prompts).numpy()
        out[f"{name}_r"] = enc.embed(responses).numpy()
        print(f"{name} done", file=sys.stderr, flush=True)
    np.savez(sys.argv[2], **out)


if __name__ == "__main__":
    main()
