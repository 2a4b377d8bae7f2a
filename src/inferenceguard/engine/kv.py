"""Functional KV-cache operations on transformers ``DynamicCache`` objects.

Mutation contract: every function here returns a NEW cache and leaves its input untouched (the layers'
key/value tensors are fresh tensors from ``index_select``/``cat``), so the engine can keep a parent cache
for resampling while its children grow. Tensors are (rows, kv_heads, T, head_dim); rows are beams/candidates
flattened over prompts.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


def _with_layers(cache: Any, fn: Any) -> Any:
    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        nl = copy.copy(layer)
        nl.keys, nl.values = fn(layer.keys), fn(layer.values)
        new.layers.append(nl)
    return new


def select(cache: Any, rows: torch.Tensor) -> Any:
    """rows (R',) long -> a cache holding those rows, in that order (repeats allowed: expansion)."""
    return _with_layers(cache, lambda t: t.index_select(0, rows))


def pad_right(cache: Any, n: int) -> Any:
    """Append n zero positions (to be masked out by the attention mask) to every row."""
    if n == 0:
        return cache
    return _with_layers(cache, lambda t: torch.cat([t, t.new_zeros(*t.shape[:2], n, t.shape[3])], dim=2))


def cat(caches: list[Any]) -> Any:
    """Concatenate caches of equal length along rows."""
    if len(caches) == 1:
        return caches[0]
    first = caches[0]
    new = copy.copy(first)
    new.layers = []
    for i, layer in enumerate(first.layers):
        nl = copy.copy(layer)
        nl.keys = torch.cat([c.layers[i].keys for c in caches])
        nl.values = torch.cat([c.layers[i].values for c in caches])
        new.layers.append(nl)
    return new


def length(cache: Any) -> int:
    return int(cache.layers[0].keys.shape[2])
