"""One factory for every scorer a user can name, and a cheap description of the embedded defaults."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from inferenceguard.errors import AssetError, ConfigError
from inferenceguard.models.loading import LM, Encoder, load_lm, resolve_lm_source
from inferenceguard.scorers.adapters import GuardLLMScorer, SequenceClassifierScorer
from inferenceguard.scorers.base import Scorer
from inferenceguard.scorers.embedded import (
    ASSET_DIR,
    ENCODER_FEATURES,
    HEAD_FILES,
    PROBE_FEATURES,
    EncoderHeadScorer,
    ProbeCostScorer,
    default_head_path,
)
from inferenceguard.scorers.guards import GUARD_PRESETS, GuardScorer, load_guard_lm
from inferenceguard.scorers.heads import LinearHead
from inferenceguard.scorers.score_model import ScoreModelScorer

ROLES = ("reward", "cost", "judge")
FORMS = (
    "None or 'default' (the embedded scorer), 'hf-seq:SOURCE[#LABEL]' (a sequence classifier: hub id or "
    "folder), 'guard-llm:SOURCE' (a causal LM asked 'is it harmful? Yes/No'; cost or judge only), "
    "'score-model:SOURCE' (a safe-rlhf LlamaForScore or one-output causal-LM reward model, e.g. "
    "PKU-Alignment/beaver-7b-v1.0-cost), 'guard:FAMILY:SOURCE' (a guard model through its own chat template, "
    f"FAMILY one of {', '.join(GUARD_PRESETS)}; cost or judge only), a "
    "linear head (.json/.safetensors file or its stem), a folder with a head manifest.json or a "
    "sequence-classifier config.json, or a Scorer object"
)
_HEAD_KINDS = {"reward": ("reward",), "cost": ("cost", "judge"), "judge": ("cost", "judge")}
_MANIFEST_KEYS = {"reward": "reward_model", "cost": "cost_model", "judge": "judge"}


PREFIXES = ("hf-seq:", "guard-llm:", "score-model:", "guard:")  # spec forms that name a source after a prefix


def absolute_spec(spec: str | None) -> str | None:
    """``spec`` with the local file or folder it names made absolute (the prefix, a guard family and a
    ``#LABEL`` kept), so the same spec read on another machine's worker, in another folder, names the same
    files; a hub id, 'default' or None is returned as it is."""
    if spec is None:
        return None
    head, rest = "", spec
    for prefix in PREFIXES:
        if spec.startswith(prefix):
            head, rest = prefix, spec[len(prefix) :]
            break
    if head == "guard:" and ":" in rest:
        family, _, rest = rest.partition(":")
        head += family + ":"
    source, hash_, label = rest.partition("#") if head == "hf-seq:" else (rest, "", "")
    path = Path(source).expanduser()
    if not source or not path.exists():
        return spec
    return f"{head}{path.resolve()}{hash_}{label}"


def load_scorer(
    spec: str | Scorer | None,
    role: str,
    lm: LM | None = None,
    device: str | torch.device | None = None,
    encoder: Encoder | None = None,
) -> Scorer:
    """The scorer for ``role`` ('reward', 'cost' or 'judge') named by ``spec`` (see ``FORMS``).

    ``lm`` (the engine's base LM) and ``encoder`` are reused instead of loading a second copy whenever a
    scorer needs that same model, e.g. the embedded cost probe on the embedded base LM.
    """
    if role not in ROLES:
        raise ConfigError("role", role, f"must be one of {', '.join(ROLES)}")
    if spec is not None and not isinstance(spec, str):
        if isinstance(spec, Scorer):
            return spec
        raise ConfigError(role, spec, f"must be {FORMS}")
    if spec is None or spec.strip() in ("", "default"):
        return _from_head(LinearHead.load(default_head_path(role)), role, lm, device, encoder)
    if spec.startswith("hf-seq:"):
        source, _, label = spec[len("hf-seq:") :].partition("#")
        if not source:
            raise ConfigError(role, spec, "must name a model after 'hf-seq:', e.g. 'hf-seq:./my-rm#LABEL'")
        return SequenceClassifierScorer(source, label=label or None, device=device)
    if spec.startswith("guard-llm:"):
        source = spec[len("guard-llm:") :]
        _harm_only(role, spec, "guard-llm:")
        if not source:
            raise ConfigError(role, spec, "must name a causal LM after 'guard-llm:'")
        return GuardLLMScorer(_lm_for(source, lm, lambda s: load_lm(s, device=device)))
    if spec.startswith("score-model:"):
        return _score_model(spec, role, device)
    if spec.startswith("guard:"):
        return _guard(spec, role, lm, device)
    path = Path(spec).expanduser()
    if path.suffix in (".json", ".safetensors") or path.with_name(path.name + ".json").is_file():
        return _from_head(LinearHead.load(path), role, lm, device, encoder)
    if path.is_dir() and (path / "manifest.json").is_file():
        return _from_head(LinearHead.load(path / HEAD_FILES[role]), role, lm, device, encoder)
    if path.is_dir() and (path / "config.json").is_file():
        return SequenceClassifierScorer(path, device=device)
    raise ConfigError(role, spec, f"must be {FORMS}")


def _score_model(spec: str, role: str, device: str | torch.device | None) -> Scorer:
    """'score-model:SOURCE': a cost model serves as cost or judge, a reward model as reward (by its score_type)."""
    source = spec[len("score-model:") :]
    if not source:
        raise ConfigError(
            role, spec, "must name a model after 'score-model:', e.g. 'score-model:./beaver-7b-v1.0-cost'"
        )
    scorer = ScoreModelScorer(source, device=device)
    want = "reward" if role == "reward" else "cost"
    if scorer.kind != want:
        raise ConfigError(
            role,
            spec,
            f"must be a {want} model: '{source}' is a {scorer.kind} model (its score_type); "
            f"use it for the {'reward model' if scorer.kind == 'reward' else 'cost model or the judge'}",
        )
    return scorer


def _guard(spec: str, role: str, lm: LM | None, device: str | torch.device | None) -> Scorer:
    """'guard:FAMILY:SOURCE': a guard model read through its family's preset (cost or judge only)."""
    family, _, source = spec[len("guard:") :].partition(":")
    _harm_only(role, spec, "guard:")
    if family not in GUARD_PRESETS:
        raise ConfigError(role, spec, f"must name a guard family after 'guard:', one of {', '.join(GUARD_PRESETS)}")
    if not source:
        raise ConfigError(role, spec, f"must name a model after 'guard:{family}:', e.g. 'guard:{family}:./my-guard'")
    return GuardScorer(_lm_for(source, lm, lambda s: load_guard_lm(s, device=device)), GUARD_PRESETS[family])


def _harm_only(role: str, spec: str, prefix: str) -> None:
    """A harm classifier (``prefix`` spec) cannot be the reward model."""
    if role == "reward":
        raise ConfigError(
            role, spec, f"must be a helpfulness scorer: '{prefix}' scores harm; use it for the cost model or the judge"
        )


def _lm_for(source: str, lm: LM | None, load: Callable[[str], LM]) -> LM:
    """The engine's own LM when ``source`` names that same model (no second copy), else ``load(source)``."""
    return lm if lm is not None and resolve_lm_source(source)[1] == lm.identity else load(source)


def _from_head(
    head: LinearHead, role: str, lm: LM | None, device: str | torch.device | None, encoder: Encoder | None
) -> Scorer:
    """The scorer that runs a linear head, sharing ``lm``/``encoder`` when they are the head's model."""
    if head.kind not in _HEAD_KINDS[role]:
        raise ConfigError(
            role,
            head.name,
            f"must be a head of kind {' or '.join(_HEAD_KINDS[role])}, this one is a '{head.kind}' head",
        )
    kind = head.features.get("type")
    if kind == PROBE_FEATURES:
        same = lm is not None and lm.identity == head.features.get("base_identity")
        return ProbeCostScorer(head, lm=lm if same else None, device=device)
    if kind == ENCODER_FEATURES:
        same = encoder is not None and encoder.identity == head.features.get("encoder_identity")
        return EncoderHeadScorer(head, role=role, encoder=encoder if same else None, device=device)
    raise AssetError(
        f"the head '{head.name}' reads unknown features '{kind}'; expected '{PROBE_FEATURES}' or '{ENCODER_FEATURES}'"
    )


def default_stack_info(asset_dir: str | Path = ASSET_DIR) -> dict[str, dict[str, Any]]:
    """Name, threshold, held-out AUC and provenance of the embedded reward model, cost model and judge,
    read from the shipped ``manifest.json`` (no model is loaded)."""
    path = Path(asset_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AssetError(
            f"cannot read the scorer manifest '{path}' ({e}); rebuild it with: inferenceguard build-scorers"
        ) from e
    keep = (
        "name",
        "file",
        "threshold",
        "heldout_auc",
        "heldout_rows",
        "heldout_auc_rows",
        "output",
        "link",
        "heldout_by_source",
        "cross_set_auc",
        "heldout_auc_meaning",
        "test_auc",
        "replaced_head_test_auc",
        "heldout_auc_first_reading",
        "heldout_targets_changed",
    )
    out: dict[str, dict[str, Any]] = {}
    for key in _MANIFEST_KEYS.values():
        entry = manifest.get(key)
        if not isinstance(entry, dict):
            raise AssetError(
                f"the scorer manifest '{path}' has no '{key}' entry; rebuild it with: inferenceguard build-scorers"
            )
        out[key] = {k: entry[k] for k in keep if k in entry} | {
            "source": "embedded",
            "built": manifest.get("built"),
            "rebuild": manifest.get("command"),
        }
    return out
