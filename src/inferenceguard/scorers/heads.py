"""A head on fixed features: standardise, optionally project and expand with an RBF kernel, then one linear
layer; stored as safetensors + JSON.

The embedded scorers are such heads (fitted with scikit-learn at build time, run in pure torch): a logistic
regression is the plain form; a kernel machine (an RBF SVM on principal components, shipped where it wins on
dev: docs/scorers.md) adds a projection and a set of centres. The tensors live in ``<stem>.safetensors`` and
everything else in ``<stem>.json``: the feature spec (what the head reads), the threshold, what the output
means, and the metrics measured when it was built. No pickle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import torch

from inferenceguard._io import ensure_dir, write_atomic, write_json
from inferenceguard.errors import AssetError, ConfigError

FORMAT = "inferenceguard.linear_head/1"  # plain heads keep the first format, so their files are unchanged
FORMAT_KERNEL = "inferenceguard.linear_head/2"  # /1 plus a projection and/or RBF centres
LINKS = ("sigmoid", "identity")
KERNELS = ("rbf",)
_TENSORS = ("mean", "scale", "coef", "intercept")
_OPTIONAL = ("projection", "offset", "centers")


def _finite_number(x: object) -> TypeGuard[float]:
    """A JSON number that is finite as a float (not a bool, a string, or an integer too large for a float)."""
    try:
        return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)
    except OverflowError:
        return False


@dataclass
class LinearHead:
    """y = link(phi(((x - mean) / scale) @ projection + offset) @ coef + intercept).

    Without ``projection`` the map is the identity (a plain linear head on the standardised features); without
    ``centers`` phi is the identity, with them it is the RBF feature map ``exp(-gamma * |z - c_j|^2)`` over the
    centres (an SVM's support vectors: ``coef`` then holds the dual coefficients). Link 'sigmoid' gives a
    probability, 'identity' a logit."""

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
    projection: torch.Tensor | None = None  # (F, P) float32: standardised features -> P components
    offset: torch.Tensor | None = None  # (P,) float32, added after the projection (zeros when omitted)
    centers: torch.Tensor | None = None  # (S, W) float32, W = P (or F without a projection)
    gamma: float | None = None  # the RBF width; required with centers

    def __post_init__(self) -> None:
        self.mean, self.scale, self.coef = (
            torch.as_tensor(t, dtype=torch.float32).flatten() for t in (self.mean, self.scale, self.coef)
        )
        self.intercept = float(self.intercept)
        dim = self.mean.numel()
        if self.scale.numel() != dim:
            raise ConfigError(
                "head", f"<mean {dim}, scale {self.scale.numel()}>", "must have mean and scale of one length"
            )
        width = dim
        if self.projection is not None:
            self.projection = torch.as_tensor(self.projection, dtype=torch.float32)
            if self.projection.ndim != 2 or self.projection.shape[0] != dim:
                raise ConfigError(
                    "projection", f"<shape {tuple(self.projection.shape)}>", f"must have shape ({dim}, P)"
                )
            width = self.projection.shape[1]
            off = torch.zeros(width) if self.offset is None else self.offset
            self.offset = torch.as_tensor(off, dtype=torch.float32).flatten()
            if self.offset.numel() != width:
                raise ConfigError("offset", f"<{self.offset.numel()} values>", f"must have the projection's {width}")
        elif self.offset is not None:
            raise ConfigError("offset", "<tensor>", "needs a projection")
        if self.centers is not None:
            self.centers = torch.as_tensor(self.centers, dtype=torch.float32)
            if self.centers.ndim != 2 or self.centers.shape[1] != width:
                raise ConfigError("centers", f"<shape {tuple(self.centers.shape)}>", f"must have shape (S, {width})")
            g = self.gamma
            if not (_finite_number(g) and g > 0):
                raise ConfigError("gamma", g, "must be a positive number with RBF centres")
            self.gamma = float(g)
            width = self.centers.shape[0]
        elif self.gamma is not None:
            raise ConfigError("gamma", self.gamma, "needs RBF centres")
        if self.coef.numel() != width:
            raise ConfigError("coef", f"<{self.coef.numel()} values>", f"must have {width} (the features' map width)")
        if self.features.get("dim", dim) != dim:
            raise ConfigError("features.dim", self.features.get("dim"), f"must equal the head's width {dim}")
        self.features = {**self.features, "dim": dim}
        if not bool((self.scale > 0).all()):
            raise ConfigError("scale", "<tensor>", "must be positive everywhere")
        t = self.threshold
        if t is not None and not _finite_number(t):
            raise ConfigError("threshold", t, "must be a finite number or null")
        if self.link not in LINKS:
            raise ConfigError("link", self.link, f"must be one of {', '.join(LINKS)}")
        if not all(bool(torch.isfinite(t).all()) for t in self._tensors().values()) or not math.isfinite(
            self.intercept
        ):
            raise ConfigError("head", "<tensors>", "must hold only finite numbers")

    @property
    def dim(self) -> int:
        """The width of the features the head reads."""
        return self.mean.numel()

    @property
    def kernel(self) -> str | None:
        """The feature map's kernel ('rbf') or None for a head linear in its (projected) features."""
        return "rbf" if self.centers is not None else None

    def _tensors(self) -> dict[str, torch.Tensor]:
        t = {"mean": self.mean, "scale": self.scale, "coef": self.coef}
        t.update({k: v for k in _OPTIONAL if (v := getattr(self, k)) is not None})
        return t

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, F) -> (N,) float32 pre-link score."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError("features", f"<shape {tuple(x.shape)}>", f"must have shape (N, {self.dim})")
        x = x.to(torch.float32)
        z = (x - self.mean.to(x.device)) / self.scale.to(x.device)
        if self.projection is not None and self.offset is not None:
            z = z @ self.projection.to(x.device) + self.offset.to(x.device)
        if self.centers is not None and self.gamma is not None:
            c = self.centers.to(x.device)
            d2 = (z * z).sum(1, keepdim=True) - 2 * z @ c.T + (c * c).sum(1)
            z = torch.exp(-self.gamma * d2.clamp_min(0))
        return z @ self.coef.to(x.device) + self.intercept

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, F) -> (N,) float32 output (probability for 'sigmoid', logit for 'identity')."""
        z = self.logit(x)
        return torch.sigmoid(z) if self.link == "sigmoid" else z

    def config(self) -> dict[str, Any]:
        plain = self.projection is None and self.centers is None
        out = {
            "format": FORMAT if plain else FORMAT_KERNEL,
            "kind": self.kind,
            "name": self.name,
            "features": self.features,
            "threshold": self.threshold,
            "link": self.link,
            "output": self.output,
            "metrics": self.metrics,
        }
        if not plain:
            out["map"] = self._map()
        return out

    def _map(self) -> dict[str, Any]:
        """The feature map's shape as the JSON records it (checked against the tensors on load)."""
        return {
            "projection": None if self.projection is None else int(self.projection.shape[1]),
            "kernel": self.kernel,
            "gamma": self.gamma,
            "centers": None if self.centers is None else int(self.centers.shape[0]),
        }

    def save(self, stem: str | Path) -> tuple[Path, Path]:
        """Write ``<stem>.safetensors`` and ``<stem>.json`` (each atomically); returns both paths."""
        from safetensors.torch import save_file

        stem = Path(stem)
        ensure_dir(stem.parent)
        tensors = {**self._tensors(), "intercept": torch.tensor([self.intercept], dtype=torch.float32)}
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
        if not isinstance(cfg, Mapping) or cfg.get("format") not in (FORMAT, FORMAT_KERNEL):
            raise AssetError(f"'{js}' is not a linear head config (expected format '{FORMAT}' or '{FORMAT_KERNEL}')")
        fmap = (cfg.get("map") or {}) if cfg.get("format") == FORMAT_KERNEL else {}
        try:
            t = load_file(str(st))
        except (OSError, SafetensorError) as e:
            raise AssetError(f"'{st}' is not a readable safetensors file: {e}") from e
        if not isinstance(fmap, Mapping):
            raise AssetError(f"'{js}': 'map' must be an object")
        if cfg.get("format") == FORMAT_KERNEL:
            if not fmap or "kernel" not in fmap or "projection" not in fmap:
                raise AssetError(f"'{js}': a '{FORMAT_KERNEL}' head needs a 'map' with 'kernel' and 'projection'")
            if fmap["kernel"] not in (None, *KERNELS):
                raise AssetError(f"'{js}': unknown kernel {fmap['kernel']!r} (expected one of {', '.join(KERNELS)})")
        wanted = [
            *_TENSORS,
            *(["projection", "offset"] if fmap.get("projection") else []),
            *(["centers"] if fmap.get("kernel") else []),
        ]
        missing = [k for k in wanted if k not in t]
        if missing:
            raise AssetError(f"'{st}' lacks the tensors {missing}")
        try:
            if t["intercept"].numel() != 1:
                raise ConfigError("intercept", f"<{t['intercept'].numel()} values>", "must be one number")
            head = cls(
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
                projection=t.get("projection") if fmap.get("projection") else None,
                offset=t.get("offset") if fmap.get("projection") else None,
                centers=t.get("centers") if fmap.get("kernel") else None,
                gamma=fmap.get("gamma") if fmap.get("kernel") else None,
            )
        except (ConfigError, KeyError, TypeError, ValueError, OverflowError) as e:
            raise AssetError(f"the linear head '{stem}' is inconsistent: {e}") from e
        if fmap and head._map() != {k: fmap.get(k) for k in ("projection", "kernel", "gamma", "centers")}:
            raise AssetError(f"'{js}': its 'map' {dict(fmap)} does not match its tensors {head._map()}")
        return head
