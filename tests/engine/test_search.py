"""The engine against a slow re-encoding reference, batching invariance, ends, resampling and exhaustion.

The reference tests run where ``INFERENCEGUARD_TEST_DEVICE`` / ``INFERENCEGUARD_TEST_DTYPE`` say (default
CPU, float32; benchmarks/gpu_check.sh runs them on CUDA in float32 and bfloat16): token-for-token equality
needs float32, and the rounding-aware test holds in any dtype.
"""

import pytest
import torch

from inferenceguard.engine import Stack, search
from inferenceguard.engine.search import _penalty, _Run
from inferenceguard.engine.types import REFUSAL, SearchConfig
from inferenceguard.errors import ConfigError
from inferenceguard.strategies import ByReward, Unranked, preset
from tests.stubs import CharCost, VowelReward
from tests.utils.tiny import reference_device, tiny_lm

DEVICE, DTYPE = reference_device()
EXACT = DTYPE is torch.float32
exact = pytest.mark.skipif(not EXACT, reason="token-for-token equality needs float32 (see rounding test)")
PROMPTS = ["hello there", "write a much longer poem about the sea", "x"]


@pytest.fixture(scope="module")
def stack():
    return Stack(lm=tiny_lm(), reward=VowelReward(), cost=CharCost(threshold=0.05))


def _reference_block(lm, prompt: str, n: int, tokens: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """Slow reference: n candidates, every token re-encodes the whole prefix (no cache), same RNG draws."""
    g = torch.Generator(device=lm.device).manual_seed(seed)
    ids = torch.tensor([lm.encode_prompt(prompt)] * n, device=lm.device)
    for _ in range(tokens):
        logits = lm.model(input_ids=ids).logits[:, -1].float()
        cdf = torch.softmax(logits / temperature, -1).cumsum(-1)  # the engine's inverse-CDF sampler
        u = torch.rand(n, 1, generator=g, device=lm.device)
        tok = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=logits.shape[1] - 1)
        ids = torch.cat([ids, tok], 1)
    return ids[:, -tokens:]


@pytest.fixture(scope="module")
def endless():
    """An LM that never emits EOS, so the reference (which does not stop) stays comparable."""
    return Stack(
        lm=tiny_lm(eos_boost=-50.0, device=DEVICE, dtype=DTYPE), reward=VowelReward(), cost=CharCost(threshold=0.05)
    )


@exact
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_cached_candidates_match_reencoding_reference_token_for_token(endless, temperature):
    stack = endless
    cfg = SearchConfig("t", Unranked(), block=12, candidates=5, keep=5, max_new_tokens=12, temperature=temperature)
    run = _Run(stack, cfg, [PROMPTS[1]], seed=7)
    with torch.inference_mode():
        rows = run.prefill([stack.lm.encode_prompt(PROMPTS[1])])
        cands = run.sample_block(rows.index(torch.zeros(5, dtype=torch.long, device=DEVICE)), 12, None)
    ref = _reference_block(stack.lm, PROMPTS[1], 5, 12, seed=7, temperature=temperature)
    assert torch.equal(cands.gen, ref)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_cached_candidates_match_reference_up_to_rounding(endless, temperature):
    """Any dtype (bf16 on CUDA): teacher-forced on the engine's own tokens, every token is the re-encoding
    reference's inverse-CDF draw with the same uniform, except where that uniform falls within rounding of the
    boundary of the engine's token (a near tie that bf16 may break either way); such ties must stay rare."""
    stack, n, T = endless, 5, 12
    lm = stack.lm
    cfg = SearchConfig("t", Unranked(), block=T, candidates=n, keep=n, max_new_tokens=T, temperature=temperature)
    run = _Run(stack, cfg, [PROMPTS[1]], seed=7)
    with torch.inference_mode():
        rows = run.prefill([lm.encode_prompt(PROMPTS[1])])
        cands = run.sample_block(rows.index(torch.zeros(n, dtype=torch.long, device=DEVICE)), T, None)
        g = torch.Generator(device=lm.device).manual_seed(7)
        ids = torch.tensor([lm.encode_prompt(PROMPTS[1])] * n, device=lm.device)
        tol = 1e-5 if EXACT else 3e-2  # CDF error from the logits' rounding
        near_ties = 0
        for t in range(T):
            logits = lm.model(input_ids=torch.cat([ids, cands.gen[:, :t]], 1)).logits[:, -1].float()
            cdf = torch.softmax(logits / temperature, -1).cumsum(-1)
            x = torch.rand(n, 1, generator=g, device=lm.device) * cdf[:, -1:]
            ref = torch.searchsorted(cdf, x).squeeze(1).clamp(max=logits.shape[1] - 1)
            got = cands.gen[:, t]
            lo = torch.where(got > 0, cdf.gather(1, (got - 1).clamp(min=0)[:, None]).squeeze(1), 0.0)
            hi = cdf.gather(1, got[:, None]).squeeze(1)
            inside = (x.squeeze(1) >= lo - tol) & (x.squeeze(1) <= hi + tol)  # the engine's token, within rounding
            assert bool((inside | (got == ref)).all()), f"step {t}: engine {got.tolist()} vs reference {ref.tolist()}"
            near_ties += int((got != ref).sum())
    assert near_ties <= 2, f"{near_ties} of {n * T} draws differ: more than rounding explains"


