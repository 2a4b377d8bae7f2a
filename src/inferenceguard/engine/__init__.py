"""The search engine: one block-wise, batched, KV-cache-sharing loop that every strategy configures."""

from inferenceguard.engine.search import search
from inferenceguard.engine.types import Candidates, Result, SearchConfig, Selector, Stack

__all__ = ["Candidates", "Result", "SearchConfig", "Selector", "Stack", "search"]
