"""`rf-triton bench`: in-process limits and the embedded Triton, side by side in one run, with a plot.

In one process on one machine: ONNX Runtime in-process (1 thread and all threads, small and large
batches), sklearn's predict, then the embedded server over HTTP and gRPC at a sweep of
concurrencies with dynamic batching on and off, and large requests. Each Triton row is divided by
in-process ONNX Runtime at the same rows per call and the same thread count, so the ratio is the
serving overhead, independent of how fast the machine happens to be during the run.
"""

from __future__ import annotations

import json
import math
import platform
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..export.triton_config import ServingOptions
from ..repository import CONFIG_FILENAME, instance_count, model_filename, read_config, versions
from ..prometheus import ServerBreakdown, try_scrape
from ..serve.server import EmbeddedTriton
from ..signature import numpy_dtype
from . import configs, inprocess, loadgen

TARGET_C64_RPS = 10_000
TARGET_C64_P99_MS = 10.0
TARGET_C1_P50_MS = 0.5
TARGET_LARGE_RATIO = 0.9
TARGET_BATCHING_GAIN = 3.0


@dataclass
class BenchRow:
    configuration: str
    generator: str
    protocol: str  # "in-process" for ORT/sklearn
    concurrency: int
    rows_per_request: int
    throughput: float  # requests (or calls) per second
    p50_ms: float
    p99_ms: float
    rows_per_s: float
    avg_batch: float = math.nan  # Triton's inferences ÷ executions over the measured window
    errors: int = 0
    ratio: float = math.nan  # rows/s ÷ in-process ORT at the same rows per call and threads
    reference: str = ""
    batching: bool | None = None


@dataclass
class BenchOptions:
    repository: Path = Path("model_repository")
    model: str = "random_forest"
    out: Path = Path("benchmarks/results")
    concurrencies: tuple[int, ...] = (1, 4, 16, 64)
    large_rows: int = 4096
    large_concurrencies: tuple[int, ...] = (1, 2)
    protocols: tuple[str, ...] = ("http", "grpc")
    duration_s: float = 3.0
    warmup_s: float = 1.0
    inprocess_s: float = 1.0
    inprocess_batches: tuple[int, ...] = (1, 64, 1024, 4096)
    use_wrk: bool = True
    extra_server_args: tuple[str, ...] = ()
    two_instance_sweep: bool = True  # the 1-row sweep on the 2-instance variant too


CANONICAL = "Triton, batching on"
BATCHING_OFF = "Triton, batching off"


@dataclass(frozen=True)
class Scenario:
    """One serving configuration of the model: the canonical one, or a variant of it."""

    name: str
    options: ServingOptions
    batching: bool = True
    small: bool = True  # the 1-row concurrency sweep
    large: bool = True  # the large requests
    batching_off_of: str = ""  # the scenario this one is, but for dynamic batching switched off

    def points(self, options: BenchOptions) -> list[tuple[str, int, int]]:
        points = [(p, 1, c) for p in options.protocols for c in options.concurrencies] if self.small else []
        if self.large and options.large_rows:
            points += [(p, options.large_rows, c) for p in options.protocols for c in options.large_concurrencies]
        return points


def scenarios(options: BenchOptions) -> list[Scenario]:
    """The canonical config; the same without dynamic batching (1-row sweep); and one single-threaded instance,
    where concurrency 2 overlaps one request's transfer with the other's compute on the same ORT thread count."""
    return [
        Scenario(CANONICAL, ServingOptions()),
        Scenario(BATCHING_OFF, ServingOptions(), batching=False, large=False, batching_off_of=CANONICAL),
        Scenario("Triton, 2 instances", ServingOptions(instances=2), small=options.two_instance_sweep),
    ]


