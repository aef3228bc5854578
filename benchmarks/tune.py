"""`rf-triton tune`: sweep the batching configuration on this machine and pick the best within a p99 budget.

Like Triton's model_analyzer, narrowed to this model: each candidate (max queue delay × instance
count × ONNX Runtime intra-op threads × preferred batch sizes) is written into a copy of the repository through export's protobuf
path, served by a fresh embedded server, loaded at one concurrency, and measured. The best is the
highest throughput whose p99 stays within the budget and that failed no request.

Threads and instances are swept together because the best split of the cores depends on the
forest: a small forest is served fastest by single-threaded instances, a full-size one (millions
of nodes, milliseconds per row batch) by ONNX Runtime threads inside one instance.
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..export.triton_config import ServingOptions
from ..prometheus import ServerBreakdown, try_scrape
from ..errors import first_line
from ..repository import CONFIG_FILENAME
from ..serve.server import EmbeddedTriton
from ..signature import numpy_dtype
from . import configs, loadgen


@dataclass(frozen=True)
class Candidate:
    max_queue_delay_us: int
    instances: int
    preferred_batch_sizes: tuple[int, ...] = ()
    intra_op_threads: int | None = None  # None: keep the config's; 0: all cores

    def options(self) -> ServingOptions:
        return ServingOptions(max_queue_delay_us=self.max_queue_delay_us, instances=self.instances,
                              preferred_batch_sizes=self.preferred_batch_sizes,
                              intra_op_threads=self.intra_op_threads)

    def label(self) -> str:
        threads = ("" if self.intra_op_threads is None else
                   f", {self.intra_op_threads or 'all'} thread{'' if self.intra_op_threads == 1 else 's'}")
        preferred = f", preferred {list(self.preferred_batch_sizes)}" if self.preferred_batch_sizes else ""
        return f"delay {self.max_queue_delay_us} µs, {self.instances} inst{threads}{preferred}"


@dataclass
class TuneResult:
    candidate: Candidate
    throughput: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    avg_batch: float = math.nan
    errors: int = 0
    generator: str = ""
    error: str = ""  # the server did not start or the load failed

    def within(self, p99_budget_ms: float) -> bool:
        return not self.error and self.errors == 0 and self.p99_ms <= p99_budget_ms


@dataclass(frozen=True)
class TuneOptions:
    repository: Path
    model: str
    concurrency: int
    p99_budget_ms: float
    queue_delays_us: tuple[int, ...]
    instances: tuple[int, ...]
    preferred: tuple[tuple[int, ...], ...] = ((),)
    intra_op_threads: tuple[int | None, ...] = (None,)  # None: keep the config's thread count
    protocol: str = "http"
    rows_per_request: int = 1
    duration_s: float = 3.0
    warmup_s: float = 1.0
    budget_s: float = 300.0


def candidates(options: TuneOptions) -> list[Candidate]:
    return [Candidate(delay, count, preferred, threads) for delay, count, threads, preferred
            in itertools.product(options.queue_delays_us, options.instances, options.intra_op_threads,
                                 options.preferred)]


def sweep(options: TuneOptions, log=print) -> tuple[list[TuneResult], int]:
    """Measure candidates until they are done or the next one would overrun the budget; (results, skipped)."""
    started = time.monotonic()
    results: list[TuneResult] = []
    todo = candidates(options)
    for position, candidate in enumerate(todo):
        elapsed = time.monotonic() - started
        per_candidate = elapsed / position if position else 0.0
        if position and elapsed + per_candidate > options.budget_s:
            log(f"budget of {options.budget_s:g} s reached: {len(todo) - position} configuration(s) not measured")
            return results, len(todo) - position
        result = measure_candidate(options, candidate)
        results.append(result)
        log(f"  {candidate.label():48} " + (f"error: {result.error}" if result.error else
            f"{result.throughput:9,.0f} req/s  p99 {result.p99_ms:6.2f} ms  batch {result.avg_batch:5.1f}"))
    return results, 0


def measure_candidate(options: TuneOptions, candidate: Candidate) -> TuneResult:
    result = TuneResult(candidate)
    with tempfile.TemporaryDirectory(prefix="rf-triton-tune-") as tmp:
        repository = Path(tmp) / "repo"
        try:
            config = configs.variant_repository(options.repository, options.model, repository, candidate.options())
        except Exception as exc:  # an impossible candidate (e.g. preferred size > max_batch_size)
            result.error = str(exc)
            return result
        server = EmbeddedTriton.on_free_ports(repository)
        try:
            server.start(ready_timeout_s=60)
            features = configs.matrix_input(config)
            target = loadgen.Target(server.endpoints.http, server.endpoints.grpc, options.model,
                                    features.name, config.output[0].name, features.datatype)
            payload = np.random.default_rng(0).standard_normal(
                (options.rows_per_request, int(features.dims[-1]))).astype(numpy_dtype(features.datatype))
            if options.warmup_s > 0:
                loadgen.run_load(options.protocol, target, payload, options.concurrency, options.warmup_s, warmup_s=0)
            before, _ = try_scrape(server.endpoints.metrics, options.model)
            load = loadgen.run_load(options.protocol, target, payload, options.concurrency, options.duration_s,
                                    warmup_s=0)
            after, _ = try_scrape(server.endpoints.metrics, options.model)
        except Exception as exc:
            result.error = first_line(exc)
            return result
        finally:
            server.stop()
    result.throughput, result.p50_ms, result.p99_ms = load.throughput, load.p50_ms, load.p99_ms
    result.errors, result.generator = load.errors, load.generator
    if before and after:
        result.avg_batch = ServerBreakdown.from_delta(after - before).avg_batch_size
    return result


def best(results: list[TuneResult], p99_budget_ms: float) -> TuneResult | None:
    """Highest throughput within the p99 budget; ties go to the lower p99."""
    fitting = [r for r in results if r.within(p99_budget_ms)]
    return max(fitting, key=lambda r: (r.throughput, -r.p99_ms)) if fitting else None


def apply(repository: Path, model: str, candidate: Candidate) -> Path:
    """Write the chosen batching (and threads, when swept) into the canonical config.pbtxt, as export updates it (under the publish lock)."""
    configs.rewrite_config(repository / model, candidate.options())
    return repository / model / CONFIG_FILENAME
