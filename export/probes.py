"""Probe rows for a model that came without data: rows placed where an exported model can go wrong.

A forest trained on counts, ages, ratings or values with a decimal or two has its thresholds
exactly between two neighbouring values of that grid: a row holding the value in between sits on
the threshold, and one float32 ulp in the preprocessing decides its branch. Continuous values drawn
between thresholds never land there, so the probes are built on the data's grid:

- each threshold is mapped back to the raw column through the steps that act column by column
  (scalers, imputers, power and quantile transforms, feature selection), rounded to integers and
  to 1-4 decimals, with its neighbours on each of those grids;
- a KBinsDiscretizer's bin edges and their neighbours;
- encoders' categories (and one unseen value where the encoder accepts unknowns);
- rows that mix those values column by column, plus rows drawn uniformly across each column's
  range of thresholds.

Steps that mix columns (PCA, Normalizer, PolynomialFeatures) have no per-column grid to map back
to: their columns get the uniform rows only, and `unmapped` names them so that export can ask for
the user's own rows (`--parity-data`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .steps import is_passthrough, last_step

DECIMALS = (0, 1, 2, 3, 4)
MAX_VALUES_PER_COLUMN = 600  # candidate values kept per column (grid data has far fewer)
MIXED_ROWS = 3000  # rows drawing every column from its candidates at once
RANGE_ROWS = 1000  # rows drawn uniformly across each column's threshold range
UNSEEN = "(unseen)"


@dataclass
class Probes:
    rows: object  # float64 matrix, or a DataFrame for a columnar model
    unmapped: list[str] = field(default_factory=list)  # steps whose thresholds could not be mapped back


def thresholds_by_feature(forest) -> list[np.ndarray]:
    """The distinct finite split thresholds of each forest input feature."""
    found: list[list[np.ndarray]] = [[] for _ in range(int(forest.n_features_in_))]
    for estimator in forest.estimators_:
        tree = estimator.tree_
        split = (tree.feature >= 0) & np.isfinite(tree.threshold)
        for feature in np.unique(tree.feature[split]):
            found[feature].append(tree.threshold[split & (tree.feature == feature)])
    return [np.unique(np.concatenate(t)) if t else np.empty(0) for t in found]


def on_grid(raw: np.ndarray) -> list[np.ndarray]:
    """Raw values and their neighbours on the integer and 1-4 decimal grids, coarsest grid first
    (the raw values themselves last)."""
    raw = raw[np.isfinite(raw)]
    levels = []
    for decimals in DECIMALS:
        step = 10.0 ** -decimals
        rounded = np.round(raw, decimals)
        levels.append(np.unique(np.concatenate([rounded, np.round(rounded - step, decimals),
                                                np.round(rounded + step, decimals)])))
    return levels + [np.unique(raw)]


def _column_wise(step) -> bool:
    """Steps whose inverse maps one output column back to the same input column."""
    from sklearn.feature_selection import SelectorMixin
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import (
        MaxAbsScaler, MinMaxScaler, PowerTransformer, QuantileTransformer, RobustScaler, StandardScaler,
    )

    return isinstance(step, (StandardScaler, MinMaxScaler, RobustScaler, MaxAbsScaler, PowerTransformer,
                             QuantileTransformer, SimpleImputer, SelectorMixin))


def _width_in(step, width_out: int) -> int:
    n = getattr(step, "n_features_in_", None)
    return int(n) if n is not None else width_out


def map_back(steps: list, values: list[np.ndarray], unmapped: list[str]) -> list[np.ndarray]:
    """Per column of the steps' output, values (thresholds) mapped back to the steps' input columns."""
    from sklearn.feature_selection import SelectorMixin
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import KBinsDiscretizer

    for step in reversed(steps):
        if is_passthrough(step):
            continue
        width_in = _width_in(step, len(values))
        if isinstance(step, KBinsDiscretizer):
            values = [np.asarray(edges, dtype=np.float64) for edges in step.bin_edges_]
        elif isinstance(step, SelectorMixin):
            mapped = [np.empty(0)] * width_in
            for out, column in enumerate(np.flatnonzero(step.get_support())):
                mapped[column] = values[out]
            values = mapped
        elif isinstance(step, SimpleImputer):
            kept = np.flatnonzero(~np.isnan(np.asarray(step.statistics_, dtype=np.float64)))
            if getattr(step, "keep_empty_features", False):
                kept = np.arange(width_in)
            mapped = [np.empty(0)] * width_in
            for out, column in enumerate(kept):
                mapped[column] = values[out]
            values = mapped
        elif _column_wise(step) and width_in == len(values):
            values = [_inverse_column(step, j, v, width_in) for j, v in enumerate(values)]
        else:
            unmapped.append(type(step).__name__)
            values = [np.empty(0)] * width_in
    return values


def _inverse_column(step, column: int, values: np.ndarray, width: int) -> np.ndarray:
    if not len(values):
        return values
    matrix = np.zeros((len(values), width))
    matrix[:, column] = values
    try:
        return np.asarray(step.inverse_transform(matrix), dtype=np.float64)[:, column]
    except (ValueError, TypeError, AttributeError):
        return np.empty(0)


def _candidates(values: np.ndarray, rng) -> np.ndarray:
    """A raw column's thresholds on the data's grid, at most MAX_VALUES_PER_COLUMN of them, taken
    grid by grid from the coarsest (integers) on: a column of counts keeps every count."""
    kept: list[float] = []
    seen: set[float] = set()
    for level in on_grid(np.asarray(values, dtype=np.float64)):
        fresh = np.asarray([v for v in level.tolist() if v not in seen])
        room = MAX_VALUES_PER_COLUMN - len(kept)
        if room <= 0:
            break
        if len(fresh) > room:
            fresh = rng.choice(fresh, room, replace=False)
        kept.extend(fresh.tolist())
        seen.update(fresh.tolist())
    return np.sort(np.asarray(kept, dtype=np.float64))


def _rows(candidates: list, ranges: list[tuple[float, float]], rng):
    """Rows mixing every column's candidates, rows setting one column to each of its candidates,
    and rows drawn across each column's range. `candidates` items are float arrays or object
    arrays (categories)."""
    def draw(j, n):
        values = candidates[j]
        if len(values):
            return rng.choice(values, n)
        low, high = ranges[j]
        return rng.uniform(low, high, n)

    n_columns = len(candidates)
    blocks = [[draw(j, MIXED_ROWS) for j in range(n_columns)]]
    for j, values in enumerate(candidates):
        if len(values) and not isinstance(values[0], str):
            block = [draw(k, len(values)) for k in range(n_columns)]
            block[j] = values
            blocks.append(block)
    blocks.append([rng.choice(candidates[j], RANGE_ROWS) if len(candidates[j]) and isinstance(candidates[j][0], str)
                   else rng.uniform(*ranges[j], RANGE_ROWS) for j in range(n_columns)])
    return [np.concatenate([block[j] for block in blocks]) for j in range(n_columns)]


def _range(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return -1.0, 1.0
    low, high = float(values.min()), float(values.max())
    margin = max((high - low) * 0.1, 1e-3)
    return low - margin, high + margin


def probe_rows(estimator, feature_names: list[str], string_columns: tuple[str, ...] = (),
               columnar: bool = False, seed: int = 0) -> Probes:
    """Rows that reach both sides of the forest's thresholds on the data's grid."""
    from sklearn.pipeline import Pipeline

    from .sources import final_forest

    rng = np.random.default_rng(seed)
    forest = final_forest(estimator)
    forest_values = thresholds_by_feature(forest)
    steps = [step for _, step in estimator.steps[:-1]] if isinstance(estimator, Pipeline) else []
    unmapped: list[str] = []
    if not columnar:
        raw = map_back(steps, forest_values, unmapped)
        if len(raw) != len(feature_names):
            raw = [np.empty(0)] * len(feature_names)
        candidates = [_candidates(v, rng) for v in raw]
        ranges = [_range(v) for v in raw]
        columns = _rows(candidates, ranges, rng)
        return Probes(np.column_stack(columns).astype(np.float64), sorted(set(unmapped)))
    return _probe_columns(estimator, steps, forest_values, feature_names, string_columns, rng, unmapped)


def _probe_columns(estimator, steps, forest_values, feature_names, string_columns, rng, unmapped) -> Probes:
    """A columnar pipeline: each transformer of the leading ColumnTransformer maps its own columns."""
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from .sources import column_names

    transformer_outputs = map_back(steps[1:], forest_values, unmapped)
    columns_step = steps[0]
    per_column: dict[str, np.ndarray] = {}
    for name, transformer, selected in columns_step.transformers_:
        names = column_names(selected, feature_names)
        if transformer == "drop" or not names or name not in columns_step.output_indices_:
            continue
        out = columns_step.output_indices_[name]
        encoder = last_step(transformer)
        categories = getattr(encoder, "categories_", None)
        if categories is not None:
            for column, values in zip(names, categories):
                kept = [v for v in values if not (isinstance(v, float) and np.isnan(v))]
                if column in string_columns:
                    kept = [str(v) for v in kept]
                    if getattr(encoder, "handle_unknown", "error") != "error":
                        kept.append(UNSEEN)
                    per_column[column] = np.asarray(kept, dtype=object)
                else:
                    per_column[column] = np.asarray(kept, dtype=np.float64)
            continue
        values = transformer_outputs[out.start:out.stop] if len(transformer_outputs) >= out.stop else []
        inner = transformer.steps if isinstance(transformer, Pipeline) else [(name, transformer)]
        mapped = map_back([s for _, s in inner], list(values), unmapped) if len(values) == out.stop - out.start \
            else [np.empty(0)] * len(names)
        if len(mapped) != len(names):
            mapped = [np.empty(0)] * len(names)
        for column, raw in zip(names, mapped):
            per_column[column] = raw
    candidates, ranges = [], []
    for column in feature_names:
        values = per_column.get(column, np.empty(0))
        is_string = values.dtype == object
        candidates.append(values if is_string else _candidates(values, rng))
        ranges.append((0.0, 1.0) if is_string else _range(values))
    drawn = _rows(candidates, ranges, rng)
    frame = pd.DataFrame({column: (values.astype(object) if column in string_columns
                                   else np.asarray(values, dtype=np.float64))
                          for column, values in zip(feature_names, drawn)})
    return Probes(frame, sorted(set(unmapped)))