@dataclass
class BenchReport:
    rows: list[BenchRow]
    machine: str
    serving: dict[str, str] = field(default_factory=dict)  # configuration name → config summary
    targets: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {inprocess.all_threads()} cores available, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def run_bench(options: BenchOptions, log=print) -> BenchReport:
    """Measure everything in one run and return the rows; write nothing (see write_report)."""
    started = time.perf_counter()
    model_dir = options.repository / options.model
    canonical = read_config(model_dir / CONFIG_FILENAME)
    latest = max(versions(model_dir))
    onnx_path = model_dir / str(latest) / model_filename(canonical)
    features = configs.matrix_input(canonical)
    n_features, dtype = int(features.dims[-1]), numpy_dtype(features.datatype)
    input_name, output_name = features.name, canonical.output[0].name
    intra = int(canonical.parameters["intra_op_thread_count"].string_value or 1) if "intra_op_thread_count" in canonical.parameters else 1
    intra = intra or inprocess.all_threads()  # 0: ORT takes every core
    rng = np.random.default_rng(0)
    rows: list[BenchRow] = []

    log("in-process ONNX Runtime and sklearn")
    thread_counts = sorted({1, inprocess.all_threads()})
    limits: dict[tuple[int, int], float] = {}
    for threads in thread_counts:
        for batch in sorted((set(options.inprocess_batches) | {options.large_rows}) - {0}):
            result = inprocess.bench_ort(onnx_path, input_name, threads, batch, options.inprocess_s, rng, n_features,
                                         dtype)
            limits[(threads, batch)] = result.rows_per_s
            rows.append(BenchRow(f"ORT in-process, {threads} thread{'s' if threads > 1 else ''}", "in-process",
                                 "in-process", 1, batch, result.throughput, result.p50_ms, result.p99_ms,
                                 result.rows_per_s))
    estimator = demo_estimator_if_same(model_dir, onnx_path, input_name)
    if estimator is not None:
        for batch in sorted({1, options.large_rows} - {0}):
            result = inprocess.bench_sklearn(estimator, batch, options.inprocess_s, rng, n_features)
            rows.append(BenchRow("sklearn predict, 1 thread", "in-process", "in-process", 1, batch,
                                 result.throughput, result.p50_ms, result.p99_ms, result.rows_per_s))

    serving: dict[str, str] = {}
    max_batch = max(canonical.max_batch_size, options.large_rows)
    for scenario in scenarios(options):
        with tempfile.TemporaryDirectory(prefix="rf-triton-bench-") as tmp:
            config = configs.variant_repository(options.repository, options.model, Path(tmp) / "repo",
                                                scenario.options.model_copy(update={"max_batch_size": max_batch}),
                                                dynamic_batching=scenario.batching)
            instances = instance_count(config)
            serving[scenario.name] = configs.describe(config) + f", max_batch_size {config.max_batch_size}"
            log(f"{scenario.name}: {serving[scenario.name]}")
            server = EmbeddedTriton.on_free_ports(Path(tmp) / "repo", extra_args=options.extra_server_args)
            server.start()
            try:
                target = loadgen.Target(server.endpoints.http, server.endpoints.grpc, options.model,
                                        input_name, output_name, features.datatype)
                for protocol, n_rows, concurrency in scenario.points(options):
                    payload = rng.standard_normal((n_rows, n_features)).astype(dtype)
                    row = measure_point(server, target, protocol, payload, concurrency, options)
                    row.configuration, row.batching = scenario.name, scenario.batching
                    threads = min(concurrency, instances) * intra
                    reference_threads = 1 if threads <= 1 else max(thread_counts)
                    limit = limits.get((reference_threads, n_rows))
                    if limit:
                        row.ratio = row.rows_per_s / limit
                        row.reference = f"ORT {reference_threads}t, batch {n_rows}"
                    rows.append(row)
                    log(f"  {protocol:4} rows {n_rows:5} c{concurrency:<3} {row.throughput:9,.0f} req/s "
                        f"p50 {row.p50_ms:6.2f} p99 {row.p99_ms:6.2f} ms  batch {row.avg_batch:5.1f}  ({row.generator})")
            finally:
                server.stop()
    report = BenchReport(rows, machine_description(), serving)
    report.targets = evaluate_targets(rows, options.large_rows, batching_pairs(options))
    report.elapsed_s = time.perf_counter() - started
    return report


def measure_point(server: EmbeddedTriton, target: loadgen.Target, protocol: str, payload: np.ndarray,
                  concurrency: int, options: BenchOptions) -> BenchRow:
    """Warm up, then one measured window with Triton's counters scraped around it (for the batch size)."""
    if options.warmup_s > 0:
        loadgen.run_load(protocol, target, payload, concurrency, options.warmup_s, warmup_s=0, use_wrk=options.use_wrk)
    before, _ = try_scrape(server.endpoints.metrics, target.model)
    result = loadgen.run_load(protocol, target, payload, concurrency, options.duration_s, warmup_s=0,
                              use_wrk=options.use_wrk)
    after, _ = try_scrape(server.endpoints.metrics, target.model)
    avg_batch = ServerBreakdown.from_delta(after - before).avg_batch_size if before and after else math.nan
    return BenchRow("", result.generator, protocol, concurrency, len(payload), result.throughput, result.p50_ms,
                    result.p99_ms, result.rows_per_s, avg_batch, result.errors)


