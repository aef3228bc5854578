"""`rf-triton predict`: predictions from a served forest for a CSV or one row of values."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from ..errors import fail
from ..export.errors import first_line
from .client import ClientError, RandomForestClient

app = typer.Typer()


def parse_values(text: str) -> list[list[float]]:
    """'0.1,0.2,0.3' → one row; rows may be separated by ';'."""
    try:
        return [[float(v) for v in row.split(",")] for row in text.split(";") if row.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"not a comma-separated list of numbers: {exc}", param_hint="--values") from None


def read_rows(path: Path):
    import pandas as pd

    if not path.is_file():
        raise ClientError(f"input file not found: {path}")
    try:
        return pd.read_csv(path)
    except Exception as exc:  # pandas raises many types for unreadable files
        raise ClientError(f"cannot read CSV {path}: {first_line(exc)}") from None


@app.command("predict")
def predict(
    url: Annotated[str, typer.Option(help="Server address, host:port (HTTP port for http, gRPC port for grpc).")] = "127.0.0.1:8000",
    protocol: Annotated[str, typer.Option(help="http or grpc.")] = "http",
    model: Annotated[str, typer.Option(help="Model name.")] = "random_forest",
    version: Annotated[str, typer.Option(help="Model version; default: the server's choice.")] = "",
    input: Annotated[Optional[Path], typer.Option(
        help="CSV of rows to predict; columns are matched to the model's feature names when it has them.")] = None,
    values: Annotated[Optional[str], typer.Option(help="One row of comma-separated feature values; ';' separates rows.")] = None,
    timeout_s: Annotated[float, typer.Option(help="Seconds to wait for the model and for each request.")] = 30.0,
) -> None:
    """Send rows to a served forest and print one prediction per line."""
    if (input is None) == (values is None):
        typer.echo("error: give exactly one of --input CSV or --values V1,V2,...", err=True)
        raise typer.Exit(1)
    try:
        rows = read_rows(input) if input is not None else parse_values(values)
        with RandomForestClient(url, protocol=protocol, model=model, version=version,
                                timeout_s=timeout_s, init_timeout_s=timeout_s) as client:
            predictions = client.predict(rows)
    except (ClientError, ValueError) as exc:
        raise fail(str(exc)) from None
    for value in np.atleast_1d(predictions):
        typer.echo(f"{float(value):.6g}")
