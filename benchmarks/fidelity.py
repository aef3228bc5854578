"""Fidelity matrix: each supported preprocessing step × RandomForest / ExtraTrees × regressor /
classifier, on integer, decimal and continuous data, converted as `rf-triton export` converts it and
run by ONNX Runtime, compared with sklearn row by row on the training and the held-out rows.

    python -m rf_triton.benchmarks.fidelity        # writes results/fidelity.json and results/fidelity.md

Counts, ages, ratings and values with one or two decimals put rows exactly on split thresholds,
where one float32 ulp in the preprocessing takes the other branch; continuous values cannot show
that. sklearn's own iris, wine, digits and unscaled diabetes are such data.
A row is off when a regression answer differs by more than 1e-5 (relative, floored as export's
parity check floors it), a probability by more than 1e-6, or the label differs (where sklearn's two
best classes are equal up to float64 rounding, sklearn's own label changes with the order it sums
its trees in, n_jobs > 1: either of them is its answer).
tests/test_pipeline_fidelity.py runs the same matrix and requires 0 rows off.
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Callable

import numpy as np
import typer

RESULTS = Path(__file__).resolve().parent / "results"
REGRESSION_TOLERANCE = 1e-5
PROBABILITY_TOLERANCE = 1e-6
N_TREES = 10
TRAIN_FRACTION = 0.7

app = typer.Typer(add_completion=False)


@dataclass(frozen=True)
class Case:
    step: str
    forest: str
    dataset: str
    rows: int
    rows_off: int
    max_error: float
    input_datatype: str


def _grid(seed: int = 5, n: int = 2000):
    """Counts 0-9, ages 18-89, ratings 1-5 and a continuous column, as in a customer table."""
    rng = np.random.default_rng(seed)
    X = np.c_[rng.integers(0, 10, n), rng.integers(18, 90, n), rng.integers(1, 6, n), rng.normal(size=n)]
    y = X[:, 0] * 3 + np.sin(X[:, 1] / 7) * 10 + X[:, 2] ** 2 + X[:, 3] + rng.normal(0, 1, n)
    return X.astype(np.float64), y


def _decimals(seed: int = 6, n: int = 2000):
    """Prices and rates with one and two decimals."""
    rng = np.random.default_rng(seed)
    X = np.c_[np.round(rng.normal(50, 20, n), 2), np.round(rng.uniform(0, 10, n), 1),
              np.round(rng.normal(0, 1, n), 2)]
    y = X[:, 0] * 0.3 + (X[:, 1] > 5) * 5 + X[:, 2] + rng.normal(0, 1, n)
    return X, y


def _continuous(seed: int = 7, n: int = 2000):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, 3 * X[:, 0] - X[:, 1] ** 2 + rng.normal(0, 0.3, n)


def _with_missing(loader, fraction: float = 0.1):
    def load():
        X, y = loader()
        X = X.copy()
        X[np.random.default_rng(9).random(X.shape) < fraction] = np.nan
        return X, y
    return load


def _sklearn(name: str, **kwargs):
    def load():
        from sklearn import datasets

        return getattr(datasets, f"load_{name}")(return_X_y=True, **kwargs)
    return load


def _classes(y: np.ndarray) -> np.ndarray:
    """A regression target cut into three string classes at its terciles."""
    low, high = np.quantile(y, [1 / 3, 2 / 3])
    return np.where(y < low, "low", np.where(y < high, "mid", "high")).astype(object)


# name → (loader, task): "regression" fits y, "classification" fits integer labels (or y's terciles)
DATASETS: dict[str, tuple[Callable, str]] = {
    "counts": (_grid, "both"),
    "decimals": (_decimals, "both"),
    "continuous": (_continuous, "both"),
    "counts_nan": (_with_missing(_grid), "both"),
    "iris": (_sklearn("iris"), "classification"),
    "wine": (_sklearn("wine"), "classification"),
    "digits": (_sklearn("digits"), "classification"),
    "diabetes": (_sklearn("diabetes", scaled=False), "regression"),
}
SMALL = ("counts", "decimals", "continuous", "iris", "wine", "diabetes")
QUICK = ("counts", "decimals", "iris", "wine") + ("counts_nan",)  # what the test suite runs
WITH_NAN = ("counts_nan",)


def _steps() -> dict[str, tuple[Callable[[], list], tuple[str, ...]]]:
    """name → (the steps before the forest, the datasets it is checked on)."""
    from sklearn.decomposition import PCA
    from sklearn.feature_selection import VarianceThreshold
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import (
        KBinsDiscretizer, MaxAbsScaler, MinMaxScaler, Normalizer, PolynomialFeatures, QuantileTransformer,
        RobustScaler, StandardScaler,
    )

    every = tuple(name for name in DATASETS if name not in WITH_NAN)
    return {
        "StandardScaler": (lambda: [StandardScaler()], every + WITH_NAN),
        "MinMaxScaler": (lambda: [MinMaxScaler()], every + WITH_NAN),
        "RobustScaler": (lambda: [RobustScaler()], every + WITH_NAN),
        "MaxAbsScaler": (lambda: [MaxAbsScaler()], every + WITH_NAN),
        "SimpleImputer + StandardScaler": (lambda: [SimpleImputer(strategy="median"), StandardScaler()],
                                           SMALL + WITH_NAN),
        "QuantileTransformer": (lambda: [QuantileTransformer(n_quantiles=100)], every + WITH_NAN),
        "PCA": (lambda: [StandardScaler(), PCA(n_components=3)], SMALL),
        "Normalizer": (lambda: [Normalizer()], SMALL),
        "KBinsDiscretizer": (lambda: [KBinsDiscretizer(n_bins=5, encode="ordinal")], SMALL),
        "PolynomialFeatures": (lambda: [PolynomialFeatures(degree=2)], SMALL),
        "VarianceThreshold": (lambda: [MinMaxScaler(), VarianceThreshold(0.01)], SMALL),
        "SimpleImputer + KBinsDiscretizer": (lambda: [SimpleImputer(), KBinsDiscretizer(
            n_bins=4, encode="ordinal", strategy="uniform")], WITH_NAN),
    }


def _frame_cases() -> dict[str, Callable]:
    """DataFrame pipelines selecting columns by name (one input per column), fitted on `counts`."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    return {
        "ColumnTransformer (by name)": lambda: [ColumnTransformer(
            [("scaled", StandardScaler(), ["count", "age"]), ("rating", MinMaxScaler(), ["rating"])],
            remainder="passthrough")],
        "set_output(pandas)": lambda: [StandardScaler().set_output(transform="pandas")],
    }


