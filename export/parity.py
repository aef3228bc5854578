"""Parity between sklearn and an exported model: the same rule for every export format and task.

- Regression: relative error per prediction, against |prediction| floored at 0.1% of the largest
  |prediction|, so that predictions near zero do not turn float32 rounding into huge ratios.
- Classification: class probabilities within the tolerance (absolute: they lie in [0, 1]), and the
  same label as sklearn on every row, except where sklearn's two best classes are tied within the
  tolerance (float32 summation may then pick the other one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from ..signature import Prediction
from .errors import ExportError


@dataclass(frozen=True)
class ParityReport:
    rows: int
    nan_rows: int
    max_abs_error: float
    max_rel_error: float
    tolerance: float
    label_mismatches: int = 0
    ties: int = 0
    rows_off: int = 0  # rows whose answer differs from sklearn's beyond the tolerance (or by label)
    example: str = ""  # one such row: its values, sklearn's answer and the export's
    cause: str = ""  # which part of the model differs, where it could be told

    @property
    def passed(self) -> bool:
        return self.max_rel_error <= self.tolerance and self.label_mismatches == 0

    def failure(self) -> str:
        """Why the check failed, in one line: how many rows, by how much, which part, one example."""
        what = (f"{self.label_mismatches} labels differ from sklearn's" if self.label_mismatches
                else f"max relative error {self.max_rel_error:.3g} exceeds tolerance {self.tolerance:g}")
        text = f"{self.rows_off:,} of {self.rows:,} rows differ from sklearn ({what})"
        if self.cause:
            text += f"; {self.cause}"
        if self.example:
            text += f"; e.g. {self.example}"
        return text

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        text = (f"{self.rows} rows ({self.nan_rows} with NaN): max abs error {self.max_abs_error:.3g}, "
                f"max rel error {self.max_rel_error:.3g} (tolerance {self.tolerance:g})")
        if self.label_mismatches or self.ties:
            text += f", {self.label_mismatches} labels differ ({self.ties} ties allowed)"
        return text


def relative_errors(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """|actual - expected| / |expected|, with |expected| floored at 0.1% of the largest |expected|."""
    expected = np.asarray(expected, dtype=np.float64).reshape(-1)
    actual = np.asarray(actual, dtype=np.float64).reshape(-1)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    floor = max(scale * 1e-3, np.finfo(np.float32).tiny)
    return np.abs(actual - expected) / np.maximum(np.abs(expected), floor)


def as_frame(estimator, rows):
    """Rows as sklearn should see them: a DataFrame when the model was fitted on one (as a user would)."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is None or hasattr(rows, "columns"):
        return rows
    import pandas as pd

    return pd.DataFrame(rows, columns=names)


def sklearn_prediction(estimator, rows, classifier: bool) -> Prediction:
    """sklearn's own answer for `rows`, in the layout of :class:`Prediction`."""
    frame = as_frame(estimator, rows)
    if classifier:
        return Prediction(probabilities=np.asarray(estimator.predict_proba(frame), dtype=np.float64),
                          labels=np.asarray(estimator.predict(frame)))
    values = np.asarray(estimator.predict(frame), dtype=np.float64)
    return Prediction(values=values.reshape(len(values), -1))


def count_nan_rows(rows) -> int:
    if hasattr(rows, "columns"):
        return int(rows.isna().any(axis=1).sum())
    rows = np.asarray(rows)
    return int(np.isnan(rows).any(axis=1).sum()) if rows.dtype.kind == "f" else 0


def check_parity(estimator, predict: Callable[[object], Prediction], rows, tolerance: float, label: str,
                 classifier: bool = False, diagnose: Callable[[object], str] | None = None) -> ParityReport:
    """Predict `rows` with sklearn and with `predict` (the exported model); compare.

    When rows differ, `diagnose(rows_that_differ)` may tell which part of the model differs."""
    expected = sklearn_prediction(estimator, rows, classifier)
    actual = predict(rows)
    nan_rows = count_nan_rows(rows)
    if not classifier:
        if actual.values is None:
            raise ExportError(f"{label} gave no regression output")
        values = np.asarray(actual.values, dtype=np.float64)
        values = values.reshape(len(values), -1) if values.size else values
        if values.shape != expected.values.shape:
            raise ExportError(f"{label} output has shape {values.shape}, sklearn gives {expected.values.shape}")
        errors = relative_errors(expected.values, values).reshape(values.shape)
        off = errors.max(axis=1) > tolerance if values.size else np.zeros(0, dtype=bool)
        report = ParityReport(
            rows=len(values), nan_rows=nan_rows,
            max_abs_error=float(np.max(np.abs(values - expected.values))),
            max_rel_error=float(np.max(errors)), tolerance=tolerance, rows_off=int(off.sum()))
        return _explained(report, rows, off, expected.values, values, label, diagnose)

    if actual.probabilities is None:
        raise ExportError(f"{label} gave no class probabilities")
    probabilities = np.asarray(actual.probabilities, dtype=np.float64)
    if probabilities.shape != expected.probabilities.shape:
        raise ExportError(f"{label} probabilities have shape {probabilities.shape}, "
                          f"sklearn gives {expected.probabilities.shape}")
    error = np.abs(probabilities - expected.probabilities)
    mismatches = ties = 0
    off = error.max(axis=1) > tolerance
    if actual.labels is not None:
        differ = np.asarray(actual.labels).astype(str) != np.asarray(expected.labels).astype(str)
        tied = _top_two_gap(expected.probabilities) <= tolerance
        ties = int((differ & tied).sum())
        mismatches = int((differ & ~tied).sum())
        off |= differ & ~tied
    report = ParityReport(rows=len(probabilities), nan_rows=nan_rows, max_abs_error=float(error.max()),
                          max_rel_error=float(error.max()), tolerance=tolerance,
                          label_mismatches=mismatches, ties=ties, rows_off=int(off.sum()))
    return _explained(report, rows, off, expected.probabilities, probabilities, label, diagnose)


