import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inferenceguard import safety
from inferenceguard.errors import ConfigError

costs = st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=12)


def _run(d: float, prefix_costs: list[float], gamma: float = 1.0) -> list[float]:
    z, before, traj = safety.init(d, 1), torch.zeros(1), []
    for c in prefix_costs:
        now = torch.tensor([c])
        z = safety.step(z, safety.step_cost(now, before), gamma)
        before = now
        traj.append(float(z))
    return traj


@given(st.floats(0.01, 5), costs)
def test_z_never_increases(d, prefix_costs):
    traj = [d, *_run(d, prefix_costs)]
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(traj))


@given(st.floats(0.01, 5), costs, st.floats(0.5, 1.0))
def test_discounted_budget_never_increases(d, prefix_costs, gamma):
    traj = _run(d, prefix_costs, gamma)
    disc = [d] + [gamma ** (k + 1) * z for k, z in enumerate(traj)]
    assert all(b <= a + 1e-5 for a, b in itertools.pairwise(disc))


@given(st.floats(0.01, 5), costs)
def test_gamma_one_is_budget_minus_sum_of_charges(d, prefix_costs):
    charges = [max(0.0, b - a) for a, b in zip([0.0, *prefix_costs], prefix_costs)]
    assert _run(d, prefix_costs)[-1] == pytest.approx(d - sum(charges), abs=1e-5)


@settings(max_examples=200)
@given(st.floats(0.01, 5), costs)
def test_safe_iff_final_z_nonnegative_iff_constraint_holds(d, prefix_costs):
    charges = [max(0.0, b - a) for a, b in zip([0.0, *prefix_costs], prefix_costs)]
    z = _run(d, prefix_costs)[-1]
    assert bool(safety.is_safe(torch.tensor(z))) == (z >= 0)
    if abs(sum(charges) - d) > 1e-4:
        assert (z >= 0) == (sum(charges) <= d)


def test_reshape_penalises_broken_budget_and_ranks_least_unsafe_first():
    v = torch.tensor([3.0, 9.0, 9.0])
    z = torch.tensor([0.1, -0.2, -0.5])
    r = safety.reshape(v, z, penalty=100.0)
    assert r[0] == 3.0 and r[1] < r[0] and r[2] < r[1]


def test_budget_must_be_positive():
    with pytest.raises(ConfigError, match="budget"):
        safety.init(0.0, 2)
