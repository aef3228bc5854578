"""The figures of a load run: Locust's client-side statistics and Triton's server-side breakdown.

Client side comes from Locust's `--csv` stats file; server side from two scrapes of Triton's
Prometheus endpoint (before and after the run), parsed with prometheus_client's parser. Names
follow perf_analyzer where they overlap (throughput in infer/sec, pNN latency, server queue,
compute input / infer / output), so a run here reads like a perf_analyzer report of the container.
"""

from __future__ import annotations

import csv
import math
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# Triton's per-model counters (cumulative since the model loaded) → our field names.
TRITON_COUNTERS = {
    "nv_inference_request_success": "success",
    "nv_inference_request_failure": "failure",
    "nv_inference_count": "inferences",
    "nv_inference_exec_count": "executions",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
}


@dataclass(frozen=True)
class ServerCounters:
    """One scrape of a model's counters, summed over its versions (and over failure reasons)."""

    success: float = 0.0
    failure: float = 0.0
    inferences: float = 0.0
    executions: float = 0.0
    request_us: float = 0.0
    queue_us: float = 0.0
    compute_input_us: float = 0.0
    compute_infer_us: float = 0.0
    compute_output_us: float = 0.0

    def __sub__(self, before: "ServerCounters") -> "ServerCounters":
        return ServerCounters(**{f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self)})


def parse_metrics(text: str, model: str) -> ServerCounters:
    """`model`'s counters from Triton's Prometheus text (every version summed)."""
    totals = dict.fromkeys(TRITON_COUNTERS.values(), 0.0)
    found = False
    for family in text_string_to_metric_families(text):
        name = TRITON_COUNTERS.get(family.name)
        if name is None:
            continue
        for sample in family.samples:
            # The parser names a counter's samples NAME_total (and may add NAME_created): keep the values only.
            if sample.name in (family.name, f"{family.name}_total") and sample.labels.get("model") == model:
                totals[name] += sample.value
                found = True
    if not found:
        raise ValueError(f"no Triton inference metrics for model {model!r} (is it loaded?)")
    return ServerCounters(**totals)


def scrape(metrics_url: str, model: str, timeout_s: float = 5.0) -> ServerCounters:
    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
        return parse_metrics(response.read().decode("utf-8", "replace"), model)


def try_scrape(metrics_url: str | None, model: str) -> tuple[ServerCounters | None, str]:
    """A scrape, or None and why: a run without the server-side view still has its client figures."""
    if not metrics_url:
        return None, "no metrics URL"
    try:
        return scrape(metrics_url, model), ""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"metrics unavailable at {metrics_url}: {exc}"


@dataclass(frozen=True)
class ServerBreakdown:
    """Triton's view of a run: per-request averages (µs) as perf_analyzer's "Server:" section reports them."""

    successful_request_count: int
    failed_request_count: int
    inference_count: int
    execution_count: int
    avg_batch_size: float  # inferences ÷ executions: rows per ONNX Runtime run
    avg_request_latency_us: float
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float

    @classmethod
    def from_delta(cls, delta: ServerCounters) -> "ServerBreakdown":
        requests = delta.success

        def per_request(total: float) -> float:
            return total / requests if requests else math.nan

        return cls(int(delta.success), int(delta.failure), int(delta.inferences), int(delta.executions),
                   delta.inferences / delta.executions if delta.executions else math.nan,
                   per_request(delta.request_us), per_request(delta.queue_us), per_request(delta.compute_input_us),
                   per_request(delta.compute_infer_us), per_request(delta.compute_output_us))


@dataclass(frozen=True)
class ClientFigures:
    """One row of Locust's stats: a request type (HTTP, gRPC) or the aggregate of all."""

    label: str
    request_count: int
    failure_count: int
    throughput: float  # infer/sec: requests per second as perf_analyzer counts them
    rows_per_s: float
    avg_latency_ms: float
    p50_latency_ms: float
    p95_latency_ms: float
    p99_latency_ms: float


