"""Shared fixtures: the demo model, an exported repository, the one factory that starts embedded
Triton servers, the session's server, and the models of every kind a user brings.

The marker `integration` means "starts tritonserver": a test that uses a server fixture without it
(directly or through a fixture that depends on one) fails at setup, so `pytest -m "not integration"`
never needs the binary.
"""

from __future__ import annotations

import contextlib
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
from rf_triton.serve.server import EmbeddedTriton, ServerStartError, free_ports, port_in_use

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


# Servers started through the factory and not yet stopped: a failing test gets their log tails.
LIVE_SERVERS: list[EmbeddedTriton] = []
# tritonserver's words when another process took one of its ports between free_ports() and its bind.
PORT_TAKEN = ("already in use", "Failed to listen", "failed to start")
START_ATTEMPTS = 3


class ServerFactory:
    """The one way tests start embedded servers: free ports, a readiness deadline, the process watched
    while it starts, a fresh set of ports when another process took one first, and a stop that
    always runs. Use `serving()` in fixtures of any scope; `start()`/`stop_all()` in tests."""

    def __init__(self) -> None:
        self.started: list[EmbeddedTriton] = []

    def start(self, repository: Path, **kwargs) -> EmbeddedTriton:
        for attempt in range(1, START_ATTEMPTS + 1):
            server = EmbeddedTriton.on_free_ports(repository, **kwargs)
            try:
                server.start(ready_timeout_s=120)
            except ServerStartError as exc:
                if attempt < START_ATTEMPTS and any(marker in str(exc) for marker in PORT_TAKEN):
                    continue
                pytest.fail(f"embedded tritonserver did not start:\n{exc}", pytrace=False)
            self.started.append(server)
            LIVE_SERVERS.append(server)
            return server
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def serving(self, repository: Path, **kwargs):
        """A server for the block: stopped after it, and it must still be running when the block ends."""
        server = self.start(repository, **kwargs)
        try:
            yield server
            assert server.is_running(), f"tritonserver died during the tests:\n{server.log_tail()}"
        finally:
            self.stop(server)

    __call__ = start

    def restart(self, server: EmbeddedTriton, **kwargs) -> EmbeddedTriton:
        """A new server on a stopped one's ports (its clients keep their URLs), started once the ports are
        free again: waited for against a deadline, not assumed."""
        e = server.endpoints
        deadline = time.monotonic() + 60
        while any(port_in_use(port, e.host) for port in (e.http_port, e.grpc_port, e.metrics_port)):
            if time.monotonic() > deadline:
                pytest.fail(f"the ports of the stopped server are still held after 60 s: {e}", pytrace=False)
            time.sleep(0.2)
        again = EmbeddedTriton(server.repository, host=e.host, http_port=e.http_port, grpc_port=e.grpc_port,
                               metrics_port=e.metrics_port, **kwargs)
        try:
            again.start(ready_timeout_s=120)
        except ServerStartError as exc:
            pytest.fail(f"embedded tritonserver did not restart:\n{exc}", pytrace=False)
        self.started.append(again)
        LIVE_SERVERS.append(again)
        return again

    def stop(self, server: EmbeddedTriton) -> None:
        try:
            server.stop()
        finally:
            if server in LIVE_SERVERS:
                LIVE_SERVERS.remove(server)
            if server in self.started:
                self.started.remove(server)

    def stop_all(self) -> None:
        for server in list(self.started):
            self.stop(server)


@pytest.fixture(scope="session")
def servers():
    """The server factory for fixtures of module or session scope (and, through server_factory, tests)."""
    factory = ServerFactory()
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def triton(servers, demo_repository):
    with servers.serving(demo_repository) as server:
        yield server


@pytest.fixture()
def server_factory(servers):
    """Start extra embedded servers (own repositories, options) in a test; all are stopped at teardown."""
    own = ServerFactory()
    yield own
    own.stop_all()


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


SERVER_FIXTURES = {"servers", "triton", "server_factory", "serve"}


