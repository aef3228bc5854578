"""Run the Locust suite headless in a child process, bounded by a hard timeout, and summarise it.

Locust monkey-patches the standard library with gevent on import, so it runs in its own process
(`python -m locust`), in its own process group, supervised by rf_triton.processes: on timeout,
Ctrl-C or any other way out the whole group is stopped by PID. Triton's counters are scraped just
before and just after, so the server-side breakdown covers the run.
"""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import prometheus
from ..client.ab import normalised, parse_weights
from ..processes import run_bounded
from . import summary as summary_module

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USER_CLASSES = {"http": ["TritonHttpUser"], "grpc": ["TritonGrpcUser"], "both": ["TritonHttpUser", "TritonGrpcUser"]}
GRACE_S = 60.0  # beyond --run-time: start-up, ramp-down and Locust's own report
# At --run-time, each user finishes the request it has in flight (within this many seconds) instead of
# being cancelled mid-call, which Triton would count as a failed request.
STOP_TIMEOUT_S = 10
TIMESPAN_UNITS = {"h": 3600, "m": 60, "s": 1}


class LoadTestError(RuntimeError):
    """The run could not be made or did not finish; the message carries Locust's last lines."""


@dataclass(frozen=True)
class LoadTestOptions:
    url: str  # Triton HTTP, e.g. http://127.0.0.1:8000
    grpc_url: str  # host:port
    metrics_url: str | None
    users: int
    spawn_rate: float
    run_time: str  # Locust's format: 20s, 1m30s, 1h
    protocol: str = "both"
    model: str = "random_forest"
    rows_per_request: int = 1
    csv_prefix: Path | None = None
    html: Path | None = None
    payload_csv: Path | None = None
    ab: str | None = None  # "random_forest:1=0.9,random_forest:2=0.1": one variant per request, by weight


@dataclass(frozen=True)
class LoadTestResult:
    returncode: int
    output: str
    summary: summary_module.RunSummary


def parse_timespan(text: str) -> int:
    """Locust's --run-time format ('90', '20s', '1m30s', '1h') in seconds."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text)
    parts = re.findall(r"(\d+)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid run time {text!r}: use e.g. 30s, 2m, 1m30s or 1h")
    return sum(int(number) * TIMESPAN_UNITS[unit] for number, unit in parts)


def locust_command(options: LoadTestOptions, csv_prefix: Path) -> list[str]:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
               "-u", str(options.users), "-r", str(options.spawn_rate), "--run-time", options.run_time,
               "--host", options.url, "--grpc-host", options.grpc_url, "--model", options.model,
               "--rows-per-request", str(options.rows_per_request), "--csv", str(csv_prefix),
               "--stop-timeout", str(STOP_TIMEOUT_S)]
    if options.html:
        command += ["--html", str(options.html)]
    if options.payload_csv:
        command += ["--payload-csv", str(options.payload_csv)]
    if options.ab:
        command += ["--ab", options.ab]
    return command + USER_CLASSES[options.protocol]


def validate(options: LoadTestOptions) -> None:
    if options.protocol not in USER_CLASSES:
        raise ValueError(f"--protocol must be one of {', '.join(USER_CLASSES)}, not {options.protocol!r}")
    if options.users < len(USER_CLASSES[options.protocol]):
        raise ValueError(f"--protocol {options.protocol} needs at least {len(USER_CLASSES[options.protocol])} users "
                         "(Locust gives each user one protocol)")
    if options.spawn_rate <= 0:
        raise ValueError("--spawn-rate must be positive")
    if options.rows_per_request < 1:
        raise ValueError("--rows-per-request must be at least 1")
    if options.ab:
        normalised(parse_weights(options.ab))
    parse_timespan(options.run_time)


def run_loadtest(options: LoadTestOptions, *, timeout_s: float | None = None) -> LoadTestResult:
    """Run Locust headless against the server and return its exit code, output and the run's summary."""
    validate(options)
    timeout_s = timeout_s if timeout_s is not None else parse_timespan(options.run_time) + STOP_TIMEOUT_S + GRACE_S
    with tempfile.TemporaryDirectory(prefix="rf-triton-locust-") as tmp:
        csv_prefix = options.csv_prefix or Path(tmp) / "run"
        before, note = prometheus.try_scrape(options.metrics_url, options.model)
        try:
            returncode, output = run_bounded(locust_command(options, csv_prefix), timeout_s)
        except TimeoutError as exc:
            raise LoadTestError(str(exc)) from None
        after, note_after = prometheus.try_scrape(options.metrics_url, options.model) if before else (None, note)
        stats = Path(f"{csv_prefix}_stats.csv")
        if not stats.is_file():
            raise LoadTestError(f"locust exited with {returncode} and wrote no statistics:\n{output[-3000:]}")
        client = summary_module.read_locust_stats(stats)
        start_failures = summary_module.read_start_failures(stats)
    if start_failures:
        raise LoadTestError(f"users could not start ({', '.join(start_failures)}); Locust's report:\n"
                            f"{output_tail(output)}")
    if client[-1].request_count == 0:
        raise LoadTestError(f"no request completed in {options.run_time} (locust exited with {returncode}); "
                            f"Locust's last lines:\n{output_tail(output)}")
    server = prometheus.ServerBreakdown.from_delta(after - before) if before and after else None
    if server is not None:
        note = "server figures include any other traffic to the model during the run"
    targets = {"HTTP": options.url if options.protocol != "grpc" else "", "gRPC": options.grpc_url
               if options.protocol != "http" else "", "metrics": options.metrics_url or ""}
    return LoadTestResult(returncode, output, summary_module.RunSummary(
        client, server, note or note_after, {kind: address for kind, address in targets.items() if address}))


def output_tail(output: str, lines: int = 15) -> str:
    return "\n".join(output.strip().splitlines()[-lines:])
