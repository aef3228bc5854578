"""The preprocessing steps before a forest: which ones compute with numbers, which ones convert.

sklearn computes every preprocessing step in float64 on the values it is given and casts the
result to float32 once, before the trees. A graph that computes the same step in float32 answers
differently on data whose values sit on split thresholds (counts, ages, values with a decimal or
two), so a pipeline that computes with its numbers is exported with FP64 inputs and a float64
graph up to the forest. A bare forest, or encoders and passthrough only, keeps FP32 inputs: sklearn
itself casts those numbers to float32, and they travel in half the bytes.

Each supported step converts in double with skl2onnx, or with a converter here where skl2onnx's
double graph does not run on the container's ONNX Runtime; anything else is refused in one line
that names the step. The converters are handed to skl2onnx per call, never registered.
"""

from __future__ import annotations

import numpy as np

from ..signature import FP32, FP64
from .errors import ExportError

PASSTHROUGH = ("passthrough", "drop")
# Steps exported in float64, checked row for row against sklearn on integer, decimal and
# continuous data by tests/test_pipeline_fidelity.py.
SUPPORTED = (
    "StandardScaler", "MinMaxScaler", "RobustScaler", "MaxAbsScaler", "SimpleImputer", "OneHotEncoder",
    "OrdinalEncoder", "ColumnTransformer", "Pipeline", "PCA", "Normalizer", "KBinsDiscretizer",
    "PowerTransformer", "QuantileTransformer", "PolynomialFeatures", "FunctionTransformer",
)
# Steps skl2onnx converts but whose graph does not compute what sklearn computes: refused by name.
REFUSED: dict[str, str] = {}


def encoders():
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    return OneHotEncoder, OrdinalEncoder


def numeric_datatype(estimator, string_columns: tuple[str, ...] = (), feature_names=()) -> str:
    """FP64 when a step computes with a numeric column before the forest, else FP32."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline) or len(estimator.steps) == 1:
        return FP32
    before = [step for _, step in estimator.steps[:-1] if step not in PASSTHROUGH and step is not None]
    if not before:
        return FP32
    first, rest = before[0], before[1:]
    if rest or not isinstance(first, ColumnTransformer):
        return FP64
    from .sources import column_names

    transformers = list(first.transformers_)
    for _, transformer, columns in transformers:
        if transformer in PASSTHROUGH:
            continue
        names = column_names(columns, list(feature_names)) if len(feature_names) else []
        numeric = [n for n in names if n not in string_columns] if names else [None]
        if numeric and not _only_encodes_strings(transformer, bool(names) and not numeric):
            return FP64
    return FP32


def _only_encodes_strings(transformer, strings_only: bool) -> bool:
    return strings_only and isinstance(_last(transformer), encoders())


def _last(transformer):
    from sklearn.pipeline import Pipeline

    return transformer.steps[-1][1] if isinstance(transformer, Pipeline) else transformer


def walk(estimator):
    """Every step before the forest, nested pipelines and column transformers opened."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        for _, step in estimator.steps:
            yield from walk(step)
    elif isinstance(estimator, ColumnTransformer):
        for _, transformer, _ in estimator.transformers_:
            if transformer not in PASSTHROUGH:
                yield from walk(transformer)
    else:
        yield estimator


def check_convertible(estimator) -> None:
    """Refuse, in one line naming it, a step whose exported graph cannot compute what sklearn does."""
    from .sources import FOREST_TYPES

    for step in walk(estimator):
        name = type(step).__name__
        if name in FOREST_TYPES:
            continue
        if name in REFUSED:
            raise ExportError(f"{name} cannot be served exactly: {REFUSED[name]}")
        problem = _unsupported_setting(step)
        if problem:
            raise ExportError(f"{name}: {problem}")


def _unsupported_setting(step) -> str | None:
    from sklearn.impute import SimpleImputer

    if isinstance(step, SimpleImputer):
        if getattr(step, "add_indicator", False):
            return "add_indicator=True is not supported; add a MissingIndicator step or drop the option"
        missing = step.missing_values
        if not (isinstance(missing, float) and np.isnan(missing)):
            return f"missing_values={missing!r} is not supported; only NaN marks a missing value here"
    return None


def conversion_arguments(datatype: str) -> dict:
    """skl2onnx keyword arguments for one conversion: the float64 converters this module supplies."""
    from sklearn.impute import SimpleImputer

    if datatype != FP64:
        return {}
    return {"custom_conversion_functions": {SimpleImputer: convert_simple_imputer}}


def convert_simple_imputer(scope, operator, container) -> None:
    """SimpleImputer in float64: missing cells take the column's statistic, as sklearn does.

    skl2onnx writes an ai.onnx.ml Imputer, which ONNX Runtime implements for float only. Columns
    sklearn drops (all missing at fit time, keep_empty_features=False) are dropped here too.
    """
    from onnx import TensorProto
    from skl2onnx.operator_converters.common import concatenate_variables

    imputer = operator.raw_operator
    if len(operator.inputs) > 1:
        features = concatenate_variables(scope, operator.inputs, container)
    else:
        features = operator.inputs[0].full_name
    dtype = np.float64 if _is_double(operator.inputs[0].type) else np.float32
    statistics = np.asarray(imputer.statistics_, dtype=np.float64)
    keep = np.flatnonzero(~np.isnan(statistics)) if not getattr(imputer, "keep_empty_features", False) \
        else np.arange(len(statistics))
    fill = np.where(np.isnan(statistics), 0.0, statistics)[keep].astype(dtype)
    name = scope.get_unique_variable_name
    if len(keep) != len(statistics):
        kept = name("imputer_kept")
        indices = name("imputer_columns")
        container.add_initializer(indices, TensorProto.INT64, [len(keep)], keep.tolist())
        container.add_node("Gather", [features, indices], kept, axis=1, name=scope.get_unique_operator_name("Gather"))
        features = kept
    missing = name("imputer_missing")
    container.add_node("IsNaN", features, missing, name=scope.get_unique_operator_name("IsNaN"))
    values = name("imputer_fill")
    container.add_initializer(values, TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT,
                              [1, len(keep)], fill.tolist())
    container.add_node("Where", [missing, values, features], operator.outputs[0].full_name,
                       name=scope.get_unique_operator_name("Where"))


def _is_double(tensor_type) -> bool:
    from skl2onnx.common.data_types import DoubleTensorType

    return isinstance(tensor_type, DoubleTensorType)
