"""Every kind of forest a user brings, exported and served by the real embedded Triton, answers what
sklearn's predict / predict_proba answer, over HTTP and gRPC, rows with missing values included.

Kinds: binary classifier (int labels, trained with NaN), multiclass with string labels (ExtraTrees),
ExtraTrees regressor, 2-output regressor (trained with NaN), a DataFrame pipeline with a string
column (OneHotEncoder) and a scaled numeric column, and an OrdinalEncoder pipeline classifier.
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from conftest import frame_data, numeric_data
from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor

from rf_triton.client import InputError, RandomForestClient
from rf_triton.export import sources
from rf_triton.signature import numpy_dtype

PROTOCOLS = ("http", "grpc")
HELD_OUT_SEED = 99  # rows the models were not trained on
RNG = np.random.default_rng(HELD_OUT_SEED)


def url(server, protocol: str) -> str:
    return server.endpoints.http if protocol == "http" else server.endpoints.grpc


def refused_by_server(server, protocol: str, model: str, tensors: list[tuple[str, str, np.ndarray]]):
    """Send tensors with plain tritonclient (no client-side checks); return the server's refusal."""
    import tritonclient.grpc
    import tritonclient.http
    from tritonclient.utils import InferenceServerException

    proto = tritonclient.http if protocol == "http" else tritonclient.grpc
    raw = proto.InferenceServerClient(url(server, protocol))
    inputs = []
    for name, datatype, values in tensors:
        tensor = proto.InferInput(name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values, **({"binary_data": True} if protocol == "http" else {}))
        inputs.append(tensor)
    try:
        with pytest.raises(InferenceServerException) as refused:
            raw.infer(model, inputs)
    finally:
        raw.close()
    assert str(refused.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    return refused.value


def rows_with_nan(n: int = 300) -> np.ndarray:
    X, _ = numeric_data(n, seed=HELD_OUT_SEED)
    X[RNG.random(X.shape) < 0.3] = np.nan
    X[:3] = np.nan  # whole rows missing
    return X


@pytest.mark.integration
def test_parity_at_export_covers_nan_rows_for_every_kind(kinds):
    _, _, exports = kinds
    for name, result in exports.items():
        assert result.parity.passed, name
        assert result.parity.nan_rows > 0, name
        assert result.parity.label_mismatches == 0, name


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classifiers_serve_sklearn_labels_and_probabilities(kinds, protocol):
    server, models, _ = kinds
    X = rows_with_nan()
    for name in ("binary_nan", "multiclass_str"):
        model = models[name]
        with RandomForestClient(url(server, protocol), protocol=protocol, model=name) as client:
            labels = client.predict(X)
            probabilities = client.predict_proba(X)
            assert client.signature.classes == tuple(model.classes_.tolist())
        assert labels.dtype.kind == model.classes_.dtype.kind or labels.dtype.kind in "U" and model.classes_.dtype.kind in "OU"
        np.testing.assert_array_equal(labels, model.predict(X))
        np.testing.assert_allclose(probabilities, model.predict_proba(X), atol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_regressors_serve_every_output(kinds, protocol):
    server, models, _ = kinds
    X = rows_with_nan()
    for name in ("extra_trees", "two_outputs_nan"):
        model = models[name]
        with RandomForestClient(url(server, protocol), protocol=protocol, model=name) as client:
            predicted = client.predict(X)
        expected = model.predict(X)
        assert predicted.shape == expected.shape
        np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dataframe_pipelines_take_columns_by_name(kinds, protocol):
    server, models, _ = kinds
    frame = frame_data(200, seed=HELD_OUT_SEED)
    frame.loc[:9, "city"] = "unseen-city"  # handle_unknown="ignore": sklearn answers, so must the server
    frame.loc[10:19, "size"] = np.nan
    shuffled = frame[["age", "city", "size"]]
    with RandomForestClient(url(server, protocol), protocol=protocol, model="frame_pipeline") as client:
        assert [t.name for t in client.signature.inputs] == ["city", "size", "age"]
        predicted = client.predict(shuffled)
        as_dicts = client.predict(shuffled.head(5).to_dict("records"))
    expected = models["frame_pipeline"].predict(frame)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(as_dicts, expected[:5], rtol=1e-5, atol=1e-3)

    known = frame_data(200, seed=HELD_OUT_SEED)
    with RandomForestClient(url(server, protocol), protocol=protocol, model="ordinal_pipeline") as client:
        np.testing.assert_array_equal(client.predict(known), models["ordinal_pipeline"].predict(known))


@pytest.mark.integration
def test_classification_extension_returns_top_k_labels(kinds):
    """Triton's own classification extension reads labels.txt: 'score:index:label', best first."""
    server, models, _ = kinds
    model = models["multiclass_str"]
    row = numeric_data(1, seed=HELD_OUT_SEED)[0]
    body = {"inputs": [{"name": "X", "shape": [1, 5], "datatype": "FP32", "data": row.ravel().tolist()}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}
    request = urllib.request.Request(f"http://{server.endpoints.http}/v2/models/multiclass_str/infer",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)
    top = answer["outputs"][0]["data"]
    probabilities = model.predict_proba(row)[0]
    best = np.argsort(-probabilities)[:2]
    assert [entry.split(":")[2] for entry in top] == [model.classes_[i] for i in best]
    assert [int(entry.split(":")[1]) for entry in top] == best.tolist()
    np.testing.assert_allclose([float(entry.split(":")[0]) for entry in top], probabilities[best], atol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_infinity_refused_by_client_and_server(kinds, protocol):
    server, _, _ = kinds
    X = numeric_data(4, seed=HELD_OUT_SEED)[0].astype(np.float32)
    X[2, 1] = np.inf
    with RandomForestClient(url(server, protocol), protocol=protocol, model="binary_nan") as client:
        with pytest.raises(InputError, match="row 2, column x1"):
            client.predict(X)
    # the server refuses it too, for clients that do not check (binary tensor data: JSON has no inf)
    refusal = refused_by_server(server, protocol, "binary_nan", [("X", "FP32", X)])
    assert "infinite values" in refusal.message()


@pytest.mark.integration
def test_metadata_records_task_classes_and_outputs(kinds):
    _, _, exports = kinds
    binary = exports["binary_nan"].metadata
    assert binary["task"] == "classification" and binary["classes"] == [0, 1]
    assert [o["name"] for o in binary["outputs"]] == ["label", "probabilities"]
    assert exports["two_outputs_nan"].metadata["outputs"][0]["dims"] == [2]
    assert [i["datatype"] for i in exports["frame_pipeline"].metadata["inputs"]] == ["BYTES", "FP64", "FP64"]
    assert [i["datatype"] for i in exports["frame_fp32"].metadata["inputs"]] == ["BYTES", "FP32", "FP32"]
    assert (exports["multiclass_str"].version_dir.parent / "labels.txt").read_text() == "high\nlow\nmid\n"


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_category_refused_where_sklearn_refuses_it(kinds, protocol):
    """OrdinalEncoder(handle_unknown="error"): sklearn raises, so the client and the server refuse."""
    server, models, _ = kinds
    frame = frame_data(3, seed=HELD_OUT_SEED)
    frame.loc[1, "city"] = "atlantis"
    with pytest.raises(ValueError, match="unknown categories"):
        models["ordinal_pipeline"].predict(frame)
    with RandomForestClient(url(server, protocol), protocol=protocol, model="ordinal_pipeline") as client:
        with pytest.raises(InputError, match="'atlantis' .*rows \\[1\\].*refuses unknown values"):
            client.predict(frame)

    refusal = refused_by_server(server, protocol, "ordinal_pipeline", [
        ("city", "BYTES", frame["city"].to_numpy(dtype=object).reshape(-1, 1)),
        ("size", "FP32", frame["size"].to_numpy(np.float32).reshape(-1, 1)),
        ("age", "FP32", frame["age"].to_numpy(np.float32).reshape(-1, 1))])
    assert "atlantis" in refusal.message()


@pytest.mark.parametrize("kind", ["two-output regressor", "binary", "multiclass"])
def test_lean_forest_converter_writes_what_skl2onnx_writes(kind):
    """The numpy-built tree ensemble carries the trees exactly as skl2onnx's own tree walk
    (add_tree_to_attribute_pairs, what its converters call) writes them, plus sklearn's NaN routing."""
    import onnx
    from skl2onnx.common.tree_ensemble import (
        add_tree_to_attribute_pairs, get_default_tree_classifier_attribute_pairs,
        get_default_tree_regressor_attribute_pairs,
    )

    from rf_triton.export import onnx_convert

    X, X_nan = numeric_data(600, nan_fraction=0.2)
    X, X_nan = X[:, :4], X_nan[:, :4]
    targets = {"two-output regressor": np.c_[X[:, 0], X[:, 1] * 100], "binary": (X[:, 0] > 0).astype(int),
               "multiclass": np.digitize(X[:, 0], [-1, 0, 1])}
    classifier = kind != "two-output regressor"
    forest_type = ExtraTreesClassifier if classifier else ExtraTreesRegressor
    forest = forest_type(6, max_depth=6, random_state=0).fit(X_nan, targets[kind])
    ours = onnx.load_from_string(onnx_convert.convert(sources.TrainedModel(forest, list("abcd"), X, "test")))
    (node,) = [n for n in ours.graph.node if n.op_type.startswith("TreeEnsemble")]
    written = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    expected = (get_default_tree_classifier_attribute_pairs() if classifier
                else get_default_tree_regressor_attribute_pairs())
    for tree_id, estimator in enumerate(forest.estimators_):
        add_tree_to_attribute_pairs(expected, classifier, estimator.tree_, tree_id, 1.0 / len(forest.estimators_), 0,
                                    classifier, True, dtype=np.float32)
    weights = "class_weights" if classifier else "target_weights"
    for key in ("nodes_values", weights):
        expected[key] = np.asarray(expected[key], dtype=np.float32).tolist()
    expected["nodes_modes"] = [m.encode() for m in expected["nodes_modes"]]
    expected["post_transform"] = expected["post_transform"].encode()
    if classifier:
        expected["classlabels_int64s"] = forest.classes_.tolist()
    else:
        expected["n_targets"] = 2
    del expected["nodes_hitrates"]  # all 1.0, the default
    expected["nodes_missing_value_tracks_true"] = [
        int(v) for e in forest.estimators_ for v in np.where(e.tree_.children_left >= 0, e.tree_.missing_go_to_left, 0)]
    assert set(written) == set(expected)
    for key in expected:
        assert written[key] == expected[key], key


# -- inputs in the datatype the config declares: FP64 matrices and columns ------------------------


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fp64_matrix_is_sent_as_doubles_and_answers_what_sklearn_answers(kinds, protocol):
    server, models, _ = kinds
    X = rows_with_nan()
    with RandomForestClient(url(server, protocol), protocol=protocol, model="forest_fp64") as client:
        assert [t.datatype for t in client.signature.inputs] == ["FP64"]
        assert client.prepare(X)["X"].dtype == np.float64
        predicted = client.predict(X)
    np.testing.assert_allclose(predicted, models["forest_fp64"].predict(X), rtol=1e-5, atol=1e-4)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fp64_columns_take_values_beyond_the_fp32_range_and_fp32_columns_refuse_them(kinds, protocol):
    """Per input: numbers go out as the config declares them (FP64 here, BYTES for the strings), and
    only an FP32 input refuses a value float32 cannot hold; the served answer is ONNX Runtime's."""
    import onnxruntime as ort

    server, models, exports = kinds
    frame = frame_data(50, seed=HELD_OUT_SEED)
    with RandomForestClient(url(server, protocol), protocol=protocol, model="frame_pipeline") as client:
        assert [(t.name, t.datatype) for t in client.signature.inputs] == [
            ("city", "BYTES"), ("size", "FP64"), ("age", "FP64")]
        np.testing.assert_allclose(client.predict(frame), models["frame_pipeline"].predict(frame), rtol=1e-5, atol=1e-4)
        frame.loc[3, "size"] = 1e39
        tensors = client.prepare(frame)
        assert tensors["size"].dtype == np.float64 and tensors["size"][3, 0] == 1e39
        predicted = client.predict(frame)
    session = ort.InferenceSession(str(exports["frame_pipeline"].version_dir / "model.onnx"))
    (expected,) = session.run(None, {name: tensor if tensor.dtype != object else tensor.astype(str).astype(object)
                                     for name, tensor in tensors.items()})
    np.testing.assert_array_equal(predicted, expected.reshape(-1))
    with RandomForestClient(url(server, protocol), protocol=protocol, model="frame_fp32") as client:
        assert [t.datatype for t in client.signature.inputs] == ["BYTES", "FP32", "FP32"]
        with pytest.raises(InputError, match="beyond the FP32 range"):
            client.predict(frame)


# -- one request's refusal leaves the others of its batch answered ---------------------------------


@pytest.mark.integration
def test_a_string_that_is_not_utf8_fails_only_its_own_request_of_a_batch(kinds):
    """Four one-row requests fill the preferred batch of 4: the batcher hands them to one execution,
    as the server's statistics show; the one whose string is not UTF-8 is refused, alone."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from conftest import BATCHED_KIND

    server, models, _ = kinds
    frame = frame_data(4, seed=HELD_OUT_SEED)
    with RandomForestClient(server.endpoints.http, model=BATCHED_KIND) as described:
        datatypes = {t.name: t.datatype for t in described.signature.inputs}
    before = server.model_stats(BATCHED_KIND)

    def send(row: int):
        client = httpclient.InferenceServerClient(server.endpoints.http, network_timeout=60)
        city = b"\xff\xfe" if row == 2 else frame["city"][row].encode()
        values = {"city": np.array([[city]], dtype=object)}
        values.update({name: np.array([[frame[name][row]]], dtype=numpy_dtype(datatypes[name])) for name in ("size", "age")})
        inputs = []
        for name, array in values.items():
            inputs.append(httpclient.InferInput(name, [1, 1], datatypes[name]))
            inputs[-1].set_data_from_numpy(array, binary_data=True)
        try:
            return float(client.infer(BATCHED_KIND, inputs).as_numpy("variable").reshape(-1)[0])
        except InferenceServerException as exc:
            return exc
        finally:
            client.close()

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, range(4)))
    after = server.model_stats(BATCHED_KIND)
    assert after["inference_count"] - before["inference_count"] == 4
    assert after["execution_count"] - before["execution_count"] == 1  # one batch: the four were grouped
    refused = answers.pop(2)
    assert isinstance(refused, InferenceServerException) and str(refused.status()) == "400"
    assert "not UTF-8" in refused.message()
    np.testing.assert_allclose(answers, models[BATCHED_KIND].predict(frame.drop(index=2)), rtol=1e-5)


# -- a client that cannot use a model says why at once and leaves no connection open ---------------


def open_connections_to(port: int) -> int:
    import psutil

    return sum(1 for c in psutil.Process().net_connections(kind="tcp")
               if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_mistyped_model_name_fails_at_once_with_the_servers_reason(kinds, protocol):
    from rf_triton.client import InferenceError

    server, _, _ = kinds
    with pytest.raises(InferenceError, match="model 'binary_nann' is not served at .*unknown model"):
        RandomForestClient(url(server, protocol), protocol=protocol, model="binary_nann", init_timeout_s=300).connect()
    with pytest.raises(InferenceError, match="version 9 is not served"):
        RandomForestClient(url(server, protocol), protocol=protocol, model="binary_nan", version=9,
                           init_timeout_s=300).connect()


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_model_the_client_cannot_use_leaves_no_connection_open(kinds, protocol):
    from conftest import UNBATCHED_KIND

    from rf_triton.client import InferenceError

    server, _, _ = kinds
    port = server.endpoints.http_port if protocol == "http" else server.endpoints.grpc_port
    client = RandomForestClient(url(server, protocol), protocol=protocol, model=UNBATCHED_KIND)
    with pytest.raises(InferenceError, match="does not batch"):
        with client:
            pass
    assert client._client is None
    if protocol == "http":
        assert open_connections_to(port) == 0
