"""The Locust suite: payload rules, and a short headless run over HTTP and gRPC against the real server."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest

from rf_triton.loadtest.payload import PayloadError, csv_feature_table, csv_tensor_table, random_tensors, sample_csv_tensors
from rf_triton.processes import run_bounded
from rf_triton.serve.server import free_port
from rf_triton.signature import REGRESSION, Signature, Tensor

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = "loadtest/locustfile.py"
LOCUST_HARD_TIMEOUT_S = 60
FEATURES = ["x0", "x1", "x2", "x3", "x4"]
OUTPUT = (Tensor("variable", "FP32", (1,)),)


def matrix_model(datatype: str = "FP32") -> Signature:
    return Signature(REGRESSION, (Tensor("X", datatype, (5,)),), OUTPUT, tuple(FEATURES))


def columnar_model(known: tuple = ()) -> Signature:
    inputs = (Tensor("city", "BYTES", (1,)), Tensor("size", "FP64", (1,)), Tensor("age", "FP32", (1,)))
    return Signature(REGRESSION, inputs, OUTPUT, ("city", "size", "age"), known_categories=known)


@pytest.fixture(autouse=True)
def _fresh_csv_cache():
    """The CSV tables are cached per path; tmp files can reuse names across tests."""
    for cached in (csv_feature_table, csv_tensor_table):
        cached.cache_clear()
    yield
    for cached in (csv_feature_table, csv_tensor_table):
        cached.cache_clear()


# -- payloads (no server) ----------------------------------------------------------------------------


@pytest.mark.parametrize("datatype, dtype", [("FP32", np.float32), ("FP64", np.float64)])
def test_random_rows_follow_the_inputs_datatype(datatype, dtype):
    (rows,) = random_tensors(matrix_model(datatype), 7, np.random.default_rng(0)).values()
    assert rows.shape == (7, 5) and rows.dtype == dtype and np.isfinite(rows).all()


def test_random_columns_take_each_inputs_datatype_and_known_categories():
    tensors = random_tensors(columnar_model(known=(("city", ("lyon", "paris")),)), 50, np.random.default_rng(0))
    assert {name: (t.dtype, t.shape) for name, t in tensors.items()} == {
        "city": (np.dtype(object), (50, 1)), "size": (np.dtype(np.float64), (50, 1)),
        "age": (np.dtype(np.float32), (50, 1))}
    assert set(tensors["city"].reshape(-1)) <= {"lyon", "paris"}


def test_csv_rows_follow_the_model_feature_order_and_drop_other_columns(tmp_path):
    path = tmp_path / "payload.csv"
    path.write_text("target,x4,x3,x2,x1,x0\n9,4,3,2,1,0\n")
    (rows,) = sample_csv_tensors(path, 3, matrix_model(), np.random.default_rng(0)).values()
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, np.tile([0, 1, 2, 3, 4], (3, 1)))


def test_csv_without_feature_names_is_taken_as_is_when_the_column_count_matches(tmp_path):
    path = tmp_path / "payload.csv"
    path.write_text("a,b,c,d,e\n1,2,3,4,5\n6,7,8,9,10\n")
    (rows,) = sample_csv_tensors(path, 50, matrix_model("FP64"), np.random.default_rng(0)).values()
    assert rows.shape == (50, 5) and rows.dtype == np.float64
    assert {tuple(row) for row in rows.tolist()} == {(1, 2, 3, 4, 5), (6, 7, 8, 9, 10)}


def test_csv_missing_values_are_sent_as_nan_which_the_model_routes(tmp_path):
    path = tmp_path / "payload.csv"
    path.write_text("x0,x1,x2,x3,x4\n1,2,,4,5\n")
    (rows,) = sample_csv_tensors(path, 2, matrix_model(), np.random.default_rng(0)).values()
    assert np.isnan(rows[:, 2]).all() and (rows[:, [0, 1, 3, 4]] == [1, 2, 4, 5]).all()


def test_csv_columns_by_name_for_a_columnar_model(tmp_path):
    path = tmp_path / "payload.csv"
    path.write_text("age,city,size,target\n30,paris,1e39,1\n")
    tensors = sample_csv_tensors(path, 2, columnar_model(), np.random.default_rng(0))
    assert tensors["city"].tolist() == [["paris"], ["paris"]]
    assert tensors["size"].dtype == np.float64 and tensors["size"][0, 0] == 1e39  # FP64 holds it


@pytest.mark.parametrize("content, model, message", [
    ("a,b,c\n1,2,3\n", matrix_model(), "has 3 columns; the model takes 5"),
    ("x0,x1,x2,x3,x4\n", matrix_model(), "no rows"),
    ("x0,x1,x2,x3,x4\n1,2,inf,4,5\n", matrix_model(), "infinite values"),
    ("x0,x1,x2,x3,x4\n1,2,1e39,4,5\n", matrix_model(), "beyond the FP32 range"),
    ("x0,x1,x2,x3,x4\n1,2,three,4,5\n", matrix_model(), "non-numeric"),
    ("city,size\nparis,1\n", columnar_model(), "lacks column\\(s\\) age"),
    ("city,size,age\nrome,1,2\n", columnar_model(known=(("city", ("paris",)),)), "'rome' in column 'city'"),
])
def test_unusable_csv_is_refused_with_a_reason(tmp_path, content, model, message):
    path = tmp_path / "payload.csv"
    path.write_text(content)
    with pytest.raises(PayloadError, match=message):
        sample_csv_tensors(path, 1, model, np.random.default_rng(0))


# -- headless Locust run against the real tritonserver -----------------------------------------------


def run_locust(args: list[str], timeout_s: float = LOCUST_HARD_TIMEOUT_S) -> tuple[int, str]:
    """Run Locust in its own process group; kill the group by PID if it outlives `timeout_s`."""
    try:
        return run_bounded([sys.executable, "-m", "locust", "-f", str(PROJECT_ROOT / LOCUSTFILE), *args], timeout_s)
    except TimeoutError as exc:
        pytest.fail(str(exc))


@pytest.mark.integration
def test_headless_run_sends_requests_over_http_and_grpc_without_failures(triton, tmp_path):
    code, output = run_locust([
        "--headless", "-u", "4", "-r", "4", "--run-time", "4s",
        "--host", f"http://{triton.endpoints.http}", "--grpc-host", triton.endpoints.grpc,
        "--csv", str(tmp_path / "run"), "--only-summary",
    ])
    assert code == 0, f"locust exited with {code}:\n{output[-3000:]}"
    with open(tmp_path / "run_stats.csv", newline="") as stats_file:
        rows = {row["Type"]: row for row in csv.DictReader(stats_file) if row["Name"] != "Aggregated"}
    assert set(rows) == {"HTTP", "gRPC"}, f"request types in the stats: {sorted(rows)}\n{output[-3000:]}"
    for protocol, row in rows.items():
        assert row["Name"] == "infer random_forest x1", protocol
        assert int(row["Request Count"]) > 0, protocol
        assert int(row["Failure Count"]) == 0, f"{protocol}: {row['Failure Count']} failures\n{output[-3000:]}"


def test_unreachable_server_ends_the_run_early_with_a_failure():
    """A wrong address must fail the run fast, not idle silently until --run-time."""
    code, output = run_locust([
        "--headless", "-u", "1", "-r", "1", "--run-time", "120s", "--only-summary", "TritonHttpUser",
        "--host", f"http://127.0.0.1:{free_port()}",
    ])
    assert code == 1, output[-3000:]
    assert "HTTP user cannot start" in output and "not ready" in output, output[-3000:]


@pytest.mark.integration
def test_locust_web_ui_runs_both_users(triton, tmp_path):
    """`locust -f loadtest/locustfile.py` with Locust's own web UI: start a swarm through it, read its stats."""
    web = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "locust.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--web-host", "127.0.0.1",
             "--web-port", web.rsplit(":", 1)[1], "--host", f"http://{triton.endpoints.http}",
             "--grpc-host", triton.endpoints.grpc],
            cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"web UI not up:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(web + "/", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        form = urllib.parse.urlencode({"user_count": 2, "spawn_rate": 2, "host": f"http://{triton.endpoints.http}"})
        with urllib.request.urlopen(urllib.request.Request(web + "/swarm", data=form.encode()), timeout=10) as r:
            assert json.loads(r.read())["success"] is True
        deadline = time.monotonic() + 120  # a condition against a deadline: both users answered
        while True:
            with urllib.request.urlopen(web + "/stats/requests", timeout=10) as r:
                stats = {row["method"]: row for row in json.loads(r.read())["stats"] if row["name"] != "Aggregated"}
            if all(stats.get(kind, {}).get("num_requests", 0) >= 1 for kind in ("HTTP", "gRPC")):
                break
            assert time.monotonic() < deadline, f"no traffic through the web UI: {stats}\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        assert stats["HTTP"]["num_failures"] == 0 and stats["gRPC"]["num_failures"] == 0, stats
        urllib.request.urlopen(urllib.request.Request(web + "/stop", data=b"", method="POST"), timeout=10).close()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.integration
