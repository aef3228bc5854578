"""Pipelines answer what sklearn answers, on the data where float32 preprocessing would not.

sklearn computes preprocessing in float64 and casts once before the trees; rows whose raw value sits
on the data's grid (counts, ages, one or two decimals) sit exactly on split thresholds. The tests:
- the fidelity matrix (every supported step × RF/ExtraTrees × regressor/classifier, integer,
  decimal and continuous data, sklearn's datasets): 0 rows off, training and held-out rows;
- the same pipelines served by the embedded Triton over HTTP and gRPC;
- export's parity check refuses a graph that computes the preprocessing in float32, and says so;
- refusals in one line; nothing registered in skl2onnx.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    KBinsDiscretizer, MinMaxScaler, OneHotEncoder, PolynomialFeatures, PowerTransformer, StandardScaler,
)
from typer.testing import CliRunner

from rf_triton.benchmarks import fidelity
from rf_triton.cli import app
from rf_triton.export import onnx_convert, pipeline, sources
from rf_triton.export.errors import ExportError

PROTOCOLS = ("http", "grpc")


def grid_rows(seed: int = 5, n: int = 3000):
    """The rows of the report that showed float32 preprocessing off: counts, ages, ratings, a normal."""
    return fidelity._grid(seed, n)


def test_every_supported_step_answers_like_sklearn_on_every_row():
    cases = fidelity.run_matrix(quick=True)
    off = [c for c in cases if c.rows_off]
    assert not off, "\n".join(f"{c.step} → {c.forest} on {c.dataset}: {c.rows_off} of {c.rows} rows off "
                              f"(max error {c.max_error:.3g})" for c in off)
    steps = {c.step for c in cases}
    assert {"StandardScaler", "MinMaxScaler", "RobustScaler", "MaxAbsScaler", "SimpleImputer + StandardScaler",
            "QuantileTransformer", "PCA", "Normalizer", "KBinsDiscretizer", "PolynomialFeatures",
            "ColumnTransformer (by name)", "set_output(pandas)"} <= steps
    assert all(c.input_datatype == "FP64" for c in cases)  # every one of them computes before the forest


def test_the_matrix_can_see_a_float32_graph():
    """The same comparison the matrix makes flags the float32 graph the report described."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    X, y = grid_rows()
    estimator = make_pipeline(StandardScaler(), RandomForestRegressor(n_estimators=50, random_state=0)).fit(X, y)
    graph = convert_sklearn(estimator, initial_types=[("X", FloatTensorType([None, 4]))],
                            target_opset=onnx_convert.TARGET_OPSET).SerializeToString()
    off, _ = fidelity.rows_off(estimator, onnx_convert.predict(graph, X), X, classifier=False)
    assert off > 30  # hundreds on this data; measured 0 for the FP64 export below
    exported = onnx_convert.convert(sources.TrainedModel(estimator, ["a", "b", "c", "d"], X, "test"))
    assert fidelity.rows_off(estimator, onnx_convert.predict(exported, X), X, classifier=False)[0] == 0


def _pickled(tmp_path, estimator, name="model.pkl"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(estimator))
    return path


