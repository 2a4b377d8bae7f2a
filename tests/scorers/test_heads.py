"""LinearHead: the math, the safetensors + JSON round trip, and clear errors on broken files."""

from __future__ import annotations

import json

import pytest
import torch

from inferenceguard.errors import AssetError, ConfigError
from inferenceguard.scorers.heads import LinearHead


def make_head(dim: int = 6, link: str = "sigmoid", seed: int = 0) -> LinearHead:
    g = torch.Generator().manual_seed(seed)
    return LinearHead(
        mean=torch.randn(dim, generator=g),
        scale=torch.rand(dim, generator=g) + 0.5,
        coef=torch.randn(dim, generator=g),
        intercept=0.3,
        kind="cost",
        name="test-head",
        features={"type": "test"},
        threshold=0.5,
        link=link,
        output="P(test)",
        metrics={"heldout_auc": 0.9},
    )


def test_output_is_standardise_then_linear():
    head = make_head()
    x = torch.randn(5, 6)
    z = ((x - head.mean) / head.scale) @ head.coef + 0.3
    assert torch.allclose(head.logit(x), z, atol=1e-6)
    assert torch.allclose(head(x), torch.sigmoid(z), atol=1e-6)
    assert torch.allclose(make_head(link="identity")(x), z, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    head = make_head()
    st, js = head.save(tmp_path / "sub" / "h")
    assert st.name == "h.safetensors" and js.name == "h.json"
    cfg = json.loads(js.read_text())
    assert cfg["kind"] == "cost" and cfg["threshold"] == 0.5 and cfg["features"]["dim"] == 6
    x = torch.randn(4, 6)
    for ref in (tmp_path / "sub" / "h", st, js):
        loaded = LinearHead.load(ref)
        assert torch.equal(loaded(x), head(x))
        assert (loaded.name, loaded.output, loaded.metrics) == ("test-head", "P(test)", {"heldout_auc": 0.9})
    assert not list((tmp_path / "sub").glob("*.tmp*")) and len(list((tmp_path / "sub").iterdir())) == 2
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in (st, js))  # shipped heads are world-readable


def test_no_pickle_in_the_tensor_file(tmp_path):
    st, _ = make_head().save(tmp_path / "h")
    assert b"\x80\x04" not in st.read_bytes()[:16]  # not a pickle stream
    from safetensors.torch import load_file

    assert set(load_file(str(st))) == {"mean", "scale", "coef", "intercept"}


def test_missing_files_raise_asset_error(tmp_path):
    with pytest.raises(AssetError, match="does not exist"):
        LinearHead.load(tmp_path / "nope")
    st, _ = make_head().save(tmp_path / "h")
    st.unlink()
    with pytest.raises(AssetError, match=r"h\.safetensors"):
        LinearHead.load(tmp_path / "h")


@pytest.mark.parametrize("breakage", ["json", "format", "tensors", "shape", "truncated"])
def test_corrupt_files_raise_asset_error(tmp_path, breakage):
    st, js = make_head().save(tmp_path / "h")
    if breakage == "json":
        js.write_text("{not json")
    elif breakage == "format":
        js.write_text(json.dumps({"kind": "cost"}))
    elif breakage == "tensors":
        st.write_bytes(b"garbage" * 10)
    elif breakage == "truncated":
        st.write_bytes(st.read_bytes()[:40])
    else:  # a head whose feature spec promises another width
        cfg = json.loads(js.read_text())
        cfg["features"]["dim"] = 7
        js.write_text(json.dumps(cfg))
    with pytest.raises(AssetError):
        LinearHead.load(tmp_path / "h")


def test_bad_arguments_name_themselves():
    with pytest.raises(ConfigError, match="link"):
        make_head(link="relu")
    with pytest.raises(ConfigError, match="scale"):
        LinearHead(
            mean=torch.zeros(2),
            scale=torch.tensor([1.0, 0.0]),
            coef=torch.ones(2),
            intercept=0.0,
            kind="cost",
            name="x",
            features={},
        )
    with pytest.raises(ConfigError, match=r"shape \(N, 6\)"):
        make_head()(torch.zeros(3, 5))
