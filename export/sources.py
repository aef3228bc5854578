"""Where a forest comes from: the demo model, a trusted pickle, or a CSV to train on.

Every source returns a :class:`TrainedModel` with the fitted estimator, its feature names and a
validation set, so the conversion and the parity check downstream never care which it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..signature import CLASSIFICATION, REGRESSION
from .errors import ExportError, first_line

DEMO_N_FEATURES = 5
DEMO_N_ESTIMATORS = 50
DEMO_MAX_DEPTH = 10
DEMO_SEED = 0
DEMO_N_SAMPLES = 4000
VALIDATION_FRACTION = 0.2


FOREST_TYPES = ("RandomForestRegressor", "RandomForestClassifier", "ExtraTreesRegressor", "ExtraTreesClassifier")
EXPECTED = "a RandomForest or ExtraTrees regressor or classifier, or a Pipeline ending in one"


@dataclass
class TrainedModel:
    """A fitted forest (or a Pipeline ending in one) and what we know about it.

    X_val: the rows the parity check predicts. A float32 matrix, or a DataFrame for a columnar
    pipeline (one Triton input per column, strings allowed).
    """

    estimator: Any
    feature_names: list[str]
    X_val: Any
    source: str
    scores: dict[str, float] = field(default_factory=dict)
    string_columns: tuple[str, ...] = ()
    # string columns whose encoder refuses values it has not seen (handle_unknown="error")
    closed_categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def forest(self):
        """The forest itself (the last step of a Pipeline)."""
        return final_forest(self.estimator)

    @property
    def task(self) -> str:
        from sklearn.base import is_classifier

        return CLASSIFICATION if is_classifier(self.forest) else REGRESSION

    @property
    def classes(self) -> tuple:
        return tuple(self.forest.classes_.tolist()) if self.task == CLASSIFICATION else ()

    @property
    def n_outputs(self) -> int:
        return int(getattr(self.forest, "n_outputs_", 1))

    @property
    def columnar(self) -> bool:
        """Served with one input per DataFrame column: the pipeline encodes string columns itself."""
        return bool(self.string_columns)


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


def choose_task(target, task: str) -> str:
    """auto: a numeric target with few distinct integer values is still regression; only a
    non-numeric (string, bool, categorical) target makes a classifier."""
    import pandas as pd

    if task not in ("auto", REGRESSION, CLASSIFICATION):
        raise ExportError(f"--task must be auto, {REGRESSION} or {CLASSIFICATION}, not {task!r}")
    if task != "auto":
        return task
    numeric = pd.api.types.is_numeric_dtype(target) and not pd.api.types.is_bool_dtype(target)
    return REGRESSION if numeric else CLASSIFICATION


def train_from_csv(path: Path, target: str, n_estimators: int, max_depth: int | None,
                   seed: int = DEMO_SEED, task: str = "auto") -> TrainedModel:
    """Train on a CSV: `target` is the label, every other column a feature.

    Numeric columns go to the forest as they are (missing values included: sklearn's forests learn
    where they go); string columns are one-hot encoded inside a Pipeline, so the served model takes
    the raw strings. A non-numeric target (or --task classification) trains a classifier.
    """
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
    if len(frame) < 10:
        raise ExportError(f"{path} has {len(frame)} rows; at least 10 are needed to train and validate")
    labels = frame[target]
    if labels.isna().any():
        raise ExportError(f"target column {target!r} in {path} has missing values")
    chosen = choose_task(labels, task)
    if chosen == REGRESSION:
        if not pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels):
            raise ExportError(f"target column {target!r} in {path} is not numeric; use --task classification")
        y = labels.to_numpy(dtype=np.float64)
        if not np.isfinite(y).all():
            raise ExportError(f"infinite values in target column {target!r} of {path}")
    else:
        y = labels.astype(str).to_numpy(dtype=object) if not pd.api.types.is_integer_dtype(labels) else labels.to_numpy()
        if len(np.unique(y)) < 2:
            raise ExportError(f"target column {target!r} in {path} has a single class; a classifier needs two")
    strings = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])
               or pd.api.types.is_bool_dtype(features[c])]
    numeric = [str(c) for c in features.columns if str(c) not in strings]
    features.columns = [str(c) for c in features.columns]
    if numeric:
        values = features[numeric].to_numpy(dtype=np.float64)
        if np.isinf(values).any():
            raise ExportError(f"infinite values in {path} (columns: "
                              f"{', '.join(c for c in numeric if np.isinf(features[c].to_numpy(np.float64)).any())})")
        features[numeric] = features[numeric].astype(np.float32)
    for column in strings:
        if features[column].isna().any():
            raise ExportError(f"missing values in string column {column!r} of {path}; fill them (e.g. with 'missing')")
        features[column] = features[column].astype(str).astype(object)
    source = f"trained on {path.name} (target {target}, {chosen})"
    X = features if strings else features.to_numpy(dtype=np.float32)
    return _fit_and_score(X, y, list(features.columns), n_estimators, max_depth, seed, source, chosen,
                          tuple(strings))


def load_pickled(path: Path) -> TrainedModel:
    """Load a fitted forest or Pipeline ending in one. Pickles run code: only load files you trust."""
    import joblib
    from sklearn.exceptions import NotFittedError
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import check_is_fitted

    if not path.is_file():
        raise ExportError(f"model file not found: {path}")
    try:
        estimator = joblib.load(path)
    except Exception as exc:  # corrupt or foreign files raise anything from EOFError to UnpicklingError
        raise ExportError(f"cannot load model from {path}: {type(exc).__name__}: {first_line(exc)}") from exc
    forest = final_forest(estimator)
    if type(forest).__name__ not in FOREST_TYPES or type(forest).__module__.split(".")[0] != "sklearn":
        what = type(forest).__name__
        if isinstance(estimator, Pipeline):
            what = f"Pipeline ending in {what}"
        raise ExportError(f"{path} holds a {what}, expected {EXPECTED}")
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise ExportError(f"the model in {path} is not fitted") from exc
    _check_servable(forest)
    n_features = int(getattr(estimator, "n_features_in_", forest.n_features_in_))
    names = getattr(estimator, "feature_names_in_", None)
    feature_names = [str(n) for n in names] if names is not None else [f"x{i}" for i in range(n_features)]
    strings = string_columns(estimator, feature_names)
    X_val = (_probe_columns(estimator, feature_names, strings) if strings
             else _probe_inputs(estimator, n_features))
    return TrainedModel(estimator, feature_names, X_val, f"loaded from {path.name}", string_columns=strings,
                        closed_categories=closed_categories(estimator, feature_names))


def _check_servable(forest) -> None:
    """What the served signature cannot carry: multi-output classifiers and non-int/str class labels."""
    from sklearn.base import is_classifier

    if not is_classifier(forest):
        return
    if int(getattr(forest, "n_outputs_", 1)) > 1:
        raise ExportError(f"a {type(forest).__name__} with {forest.n_outputs_} outputs is not supported: "
                          "export one classifier per target")
    if len(forest.classes_) < 2:
        raise ExportError(f"the {type(forest).__name__} was fitted on a single class ({forest.classes_[0]!r}): "
                          "it predicts nothing; train it on at least two")
    kind = np.asarray(forest.classes_).dtype.kind
    if kind not in "iuOU" or (kind == "O" and not all(isinstance(c, str) for c in forest.classes_)):
        raise ExportError(f"class labels of type {np.asarray(forest.classes_).dtype} are not supported: "
                          "train with integer or string labels")


def closed_categories(estimator, feature_names: list[str]) -> dict[str, list[str]]:
    """The categories of each string column whose encoder refuses unknown values, as sklearn does.

    The ONNX graph cannot refuse them (its OrdinalEncoder maps an unknown string to a number, its
    OneHotEncoder fails the whole request), so the client and the embedded server check against
    this list, carried in config.pbtxt."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline) or not isinstance(estimator.steps[0][1], ColumnTransformer):
        return {}
    closed: dict[str, list[str]] = {}
    for _, transformer, columns in estimator.steps[0][1].transformers_:
        encoder = transformer.steps[-1][1] if isinstance(transformer, Pipeline) else transformer
        categories = getattr(encoder, "categories_", None)
        if categories is None or getattr(encoder, "handle_unknown", "error") != "error":
            continue
        for column, values in zip(_column_names(columns, feature_names), categories):
            if np.asarray(values).dtype.kind in "OU":
                closed[column] = [str(v) for v in values]
    return closed


