import pytest
import torch
from transformers import DynamicCache

from inferenceguard.engine import kv
from tests.utils.tiny import tiny_lm


def _cache(rows: int = 3, T: int = 5, preallocated: bool = False):
    lm = tiny_lm()
    ids = torch.randint(3, 200, (rows, T))
    cache = kv.new_cache(lm.model.config, 16) if preallocated else DynamicCache(config=lm.model.config)
    out = lm.model(input_ids=ids, past_key_values=cache, use_cache=True)
    return out.past_key_values


@pytest.mark.parametrize("preallocated", [False, True])
def test_select_copies_and_leaves_input_untouched(preallocated):
    cache = _cache(preallocated=preallocated)
    before = [layer.keys.clone() for layer in cache.layers]
    new = kv.select(cache, torch.tensor([2, 0, 0]))
    assert torch.equal(new.layers[0].keys[1], cache.layers[0].keys[0])
    new.layers[0].keys.add_(1.0)
    assert all(torch.equal(a, layer.keys) for a, layer in zip(before, cache.layers))
    assert new.layers[0].keys.shape[0] == 3


@pytest.mark.parametrize("preallocated", [False, True])
def test_pad_right_and_cat(preallocated):
    a, b = _cache(2, 5, preallocated), _cache(1, 5, preallocated)
    padded = kv.pad_right(a, 3)
    assert kv.length(padded) == 8 and kv.length(a) == 5
    assert torch.count_nonzero(padded.layers[0].keys[:, :, 5:]) == 0
    both = kv.cat([a, b])
    assert both.layers[1].values.shape[0] == 3
    assert torch.equal(both.layers[1].values[2], b.layers[1].values[0])


def test_preallocated_cache_gives_the_same_logits_as_dynamic():
    lm = tiny_lm()
    ids = torch.randint(3, 200, (2, 7))
    outs = []
    for cache in (DynamicCache(config=lm.model.config), kv.new_cache(lm.model.config, 12)):
        assert isinstance(cache.layers[0], kv.PreallocatedLayer) == (len(outs) == 1)
        out = lm.model(input_ids=ids[:, :4], past_key_values=cache, use_cache=True)
        logits = [out.logits[:, -1]]
        for t in range(4, 7):
            out = lm.model(input_ids=ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            logits.append(out.logits[:, -1])
        outs.append(torch.stack(logits))
    assert torch.allclose(outs[0], outs[1], atol=1e-6)


def test_preallocated_capacity_overflow_is_reported():
    lm = tiny_lm()
    with pytest.raises(RuntimeError, match="capacity"):
        lm.model(input_ids=torch.randint(3, 200, (1, 9)), past_key_values=kv.new_cache(lm.model.config, 8))
