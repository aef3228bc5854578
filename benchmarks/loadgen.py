"""Closed-loop load generators that outrun the server on the same machine: wrk for HTTP, grpc.aio for gRPC.

Each keeps `concurrency` requests in flight with one prebuilt payload (so the figure is the server
and the wire, not numpy or request building), runs a short warm-up, then measures for
`duration_s`. wrk is used when installed (a C event loop: tens of thousands of requests/s on one
core); without it HTTP falls back to tritonclient.http.aio. Every result says which generator made it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..processes import run_bounded

RESULT_MARK = "RF_TRITON_RESULT "

# wrk calls done() once with every thread's figures merged; latency percentiles are in µs.
WRK_SCRIPT = """
local f = assert(io.open(%(body)s, "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = "%(header_length)d"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests": %%d, "duration_us": %%d, "errors": %%d, "p50_us": %%d, "p90_us": %%d, "p95_us": %%d, "p99_us": %%d, "mean_us": %%f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class Target:
    """One model on one server: where to send, what the tensors are called."""

    http: str  # host:port
    grpc: str  # host:port
    model: str
    input_name: str
    output_name: str
    datatype: str = "FP32"  # the input's Triton datatype (FP64 for a pipeline that computes in float64)

    def payload(self, rows: np.ndarray) -> np.ndarray:
        from ..signature import numpy_dtype

        return np.ascontiguousarray(rows, dtype=numpy_dtype(self.datatype))


@dataclass
class LoadResult:
    protocol: str
    generator: str
    concurrency: int
    rows_per_request: int
    requests: int
    errors: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    extra: dict = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Successful requests per second (perf_analyzer's infer/sec counts requests)."""
        return (self.requests - self.errors) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.throughput * self.rows_per_request


def wrk_path() -> str | None:
    """wrk if it is installed and runs; None otherwise (the HTTP load then comes from tritonclient.http.aio)."""
    path = shutil.which("wrk")
    if path is None:
        return None
    try:
        subprocess.run([path, "--version"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path


def http_binary_body(target: Target, rows: np.ndarray) -> tuple[bytes, int]:
    """Triton's binary tensor extension: a JSON header, then the raw input bytes; output asked back in binary."""
    data = target.payload(rows)
    header = json.dumps({
        "inputs": [{"name": target.input_name, "shape": list(rows.shape), "datatype": target.datatype,
                    "parameters": {"binary_data_size": data.nbytes}}],
        "outputs": [{"name": target.output_name, "parameters": {"binary_data": True}}],
    }).encode()
    return header + data.tobytes(), len(header)


def run_wrk(target: Target, rows: np.ndarray, concurrency: int, duration_s: float, *, warmup_s: float = 0.5,
            threads: int = 1, wrk: str | None = None) -> LoadResult:
    """HTTP load with wrk (one thread by default: on a small host the server needs the other cores)."""
    wrk = wrk or wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not installed")
    with tempfile.TemporaryDirectory(prefix="rf-triton-wrk-") as tmp:
        body, header_length = http_binary_body(target, rows)
        (Path(tmp) / "body.bin").write_bytes(body)
        script = Path(tmp) / "infer.lua"
        script.write_text(WRK_SCRIPT % {"body": json.dumps(str(Path(tmp) / "body.bin")), "header_length": header_length,
                                        "mark": RESULT_MARK})
        url = f"http://{target.http}/v2/models/{target.model}/infer"
        threads = max(1, min(threads, concurrency))

        def wrk_run(seconds: float) -> dict:
            command = [wrk, f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                       "-s", str(script), url]
            code, output = run_bounded(command, timeout_s=seconds + 30)
            if code != 0:
                raise RuntimeError(f"wrk exited with {code}:\n{output[-2000:]}")
            for line in output.splitlines():
                if line.startswith(RESULT_MARK):
                    return json.loads(line[len(RESULT_MARK):])
            raise RuntimeError(f"wrk printed no result:\n{output[-2000:]}")

        if warmup_s > 0:
            wrk_run(warmup_s)
        figures = wrk_run(duration_s)
    return LoadResult("http", f"wrk -t{threads}", concurrency, len(rows), figures["requests"], figures["errors"],
                      figures["duration_us"] / 1e6, figures["p50_us"] / 1e3, figures["p90_us"] / 1e3,
                      figures["p95_us"] / 1e3, figures["p99_us"] / 1e3)


def run_http_aio(target: Target, rows: np.ndarray, concurrency: int, duration_s: float, *,
                 warmup_s: float = 0.5) -> LoadResult:
    """HTTP load from tritonclient.http.aio: the fallback when wrk is absent (slower, so it says so)."""
    import tritonclient.http.aio as aiohttpclient

    async def main():
        client = aiohttpclient.InferenceServerClient(target.http, conn_limit=concurrency)
        tensor = aiohttpclient.InferInput(target.input_name, list(rows.shape), target.datatype)
        tensor.set_data_from_numpy(target.payload(rows), binary_data=True)
        outputs = [aiohttpclient.InferRequestedOutput(target.output_name, binary_data=True)]

        async def one():
            result = await client.infer(target.model, [tensor], outputs=outputs)
            return result.as_numpy(target.output_name) is not None

        try:
            return await _closed_loop(one, concurrency, duration_s, warmup_s)
        finally:
            await client.close()

    return _result("http", "tritonclient.http.aio", concurrency, len(rows), asyncio.run(main()))


def run_grpc(target: Target, rows: np.ndarray, concurrency: int, duration_s: float, *,
             warmup_s: float = 0.5) -> LoadResult:
    """gRPC load from grpc.aio with one prebuilt ModelInferRequest (tritonclient's protobuf), no per-call building."""
    return run_grpc_pool(target, rows[np.newaxis], concurrency, duration_s, warmup_s=warmup_s)


def run_grpc_pool(target: Target, pool: np.ndarray, concurrency: int, duration_s: float, *,
                  warmup_s: float = 0.5) -> LoadResult:
    """gRPC load cycling through prebuilt requests, one per `pool[i]` (requests × rows × features):
    how many distinct requests the server sees is the pool's size (the response cache's workload)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    requests = []
    for rows in pool:
        request = service_pb2.ModelInferRequest(model_name=target.model)
        request.inputs.add(name=target.input_name, datatype=target.datatype, shape=list(rows.shape))
        request.raw_input_contents.append(target.payload(rows).tobytes())  # the data
        request.outputs.add(name=target.output_name)
        requests.append(request)
    next_request = itertools.cycle(requests).__next__
    expected_bytes = pool.shape[1] * 4

    async def main():
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        async with grpc.aio.insecure_channel(target.grpc, options=options) as channel:
            infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer

            async def one():
                response = await infer(next_request(), timeout=30)
                return len(response.raw_output_contents) == 1 and len(response.raw_output_contents[0]) >= expected_bytes

            return await _closed_loop(one, concurrency, duration_s, warmup_s)

    return _result("grpc", "grpc.aio", concurrency, pool.shape[1], asyncio.run(main()))


async def _closed_loop(one, concurrency: int, duration_s: float, warmup_s: float) -> tuple[list[float], int, float]:
    """`concurrency` workers calling `one()` back to back; latencies (s) of the measured window only."""
    latencies: list[float] = []
    errors = 0
    state = {"measuring": False, "stop": False}

    async def worker():
        nonlocal errors
        while not state["stop"]:
            started = time.perf_counter()
            try:
                ok = await one()
            except Exception:
                ok = False
            if state["measuring"] and not state["stop"]:
                latencies.append(time.perf_counter() - started)
                errors += not ok

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup_s)
    state["measuring"] = True
    started = time.perf_counter()
    await asyncio.sleep(duration_s)
    state["stop"] = True
    elapsed = time.perf_counter() - started
    await asyncio.gather(*tasks)
    return latencies, errors, elapsed


def _result(protocol: str, generator: str, concurrency: int, rows: int, measured) -> LoadResult:
    latencies, errors, elapsed = measured
    p50, p90, p95, p99 = (np.percentile(latencies, [50, 90, 95, 99]) * 1e3) if latencies else (float("nan"),) * 4
    return LoadResult(protocol, generator, concurrency, rows, len(latencies), errors, elapsed,
                      float(p50), float(p90), float(p95), float(p99))


def run_load(protocol: str, target: Target, rows: np.ndarray, concurrency: int, duration_s: float, *,
             warmup_s: float = 0.5, use_wrk: bool = True) -> LoadResult:
    """The most efficient generator available for `protocol`."""
    if protocol == "grpc":
        return run_grpc(target, rows, concurrency, duration_s, warmup_s=warmup_s)
    if use_wrk and wrk_path():
        return run_wrk(target, rows, concurrency, duration_s, warmup_s=warmup_s)
    return run_http_aio(target, rows, concurrency, duration_s, warmup_s=warmup_s)
