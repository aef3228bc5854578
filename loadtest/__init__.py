"""Locust load tests for a forest served by Triton, over HTTP and gRPC."""
