"""The response-cache workload of `rf-triton bench`: repeated rows and new rows, with and without Triton's cache.

Tabular traffic repeats rows (the same customer, the same product). Triton's response cache answers
a request whose inputs it has seen from memory, before the batcher and the backend. The same model
is served twice at once, as canonical and with `response_cache { enable: true }` on a server with a
local cache; each gets 1-row gRPC requests cycling over a small pool of rows (repeated) and over a
pool larger than the measured window (every row new). The hit rate is Triton's own count (the
statistics extension), not an assumption about the pools.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..export.triton_config import ServingOptions
from ..repository import CONFIG_FILENAME, read_config
from ..serve.server import EmbeddedTriton
from . import configs, loadgen


@dataclass
class CacheOptions:
    repository: Path = Path("model_repository")
    model: str = "random_forest"
    concurrencies: tuple[int, ...] = (1, 16)  # a lone client (latency) and a loaded server (throughput)
    repeated_rows: int = 64          # distinct rows of the repeated workload
    new_rows: int = 100_000          # distinct rows of the other: more than a measured window sends here
    cache_size: int = 64 << 20       # bytes of the server's local cache
    duration_s: float = 3.0
    warmup_s: float = 1.0
    rounds: int = 3                  # each pair measured this often, in alternating order; medians reported
    extra_server_args: tuple[str, ...] = ()


@dataclass
class CacheRow:
    workload: str
    distinct_rows: int
    response_cache: bool
    protocol: str
    concurrency: int
    throughput: float   # requests per second (1-row requests: rows per second too)
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    cache_hits: int     # Triton's statistics over the measured window
    cache_misses: int
    errors: int

    @property
    def hit_rate(self) -> float:
        lookups = self.cache_hits + self.cache_misses
        return self.cache_hits / lookups if lookups else math.nan


@dataclass
class CacheReport:
    rows: list[CacheRow]
    machine: str
    settings: str
    elapsed_s: float = 0.0
    gains: dict[str, float] = field(default_factory=dict)  # "workload, cN" → rows/s with the cache ÷ without


def cache_counts(server: EmbeddedTriton, model: str) -> tuple[int, int]:
    stats = server.model_stats(model)["inference_stats"]
    return int(stats["cache_hit"]["count"]), int(stats["cache_miss"]["count"])


def run_cache_bench(options: CacheOptions, machine: str, log=print) -> CacheReport:
    """Both workloads on both servers; writes nothing (see write_cache_report)."""
    started = time.perf_counter()
    canonical = read_config(options.repository / options.model / CONFIG_FILENAME)
    n_features = int(canonical.input[0].dims[0])
    rng = np.random.default_rng(1)
    repeated = rng.standard_normal((options.repeated_rows, 1, n_features), dtype=np.float32)
    # the repeated pool is the same every time; the new rows are drawn afresh for each measurement
    workloads = {f"{options.repeated_rows} rows repeated": lambda: repeated,
                 "every row new": lambda: rng.standard_normal((options.new_rows, 1, n_features), dtype=np.float32)}
    warmup_rows = rng.standard_normal((1000, 1, n_features), dtype=np.float32)  # warms the server, not the cache
    rows: list[CacheRow] = []
    with tempfile.TemporaryDirectory(prefix="rf-triton-cache-bench-") as tmp, contextlib.ExitStack() as running:
        servers = {}
        for cached in (False, True):  # both run at once: each pair of points is measured back to back
            repository = Path(tmp) / ("cached" if cached else "canonical")
            configs.variant_repository(options.repository, options.model, repository,
                                       ServingOptions(response_cache=cached))
            server = EmbeddedTriton.on_free_ports(repository, extra_args=options.extra_server_args,
                                                  cache_size=options.cache_size if cached else 0)
            running.callback(server.stop)
            servers[cached] = server.start()
        targets = {cached: loadgen.Target(server.endpoints.http, server.endpoints.grpc, options.model,
                                          canonical.input[0].name, canonical.output[0].name)
                   for cached, server in servers.items()}
        for concurrency in options.concurrencies:
            for workload, pool in workloads.items():
                measured: dict[bool, list[CacheRow]] = {False: [], True: []}
                for round_ in range(options.rounds):  # off then on, on then off, ...: load elsewhere spreads
                    for cached in ((False, True) if round_ % 2 == 0 else (True, False)):
                        measured[cached].append(measure(servers[cached], targets[cached], options, workload, pool(),
                                                        warmup_rows, cached, concurrency))
                for cached in (False, True):
                    row = median_row(measured[cached])
                    rows.append(row)
                    log(f"  cache {'on ' if cached else 'off'} c{concurrency:<3} {workload:18} "
                        f"{row.throughput:9,.0f} req/s p50 {row.p50_ms:6.3f} p99 {row.p99_ms:6.2f} ms  "
                        f"hits {row.cache_hits:,} misses {row.cache_misses:,}")
    settings = (f"gRPC (grpc.aio), 1-row requests, {options.duration_s:g} s per point, median of {options.rounds} "
                f"rounds (hits and misses: all rounds); cache on: response_cache enabled, "
                f"--cache-config=local,size={options.cache_size}")
    report = CacheReport(rows, machine, settings)
    for concurrency in options.concurrencies:
        for workload in workloads:
            off, on = (next(r for r in rows if r.workload == workload and r.concurrency == concurrency
                            and r.response_cache == cached) for cached in (False, True))
            report.gains[f"{workload}, c{concurrency}"] = on.rows_per_s / off.rows_per_s if off.rows_per_s else math.nan
    report.elapsed_s = time.perf_counter() - started
    return report


def measure(server: EmbeddedTriton, target: loadgen.Target, options: CacheOptions, workload: str, pool: np.ndarray,
            warmup_rows: np.ndarray, cached: bool, concurrency: int) -> CacheRow:
    """Warm up on other rows, then one measured window with Triton's cache counts read around it."""
    if options.warmup_s > 0:
        loadgen.run_grpc_pool(target, warmup_rows, concurrency, options.warmup_s, warmup_s=0)
    hits_before, misses_before = cache_counts(server, options.model)
    result = loadgen.run_grpc_pool(target, pool, concurrency, options.duration_s, warmup_s=0)
    hits, misses = cache_counts(server, options.model)
    return CacheRow(workload, len(pool), cached, "grpc", concurrency, result.throughput, result.rows_per_s,
                    result.p50_ms, result.p99_ms, hits - hits_before, misses - misses_before, result.errors)


