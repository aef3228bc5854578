"""Request payloads for the load test: random rows, or rows sampled from a CSV, one array per input.

Each input gets the datatype the model's config declares for it (FP32, FP64 or BYTES): one matrix
for numeric models, one column per input for models fitted on a DataFrame. NaN is a value the
model routes as sklearn does; infinity is refused, as sklearn refuses it.

Kept apart from the Locust users (no locust/gevent import) so the payload rules can be tested
without monkey-patching the test process.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..client.client import beyond_range
from ..signature import BYTES, Signature, numpy_dtype

# What a string input gets in random payloads when the model keeps no list of known categories:
# its encoder ignores unknown values (sklearn's handle_unknown="ignore"), so any string is valid.
ANY_CATEGORY = "unknown"


class PayloadError(ValueError):
    """The payload source cannot feed this model; the message says what to change."""


def random_rows(n_rows: int, n_features: int, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Standard-normal rows: trees accept any finite value, so this exercises the server as is."""
    return rng.standard_normal((n_rows, n_features)).astype(dtype)


def random_tensors(signature: Signature, n_rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One array per input of the model, in its datatype: numbers drawn at random, strings drawn from
    the categories the model knows."""
    if not signature.columnar:
        (tensor,) = signature.inputs
        return {tensor.name: random_rows(n_rows, int(tensor.dims[-1]), rng, numpy_dtype(tensor.datatype))}
    known = dict(signature.known_categories)
    tensors = {}
    for tensor in signature.inputs:
        if tensor.datatype == BYTES:
            choices = list(known.get(tensor.name) or [ANY_CATEGORY])
            tensors[tensor.name] = np.asarray(rng.choice(choices, n_rows), dtype=object).reshape(-1, 1)
        else:
            tensors[tensor.name] = random_rows(n_rows, 1, rng, numpy_dtype(tensor.datatype))
    return tensors


def sample_csv_tensors(path: str | Path, n_rows: int, signature: Signature,
                       rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`n_rows` rows drawn (with replacement, so a short file still fills a large request) from a CSV."""
    table = csv_tensor_table(str(path), signature)
    picked = rng.integers(0, len(next(iter(table.values()))), size=n_rows)
    return {name: values[picked] for name, values in table.items()}


@lru_cache(maxsize=4)
def csv_tensor_table(path: str, signature: Signature) -> dict[str, np.ndarray]:
    """The CSV's rows as the model's inputs, read once per process however many users share it."""
    if not signature.columnar:
        (tensor,) = signature.inputs
        return {tensor.name: csv_feature_table(path, int(tensor.dims[-1]), signature.feature_names, tensor.datatype)}
    frame = _read(path)
    missing = [t.name for t in signature.inputs if t.name not in frame.columns]
    if missing:
        raise PayloadError(f"payload CSV {path} lacks column(s) {', '.join(missing)}; the model takes "
                           f"{', '.join(t.name for t in signature.inputs)}")
    tensors = {}
    for tensor in signature.inputs:
        column = frame[tensor.name]
        if tensor.datatype == BYTES:
            if column.isna().any():
                raise PayloadError(f"payload CSV {path} has empty values in column {tensor.name!r}, which takes strings")
            values = column.astype(str).to_numpy(dtype=object)
            unknown = signature.unknown_categories(tensor.name, values)
            if unknown:
                raise PayloadError(f"payload CSV {path} holds {values[unknown[0]]!r} in column {tensor.name!r}, "
                                   "not a category the model was fitted on")
            tensors[tensor.name] = values.reshape(-1, 1)
        else:
            tensors[tensor.name] = _numbers(path, column.to_frame(), tensor.datatype)
    return tensors


@lru_cache(maxsize=4)
def csv_feature_table(path: str, n_features: int, feature_names: tuple[str, ...], datatype: str = "FP32") -> np.ndarray:
    """The CSV's feature columns in the input's dtype, read once per process however many users share it.

    Columns are matched by the model's feature names when the file has them all (extra columns,
    such as the target, are dropped); otherwise the file must hold exactly `n_features` columns.
    """
    frame = _read(path)
    if feature_names and all(name in frame.columns for name in feature_names):
        frame = frame[list(feature_names)]
    elif frame.shape[1] != n_features:
        wanted = f"columns named {', '.join(feature_names)} or " if feature_names else ""
        raise PayloadError(f"payload CSV {path} has {frame.shape[1]} columns; the model takes {n_features} "
                           f"features: give {wanted}exactly {n_features} columns")
    return _numbers(path, frame, datatype)


def _read(path: str):
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise PayloadError(f"cannot read payload CSV {path}: {exc}") from None
    if frame.empty:
        raise PayloadError(f"payload CSV {path} has no rows")
    return frame


def _numbers(path: str, frame, datatype: str) -> np.ndarray:
    """A frame's values as `datatype`: NaN (an empty cell) is a value the model routes; infinity and,
    for FP32, values beyond its range are refused."""
    try:
        values = frame.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"payload CSV {path} holds non-numeric feature values: {exc}") from None
    if np.isinf(values).any() or beyond_range(values, datatype).any():
        raise PayloadError(f"payload CSV {path} holds infinite values (or values beyond the {datatype} range); "
                           "sklearn refuses them too (NaN is fine: the model routes it)")
    return values.astype(numpy_dtype(datatype))
