"""RandomForestClient: predictions from a forest served by Triton, over HTTP or gRPC.

The client reads the model's metadata and config once (input/output names and datatypes, feature
count and names, max_batch_size), checks inputs before sending them, sends each input in the
datatype the config declares for it (FP32, FP64 or BYTES), and splits inputs larger than
max_batch_size into several requests. It speaks to the embedded server and to the stock
container alike.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import tenacity
from tritonclient.utils import InferenceServerException

from .. import signature
from ..signature import Prediction

PROTOCOLS = ("http", "grpc")
FP32_MAX = float(np.finfo(np.float32).max)


class ClientError(Exception):
    """Base class of everything this client raises."""


class InputError(ClientError, ValueError):
    """The input cannot be sent as it is; the message says what to change."""


class InferenceError(ClientError):
    """The server refused or failed a request; `status` is Triton's status (HTTP code or gRPC code)."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerUnavailableError(ClientError, ConnectionError):
    """The server or the model could not be reached or is not ready."""


class ServerBusyError(InferenceError):
    """Triton refused the request for now (queue full, server stopping): retrying later may succeed."""


# Triton answers UNAVAILABLE (HTTP 503) when a queue is full or the server is shutting down.
RETRYABLE_STATUSES = {"503", "StatusCode.UNAVAILABLE"}
# Triton's words for the overload refusals of a bounded queue and of a queueing timeout.
BUSY_MESSAGES = ("Exceeds maximum queue size", "Request timeout expired")


# gRPC's own retries (its service config) can make at most this many attempts of one call.
GRPC_MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class RetryPolicy:
    """How often to resend a request that failed for a transient reason, with exponential backoff.

    Predictions are pure functions of their input, so resending one is always safe (idempotent).
    Only unreachable servers, dropped connections and UNAVAILABLE answers are retried; a refusal
    of the request itself (4xx, INVALID_ARGUMENT) never is. `patience_s` bounds the whole of it,
    the time spent in the requests included: no retry starts once that much time has passed since
    the first attempt, however many attempts are left.
    """

    attempts: int = 3
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    patience_s: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("RetryPolicy needs attempts >= 1 and non-negative backoffs")
        if self.patience_s is not None and self.patience_s < 0:
            raise ValueError("RetryPolicy needs a non-negative patience_s")

    @classmethod
    def for_restarts(cls, patience_s: float) -> "RetryPolicy":
        """Retries that outlast a server restart: backoff up to 2 s, for patience_s in all."""
        return cls(attempts=1_000_000, backoff_s=0.1, max_backoff_s=2.0, patience_s=patience_s)

    def stop(self):
        """tenacity's stop condition: out of attempts, or out of time."""
        stop = tenacity.stop_after_attempt(self.attempts)
        if self.patience_s is not None:
            stop = stop | tenacity.stop_after_delay(self.patience_s)
        return stop

    def wait(self):
        return tenacity.wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)

    def grpc_service_config(self) -> str:
        """The same backoff as gRPC's service config: the channel resends UNAVAILABLE calls itself."""
        attempts = min(self.attempts, GRPC_MAX_ATTEMPTS)
        policy = {"maxAttempts": attempts, "initialBackoff": f"{max(self.backoff_s, 0.001):.3f}s",
                  "maxBackoff": f"{max(self.max_backoff_s, 0.001):.3f}s", "backoffMultiplier": 2,
                  "retryableStatusCodes": ["UNAVAILABLE"]}
        return json.dumps({"methodConfig": [{"name": [{"service": "inference.GRPCInferenceService"}],
                                             **({"retryPolicy": policy} if attempts > 1 else {})}]})


NO_RETRY = RetryPolicy(attempts=1)


def split_url(url: str, protocol: str) -> tuple[str, bool]:
    """'https://host:8000' → ('host:8000', ssl=True); a bare 'host:port' is accepted as is."""
    if "://" not in url:
        return url.rstrip("/"), False
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "grpc", "grpcs"):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {url!r}")
    if parts.scheme.startswith("grpc") and protocol != "grpc" or parts.scheme.startswith("http") and protocol != "http":
        raise ValueError(f"URL {url!r} does not match protocol {protocol!r}")
    return parts.netloc, parts.scheme in ("https", "grpcs")


