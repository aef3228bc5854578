"""sklearn → ONNX with skl2onnx, made to predict exactly what sklearn predicts, and checked on the
ONNX Runtime that the stock container runs.

What skl2onnx leaves out is written into the graph here, so that the model file itself carries it
(the stock onnxruntime backend, the embedded server and any ONNX consumer then agree):
- each split's missing-value direction (`nodes_missing_value_tracks_true`) from sklearn's
  `tree_.missing_go_to_left`, by the forest converter (forest_onnx; skl2onnx's own writes all
  zeros: NaN would always go right);
- the declared output shapes (a multi-output regressor is declared [N, 1] by skl2onnx);
- a classifier's label as [N, 1], so that Triton's batched dims [1] describe it.

Numbers enter as sklearn receives them: FP32 where the forest reads them as they are (sklearn
casts them to float32 itself), FP64 where a step computes with them first (sklearn computes
preprocessing in float64); the forest converter casts to float32 right before the trees.
"""

from __future__ import annotations

import numpy as np

from .. import releases
from ..signature import BYTES, CLASSIFICATION, FP32, FP64, INT64, LABELS_FILENAME, Signature, Tensor, numpy_dtype
from . import forest_onnx, parity, steps
from .errors import ExportError, first_line
from .parity import ParityReport, Prediction

INPUT_NAME = "X"
VALUES_OUTPUT = "variable"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
# Opsets and IR version every release of the table loads (src/rf_triton/releases.py): one graph serves
# them all. The trees stay FP32 (ai.onnx.ml opset 3 nodes): sklearn's trees compare float32 features.
TARGET_OPSET = releases.EXPORT_OPSET
CONTAINER_ORT = releases.DEFAULT.onnxruntime.version
MAX_IR_VERSION = min(release.onnxruntime.ir_version for release in releases.RELEASES.values())
PROTOBUF_LIMIT = 2 ** 31 - 1  # an ONNX file is one protobuf message: 2 GB at most
# Bytes an exported forest takes, fitted on forests of 150 k to 6.3 M nodes (regressors with 1 and 3
# outputs, classifiers of 2 to 8 classes): the estimate lands within 5% of the written file.
BYTES_PER_NODE = 28
BYTES_PER_LEAF_WEIGHT = 13
ONNX_TYPES = {FP32: "tensor(float)", FP64: "tensor(double)", INT64: "tensor(int64)", BYTES: "tensor(string)"}


def convert(trained) -> bytes:
    """Convert a fitted forest (or Pipeline) to ONNX with a dynamic batch dimension."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    check_size(trained)
    steps.check_convertible(trained.estimator)
    number = DoubleTensorType if trained.numeric_datatype == FP64 else FloatTensorType
    if trained.columnar:
        initial_types = [(name, StringTensorType([None, 1]) if name in trained.string_columns
                          else number([None, 1])) for name in trained.feature_names]
    else:
        initial_types = [(INPUT_NAME, number([None, trained.n_features]))]
    options = {id(trained.forest): {"zipmap": False}} if trained.task == CLASSIFICATION else None
    try:
        model = convert_sklearn(trained.estimator, initial_types=initial_types, target_opset=TARGET_OPSET,
                                options=options, **_converters(trained.numeric_datatype))
    except Exception as exc:  # skl2onnx raises RuntimeError/NotImplementedError/... for unsupported steps
        raise ExportError(f"skl2onnx cannot convert {_steps(trained.estimator)}: "
                          f"{type(exc).__name__}: {first_line(exc)}") from exc
    if not forest_onnx.fill(model.graph, trained.forest):
        raise ExportError(f"the graph of {_steps(trained.estimator)} has no tree ensemble to write the forest into")
    if trained.columnar:
        _name_inputs_after_columns(model.graph, [name for name, _ in initial_types])
    _declare_outputs(model.graph, trained, default_opset(model))
    model.doc_string = f"{type(trained.forest).__name__} exported by rf-triton"
    model.graph.name = type(trained.forest).__name__  # skl2onnx draws a random name: keep exports reproducible
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    try:
        onnx_bytes = model.SerializeToString()
    except ValueError as exc:  # protobuf refuses a message past 2 GB ("Message ... too large")
        raise ExportError(f"the ONNX file would pass protobuf's 2 GB limit ({first_line(exc)}); "
                          "export it with --format fil") from exc
    del model
    onnx.checker.check_model(onnx_bytes)
    return onnx_bytes


def _name_inputs_after_columns(graph, columns: list[str]) -> None:
    """skl2onnx turns column names into identifiers ("sepal length (cm)" → "sepal_length__cm_"): the
    served inputs keep the DataFrame's own names, which clients send."""
    if len(graph.input) != len(columns):
        raise ExportError(f"the graph has {len(graph.input)} inputs for {len(columns)} columns")
    renamed = {i.name: column for i, column in zip(graph.input, columns) if i.name != column}
    if not renamed:
        return
    for item in graph.input:
        item.name = renamed.get(item.name, item.name)
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]