def _forests(task: str) -> dict[str, type]:
    from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor, RandomForestClassifier, RandomForestRegressor

    if task == "regression":
        return {"RandomForestRegressor": RandomForestRegressor, "ExtraTreesRegressor": ExtraTreesRegressor}
    return {"RandomForestClassifier": RandomForestClassifier, "ExtraTreesClassifier": ExtraTreesClassifier}


def _targets(dataset: str):
    loader, kinds = DATASETS[dataset]
    X, y = loader()
    if kinds == "classification":
        yield "classification", X, y
        return
    if kinds in ("both", "regression"):
        yield "regression", X, y
    if kinds == "both":
        yield "classification", X, _classes(y)


def rows_off(estimator, prediction, X, classifier: bool) -> tuple[int, float]:
    """Rows whose exported answer differs from sklearn's beyond the tolerances, and the largest error."""
    from rf_triton.export.parity import labels_differ, relative_errors, sklearn_prediction

    expected = sklearn_prediction(estimator, X, classifier)
    if not classifier:
        values = np.asarray(prediction.values, dtype=np.float64).reshape(expected.values.shape)
        errors = relative_errors(expected.values, values).reshape(values.shape).max(axis=1)
        return int((errors > REGRESSION_TOLERANCE).sum()), float(errors.max())
    errors = np.abs(np.asarray(prediction.probabilities, dtype=np.float64) - expected.probabilities).max(axis=1)
    labels = labels_differ(expected.probabilities, expected.labels, prediction.labels)
    return int(((errors > PROBABILITY_TOLERANCE) | labels).sum()), float(errors.max())


