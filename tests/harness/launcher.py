"""A tiny evaluation stack (random LM, stub scorers, stub critic and judge) and a launcher that runs the same
runner the CLI uses, so tests can run ``inferenceguard eval`` in a real subprocess and kill it.

python -m tests.harness.launcher OUT PROMPT_FILE METHODS [--delay S] [--batch-size B] [--max-new-tokens T]
    [--ray-address ADDRESS --workers N --worker-cpus C]   (answer on Ray workers of that cluster)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from pathlib import Path

import torch

from inferenceguard.engine import Stack
from inferenceguard.harness.distributed import RayOptions, RayPool
from inferenceguard.harness.run import load_sources, run_eval
from tests.stubs import CharCost, VowelReward
from tests.utils.tiny import tiny_lm


class StubCritic(torch.nn.Module):
    """A differentiable stand-in critic: p_safe = sigmoid(u.h + b), value = v.h (linear heads on h).

    ``evaluate`` runs under inference mode, like the real critic's, so RE-Control must unwrap it.
    """

    def __init__(
        self,
        base_identity: str,
        hidden: int = 64,
        seed: int = 0,
        p_bias: float = 0.0,
        value_dir: torch.Tensor | None = None,
        safe_dir: torch.Tensor | None = None,
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.base_identity = base_identity
        self.u = torch.nn.Parameter(safe_dir if safe_dir is not None else torch.randn(hidden, generator=g) / 8)
        self.v = torch.nn.Parameter(value_dir if value_dir is not None else torch.randn(hidden, generator=g) / 8)
        self.b = p_bias

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(h @ self.u + self.b), h @ self.v

    @torch.inference_mode()
    def evaluate(self, h: torch.Tensor, z_frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p_safe, value = self.heads(h.float())
        return torch.where(z_frac >= 0, p_safe, torch.zeros_like(p_safe)), value


class SlowJudge(CharCost):
    """The stub cost model as an independent judge, optionally slowed down (to kill a run mid-way)."""

    name = "slow-judge"

    def __init__(self, delay: float = 0.0):
        super().__init__(bad="xyzXYZ", threshold=0.1)
        self.delay = delay

    def _score_batch(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        time.sleep(self.delay)
        return super()._score_batch(prompts, responses)


def tiny_stack(delay: float = 0.0, critic: bool = True) -> Stack:
    lm = tiny_lm(eos_boost=1.0)
    return Stack(
        lm=lm,
        reward=VowelReward(),
        cost=CharCost(threshold=0.1),
        critic=StubCritic(lm.identity) if critic else None,
        judge=SlowJudge(delay),
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("prompts", nargs="+")
    ap.add_argument("--methods", default="sample,bon")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--ray-address", default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--worker-cpus", type=float, default=1.0)
    a = ap.parse_args(argv)
    with contextlib.ExitStack() as scope:
        stack = tiny_stack(a.delay) if a.ray_address is None else scope.enter_context(ray_pool(a))
        run_eval(
            stack,
            load_sources(a.prompts),
            a.methods,
            a.out,
            max_new_tokens=a.max_new_tokens,
            batch_size=a.batch_size,
            settings={"candidates": a.candidates, "block": 4},
            progress=False,
        )


ROOT = Path(__file__).resolve().parents[2]


def ray_options(**kw) -> RayOptions:
    """Ray workers for tests: they import ``tests`` from the checkout."""
    return RayOptions(runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}, **kw)


def ray_pool(a: argparse.Namespace) -> RayPool:
    opts = ray_options(address=a.ray_address, workers=a.workers, worker_cpus=a.worker_cpus)
    return RayPool(functools.partial(tiny_stack, a.delay), opts)


@contextlib.contextmanager
def one_thread():
    """Tiny models run fastest on one thread, and far faster than two when the two cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
