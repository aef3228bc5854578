"""One export, start to finish: source → ONNX → parity → config → repository.

Nothing is written unless every step before the write succeeded.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from . import onnx_convert, repository, sources, triton_config
from .errors import ExportError
from .triton_config import ServingOptions

DEFAULT_TOLERANCE = 1e-4
DEFAULT_MODEL_NAME = "random_forest"


@dataclass(frozen=True)
class ExportResult:
    version_dir: Path
    config_path: Path
    parity: onnx_convert.ParityReport
    metadata: dict
    seconds: float


def export_model(trained: sources.TrainedModel, repository_path: Path, *, name: str = DEFAULT_MODEL_NAME,
                 version: int | None = None, options: ServingOptions = ServingOptions(),
                 tolerance: float = DEFAULT_TOLERANCE, console: Console | None = None) -> ExportResult:
    """Convert `trained`, check it against sklearn, and publish it as a new version."""
    started = time.perf_counter()
    if not tolerance > 0:
        raise ExportError("--tolerance must be > 0")
    triton_config.validate(options)
    config_path = repository_path / name / triton_config.CONFIG_FILENAME
    existing = triton_config.read_config(config_path) if config_path.is_file() else None

    with _status(console, "Converting to ONNX (skl2onnx)"):
        onnx_bytes = onnx_convert.convert(trained.estimator, trained.n_features)
        graph = onnx_convert.signature(onnx_bytes)
    with _status(console, f"Verifying parity on {len(trained.X_val)} rows (sklearn vs ONNX Runtime)"):
        parity = onnx_convert.check_parity(trained.estimator, onnx_bytes, trained.X_val, tolerance)
    if console:
        console.print(f"parity: max abs error {parity.max_abs_error:.3g}, "
                      f"max rel error {parity.max_rel_error:.3g} (tolerance {tolerance:g})")
    if not parity.passed:
        raise ExportError(f"parity check failed: max relative error {parity.max_rel_error:.3g} "
                          f"exceeds tolerance {tolerance:g}; nothing written")

    metadata = _metadata(trained, parity, graph)
    config = triton_config.build_config(name, graph, options, _config_parameters(metadata), existing)
    with _status(console, f"Writing {repository_path / name}"):
        version_dir = repository.write_version(repository_path, name, version, onnx_bytes, metadata, config)
    return ExportResult(version_dir, config_path, parity, metadata, time.perf_counter() - started)


def _metadata(trained: sources.TrainedModel, parity: onnx_convert.ParityReport,
              graph: onnx_convert.GraphSignature) -> dict:
    import onnxruntime
    import skl2onnx
    import sklearn

    forest = trained.forest
    return {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": trained.source,
        "estimator": type(trained.estimator).__name__,
        "pipeline_steps": [s for s, _ in getattr(trained.estimator, "steps", [])],
        "n_estimators": int(forest.n_estimators),
        "max_depth": forest.max_depth,
        "feature_names": trained.feature_names,
        "input": {"name": graph.input_name, "dims": graph.input_dims, "datatype": "FP32"},
        "output": {"name": graph.output_name, "dims": graph.output_dims, "datatype": "FP32"},
        "scores": trained.scores,
        "parity": parity.as_dict(),
        "versions": {"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
    }


def _config_parameters(metadata: dict) -> dict[str, str]:
    """The part of the metadata a client reads back through the model config."""
    return {
        triton_config.FEATURE_NAMES_PARAMETER: json.dumps(metadata["feature_names"]),
        "sklearn_version": metadata["versions"]["scikit-learn"],
        "skl2onnx_version": metadata["versions"]["skl2onnx"],
    }


def _status(console: Console | None, message: str):
    return console.status(message) if console else nullcontext()