def demo_estimator_if_same(model_dir: Path, onnx_path: Path, input_name: str):
    """sklearn's twin of the served model: the demo forest retrained (fixed seed) if it predicts what model.onnx does.

    The repository keeps no pickle, so a non-demo model has no sklearn row."""
    from ..export import sources

    metadata = model_dir / onnx_path.parent.name / "metadata.json"
    try:
        if not json.loads(metadata.read_text()).get("source", "").startswith("demo"):
            return None
    except (OSError, ValueError):
        return None
    trained = sources.train_demo()
    session = inprocess.ort_session(onnx_path, 1)
    X = trained.X_val[:256].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = trained.estimator.predict(X)
    got = session.run(None, {input_name: X})[0].reshape(-1)
    scale = max(float(np.abs(expected).max()), 1e-9)
    return _QuietEstimator(trained.estimator) if np.abs(got - expected).max() <= 1e-4 * scale else None


class _QuietEstimator:
    """sklearn warns when fed an array after fitting on a frame; the warning is not what is measured."""

    def __init__(self, estimator) -> None:
        self.estimator = estimator

    def predict(self, X):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.estimator.predict(X)


def _find(rows: list[BenchRow], **match) -> list[BenchRow]:
    return [r for r in rows if all(getattr(r, k) == v for k, v in match.items())]


def batching_pairs(options: BenchOptions | None = None) -> dict[str, str]:
    """Batching-on configuration → its batching-off twin (same instances and threads): the only fair
    pairs for the batching gain."""
    return {s.batching_off_of: s.name for s in scenarios(options or BenchOptions()) if s.batching_off_of}


def evaluate_targets(rows: list[BenchRow], large_rows: int, pairs: dict[str, str] | None = None) -> list[dict]:
    """The issue's four targets: the canonical configuration's figure decides "met"; the other
    configurations' figures are listed beside it (None: not measured). The batching gain divides a
    configuration by its own batching-off twin (`pairs`), so it is listed only where one was measured."""
    pairs = batching_pairs() if pairs is None else pairs
    served = sorted({r.configuration for r in rows if r.protocol != "in-process"}, key=lambda n: n != CANONICAL)
    targets = []

    def add(name: str, figure) -> None:
        """figure(configuration) → (text, met) or None when that configuration was not measured there."""
        results = {c: figure(c) for c in served}
        results = {c: r for c, r in results.items() if r is not None}
        canonical = results.get(CANONICAL)
        others = "; ".join(f"{c}: {text}{' (met)' if met else ''}" for c, (text, met) in results.items() if c != CANONICAL)
        targets.append({"target": name, "measured": canonical[0] if canonical else "not measured",
                        "met": canonical[1] if canonical else None, "others": others})

    def c64(configuration):
        (row,) = _find(rows, configuration=configuration, protocol="http", rows_per_request=1, concurrency=64) or (None,)
        return row and (f"{row.throughput:,.0f} req/s, p99 {row.p99_ms:.2f} ms",
                        row.throughput >= TARGET_C64_RPS and row.p99_ms <= TARGET_C64_P99_MS)

    def large(configuration):
        measured = [r for r in _find(rows, configuration=configuration, protocol="grpc", rows_per_request=large_rows)
                    if not math.isnan(r.ratio)]
        best = max(measured, key=lambda r: r.ratio) if measured else None
        return best and (f"{best.ratio:.1%} at c{best.concurrency} ({best.rows_per_s:,.0f} rows/s vs {best.reference})",
                         best.ratio >= TARGET_LARGE_RATIO)

    def c1(configuration):
        (row,) = _find(rows, configuration=configuration, protocol="http", rows_per_request=1, concurrency=1) or (None,)
        return row and (f"p50 {row.p50_ms:.3f} ms", row.p50_ms <= TARGET_C1_P50_MS)

    def gain(configuration):
        if configuration not in pairs:
            return None
        on = _find(rows, configuration=configuration, protocol="http", rows_per_request=1, concurrency=64, batching=True)
        off = _find(rows, configuration=pairs[configuration], protocol="http", rows_per_request=1, concurrency=64,
                    batching=False)
        if not on or not off or not off[0].throughput:
            return None
        ratio = on[0].throughput / off[0].throughput
        return f"{ratio:.2f}× ({on[0].throughput:,.0f} vs {off[0].throughput:,.0f} req/s)", ratio >= TARGET_BATCHING_GAIN

    add(f"HTTP 1-row c64 ≥ {TARGET_C64_RPS:,} req/s with p99 ≤ {TARGET_C64_P99_MS:g} ms", c64)
    add(f"gRPC {large_rows}-row rows/s ≥ {TARGET_LARGE_RATIO:.0%} of in-process ORT, same threads", large)
    add(f"HTTP 1-row c1 p50 ≤ {TARGET_C1_P50_MS:g} ms", c1)
    add(f"dynamic batching on ÷ off at c64 (HTTP) ≥ {TARGET_BATCHING_GAIN:g}×", gain)
    return targets