def test_parity_refuses_a_graph_that_computes_the_preprocessing_in_float32(tmp_path):
    """Export's own check, on the probe rows of a --model, refuses the float32 graph and says why."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    X, y = grid_rows()
    estimator = make_pipeline(StandardScaler(), RandomForestRegressor(n_estimators=50, random_state=0)).fit(X, y)
    trained = sources.load_pickled(_pickled(tmp_path, estimator))
    float32_graph = convert_sklearn(estimator, initial_types=[("X", FloatTensorType([None, 4]))],
                                    target_opset=onnx_convert.TARGET_OPSET).SerializeToString()
    rows = trained.X_val  # the probe rows (skl2onnx's own trees also send NaN the wrong way: no NaN rows here)
    report = onnx_convert.check_parity(trained, float32_graph, rows, pipeline.DEFAULT_TOLERANCE)
    assert not report.passed and report.rows_off > 0
    message = report.failure()
    assert "the preprocessing differs: the trees fed sklearn's own features answer exactly" in message
    assert "e.g. row [" in message and "sklearn" in message
    assert onnx_convert.check_parity(trained, onnx_convert.convert(trained), rows, pipeline.DEFAULT_TOLERANCE).passed


def test_parity_tells_trees_that_differ(tmp_path):
    """A graph whose trees are another forest's: the trees, fed sklearn's features, differ."""
    X, y = grid_rows()
    estimator = make_pipeline(StandardScaler(), RandomForestRegressor(n_estimators=10, random_state=0)).fit(X, y)
    other = make_pipeline(StandardScaler(), RandomForestRegressor(n_estimators=10, random_state=1)).fit(X, y)
    trained = sources.load_pickled(_pickled(tmp_path, estimator))
    wrong = onnx_convert.convert(sources.TrainedModel(other, trained.feature_names, X, "other"))
    report = onnx_convert.check_parity(trained, wrong, pipeline.parity_rows(trained), 1e-4)
    assert not report.passed
    assert "the trees differ" in report.failure()


def test_probe_rows_sit_on_the_data_grid(tmp_path):
    """For a --model without data, probes include the integer values the thresholds sit between."""
    X, y = grid_rows()
    estimator = make_pipeline(StandardScaler(), RandomForestRegressor(n_estimators=10, random_state=0)).fit(X, y)
    rows = sources.load_pickled(_pickled(tmp_path, estimator)).X_val
    ages = set(np.unique(rows[:, 1]).tolist())
    assert set(range(19, 89)) <= ages  # every age a threshold sits next to
    assert set(range(0, 10)) <= set(np.unique(rows[:, 0]).tolist())


def test_parity_data_rows_are_compared_too(tmp_path):
    X, y = grid_rows()
    estimator = make_pipeline(StandardScaler(), RandomForestRegressor(n_estimators=10, random_state=0)).fit(
        pd.DataFrame(X, columns=["count", "age", "rating", "score"]), y)
    own = tmp_path / "rows.csv"
    pd.DataFrame(X[:500], columns=["count", "age", "rating", "score"]).assign(target=y[:500]).to_csv(own, index=False)
    trained = sources.load_pickled(_pickled(tmp_path, estimator))
    plain = pipeline.export_model(trained, tmp_path / "repo")
    checked = pipeline.export_model(trained, tmp_path / "repo", parity_data=own)
    assert checked.parity.rows == plain.parity.rows + 500
    broken = tmp_path / "broken.csv"
    pd.DataFrame({"count": [1.0]}).to_csv(broken, index=False)
    with pytest.raises(ExportError, match="lacks the model's column"):
        pipeline.export_model(trained, tmp_path / "repo", parity_data=broken)


def test_inputs_are_fp64_where_a_step_computes_and_fp32_where_none_does():
    X, y = grid_rows()
    frame = pd.DataFrame(X, columns=["count", "age", "rating", "score"]).assign(
        city=np.random.default_rng(0).choice(["a", "b"], len(X)).astype(object))
    scaled = sources.TrainedModel(make_pipeline(StandardScaler(), RandomForestRegressor(2)).fit(X, y), list("abcd"), X, "t")
    bare = sources.TrainedModel(RandomForestRegressor(2).fit(X, y), list("abcd"), X, "t")
    encoded = Pipeline([("c", ColumnTransformer([("city", OneHotEncoder(), ["city"])], remainder="passthrough")),
                        ("f", RandomForestRegressor(2))]).fit(frame, y)
    encoded_model = sources.TrainedModel(encoded, list(frame.columns), frame, "t", string_columns=("city",))
    assert scaled.numeric_datatype == "FP64"
    assert bare.numeric_datatype == "FP32" and encoded_model.numeric_datatype == "FP32"
    assert onnx_convert.signature(onnx_convert.convert(scaled), scaled).inputs[0].datatype == "FP64"
    found = onnx_convert.signature(onnx_convert.convert(encoded_model), encoded_model)
    assert {t.name: t.datatype for t in found.inputs} == {"count": "FP32", "age": "FP32", "rating": "FP32",
                                                          "score": "FP32", "city": "BYTES"}


def test_exact_ties_take_sklearns_label():
    """sklearn predicts the first of tied classes; float32 sums of the trees would pick either."""
    X, y = grid_rows()
    labels = (y > np.median(y)).astype(int)
    estimator = make_pipeline(KBinsDiscretizer(n_bins=5, encode="ordinal"),
                              ExtraTreesClassifier(n_estimators=30, random_state=0)).fit(X[:2100], labels[:2100])
    probabilities = estimator.predict_proba(X)
    assert (probabilities[:, 0] == probabilities[:, 1]).sum() > 50  # many exact ties on this data
    prediction = onnx_convert.predict(onnx_convert.convert(sources.TrainedModel(estimator, list("abcd"), X, "t")), X)
    assert (prediction.labels == estimator.predict(X)).all()


def test_classes_sklearn_does_not_tie_are_further_apart_than_the_tie_margin():
    """The margin that makes float32 ties exact never merges two classes sklearn tells apart."""
    from sklearn import datasets

    closest = np.inf
    for X, y in (grid_rows()[0:1] + ((grid_rows()[1] > 30).astype(int),), datasets.load_iris(return_X_y=True),
                 datasets.load_digits(return_X_y=True)):
        for forest in (RandomForestClassifier, ExtraTreesClassifier):
            for trees, depth in ((10, None), (30, 6), (100, 6)):
                model = forest(n_estimators=trees, max_depth=depth, random_state=0).fit(X, y)
                top = np.sort(model.predict_proba(X), axis=1)
                gap = top[:, -1] - top[:, -2]
                closest = min(closest, gap[gap > 0].min() / onnx_convert.tie_margin(trees))
    assert closest > 2  # the nearest two distinct best classes: more than two margins apart


def test_a_columnar_classifier_with_strings_and_a_scaler_exports(tmp_path):
    """The penguins setup: OneHot on two string columns plus a scaler before a classifier."""
    rng = np.random.default_rng(1)
    n = 800
    frame = pd.DataFrame({"island": rng.choice(["Biscoe", "Dream", "Torgersen"], n).astype(object),
                          "sex": rng.choice(["male", "female"], n).astype(object),
                          "bill": np.round(rng.normal(44, 5, n), 1), "flipper": rng.integers(170, 230, n) * 1.0})
    species = np.where(frame.bill + (frame.island == "Dream") * 3 > 46, "Gentoo",
                       np.where(frame.flipper > 200, "Adelie", "Chinstrap"))
    estimator = Pipeline([("prep", ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["island", "sex"]),
                                                      ("num", StandardScaler(), ["bill", "flipper"])])),
                          ("forest", RandomForestClassifier(30, random_state=0))]).fit(frame, species)
    result = pipeline.export_model(sources.load_pickled(_pickled(tmp_path, estimator)), tmp_path / "repo")
    assert result.parity.passed
    prediction = onnx_convert.predict((result.version_dir / "model.onnx").read_bytes(), frame)
    assert (prediction.labels.astype(str) == estimator.predict(frame)).all()


def test_numeric_columns_selected_by_name_are_served_one_input_per_column(tmp_path):
    X, y = grid_rows()
    frame = pd.DataFrame(X, columns=["count", "age", "rating", "score"])
    estimator = Pipeline([("prep", ColumnTransformer([("s", StandardScaler(), ["count", "age"])],
                                                     remainder="passthrough")),
                          ("forest", RandomForestRegressor(20, random_state=0))]).fit(frame, y)
    result = pipeline.export_model(sources.load_pickled(_pickled(tmp_path, estimator)), tmp_path / "repo")
    assert [i["name"] for i in result.metadata["inputs"]] == ["count", "age", "rating", "score"]
    assert {i["datatype"] for i in result.metadata["inputs"]} == {"FP64"}


@pytest.mark.parametrize("estimator, message", [
    (make_pipeline(PowerTransformer(), RandomForestRegressor(3)), "PowerTransformer cannot be served exactly: scipy"),
    (make_pipeline(SimpleImputer(add_indicator=True), RandomForestRegressor(3)), "SimpleImputer: add_indicator=True"),
    (make_pipeline(KBinsDiscretizer(encode="onehot-dense"), RandomForestRegressor(3)), "KBinsDiscretizer: encode='onehot-dense' is not supported"),
    (make_pipeline(PolynomialFeatures(), MinMaxScaler(), __import__("sklearn.decomposition", fromlist=["x"]).TruncatedSVD(2),
                   RandomForestRegressor(3)), "TruncatedSVD is not a step rf-triton exports exactly"),
], ids=["power", "indicator", "kbins-onehot", "unsupported"])
def test_steps_that_cannot_be_exact_are_refused_in_one_line(tmp_path, estimator, message):
    X, y = grid_rows(n=300)
    path = _pickled(tmp_path, estimator.fit(X, y))
    result = CliRunner().invoke(app, ["export", "--model", str(path), "--repository", str(tmp_path / "repo")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "repo" / "random_forest").exists()


def test_export_registers_nothing_in_skl2onnx(tmp_path):
    """After an export, plain skl2onnx still converts forests its own way, and they predict."""
    import onnxruntime as ort
    from skl2onnx import _supported_operators, convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    before = dict(_supported_operators.sklearn_operator_name_map)
    X, y = grid_rows(n=500)
    pipeline.export_model(sources.TrainedModel(RandomForestRegressor(5, random_state=0).fit(X, y), list("abcd"), X,
                                               "t"), tmp_path / "repo")
    assert dict(_supported_operators.sklearn_operator_name_map) == before
    forest = RandomForestRegressor(5, random_state=0).fit(X, y)
    graph = convert_sklearn(forest, initial_types=[("X", FloatTensorType([None, 4]))],
                            target_opset=onnx_convert.TARGET_OPSET)
    answer = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"X": X.astype(np.float32)})[0][:, 0]
    np.testing.assert_allclose(answer, forest.predict(X), rtol=1e-5)


# -- served by the embedded Triton ---------------------------------------------------------------

def served_cases():
    """A pipeline for each kind of input the matrix covers: FP64 matrix, FP64 columns, strings."""
    X, y = grid_rows()
    frame = pd.DataFrame(X, columns=["count", "age", "rating", "score"])
    nan_X = X.copy()
    nan_X[np.random.default_rng(3).random(X.shape) < 0.1] = np.nan
    classes = fidelity._classes(y)
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    cities = pd.DataFrame({"city": np.random.default_rng(4).choice(["lyon", "nice"], len(X)).astype(object),
                           "age": X[:, 1], "rating": X[:, 2]})
    return {
        "scaled_regressor": (make_pipeline(StandardScaler(), RandomForestRegressor(20, random_state=0)), X, y),
        "minmax_classifier": (make_pipeline(MinMaxScaler(), RandomForestClassifier(20, random_state=0)), X, classes),
        "imputed_regressor": (make_pipeline(SimpleImputer(), StandardScaler(), RandomForestRegressor(20, random_state=0)),
                              nan_X, y),
        "by_name": (Pipeline([("prep", ColumnTransformer([("s", StandardScaler(), ["count", "age"])],
                                                          remainder="passthrough")),
                              ("forest", ExtraTreesClassifier(20, random_state=0))]), frame, classes),
        "strings_and_scaler": (Pipeline([("prep", ColumnTransformer([("c", OneHotEncoder(), ["city"]),
                                                                     ("n", StandardScaler(), ["age", "rating"])])),
                                         ("forest", RandomForestRegressor(20, random_state=0))]), cities, y),
        "iris_named_columns": (Pipeline([("prep", ColumnTransformer(  # names with spaces and parentheses
            [("s", StandardScaler(), ["sepal length (cm)", "sepal width (cm)"])], remainder="passthrough")),
            ("forest", RandomForestClassifier(20, random_state=0))]), iris.data, iris.target.to_numpy()),
    }


@pytest.fixture(scope="module")
def served(servers, tmp_path_factory):
    """Each pipeline fitted on 70% of its rows, pickled, exported as a user would, served by one server."""
    folder = tmp_path_factory.mktemp("fidelity")
    repository = folder / "model_repository"
    cases = {}
    for name, (estimator, X, y) in served_cases().items():
        train = np.random.default_rng(0).permutation(len(X))[: int(0.7 * len(X))]
        estimator.fit(X.iloc[train] if hasattr(X, "iloc") else X[train], y[train])
        path = folder / f"{name}.pkl"
        path.write_bytes(pickle.dumps(estimator))
        pipeline.export_model(sources.load_pickled(path), repository, name=name)
        cases[name] = (estimator, X)
    with servers.serving(repository) as server:
        yield server, cases


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", list(served_cases()))
def test_served_pipelines_answer_like_sklearn_on_every_row(served, name, protocol):
    from rf_triton.client import RandomForestClient

    server, cases = served
    estimator, X = cases[name]
    url = server.endpoints.http if protocol == "http" else server.endpoints.grpc
    with RandomForestClient(url, model=name, protocol=protocol) as client:
        classifier = client.signature.is_classifier
        assert {t.datatype for t in client.signature.inputs} - {"BYTES"} == {"FP64"}
        prediction = client.infer(X)
    off, error = fidelity.rows_off(estimator, prediction, X, classifier)
    assert off == 0, f"{off} of {len(X)} rows off (max error {error:.3g})"
    config = json.loads((server.repository / name / "1" / "metadata.json").read_text())
    assert config["parity"]["rows_off"] == 0
