"""Shared fixtures: the demo model, an exported repository, and one embedded Triton per session.

The marker `integration` means "starts tritonserver": a test that uses a server fixture without it
fails at setup, so `pytest -m "not integration"` never needs the binary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path

import psutil
import pytest

from rf_triton.export import sources
from rf_triton.export.pipeline import export_model
from rf_triton.serve.server import EmbeddedTriton, ServerStartError, free_ports

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_model() -> sources.TrainedModel:
    return sources.train_demo()


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory, demo_model) -> Path:
    """The demo model as `rf-triton export` writes it by default: the session server serves what users get."""
    repository = tmp_path_factory.mktemp("served") / "model_repository"
    export_model(demo_model, repository)
    return repository


def start_server(repository: Path, **kwargs) -> EmbeddedTriton:
    """Start on free ports; on failure the error carries the server's last log lines."""
    server = EmbeddedTriton.on_free_ports(repository, **kwargs)
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


@pytest.fixture()
def server_factory():
    """Start extra embedded servers (own repositories, options); all are stopped at teardown."""
    started: list[EmbeddedTriton] = []

    def start(repository: Path, **kwargs) -> EmbeddedTriton:
        started.append(start_server(repository, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.stop()


class ServeProcess:
    """`rf-triton serve` in its own session, with its output in a file for failure reports."""

    def __init__(self, repository: Path, log: Path, *extra_args: str) -> None:
        self.ports = dict(zip(("http", "grpc", "metrics"), free_ports(3)))
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rf_triton", "serve", "--repository", str(repository),
                 "--http-port", str(self.ports["http"]), "--grpc-port", str(self.ports["grpc"]),
                 "--metrics-port", str(self.ports["metrics"]), *extra_args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def tail(self, lines: int = 30) -> str:
        with open(self.log, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"rf-triton serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['http']}/v2/health/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"rf-triton serve not ready after {timeout_s} s:\n{self.tail()}")

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    @staticmethod
    def left_behind(processes: list[psutil.Process]) -> list[psutil.Process]:
        """Those still running (zombies count as gone: nothing reaps orphans on these machines)."""
        alive = []
        for process in processes:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.NoSuchProcess:
                pass
        return alive

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture()
def serve(tmp_path):
    """Start `rf-triton serve` processes; each is killed (process group) at teardown if still running."""
    started = []

    def start(repository: Path = ROOT / "model_repository", *extra_args: str) -> ServeProcess:
        process = ServeProcess(repository, tmp_path / f"serve-{len(started)}.log", *extra_args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


SERVER_FIXTURES = {"triton", "server_factory", "serve"}


def pytest_runtest_setup(item):
    used = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
    if used and item.get_closest_marker("integration") is None:
        pytest.fail(f"{item.nodeid} starts tritonserver (fixture {', '.join(sorted(used))}): mark it "
                    "@pytest.mark.integration", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server's log tail to any failing test that used it."""
    outcome = yield
    report = outcome.get_result()
    server = item.funcargs.get("triton") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and isinstance(server, EmbeddedTriton):
        report.sections.append(("tritonserver log (tail)", server.log_tail()))