def _converters(datatype: str) -> dict:
    """This conversion's own converters: the forest's and the float64 steps' (nothing registered)."""
    merged: dict = {}
    for arguments in (forest_onnx.conversion_arguments(), steps.conversion_arguments(datatype)):
        for key, functions in arguments.items():
            merged.setdefault(key, {}).update(functions)
    return merged


def estimated_size(forest) -> int:
    """About how many bytes the forest's ONNX file takes, known before converting it."""
    nodes = leaves = 0
    for estimator in forest.estimators_:
        nodes += estimator.tree_.node_count
        leaves += int((estimator.tree_.children_left < 0).sum())
    classes = len(getattr(forest, "classes_", ()))
    weights = (1 if classes == 2 else classes) if classes else int(forest.n_outputs_)
    return BYTES_PER_NODE * nodes + BYTES_PER_LEAF_WEIGHT * leaves * weights


def check_size(trained) -> None:
    """Refuse, before any work, a forest whose ONNX file would pass protobuf's 2 GB limit."""
    size = estimated_size(trained.forest)
    if size > 0.95 * PROTOBUF_LIMIT:  # the estimate lands within 5%: refuse what could pass the limit
        nodes = sum(e.tree_.node_count for e in trained.forest.estimators_)
        raise ExportError(f"this forest has {nodes:,} nodes: its ONNX file would take about {size / 1e9:.1f} GB, past "
                          "protobuf's 2 GB limit for one ONNX file; export it with --format fil (treelite has no "
                          "such limit), or train fewer or shallower trees")


def _steps(estimator) -> str:
    steps = getattr(estimator, "steps", None)
    if not steps:
        return f"this {type(estimator).__name__}"
    return "the Pipeline (" + " → ".join(f"{name}: {type(step).__name__}" for name, step in steps) + ")"


def _declare_outputs(graph, trained, opset: int) -> None:
    """Regression: [N, n_outputs]. Classification: probabilities [N, n_classes], and the label [N, 1]
    chosen from them as sklearn chooses it (see :func:`tie_margin`), in the graph's own opset."""
    outputs = {o.name: o for o in graph.output}
    if trained.task != CLASSIFICATION:
        (output,) = graph.output
        output.type.tensor_type.shape.dim[1].dim_value = trained.n_outputs
        return
    if set(outputs) != {LABEL_OUTPUT, PROBABILITIES_OUTPUT}:
        raise ExportError(f"unexpected classifier outputs {sorted(outputs)}")
    outputs[PROBABILITIES_OUTPUT].type.tensor_type.shape.dim[1].dim_value = len(trained.classes)
    trees_label = f"{LABEL_OUTPUT}_of_trees"  # the tree ensemble's own pick, left unused
    for node in graph.node:
        node.output[:] = [trees_label if name == LABEL_OUTPUT else name for name in node.output]
    _label_from_probabilities(graph, trained.classes, tie_margin(trained.forest.n_estimators), opset)
    label = outputs[LABEL_OUTPUT]
    label.type.tensor_type.shape.ClearField("dim")
    label.type.tensor_type.shape.dim.add()  # batch, dynamic
    label.type.tensor_type.shape.dim.add().dim_value = 1


def tie_margin(n_trees: int) -> float:
    """How far apart float32 sums of the trees' class weights may be when sklearn's float64 means tie.

    sklearn predicts the first of the classes whose mean probability is highest. ONNX Runtime sums
    the leaf weights in float32: each of the n_trees additions rounds by at most 2^-24 (the sum stays
    at or below 1), each weight once more, for each of two classes. Classes within this margin of the
    best are taken as tied and the first one wins, as sklearn's argmax picks on a tie; two classes
    sklearn does not tie are more than two margins apart on every forest tests/test_pipeline_fidelity.py
    measures.
    """
    return 2.0 * (n_trees + 1) * 2.0 ** -24


