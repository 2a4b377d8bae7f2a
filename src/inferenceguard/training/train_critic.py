"""Train the latent critic (method.md §4) on stored rollouts, and the ``train-critic`` pipeline.

Targets (choices, see docs/critic.md):
- p_safe: binary cross-entropy on the terminal safety label under a budget d, i.e. C_final <= d, where C is
  the cumulative safety charge (rollouts.py). Input z/d = (d - C_k) / d. d is drawn uniformly from
  ``budget_range`` for every state and epoch (``budget_draws`` draws each), so one critic serves a range of
  budgets. Only open states (z >= 0) are trained and scored: an over-budget state never recovers (costs are
  non-negative), the critic returns p_safe = 0 for it by construction.
- V_task: regression onto the Monte-Carlo target gamma^(S-1-k) * R, the final reward discounted by the
  blocks still to come (S blocks in the rollout, k = 0..S-1), standardised with the training mean and sd.

Split by prompt (stratified by prompt source): no prompt's rollouts sit on both sides. Early stopping on the
validation loss (BCE + value MSE), keeping the best epoch. Validation metrics use a fixed budget grid.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inferenceguard.critic import LatentCritic
from inferenceguard.errors import ConfigError
from inferenceguard.stats import auc
from inferenceguard.training.rollouts import RolloutData

VAL_GRID = 5  # budgets on which validation metrics are measured, evenly spaced over budget_range


@dataclass(frozen=True)
class TrainConfig:
    """How the critic is fitted (defaults sized for a few thousand states on a CPU)."""

    budget_range: tuple[float, float] | None = None  # None: (0.75, 1.25) x the rollouts' budget d0
    gamma: float = 0.999  # discount of the value target (paper: 0.999)
    width: int = 32
    depth: int = 1
    dropout: float = 0.5
    lr: float = 3e-4
    weight_decay: float = 0.1
    batch_size: int = 256
    epochs: int = 100
    patience: int = 10
    val_share: float = 0.2
    budget_draws: int = 4  # budgets drawn per training state per epoch
    value_weight: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.budget_range is not None:
            lo, hi = self.budget_range
            if not 0 < lo <= hi:
                raise ConfigError("budget_range", self.budget_range, "must be (lo, hi) with 0 < lo <= hi")
        if not 0 < self.gamma <= 1:
            raise ConfigError("gamma", self.gamma, "must be in (0, 1]")
        if not 0 < self.val_share < 1:
            raise ConfigError("val_share", self.val_share, "must be between 0 and 1")
        for name in ("width", "depth", "batch_size", "epochs", "patience", "budget_draws"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(name, v, "must be an integer >= 1")
        if not self.lr > 0:
            raise ConfigError("lr", self.lr, "must be > 0")


# ---- split and examples --------------------------------------------------------------------------------------


def split_prompts(sources: list[str], share: float, seed: int) -> np.ndarray:
    """(P,) bool: True for validation prompts; a seeded ``share`` of each source, at least one prompt each side."""
    n = len(sources)
    if n < 2:
        raise ConfigError(
            "rollouts",
            f"<{n} prompt>",
            "must cover at least 2 prompts to split train/validation by prompt; collect more",
        )
    val = np.zeros(n, dtype=bool)
    rng = random.Random(seed)
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        by_source.setdefault(s, []).append(i)
    for idx in by_source.values():
        rng.shuffle(idx)
        val[idx[: round(share * len(idx))] if len(idx) > 1 else []] = True
    if not val.any():
        val[rng.randrange(n)] = True
    if val.all():
        val[rng.randrange(n)] = False
    return val


@dataclass
class Examples:
    """(state, budget) pairs: E rows."""

    h: torch.Tensor  # (E, H)
    z_frac: torch.Tensor  # (E,) (d - C_k) / d, in [0, 1]
    safe: torch.Tensor  # (E,) float 1 = ends within budget d
    value: torch.Tensor  # (E,) discounted reward target (raw units)


def _value_target(data: RolloutData, gamma: float) -> torch.Tensor:
    """(M,) gamma^(S-1-k) * R of each state's rollout."""
    S = data.steps[data.rollout]
    return gamma ** (S - 1 - data.step).double() * data.reward[data.rollout].double()


