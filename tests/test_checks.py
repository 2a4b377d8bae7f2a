"""The checks that have one home (issue 15, item 3), each tested there and through every caller:

- the context-length check, ``LM.check_room``: the engine, the harness and the server (which answers it with
  OpenAI's ``context_length_exceeded``);
- "budget None" becomes the cost model's threshold, ``scorers.base.resolve_budget``: the engine, rollouts and
  the server's budget limit;
- "the critic fits this LM", ``critic.fit_problem``: a critic file (``check_fits``) and a critic in hand
  (``require_critic``, used by ``strategies.bind`` and the engine).
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from inferenceguard.critic import LatentCritic, check_fits, fit_problem, require_critic
from inferenceguard.engine import Stack, search
from inferenceguard.errors import ConfigError, CriticMismatchError
from inferenceguard.harness.run import describe_stack, load_sources
from inferenceguard.scorers.base import resolve_budget
from inferenceguard.strategies import bind, preset
from tests.stubs import CharCost, VowelReward
from tests.utils.stack import StubCritic
from tests.utils.tiny import tiny_lm


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


@pytest.fixture(scope="module")
def stack(lm):
    return Stack(lm=lm, reward=VowelReward(), cost=CharCost(threshold=0.5), critic=StubCritic(lm.identity))


# -- the context-length check ------------------------------------------------------------------------------
def test_check_room_passes_at_the_limit_and_names_argument_prompt_and_numbers_past_it(lm):
    ctx = lm.max_context
    lm.check_room(ctx - 4, 4, "max_new_tokens", "prompts[0]")  # exactly full: fits
    with pytest.raises(ConfigError) as e:
        lm.check_room(ctx - 4, 5, "--max-new-tokens", "prompt set:abc")
    assert (e.value.arg, e.value.value) == ("--max-new-tokens", 5)
    expected = f"must fit the model's context of {ctx} tokens after prompt set:abc ({ctx - 4} tokens)"
    assert str(e.value) == f"'--max-new-tokens' {expected}, got 5"


def test_the_engine_names_the_longest_prompt(stack):
    overhead = len(stack.lm.encode_prompt("a")) - 1  # the chat template's tokens (byte tokenizer: 1 per char)
    prompts = ["hi", "a" * (stack.lm.max_context - 3 - overhead)]  # leaves room for 3 new tokens
    n = len(stack.lm.encode_prompt(prompts[1]))
    room = stack.lm.max_context - n
    assert room == 3
    with pytest.raises(ConfigError, match=re.escape(f"after the longest prompt, prompts[1] ({n} tokens)")) as e:
        search(stack, prompts, preset("sample", max_new_tokens=room + 1))
    assert e.value.arg == "max_new_tokens"
    [_, r] = search(stack, prompts, preset("sample", max_new_tokens=room))  # exactly full: answered
    assert r.new_tokens <= room


def test_the_harness_names_the_prompt_set_and_id_before_any_generation(stack, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("short\n" + "b" * 300 + "\n")
    [source] = load_sources([str(path)])
    long = source.prompts[1]
    room = stack.lm.max_context - len(stack.lm.encode_prompt(long.text))
    cfgs = {"sample": preset("sample")}
    with pytest.raises(ConfigError, match=re.escape(f"after prompt {source.name}:{long.id} (")) as e:
        describe_stack(stack, cfgs, [source], room + 1)
    assert (e.value.arg, e.value.value) == ("--max-new-tokens", room + 1)
    assert describe_stack(stack, cfgs, [source], room)["methods"].keys() == {"sample"}


# -- budget None -> the cost model's threshold -------------------------------------------------------------
def test_resolve_budget_takes_the_given_budget_else_the_threshold_which_must_be_declared():
    assert resolve_budget(0.2, CharCost(threshold=None)) == 0.2
    assert resolve_budget(None, CharCost(threshold=0.4)) == 0.4
    with pytest.raises(ConfigError, match=r"'cost_model\.threshold' must be set: the cost_model 'char-cost'"):
        resolve_budget(None, CharCost(threshold=None))
    for zero in (0.0, -1.0):  # a beaver-style threshold separates the classes; it cannot be the budget d (> 0)
        with pytest.raises(ConfigError, match=r"'budget' must be given: the cost model 'char-cost' has threshold"):
            resolve_budget(None, CharCost(threshold=zero))
    assert resolve_budget(10.0, CharCost(threshold=0.0)) == 10.0


def test_the_engine_budget_is_the_threshold_when_none_is_given(stack):
    [r] = search(stack, ["hi"], preset("sample", max_new_tokens=2))
    assert r.budget == pytest.approx(0.5)
    [r] = search(stack, ["hi"], preset("sample", max_new_tokens=2, budget=0.25))
    assert r.budget == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("settings", "threshold", "budget", "status"),
    [
        ({}, 0.5, 0.6, 400),  # no limit set: the server's budget, the cost model's threshold
        ({}, None, 0.6, 200),  # a cost model without a threshold, no budget set: nothing to tighten
        ({"budget": 0.3}, None, 0.4, 400),  # the server's budget
        ({"budget": 0.3, "limit_budget": 0.5}, 0.5, 0.4, 200),  # --limit-budget above it
    ],
)
def test_the_server_limits_request_budgets_by_the_same_rule(lm, settings, threshold, budget, status):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from inferenceguard.guard import Guard
    from inferenceguard.server import ServerSettings, create_app

    guard = Guard.from_stack(Stack(lm=lm, reward=VowelReward(), cost=CharCost(threshold=threshold)))
    body = {"prompt": "hi", "max_tokens": 2, "budget": budget, "method": "sample"}
    with TestClient(create_app(ServerSettings(**settings), guard)) as tc:
        r = tc.post("/v1/completions", json=body)
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["param"] == "budget" and "on this server" in r.json()["error"]["message"]


# -- the critic fits this LM -------------------------------------------------------------------------------
def test_fit_problem_is_the_one_rule_for_a_file_and_a_critic_in_hand(lm):
    assert fit_problem(lm.identity, lm.hidden_size, lm) is None
    assert fit_problem(lm.identity, None, lm) is None  # a critic that does not say its width
    other = fit_problem("another-model", lm.hidden_size, lm)
    assert other == f"was trained on base model 'another-model', not on '{lm.identity}'"
    wide = fit_problem(lm.identity, lm.hidden_size + 1, lm)
    assert wide is not None and "hidden size" in wide
    meta = {"base_identity": "another-model", "hidden_size": lm.hidden_size}
    with pytest.raises(CriticMismatchError, match=re.escape(f"the critic {other}: ")):
        check_fits(meta, lm)
    with pytest.raises(ConfigError, match=re.escape(f"for method 'recontrol': it {other}")):
        require_critic(StubCritic("another-model"), lm, "recontrol")
    wider = LatentCritic(lm.hidden_size + 1, width=4, depth=1, base_identity=lm.identity)
    with pytest.raises(ConfigError, match=re.escape(f"it {wide}")):
        require_critic(wider, lm, "recontrol")


def test_require_critic_returns_the_fitting_critic_and_names_the_method_otherwise(lm):
    c = StubCritic(lm.identity)
    assert require_critic(c, lm, "recontrol") is c
    with pytest.raises(ConfigError, match="'critic' must be available: method 'inferenceguard-critic' needs a critic"):
        require_critic(None, lm, "inferenceguard-critic")


def test_bind_and_the_engine_refuse_a_critic_of_another_model_alike(stack):
    other = replace(stack, critic=StubCritic("another-model"))
    cfg = preset("inferenceguard-critic", max_new_tokens=4, block=2, candidates=2)
    with pytest.raises(ConfigError, match="must be trained on the base model") as bound:
        bind(cfg, other)
    with pytest.raises(ConfigError, match="must be trained on the base model") as engine:
        search(other, ["hi"], cfg)  # the engine used to read a foreign critic's answers without a word
    assert str(bound.value) == str(engine.value)
    with pytest.raises(ConfigError, match="needs a critic") as engine:
        search(replace(stack, critic=None), ["hi"], cfg)
    assert engine.value.arg == "critic"
    [r] = search(stack, ["hi"], cfg)  # a fitting critic is read
    assert r.critic_calls > 0
