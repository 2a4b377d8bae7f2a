import torch
from transformers import DynamicCache

from inferenceguard.engine import kv
from tests.utils.tiny import tiny_lm


def _cache(rows: int = 3, T: int = 5):
    lm = tiny_lm()
    ids = torch.randint(3, 200, (rows, T))
    out = lm.model(input_ids=ids, past_key_values=DynamicCache(config=lm.model.config), use_cache=True)
    return out.past_key_values


def test_select_copies_and_leaves_input_untouched():
    cache = _cache()
    before = [layer.keys.clone() for layer in cache.layers]
    new = kv.select(cache, torch.tensor([2, 0, 0]))
    assert torch.equal(new.layers[0].keys[1], cache.layers[0].keys[0])
    new.layers[0].keys.add_(1.0)
    assert all(torch.equal(a, layer.keys) for a, layer in zip(before, cache.layers))
    assert new.layers[0].keys.shape[0] == 3


def test_pad_right_and_cat():
    a, b = _cache(2, 5), _cache(1, 5)
    padded = kv.pad_right(a, 3)
    assert kv.length(padded) == 8 and kv.length(a) == 5
    assert torch.count_nonzero(padded.layers[0].keys[:, :, 5:]) == 0
    both = kv.cat([a, b])
    assert both.layers[1].values.shape[0] == 3
    assert torch.equal(both.layers[1].values[2], b.layers[1].values[0])
