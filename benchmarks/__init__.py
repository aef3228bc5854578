"""Benchmarks and tuning: in-process limits, the embedded Triton under load, batching sweeps."""
