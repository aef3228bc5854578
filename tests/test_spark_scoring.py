"""Scoring a Spark DataFrame through the embedded server with rf_triton.client.spark, on a real local
Spark (local[2]): every row compared with sklearn, and the server's own counts of what it received.

Models are exported with max_batch_size 64 and scored in predict calls of 200 rows on tables of
several hundred rows, so each partition sends several requests, each call is split by the client,
and the server must have seen every row exactly once.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from rf_triton.client import InputError
from rf_triton.export import sources
from rf_triton.export.pipeline import export_model
from rf_triton.export.triton_config import ServingOptions

spark_module = pytest.importorskip("rf_triton.client.spark")
pyspark = pytest.importorskip("pyspark", reason="the spark extra (in .[test]) is not installed")
from pyspark.errors import PythonException  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    # PySpark 4.3 warns that it does not fully support pandas 3 yet; what it does here is checked row by row
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

MAX_BATCH_SIZE = 64
CALL_ROWS = 200
ROW = "row_id"


def wine_rows() -> tuple[RandomForestRegressor, pd.DataFrame, list[str]]:
    """Grid data (wine's measurements), repeated 4 times, with NaN scattered and whole-NaN rows."""
    frame = load_wine(as_frame=True).frame.drop(columns="target")
    features = [c for c in frame.columns if c != "alcohol"]
    model = RandomForestRegressor(n_estimators=20, max_depth=8, random_state=0).fit(frame[features], frame["alcohol"])
    rows = pd.concat([frame[features]] * 4, ignore_index=True)
    rng = np.random.default_rng(0)
    rows = rows.mask(rng.random(rows.shape) < 0.1)
    rows.iloc[:3] = np.nan
    return model, rows, features


def iris_rows() -> tuple[Pipeline, pd.DataFrame]:
    """A DataFrame classifier: a string column one-hot encoded (unknown values refused), string labels."""
    iris = load_iris(as_frame=True)
    X = iris.data.copy()
    X.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    X["origin"] = np.array(["north", "south", "east"])[np.arange(len(X)) % 3]
    y = np.asarray(iris.target_names)[iris.target]
    encode = ColumnTransformer([("origin", OneHotEncoder(handle_unknown="error"), ["origin"])], remainder="passthrough")
    model = Pipeline([("encode", encode), ("forest", RandomForestClassifier(n_estimators=25, random_state=0))]).fit(X, y)
    rows = pd.concat([X] * 5, ignore_index=True)
    rows.loc[rows.index % 11 == 0, "petal_width"] = np.nan
    return model, rows


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Both forests exported as rf-triton export writes them, with a small max_batch_size."""
    repository = tmp_path_factory.mktemp("spark") / "model_repository"
    wine_model, wine, features = wine_rows()
    iris_model, iris = iris_rows()
    # a step that computes before the forest: served with FP64 inputs, as sklearn computes in float64
    frame = load_wine(as_frame=True).frame
    scaled = Pipeline([("scale", StandardScaler()), ("forest", RandomForestRegressor(n_estimators=20, random_state=0))])
    scaled.fit(frame[features], frame["alcohol"])
    options = ServingOptions(max_batch_size=MAX_BATCH_SIZE)
    for name, model in (("wine", wine_model), ("iris", iris_model), ("scaled", scaled)):
        export_model(sources.from_estimator(model, name, name), repository, name=name, options=options)
    return {"repository": repository, "wine": (wine_model, wine, features), "iris": (iris_model, iris),
            "scaled": scaled}


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    with spark_module.local_session(2, "rf-triton-tests", str(tmp_path_factory.mktemp("spark-local"))) as session:
        yield session


def served(server, model: str) -> tuple[int, int]:
    """(rows, requests) the server has answered for `model`, warmup included."""
    stats = server.model_stats(model)
    return stats["inference_count"], stats["inference_stats"]["success"]["count"]


def scored_frame(spark, rows: pd.DataFrame, scorer) -> pd.DataFrame:
    """Score `rows` on Spark in two partitions; back in pandas, in the original row order."""
    table = spark.createDataFrame(rows.assign(**{ROW: np.arange(len(rows))})).repartition(2)
    assert table.rdd.getNumPartitions() == 2
    return scorer.score(table).toPandas().sort_values(ROW).reset_index(drop=True)


def test_regressor_rows_match_sklearn_and_the_server_saw_each_row_once(spark, models, server_factory):
    model, rows, features = models["wine"]
    server = server_factory(models["repository"])
    scorer = spark_module.predict_udf(server.endpoints.http, model="wine", batch_size=CALL_ROWS)
    assert scorer.columns == tuple(features) and scorer.classes == ()
    rows_before, requests_before = served(server, "wine")
    scored = scored_frame(spark, rows, scorer)
    assert len(scored) == len(rows)
    expected = model.predict(rows[features])
    np.testing.assert_allclose(scored["prediction"].to_numpy(), expected, rtol=1e-5, atol=1e-4)
    rows_after, requests_after = served(server, "wine")
    assert rows_after - rows_before == len(rows)
    assert requests_after - requests_before >= math.ceil(len(rows) / MAX_BATCH_SIZE)
    # each input in its own datatype: the scaled model's are FP64
    scaled = spark_module.predict_udf(server.endpoints.http, model="scaled", batch_size=CALL_ROWS)
    assert {t.datatype for t in scaled.signature.inputs} == {"FP64"}
    scored = scored_frame(spark, rows, scaled)
    np.testing.assert_allclose(scored["prediction"].to_numpy(), models["scaled"].predict(rows[features]),
                               rtol=1e-5, atol=1e-4)


def test_dataframe_classifier_labels_and_probabilities_match_sklearn(spark, models, server_factory):
    model, rows = models["iris"]
    server = server_factory(models["repository"])
    for protocol, url in (("http", server.endpoints.http), ("grpc", server.endpoints.grpc)):
        scorer = spark_module.predict_udf(url, protocol=protocol, model="iris", batch_size=CALL_ROWS)
        assert scorer.classes == ("setosa", "versicolor", "virginica")
        rows_before, requests_before = served(server, "iris")
        scored = scored_frame(spark, rows, scorer)
        labels = scored["prediction"].map(lambda p: p["label"]).to_numpy()
        probabilities = np.stack(scored["prediction"].map(lambda p: np.asarray(p["probabilities"])).to_numpy())
        np.testing.assert_array_equal(labels, model.predict(rows), err_msg=protocol)
        np.testing.assert_allclose(probabilities, model.predict_proba(rows), atol=1e-5, err_msg=protocol)
        rows_after, requests_after = served(server, "iris")
        assert rows_after - rows_before == len(rows), protocol
        assert requests_after - requests_before >= math.ceil(len(rows) / MAX_BATCH_SIZE), protocol


def test_bad_tables_are_refused_with_the_clients_reasons(spark, models, server_factory):
    _, rows = models["iris"]
    server = server_factory(models["repository"])
    scorer = spark_module.predict_udf(server.endpoints.http, model="iris", batch_size=CALL_ROWS)
    # before any task runs, on the driver
    with pytest.raises(InputError, match="lacks column.*origin"):
        scorer.score(spark.createDataFrame(rows.drop(columns="origin")))
    with pytest.raises(InputError, match="'origin' is bigint; the model takes strings"):
        scorer.score(spark.createDataFrame(rows.assign(origin=1)))
    with pytest.raises(InputError, match="'sepal_length' is string; the model takes numbers"):
        scorer.score(spark.createDataFrame(rows.assign(sepal_length="5.1")))
    # in the workers, by the client, row by row
    bad_tables = {
        "infinite values": rows.assign(sepal_width=np.where(rows.index == 7, np.inf, rows["sepal_width"])),
        "not a category the model was fitted on": rows.assign(origin=np.where(rows.index == 5, "west", rows["origin"])),
        "has missing values": rows.assign(origin=rows["origin"].where(rows.index != 9, None)),
    }
    served_before = served(server, "iris")
    for reason, table in bad_tables.items():
        with pytest.raises(PythonException) as failure:
            scorer.score(spark.createDataFrame(table).coalesce(1)).collect()
        assert "InputError" in str(failure.value) and reason in str(failure.value), str(failure.value)[-2000:]
    # the bad rows sit in the first request of their partition: it is refused before it is sent
    assert served(server, "iris") == served_before


def test_spark_session_helper_refuses_a_second_session(spark):
    from rf_triton.client import ClientError

    with pytest.raises(ClientError, match="already active"):
        with spark_module.local_session(1):
            pass
