"""`rf-triton demo`: the whole flow on this machine, end to end, with figures.

Export the demo model into a fresh repository, serve it with the embedded tritonserver on free
ports, predict over HTTP and gRPC, compare with sklearn, stop the server.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from .client.client import RandomForestClient
from .errors import fail
from .export import sources
from .export.errors import ExportError
from .export.parity import relative_errors
from .export.pipeline import DEFAULT_MODEL_NAME, DEFAULT_TOLERANCE, export_model
from .serve.runtime_repository import RepositoryError
from .serve.server import EmbeddedTriton, ServerStartError
from .serve.triton_binary import TritonNotAvailable

app = typer.Typer()
console = Console()


@app.command("demo")
def demo(
    repository: Annotated[Optional[Path], typer.Option(
        help="Repository to export into (kept afterwards); default: a temporary one, removed at the end.")] = None,
    rows: Annotated[int, typer.Option(help="Rows shown in the table.")] = 5,
) -> None:
    """Export the demo forest, serve it with the real Triton, predict over HTTP and gRPC, stop."""
    workdir = None
    if repository is None:
        workdir = Path(tempfile.mkdtemp(prefix="rf-triton-demo-"))
        repository = workdir / "model_repository"
    try:
        ok = _run(repository, rows)
    except (TritonNotAvailable, ServerStartError, RepositoryError, ExportError, OSError) as exc:
        raise fail(str(exc)) from None
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        raise typer.Exit(1)


def _run(repository: Path, shown: int) -> bool:
    started = time.perf_counter()
    trained = sources.train_demo()
    result = export_model(trained, repository, console=console)
    export_s = time.perf_counter() - started
    console.print(f"[bold]1. export[/] {result.version_dir} in {export_s:.2f} s "
                  f"(training included); parity max rel error {result.parity.max_rel_error:.2e}")

    server = EmbeddedTriton.on_free_ports(repository)
    try:
        with console.status("starting tritonserver"):
            server.start()
        console.print(f"[bold]2. serve[/] tritonserver ready in {server.ready_after_s:.2f} s "
                      f"(HTTP {server.endpoints.http}, gRPC {server.endpoints.grpc})")
        X = trained.X_val
        expected = trained.estimator.predict(X)
        predictions = {}
        for protocol, url in (("http", server.endpoints.http), ("grpc", server.endpoints.grpc)):
            with RandomForestClient(url, protocol=protocol, model=DEFAULT_MODEL_NAME) as client:
                t0 = time.perf_counter()
                predictions[protocol] = client.predict(X)
                elapsed = time.perf_counter() - t0
            console.print(f"[bold]3. predict[/] {len(X)} rows over {protocol.upper()} in {elapsed * 1000:.1f} ms")
    finally:
        code = server.stop()
    console.print(f"[bold]4. stop[/] tritonserver exited with code {code}")

    table = Table(title=f"first {shown} validation rows")
    for column in [*trained.feature_names, "sklearn", "Triton HTTP", "Triton gRPC"]:
        table.add_column(column, justify="right")
    for i in range(min(shown, len(X))):
        table.add_row(*[f"{v:.2f}" for v in X[i]], f"{expected[i]:.3f}",
                      f"{predictions['http'][i]:.3f}", f"{predictions['grpc'][i]:.3f}")
    console.print(table)
    ok = code == 0
    for protocol, values in predictions.items():
        rel = float(np.max(relative_errors(expected, values)))
        good = rel <= DEFAULT_TOLERANCE
        ok &= good
        console.print(f"{protocol.upper()}: {len(values)} predictions, max abs error "
                      f"{np.max(np.abs(values - expected)):.3g}, max rel error {rel:.3g} "
                      f"[{'green' if good else 'red'}]{'OK' if good else 'FAIL'}[/]")
    return ok
