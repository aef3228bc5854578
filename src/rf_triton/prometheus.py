"""Triton's Prometheus counters for one model, scraped around a measured window.

Shared by the load test (its server-side breakdown), the benchmark and the tuner (batch sizes):
two scrapes, their difference, and the per-request averages perf_analyzer's "Server:" section
reports. Parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from dataclasses import dataclass, fields

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
