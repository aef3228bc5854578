"""A table of bad requests, raw over HTTP and gRPC: each is refused clearly and the server keeps serving.

Triton 2.51's HTTP frontend answers a few requests it cannot parse with 500 rather than 400
(TRITON_HTTP_500 below). Those answers come from Triton's JSON parser before any model code runs;
they are pinned here so that a change in Triton's behaviour shows up, and none of them comes from us.
"""

from __future__ import annotations

import json
import threading
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

MODEL = "random_forest"
INFER = f"/v2/models/{MODEL}/infer"


def tensor(**overrides) -> dict:
    body = {"name": "X", "shape": [1, 5], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4, 0.5]}
    body.update(overrides)
    return body


def infer_body(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def binary_request(declared: int, sent: int) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "X", "shape": [1, 5], "datatype": "FP32",
                                     "parameters": {"binary_data_size": declared}}]}).encode()
    return header + b"\0" * sent, {"Content-Type": "application/octet-stream",
                                   "Inference-Header-Content-Length": str(len(header))}


# case: (path, body, headers, expected status, words the error must contain)
HTTP_CASES = {
    "too few features": (INFER, infer_body(tensor(shape=[1, 4], data=[1, 2, 3, 4])), None, 400, "unexpected shape"),
    "too many features": (INFER, infer_body(tensor(shape=[1, 6], data=[1] * 6)), None, 400, "unexpected shape"),
    "wrong rank": (INFER, infer_body(tensor(shape=[5])), None, 400, "unexpected shape"),
    "rank 3": (INFER, infer_body(tensor(shape=[1, 5, 1])), None, 400, "unexpected shape"),
    "FP64": (INFER, infer_body(tensor(datatype="FP64")), None, 400, "data-type is 'FP64'"),
    "INT64": (INFER, infer_body(tensor(datatype="INT64", data=[1] * 5)), None, 400, "data-type is 'INT64'"),
    "BYTES": (INFER, infer_body(tensor(datatype="BYTES", data=["a"] * 5)), None, 400, "data-type is 'BYTES'"),
    "+inf": (INFER, b'{"inputs":[{"name":"X","shape":[2,5],"datatype":"FP32","data":[0,0,0,0,0,1,1,1,1,Infinity]}]}',
             None, 400, "rows [1]"),
    "-inf": (INFER, b'{"inputs":[{"name":"X","shape":[1,5],"datatype":"FP32","data":[-Infinity,1,1,1,1]}]}', None,
             400, "infinite values"),
    "empty batch": (INFER, infer_body(tensor(shape=[0, 5], data=[])), None, 400, "byte size mismatch"),
    "batch over max_batch_size": (INFER, infer_body(tensor(shape=[1025, 5], data=[0.0] * 5125)), None, 400,
                                  "batch-size must be <= 1024"),
    "missing input": (INFER, infer_body(), None, 400, "missing required input(s) ['X']"),
    "extra unknown input": (INFER, infer_body(tensor(), tensor(name="Z")), None, 400, "expected 1 inputs but got 2"),
    "unknown input only": (INFER, infer_body(tensor(name="Z")), None, 400, "unexpected inference input 'Z'"),
    "unknown output requested": (INFER, infer_body(tensor(), outputs=[{"name": "nope"}]), None, 400,
                                 "unexpected inference output 'nope'"),
    "binary size mismatch": (INFER, *binary_request(12, 12), 400, "byte size mismatch"),
    "binary data truncated": (INFER, *binary_request(20, 8), 400, "expecting 12 additional bytes"),
    "unknown model": ("/v2/models/nope/infer", infer_body(tensor()), None, 404, "unknown model: 'nope'"),
    "unknown version": (f"/v2/models/{MODEL}/versions/9/infer", infer_body(tensor()), None, 404, "version 9 is not found"),
    "oversized body": (INFER, infer_body(tensor(shape=[1_000_000, 5], data=[0.1] * 5_000_000)), None, 400,
                       "batch-size must be <= 1024"),
}
TRITON_HTTP_500 = {
    "malformed JSON": (INFER, b'{"inputs": [ {', None, 500, "failed to parse the request JSON"),
    "data shorter than shape": (INFER, infer_body(tensor(data=[0.1] * 3)), None, 500, "Shape does not match"),
    "data longer than shape": (INFER, infer_body(tensor(data=[0.1] * 7)), None, 500, "Shape does not match"),
    "string in FP32 data": (INFER, infer_body(tensor(data=["x"] * 5)), None, 500, "non-number"),
    "no inputs member": (INFER, b'{"input": []}', None, 500, "non-existing object member 'inputs'"),
}


def assert_still_serving(triton, demo_model) -> None:
    with urllib.request.urlopen(f"http://{triton.endpoints.http}/v2/health/ready", timeout=5) as response:
        assert response.status == 200
    row = demo_model.X_val[:1]
    status, body = triton.post(INFER, infer_body(tensor(data=row[0].tolist())))
    assert status == 200, body
    (value,) = json.loads(body)["outputs"][0]["data"]
    assert value == pytest.approx(demo_model.estimator.predict(row)[0], rel=1e-4)


