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


def make_kernel_head(dim: int = 6, comps: int = 3, centres: int = 4, seed: int = 0) -> LinearHead:
    g = torch.Generator().manual_seed(seed)
    return LinearHead(
        mean=torch.randn(dim, generator=g),
        scale=torch.rand(dim, generator=g) + 0.5,
        coef=torch.randn(centres, generator=g),
        intercept=-0.2,
        kind="cost",
        name="kernel-head",
        features={"type": "test"},
        threshold=0.4,
        projection=torch.randn(dim, comps, generator=g),
        offset=torch.randn(comps, generator=g),
        centers=torch.randn(centres, comps, generator=g),
        gamma=0.3,
    )


def test_kernel_head_is_projection_then_rbf_then_linear():
    head = make_kernel_head()
    x = torch.randn(5, 6, dtype=torch.float64)
    z = ((x - head.mean.double()) / head.scale.double()) @ head.projection.double() + head.offset.double()
    k = torch.exp(-0.3 * torch.cdist(z, head.centers.double()) ** 2)
    want = k @ head.coef.double() - 0.2
    assert torch.allclose(head.logit(x).double(), want, atol=1e-5)
    assert head.dim == 6 and head.kernel == "rbf"
    # a projection alone is a linear head on the components
    proj = LinearHead(
        mean=head.mean, scale=head.scale, coef=torch.ones(3), intercept=0.0, kind="cost", name="p",
        features={}, projection=head.projection,
    )  # fmt: skip
    zp = ((x.float() - head.mean) / head.scale) @ head.projection
    assert torch.allclose(proj.logit(x), zp.sum(1), atol=1e-5)


def test_kernel_head_round_trip_uses_the_second_format_and_plain_heads_keep_the_first(tmp_path):
    head = make_kernel_head()
    st, js = head.save(tmp_path / "k")
    cfg = json.loads(js.read_text())
    assert cfg["format"] == "inferenceguard.linear_head/2"
    assert cfg["map"] == {"projection": 3, "kernel": "rbf", "gamma": 0.3, "centers": 4}
    from safetensors.torch import load_file

    assert set(load_file(str(st))) == {"mean", "scale", "coef", "intercept", "projection", "offset", "centers"}
    x = torch.randn(7, 6)
    loaded = LinearHead.load(tmp_path / "k")
    assert torch.equal(loaded(x), head(x)) and loaded.gamma == 0.3
    _, pjs = make_head().save(tmp_path / "plain")
    assert json.loads(pjs.read_text())["format"] == "inferenceguard.linear_head/1"
    assert "map" not in json.loads(pjs.read_text())


BROKEN_KERNEL_FILES = {
    "no-centers": "lacks the tensors",
    "no-offset": "lacks the tensors",
    "bad-kernel": "unknown kernel",
    "no-gamma": "gamma",
    "gamma-string": "gamma",
    "gamma-bool": "gamma",
    "gamma-huge": "gamma",
    "map-type": "'map' must be an object",
    "no-map": "needs a 'map'",
    "map-counts": "does not match its tensors",
    "threshold-string": "threshold",
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_KERNEL_FILES))
def test_broken_kernel_files_raise_asset_error(tmp_path, breakage):
    from safetensors.torch import load_file, save_file

    st, js = make_kernel_head().save(tmp_path / "k")
    cfg = json.loads(js.read_text())
    if breakage in ("no-centers", "no-offset"):
        t = load_file(str(st))
        del t[breakage.removeprefix("no-").replace("centers", "centers")]
        save_file(t, str(st))
    elif breakage == "bad-kernel":
        cfg["map"]["kernel"] = "poly"
    elif breakage.startswith("gamma") or breakage == "no-gamma":
        cfg["map"]["gamma"] = {"no-gamma": None, "gamma-string": "0.3", "gamma-bool": True, "gamma-huge": 10**400}[
            breakage
        ]
    elif breakage == "map-type":
        cfg["map"] = [1, 2]
    elif breakage == "no-map":
        del cfg["map"]
    elif breakage == "map-counts":
        cfg["map"]["centers"] = 1234
    else:
        cfg["threshold"] = "0.5"
    js.write_text(json.dumps(cfg))
    with pytest.raises(AssetError, match=BROKEN_KERNEL_FILES[breakage]):
        LinearHead.load(tmp_path / "k")


def test_shipped_plain_heads_round_trip_byte_for_byte(tmp_path):
    """The kernel format must not change how a logistic head is written: the v0 heads (never rebuilt) re-save
    to the same bytes."""
    from inferenceguard.scorers.embedded import ASSET_DIR

    stems = sorted(p.with_suffix("") for p in (ASSET_DIR / "v0").glob("*.json") if p.name != "manifest.json")
    assert stems
    for stem in stems:
        st, js = LinearHead.load(stem).save(tmp_path / stem.name)
        assert st.read_bytes() == stem.with_suffix(".safetensors").read_bytes()
        assert json.loads(js.read_text()) == json.loads(stem.with_suffix(".json").read_text())


def test_bad_kernel_arguments_name_themselves():
    h = make_kernel_head()
    common = dict(mean=h.mean, scale=h.scale, intercept=0.0, kind="cost", name="x", features={})
    with pytest.raises(ConfigError, match="gamma"):
        LinearHead(**common, coef=h.coef, projection=h.projection, centers=h.centers)
    with pytest.raises(ConfigError, match="coef"):
        LinearHead(**common, coef=torch.ones(3), projection=h.projection, centers=h.centers, gamma=0.3)
    with pytest.raises(ConfigError, match="centers"):
        LinearHead(**common, coef=h.coef, projection=h.projection, centers=torch.ones(4, 5), gamma=0.3)
    with pytest.raises(ConfigError, match="projection"):
        LinearHead(**common, coef=torch.ones(3), projection=torch.ones(5, 3))
    with pytest.raises(ConfigError, match="offset"):
        LinearHead(**common, coef=torch.ones(6), offset=torch.ones(3))
    with pytest.raises(ConfigError, match="finite"):
        LinearHead(**common, coef=h.coef, projection=h.projection, centers=h.centers * float("nan"), gamma=0.3)
