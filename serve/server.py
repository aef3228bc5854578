"""Start and stop the real tritonserver from the nvidia-pytriton wheel on a model repository.

One class serves the CLI, the demo, the tests, the load tests and the benchmarks: it derives the
runtime repository, starts tritonserver as a supervised process group (rf_triton.processes: own
session, ended if we die), polls readiness against a deadline (watching that the process is still
alive), and stops it with SIGINT → wait → SIGKILL of the whole group (the Python-backend stubs included).
A watcher thread mirrors changes of the canonical repository model by model; a model it cannot
mirror (broken, as the repository rules say) fails its next load with the reason instead of
reloading a stale copy, while every other model loads as usual, as in the stock container. It says
why in the log and in `sync_error`.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .. import CONTROL_KEY_HEADER, processes
from ..errors import first_line
from . import runtime_repository, triton_binary

log = logging.getLogger(__name__)

class RuntimeRepositoryIncomplete(RuntimeError):
    """Some models of the canonical repository could not be mirrored; the others were."""


class ServerStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message carries its last log lines."""


@dataclass(frozen=True)
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports (held together while chosen, so none is handed out twice)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ipv4_address(host: str) -> str:
    """The IPv4 address tritonserver is given for `host` (a name is resolved here): its HTTP and metrics
    endpoints (2.51) bind IPv4 addresses only. ServerStartError when there is none."""
    if ":" in host:
        raise ServerStartError(f"host {host} is an IPv6 address; the embedded tritonserver serves HTTP and metrics "
                               "on IPv4 only: give an IPv4 address (127.0.0.1, or 0.0.0.0 for every interface)")
    try:
        return socket.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)[0][4][0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ServerStartError(f"cannot resolve host {host!r} to an IPv4 address: {exc.strerror or exc}") from None


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether another process holds `port` on `host`; an address this machine cannot bind is an error."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ipv4_address(host), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise ServerStartError(f"cannot bind port {port} on {host}: {exc.strerror}") from None
    return False


def group_shm_regions(pgid: int) -> set[Path]:
    """The /dev/shm files mapped by processes of group `pgid` (the Python-backend stubs' regions)."""
    regions = set()
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) != pgid:
                continue
            for mapping in process.memory_maps(grouped=True):
                if mapping.path.startswith("/dev/shm/"):
                    regions.add(Path(mapping.path.removesuffix(" (deleted)")))
        except (psutil.Error, OSError):
            continue  # the process ended while we looked, or is not ours to read
    return regions


def _arguments(config) -> list[str]:
    """`--key=value` per option set, one list item each (paths may hold spaces, so no string split)."""
    arguments = []
    for key, value in config.server_args().items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None:
                arguments.append(f"--{key}={item}")
    return arguments


