"""The embedded tritonserver serving the demo model, over HTTP and gRPC, through our client and raw."""

from __future__ import annotations

import json
import queue
from functools import partial

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from rf_triton.client.client import InputError, RandomForestClient, ServerUnavailableError
from rf_triton.export.parity import relative_errors

pytestmark = pytest.mark.integration
PROTOCOLS = ["http", "grpc"]
MODEL = "random_forest"


def url_for(triton, protocol: str) -> str:
    return triton.endpoints.http if protocol == "http" else triton.endpoints.grpc


@pytest.fixture(params=PROTOCOLS)
def client(request, triton):
    with RandomForestClient(url_for(triton, request.param), protocol=request.param, model=MODEL) as c:
        yield c


@pytest.fixture(scope="module")
def counted(tmp_path_factory, demo_model):
    """A server of this module's own, so that its cumulative statistics count only this module's
    requests; a 1 ms batching window makes batching show even on a loaded host."""
    from rf_triton.export.pipeline import export_model
    from rf_triton.export.triton_config import ServingOptions
    from rf_triton.serve.server import EmbeddedTriton

    repository = tmp_path_factory.mktemp("counted") / "model_repository"
    export_model(demo_model, repository, options=ServingOptions(max_queue_delay_us=1000))
    server = EmbeddedTriton.on_free_ports(repository, watch_interval_s=None)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def stats(triton) -> dict:
    model_stats = triton.model_stats(MODEL)
    return {"inferences": model_stats["inference_count"], "executions": model_stats["execution_count"],
            "requests": model_stats["inference_stats"]["success"]["count"]}


def test_client_reads_the_model_description(client, demo_model):
    assert client.n_features == 5
    assert client.max_batch_size == 1024
    assert client.feature_names == demo_model.feature_names
    assert (client.input_name, client.output_name) == ("X", "variable")
    assert client.is_ready()


def test_predictions_match_sklearn(client, demo_model):
    X = demo_model.X_val
    predictions = client.predict(X)
    assert predictions.shape == (len(X),)
    assert np.max(relative_errors(demo_model.estimator.predict(X), predictions)) <= 1e-4


def test_single_row_as_list_of_lists(client, demo_model):
    row = demo_model.X_val[:1].tolist()
    (value,) = client.predict(row)
    assert value == pytest.approx(demo_model.estimator.predict(demo_model.X_val[:1])[0], rel=1e-4)


def test_dataframe_columns_matched_by_name(client, demo_model):
    frame = pd.DataFrame(demo_model.X_val[:20], columns=demo_model.feature_names)
    shuffled = frame[list(reversed(frame.columns))].assign(unused=1.0)
    np.testing.assert_allclose(client.predict(shuffled), demo_model.estimator.predict(frame.to_numpy()), rtol=1e-4)
    with pytest.raises(InputError, match="lacks feature column"):
        client.predict(frame.drop(columns=["x2"]))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_large_input_is_split_into_max_batch_size_requests(counted, demo_model, protocol):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2500, 5)).astype(np.float32)
    before = stats(counted)
    with RandomForestClient(url_for(counted, protocol), protocol=protocol, model=MODEL) as client:
        predictions = client.predict(X)
    after = stats(counted)
    assert after["requests"] - before["requests"] == 3  # 1024 + 1024 + 452 rows
    assert after["inferences"] - before["inferences"] == 2500
    assert np.max(relative_errors(demo_model.estimator.predict(X), predictions)) <= 1e-4


def test_concurrent_requests_are_batched_by_triton(counted, demo_model):
    """Many 1-row requests in flight at once: the dynamic batcher runs fewer executions than inferences."""
    rows = demo_model.X_val[:256]
    before = stats(counted)
    done = queue.Queue()
    client = grpcclient.InferenceServerClient(counted.endpoints.grpc)
    try:
        for i, row in enumerate(rows):
            tensor = grpcclient.InferInput("X", [1, 5], "FP32")
            tensor.set_data_from_numpy(row.reshape(1, 5))
            client.async_infer(MODEL, [tensor], partial(lambda i, result, error: done.put((i, result, error)), i))
        answers = [done.get(timeout=30) for _ in rows]
    finally:
        client.close()
    after = stats(counted)
    assert [error for _, _, error in answers if error is not None] == []
    results = np.array([result.as_numpy("variable")[0, 0] for _, result, _ in sorted(answers, key=lambda a: a[0])])
    np.testing.assert_allclose(results, demo_model.estimator.predict(rows), rtol=1e-4)
    inferences = after["inferences"] - before["inferences"]
    executions = after["executions"] - before["executions"]
    assert inferences == 256
    assert executions < inferences, f"no batching: {executions} executions for {inferences} inferences"


