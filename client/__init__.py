"""Python client for a forest served by Triton (HTTP or gRPC), and the `predict` command."""

from .ab import ABRouter, RoutedPrediction
from .client import (
    NO_RETRY, ClientError, InferenceError, InputError, RandomForestClient, RetryPolicy, ServerBusyError,
    ServerUnavailableError,
)

__all__ = ["ABRouter", "RoutedPrediction", "NO_RETRY", "ClientError", "InferenceError", "InputError", "RandomForestClient", "RetryPolicy",
           "ServerBusyError", "ServerUnavailableError"]