def string_columns(estimator, feature_names: list[str]) -> tuple[str, ...]:
    """Input columns that a leading ColumnTransformer encodes from strings (OneHot/OrdinalEncoder).

    Those models are served with one Triton input per column (strings as BYTES), as skl2onnx
    converts a DataFrame pipeline; other models take one FP32 feature matrix.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline) or not isinstance(estimator.steps[0][1], ColumnTransformer):
        return ()
    found: list[str] = []
    for _, transformer, columns in estimator.steps[0][1].transformers_:
        encoder = transformer.steps[-1][1] if isinstance(transformer, Pipeline) else transformer
        categories = getattr(encoder, "categories_", None)
        if categories is None or not any(np.asarray(c).dtype.kind in "OU" for c in categories):
            continue
        if getattr(encoder, "handle_unknown", None) == "infrequent_if_exist":
            raise ExportError(f"{type(encoder).__name__}(handle_unknown='infrequent_if_exist') on "
                              f"{', '.join(_column_names(columns, feature_names))}: skl2onnx cannot convert "
                              "infrequent categories; refit with handle_unknown='ignore'")
        for column in _column_names(columns, feature_names):
            if column not in found:
                found.append(column)
    return tuple(c for c in feature_names if c in found)


def _column_names(columns, feature_names: list[str]) -> list[str]:
    """A ColumnTransformer's column selection (names, indices, a mask or a slice) as names."""
    if isinstance(columns, slice):
        return feature_names[columns]
    if isinstance(columns, (str, int, np.integer)):
        columns = [columns]
    selected = np.asarray(feature_names)[columns] if not all(isinstance(c, str) for c in columns) else columns
    return [str(c) for c in np.atleast_1d(selected)]


