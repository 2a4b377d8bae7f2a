"""Score models: a causal-LM backbone with a linear head read at every token (PKU safe-rlhf's ``LlamaForScore``).

Two checkpoint formats, both loaded with plain transformers (no safe-rlhf install, no remote code):

- **safe-rlhf ``LlamaForScore``** (``PKU-Alignment/beaver-7b-v1.0-cost``, ``-reward``, ``beaver-7b-unified-cost``,
  v2.0/v3.0): ``config.json`` is a llama config plus ``architectures: ["LlamaForScore"]``, ``score_dim``,
  ``bias``, ``score_type`` ('reward' | 'cost') and, optionally, ``do_normalize`` with ``mean``/``var``; the
  weights hold the backbone under ``model.*`` and the head as ``score_head.weight`` (+ ``score_head.bias``
  when ``bias`` is true). Input: ``BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}``.
- **a one-output ``*ForSequenceClassification`` on a causal LM** (``argsearch/llama-7b-rm-float32``, the ARGS
  reward model: a ``LlamaForSequenceClassification`` trained with LMFlow on HH-RLHF): backbone under
  ``model.*``, head ``score.weight``. Input: the HH-RLHF transcript ``\\n\\nHuman: {prompt}\\n\\nAssistant:
  {response}``.

The backbone is loaded with ``AutoModel`` (the base class the config names, e.g. ``LlamaModel``, which strips
the ``model.`` prefix); the head is read from the weight files by name and applied in float32 to the last
hidden state at every position. The score of a pair is the head at its last real (non-pad) token; the head
at each response token is the score of that response prefix (``score_prefixes``), all from one forward pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inferenceguard.errors import AssetError, ConfigError
from inferenceguard.models.loading import _from_pretrained, pick_device, pick_dtype
from inferenceguard.scorers.base import BatchedScorer, PrefixScores, check_batch

BEAVER_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}"
HH_TEMPLATE = "\n\nHuman: {prompt}\n\nAssistant: {response}"
FORMATS = {"llama-for-score": ("score_head", BEAVER_TEMPLATE), "sequence-classifier": ("score", HH_TEMPLATE)}
KINDS = ("reward", "cost")
WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
_NORMALIZE = {"reward": "affine", "cost": "scale", "critic": "identity"}  # safe-rlhf's normalize function per type


@dataclass(frozen=True)
class ScoreHead:
    """A linear head read from a checkpoint: ``score = (h @ weight.T + bias - shift) / scale``."""

    format: str  # a key of FORMATS
    weight: torch.Tensor  # (1, H) float32
    bias: torch.Tensor | None  # (1,) float32
    kind: str  # 'reward' or 'cost': what the checkpoint says it scores
    shift: float = 0.0
    scale: float = 1.0


class ScoreModelScorer(BatchedScorer):
    """Reward or cost model with a score at every token (see the module docstring for the formats).

    ``template`` (with ``{prompt}``, ending with ``{response}``) defaults to the format's own. The threshold defaults
    to 0 for a cost model (safe-rlhf's convention: cost > 0 is unsafe) and to none for a reward model. A pair
    longer than the model's context is a ConfigError (it is never silently truncated: the score is read at
    the last token). Scores are computed in float32 from the backbone's last hidden state.
    """

    def __init__(
        self,
        source: str | Path,
        template: str | None = None,
        threshold: float | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        batch_size: int = 8,
    ):
        from transformers import AutoModel, AutoTokenizer

        src = str(source)
        self.device = pick_device(device)
        self.config = _read_config(src)
        self.head = read_score_head(src, self.config)
        self.template = template or FORMATS[self.head.format][1]
        if "{prompt}" not in self.template or not self.template.endswith("{response}"):
            raise ConfigError(
                "template", self.template[:60], "must contain {prompt} and end with {response} (scores are per token)"
            )
        self.tokenizer = _from_pretrained(AutoTokenizer, src, "score-model tokenizer")
        if not getattr(self.tokenizer, "is_fast", False):
            raise AssetError(f"the tokenizer of '{src}' is not a fast tokenizer; per-token scores need its offsets")
        if self.tokenizer.pad_token is None:  # LLaMA tokenizers often have none; padding is masked anyway
            if self.tokenizer.eos_token is None:
                raise AssetError(f"the tokenizer of '{src}' has neither a pad nor an EOS token to pad batches with")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model, info = _from_pretrained(
            AutoModel, src, "score-model backbone", dtype=pick_dtype(self.device, dtype), output_loading_info=True
        )
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            raise ConfigError(
                "score-model",
                src,
                f"must hold its config's backbone weights under 'model.*'; {len(missing)} missing, e.g. {missing[:3]}",
            )
        self.model = model.to(self.device).eval()
        limits = [
            max_length,
            getattr(self.tokenizer, "model_max_length", None),
            getattr(self.config, "max_position_embeddings", None),
        ]
        self.max_length = min(int(x) for x in limits if isinstance(x, int) and x > 0)
        self.kind = self.head.kind
        self.threshold = threshold if threshold is not None else (0.0 if self.kind == "cost" else None)
        self.name = f"score-model:{src}"
        self.batch_size = batch_size
        self._w = self.head.weight.to(self.device)  # (1, H)
        self._b = None if self.head.bias is None else self.head.bias.to(self.device)  # (1,)

    # -- public ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def score_prefixes(self, prompts: list[str], responses: list[str]) -> list[PrefixScores]:
        """The score of every token prefix of each response (one forward pass per batch of pairs)."""
        check_batch(prompts, responses)
        out: list[PrefixScores] = []
        for i in range(0, len(prompts), self.batch_size):
            p, r = list(prompts[i : i + self.batch_size]), list(responses[i : i + self.batch_size])
            enc, starts = self._encode(p, r)
            scores = self._token_scores(enc).cpu()  # (b, T)
            for j, resp in enumerate(r):
                pos, ends = _response_tokens(enc["offset_mapping"][j], enc["attention_mask"][j], starts[j], len(resp))
                out.append(PrefixScores(ends=tuple(ends), scores=scores[j, pos]))
        return out

    # -- backend --------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _score_batch(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        enc, _ = self._encode(prompts, responses)
        scores = self._token_scores(enc)  # (b, T)
        last = enc["attention_mask"].sum(1) - 1  # (b,) right-padded: the last real token
        return scores.gather(1, last[:, None].to(scores.device)).squeeze(1)

    def _encode(self, prompts: list[str], responses: list[str]) -> tuple[Any, list[int]]:
        """Right-padded token ids with offsets, and where each response starts in its formatted text."""
        head, _, tail = self.template.partition("{response}")
        texts, starts = [], []
        for p, r in zip(prompts, responses, strict=True):
            before = head.replace("{prompt}", p)
            texts.append(before + r + tail.replace("{prompt}", p))
            starts.append(len(before))
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "right"
        try:
            enc = self.tokenizer(texts, padding=True, return_offsets_mapping=True, return_tensors="pt")
        finally:
            self.tokenizer.padding_side = side
        n = int(enc["attention_mask"].sum(1).max())
        if n > self.max_length:
            raise ConfigError(
                "responses",
                f"<{n} tokens>",
                f"must fit, with the template, in the score model's {self.max_length} tokens",
            )
        return enc, starts

    def _token_scores(self, enc: Any) -> torch.Tensor:
        """(b, T) head applied to the last hidden state at every position (float32)."""
        ids = enc["input_ids"].to(self.device)  # (b, T)
        mask = enc["attention_mask"].to(self.device)  # (b, T)
        h = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # (b, T, H)
        s = h @ self._w.T  # (b, T, 1)
        if self._b is not None:
            s = s + self._b
        return ((s.squeeze(-1) - self.head.shift) / self.head.scale).float()


def _response_tokens(
    offsets: torch.Tensor, mask: torch.Tensor, start: int, n_chars: int
) -> tuple[list[int], list[int]]:
    """Positions of the tokens that end inside the response, and each one's end as a response offset. Tokens
    sharing an end (the bytes of one multi-byte character) count once, at the last of them."""
    pos: list[int] = []
    ends: list[int] = []
    for t, ((a, b), m) in enumerate(zip(offsets.tolist(), mask.tolist(), strict=True)):
        end = b - start
        if not (m and b > a and 0 < end <= n_chars):
            continue
        if ends and end <= ends[-1]:
            pos[-1] = t
        else:
            pos.append(t)
            ends.append(end)
    return pos, ends


# -- reading the checkpoint -----------------------------------------------------------------------------------
def _read_config(source: str) -> Any:
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig, source, "score-model config")


def _local(source: str, name: str) -> Path | None:
    """A file of a model folder or of a (cached or downloadable) hub repo; None when the repo has no such file."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path / name if (path / name).is_file() else None
    from transformers.utils import cached_file

    try:
        hit = cached_file(
            source,
            name,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except (OSError, ValueError) as e:
        raise AssetError(f"cannot read '{name}' of the score model '{source}': {e}") from e
    return Path(hit) if hit else None


def _tensors(source: str, names: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors among ``names`` that the checkpoint holds, and the (first) weight file they were looked up in."""
    for fname in WEIGHT_FILES:
        path = _local(source, fname)
        if path is None:
            continue
        files: dict[Path, list[str]] = {}
        if fname.endswith(".index.json"):
            try:
                wmap = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise AssetError(f"cannot read the weight index '{path}': {e}") from e
            for n in names:
                if n in wmap:
                    shard = _local(source, wmap[n])
                    if shard is None:
                        raise AssetError(f"'{path}' maps '{n}' to '{wmap[n]}', which the score model lacks")
                    files.setdefault(shard, []).append(n)
        else:
            files[path] = list(names)
        out: dict[str, torch.Tensor] = {}
        for f, want in files.items():
            out.update(_read(f, want))
        return out, path
    raise AssetError(f"the score model '{source}' has no weight file (looked for {', '.join(WEIGHT_FILES)})")


def _read(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                return {n: f.get_tensor(n) for n in names if n in keys}
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return {n: sd[n] for n in names if n in sd}
    except (OSError, RuntimeError, ValueError) as e:
        raise AssetError(f"cannot read the weights '{path}': {e}") from e


def read_score_head(source: str, config: Any) -> ScoreHead:
    """The score head of a checkpoint (LlamaForScore or a one-output classifier), checked against its config."""
    names = ("score_head.weight", "score_head.bias", "score.weight", "score.bias", "normalizer.mean", "normalizer.var")
    found, wfile = _tensors(source, names)
    cfile = Path(source) / "config.json" if Path(source).is_dir() else f"{source}/config.json"
    archs = list(getattr(config, "architectures", None) or [])
    if "score_head.weight" in found:
        fmt, prefix = "llama-for-score", "score_head"
        want_bias = bool(getattr(config, "bias", False))
        kind = str(getattr(config, "score_type", "reward"))
    elif "score.weight" in found and int(getattr(config, "num_labels", 0)) == 1:
        fmt, prefix, want_bias, kind = "sequence-classifier", "score", "score.bias" in found, "reward"
    else:
        what = "a 'score.weight' of several classes" if "score.weight" in found else "no score head"
        raise ConfigError(
            "score-model",
            str(wfile),
            f"must hold a score head: 'score_head.weight' (safe-rlhf LlamaForScore) or the 'score.weight' of a "
            f"one-output *ForSequenceClassification; this checkpoint has {what} (config architectures={archs})",
        )
    weight = found[f"{prefix}.weight"].float()
    if weight.dim() != 2 or weight.shape[0] != 1 or weight.shape[1] != int(config.hidden_size):
        raise ConfigError(
            "score-model",
            str(wfile),
            f"must hold a '{prefix}.weight' of shape (1, hidden_size={config.hidden_size}) (one score: "
            f"config score_dim={getattr(config, 'score_dim', 1)}), it has {tuple(weight.shape)}",
        )
    bias = found.get(f"{prefix}.bias")
    if want_bias and bias is None:
        raise ConfigError(
            "score-model", str(wfile), f"must hold '{prefix}.bias': {cfile} sets bias=true, the weights have none"
        )
    if kind not in (*KINDS, "critic"):
        raise ConfigError("score-model", str(cfile), f"must set score_type to reward, cost or critic, not '{kind}'")
    shift, scale = _normalizer(config, found, kind, cfile)
    return ScoreHead(
        format=fmt,
        weight=weight,
        bias=None if bias is None else bias.float().reshape(1),
        kind="reward" if kind == "critic" else kind,
        shift=shift,
        scale=scale,
    )


def _normalizer(config: Any, found: dict[str, torch.Tensor], kind: str, cfile: Any) -> tuple[float, float]:
    """(shift, scale) of safe-rlhf's output normalisation when the config turns it on (do_normalize), else (0, 1)."""
    if not getattr(config, "do_normalize", False):
        return 0.0, 1.0
    mean = getattr(config, "mean", None)
    var = getattr(config, "var", None)
    mean = mean if mean is not None else found.get("normalizer.mean")
    var = var if var is not None else found.get("normalizer.var")
    if mean is None or var is None:
        raise ConfigError(
            "score-model", str(cfile), "must give mean and var (or the normalizer buffers) with do_normalize"
        )
    m, sd = float(torch.as_tensor(mean).reshape(-1)[0]), float(torch.as_tensor(var).reshape(-1)[0]) ** 0.5
    fn = _NORMALIZE[kind]
    return (m if fn in ("affine", "translate") else 0.0), (sd + 1e-8 if fn in ("affine", "scale") else 1.0)