@exact
def test_cache_across_blocks_matches_reference(endless):
    """Blocks joined through the cache's select/expand equal one uninterrupted re-encoding run."""
    cfg = SearchConfig("t", Unranked(), block=4, candidates=1, keep=1, max_new_tokens=10, record_hidden=True)
    [res] = search(endless, [PROMPTS[0]], cfg, seed=3)
    ref = _reference_block(endless.lm, PROMPTS[0], 1, 10, seed=3)[0]
    assert res.response == endless.lm.decode(ref.tolist()) and res.new_tokens == 10
    # the recorded hidden state at each block boundary is the re-encoded last hidden state of that prefix
    prompt = torch.tensor([endless.lm.encode_prompt(PROMPTS[0])], device=DEVICE)
    for k, n in enumerate([4, 8, 10]):
        ids = torch.cat([prompt, ref[None, :n]], 1)
        h = endless.lm.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
        assert torch.allclose(res.hidden_trajectory[k], h.float().cpu(), atol=1e-5)  # the trajectory is on CPU


@pytest.mark.parametrize("method", ["sample", "inferenceguard", "bon", "beam-lagrangian", "args", "early-ends"])
def test_batched_prompts_equal_one_by_one(stack, method):
    if method == "early-ends":  # batch-mates finish mid-block while another prompt resamples
        stack = Stack(lm=tiny_lm(eos_boost=4.0), reward=VowelReward(), cost=CharCost(threshold=0.02))
        method = "inferenceguard"
    cfg = preset(method, max_new_tokens=14, **({} if method == "args" else {"block": 5}))
    together = search(stack, PROMPTS, cfg, seed=11)
    alone = [search(stack, [p], cfg, seed=11)[0] for p in PROMPTS]
    for a, b in zip(together, alone):
        assert a.response == b.response
        assert a.cost == pytest.approx(b.cost) and a.budget_trajectory == pytest.approx(b.budget_trajectory)
        assert (a.lm_forward_passes, a.tokens_sampled, a.reward_calls) == (
            b.lm_forward_passes,
            b.tokens_sampled,
            b.reward_calls,
        )


def test_same_seed_same_answer_other_seed_other_answer(stack):
    cfg = preset("inferenceguard", max_new_tokens=12, block=4)
    a, b, c = (search(stack, [PROMPTS[0]], cfg, seed=s)[0].response for s in (5, 5, 6))
    assert a == b and a != c


def test_eos_ends_early_and_max_new_tokens_holds():
    lm = tiny_lm(eos_boost=4.0)
    st = Stack(lm=lm, reward=VowelReward(), cost=CharCost(threshold=0.5))
    res = search(st, PROMPTS, preset("inferenceguard", max_new_tokens=40, block=8), seed=0)
    assert any(r.finish_reason == "eos" and r.new_tokens < 40 for r in res)
    long = search(
        Stack(lm=tiny_lm(), reward=VowelReward(), cost=CharCost(threshold=0.5)),
        PROMPTS,
        preset("sample", max_new_tokens=9, block=4),
        seed=0,
    )
    assert all(r.new_tokens <= 9 for r in long)
    assert any(r.finish_reason == "length" and r.new_tokens == 9 for r in long)


