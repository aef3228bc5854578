"""Faults under load, hot model updates and the locked control API, against the real embedded server.

Every load here is a few client threads on 127.0.0.1, bounded in time; every server is stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from rf_triton import CONTROL_KEY_ENV, CONTROL_KEY_HEADER, GRPC_CONTROL_KEY_HEADER
from rf_triton.cli import app
from rf_triton.client import ClientError, RandomForestClient, RetryPolicy
from rf_triton.client.models_cli import RepositoryClient
from rf_triton.export import sources
from rf_triton.export.pipeline import export_model
from rf_triton.serve.server import EmbeddedTriton, group_shm_regions

MODEL = "random_forest"


@dataclass
class LoadReport:
    answered: int = 0
    errors: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    attempted: int = 0
    retries: int = 0


class Load:
    """A few threads sending 1-row predictions until stopped; every request is accounted for."""

    def __init__(self, url: str, rows: np.ndarray, valid_answers: list[np.ndarray], *, protocol: str = "http",
                 threads: int = 4, retry: RetryPolicy = RetryPolicy(), max_s: float = 60.0,
                 rate_per_s: float | None = None) -> None:
        self.url, self.rows, self.valid, self.protocol = url, rows, valid_answers, protocol
        self.retry, self.max_s = retry, max_s
        self.interval_s = threads / rate_per_s if rate_per_s else 0.0  # per thread, to hold the total rate
        self.report = LoadReport()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)]

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a load thread hung"

    def wait_for(self, answered: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while self.report.answered < answered and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.report.answered >= answered, self.report

    def _run(self, offset: int) -> None:
        client = RandomForestClient(self.url, protocol=self.protocol, retry=self.retry, init_timeout_s=30)
        client.connect()
        deadline = time.monotonic() + self.max_s
        next_send = time.monotonic()
        i = offset
        try:
            while not self.stopping.is_set() and time.monotonic() < deadline:
                if self.interval_s:
                    next_send += self.interval_s
                    pause = next_send - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                index = i % len(self.rows)
                i += 1
                with self.lock:
                    self.report.attempted += 1
                try:
                    (value,) = client.predict(self.rows[index:index + 1])
                except ClientError as exc:
                    with self.lock:
                        self.report.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                ok = any(abs(value - answers[index]) <= 1e-4 * abs(answers[index]) + 1e-3 for answers in self.valid)
                with self.lock:
                    self.report.answered += 1
                    if not ok:
                        self.report.wrong.append(f"row {index}: {value}")
        finally:
            with self.lock:
                self.report.retries += client.retries
            client.close()


@pytest.fixture()
def own_repository(tmp_path, demo_repository) -> Path:
    repository = tmp_path / "model_repository"
    shutil.copytree(demo_repository, repository)
    return repository


@pytest.mark.integration
def test_sigkill_under_load_then_restart_loses_no_request(own_repository, server_factory, demo_model, capsys):
    server = server_factory(own_repository)
    rows = demo_model.X_val[:200]
    expected = demo_model.estimator.predict(rows)
    retry = RetryPolicy(attempts=10, backoff_s=0.05, max_backoff_s=0.5)
    for protocol in ("http", "grpc"):
        url = server.endpoints.http if protocol == "http" else server.endpoints.grpc
        with Load(url, rows, [expected], protocol=protocol, retry=retry) as load:
            load.wait_for(100)
            os.killpg(server.process.pid, signal.SIGKILL)
            server.stop()
            assert not [r for r in server.shm_regions if r.exists()], "shared memory left behind after a kill"
            killed_at = load.report.answered
            again = server_factory.restart(server)
            load.wait_for(killed_at + 100)
        report = load.report
        with capsys.disabled():
            print(f"\n[{protocol}] SIGKILL + restart under load: {report.attempted} requests, {report.answered} "
                  f"answered, {len(report.errors)} errors surfaced, {report.retries} retries, "
                  f"restart ready in {again.ready_after_s:.2f} s")
        assert report.wrong == []
        assert report.answered + len(report.errors) == report.attempted  # none lost silently
        assert report.answered > killed_at
        assert all("Unavailable" in e or "Busy" in e for e in report.errors), report.errors[:5]
        server = again


@pytest.mark.integration
def test_sigterm_under_load_finishes_in_flight_and_leaves_nothing(own_repository, demo_model, serve, capsys):
    """SIGTERM, then clients drain away (as behind a load balancer): answers keep coming while they
    do, Triton exits 0 once its connections close, and no process or shared memory is left behind.

    Triton 2.51 waits (up to its exit timeout) for open HTTP connections to close before it stops;
    clients that keep their connections busy past that make it exit 1 ("Exit timeout expired")."""
    server = serve(own_repository)
    server.wait_ready()
    children = server.descendants()
    regions = set().union(*(group_shm_regions(c.pid) for c in children if c.name() == "tritonserver"))
    rows = demo_model.X_val[:200]
    with Load(f"127.0.0.1:{server.ports['http']}", rows, [demo_model.estimator.predict(rows)],
              retry=RetryPolicy(attempts=1)) as load:
        load.wait_for(100)
        server.proc.send_signal(signal.SIGTERM)
        before_drain = load.report.answered
        load.wait_for(before_drain + 1, timeout_s=30)  # answers keep coming after the signal
        answered_while_draining = load.report.answered - before_drain
    started = time.monotonic()
    assert server.proc.wait(timeout=60) == 0, server.tail()
    with capsys.disabled():
        print(f"\nSIGTERM under load: {load.report.attempted} requests, {load.report.answered} answered "
              f"({answered_while_draining} after the signal), {len(load.report.errors)} refused; "
              f"clean exit {time.monotonic() - started:.1f} s after the clients left")
    assert load.report.wrong == []
    assert load.report.answered + len(load.report.errors) == load.report.attempted
    assert all("Unavailable" in e or "Busy" in e for e in load.report.errors), load.report.errors[:5]
    assert server.left_behind(children) == []
    assert regions and not [r for r in regions if r.exists()], "shared memory left in /dev/shm"


def wait_until(condition, timeout_s: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def runtime_versions(server: EmbeddedTriton) -> list[str]:
    return sorted(p.name for p in (server.runtime.path / MODEL).iterdir() if p.is_dir())


@pytest.mark.integration
def test_hot_update_and_rollback_with_zero_failed_requests(own_repository, server_factory, demo_model, capsys):
    server = server_factory(own_repository)
    rows = demo_model.X_val[:200]
    v1 = demo_model.estimator.predict(rows)
    newer = sources.train_demo(seed=1)
    v2 = newer.estimator.predict(rows)
    assert np.max(np.abs(v1 - v2)) > 1.0, "the two versions must be told apart"

    with Load(server.endpoints.http, rows, [v1, v2], retry=RetryPolicy(attempts=1)) as load, \
            RepositoryClient(server.endpoints.http) as repo:
        load.wait_for(50)
        export_model(newer, own_repository)  # version 2, written while serving
        wait_until(lambda: runtime_versions(server) == ["1", "2"], what="the new version to be mirrored")
        started = time.perf_counter()
        repo.load(MODEL)
        swap_s = time.perf_counter() - started
        assert [(e["version"], e["state"]) for e in repo.index() if e["state"] == "READY"] == [("2", "READY")]
        after_swap = load.report.answered
        load.wait_for(after_swap + 50)
        repo.load(MODEL, versions=[1])  # roll back without touching the files
        assert [e["version"] for e in repo.index() if e["state"] == "READY"] == ["1"]
        load.wait_for(load.report.answered + 50)
    report = load.report
    with capsys.disabled():
        print(f"\nhot update: {report.attempted} requests during update and rollback, {len(report.errors)} failed; "
              f"load of version 2 took {swap_s:.2f} s")
    assert report.errors == [] and report.wrong == []
    with RandomForestClient(server.endpoints.grpc, protocol="grpc") as client:
        np.testing.assert_allclose(client.predict(rows[:20]), v1[:20], rtol=1e-4)
    with RepositoryClient(server.endpoints.http) as repo:
        # Forward again. A plain load would keep the pin: Triton reloads from the repository only when
        # its files changed since the last load.
        repo.load(MODEL, versions=[2])
    with RandomForestClient(server.endpoints.http) as client:
        np.testing.assert_allclose(client.predict(rows[:20]), v2[:20], rtol=1e-4)


@pytest.mark.integration
def test_a_corrupt_new_version_does_not_take_down_the_serving_one(own_repository, server_factory, demo_model):
    server = server_factory(own_repository)
    broken = own_repository / MODEL / "2"
    staging = own_repository / MODEL / ".staging-broken"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"\x08\x07 truncated protobuf")
    staging.rename(broken)
    wait_until(lambda: runtime_versions(server) == ["1", "2"], what="the broken version to be mirrored")
    with RepositoryClient(server.endpoints.http) as repo:
        with pytest.raises(InferenceServerException, match="version 2"):
            repo.load(MODEL)
    rows = demo_model.X_val[:10]
    with RandomForestClient(server.endpoints.http) as client:
        np.testing.assert_allclose(client.predict(rows), demo_model.estimator.predict(rows), rtol=1e-4)
    assert server.is_running()


@pytest.mark.integration
def test_a_repository_that_cannot_be_mirrored_fails_the_next_load_with_the_reason(own_repository, server_factory,
                                                                                  demo_model):
    """The watcher survives a bad repository, says why, and `models load` fails instead of reloading a stale copy."""
    server = server_factory(own_repository, watch_interval_s=0.2)
    config = own_repository / MODEL / "config.pbtxt"
    good = config.read_bytes()
    config.write_bytes(b"\xff\xfe" + good)  # not UTF-8: what a bad copy or an editor's encoding leaves
    wait_until(lambda: server.sync_error is not None, what="the watcher to report the broken config")
    assert "config.pbtxt" in server.sync_error

    runner = CliRunner()
    refused = runner.invoke(app, ["models", "load", MODEL, "--url", server.endpoints.http])
    assert refused.exit_code == 1, refused.output
    assert "cannot be served" in refused.stderr and "config.pbtxt" in refused.stderr, refused.stderr
    rows = demo_model.X_val[:10]
    with RandomForestClient(server.endpoints.http) as client:  # the loaded version keeps serving
        np.testing.assert_allclose(client.predict(rows), demo_model.estimator.predict(rows), rtol=1e-4)

    config.write_bytes(good)
    wait_until(lambda: server.sync_error is None, what="the watcher to mirror the repaired repository")
    loaded = runner.invoke(app, ["models", "load", MODEL, "--url", server.endpoints.http])
    assert loaded.exit_code == 0 and "serving version(s) 1" in loaded.stdout, loaded.output
    with RandomForestClient(server.endpoints.http) as client:
        np.testing.assert_allclose(client.predict(rows), demo_model.estimator.predict(rows), rtol=1e-4)


@pytest.mark.integration
def test_control_api_needs_the_key_and_inference_does_not(own_repository, server_factory, demo_model, monkeypatch):
    server = server_factory(own_repository, control_key="s3cret")
    json_body = {"Content-Type": "application/json"}
    for path in ("/index", f"/models/{MODEL}/load", f"/models/{MODEL}/unload"):
        assert server.post(f"/v2/repository{path}", b"{}")[0] == 403, path
        assert server.post(f"/v2/repository{path}", b"{}", {**json_body, CONTROL_KEY_HEADER: "wrong"})[0] == 403, path
    assert server.post("/v2/repository/index", b"{}", {**json_body, CONTROL_KEY_HEADER: "s3cret"})[0] == 200

    grpc = grpcclient.InferenceServerClient(server.endpoints.grpc)
    try:
        for call in (lambda h: grpc.get_model_repository_index(headers=h), lambda h: grpc.load_model(MODEL, headers=h),
                     lambda h: grpc.unload_model(MODEL, headers=h)):
            with pytest.raises(InferenceServerException, match="restricted"):
                call(None)
        assert grpc.get_model_repository_index(headers={GRPC_CONTROL_KEY_HEADER: "s3cret"}).models
    finally:
        grpc.close()

    rows = demo_model.X_val[:5]
    for url, protocol in ((server.endpoints.http, "http"), (server.endpoints.grpc, "grpc")):
        with RandomForestClient(url, protocol=protocol) as client:  # no key: inference stays open
            np.testing.assert_allclose(client.predict(rows), demo_model.estimator.predict(rows), rtol=1e-4)

    runner = CliRunner()
    monkeypatch.delenv(CONTROL_KEY_ENV, raising=False)
    refused = runner.invoke(app, ["models", "list", "--url", server.endpoints.http])
    assert refused.exit_code == 1 and "restricted" in refused.stderr
    allowed = runner.invoke(app, ["models", "load", MODEL, "--url", server.endpoints.grpc, "--protocol", "grpc"],
                            env={CONTROL_KEY_ENV: "s3cret"})
    assert allowed.exit_code == 0, allowed.output
    assert "serving version(s) 1" in allowed.stdout


@pytest.mark.integration
def test_serve_binds_loopback_by_default(server_factory, own_repository):
    server = server_factory(own_repository)
    listening = {c.laddr.port: c.laddr.ip for c in psutil.Process(server.process.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    for port in (server.endpoints.http_port, server.endpoints.grpc_port, server.endpoints.metrics_port):
        assert listening[port] in ("127.0.0.1", "::ffff:127.0.0.1"), (port, listening)


@pytest.mark.integration
def test_models_cli_lists_and_unloads(own_repository, server_factory):
    server = server_factory(own_repository)
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list", "--url", server.endpoints.http], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "random_forest" in listed.stdout and "READY" in listed.stdout
    unloaded = runner.invoke(app, ["models", "unload", MODEL, "--url", server.endpoints.http])
    assert unloaded.exit_code == 0
    client = httpclient.InferenceServerClient(server.endpoints.http)
    try:
        wait_until(lambda: not client.is_model_ready(MODEL), what="the model to unload")
    finally:
        client.close()
    bad = runner.invoke(app, ["models", "load", MODEL, "--versions", "x", "--url", server.endpoints.http])
    assert bad.exit_code != 0 and "--versions" in bad.output


def server_rss_bytes(server: EmbeddedTriton) -> dict[str, int]:
    """Resident memory of tritonserver and each of its Python-backend stubs."""
    root = psutil.Process(server.process.pid)
    return {f"{p.name()}[{p.pid}]": p.memory_info().rss for p in [root, *root.children(recursive=True)]}


SOAK_SECONDS = float(os.environ.get("RF_TRITON_SOAK_SECONDS", "180"))


@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("RF_TRITON_SOAK") != "1",
                    reason="opt-in soak: RF_TRITON_SOAK=1 python -m pytest -m soak -s tests/test_reliability.py")
@pytest.mark.integration
def test_soak_at_70_percent_of_capacity(own_repository, server_factory, demo_model, capsys):
    """Minutes at ~70% of measured capacity: no failure, and memory flat after warm-up (< 5% growth)."""
    server = server_factory(own_repository)
    rows = demo_model.X_val[:400]
    valid = [demo_model.estimator.predict(rows)]
    with Load(server.endpoints.http, rows, valid, threads=8, retry=RetryPolicy(attempts=1)) as probe:
        time.sleep(5.0)
    capacity = probe.report.answered / 5.0
    target = 0.7 * capacity
    warm_up_s = min(30.0, SOAK_SECONDS / 4)
    with Load(server.endpoints.http, rows, valid, threads=8, retry=RetryPolicy(attempts=1),
              rate_per_s=target, max_s=SOAK_SECONDS + 30) as soak:
        time.sleep(warm_up_s)
        after_warm_up = server_rss_bytes(server)
        sent_at_warm_up = soak.report.attempted
        time.sleep(SOAK_SECONDS - warm_up_s)
        at_end = server_rss_bytes(server)
        sent = soak.report.attempted - sent_at_warm_up
    growth = {name: (at_end[name] - rss) / rss for name, rss in after_warm_up.items() if name in at_end}
    with capsys.disabled():
        print(f"\nsoak: capacity {capacity:.0f} req/s (8 client threads), target {target:.0f} req/s, "
              f"achieved {sent / (SOAK_SECONDS - warm_up_s):.0f} req/s over {SOAK_SECONDS - warm_up_s:.0f} s "
              f"after a {warm_up_s:.0f} s warm-up; {soak.report.attempted} requests, {len(soak.report.errors)} failed")
        for name in sorted(growth):
            print(f"  {name}: RSS {after_warm_up[name] / 2**20:.1f} MiB -> {at_end[name] / 2**20:.1f} MiB "
                  f"({growth[name] * 100:+.2f}%)")
    assert soak.report.errors == [] and soak.report.wrong == []
    assert set(at_end) == set(after_warm_up), "server processes changed during the soak"
    assert max(growth.values()) < 0.05, growth


@pytest.mark.integration
def test_one_broken_model_fails_alone_and_the_others_keep_loading(demo_repository, tmp_path, server_factory,
                                                                 demo_model):
    """As the stock container in explicit mode: `models load good` works while `broken` cannot be served,
    and the good model's runtime folder stays in place however often the broken one is re-checked."""
    from rf_triton.repository import read_config, write_config

    repository = tmp_path / "two_models"
    for name in ("good", "broken"):
        shutil.copytree(demo_repository / MODEL, repository / name, ignore=shutil.ignore_patterns(".*"))
        config = read_config(repository / name / "config.pbtxt")
        config.name = name
        write_config(repository / name / "config.pbtxt", config)
    server = server_factory(repository, watch_interval_s=0.2)
    good_runtime = server.runtime.path / "good"
    # folders and files as inodes: a removal, a re-creation or a replacement shows as a new one
    folders = {path: path.stat().st_ino for path in (good_runtime, good_runtime / "1", good_runtime / "config.pbtxt")}

    broken_config = repository / "broken" / "config.pbtxt"
    broken_config.write_bytes(b"\xff\xfe" + broken_config.read_bytes())  # not UTF-8
    wait_until(lambda: server.sync_error is not None and "broken" in server.sync_error,
               what="the watcher to report the broken model")
    assert "good" not in server.sync_error
    (repository / "broken" / "1" / "model.onnx").unlink()  # another reason: the watcher re-checks and says so
    shutil.rmtree(repository / "broken" / "1")
    broken_config.unlink()
    wait_until(lambda: "no config.pbtxt" in (server.sync_error or ""), what="the watcher to see the new reason")

    export_model(demo_model, repository, name="good")  # a new version of the good model is still mirrored
    wait_until(lambda: sorted(p.name for p in good_runtime.iterdir() if p.is_dir()) == ["1", "2"],
               what="version 2 of the good model to be mirrored")
    assert {path: path.stat().st_ino for path in folders} == folders, "the good model's runtime files were replaced"

    runner = CliRunner()
    loaded = runner.invoke(app, ["models", "load", "good", "--url", server.endpoints.http])
    assert loaded.exit_code == 0 and "serving version(s) 2" in loaded.stdout, loaded.output
    refused = runner.invoke(app, ["models", "load", "broken", "--url", server.endpoints.http])
    assert refused.exit_code == 1, refused.output
    assert "model broken cannot be served: no config.pbtxt in" in refused.stderr, refused.stderr
    rows = demo_model.X_val[:10]
    for name in ("good", "broken"):  # the broken model's loaded version keeps serving, as in the container
        with RandomForestClient(server.endpoints.http, model=name) as client:
            np.testing.assert_allclose(client.predict(rows), demo_model.estimator.predict(rows), rtol=1e-4)
