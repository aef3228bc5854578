"""`rf-triton perf-data`: perf_analyzer's --input-data JSON from real rows, checked against the format
perf_analyzer documents (docs/input_data.md, "Real Input Data"), and run by perf_analyzer itself where
its wheel can be installed (glibc ≥ 2.38)."""

from __future__ import annotations

import base64
import json
import platform
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from typer.testing import CliRunner

from rf_triton.cli import app
from rf_triton.client import RandomForestClient

runner = CliRunner()

# perf_analyzer's real-input file as documented: {"data": [ENTRY, ...]}, an entry maps every input to its
# batch-1 tensor, given as a flat array, or as {"content": array | {"b64": str}, "shape": [int, ...]}.
CONTENT = {"oneOf": [{"type": "array", "items": {"type": ["number", "string", "boolean"]}},
                     {"type": "object", "properties": {"b64": {"type": "string"}}, "required": ["b64"],
                      "additionalProperties": False}]}
TENSOR = {"oneOf": [{"type": "array"},
                    {"type": "object", "properties": {"content": CONTENT,
                                                      "shape": {"type": "array", "items": {"type": "integer"}}},
                     "required": ["content"], "additionalProperties": False},
                    {"type": "object", "properties": {"b64": {"type": "string"}}, "required": ["b64"]}]}
PERF_ANALYZER_INPUT_DATA = {"type": "object", "required": ["data"], "additionalProperties": False,
                            "properties": {"data": {"type": "array", "minItems": 1,
                                                    "items": {"type": "object", "additionalProperties": TENSOR}}}}