@pytest.mark.integration
@pytest.mark.parametrize("case", list(HTTP_CASES) + list(TRITON_HTTP_500))
def test_http_bad_request(case, triton, demo_model):
    path, body, headers, expected, words = {**HTTP_CASES, **TRITON_HTTP_500}[case]
    status, text = triton.post(path, body, headers)
    assert status == expected, (status, text)
    assert words in json.loads(text)["error"], text
    assert_still_serving(triton, demo_model)


def grpc_input(shape, datatype="FP32", array=None, name="X"):
    value = grpcclient.InferInput(name, list(shape), datatype)
    value.set_data_from_numpy(array if array is not None else np.zeros(shape, dtype=np.float32))
    return value


GRPC_CASES = {
    "too few features": (lambda: [grpc_input((1, 4))], {}, "INVALID_ARGUMENT", "unexpected shape"),
    "wrong rank": (lambda: [grpc_input((5,))], {}, "INVALID_ARGUMENT", "unexpected shape"),
    "FP64": (lambda: [grpc_input((1, 5), "FP64", np.zeros((1, 5)))], {}, "INVALID_ARGUMENT", "'FP64'"),
    "INT64": (lambda: [grpc_input((1, 5), "INT64", np.zeros((1, 5), np.int64))], {}, "INVALID_ARGUMENT", "'INT64'"),
    "BYTES": (lambda: [grpc_input((1, 5), "BYTES", np.array([[b"a"] * 5], dtype=object))], {}, "INVALID_ARGUMENT",
              "'BYTES'"),
    "inf": (lambda: [grpc_input((1, 5), array=np.full((1, 5), -np.inf, np.float32))], {}, "INVALID_ARGUMENT",
            "infinite values"),
    "empty batch": (lambda: [grpc_input((0, 5))], {}, "INVALID_ARGUMENT", "byte size mismatch"),
    "batch over max_batch_size": (lambda: [grpc_input((1025, 5))], {}, "INVALID_ARGUMENT", "batch-size must be <= 1024"),
    "missing input": (lambda: [], {}, "INVALID_ARGUMENT", "missing required input"),
    "extra unknown input": (lambda: [grpc_input((1, 5)), grpc_input((1, 5), name="Z")], {}, "INVALID_ARGUMENT",
                            "expected 1 inputs but got 2"),
    "unknown output requested": (lambda: [grpc_input((1, 5))], {"outputs": [grpcclient.InferRequestedOutput("nope")]},
                                 "INVALID_ARGUMENT", "unexpected inference output"),
    "unknown model": (lambda: [grpc_input((1, 5))], {"model_name": "nope"}, "NOT_FOUND", "unknown model"),
    "unknown version": (lambda: [grpc_input((1, 5))], {"model_version": "9"}, "NOT_FOUND", "version 9"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", list(GRPC_CASES))
def test_grpc_bad_request(case, triton, demo_model):
    make_inputs, kwargs, code, words = GRPC_CASES[case]
    kwargs = {"model_name": MODEL, **kwargs}
    client = grpcclient.InferenceServerClient(triton.endpoints.grpc)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(inputs=make_inputs(), **kwargs)
        assert caught.value.status() == f"StatusCode.{code}", caught.value
        assert words in caught.value.message()
    finally:
        client.close()
    assert_still_serving(triton, demo_model)


@pytest.mark.integration
def test_concurrent_mix_of_good_and_bad_requests(triton, demo_model):
    """Bad requests from several threads at once never disturb the good ones beside them."""
    rows = demo_model.X_val[:40]
    expected = demo_model.estimator.predict(rows)
    bad = list(HTTP_CASES.values())[:10] + list(TRITON_HTTP_500.values())
    problems: list[str] = []

    def worker(offset: int) -> None:
        for i in range(offset, len(rows), 4):
            status, body = triton.post(INFER, infer_body(tensor(data=rows[i].tolist())))
            if status != 200 or abs(json.loads(body)["outputs"][0]["data"][0] - expected[i]) > 1e-4 * abs(expected[i]) + 1e-4:
                problems.append(f"good request {i}: {status} {body[:200]}")
            path, payload, headers, code, _ = bad[i % len(bad)]
            status, body = triton.post(path, payload, headers)
            if status != code:
                problems.append(f"bad request {i}: expected {code}, got {status} {body[:200]}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert problems == []
    assert_still_serving(triton, demo_model)


@pytest.mark.integration
def test_nan_in_json_is_a_missing_value_not_an_error(triton, demo_model):
    """JSON NaN reaches the model as a missing value and gets sklearn's answer (HTTP 200)."""
    body = b'{"inputs":[{"name":"X","shape":[1,5],"datatype":"FP32","data":[NaN,1,1,1,1]}]}'
    status, text = triton.post(INFER, body)
    assert status == 200, text
    (value,) = json.loads(text)["outputs"][0]["data"]
    expected = demo_model.estimator.predict(np.array([[np.nan, 1, 1, 1, 1]], dtype=np.float32))[0]
    assert value == pytest.approx(expected, rel=1e-4)
