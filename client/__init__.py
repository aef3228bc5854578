"""Python client for a forest served by Triton (HTTP or gRPC), and the `predict` command."""

from .client import (
    NO_RETRY, ClientError, InferenceError, InputError, RandomForestClient, RetryPolicy, ServerBusyError,
    ServerUnavailableError,
)

__all__ = ["NO_RETRY", "ClientError", "InferenceError", "InputError", "RandomForestClient", "RetryPolicy",
           "ServerBusyError", "ServerUnavailableError"]