class RandomForestClient:
    """Context manager over a tritonclient connection to one model (and optionally one version)."""

    def __init__(self, url: str = "127.0.0.1:8000", *, protocol: str = "http", model: str = "random_forest",
                 version: str | int = "", timeout_s: float = 30.0, init_timeout_s: float = 30.0,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self.url, self.ssl = split_url(url, protocol)
        self.protocol = protocol
        self.model = model
        self.version = str(version) if version not in (None, "") else ""
        self.timeout_s = timeout_s
        self.init_timeout_s = init_timeout_s
        self.retry = retry
        self.retries = 0  # requests resent under the retry policy, over this client's life
        self._client: Any = None
        self.input_name = ""
        self.output_name = ""
        self.n_features = 0
        self.max_batch_size = 0
        self.feature_names: list[str] | None = None
        self.signature: signature.Signature | None = None

    # -- connection -----------------------------------------------------------------------------

    def __enter__(self) -> "RandomForestClient":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> "RandomForestClient":
        """Open the connection, wait up to init_timeout_s for the model, and read its description.

        On any failure the connection is closed again: `with RandomForestClient(...)` never leaks one."""
        if self._client is None:
            self._client = self._new_client()
        try:
            deadline = time.monotonic() + self.init_timeout_s
            while not self.is_ready():
                if time.monotonic() >= deadline:
                    version = f" version {self.version}" if self.version else ""
                    raise ServerUnavailableError(f"model {self.model!r}{version} not ready at {self.url} "
                                                 f"({self.protocol}) after {self.init_timeout_s:g} s")
                time.sleep(0.2)
            self._describe()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def is_ready(self) -> bool:
        """True when the model (version) is ready; False while the server or the model is still coming up.

        A server that is ready but does not know the model (a mistyped name or version) raises
        InferenceError at once with the server's reason: waiting cannot make it appear."""
        if self._client is None:
            return False
        try:
            if self._call("is_model_ready", self.model, self.version):
                return True
            server_ready = self._call("is_server_ready")
        except ServerUnavailableError:  # refused connection, DNS, a server still starting
            return False
        if server_ready:  # strict readiness: every model the server knows is loaded, so this one is not known
            try:
                self._call("get_model_metadata", self.model, self.version)
            except ServerUnavailableError:
                return False
            except InferenceError as exc:
                raise InferenceError(f"model {self.model!r}{f' version {self.version}' if self.version else ''} "
                                     f"is not served at {self.url}: {str(exc).split(': ', 1)[-1]}", exc.status) from None
        return False

    def _new_client(self):
        if self.protocol == "http":
            import tritonclient.http as httpclient

            return httpclient.InferenceServerClient(self.url, ssl=self.ssl, connection_timeout=self.timeout_s,
                                                    network_timeout=self.timeout_s)
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url, ssl=self.ssl, channel_args=self._grpc_channel_args())

    def _grpc_channel_args(self) -> list[tuple[str, Any]]:
        """tritonclient's own channel arguments, plus gRPC's retries of UNAVAILABLE calls (service config)."""
        from tritonclient.grpc import KeepAliveOptions
        from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE

        keepalive = KeepAliveOptions()
        return [("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
                ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
                ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
                ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
                ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
                ("grpc.enable_retries", 1),
                ("grpc.service_config", self.retry.grpc_service_config())]

    def _call(self, method: str, *args, **kwargs):
        if self.protocol == "grpc":  # every gRPC call has a deadline (tritonclient's default is none)
            kwargs.setdefault("client_timeout", self.timeout_s)
            if method.startswith("get_"):
                kwargs["as_json"] = True
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except InferenceServerException as exc:
            status, message = str(exc.status()), exc.message() or ""
            refused_for_now = any(marker in message for marker in BUSY_MESSAGES)
            if status == "StatusCode.DEADLINE_EXCEEDED":  # no answer in time, as an HTTP read timeout
                raise ServerUnavailableError(f"{method} for model {self.model!r} at {self.url}: no answer within "
                                             f"{self.timeout_s:g} s") from None
            if status in RETRYABLE_STATUSES and self.protocol == "grpc" and not refused_for_now:
                # gRPC says UNAVAILABLE for a server it cannot reach, too
                raise ServerUnavailableError(f"{method} for model {self.model!r} at {self.url}: {message}") from None
            error = ServerBusyError if status in RETRYABLE_STATUSES else InferenceError
            raise error(f"{method} for model {self.model!r}: {message}", status) from None
        except (OSError, http.client.HTTPException) as exc:  # refused/reset/closed connection (HTTP); gRPC: UNAVAILABLE
            raise ServerUnavailableError(f"{method} for model {self.model!r} at {self.url}: {exc}") from None

    def _call_with_retry(self, method: str, *args, **kwargs):
        """`_call` under the retry policy. gRPC's channel already resends UNAVAILABLE calls (its
        service config, at most GRPC_MAX_ATTEMPTS times), so over gRPC this loop only adds the rounds
        a longer policy or `patience_s` asks for."""
        policy = self.retry
        stop = policy.stop()
        if self.protocol == "grpc":  # each call is up to GRPC_MAX_ATTEMPTS attempts of the channel's own
            rounds = -(-policy.attempts // GRPC_MAX_ATTEMPTS)
            if rounds <= 1 and policy.patience_s is None:
                return self._call(method, *args, **kwargs)
            stop = tenacity.stop_after_attempt(rounds)
            if policy.patience_s is not None:
                stop = stop | tenacity.stop_after_delay(policy.patience_s)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            self.retries += 1
            if self.protocol == "http":  # a dropped keep-alive connection is not reused
                self._client.close()
                self._client = self._new_client()

        retrying = tenacity.Retrying(stop=stop, wait=policy.wait(), reraise=True, before_sleep=before_sleep,
                                     retry=tenacity.retry_if_exception_type((ServerBusyError, ServerUnavailableError)))
        return retrying(self._call, method, *args, **kwargs)

    def _describe(self) -> None:
        config = self._call("get_model_config", self.model, self.version)
        self.adopt_config(config.get("config", config))  # gRPC wraps the config, HTTP does not

    def adopt_config(self, config: dict) -> "RandomForestClient":
        """Take the model's tensors and batching from its config, in Triton's JSON form.

        connect() does this with the config the server returns; with a config read from a model
        repository instead, prepare() checks and converts rows without any server (perf-data).
        """
        try:
            found = signature.from_config(config)
        except ValueError as exc:
            raise InferenceError(f"model {self.model!r}: {exc}") from None
        if not found.inputs or not found.outputs:
            raise InferenceError(f"model {self.model!r} declares {len(found.inputs)} inputs and "
                                 f"{len(found.outputs)} outputs; expected a forest's")
        if found.is_classifier and (found.probabilities is None or not found.classes):
            raise InferenceError(f"model {self.model!r} is a classifier without a probabilities output "
                                 "(label_filename) or without its classes")
        self.signature = found
        self.input_name = found.inputs[0].name
        primary = found.label or found.values or found.probabilities
        self.output_name = primary.name
        self.n_features = len(found.feature_names) if found.columnar else int(found.inputs[0].dims[-1])
        self.max_batch_size = int(config.get("max_batch_size", 0))
        if self.max_batch_size < 1:
            raise InferenceError(f"model {self.model!r} does not batch (max_batch_size 0); this client needs batching")
        self.feature_names = list(found.feature_names) or None
        return self

    # -- inference ------------------------------------------------------------------------------

    def prepare(self, X) -> dict[str, np.ndarray]:
        """Check X and turn it into the tensors the model takes, one array per input.

        A feature matrix (numpy, list of rows, DataFrame matched by column name) for numeric models;
        a DataFrame or a list of dicts, by column name, for models with one input per column.
        NaN is a value (the model routes it as sklearn does); ±inf is refused, as sklearn refuses it.
        """
        if self.signature is None:
            self._require_connection()
        if self.signature.columnar:
            return self._prepare_columns(X)
        X = self._reorder_frame(X)
        try:
            array = np.asarray(X)
        except ValueError as exc:
            raise InputError(f"input is not a rectangular table of numbers: {exc}") from None
        if array.dtype == object:
            try:
                array = array.astype(np.float64)
            except (TypeError, ValueError):
                raise InputError("input holds non-numeric or ragged values; send numbers, one list per row") from None
        if array.dtype.kind not in "iuf":
            raise InputError(f"input has dtype {array.dtype}; send integer or floating-point numbers")
        if array.ndim != 2:
            raise InputError(f"input must be 2-D (rows × {self.n_features} features), got shape {array.shape}; "
                             "for one row, wrap it in a list or use X.reshape(1, -1)")
        if array.shape[1] != self.n_features:
            raise InputError(f"input has {array.shape[1]} features per row, the model takes {self.n_features}")
        if array.shape[0] == 0:
            raise InputError("input has no rows")
        tensor = self.signature.inputs[0]
        _check_finite(array, self.feature_names, tensor.datatype)
        return {self.input_name: np.ascontiguousarray(array, dtype=signature.numpy_dtype(tensor.datatype))}

    def _prepare_columns(self, X) -> dict[str, np.ndarray]:
        try:
            import pandas as pd
        except ModuleNotFoundError:  # the client install has no pandas: a DataFrame caller has it
            raise InputError(f"model {self.model!r} takes named columns: send a pandas DataFrame "
                             "(pip install pandas)") from None

        if isinstance(X, (list, tuple)) and X and all(isinstance(row, dict) for row in X):
            X = pd.DataFrame(list(X))
        if not hasattr(X, "columns"):
            raise InputError(f"model {self.model!r} takes named columns ({', '.join(self.feature_names)}): "
                             "send a pandas DataFrame or a list of dicts")
        missing = [t.name for t in self.signature.inputs if t.name not in X.columns]
        if missing:
            raise InputError(f"input lacks column(s) {', '.join(missing)}; the model takes "
                             f"{', '.join(t.name for t in self.signature.inputs)}")
        if len(X) == 0:
            raise InputError("input has no rows")
        tensors = {}
        for tensor in self.signature.inputs:
            column = X[tensor.name]
            if tensor.datatype == signature.BYTES:
                if column.isna().any():
                    raise InputError(f"column {tensor.name!r} has missing values in rows "
                                     f"{np.flatnonzero(column.isna().to_numpy())[:5].tolist()}; it takes strings")
                values = column.astype(str).to_numpy(dtype=object)
                unknown = self.signature.unknown_categories(tensor.name, values)
                if unknown:
                    raise InputError(f"column {tensor.name!r} holds {values[unknown[0]]!r} (rows {unknown[:5]}), not a "
                                     "category the model was fitted on; its encoder refuses unknown values, as "
                                     "sklearn does")
                tensors[tensor.name] = values.reshape(-1, 1)
                continue
            try:
                values = pd.to_numeric(column, errors="raise").to_numpy(dtype=np.float64)
            except (TypeError, ValueError):
                raise InputError(f"column {tensor.name!r} holds non-numeric values; the model takes numbers "
                                 "there (NaN for a missing one)") from None
            _check_finite(values.reshape(-1, 1), [tensor.name], tensor.datatype)
            tensors[tensor.name] = values.astype(signature.numpy_dtype(tensor.datatype)).reshape(-1, 1)
        return tensors

    def infer(self, X) -> Prediction:
        """Every output of the model for X, split into requests of at most max_batch_size rows.

        values: a regressor's, (rows, n_outputs). probabilities: a classifier's, (rows, n_classes)
        in the order of `signature.classes`. labels: a classifier's predicted classes.
        """
        tensors = self.prepare(X)
        n_rows = len(next(iter(tensors.values())))
        found = self.signature
        wanted = [o.name for o in found.outputs]
        parts = [self._infer({name: array[start:start + self.max_batch_size] for name, array in tensors.items()},
                             wanted) for start in range(0, n_rows, self.max_batch_size)]
        outputs = {name: np.concatenate([part[name] for part in parts]) for name in wanted}
        if not found.is_classifier:
            return Prediction(values=outputs[found.values.name])
        probabilities = outputs[found.probabilities.name].astype(np.float64)
        classes = np.asarray(found.classes)
        if found.label is not None:
            labels = outputs[found.label.name].reshape(-1)
            labels = np.char.decode(labels.astype(np.bytes_), "utf-8") if labels.dtype == object else labels
            labels = labels.astype(classes.dtype)
        else:  # FIL returns probabilities only: the label is the most probable class, as sklearn picks it
            labels = classes[np.argmax(probabilities, axis=1)]
        return Prediction(probabilities=probabilities, labels=labels)

    def predict(self, X) -> np.ndarray:
        """What sklearn's `predict` gives: values ((rows,) or (rows, n_outputs)) or class labels."""
        result = self.infer(X)
        if result.labels is not None:
            return result.labels
        return result.values.reshape(-1) if result.values.shape[1] == 1 else result.values

    def predict_proba(self, X) -> np.ndarray:
        """What sklearn's `predict_proba` gives: (rows, n_classes), columns in `signature.classes` order."""
        self._require_connection()
        if not self.signature.is_classifier:
            raise ClientError(f"model {self.model!r} is a regressor: it has no class probabilities")
        return self.infer(X).probabilities

    def _infer(self, tensors: dict[str, np.ndarray], wanted: list[str]) -> dict[str, np.ndarray]:
        n_rows = len(next(iter(tensors.values())))
        datatypes = {t.name: t.datatype for t in self.signature.inputs}
        if self.protocol == "http":  # binary tensor data both ways; gRPC's is binary already
            import tritonclient.http as proto

            binary, call = {"binary_data": True}, {}
        else:
            import tritonclient.grpc as proto

            binary, call = {}, {"client_timeout": self.timeout_s}
        inputs = []
        for name, array in tensors.items():
            tensor = proto.InferInput(name, list(array.shape), datatypes[name])
            tensor.set_data_from_numpy(array, **binary)
            inputs.append(tensor)
        outputs = [proto.InferRequestedOutput(name, **binary) for name in wanted]
        result = self._call_with_retry("infer", self.model, inputs, model_version=self.version, outputs=outputs,
                                       **call)
        # FIL squeezes size-1 dims ([N] for a regressor); the onnxruntime backend returns [N, 1]: one layout here
        return {name: result.as_numpy(name).reshape(n_rows, -1) for name in wanted}

    def _reorder_frame(self, X):
        """Match a DataFrame's columns to the model's features by name where the names are known."""
        columns = getattr(X, "columns", None)
        if columns is None or not self.feature_names:
            return X
        names = [str(c) for c in columns]
        if names == self.feature_names:
            return X
        missing = [n for n in self.feature_names if n not in names]
        if missing:
            raise InputError(f"DataFrame lacks feature column(s) {', '.join(missing)}; "
                             f"the model takes {', '.join(self.feature_names)}")
        return X[[columns[names.index(n)] for n in self.feature_names]]

    def _require_connection(self) -> None:
        if self._client is None or not self.input_name:
            raise ClientError("client is not connected: use `with RandomForestClient(...) as client:` or connect()")


def beyond_range(values: np.ndarray, datatype: str) -> np.ndarray:
    """Where finite values cannot be sent as `datatype`: beyond the FP32 range, for FP32 inputs only."""
    if datatype != signature.FP32:
        return np.zeros(values.shape, dtype=bool)
    return np.abs(np.where(np.isfinite(values), values, 0.0)) > FP32_MAX


def _check_finite(array: np.ndarray, names: list[str] | None, datatype: str) -> None:
    """±inf is refused (sklearn refuses it too), and for an FP32 input values beyond its range; NaN is a
    missing value."""
    if array.dtype.kind != "f":
        return
    bad = np.isinf(array) | beyond_range(array, datatype)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        name = names[column] if names and column < len(names) else f"feature {column}"
        what = "infinite values or values beyond the FP32 range" if datatype == signature.FP32 else "infinite values"
        raise InputError(f"input holds {what} (first at row {row}, column {name}; "
                         f"rows {_bad_rows(~bad)}); sklearn refuses infinity too: send finite numbers, "
                         "or NaN for a missing value")


def _bad_rows(ok: np.ndarray, limit: int = 5) -> list[int]:
    return np.unique(np.nonzero(~ok)[0])[:limit].tolist()