def test_ctrl_c_of_rf_triton_loadtest_stops_locust(triton):
    """Locust runs in a session of its own, out of the terminal's reach: Ctrl-C must stop it all the same."""
    e = triton.endpoints
    process = subprocess.Popen(
        [sys.executable, "-m", "rf_triton", "loadtest", "--url", f"http://{e.http}", "--metrics-url", e.metrics,
         "--protocol", "http", "--users", "1", "--spawn-rate", "1", "--run-time", "120s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        locust = []
        while not locust:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "Locust did not start"
            locust = [c for c in psutil.Process(process.pid).children() if "locust" in " ".join(c.cmdline())]
            time.sleep(0.1)
        group = [locust[0], *locust[0].children(recursive=True)]
        served = triton.model_stats("random_forest")["inference_count"]
        while triton.model_stats("random_forest")["inference_count"] == served:  # users running
            assert process.poll() is None and time.monotonic() < deadline, "no request reached the server"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)  # what the terminal sends to its foreground group: rf-triton only
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert stderr.strip().splitlines()[-1] == "error: interrupted: Locust stopped", stderr
        assert "Traceback" not in stderr
        left = [p for p in group if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"Locust left running: {left}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.integration
@pytest.mark.parametrize("model", ["forest_fp64", "frame_pipeline", "frame_fp32"])
def test_users_send_each_input_in_its_datatype(kinds, tmp_path, model):
    """FP64 matrices, FP64 and BYTES columns, FP32 columns: every request answered, as the server counts."""
    server, _, _ = kinds
    before = server.model_stats(model)["inference_stats"]["success"]["count"]
    code, output = run_locust([
        "--headless", "-u", "2", "-r", "2", "--run-time", "3s", "--model", model,
        "--host", f"http://{server.endpoints.http}", "--grpc-host", server.endpoints.grpc,
        "--csv", str(tmp_path / "run"), "--only-summary",
    ])
    assert code == 0, f"locust exited with {code}:\n{output[-3000:]}"
    with open(tmp_path / "run_stats.csv", newline="") as stats_file:
        rows = {row["Type"]: row for row in csv.DictReader(stats_file) if row["Name"] != "Aggregated"}
    assert set(rows) == {"HTTP", "gRPC"} and all(int(r["Failure Count"]) == 0 for r in rows.values()), output[-3000:]
    sent = sum(int(r["Request Count"]) for r in rows.values())
    assert server.model_stats(model)["inference_stats"]["success"]["count"] - before >= sent > 0
