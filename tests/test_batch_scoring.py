"""Batch scoring (`rf-triton predict --input FILE --output FILE`) against the real embedded Triton.

Every output is checked row by row against RandomForestClient on the same rows: order kept, nothing
lost or duplicated, through both formats, classifiers, multi-output and string columns, bad rows
(stop and skip), a server restart in the middle of a run, and a SIGKILL/SIGTERM of the command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, RandomForestRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from typer.testing import CliRunner

from rf_triton.cli import app
from rf_triton.client import RandomForestClient
from rf_triton.client.batch import (BatchError, BatchOptions, RowError, batch_retry_policy, file_format,
                                    numeric_column, score_file)
from rf_triton.export.pipeline import export_model

pytestmark = pytest.mark.integration
runner = CliRunner()
RNG = np.random.default_rng(11)
FEATURES = [f"x{i}" for i in range(5)]


def rows(n: int) -> pd.DataFrame:
    frame = pd.DataFrame(RNG.normal(size=(n, 5)).astype(np.float32), columns=FEATURES)
    frame.insert(0, "id", np.arange(n))
    return frame


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path, index=False) if path.suffix == ".parquet" else frame.to_csv(path, index=False)
    return path


def read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def predict(*args: str):
    return runner.invoke(app, ["predict", *args])


def reference(url: str, frame: pd.DataFrame, **kwargs):
    with RandomForestClient(url, **kwargs) as client:
        return client.infer(frame.drop(columns=["id"]) if "id" in frame else frame)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


# -- without a server ------------------------------------------------------------------------------


def test_file_format_by_extension():
    assert file_format(Path("a.CSV")) == "csv" and file_format(Path("b.parquet")) == "parquet"
    with pytest.raises(BatchError, match="unknown file type '.txt'"):
        file_format(Path("rows.txt"))


def test_bad_values_are_named_by_file_row_and_column():
    errors: dict[int, RowError] = {}
    values = numeric_column(pa.array(["1.5", " 2", "abc", "", "inf", "nan", "1e39"]), "x3", 1000, errors)
    assert values[0] == 1.5 and values[1] == 2.0 and np.isnan(values[3]) and np.isnan(values[5])
    assert {i: str(e) for i, e in errors.items()} == {
        2: "row 1003, column 'x3': 'abc' is not a number",
        4: "row 1005, column 'x3': infinite value",
        6: "row 1007, column 'x3': 1e+39 is beyond the FP32 range",
    }


def test_retry_policy_outlasts_a_restart():
    policy = batch_retry_policy(30.0)
    assert sum(policy.delay(i) for i in range(1, policy.attempts)) >= 30.0
    assert policy.max_backoff_s == 2.0


# -- the demo regressor on the session server ------------------------------------------------------


@pytest.mark.parametrize("source,target", [("csv", "csv"), ("parquet", "parquet"), ("csv", "parquet"),
                                           ("parquet", "csv")])
def test_file_to_file_keeps_columns_and_order(triton, tmp_path, source, target):
    frame = rows(3000)
    expected = reference(triton.endpoints.http, frame).values[:, 0]
    out = tmp_path / f"scored.{target}"
    result = predict("--url", triton.endpoints.http, "--input", str(write(frame, tmp_path / f"rows.{source}")),
                     "--output", str(out), "--chunk-rows", "700")
    assert result.exit_code == 0, result.output
    scored = read(out)
    assert list(scored.columns) == ["id", *FEATURES, "prediction"]
    assert scored["id"].astype(int).tolist() == list(range(3000))
    np.testing.assert_allclose(scored[FEATURES].astype(float).to_numpy(), frame[FEATURES].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(scored["prediction"].to_numpy(), expected, rtol=1e-6)
    assert "scored 3,000 rows" in result.stderr and leftovers(tmp_path) == []


def test_grpc_small_requests_many_in_flight(triton, tmp_path):
    frame = rows(2500)
    expected = reference(triton.endpoints.http, frame).values[:, 0]
    with_grpc = lambda: RandomForestClient(triton.endpoints.grpc, protocol="grpc")  # noqa: E731
    summary = score_file(with_grpc, write(frame, tmp_path / "rows.parquet"), tmp_path / "out.parquet",
                         BatchOptions(chunk_rows=300, concurrency=4))
    assert (summary.rows, summary.errors, summary.concurrency) == (2500, 0, 4)
    np.testing.assert_allclose(read(tmp_path / "out.parquet")["prediction"].to_numpy(), expected, rtol=1e-6)


def test_default_concurrency_is_one_per_instance(triton, tmp_path):
    with RandomForestClient(triton.endpoints.http) as client:
        config = client._call("get_model_config", client.model, "")
    instances = sum(int(group["count"]) for group in config["instance_group"])
    summary = score_file(lambda: RandomForestClient(triton.endpoints.http), write(rows(50), tmp_path / "r.csv"),
                         tmp_path / "o.csv")
    assert summary.concurrency == instances


def test_without_output_prints_one_value_per_row(triton, tmp_path):
    frame = rows(40)
    expected = reference(triton.endpoints.http, frame).values[:, 0]
    result = predict("--url", triton.endpoints.http, "--input", str(write(frame, tmp_path / "rows.csv")))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"{v:.6g}" for v in expected]


def with_bad_rows(n: int) -> pd.DataFrame:
    frame = rows(n)
    frame["x2"] = frame["x2"].astype(object)
    frame.loc[1500, "x2"] = "abc"
    frame.loc[2100, "x4"] = float("inf")
    frame.loc[10, "x0"] = np.nan  # a missing value is a value: the forest routes it
    return frame


def test_bad_row_stops_with_one_line_and_no_output(triton, tmp_path):
    out = tmp_path / "scored.csv"
    result = predict("--url", triton.endpoints.http, "--input", str(write(with_bad_rows(3000), tmp_path / "rows.csv")),
                     "--output", str(out), "--chunk-rows", "500")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: row 1501, column 'x2': 'abc' is not a number (--on-error skip writes such rows with an 'error' column)"]
    assert not out.exists() and leftovers(tmp_path) == []


def test_bad_rows_skipped_get_an_error_column(triton, tmp_path):
    frame = with_bad_rows(3000)
    out = tmp_path / "scored.parquet"
    result = predict("--url", triton.endpoints.http, "--input", str(write(frame, tmp_path / "rows.csv")),
                     "--output", str(out), "--on-error", "skip", "--chunk-rows", "500")
    assert result.exit_code == 0, result.output
    scored = read(out)
    assert len(scored) == 3000 and scored["id"].astype(int).tolist() == list(range(3000))
    bad = scored["error"].notna()
    assert scored.loc[bad, "error"].tolist() == ["row 1501, column 'x2': 'abc' is not a number",
                                                 "row 2101, column 'x4': infinite value"]
    assert scored.loc[bad, "prediction"].isna().all()
    good = frame.drop(index=[1500, 2100])
    expected = reference(triton.endpoints.http, good[FEATURES].astype(np.float32)).values[:, 0]
    np.testing.assert_allclose(scored.loc[~bad, "prediction"].to_numpy(), expected, rtol=1e-6)
    assert "2 row(s) with an error" in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--output", "o.csv"], "error: give exactly one of --input FILE or --values V1,V2,..."),
    (["--input", "rows.csv", "--output", "o.txt"], "error: o.txt: unknown file type '.txt'; use .csv or .parquet"),
    (["--input", "missing.csv", "--output", "o.csv"], "error: input file not found: missing.csv"),
    (["--input", "rows.csv", "--output", "o.csv", "--on-error", "maybe"],
     "error: --on-error must be one of stop, skip, not 'maybe'"),
    (["--input", "rows.csv", "--output", "o.csv", "--proba"], "error: --proba needs a classifier; this model is a regressor"),
    (["--input", "short.csv", "--output", "o.csv"], "error: input lacks column(s) x4; the model takes x0, x1, x2, x3, x4"),
    (["--values", "1,2,x"], "error: --values is not a comma-separated list of numbers: could not convert string to float: 'x'"),
])
def test_mistakes_give_one_error_line(triton, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write(rows(20), tmp_path / "rows.csv")
    write(rows(5).drop(columns=["x4"]), tmp_path / "short.csv")
    result = predict("--url", triton.endpoints.http, *args)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [message]
    assert not (tmp_path / "o.csv").exists()


def test_server_restart_in_the_middle_loses_and_repeats_no_row(server_factory, demo_repository, tmp_path):
    server = server_factory(demo_repository, watch_interval_s=None)
    frame = rows(6000)
    expected = reference(server.endpoints.http, frame).values[:, 0]
    restart = threading.Thread(target=lambda: (server.stop(), server.start()))

    def crash_once(rows_done: int, done: int, total: int) -> None:
        if not restart.is_alive() and rows_done == 1000:  # later requests meet a dead server, then a new one
            os.killpg(server.process.pid, signal.SIGKILL)
            restart.start()

    factory = lambda: RandomForestClient(server.endpoints.http, retry=batch_retry_policy(120))  # noqa: E731
    summary = score_file(factory, write(frame, tmp_path / "rows.csv"), tmp_path / "out.csv",
                         BatchOptions(chunk_rows=500, concurrency=2), progress=crash_once)
    restart.join()
    assert summary.retries > 0 and server.is_running()
    scored = read(tmp_path / "out.csv")
    assert scored["id"].tolist() == list(range(6000))
    np.testing.assert_allclose(scored["prediction"].to_numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_leaves_no_partial_output(triton, tmp_path, sig):
    rows_file = write(rows(60000), tmp_path / "rows.csv")
    out = tmp_path / "scored.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rf_triton", "predict", "--url", triton.endpoints.http, "--input", str(rows_file),
         "--output", str(out), "--chunk-rows", "100", "--concurrency", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not leftovers(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert leftovers(tmp_path), f"no temporary output appeared:\n{proc.stderr.read().decode() if proc.poll() is not None else ''}"
        os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if out.exists():  # the run ended before the signal landed: then the file is complete
        assert len(read(out)) == 60000
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and leftovers(tmp_path) == []
        assert stderr.decode().splitlines()[-1] == "error: interrupted; nothing was written under the output name"
    else:
        assert proc.returncode == -signal.SIGKILL and not out.exists()


# -- classifiers, multi-output and string columns --------------------------------------------------


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """A binary classifier (int labels), a multiclass one (string labels), a 2-output regressor and a
    pipeline with a string column, served by one server."""
    from rf_triton.export import sources
    from rf_triton.serve.server import EmbeddedTriton

    X = RNG.normal(size=(600, 5)).astype(np.float32)
    frame = pd.DataFrame({"city": RNG.choice(["paris", "lyon", "nice"], 600).astype(object), "size": RNG.normal(50, 20, 600)})
    models = {
        "binary": RandomForestClassifier(10, max_depth=5, random_state=0).fit(X, (X[:, 0] > 0).astype(int)),
        "multiclass": ExtraTreesClassifier(10, max_depth=5, random_state=0).fit(
            X, np.where(X[:, 1] > 0.5, "high", np.where(X[:, 1] < -0.5, "low", "mid"))),
        "two_outputs": RandomForestRegressor(10, max_depth=5, random_state=0).fit(X, np.c_[X[:, 0], X[:, 1] * 3]),
        "cities": Pipeline([("columns", ColumnTransformer([("city", OneHotEncoder(handle_unknown="ignore"), ["city"])],
                                                          remainder="passthrough")),
                            ("forest", RandomForestRegressor(10, max_depth=5, random_state=0))]).fit(
            frame, (frame["city"] == "paris") * 30 + frame["size"]),
    }
    folder = tmp_path_factory.mktemp("batch_kinds")
    repository = folder / "model_repository"
    for name, estimator in models.items():
        import joblib

        joblib.dump(estimator, folder / f"{name}.joblib")
        export_model(sources.load_pickled(folder / f"{name}.joblib"), repository, name=name)
    server = EmbeddedTriton.on_free_ports(repository, watch_interval_s=None)
    server.start()
    try:
        yield server
        assert server.is_running(), server.log_tail()
    finally:
        server.stop()


@pytest.mark.parametrize("model,fmt", [("binary", "csv"), ("multiclass", "parquet")])
def test_classifier_label_and_probabilities(kinds, tmp_path, model, fmt):
    frame = rows(1500)
    expected = reference(kinds.endpoints.http, frame, model=model)
    out = tmp_path / f"scored.{fmt}"
    result = predict("--url", kinds.endpoints.http, "--model", model, "--input", str(write(frame, tmp_path / f"rows.{fmt}")),
                     "--output", str(out), "--proba", "--chunk-rows", "400")
    assert result.exit_code == 0, result.output
    scored = read(out)
    with RandomForestClient(kinds.endpoints.http, model=model) as client:
        classes = client.signature.classes
    assert list(scored.columns) == ["id", *FEATURES, "label", *[f"proba_{c}" for c in classes]]
    assert scored["label"].astype(type(classes[0])).tolist() == expected.labels.tolist()
    np.testing.assert_allclose(scored[[f"proba_{c}" for c in classes]].to_numpy(), expected.probabilities, rtol=1e-6)


def test_classifier_on_stdout_prints_labels_or_probabilities(kinds, tmp_path):
    frame = rows(30)
    rows_file = write(frame, tmp_path / "rows.csv")
    expected = reference(kinds.endpoints.http, frame, model="multiclass")
    labels = predict("--url", kinds.endpoints.http, "--model", "multiclass", "--input", str(rows_file))
    proba = predict("--url", kinds.endpoints.http, "--model", "multiclass", "--input", str(rows_file), "--proba")
    one_row = predict("--url", kinds.endpoints.http, "--model", "multiclass", "--values", "0,2,0,0,0", "--proba")
    assert labels.stdout.splitlines() == expected.labels.tolist()
    assert proba.stdout.splitlines() == [",".join(f"{p:.6g}" for p in row) for row in expected.probabilities]
    assert len(one_row.stdout.split(",")) == 3 and one_row.exit_code == 0


def test_multi_output_regressor_gets_one_column_per_output(kinds, tmp_path):
    frame = rows(1200)
    expected = reference(kinds.endpoints.grpc, frame, model="two_outputs", protocol="grpc").values
    out = tmp_path / "scored.csv"
    result = predict("--url", kinds.endpoints.grpc, "--protocol", "grpc", "--model", "two_outputs",
                     "--input", str(write(frame, tmp_path / "rows.parquet")), "--output", str(out))
    assert result.exit_code == 0, result.output
    scored = read(out)
    np.testing.assert_allclose(scored[["prediction_0", "prediction_1"]].to_numpy(), expected, rtol=1e-6)


def test_string_columns_by_name(kinds, tmp_path):
    frame = pd.DataFrame({"size": RNG.normal(50, 20, 900), "note": "x",
                          "city": RNG.choice(["paris", "lyon", "brest"], 900).astype(object)})
    frame.loc[7, "city"] = None
    expected = reference(kinds.endpoints.http, frame.drop(index=7), model="cities").values[:, 0]
    out = tmp_path / "scored.csv"
    result = predict("--url", kinds.endpoints.http, "--model", "cities", "--input", str(write(frame, tmp_path / "rows.csv")),
                     "--output", str(out), "--on-error", "skip")
    assert result.exit_code == 0, result.output
    scored = read(out)
    assert list(scored.columns) == ["size", "note", "city", "prediction", "error"]
    assert scored.loc[7, "error"] == "row 8, column 'city': empty; the model takes a string"
    np.testing.assert_allclose(scored.drop(index=7)["prediction"].to_numpy(), expected, rtol=1e-6)
