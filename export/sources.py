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
from . import probes
from .steps import last_step
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

    X_val: the rows the parity check predicts: held-out rows, or probe rows on the data's grid for
    a model that came without data. A matrix, or a DataFrame for a columnar pipeline (one Triton
    input per column, strings allowed).
    """

    estimator: Any
    feature_names: list[str]
    X_val: Any
    source: str
    scores: dict[str, float] = field(default_factory=dict)
    string_columns: tuple[str, ...] = ()
    # string columns whose encoder refuses values it has not seen (handle_unknown="error")
    closed_categories: dict[str, list[str]] = field(default_factory=dict)
    # steps whose thresholds the probe rows could not map back to raw columns (they mix columns)
    unmapped_steps: list[str] = field(default_factory=list)
    # where the model came from beyond `source` (an MLflow URI, run and registered version): metadata.json
    provenance: dict[str, Any] = field(default_factory=dict)

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
        """Served with one input per DataFrame column: the pipeline selects its columns by name
        (string columns it encodes itself, or numeric columns a ColumnTransformer picks by name)."""
        return bool(self.string_columns) or selects_columns_by_name(self.estimator)

    @property
    def numeric_datatype(self) -> str:
        """FP64 where a step computes with the numbers before the forest (sklearn does it in float64)."""
        from .steps import numeric_datatype

        return numeric_datatype(self.estimator, self.string_columns, self.feature_names)


def read_rows(path: Path, trained: TrainedModel):
    """The user's own rows (CSV or Parquet) in the layout the parity check predicts: a float64
    matrix of the feature columns, or a DataFrame for a columnar model. Other columns are ignored."""
    import pandas as pd

    if not path.is_file():
        raise ExportError(f"parity data file not found: {path}")
    try:
        frame = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise ExportError(f"cannot read parity data {path}: {first_line(exc)}") from exc
    frame.columns = [str(c) for c in frame.columns]
    missing = [c for c in trained.feature_names if c not in frame.columns]
    if missing:
        raise ExportError(f"parity data {path} lacks the model's column(s) {', '.join(missing)}")
    if frame.empty:
        raise ExportError(f"parity data {path} has no rows")
    frame = frame[trained.feature_names].copy()
    for column in trained.feature_names:
        if column in trained.string_columns:
            if frame[column].isna().any():
                raise ExportError(f"missing values in string column {column!r} of {path}")
            frame[column] = frame[column].astype(str).astype(object)
            continue
        numbers = pd.to_numeric(frame[column], errors="coerce")
        if (numbers.isna() & frame[column].notna()).any():
            raise ExportError(f"column {column!r} of {path} holds values that are not numbers")
        if np.isinf(numbers.to_numpy(dtype=np.float64)).any():
            raise ExportError(f"infinite values in column {column!r} of {path}; sklearn refuses them")
        frame[column] = numbers.astype(np.float64)
    return frame.reset_index(drop=True) if trained.columnar else frame.to_numpy(dtype=np.float64)


def selects_columns_by_name(estimator) -> bool:
    """A Pipeline fitted on a DataFrame whose ColumnTransformer picks columns by name."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline) or getattr(estimator, "feature_names_in_", None) is None:
        return False
    first = estimator.steps[0][1]
    if not isinstance(first, ColumnTransformer):
        return False
    return any(isinstance(c, str) or (isinstance(c, (list, tuple)) and c and all(isinstance(n, str) for n in c))
               for _, _, c in first.transformers)


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

    if not path.is_file():
        raise ExportError(f"model file not found: {path}")
    try:
        estimator = joblib.load(path)
    except Exception as exc:  # corrupt or foreign files raise anything from EOFError to UnpicklingError
        raise ExportError(f"cannot load model from {path}: {type(exc).__name__}: {first_line(exc)}") from exc
    return from_estimator(estimator, str(path), f"loaded from {path.name}")


def from_estimator(estimator, where: str, source: str) -> TrainedModel:
    """A fitted estimator that came without data (a pickle, an MLflow model), checked as one.

    `where` names it in error messages; probe rows stand in for the validation set.
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import check_is_fitted

    forest = final_forest(estimator)
    if type(forest).__name__ not in FOREST_TYPES or type(forest).__module__.split(".")[0] != "sklearn":
        what = type(forest).__name__
        if isinstance(estimator, Pipeline):
            what = f"Pipeline ending in {what}"
        raise ExportError(f"{where} holds a {what}, expected {EXPECTED}")
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise ExportError(f"the model in {where} is not fitted") from exc
    _check_servable(forest)
    n_features = int(getattr(estimator, "n_features_in_", forest.n_features_in_))
    names = getattr(estimator, "feature_names_in_", None)
    feature_names = [str(n) for n in names] if names is not None else [f"x{i}" for i in range(n_features)]
    strings = string_columns(estimator, feature_names)
    found = probes.probe_rows(estimator, feature_names, strings, columnar=bool(strings) or selects_columns_by_name(estimator))
    return TrainedModel(estimator, feature_names, found.rows, source, string_columns=strings,
                        closed_categories=closed_categories(estimator, feature_names), unmapped_steps=found.unmapped)


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
        encoder = last_step(transformer)
        categories = getattr(encoder, "categories_", None)
        if categories is None or getattr(encoder, "handle_unknown", "error") != "error":
            continue
        for column, values in zip(column_names(columns, feature_names), categories):
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
        encoder = last_step(transformer)
        categories = getattr(encoder, "categories_", None)
        if categories is None or not any(np.asarray(c).dtype.kind in "OU" for c in categories):
            continue
        if getattr(encoder, "handle_unknown", None) == "infrequent_if_exist":
            raise ExportError(f"{type(encoder).__name__}(handle_unknown='infrequent_if_exist') on "
                              f"{', '.join(column_names(columns, feature_names))}: skl2onnx cannot convert "
                              "infrequent categories; refit with handle_unknown='ignore'")
        for column in column_names(columns, feature_names):
            if column not in found:
                found.append(column)
    return tuple(c for c in feature_names if c in found)


def column_names(columns, feature_names: list[str]) -> list[str]:
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