def pytest_runtest_setup(item):
    used = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
    if used and item.get_closest_marker("integration") is None:
        pytest.fail(f"{item.nodeid} starts tritonserver (fixture {', '.join(sorted(used))}): mark it "
                    "@pytest.mark.integration", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the log tail of every server still running to any failing test."""
    outcome = yield
    report = outcome.get_result()
    if report.when in ("setup", "call") and report.failed:
        for server in LIVE_SERVERS:
            report.sections.append((f"tritonserver log (tail), {server.repository}", server.log_tail()))


# -- every kind of model a user brings, served by one server ---------------------------------------

KINDS_RNG_SEED = 7
KIND_FEATURES = 5
# Grouped by the dynamic batcher: four one-row requests fill the preferred batch at once; fewer wait.
BATCHED_KIND = "frame_batched"
UNBATCHED_KIND = "unbatched"


def numeric_data(n: int = 1200, nan_fraction: float = 0.0, seed: int = KINDS_RNG_SEED):
    """(X, X with NaN where the training rows have them): values on a 0.01 grid, as real data is."""
    import numpy as np

    rng = np.random.default_rng(seed)
    X = np.round(rng.normal(size=(n, KIND_FEATURES)), 2)  # float64, as a user's decimals are
    if nan_fraction:
        X_train = X.copy()
        X_train[rng.random(X.shape) < nan_fraction] = np.nan
        return X, X_train
    return X, X


def frame_data(n: int = 1200, seed: int = KINDS_RNG_SEED):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "city": rng.choice(["paris", "lyon", "nice", "brest"], n).astype(object),
        # continuous: a scaled column on a grid is what the float64 preprocessing of the export is for
        "size": rng.normal(50, 20, n),
        "age": rng.integers(18, 90, n).astype(float),
    })


def build_kinds() -> dict:
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (ExtraTreesClassifier, ExtraTreesRegressor, RandomForestClassifier,
                                  RandomForestRegressor)
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    X, X_nan = numeric_data(nan_fraction=0.2)
    frame = frame_data()
    value = (frame["city"] == "paris") * 30 + frame["size"] + 0.2 * frame["age"]
    one_hot = Pipeline([
        ("columns", ColumnTransformer([("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                                       ("size", StandardScaler(), ["size"])], remainder="passthrough")),
        ("forest", RandomForestRegressor(25, max_depth=8, random_state=0))]).fit(frame, value)
    return {
        "binary_nan": RandomForestClassifier(25, max_depth=8, random_state=0).fit(X_nan, (X[:, 0] + X[:, 1] > 0).astype(int)),
        "multiclass_str": ExtraTreesClassifier(25, max_depth=8, random_state=0).fit(
            X, np.where(X[:, 0] > 0.5, "high", np.where(X[:, 0] < -0.5, "low", "mid"))),
        "extra_trees": ExtraTreesRegressor(25, max_depth=8, random_state=0).fit(X, 3 * X[:, 0] - X[:, 2]),
        "two_outputs_nan": RandomForestRegressor(25, max_depth=8, random_state=0).fit(
            X_nan, np.c_[X[:, 0] * 10 + X[:, 1], X[:, 2] - X[:, 3]]),
        "frame_pipeline": one_hot,
        "ordinal_pipeline": Pipeline([
            ("columns", ColumnTransformer([("city", OrdinalEncoder(), ["city"])], remainder="passthrough")),
            ("forest", RandomForestClassifier(25, max_depth=8, random_state=0))]).fit(
                frame, np.where(value > 60, "big", "small")),
        BATCHED_KIND: one_hot,  # no list of known categories: any string reaches the model
        # A step computes with the numbers before the forest: export declares the matrix FP64.
        "forest_fp64": Pipeline([("scale", StandardScaler()), ("forest", RandomForestRegressor(
            25, max_depth=8, random_state=0))]).fit(X, X[:, 0] * 10 + X[:, 1] ** 2),
        UNBATCHED_KIND: RandomForestRegressor(5, max_depth=4, random_state=0).fit(X, X[:, 0]),
        # A classifier with scaled columns (FP64) beside a string one: what examples/curl_columns.sh sends.
        "customers_fp64": Pipeline([
            ("columns", ColumnTransformer([("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                                           ("size", StandardScaler(), ["size"])], remainder="passthrough")),
            ("forest", RandomForestClassifier(25, max_depth=8, random_state=0))]).fit(
                frame, np.where(value > 60, "big", "small")),
        # Encoder and passthrough only: the columns stay FP32.
        "frame_fp32": Pipeline([
            ("columns", ColumnTransformer([("city", OneHotEncoder(handle_unknown="ignore"), ["city"])],
                                          remainder="passthrough")),
            ("forest", RandomForestRegressor(25, max_depth=8, random_state=0))]).fit(frame, value),
    }


def without_batching(model_dir: Path) -> None:
    """A model Triton serves without batching (max_batch_size 0), which RandomForestClient refuses."""
    from dataclasses import replace

    from rf_triton import repository

    config_path = model_dir / repository.CONFIG_FILENAME
    config = repository.read_config(config_path)
    config.max_batch_size = 0
    config.ClearField("dynamic_batching")
    config.ClearField("model_warmup")
    for tensor in [*config.input, *config.output]:
        tensor.dims[:] = [-1, *tensor.dims]
    graph = repository.signature_of(config)
    unbatched = [replace(t, dims=(-1, *t.dims)) for t in graph.inputs], [replace(t, dims=(-1, *t.dims)) for t in graph.outputs]
    repository.set_signature(config, replace(graph, inputs=tuple(unbatched[0]), outputs=tuple(unbatched[1])))
    repository.write_config(config_path, config)


@pytest.fixture(scope="session")
def kinds(servers, tmp_path_factory):
    """(server, models, exports): each kind pickled, loaded back as a user would, exported, served by one server."""
    import joblib

    from rf_triton.export.triton_config import ServingOptions

    folder = tmp_path_factory.mktemp("kinds")
    repository = folder / "model_repository"
    models, exports = build_kinds(), {}
    for name, estimator in models.items():
        joblib.dump(estimator, folder / f"{name}.joblib")
        trained = sources.load_pickled(folder / f"{name}.joblib")
        options = (ServingOptions(max_queue_delay_us=5_000_000, preferred_batch_sizes=(4,))
                   if name == BATCHED_KIND else ServingOptions())
        exports[name] = export_model(trained, repository, name=name, options=options)
        if name == UNBATCHED_KIND:
            without_batching(repository / name)
    with servers.serving(repository, watch_interval_s=None) as server:
        yield server, models, exports
