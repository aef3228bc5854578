"""One export, start to finish: source → model file (ONNX or FIL) → parity → config → repository.

Nothing is written unless every step before the write succeeded.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from rich.console import Console

from . import fil, onnx_convert, repository, sources, triton_config
from .errors import ExportError
from .parity import ParityReport
from .triton_config import ServingOptions

DEFAULT_TOLERANCE = 1e-4
DEFAULT_MODEL_NAME = "random_forest"
DEFAULT_FORMAT = "onnx"


@dataclass(frozen=True)
class ExportFormat:
    """One way to serve the forest: a converter module (convert/signature/check_parity/tool_versions)
    and the Triton backend that reads what it writes."""

    converter: ModuleType
    backend: triton_config.Backend
    converting: str  # status line while converting
    checked_with: str  # what the parity check runs the exported bytes with


FORMATS = {
    "onnx": ExportFormat(onnx_convert, triton_config.ONNXRUNTIME, "Converting to ONNX (skl2onnx)", "ONNX Runtime"),
    "fil": ExportFormat(fil, triton_config.FIL, "Converting to a treelite checkpoint (FIL)", "treelite GTIL"),
}


@dataclass(frozen=True)
class ExportResult:
    version_dir: Path
    config_path: Path
    parity: ParityReport
    metadata: dict
    seconds: float


def export_model(trained: sources.TrainedModel, repository_path: Path, *, name: str = DEFAULT_MODEL_NAME,
                 version: int | None = None, options: ServingOptions = ServingOptions(),
                 tolerance: float = DEFAULT_TOLERANCE, console: Console | None = None,
                 model_format: str = DEFAULT_FORMAT) -> ExportResult:
    """Convert `trained`, check it against sklearn, and publish it as a new version."""
    started = time.perf_counter()
    if model_format not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, not {model_format!r}")
    fmt = FORMATS[model_format]
    if not tolerance > 0:
        raise ExportError("--tolerance must be > 0")
    triton_config.validate(options)
    config_path = repository_path / name / triton_config.CONFIG_FILENAME
    existing = triton_config.read_config(config_path) if config_path.is_file() else None

    with _status(console, fmt.converting):
        model_bytes = fmt.converter.convert(trained.estimator, trained.n_features)
        graph = fmt.converter.signature(model_bytes)
    with _status(console, f"Verifying parity on {len(trained.X_val)} rows (sklearn vs {fmt.checked_with})"):
        parity = fmt.converter.check_parity(trained.estimator, model_bytes, trained.X_val, tolerance)
    if console:
        console.print(f"parity: max abs error {parity.max_abs_error:.3g}, "
                      f"max rel error {parity.max_rel_error:.3g} (tolerance {tolerance:g}, {fmt.checked_with})")
    if not parity.passed:
        raise ExportError(f"parity check failed: max relative error {parity.max_rel_error:.3g} "
                          f"exceeds tolerance {tolerance:g}; nothing written")

    metadata = _metadata(trained, parity, graph, model_format, fmt)
    config = triton_config.build_config(name, graph, options, _config_parameters(metadata), existing, fmt.backend)
    with _status(console, f"Writing {repository_path / name}"):
        version_dir = repository.write_version(repository_path, name, version, fmt.backend.model_filename,
                                               model_bytes, metadata, config)
    return ExportResult(version_dir, config_path, parity, metadata, time.perf_counter() - started)


def _metadata(trained: sources.TrainedModel, parity: ParityReport, graph: onnx_convert.GraphSignature,
              model_format: str, fmt: ExportFormat) -> dict:
    import sklearn

    forest = trained.forest
    return {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": trained.source,
        "format": model_format,
        "backend": fmt.backend.name,
        "estimator": type(trained.estimator).__name__,
        "pipeline_steps": [s for s, _ in getattr(trained.estimator, "steps", [])],
        "n_estimators": int(forest.n_estimators),
        "max_depth": forest.max_depth,
        "feature_names": trained.feature_names,
        "input": {"name": graph.input_name, "dims": graph.input_dims, "datatype": "FP32"},
        "output": {"name": graph.output_name, "dims": graph.output_dims, "datatype": "FP32"},
        "scores": trained.scores,
        "parity": {**parity.as_dict(), "checked_with": fmt.checked_with},
        "versions": {"scikit-learn": sklearn.__version__, **fmt.converter.tool_versions()},
    }


def _config_parameters(metadata: dict) -> dict[str, str]:
    """The part of the metadata a client reads back through the model config."""
    versions = metadata["versions"]
    parameters = {
        triton_config.FEATURE_NAMES_PARAMETER: json.dumps(metadata["feature_names"]),
        "sklearn_version": versions["scikit-learn"],
    }
    for tool in ("skl2onnx", "treelite"):  # the converter that wrote the model file
        if tool in versions:
            parameters[f"{tool}_version"] = versions[tool]
    return parameters


def _status(console: Console | None, message: str):
    return console.status(message) if console else nullcontext()
