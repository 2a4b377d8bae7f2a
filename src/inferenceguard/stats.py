"""The agreement statistics every part reports: ROC-AUC of a score against labels, Cohen's kappa of two
labellings. One home, so a figure means the same in the build manifest, the critic and the report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def auc(y: Sequence[int] | np.ndarray, s: Any) -> float | None:
    """ROC-AUC of scores ``s`` (higher = class 1) against binary labels ``y``, rounded to 4 places; None when
    only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return None
    return round(float(roc_auc_score(y, np.asarray(s, dtype=np.float64))), 4)


def kappa(a: Sequence[Any], b: Sequence[Any]) -> float | None:
    """Cohen's kappa of two labellings of the same items, rounded to 4 places; None for fewer than two items
    or when both labellings use one and the same label throughout (kappa is undefined there)."""
    from sklearn.metrics import cohen_kappa_score

    if len(a) != len(b):
        raise ValueError(f"kappa needs two labellings of the same items, got {len(a)} and {len(b)} labels")
    if len(a) < 2 or len(set(a) | set(b)) < 2:
        return None
    return round(float(cohen_kappa_score(list(a), list(b))), 4)