def median_row(rounds: list[CacheRow]) -> CacheRow:
    """The median round's figures (by rows/s), with the hits, misses and errors of all rounds."""
    middle = sorted(rounds, key=lambda r: r.rows_per_s)[len(rounds) // 2]
    return replace(middle, cache_hits=sum(r.cache_hits for r in rounds),
                   cache_misses=sum(r.cache_misses for r in rounds), errors=sum(r.errors for r in rounds))


def cache_markdown(report: CacheReport) -> str:
    lines = [f"Machine: {report.machine}. One run, {report.elapsed_s:.0f} s. {report.settings}.", "",
             "| workload | concurrency | response cache | throughput (infer/sec) | rows/s | p50 (ms) | p99 (ms) "
             "| cache hits | cache misses | hit rate | errors |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report.rows:
        rate = f"{r.hit_rate:.1%}" if not math.isnan(r.hit_rate) else "n/a"
        lines.append(f"| {r.workload} | {r.concurrency} | {'on' if r.response_cache else 'off'} | {r.throughput:,.0f} "
                     f"| {r.rows_per_s:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.cache_hits:,} "
                     f"| {r.cache_misses:,} | {rate} | {r.errors} |")
    lines += ["", "| workload, concurrency | rows/s with the cache ÷ without |", "|---|---:|"]
    lines += [f"| {workload} | {gain:.2f}× |" for workload, gain in report.gains.items()]
    return "\n".join(lines) + "\n"


def write_cache_report(report: CacheReport, out: Path) -> dict[str, Path]:
    """cache.md and cache.json in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "cache.md", "json": out / "cache.json"}
    paths["table"].write_text(cache_markdown(report))
    rows = [{**asdict(r), "hit_rate": None if math.isnan(r.hit_rate) else r.hit_rate} for r in report.rows]
    paths["json"].write_text(json.dumps({"machine": report.machine, "settings": report.settings,
                                         "elapsed_s": report.elapsed_s, "gains": report.gains, "rows": rows},
                                        indent=2, default=str))
    return paths
