"""THE search loop. Every strategy (sampling, Best-of-N, beam search, ARGS, RE-Control, InferenceGuard) is a
``SearchConfig`` of this one function.

Each step, per prompt: expand the live beams into N candidates of up to ``block`` tokens by batched sampling
that shares the beams' KV cache (the cache rows are repeated, never re-encoded); score every candidate (cost
model -> safety state z, and reward model / critic when the strategy asks); if no candidate is admissible,
penalise the tokens of the unsafe blocks and resample (up to M rounds), then apply the exhaustion policy;
keep the top K; finished beams leave for the answer pool (``Answers``). All prompts of a batch move in lockstep, rows
flattened over prompts and kept sorted by prompt; every row has the same length (left-padded prompts,
masked padding after an end), so one forward call serves all candidates of all prompts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from inferenceguard import safety
from inferenceguard.critic import require_critic
from inferenceguard.engine import kv, sampling
from inferenceguard.engine.types import Candidates, Result, SearchConfig, Stack
from inferenceguard.errors import ConfigError
from inferenceguard.models.loading import Prompt, check_prompt, is_conversation, prompt_text
from inferenceguard.scorers.base import LatentScorer, PrefixScorer, resolve_budget

OnCommit = Callable[[int, str], None]  # (prompt index, newly committed text)


@dataclass
class Rows:
    """Live hypotheses (or candidates), flattened over prompts and sorted by prompt: R rows."""

    prompt: torch.Tensor  # (R,) long
    mask: torch.Tensor  # (R, T) long attention mask: left-padded prompt, then generated positions
    gen: torch.Tensor  # (R, L) long generated ids (pad after the end)
    real: torch.Tensor  # (R, L) bool: the generated position is part of the response (not EOS, not pad)
    cache: Any  # KV cache of the T fed positions
    logits: torch.Tensor  # (R, V) float32 next-token logits
    h: torch.Tensor  # (R, H) last-layer hidden state of the last real token
    feats: torch.Tensor  # (R, F) sum over response tokens of the latent cost model's layers (F = 0 if unused)
    cost: torch.Tensor  # (R,) cost model on the current prefix
    charged: torch.Tensor  # (R,) long: characters of the response whose token-wise costs are charged (PrefixScorer)
    charged_cost: torch.Tensor  # (R,) the token-wise cost at that point: the next rise is measured from it
    z: torch.Tensor  # (R,) safety state
    z_hist: torch.Tensor  # (R, S) safety state after each step
    h_hist: torch.Tensor  # (R, S, H) last hidden state after each step when cfg.record_hidden, else (R, 0, H)
    done: torch.Tensor  # (R,) bool: ended (EOS or max new tokens)
    logp: torch.Tensor  # (R,) log-probability of the current block
    reward: torch.Tensor  # (R,) reward of the prefix (nan when not computed)

    def index(self, idx: torch.Tensor) -> Rows:
        """A new Rows holding rows ``idx`` (repeats allowed); the cache is copied, self is untouched."""
        out = {f.name: getattr(self, f.name).index_select(0, idx) for f in fields(self) if f.name != "cache"}
        return Rows(cache=kv.select(self.cache, idx), **out)

    @property
    def n(self) -> int:
        return int(self.prompt.shape[0])


def _cat_rows(parts: list[Rows]) -> Rows:
    """Concatenate row sets (right-padding shorter generations with masked positions), re-sorted by prompt."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.gen.shape[1] for p in parts)
    padded = []
    for p in parts:
        extra = width - p.gen.shape[1]
        if extra:
            p = replace(
                p,
                gen=torch.nn.functional.pad(p.gen, (0, extra)),
                real=torch.nn.functional.pad(p.real, (0, extra)),
                mask=torch.nn.functional.pad(p.mask, (0, extra)),
                cache=kv.pad_right(p.cache, extra),
            )
        padded.append(p)
    merged = Rows(
        cache=kv.cat([p.cache for p in padded]),
        **{f.name: torch.cat([getattr(p, f.name) for p in padded]) for f in fields(Rows) if f.name != "cache"},
    )
    return merged.index(torch.argsort(merged.prompt, stable=True))


