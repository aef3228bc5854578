"""Python client for a forest served by Triton (HTTP or gRPC), and the `predict` command."""

from .client import ClientError, InferenceError, InputError, RandomForestClient, ServerUnavailableError

__all__ = ["ClientError", "InferenceError", "InputError", "RandomForestClient", "ServerUnavailableError"]