def test_safety_filter_only_keeps_in_budget_beams(stack):
    """beam (reward only) vs beam-safety on the same seed: the safety-aware one never ends over budget when a
    safe candidate existed, and its trajectory never goes below zero."""
    res = search(stack, PROMPTS, preset("inferenceguard", max_new_tokens=16, block=4, budget=0.2), seed=2)
    found = [r for r in res if not r.exhausted]
    assert found, "every prompt exhausted its budget: the in-budget claim below was never checked"
    for r in found:
        assert r.safe and min(r.budget_trajectory) >= 0
    for r in res:
        assert all(b <= a + 1e-6 for a, b in zip(r.budget_trajectory, r.budget_trajectory[1:]))


def test_all_unsafe_resamples_then_flags(stack):
    """A cost model that charges every character: nothing is ever admissible."""
    st = Stack(lm=stack.lm, reward=VowelReward(), cost=CharCost(bad=None, threshold=0.5))
    base = dict(max_new_tokens=8, block=4, candidates=4, keep=1, on_exhausted="flag")
    none = search(st, [PROMPTS[0]], preset("inferenceguard", resample_rounds=0, **base), seed=0)[0]
    two = search(st, [PROMPTS[0]], preset("inferenceguard", resample_rounds=2, **base), seed=0)[0]
    assert none.exhausted and not none.safe and not none.refused
    assert two.tokens_sampled > none.tokens_sampled  # resampling rounds really sampled again
    assert two.exhausted and two.response != REFUSAL


def test_inferenceguard_fails_closed_by_default(stack):
    st = Stack(lm=stack.lm, reward=VowelReward(), cost=CharCost(bad=None, threshold=0.5))
    cfg = preset("inferenceguard", max_new_tokens=8, block=4, candidates=4, keep=1)
    assert cfg.on_exhausted == "refuse" == preset("inferenceguard-critic").on_exhausted
    assert preset("beam-safety").on_exhausted == "flag"  # the baselines keep the paper-neutral policy
    r = search(st, [PROMPTS[0]], cfg, seed=0)[0]
    assert r.exhausted and r.refused and r.response.endswith(REFUSAL)


def test_refuse_policy_returns_refusal(stack):
    st = Stack(lm=stack.lm, reward=VowelReward(), cost=CharCost(bad=None, threshold=0.5))
    r = search(st, PROMPTS[:2], preset("inferenceguard", max_new_tokens=8, block=4, on_exhausted="refuse"), seed=0)
    assert all(x.refused and x.response.endswith(REFUSAL) and x.finish_reason == "refused" for x in r)


class _LongIsHarmful(CharCost):
    """Cost 1 once the response is longer than ``n`` characters: the first block is safe, later ones are not."""

    def __init__(self, n: int):
        super().__init__(threshold=0.5)
        self.n = n

    def _score_batch(self, prompts, responses):
        return torch.tensor([float(len(r) > self.n) for r in responses])


def test_a_refusal_keeps_the_committed_text_whether_or_not_it_streams(stack):
    st = Stack(lm=stack.lm, reward=VowelReward(), cost=_LongIsHarmful(6))
    cfg = preset("inferenceguard", max_new_tokens=16, block=4, candidates=4, keep=1, on_exhausted="refuse")
    pieces: list[str] = []
    [quiet] = search(st, ["hello there"], cfg, seed=0)
    [streamed] = search(st, ["hello there"], cfg, seed=0, on_commit=lambda b, t: pieces.append(t))
    assert quiet.refused and quiet.response == streamed.response
    kept = quiet.response[: -len(REFUSAL)]
    assert kept.strip() and kept == "".join(pieces) + " "  # the committed first block, then the refusal
    assert quiet.new_tokens == 4  # the model's tokens in the answer: the committed block


