"""The critic file format and its checks: round trip, the Critic protocol, base-model and corruption refusals,
and the critic-guided search against reward-guided InferenceGuard on a tiny model."""

import json

import pytest
import torch

from inferenceguard.critic import CONFIG, WEIGHTS, LatentCritic, default_critic_info, load_critic, save_critic
from inferenceguard.engine import Stack, search
from inferenceguard.engine.types import Critic
from inferenceguard.errors import AssetError, ConfigError, CriticMismatchError
from inferenceguard.guard import Guard, _load_critic
from inferenceguard.strategies import preset
from tests.stubs import CharCost, VowelReward
from tests.utils.tiny import tiny_lm


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def _critic(lm, seed=0) -> LatentCritic:
    torch.manual_seed(seed)
    c = LatentCritic(lm.hidden_size, width=16, depth=2, base_identity=lm.identity, meta={"name": "t", "block": 4})
    c.feature_mean.normal_()
    c.set_value_stats(1.5, 2.0)
    return c.eval()


def test_round_trip_gives_identical_outputs(lm, tmp_path):
    c = _critic(lm)
    save_critic(c, tmp_path / "c")
    back = load_critic(tmp_path / "c", lm)
    h, z = torch.randn(7, lm.hidden_size), torch.rand(7)
    assert [torch.equal(a, b) for a, b in zip(c.evaluate(h, z), back.evaluate(h, z))] == [True, True]
    assert back.meta["block"] == 4 and back.base_identity == lm.identity
    # either file of the pair names the critic too
    assert torch.equal(load_critic(tmp_path / "c" / WEIGHTS, lm).evaluate(h, z)[0], c.evaluate(h, z)[0])


def test_implements_the_engine_protocol_and_absorbs_over_budget_states(lm):
    c = _critic(lm)
    assert isinstance(c, Critic)
    p, v = c.evaluate(torch.randn(5, lm.hidden_size), torch.tensor([1.0, 0.5, 0.0, -0.01, -3.0]))
    assert p.shape == v.shape == (5,) and p.dtype == torch.float32
    assert bool(((p[:3] > 0) & (p[:3] < 1)).all()) and p[3:].tolist() == [0.0, 0.0]
    with pytest.raises(ConfigError, match="hidden states"):
        c.evaluate(torch.randn(5, lm.hidden_size + 1), torch.ones(5))


def test_critic_for_another_model_is_refused(lm, tmp_path):
    save_critic(_critic(lm), tmp_path / "c")
    with pytest.raises(CriticMismatchError, match="tiny-llama-0"):
        load_critic(tmp_path / "c", tiny_lm(seed=1))  # same width, other identity
    other = tiny_lm(hidden=32)
    other.identity = lm.identity  # same name, other width
    with pytest.raises(CriticMismatchError, match="hidden size"):
        load_critic(tmp_path / "c", other)


@pytest.mark.parametrize("damage", ["truncate", "flip", "json", "no_weights", "no_config", "format"])
def test_corrupt_or_missing_files_are_refused(lm, tmp_path, damage):
    folder = save_critic(_critic(lm), tmp_path / "c")
    w, j = folder / WEIGHTS, folder / CONFIG
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[:100])
    elif damage == "flip":
        b = bytearray(w.read_bytes())
        b[-5] ^= 0xFF
        w.write_bytes(bytes(b))
    elif damage == "json":
        j.write_text(j.read_text()[:-20])
    elif damage == "no_weights":
        w.unlink()
    elif damage == "no_config":
        j.unlink()
    else:
        meta = json.loads(j.read_text())
        meta["format"] = "pickle"
        j.write_text(json.dumps(meta))
    with pytest.raises(AssetError) as e:
        load_critic(folder, lm)
    assert not isinstance(e.value, CriticMismatchError)


def test_guard_picks_a_fitting_critic_and_the_engine_error_remains_otherwise(lm, tmp_path):
    assert _load_critic(None, lm) is None  # the shipped default is for SmolLM2, not this model
    with pytest.raises(CriticMismatchError):
        _load_critic("default", lm)
    save_critic(_critic(lm), tmp_path / "c")
    assert isinstance(_load_critic(str(tmp_path / "c"), lm), LatentCritic)
    guard = Guard.from_stack(Stack(lm=lm, reward=VowelReward(), cost=CharCost(threshold=0.3)))
    with pytest.raises(ConfigError, match="needs a critic"):
        guard.generate(["hi"], "inferenceguard-critic", max_new_tokens=8, block=4)


def test_critic_search_calls_the_reward_model_far_less(lm):
    stack = Stack(lm=lm, reward=VowelReward(), cost=CharCost(threshold=0.3), critic=_critic(lm))
    prompts = ["hello there", "tell me a story"]
    kw = dict(max_new_tokens=16, block=4, candidates=8)
    ig = search(stack, prompts, preset("inferenceguard", **kw), seed=0)
    cr = search(stack, prompts, preset("inferenceguard-critic", **kw), seed=0)
    for a, b in zip(ig, cr):
        assert b.critic_calls >= 8 * 4 and a.critic_calls == 0
        assert b.reward_calls * 4 <= a.reward_calls  # finished answers only vs every candidate of every step


def test_default_critic_info_describes_the_shipped_critic():
    info = default_critic_info()
    assert info is not None, "no critic ships in inferenceguard/assets/critic"
    assert {"name", "base_model", "val_p_safe_auc", "block"} <= set(info)
    assert info["val_p_safe_auc"] >= 0.8


@pytest.mark.assets
def test_default_critic_loads_for_the_default_lm():
    from inferenceguard.models import load_lm

    lm = load_lm()
    c = _load_critic(None, lm)
    assert isinstance(c, LatentCritic) and c.base_identity == lm.identity
    p, _ = c.evaluate(torch.zeros(3, lm.hidden_size), torch.tensor([1.0, 0.5, -1.0]))
    assert p.shape == (3,) and p[2] == 0


def test_shipped_critic_was_trained_under_the_shipped_cost_model():
    """The critic learns the cost model's notion of safety (its value targets are that model's costs), so a
    rebuilt cost head without a retrained critic would guide the search by the old model: the critic's record
    of the cost model it rolled out under must match the shipped head, and postdate its build."""
    import json

    from inferenceguard.critic import ASSET_DIR as CRITIC_DIR
    from inferenceguard.scorers.embedded import ASSET_DIR as SCORER_DIR
    from inferenceguard.scorers.heads import LinearHead

    critic = json.loads((CRITIC_DIR / "critic.json").read_text())
    manifest = json.loads((SCORER_DIR / "manifest.json").read_text())
    cost = LinearHead.load(SCORER_DIR / "cost_probe")
    assert critic["scorers"]["cost"] == cost.name and critic["scorers"]["cost_threshold"] == cost.threshold
    assert critic["scorers"]["reward"] == LinearHead.load(SCORER_DIR / "reward_hh").name
    built = manifest["cost_model"].get("built", manifest["built"])  # entries record their own date since --only
    assert critic["created"] >= built, "retrain the critic after rebuilding the cost head"
