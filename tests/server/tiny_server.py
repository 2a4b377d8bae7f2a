"""Serve the tiny random stack over HTTP, for tests and ``benchmarks/server_load.py --tiny``.

python -m tests.server.tiny_server --port 8123 [any ``inferenceguard serve`` flag]

The stack: a tiny random Llama with a byte tokenizer (tests/utils/tiny.py), the vowel-share reward and the
rare-letter cost with threshold 0.5 and another rare-letter judge (tests/stubs.py): no files, no network,
answers in a fraction of a second.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_guard():
    from inferenceguard.engine import Stack
    from inferenceguard.guard import Guard
    from tests.stubs import CharCost, VowelReward
    from tests.utils.tiny import tiny_lm

    judge = CharCost(bad="qwk", threshold=0.05)  # a second opinion for /v1/moderations
    return Guard.from_stack(Stack(lm=tiny_lm(), reward=VowelReward(), cost=CharCost(threshold=0.5), judge=judge))


def main(argv: list[str]) -> None:
    import uvicorn

    from inferenceguard.server import ServerSettings, create_app

    settings = ServerSettings.from_cli(argv)
    uvicorn.run(
        create_app(settings, tiny_guard()), host=settings.host, port=settings.port, log_level=settings.log_level
    )


if __name__ == "__main__":
    main(sys.argv[1:])
