"""Tiny random models built in-process: no files, no network, a fraction of a second."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    PreTrainedTokenizerFast,
)

from inferenceguard.models import LM
from inferenceguard.models.loading import Encoder

SPECIALS = ["<pad>", "<eos>", "<bos>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def byte_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges: 256 byte tokens plus <pad>, <eos>, <bos> (vocab 259)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i + len(SPECIALS) for i, tok in enumerate(sorted(alphabet))}
    vocab.update({s: i for i, s in enumerate(SPECIALS)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    vocab: int = 259,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate: int | None = None,
) -> LlamaForCausalLM:
    """A random Llama (tiny by default; benchmarks give it a real model's shape)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_lm(
    seed: int = 0,
    chat: bool = True,
    eos_boost: float = 0.0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **kw,
) -> LM:
    """A tiny random LM handle; ``eos_boost`` raises the EOS logit bias so sequences end early. ``device`` and
    ``dtype`` place it (the weights are drawn on the CPU in float32 first, so every device gets the same model)."""
    model = tiny_llama(seed, **kw)
    if eos_boost:
        with torch.no_grad():
            model.lm_head.weight[1].zero_()
            model.lm_head.bias = None
        model.lm_head = _Biased(model.lm_head, eos_boost)
    dev = torch.device(device)
    return LM(
        model=model.to(device=dev, dtype=dtype),
        tokenizer=byte_tokenizer(chat),
        identity=f"tiny-llama-{seed}",
        device=dev,
        dtype=dtype,
        eos_ids=frozenset({1}),
    )


def reference_device() -> tuple[torch.device, torch.dtype]:
    """Where the engine-vs-reference tests run: ``INFERENCEGUARD_TEST_DEVICE`` (default cpu) and
    ``INFERENCEGUARD_TEST_DTYPE`` (default float32), so the same tests check CUDA and bf16 on a GPU machine
    (benchmarks/gpu_check.sh). An unusable choice fails loudly rather than skipping."""
    import os

    dev = torch.device(os.environ.get("INFERENCEGUARD_TEST_DEVICE", "cpu"))
    name = os.environ.get("INFERENCEGUARD_TEST_DTYPE", "float32")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"INFERENCEGUARD_TEST_DTYPE must name a torch dtype (float32, bfloat16), got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("INFERENCEGUARD_TEST_DEVICE=cuda, but torch sees no CUDA device")
    return dev, dtype


class _Biased(torch.nn.Module):
    def __init__(self, head: torch.nn.Linear, eos_boost: float):
        super().__init__()
        self.head, self.eos_boost = head, eos_boost
        self.weight = head.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.head(h)
        out[..., 1] += self.eos_boost
        return out


def tiny_bert_config(labels: list[str] | None = None, layers: int = 1, context: int = 128) -> BertConfig:
    """A tiny BERT over the byte vocabulary; ``labels`` adds a classification head (one label: a regression)."""
    torch.manual_seed(0)
    extra = {}
    if labels is not None:
        extra = dict(
            num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}
        )
    return BertConfig(
        vocab_size=259,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=context,
        pad_token_id=0,
        **extra,
    )


def save_lm(path, seed: int = 0) -> str:
    """A tiny random chat LM (``tiny_llama`` with the byte tokenizer), saved like a hub model folder."""
    tiny_llama(seed).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return str(path)


def save_classifier(path, labels: list[str], layers: int = 1, context: int = 128, pad: bool = True) -> str:
    """A tiny random BERT sequence classifier with the byte tokenizer, saved like a hub model folder."""
    BertForSequenceClassification(tiny_bert_config(labels, layers, context)).eval().save_pretrained(path)
    tok = byte_tokenizer(chat=False)
    if not pad:
        tok.pad_token = None
    tok.save_pretrained(path)
    return str(path)


def tiny_encoder(identity: str = "tiny-bert") -> Encoder:
    """A tiny random sentence encoder (BERT, mean pooling) over the byte vocabulary."""
    return Encoder(
        model=BertModel(tiny_bert_config()).eval(),
        tokenizer=byte_tokenizer(chat=False),
        identity=identity,
        device=torch.device("cpu"),
        max_length=128,
    )


def tiny_config(**extra) -> LlamaConfig:
    """The tiny Llama config of the score-model checkpoints (byte vocabulary, 2 layers)."""
    cfg = LlamaConfig(
        vocab_size=259,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    for k, v in extra.items():
        setattr(cfg, k, v)
    return cfg


def save_llama_for_score(path, score_type="cost", bias=True, head=True, seed=0, **config_extra):
    """A LlamaForScore folder as safe-rlhf saves it: llama config + score keys, backbone under 'model.*',
    'score_head.weight' (+ '.bias') and the normalizer buffers, one safetensors file, the tokenizer."""
    torch.manual_seed(seed)
    cfg = tiny_config()
    backbone = LlamaModel(cfg).eval()
    weights = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    w, b = torch.randn(1, cfg.hidden_size), torch.randn(1)
    if head:
        weights["score_head.weight"] = w
        if bias:
            weights["score_head.bias"] = b
    weights |= {"normalizer.mean": torch.zeros(1), "normalizer.var": torch.ones(1), "normalizer.count": torch.zeros(1)}
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = cfg.to_dict() | {
        "architectures": ["LlamaForScore"],
        "score_dim": 1,
        "bias": bias,
        "score_type": score_type,
        "do_normalize": False,
        "normalizer_type": "ExponentialMovingAverage",
        "momentum": 0.9,
    }
    (path / "config.json").write_text(json.dumps(config | config_extra), encoding="utf-8")
    byte_tokenizer(chat=False).save_pretrained(path)
    return path, backbone, w, b