def read_locust_stats(path: Path) -> list[ClientFigures]:
    """Locust's PREFIX_stats.csv → one ClientFigures per request type, the aggregate last.

    With an A/B split (--ab), each variant of a type has its own row, labelled "TYPE VARIANT".
    response_length is the number of predictions returned, so rows/s = requests/s × average content size."""
    with open(path, newline="") as stats:
        rows = [row for row in csv.DictReader(stats)
                if row["Name"] == "Aggregated" or row["Name"].startswith("infer ")]  # "start ..." rows: failures only
    names_per_type = Counter(row["Type"] for row in rows if row["Name"] != "Aggregated")

    def label(row) -> str:
        if row["Name"] == "Aggregated":
            return "all"
        return f"{row['Type']} {row['Name'].split()[1]}" if names_per_type[row["Type"]] > 1 else row["Type"]

    figures = []
    for row in rows:
        throughput = float(row["Requests/s"])
        figures.append(ClientFigures(
            label(row), int(row["Request Count"]), int(row["Failure Count"]), throughput,
            throughput * float(row["Average Content Size"]), float(row["Average Response Time"]),
            _number(row["50%"]), _number(row["95%"]), _number(row["99%"])))
    return figures


def _number(text: str) -> float:
    return float(text) if text not in ("", "N/A") else math.nan


@dataclass(frozen=True)
class RunSummary:
    client: list[ClientFigures]
    server: ServerBreakdown | None
    server_note: str = ""

    @property
    def total(self) -> ClientFigures:
        return self.client[-1]

    def to_dict(self) -> dict:
        return {"client": [asdict(c) for c in self.client],
                "server": asdict(self.server) if self.server else None, "server_note": self.server_note}


CLIENT_ROWS = [
    ("Throughput (infer/sec)", "throughput", "{:,.1f}"),
    ("Rows/sec", "rows_per_s", "{:,.0f}"),
    ("Request count", "request_count", "{:,}"),
    ("Failure count", "failure_count", "{:,}"),
    ("Avg latency (ms)", "avg_latency_ms", "{:.2f}"),
    ("p50 latency (ms)", "p50_latency_ms", "{:.0f}"),
    ("p95 latency (ms)", "p95_latency_ms", "{:.0f}"),
    ("p99 latency (ms)", "p99_latency_ms", "{:.0f}"),
]
SERVER_ROWS = [
    ("Server: successful request count", "successful_request_count", "{:,}"),
    ("Server: failed request count", "failed_request_count", "{:,}"),
    ("Server: inference count", "inference_count", "{:,}"),
    ("Server: execution count", "execution_count", "{:,}"),
    ("Server: avg batch size", "avg_batch_size", "{:.2f}"),
    ("Server: avg request latency (usec)", "avg_request_latency_us", "{:,.0f}"),
    ("Server: queue (usec)", "queue_us", "{:,.0f}"),
    ("Server: compute input (usec)", "compute_input_us", "{:,.0f}"),
    ("Server: compute infer (usec)", "compute_infer_us", "{:,.0f}"),
    ("Server: compute output (usec)", "compute_output_us", "{:,.0f}"),
]


def summary_table(summary: RunSummary):
    """One table: client figures per request type (Locust rounds latencies to whole ms), then Triton's breakdown."""
    from rich.table import Table

    table = Table(title="Load test summary (client: Locust; server: Triton metrics over the run)")
    table.add_column("metric")
    for figures in summary.client:
        table.add_column(figures.label, justify="right")
    for title, field, fmt in CLIENT_ROWS:
        table.add_row(title, *(_format(fmt, getattr(f, field)) for f in summary.client))
    blanks = [""] * (len(summary.client) - 1)
    for title, field, fmt in SERVER_ROWS:
        value = _format(fmt, getattr(summary.server, field)) if summary.server else "n/a"
        table.add_row(title, *blanks, value)
    if summary.server_note:
        table.caption = summary.server_note
    return table


def _format(fmt: str, value) -> str:
    return "n/a" if isinstance(value, float) and math.isnan(value) else fmt.format(value)
