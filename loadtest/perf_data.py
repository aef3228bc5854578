"""`rf-triton perf-data`: perf_analyzer's `--input-data` JSON from real rows.

perf_analyzer's random inputs match no category of a model with string columns and never hold NaN.
This command reads rows from a CSV/Parquet file, turns each into the tensors RandomForestClient
would send (the same column mapping, dtypes, category and NaN rules, from the model's config read
in the repository or from a server), and writes them in perf_analyzer's real-input format: one
entry per row, `{"INPUT": {"content": [...], "shape": [...]}}`. JSON has no NaN, so a tensor that
holds one is written as its little-endian bytes, `{"content": {"b64": ...}}`, which perf_analyzer
documents for every datatype; strings are written as JSON strings.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from ..client import batch
from ..client.client import ClientError, RandomForestClient
from ..errors import fail
from ..signature import BYTES

app = typer.Typer()


def entries(client: RandomForestClient, tensors: dict[str, np.ndarray]) -> list[dict]:
    """One perf_analyzer data entry per row: every input, shaped as the model's dims (batch 1)."""
    n_rows = len(next(iter(tensors.values())))
    rows = []
    for index in range(n_rows):
        entry = {}
        for tensor in client.signature.inputs:
            values = tensors[tensor.name][index]
            entry[tensor.name] = {"content": _content(values, tensor.datatype), "shape": list(values.shape)}
        rows.append(entry)
    return rows


def _content(values: np.ndarray, datatype: str):
    if datatype == BYTES:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]
    if np.isnan(values).any():
        little_endian = values.astype(values.dtype.newbyteorder("<"), copy=False)
        return {"b64": base64.b64encode(little_endian.tobytes()).decode("ascii")}
    if values.dtype == np.float32:  # the shortest decimal that reads back as the same float32
        return [float(str(v)) for v in values.reshape(-1)]
    return values.reshape(-1).tolist()


def read_rows(client: RandomForestClient, path: Path, max_rows: int):
    """The model's input for the first `max_rows` rows of the file, as the batch scorer reads it."""
    model = batch.model_columns(client)
    reader = batch.ChunkReader(path, chunk_rows=max_rows)
    columns = batch.select_columns(reader.columns, model)
    for table in reader:
        model_input, errors, _ = batch.model_input(table, columns, model, first_row=0)
        if errors:
            first = errors[min(errors)]
            raise ClientError(f"{path}: {first}")
        return model_input
    raise ClientError(f"{path} has no rows")


def repository_config(repository: Path, model: str) -> dict:
    """The model's config.pbtxt as Triton's JSON form of it (what a server would return)."""
    from google.protobuf import json_format

    from ..repository import CONFIG_FILENAME, RepositoryError, read_config

    path = repository / model / CONFIG_FILENAME
    if not path.is_file():
        raise ClientError(f"no {CONFIG_FILENAME} for model {model!r} in {repository}")
    try:
        return json_format.MessageToDict(read_config(path), preserving_proto_field_name=True)
    except RepositoryError as exc:
        raise ClientError(str(exc)) from None


def write_json(path: Path, document: dict) -> None:
    """Write atomically: nothing half-written is left under the output name."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(document, out, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@app.command("perf-data")
def perf_data(
    input: Annotated[Path, typer.Option(help="CSV or Parquet file of rows (by extension), columns named as the model's features.")],
    out: Annotated[Path, typer.Option(help="JSON file to write, for `perf_analyzer --input-data`.")],
    model: Annotated[str, typer.Option(help="Model name.")] = "random_forest",
    repository: Annotated[Path, typer.Option(help="Model repository holding the model's config.pbtxt.")] = Path("model_repository"),
    url: Annotated[Optional[str], typer.Option(
        help="Read the model's config from this running server (host:port) instead of --repository.")] = None,
    protocol: Annotated[str, typer.Option(help="With --url: http or grpc.")] = "http",
    rows: Annotated[int, typer.Option(min=1, max=1_000_000, help="Rows taken from the top of the file; "
                                      "perf_analyzer sends them round-robin, one row per request at -b 1.")] = 1000,
) -> None:
    """Write perf_analyzer's --input-data JSON from real rows: real categories and NaN in every request."""
    try:
        if url is None:
            client = RandomForestClient(model=model).adopt_config(repository_config(repository, model))
            model_input = read_rows(client, input, rows)
            tensors = client.prepare(model_input)
        else:
            with RandomForestClient(url, protocol=protocol, model=model) as client:
                model_input = read_rows(client, input, rows)
                tensors = client.prepare(model_input)
        document = {"data": entries(client, tensors)}
        write_json(out, document)
    except (ClientError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{len(document['data'])} rows of {input} → {out} "
               f"(perf_analyzer -m {model} --input-data {out})", err=True)