def _fit_and_score(X, y, names, n_estimators, max_depth, seed, source, task=REGRESSION,
                   strings: tuple[str, ...] = ()) -> TrainedModel:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.model_selection import train_test_split

    if n_estimators < 1:
        raise ExportError("--n-estimators must be at least 1")
    if max_depth is not None and max_depth < 1:
        raise ExportError("--max-depth must be at least 1")
    forest_type = RandomForestClassifier if task == CLASSIFICATION else RandomForestRegressor
    forest = forest_type(n_estimators=n_estimators, max_depth=max_depth, random_state=seed, n_jobs=-1)
    estimator = forest
    if strings:
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder

        encode = ColumnTransformer([("categories", OneHotEncoder(handle_unknown="ignore"), list(strings))],
                                   remainder="passthrough")
        estimator = Pipeline([("encode", encode), ("forest", forest)])
    stratify = y if task == CLASSIFICATION and _can_stratify(y) else None
    X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=VALIDATION_FRACTION, random_state=seed,
                                                      stratify=stratify)
    estimator.fit(X_train, y_train)
    metric = "accuracy" if task == CLASSIFICATION else "r2"
    scores = {f"train_{metric}": float(estimator.score(X_train, y_train)),
              f"validation_{metric}": float(estimator.score(X_val, y_val))}
    return TrainedModel(estimator, list(names), X_val, source, scores, string_columns=strings,
                        closed_categories=closed_categories(estimator, list(names)))


def _can_stratify(y) -> bool:
    _, counts = np.unique(y, return_counts=True)
    return counts.min() >= 2


