"""RandomForestClient: predictions from a forest served by Triton, over HTTP or gRPC.

The client reads the model's metadata and config once (input/output names, feature count and
names, max_batch_size), checks inputs before sending them, and splits inputs larger than
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
from tritonclient.utils import InferenceServerException

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


@dataclass(frozen=True)
class RetryPolicy:
    """How often to resend a request that failed for a transient reason, with exponential backoff.

    Predictions are pure functions of their input, so resending one is always safe (idempotent).
    Only unreachable servers, dropped connections and UNAVAILABLE answers are retried; a refusal
    of the request itself (4xx, INVALID_ARGUMENT) never is.
    """

    attempts: int = 3
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("RetryPolicy needs attempts >= 1 and non-negative backoffs")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        return min(self.backoff_s * 2 ** (retry - 1), self.max_backoff_s)


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

    # -- connection -----------------------------------------------------------------------------

    def __enter__(self) -> "RandomForestClient":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> "RandomForestClient":
        """Open the connection, wait up to init_timeout_s for the model, and read its description."""
        if self._client is None:
            self._client = self._new_client()
        deadline = time.monotonic() + self.init_timeout_s
        while not self.is_ready():
            if time.monotonic() >= deadline:
                self.close()
                version = f" version {self.version}" if self.version else ""
                raise ServerUnavailableError(f"model {self.model!r}{version} not ready at {self.url} "
                                             f"({self.protocol}) after {self.init_timeout_s:g} s")
            time.sleep(0.2)
        self._describe()
        return self

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def is_ready(self) -> bool:
        """True when the server answers and the model (version) is ready."""
        if self._client is None:
            return False
        try:
            return bool(self._client.is_model_ready(self.model, self.version))
        except Exception:  # refused connection, DNS, TLS...: all mean "not ready"
            return False

    def _new_client(self):
        if self.protocol == "http":
            import tritonclient.http as httpclient

            return httpclient.InferenceServerClient(self.url, ssl=self.ssl, connection_timeout=self.timeout_s,
                                                    network_timeout=self.timeout_s)
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url, ssl=self.ssl)

    def _call(self, method: str, *args, **kwargs):
        if self.protocol == "grpc" and method.startswith("get_"):
            kwargs["as_json"] = True
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except InferenceServerException as exc:
            status, message = str(exc.status()), exc.message() or ""
            refused_for_now = any(marker in message for marker in BUSY_MESSAGES)
            if status in RETRYABLE_STATUSES and self.protocol == "grpc" and not refused_for_now:
                # gRPC says UNAVAILABLE for a server it cannot reach, too
                raise ServerUnavailableError(f"{method} for model {self.model!r} at {self.url}: {message}") from None
            error = ServerBusyError if status in RETRYABLE_STATUSES else InferenceError
            raise error(f"{method} for model {self.model!r}: {message}", status) from None
        except (OSError, http.client.HTTPException) as exc:  # refused/reset/closed connection (HTTP); gRPC: UNAVAILABLE
            raise ServerUnavailableError(f"{method} for model {self.model!r} at {self.url}: {exc}") from None

    def _call_with_retry(self, method: str, *args, **kwargs):
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return self._call(method, *args, **kwargs)
            except (ServerBusyError, ServerUnavailableError):
                if attempt == self.retry.attempts:
                    raise
                self.retries += 1
                time.sleep(self.retry.delay(attempt))
                if self.protocol == "http":  # a dropped keep-alive connection is not reused
                    self._client.close()
                    self._client = self._new_client()

    def _describe(self) -> None:
        metadata = self._call("get_model_metadata", self.model, self.version)
        config = self._call("get_model_config", self.model, self.version)
        config = config.get("config", config)  # gRPC wraps the config, HTTP does not
        if len(metadata["inputs"]) != 1 or len(metadata["outputs"]) < 1:
            raise InferenceError(f"model {self.model!r} has {len(metadata['inputs'])} inputs; expected one feature matrix")
        model_input, model_output = metadata["inputs"][0], metadata["outputs"][0]
        if model_input["datatype"] != "FP32":
            raise InferenceError(f"model {self.model!r} takes {model_input['datatype']}, this client sends FP32")
        self.input_name, self.output_name = model_input["name"], model_output["name"]
        self.n_features = int(model_input["shape"][-1])
        self.max_batch_size = int(config.get("max_batch_size", 0))
        if self.max_batch_size < 1:
            raise InferenceError(f"model {self.model!r} does not batch (max_batch_size 0); this client needs batching")
        names = config.get("parameters", {}).get("feature_names", {}).get("string_value")
        self.feature_names = json.loads(names) if names else None

    # -- inference ------------------------------------------------------------------------------

    def prepare(self, X) -> np.ndarray:
        """Check X and turn it into the float32 (rows × features) matrix the model takes."""
        self._require_connection()
        X = self._reorder_frame(X)
        try:
            array = np.asarray(X)
        except ValueError as exc:
            raise InputError(f"input is not a rectangular table of numbers: {exc}") from None
        if array.dtype == object:
            raise InputError("input holds non-numeric or ragged values; send numbers, one list per row")
        if array.dtype.kind not in "iuf":
            raise InputError(f"input has dtype {array.dtype}; send integer or floating-point numbers")
        if array.ndim != 2:
            raise InputError(f"input must be 2-D (rows × {self.n_features} features), got shape {array.shape}; "
                             "for one row, wrap it in a list or use X.reshape(1, -1)")
        if array.shape[1] != self.n_features:
            raise InputError(f"input has {array.shape[1]} features per row, the model takes {self.n_features}")
        if array.shape[0] == 0:
            raise InputError("input has no rows")
        if not np.isfinite(array).all():
            raise InputError(f"input holds NaN or infinite values in rows {_bad_rows(np.isfinite(array))}")
        if array.dtype.kind == "f" and array.dtype.itemsize > 4:
            too_large = np.abs(array) > FP32_MAX
            if too_large.any():
                raise InputError(f"values beyond the FP32 range in rows {_bad_rows(~too_large)}")
        return np.ascontiguousarray(array, dtype=np.float32)

    def predict(self, X) -> np.ndarray:
        """Predictions for every row of X (list of rows, numpy array or pandas DataFrame), as a 1-D array."""
        rows = self.prepare(X)
        parts = [self._infer(rows[start:start + self.max_batch_size])
                 for start in range(0, len(rows), self.max_batch_size)]
        result = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return result.reshape(len(rows)) if result.shape[1] == 1 else result

    def _infer(self, rows: np.ndarray) -> np.ndarray:
        if self.protocol == "http":
            import tritonclient.http as proto

            tensor = proto.InferInput(self.input_name, list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=True)
            outputs = [proto.InferRequestedOutput(self.output_name, binary_data=True)]
            result = self._call_with_retry("infer", self.model, [tensor], model_version=self.version,
                                           outputs=outputs)
        else:
            import tritonclient.grpc as proto

            tensor = proto.InferInput(self.input_name, list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            outputs = [proto.InferRequestedOutput(self.output_name)]
            result = self._call_with_retry("infer", self.model, [tensor], model_version=self.version,
                                           outputs=outputs, client_timeout=self.timeout_s)
        return result.as_numpy(self.output_name).reshape(len(rows), -1)

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


def _bad_rows(ok: np.ndarray, limit: int = 5) -> list[int]:
    return np.unique(np.nonzero(~ok)[0])[:limit].tolist()
