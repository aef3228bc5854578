"""`rf-triton serve`: the real tritonserver on this machine, in the foreground, until Ctrl-C/SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .. import CONTROL_KEY_ENV, CONTROL_KEY_HEADER
from ..errors import fail
from .runtime_repository import RepositoryError
from .server import EmbeddedTriton, ServerStartError
from .triton_binary import TritonNotAvailable

app = typer.Typer()
console = Console(stderr=True)


class _Stop(Exception):
    """Raised from the SIGTERM handler so the main loop stops the server like on Ctrl-C."""


def _raise_stop(signum, frame):
    raise _Stop(signal.Signals(signum).name)


@app.command("serve")
def serve(
    repository: Annotated[Path, typer.Option(help="Canonical model repository (onnxruntime backend configs).")] = Path("model_repository"),
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    ready_timeout_s: Annotated[float, typer.Option(help="Seconds to wait for every model to be ready.")] = 120.0,
    log_verbose: Annotated[int, typer.Option(help="tritonserver --log-verbose level.")] = 0,
    control_key: Annotated[Optional[str], typer.Option(
        envvar=CONTROL_KEY_ENV, show_envvar=True,
        help=f"Require this value in the '{CONTROL_KEY_HEADER}' header for the model-repository API "
             "(load/unload/index), over HTTP and gRPC. Inference stays open.")] = None,
) -> None:
    """Serve a model repository with the real Triton server from the nvidia-pytriton wheel (no Docker).

    Each onnxruntime model is served by the Python backend running the same model.onnx with ONNX
    Runtime; the repository itself is not modified. New versions exported into the repository
    are mirrored within a second; `rf-triton models load` makes the server pick them up.
    Stops cleanly on Ctrl-C or SIGTERM.
    """
    server = EmbeddedTriton(repository, host=host, http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port, log_verbose=log_verbose, control_key=control_key)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
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
        console.print("Press Ctrl-C to stop.")
        while server.is_running():
            time.sleep(0.5)
        code = server.process.poll()
        raise fail(f"tritonserver exited unexpectedly (code {code}):\n{server.log_tail()}")
    except (TritonNotAvailable, RepositoryError, ServerStartError) as exc:
        raise fail(str(exc)) from None
    except (KeyboardInterrupt, _Stop):
        console.print("stopping tritonserver")
    finally:
        code = server.stop()
        signal.signal(signal.SIGTERM, previous)
    if code not in (0, None):
        raise fail(f"tritonserver exited with code {code}:\n{server.final_log_tail}")
