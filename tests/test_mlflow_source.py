"""`rf-triton export --model` from MLflow: a real tracking store with its model registry (sqlite, in
tmp_path), models logged with `mlflow.sklearn.log_model`, aliases set with MlflowClient.

MLflow is pointed at the store through its own environment variables, as a user would; nothing here
calls mlflow.set_tracking_uri (that would change MLflow's state for the rest of the session).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from typer.testing import CliRunner

from rf_triton.cli import app

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (in .[test]) is not installed")
import mlflow.sklearn  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402

runner = CliRunner()
TRUSTED = ["sklearn.tree._tree.Tree"]  # skops, MLflow's default sklearn format, asks the author to trust trees
# given, so that MLflow does not infer them by loading each model again in a child process (~25 s a model)
REQUIREMENTS = ["scikit-learn"]
EXAMPLE_ROWS = 20


def wine_regressor():
    """Grid data: wine's measurements (1-2 decimals, integers), predicting the alcohol degree."""
    frame = load_wine(as_frame=True).frame.drop(columns="target")
    X, y = frame.drop(columns="alcohol"), frame["alcohol"]
    return RandomForestRegressor(n_estimators=15, max_depth=6, random_state=0).fit(X, y), X


def iris_classifier():
    """A DataFrame pipeline with a string column, string labels: served with one input per column."""
    iris = load_iris(as_frame=True)
    X = iris.data.copy()
    X.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    X["origin"] = np.where(np.arange(len(X)) % 3 == 0, "north", np.where(np.arange(len(X)) % 3 == 1, "south", "east"))
    y = np.asarray(iris.target_names)[iris.target]
    encode = ColumnTransformer([("origin", OneHotEncoder(handle_unknown="error"), ["origin"])], remainder="passthrough")
    model = Pipeline([("encode", encode), ("forest", RandomForestClassifier(n_estimators=15, random_state=0))])
    return model.fit(X, y), X


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite tracking store and registry with: wine_rf v1 (alias champion), iris_rf v1, runs with a
    linear model and with mismatched signatures, and a saved model folder; artifacts beside the db."""
    root = tmp_path_factory.mktemp("mlflow")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = {"skops_trusted_types": TRUSTED, "pip_requirements": REQUIREMENTS}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        client = MlflowClient()
        experiment = client.create_experiment("forests", artifact_location=(root / "artifacts").as_uri())
        logged = {}
        for name, (model, X) in {"wine_rf": wine_regressor(), "iris_rf": iris_classifier()}.items():
            with mlflow.start_run(experiment_id=experiment) as run:
                info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                                input_example=X.iloc[:EXAMPLE_ROWS], **log)
            logged[name] = {"run_id": run.info.run_id, "model": model, "X": X, "version": info.registered_model_version}
        client.set_registered_model_alias("wine_rf", "champion", logged["wine_rf"]["version"])
        regressor, X = wine_regressor()
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.sklearn.log_model(LinearRegression().fit(X, X.iloc[:, 0]), name="linear", **log)
            renamed = X.rename(columns={"magnesium": "mg"})
            mlflow.sklearn.log_model(regressor, name="renamed", signature=infer_signature(renamed, regressor.predict(X)),
                                     **log)
            as_text = X.astype({"magnesium": str})
            mlflow.sklearn.log_model(regressor, name="retyped", signature=infer_signature(as_text, regressor.predict(X)),
                                     **log)
        logged["other_run"] = run.info.run_id
        folder = root / "saved_model"
        mlflow.sklearn.save_model(regressor, str(folder), input_example=X.iloc[:EXAMPLE_ROWS], **log)
        logged["folder"] = folder
        yield {"env": env, "root": root, **logged}


@pytest.fixture()
def mlflow_env(store, monkeypatch):
    for key, value in store["env"].items():
        monkeypatch.setenv(key, value)
    return store


def export(*args: str):
    return runner.invoke(app, ["export", *args])


def metadata_of(repository: Path, name: str = "random_forest", version: int = 1) -> dict:
    return json.loads((repository / name / str(version) / "metadata.json").read_text())


def one_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("form", ["version", "alias", "run", "folder"])
def test_every_mlflow_source_exports_with_its_provenance(mlflow_env, tmp_path, form):
    store = mlflow_env
    run_id = store["wine_rf"]["run_id"]
    uri = {"version": "models:/wine_rf/1", "alias": "models:/wine_rf@champion", "run": f"runs:/{run_id}/model",
           "folder": str(store["folder"])}[form]
    result = export("--model", uri, "--repository", str(tmp_path / "repo"))
    assert result.exit_code == 0, result.output
    metadata = metadata_of(tmp_path / "repo")
    recorded = metadata["provenance"]["mlflow"]
    assert recorded["uri"] == uri
    assert recorded["run_id"] == (None if form == "folder" else run_id)
    assert recorded["registered_model"] == ("wine_rf" if form in ("version", "alias") else None)
    assert recorded["registered_version"] == (1 if form in ("version", "alias") else None)
    assert recorded["signature_checked"] is True
    assert recorded["input_example_rows"] == EXAMPLE_ROWS
    assert metadata["source"] == f"MLflow model {uri}"
    assert metadata["feature_names"] == list(store["wine_rf"]["X"].columns)
    assert metadata["parity"]["max_rel_error"] <= metadata["parity"]["tolerance"]


def test_input_example_joins_the_parity_rows(mlflow_env, tmp_path):
    """The same forest from a pickle and from MLflow: the MLflow export checks the example rows too."""
    pickled = tmp_path / "wine.joblib"
    joblib.dump(mlflow_env["wine_rf"]["model"], pickled)
    assert export("--model", str(pickled), "--repository", str(tmp_path / "a")).exit_code == 0
    assert export("--model", "models:/wine_rf/1", "--repository", str(tmp_path / "b")).exit_code == 0
    from_pickle, from_mlflow = metadata_of(tmp_path / "a")["parity"], metadata_of(tmp_path / "b")["parity"]
    assert from_mlflow["rows"] == from_pickle["rows"] + EXAMPLE_ROWS


def test_dataframe_classifier_with_a_string_column(mlflow_env, tmp_path):
    import onnxruntime as ort

    result = export("--model", "models:/iris_rf/1", "--repository", str(tmp_path / "repo"), "--name", "iris")
    assert result.exit_code == 0, result.output
    metadata = metadata_of(tmp_path / "repo", "iris")
    assert metadata["task"] == "classification" and metadata["classes"] == ["setosa", "versicolor", "virginica"]
    assert {i["name"]: i["datatype"] for i in metadata["inputs"]}["origin"] == "BYTES"
    assert metadata["provenance"]["mlflow"]["registered_version"] == 1
    # the exported file answers the logged rows as the registered model does
    model, X = mlflow_env["iris_rf"]["model"], mlflow_env["iris_rf"]["X"]
    session = ort.InferenceSession(str(tmp_path / "repo" / "iris" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: (X[i.name].to_numpy(dtype=object) if i.type == "tensor(string)" else
                      X[i.name].to_numpy(dtype=np.float32)).reshape(-1, 1) for i in session.get_inputs()}
    labels, probabilities = session.run(["label", "probabilities"], feeds)
    assert (labels.reshape(-1) == model.predict(X)).all()
    np.testing.assert_allclose(probabilities, model.predict_proba(X), atol=1e-5)


@pytest.mark.parametrize("artifact, message", [
    ("renamed", r"signature of .* does not match .*: missing magnesium; not taken by the model: mg"),
    ("retyped", r"signature of .* does not match .*: 'magnesium' is string, served as a number"),
])
def test_signature_that_does_not_match_the_inputs_is_one_error(mlflow_env, tmp_path, artifact, message):
    uri = f"runs:/{mlflow_env['other_run']}/{artifact}"
    line = one_error(export("--model", uri, "--repository", str(tmp_path / "repo")))
    assert re.search(message, line), line
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("case, message", [
    ("unknown version", r"cannot resolve models:/wine_rf/7: .*"),
    ("unknown alias", r"cannot resolve models:/wine_rf@nobody: .*"),
    ("unknown model", r"cannot resolve models:/no_such_model/1: .*"),
    ("unknown run", r"cannot download runs:/0123456789abcdef0123456789abcdef/model: .*"),
    ("not a forest", r"runs:/.*/linear holds a LinearRegression, expected a RandomForest or ExtraTrees"),
    ("folder without MLmodel", r"is a folder without an MLmodel file"),
])
def test_bad_mlflow_sources_are_one_error(mlflow_env, tmp_path, case, message):
    uri = {"unknown version": "models:/wine_rf/7", "unknown alias": "models:/wine_rf@nobody",
           "unknown model": "models:/no_such_model/1", "unknown run": "runs:/0123456789abcdef0123456789abcdef/model",
           "not a forest": f"runs:/{mlflow_env['other_run']}/linear", "folder without MLmodel": str(tmp_path)}[case]
    line = one_error(export("--model", uri, "--repository", str(tmp_path / "repo")))
    assert re.search(message, line), line
    assert not (tmp_path / "repo").exists()


def test_without_mlflow_an_mlflow_uri_names_the_extra(tmp_path):
    """A fresh interpreter where `import mlflow` fails, as in an install without the extra."""
    script = ("import sys; sys.modules['mlflow'] = None; sys.argv = ['rf-triton'] + sys.argv[1:]\n"
              "from rf_triton.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", script, "export", "--model", "models:/wine_rf/1",
                             "--repository", str(tmp_path / "repo")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "pip install 'rf-triton[mlflow]'" in lines[0]
    assert not (tmp_path / "repo").exists()


def test_a_pickle_path_is_not_taken_for_mlflow(tmp_path):
    from rf_triton.export import mlflow_source

    pickled = tmp_path / "forest.joblib"
    pickled.write_bytes(b"")
    assert not mlflow_source.handles(str(pickled))
    assert mlflow_source.handles("models:/a/1") and mlflow_source.handles("runs:/r/p") and mlflow_source.handles(str(tmp_path))