def _label_from_probabilities(graph, classes, margin: float, opset: int) -> None:
    """label = classes[first index whose probability is within `margin` of the row's best]."""
    import onnx
    from onnx import helper

    def constant(name: str, kind, dims, values):
        graph.initializer.append(helper.make_tensor(name, kind, dims, values))
        return name

    p = PROBABILITIES_OUTPUT
    best, lowest, near, near_float, index = (f"{LABEL_OUTPUT}_{s}" for s in
                                              ("best", "lowest", "near", "near_float", "index"))
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
        axes = constant(f"{LABEL_OUTPUT}_axes", onnx.TensorProto.INT64, [1], [1])
        graph.node.append(helper.make_node("ReduceMax", [p, axes], [best], keepdims=1, name=best))
    else:
        graph.node.append(helper.make_node("ReduceMax", [p], [best], axes=[1], keepdims=1, name=best))
    margin_name = constant(f"{LABEL_OUTPUT}_tie_margin", onnx.TensorProto.FLOAT, [], [margin])
    graph.node.append(helper.make_node("Sub", [best, margin_name], [lowest], name=lowest))
    below = f"{LABEL_OUTPUT}_below"
    graph.node.append(helper.make_node("Less", [p, lowest], [below], name=below))
    graph.node.append(helper.make_node("Not", [below], [near], name=near))
    graph.node.append(helper.make_node("Cast", [near], [near_float], to=onnx.TensorProto.FLOAT, name=near_float))
    graph.node.append(helper.make_node("ArgMax", [near_float], [index], axis=1, keepdims=1, name=index))  # first max
    if np.asarray(classes).dtype.kind in "OU":  # string classes (integers otherwise: _check_servable)
        table = constant(f"{LABEL_OUTPUT}_classes", onnx.TensorProto.STRING, [len(classes)],
                         [str(c).encode() for c in classes])
    else:
        table = constant(f"{LABEL_OUTPUT}_classes", onnx.TensorProto.INT64, [len(classes)], [int(c) for c in classes])
    graph.node.append(helper.make_node("Gather", [table, index], [LABEL_OUTPUT], axis=0, name="label_as_column"))


def default_opset(model) -> int:
    """The version of the default ONNX domain the graph imports (skl2onnx imports what its nodes need)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def graph_tensors(onnx_bytes: bytes) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The inputs and outputs the graph declares (batch dim stripped); what config.pbtxt must say."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    initializers = {init.name for init in graph.initializer}
    datatypes = {onnx.TensorProto.FLOAT: FP32, onnx.TensorProto.DOUBLE: FP64, onnx.TensorProto.INT64: INT64,
                 onnx.TensorProto.STRING: BYTES}

    def tensor(value_info, label_filename: str = "") -> Tensor:
        t = value_info.type.tensor_type
        if t.elem_type not in datatypes:
            raise ExportError(f"{value_info.name} has ONNX type {t.elem_type}, not FP32, FP64, INT64 or string")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)[1:]
        if not dims or any(d < 1 for d in dims):
            raise ExportError(f"{value_info.name} has no fixed shape past the batch dimension: {dims}")
        return Tensor(value_info.name, datatypes[t.elem_type], dims, label_filename)

    inputs = tuple(tensor(i) for i in graph.input if i.name not in initializers)
    outputs = tuple(tensor(o, LABELS_FILENAME if o.name == PROBABILITIES_OUTPUT else "") for o in graph.output)
    return inputs, outputs


def signature(onnx_bytes: bytes, trained) -> Signature:
    """The served signature: the graph's tensors with the model's task, classes and feature names."""
    inputs, outputs = graph_tensors(onnx_bytes)
    found = Signature(trained.task, inputs, outputs, tuple(trained.feature_names), trained.classes,
                      tuple((c, tuple(v)) for c, v in trained.closed_categories.items()))
    _check_against_model(found, trained)
    return found


def _check_against_model(found: Signature, trained) -> None:
    """The graph's shapes must be what the model computes: never write a config that lies."""
    if found.is_classifier:
        if found.probabilities is None or found.probabilities.dims != (len(trained.classes),):
            raise ExportError(f"the graph's probabilities do not have {len(trained.classes)} classes per row")
    elif len(found.outputs) != 1 or found.outputs[0].dims != (trained.n_outputs,):
        raise ExportError(f"the graph's output dims {[o.dims for o in found.outputs]} do not match the "
                          f"{trained.n_outputs} output(s) of the model")
    expected_inputs = len(trained.feature_names) if trained.columnar else 1
    if len(found.inputs) != expected_inputs:
        raise ExportError(f"the graph has {len(found.inputs)} inputs, expected {expected_inputs}")


