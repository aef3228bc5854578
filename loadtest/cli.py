"""`rf-triton loadtest`: the Locust suite headless, ending with one table of client and server figures."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional
from urllib.parse import urlsplit

import typer
from rich.console import Console

from ..client.client import split_url
from ..errors import fail
from ..outputs import check_writable
from ..serve.runtime_repository import RepositoryError
from ..serve.server import EmbeddedTriton, ServerStartError
from ..serve.triton_binary import TritonNotAvailable
from .runner import USER_CLASSES, LoadTestError, LoadTestOptions, output_tail, run_loadtest, validate
from .summary import summary_table

app = typer.Typer()
console = Console()
status = Console(stderr=True)


TRITON_DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


def addresses(url: str, grpc_url: str | None, metrics_url: str | None, protocol: str) -> tuple[str, str, str]:
    """(HTTP URL, gRPC host:port, metrics URL) to measure, each given or derived from --url.

    Only Triton's own defaults can be derived: --url on port 8000 means gRPC on 8001 and metrics on
    8002 of the same host. On any other port the other two could be anything (the compose GPU
    service listens on 8100-8102, a port-forward on others), so they must be given.
    """
    http = url if "://" in url else f"http://{url}"
    parts = urlsplit(http)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"--url {url!r} has an invalid port") from None
    host = parts.hostname or "127.0.0.1"
    derivable = port == TRITON_DEFAULT_PORTS["http"]
    if grpc_url is None and protocol != "http":
        if not derivable:
            raise ValueError(f"--url {url} is not on Triton's default HTTP port {TRITON_DEFAULT_PORTS['http']}, "
                             "so its gRPC address is unknown: give --grpc-url host:port (or --protocol http)")
        grpc_url = f"{host}:{TRITON_DEFAULT_PORTS['grpc']}"
    if metrics_url is None:
        if not derivable:
            raise ValueError(f"--url {url} is not on Triton's default HTTP port {TRITON_DEFAULT_PORTS['http']}, "
                             "so its metrics address is unknown: give --metrics-url http://host:port/metrics")
        metrics_url = f"http://{host}:{TRITON_DEFAULT_PORTS['metrics']}/metrics"
    return http, grpc_url or "", metrics_url


@contextlib.contextmanager
def _server(serve: bool, repository: Path):
    """The embedded server on free ports when --serve asks for it, stopped afterwards; else nothing."""
    if not serve:
        yield None
        return
    server = EmbeddedTriton.on_free_ports(repository)
    with status.status(f"starting tritonserver on {repository}"):
        server.start()
    try:
        yield server
    finally:
        server.stop()


@app.command("loadtest")
def loadtest(
    url: Annotated[str, typer.Option(help="Triton HTTP endpoint (embedded server or stock container).")] = "http://127.0.0.1:8000",
    grpc_url: Annotated[Optional[str], typer.Option(
        help="Triton gRPC host:port (default when --url is on port 8000: its host, port 8001; else required).")] = None,
    metrics_url: Annotated[Optional[str], typer.Option(
        help="Triton Prometheus endpoint for the server-side breakdown (default when --url is on port 8000: "
             "its host, port 8002; else required).")] = None,
    users: Annotated[int, typer.Option(min=1, help="Concurrent Locust users; each keeps one request in flight.")] = 8,
    spawn_rate: Annotated[float, typer.Option(help="Users started per second.")] = 8.0,
    run_time: Annotated[str, typer.Option(help="How long to run, in Locust's format: 20s, 2m, 1m30s.")] = "20s",
    protocol: Annotated[str, typer.Option(help=f"Users to run: {'|'.join(USER_CLASSES)} (both splits users evenly).")] = "both",
    rows_per_request: Annotated[int, typer.Option(min=1, help="Rows in each request.")] = 1,
    model: Annotated[str, typer.Option(help="Triton model name.")] = "random_forest",
    payload_csv: Annotated[Optional[Path], typer.Option(help="CSV to draw request rows from; random rows when absent.")] = None,
    ab: Annotated[Optional[str], typer.Option(
        help="A/B split, e.g. random_forest:1=0.9,random_forest:2=0.1: each request goes to one variant "
             "drawn by weight, and Locust reports each variant under its own name.")] = None,
    csv: Annotated[Optional[Path], typer.Option(help="Keep Locust's CSV statistics under this prefix.")] = None,
    html: Annotated[Optional[Path], typer.Option(help="Write Locust's HTML report here.")] = None,
    summary_json: Annotated[Optional[Path], typer.Option(help="Also write the summary figures as JSON here.")] = None,
    serve: Annotated[bool, typer.Option(help="Start the embedded server on free ports for the run, and stop it after.")] = False,
    repository: Annotated[Path, typer.Option(help="Model repository the embedded server serves (with --serve).")] = Path("model_repository"),
) -> None:
    """Run the Locust suite headless against Triton and print requests/s, rows/s, failures, latency
    percentiles and Triton's own breakdown (queue, compute, batch size) over the run.

    Exits 1 if any request failed, no request completed, a user could not start, or the run did not
    complete. Ctrl-C stops Locust (and the --serve server) before exiting.
    """
    try:
        options = LoadTestOptions(url, grpc_url or "", metrics_url, users, spawn_rate, run_time, protocol, model,
                                  rows_per_request, csv, html, payload_csv, ab)
        validate(options)  # before anything starts
        for path, option in ((summary_json, "--summary-json"), (html, "--html"), (csv, "--csv")):
            if path is not None:
                check_writable(path, option)
        if not serve:
            split_url(url, "http")
            url, grpc_url, metrics_url = addresses(url, grpc_url, metrics_url, protocol)
        with _server(serve, repository) as server:
            if server is not None:
                url, grpc_url, metrics_url = f"http://{server.endpoints.http}", server.endpoints.grpc, server.endpoints.metrics
            options = replace(options, url=url, grpc_url=grpc_url, metrics_url=metrics_url)
            with status.status(f"Locust: {users} users over {protocol} for {run_time}"):
                result = run_loadtest(options)
    except (ValueError, LoadTestError, TritonNotAvailable, RepositoryError, ServerStartError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted: Locust stopped" + (", server stopped" if serve else ""), code=130) from None
    console.print(summary_table(result.summary))
    if summary_json:
        summary_json.write_text(json.dumps(result.summary.to_dict(), indent=2))
    failures = result.summary.total.failure_count
    if result.returncode != 0 or failures:
        raise fail(f"locust exited with {result.returncode}, {failures} failed requests\n{output_tail(result.output)}")
