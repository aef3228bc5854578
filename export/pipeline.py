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

import numpy as np
from rich.console import Console

from .. import releases, repository
from ..signature import CLASSIFICATION, LABELS_FILENAME, Signature, classes_to_json
from . import fil, onnx_convert, parity, sources, triton_config
from .errors import ExportError
from .parity import ParityReport
from .triton_config import ServingOptions

DEFAULT_TOLERANCE = 1e-4
DEFAULT_MODEL_NAME = "random_forest"
DEFAULT_FORMAT = "onnx"


@dataclass(frozen=True)
class ExportFormat:
    """One way to serve the forest: a converter module (convert, signature, predict, check_parity,
    config_parameters and stale_parameters per release, tool_versions) and the Triton backend that
    reads what it writes."""

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
                 model_format: str = DEFAULT_FORMAT, parity_data: Path | None = None,
                 triton_release: str = releases.DEFAULT.tag) -> ExportResult:
    """Convert `trained`, check it against sklearn and against the Triton release it targets, and
    publish it as a new version.

    `parity_data`: a CSV or Parquet file of the user's own rows, compared row by row as well."""
    started = time.perf_counter()
    if model_format not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, not {model_format!r}")
    fmt = FORMATS[model_format]
    if not tolerance > 0:
        raise ExportError("--tolerance must be > 0")
    try:
        repository.check_model_name(name)
    except repository.RepositoryError as exc:
        raise ExportError(str(exc)) from None
    try:
        release = releases.get(triton_release)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    own_rows = sources.read_rows(parity_data, trained) if parity_data is not None else None

    with _status(console, fmt.converting):
        model_bytes = fmt.converter.convert(trained)
        graph = fmt.converter.signature(model_bytes, trained)
    check_release(model_bytes, model_format, release)
    rows = parity_rows(trained, own_rows)
    if console and trained.unmapped_steps and own_rows is None:
        console.print(f"[yellow]note:[/] {', '.join(trained.unmapped_steps)} mix columns: the probe rows cannot "
                      "follow the data's grid through them; --parity-data FILE checks your own rows too")
    with _status(console, f"Verifying parity on {len(rows)} rows (sklearn vs {fmt.checked_with})"):
        report = fmt.converter.check_parity(trained, model_bytes, rows, tolerance)
    if console:
        console.print(f"parity ({fmt.checked_with}): {report.describe()}")
    if not report.passed:
        raise ExportError(f"parity check failed: {report.failure()}; nothing written")

    metadata = {**_metadata(trained, report, graph, model_format, fmt), **release_metadata(release)}
    converter_parameters = fmt.converter.config_parameters(graph, release)

    def make_config(existing):
        chosen = options
        if (existing is None and fmt.backend.ort_threads and options.intra_op_threads is None
                and metadata["n_nodes"] >= triton_config.LARGE_FOREST_NODES):
            chosen = options.model_copy(update={"intra_op_threads": 0})
            if console:
                console.print(f"{metadata['n_nodes']:,} nodes: ONNX Runtime gets every core (--intra-op-threads 0)")
        return triton_config.build_config(name, graph, chosen, converter_parameters, existing, fmt.backend,
                                          fmt.converter.stale_parameters(release))

    version_files = {fmt.backend.model_filename: model_bytes,
                     repository.METADATA_FILENAME: (json.dumps(metadata, indent=2) + "\n").encode()}
    model_files = {LABELS_FILENAME: graph.labels_file().encode()} if graph.is_classifier else {}
    with _status(console, f"Writing {repository_path / name}"):
        try:
            published = repository.publish(repository_path, name, graph, make_config, version_files,
                                           model_files=model_files, version=version)
        except repository.RepositoryError as exc:
            raise ExportError(str(exc)) from None
    return ExportResult(published.version_dir, published.config_path, report, metadata,
                        time.perf_counter() - started)


def check_release(model_bytes: bytes, model_format: str, release: releases.Release) -> None:
    """Refuse, in one line, a model file the release's backend cannot load."""
    if model_format == "fil":
        version = fil.checkpoint_version(model_bytes)
        if not releases.reads_treelite_checkpoint(release, version):
            raise ExportError(f"{release.describe()} reads treelite {release.treelite} checkpoints, this one is "
                              f"{'.'.join(map(str, version))}: pip install 'treelite=={release.treelite}'")
        return
    problems = releases.problems_loading(model_bytes, release)
    if problems:
        raise ExportError(releases.refusal(problems, release))


def release_metadata(release: releases.Release) -> dict:
    """What metadata.json records of the release the version was exported for."""
    return {"triton_release": release.tag, "triton_server": release.server,
            "triton_onnxruntime": release.onnxruntime.version, "triton_treelite": release.treelite}


def parity_rows(trained: sources.TrainedModel, own_rows=None):
    """The validation (or probe) rows and the user's own rows, plus rows with missing values
    (sklearn answers them; so must the export).

    A pipeline whose sklearn steps refuse NaN is checked on the clean rows only.
    """
    rows = trained.X_val
    if own_rows is not None:
        if hasattr(rows, "columns"):
            import pandas as pd

            rows = pd.concat([rows, own_rows], ignore_index=True)
        else:
            rows = np.concatenate([np.asarray(rows, dtype=np.float64), own_rows])
    with_nan = parity.with_missing_values(rows, numeric=[c for c in trained.feature_names
                                                         if c not in trained.string_columns])
    try:
        trained.estimator.predict(parity.as_frame(trained.estimator, with_nan[:8]))
    except ValueError:
        return rows
    if hasattr(rows, "columns"):
        import pandas as pd

        return pd.concat([rows, with_nan], ignore_index=True)
    return np.concatenate([np.asarray(rows, dtype=np.float64), with_nan])


def _metadata(trained: sources.TrainedModel, parity: ParityReport, graph: Signature,
              model_format: str, fmt: ExportFormat) -> dict:
    import sklearn

    forest = trained.forest

    def tensors(items) -> list[dict]:
        return [{"name": t.name, "datatype": t.datatype, "dims": list(t.dims)} for t in items]

    metadata = {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": trained.source,
        "format": model_format,
        "backend": fmt.backend.name,
        "estimator": type(trained.estimator).__name__,
        "forest": type(forest).__name__,
        "task": trained.task,
        "pipeline_steps": [s for s, _ in getattr(trained.estimator, "steps", [])],
        "n_estimators": int(forest.n_estimators),
        "max_depth": forest.max_depth,
        "n_nodes": int(sum(t.tree_.node_count for t in forest.estimators_)),
        "feature_names": trained.feature_names,
        "inputs": tensors(graph.inputs),
        "outputs": tensors(graph.outputs),
        "scores": trained.scores,
        "parity": {**parity.as_dict(), "checked_with": fmt.checked_with},
        "versions": {"scikit-learn": sklearn.__version__, **fmt.converter.tool_versions()},
    }
    if trained.task == CLASSIFICATION:
        metadata["classes"] = classes_to_json(trained.classes)
    if trained.provenance:
        metadata["provenance"] = trained.provenance
    return metadata


def _status(console: Console | None, message: str):
    return console.status(message) if console else nullcontext()