def test_penalty_counts_tokens_of_unsafe_blocks_per_candidate(stack):
    cfg = SearchConfig("t", Unranked(), block=6, candidates=4, keep=4, max_new_tokens=6)
    run = _Run(stack, cfg, [PROMPTS[0]], seed=0)
    with torch.inference_mode():
        rows = run.sample_block(run.prefill([stack.lm.encode_prompt(PROMPTS[0])]).index(torch.zeros(4).long()), 6, None)
    bad = torch.tensor([True, True, False, False])
    pen = _penalty(rows, bad, 1, rows.logits.shape[1], strength=2.0, start=0)
    tokens = rows.gen[:2][rows.real[:2]]  # response tokens only: EOS and padding are never penalised
    for t in set(tokens.tolist()):
        assert pen[0, t] == pytest.approx(2.0 * (tokens == t).sum().item() / 2)
    assert pen.sum() == pytest.approx(2.0 * tokens.numel() / 2)


def test_penalty_reads_only_the_new_block_not_the_kept_prefix(stack):
    cfg = SearchConfig("t", Unranked(), block=4, candidates=2, keep=2, max_new_tokens=8)
    run = _Run(stack, cfg, [PROMPTS[0]], seed=0)
    with torch.inference_mode():
        prefix = run.sample_block(
            run.prefill([stack.lm.encode_prompt(PROMPTS[0])]).index(torch.zeros(1).long()), 4, None
        )
        rows = run.sample_block(prefix.index(torch.zeros(2).long()), 4, None)
    pen = _penalty(rows, torch.ones(2, dtype=torch.bool), 1, rows.logits.shape[1], strength=1.0, start=4)
    block = rows.gen[:, 4:][rows.real[:, 4:]]
    expected = torch.bincount(block, minlength=pen.shape[1]).float() / 2
    assert torch.equal(pen[0], expected)  # prefix tokens count only where the new blocks repeat them
    assert pen.sum() == pytest.approx(block.numel() / 2)


def test_penalised_resampling_avoids_penalised_tokens(stack):
    cfg = SearchConfig("t", Unranked(), block=6, candidates=8, keep=8, max_new_tokens=6)
    run = _Run(stack, cfg, [PROMPTS[0]], seed=0)
    with torch.inference_mode():
        parent = run.prefill([stack.lm.encode_prompt(PROMPTS[0])]).index(torch.zeros(8).long())
        first = run.sample_block(parent.index(torch.arange(8)), 6, None)  # sampling consumes its rows' cache
        pen = _penalty(first, torch.ones(8, dtype=torch.bool), 1, first.logits.shape[1], strength=50.0, start=0)
        again = run.sample_block(parent.index(torch.arange(8)), 6, pen)
    used = set(first.gen.flatten().tolist())
    assert sum(t in used for t in again.gen.flatten().tolist()) < 0.2 * again.gen.numel()


def test_counters_and_fields():
    never_ends = Stack(lm=tiny_lm(eos_boost=-50.0), reward=VowelReward(), cost=CharCost(threshold=0.05))
    [r] = search(never_ends, [PROMPTS[0]], preset("inferenceguard", max_new_tokens=8, block=4, candidates=4), seed=0)
    assert r.lm_forward_passes == 1 + 8  # prefill, then one batched call per token for all candidates
    assert r.tokens_sampled == 4 * 8 and r.new_tokens == 8 and r.finish_reason == "length"
    assert r.cost_calls == 8 and r.reward_calls == 8  # 4 candidates x 2 steps; the final reward is reused
    assert r.scorer_calls == r.cost_calls + r.reward_calls
    assert r.budget == pytest.approx(0.05) and len(r.budget_trajectory) == 2


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        (dict(keep=8, candidates=4), "keep"),
        (dict(block=0), "block"),
        (dict(budget=0.0), "budget"),
        (dict(budget=-1.0), "budget"),
        (dict(temperature=0.0), "temperature"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(on_exhausted="pray"), "on_exhausted"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, arg):
    with pytest.raises(ConfigError, match=f"'{arg}'"):
        SearchConfig("t", ByReward(), **kwargs)


def test_bad_input_errors(stack):
    with pytest.raises(ConfigError, match="method"):
        preset("nope")
    with pytest.raises(ConfigError, match=r"prompts\[1\]"):
        search(stack, ["ok", "  "], preset("sample"))
    with pytest.raises(ConfigError, match=r"prompts\[0\]"):
        search(stack, ["a" * 600], preset("sample"))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        search(stack, ["a" * 400], preset("sample", max_new_tokens=200))
    with pytest.raises(ConfigError, match=r"cost_model\.threshold"):
        search(Stack(lm=stack.lm, reward=VowelReward(), cost=CharCost(threshold=None)), ["hi"], preset("sample"))
    with pytest.raises(ConfigError, match="critic"):
        search(stack, ["hi"], preset("inferenceguard-critic", max_new_tokens=4))


