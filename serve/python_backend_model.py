"""Triton Python-backend model that runs a model.onnx with ONNX Runtime.

The embedded server has no onnxruntime backend, so each version of an onnxruntime model is served
by this file (copied in as model.py) over the very same model.onnx. One `execute` call gets every
request the dynamic batcher grouped: their rows are concatenated per input, run through ONNX
Runtime once, and split back per request.

What the model does with a value (NaN routing, labels, probabilities) is in model.onnx itself; this
file adds one check the model file cannot express: ±inf is refused, as sklearn refuses it.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from rf_triton.signature import from_config

NUMPY_TYPES = {"TYPE_FP32": np.float32, "TYPE_FP64": np.float64, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32,
               "TYPE_STRING": np.object_}


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

        self.inputs = [(i["name"], NUMPY_TYPES[i["data_type"]]) for i in config["input"]]
        # string columns whose encoder refuses unseen values (sklearn's handle_unknown="error"), as the
        # signature in the config says (the one reader of it: rf_triton.signature)
        self.known = {name: np.asarray([v.encode() for v in values], dtype=object)
                      for name, values in from_config(config).known_categories}
        self.output_names = [o["name"] for o in config["output"]]
        self.output_dtypes = {o["name"]: NUMPY_TYPES[o["data_type"]] for o in config["output"]}

    def execute(self, requests):
        columns = {name: [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for request in requests]
                   for name, _ in self.inputs}
        batch = {name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays) for name, arrays in columns.items()}
        feeds = self._feeds(batch)
        if feeds is None:
            return self._execute_checked(columns)  # rare: find the offending requests one by one
        sizes = [len(array) for array in columns[self.inputs[0][0]]]
        return self._run(feeds, sizes, list(range(len(requests))), [None] * len(requests))

    def _execute_checked(self, columns):
        count = len(columns[self.inputs[0][0]])
        responses = [None] * count
        owners = []
        for index in range(count):
            request = {name: arrays[index] for name, arrays in columns.items()}
            problem = self._refused(request) or _not_text(request)
            if problem:
                responses[index] = _invalid(problem)
            else:
                owners.append(index)
        if not owners:
            return responses
        batch = {name: np.concatenate([arrays[i] for i in owners]) for name, arrays in columns.items()}
        sizes = [len(columns[self.inputs[0][0]][i]) for i in owners]
        return self._run(self._feeds(batch), sizes, owners, responses)

    def _feeds(self, batch):
        """ONNX Runtime's feeds for a batch, or None when one of its requests must be refused.

        BYTES arrive as bytes objects and ONNX Runtime's strings are str: the decoding is part of the
        check, so that one string that is not UTF-8 refuses its own request, not the whole batch."""
        if self._refused(batch):
            return None
        feeds = {}
        for name, dtype in self.inputs:
            array = batch[name]
            if dtype is np.object_:
                array = _decoded(array)
                if array is None:
                    return None
            feeds[name] = array.astype(dtype, copy=False)
        return feeds

    def _refused(self, tensors):
        """Why these inputs are refused (infinity, an unknown category), or None."""
        for name, array in tensors.items():
            if array.dtype.kind == "f" and np.isinf(array).any():
                return _infinite(name, array)
            known = self.known.get(name)
            if known is not None:
                unknown = ~np.isin(array.reshape(-1), known)
                if unknown.any():
                    rows = np.flatnonzero(unknown)[:5].tolist()
                    value = array.reshape(-1)[rows[0]]
                    return (f"input '{name}' holds {value!r} (rows {rows}), not a category the model was fitted on; "
                            "its encoder refuses unknown values, as sklearn does")
        return None

    def _run(self, feeds, sizes, owners, responses):
        """One ONNX Runtime run over the batch; each request gets back its own slice of every output.

        The healthy path does one check and one concatenation per input and batch, not per
        request: with 1-row requests the per-request Python work is what the Python backend pays for."""
        try:
            outputs = self.session.run(self.output_names, feeds)
        except Exception as exc:  # a failure of the model itself: a server fault, reported per request
            error = pb_utils.TritonError(f"ONNX Runtime failed: {exc}", pb_utils.TritonError.INTERNAL)
            for index in owners:
                responses[index] = pb_utils.InferenceResponse(error=error)
            return responses

        tensors = []
        for name, out in zip(self.output_names, outputs):
            dtype = self.output_dtypes[name]
            tensors.append((name, np.asarray(out, dtype=object) if dtype is np.object_ else np.asarray(out, dtype=dtype)))
        start = 0
        for size, index in zip(sizes, owners):
            end = start + size
            responses[index] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, out[start:end]) for name, out in tensors])
            start = end
        return responses

    def finalize(self):
        self.session = None


def _decoded(array):
    """BYTES as str objects, or None when one of them is not UTF-8."""
    try:
        return np.char.decode(array.astype(np.bytes_), "utf-8").astype(object)
    except UnicodeDecodeError:
        return None


def _not_text(tensors):
    """Why one request's string inputs cannot be decoded (a value that is not UTF-8), or None."""
    for name, array in tensors.items():
        if array.dtype == np.object_ and _decoded(array) is None:
            rows = [i for i, row in enumerate(array.reshape(len(array), -1)) if _decoded(row) is None][:5]
            return f"input '{name}' holds a value that is not UTF-8 text (rows {rows}); string inputs take UTF-8"
    return None


def _infinite(name, array):
    bad = np.unique(np.nonzero(np.isinf(array))[0])[:5].tolist()
    return (f"input '{name}' holds infinite values (rows {bad}); sklearn refuses infinity too: "
            "send finite numbers, or NaN for a missing value")


def _invalid(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))
