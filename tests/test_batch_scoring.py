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
from typer.testing import CliRunner

from rf_triton.cli import app
from rf_triton.client import InferenceError, InputError, RandomForestClient, RetryPolicy, ServerBusyError
from rf_triton.client.batch import (BatchError, BatchOptions, ChunkReader, RowError, file_format, numeric_column,
                                    refuses_the_rows, score_file)

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


def test_an_fp64_column_takes_values_beyond_the_fp32_range():
    errors: dict[int, RowError] = {}
    values = numeric_column(pa.array(["1e39", "5.1", "inf"]), "x3", 0, errors, "FP64")
    assert values[0] == 1e39 and values[1] == 5.1
    assert {i: str(e) for i, e in errors.items()} == {2: "row 3, column 'x3': infinite value"}


@pytest.mark.parametrize("header", ["x0,x1,x0\n1,2,3\n", "x0,x0\n"])
def test_a_csv_with_repeated_column_names_is_refused(tmp_path, header):
    path = tmp_path / "rows.csv"
    path.write_text(header)
    with pytest.raises(BatchError, match="several columns named 'x0'"):
        ChunkReader(path, 100)


def test_only_refusals_of_the_rows_mark_rows_as_bad():
    """A busy or failing server says nothing about the rows: such a failure stops the run."""
    assert refuses_the_rows(InputError("bad value"))
    assert refuses_the_rows(InferenceError("refused", "400"))
    assert refuses_the_rows(InferenceError("refused", "StatusCode.INVALID_ARGUMENT"))
    assert not refuses_the_rows(ServerBusyError("queue full", "503"))
    assert not refuses_the_rows(InferenceError("ONNX Runtime failed", "500"))
    assert not refuses_the_rows(InferenceError("ONNX Runtime failed", "StatusCode.INTERNAL"))


# -- the demo regressor on the session server ------------------------------------------------------


@pytest.mark.parametrize("source,target", [("csv", "csv"), ("parquet", "parquet"), ("csv", "parquet"),
                                           ("parquet", "csv")])
@pytest.mark.integration
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


@pytest.mark.integration
def test_grpc_small_requests_many_in_flight(triton, tmp_path):
    frame = rows(2500)
    expected = reference(triton.endpoints.http, frame).values[:, 0]
    with_grpc = lambda: RandomForestClient(triton.endpoints.grpc, protocol="grpc")  # noqa: E731
    summary = score_file(with_grpc, write(frame, tmp_path / "rows.parquet"), tmp_path / "out.parquet",
                         BatchOptions(chunk_rows=300, concurrency=4))
    assert (summary.rows, summary.errors, summary.concurrency) == (2500, 0, 4)
    np.testing.assert_allclose(read(tmp_path / "out.parquet")["prediction"].to_numpy(), expected, rtol=1e-6)


@pytest.mark.integration
def test_default_concurrency_is_one_per_instance(triton, tmp_path):
    summary = score_file(lambda: RandomForestClient(triton.endpoints.http), write(rows(50), tmp_path / "r.csv"),
                         tmp_path / "o.csv")
    assert summary.concurrency == 1  # the demo export serves one instance


@pytest.mark.integration
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


