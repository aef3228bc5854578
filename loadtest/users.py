"""Abstract Locust users that send inference requests to a forest served by Triton.

`TritonUser` reads the model's description once per user, builds one payload per user (so the
measured time is the server and the wire, not numpy), one tensor per input in the datatype the
model's config declares (FP32, FP64 or BYTES), and reports every request to Locust's statistics. `BaseTritonHttpUser` and `BaseTritonGrpcUser` add the two tritonclient transports;
a locustfile subclasses them and adds a `@task` that calls `send_inference()`.

Options (Locust custom arguments, registered here so any locustfile importing this module gets
them): --model, --rows-per-request, --grpc-host, --payload-csv. The HTTP address is Locust's
--host; the gRPC address is --grpc-host.
"""

from __future__ import annotations

import argparse
import random
import time
import weakref

import gevent
import grpc.experimental.gevent
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from locust import User, events
from locust.exception import StopTest

from rf_triton.client.ab import normalised, parse_variant, parse_weights
from rf_triton.client.client import RandomForestClient, split_url

from .payload import random_tensors, sample_csv_tensors

# grpc must learn to yield to gevent (Locust has monkey-patched the standard library on import)
# before any channel exists, or one blocking call freezes every user in the process.
grpc.experimental.gevent.init_gevent()

DEFAULT_MODEL = "random_forest"
DEFAULT_HTTP_HOST = "http://127.0.0.1:8000"
DEFAULT_GRPC_HOST = "127.0.0.1:8001"

_runners_stopping: "weakref.WeakSet" = weakref.WeakSet()  # one stop per run, however many users fail


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@events.init.add_listener
def _fresh_loop_clock(environment, **kwargs) -> None:
    """gevent's loop reads the clock once per iteration, and it has not iterated since gevent was imported:
    without this, the seconds spent importing the locustfile (tritonclient, pandas...) count against
    --run-time, and on a loaded machine a short run ends before its users send anything."""
    gevent.get_hub().loop.update_now()


