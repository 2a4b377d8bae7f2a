"""Token-wise costs: a cost model with a score at every token (a tiny random safe-rlhf LlamaForScore) is charged
its rises token by token, from one pass per candidate; a cost model without that capability is charged at block
boundaries, as before. Both are checked against each prefix scored on its own, by hand."""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise

import pytest
import torch

from inferenceguard.engine import Stack, search
from inferenceguard.engine.search import _Run
from inferenceguard.engine.types import Result, SearchConfig
from inferenceguard.scorers.base import PrefixScorer
from inferenceguard.scorers.score_model import ScoreModelScorer
from inferenceguard.strategies import Unranked, preset
from tests.stubs import VowelReward
from tests.utils.tiny import save_llama_for_score, tiny_lm

PROMPTS = ["hello there", "write a much longer poem about the sea"]
BUDGET = 1e4  # large: nothing is refused, so every answer is the model's own tokens


@pytest.fixture(scope="module")
def cost_model(tmp_path_factory):
    return ScoreModelScorer(save_llama_for_score(tmp_path_factory.mktemp("beaver") / "cost")[0], dtype=torch.float32)


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(eos_boost=2.0)  # some answers end early, mid-block


@dataclass(frozen=True)
class PrintableOnly:
    """A steer keeping the byte-level tiny LM to printable ASCII (and EOS), so an answer re-tokenizes to its own
    tokens (split multi-byte characters are checked on their own below)."""

    allowed: tuple[bool, ...]

    @classmethod
    def of(cls, lm) -> PrintableOnly:
        texts = [lm.tokenizer.decode([i]) for i in range(lm.model.config.vocab_size)]
        return cls(
            tuple(i in lm.eos_ids or (len(t) == 1 and t.isascii() and t.isprintable()) for i, t in enumerate(texts))
        )

    def __call__(self, lm, h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(~torch.tensor(self.allowed, device=logits.device), float("-inf"))


class TextOnly:
    """The same score model without its per-token capability: the engine reads it at block boundaries."""

    name, threshold = "text-only", 0.0

    def __init__(self, inner: ScoreModelScorer):
        self.inner = inner

    def score(self, prompts, responses):
        return self.inner.score(prompts, responses)


def _cost(scorer, prompt: str, text: str) -> float:
    """One prefix scored on its own; the empty response costs 0 (docs/methods.md)."""
    return float(scorer.score([prompt], [text])[0]) if text else 0.0


def _step_texts(lm, r: Result, block: int) -> list[str]:
    """The answer's decoded prefix after each step (every step samples ``block`` tokens until the answer ends)."""
    ids = lm.tokenizer(r.response, add_special_tokens=False)["input_ids"]
    assert lm.decode(ids) == r.response and len(ids) == r.new_tokens  # printable ASCII: the answer's own tokens
    return [lm.decode(ids[: min(k * block, len(ids))]) for k in range(1, len(r.budget_trajectory) + 1)]


def _charges(r: Result) -> list[float]:
    z = [r.budget, *r.budget_trajectory]
    return [a - b for a, b in pairwise(z)]  # gamma = 1: each step's charge


def token_wise_by_hand(scorer, prompt: str, steps: list[str]) -> list[float]:
    """Each step is charged max(0, C(y<=j) - C(y<j)) for every character j it adds (the score model reads one
    token per byte; a character's bytes count once, at its last), a live step's trailing incomplete character
    (U+FFFD) waiting for the next step."""
    final = steps[-1]
    costs = [_cost(scorer, prompt, final[:j]) for j in range(len(final) + 1)]
    rises = [max(0.0, b - a) for a, b in pairwise(costs)]
    cuts = [0] + [len(t.rstrip("\ufffd")) for t in steps[:-1]] + [len(final)]
    for t in steps[:-1]:
        assert final.startswith(t.rstrip("\ufffd"))  # the decoded prefixes are prefixes of the answer
    return [sum(rises[a:b]) for a, b in pairwise(cuts)]


def block_end_by_hand(scorer, prompt: str, steps: list[str]) -> list[float]:
    """Each step is charged max(0, C(prefix now) - C(prefix before)) on the decoded block-boundary prefixes."""
    costs = [0.0] + [_cost(scorer, prompt, t) for t in steps]
    return [max(0.0, b - a) for a, b in pairwise(costs)]


def test_the_score_model_is_a_prefix_scorer_and_its_text_only_wrapper_is_not(cost_model, lm):
    assert isinstance(cost_model, PrefixScorer) and not isinstance(TextOnly(cost_model), PrefixScorer)
    assert _Run(Stack(lm=lm, reward=VowelReward(), cost=cost_model), preset("sample"), PROMPTS, 0).token_wise
    assert (
        _Run(Stack(lm=lm, reward=VowelReward(), cost=TextOnly(cost_model)), preset("sample"), PROMPTS, 0).token_wise
        is None
    )


@pytest.mark.parametrize("method", ["sample", "inferenceguard"])
def test_charged_costs_equal_each_prefix_scored_by_hand(cost_model, lm, method):
    block = 4
    cfg = replace(
        preset(method, max_new_tokens=12, block=block, candidates=4, budget=BUDGET), steer=PrintableOnly.of(lm)
    )
    differ = 0
    for seed in range(3):
        token_wise = search(Stack(lm=lm, reward=VowelReward(), cost=cost_model), PROMPTS, cfg, seed=seed)
        text = search(Stack(lm=lm, reward=VowelReward(), cost=TextOnly(cost_model)), PROMPTS, cfg, seed=seed)
        for p, r in zip(PROMPTS, token_wise):
            assert not r.refused and r.cost == pytest.approx(_cost(cost_model, p, r.response), abs=1e-4)
            steps = _step_texts(lm, r, block)
            assert _charges(r) == pytest.approx(token_wise_by_hand(cost_model, p, steps), abs=1e-3)
        for p, r in zip(PROMPTS, text):
            assert not r.refused and r.cost == pytest.approx(_cost(cost_model, p, r.response), abs=1e-4)
            steps = _step_texts(lm, r, block)
            assert _charges(r) == pytest.approx(block_end_by_hand(cost_model, p, steps), abs=1e-3)
            if method == "sample":  # the selector ignores costs: the same answer under both rules
                twin = token_wise[PROMPTS.index(p)]
                assert twin.response == r.response and sum(_charges(twin)) >= sum(_charges(r)) - 1e-4
                differ += sum(_charges(twin)) > sum(_charges(r)) + 1e-3
    assert differ or method != "sample", "token-wise and block-end charges should differ for a fluctuating cost"


def test_whole_response_step_is_charged_every_token_rise(cost_model, lm):
    """Best-of-N's one step: the token-wise charge is the same sum of rises a block method would pay."""
    cfg = SearchConfig(
        "t", Unranked(), block=None, candidates=1, keep=1, max_new_tokens=10, budget=BUDGET, steer=PrintableOnly.of(lm)
    )
    for p, r in zip(PROMPTS, search(Stack(lm=lm, reward=VowelReward(), cost=cost_model), PROMPTS, cfg, seed=1)):
        assert len(r.budget_trajectory) == 1
        assert _charges(r) == pytest.approx(token_wise_by_hand(cost_model, p, [r.response]), abs=1e-3)


def test_a_split_character_is_charged_once_it_is_complete(cost_model, lm):
    """A live response ending in an incomplete character (U+FFFD) is charged up to it; the next step charges the
    completed character's rise against the character before it; a finished response is charged in full."""
    run = _Run(Stack(lm=lm, reward=VowelReward(), cost=cost_model), preset("sample", budget=BUDGET), PROMPTS, 0)
    p = PROMPTS[0]
    c = {t: _cost(cost_model, p, t) for t in ("", "a", "ab", "ab\ufffd", "abé")}
    rise = lambda a, b: max(0.0, c[b] - c[a])  # noqa: E731
    zero, live, done = torch.zeros(1), torch.zeros(1, dtype=torch.bool), torch.ones(1, dtype=torch.bool)
    cost, charge, charged, at = run.text_costs([p], ["ab\ufffd"], zero, (zero.long(), zero), live)
    assert charged.tolist() == [2] and charge.item() == pytest.approx(rise("", "a") + rise("a", "ab"), abs=1e-4)
    assert at.item() == pytest.approx(c["ab"], abs=1e-4)  # the cost where charging stopped
    assert cost.item() == pytest.approx(c["ab\ufffd"], abs=1e-4)  # the cost itself is of the whole text
    cost, charge, charged, at = run.text_costs([p], ["abé"], cost, (charged, at), live)
    assert charged.tolist() == [3] and charge.item() == pytest.approx(rise("ab", "abé"), abs=1e-4)
    _, charge, charged, _ = run.text_costs([p], ["ab\ufffd"], zero, (torch.tensor([2]), torch.tensor([c["ab"]])), done)
    assert charged.tolist() == [3] and charge.item() == pytest.approx(rise("ab", "ab\ufffd"), abs=1e-4)
    cost, charge, charged, _ = run.text_costs([p], [""], zero, (zero.long(), zero), done)  # nothing to charge
    assert charge.item() == 0 and charged.tolist() == [0]
    assert cost.item() == pytest.approx(float(cost_model.score([p], [""])[0]), abs=1e-4)


def test_the_first_rise_of_a_step_is_measured_from_the_cost_stored_where_charging_stopped(cost_model, lm):
    """A token the tokenizer merges across the last charged point is charged once: from the stored cost, not
    from this pass's score of the token before it (which the previous pass may never have produced)."""
    run = _Run(Stack(lm=lm, reward=VowelReward(), cost=cost_model), preset("sample", budget=BUDGET), PROMPTS, 0)
    p = PROMPTS[0]
    c = {t: _cost(cost_model, p, t) for t in ("a", "ab")}
    done = torch.ones(1, dtype=torch.bool)
    for stored in (c["a"], c["a"] - 0.5, c["ab"] + 0.5):
        _, charge, charged, at = run.text_costs(
            [p], ["ab"], torch.zeros(1), (torch.tensor([1]), torch.tensor([stored])), done
        )
        assert charge.item() == pytest.approx(max(0.0, c["ab"] - stored), abs=1e-4)
        assert charged.tolist() == [2] and at.item() == pytest.approx(c["ab"], abs=1e-4)


def test_a_refusal_is_charged_token_wise_as_one_step_from_the_full_budget(cost_model, lm):
    """With a budget the first block breaks, the search refuses; the refusal text (committed text, then the
    fixed refusal) is charged its token rises as one step from d, and its safety follows from that."""
    d = 1e-4
    cfg = preset(
        "inferenceguard",
        budget=d,
        on_exhausted="refuse",
        max_new_tokens=8,
        block=4,
        candidates=1,
        keep=1,
        resample_rounds=0,
    )
    stack = Stack(lm=lm, reward=VowelReward(), cost=cost_model)
    refused = [(p, r) for p, r in zip(PROMPTS, search(stack, PROMPTS, cfg, seed=0)) if r.refused]
    assert refused, "a budget of 1e-4 must exhaust the search on some prompt"
    for p, r in refused:
        [charge] = token_wise_by_hand(cost_model, p, [r.response])
        assert r.budget_trajectory == pytest.approx([d - charge], abs=1e-3)
        assert r.safe == (d - charge >= 0)
