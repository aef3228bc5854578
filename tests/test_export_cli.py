"""`rf-triton export` through typer's CliRunner: every source, versioning, and every bad input."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from tritonclient.grpc import model_config_pb2 as mc
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier, RandomForestRegressor
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from typer.testing import CliRunner

from rf_triton.cli import app
from rf_triton.repository import feature_names, read_config
from rf_triton.repository import publishing

runner = CliRunner()


def export(*args: str):
    return runner.invoke(app, ["export", *args])


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes, to prove a failed export wrote nothing."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3)) * [1.0, 50.0, 0.01]
    y = X[:, 0] * 3 + X[:, 1] * 0.1 + rng.normal(size=300)
    return X, y


@pytest.fixture()
def csv_file(tmp_path, small_data):
    X, y = small_data
    frame = pd.DataFrame(X, columns=["age", "income", "ratio"])
    frame["price"] = y
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    return path


def test_demo_export_writes_version_then_next(tmp_path):
    repo = tmp_path / "repo"
    first = export("--repository", str(repo))
    assert first.exit_code == 0, first.output
    second = export("--repository", str(repo), "--max-queue-delay-us", "250")
    assert second.exit_code == 0, second.output
    model_dir = repo / "random_forest"
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".")) == ["1", "2", "config.pbtxt"]
    for version in ("1", "2"):
        assert sorted(p.name for p in (model_dir / version).iterdir()) == ["metadata.json", "model.onnx"]
    config = read_config(model_dir / "config.pbtxt")
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    metadata = json.loads((model_dir / "2" / "metadata.json").read_text())
    assert metadata["n_estimators"] == 50 and metadata["max_depth"] == 10
    assert metadata["parity"]["max_rel_error"] <= 1e-4 and metadata["parity"]["rows"] > 0
    assert metadata["scores"]["validation_r2"] > 0.8
    assert "parity (ONNX Runtime):" in first.output and "max abs error" in first.output


def test_explicit_version_and_existing_version_refused(tmp_path):
    repo = tmp_path / "repo"
    assert export("--repository", str(repo), "--version", "7").exit_code == 0
    assert (repo / "random_forest" / "7" / "model.onnx").is_file()
    before = snapshot(repo)
    again = export("--repository", str(repo), "--version", "7")
    assert again.exit_code == 1 and "already exists" in again.output
    assert snapshot(repo) == before


def test_pickled_forest(tmp_path, small_data):
    X, y = small_data
    forest = RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0).fit(X, y)
    path = tmp_path / "forest.joblib"
    joblib.dump(forest, path)
    result = export("--model", str(path), "--repository", str(tmp_path / "repo"), "--name", "prices")
    assert result.exit_code == 0, result.output
    config = read_config(tmp_path / "repo" / "prices" / "config.pbtxt")
    assert list(config.input[0].dims) == [3]
    assert feature_names(config) == ["x0", "x1", "x2"]


def test_pipeline_with_scaler_keeps_scaling_inside_the_graph(tmp_path, small_data):
    X, y = small_data
    frame = pd.DataFrame(X, columns=["age", "income", "ratio"])
    pipeline = make_pipeline(StandardScaler(), RandomForestRegressor(n_estimators=10, random_state=0)).fit(frame, y)
    path = tmp_path / "pipeline.pkl"
    path.write_bytes(pickle.dumps(pipeline))
    result = export("--model", str(path), "--repository", str(tmp_path / "repo"))
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "repo" / "random_forest"
    assert feature_names(read_config(model_dir / "config.pbtxt")) == ["age", "income", "ratio"]
    assert read_config(model_dir / "config.pbtxt").input[0].data_type == mc.TYPE_FP64  # sklearn scales in float64
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    raw = np.asarray(X[:50], dtype=np.float64)  # raw, unscaled features: the scaler runs inside the graph
    onnx_out = session.run(None, {"X": raw})[0].ravel()
    np.testing.assert_allclose(onnx_out, pipeline.predict(pd.DataFrame(raw, columns=frame.columns)), rtol=1e-6)
    assert json.loads((model_dir / "1" / "metadata.json").read_text())["pipeline_steps"] == [
        "standardscaler", "randomforestregressor"]


def test_csv_training_keeps_feature_names(tmp_path, csv_file):
    result = export("--data", str(csv_file), "--target", "price", "--n-estimators", "8", "--max-depth", "5",
                    "--repository", str(tmp_path / "repo"))
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "repo" / "random_forest"
    assert feature_names(read_config(model_dir / "config.pbtxt")) == ["age", "income", "ratio"]
    metadata = json.loads((model_dir / "1" / "metadata.json").read_text())
    assert metadata["n_estimators"] == 8 and metadata["max_depth"] == 5
    assert set(metadata["scores"]) == {"train_r2", "validation_r2"}


def test_help_warns_that_pickles_run_code():
    result = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "runs code" in result.output and "trust" in result.output


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, small_data) -> dict[str, tuple[list[str], str]]:
    """Every bad input's files, written once for all the cases (they are only read)."""
    tmp_path = tmp_path_factory.mktemp("bad_inputs")
    X, y = small_data
    csv_file = tmp_path / "train.csv"
    pd.DataFrame(X, columns=["age", "income", "ratio"]).assign(price=y).to_csv(csv_file, index=False)
    corrupt = tmp_path / "corrupt.joblib"
    corrupt.write_bytes(b"\x80\x04 definitely not a pickle")
    classifier = tmp_path / "classifier.joblib"
    joblib.dump(RandomForestClassifier(n_estimators=3).fit(X, y > 0), classifier)  # bool labels
    boosted = tmp_path / "boosted.joblib"
    joblib.dump(GradientBoostingRegressor(n_estimators=3).fit(X, y), boosted)
    single_class = tmp_path / "single_class.joblib"
    joblib.dump(RandomForestClassifier(n_estimators=3).fit(X, np.zeros(len(X), dtype=int)), single_class)
    infrequent = tmp_path / "infrequent.joblib"
    frame = pd.DataFrame({"city": np.resize(["a", "b", "c"], len(X)), "size": X[:, 0]})
    encode = ColumnTransformer([("city", OneHotEncoder(handle_unknown="infrequent_if_exist"), ["city"])],
                               remainder="passthrough")
    joblib.dump(make_pipeline(encode, RandomForestRegressor(n_estimators=3)).fit(frame, y), infrequent)
    two_targets = tmp_path / "two_targets.joblib"
    joblib.dump(RandomForestClassifier(n_estimators=3).fit(X, np.c_[y > 0, y > 1].astype(int)), two_targets)
    unfitted = tmp_path / "unfitted.joblib"
    joblib.dump(RandomForestRegressor(), unfitted)
    not_a_model = tmp_path / "dict.joblib"
    joblib.dump({"weights": [1, 2, 3]}, not_a_model)
    text_gap = tmp_path / "text.csv"
    pd.DataFrame({"city": ["a", None] * 10, "size": range(20), "price": range(20)}).to_csv(text_gap, index=False)
    with_inf = tmp_path / "inf.csv"
    frame = pd.read_csv(csv_file)
    frame.loc[3, "income"] = np.inf
    frame.to_csv(with_inf, index=False)
    one_class = tmp_path / "one_class.csv"
    frame.assign(price="same").to_csv(one_class, index=False)
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\x00\x01\x02\xff\xfe")
    return {
        "missing model": (["--model", str(tmp_path / "nope.joblib")], "model file not found"),
        "corrupt model": (["--model", str(corrupt)], "cannot load model"),
        "bool labels": (["--model", str(classifier)], "class labels of type bool are not supported"),
        "not a forest": (["--model", str(boosted)], "holds a GradientBoostingRegressor, expected a RandomForest"),
        "two-target classifier": (["--model", str(two_targets)], "with 2 outputs is not supported"),
        "single class": (["--model", str(single_class)], "fitted on a single class"),
        "infrequent categories": (["--model", str(infrequent)], "skl2onnx cannot convert infrequent categories"),
        "unfitted": (["--model", str(unfitted)], "not fitted"),
        "not a model": (["--model", str(not_a_model)], "holds a dict"),
        "missing csv": (["--data", str(tmp_path / "nope.csv"), "--target", "price"], "data file not found"),
        "no target column": (["--data", str(csv_file), "--target", "cost"], "target column 'cost' not in"),
        "missing string": (["--data", str(text_gap), "--target", "price"], "missing values in string column 'city'"),
        "inf in data": (["--data", str(with_inf), "--target", "price"], r"infinite values in .*income"),
        "one class": (["--data", str(one_class), "--target", "price"], "has a single class"),
        "bad task": (["--data", str(csv_file), "--target", "price", "--task", "ranking"], "--task must be"),
        "task without data": (["--task", "classification"], "--task goes with --data"),
        "unreadable csv": (["--data", str(garbage), "--target", "price"], "target column|cannot read CSV"),
        "tolerance breach": (["--tolerance", "1e-12"], "parity check failed"),
        "zero tolerance": (["--tolerance", "0"], "--tolerance must be > 0"),
        "both sources": (["--model", str(classifier), "--data", str(csv_file)], "either --model or --data"),
        "data without target": (["--data", str(csv_file)], "--data needs --target"),
        "target without data": (["--target", "price"], "--target goes with --data"),
        "bad kind": (["--kind", "tpu"], "--kind must be 'cpu', 'gpu' or 'auto'"),
        "bad version policy": (["--version-policy", "newest"], "invalid version policy"),
        "bad max batch": (["--max-batch-size", "0"], "--max-batch-size must be greater than or equal to 1"),
        "bad trees": (["--data", str(csv_file), "--target", "price", "--n-estimators", "0"], "--n-estimators"),
        "bad name": (["--name", "../escape"], "invalid model name"),
    }