def _threshold_ranges(forest, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Per forest-input feature, the lowest and highest finite split threshold (±1 where unused).

    Trees trained with missing values split "missing vs not" at threshold = inf: those say nothing
    about the range and are left out.
    """
    low = np.full(n_features, np.inf)
    high = np.full(n_features, -np.inf)
    for tree in forest.estimators_:
        t = tree.tree_
        split = (t.feature >= 0) & np.isfinite(t.threshold)
        np.minimum.at(low, t.feature[split], t.threshold[split])
        np.maximum.at(high, t.feature[split], t.threshold[split])
    unused = ~np.isfinite(low)
    low[unused], high[unused] = -1.0, 1.0
    return low, high


def _probe_inputs(estimator, n_features: int, n_rows: int = 2000, seed: int = 0) -> np.ndarray:
    """Rows that reach every side of every split, for a model that came without data.

    Each feature is sampled across the range of the forest's own thresholds (a margin either
    side). For a Pipeline the rows are drawn in the forest's input space and mapped back through
    the preceding steps when they can be inverted; otherwise standard-normal rows are used.
    """
    from sklearn.pipeline import Pipeline

    forest = final_forest(estimator)
    rng = np.random.default_rng(seed)
    low, high = _threshold_ranges(forest, int(forest.n_features_in_))
    margin = np.maximum((high - low) * 0.1, 1e-3)
    rows = rng.uniform(low - margin, high + margin, size=(n_rows, len(low)))
    if isinstance(estimator, Pipeline) and len(estimator.steps) > 1:
        try:
            for _, step in reversed(estimator.steps[:-1]):
                rows = step.inverse_transform(rows)
        except (AttributeError, ValueError, TypeError):
            rows = rng.standard_normal((n_rows, n_features))
    if rows.shape[1] != n_features:
        rows = rng.standard_normal((n_rows, n_features))
    return np.asarray(rows, dtype=np.float32)


def _probe_columns(estimator, feature_names: list[str], strings: tuple[str, ...], n_rows: int = 2000,
                   seed: int = 0):
    """Probe rows for a columnar pipeline: string columns drawn from the encoders' own categories
    (plus one unseen value where the encoder accepts unknowns), numeric columns across the range of
    the thresholds they feed, mapped back through their transformer when it can be inverted.
    """
    import pandas as pd
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(seed)
    columns = estimator.steps[0][1]
    forest = final_forest(estimator)
    low, high = _threshold_ranges(forest, int(forest.n_features_in_))
    frame = {}
    for name, transformer, selected in columns.transformers_:
        names = _column_names(selected, feature_names)
        if transformer == "drop" or not names:
            continue
        encoder = transformer.steps[-1][1] if isinstance(transformer, Pipeline) else transformer
        if any(n in strings for n in names):
            for column, categories in zip(names, encoder.categories_):
                values = [str(c) for c in categories if not (isinstance(c, float) and np.isnan(c))]
                if getattr(encoder, "handle_unknown", "error") != "error":
                    values.append("(unseen)")
                frame[column] = rng.choice(np.asarray(values, dtype=object), size=n_rows)
            continue
        out = columns.output_indices_[name]
        width = out.stop - out.start
        drawn = rng.uniform(low[out] - 0.1 * np.abs(low[out]) - 1e-3, high[out] + 0.1 * np.abs(high[out]) + 1e-3,
                            size=(n_rows, width)) if width else np.empty((n_rows, 0))
        if width == len(names) and transformer != "passthrough":
            try:
                drawn = transformer.inverse_transform(drawn)
            except (AttributeError, ValueError, TypeError):
                drawn = rng.standard_normal((n_rows, len(names)))
        elif width != len(names):
            drawn = rng.standard_normal((n_rows, len(names)))
        for i, column in enumerate(names):
            frame[column] = np.asarray(drawn[:, i], dtype=np.float32)
    for column in feature_names:  # columns no transformer reads (remainder="drop")
        frame.setdefault(column, np.zeros(n_rows, dtype=np.float32))
    return pd.DataFrame({c: frame[c] for c in feature_names})
