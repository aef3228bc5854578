"""sklearn → treelite checkpoint for Triton's FIL backend, the path that evaluates the trees on a GPU.

ONNX Runtime runs tree ensembles on the CPU only; FIL (in the stock container) runs them on the GPU,
or with treelite's GTIL on the CPU. What the 24.10 FIL backend does was read in its source
(fil_backend r24.10, cuML branch-24.08 legacy FIL, rapids-triton), and this module writes what it reads:

- treelite 4.3.0 checkpoints (fil_backend r24.10 `cmake/thirdparty/get_treelite.cmake` pins 4.3.0;
  treelite's reader refuses another major version and warns on a newer minor one).
- NaN: treelite 4.3's sklearn importer sets every split's default direction to "left", dropping
  sklearn's `tree_.missing_go_to_left`. It is written back here, node by node. GTIL (CPU) sends NaN
  to `DefaultChild`; cuML's FIL (GPU) to `!def_left` after `from_treelite` copies `DefaultLeft`.
- Thresholds: the GPU compares float32 values against float32 thresholds, and a float64 sklearn
  threshold rounded to nearest can move a float32 input across the split. Each threshold is stored
  as the largest float32 not above it: for every float32 x, `x <= t` then holds exactly as sklearn
  computes it (float32 x against its float64 threshold), on GPU and CPU alike.
- Classifiers: `output_class` (`is_classifier` from 25.09) true, `threshold` (read whenever it is true), and
  `predict_proba` true, so output__0 holds the class probabilities in `classes_` order, two a row
  for a binary classifier. There is no label output: the client takes classes_[argmax].
- Output shapes: the backend squeezes size-1 dims (`rapids::SharedModelState{config, true}` in
  `src/shared_state.h`): a regressor's output__0 comes back [N] although dims are [1];
  a classifier's [N, n_classes].
- One target only (`tl_get_num_classes` in `src/tl_utils.h`: "Multi-target model not supported").
"""

from __future__ import annotations

import struct

import numpy as np

from .. import releases
from ..signature import CLASSIFICATION, FP32, LABELS_FILENAME, REGRESSION, Signature, Tensor
from . import parity
from .errors import ExportError, first_line
from .parity import ParityReport, Prediction

# Names the FIL backend requires (fil_backend r24.10 src/model.h: get_input "input__0", get_output "output__0").
INPUT_NAME = "input__0"
OUTPUT_NAME = "output__0"
# The oldest treelite of the releases table (24.10: fil_backend r24.10 cmake/thirdparty/get_treelite.cmake
# pins 4.3.0). A checkpoint must not come from a newer one: then every release of the table reads it.
READER_VERSION = tuple(map(int, releases.OLDEST.treelite.split(".")))
# treelite's TaskType enum (include/treelite/enum/task_type.h).
TASK_TYPES = {0: "binary classifier", 1: REGRESSION, 2: CLASSIFICATION, 3: "ranker", 4: "isolation forest"}
CHECKED_WITH = "treelite (GTIL)"


def checkpoint_version(checkpoint: bytes) -> tuple[int, int, int]:
    """The treelite version a checkpoint declares: its first three little-endian int32."""
    if len(checkpoint) < 12:
        raise ExportError("not a readable treelite checkpoint: shorter than its header")
    return struct.unpack("<3i", checkpoint[:12])


def readable_by_fil_24_10(version: tuple[int, int, int]) -> bool:
    """The oldest release of the table (24.10, treelite 4.3.0) reads a checkpoint of this treelite version."""
    return releases.reads_treelite_checkpoint(releases.OLDEST, version)


def forest_only(estimator):
    """The forest itself; a Pipeline with preprocessing is refused, FIL only runs trees."""
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline):
        return estimator
    preprocessing = [name for name, step in estimator.steps[:-1] if step not in (None, "passthrough")]
    if preprocessing:
        raise ExportError(f"a Pipeline with preprocessing ({', '.join(preprocessing)}) cannot go to FIL, which "
                          "evaluates trees only: use --format onnx (the whole Pipeline becomes one graph) or "
                          f"export the bare {type(estimator.steps[-1][1]).__name__} and preprocess in the client")
    return estimator.steps[-1][1]


