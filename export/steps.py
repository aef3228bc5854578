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
    "OrdinalEncoder", "PCA", "Normalizer", "KBinsDiscretizer", "QuantileTransformer", "PolynomialFeatures",
)  # and feature selectors (SelectKBest, VarianceThreshold...: they keep columns as they are)
# Steps skl2onnx converts but whose graph does not compute what sklearn computes: refused by name.
REFUSED = {
    "PowerTransformer": "scipy computes the Yeo-Johnson and Box-Cox transforms with log1p and expm1, which ONNX "
                        "lacks; Log(1 + x) and Exp(y) - 1 in float64 still put rows of integer and 2-decimal data on "
                        "the other side of a threshold; fit the forest on the raw columns, or on a QuantileTransformer",
}


def is_passthrough(step) -> bool:
    """'passthrough', 'drop', None, or a FunctionTransformer without a function (sklearn puts one in
    a ColumnTransformer's fitted remainder): steps that hand their columns on as they are."""
    from sklearn.preprocessing import FunctionTransformer

    if step is None or (isinstance(step, str) and step in PASSTHROUGH):
        return True
    return isinstance(step, FunctionTransformer) and step.func is None


def encoders():
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    return OneHotEncoder, OrdinalEncoder


def numeric_datatype(estimator, string_columns: tuple[str, ...] = (), feature_names=()) -> str:
    """FP64 when a step computes with a numeric column before the forest, else FP32."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline) or len(estimator.steps) == 1:
        return FP32
    before = [step for _, step in estimator.steps[:-1] if not is_passthrough(step)]
    if not before:
        return FP32
    first, rest = before[0], before[1:]
    if rest or not isinstance(first, ColumnTransformer):
        return FP64
    from .sources import column_names

    transformers = list(first.transformers_)
    for _, transformer, columns in transformers:
        if is_passthrough(transformer):
            continue
        names = column_names(columns, list(feature_names)) if len(feature_names) else []
        numeric = [n for n in names if n not in string_columns] if names else [None]
        if numeric and not _only_encodes_strings(transformer, bool(names) and not numeric):
            return FP64
    return FP32


def _only_encodes_strings(transformer, strings_only: bool) -> bool:
    return strings_only and isinstance(last_step(transformer), encoders())


def last_step(transformer):
    """A ColumnTransformer's transformer itself, or the last step of a Pipeline given as one."""
    from sklearn.pipeline import Pipeline

    return transformer.steps[-1][1] if isinstance(transformer, Pipeline) else transformer


def walk(estimator):
    """Every step before the forest, nested pipelines and column transformers opened."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if is_passthrough(estimator):
        return
    if isinstance(estimator, Pipeline):
        for _, step in estimator.steps:
            yield from walk(step)
    elif isinstance(estimator, ColumnTransformer):
        for _, transformer, _ in estimator.transformers_:
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
        if name not in SUPPORTED and not _selects_features(step):
            raise ExportError(f"{name} is not a step rf-triton exports exactly (supported: {', '.join(SUPPORTED)} "
                              "and feature selectors)")
        problem = _unsupported_setting(step)
        if problem:
            raise ExportError(f"{name}: {problem}")


def _selects_features(step) -> bool:
    from sklearn.feature_selection import SelectorMixin

    return isinstance(step, SelectorMixin)


def _unsupported_setting(step) -> str | None:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import KBinsDiscretizer, PolynomialFeatures

    if isinstance(step, KBinsDiscretizer) and step.encode != "ordinal":
        return f"encode={step.encode!r} is not supported; use encode='ordinal' (the forest needs no one-hot bins)"
    if isinstance(step, PolynomialFeatures) and step._min_degree > 1:
        return "a minimum degree above 1 is not supported; use degree=N"
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
    from sklearn.preprocessing import KBinsDiscretizer, PolynomialFeatures

    if datatype != FP64:
        return {}
    return {"custom_conversion_functions": {SimpleImputer: convert_simple_imputer,
                                            KBinsDiscretizer: convert_kbins_discretizer,
                                            PolynomialFeatures: convert_polynomial_features}}


class _Graph:
    """Small float64 graph-building helpers over skl2onnx's scope and container."""

    def __init__(self, scope, container):
        self.scope, self.container = scope, container

    def constant(self, values, dtype=np.float64) -> str:
        from onnx import TensorProto

        values = np.asarray(values, dtype=dtype)
        name = self.scope.get_unique_variable_name("const")
        kind = {np.dtype(np.float64): TensorProto.DOUBLE, np.dtype(np.int64): TensorProto.INT64,
                np.dtype(bool): TensorProto.BOOL}[values.dtype]
        self.container.add_initializer(name, kind, list(values.shape), values.reshape(-1).tolist())
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attributes) -> str:
        output = output or self.scope.get_unique_variable_name(op.lower())
        self.container.add_node(op, inputs, output, name=self.scope.get_unique_operator_name(op), **attributes)
        return output

    def columns(self, features: str, start: int, stop: int) -> str:
        return self.node("Slice", [features, self.constant([start], np.int64), self.constant([stop], np.int64),
                                   self.constant([1], np.int64)])


