"""Every script in examples/ runs against the embedded server and prints sklearn's predictions, so none goes stale."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT_S = 120


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


python_client = _load("python_client")


def run(*command: str, expect: int = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """An example as a user runs it, with this environment's rf-triton and Python first on PATH."""
    environment = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
                   **(env or {})}
    for variable in ("RF_TRITON_URL", "RF_TRITON_GRPC_URL", "RF_TRITON_MODEL", "RF_TRITON_PROTOCOL"):
        if variable not in (env or {}):
            environment.pop(variable, None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=environment,
                            cwd=EXAMPLES.parent, stdin=subprocess.DEVNULL)
    assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def printed(output: str, label: str) -> np.ndarray:
    """The numbers on the line that starts with `label:`."""
    lines = [line for line in output.splitlines() if line.startswith(f"{label}:")]
    assert len(lines) == 1, f"no single line {label!r} in:\n{output}"
    return np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", lines[0].split(":", 1)[1])])


@pytest.fixture(scope="module")
def expected(demo_model) -> np.ndarray:
    return demo_model.estimator.predict(np.asarray(python_client.SAMPLE_ROWS, dtype=np.float32))


@pytest.mark.integration
def test_curl_json_and_binary(triton, expected):
    assert shutil.which("curl"), "curl is needed by examples/curl_http.sh: install it (apt-get install curl)"
    result = run("bash", str(EXAMPLES / "curl_http.sh"), triton.endpoints.http)
    assert "server ready" in result.stdout
    np.testing.assert_allclose(printed(result.stdout, "json predictions"), expected, rtol=1e-4)
    np.testing.assert_allclose(printed(result.stdout, "binary predictions"), expected, rtol=1e-4)


@pytest.mark.integration
def test_curl_fails_with_the_servers_message(triton):
    result = run("bash", str(EXAMPLES / "curl_http.sh"), expect=1,
                 env={"RF_TRITON_URL": triton.endpoints.http, "RF_TRITON_MODEL": "no_such_model"})
    assert "error:" in result.stderr and "no_such_model" in result.stderr, result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_predict_sh(triton, expected, protocol):
    url = triton.endpoints.http if protocol == "http" else triton.endpoints.grpc
    result = run("bash", str(EXAMPLES / "predict.sh"), url, protocol)
    np.testing.assert_allclose(printed(result.stdout, "values predictions"), expected, rtol=1e-4)
    np.testing.assert_allclose(printed(result.stdout, "csv predictions"), expected, rtol=1e-4)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_python_client(triton, demo_model, expected, protocol):
    url = triton.endpoints.http if protocol == "http" else triton.endpoints.grpc
    result = run(sys.executable, str(EXAMPLES / "python_client.py"), "--url", url, "--protocol", protocol)
    out = result.stdout
    np.testing.assert_allclose(printed(out, "single row"), expected[:1], rtol=1e-4)
    assert "dataframe columns, in the frame's order: x4, x3, x2, x1, x0" in out, out
    np.testing.assert_allclose(printed(out, "dataframe"), expected, rtol=1e-4)
    batch = python_client.batch_rows(2 * 1024 + 500, 5)
    batch_expected = demo_model.estimator.predict(batch)
    assert "large batch: 2548 rows in 3 requests (max_batch_size 1024)" in out, out
    np.testing.assert_allclose(printed(out, "large batch first 3"), batch_expected[:3], rtol=1e-4)
    np.testing.assert_allclose(printed(out, "large batch last 3"), batch_expected[-3:], rtol=1e-4)
    assert "40 answers, all equal to the single-row prediction: yes" in out, out


@pytest.mark.integration
def test_grpc_client(triton, expected):
    result = run(sys.executable, str(EXAMPLES / "grpc_client.py"), "--url", triton.endpoints.grpc)
    np.testing.assert_allclose(printed(result.stdout, "raw tritonclient.grpc (X FP32 -> variable)"), expected, rtol=1e-4)
    np.testing.assert_allclose(printed(result.stdout, "RandomForestClient (grpc)"), expected, rtol=1e-4)


@pytest.mark.integration
def test_grpc_client_fails_for_an_unknown_model(triton):
    result = run(sys.executable, str(EXAMPLES / "grpc_client.py"), "--url", triton.endpoints.grpc,
                 "--model", "no_such_model", expect=1)
    assert "error:" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def customers(servers, tmp_path_factory):
    """The classifier curl_columns.sh talks to, exported from examples/customers.csv and served."""
    import pandas as pd

    from rf_triton.export import sources
    from rf_triton.export.pipeline import export_model
    trained = sources.train_from_csv(EXAMPLES / "customers.csv", "segment", n_estimators=20, max_depth=8)
    repository = tmp_path_factory.mktemp("customers") / "model_repository"
    export_model(trained, repository, name="customers")
    rows = pd.DataFrame({"city": ["paris", "brest"], "size": [120.5, 40.0], "age": [35.0, np.nan]})
    with servers.serving(repository, watch_interval_s=None) as server:
        yield server, trained.estimator, rows


@pytest.mark.integration
@pytest.mark.parametrize("model", ["customers", "customers_fp64"])
def test_curl_columns_labels_and_top_classes(request, model):
    """customers: FP32 columns (encoder and passthrough only); customers_fp64: a scaled column, FP64 inputs."""
    if model == "customers":
        server, estimator, rows = request.getfixturevalue("customers")
    else:
        server, models, _ = request.getfixturevalue("kinds")
        estimator = models[model]
        rows = request.getfixturevalue("customers")[2]
    result = run("bash", str(EXAMPLES / "curl_columns.sh"), server.endpoints.http, env={"RF_TRITON_MODEL": model})
    (labels,) = [line.split(":", 1)[1].split() for line in result.stdout.splitlines() if line.startswith("labels:")]
    assert labels == list(estimator.predict(rows))
    probabilities = estimator.predict_proba(rows)
    top = result.stdout.split("top 2 per row (score:index:label):")[1].split()
    expected = []
    for row in probabilities:
        for index in np.argsort(-row)[:2]:
            expected.append((int(index), estimator.classes_[index], row[index]))
    assert [(int(t.split(":")[1]), t.split(":")[2]) for t in top] == [(i, c) for i, c, _ in expected]
    np.testing.assert_allclose([float(t.split(":")[0]) for t in top], [p for _, _, p in expected], atol=1e-5)


@pytest.mark.integration
def test_curl_and_grpc_examples_send_an_fp64_input_as_doubles(kinds):
    server, models, _ = kinds
    expected = models["forest_fp64"].predict(np.asarray(python_client.SAMPLE_ROWS))
    curl = run("bash", str(EXAMPLES / "curl_http.sh"), server.endpoints.http, env={"RF_TRITON_MODEL": "forest_fp64"})
    np.testing.assert_allclose(printed(curl.stdout, "json predictions"), expected, rtol=1e-4)
    np.testing.assert_allclose(printed(curl.stdout, "binary predictions"), expected, rtol=1e-4)
    grpc = run(sys.executable, str(EXAMPLES / "grpc_client.py"), "--url", server.endpoints.grpc, "--model", "forest_fp64")
    np.testing.assert_allclose(printed(grpc.stdout, "raw tritonclient.grpc (X FP64 -> variable)"), expected, rtol=1e-4)
    np.testing.assert_allclose(printed(grpc.stdout, "RandomForestClient (grpc)"), expected, rtol=1e-4)
