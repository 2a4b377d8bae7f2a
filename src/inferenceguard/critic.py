"""The latent critic (method.md §4): a small MLP on the base LM's last hidden state and the normalised safety
state, with two heads: p_safe (will this trajectory end within budget?) and V_task (the final reward to
expect). It reads the vector the engine already computed while sampling, so scoring a candidate costs one
tiny matrix product instead of a reward-model call.

Stored as ``critic.safetensors`` (tensors only) + ``critic.json`` (what it was trained on, for which base
model, with which metrics); no pickle. ``load_critic(path_or_"default", lm)`` refuses a critic trained for
another base model or hidden size (:class:`CriticMismatchError`) and a damaged file (:class:`AssetError`).
Trained by :mod:`inferenceguard.training.train_critic` (``inferenceguard train-critic``).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, TypeVar

import torch

from inferenceguard._io import ensure_dir, sweep_temps, write_atomic, write_json
from inferenceguard.errors import AssetError, ConfigError, CriticMismatchError
from inferenceguard.models.loading import LM

FORMAT = "inferenceguard.critic/1"
ASSET_DIR = Path(__file__).resolve().parent / "assets" / "critic"
WEIGHTS, CONFIG = "critic.safetensors", "critic.json"
Z_RANGE = (0.0, 1.0)  # z/d of an open state (z >= 0); anything below is already over budget
_REQUIRED = ("format", "base_identity", "hidden_size", "width", "depth", "value_mean", "value_scale", "sha256")


class LatentCritic(torch.nn.Module):
    """A trunk on the standardised hidden state, then two heads:

        g = MLP((h - mean) / scale)                          (R, W)
        p_safe = sigmoid(sharpness(g) * (z/d - need(g)))     monotone in the budget left
        V = value_mean + value_scale * Linear([g, z/d])

    The safety head reads like the Sauté constraint it predicts: a trajectory ends within budget iff its
    future charges fit in what is left, so the trunk estimates the share of the budget this state still
    ``need``s and how sure it is (``sharpness`` > 0); more budget left never lowers p_safe. (A plain MLP on
    [h, z/d] over-fitted the hidden state and ranked held-out states worse than z/d alone.)

    Over-budget states are absorbing (safety costs are non-negative, so z < 0 never recovers): for them
    p_safe is 0 by construction, and the network is trained on open states (z >= 0) only.
    """

    def __init__(
        self,
        hidden_size: int,
        width: int = 32,
        depth: int = 1,
        dropout: float = 0.5,
        base_identity: str = "",
        meta: dict[str, Any] | None = None,
    ):
        super().__init__()
        if hidden_size < 1 or width < 1 or depth < 1:
            raise ConfigError("critic", (hidden_size, width, depth), "needs hidden_size, width, depth >= 1")
        if not 0 <= dropout < 1:
            raise ConfigError("dropout", dropout, "must be in [0, 1)")
        self.hidden_size, self.width, self.depth, self.dropout = hidden_size, width, depth, dropout
        self.base_identity = base_identity
        self.meta: dict[str, Any] = dict(meta or {})
        self.register_buffer("feature_mean", torch.zeros(hidden_size))  # (H,)
        self.register_buffer("feature_scale", torch.ones(hidden_size))  # (H,)
        self.register_buffer("value_stats", torch.tensor([0.0, 1.0]))  # V = mean + scale * head output
        layers: list[torch.nn.Module] = [torch.nn.Dropout(dropout / 2)]
        dim = hidden_size
        for _ in range(depth):
            layers += [torch.nn.Linear(dim, width), torch.nn.GELU(), torch.nn.Dropout(dropout)]
            dim = width
        self.trunk = torch.nn.Sequential(*layers)
        self.safe_head = torch.nn.Linear(width, 2)  # [need, sharpness before softplus]
        self.value_head = torch.nn.Linear(width + 1, 1)
        with torch.no_grad():  # start as "half the budget needed, moderately sure"
            self.safe_head.bias.copy_(torch.tensor([0.5, 5.0]))

    def forward(self, h: torch.Tensor, z_frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (R, H) float32, z/d (R,) -> (safe logit (R,), standardised value (R,)); no absorbing rule."""
        g = self.trunk((h - self.feature_mean) / self.feature_scale)  # (R, W)
        z = z_frac.clamp(*Z_RANGE)  # (R,)
        need, sharp = self.safe_head(g).unbind(-1)  # (R,), (R,)
        logit = torch.nn.functional.softplus(sharp) * (z - need)
        value = self.value_head(torch.cat([g, z[:, None]], -1)).squeeze(-1)
        return logit, value

    @torch.inference_mode()
    def evaluate(self, h: torch.Tensor, z_frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's Critic protocol: h (R, H), z/d (R,) -> (p_safe (R,), value (R,)) on h's device."""
        if h.ndim != 2 or h.shape[1] != self.hidden_size:
            raise ConfigError("h", tuple(h.shape), f"must be (R, {self.hidden_size}) hidden states")
        dev = self.feature_mean.device
        zf = z_frac.to(dev, torch.float32)
        logit, v = self.forward(h.to(dev, torch.float32), zf)
        p_safe = torch.where(zf >= 0, torch.sigmoid(logit), torch.zeros_like(logit))
        value = self.value_stats[0] + self.value_stats[1] * v
        return p_safe.to(h.device), value.to(h.device)

    def set_value_stats(self, mean: float, scale: float) -> None:
        self.value_stats.copy_(torch.tensor([float(mean), float(scale)]))

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "critic"))


# ---- save / load ---------------------------------------------------------------------------------------------


def _files(path: str | Path) -> tuple[Path, Path]:
    """(weights, config) for a critic folder, or for either of its two files."""
    p = Path(path).expanduser()
    if p.suffix in (".json", ".safetensors"):
        p = p.parent
    return p / WEIGHTS, p / CONFIG


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_critic(critic: LatentCritic, folder: str | Path) -> Path:
    """Write ``critic.safetensors`` and ``critic.json`` into ``folder`` (each atomically); returns the folder."""
    from safetensors.torch import save_file

    folder = ensure_dir(Path(folder).expanduser())
    weights, config = _files(folder)
    sweep_temps(folder, (weights.name, config.name))  # what a kill in mid-save left (the folder is the user's)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in critic.state_dict().items()}
    bad = [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise ConfigError("critic", bad[0], "has non-finite weights; refusing to save it")
    write_atomic(weights, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}))
    digest = _sha256(weights)
    meta = dict(critic.meta)
    meta.update(
        format=FORMAT,
        base_identity=critic.base_identity,
        hidden_size=critic.hidden_size,
        width=critic.width,
        depth=critic.depth,
        dropout=critic.dropout,
        value_mean=float(critic.value_stats[0]),
        value_scale=float(critic.value_stats[1]),
        sha256=digest,
    )
    write_json(config, meta)
    return folder


def read_critic_config(path: str | Path) -> dict[str, Any]:
    """The JSON half of a critic (no tensors loaded); AssetError when missing or unreadable."""
    _, config = _files(path)
    if not config.is_file():
        raise AssetError(
            f"no critic at '{config.parent}': '{CONFIG}' is missing "
            "(train one with: inferenceguard train-critic --out DIR)"
        )
    try:
        meta = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AssetError(f"the critic config '{config}' is corrupt ({e}); retrain or reinstall it") from e
    if not isinstance(meta, dict):
        raise AssetError(f"the critic config '{config}' is not a JSON object; retrain or reinstall it")
    if meta.get("format") != FORMAT:
        raise AssetError(f"'{config}' is not a critic in format '{FORMAT}' (format: {meta.get('format')!r})")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise AssetError(f"the critic config '{config}' lacks {', '.join(missing)}; retrain or reinstall it")
    return meta


def fit_problem(base_identity: Any, hidden_size: Any, lm: LM) -> str | None:
    """Why a critic trained on ``base_identity``, reading hidden states of ``hidden_size`` (None: not known),
    cannot read ``lm``'s hidden states; None when it can. The one "critic fits this LM" rule, for a critic
    file (``check_fits``) and a critic in hand (``require_critic``) alike."""
    if base_identity != lm.identity:
        return f"was trained on base model '{base_identity}', not on '{lm.identity}'"
    if hidden_size is not None and int(hidden_size) != lm.hidden_size:
        return (
            f"reads hidden states of size {hidden_size}, but the model '{lm.identity}' has hidden size {lm.hidden_size}"
        )
    return None


def check_fits(meta: dict[str, Any], lm: LM, where: str = "critic") -> None:
    """CriticMismatchError unless the critic file described by ``meta`` fits this LM (``fit_problem``)."""
    why = fit_problem(meta["base_identity"], meta["hidden_size"], lm)
    if why is not None:
        raise CriticMismatchError(
            f"the {where} {why}: its hidden-state inputs would be meaningless. Train one for this model with: "
            "inferenceguard train-critic --model ... --out DIR, then pass --critic DIR"
        )


C = TypeVar("C")


def require_critic(critic: C | None, lm: LM, method: str) -> C:
    """The critic ``method`` reads, checked before it is used (``strategies.bind``, the engine): a ConfigError
    naming 'critic' when there is none, or when it does not fit ``lm`` (``fit_problem``)."""
    if critic is None:
        raise ConfigError(
            "critic",
            None,
            f"must be available: method '{method}' needs a critic, and none fits the base model '{lm.identity}' "
            "(train one with `inferenceguard train-critic`, pass --critic FILE, or pick a method without a critic)",
        )
    identity = getattr(critic, "base_identity", lm.identity)
    why = fit_problem(identity, getattr(critic, "hidden_size", None), lm)
    if why is not None:
        raise ConfigError(
            "critic",
            identity,
            f"must be trained on the base model in use ('{lm.identity}') for method '{method}': it {why}",
        )
    return critic


def load_critic(path: str | Path, lm: LM | None = None) -> LatentCritic:
    """Load a critic folder (or ``"default"``, the shipped one) onto the LM's device, checking that it was
    trained for this LM. ``lm=None`` skips the check and loads on the CPU (for inspection)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = ASSET_DIR if str(path) == "default" else _files(path)[1].parent
    weights, config = _files(folder)
    where = "shipped default critic" if str(path) == "default" else f"critic '{folder}'"
    meta = read_critic_config(folder)
    if lm is not None:
        check_fits(meta, lm, where)
    if not weights.is_file():
        raise AssetError(f"the {where} has no weights: '{weights}' is missing; retrain or reinstall it")
    if _sha256(weights) != meta["sha256"]:
        raise AssetError(
            f"'{weights}' does not match the checksum in '{config}' (corrupt or replaced); retrain or reinstall it"
        )
    try:
        tensors = load_file(str(weights))
        critic = LatentCritic(
            int(meta["hidden_size"]),
            int(meta["width"]),
            int(meta["depth"]),
            float(meta.get("dropout", 0.0)),
            base_identity=str(meta["base_identity"]),
            meta=meta,
        )
        critic.load_state_dict(tensors, strict=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as e:
        raise AssetError(f"cannot read the {where} from '{weights}': {e}") from e
    if not all(bool(torch.isfinite(v).all()) for v in critic.state_dict().values()):
        raise AssetError(f"'{weights}' holds non-finite weights; retrain or reinstall it")
    critic.eval()
    return critic.to(lm.device) if lm is not None else critic


def default_critic_info() -> dict[str, Any] | None:
    """What ``inferenceguard info --json`` shows about the shipped critic (None when none ships)."""
    if not (ASSET_DIR / CONFIG).is_file():
        return None
    try:
        meta = read_critic_config(ASSET_DIR)
    except AssetError as e:
        return {"name": "default", "error": str(e)}
    metrics = meta.get("metrics", {})
    info = {
        "name": meta.get("name", "default"),
        "base_model": meta["base_identity"],
        "hidden_size": meta["hidden_size"],
        "layer": meta.get("layer"),
        "block": meta.get("block"),
        "budget_range": meta.get("budget_range"),
        "gamma": meta.get("gamma"),
        "val_p_safe_auc": metrics.get("p_safe_auc"),
        "val_p_safe_auc_all_states": metrics.get("p_safe_auc_all_states"),
        "val_p_safe_ece": metrics.get("p_safe_ece"),
        "val_value_spearman": metrics.get("value_spearman"),
        "val_value_r2": metrics.get("value_r2"),
        "data": meta.get("data"),
        "path": str(ASSET_DIR),
    }
    return {k: v for k, v in info.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
