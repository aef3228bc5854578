"""sklearn → ONNX with skl2onnx, and the parity check against ONNX Runtime on the exported bytes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import parity
from .errors import ExportError, first_line
from .parity import ParityReport, relative_errors  # noqa: F401  (re-exported: callers use them from here)

INPUT_NAME = "X"
OUTPUT_NAME = "variable"
# Opsets that the stock container's ONNX Runtime (24.10 ships ORT 1.19) reads.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class GraphSignature:
    """What Triton needs to know about the graph: one FP32 input and one FP32 output."""

    input_name: str
    input_dims: list[int]  # batch dimension stripped
    output_name: str
    output_dims: list[int]


def convert(estimator, n_features: int) -> bytes:
    """Convert a fitted RandomForestRegressor (or Pipeline) to ONNX with a dynamic batch dimension."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    try:
        onnx_model = convert_sklearn(
            estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            final_types=[(OUTPUT_NAME, FloatTensorType([None, 1]))],
            target_opset=TARGET_OPSET,
        )
    except Exception as exc:  # skl2onnx raises RuntimeError/NotImplementedError/... for unsupported steps
        raise ExportError(f"skl2onnx cannot convert this model: {type(exc).__name__}: {first_line(exc)}") from exc
    onnx_model.doc_string = "RandomForestRegressor exported by rf-triton"
    return onnx_model.SerializeToString()


def signature(onnx_bytes: bytes) -> GraphSignature:
    """Read the input/output names and dims from an ONNX graph (batch dim stripped)."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    inputs = [i for i in graph.input if i.name not in {init.name for init in graph.initializer}]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ExportError(f"expected one input and one output, the graph has {len(inputs)} and {len(graph.output)}")

    def dims(value_info) -> list[int]:
        tensor = value_info.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"{value_info.name} is not FP32")
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return shape[1:]

    return GraphSignature(inputs[0].name, dims(inputs[0]), graph.output[0].name, dims(graph.output[0]))


def ort_predict(onnx_bytes: bytes, X: np.ndarray, threads: int = 1) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: np.asarray(X, dtype=np.float32)})
    return np.asarray(output).reshape(-1)


def check_parity(estimator, onnx_bytes: bytes, X: np.ndarray, tolerance: float) -> ParityReport:
    """Predict X with sklearn and with ONNX Runtime on the exported bytes; compare."""
    return parity.check_parity(estimator, lambda rows: ort_predict(onnx_bytes, rows), X, tolerance, "ONNX")


def tool_versions() -> dict[str, str]:
    """The converter and runtime behind this format, recorded in metadata.json."""
    import onnxruntime
    import skl2onnx

    return {"skl2onnx": skl2onnx.__version__, "onnxruntime": onnxruntime.__version__}