def examples(data: RolloutData, states: torch.Tensor, budgets: torch.Tensor, gamma: float) -> Examples:
    """Pair every state in ``states`` (K,) with its budgets (K, D); keep the open pairs (C_k <= d)."""
    st = states[:, None].expand_as(budgets).reshape(-1)  # (K*D,)
    d = budgets.reshape(-1).float()
    c = data.charge[st]
    open_ = c <= d
    st, d, c = st[open_], d[open_], c[open_]
    safe = (data.final_charge[data.rollout[st]] <= d).float()
    return Examples(h=data.h[st], z_frac=(d - c) / d, safe=safe, value=_value_target(data, gamma)[st].float())


# ---- metrics -------------------------------------------------------------------------------------------------


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    edges = np.minimum((p * bins).astype(int), bins - 1)
    err = sum(
        abs(p[edges == b].mean() - y[edges == b].mean()) * (edges == b).sum() for b in range(bins) if (edges == b).any()
    )
    return round(float(err / max(len(y), 1)), 4)


def metrics(critic: LatentCritic, ex: Examples, value_mean: float, value_scale: float) -> dict[str, Any]:
    """Validation metrics of the p_safe and value heads on open (state, budget) pairs."""
    from scipy.stats import spearmanr

    critic.eval()
    with torch.inference_mode():
        logit, v = critic(ex.h, ex.z_frac)
    y, p = ex.safe.numpy(), torch.sigmoid(logit).double().numpy()
    bce = float(torch.nn.functional.binary_cross_entropy_with_logits(logit, ex.safe))
    vt = ((ex.value - value_mean) / value_scale).double().numpy()
    vp = v.double().numpy()
    mse = float(np.mean((vp - vt) ** 2))
    var = float(np.var(vt))
    rho = spearmanr(vp, vt).statistic if len(vt) > 2 and np.std(vt) > 0 and np.std(vp) > 0 else float("nan")
    return {
        "loss": round(bce + mse, 4),
        "p_safe_bce": round(bce, 4),
        "p_safe_auc": auc(y, p),
        "p_safe_auc_z_only": auc(y, ex.z_frac.double().numpy()),  # budget accounting alone, for comparison
        "p_safe_ece": ece(y, p),
        "p_safe_brier": round(float(np.mean((p - y) ** 2)), 4),
        "p_safe_accuracy": round(float(np.mean((p >= 0.5) == (y == 1))), 4),
        "safe_rate": round(float(y.mean()), 4),
        "value_spearman": None if math.isnan(rho) else round(float(rho), 4),
        "value_r2": round(1 - mse / var, 4) if var > 0 else None,
        "pairs": len(y),
    }


# ---- training ------------------------------------------------------------------------------------------------


@dataclass
class Trained:
    critic: LatentCritic
    metrics: dict[str, Any]  # best epoch, validation
    history: list[dict[str, Any]]


