"""Start and stop the real tritonserver from the nvidia-pytriton wheel on a model repository.

One class serves the CLI, the demo, the tests, the load tests and the benchmarks: it derives the
runtime repository, starts tritonserver in its own session with a parent-death signal, polls
readiness against a deadline (watching that the process is still alive), and stops it with
SIGINT → wait → SIGKILL of the whole process group (the Python-backend stubs included).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .. import CONTROL_KEY_HEADER
from . import runtime_repository, triton_binary

PR_SET_PDEATHSIG = 1


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


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def group_shm_regions(pgid: int) -> set[Path]:
    """The /dev/shm files mapped by processes of group `pgid` (the Python-backend stubs' regions)."""
    regions = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
            if int(fields[2]) != pgid:
                continue
            for line in (stat.parent / "maps").read_text().splitlines():
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
                    regions.add(Path(parts[5].removesuffix(" (deleted)")))
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    return regions


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedTriton:
    """The real Triton Inference Server serving `repository` on this machine."""

    def __init__(self, repository: Path | str, *, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, log_verbose: int = 0,
                 exit_timeout_s: int = 10, control_key: str | None = None, watch_interval_s: float | None = 1.0,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.repository = Path(repository).resolve()
        self.endpoints = Endpoints(host, http_port, grpc_port, metrics_port)
        self.log_verbose = log_verbose
        self.exit_timeout_s = exit_timeout_s
        self.control_key = control_key
        self.watch_interval_s = watch_interval_s
        self.extra_args = tuple(extra_args)
        self._watcher: threading.Thread | None = None
        self._stop_watching = threading.Event()
        self._sync_lock = threading.Lock()
        self.sync_error: str | None = None
        self.shm_regions: set[Path] = set()
        self.final_log_tail = ""
        self.process: subprocess.Popen | None = None
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
        install = triton_binary.locate()
        e = self.endpoints
        return [
            str(install.binary),
            f"--model-repository={runtime}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit", "--load-model=*",
            f"--http-address={e.host}", f"--http-port={e.http_port}",
            f"--grpc-address={e.host}", f"--grpc-port={e.grpc_port}",
            f"--metrics-address={e.host}", f"--metrics-port={e.metrics_port}",
            "--allow-gpu-metrics=false",
            "--disable-auto-complete-config",  # serve the derived config as written
            "--strict-readiness=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
            *self.restriction_args(),
            *self.extra_args,
        ]

    def restriction_args(self) -> list[str]:
        """Triton's own restriction flags: the repository API (load/unload/index) needs the key header."""
        if not self.control_key:
            return []
        rule = f"model-repository:{CONTROL_KEY_HEADER}={self.control_key}"
        return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]

    @property
    def control_headers(self) -> dict[str, str]:
        return {CONTROL_KEY_HEADER: self.control_key} if self.control_key else {}

    def start(self, *, ready_timeout_s: float = 120.0) -> "EmbeddedTriton":
        """Derive the runtime repository, launch tritonserver, and wait until every model is ready."""
        if self.process is not None:
            raise RuntimeError("server already started")
        install = triton_binary.locate()
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
            with open(self.log_path, "wb") as log:
                started = time.monotonic()
                self.process = subprocess.Popen(
                    self.command(backends, self.runtime.path), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=install.environment(), cwd=self.workdir,
                    start_new_session=True, preexec_fn=_die_with_parent,
                )
            self.wait_ready(ready_timeout_s)
            self.ready_after_s = time.monotonic() - started
            self.shm_regions = group_shm_regions(self.process.pid)
            if self.watch_interval_s:
                self._start_watching(derived_from)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://{self.endpoints.http}/v2/health/ready"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(f"tritonserver exited with code {code} before it was ready:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise ServerStartError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def sync_repository(self) -> runtime_repository.RuntimeRepository:
        """Mirror the canonical repository's changes (new versions, configs) into the runtime one.

        Triton reads them when a model is next loaded through its repository API
        (`rf-triton models load`), exactly as the stock container would read the canonical one.
        """
        with self._sync_lock:
            self.runtime = runtime_repository.sync(self.repository, self.runtime.path)
            return self.runtime

    def _start_watching(self, seen: tuple) -> None:
        self._stop_watching.clear()
        self._watcher = threading.Thread(target=self._watch, args=(seen,), name="rf-triton-repository-watch",
                                         daemon=True)
        self._watcher.start()

    def _watch(self, seen: tuple) -> None:
        while not self._stop_watching.wait(self.watch_interval_s):
            try:
                state = runtime_repository.canonical_state(self.repository)
                if state != seen:
                    self.sync_repository()
                    seen, self.sync_error = state, None
            except (OSError, runtime_repository.RepositoryError) as exc:
                self.sync_error = str(exc)  # keep serving what is there; retried on the next change

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None, *,
             timeout_s: float = 30.0) -> tuple[int, str]:
        """POST `body` to `path` on the HTTP endpoint; (status, text), an error answer included."""
        request = urllib.request.Request(f"http://{self.endpoints.http}{path}", data=body, method="POST",
                                         headers=headers or {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def model_index(self) -> list[dict]:
        """The repository index (name, version, state) as the server sees it."""
        status, text = self.post("/v2/repository/index", b"{}",
                                 {"Content-Type": "application/json", **self.control_headers}, timeout_s=5.0)
        if status != 200:
            raise OSError(f"repository index answered HTTP {status}: {text}")
        return json.loads(text)

    def model_stats(self, model: str) -> dict:
        """Triton's statistics of `model` (counts and cumulated times), as /v2/models/<model>/stats gives them."""
        with urllib.request.urlopen(f"http://{self.endpoints.http}/v2/models/{model}/stats", timeout=10) as response:
            (stats,) = json.loads(response.read())["model_stats"]
        return stats

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.is_file():
            return "(no server log)"
        with open(self.log_path, errors="replace") as log:
            return "".join(deque(log, maxlen=lines)).rstrip()

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGINT the server, wait, then SIGKILL its process group; remove the runtime folder. Returns the exit code."""
        code = None
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self.process is not None:
            code = self.process.poll()
            self.shm_regions |= group_shm_regions(self.process.pid)
            if code is None:
                code = self._signal_and_wait(timeout_s if timeout_s is not None else self.exit_timeout_s + 5)
            self._reap_group()
            self._remove_leftover_shm()
            self.process = None
        if code not in (0, None):
            self.final_log_tail = self.log_tail()  # the log goes with the work folder
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return code

    def _signal_and_wait(self, timeout_s: float) -> int:
        try:
            self.process.send_signal(signal.SIGINT)  # the server itself: it unloads models and stops its stubs
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()

    def _remove_leftover_shm(self) -> None:
        """Triton removes its stubs' shared memory on a clean exit; after a crash or kill, we do."""
        deadline = time.monotonic() + 5.0
        while group_shm_regions(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # killed stubs still exiting
        for region in self.shm_regions:
            region.unlink(missing_ok=True)

    def _reap_group(self) -> None:
        """Kill whatever is left in the server's process group (stubs outliving the server)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> "EmbeddedTriton":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
