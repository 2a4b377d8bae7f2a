"""Guard, the library's facade, end to end on the tiny stack (tests/utils/stack.py): every method by name or by
a resolved configuration, strings and conversations, batching and streaming offsets, scoring, loading a
stack from folders, and each error a caller can make."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from inferenceguard import PRESETS, ConfigError, Guard, load_stack
from inferenceguard.strategies import preset
from tests.stubs import VowelReward
from tests.utils.stack import tiny_stack

PROMPTS = ["Tell me a joke.", "What is 2 + 2?", "Say hi."]
SMALL = dict(max_new_tokens=4, candidates=4, block=2)
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Tell me a story"},
]


@pytest.fixture(scope="module")
def guard() -> Guard:
    return Guard.from_stack(tiny_stack())


@pytest.mark.parametrize("method", list(PRESETS))
def test_every_method_answers_the_same_by_name_or_by_resolved_config(guard, method):
    """The CLI and the server resolve a method once (strategies.preset) and pass the SearchConfig: that gives
    the very answers naming the method with the same settings does."""
    by_name = guard.generate(PROMPTS[:2], method, seed=3, **SMALL)
    by_cfg = guard.generate(PROMPTS[:2], preset(method, **SMALL), seed=3)
    assert [r.prompt for r in by_name] == PROMPTS[:2]
    assert all(r.method == method and r.new_tokens <= 4 for r in by_name)
    assert [(r.response, r.tokens_sampled) for r in by_name] == [(r.response, r.tokens_sampled) for r in by_cfg]


def test_a_setting_the_preset_fixes_is_left_out(guard):
    """Best-of-N's one whole-response step: --block does not reach it, through the Guard as everywhere."""
    kw = dict(max_new_tokens=6, candidates=3)
    plain = guard.generate(PROMPTS[:2], "bon", seed=1, **kw)
    blocked = guard.generate(PROMPTS[:2], "bon", seed=1, block=2, **kw)
    obeyed = guard.generate(PROMPTS[:2], replace(preset("bon", **kw), block=2), seed=1)  # had the flag reached it
    assert [(r.response, r.tokens_sampled) for r in blocked] == [(r.response, r.tokens_sampled) for r in plain]
    assert [r.response for r in obeyed] != [r.response for r in plain]  # so the check above can tell


def test_one_string_batches_and_streaming_offsets(guard):
    """A lone string is one prompt; answers do not depend on batch_size; on_commit numbers prompts across
    batches, and what it streamed starts each answer."""
    kw = dict(max_new_tokens=8, block=2, candidates=4, keep=1, seed=0)  # seed 0: every prompt commits text
    together = guard.generate(PROMPTS, "beam", batch_size=3, **kw)
    got: dict[int, list[str]] = {}
    apart = guard.generate(PROMPTS, "beam", batch_size=1, on_commit=lambda i, t: got.setdefault(i, []).append(t), **kw)
    [alone] = guard.generate(PROMPTS[2], "beam", **kw)
    assert [r.response for r in apart] == [r.response for r in together]
    assert alone.response == together[2].response and alone.prompt == PROMPTS[2]
    assert set(got) == {0, 1, 2}
    for i, r in enumerate(apart):
        assert r.response.startswith("".join(got[i]))


