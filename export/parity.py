"""Parity between sklearn and an exported model: the same rule for every export format.

Relative error is taken per prediction, against |prediction| floored at 0.1% of the largest
|prediction|, so that predictions near zero do not turn float32 rounding into huge ratios.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .errors import ExportError


@dataclass(frozen=True)
class ParityReport:
    rows: int
    max_abs_error: float
    max_rel_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_rel_error <= self.tolerance

    def as_dict(self) -> dict:
        return asdict(self)


def relative_errors(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """|actual - expected| / |expected|, with |expected| floored at 0.1% of the largest |expected|.

    The floor keeps predictions that happen to sit near zero from turning a tiny float32 rounding
    difference into a huge ratio.
    """
    expected = np.asarray(expected, dtype=np.float64).reshape(-1)
    actual = np.asarray(actual, dtype=np.float64).reshape(-1)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    floor = max(scale * 1e-3, np.finfo(np.float32).tiny)
    return np.abs(actual - expected) / np.maximum(np.abs(expected), floor)


def sklearn_predict(estimator, X: np.ndarray) -> np.ndarray:
    """sklearn's prediction for float32 rows, on a DataFrame when it was fitted on one (as a user would)."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None:
        import pandas as pd

        X = pd.DataFrame(X, columns=names)
    return np.asarray(estimator.predict(X), dtype=np.float64).reshape(-1)


def check_parity(estimator, predict: Callable[[np.ndarray], np.ndarray], X: np.ndarray, tolerance: float,
                 label: str) -> ParityReport:
    """Predict the float32 rows X with sklearn and with `predict` (the exported model); compare."""
    X32 = np.asarray(X, dtype=np.float32)
    expected = sklearn_predict(estimator, X32)
    actual = np.asarray(predict(X32), dtype=np.float64).reshape(-1)
    if actual.shape != expected.shape:
        raise ExportError(f"{label} output has shape {actual.shape}, sklearn gives {expected.shape}")
    return ParityReport(
        rows=int(expected.size),
        max_abs_error=float(np.max(np.abs(actual - expected))),
        max_rel_error=float(np.max(relative_errors(expected, actual))),
        tolerance=tolerance,
    )
