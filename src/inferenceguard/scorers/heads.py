"""A linear head on fixed features: standardise, then one linear layer; stored as safetensors + JSON.

The embedded scorers are such heads (fitted with scikit-learn at build time, run in pure torch). The
tensors live in ``<stem>.safetensors`` and everything else in ``<stem>.json``: the feature spec (what the
head reads), the threshold, what the output means, and the metrics measured when it was built. No pickle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from inferenceguard._io import ensure_dir, write_atomic, write_json
from inferenceguard.errors import AssetError, ConfigError

FORMAT = "inferenceguard.linear_head/1"
LINKS = ("sigmoid", "identity")
_TENSORS = ("mean", "scale", "coef", "intercept")


@dataclass
class LinearHead:
    """y = link(((x - mean) / scale) @ coef + intercept); link 'sigmoid' gives a probability, 'identity' a logit."""

    mean: torch.Tensor  # (F,) float32
    scale: torch.Tensor  # (F,) float32, > 0
    coef: torch.Tensor  # (F,) float32
    intercept: float
    kind: str  # e.g. "cost", "judge", "reward"
    name: str  # short name scorers report, e.g. "cost-probe"
    features: dict[str, Any]  # the feature spec; "dim" = F
    threshold: float | None = None
    link: str = "sigmoid"
    output: str = ""  # what the output means, e.g. "P(harmful response)"
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean, self.scale, self.coef = (
            torch.as_tensor(t, dtype=torch.float32).flatten() for t in (self.mean, self.scale, self.coef)
        )
        self.intercept = float(self.intercept)
        dim = self.coef.numel()
        if self.mean.numel() != dim or self.scale.numel() != dim:
            raise ConfigError(
                "head",
                f"<mean {self.mean.numel()}, scale {self.scale.numel()}, coef {dim}>",
                "must have mean, scale and coef of one length",
            )
        if self.features.get("dim", dim) != dim:
            raise ConfigError("features.dim", self.features.get("dim"), f"must equal the head's width {dim}")
        self.features = {**self.features, "dim": dim}
        if not bool((self.scale > 0).all()):
            raise ConfigError("scale", "<tensor>", "must be positive everywhere")
        if self.link not in LINKS:
            raise ConfigError("link", self.link, f"must be one of {', '.join(LINKS)}")
        if not all(bool(torch.isfinite(t).all()) for t in (self.mean, self.scale, self.coef)) or not math.isfinite(
            self.intercept
        ):
            raise ConfigError("head", "<tensors>", "must hold only finite numbers")

    @property
    def dim(self) -> int:
        return self.coef.numel()

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, F) -> (N,) float32 pre-link score."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError("features", f"<shape {tuple(x.shape)}>", f"must have shape (N, {self.dim})")
        x = x.to(torch.float32)
        return ((x - self.mean.to(x.device)) / self.scale.to(x.device)) @ self.coef.to(x.device) + self.intercept

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, F) -> (N,) float32 output (probability for 'sigmoid', logit for 'identity')."""
        z = self.logit(x)
        return torch.sigmoid(z) if self.link == "sigmoid" else z

    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "name": self.name,
            "features": self.features,
            "threshold": self.threshold,
            "link": self.link,
            "output": self.output,
            "metrics": self.metrics,
        }

    def save(self, stem: str | Path) -> tuple[Path, Path]:
        """Write ``<stem>.safetensors`` and ``<stem>.json`` (each atomically); returns both paths."""
        from safetensors.torch import save_file

        stem = Path(stem)
        ensure_dir(stem.parent)
        tensors = {
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": torch.tensor([self.intercept], dtype=torch.float32),
        }
        st, js = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
        write_atomic(st, lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, str(p)))
        write_json(js, self.config(), sort_keys=True)
        return st, js

    @classmethod
    def load(cls, path: str | Path) -> LinearHead:
        """Load from a stem, or either of its two files; a missing or corrupt file raises AssetError."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        stem = Path(path).expanduser()
        if stem.suffix in (".json", ".safetensors"):
            stem = stem.with_suffix("")
        st, js = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
        for p in (js, st):
            if not p.is_file():
                raise AssetError(f"the linear head file '{p}' does not exist")
        try:
            cfg = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AssetError(f"'{js}' is not a readable JSON head config: {e}") from e
        if not isinstance(cfg, Mapping) or cfg.get("format") != FORMAT:
            raise AssetError(f"'{js}' is not a linear head config (expected format '{FORMAT}')")
        try:
            t = load_file(str(st))
        except (OSError, SafetensorError) as e:
            raise AssetError(f"'{st}' is not a readable safetensors file: {e}") from e
        missing = [k for k in _TENSORS if k not in t]
        if missing:
            raise AssetError(f"'{st}' lacks the tensors {missing}")
        try:
            if t["intercept"].numel() != 1:
                raise ConfigError("intercept", f"<{t['intercept'].numel()} values>", "must be one number")
            return cls(
                mean=t["mean"],
                scale=t["scale"],
                coef=t["coef"],
                intercept=float(t["intercept"].item()),
                kind=str(cfg["kind"]),
                name=str(cfg.get("name") or stem.name),
                features=dict(cfg["features"]),
                threshold=cfg.get("threshold"),
                link=str(cfg.get("link", "sigmoid")),
                output=str(cfg.get("output", "")),
                metrics=dict(cfg.get("metrics") or {}),
            )
        except (ConfigError, KeyError, TypeError, ValueError) as e:
            raise AssetError(f"the linear head '{stem}' is inconsistent: {e}") from e