@contextmanager
def one_thread() -> Iterator[None]:
    """Run small models' many tiny matrix products on one thread (restored after): on a busy 2-core CPU,
    two intra-op threads made critic training about 15x slower, not faster (the tests' tiny models too)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_critic(data: RolloutData, cfg: TrainConfig = TrainConfig(), progress: bool = True) -> Trained:
    """Fit the two-head critic on ``data`` with a by-prompt split and early stopping; returns the best epoch's
    critic with its metadata (see ``critic.meta``) and the per-epoch validation metrics."""
    with one_thread():
        return _train(data, cfg, progress)


def _train(data: RolloutData, cfg: TrainConfig, progress: bool) -> Trained:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    d0 = float(data.meta.get("budget", 1.0))
    lo, hi = cfg.budget_range or (0.75 * d0, 1.25 * d0)
    val_prompt = torch.from_numpy(split_prompts(data.sources, cfg.val_share, cfg.seed))
    state_val = val_prompt[data.prompt[data.rollout]]  # (M,) bool
    tr_states, va_states = (~state_val).nonzero().squeeze(1), state_val.nonzero().squeeze(1)
    if len(tr_states) == 0 or len(va_states) == 0:
        raise ConfigError("rollouts", f"<{len(data.prompts)} prompts>", "leave no states on one side of the split")
    grid = torch.linspace(lo, hi, VAL_GRID) if hi > lo else torch.tensor([lo])
    val = examples(data, va_states, grid[None].expand(len(va_states), -1), cfg.gamma)
    if len(val.safe) == 0:
        raise ConfigError("budget_range", (lo, hi), "leaves no validation state within budget; raise it")
    gen = torch.Generator().manual_seed(cfg.seed)
    targets = _value_target(data, cfg.gamma)[tr_states]
    v_mean, v_scale = float(targets.mean()), float(targets.std()) if len(targets) > 1 else 1.0
    v_scale = v_scale if v_scale > 1e-8 else 1.0
    feats = data.h[tr_states]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        critic = LatentCritic(
            data.hidden_size, cfg.width, cfg.depth, cfg.dropout, base_identity=str(data.meta.get("base_identity", ""))
        )
    critic.feature_mean.copy_(feats.mean(0))
    critic.feature_scale.copy_(feats.std(0).clamp(min=1e-4) if len(feats) > 1 else torch.ones(data.hidden_size))
    critic.set_value_stats(v_mean, v_scale)
    opt = torch.optim.AdamW(critic.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best: tuple[float, int, dict[str, torch.Tensor], dict[str, Any]] | None = None
    history: list[dict[str, Any]] = []
    bar = tqdm(range(1, cfg.epochs + 1), desc="critic", unit="epoch", disable=not progress)
    for epoch in bar:
        budgets = lo + (hi - lo) * torch.rand(len(tr_states), cfg.budget_draws, generator=gen)
        ex = examples(data, tr_states, budgets, cfg.gamma)
        critic.train()
        order = torch.randperm(len(ex.safe), generator=gen)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed * 7919 + epoch)  # dropout masks
            for i in range(0, len(order), cfg.batch_size):
                b = order[i : i + cfg.batch_size]
                logit, v = critic(ex.h[b], ex.z_frac[b])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, ex.safe[b])
                loss = loss + cfg.value_weight * torch.nn.functional.mse_loss(v, (ex.value[b] - v_mean) / v_scale)
                opt.zero_grad()
                loss.backward()
                opt.step()
        m = {"epoch": epoch, **metrics(critic, val, v_mean, v_scale)}
        history.append(m)
        bar.set_postfix(val_loss=m["loss"], auc=m["p_safe_auc"], rho=m["value_spearman"])
        if best is None or m["loss"] < best[0]:
            best = (m["loss"], epoch, {k: v.clone() for k, v in critic.state_dict().items()}, m)
        elif epoch - best[1] >= cfg.patience:
            break
    bar.close()
    assert best is not None
    critic.load_state_dict(best[2])
    critic.eval()
    final = dict(best[3])
    final.update(_auc_views(critic, data, va_states, d0, (lo, hi), cfg.gamma, v_mean, v_scale))
    critic.meta = _meta(data, cfg, (lo, hi), d0, val_prompt, final, history, time.perf_counter() - t0)
    return Trained(critic=critic, metrics=final, history=history)


def _auc_views(
    critic: LatentCritic,
    data: RolloutData,
    states: torch.Tensor,
    d0: float,
    rng: tuple[float, float],
    gamma: float,
    v_mean: float,
    v_scale: float,
) -> dict[str, Any]:
    """Extra validation views: at the reference budget only, and over all states (closed ones score 0)."""
    ex = examples(data, states, torch.full((len(states), 1), d0), gamma)
    at_ref = metrics(critic, ex, v_mean, v_scale) if len(ex.safe) else {}
    grid = torch.linspace(*rng, VAL_GRID) if rng[1] > rng[0] else torch.tensor([rng[0]])
    st = states[:, None].expand(-1, len(grid)).reshape(-1)
    d = grid.repeat(len(states))
    y = (data.final_charge[data.rollout[st]] <= d).numpy()
    z = (d - data.charge[st]) / d
    p_safe, _ = critic.evaluate(data.h[st], z)
    return {
        "p_safe_auc_at_budget_ref": at_ref.get("p_safe_auc"),
        "p_safe_ece_at_budget_ref": at_ref.get("p_safe_ece"),
        "safe_rate_at_budget_ref": at_ref.get("safe_rate"),
        "p_safe_auc_all_states": auc(y, p_safe.double().numpy()),
    }


def _meta(
    data: RolloutData,
    cfg: TrainConfig,
    rng: tuple[float, float],
    d0: float,
    val_prompt: torch.Tensor,
    final: dict[str, Any],
    history: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    m = data.meta
    train_src = Counter(s for s, v in zip(data.sources, val_prompt.tolist()) if not v)
    val_src = Counter(s for s, v in zip(data.sources, val_prompt.tolist()) if v)
    return {
        "name": f"critic-{str(m.get('base_identity', 'lm')).split('/')[-1].split('@')[0].lower()}",
        "layer": m.get("layer", "last"),
        "block": m.get("block"),
        "max_new_tokens": m.get("max_new_tokens"),
        "temperature": m.get("temperature"),
        "sampling": {k: m.get(k) for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")},
        "budget_range": [round(rng[0], 6), round(rng[1], 6)],
        "budget_ref": d0,
        "gamma": cfg.gamma,
        "targets": {
            "p_safe": "1[C_final <= d], open states (z >= 0) only; z < 0 gives p_safe = 0",
            "value": "gamma^(S-1-k) * R_final (Monte-Carlo), standardised",
        },
        "scorers": {"reward": m.get("reward"), "cost": m.get("cost"), "cost_threshold": m.get("cost_threshold")},
        "data": {
            "prompts": len(data.prompts),
            "train_prompts": int((~val_prompt).sum()),
            "val_prompts": int(val_prompt.sum()),
            "train_sources": dict(sorted(train_src.items())),
            "val_sources": dict(sorted(val_src.items())),
            "rollouts": int(data.reward.shape[0]),
            "rollouts_per_prompt": m.get("rollouts"),
            "states": int(data.h.shape[0]),
            "safe_rate_at_budget_ref": round(float((data.final_charge <= d0).float().mean()), 4),
            "reward_mean": round(float(data.reward.mean()), 4),
            "reward_sd": round(float(data.reward.std()), 4) if len(data.reward) > 1 else 0.0,
        },
        "metrics": final,
        "history": [
            {k: h[k] for k in ("epoch", "loss", "p_safe_auc", "p_safe_ece", "value_spearman", "value_r2")}
            for h in history
        ],
        "train": asdict(cfg) | {"budget_range": [rng[0], rng[1]]},
        "seconds": round(seconds, 1),
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# ---- the pipeline --------------------------------------------------------------------------------------------


def build_critic(
    out: str | Path,
    rollout_dir: str | Path,
    prompts: str = "",
    rollout_cfg: Any = None,
    train_cfg: TrainConfig = TrainConfig(),
    *,
    model: str | None = None,
    reward_model: str | None = None,
    cost_model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    resume: bool = False,
    progress: bool = True,
    workers: Any = None,
) -> dict[str, Any]:
    """``inferenceguard train-critic``: roll out the stack on ``prompts`` into ``rollout_dir`` (resumable),
    train the critic and save it to ``out``; returns a summary (collection, training, validation metrics).
    ``workers``: a started pool of stacks (``harness.distributed.RayPool``) to roll out on instead of loading
    the stack here (the model arguments then only name the run; the pool's loader decides what is loaded)."""
    from inferenceguard.critic import save_critic
    from inferenceguard.guard import load_stack
    from inferenceguard.training.rollouts import (
        DEFAULT_PROMPTS,
        RolloutConfig,
        collect_rollouts,
        load_rollouts,
        training_prompts,
    )

    rcfg = rollout_cfg or RolloutConfig()
    items = training_prompts(prompts or DEFAULT_PROMPTS, seed=rcfg.seed)
    if workers is None:  # rollouts sample: no critic
        workers = load_stack(model, reward_model, cost_model, device=device, dtype=dtype)
    collected = collect_rollouts(workers, items, rollout_dir, rcfg, resume=resume, progress=progress)
    data = load_rollouts(rollout_dir)
    trained = train_critic(data, train_cfg, progress=progress)
    trained.critic.meta["data"]["prompt_spec"] = prompts or DEFAULT_PROMPTS
    trained.critic.meta["lm_dtype"] = collected["lm_dtype"]
    trained.critic.meta["command"] = "inferenceguard train-critic"
    folder = save_critic(trained.critic, out)
    return {"critic": str(folder), "collect": collected, "metrics": trained.metrics, "epochs": len(trained.history)}
