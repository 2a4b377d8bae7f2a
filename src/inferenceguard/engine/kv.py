"""KV-cache operations on transformers caches, and a preallocated cache layer for the search.

Mutation contract: ``select``, ``pad_right`` and ``cat`` return a NEW cache and never touch their input, so
the engine can keep a parent cache for resampling while its children grow. A forward pass (``update``)
mutates the cache it is given: the engine only ever forwards a cache it owns (a fresh ``select`` copy).
Tensors are (rows, kv_heads, T, head_dim); rows are beams/candidates flattened over prompts.

``PreallocatedLayer`` keeps keys/values in a buffer sized for the whole search (prompt + max new tokens), so
a decode step writes one column in place instead of re-concatenating the whole cache (transformers'
``DynamicLayer`` does ``torch.cat`` on every token: quadratic copying).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views into a buffer of fixed capacity (columns)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.buf_k: torch.Tensor | None = None
        self.buf_v: torch.Tensor | None = None

    def _alloc(self, like: torch.Tensor, rows: int) -> torch.Tensor:
        return like.new_empty(rows, like.shape[1], self.capacity, like.shape[3])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        n = self.get_seq_length()
        t = key_states.shape[2]
        if self.buf_k is None:
            self.lazy_initialization(key_states, value_states)
            self.buf_k = self._alloc(key_states, key_states.shape[0])
            self.buf_v = self._alloc(value_states, value_states.shape[0])
        if n + t > self.capacity:
            raise RuntimeError(f"KV cache capacity {self.capacity} exceeded ({n + t} positions)")
        self.buf_k[:, :, n : n + t] = key_states
        self.buf_v[:, :, n : n + t] = value_states  # type: ignore[index]
        self.keys, self.values = self.buf_k[:, :, : n + t], self.buf_v[:, :, : n + t]  # type: ignore[index]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return 0 if self.buf_k is None else int(self.keys.shape[2])

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> PreallocatedLayer:
        """A new layer whose valid columns are copies of keys/values: (rows, heads, n, dim)."""
        layer = cls(max(capacity, keys.shape[2]))
        layer.lazy_initialization(keys, values)
        layer.buf_k, layer.buf_v = layer._alloc(keys, keys.shape[0]), layer._alloc(values, values.shape[0])
        n = keys.shape[2]
        layer.buf_k[:, :, :n] = keys
        layer.buf_v[:, :, :n] = values
        layer.keys, layer.values = layer.buf_k[:, :, :n], layer.buf_v[:, :, :n]
        return layer


def new_cache(config: Any, capacity: int) -> Any:
    """An empty cache for ``config``: preallocated layers when the model uses plain full-attention layers,
    otherwise transformers' own layers (sliding windows etc.), which the functions below also handle."""
    cache = DynamicCache(config=config)
    if all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


def _rebuild(cache: Any, fn: Any) -> Any:
    """A new cache whose layers hold fn(keys), fn(values) of ``cache``'s layers."""
    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        k, v = fn(layer.keys), fn(layer.values)
        if isinstance(layer, PreallocatedLayer):
            new.layers.append(PreallocatedLayer.holding(k, v, layer.capacity))
        else:
            nl = copy.copy(layer)
            nl.keys, nl.values = k, v
            new.layers.append(nl)
    return new


def select(cache: Any, rows: torch.Tensor) -> Any:
    """rows (R',) long -> a cache holding those rows, in that order (repeats allowed: expansion)."""
    return _rebuild(cache, lambda t: t.index_select(0, rows))


def pad_right(cache: Any, n: int) -> Any:
    """Append n zero positions (to be masked out by the attention mask) to every row."""
    if n == 0:
        return cache
    return _rebuild(cache, lambda t: torch.cat([t, t.new_zeros(*t.shape[:2], n, t.shape[3])], dim=2))


def cat(caches: list[Any]) -> Any:
    """Concatenate caches of equal length along rows."""
    if len(caches) == 1:
        return caches[0]
    new = copy.copy(caches[0])
    new.layers = []
    for i, layer in enumerate(caches[0].layers):
        k = torch.cat([c.layers[i].keys for c in caches])
        v = torch.cat([c.layers[i].values for c in caches])
        if isinstance(layer, PreallocatedLayer):
            new.layers.append(PreallocatedLayer.holding(k, v, layer.capacity))
        else:
            nl = copy.copy(layer)
            nl.keys, nl.values = k, v
            new.layers.append(nl)
    return new


def length(cache: Any) -> int:
    return int(cache.layers[0].keys.shape[2])
