"""MLflow models as a source: a registered model, a run's artifact, or a local MLflow model folder.

The model is read with MLflow's own loader (`mlflow.sklearn.load_model`), so MLflow's standard
environment decides where it comes from (MLFLOW_TRACKING_URI, MLFLOW_REGISTRY_URI, credentials)
and how it may be deserialized. What comes back is checked exactly as a pickled forest is
(sources.from_estimator); on top of that:
- the model's MLflow signature must describe the inputs the export serves (names, strings vs
  numbers), so that what the registry promises callers is what Triton will take;
- its logged input_example joins the parity rows: the rows its authors chose are checked too;
- metadata.json records the URI, the run and the registered version (TrainedModel.provenance).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from ..errors import first_line
from ..extras import install_hint
from . import parity, sources
from .errors import ExportError

logger = logging.getLogger(__name__)

URI_SCHEMES = ("models:/", "runs:/")
MLMODEL_FILENAME = "MLmodel"
EXTRA_HINT = install_hint("mlflow")
# MLflow column types a numeric input takes (the client sends booleans and integers as numbers)
NUMERIC_TYPES = {"double", "float", "long", "integer", "boolean"}
STRING_TYPES = {"string"}


def handles(model: str) -> bool:
    """True for what `--model` reads through MLflow: a models:/ or runs:/ URI, or a folder."""
    return model.startswith(URI_SCHEMES) or Path(model).is_dir()


def load_mlflow(uri: str) -> sources.TrainedModel:
    """Load an MLflow sklearn model, check it as any forest, its signature and input example."""
    mlflow = _import_mlflow(uri)
    local = Path(uri)
    if not uri.startswith(URI_SCHEMES) and not (local / MLMODEL_FILENAME).is_file():
        raise ExportError(f"{uri} is a folder without an {MLMODEL_FILENAME} file; --model takes a joblib/pickle "
                          "file, an MLflow model folder, or a models:/ or runs:/ URI")
    name, version = _registered_version(mlflow, uri) if uri.startswith("models:/") else (None, None)
    with tempfile.TemporaryDirectory(prefix="rf-triton-mlflow-") as download:
        if uri.startswith(URI_SCHEMES):
            # the registered version resolved above, so that what is recorded is what was loaded
            pinned = f"models:/{name}/{version}" if version is not None else uri
            folder = Path(_mlflow_call(uri, "download", mlflow.artifacts.download_artifacts,
                                       artifact_uri=pinned, dst_path=download))
        else:
            folder = local
        from mlflow.models import Model

        description = _mlflow_call(uri, f"read {MLMODEL_FILENAME} of", Model.load, str(folder))
        if "sklearn" not in description.flavors:
            raise ExportError(f"{uri} is an MLflow model without the sklearn flavor (flavors: "
                              f"{', '.join(sorted(description.flavors))}); expected {sources.EXPECTED}")
        import mlflow.sklearn

        estimator = _mlflow_call(uri, "load", mlflow.sklearn.load_model, str(folder))
        example = _mlflow_call(uri, "read the input_example of", description.load_input_example, str(folder))
    trained = sources.from_estimator(estimator, uri, f"MLflow model {uri}")
    if description.signature is not None:
        check_signature(description.signature.inputs, trained, uri)
    rows = example_rows(example, trained, uri) if example is not None else None
    if rows is not None:
        trained.X_val = _joined(trained.X_val, rows)
    trained.provenance = {"mlflow": {
        "uri": uri, "run_id": description.run_id, "registered_model": name,
        "registered_version": int(version) if version is not None else None,
        "model_id": getattr(description, "model_id", None), "signature_checked": description.signature is not None,
        "input_example_rows": 0 if rows is None else len(rows), "mlflow_version": mlflow.__version__,
    }}
    return trained


def _import_mlflow(uri: str):
    try:
        import mlflow
        import mlflow.artifacts
    except ImportError as exc:
        raise ExportError(f"{uri} is an MLflow model and MLflow is not installed ({first_line(exc)}): "
                          f"{EXTRA_HINT}") from exc
    return mlflow


def _mlflow_call(uri: str, action: str, function, *args, **kwargs):
    """MLflow's own error (unknown model, unreachable store, refused deserialization) as one line."""
    try:
        return function(*args, **kwargs)
    except ExportError:
        raise
    except ImportError as exc:  # a flavor's serializer (skops, cloudpickle) missing from this environment
        raise ExportError(f"cannot {action} {uri}: {first_line(exc)}; {EXTRA_HINT}") from exc
    except Exception as exc:  # MlflowException, OSError, requests' errors, a foreign pickle's anything
        raise ExportError(f"cannot {action} {uri}: {type(exc).__name__}: {first_line(exc)}") from exc


