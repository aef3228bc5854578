"""Run the Locust suite headless in a child process, bounded by a hard timeout, and summarise it.

Locust monkey-patches the standard library with gevent on import, so it runs in its own process
(`python -m locust`), in its own process group: on timeout the whole group is killed by PID.
Triton's counters are scraped just before and just after, so the server-side breakdown covers the run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..client.ab import normalised, parse_weights
from . import summary as summary_module

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USER_CLASSES = {"http": ["TritonHttpUser"], "grpc": ["TritonGrpcUser"], "both": ["TritonHttpUser", "TritonGrpcUser"]}
GRACE_S = 60.0  # beyond --run-time: start-up, ramp-down and Locust's own report
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
               "--rows-per-request", str(options.rows_per_request), "--csv", str(csv_prefix)]
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
    timeout_s = timeout_s if timeout_s is not None else parse_timespan(options.run_time) + GRACE_S
    with tempfile.TemporaryDirectory(prefix="rf-triton-locust-") as tmp:
        csv_prefix = options.csv_prefix or Path(tmp) / "run"
        before, note = summary_module.try_scrape(options.metrics_url, options.model)
        returncode, output = run_bounded(locust_command(options, csv_prefix), timeout_s)
        after, note_after = summary_module.try_scrape(options.metrics_url, options.model) if before else (None, note)
        stats = Path(f"{csv_prefix}_stats.csv")
        if not stats.is_file():
            raise LoadTestError(f"locust exited with {returncode} and wrote no statistics:\n{output[-3000:]}")
        client = summary_module.read_locust_stats(stats)
    server = summary_module.ServerBreakdown.from_delta(after - before) if before and after else None
    if server is not None:
        note = "server figures include any other traffic to the model during the run"
    return LoadTestResult(returncode, output, summary_module.RunSummary(client, server, note or note_after))


def run_bounded(command: list[str], timeout_s: float) -> tuple[int, str]:
    """Run `command` in its own process group; kill the group by PID if it outlives `timeout_s`."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise LoadTestError(f"{Path(command[0]).name} still running after {timeout_s:.0f} s; killed. "
                            f"Output tail:\n{output[-3000:]}") from None
    return process.returncode, output
