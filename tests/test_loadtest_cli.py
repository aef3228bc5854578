"""`rf-triton loadtest`: the summary's parsing on captured samples, and short headless runs on the real server."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rf_triton.cli import app
from rf_triton.loadtest.cli import addresses
from rf_triton.loadtest.runner import LoadTestOptions, locust_command, parse_timespan, validate
from rf_triton.loadtest.summary import read_locust_stats
from rf_triton.prometheus import ServerBreakdown, parse_metrics
from rf_triton.serve.server import free_ports

DATA = Path(__file__).with_name("data")
runner = CliRunner()


# -- parsing (no server) ----------------------------------------------------------------------------


def test_prometheus_sample_gives_the_model_counters():
    """Captured from the embedded server after its warmup (2 executions of 64 rows)."""
    counters = parse_metrics((DATA / "triton_metrics_before.txt").read_text(), "random_forest")
    assert (counters.success, counters.inferences, counters.executions) == (128, 128, 2)
    assert counters.failure == 0 and counters.queue_us == 1594 and counters.compute_infer_us == 5241344


def test_breakdown_over_a_run_is_the_difference_per_request():
    before = parse_metrics((DATA / "triton_metrics_before.txt").read_text(), "random_forest")
    after = parse_metrics((DATA / "triton_metrics_after.txt").read_text(), "random_forest")
    breakdown = ServerBreakdown.from_delta(after - before)
    assert breakdown.successful_request_count == 3844 - 128
    assert breakdown.execution_count == 2652 - 2
    assert breakdown.avg_batch_size == pytest.approx((3844 - 128) / (2652 - 2))
    assert breakdown.queue_us == pytest.approx((1052651 - 1594) / (3844 - 128))
    assert breakdown.compute_input_us == pytest.approx((141069 - 64448) / (3844 - 128))
    assert breakdown.compute_infer_us == pytest.approx((6943434 - 5241344) / (3844 - 128))
    assert breakdown.compute_output_us == pytest.approx((829468 - 34496) / (3844 - 128))


def test_unknown_model_in_the_metrics_is_an_error():
    with pytest.raises(ValueError, match="no Triton inference metrics for model 'other'"):
        parse_metrics((DATA / "triton_metrics_after.txt").read_text(), "other")


def test_empty_run_has_no_averages():
    breakdown = ServerBreakdown.from_delta(parse_metrics((DATA / "triton_metrics_after.txt").read_text(), "random_forest")
                                           - parse_metrics((DATA / "triton_metrics_after.txt").read_text(), "random_forest"))
    assert breakdown.successful_request_count == 0 and math.isnan(breakdown.avg_batch_size)


def test_locust_stats_give_rates_and_percentiles_per_protocol():
    http, grpc, total = read_locust_stats(DATA / "locust_stats.csv")
    assert (http.label, grpc.label, total.label) == ("HTTP", "gRPC", "all")
    assert total.request_count == 3140 and total.failure_count == 0
    assert http.throughput == pytest.approx(775.5066072031685)
    assert http.rows_per_s == pytest.approx(775.5066072031685)  # one row per request
    assert (total.p50_latency_ms, total.p95_latency_ms, total.p99_latency_ms) == (2, 4, 6)


@pytest.mark.parametrize("text, seconds", [("20", 20), ("20s", 20), ("2m", 120), ("1m30s", 90), ("1h", 3600)])
def test_run_time_in_locust_format(text, seconds):
    assert parse_timespan(text) == seconds


@pytest.mark.parametrize("changes, message", [
    ({"run_time": "soon"}, "invalid run time"),
    ({"protocol": "udp"}, "--protocol must be one of"),
    ({"users": 1}, "needs at least 2 users"),
    ({"rows_per_request": 0}, "at least 1"),
])
def test_bad_options_are_refused_before_locust_starts(changes, message):
    options = LoadTestOptions(**{"url": "http://127.0.0.1:1", "grpc_url": "127.0.0.1:2", "metrics_url": None,
                                 "users": 2, "spawn_rate": 2, "run_time": "2s", **changes})
    with pytest.raises(ValueError, match=message):
        validate(options)


def test_protocol_picks_the_locust_user_classes():
    options = LoadTestOptions("http://h:1", "h:2", None, 2, 2, "2s", protocol="grpc", rows_per_request=8)
    command = locust_command(options, Path("/tmp/x"))
    assert command[-1] == "TritonGrpcUser" and "TritonHttpUser" not in command
    assert command[command.index("--rows-per-request") + 1] == "8" and "--headless" in command


def test_grpc_and_metrics_addresses_follow_tritons_default_ports():
    assert addresses("http://10.0.0.5:8000", None, None, "both") == (
        "http://10.0.0.5:8000", "10.0.0.5:8001", "http://10.0.0.5:8002/metrics")
    assert addresses("10.0.0.5:8000", "g:1", "http://m:2/metrics", "grpc") == ("http://10.0.0.5:8000", "g:1",
                                                                                "http://m:2/metrics")


@pytest.mark.parametrize("args, message", [
    (["--url", "http://127.0.0.1:8100", "--protocol", "grpc"], "give --grpc-url"),
    (["--url", "http://127.0.0.1:8100", "--protocol", "http"], "give --metrics-url"),
    (["--url", "http://127.0.0.1", "--protocol", "both", "--grpc-url", "127.0.0.1:8101"], "give --metrics-url"),
])
def test_addresses_that_cannot_be_derived_must_be_given(args, message):
    """--url on another port than 8000 (the compose GPU service's 8100) says nothing of the other two."""
    result = runner.invoke(app, ["loadtest", *args, "--users", "2", "--run-time", "1s"])
    assert result.exit_code == 1 and message in result.output, result.output


def test_a_run_that_completes_no_request_fails_with_the_reason(tmp_path):
    """gRPC aimed where nothing listens: the run must not end as a table of zeros and exit 0."""
    http, grpc, metrics = free_ports(3)
    result = runner.invoke(app, [
        "loadtest", "--url", f"http://127.0.0.1:{http}", "--grpc-url", f"127.0.0.1:{grpc}",
        "--metrics-url", f"http://127.0.0.1:{metrics}/metrics", "--protocol", "grpc", "--users", "2",
        "--spawn-rate", "2", "--run-time", "2s", "--summary-json", str(tmp_path / "summary.json")])
    assert result.exit_code == 1, result.output
    # the users either give up on the server within Locust's stop timeout or are stopped first
    assert ("error: no request completed in 2s" in result.output
            or "error: users could not start (gRPC: " in result.output), result.output
    assert not (tmp_path / "summary.json").exists()


# -- headless runs against the real tritonserver -----------------------------------------------------


@pytest.mark.integration
def test_loadtest_over_both_protocols_summarises_client_and_server(server_factory, demo_repository, tmp_path):
    # A server of its own: the shared one's counters may still move from earlier tests' bad requests.
    e = server_factory(demo_repository).endpoints
    result = runner.invoke(app, [
        "loadtest", "--url", f"http://{e.http}", "--grpc-url", e.grpc, "--metrics-url", e.metrics,
        "--users", "4", "--spawn-rate", "4", "--run-time", "3s", "--protocol", "both",
        "--csv", str(tmp_path / "run"), "--html", str(tmp_path / "report.html"),
        "--summary-json", str(tmp_path / "summary.json"),
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    client = {row["label"]: row for row in summary["client"]}
    assert set(client) == {"HTTP", "gRPC", "all"}
    for label in ("HTTP", "gRPC"):
        assert client[label]["request_count"] > 0 and client[label]["failure_count"] == 0, label
        assert client[label]["throughput"] > 0 and client[label]["rows_per_s"] > 0, label
    assert summary["targets"] == {"HTTP": f"http://{e.http}", "gRPC": e.grpc, "metrics": e.metrics}
    server = summary["server"]
    assert server is not None, summary["server_note"]
    assert server["successful_request_count"] >= client["all"]["request_count"]
    assert server["failed_request_count"] == 0  # --stop-timeout: users finish their call at --run-time
    assert server["avg_batch_size"] >= 1.0
    assert server["compute_infer_us"] > 0 and server["queue_us"] >= 0
    for heading in ("Throughput (infer/sec)", "p99 latency (ms)", "Server: avg batch size", "Server: queue (usec)",
                    f"gRPC {e.grpc}", f"metrics {e.metrics}"):
        assert heading in result.output
    assert (tmp_path / "run_stats.csv").is_file() and (tmp_path / "report.html").stat().st_size > 0


@pytest.mark.integration
def test_loadtest_serve_starts_and_stops_its_own_server(demo_repository, tmp_path):
    result = runner.invoke(app, [
        "loadtest", "--serve", "--repository", str(demo_repository), "--users", "2", "--spawn-rate", "2",
        "--run-time", "2s", "--protocol", "grpc", "--rows-per-request", "16", "--summary-json", str(tmp_path / "s.json"),
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "s.json").read_text())
    (grpc, total) = summary["client"]
    assert grpc["label"] == "gRPC" and grpc["failure_count"] == 0 and grpc["request_count"] > 0
    assert grpc["rows_per_s"] == pytest.approx(16 * grpc["throughput"])
    assert summary["server"]["inference_count"] >= 16 * grpc["request_count"]