def _explained(report: ParityReport, rows, off: np.ndarray, expected: np.ndarray, actual: np.ndarray,
               label: str, diagnose) -> ParityReport:
    """Add one example row and, where it can be told, which part of the model differs."""
    if not off.any():
        return report
    from dataclasses import replace

    index = int(np.flatnonzero(off)[0])
    example = (f"row {_describe_row(rows, index)}: sklearn {_describe_answer(expected[index])}, "
               f"{label} {_describe_answer(actual[index])}")
    differing = rows.iloc[np.flatnonzero(off)] if hasattr(rows, "iloc") else np.asarray(rows)[off]
    nan = (differing.isna().any(axis=1).to_numpy() if hasattr(differing, "isna")
           else np.isnan(np.asarray(differing, dtype=np.float64)).any(axis=1))
    if nan.all() and report.nan_rows < report.rows:
        cause = ("every row that differs holds a missing value: a step before the forest does not keep NaN "
                 "where sklearn keeps it for the trees to route")
    else:
        cause = diagnose(differing) if diagnose else ""
    return replace(report, example=example, cause=cause)


def _describe_row(rows, index: int) -> str:
    if hasattr(rows, "iloc"):
        items = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v:.10g}" for k, v in rows.iloc[index].items()]
    else:
        items = [f"{v:.10g}" for v in np.asarray(rows, dtype=np.float64)[index]]
    shown = ", ".join(items[:8]) + (", ..." if len(items) > 8 else "")
    return f"[{shown}]"


def _describe_answer(values) -> str:
    values = np.atleast_1d(np.asarray(values, dtype=np.float64))
    shown = ", ".join(f"{v:.7g}" for v in values[:4]) + (", ..." if len(values) > 4 else "")
    return shown if len(values) == 1 else f"[{shown}]"


# sklearn's best two classes this close are a tie its float64 sum decides by rounding: with n_jobs > 1
# the trees are summed in another order on each call, and sklearn's own label changes between calls.
FLOAT64_TIE = 1e-12


def labels_differ(expected_probabilities: np.ndarray, expected_labels, labels) -> np.ndarray:
    """Rows whose label is not sklearn's, a tie up to float64 rounding (FLOAT64_TIE) aside."""
    differ = np.asarray(labels).astype(str) != np.asarray(expected_labels).astype(str)
    return differ & (_top_two_gap(expected_probabilities) > FLOAT64_TIE)


def _top_two_gap(probabilities: np.ndarray) -> np.ndarray:
    if probabilities.shape[1] < 2:
        return np.full(len(probabilities), np.inf)
    top = np.sort(probabilities, axis=1)
    return top[:, -1] - top[:, -2]


def with_missing_values(rows, numeric: list[str] | None = None, seed: int = 1):
    """Extra probe rows holding NaN: one feature at a time, ~30% of cells at random, and whole rows.

    sklearn routes NaN down each split as the tree learned (or to the larger child); these rows
    check that the exported model does exactly the same. For a DataFrame, only the `numeric`
    columns get NaN (string columns keep their values).
    """
    rng = np.random.default_rng(seed)
    if hasattr(rows, "columns"):
        columns = list(numeric if numeric is not None else rows.columns)
        picks = rows.iloc[rng.integers(0, len(rows), size=max(len(columns) * 8, 64))].reset_index(drop=True)
        if not columns:
            return picks.iloc[:0]
        for i in range(len(picks)):
            cells = [columns[i % len(columns)]] if i < len(columns) * 4 else \
                [c for c in columns if rng.random() < 0.3] if i < len(picks) - 4 else columns
            picks.loc[i, cells] = np.nan
        return picks
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0:
        return rows
    n_features = rows.shape[1]
    picks = rows[rng.integers(0, len(rows), size=max(n_features * 8, 64))]
    single = picks[: n_features * 8].copy()
    single[np.arange(len(single)), np.arange(len(single)) % n_features] = np.nan
    scattered = picks.copy()
    scattered[rng.random(scattered.shape) < 0.3] = np.nan
    whole = np.full((4, n_features), np.nan)
    return np.concatenate([single, scattered, whole])
