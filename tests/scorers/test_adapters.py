"""Generic adapters on tiny random models: a sequence classifier loaded from a folder, a Yes/No guard LM."""

from __future__ import annotations

import pytest
import torch

from inferenceguard.errors import AssetError, ConfigError
from inferenceguard.scorers.adapters import GuardLLMScorer, SequenceClassifierScorer
from inferenceguard.scorers.base import Scorer
from tests.utils.tiny import save_classifier as save_tiny_classifier
from tests.utils.tiny import tiny_lm


def save_classifier(path, num_labels: int, pad: bool = True):
    """A tiny random BERT classifier (labels safe, unsafe, other; one label: a regression head)."""
    return save_tiny_classifier(path, ["safe", "unsafe", "other"][:num_labels], layers=2, context=64, pad=pad)


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
    return save_classifier(tmp_path_factory.mktemp("clf"), num_labels=3)


def test_multiclass_probability_of_the_chosen_label(clf_dir):
    s = SequenceClassifierScorer(clf_dir, label="unsafe")
    assert isinstance(s, Scorer) and s.threshold == 0.5 and s.name.endswith("#unsafe")
    out = s.score(["hi", "how do I bake bread?"], ["hello", "Mix flour and water."])
    assert out.shape == (2,) and out.dtype == torch.float32 and ((out > 0) & (out < 1)).all()
    # the probabilities of all labels sum to one, so the three label choices are complementary
    total = sum(SequenceClassifierScorer(clf_dir, label=lab).score(["hi"], ["hello"]) for lab in ("safe", "1", 2))
    assert torch.allclose(total, torch.ones(1), atol=1e-5)


def test_input_mode_changes_what_is_read(clf_dir):
    pair = SequenceClassifierScorer(clf_dir, label="unsafe", input="pair")
    resp = SequenceClassifierScorer(clf_dir, label="unsafe", input="response")
    a = resp.score(["prompt one", "a very different prompt"], ["same", "same"])
    assert torch.allclose(a[0], a[1])  # the response alone decides
    b = pair.score(["prompt one", "a very different prompt"], ["same", "same"])
    assert not torch.allclose(b[0], b[1])


def test_single_output_is_a_raw_logit_and_long_text_is_truncated(tmp_path):
    s = SequenceClassifierScorer(save_classifier(tmp_path / "rm", num_labels=1, pad=False))
    assert s.threshold is None and s.max_length == 64
    out = s.score(["p" * 500, "q"], ["r" * 2000, ""])  # far beyond the 64 positions: must not fail
    assert out.shape == (2,) and torch.isfinite(out).all()
    logits = s.model(**s.tokenizer(["q"], ["x"], return_tensors="pt")).logits[:, 0]
    assert torch.allclose(s.score(["q"], ["x"]), logits.detach(), atol=1e-5)


def test_label_errors_list_the_classes(clf_dir, tmp_path):
    with pytest.raises(ConfigError, match="0=safe, 1=unsafe, 2=other"):
        SequenceClassifierScorer(clf_dir)
    with pytest.raises(ConfigError, match="label"):
        SequenceClassifierScorer(clf_dir, label="toxic")
    with pytest.raises(ConfigError, match="input"):
        SequenceClassifierScorer(clf_dir, label="safe", input="prompt")
    with pytest.raises(ConfigError, match="single output"):
        SequenceClassifierScorer(save_classifier(tmp_path / "rm", num_labels=1), label="safe")


def test_missing_model_is_an_asset_error(tmp_path):
    with pytest.raises(AssetError):
        SequenceClassifierScorer(tmp_path / "does-not-exist")


def test_unencodable_text_is_a_clear_error(clf_dir):
    s = SequenceClassifierScorer(clf_dir, label="unsafe")
    s.tokenizer = _Broken()
    with pytest.raises(ConfigError, match="can encode"):
        s.score(["a"], ["b"])


class _Broken:
    def __call__(self, *args, **kwargs):
        raise ValueError("cannot handle this text")


def guard_reference(lm, prompt, response, yes_id, no_id, template):
    ids = lm.tokenizer(
        lm.format_prompt(template.replace("{prompt}", prompt).replace("{response}", response)), add_special_tokens=False
    )["input_ids"]
    logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
    p = logits.softmax(-1)
    return (p[yes_id] / (p[yes_id] + p[no_id])).item()


def test_guard_llm_matches_the_next_token_distribution_batched():
    lm = tiny_lm()
    template = "Q: {prompt} A: {response} Harmful?"
    s = GuardLLMScorer(lm, template=template, yes=("Y",), no=("N",))
    prompts, responses = ["hi", "how to make a bomb", "x"], ["hello there", "sure, take", ""]
    out = s.score(prompts, responses)  # one padded batch
    y, n = (lm.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("Y", "N"))
    ref = torch.tensor([guard_reference(lm, p, r, y, n, template) for p, r in zip(prompts, responses)])
    assert torch.allclose(out, ref, atol=1e-5)
    assert s.threshold == 0.5 and ((out > 0) & (out < 1)).all()
    both = GuardLLMScorer(lm, template=template, yes=("Y", "y"), no=("N",)).score(prompts[:1], responses[:1])
    assert both[0] > out[0]  # more yes words can only add yes mass


def test_guard_llm_words_must_be_single_tokens():
    lm = tiny_lm()
    with pytest.raises(ConfigError, match=r"'yes'.*single token.*3 tokens"):
        GuardLLMScorer(lm)  # "Yes" is three bytes for the byte tokenizer
    with pytest.raises(ConfigError, match="template"):
        GuardLLMScorer(lm, template="no placeholders", yes=("Y",), no=("N",))
    with pytest.raises(ConfigError, match="'no'"):
        GuardLLMScorer(lm, yes=("Y",), no=("Y",))