def session(onnx_bytes: bytes, threads: int = 1):
    """An ONNX Runtime session; a graph this ONNX Runtime cannot load is refused in one line."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        raise ExportError(f"ONNX Runtime {ort.__version__} cannot load this graph: {first_line(exc)}") from exc


def feeds(sess, rows) -> dict[str, np.ndarray]:
    """ONNX Runtime inputs for `rows`, in the type each input declares: a matrix, or one (rows, 1)
    column per input."""
    types = {onnx_type: datatype for datatype, onnx_type in ONNX_TYPES.items()}
    inputs = sess.get_inputs()
    if not hasattr(rows, "columns") or inputs[0].name not in rows.columns:  # one matrix input
        return {inputs[0].name: np.asarray(rows, dtype=numpy_dtype(types[inputs[0].type]))}
    result = {}
    for item in inputs:
        column = rows[item.name].to_numpy()
        if item.type == ONNX_TYPES[BYTES]:
            result[item.name] = column.astype(str).astype(object).reshape(-1, 1)
        else:
            result[item.name] = column.astype(numpy_dtype(types[item.type])).reshape(-1, 1)
    return result


def predict(onnx_bytes: bytes, rows, threads: int = 1) -> Prediction:
    """ONNX Runtime's prediction for `rows`, laid out like sklearn's."""
    sess = session(onnx_bytes, threads)
    names = [o.name for o in sess.get_outputs()]
    try:
        results = dict(zip(names, sess.run(None, feeds(sess, rows))))
    except Exception as exc:  # a graph that loads but fails on these rows
        raise ExportError(f"ONNX Runtime failed on the parity rows: {first_line(exc)}") from exc
    if PROBABILITIES_OUTPUT in results:
        return Prediction(probabilities=results[PROBABILITIES_OUTPUT], labels=results[LABEL_OUTPUT].reshape(-1))
    values = results[names[0]]
    return Prediction(values=values.reshape(len(values), -1))


def check_parity(trained, onnx_bytes: bytes, rows, tolerance: float) -> ParityReport:
    """Predict `rows` with sklearn and with ONNX Runtime on the exported bytes; compare."""
    return parity.check_parity(trained.estimator, lambda r: predict(onnx_bytes, r), rows, tolerance,
                               "ONNX", classifier=trained.task == CLASSIFICATION,
                               diagnose=lambda differing: _which_part_differs(trained, onnx_bytes, differing, tolerance))


def _which_part_differs(trained, onnx_bytes: bytes, rows, tolerance: float) -> str:
    """Feed the graph's own trees (the graph from the tree ensemble on) with sklearn's own features
    for `rows`: if they answer as sklearn's trees do, the preprocessing is what differs."""
    import onnx
    from sklearn.pipeline import Pipeline

    if not isinstance(trained.estimator, Pipeline) or len(trained.estimator.steps) < 2:
        return "the trees differ"
    trees = _trees_alone(onnx.load_from_string(onnx_bytes))
    if trees is None:
        return ""
    features = np.asarray(trained.estimator[:-1].transform(parity.as_frame(trained.estimator, rows)),
                          dtype=np.float32)
    report = parity.check_parity(trained.forest, lambda r: predict(trees, r), features,
                                 tolerance, "trees", classifier=trained.task == CLASSIFICATION)
    if report.rows_off:
        return "the trees differ: fed sklearn's own features, they still answer differently"
    return "the preprocessing differs: the trees fed sklearn's own features answer exactly"


def _trees_alone(model) -> bytes | None:
    """The part of the graph from the tree ensemble on, taking the trees' float32 features as input."""
    import onnx
    from onnx import helper

    graph = model.graph
    tree = next((n for n in graph.node if n.op_type in forest_onnx.OPS.values()), None)
    if tree is None:
        return None
    reached, nodes = {tree.input[0]}, []
    for node in graph.node:  # graph order is topological
        if any(name in reached for name in node.input):
            nodes.append(node)
            reached.update(node.output)
    if not all(o.name in reached for o in graph.output):
        return None
    features = helper.make_tensor_value_info(tree.input[0], onnx.TensorProto.FLOAT, [None, None])
    cut = helper.make_graph(nodes, "trees", [features], list(graph.output), list(graph.initializer))
    alone = helper.make_model(cut, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return alone.SerializeToString()


def config_parameters(found: Signature, release: releases.Release = releases.DEFAULT) -> dict[str, str]:
    """onnxruntime-backend parameters that depend on the model (none: threads come from ServingOptions)."""
    return {}


def stale_parameters(release: releases.Release) -> tuple[str, ...]:
    """Parameter names the release does not read (none: the onnxruntime backend's names have not moved)."""
    return ()


def tool_versions() -> dict[str, str]:
    """The converter and runtime behind this format, recorded in metadata.json."""
    import onnxruntime
    import skl2onnx

    return {"skl2onnx": skl2onnx.__version__, "onnxruntime": onnxruntime.__version__}
