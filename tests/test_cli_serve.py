"""`rf-triton serve` and `rf-triton predict` as a user runs them: real processes, real signals."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rf_triton.serve.server import free_port

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "rf_triton"]



def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.integration
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_predict_and_stop_cleanly(stop_signal, serve, demo_model, tmp_path):
    server = serve()
    server.wait_ready()
    children = server.descendants()
    assert any(c.name() == "tritonserver" for c in children), [c.name() for c in children]
    expected = demo_model.estimator.predict(demo_model.X_val[:3])

    for protocol in ("http", "grpc"):
        values = ";".join(",".join(f"{v:.9g}" for v in row) for row in demo_model.X_val[:3])
        result = run_cli("predict", "--url", f"127.0.0.1:{server.ports[protocol]}", "--protocol", protocol,
                         "--values", values)
        assert result.returncode == 0, result.stderr
        np.testing.assert_allclose([float(v) for v in result.stdout.split()], expected, rtol=1e-4)

    csv = tmp_path / "rows.csv"
    csv.write_text("x4,x3,x2,x1,x0\n" + "\n".join(",".join(f"{v:.9g}" for v in row[::-1])
                                                  for row in demo_model.X_val[:3]))
    result = run_cli("predict", "--url", f"127.0.0.1:{server.ports['http']}", "--input", str(csv))
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose([float(v) for v in result.stdout.split()], expected, rtol=1e-4)

    server.proc.send_signal(stop_signal)
    assert server.proc.wait(timeout=60) == 0, server.tail()
    leftovers = server.left_behind(children)
    assert not leftovers, f"processes left behind: {leftovers}"
    assert "stopping tritonserver" in server.tail()


@pytest.mark.integration
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_repeated_stop_signals_stop_once_and_leave_nothing(stop_signal, serve, demo_repository, tmp_path):
    """A second Ctrl-C or SIGTERM while the server stops must not cut the cleanup short; -v shows the watcher."""
    repository = tmp_path / "model_repository"
    shutil.copytree(demo_repository, repository)
    server = serve(repository, "-v")
    server.wait_ready()
    workdir = Path(re.search(r"log\s+(\S+)/tritonserver\.log", server.tail()).group(1))
    assert workdir.is_dir()
    shutil.copytree(repository / "random_forest" / "1", repository / "random_forest" / "2")
    deadline = time.monotonic() + 30
    while "changed: mirrored random_forest [1, 2]" not in server.tail(100):
        assert time.monotonic() < deadline, f"the watcher's mirroring is not in the -v log:\n{server.tail()}"
        time.sleep(0.2)
    children = server.descendants()
    shm = {Path(m.path) for c in children for m in c.memory_maps() if m.path.startswith("/dev/shm/")}
    assert shm, "the Python-backend stubs map their regions in /dev/shm"

    signals = 0
    deadline = time.monotonic() + 60
    while "stopped; work folder and shared memory removed" not in server.tail():  # signals through the whole stop
        assert time.monotonic() < deadline and server.proc.poll() is None, server.tail()
        server.proc.send_signal(stop_signal)
        signals += 1
        time.sleep(0.05)
    assert signals > 1
    assert server.proc.wait(timeout=30) == 0, server.tail()
    assert "Traceback" not in server.tail(200) and "stopping tritonserver" in server.tail()
    assert not workdir.exists(), "the work folder was left behind"
    assert not [path for path in shm if path.exists()], "shared memory left behind"
    assert not server.left_behind(children)


@pytest.mark.integration
def test_serve_fails_clearly_when_a_model_cannot_load(serve, tmp_path):
    repository = tmp_path / "broken"
    shutil.copytree(ROOT / "model_repository", repository)
    (repository / "random_forest" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    server = serve(repository)
    assert server.proc.wait(timeout=120) == 1, server.tail()
    output = server.tail(60)
    assert "error:" in output and "random_forest" in output
    assert "Traceback" not in output


def test_serve_refuses_a_busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        repository = ROOT / "model_repository"
        result = run_cli("serve", "--repository", str(repository), "--http-port", str(busy),
                         "--grpc-port", str(free_port()), "--metrics-port", str(free_port()), timeout=60)
    assert result.returncode == 1
    assert f"port(s) {busy} already in use" in result.stderr


def test_serve_refuses_a_missing_repository(tmp_path):
    result = run_cli("serve", "--repository", str(tmp_path / "nowhere"), "--http-port", str(free_port()),
                     "--grpc-port", str(free_port()), "--metrics-port", str(free_port()), timeout=60)
    assert result.returncode == 1
    assert "model repository not found" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("args, message", [
    (["--values", "1,2,3"], "3 features per row, the model takes 5"),
    (["--values", "1,2,x,4,5"], "not a comma-separated list of numbers"),
    (["--values", "inf,0,0,0,0"], "infinite values"),
    ([], "exactly one of --input"),
    (["--input", "/nonexistent.csv"], "input file not found"),
    (["--values", "1,2,3,4,5", "--model", "missing_model", "--timeout-s", "300"], "'missing_model' is not served"),
])
def test_predict_bad_input(args, message, triton):
    result = run_cli("predict", "--url", triton.endpoints.http, *args, timeout=60)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_predict_unreachable_server_gives_up_after_its_timeout():
    result = run_cli("predict", "--url", f"127.0.0.1:{free_port()}", "--values", "1,2,3,4,5", "--timeout-s", "1",
                     timeout=120)
    assert result.returncode == 1 and "not ready at" in result.stderr and "after 1 s" in result.stderr


@pytest.mark.parametrize("port", ["70000", "0", "-1"])
def test_serve_refuses_a_port_outside_the_range_before_starting(port):
    result = run_cli("serve", "--http-port", port, timeout=60)
    assert result.returncode == 2 and "Invalid value for '--http-port'" in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and " serve: " in result.stderr and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("host, message", [
    ("no-such-host.invalid", "cannot resolve host 'no-such-host.invalid' to an IPv4 address"),
    ("::1", "host ::1 is an IPv6 address; the embedded tritonserver serves HTTP and metrics on IPv4 only"),
    ("192.0.2.1", "cannot bind port"),  # TEST-NET-1: an address of no interface here
])
def test_serve_says_why_a_host_cannot_be_served_instead_of_a_busy_port(host, message):
    result = run_cli("serve", "--repository", str(ROOT / "model_repository"), "--host", host,
                     "--http-port", str(free_port()), "--grpc-port", str(free_port()),
                     "--metrics-port", str(free_port()), timeout=60)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}") and "already in use" not in line, result.stderr


def columnar_repository(repository: Path) -> Path:
    """A model with one input per column (a string and a number), its config written through protobuf."""
    from dataclasses import replace

    from tritonclient.grpc import model_config_pb2 as mc

    from rf_triton.repository import CONFIG_FILENAME, read_config, set_signature, signature_of, write_config
    from rf_triton.signature import Tensor

    config = read_config(ROOT / "model_repository" / "random_forest" / CONFIG_FILENAME)
    del config.input[:]
    config.input.add(name="city", data_type=mc.TYPE_STRING, dims=[1])
    config.input.add(name="size", data_type=mc.TYPE_FP64, dims=[1])
    inputs = (Tensor("city", "BYTES", (1,)), Tensor("size", "FP64", (1,)))
    set_signature(config, replace(signature_of(config), inputs=inputs, feature_names=("city", "size")))
    (repository / "random_forest" / "1").mkdir(parents=True)
    write_config(repository / "random_forest" / CONFIG_FILENAME, config)
    return repository


@pytest.mark.parametrize("args, message", [
    (["demo", "--repository", "{file}"], "repository path {file} exists and is not a folder"),
    (["bench", "--concurrency", "0", "--out", "{tmp}"], "--concurrency must be positive, not 0"),
    (["bench", "--warmup-s", "-1", "--out", "{tmp}"], "--warmup-s must be 0 or more, not -1"),
    (["bench", "--repository", "{tmp}/nowhere", "--out", "{tmp}"], "model 'random_forest' not found in {tmp}/nowhere"),
    (["tune", "--queue-delay-us", "-1"], "--queue-delay-us must be 0 or more, not -1"),
    (["tune", "--protocol", "udp"], "--protocol must be http or grpc, not 'udp'"),
    (["bench", "--repository", "{root}/model_repository", "--out", "{file}"], "--out {file} is a file; give a folder"),
    (["bench", "--repository", "{unversioned}", "--out", "{tmp}"],
     "model 'random_forest' in {unversioned} has no version folder"),
    (["tune", "--repository", "{unversioned}"], "model 'random_forest' in {unversioned} has no version folder"),
    (["bench", "--repository", "{columnar}", "--out", "{tmp}"],
     "model 'random_forest' takes one input per column (city, size); the benchmarks send one feature matrix"),
    (["tune", "--repository", "{columnar}"], "model 'random_forest' takes one input per column (city, size)"),
    (["loadtest", "--summary-json", "{tmp}/missing/summary.json"], "--summary-json {tmp}/missing/summary.json: "
                                                                    "folder {tmp}/missing does not exist"),
    (["loadtest", "--html", "{file}/report.html"], "--html {file}/report.html: folder {file} does not exist"),
], ids=["demo-repository-is-a-file", "bench-concurrency-0", "bench-negative-warmup", "bench-missing-repository",
        "tune-negative-delay", "tune-protocol", "bench-out-is-a-file", "bench-without-versions",
        "tune-without-versions", "bench-columnar", "tune-columnar", "loadtest-summary-in-a-missing-folder",
        "loadtest-html-under-a-file"])
def test_commands_refuse_bad_input_in_one_error_line(args, message, tmp_path):
    """Refused before anything runs: one `error:` line, exit 1, nothing written, no traceback."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    out = tmp_path / "out"
    unversioned = tmp_path / "unversioned"
    (unversioned / "random_forest").mkdir(parents=True)
    shutil.copy(ROOT / "model_repository" / "random_forest" / "config.pbtxt", unversioned / "random_forest")
    columnar = columnar_repository(tmp_path / "columnar")
    fill = {"file": str(a_file), "tmp": str(out), "root": str(ROOT), "unversioned": str(unversioned),
            "columnar": str(columnar)}
    result = run_cli(*[arg.format(**fill) for arg in args], timeout=300)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {message.format(**fill)}"), result.stderr
    assert not out.exists()
