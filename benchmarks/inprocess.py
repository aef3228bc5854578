"""The in-process limits: ONNX Runtime and sklearn called directly, no server, no wire.

They are what Triton's figures are divided by: the server cannot beat the same model run in the
same process with the same threads, so the ratio is the share of the machine the serving path keeps.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class InProcessResult:
    engine: str  # "onnxruntime" or "sklearn"
    threads: int
    batch: int
    calls: int
    duration_s: float
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        """Observed calls/s over the measured window, as the served rows are measured (not 1 / p50)."""
        return self.calls / self.duration_s

    @property
    def rows_per_s(self) -> float:
        return self.throughput * self.batch


def all_threads() -> int:
    """What ONNX Runtime's intra_op_num_threads=0 uses: the cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ort_session(model_path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def timed_calls(call, duration_s: float, min_calls: int = 3) -> tuple[int, float, float, float]:
    """Call back to back for `duration_s` (after one warm-up call): calls, elapsed s, p50 ms, p99 ms."""
    call()
    latencies = []
    started = time.perf_counter()
    deadline = started + duration_s
    while True:
        before = time.perf_counter()
        call()
        after = time.perf_counter()
        latencies.append(after - before)
        if after >= deadline and len(latencies) >= min_calls:
            break
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    return len(latencies), time.perf_counter() - started, float(p50), float(p99)


def bench_ort(model_path: Path, input_name: str, threads: int, batch: int, duration_s: float,
              rng: np.random.Generator, n_features: int, dtype=np.float32) -> InProcessResult:
    session = ort_session(model_path, threads)
    rows = rng.standard_normal((batch, n_features)).astype(dtype)
    calls, elapsed, p50, p99 = timed_calls(lambda: session.run(None, {input_name: rows}), duration_s)
    return InProcessResult("onnxruntime", threads or all_threads(), batch, calls, elapsed, p50, p99)


def bench_sklearn(estimator, batch: int, duration_s: float, rng: np.random.Generator,
                  n_features: int) -> InProcessResult:
    """sklearn's predict with its default n_jobs (one thread)."""
    rows = rng.standard_normal((batch, n_features)).astype(np.float32)
    calls, elapsed, p50, p99 = timed_calls(lambda: estimator.predict(rows), duration_s)
    return InProcessResult("sklearn", 1, batch, calls, elapsed, p50, p99)
