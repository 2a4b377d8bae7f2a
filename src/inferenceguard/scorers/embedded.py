"""The embedded default scorers: linear heads shipped in ``inferenceguard/assets/scorers/``.

- cost (guides the search): :class:`ProbeCostScorer`, a logistic probe on the base LM's own hidden states,
  mean-pooled over the response tokens, optionally beside the prompt's pooled state (harm is "complies with a
  harmful request", which needs both). It is a :class:`LatentScorer`: the engine can hand it the pooled
  features it computed while generating.
- judge (evaluation only): :class:`EncoderHeadScorer` on all-mpnet-base-v2 embeddings, a different model and
  different features from the probe, so reported harm is not judged by the search's own cost model alone.
- reward: :class:`EncoderHeadScorer` on MiniLM embeddings of (prompt, response), trained to score answers
  above refusals and off-topic replies, so safety cannot be bought by blanket refusal.

The heads are built by :func:`inferenceguard.training.build_scorers.build_default_heads` (``inferenceguard
build-scorers``); ``manifest.json`` next to them records the data, the split and the held-out metrics.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from inferenceguard.errors import ConfigError
from inferenceguard.models.loading import LM, Encoder, load_encoder, load_lm
from inferenceguard.scorers.base import BatchedScorer
from inferenceguard.scorers.heads import LinearHead

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "scorers"
HEAD_FILES = {"cost": "cost_probe", "judge": "judge_mpnet", "reward": "reward_hh"}
PROBE_FEATURES = "lm-response-mean"  # feature spec type of probe heads
ENCODER_FEATURES = "encoder-pair"  # feature spec type of encoder heads
ENCODER_PARTS = ("prompt", "response", "product", "cosine")
PROMPT_POOLS = ("last", "mean")  # how a probe may read the prompt: its last token's state, or the mean over it


def check_prompt_pool(value: str | None, arg: str = "prompt_pool") -> str | None:
    """A probe's prompt part: None (the answer only) or one of :data:`PROMPT_POOLS`; ConfigError otherwise."""
    if value not in (None, *PROMPT_POOLS):
        raise ConfigError(arg, value, f"must be one of {', '.join(PROMPT_POOLS)} or None")
    return value


def default_head_path(role: str) -> Path:
    """The stem of the shipped head for 'cost', 'judge' or 'reward'."""
    if role not in HEAD_FILES:
        raise ConfigError("role", role, f"must be one of {', '.join(HEAD_FILES)}")
    return ASSET_DIR / HEAD_FILES[role]


# ---- features ------------------------------------------------------------------------------------------------


