"""Where a forest comes from: the demo model, a trusted pickle, or a CSV to train on.

Every source returns a :class:`TrainedModel` with the fitted estimator, its feature names and a
validation set, so the conversion and the parity check downstream never care which it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportError, first_line

DEMO_N_FEATURES = 5
DEMO_N_ESTIMATORS = 50
DEMO_MAX_DEPTH = 10
DEMO_SEED = 0
DEMO_N_SAMPLES = 4000
VALIDATION_FRACTION = 0.2


@dataclass
class TrainedModel:
    """A fitted RandomForestRegressor (or a Pipeline ending in one) and what we know about it."""

    estimator: Any
    feature_names: list[str]
    X_val: np.ndarray
    source: str
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def forest(self):
        """The RandomForestRegressor itself (the last step of a Pipeline)."""
        return final_forest(self.estimator)


def final_forest(estimator):
    from sklearn.pipeline import Pipeline

    return estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator


def demo_dataset(seed: int = DEMO_SEED, n_samples: int = DEMO_N_SAMPLES):
    """The reference data: a fixed-seed regression problem with 5 informative features."""
    from sklearn.datasets import make_regression

    X, y = make_regression(
        n_samples=n_samples, n_features=DEMO_N_FEATURES, n_informative=DEMO_N_FEATURES,
        noise=10.0, random_state=seed,
    )
    return X.astype(np.float32), y.astype(np.float64)


def train_demo(seed: int = DEMO_SEED) -> TrainedModel:
    """Train the reference model: 50 trees, max depth 10, 5 features, fixed seed."""
    X, y = demo_dataset(seed)
    names = [f"x{i}" for i in range(DEMO_N_FEATURES)]
    return _fit_and_score(X, y, names, DEMO_N_ESTIMATORS, DEMO_MAX_DEPTH, seed, "demo (generated data)")


def train_from_csv(path: Path, target: str, n_estimators: int, max_depth: int | None,
                   seed: int = DEMO_SEED) -> TrainedModel:
    """Train on a CSV: `target` is the label, every other column must be a numeric feature."""
    import pandas as pd

    if not path.is_file():
        raise ExportError(f"data file not found: {path}")
    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # pandas raises many types for unreadable files
        raise ExportError(f"cannot read CSV {path}: {first_line(exc)}") from exc
    if target not in frame.columns:
        raise ExportError(f"target column {target!r} not in {path} (columns: {', '.join(map(str, frame.columns))})")
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise ExportError(f"{path} has no feature columns besides the target {target!r}")
    non_numeric = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])
                   or pd.api.types.is_bool_dtype(features[c])]
    if non_numeric:
        raise ExportError(f"non-numeric feature columns in {path}: {', '.join(non_numeric)}")
    if not pd.api.types.is_numeric_dtype(frame[target]):
        raise ExportError(f"target column {target!r} in {path} is not numeric")
    nan_columns = [str(c) for c in frame.columns if frame[c].isna().any()]
    if nan_columns:
        raise ExportError(f"missing (NaN) values in {path}, columns: {', '.join(nan_columns)}")
    X = features.to_numpy(dtype=np.float64)
    if not np.isfinite(X).all() or not np.isfinite(frame[target].to_numpy(dtype=np.float64)).all():
        raise ExportError(f"infinite values in {path}")
    if len(frame) < 10:
        raise ExportError(f"{path} has {len(frame)} rows; at least 10 are needed to train and validate")
    y = frame[target].to_numpy(dtype=np.float64)
    return _fit_and_score(X.astype(np.float32), y, [str(c) for c in features.columns],
                          n_estimators, max_depth, seed, f"trained on {path.name} (target {target})")


def load_pickled(path: Path) -> TrainedModel:
    """Load a fitted RandomForestRegressor or Pipeline ending in one. Pickles run code: trust them."""
    import joblib
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.exceptions import NotFittedError
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import check_is_fitted

    if not path.is_file():
        raise ExportError(f"model file not found: {path}")
    try:
        estimator = joblib.load(path)
    except Exception as exc:  # corrupt or foreign files raise anything from EOFError to UnpicklingError
        raise ExportError(f"cannot load model from {path}: {type(exc).__name__}: {first_line(exc)}") from exc
    forest = final_forest(estimator) if isinstance(estimator, Pipeline) else estimator
    if not isinstance(forest, RandomForestRegressor):
        what = type(forest).__name__
        if isinstance(estimator, Pipeline):
            what = f"Pipeline ending in {what}"
        raise ExportError(f"{path} holds a {what}, expected a RandomForestRegressor or a Pipeline ending in one")
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise ExportError(f"the model in {path} is not fitted") from exc
    n_features = int(getattr(estimator, "n_features_in_", forest.n_features_in_))
    names = getattr(estimator, "feature_names_in_", None)
    feature_names = [str(n) for n in names] if names is not None else [f"x{i}" for i in range(n_features)]
    X_val = _probe_inputs(estimator, n_features)
    return TrainedModel(estimator, feature_names, X_val, f"loaded from {path.name}")


def _fit_and_score(X, y, names, n_estimators, max_depth, seed, source) -> TrainedModel:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import train_test_split

    if n_estimators < 1:
        raise ExportError("--n-estimators must be at least 1")
    if max_depth is not None and max_depth < 1:
        raise ExportError("--max-depth must be at least 1")
    X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=VALIDATION_FRACTION, random_state=seed)
    forest = RandomForestRegressor(n_estimators=n_estimators, max_depth=max_depth, random_state=seed, n_jobs=-1)
    forest.fit(X_train, y_train)
    scores = {"train_r2": float(forest.score(X_train, y_train)), "validation_r2": float(forest.score(X_val, y_val))}
    return TrainedModel(forest, list(names), X_val, source, scores)


def _probe_inputs(estimator, n_features: int, n_rows: int = 2000, seed: int = 0) -> np.ndarray:
    """Rows that reach every side of every split, for a model that came without data.

    Each feature is sampled across the range of the forest's own thresholds (a margin either
    side). For a Pipeline the rows are drawn in the forest's input space and mapped back through
    the preceding steps when they can be inverted; otherwise standard-normal rows are used.
    """
    from sklearn.pipeline import Pipeline

    forest = final_forest(estimator)
    rng = np.random.default_rng(seed)
    low = np.full(n_features, np.inf)
    high = np.full(n_features, -np.inf)
    for tree in forest.estimators_:
        t = tree.tree_
        split = t.feature >= 0
        np.minimum.at(low, t.feature[split], t.threshold[split])
        np.maximum.at(high, t.feature[split], t.threshold[split])
    unused = ~np.isfinite(low)
    low[unused], high[unused] = -1.0, 1.0
    margin = np.maximum((high - low) * 0.1, 1e-3)
    rows = rng.uniform(low - margin, high + margin, size=(n_rows, n_features))
    if isinstance(estimator, Pipeline) and len(estimator.steps) > 1:
        try:
            for _, step in reversed(estimator.steps[:-1]):
                rows = step.inverse_transform(rows)
        except (AttributeError, ValueError, TypeError):
            rows = rng.standard_normal((n_rows, n_features))
    return np.asarray(rows, dtype=np.float32)

