"""`rf-triton doctor` on a healthy repository and on each way one can break: the right row fails, with its fix."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rf_triton.cli import app
from rf_triton.repository import read_config, write_config
from rf_triton.serve.doctor import FAIL, OK, check_python
from rf_triton.serve.server import free_ports

ROOT = Path(__file__).resolve().parents[1]
MODEL = "random_forest"
ENVIRONMENT_ROWS = ["python", "platform", "tritonserver", "python stub", "ports", "/dev/shm"]
MODEL_ROWS = [f"{MODEL}: config", f"{MODEL}: versions", f"{MODEL}: graph", f"{MODEL}: release"]


def doctor(repository: Path, *args: str, ports: list[int] | None = None):
    """Run the command on free ports with --json; returns (result, rows by check name)."""
    http, grpc, metrics = ports or free_ports(3)
    result = CliRunner().invoke(app, ["doctor", "--json", "--repository", str(repository), "--http-port", str(http),
                                      "--grpc-port", str(grpc), "--metrics-port", str(metrics), *args])
    report = json.loads(result.stdout)
    assert report["failed"] == [row["name"] for row in report["checks"] if row["status"] == FAIL], report
    return result, {row["name"]: row for row in report["checks"]}


@pytest.fixture()
def repository(tmp_path) -> Path:
    """A copy of the committed repository, free to break."""
    copy = tmp_path / "model_repository"
    shutil.copytree(ROOT / "model_repository", copy)
    return copy


def test_healthy_repository_passes_every_check(repository):
    result, rows = doctor(repository)
    assert result.exit_code == 0, result.output
    assert list(rows) == ENVIRONMENT_ROWS + MODEL_ROWS, result.output
    assert {name: row["status"] for name, row in rows.items()} == {name: "OK" for name in rows}, result.output
    assert "X FP32 [5] -> variable FP32 [1]" in rows[f"{MODEL}: graph"]["detail"]


def test_the_table_says_the_same_as_the_json(repository):
    """Without --json: one rich table of the same rows, and a closing line."""
    http, grpc, metrics = free_ports(3)
    args = ["doctor", "--repository", str(repository), "--http-port", str(http), "--grpc-port", str(grpc),
            "--metrics-port", str(metrics)]
    table = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    report = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    assert table.exit_code == 0 and "all checks passed (0 warning(s))" in table.output, table.output
    for row in report["checks"]:
        assert f"│ {row['name']} " in table.output and row["detail"] in table.output, row


@pytest.mark.parametrize("version, status", [((3, 10), FAIL), ((3, 11), OK), ((3, 12), OK), ((3, 13), FAIL)])
def test_python_check_follows_the_declared_range(version, status):
    """3.13 has no wheels for numpy<2 (nvidia-pytriton): pip must refuse it, doctor too."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    row = check_python(version, declared)
    assert row.status == status, row
    if status == FAIL:
        assert "Python 3.11 or 3.12" in row.fix and f"Python {version[0]}.{version[1]} is outside" in row.detail


def test_python_row_on_this_interpreter():
    row = check_python()
    assert row.status == OK and f"Python {sys.version_info.major}.{sys.version_info.minor}" in row.detail, row


def _remove_config(repository: Path) -> None:
    (repository / MODEL / "config.pbtxt").unlink()


def _remove_model_file(repository: Path) -> None:
    (repository / MODEL / "1" / "model.onnx").unlink()


def _mismatch_dims(repository: Path) -> None:
    path = repository / MODEL / "config.pbtxt"
    config = read_config(path)
    del config.input[0].dims[:]
    config.input[0].dims.append(6)
    write_config(path, config)


def _stale_warmup(repository: Path) -> None:
    path = repository / MODEL / "config.pbtxt"
    config = read_config(path)
    warmup = config.model_warmup[0]
    warmup.inputs["features"].CopyFrom(warmup.inputs["X"])
    del warmup.inputs["X"]
    write_config(path, config)


def _half_written_version(repository: Path) -> None:
    (repository / MODEL / "2").mkdir()
    (repository / MODEL / "2" / "model.onnx").write_bytes(b"")


def _unparseable_config(repository: Path) -> None:
    (repository / MODEL / "config.pbtxt").write_text('name: "random_forest"\ninput [ { name: "X" dims: [ 5 \n')


def _corrupt_model_file(repository: Path) -> None:
    (repository / MODEL / "1" / "model.onnx").write_bytes(b"not an onnx graph")