BAD_CASES = ["missing model", "corrupt model", "bool labels", "not a forest", "two-target classifier", "single class",
             "infrequent categories", "unfitted",
             "not a model", "missing csv", "no target column", "missing string", "inf in data", "one class",
             "bad task", "task without data", "unreadable csv", "tolerance breach",
             "zero tolerance", "both sources", "data without target", "target without data", "bad kind",
             "bad version policy", "bad max batch", "bad trees", "bad name"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_one_line_exit_1_nothing_written(case, tmp_path, bad_inputs):
    assert sorted(bad_inputs) == sorted(BAD_CASES)
    args, message = bad_inputs[case]
    repo = tmp_path / "repo"
    assert export("--repository", str(repo), "--version", "1").exit_code == 0
    before = snapshot(repo)
    result = export("--repository", str(repo), *args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert re.search(message, error_lines[0]), error_lines[0]
    assert snapshot(repo) == before
    assert not [p for p in repo.rglob(".staging-*")]


def test_failure_while_writing_leaves_no_version(tmp_path, monkeypatch):
    """A write that fails halfway (the disk fills) leaves neither a version nor a new model behind."""
    repo = tmp_path / "repo"
    assert export("--repository", str(repo)).exit_code == 0
    before = snapshot(repo)

    def broken_write(path, data):
        path.write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(publishing, "write_durably", broken_write)
    for name in ("random_forest", "brand_new"):
        result = export("--repository", str(repo), "--name", name)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "No space left on device; nothing written" in result.stderr, result.stderr
    assert snapshot(repo) == before
    assert sorted(p.name for p in repo.iterdir()) == ["random_forest"]
    assert sorted(p.name for p in (repo / "random_forest").iterdir() if not p.name.startswith(".")) == [
        "1", "config.pbtxt"]


def test_data_with_a_text_target_trains_a_classifier_and_says_so(tmp_path, csv_file):
    """A non-numeric target trains a classifier; string features and missing numbers are welcome."""
    frame = pd.read_csv(csv_file)
    frame["segment"] = np.where(frame["income"] > frame["income"].median(), "upper", "lower")
    frame["city"] = np.resize(["paris", "lyon", "nice"], len(frame))
    frame.loc[::7, "age"] = np.nan
    data = tmp_path / "customers.csv"
    frame.drop(columns=["price"]).to_csv(data, index=False)
    repo = tmp_path / "repo"
    result = export("--repository", str(repo), "--data", str(data), "--target", "segment", "--n-estimators", "8")
    assert result.exit_code == 0, result.output
    assert "classification" in result.output and "RandomForestClassifier" in result.output
    metadata = json.loads((repo / "random_forest" / "1" / "metadata.json").read_text())
    assert metadata["task"] == "classification" and metadata["classes"] == ["lower", "upper"]
    assert [i["name"] for i in metadata["inputs"]] == ["age", "income", "ratio", "city"]
    assert metadata["parity"]["nan_rows"] > 0 and metadata["parity"]["label_mismatches"] == 0
    assert (repo / "random_forest" / "labels.txt").read_text() == "lower\nupper\n"

    forced = export("--repository", str(repo), "--name", "ages", "--data", str(csv_file), "--target", "price",
                    "--task", "classification", "--n-estimators", "4")
    assert forced.exit_code == 0, forced.output
    assert json.loads((repo / "ages" / "1" / "metadata.json").read_text())["task"] == "classification"
