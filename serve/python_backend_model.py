"""Triton Python-backend model that runs a model.onnx with ONNX Runtime.

The embedded server has no onnxruntime backend, so each version of an onnxruntime model is served
by this file (copied in as model.py) over the very same model.onnx. One `execute` call gets every
request the dynamic batcher grouped: their rows are concatenated, run through ONNX Runtime once,
and split back per request.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

NUMPY_TYPES = {"TYPE_FP32": np.float32, "TYPE_FP64": np.float64, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        model_file = version_dir / parameters.get("onnx_model_filename", "model.onnx")

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", "1") or 1)
        options.inter_op_num_threads = int(parameters.get("inter_op_thread_count", "1") or 1)
        options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if parameters.get("execution_mode") == "1"
                                  else ort.ExecutionMode.ORT_SEQUENTIAL)
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

        (model_input,) = config["input"]
        self.input_name = model_input["name"]
        self.input_dtype = NUMPY_TYPES[model_input["data_type"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.output_dtypes = {o["name"]: NUMPY_TYPES[o["data_type"]] for o in config["output"]}

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy() for request in requests]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        if np.issubdtype(batch.dtype, np.floating) and not np.isfinite(batch).all():
            return self._execute_checked(arrays)  # rare: find the offending requests one by one
        return self._run(batch, arrays, list(range(len(requests))), [None] * len(requests))

    def _execute_checked(self, arrays):
        responses = [None] * len(arrays)
        rows, owners = [], []
        for index, array in enumerate(arrays):
            if not np.isfinite(array).all():
                bad = np.unique(np.nonzero(~np.isfinite(array))[0])[:5].tolist()
                responses[index] = _invalid(f"input '{self.input_name}' holds NaN or infinite values "
                                            f"(rows {bad}); send finite numbers")
                continue
            rows.append(array)
            owners.append(index)
        if not rows:
            return responses
        return self._run(rows[0] if len(rows) == 1 else np.concatenate(rows), rows, owners, responses)

    def _run(self, batch, rows, owners, responses):
        """One ONNX Runtime run over the batch; each request gets back its own slice of every output.

        The healthy path does one finiteness check and one concatenation per batch, not per request:
        with 1-row requests the per-request Python work is what the Python backend pays for."""
        try:
            outputs = self.session.run(self.output_names, {self.input_name: batch.astype(self.input_dtype, copy=False)})
        except Exception as exc:  # a failure of the model itself: a server fault, reported per request
            error = pb_utils.TritonError(f"ONNX Runtime failed: {exc}", pb_utils.TritonError.INTERNAL)
            for index in owners:
                responses[index] = pb_utils.InferenceResponse(error=error)
            return responses

        outputs = [(name, np.asarray(out, dtype=self.output_dtypes[name])) for name, out in zip(self.output_names, outputs)]
        start = 0
        for array, index in zip(rows, owners):
            end = start + len(array)
            responses[index] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, out[start:end]) for name, out in outputs])
            start = end
        return responses

    def finalize(self):
        self.session = None


def _invalid(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))
