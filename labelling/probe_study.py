"""What limits the cost probe: a study on the packaged rows and on-policy reading labels (docs/results/probe-study.md).

    python labelling/probe_study.py extract   # SmolLM2 hidden-state pools of every cost row (~16 min on 2 cores)
    python labelling/probe_study.py table     # dev AUCs of each option (a few minutes); add --test for the chosen

Everything is scored on the dev split's on-policy answers, fitted on train, as build-scorers does
(training/build_scorers.py); the test split is printed only with --test. Research tooling, not part of the package.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

OUT = Path("runs/probe-study")
POOLS = ("rmean", "rlast", "rmax", "pmean", "plast")
BASE = [("rmean", 15), ("rmean", 20), ("plast", 15), ("plast", 20)]  # the shipped probe's features


def extract() -> None:
    import torch
    from tqdm import tqdm

    from inferenceguard.datasets import labelled_harm, onpolicy_labels
    from inferenceguard.models.loading import load_encoder, load_lm
    from inferenceguard.scorers.embedded import _fit, probe_token_ids
    from inferenceguard.training.build_scorers import PROBE_MAX_LENGTH, HeadData

    data = HeadData.build(labelled_harm(), onpolicy_labels())
    lm = load_lm("smollm2")
    pairs = [
        _fit(p, r, PROBE_MAX_LENGTH)
        for p, r in probe_token_ids(lm, [r.prompt for r in data.rows], [r.response for r in data.rows])
    ]
    L, H = lm.num_layers + 1, lm.hidden_size
    out = {k: np.zeros((len(pairs), L, H), np.float16) for k in POOLS}
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    with torch.inference_mode():
        for b in tqdm(range(0, len(order), 8), desc="hidden states"):
            idx = order[b : b + 8]
            T = max(len(pairs[i][0]) + len(pairs[i][1]) for i in idx)
            ids = torch.full((len(idx), T), lm.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, i in enumerate(idx):
                p, r = pairs[i]
                ids[j, : len(p) + len(r)] = torch.tensor(p + r)
                mask[j, : len(p) + len(r)] = 1
            hs = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            h = torch.stack([x.float() for x in hs], 1)  # (b, L, T, H)
            for j, i in enumerate(idx):
                a, e = len(pairs[i][0]), len(pairs[i][0]) + len(pairs[i][1])
                out["pmean"][i], out["plast"][i] = h[j, :, :a].mean(1).numpy(), h[j, :, a - 1].numpy()
                if e > a:
                    out["rmean"][i], out["rlast"][i] = h[j, :, a:e].mean(1).numpy(), h[j, :, e - 1].numpy()
                    out["rmax"][i] = h[j, :, a:e].amax(1).numpy()
    enc = load_encoder("minilm")
    texts = list(dict.fromkeys([r.prompt for r in data.rows] + [r.response for r in data.rows]))
    emb = dict(zip(texts, enc.embed(texts).cpu().numpy(), strict=True))
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(
        OUT / "features.npz",
        y=data.y,
        split=data.split,
        onpolicy=data.onpolicy,
        kind=data.kind,
        minilm_p=np.stack([emb[r.prompt] for r in data.rows]),
        minilm_r=np.stack([emb[r.response] for r in data.rows]),
        **out,
    )


def table(show_test: bool) -> None:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    warnings.filterwarnings("ignore")
    F = np.load(OUT / "features.npz")
    y, split, on, kind = F["y"], F["split"], F["onpolicy"], F["kind"]
    train, dev, test = split == "train", (split == "dev") & on, (split == "test") & on

    def X_of(spec: list[tuple[str, int]]) -> np.ndarray:
        return np.concatenate([F[p][:, layer].astype(np.float32) for p, layer in spec], 1)

    def ev(s: np.ndarray, m: np.ndarray) -> str:
        h = m & (kind == "harmful")
        return f"{roc_auc_score(y[m], s[m]):.3f} / {roc_auc_score(y[h], s[h]):.3f}"

    def show(name: str, s: np.ndarray) -> None:
        print(f"| {name} | {ev(s, dev)} |" + (f" {ev(s, test)} |" if show_test else ""), flush=True)

    def lr(X: np.ndarray, w: float = 30.0, C: float = 1e-4, mask: np.ndarray = train) -> np.ndarray:
        sc = StandardScaler().fit(X[mask])
        m = LogisticRegression(C=C, class_weight="balanced", max_iter=3000)
        m.fit(sc.transform(X[mask]), y[mask], sample_weight=np.where(on, w, 1.0)[mask])
        return m.decision_function(sc.transform(X))

    def pca(X: np.ndarray, k: int) -> np.ndarray:
        Z = StandardScaler().fit(X[train]).transform(X)
        P = PCA(k, random_state=0).fit(Z[train]).transform(Z)
        return P / P[train].std(0)

    print("| option | dev AUC: all / harmful prompts |" + (" test |" if show_test else ""))
    print("|---|---|" + ("---|" if show_test else ""))
    X = X_of(BASE)
    for w, C in ((30, 1e-4), (100, 3e-5), (1e6, 1e-4)):
        show(f"shipped features, logistic, on-policy weight {w:g}, C {C:g}", lr(X, w, C))
    for extra in ("pmean", "rlast", "rmax"):
        show(f"+ {extra} at 15, 20", lr(np.concatenate([X, X_of([(extra, 15), (extra, 20)])], 1)))
    wide = X_of([(p, layer) for p in ("rmean", "plast") for layer in (10, 15, 20, 25)])
    show("layers 10, 15, 20, 25 (+ prompt last)", lr(wide))
    for layer in (10, 15, 20, 22, 25, 30):
        show(f"layer {layer} alone (+ prompt last)", lr(X_of([("rmean", layer), ("plast", layer)])))
    mini = np.concatenate([F["minilm_p"], F["minilm_r"], F["minilm_p"] * F["minilm_r"]], 1)
    show("MiniLM prompt, response, product alone", lr(mini, 30, 1e-4))
    show("shipped features + MiniLM", lr(np.concatenate([X, mini], 1), 100, 3e-5))
    rng = np.random.default_rng(0)
    pool = np.where(train & on)[0]
    for frac in (0.5, 0.75):
        s = []
        for _ in range(3):
            keep = train & ~on
            keep[rng.choice(pool, int(frac * len(pool)), replace=False)] = True
            s.append(roc_auc_score(y[dev], lr(X, mask=keep)[dev]))
        print(f"| shipped, {frac:.0%} of the on-policy train rows (3 draws) | {np.mean(s):.3f} (all) |")
    for k, C in ((128, 0.05), (256, 0.1)):
        P = pca(X, k)
        svm = SVC(C=C, kernel="rbf", gamma="scale", class_weight="balanced")
        svm.fit(P[train], y[train], sample_weight=np.where(on, 30.0, 1.0)[train])
        show(f"RBF SVM on {k} principal components, C {C:g}", svm.decision_function(P))
    P = pca(X, 256)
    s = sum(
        MLPClassifier((64,), alpha=1.0, max_iter=300, random_state=seed)
        .fit(P[train & on], y[train & on])
        .predict_proba(P)[:, 1]
        for seed in range(3)
    )
    show("MLP (64 hidden, 3 seeds) on 256 components, on-policy rows", s)


if __name__ == "__main__":
    {"extract": extract, "table": lambda: table("--test" in sys.argv)}[sys.argv[1]]()