class _Run:
    """State of one batched search: models, per-prompt RNGs and counters."""

    def __init__(self, stack: Stack, cfg: SearchConfig, prompts: Sequence[Prompt], seed: int):
        cfg = sampling.resolve(cfg, stack.lm.sampling_defaults)
        self.stack, self.cfg, self.lm = stack, cfg, stack.lm
        self.prompts = [prompt_text(p) for p in prompts]  # what the scorers and results read
        self.B = len(prompts)
        dev = self.lm.device
        self.gens = [torch.Generator(device=dev).manual_seed(seed) for _ in range(self.B)]
        self.eos = torch.tensor(sorted(self.lm.eos_ids), device=dev)
        cost = stack.cost
        # how the cost model is read: pooled hidden states of this LM (latent), a score at every token of the
        # decoded text (token-wise), or the decoded text's score at each block boundary (any other scorer)
        self.latent: LatentScorer | None = (
            cost if isinstance(cost, LatentScorer) and cost.base_identity == self.lm.identity else None
        )
        self.token_wise: PrefixScorer | None = cost if self.latent is None and isinstance(cost, PrefixScorer) else None
        self.layers: tuple[int, ...] = tuple(self.latent.layers) if self.latent is not None else ()
        self.prompt_feats: torch.Tensor | None = None  # (B, F) the prompt part of the latent features, if read
        self.counts = {
            k: torch.zeros(self.B, dtype=torch.long) for k in ("forward", "reward", "cost", "critic", "sampled")
        }
        self.seconds = dict.fromkeys(("lm", "cost", "reward", "critic"), 0.0)  # where the time goes
        # a critic-guided method is refused before any generation when no critic fits this LM
        self.critic = require_critic(stack.critic, self.lm, cfg.method) if cfg.select.needs_critic else None

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        if self.lm.device.type == "cuda":
            torch.cuda.synchronize(self.lm.device)
        self.seconds[part] += time.perf_counter() - t

    # -- the LM -------------------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, mask: torch.Tensor, cache: Any, prompt: torch.Tensor):
        """ids (R, t), mask (R, T_past + t) -> logits (R, V), last hidden (R, t, H), pooled features (R, t, F).
        ``prompt`` lists the prompts of the rows that still take part (counted as one forward pass each)."""
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        with self.timed("lm"):
            out = self.lm.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
                output_hidden_states=True,
                logits_to_keep=1,
            )
        self.counts["forward"] += torch.bincount(prompt.cpu(), minlength=self.B).clamp(max=1)
        hs = out.hidden_states
        h = hs[-1][:, -1].float()
        logits = out.logits[:, -1].float()
        if self.cfg.steer is not None:
            logits = self.cfg.steer(self.lm, h, logits)
        feats = (
            torch.cat([hs[i] for i in self.layers], -1).float() if self.layers else ids.new_zeros(*ids.shape, 0).float()
        )
        return logits, h, feats, out.past_key_values

    def prefill(self, prompt_ids: list[list[int]]) -> Rows:
        """Encode all prompts at once (left-padded): one row per prompt, budget d, nothing generated yet."""
        T = max(map(len, prompt_ids))
        pad, dev = self.lm.pad_id, self.lm.device
        ids = torch.tensor([[pad] * (T - len(p)) + p for p in prompt_ids], device=dev)
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompt_ids], device=dev)
        prompt = torch.arange(self.B, device=dev)
        cache = kv.new_cache(self.lm.model.config, T + self.cfg.max_new_tokens)
        logits, h, feats, cache = self.forward(ids, mask, cache, prompt)
        pool = self.latent.prompt_pool if self.latent is not None else None
        if pool == "last":  # left-padded: the last position is every prompt's last token
            self.prompt_feats = feats[:, -1]
        elif pool == "mean":
            self.prompt_feats = (feats * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        empty = torch.zeros(self.B, 0, dtype=torch.long, device=dev)
        F = len(self.layers) * self.lm.hidden_size
        zeros = torch.zeros(self.B, device=dev)
        return Rows(
            prompt=prompt,
            mask=mask,
            gen=empty,
            real=empty.bool(),
            cache=cache,
            logits=logits,
            h=h,
            feats=torch.zeros(self.B, F, device=dev),
            cost=zeros,
            charged=empty.new_zeros(self.B),
            charged_cost=zeros,
            z=safety.init(self.budget, self.B, dev),
            z_hist=torch.zeros(self.B, 0, device=dev),
            h_hist=torch.zeros(self.B, 0, self.lm.hidden_size, device=dev),
            done=zeros.bool(),
            logp=zeros,
            reward=torch.full((self.B,), float("nan"), device=dev),
        )

    # -- one step -----------------------------------------------------------------------------------------
    def sample_block(self, rows: Rows, n_tokens: int, penalty: torch.Tensor | None) -> Rows:
        """Extend every row by up to n_tokens sampled tokens, feeding each one through the shared cache.
        Consumes ``rows.cache`` (written in place): pass rows made by ``Rows.index``, never a parent kept
        for resampling."""
        cfg, lm = self.cfg, self.lm
        segments = _segments(rows.prompt)
        gen, real, mask, cache, logits = [rows.gen], [rows.real], rows.mask, rows.cache, rows.logits
        h, feats, done = rows.h, rows.feats.clone(), rows.done.clone()
        logp = torch.zeros_like(rows.logp)
        sampled = torch.zeros(self.B, dtype=torch.long)
        seen = None  # (R, V) bool: tokens already in each row's response, for the repetition penalty
        rep = 1.0 if cfg.repetition_penalty is None else cfg.repetition_penalty  # resolved in _Run: never None
        if rep != 1.0:
            seen = torch.zeros_like(logits).scatter_add_(1, rows.gen, rows.real.float()) > 0
        for t in range(n_tokens):
            if bool(done.all()):
                break
            scores = logits if penalty is None else logits - penalty[rows.prompt]
            if seen is not None:
                scores = sampling.repetition(scores, seen, rep)
            if cfg.proposal == "topk" and t == 0:  # token-level search: each parent's k-th best token
                k = torch.arange(rows.n, device=scores.device) - _first_of_group(rows.prompt, rows.n)
                tok = scores.topk(int(k.max()) + 1, -1).indices.gather(1, k[:, None]).squeeze(1)
                outside = k >= sampling.kept_rank(scores, cfg)  # truncated away: no method could sample it
                logp = torch.where(outside, float("-inf"), logp)
            else:
                tok = sampling.sample(scores, cfg, sampling.uniforms(segments, self.gens, done, scores.device))
            logp += torch.log_softmax(logits, -1).gather(1, tok[:, None]).squeeze(1) * ~done
            sampled += torch.bincount(rows.prompt[~done].cpu(), minlength=self.B)
            tok = torch.where(done, lm.pad_id, tok)
            ended = torch.isin(tok, self.eos) & ~done
            is_real = ~done & ~ended
            done = done | ended
            gen.append(tok[:, None])
            real.append(is_real[:, None])
            mask = torch.cat([mask, is_real[:, None].long()], 1)
            logits, h_new, f_new, cache = self.forward(tok[:, None], mask, cache, rows.prompt[is_real])
            h = torch.where(is_real[:, None], h_new, h)
            if seen is not None:
                seen[is_real.nonzero().squeeze(1), tok[is_real]] = True
            feats += f_new[:, -1] * is_real[:, None]
        gen_t, real_t = torch.cat(gen, 1), torch.cat(real, 1)
        done = done | (gen_t.shape[1] >= cfg.max_new_tokens)
        self.counts["sampled"] += sampled
        return replace(
            rows, gen=gen_t, real=real_t, mask=mask, cache=cache, logits=logits, h=h, feats=feats, done=done, logp=logp
        )

    def texts(self, rows: Rows) -> list[str]:
        ids = [g[r].tolist() for g, r in zip(rows.gen.cpu(), rows.real.cpu())]
        return self.lm.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def score(self, rows: Rows) -> Rows:
        """Cost model on each prefix -> safety state z; the reward model too when the selector ranks by it."""
        stack, dev = self.stack, self.lm.device
        bc = torch.bincount(rows.prompt.cpu(), minlength=self.B)
        texts = self.texts(rows) if self.latent is None or self.cfg.select.needs_reward else []
        prompts = [self.prompts[i] for i in rows.prompt.tolist()]
        with self.timed("cost"):
            if self.latent is not None:
                n_tok = rows.real.sum(1, keepdim=True).clamp(min=1)
                x = rows.feats / n_tok
                if self.prompt_feats is not None:
                    x = torch.cat([x, self.prompt_feats[rows.prompt]], -1)
                cost_now = self.latent.score_features(x).to(dev)
                charge, charged, charged_cost = safety.step_cost(cost_now, rows.cost), rows.charged, rows.charged_cost
            else:
                cost_now, charge, charged, charged_cost = self.text_costs(
                    prompts, texts, rows.cost, (rows.charged, rows.charged_cost), rows.done
                )
        self.counts["cost"] += bc
        z = safety.step(rows.z, charge, self.cfg.gamma)
        reward = rows.reward
        if self.cfg.select.needs_reward:
            with self.timed("reward"):
                reward = stack.reward.score(prompts, texts).to(dev)
            self.counts["reward"] += bc
        h_hist = torch.cat([rows.h_hist, rows.h[:, None]], 1) if self.cfg.record_hidden else rows.h_hist
        return replace(
            rows,
            cost=cost_now,
            charged=charged,
            charged_cost=charged_cost,
            z=z,
            z_hist=torch.cat([rows.z_hist, z[:, None]], 1),
            h_hist=h_hist,
            reward=reward,
        )

    def text_costs(
        self,
        prompts: list[str],
        texts: list[str],
        before: torch.Tensor,
        charged: tuple[torch.Tensor, torch.Tensor],
        done: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cost model on decoded responses: (cost now, this step's charge, characters charged, the cost at
        that point), each (R,).

        A text scorer is charged its rise since the last step, max(0, C(now) - C(before)). A token-wise scorer
        (``PrefixScorer``) is charged, from one pass per response, the rises token by token over its tokens
        that end after the ``charged`` characters: the first rise from the cost stored at that point (so a token
        the tokenizer merges across the boundary is not charged twice), then max(0, C(y<=t) - C(y<t)); C(empty)
        = 0. A live response's trailing incomplete character (decoded as U+FFFD) waits for its last byte, as
        committing does.
        """
        dev = self.lm.device
        upto_before, at_before = charged
        if self.token_wise is None:
            now = self.stack.cost.score(prompts, texts).to(dev)
            return now, safety.step_cost(now, before), upto_before, at_before
        per = self.token_wise.score_prefixes(prompts, texts)
        cost, charge, upto, at = [], [], [], []
        for ps, text, b, last, fin in zip(
            per, texts, upto_before.tolist(), at_before.tolist(), done.tolist(), strict=True
        ):
            e = len(text) if fin else len(text.rstrip("\ufffd"))
            scores = ps.scores.detach().float().cpu()
            ends = torch.tensor(ps.ends, dtype=torch.long)
            new = scores[(ends > b) & (ends <= e)]
            if new.numel():
                charge.append(float(torch.diff(new, prepend=torch.tensor([last])).clamp(min=0).sum()))
                last = float(new[-1])
            else:
                charge.append(0.0)
            cost.append(float(scores[-1]) if len(ps.ends) else float("nan"))
            upto.append(max(b, e))
            at.append(last)
        empty = [i for i, ps in enumerate(per) if not ps.ends]  # no response token to read: the scorer's own score
        if empty:
            got = self.token_wise.score([prompts[i] for i in empty], [texts[i] for i in empty]).tolist()
            for i, c in zip(empty, got, strict=True):
                cost[i] = c
        c, ch, u, a = (torch.tensor(x, device=dev) for x in (cost, charge, upto, at))
        return c, ch, u, a

    def candidates(self, rows: Rows) -> Candidates:
        """What the selector sees; the critic reads the hidden states the sampling pass already produced."""
        p_safe = value = None
        if self.critic is not None:
            critic = self.critic
            with self.timed("critic"):
                p_safe, value = critic.evaluate(rows.h, rows.z / self.budget)
            self.counts["critic"] += torch.bincount(rows.prompt.cpu(), minlength=self.B)
        return Candidates(
            prompt=rows.prompt,
            z=rows.z,
            cost=rows.cost,
            logprob=rows.logp,
            budget=self.budget,
            reward=rows.reward,
            p_safe=p_safe,
            value=value,
        )

    @property
    def budget(self) -> float:
        return resolve_budget(self.cfg.budget, self.stack.cost)


def _segments(prompt: torch.Tensor) -> list[tuple[int, int, int]]:
    """(prompt index, start, end) of each prompt's contiguous rows."""
    b, counts = torch.unique_consecutive(prompt.cpu(), return_counts=True)
    ends = counts.cumsum(0).tolist()
    return [(int(p), e - int(c), e) for p, c, e in zip(b, counts, ends)]


def _first_of_group(prompt: torch.Tensor, n: int) -> torch.Tensor:
    """(R,) index of the first row of each row's prompt group (rows sorted by prompt)."""
    starts = torch.ones(n, dtype=torch.bool, device=prompt.device)
    starts[1:] = prompt[1:] != prompt[:-1]
    return torch.cummax(torch.where(starts, torch.arange(n, device=prompt.device), 0), 0).values


def _stuck(prompt: torch.Tensor, ok: torch.Tensor, B: int) -> torch.Tensor:
    """(B,) prompts that have candidates and none of them admissible."""
    return (torch.bincount(prompt, weights=ok.float(), minlength=B) == 0) & (torch.bincount(prompt, minlength=B) > 0)


def _rank_in_prompt(score: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """order (R,): rows sorted by prompt, then by descending score (stable); and each sorted row's rank."""
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(prompt[order], stable=True)]
    rank = torch.arange(len(order), device=score.device) - _first_of_group(prompt[order], len(order))
    return order, rank


def _penalty(rows: Rows, bad: torch.Tensor, B: int, V: int, strength: float, start: int) -> torch.Tensor:
    """(B, V) logit penalty: strength x occurrences per candidate of each token in the prompt's unsafe blocks
    (the columns from ``start`` on: the block just sampled, not the prefix its beam already kept)."""
    pen = torch.zeros(B, V, device=rows.gen.device)
    tok, real = rows.gen[bad, start:], rows.real[bad, start:]
    pr = rows.prompt[bad][:, None].expand(-1, tok.shape[1])
    pen.index_put_((pr[real], tok[real]), torch.ones_like(tok[real], dtype=pen.dtype), accumulate=True)
    per = torch.bincount(rows.prompt[bad], minlength=B).clamp(min=1)
    return strength * pen / per[:, None]


@dataclass
class _Hyp:
    """A finished answer waiting in a prompt's pool."""

    ids: list[int]
    z: float
    cost: float
    reward: float  # nan until known (the final ranking fills it in)
    z_hist: list[float]
    h_hist: torch.Tensor  # (S, H), empty unless cfg.record_hidden
    finish: str
    h: torch.Tensor


@torch.inference_mode()
def search(
    stack: Stack, prompts: Sequence[Prompt], cfg: SearchConfig, seed: int = 0, on_commit: OnCommit | None = None
) -> list[Result]:
    """Answer every prompt (a string or a conversation, see ``models.loading.Prompt``) with the strategy
    ``cfg``; prompts are searched together in one batch."""
    if isinstance(prompts, str) or is_conversation(prompts) or not len(prompts):
        raise ConfigError("prompts", prompts, "must be a non-empty list of prompts (strings or conversations)")
    prompts = [check_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
    t0 = time.perf_counter()
    run = _Run(stack, cfg, prompts, seed)
    cfg = run.cfg  # sampling settings resolved against the base model's defaults
    lm, B = run.lm, run.B
    ids = [lm.encode_prompt(p, arg=f"prompts[{i}]") for i, p in enumerate(prompts)]
    longest = max(range(B), key=lambda i: len(ids[i]))
    lm.check_room(len(ids[longest]), cfg.max_new_tokens, "max_new_tokens", f"the longest prompt, prompts[{longest}]")
    block = cfg.block or cfg.max_new_tokens
    rows = run.prefill(ids)
    answers = Answers(B)
    while rows.n:
        # 1. expand: each live beam gets N // (live beams of its prompt) candidates, sharing its cache rows
        live = torch.bincount(rows.prompt, minlength=B)
        per_beam = (cfg.candidates // live[rows.prompt]).clamp(min=1)
        parents = rows
        n_tokens = min(block, cfg.max_new_tokens - rows.gen.shape[1])
        cands = run.score(
            run.sample_block(
                parents.index(torch.repeat_interleave(torch.arange(rows.n, device=lm.device), per_beam)), n_tokens, None
            )
        )
        score, ok = cfg.select(run.candidates(cands))
        # 2. no admissible candidate: penalise the unsafe blocks' tokens and resample, up to M rounds. A prompt
        # whose beams are all over budget already (kept as the least unsafe) cannot recover: z never increases
        hopeful = torch.zeros(B, dtype=torch.bool, device=lm.device).index_fill_(0, parents.prompt[parents.z >= 0], 1)
        penalty, fresh, start = None, cands, parents.gen.shape[1]
        for _ in range(cfg.resample_rounds):
            stuck = _stuck(cands.prompt, ok, B) & hopeful
            if not bool(stuck.any()):
                break
            step_pen = _penalty(fresh, stuck[fresh.prompt], B, rows.logits.shape[1], cfg.resample_strength, start)
            penalty = step_pen if penalty is None else penalty + step_pen
            redo = stuck[parents.prompt].nonzero().squeeze(1)
            sub = parents.index(redo)
            sub = sub.index(torch.repeat_interleave(torch.arange(sub.n, device=lm.device), per_beam[redo]))
            fresh = run.score(run.sample_block(sub, n_tokens, penalty))
            cands = _cat_rows([cands, fresh])
            score, ok = cfg.select(run.candidates(cands))
        # 3. still nothing admissible: the exhaustion policy (flag keeps the least-unsafe, refuse ends the prompt)
        ended = answers.exhaust(_stuck(cands.prompt, ok, B).nonzero().squeeze(1).tolist(), hopeful, cfg)
        # 4. keep the top K per prompt (admissible first); finished beams leave for the pool
        order, rank = _rank_in_prompt(safety.reshape(score, cands.z, cfg.penalty, ok), cands.prompt)
        keep = order[(rank < cfg.keep) & ~torch.tensor(ended, device=lm.device)[cands.prompt[order]]]
        rows = answers.add(cands.index(keep), cfg)
        answers.commit(run, rows, on_commit)
    results = answers.finish(run, ids)
    seconds = (time.perf_counter() - t0) / B
    parts = {k: v / B for k, v in run.seconds.items()}
    parts["other"] = max(0.0, seconds - sum(parts.values()))
    for r in results:
        r.seconds = seconds
        r.extra["seconds_by_part"] = parts
    return results


def _at_limit(rows: Rows, i: int, cfg: SearchConfig) -> bool:
    return bool(rows.real[i, -1]) and rows.gen.shape[1] >= cfg.max_new_tokens


def _hyp(rows: Rows, i: int, finish: str) -> _Hyp:
    return _Hyp(
        ids=rows.gen[i][rows.real[i]].tolist(),
        z=float(rows.z[i]),
        cost=float(rows.cost[i]),
        reward=float(rows.reward[i]),
        z_hist=rows.z_hist[i].tolist(),
        h_hist=rows.h_hist[i].cpu(),
        finish=finish,
        h=rows.h[i],
    )


class Answers:
    """What the search has settled for each of the B prompts, as it goes: the finished answers waiting in the
    prompt's pool, whether some step found nothing admissible (``exhausted``) and whether the policy refused,
    and the committed prefix (token ids every surviving hypothesis shares)."""

    def __init__(self, B: int):
        self.pool: list[list[_Hyp]] = [[] for _ in range(B)]
        self.exhausted = [False] * B
        self.refused = [False] * B
        self.committed: list[list[int]] = [[] for _ in range(B)]

    def exhaust(self, stuck: list[int], hopeful: torch.Tensor, cfg: SearchConfig) -> list[bool]:
        """Apply the exhaustion policy to the prompts left with no admissible candidate (``stuck``) and return,
        per prompt, whether it stops now: refused (now or before), or holding a finished answer within budget
        (no live beam can still beat it). A prompt that was not ``hopeful`` (its beams were all over budget
        already) is not flagged again: it cannot recover."""
        ended = list(self.refused)
        for b in stuck:
            if any(h.z >= 0 for h in self.pool[b]):
                ended[b] = True
            elif hopeful[b]:
                self.exhausted[b] = True
                self.refused[b] = ended[b] = cfg.on_exhausted == "refuse"
        return ended

    def add(self, rows: Rows, cfg: SearchConfig) -> Rows:
        """Finished rows (EOS or max new tokens) join their prompt's pool; returns the rows still live."""
        fin = rows.done
        for i in fin.nonzero().squeeze(1).tolist():
            self.pool[int(rows.prompt[i])].append(_hyp(rows, i, "eos" if not _at_limit(rows, i, cfg) else "length"))
        return rows.index((~fin).nonzero().squeeze(1))

    def commit(self, run: _Run, rows: Rows, on_commit: OnCommit | None) -> None:
        """Advance each prompt's committed prefix (the text every surviving hypothesis shares: it can no longer
        be discarded, and a refusal keeps it) and report the new text to ``on_commit``."""
        live: dict[int, list[list[int]]] = {}
        for i, p in enumerate(rows.prompt.tolist()):
            live.setdefault(p, []).append(rows.gen[i][rows.real[i]].tolist())
        for b in range(run.B):
            if self.refused[b]:
                continue
            seqs = live.get(b, []) + [h.ids for h in self.pool[b]]
            if not seqs:
                continue
            n = min(map(len, seqs))
            while n and any(s[:n] != seqs[0][:n] for s in seqs[1:]):
                n -= 1
            if n <= len(self.committed[b]):
                continue
            text = run.lm.decode(seqs[0][:n])
            if text.endswith("\ufffd"):  # a multi-byte character is split across tokens: wait for its last byte
                continue
            before = run.lm.decode(self.committed[b])
            self.committed[b] = seqs[0][:n]
            if on_commit is not None and text.startswith(before) and len(text) > len(before):
                on_commit(b, text[len(before) :])

    def finish(self, run: _Run, ids: list[list[int]]) -> list[Result]:
        """Pick each prompt's answer: admissible first, then by the strategy's final score (reward known); a
        refused prompt (or one left with no answer) gets its committed text and the refusal, scored as any."""
        cfg, lm, d, dev = run.cfg, run.lm, run.budget, run.lm.device
        flat = [(b, h) for b in range(run.B) for h in self.pool[b] if not self.refused[b]]
        best: dict[int, _Hyp] = {}
        if flat:
            texts = [lm.decode(h.ids) for _, h in flat]
            prompts = [run.prompts[b] for b, _ in flat]
            missing = [i for i, (_, h) in enumerate(flat) if h.reward != h.reward]
            if missing:
                with run.timed("reward"):
                    got = run.stack.reward.score([prompts[i] for i in missing], [texts[i] for i in missing]).tolist()
                for i, r in zip(missing, got):
                    flat[i][1].reward = r
                run.counts["reward"] += torch.bincount(torch.tensor([flat[i][0] for i in missing]), minlength=run.B)
            pr = torch.tensor([b for b, _ in flat], device=dev)
            c = Candidates(
                prompt=pr,
                z=torch.tensor([h.z for _, h in flat], device=dev),
                cost=torch.tensor([h.cost for _, h in flat], device=dev),
                logprob=torch.zeros(len(flat), device=dev),
                budget=d,
                reward=torch.tensor([h.reward for _, h in flat], device=dev),
                final=True,
            )
            score, ok = cfg.select(c)
            order, rank = _rank_in_prompt(safety.reshape(score, c.z, cfg.penalty, ok), pr)
            for i in order[rank == 0].tolist():
                best[flat[i][0]] = flat[i][1]
        results = []
        for b, prompt in enumerate(run.prompts):
            committed = self.committed[b]
            if self.refused[b] or b not in best:
                h, response = _refusal(run, prompt, committed)
                n_new = len(committed)  # the model's tokens in it: the committed prefix
                run.counts["cost"][b] += 1
                run.counts["reward"][b] += 1
            else:
                h = best[b]
                response, n_new = lm.decode(h.ids), len(h.ids)
            cnt = {k: int(v[b]) for k, v in run.counts.items()}
            results.append(
                Result(
                    prompt=prompt,
                    method=cfg.method,
                    response=response,
                    safe=h.z >= 0,
                    cost=h.cost,
                    reward=h.reward,
                    budget=d,
                    budget_left=h.z,
                    budget_trajectory=h.z_hist,
                    exhausted=self.exhausted[b],
                    refused=self.refused[b] or b not in best,
                    finish_reason=h.finish,
                    new_tokens=n_new,
                    tokens_sampled=cnt["sampled"],
                    lm_forward_passes=cnt["forward"],
                    reward_calls=cnt["reward"],
                    cost_calls=cnt["cost"],
                    critic_calls=cnt["critic"],
                    seconds=0.0,
                    seed=int(run.gens[b].initial_seed()),
                    extra={"prompt_tokens": len(ids[b])},
                    hidden_trajectory=h.h_hist if cfg.record_hidden else None,
                )
            )
        return results


def _refusal(run: _Run, prompt: str, committed: list[int]) -> tuple[_Hyp, str]:
    """The refusal answer (the committed text, then the fixed refusal) and its text, scored and charged as one
    step from the full budget."""
    cfg, lm = run.cfg, run.lm
    text = (lm.decode(committed) + " " if committed else "") + cfg.refusal
    zero = torch.zeros(1, device=lm.device)
    with run.timed("cost"):
        cost, charge, _, _ = run.text_costs(
            [prompt], [text], zero, (zero.long(), zero), torch.ones(1, dtype=torch.bool)
        )
    with run.timed("reward"):
        reward = float(run.stack.reward.score([prompt], [text])[0])
    z = float(safety.step(torch.tensor(run.budget), charge[0].cpu(), cfg.gamma))
    hyp = _Hyp(
        ids=[],
        z=z,
        cost=float(cost[0]),
        reward=reward,
        z_hist=[z],
        finish="refused",
        h=torch.zeros(0),
        h_hist=torch.zeros(0, lm.hidden_size),
    )
    return hyp, text
