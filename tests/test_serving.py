"""The embedded tritonserver serving the demo model, over HTTP and gRPC, through our client and raw."""

from __future__ import annotations

import queue
import time
from functools import partial

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from rf_triton.client.client import InferenceError, InputError, RandomForestClient
from rf_triton.export.parity import relative_errors

PROTOCOLS = ["http", "grpc"]
MODEL = "random_forest"


def url_for(triton, protocol: str) -> str:
    return triton.endpoints.http if protocol == "http" else triton.endpoints.grpc


@pytest.fixture(params=PROTOCOLS)
def client(request, triton):
    with RandomForestClient(url_for(triton, request.param), protocol=request.param, model=MODEL) as c:
        yield c


@pytest.fixture(scope="module")
def counted(servers, tmp_path_factory, demo_model):
    """A server of this module's own, so that its cumulative statistics count only this module's
    requests, with a 1 ms batching window."""
    from rf_triton.export.pipeline import export_model
    from rf_triton.export.triton_config import ServingOptions

    repository = tmp_path_factory.mktemp("counted") / "model_repository"
    export_model(demo_model, repository, options=ServingOptions(max_queue_delay_us=1000))
    with servers.serving(repository, watch_interval_s=None) as server:
        yield server


def stats(triton) -> dict:
    model_stats = triton.model_stats(MODEL)
    return {"inferences": model_stats["inference_count"], "executions": model_stats["execution_count"],
            "requests": model_stats["inference_stats"]["success"]["count"]}


@pytest.mark.integration
def test_client_reads_the_model_description(client, demo_model):
    assert client.n_features == 5
    assert client.max_batch_size == 1024
    assert client.feature_names == demo_model.feature_names
    assert (client.input_name, client.output_name) == ("X", "variable")
    assert client.is_ready()


@pytest.mark.integration
def test_predictions_match_sklearn(client, demo_model):
    X = demo_model.X_val
    predictions = client.predict(X)
    assert predictions.shape == (len(X),)
    assert np.max(relative_errors(demo_model.estimator.predict(X), predictions)) <= 1e-4


@pytest.mark.integration
def test_single_row_as_list_of_lists(client, demo_model):
    row = demo_model.X_val[:1].tolist()
    (value,) = client.predict(row)
    assert value == pytest.approx(demo_model.estimator.predict(demo_model.X_val[:1])[0], rel=1e-4)


@pytest.mark.integration
def test_dataframe_columns_matched_by_name(client, demo_model):
    frame = pd.DataFrame(demo_model.X_val[:20], columns=demo_model.feature_names)
    shuffled = frame[list(reversed(frame.columns))].assign(unused=1.0)
    np.testing.assert_allclose(client.predict(shuffled), demo_model.estimator.predict(frame.to_numpy()), rtol=1e-4)
    with pytest.raises(InputError, match="lacks feature column"):
        client.predict(frame.drop(columns=["x2"]))


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_large_input_is_split_into_max_batch_size_requests(counted, demo_model, protocol):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2500, 5)).astype(np.float32)
    before = stats(counted)
    with RandomForestClient(url_for(counted, protocol), protocol=protocol, model=MODEL) as client:
        predictions = client.predict(X)
    deadline = time.monotonic() + 30  # Triton counts a request once its response is on its way: wait for it
    while (after := stats(counted))["requests"] - before["requests"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after["requests"] - before["requests"] == 3  # 1024 + 1024 + 452 rows
    assert after["inferences"] - before["inferences"] == 2500
    assert np.max(relative_errors(demo_model.estimator.predict(X), predictions)) <= 1e-4


@pytest.mark.integration
def test_concurrent_requests_are_batched_by_triton(counted, demo_model):
    """Many 1-row requests in flight at once: bursts are sent until the server reports an execution that
    grouped several of them (a condition against a deadline, not a bet on one burst), and every answer
    of every burst is sklearn's."""
    rows = demo_model.X_val[:256]
    expected = demo_model.estimator.predict(rows)
    before = stats(counted)
    deadline = time.monotonic() + 120
    client = grpcclient.InferenceServerClient(counted.endpoints.grpc)
    try:
        while True:
            done = queue.Queue()
            for i, row in enumerate(rows):
                tensor = grpcclient.InferInput("X", [1, 5], "FP32")
                tensor.set_data_from_numpy(row.reshape(1, 5))
                client.async_infer(MODEL, [tensor], partial(lambda i, result, error: done.put((i, result, error)), i))
            answers = [done.get(timeout=60) for _ in rows]
            assert [error for _, _, error in answers if error is not None] == []
            results = np.array([result.as_numpy("variable")[0, 0] for _, result, _ in sorted(answers, key=lambda a: a[0])])
            np.testing.assert_allclose(results, expected, rtol=1e-4)
            after = stats(counted)
            if after["executions"] - before["executions"] < after["inferences"] - before["inferences"]:
                break
            assert time.monotonic() < deadline, f"no execution grouped two requests: {before} → {after}"
    finally:
        client.close()


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


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_client_refuses_bad_input_before_sending(case, counted, protocol):
    X, message = BAD_INPUTS[case]
    before = stats(counted)
    with RandomForestClient(url_for(counted, protocol), protocol=protocol, model=MODEL) as client:
        with pytest.raises(InputError, match=message):
            client.predict(X)
    assert stats(counted) == before


@pytest.mark.integration
def test_unknown_model_is_reported(triton):
    with pytest.raises(InferenceError, match="'no_such_model' is not served"):
        RandomForestClient(triton.endpoints.http, model="no_such_model", init_timeout_s=300).connect()


def inf_row() -> np.ndarray:
    return np.array([[0.0, np.nan, 0.0, np.inf, 0.0]], dtype=np.float32)


@pytest.mark.integration
def test_missing_values_are_predicted_as_sklearn_predicts_them(client, demo_model):
    """NaN is a value: the model file routes it down each split as sklearn does."""
    rows = demo_model.X_val[:64].copy()
    rows[::2, 1] = np.nan
    rows[1::4] = np.nan
    np.testing.assert_allclose(client.predict(rows), demo_model.estimator.predict(rows), rtol=1e-4, atol=1e-3)


@pytest.mark.integration
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