def _features(scope, operator, container) -> str:
    from skl2onnx.operator_converters.common import concatenate_variables

    if len(operator.inputs) > 1:
        return concatenate_variables(scope, operator.inputs, container)
    return operator.inputs[0].full_name


def convert_kbins_discretizer(scope, operator, container) -> None:
    """KBinsDiscretizer(encode="ordinal") in float64: a value's bin is the number of inner edges at
    or below it, as sklearn's searchsorted(side="right") counts them (skl2onnx compares in float32)."""
    from onnx import TensorProto

    step = operator.raw_operator
    g = _Graph(scope, container)
    features = _features(scope, operator, container)
    bins = []
    for column, edges in enumerate(step.bin_edges_):
        inner = np.asarray(edges, dtype=np.float64)[1:-1]
        value = g.columns(features, column, column + 1)
        if not len(inner):
            bins.append(g.node("Mul", [value, g.constant([0.0])]))
            continue
        at_or_above = g.node("Cast", [g.node("GreaterOrEqual", [value, g.constant(inner.reshape(1, -1))])],
                             to=TensorProto.DOUBLE)
        bins.append(g.node("MatMul", [at_or_above, g.constant(np.ones((len(inner), 1)))]))
    g.node("Concat", bins, operator.outputs[0].full_name, axis=1)


def convert_polynomial_features(scope, operator, container) -> None:
    """PolynomialFeatures in float64, each product built in sklearn's own order (the degree d-1 block
    times one feature), so every output has the bits sklearn computes."""
    step = operator.raw_operator
    g = _Graph(scope, container)
    X = _features(scope, operator, container)
    n = int(step.n_features_in_)
    blocks, width = [], 0
    if step.include_bias:
        blocks.append(g.node("Add", [g.node("Mul", [g.columns(X, 0, 1), g.constant([0.0])]), g.constant([1.0])]))
        width = 1
    if step._max_degree >= 1:
        index = list(range(width, width + n))
        blocks.append(X)
        width += n
        index.append(width)
        for _ in range(2, step._max_degree + 1):
            so_far = g.node("Concat", list(blocks), axis=1) if len(blocks) > 1 else blocks[0]
            new_index, end = [], index[-1]
            for feature in range(n):
                start = index[feature]
                new_index.append(width)
                if step.interaction_only:
                    start += index[feature + 1] - index[feature]
                stop = width + end - start
                if stop <= width:
                    break
                product = g.node("Mul", [g.columns(so_far, start, end), g.columns(X, feature, feature + 1)])
                blocks.append(product)
                so_far = g.node("Concat", [so_far, product], axis=1)
                width = stop
            new_index.append(width)
            index = new_index
    if len(blocks) == 1:
        g.node("Identity", blocks, operator.outputs[0].full_name)
    else:
        g.node("Concat", blocks, operator.outputs[0].full_name, axis=1)


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
