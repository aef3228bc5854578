"""sklearn → treelite checkpoint for Triton's FIL backend, the path that evaluates the trees on a GPU.

ONNX Runtime runs tree ensembles on the CPU only; FIL (in the stock container) runs them on the GPU.
The checkpoint is checked here with treelite's own predictor (GTIL) on the bytes that get written.
"""

from __future__ import annotations

import numpy as np

from . import parity
from .errors import ExportError, first_line
from .onnx_convert import GraphSignature

# Names the FIL backend requires.
INPUT_NAME = "input__0"
OUTPUT_NAME = "output__0"
# The 24.10 container's FIL backend is built with treelite 4.3.0; its checkpoints are read by any 4.x.
TREELITE_MAJOR = 4


def forest_only(estimator):
    """The RandomForestRegressor itself; a Pipeline with preprocessing is refused, FIL only runs trees."""
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline):
        return estimator
    preprocessing = [name for name, step in estimator.steps[:-1] if step not in (None, "passthrough")]
    if preprocessing:
        raise ExportError(f"a Pipeline with preprocessing ({', '.join(preprocessing)}) cannot go to FIL, which "
                          "evaluates trees only: use --format onnx (the whole Pipeline becomes one graph) or "
                          "export the bare RandomForestRegressor and preprocess in the client")
    return estimator.steps[-1][1]


def convert(estimator, n_features: int) -> bytes:
    """Serialize the forest as a treelite checkpoint (checkpoint.tl) for `model_type: treelite_checkpoint`."""
    import treelite

    forest = forest_only(estimator)
    if int(treelite.__version__.split(".")[0]) != TREELITE_MAJOR:
        raise ExportError(f"treelite {treelite.__version__} is installed; the FIL backend reads treelite "
                          f"{TREELITE_MAJOR}.x checkpoints (pip install 'treelite=={TREELITE_MAJOR}.3.0')")
    try:
        model = treelite.sklearn.import_model(forest)
    except Exception as exc:  # treelite raises TreeliteError/NotImplementedError for what it cannot import
        raise ExportError(f"treelite cannot import this model: {type(exc).__name__}: "
                          f"{first_line(exc)}") from exc
    if model.num_feature != n_features:
        raise ExportError(f"treelite model has {model.num_feature} features, expected {n_features}")
    return bytes(model.serialize_bytes())


def signature(checkpoint: bytes) -> GraphSignature:
    """FIL's fixed tensor names; dims from the checkpoint (one FP32 value per row for a regressor)."""
    model = _load(checkpoint)
    if model.num_tree < 1:
        raise ExportError("the treelite model has no trees")
    return GraphSignature(INPUT_NAME, [int(model.num_feature)], OUTPUT_NAME, [1])


def predict(checkpoint: bytes, X: np.ndarray) -> np.ndarray:
    """Treelite's reference predictor (GTIL) on the serialized bytes, float32 rows as FIL receives them."""
    import treelite.gtil

    output = treelite.gtil.predict(_load(checkpoint), np.asarray(X, dtype=np.float32))
    return np.asarray(output).reshape(-1)


def check_parity(estimator, checkpoint: bytes, X: np.ndarray, tolerance: float) -> parity.ParityReport:
    return parity.check_parity(estimator, lambda rows: predict(checkpoint, rows), X, tolerance, "treelite (GTIL)")


def tool_versions() -> dict[str, str]:
    import treelite

    return {"treelite": treelite.__version__}


def _load(checkpoint: bytes):
    import treelite

    try:
        return treelite.Model.deserialize_bytes(checkpoint)
    except Exception as exc:  # TreeliteError for corrupt or foreign bytes
        raise ExportError(f"not a readable treelite checkpoint: {type(exc).__name__}") from exc
