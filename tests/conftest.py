"""Shared fixtures: the demo model, an exported repository, and one embedded Triton per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from rf_triton.export import sources
from rf_triton.export.pipeline import export_model
from rf_triton.export.triton_config import ServingOptions
from rf_triton.serve.server import EmbeddedTriton, ServerStartError, free_port



@pytest.fixture(scope="session")
def demo_model() -> sources.TrainedModel:
    return sources.train_demo()


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory, demo_model) -> Path:
    """The demo model with a 1 ms batching window, so that batching shows even on a loaded host."""
    repository = tmp_path_factory.mktemp("served") / "model_repository"
    export_model(demo_model, repository, options=ServingOptions(max_queue_delay_us=1000))
    return repository


def start_server(repository: Path, **kwargs) -> EmbeddedTriton:
    """Start on free ports; on failure the error carries the server's last log lines."""
    server = EmbeddedTriton(repository, http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port(), **kwargs)
    try:
        server.start(ready_timeout_s=120)
    except ServerStartError as exc:
        pytest.fail(f"embedded tritonserver did not start:\n{exc}")
    return server


@pytest.fixture(scope="session")
def triton(demo_repository):
    server = start_server(demo_repository)
    try:
        yield server
        assert server.is_running(), f"tritonserver died during the tests:\n{server.log_tail()}"
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server's log tail to any failing test that used it."""
    outcome = yield
    report = outcome.get_result()
    server = item.funcargs.get("triton") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and isinstance(server, EmbeddedTriton):
        report.sections.append(("tritonserver log (tail)", server.log_tail()))