BAD_INPUTS = {
    "1-D row": (np.zeros(5), "must be 2-D"),
    "3-D": (np.zeros((2, 5, 1)), "must be 2-D"),
    "too few features": (np.zeros((2, 4)), "4 features per row, the model takes 5"),
    "too many features": ([[0.0] * 6], "6 features per row"),
    "no rows": (np.zeros((0, 5)), "no rows"),
    "inf": ([[0.0] * 5, [0.0, 0.0, 0.0, 0.0, -np.inf]], "row 1, column x4"),
    "beyond FP32": ([[1e300, 0.0, 0.0, 0.0, 0.0]], "FP32 range"),
    "strings": ([["a", "b", "c", "d", "e"]], "dtype <U1"),
    "ragged": ([[1.0, 2.0], [1.0]], "rectangular|ragged"),
    "objects": (np.array([[None, "x", 1, 2, 3]], dtype=object), "non-numeric"),
    "booleans": (np.ones((1, 5), dtype=bool), "dtype bool"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_client_refuses_bad_input_before_sending(case, counted, protocol):
    X, message = BAD_INPUTS[case]
    before = stats(counted)
    with RandomForestClient(url_for(counted, protocol), protocol=protocol, model=MODEL) as client:
        with pytest.raises(InputError, match=message):
            client.predict(X)
    assert stats(counted) == before


def test_unknown_model_is_reported(triton):
    with pytest.raises(ServerUnavailableError, match="'no_such_model' not ready"):
        RandomForestClient(triton.endpoints.http, model="no_such_model", init_timeout_s=0.5).connect()


RAW_HTTP_BAD = {
    "wrong feature count": ({"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}, "shape"),
    "wrong dtype": ({"name": "X", "shape": [1, 5], "datatype": "FP64", "data": [1, 2, 3, 4, 5]}, "data-type"),
    "wrong rank": ({"name": "X", "shape": [5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}, "shape"),
    "unknown input": ({"name": "Y", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}, "Y"),
    "batch too large": ({"name": "X", "shape": [1025, 5], "datatype": "FP32", "data": [0.0] * 5125}, "batch-size"),
}


@pytest.mark.parametrize("case", list(RAW_HTTP_BAD))
def test_raw_http_bad_request_gets_4xx_and_server_keeps_serving(case, triton, demo_model):
    tensor, word = RAW_HTTP_BAD[case]
    status, body = triton.post(f"/v2/models/{MODEL}/infer", json.dumps({"inputs": [tensor]}).encode())
    assert 400 <= status < 500, (status, body)
    assert word in json.loads(body)["error"]
    status, body = triton.post(f"/v2/models/{MODEL}/infer", json.dumps({"inputs": [
        {"name": "X", "shape": [1, 5], "datatype": "FP32", "data": demo_model.X_val[0].tolist()}]}).encode())
    assert status == 200, body
    (value,) = json.loads(body)["outputs"][0]["data"]
    assert value == pytest.approx(demo_model.estimator.predict(demo_model.X_val[:1])[0], rel=1e-4)


def inf_row() -> np.ndarray:
    return np.array([[0.0, np.nan, 0.0, np.inf, 0.0]], dtype=np.float32)


def test_missing_values_are_predicted_as_sklearn_predicts_them(client, demo_model):
    """NaN is a value: the model file routes it down each split as sklearn does."""
    rows = demo_model.X_val[:64].copy()
    rows[::2, 1] = np.nan
    rows[1::4] = np.nan
    np.testing.assert_allclose(client.predict(rows), demo_model.estimator.predict(rows), rtol=1e-4, atol=1e-3)


def test_infinite_values_are_refused_by_the_model_over_http(triton):
    """Triton passes inf through; our model refuses it with INVALID_ARG (HTTP 400), as sklearn refuses it."""
    client = httpclient.InferenceServerClient(triton.endpoints.http)
    try:
        tensor = httpclient.InferInput("X", [1, 5], "FP32")
        tensor.set_data_from_numpy(inf_row(), binary_data=True)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL, [tensor])
        assert caught.value.status() == "400"
        assert "infinite values" in caught.value.message()
        assert client.is_server_ready()
    finally:
        client.close()


@pytest.mark.parametrize("case", ["wrong shape", "wrong dtype", "non-finite"])
def test_raw_grpc_bad_request_gets_invalid_argument(case, triton, demo_model):
    client = grpcclient.InferenceServerClient(triton.endpoints.grpc)
    try:
        if case == "wrong shape":
            tensor = grpcclient.InferInput("X", [1, 3], "FP32")
            tensor.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        elif case == "wrong dtype":
            tensor = grpcclient.InferInput("X", [1, 5], "INT64")
            tensor.set_data_from_numpy(np.zeros((1, 5), dtype=np.int64))
        else:
            tensor = grpcclient.InferInput("X", [1, 5], "FP32")
            tensor.set_data_from_numpy(inf_row())
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL, [tensor])
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
        good = grpcclient.InferInput("X", [1, 5], "FP32")
        good.set_data_from_numpy(demo_model.X_val[:1])
        (value,) = client.infer(MODEL, [good]).as_numpy("variable")[0]
        assert value == pytest.approx(demo_model.estimator.predict(demo_model.X_val[:1])[0], rel=1e-4)
    finally:
        client.close()


def test_mixed_good_and_bad_requests_in_one_batch(triton, demo_model):
    """An inf request batched with good ones fails alone; its neighbours get correct answers."""
    client = httpclient.InferenceServerClient(triton.endpoints.http, concurrency=16)
    try:
        pending = []
        for i in range(64):
            row = inf_row() if i % 4 == 0 else demo_model.X_val[i:i + 1]
            tensor = httpclient.InferInput("X", [1, 5], "FP32")
            tensor.set_data_from_numpy(row, binary_data=True)
            pending.append((i, client.async_infer(MODEL, [tensor])))
        for i, request in pending:
            if i % 4 == 0:
                with pytest.raises(InferenceServerException, match="infinite values"):
                    request.get_result()
            else:
                value = request.get_result().as_numpy("variable")[0, 0]
                assert value == pytest.approx(demo_model.estimator.predict(demo_model.X_val[i:i + 1])[0], rel=1e-4)
    finally:
        client.close()