@events.init_command_line_parser.add_listener
def add_triton_arguments(parser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Triton model to load-test")
    parser.add_argument("--rows-per-request", type=positive_int, default=1,
                        help="rows in each inference request (at most the model's max_batch_size)")
    parser.add_argument("--grpc-host", default=DEFAULT_GRPC_HOST,
                        help="host:port of Triton's gRPC endpoint (the HTTP one is --host)")
    parser.add_argument("--ab", default="",
                        help="A/B split between versions or models, e.g. random_forest:1=0.9,random_forest:2=0.1; "
                             "each request goes to one variant drawn by weight, reported under its own name")
    parser.add_argument("--payload-csv", default="",
                        help="CSV to draw request rows from (feature columns by name, or exactly the "
                             "model's feature count); random rows when empty")


class SetupError(RuntimeError):
    """The user cannot start: the server, the model or an option is wrong."""


class TritonUser(User):
    """Common machinery: options, model description, payload, timing and reporting of each request."""

    abstract = True
    request_type = ""  # "HTTP" or "gRPC": the Type column of Locust's statistics
    protocol = ""  # "http" or "grpc": what RandomForestClient calls it
    network_timeout_s = 30.0
    model_ready_timeout_s = 10.0

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.model = self._option("model", DEFAULT_MODEL)
        self.rows_per_request = int(self._option("rows_per_request", 1))
        self.payload_csv = self._option("payload_csv", "")
        self.request_name = f"infer {self.model} x{self.rows_per_request}"
        self.ab = self._option("ab", "")
        self.variants: list[tuple[str, str, str, float]] = []  # (name, model, version, cumulative share)
        self._random = random.Random()
        self.client = None
        self.output_name = ""
        self.datatypes: dict[str, str] = {}  # input name → Triton datatype
        self.payload: dict[str, np.ndarray] = {}
        self._inputs: list = []  # tritonclient tensors built once from the payload, reused by every request
        self._outputs: list = []

    def _option(self, name: str, default):
        options = self.environment.parsed_options
        value = getattr(options, name, None) if options is not None else None
        return default if value in (None, "") else value

    def server_url(self) -> str:
        raise NotImplementedError

    def open_client(self):
        """A tritonclient client for the hot path, owned by this user alone."""
        raise NotImplementedError

    def infer_payload(self, model: str, version: str = ""):
        """Send the prepared payload once to `model` (and `version`); return the tritonclient result."""
        raise NotImplementedError

    def on_start(self) -> None:
        started = time.perf_counter()
        try:
            self._prepare()
        except Exception as exc:
            # A failure row in the statistics makes Locust exit non-zero and says why in the report.
            self._report(f"start {self.model}", _elapsed_ms(started), 0, exc)
            self._stop_the_run()
            raise StopTest(f"{self.request_type} user cannot start: {exc}") from exc

    def _prepare(self) -> None:
        """Describe the model, build this user's payload, and open the client the requests will use."""
        if self.ab:
            self.variants = _variants(self.ab)
            self.model = self.variants[0][1]  # every variant takes the same input: describe the first
        with RandomForestClient(self.server_url(), protocol=self.protocol, model=self.model,
                                timeout_s=self.network_timeout_s, init_timeout_s=self.model_ready_timeout_s) as model:
            signature, max_batch_size = model.signature, model.max_batch_size
            self.output_name = model.output_name
        if self.rows_per_request > max_batch_size:
            raise SetupError(f"--rows-per-request {self.rows_per_request} exceeds model {self.model!r}'s "
                             f"max_batch_size {max_batch_size}; Triton would refuse every request")
        rng = np.random.default_rng()
        self.datatypes = {t.name: t.datatype for t in signature.inputs}
        if self.payload_csv:
            self.payload = sample_csv_tensors(self.payload_csv, self.rows_per_request, signature, rng)
        else:
            self.payload = random_tensors(signature, self.rows_per_request, rng)
        self.client = self.open_client()

    def _stop_the_run(self) -> None:
        """End the run as Locust does for a StopTest raised in a task (User.run swallows one from on_start):
        a misconfigured run should not idle until --run-time."""
        runner = self.environment.runner
        if runner is None or runner in _runners_stopping:
            return
        _runners_stopping.add(runner)
        headless = bool(getattr(self.environment.parsed_options, "headless", False))
        gevent.spawn(runner.quit if headless else runner.stop)

    def on_stop(self) -> None:
        # An open tritonclient gRPC client keeps a headless run from exiting after its summary.
        if self.client is not None:
            self.client.close()
            self.client = None

    def _target(self) -> tuple[str, str, str]:
        """(request name, model, version): this user's model, or an A/B variant drawn by weight."""
        if not self.variants:
            return self.request_name, self.model, ""
        draw = self._random.random()
        name, model, version, _ = next((v for v in self.variants if draw < v[3]), self.variants[-1])
        return f"infer {name} x{self.rows_per_request}", model, version

    def send_inference(self) -> None:
        """One timed request with this user's payload, reported to Locust (response_length = rows returned).

        The time covers the round trip only; checking the answer afterwards is not charged to the server."""
        name, model, version = self._target()
        started = time.perf_counter()
        try:
            result = self.infer_payload(model, version)
        except Exception as exc:
            self._report(name, _elapsed_ms(started), 0, exc)
            return
        elapsed_ms = _elapsed_ms(started)
        predictions = result.as_numpy(self.output_name)
        if predictions is None or len(predictions) != self.rows_per_request:
            got = "no output" if predictions is None else f"{len(predictions)} rows"
            error = ValueError(f"expected {self.rows_per_request} predictions in {self.output_name!r}, got {got}")
            self._report(name, elapsed_ms, 0, error)
        else:
            self._report(name, elapsed_ms, len(predictions), None)

    def _report(self, name: str, response_time_ms: float, response_length: int, exception: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type=self.request_type, name=name, response_time=response_time_ms,
            response_length=response_length, exception=exception, context={},
        )


def _variants(text: str) -> list[tuple[str, str, str, float]]:
    """'--ab' text → [(variant, model, version, cumulative share)], checked as ABRouter checks them."""
    variants, cumulative = [], 0.0
    for variant, share in normalised(parse_weights(text)).items():
        cumulative += share
        variants.append((variant, *parse_variant(variant), cumulative))
    return variants


def _tensors(proto, payload: dict[str, np.ndarray], datatypes: dict[str, str], **binary) -> list:
    """tritonclient's input tensors for the payload, each in its input's datatype."""
    tensors = []
    for name, values in payload.items():
        tensor = proto.InferInput(name, list(values.shape), datatypes[name])
        tensor.set_data_from_numpy(values, **binary)
        tensors.append(tensor)
    return tensors


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


class BaseTritonHttpUser(TritonUser):
    """Triton's HTTP/REST endpoint through tritonclient.http (geventhttpclient: gevent-native)."""

    abstract = True
    request_type = "HTTP"
    protocol = "http"
    host = DEFAULT_HTTP_HOST

    def server_url(self) -> str:
        return self.host

    def open_client(self):
        address, ssl = split_url(self.host, "http")
        client = httpclient.InferenceServerClient(address, ssl=ssl, concurrency=1,
                                                  connection_timeout=self.network_timeout_s,
                                                  network_timeout=self.network_timeout_s)
        self._inputs = _tensors(httpclient, self.payload, self.datatypes, binary_data=True)
        self._outputs = [httpclient.InferRequestedOutput(self.output_name, binary_data=True)]
        return client

    def infer_payload(self, model: str, version: str = ""):
        return self.client.infer(model, self._inputs, model_version=version, outputs=self._outputs)


class BaseTritonGrpcUser(TritonUser):
    """Triton's gRPC endpoint through tritonclient.grpc, made cooperative by init_gevent above."""

    abstract = True
    request_type = "gRPC"
    protocol = "grpc"

    def server_url(self) -> str:
        return self._option("grpc_host", DEFAULT_GRPC_HOST)

    def open_client(self):
        address, ssl = split_url(self.server_url(), "grpc")
        client = grpcclient.InferenceServerClient(address, ssl=ssl)
        self._inputs = _tensors(grpcclient, self.payload, self.datatypes)
        self._outputs = [grpcclient.InferRequestedOutput(self.output_name)]
        return client

    def infer_payload(self, model: str, version: str = ""):
        return self.client.infer(model, self._inputs, model_version=version, outputs=self._outputs,
                                 client_timeout=self.network_timeout_s)