class EmbeddedTriton:
    """The real Triton Inference Server serving `repository` on this machine."""

    def __init__(self, repository: Path | str, *, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, log_verbose: int = 0,
                 exit_timeout_s: int = 10, control_key: str | None = None, watch_interval_s: float | None = 1.0,
                 extra_args: tuple[str, ...] = (), cache_size: int = 0) -> None:
        self.repository = Path(repository).resolve()
        self.endpoints = Endpoints(host, http_port, grpc_port, metrics_port)
        self.log_verbose = log_verbose
        self.exit_timeout_s = exit_timeout_s
        self.control_key = control_key
        self.watch_interval_s = watch_interval_s
        self.extra_args = tuple(extra_args)
        self.cache_size = cache_size  # bytes of Triton's local response cache; 0: no cache
        self._watcher: threading.Thread | None = None
        self._stop_watching = threading.Event()
        self._sync_lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._stop_requested = threading.Event()
        self.sync_error: str | None = None
        self.shm_regions: set[Path] = set()
        self.final_log_tail = ""
        self.exit_code: int | None = None
        self.group: processes.ProcessGroup | None = None
        self.workdir: Path | None = None
        self.runtime: runtime_repository.RuntimeRepository | None = None
        self.ready_after_s: float | None = None

    @classmethod
    def on_free_ports(cls, repository: Path | str, **kwargs) -> "EmbeddedTriton":
        """A server on three distinct free ports of 127.0.0.1: for tests, demos, benchmarks."""
        http_port, grpc_port, metrics_port = free_ports(3)
        return cls(repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, **kwargs)

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "tritonserver.log" if self.workdir else None

    def command(self, backends: Path, runtime: Path) -> list[str]:
        """tritonserver's argv, its options set through pytriton's TritonServerConfig (which knows
        Triton's option names and refuses others)."""
        from pytriton.server.triton_server_config import TritonServerConfig

        install = triton_binary.locate()
        e = self.endpoints
        config = TritonServerConfig()
        config.update_config({
            "model-repository": str(runtime), "backend-directory": str(backends),
            "model-control-mode": "explicit", "load-model": "*",
            "http-address": e.host, "http-port": e.http_port,
            "grpc-address": e.host, "grpc-port": e.grpc_port,
            "metrics-address": e.host, "metrics-port": e.metrics_port,
            "allow-gpu-metrics": "false",
            "strict-readiness": "true",
            "exit-timeout-secs": self.exit_timeout_s,
            "log-verbose": self.log_verbose,
        })
        # a flag without a value, which TritonServerConfig cannot write: serve the derived config as written
        flags = ["--disable-auto-complete-config"]
        return [str(install.binary), *_arguments(config), *flags, *self.restriction_args(),
                *self.cache_args(install), *self.extra_args]

    def cache_args(self, install: triton_binary.TritonInstall) -> list[str]:
        """Triton's local response cache, for the models whose config enables response_cache."""
        if not self.cache_size:
            return []
        return [f"--cache-directory={install.root / 'caches'}", f"--cache-config=local,size={self.cache_size}"]

    def restriction_args(self) -> list[str]:
        """Triton's own restriction flags: the repository API (load/unload/index) needs the key header."""
        if not self.control_key:
            return []
        rule = f"model-repository:{CONTROL_KEY_HEADER}={self.control_key}"
        return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]

    @property
    def control_headers(self) -> dict[str, str]:
        return {CONTROL_KEY_HEADER: self.control_key} if self.control_key else {}

    @property
    def process(self) -> subprocess.Popen | None:
        return self.group.process if self.group is not None else None

    def start(self, *, ready_timeout_s: float = 120.0) -> "EmbeddedTriton":
        """Derive the runtime repository, launch tritonserver, and wait until every model is ready.

        `request_stop()` (from a signal handler, another thread) ends the wait with ServerStartError."""
        if self.group is not None:
            raise RuntimeError("server already started")
        install = triton_binary.locate()
        self.endpoints = replace(self.endpoints, host=ipv4_address(self.endpoints.host))
        busy = [p for p in (self.endpoints.http_port, self.endpoints.grpc_port, self.endpoints.metrics_port)
                if port_in_use(p, self.endpoints.host)]
        if busy:
            raise ServerStartError(f"port(s) {', '.join(map(str, busy))} already in use on {self.endpoints.host}; "
                                   "choose others with --http-port/--grpc-port/--metrics-port")
        self.workdir = Path(tempfile.mkdtemp(prefix="rf-triton-serve-"))
        try:
            derived_from = runtime_repository.canonical_state(self.repository)  # changes after this get mirrored
            self.runtime = runtime_repository.derive(self.repository, self.workdir / "models")
            backends = install.prepare_backends(self.workdir / "backends")
            with open(self.log_path, "wb") as server_log:
                started = time.monotonic()
                self.group = processes.start(
                    self.command(backends, self.runtime.path), stdout=server_log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=install.environment(), cwd=self.workdir,
                    grace_s=self.exit_timeout_s + 5,
                )
            log.info("tritonserver (pid %d) starting on %s, log %s", self.group.pid, self.repository, self.log_path)
            self.wait_ready(ready_timeout_s)
            self.ready_after_s = time.monotonic() - started
            log.info("tritonserver ready after %.1f s: HTTP %s, gRPC %s, metrics %s", self.ready_after_s,
                     self.endpoints.http, self.endpoints.grpc, self.endpoints.metrics)
            self.shm_regions = group_shm_regions(self.group.pid)
            if self.watch_interval_s:
                self._start_watching(derived_from)
        except BaseException:
            self.stop()
            raise
        return self

    def client(self, timeout_s: float = 10.0) -> httpclient.InferenceServerClient:
        """A tritonclient HTTP client of this server (the caller closes it)."""
        return httpclient.InferenceServerClient(self.endpoints.http, connection_timeout=timeout_s,
                                                network_timeout=timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        client = self.client(timeout_s=1.0)
        try:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    raise ServerStartError(f"tritonserver exited with code {code} before it was ready:\n{self.log_tail()}")
                try:
                    if client.is_server_ready():
                        return
                except (InferenceServerException, OSError):
                    pass
                if self._stop_requested.wait(0.1):
                    raise ServerStartError("stop requested before tritonserver was ready")
        finally:
            client.close()
        raise ServerStartError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def request_stop(self) -> None:
        """Ask the owner's loop to stop the server (safe from a signal handler: it only sets an event)."""
        self._stop_requested.set()

    def wait_stop_requested(self, timeout_s: float) -> bool:
        return self._stop_requested.wait(timeout_s)

    def sync_repository(self) -> runtime_repository.RuntimeRepository:
        """Mirror the canonical repository's changes (new versions, configs) into the runtime one.

        Triton reads them when a model is next loaded through its repository API
        (`rf-triton models load`), exactly as the stock container would read the canonical one.
        A model that cannot be served is replaced by a stand-in whose load fails with the reason
        (its served versions stay in memory); the others are mirrored as usual. Raises
        RuntimeRepositoryIncomplete when some model could not be mirrored, after mirroring the rest.
        """
        with self._sync_lock:
            self.runtime = runtime_repository.sync(self.repository, self.runtime.path)
            if self.runtime.broken or self.runtime.pending:
                raise RuntimeRepositoryIncomplete(
                    "; ".join([*self.runtime.broken.values(),
                               *(f"model {name} cannot be mirrored yet: still being published" for name in self.runtime.pending)]))
            return self.runtime

    def _start_watching(self, seen: tuple) -> None:
        self._stop_watching.clear()
        self._watcher = threading.Thread(target=self._watch, args=(seen,), name="rf-triton-repository-watch",
                                         daemon=True)
        self._watcher.start()

    def _watch(self, seen: tuple) -> None:
        """Mirror each change; on failure, say why once and retry on every tick until a sync succeeds."""
        while not self._stop_watching.wait(self.watch_interval_s):
            try:
                state = runtime_repository.canonical_state(self.repository)
                if state == seen:
                    continue
                runtime = self.sync_repository()
            except Exception as exc:  # anything: the thread must outlive a bad repository
                error = f"{type(exc).__name__}: {first_line(exc)}"
                if error != self.sync_error:
                    log.warning("cannot mirror all of %s into the runtime repository (what it names cannot be "
                                "loaded until fixed; the other models can): %s", self.repository, error)
                self.sync_error = error
                continue
            if self.sync_error is not None:
                log.warning("repository %s mirrored again", self.repository)
            else:
                log.info("repository %s changed: mirrored %s", self.repository,
                         ", ".join(f"{name} {versions}" for name, versions in runtime.models.items()))
            seen, self.sync_error = state, None

    def is_running(self) -> bool:
        return self.group is not None and self.group.poll() is None

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None, *,
             timeout_s: float = 30.0) -> tuple[int, str]:
        """POST raw `body` to `path` on the HTTP endpoint; (status, text), an error answer included.

        For requests tritonclient would refuse to build (malformed bodies, wrong headers): the
        bad-request and control-key tests send exactly what a careless client would."""
        request = urllib.request.Request(f"http://{self.endpoints.http}{path}", data=body, method="POST",
                                         headers=headers or {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def model_index(self) -> list[dict]:
        """The repository index (name, version, state) as the server sees it."""
        client = self.client(timeout_s=5.0)
        try:
            return client.get_model_repository_index(headers=self.control_headers)
        except InferenceServerException as exc:
            raise OSError(f"repository index refused: {exc.message()}") from None
        finally:
            client.close()

    def model_stats(self, model: str) -> dict:
        """Triton's statistics of `model` (counts and cumulated times), as /v2/models/<model>/stats gives them."""
        client = self.client()
        try:
            (stats,) = client.get_inference_statistics(model)["model_stats"]
        finally:
            client.close()
        return stats

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.is_file():
            return "(no server log)"
        with open(self.log_path, errors="replace") as log:
            return "".join(deque(log, maxlen=lines)).rstrip()

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGINT the server, wait, then SIGKILL its process group; remove its shm and work folder.

        Returns the exit code. Idempotent: a second call (a second Ctrl-C, a context exit after an
        explicit stop) returns the same code; each cleanup step runs even if an earlier one failed.
        """
        with self._stop_lock:
            if self.group is None and self.workdir is None:
                return self.exit_code
            try:
                self._stop_watching.set()
                if self._watcher is not None:
                    self._watcher.join()
                    self._watcher = None
            finally:
                try:
                    if self.group is not None:
                        self.shm_regions |= group_shm_regions(self.group.pid)
                        # SIGINT to the server itself: it unloads models and stops its stubs, then the group goes.
                        self.exit_code = self.group.stop(timeout_s if timeout_s is not None else self.exit_timeout_s + 5)
                        log.info("tritonserver (pid %d) exited with code %s", self.group.pid, self.exit_code)
                finally:
                    try:
                        if self.group is not None:
                            self._remove_leftover_shm(self.group.pid)
                    finally:
                        self.group = None
                        if self.exit_code not in (0, None):
                            self.final_log_tail = self.log_tail()  # the log goes with the work folder
                        if self.workdir is not None:
                            shutil.rmtree(self.workdir, ignore_errors=True)
                            self.workdir = None
                        log.info("stopped; work folder and shared memory removed")
            return self.exit_code

    def _remove_leftover_shm(self, pgid: int) -> None:
        """Triton removes its stubs' shared memory on a clean exit; after a crash or kill, we do."""
        deadline = time.monotonic() + 5.0
        while group_shm_regions(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)  # killed stubs still exiting
        for region in self.shm_regions:
            region.unlink(missing_ok=True)

    def __enter__(self) -> "EmbeddedTriton":
        return self.start() if self.group is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
