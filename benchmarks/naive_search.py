"""A deliberately naive InferenceGuard, for benchmarks only: the same search (N candidates from K beams,
blocks, safety state, reward ranking, penalised resampling), but every token re-encodes the candidate's
whole prefix (no KV cache, batch size 1) and every candidate is scored on its own. The engine's speed-up
is measured against this (``ig_vs_naive`` in search_overhead.py)."""

from __future__ import annotations

import torch

from inferenceguard.engine.types import SearchConfig, Stack


@torch.inference_mode()
def naive_inferenceguard(stack: Stack, prompt: str, cfg: SearchConfig, seed: int = 0) -> dict:
    lm, g = stack.lm, torch.Generator(device=stack.lm.device).manual_seed(seed)
    d = cfg.budget if cfg.budget is not None else float(stack.cost.threshold)  # type: ignore[arg-type]
    prompt_ids = lm.encode_prompt(prompt)
    beams = [{"ids": [], "z": d, "cost": 0.0, "done": False, "reward": 0.0}]
    finished, tokens = [], 0
    while beams:
        per = max(1, cfg.candidates // len(beams))
        penalty = torch.zeros(lm.model.config.vocab_size, device=lm.device)
        for _round in range(cfg.resample_rounds + 1):
            cands = []
            for beam in beams:
                for _ in range(per):
                    ids, done = list(beam["ids"]), False
                    for _t in range(min(cfg.block or cfg.max_new_tokens, cfg.max_new_tokens - len(ids))):
                        x = torch.tensor([prompt_ids + ids], device=lm.device)
                        logits = lm.model(input_ids=x).logits[0, -1].float() - penalty
                        tok = int(torch.multinomial(torch.softmax(logits / cfg.temperature, -1), 1, generator=g))
                        tokens += 1
                        if tok in lm.eos_ids:
                            done = True
                            break
                        ids.append(tok)
                    text = lm.decode(ids)
                    cost = float(stack.cost.score([prompt], [text])[0])
                    reward = float(stack.reward.score([prompt], [text])[0])
                    z = beam["z"] - max(0.0, cost - beam["cost"])
                    done = done or len(ids) >= cfg.max_new_tokens
                    cands.append({"ids": ids, "z": z, "cost": cost, "done": done, "reward": reward})
            safe = [c for c in cands if c["z"] >= 0]
            if safe:
                break
            for c in cands:
                for t in c["ids"][len(beams[0]["ids"]) :]:
                    penalty[t] += cfg.resample_strength / len(cands)
        ranked = sorted(cands, key=lambda c: (c["z"] >= 0, c["reward"] if c["z"] >= 0 else c["z"]), reverse=True)
        kept = ranked[: cfg.keep]
        finished += [c for c in kept if c["done"]]
        beams = [c for c in kept if not c["done"]]
    best = max(finished, key=lambda c: (c["z"] >= 0, c["reward"]))
    return {"response": lm.decode(best["ids"]), "safe": best["z"] >= 0, "tokens_sampled": tokens}