@pytest.mark.integration
def test_bad_row_stops_with_one_line_and_no_output(triton, tmp_path):
    out = tmp_path / "scored.csv"
    result = predict("--url", triton.endpoints.http, "--input", str(write(with_bad_rows(3000), tmp_path / "rows.csv")),
                     "--output", str(out), "--chunk-rows", "500")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: row 1501, column 'x2': 'abc' is not a number (--on-error skip writes such rows with an 'error' column)"]
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.integration
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
    (["--input", "rows.csv", "--output", "o.csv", "--proba"], "error: --proba needs a classifier; this model is a regressor"),
    (["--input", "short.csv", "--output", "o.csv"], "error: input lacks column(s) x4; the model takes x0, x1, x2, x3, x4"),
    (["--values", "1,2,x"], "error: --values is not a comma-separated list of numbers: could not convert string to float: 'x'"),
])
@pytest.mark.integration
def test_mistakes_give_one_error_line(triton, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write(rows(20), tmp_path / "rows.csv")
    write(rows(5).drop(columns=["x4"]), tmp_path / "short.csv")
    result = predict("--url", triton.endpoints.http, *args)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [message]
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.integration
def test_server_restart_in_the_middle_loses_and_repeats_no_row(server_factory, demo_repository, tmp_path):
    server = server_factory(demo_repository, watch_interval_s=None)
    frame = rows(6000)
    expected = reference(server.endpoints.http, frame).values[:, 0]
    restart = threading.Thread(target=lambda: (server.stop(), server.start()))

    def crash_once(rows_done: int, done: int, total: int) -> None:
        if not restart.is_alive() and rows_done == 1000:  # later requests meet a dead server, then a new one
            os.killpg(server.process.pid, signal.SIGKILL)
            restart.start()

    factory = lambda: RandomForestClient(server.endpoints.http, retry=RetryPolicy.for_restarts(120))  # noqa: E731
    summary = score_file(factory, write(frame, tmp_path / "rows.csv"), tmp_path / "out.csv",
                         BatchOptions(chunk_rows=500, concurrency=2), progress=crash_once)
    restart.join()
    assert summary.retries > 0 and server.is_running()
    scored = read(tmp_path / "out.csv")
    assert scored["id"].tolist() == list(range(6000))
    np.testing.assert_allclose(scored["prediction"].to_numpy(), expected, rtol=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize("signals", [(signal.SIGKILL,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGTERM, signal.SIGINT)],
                         ids=["SIGKILL", "SIGTERM", "a second and third signal during the cleanup"])
def test_interrupted_run_leaves_no_partial_output(triton, tmp_path, signals):
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
        for sig in signals:
            os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if out.exists():  # the run ended before the signal landed: then the file is complete
        assert proc.returncode == 0 and len(read(out)) == 60000
    elif signals[0] == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130 and leftovers(tmp_path) == [], stderr.decode()
        assert stderr.decode().splitlines()[-1] == "error: interrupted; nothing was written under the output name"


# -- classifiers, multi-output and string columns --------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("model,fmt", [("binary_nan", "csv"), ("multiclass_str", "parquet")])
def test_classifier_label_and_probabilities(kinds, tmp_path, model, fmt):
    kinds, _, _ = kinds
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


@pytest.mark.integration
def test_classifier_on_stdout_prints_labels_or_probabilities(kinds, tmp_path):
    kinds, _, _ = kinds
    frame = rows(30)
    rows_file = write(frame, tmp_path / "rows.csv")
    expected = reference(kinds.endpoints.http, frame, model="multiclass_str")
    labels = predict("--url", kinds.endpoints.http, "--model", "multiclass_str", "--input", str(rows_file))
    proba = predict("--url", kinds.endpoints.http, "--model", "multiclass_str", "--input", str(rows_file), "--proba")
    one_row = predict("--url", kinds.endpoints.http, "--model", "multiclass_str", "--values", "0,2,0,0,0", "--proba")
    assert labels.stdout.splitlines() == expected.labels.tolist()
    assert proba.stdout.splitlines() == [",".join(f"{p:.6g}" for p in row) for row in expected.probabilities]
    assert len(one_row.stdout.split(",")) == 3 and one_row.exit_code == 0


@pytest.mark.integration
def test_multi_output_regressor_gets_one_column_per_output(kinds, tmp_path):
    kinds, _, _ = kinds
    frame = rows(1200)
    expected = reference(kinds.endpoints.grpc, frame, model="two_outputs_nan", protocol="grpc").values
    out = tmp_path / "scored.csv"
    result = predict("--url", kinds.endpoints.grpc, "--protocol", "grpc", "--model", "two_outputs_nan",
                     "--input", str(write(frame, tmp_path / "rows.parquet")), "--output", str(out))
    assert result.exit_code == 0, result.output
    scored = read(out)
    np.testing.assert_allclose(scored[["prediction_0", "prediction_1"]].to_numpy(), expected, rtol=1e-6)


@pytest.mark.integration
def test_string_columns_by_name(kinds, tmp_path):
    kinds, _, _ = kinds
    frame = pd.DataFrame({"size": RNG.normal(50, 20, 900), "note": "x", "age": RNG.integers(18, 90, 900),
                          "city": RNG.choice(["paris", "lyon", "brest"], 900).astype(object)})
    frame.loc[7, "city"] = None
    expected = reference(kinds.endpoints.http, frame.drop(index=7), model="frame_pipeline").values[:, 0]
    out = tmp_path / "scored.csv"
    result = predict("--url", kinds.endpoints.http, "--model", "frame_pipeline", "--input",
                     str(write(frame, tmp_path / "rows.csv")), "--output", str(out), "--on-error", "skip")
    assert result.exit_code == 0, result.output
    scored = read(out)
    assert list(scored.columns) == ["size", "note", "age", "city", "prediction", "error"]
    assert scored.loc[7, "error"] == "row 8, column 'city': empty; the model takes a string"
    np.testing.assert_allclose(scored.drop(index=7)["prediction"].to_numpy(), expected, rtol=1e-6)


@pytest.mark.integration
def test_a_chunk_whose_rows_all_failed_keeps_the_columns_types(kinds, tmp_path):
    """Parquet has one schema: the label column of a chunk without a single answer is still int64."""
    kinds, _, _ = kinds
    frame = rows(300)
    frame["x2"] = frame["x2"].astype(object)
    frame.loc[100:199, "x2"] = "abc"
    out = tmp_path / "scored.parquet"
    result = predict("--url", kinds.endpoints.http, "--model", "binary_nan", "--input",
                     str(write(frame, tmp_path / "rows.csv")), "--output", str(out), "--on-error", "skip",
                     "--chunk-rows", "100", "--proba")
    assert result.exit_code == 0, result.output
    scored = pq_read(out)
    assert scored.schema.field("label").type == pa.int64() and scored.schema.field("proba_1").type == pa.float32()
    labels = scored.column("label").to_pylist()
    assert labels[100:200] == [None] * 100 and None not in labels[:100] + labels[200:]
    expected = reference(kinds.endpoints.http, frame.drop(index=range(100, 200)).astype({"x2": float}),
                         model="binary_nan")
    assert labels[:100] + labels[200:] == expected.labels.tolist()


def pq_read(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path)


@pytest.mark.integration
@pytest.mark.parametrize("source,target", [("csv", "parquet"), ("parquet", "csv"), ("csv", "csv")])
def test_an_input_without_rows_gives_a_readable_output_with_the_columns(triton, tmp_path, source, target):
    empty = rows(0)
    path = tmp_path / f"rows.{source}"
    if source == "csv":
        path.write_text(",".join(empty.columns) + "\n")
    else:
        write(empty, path)
    out = tmp_path / f"scored.{target}"
    result = predict("--url", triton.endpoints.http, "--input", str(path), "--output", str(out))
    assert result.exit_code == 0, result.output
    scored = read(out)
    assert list(scored.columns) == ["id", *FEATURES, "prediction"] and len(scored) == 0


@pytest.mark.integration
def test_fp64_inputs_are_scored_as_doubles(kinds, tmp_path):
    """A value beyond the FP32 range is a number an FP64 input takes; the FP32 model refuses that row."""
    kinds, models, _ = kinds
    frame = rows(200).astype({"x3": np.float64})
    frame.loc[5, "x3"] = 1e39
    scored = {}
    for model in ("forest_fp64", "extra_trees"):
        out = tmp_path / f"{model}.csv"
        result = predict("--url", kinds.endpoints.http, "--model", model, "--input",
                         str(write(frame, tmp_path / "rows.csv")), "--output", str(out), "--on-error", "skip")
        assert result.exit_code == 0, result.output
        scored[model] = read(out)
    assert scored["forest_fp64"]["error"].isna().all()
    assert scored["extra_trees"]["error"].dropna().tolist() == ["row 6, column 'x3': 1e+39 is beyond the FP32 range"]
    finite = frame.drop(index=5)
    np.testing.assert_allclose(scored["forest_fp64"].drop(index=5)["prediction"].to_numpy(),
                               models["forest_fp64"].predict(finite[FEATURES].to_numpy()), rtol=1e-5, atol=1e-4)


def _connect_error(url: str, protocol: str):
    try:
        RandomForestClient(url, protocol=protocol, timeout_s=1.0, init_timeout_s=2.0).connect().close()
    except Exception as exc:  # the outcome is what the test looks at
        return exc
    return None


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_retry_budget_counts_the_time_spent_in_requests(server_factory, demo_repository, protocol):
    """Against a server that accepts and never answers (stopped with SIGSTOP), each attempt lasts its
    whole timeout: a 1 s budget with 1 s requests leaves room for no second retry, whatever the
    sleeps between them add up to."""
    from rf_triton.client import ServerUnavailableError

    server = server_factory(demo_repository, watch_interval_s=None)
    url = server.endpoints.http if protocol == "http" else server.endpoints.grpc
    client = RandomForestClient(url, protocol=protocol, timeout_s=1.0, retry=RetryPolicy.for_restarts(1.0)).connect()
    try:
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises((ServerUnavailableError, ServerBusyError)):
                client.predict(rows(3)[FEATURES])
            # describing the model has a deadline too (gRPC's calls had none): connecting gives up
            outcome = []
            connecting = threading.Thread(target=lambda: outcome.append(_connect_error(url, protocol)), daemon=True)
            connecting.start()
            connecting.join(timeout=120)
            assert not connecting.is_alive(), "connect() hung on a server that does not answer"
            assert isinstance(outcome[0], ServerUnavailableError), outcome
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert client.retries <= 1
    finally:
        client.close()
    assert server.is_running()


def test_a_choice_outside_the_list_is_refused_before_anything_runs(tmp_path):
    result = predict("--input", str(tmp_path / "rows.csv"), "--on-error", "maybe")
    assert result.exit_code == 2 and "Invalid value for '--on-error'" in result.output