def convert(trained) -> bytes:
    """Serialize the forest as a treelite checkpoint (checkpoint.tl, `model_type: treelite_checkpoint`)."""
    import treelite

    forest = forest_only(trained.estimator)
    name = type(forest).__name__
    if trained.columnar:
        raise ExportError("a Pipeline that encodes string columns cannot go to FIL, which takes one FP32 "
                          "matrix: use --format onnx")
    if trained.n_outputs > 1:
        raise ExportError(f"a {name} with {trained.n_outputs} outputs cannot go to FIL: the 24.10 FIL backend "
                          "serves one target per model; use --format onnx")
    if trained.task == CLASSIFICATION and len(trained.classes) < 2:
        raise ExportError(f"a {name} fitted on a single class cannot go to FIL (treelite needs two classes "
                          "or more)")
    try:
        model = treelite.sklearn.import_model(forest)
    except Exception as exc:  # treelite raises TreeliteError/NotImplementedError for what it cannot import
        raise ExportError(f"treelite cannot import this model: {type(exc).__name__}: "
                          f"{first_line(exc)}") from exc
    if model.num_feature != trained.n_features:
        raise ExportError(f"treelite model has {model.num_feature} features, expected {trained.n_features}")
    _follow_sklearn_splits(model, forest)
    checkpoint = bytes(model.serialize_bytes())
    version = checkpoint_version(checkpoint)
    if not readable_by_fil_24_10(version):
        raise ExportError(f"treelite {treelite.__version__} writes {'.'.join(map(str, version))} checkpoints; "
                          f"the 24.10 FIL backend reads treelite {'.'.join(map(str, READER_VERSION))}: "
                          "pip install 'treelite==4.3.0'")
    return checkpoint


def _follow_sklearn_splits(model, forest) -> None:
    """Per split: sklearn's NaN direction as treelite's default_left, and the threshold as the largest
    float32 not above sklearn's (exact for float32 inputs, which is all FIL takes)."""
    if model.num_tree != len(forest.estimators_):
        raise ExportError(f"treelite model has {model.num_tree} trees, the forest {len(forest.estimators_)}")
    for tree_id, estimator in enumerate(forest.estimators_):
        tree = estimator.tree_
        accessor = model.get_tree_accessor(tree_id)
        split = tree.children_left >= 0
        # treelite keeps sklearn's node numbering; check it before writing per-node fields.
        if not np.array_equal(accessor.get_field("cleft"), tree.children_left):
            raise ExportError(f"treelite renumbered the nodes of tree {tree_id}: cannot carry its NaN routing")
        # get_field returns a view of treelite's own buffer, which set_field frees: work on copies.
        default_left = accessor.get_field("default_left").copy()
        default_left[split] = np.asarray(tree.missing_go_to_left, dtype=default_left.dtype)[split]
        accessor.set_field("default_left", default_left)
        threshold = accessor.get_field("threshold").copy()
        threshold[split] = float32_floor(tree.threshold[split])
        accessor.set_field("threshold", threshold)


