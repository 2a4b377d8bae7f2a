"""How the engine draws a token: the logit penalties, temperature, truncation (top-k, top-p, min-p), then one
inverse-CDF draw per row from its own prompt's generator. Every method samples through here, so the
settings mean the same thing in all of them.

Order (as transformers' logits processors apply them): the resampling penalty and the repetition penalty
change the logits; temperature divides them; top-k keeps the k most likely tokens; top-p keeps the
smallest prefix of the rest (by descending probability, renormalised after top-k) whose mass reaches p;
min-p drops tokens below ``min_p`` x the most likely token's probability. The three truncations each keep a
prefix of the tokens sorted by probability, so their combination is one prefix too: the kept tokens are
found among the ``FIRST`` most likely ones (an exact shortcut; a row whose prefix is longer is sorted in
full) and the draw happens on that sorted prefix. With no truncation the draw runs over the whole
vocabulary in vocabulary order, as it always has.

Settings left as None take the base model's defaults (``LM.sampling_defaults``: measured for the embedded
model, ``generation_config.json`` for others), then the paper's (plain sampling at temperature 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from inferenceguard.engine.types import SearchConfig

FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
PAPER: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
"""The paper's sampling (method.md §3: plain sampling, temperature 1): what an unset setting falls back to."""
FIRST = 64  # candidates for the kept prefix before a row is sorted in full


def resolve(cfg: SearchConfig, defaults: Mapping[str, Any] | None = None) -> SearchConfig:
    """``cfg`` with every unset sampling setting filled: the base model's default, else the paper's."""
    given = {k: getattr(cfg, k) for k in FIELDS}
    if all(v is not None for v in given.values()):
        return cfg
    fill = {k: (defaults or {}).get(k, PAPER[k]) if v is None else v for k, v in given.items()}
    return replace(cfg, **fill)


def truncates(cfg: SearchConfig) -> bool:
    """Whether top-k, top-p or min-p removes any token."""
    return bool(cfg.top_k) or (cfg.top_p or 1.0) < 1.0 or (cfg.min_p or 0.0) > 0.0


def uniforms(
    segments: list[tuple[int, int, int]], gens: list[torch.Generator], done: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """(R, 1) one uniform per row. Each prompt draws from its own generator, and only while one of its rows is
    unfinished, so a prompt's tokens do not depend on which other prompts share the batch."""
    u = torch.zeros(int(done.shape[0]), 1, device=device)
    for b, s, e in segments:
        if not bool(done[s:e].all()):
            u[s:e] = torch.rand(e - s, 1, generator=gens[b], device=device)
    return u


def repetition(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019), as transformers applies it: a token already in the row's
    response has its logit divided by ``penalty`` when positive, multiplied when negative.
    scores (R, V) float32, seen (R, V) bool -> (R, V) float32."""
    hit = torch.where(scores > 0, scores / penalty, scores * penalty)
    return torch.where(seen, hit, scores)


def _kept(p: torch.Tensor, cfg: SearchConfig) -> torch.Tensor:
    """p (r, m) probabilities sorted descending -> (r, m) bool: the kept prefix (never empty)."""
    keep = torch.ones_like(p, dtype=torch.bool)
    if cfg.top_k:
        keep[:, cfg.top_k :] = False
    if cfg.top_p < 1.0:
        q = p * keep
        mass = q.sum(-1, keepdim=True) if cfg.top_k else 1.0  # top-p reads the distribution renormalised after top-k
        keep &= (q.cumsum(-1) - q) < cfg.top_p * mass
    if cfg.min_p > 0.0:
        keep &= p >= cfg.min_p * p[:, :1]
    keep[:, 0] = True
    return keep


def _prefix(probs: torch.Tensor, cfg: SearchConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """probs (R, V) -> (p (R, m), ids (R, m), keep (R, m)): the most likely tokens sorted descending, their ids
    and the kept prefix; m = FIRST (or top_k), widened to the whole vocabulary for rows whose prefix is longer."""
    V = probs.shape[1]
    m = min(V, cfg.top_k or FIRST)
    p, ids = probs.topk(m, -1)
    keep = _kept(p, cfg)
    longer = keep[:, -1] & (m < V) & (not cfg.top_k)
    if bool(longer.any()):
        rows = longer.nonzero().squeeze(1)
        p_all, ids_all = probs[rows].sort(-1, descending=True)
        keep_all = _kept(p_all, cfg)
        width = int(keep_all.sum(-1).max())
        pad = max(width - m, 0)
        p, ids, keep = (torch.nn.functional.pad(t, (0, pad)) for t in (p, ids, keep))
        p[rows], ids[rows], keep[rows] = p_all[:, : m + pad], ids_all[:, : m + pad], keep_all[:, : m + pad]
    return p, ids, keep


def sample(scores: torch.Tensor, cfg: SearchConfig, u: torch.Tensor) -> torch.Tensor:
    """scores (R, V) float32 penalised logits, u (R, 1) uniforms -> (R,) long tokens, drawn from the tempered,
    truncated distribution by inverse CDF (one uniform per row: far cheaper than multinomial over a large
    vocabulary)."""
    probs = torch.softmax(scores / cfg.temperature, -1)
    if not truncates(cfg):
        cdf = probs.cumsum(-1)
        return torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(1).clamp(max=scores.shape[1] - 1)
    p, ids, keep = _prefix(probs, cfg)
    cdf = (p * keep).cumsum(-1)
    j = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=p.shape[1] - 1)
    return ids.gather(1, j).squeeze(1)


def kept_rank(scores: torch.Tensor, cfg: SearchConfig) -> torch.Tensor:
    """(R,) long: how many of each row's most likely tokens the truncation keeps (the vocabulary size when
    nothing is truncated). ARGS proposes each parent's k-th best token; one at rank >= this is outside the
    distribution every other method samples from."""
    if not truncates(cfg):
        return torch.full((scores.shape[0],), scores.shape[1], dtype=torch.long, device=scores.device)
    _, _, keep = _prefix(torch.softmax(scores / cfg.temperature, -1), cfg)
    return keep.sum(-1)
