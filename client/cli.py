"""`rf-triton predict`: predictions from a served forest for one row of values, or a whole CSV/Parquet file.

A file is streamed in chunks with several requests in flight (client/batch.py), so its size is not
bounded by memory; with --output the input's columns and the predictions go to a new file.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from ..errors import fail, require_extra
from . import batch
from .client import ClientError, RandomForestClient

app = typer.Typer()


def parse_values(text: str) -> list[list[float]]:
    """'0.1,0.2,0.3' → one row; rows may be separated by ';'."""
    try:
        return [[float(v) for v in row.split(",")] for row in text.split(";") if row.strip()]
    except ValueError as exc:
        raise ClientError(f"--values is not a comma-separated list of numbers: {exc}") from None


def print_rows(client: RandomForestClient, rows, proba: bool) -> None:
    """One line per row: the value(s) of a regressor, a classifier's label, or its probabilities."""
    signature = getattr(client, "signature", None)
    if proba:
        if signature is None or not signature.is_classifier:
            raise ClientError("--proba needs a classifier; this model is a regressor")
        for row in client.predict_proba(rows):
            typer.echo(",".join(f"{float(p):.6g}" for p in row))
        return
    predictions = client.predict(rows)
    if signature is not None and signature.is_classifier:
        for label in predictions:
            typer.echo(str(label))
        return
    for row in np.asarray(predictions).reshape(len(predictions), -1):
        typer.echo(",".join(f"{float(v):.6g}" for v in row))


def show_progress() -> bool:
    """A live bar only for a person watching: a terminal, and not under CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def score_with_progress(factory, input: Path, output: Path, options: batch.BatchOptions) -> batch.BatchSummary:
    if not show_progress():
        return batch.score_file(factory, input, output, options)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]scoring"), BarColumn(), TextColumn("{task.fields[rows]:,} rows"),
                  TextColumn("{task.fields[rate]:,.0f} rows/s"), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("scoring", total=None, rows=0, rate=0.0)
        started = [None]

        def update(rows: int, done: int, total: int) -> None:
            import time

            started[0] = started[0] or time.monotonic()
            elapsed = max(time.monotonic() - started[0], 1e-9)
            bar.update(task, completed=done, total=total, rows=rows, rate=rows / elapsed)

        return batch.score_file(factory, input, output, options, progress=update)


def _stop_on_sigterm(signum, frame) -> None:
    """Unwind like Ctrl-C (the partial output is removed on the way out), once: a second SIGTERM
    must not interrupt that cleanup."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


@app.command("predict")
def predict(
    url: Annotated[str, typer.Option(help="Server address, host:port (HTTP port for http, gRPC port for grpc).")] = "127.0.0.1:8000",
    protocol: Annotated[str, typer.Option(help="http or grpc.")] = "http",
    model: Annotated[str, typer.Option(help="Model name.")] = "random_forest",
    version: Annotated[str, typer.Option(help="Model version; default: the server's choice.")] = "",
    input: Annotated[Optional[Path], typer.Option(
        help="CSV or Parquet file of rows (by extension), streamed in chunks; columns are matched to the "
             "model's feature names when it has them.")] = None,
    values: Annotated[Optional[str], typer.Option(help="One row of comma-separated feature values; ';' separates rows.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        help="CSV or Parquet file to write: the input's columns plus the predictions "
             "(prediction, prediction_<i>, or label and proba_<class>). Default: values on stdout.")] = None,
    proba: Annotated[bool, typer.Option(help="Classifier: class probabilities instead of (stdout) or beside (--output) labels.")] = False,
    concurrency: Annotated[int, typer.Option(
        help="Requests in flight while scoring a file; 0: one per model instance (instance_group count).")] = 0,
    on_error: Annotated[str, typer.Option(
        help="A bad row (not a number, infinite): stop (one error line) or skip (written with an 'error' column).")] = "stop",
    chunk_rows: Annotated[int, typer.Option(help="Rows read and written at a time.")] = 65536,
    timeout_s: Annotated[float, typer.Option(
        help="Seconds to wait for the model and for each request; a file run also retries an unreachable "
             "server this long (a restart).")] = 30.0,
) -> None:
    """Send rows to a served forest: print one prediction per line, or score a file into --output."""
    if (input is None) == (values is None):
        raise fail("give exactly one of --input FILE or --values V1,V2,...")
    if output is not None and input is None:
        raise fail("--output needs --input FILE")
    if on_error not in batch.ON_ERROR:
        raise fail(f"--on-error must be one of {', '.join(batch.ON_ERROR)}, not {on_error!r}")
    if concurrency < 0 or chunk_rows < 1:
        raise fail("--concurrency must be >= 0 and --chunk-rows >= 1")
    if input is not None:
        require_extra("batch", "rf-triton predict --input")

    def factory() -> RandomForestClient:
        return RandomForestClient(url, protocol=protocol, model=model, version=version, timeout_s=timeout_s,
                                  init_timeout_s=timeout_s, retry=batch.batch_retry_policy(timeout_s))

    try:
        if values is not None:
            rows = parse_values(values)
            with factory() as client:
                print_rows(client, rows, proba)
            return
        options = batch.BatchOptions(chunk_rows=chunk_rows, concurrency=concurrency, on_error=on_error, proba=proba)
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
        try:
            if output is None:
                batch.score_file(factory, input, None, options)
                return
            summary = score_with_progress(factory, input, output, options)
        finally:
            signal.signal(signal.SIGTERM, previous)
        typer.echo(summary.line(), err=True)
        for row_error in summary.first_errors:
            typer.echo(f"  {row_error}", err=True)
    except BrokenPipeError:  # the reader of stdout stopped early (| head): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (ClientError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; nothing was written under the output name", code=130) from None