def test_a_conversation_reaches_the_lm_whole_and_the_scorers_as_its_last_user_turn():
    seen: list[str] = []

    class Recording(VowelReward):
        def _score_batch(self, prompts, responses):
            seen.extend(prompts)
            return super()._score_batch(prompts, responses)

    stack = tiny_stack(critic=False)
    stack.reward = Recording()
    g = Guard.from_stack(stack)
    [r] = g.generate(CHAT, "bon", max_new_tokens=4, candidates=2)  # one conversation, not four prompts
    assert r.prompt == "Tell me a story" and set(seen) == {"Tell me a story"}
    whole, last = len(stack.lm.encode_prompt(CHAT)), len(stack.lm.encode_prompt("Tell me a story"))
    assert r.extra["prompt_tokens"] == whole > last  # the LM read every turn through its chat template
    mixed = g.generate(["plain", CHAT], "bon", max_new_tokens=4, candidates=2)
    assert [x.prompt for x in mixed] == ["plain", "Tell me a story"] and mixed[1].response == r.response


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda g: g.generate([], "sample"), "prompts"),
        (lambda g: g.generate(["hi"], "nope"), "method"),
        (lambda g: g.generate(["hi"], "sample", batch_size=0), "batch_size"),
        (lambda g: g.generate(["hi"], "sample", blocks=4), "blocks"),
        (lambda g: g.generate(["hi"], "sample", lam=1.0), "lam"),  # a weight the method does not read
        (lambda g: g.generate(["hi"], "beam", candidates=4, keep=8), "keep"),
        (lambda g: g.generate(["hi"], preset("sample"), max_new_tokens=4), "max_new_tokens"),  # config + settings
        (lambda g: g.generate(["  "], "sample"), "prompts[0]"),
        (lambda g: g.generate(["ok", 7], "sample"), "prompts[1]"),
        (lambda g: g.generate(["a", "b", "  "], "sample", batch_size=2), "prompts[2]"),  # named in the whole list
        (lambda g: g.generate([[{"role": "user", "content": "hi", "tool": 1}]], "sample"), "prompts[0][0]"),
        (lambda g: g.generate([[{"role": "usr", "content": "hi"}]], "sample"), "prompts[0][0]"),
        (lambda g: g.generate([[{"role": "system", "content": "hi"}]], "sample"), "prompts[0]"),  # no user turn
        (lambda g: g.generate(["hi"], "sample", max_new_tokens=600), "max_new_tokens"),  # past the context
        (lambda g: g.score(["q"], ["a", "b"]), "responses"),
    ],
)
def test_each_bad_call_is_a_config_error_naming_its_argument(guard, call, arg):
    with pytest.raises(ConfigError, match=re.escape(f"'{arg}'")):
        call(guard)


def test_a_method_needing_a_critic_says_so_on_a_stack_without_one():
    g = Guard.from_stack(tiny_stack(critic=False))
    with pytest.raises(ConfigError, match=r"'critic'.*needs a critic"):
        g.generate(["hi"], "inferenceguard-critic", max_new_tokens=2)


def test_score_gives_each_scorer_and_its_verdict(guard):
    clean, harmful = guard.score(["q", "q"], ["aaaa", "xyzxyz"])
    assert (clean.cost, clean.unsafe, clean.judge_unsafe, clean.helpful) == (0.0, False, False, True)
    assert (harmful.cost, harmful.unsafe, harmful.judge_unsafe) == (1.0, True, True)
    assert clean.reward == pytest.approx(5**0.5) and harmful.reward == 0.0
    assert harmful.to_dict()["cost_verdict"] == "unsafe" and clean.to_dict()["reward_verdict"] == "helpful"


def test_load_stack_from_folders_is_what_guard_loads(dirs):
    """One way to build a stack: Guard(...) and load_stack(...) read the same folders the same way."""
    spec = dict(model=dirs["lm"], reward_model=f"hf-seq:{dirs['rm']}", cost_model=f"hf-seq:{dirs['cm']}#unsafe")
    stack = load_stack(**spec, device="cpu", dtype="float32")
    assert stack.critic is None and stack.judge is None  # no shipped critic fits a tiny model; judge not asked
    g = Guard(**spec, device="cpu", dtype="float32")
    kw = dict(max_new_tokens=4, candidates=2, on_exhausted="flag", seed=0)
    a, b = Guard(stack=stack).generate(PROMPTS[0], **kw), g.generate(PROMPTS[0], **kw)
    assert a[0].method == "inferenceguard" and a[0].new_tokens >= 1
    assert (a[0].response, a[0].cost, a[0].reward) == (b[0].response, b[0].cost, b[0].reward)


def test_a_bad_prompt_in_a_later_batch_is_refused_before_any_generation(guard):
    started: list[int] = []
    with pytest.raises(ConfigError, match=re.escape("'prompts[3]'")):
        guard.generate(
            ["a", "b", "c", ""], "sample", max_new_tokens=2, batch_size=2, on_commit=lambda i, t: started.append(i)
        )
    assert started == []


def test_an_openai_message_name_is_accepted_and_left_out_of_what_the_lm_reads(guard):
    named = [{"role": "user", "content": "Tell me a story", "name": "ann"}]
    [a] = guard.generate([named], "sample", max_new_tokens=4)
    [b] = guard.generate([[{"role": "user", "content": "Tell me a story"}]], "sample", max_new_tokens=4)
    assert a.response == b.response and a.extra["prompt_tokens"] == b.extra["prompt_tokens"]