@pytest.mark.parametrize("method", ["sample", "inferenceguard"])
def test_committed_pieces_are_the_start_of_the_answer_even_when_a_character_splits(stack, method):
    # the byte-level tiny LM emits arbitrary bytes, so multi-byte characters are split across blocks often
    pieces: dict[int, list[str]] = {}
    cfg = preset(method, max_new_tokens=48, block=3, candidates=4)
    for seed in range(6):
        pieces.clear()
        results = search(stack, PROMPTS, cfg, seed=seed, on_commit=lambda b, t: pieces.setdefault(b, []).append(t))
        for b, r in enumerate(results):
            streamed = "".join(pieces.get(b, []))
            assert "\ufffd" not in streamed[-1:]
            assert r.response.startswith(streamed), (seed, b, streamed, r.response)


def test_a_finished_answer_within_budget_beats_a_refusal(stack):
    # early EOS puts short (safe) answers in the pool; longer live beams all overdraw: the safe answer stands
    st = Stack(lm=tiny_lm(eos_boost=3.0), reward=VowelReward(), cost=_LongIsHarmful(3))
    cfg = preset("inferenceguard", max_new_tokens=12, block=2, candidates=8, on_exhausted="refuse")
    results = search(st, PROMPTS, cfg, seed=0)
    saved = [r for r in results if r.safe and not r.refused]
    assert saved, "the setting should leave a safe finished answer for at least one prompt"
    assert all(not r.exhausted and len(r.response) <= 3 for r in saved)


def test_token_level_search_keeps_one_beam():
    with pytest.raises(ConfigError, match="keep"):
        preset("args", keep=2, candidates=10)


@pytest.mark.parametrize("prompt_pool", [None, "last", "mean"])
def test_latent_cost_equals_the_probe_on_the_same_tokens(prompt_pool):
    """The engine's pooled features (summed while sampling, the prompt part from the left-padded prefill) give
    the cost the probe's contract gives on the unpadded tokens: the response mean, then the prompt's part."""
    from inferenceguard.scorers.embedded import PROBE_FEATURES, ProbeCostScorer
    from inferenceguard.scorers.heads import LinearHead

    lm, layers = tiny_lm(eos_boost=-50.0), (1, 2)
    dim = (2 if prompt_pool else 1) * len(layers) * lm.hidden_size
    g = torch.Generator().manual_seed(0)
    spec = {"type": PROBE_FEATURES, "base_identity": lm.identity, "layers": list(layers), "prompt_pool": prompt_pool}
    head = LinearHead(torch.zeros(dim), torch.ones(dim), torch.randn(dim, generator=g), 0.0, "cost", "p", spec, 0.5)
    probe = ProbeCostScorer(head, lm=lm)
    run = _Run(Stack(lm=lm, reward=VowelReward(), cost=probe), SearchConfig("t", Unranked(), block=6), PROMPTS[:2], 1)
    with torch.inference_mode():
        rows = run.prefill([lm.encode_prompt(p) for p in PROMPTS[:2]])
        rows = run.score(run.sample_block(rows.index(torch.tensor([0, 0, 1, 1])), 6, None))
        for i in range(rows.n):
            p = lm.encode_prompt(PROMPTS[int(rows.prompt[i])])
            gen = rows.gen[i][rows.real[i]].tolist()
            hs = lm.model(input_ids=torch.tensor([p + gen]), output_hidden_states=True).hidden_states
            x = [hs[k][0, len(p) :].mean(0) for k in layers]
            if prompt_pool == "last":
                x += [hs[k][0, len(p) - 1] for k in layers]
            elif prompt_pool == "mean":
                x += [hs[k][0, : len(p)].mean(0) for k in layers]
            assert torch.allclose(rows.cost[i], probe.score_features(torch.cat(x)[None])[0], atol=1e-4)