def check(step: str, make_steps: Callable[[], list], forest_name: str, forest_type: type, dataset: str,
          X, y, frame_columns: list[str] | None = None) -> Case:
    """Fit step → forest on the training rows, convert, and compare every row (training and held-out)."""
    import pandas as pd
    from sklearn.pipeline import make_pipeline

    from rf_triton.export import onnx_convert, sources

    order = np.random.default_rng(0).permutation(len(X))
    train = order[: int(TRAIN_FRACTION * len(X))]
    data = pd.DataFrame(X, columns=frame_columns) if frame_columns else X
    fit_rows = data.iloc[train] if frame_columns else X[train]
    estimator = make_pipeline(*make_steps(), forest_type(n_estimators=N_TREES, random_state=0)).fit(fit_rows, y[train])
    names = list(frame_columns) if frame_columns else [f"x{i}" for i in range(X.shape[1])]
    trained = sources.TrainedModel(estimator, names, data, "fidelity matrix")
    prediction = onnx_convert.predict(onnx_convert.convert(trained), data)
    classifier = trained.task == "classification"
    off, error = rows_off(estimator, prediction, data, classifier)
    return Case(step, forest_name, dataset, len(X), off, error, trained.numeric_datatype)


def run_matrix(quick: bool = False) -> list[Case]:
    """Every case of the matrix (`quick`: integer, decimal and NaN data, iris and wine only)."""
    cases = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step, (make_steps, datasets) in _steps().items():
            for dataset in datasets:
                if quick and dataset not in QUICK:
                    continue
                for task, X, y in _targets(dataset):
                    for forest_name, forest_type in _forests(task).items():
                        cases.append(check(step, make_steps, forest_name, forest_type, dataset, X, y))
        X, y = _grid()
        for step, make_steps in _frame_cases().items():
            for task, target in (("regression", y), ("classification", _classes(y))):
                for forest_name, forest_type in _forests(task).items():
                    cases.append(check(step, make_steps, forest_name, forest_type, "counts", X, target,
                                       ["count", "age", "rating", "score"]))
    return cases


def summary(cases: list[Case]) -> list[dict]:
    """Per step: datasets, cases, rows compared, rows off, the largest error, the input datatype."""
    steps: dict[str, dict] = {}
    for case in cases:
        entry = steps.setdefault(case.step, {"step": case.step, "cases": 0, "rows": 0, "rows_off": 0,
                                             "max_error": 0.0, "datasets": [], "input_datatype": case.input_datatype})
        entry["cases"] += 1
        entry["rows"] += case.rows
        entry["rows_off"] += case.rows_off
        entry["max_error"] = max(entry["max_error"], case.max_error)
        if case.dataset not in entry["datasets"]:
            entry["datasets"].append(case.dataset)
    return list(steps.values())


def markdown(cases: list[Case]) -> str:
    import onnxruntime
    import sklearn

    lines = [f"# Fidelity matrix (sklearn {sklearn.__version__}, ONNX Runtime {onnxruntime.__version__})", "",
             f"Each step before a RandomForest and an ExtraTrees regressor and classifier ({N_TREES} trees), "
             "every row of each dataset (training and held-out) compared with sklearn. Off: regression > "
             f"{REGRESSION_TOLERANCE:g} relative, a probability > {PROBABILITY_TOLERANCE:g}, or another label.", "",
             "| step | inputs | datasets | cases | rows compared | rows off | max error |",
             "|---|---|---|---|---|---|---|"]
    for entry in summary(cases):
        lines.append(f"| {entry['step']} | {entry['input_datatype']} | {', '.join(entry['datasets'])} | "
                     f"{entry['cases']} | {entry['rows']:,} | {entry['rows_off']:,} | {entry['max_error']:.2g} |")
    return "\n".join(lines) + "\n"


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Folder for fidelity.json and fidelity.md.")] = RESULTS,
) -> None:
    """Run the fidelity matrix and write its results."""
    started = time.perf_counter()
    cases = run_matrix()
    out.mkdir(parents=True, exist_ok=True)
    (out / "fidelity.json").write_text(json.dumps({
        "machine": platform.platform(), "seconds": round(time.perf_counter() - started, 1),
        "summary": summary(cases), "cases": [asdict(c) for c in cases]}, indent=2) + "\n")
    (out / "fidelity.md").write_text(markdown(cases))
    typer.echo(markdown(cases))


if __name__ == "__main__":
    app()
