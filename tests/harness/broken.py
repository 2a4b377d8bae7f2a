"""A stack loader that fails as a bad --model does, in a module light enough for a Ray worker to import fast."""

from inferenceguard.errors import ConfigError


def broken_stack() -> None:
    raise ConfigError("--model", "nowhere", "must name a model that loads")
