"""Request payloads for the load test: random rows, or rows sampled from a CSV.

Kept apart from the Locust users (no locust/gevent import) so the payload rules can be tested
without monkey-patching the test process.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np


class PayloadError(ValueError):
    """The payload source cannot feed this model; the message says what to change."""


def random_rows(n_rows: int, n_features: int, rng: np.random.Generator) -> np.ndarray:
    """Standard-normal float32 rows: trees accept any finite value, so this exercises the server as is."""
    return rng.standard_normal((n_rows, n_features), dtype=np.float32)


def sample_csv_rows(path: str | Path, n_rows: int, n_features: int, feature_names: list[str] | None,
                    rng: np.random.Generator) -> np.ndarray:
    """`n_rows` rows drawn (with replacement, so a short file still fills a large request) from a CSV."""
    table = csv_feature_table(str(path), n_features, tuple(feature_names or ()))
    return table[rng.integers(0, len(table), size=n_rows)]


@lru_cache(maxsize=4)
def csv_feature_table(path: str, n_features: int, feature_names: tuple[str, ...]) -> np.ndarray:
    """The CSV's feature columns as float32, read once per process however many users share it.

    Columns are matched by the model's feature names when the file has them all (extra columns,
    such as the target, are dropped); otherwise the file must hold exactly `n_features` columns.
    """
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise PayloadError(f"cannot read payload CSV {path}: {exc}") from None
    if feature_names and all(name in frame.columns for name in feature_names):
        frame = frame[list(feature_names)]
    elif frame.shape[1] != n_features:
        wanted = f"columns named {', '.join(feature_names)} or " if feature_names else ""
        raise PayloadError(f"payload CSV {path} has {frame.shape[1]} columns; the model takes {n_features} "
                           f"features: give {wanted}exactly {n_features} columns")
    if frame.empty:
        raise PayloadError(f"payload CSV {path} has no rows")
    try:
        table = frame.to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"payload CSV {path} holds non-numeric feature values: {exc}") from None
    if not np.isfinite(table).all():
        raise PayloadError(f"payload CSV {path} holds empty, NaN or infinite feature values")
    return table