def _registered_version(mlflow, uri: str) -> tuple[str | None, str | None]:
    """(name, version) that a models:/ URI resolves to in the registry now; (None, None) for a
    logged model's id (models:/m-...), which is not a registered version."""
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = mlflow.MlflowClient()
    resolved = _mlflow_call(uri, "resolve", get_model_name_and_version, client, uri)
    if len(resolved) != 2:
        return None, None
    found = _mlflow_call(uri, "resolve", client.get_model_version, *resolved)  # a version that exists
    return str(found.name), str(found.version)


def exported_inputs(trained: sources.TrainedModel) -> dict[str, str]:
    """What the served model takes per column: 'string' (BYTES) or 'number' (FP32/FP64)."""
    return {name: "string" if name in trained.string_columns else "number" for name in trained.feature_names}


def check_signature(schema, trained: sources.TrainedModel, uri: str) -> None:
    """The MLflow input schema must name the exported inputs with compatible types; else one line."""
    expected = exported_inputs(trained)
    if schema.is_tensor_spec():
        problems = _tensor_problems(schema.inputs, trained)
    elif not schema.has_input_names():
        problems = [] if len(schema.inputs) == len(expected) else [
            f"{len(schema.inputs)} unnamed columns, the model takes {len(expected)}"]
        problems += [f"column {i} is {_type_name(s.type)}, served as a {kind}"
                     for i, (s, kind) in enumerate(zip(schema.inputs, expected.values()))
                     if not _compatible(_type_name(s.type), kind)]
    else:
        declared = {str(s.name): _type_name(s.type) for s in schema.inputs}
        missing = [n for n in expected if n not in declared]
        unexpected = [n for n in declared if n not in expected]
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"not taken by the model: {', '.join(unexpected)}"] if unexpected else []
        problems += [f"{n!r} is {declared[n]}, served as a {kind}" for n, kind in expected.items()
                     if n in declared and not _compatible(declared[n], kind)]
    if problems:
        raise ExportError(f"the MLflow signature of {uri} does not match the inputs the export serves: "
                          f"{'; '.join(problems)}")


def _tensor_problems(specs, trained: sources.TrainedModel) -> list[str]:
    if trained.columnar:
        return [f"a tensor signature, but the model takes named columns ({', '.join(trained.feature_names)})"]
    if len(specs) != 1:
        return [f"{len(specs)} tensors, the model takes one matrix"]
    (spec,) = specs
    problems = []
    if np.dtype(spec.type).kind not in "iufb":
        problems.append(f"tensor of {spec.type}, served as numbers")
    width = spec.shape[-1] if len(spec.shape) == 2 else None
    if width is None or (width != -1 and width != trained.n_features):
        problems.append(f"tensor shape {spec.shape}, the model takes (-1, {trained.n_features})")
    return problems


def _type_name(datatype) -> str:
    return getattr(datatype, "name", str(datatype))


def _compatible(mlflow_type: str, kind: str) -> bool:
    return mlflow_type in (STRING_TYPES if kind == "string" else NUMERIC_TYPES)


def example_rows(example, trained: sources.TrainedModel, uri: str):
    """The logged input_example in the layout of the parity rows, checked with sklearn itself."""
    import pandas as pd

    probe = trained.X_val
    if isinstance(example, (list, np.ndarray)) and not trained.columnar:
        matrix = np.asarray(example)
        if matrix.ndim != 2 or matrix.shape[1] != trained.n_features:
            raise ExportError(f"the input_example of {uri} has shape {matrix.shape}; the model takes "
                              f"{trained.n_features} features per row")
        example = pd.DataFrame(matrix, columns=trained.feature_names)
    if not isinstance(example, pd.DataFrame):
        raise ExportError(f"the input_example of {uri} is a {type(example).__name__}; expected a table of rows")
    missing = [n for n in trained.feature_names if n not in example.columns]
    if missing:
        raise ExportError(f"the input_example of {uri} lacks column(s) {', '.join(missing)}")
    empty = [c for c in trained.string_columns if example[c].isna().any()]
    if empty:
        raise ExportError(f"the input_example of {uri} has missing values in string column(s) {', '.join(empty)}")
    frame = example[trained.feature_names]
    try:
        if hasattr(probe, "columns"):
            rows = pd.DataFrame({c: frame[c].astype(str).astype(object) if c in trained.string_columns
                                 else frame[c].to_numpy(dtype=probe[c].dtype) for c in trained.feature_names})
        else:
            rows = frame.to_numpy(dtype=np.asarray(probe).dtype)
        trained.estimator.predict(parity.as_frame(trained.estimator, rows))
    except (TypeError, ValueError) as exc:
        raise ExportError(f"the input_example of {uri} cannot be predicted by the model itself: "
                          f"{first_line(exc)}") from exc
    logger.info("input_example of %s: %d rows join the parity rows", uri, len(rows))
    return rows


def _joined(probe, rows):
    if hasattr(probe, "columns"):
        import pandas as pd

        return pd.concat([probe, rows], ignore_index=True)
    return np.concatenate([np.asarray(probe), rows])