def probe_token_ids(lm: LM, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) per pair, exactly as the engine sees them: the formatted prompt, then the
    response tokenised on its own without special tokens."""
    formatted = [lm.format_prompt(p) for p in prompts]
    pids = lm.tokenizer(formatted, add_special_tokens=not lm.is_chat)["input_ids"]
    rids = lm.tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    return [(list(p), list(r)) for p, r in zip(pids, rids, strict=True)]


def _fit(pids: list[int], rids: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut a pair to ``max_length`` tokens: the prompt keeps its last tokens (where the assistant header is)
    and at least half the window when the response needs it; the response loses its tail."""
    if len(pids) + len(rids) <= max_length:
        return pids, rids
    keep = max(max_length - len(rids), max_length // 2)
    pids = pids[-keep:] if len(pids) > keep else pids
    return pids, rids[: max_length - len(pids)]


def response_features(
    lm: LM,
    prompts: Sequence[str],
    responses: Sequence[str],
    layers: Sequence[int],
    max_length: int = 1024,
    batch_size: int = 8,
    progress: bool = False,
    prompt_pool: str | None = None,
) -> torch.Tensor:
    """Mean over the response tokens of ``hidden_states[l]`` for l in ``layers``, concatenated; with
    ``prompt_pool`` the prompt's pooled states at the same layers follow ('last': its last token, the
    assistant header the model answers from; 'mean': the mean over its tokens).

    Returns (N, (1 + bool(prompt_pool)) * len(layers) * hidden) float32; an empty response gives zeros in
    the response part. ``layers`` index the ``output_hidden_states`` tuple (0 = embeddings, num_layers = final
    layer after the final norm). Batches are length-sorted and right-padded; padding is masked, so a pair's
    features do not depend on its batch mates.
    """
    return prefix_features(lm, prompts, responses, layers, (), max_length, batch_size, progress, prompt_pool)[:, 0]


@torch.inference_mode()
def prefix_features(
    lm: LM,
    prompts: Sequence[str],
    responses: Sequence[str],
    layers: Sequence[int],
    prefixes: Sequence[int],
    max_length: int = 1024,
    batch_size: int = 8,
    progress: bool = False,
    prompt_pool: str | None = None,
) -> torch.Tensor:
    """Like :func:`response_features`, plus the features of response prefixes from the same forward pass.

    Returns (N, 1 + len(prefixes), F): ``[:, 0]`` pools the whole response, ``[:, k]`` its first
    ``prefixes[k - 1]`` tokens (all of them when shorter), which is what the engine pools at a block
    boundary mid-generation (the model is causal, so a prefix's hidden states do not see what follows).
    With ``prompt_pool`` every cut carries the same prompt part after its response part.
    """
    from tqdm.auto import tqdm

    bad = [layer for layer in layers if not 0 <= layer <= lm.num_layers]
    if not layers or bad:
        raise ConfigError("layers", list(layers), f"must be non-empty indices in 0..{lm.num_layers}")
    if max_length < 2:
        raise ConfigError("max_length", max_length, "must be at least 2")
    if any(k < 1 for k in prefixes):
        raise ConfigError("prefixes", list(prefixes), "must be token counts >= 1")
    check_prompt_pool(prompt_pool)
    pairs = [_fit(p, r, max_length) for p, r in probe_token_ids(lm, prompts, responses)]
    cuts = [None, *prefixes]
    F = len(layers) * lm.hidden_size
    out = torch.zeros(len(pairs), len(cuts), F * (2 if prompt_pool else 1))
    todo = sorted((i for i, (_, r) in enumerate(pairs) if r or prompt_pool), key=lambda i: sum(map(len, pairs[i])))
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    for idx in tqdm(batches, desc="probe features", disable=not progress, leave=False):
        T = max(len(pairs[i][0]) + len(pairs[i][1]) for i in idx)
        ids = torch.full((len(idx), T), lm.pad_id, dtype=torch.long)  # (b, T)
        mask = torch.zeros(len(idx), T, dtype=torch.long)  # (b, T) attention
        w = torch.zeros(len(idx), len(cuts) + 1, T)  # (b, P + 1, T) the positions each pool reads; last: prompt
        for row, i in enumerate(idx):
            p, r = pairs[i]
            ids[row, : len(p) + len(r)] = torch.tensor(p + r)
            mask[row, : len(p) + len(r)] = 1
            for k, cut in enumerate(cuts):
                w[row, k, len(p) : len(p) + len(r[:cut])] = 1
            w[row, -1, len(p) - 1 if prompt_pool == "last" else 0 : len(p)] = 1
        hs = lm.model(
            input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), output_hidden_states=True
        ).hidden_states
        h = torch.cat([hs[layer].float() for layer in layers], dim=-1).cpu()  # (b, T, F)
        pooled = torch.bmm(w, h) / w.sum(-1, keepdim=True).clamp(min=1)  # (b, P + 1, F); empty response: 0
        out[idx, :, :F] = pooled[:, :-1]
        if prompt_pool:
            out[idx, :, F:] = pooled[:, -1:]
    return out


