"""The figures of a load run: Locust's client-side statistics and Triton's server-side breakdown.

Client side comes from Locust's `--csv` stats file; server side from two scrapes of Triton's
Prometheus endpoint (before and after the run; rf_triton.prometheus). Names
follow perf_analyzer where they overlap (throughput in infer/sec, pNN latency, server queue,
compute input / infer / output), so a run here reads like a perf_analyzer report of the container.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..prometheus import ServerBreakdown

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


def read_start_failures(path: Path) -> list[str]:
    """Users that could not start ("gRPC: 2"), from the "start ..." rows of Locust's PREFIX_stats.csv.

    Locust's error report, in its output, says why."""
    with open(path, newline="") as stats:
        return [f"{row['Type']}: {row['Failure Count']}" for row in csv.DictReader(stats)
                if row["Name"].startswith("start ") and int(row["Failure Count"]) > 0]


@dataclass(frozen=True)
class RunSummary:
    client: list[ClientFigures]
    server: ServerBreakdown | None
    server_note: str = ""
    targets: dict[str, str] = field(default_factory=dict)  # what was measured: HTTP, gRPC and metrics addresses

    @property
    def total(self) -> ClientFigures:
        return self.client[-1]

    def to_dict(self) -> dict:
        return {"client": [asdict(c) for c in self.client], "server": asdict(self.server) if self.server else None,
                "server_note": self.server_note, "targets": dict(self.targets)}


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
    caption = [f"{kind} {address}" for kind, address in summary.targets.items()]
    if summary.server_note:
        caption.append(summary.server_note)
    table.caption = "\n".join(caption) or None
    return table


def _format(fmt: str, value) -> str:
    return "n/a" if isinstance(value, float) and math.isnan(value) else fmt.format(value)
