"""`rf-triton predict`: predictions from a served forest for one row of values, or a whole CSV/Parquet file.

A file is streamed in chunks with several requests in flight (client/batch.py), so its size is not
bounded by memory; with --output the input's columns and the predictions go to a new file.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from ..errors import fail, require_extra
from . import batch
from .client import ClientError, RandomForestClient, RetryPolicy

app = typer.Typer()


class Protocol(str, Enum):
    http = "http"
    grpc = "grpc"


class OnError(str, Enum):
    stop = "stop"
    skip = "skip"


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


def score_with_progress(factory, input: Path, output: Path, options: batch.BatchOptions,
                        stop: threading.Event) -> batch.BatchSummary:
    if not show_progress():
        return batch.score_file(factory, input, output, options, stop=stop)
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

        return batch.score_file(factory, input, output, options, progress=update, stop=stop)


@contextmanager
def stop_requested_by_signals():
    """Ctrl-C and SIGTERM set an event that the scoring loop checks between requests; they never raise
    where the main thread happens to be, so a second one cannot interrupt the cleanup of the first."""
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@app.command("predict")
def predict(
    url: Annotated[str, typer.Option(help="Server address, host:port (HTTP port for http, gRPC port for grpc).")] = "127.0.0.1:8000",
    protocol: Annotated[Protocol, typer.Option(help="Transport.")] = Protocol.http,
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
        min=0, help="Requests in flight while scoring a file; 0: one per model instance (instance_group count).")] = 0,
    on_error: Annotated[OnError, typer.Option(
        help="A bad row (not a number, infinite, refused by the server): stop (one error line) or skip "
             "(written with an 'error' column). A busy or failing server always stops the run.")] = OnError.stop,
    chunk_rows: Annotated[int, typer.Option(min=1, help="Rows read and written at a time.")] = 65536,
    timeout_s: Annotated[float, typer.Option(
        min=0.001, help="Seconds to wait for the model and for each request; a file run also retries an "
                        "unreachable or busy server for this long in all, the requests' own time included "
                        "(a restart).")] = 30.0,
) -> None:
    """Send rows to a served forest: print one prediction per line, or score a file into --output."""
    if (input is None) == (values is None):
        raise fail("give exactly one of --input FILE or --values V1,V2,...")
    if output is not None and input is None:
        raise fail("--output needs --input FILE")
    if input is not None:
        require_extra("batch", "rf-triton predict --input")

    def factory() -> RandomForestClient:
        return RandomForestClient(url, protocol=protocol.value, model=model, version=version, timeout_s=timeout_s,
                                  init_timeout_s=timeout_s, retry=RetryPolicy.for_restarts(timeout_s))

    try:
        if values is not None:
            rows = parse_values(values)
            with factory() as client:
                print_rows(client, rows, proba)
            return
        options = batch.BatchOptions(chunk_rows=chunk_rows, concurrency=concurrency, on_error=on_error.value,
                                     proba=proba)
        with stop_requested_by_signals() as stop:
            if output is None:
                batch.score_file(factory, input, None, options, stop=stop)
                return
            summary = score_with_progress(factory, input, output, options, stop)
        typer.echo(summary.line(), err=True)
        for row_error in summary.first_errors:
            typer.echo(f"  {row_error}", err=True)
    except BrokenPipeError:  # the reader of stdout stopped early (| head): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except batch.BatchStopped as exc:
        raise fail(str(exc), code=130) from None
    except (ClientError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; nothing was written under the output name", code=130) from None