def float32_floor(values: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 value (±inf stay as they are), as float64."""
    values = np.asarray(values, dtype=np.float64)
    rounded = values.astype(np.float32)
    above = rounded.astype(np.float64) > values
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded.astype(np.float64)


def signature(checkpoint: bytes, trained=None) -> Signature:
    """FIL's fixed tensor names, dims from the checkpoint: a regressor's one value a row (dims [1],
    served as [N]), a classifier's probabilities (dims [n_classes]) with labels.txt."""
    model = _load(checkpoint)
    header = model.get_header_accessor()
    if model.num_tree < 1:
        raise ExportError("the treelite model has no trees")
    if int(header.get_field("num_target")[0]) != 1:
        raise ExportError("the treelite model has several targets; the 24.10 FIL backend serves one")
    task = TASK_TYPES.get(int(header.get_field("task_type")[0]), "unknown")
    if task not in (REGRESSION, CLASSIFICATION):
        raise ExportError(f"the treelite model is a {task}, not a forest regressor or classifier")
    n_classes = int(header.get_field("num_class")[0])
    inputs = (Tensor(INPUT_NAME, FP32, (int(model.num_feature),)),)
    if task == CLASSIFICATION:
        outputs = (Tensor(OUTPUT_NAME, FP32, (n_classes,), LABELS_FILENAME),)
    else:
        outputs = (Tensor(OUTPUT_NAME, FP32, (1,)),)
    if trained is None:  # read back from a repository: the checkpoint alone
        names = tuple(f"x{i}" for i in range(int(model.num_feature)))
        return Signature(task, inputs, outputs, names, tuple(range(n_classes)) if task == CLASSIFICATION else ())
    found = Signature(trained.task, inputs, outputs, tuple(trained.feature_names), tuple(trained.classes))
    if task != trained.task:
        raise ExportError(f"the checkpoint holds a {task} model, the forest is a {trained.task} one")
    if model.num_feature != trained.n_features:
        raise ExportError(f"the checkpoint takes {model.num_feature} features, the model {trained.n_features}")
    if task == CLASSIFICATION and n_classes != len(trained.classes):
        raise ExportError(f"the checkpoint has {n_classes} classes, the model {len(trained.classes)}")
    return found


def response_shape(output: Tensor, rows: int) -> tuple[int, ...]:
    """The shape the 24.10 FIL backend gives `output` for a request of `rows` rows.

    rapids-triton's SharedModelState with squeeze_output (set by fil_backend's RapidsSharedState)
    takes [-1, *dims], removes every 1, then puts the batch size in place of -1: dims [1] → [rows],
    dims [k] → [rows, k] for k > 1. ONNX models answer [rows, *dims].
    """
    return (rows, *(d for d in output.dims if d != 1))


def config_parameters(found: Signature, release: releases.Release = releases.DEFAULT) -> dict[str, str]:
    """FIL backend parameters besides model_type, under the target release's names
    (fil_backend src/shared_state.h: output_class up to 25.08, is_classifier from 25.09).

    The classifier flag has no default; `threshold` is read whenever it is true (unused with
    predict_proba, but its absence fails the load); `predict_proba` makes output__0 the class
    probabilities instead of the index of the best class.
    """
    names = release.fil_parameters
    if found.is_classifier:
        return {names.is_classifier: "true", "threshold": "0.5", "predict_proba": "true"}
    return {names.is_classifier: "false"}


def stale_parameters(release: releases.Release) -> tuple[str, ...]:
    """Parameter names `release` does not read (the other generation's), removed from a kept config."""
    return release.fil_parameters.removed


def predict(checkpoint: bytes, rows, classes=()) -> Prediction:
    """Treelite's reference predictor (GTIL) on the serialized bytes, on float32 rows as FIL receives them.

    Classifiers: the probabilities output__0 carries, and labels as the client derives them
    (classes[argmax]) when `classes` is given.
    """
    import treelite.gtil

    model = _load(checkpoint)
    X = np.ascontiguousarray(np.asarray(rows, dtype=np.float32))
    try:
        output = np.asarray(treelite.gtil.predict(model, X))
    except Exception as exc:  # TreeliteError on rows of the wrong width
        raise ExportError(f"treelite GTIL failed on the parity rows: {first_line(exc)}") from exc
    task = TASK_TYPES.get(int(model.get_header_accessor().get_field("task_type")[0]))
    if task != CLASSIFICATION:
        return Prediction(values=output.reshape(len(X), -1))
    probabilities = output.reshape(len(X), -1)
    labels = np.asarray(classes)[np.argmax(probabilities, axis=1)] if len(classes) else None
    return Prediction(probabilities=probabilities, labels=labels)


def check_parity(trained, checkpoint: bytes, rows, tolerance: float) -> ParityReport:
    """sklearn against GTIL on the checkpoint's bytes (labels as the client derives them: classes[argmax])."""
    classes = tuple(trained.classes)
    return parity.check_parity(trained.estimator, lambda r: predict(checkpoint, r, classes), rows, tolerance,
                               CHECKED_WITH, classifier=trained.task == CLASSIFICATION)


def tool_versions() -> dict[str, str]:
    import treelite

    return {"treelite": treelite.__version__}


def _load(checkpoint: bytes):
    import treelite

    try:
        return treelite.Model.deserialize_bytes(checkpoint)
    except Exception as exc:  # TreeliteError for corrupt or foreign bytes
        raise ExportError(f"not a readable treelite checkpoint: {type(exc).__name__}") from exc


def graph_tensors(checkpoint: bytes) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The inputs and outputs the checkpoint implies; what config.pbtxt must say (read by doctor)."""
    found = signature(checkpoint)
    return found.inputs, found.outputs
