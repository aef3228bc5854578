"""`rf-triton serve`: the real tritonserver on this machine, in the foreground, until Ctrl-C/SIGTERM."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .. import CONTROL_KEY_ENV, CONTROL_KEY_HEADER, releases
from ..errors import fail
from .runtime_repository import RepositoryError
from .server import EmbeddedTriton, ServerStartError
from .triton_binary import TritonNotAvailable

app = typer.Typer()
console = Console(stderr=True)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def configure_logging(verbose: int) -> None:
    """-v: what the supervisor and the repository watcher do; -vv: everything rf-triton logs.

    Without -v, only errors: the console lines of this command already report the watcher's failures."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.ERROR
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("rf_triton").setLevel(level)


@app.command("serve")
def serve(
    repository: Annotated[Path, typer.Option(help="Canonical model repository (onnxruntime backend configs).")] = Path("model_repository"),
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(min=1, max=65535, help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(min=1, max=65535, help="Prometheus metrics port.")] = 8002,
    ready_timeout_s: Annotated[float, typer.Option(min=0, help="Seconds to wait for every model to be ready.")] = 120.0,
    log_verbose: Annotated[int, typer.Option(min=0, help="tritonserver --log-verbose level.")] = 0,
    control_key: Annotated[Optional[str], typer.Option(
        envvar=CONTROL_KEY_ENV, show_envvar=True,
        help=f"Require this value in the '{CONTROL_KEY_HEADER}' header for the model-repository API "
             "(load/unload/index), over HTTP and gRPC. Inference stays open.")] = None,
    cache_size: Annotated[int, typer.Option(
        min=0, help="Bytes of Triton's local response cache, for models exported with --response-cache "
                    "(0: no cache).")] = 0,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="Log what the supervisor and the repository watcher do (-vv: more).")] = 0,
) -> None:
    """Serve a model repository with the real Triton server from the nvidia-pytriton wheel (no Docker).

    Each onnxruntime model is served by the Python backend running the same model.onnx with ONNX
    Runtime; the repository itself is not modified. New versions exported into the repository
    are mirrored within a second; `rf-triton models load` makes the server pick them up.
    Stops cleanly on Ctrl-C or SIGTERM.
    """
    configure_logging(verbose)
    server = EmbeddedTriton(repository, host=host, http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port, log_verbose=log_verbose, control_key=control_key,
                            cache_size=cache_size)

    def request_stop(signum, frame):  # only sets an event: the stop itself runs in the main loop, once
        server.request_stop()

    previous = {signum: signal.signal(signum, request_stop) for signum in STOP_SIGNALS}
    try:
        with console.status(f"Starting tritonserver on {repository}"):
            server.start(ready_timeout_s=ready_timeout_s)
        for warning in server.runtime.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        models = ", ".join(f"{name} (versions {', '.join(map(str, v))})" for name, v in server.runtime.models.items())
        e = server.endpoints
        console.print(f"[green]ready[/] in {server.ready_after_s:.1f} s: {models}")
        console.print(f"  HTTP    http://{e.http}\n  gRPC    {e.grpc}\n  metrics {e.metrics}\n  log     {server.log_path}")
        console.print("  model control: " + (f"needs the '{CONTROL_KEY_HEADER}' header" if control_key else
                                             "open (set --control-key to restrict load/unload)"))
        console.print(f"  {releases.answers_statement(releases.installed_onnxruntime())}")
        console.print("Press Ctrl-C to stop.")
        _serve_until_stopped(server)
    except ServerStartError as exc:
        if not server.wait_stop_requested(0):
            raise fail(str(exc)) from None
        console.print("stopping tritonserver")
    except (TritonNotAvailable, RepositoryError) as exc:
        raise fail(str(exc)) from None
    finally:
        code = server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code not in (0, None):
        raise fail(f"tritonserver exited with code {code}:\n{server.final_log_tail}")


def _serve_until_stopped(server: EmbeddedTriton) -> None:
    """Wait for a stop request, reporting the repository watcher's failures and recoveries as they come."""
    shown_error = None
    while not server.wait_stop_requested(0.5):
        if not server.is_running():
            raise fail(f"tritonserver exited unexpectedly (code {server.process.poll()}):\n{server.log_tail()}")
        if server.sync_error != shown_error:
            if server.sync_error:
                console.print(f"[yellow]warning:[/] repository changes not all mirrored (what is named fails to "
                              f"load until fixed; the other models load): {server.sync_error}")
            else:
                console.print("repository mirrored again")
            shown_error = server.sync_error
    console.print("stopping tritonserver")