class PromptCache:
    """Bounded LRU of prompt embeddings: the search scores many partial responses of one prompt."""

    def __init__(self, size: int = 4096):
        self.size, self._d = size, OrderedDict[str, torch.Tensor]()

    def embed(self, encoder: Encoder, prompts: Sequence[str]) -> torch.Tensor:
        """prompts -> (N, H) float32 unit vectors, embedding each distinct unseen prompt once."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._d))
        if new:
            for p, e in zip(new, encoder.embed(new).cpu(), strict=True):
                self._d[p] = e
        out = torch.stack([self._d[p] for p in prompts])
        for p in dict.fromkeys(prompts):
            self._d.move_to_end(p)
        while len(self._d) > self.size:
            self._d.popitem(last=False)
        return out

    def __len__(self) -> int:
        return len(self._d)


def encoder_features(p: torch.Tensor, r: torch.Tensor, parts: Sequence[str]) -> torch.Tensor:
    """Unit prompt and response embeddings p, r: (N, H) -> (N, F) by concatenating ``parts``:
    'prompt' p, 'response' r, 'product' p * r, 'cosine' (p * r).sum(-1, keepdim=True)."""
    table = {
        "prompt": lambda: p,
        "response": lambda: r,
        "product": lambda: p * r,
        "cosine": lambda: (p * r).sum(-1, keepdim=True),
    }
    bad = [x for x in parts if x not in table]
    if not parts or bad:
        raise ConfigError("parts", list(parts), f"must be a non-empty list drawn from {', '.join(ENCODER_PARTS)}")
    return torch.cat([table[x]() for x in parts], dim=-1)


# ---- scorers -------------------------------------------------------------------------------------------------


def _head(head: LinearHead | str | Path | None, role: str, expected_type: str) -> LinearHead:
    h = head if isinstance(head, LinearHead) else LinearHead.load(head if head is not None else default_head_path(role))
    if h.features.get("type") != expected_type:
        raise ConfigError(
            "head", h.name, f"must be a '{expected_type}' head, it reads '{h.features.get('type')}' features"
        )
    return h


class ProbeCostScorer(BatchedScorer):
    """P(harmful response) from a logistic probe on the base LM's hidden states (a LatentScorer).

    ``lm`` is shared with the engine when given (it must be the model the probe was trained on); otherwise
    the head's base model is loaded. ``score_features`` takes the pooled features the engine computed;
    ``score`` re-encodes the text (batched, right-padded, at most ``max_length`` tokens per pair).
    """

    def __init__(
        self,
        head: LinearHead | str | Path | None = None,
        lm: LM | None = None,
        device: str | torch.device | None = None,
        max_length: int = 1024,
        batch_size: int = 8,
    ):
        self.head = _head(head, "cost", PROBE_FEATURES)
        spec = self.head.features
        self.lm = lm if lm is not None else load_lm(spec.get("base"), device=device)
        if self.lm.identity != spec.get("base_identity"):
            raise ConfigError(
                "lm",
                self.lm.identity,
                f"must be the base LM the probe '{self.head.name}' was trained on, '{spec.get('base_identity')}'",
            )
        self.layers: tuple[int, ...] = tuple(int(x) for x in spec.get("layers", ()))
        self.prompt_pool = check_prompt_pool(spec.get("prompt_pool"), "features.prompt_pool")
        parts = 2 if self.prompt_pool else 1
        width = parts * len(self.layers) * self.lm.hidden_size
        if width != self.head.dim:
            raise ConfigError(
                "head",
                self.head.name,
                f"must read {parts} x {len(self.layers)} layers x {self.lm.hidden_size} = {width} features, "
                f"it reads {self.head.dim}",
            )
        self.base_identity: str = self.lm.identity
        self.name, self.threshold = self.head.name, self.head.threshold
        self.max_length, self.batch_size = max_length, batch_size

    def features(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """(N, head dim) float32 pooled features of the text (see :func:`response_features`)."""
        return response_features(
            self.lm, prompts, responses, self.layers, self.max_length, self.batch_size, prompt_pool=self.prompt_pool
        )

    def score_features(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, head dim) [response part, prompt part if any] -> (N,) float32 P(harmful) in [0, 1]."""
        return self.head(features.float().cpu())

    def _score_batch(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return self.score_features(self.features(prompts, responses))


class EncoderHeadScorer(BatchedScorer):
    """A linear head on sentence-encoder embeddings of (prompt, response): the judge and the reward model.

    Prompt embeddings are cached per prompt text (bounded LRU); response embeddings are computed per call.
    The output is the head's: P(harmful) for the judge (sigmoid), a real-valued logit for the reward.
    """

    def __init__(
        self,
        head: LinearHead | str | Path | None = None,
        role: str = "reward",
        encoder: Encoder | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        cache_size: int = 4096,
    ):
        self.head = _head(head, role, ENCODER_FEATURES)
        spec = self.head.features
        self.encoder = encoder if encoder is not None else load_encoder(spec.get("encoder"), device=device)
        if self.encoder.identity != spec.get("encoder_identity"):
            raise ConfigError(
                "encoder",
                self.encoder.identity,
                f"must be the encoder the head '{self.head.name}' was trained on, '{spec.get('encoder_identity')}'",
            )
        self.parts: tuple[str, ...] = tuple(spec.get("parts", ()))
        self.name, self.threshold = self.head.name, self.head.threshold
        self.batch_size = batch_size
        self.cache = PromptCache(cache_size)

    def features(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """(N, F) float32 head input."""
        p = self.cache.embed(self.encoder, prompts)  # (N, H)
        r = self.encoder.embed(list(responses)).cpu()  # (N, H)
        return encoder_features(p, r, self.parts)

    def _score_batch(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return self.head(self.features(prompts, responses))