def strict_json(path):
    """JSON as perf_analyzer's parser reads it by default: no NaN or Infinity literals."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def decoded(tensor: dict, dtype) -> np.ndarray:
    content = tensor["content"]
    values = (np.frombuffer(base64.b64decode(content["b64"]), dtype=np.dtype(dtype).newbyteorder("<"))
              if isinstance(content, dict) else np.asarray(content, dtype=dtype))
    assert values.size == int(np.prod(tensor["shape"])), "batch-1 size must match the shape"
    return values.reshape(tensor["shape"])


def check_against_model(document: dict, config: dict) -> None:
    jsonschema.validate(document, PERF_ANALYZER_INPUT_DATA)
    inputs = {i["name"]: [int(d) for d in i["dims"]] for i in config["input"]}
    for entry in document["data"]:
        assert set(entry) == set(inputs), "every input, and nothing else (perf_analyzer refuses unknown names)"
        for name, tensor in entry.items():
            assert tensor["shape"] == inputs[name]


@pytest.fixture(scope="module")
def columnar_repository(tmp_path_factory):
    """A DataFrame model: a string column one-hot encoded inside the exported pipeline, numbers with NaN."""
    folder = tmp_path_factory.mktemp("columnar")
    rng = np.random.default_rng(0)
    cities = rng.choice(["lyon", "paris", "nice"], 300)
    age = rng.integers(18, 80, 300).astype(float)
    age[rng.random(300) < 0.2] = np.nan
    income = np.round(rng.uniform(1, 9, 300), 1)
    segment = np.where(income + (cities == "paris") * 3 > 6, "gold", "basic")
    lines = ["city,age,income,segment"] + [
        f"{c},{'' if np.isnan(a) else int(a)},{i},{s}" for c, a, i, s in zip(cities, age, income, segment)]
    (folder / "customers.csv").write_text("\n".join(lines) + "\n")
    repository = folder / "repo"
    result = runner.invoke(app, ["export", "--data", str(folder / "customers.csv"), "--target", "segment",
                                 "--name", "customers", "--repository", str(repository), "--n-estimators", "10"])
    assert result.exit_code == 0, result.output
    return repository


def repository_config(repository, model):
    from rf_triton.loadtest.perf_data import repository_config as read

    return read(repository, model)


def test_demo_model_rows_with_nan_in_perf_analyzer_format(demo_repository, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("x0,x1,x2,x3,x4\n0.1,0.2,0.3,0.4,0.5\n1,,3,4.25,5\n-2,7,,,9\n")
    out = tmp_path / "data.json"
    result = runner.invoke(app, ["perf-data", "--repository", str(demo_repository), "--input", str(rows),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    document = strict_json(out)
    check_against_model(document, repository_config(demo_repository, "random_forest"))
    sent = np.stack([decoded(entry["X"], np.float32) for entry in document["data"]])
    expected = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [1, np.nan, 3, 4.25, 5], [-2, 7, np.nan, np.nan, 9]], np.float32)
    np.testing.assert_array_equal(sent, expected)  # NaN where the file is empty, every value bit for bit
    assert isinstance(document["data"][0]["X"]["content"], list), "finite rows stay readable"
    assert isinstance(document["data"][1]["X"]["content"], dict), "JSON has no NaN: a row with one is b64"


def test_dataframe_model_carries_real_categories_and_nan(columnar_repository, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("income,city,age\n2.5,paris,31\n7.0,nice,\n4.1,lyon,64\n")
    out = tmp_path / "data.json"
    result = runner.invoke(app, ["perf-data", "--repository", str(columnar_repository), "--model", "customers",
                                 "--input", str(rows), "--out", str(out), "--rows", "2"])
    assert result.exit_code == 0, result.output
    document = strict_json(out)
    config = repository_config(columnar_repository, "customers")
    check_against_model(document, config)
    assert len(document["data"]) == 2, "--rows takes the top of the file"
    types = {i["name"]: i["data_type"] for i in config["input"]}
    assert types["city"] == "TYPE_STRING"
    assert [entry["city"]["content"] for entry in document["data"]] == [["paris"], ["nice"]]
    ages = [decoded(entry["age"], np.float32)[0] for entry in document["data"]]
    assert ages[0] == 31 and np.isnan(ages[1])
    # the same tensors the client sends for these rows
    import pandas as pd

    client = RandomForestClient(model="customers").adopt_config(config)
    tensors = client.prepare(pd.DataFrame({"income": [2.5, 7.0], "city": ["paris", "nice"], "age": [31, np.nan]}))
    for name, values in tensors.items():
        if types[name] != "TYPE_STRING":
            sent = np.stack([decoded(entry[name], values.dtype) for entry in document["data"]])
            np.testing.assert_array_equal(sent, values)


@pytest.mark.parametrize("rows_text, message", [
    ("x0,x1,x2\n1,2,3\n", "lacks column(s) x3, x4"),
    ("x0,x1,x2,x3,x4\n1,2,3,inf,5\n", "row 1, column 'x3'"),
    ("x0,x1,x2,x3,x4\n", "has no rows"),
])
def test_bad_rows_fail_in_one_line_and_write_nothing(demo_repository, tmp_path, rows_text, message):
    rows, out = tmp_path / "rows.csv", tmp_path / "data.json"
    rows.write_text(rows_text)
    result = runner.invoke(app, ["perf-data", "--repository", str(demo_repository), "--input", str(rows),
                                 "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and message in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == [rows], "nothing half-written"


@pytest.mark.integration
def test_config_read_from_a_server_gives_the_same_file(triton, demo_repository, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("x4,x3,x2,x1,x0\n0.5,0.4,0.3,0.2,0.1\n5,,3,,1\n")
    from_repository, from_server = tmp_path / "repo.json", tmp_path / "server.json"
    for extra, out in ((["--repository", str(demo_repository)], from_repository),
                       (["--url", triton.endpoints.grpc, "--protocol", "grpc"], from_server)):
        result = runner.invoke(app, ["perf-data", *extra, "--input", str(rows), "--out", str(out)])
        assert result.exit_code == 0, result.output
    assert from_server.read_text() == from_repository.read_text()


def glibc_version() -> tuple[int, ...]:
    name, version = platform.libc_ver()
    return tuple(int(p) for p in version.split(".")) if name == "glibc" and version else ()


@pytest.mark.integration
def test_perf_analyzer_runs_the_written_rows_against_the_embedded_server(triton, demo_repository, tmp_path):
    if glibc_version() < (2, 38):
        pytest.skip(f"the perf-analyzer wheel needs glibc >= 2.38; this machine has "
                    f"{'.'.join(map(str, glibc_version())) or 'no glibc'}")
    beside = Path(sys.executable).with_name("perf_analyzer")  # pip install perf-analyzer, in this venv
    binary = str(beside) if beside.is_file() else shutil.which("perf_analyzer")
    if binary is None:
        pytest.skip("perf_analyzer is not installed (pip install perf-analyzer)")
    rows, out = tmp_path / "rows.csv", tmp_path / "data.json"
    rows.write_text("x0,x1,x2,x3,x4\n0.1,0.2,0.3,0.4,0.5\n1,,3,4,5\n")
    assert runner.invoke(app, ["perf-data", "--repository", str(demo_repository), "--input", str(rows),
                               "--out", str(out)]).exit_code == 0

    def successes() -> int:
        with urllib.request.urlopen(f"http://{triton.endpoints.http}/v2/models/random_forest/stats") as r:
            return int(json.load(r)["model_stats"][0]["inference_stats"]["success"]["count"])

    before = successes()
    done = subprocess.run([binary, "-m", "random_forest", "-u", triton.endpoints.http, "-i", "http",
                           "--input-data", str(out), "-b", "1", "--concurrency-range", "1",
                           "--measurement-mode", "count_windows", "--measurement-request-count", "50"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert successes() - before >= 50, "perf_analyzer's requests, NaN rows included, were answered"