@pytest.mark.parametrize("breaks, row, detail, fix", [
    (_remove_config, "config", "no config.pbtxt", "rf-triton export --repository"),
    (_unparseable_config, "config", "not a valid Triton model config", "correct the line named"),
    (_remove_model_file, "versions", "version 1 has no model.onnx", "remove the incomplete folder"),
    (_half_written_version, "versions", "version 2: model.onnx is empty (half-written)", "/random_forest/2"),
    (_mismatch_dims, "graph", "input X dims [6], the graph's [5]", "make config.pbtxt say what the graph takes"),
    (_stale_warmup, "graph", "warmup 'zero_rows' feeds 'features', the graph's inputs are ['X']", "rf-triton export"),
    (_corrupt_model_file, "graph", "model.onnx is not a readable ONNX graph", "rf-triton export"),
], ids=["missing-config", "unparseable-config", "missing-model-file", "half-written-version", "mismatched-dims",
        "stale-warmup", "corrupt-model-file"])
def test_each_broken_repository_fails_on_its_row(repository, breaks, row, detail, fix):
    breaks(repository)
    result, rows = doctor(repository)
    assert result.exit_code == 1, result.output
    failing = rows[f"{MODEL}: {row}"]
    assert failing["status"] == "FAIL", result.output
    assert detail in failing["detail"], result.output
    assert fix in failing["fix"], result.output
    assert all(rows[name]["status"] == "OK" for name in ENVIRONMENT_ROWS), result.output
    assert f"{MODEL}: {row}" in json.loads(result.stdout)["failed"]


def test_a_taken_port_fails_the_ports_row(repository):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result, rows = doctor(repository, ports=[port, *free_ports(2)])
    assert result.exit_code == 1, result.output
    assert rows["ports"]["status"] == "FAIL", result.output
    assert f"http {port}" in rows["ports"]["detail"]
    assert "--http-port" in rows["ports"]["fix"]
    assert all(rows[name]["status"] == "OK" for name in MODEL_ROWS), result.output


def test_a_missing_repository_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(app, ["doctor", "--repository", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: model repository not found: {tmp_path / 'nowhere'} "
                                                  "(give one with --repository)"]


def test_an_empty_repository_fails(tmp_path):
    result, rows = doctor(tmp_path)
    assert result.exit_code == 1, result.output
    assert rows["models"]["status"] == "FAIL" and "rf-triton export" in rows["models"]["fix"], result.output


def test_a_fil_model_passes_but_load_is_a_warning(tmp_path):
    """The embedded server has no FIL backend: a warning, not a failure, and no server is started."""
    shutil.copytree(ROOT / "model_repository_fil", tmp_path / "repo")
    result, rows = doctor(tmp_path / "repo", "--load")
    assert result.exit_code == 0, result.output
    assert "input__0 FP32 [5] -> output__0 FP32 [1]" in rows[f"{MODEL}: graph"]["detail"], result.output
    assert rows[f"{MODEL}: load"]["status"] == "WARN", result.output
    assert "triton-gpu" in rows[f"{MODEL}: load"]["fix"]
    assert json.loads(result.stdout)["warnings"] == 1


def test_load_is_not_attempted_after_a_failure(repository):
    _remove_model_file(repository)
    result, rows = doctor(repository, "--load")
    assert result.exit_code == 1, result.output
    assert rows["load"]["status"] == "WARN" and "not attempted" in rows["load"]["detail"], result.output


@pytest.mark.integration
def test_load_starts_the_embedded_server_and_the_model_is_ready(repository):
    result, rows = doctor(repository, "--load")
    assert result.exit_code == 0, result.output
    assert rows[f"{MODEL}: load"]["status"] == "OK", result.output
    assert "ready in the embedded server" in rows[f"{MODEL}: load"]["detail"]


@pytest.mark.integration
def test_load_reports_the_servers_reason_when_the_model_does_not_load(repository):
    """A config the static checks accept but Triton refuses: the load row carries Triton's own error line."""
    path = repository / MODEL / "config.pbtxt"
    config = read_config(path)
    config.dynamic_batching.preferred_batch_size.append(config.max_batch_size + 1)
    write_config(path, config)
    result, rows = doctor(repository, "--load")
    assert result.exit_code == 1, result.output
    assert rows[f"{MODEL}: load"]["status"] == "FAIL", result.output
    assert "preferred size must be <= max batch size" in rows[f"{MODEL}: load"]["detail"], result.output
    assert "--log-verbose" in rows[f"{MODEL}: load"]["fix"]