# -- output ---------------------------------------------------------------------------------------------


def markdown(report: BenchReport) -> str:
    lines = [f"Machine: {report.machine}. One run, {report.elapsed_s:.0f} s.", ""]
    for name, description in report.serving.items():
        lines.append(f"- {name}: {description}")
    lines += ["", "| configuration | generator | protocol | concurrency | rows/request | throughput (infer/sec) "
                  "| p50 (ms) | p99 (ms) | rows/s | avg batch | ÷ in-process ORT | errors |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in report.rows:
        ratio = f"{r.ratio:.2f} ({r.reference})" if not math.isnan(r.ratio) else ""
        batch = f"{r.avg_batch:.1f}" if not math.isnan(r.avg_batch) else ""
        lines.append(f"| {r.configuration} | {r.generator} | {r.protocol} | {r.concurrency} | {r.rows_per_request} "
                     f"| {r.throughput:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.rows_per_s:,.0f} | {batch} "
                     f"| {ratio} | {r.errors} |")
    lines += ["", f"| target | {CANONICAL} (canonical config) | met | other configurations |", "|---|---|---|---|"]
    for t in report.targets:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured']} | {met} | {t['others']} |")
    return "\n".join(lines) + "\n"


def plot(report: BenchReport, path: Path) -> None:
    """Latency vs throughput: 1-row requests per (configuration, protocol) on the left, large requests on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (small, large) = plt.subplots(1, 2, figsize=(13, 5))
    served = [r for r in report.rows if r.protocol != "in-process"]
    for (configuration, protocol, n_rows) in sorted({(r.configuration, r.protocol, r.rows_per_request) for r in served}):
        series = sorted(_find(served, configuration=configuration, protocol=protocol, rows_per_request=n_rows),
                        key=lambda r: r.concurrency)
        axis, x = (small, [r.throughput for r in series]) if n_rows == 1 else (large, [r.rows_per_s for r in series])
        line, = axis.plot(x, [r.p99_ms for r in series], marker="o", label=f"{configuration}, {protocol} p99")
        axis.plot(x, [r.p50_ms for r in series], marker=".", linestyle=":", color=line.get_color(),
                  label=f"{configuration}, {protocol} p50")
        for r, xi in zip(series, x):
            axis.annotate(f"c{r.concurrency}", (xi, r.p99_ms), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for r in report.rows:
        if r.protocol == "in-process" and r.rows_per_request > 1 and r.configuration.startswith("ORT"):
            large.scatter([r.rows_per_s], [r.p50_ms], marker="x")
            large.annotate(f"{r.configuration.replace('ORT in-process, ', 'ORT ')} b{r.rows_per_request}",
                           (r.rows_per_s, r.p50_ms), textcoords="offset points", xytext=(4, -10), fontsize=7)
    small.set(xlabel="throughput (requests/s)", ylabel="latency (ms)", title="1-row requests", xscale="log", yscale="log")
    large.set(xlabel="rows/s", ylabel="latency (ms)", title="large requests (x: in-process ORT p50)", xscale="log",
              yscale="log")
    for axis in (small, large):
        for scale in (axis.xaxis, axis.yaxis):
            scale.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.6g}"))
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    fig.suptitle(f"rf-triton bench: {report.machine}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: BenchReport, out: Path) -> dict[str, Path]:
    """bench.md, bench.png and bench.json in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "bench.md", "plot": out / "bench.png", "json": out / "bench.json"}
    paths["table"].write_text(markdown(report))
    plot(report, paths["plot"])
    paths["json"].write_text(json.dumps({"machine": report.machine, "serving": report.serving,
                                         "elapsed_s": report.elapsed_s, "targets": report.targets,
                                         "rows": [asdict(r) for r in report.rows]}, indent=2, default=str))
    return paths
