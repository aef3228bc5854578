"""Batch scoring: a CSV or Parquet file streamed through a served forest, chunk by chunk, into another file.

Why it is built this way:
- Chunks (pyarrow's streaming CSV reader, Parquet row batches) keep memory flat whatever the file
  size: a few chunks are alive at once, never the file.
- Several requests are in flight (one client per worker thread), by default one per server
  instance: on 2 shared cores more only adds client work. Results are placed by row position,
  so a request resent by the client's retry policy after a server restart can neither lose nor
  duplicate a row.
- The output is written under a temporary name in the same folder and renamed at the end: an
  interrupted run never leaves a half-written file under the final name.
- Each chunk's feature values are checked here, before sending, so that a bad value is reported
  with its row number in the file and its column, not as an anonymous request failure. Numbers go
  out in each input's own datatype (FP32 or FP64, as the model's config declares).
- Only the server's refusal of the rows themselves (a 4xx) marks rows as bad under --on-error
  skip; a busy or failing server stops the run: its rows are not wrong.
- A stop request (Ctrl-C, SIGTERM) is an event the loop checks between requests, never an
  exception raised wherever the main thread happens to be: the cleanup cannot be interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .. import repository
from .. import signature as model_signature
from ..errors import first_line
from .client import ClientError, InferenceError, InputError, RandomForestClient, beyond_range

logger = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
ON_ERROR = ("stop", "skip")
ERROR_COLUMN = "error"


class BatchError(ClientError):
    """The run cannot go on: an unreadable file, a missing column, or a bad row under --on-error stop."""


class BatchStopped(BatchError):
    """A stop was requested (Ctrl-C, SIGTERM): the run ended early and wrote nothing under the output name."""


@dataclass(frozen=True)
class RowError:
    row: int          # 1-based data row of the input file (the header is not counted)
    column: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row}, column {self.column!r}: {self.message}"


@dataclass
class BatchOptions:
    chunk_rows: int = 65536
    concurrency: int = 0          # 0: one per server instance
    on_error: str = "stop"
    proba: bool = False

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, not {self.on_error!r}")
        if self.chunk_rows < 1 or self.concurrency < 0:
            raise ValueError("chunk_rows must be >= 1 and concurrency >= 0")


@dataclass
class BatchSummary:
    rows: int = 0
    errors: int = 0
    seconds: float = 0.0
    requests: int = 0
    retries: int = 0
    concurrency: int = 0
    output: Path | None = None
    first_errors: list[RowError] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        where = f" -> {self.output}" if self.output else ""
        errors = f", {self.errors:,} row(s) with an error" if self.errors else ""
        return (f"scored {self.rows:,} rows in {self.seconds:.1f} s ({self.rows_per_s:,.0f} rows/s, "
                f"{self.concurrency} in flight){errors}{where}")


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BatchError(f"{path}: unknown file type {path.suffix or '(none)'!r}; use .csv or .parquet")
    return fmt


# -- what the model takes --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelColumns:
    """The file columns a model reads, in the order it takes them, and the datatype each is sent as."""

    names: tuple[str, ...] | None     # None: the model's features have no names (positional)
    n_features: int
    columnar: bool = False            # one input per column (a pipeline with categorical columns)
    datatypes: dict[str, str] = field(default_factory=dict)  # columnar: datatype of each input
    matrix_datatype: str = model_signature.FP32              # one matrix: its datatype

    @property
    def text(self) -> frozenset[str]:
        """Columnar inputs that take strings."""
        return frozenset(n for n, d in self.datatypes.items() if d == model_signature.BYTES)

    def datatype(self, column: str) -> str:
        return self.datatypes.get(column, self.matrix_datatype)


def model_columns(client: RandomForestClient) -> ModelColumns:
    signature = client.signature
    if signature.columnar:  # one input per column, named after it
        names = tuple(i.name for i in signature.inputs)
        return ModelColumns(names, len(names), columnar=True, datatypes={i.name: i.datatype for i in signature.inputs})
    return ModelColumns(tuple(signature.feature_names) or None, client.n_features,
                        matrix_datatype=signature.inputs[0].datatype)


def instance_count(client: RandomForestClient) -> int:
    """How many model instances the server runs, Triton's defaults applied to what the config leaves out."""
    config = client._call("get_model_config", client.model, client.version)
    return repository.instance_count(repository.from_json_config(config.get("config", config)))  # gRPC wraps it


def output_names(client: RandomForestClient, proba: bool) -> list[str]:
    """Column names a reader understands: prediction(s), or label and proba_<class>."""
    return list(output_types(client, proba))


def output_types(client: RandomForestClient, proba: bool) -> dict:
    """The added columns and their Arrow types, known before any answer: a chunk whose rows all
    failed still gets the columns every other chunk gets."""
    import pyarrow as pa

    signature = client.signature
    if signature.is_classifier:
        label = pa.int64() if all(isinstance(c, int) for c in signature.classes) else pa.string()
        return {"label": label, **({f"proba_{c}": pa.float32() for c in signature.classes} if proba else {})}
    if proba:
        raise BatchError("--proba needs a classifier; this model is a regressor")
    n_outputs = signature.n_outputs
    names = ["prediction"] if n_outputs == 1 else [f"prediction_{i}" for i in range(n_outputs)]
    return {name: pa.float32() for name in names}


# -- reading ---------------------------------------------------------------------------------------


class ChunkReader:
    """Chunks of the input file as pyarrow Tables, with the input's progress (bytes or rows read)."""

    def __init__(self, path: Path, chunk_rows: int) -> None:
        if not path.is_file():
            raise BatchError(f"input file not found: {path}")
        self.path = path
        self.format = file_format(path)
        self.chunk_rows = chunk_rows
        self._file = None
        if self.format == "parquet":
            import pyarrow.parquet as pq

            try:
                self._parquet = pq.ParquetFile(path)
            except Exception as exc:
                raise BatchError(f"cannot read Parquet {path}: {first_line(exc)}") from None
            self.total = self._parquet.metadata.num_rows
            self.columns = list(self._parquet.schema_arrow.names)
        else:
            self.total = path.stat().st_size
            self.columns = self._csv_header()
        repeated = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if repeated:
            raise BatchError(f"{path} has several columns named {', '.join(map(repr, repeated))}; "
                             "give each column its own name")

    def schema(self, typed: set[str] = frozenset()):
        """The Arrow schema of the chunks: a CSV's columns are text, except `typed` ones (float64)."""
        import pyarrow as pa

        if self.format == "parquet":
            return self._parquet.schema_arrow
        return pa.schema([(c, pa.float64() if c in typed else pa.string()) for c in self.columns])

    @property
    def done(self) -> int:
        """Progress in the unit of `total`: bytes read (CSV) or rows read (Parquet)."""
        if self.format == "csv":
            return self._file.tell() if self._file is not None and not self._file.closed else self.total
        return self._rows_read

    def _csv_header(self) -> list[str]:
        import pyarrow.csv as pcsv

        try:
            with pcsv.open_csv(self.path) as reader:
                return list(reader.schema.names)
        except Exception as exc:
            raise BatchError(f"cannot read CSV {self.path}: {first_line(exc)}") from None

    def __iter__(self) -> Iterator:
        import pyarrow as pa

        self._rows_read = 0
        if self.format == "parquet":
            for batch in self._parquet.iter_batches(batch_size=self.chunk_rows):
                self._rows_read += batch.num_rows
                yield pa.Table.from_batches([batch])
            return
        yield from self._csv_chunks()

    def _csv_chunks(self):
        import pyarrow as pa
        import pyarrow.csv as pcsv

        # Every column is read as text: the output then repeats the input exactly, and a bad value in
        # row ten million is reported where it is instead of failing the reader's type inference.
        convert = pcsv.ConvertOptions(column_types={c: pa.string() for c in self.columns},
                                      strings_can_be_null=True, null_values=[""])
        self._file = open(self.path, "rb")
        try:
            reader = pcsv.open_csv(self._file, convert_options=convert)
            buffered = None  # rows read and not yet handed out: chunks have exactly chunk_rows rows
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except pa.ArrowInvalid as exc:
                    raise BatchError(f"cannot read CSV {self.path}: {first_line(exc)}") from None
                table = pa.Table.from_batches([batch])
                buffered = table if buffered is None else pa.concat_tables([buffered, table])
                while buffered.num_rows >= self.chunk_rows:
                    yield buffered.slice(0, self.chunk_rows)
                    buffered = buffered.slice(self.chunk_rows)
            if buffered is not None and buffered.num_rows:
                yield buffered
        finally:
            self._file.close()


# -- checking and converting one chunk -------------------------------------------------------------


def select_columns(reader_columns: list[str], model: ModelColumns) -> list[str]:
    if model.names is None:
        if len(reader_columns) != model.n_features:
            raise BatchError(f"the model's features have no names, so the file must have exactly "
                             f"{model.n_features} columns; it has {len(reader_columns)}")
        return list(reader_columns)
    missing = [n for n in model.names if n not in reader_columns]
    if missing:
        raise BatchError(f"input lacks column(s) {', '.join(missing)}; the model takes {', '.join(model.names)}")
    return list(model.names)


def numeric_column(column, name: str, first_row: int, errors: dict[int, RowError],
                   datatype: str = model_signature.FP32) -> np.ndarray:
    """float64 values of one column; values that are not numbers, infinite, or beyond the range of the
    input's datatype (FP32) become errors."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = _lenient_numbers(column, name, first_row, errors)
    elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type):
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    else:
        raise BatchError(f"column {name!r} holds {column.type}; the model takes numbers there")
    finite = np.isfinite(values) | np.isnan(values)
    in_range = ~beyond_range(values, datatype)
    for index in np.nonzero(~(finite & in_range))[0]:
        problem = "infinite value" if not finite[index] else f"{values[index]:g} is beyond the FP32 range"
        errors.setdefault(int(index), RowError(first_row + int(index) + 1, name, problem))
    return values


def _lenient_numbers(column, name: str, first_row: int, errors: dict[int, RowError]) -> np.ndarray:
    """pandas' number parsing (spaces around numbers are fine); what it cannot read is an error."""
    import pandas as pd

    text = column.to_pandas()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    unreadable = np.isnan(values) & text.notna().to_numpy() & ~text.str.strip().str.lower().isin(
        ["nan", "-nan", "+nan", "na", "n/a", "null", ""]).to_numpy()
    for index in np.nonzero(unreadable)[0]:
        errors.setdefault(int(index), RowError(first_row + int(index) + 1, name,
                                               f"{text.iloc[index]!r} is not a number"))
    return values


def model_input(table, columns: list[str], model: ModelColumns, first_row: int):
    """What the client takes for this chunk (a matrix in the input's dtype, or a DataFrame for columnar
    models), the chunk's bad rows (index in the chunk → RowError), and the numeric columns' values as
    float64."""
    import pandas as pd

    errors: dict[int, RowError] = {}
    numbers = {name: numeric_column(table.column(name), name, first_row, errors, model.datatype(name))
               for name in columns if name not in model.text}
    if not model.columnar:
        matrix = np.empty((table.num_rows, len(columns)), dtype=model_signature.numpy_dtype(model.matrix_datatype))
        for j, name in enumerate(columns):
            matrix[:, j] = numbers[name]
        return matrix, errors, numbers
    frame = {}
    for name in columns:
        if name not in model.text:
            frame[name] = numbers[name].astype(model_signature.numpy_dtype(model.datatype(name)))
            continue
        text = table.column(name).to_pandas()
        for index in np.flatnonzero(text.isna().to_numpy()):
            errors.setdefault(int(index), RowError(first_row + int(index) + 1, name, "empty; the model takes a string"))
        frame[name] = text.fillna("").astype(str).to_numpy(dtype=object)
    return pd.DataFrame(frame), errors, numbers


# -- writing ---------------------------------------------------------------------------------------


class FileSink:
    """Writes chunks to `<folder>/.<name>.<pid>.part`, renamed to the final name only when complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.format = file_format(path)
        if not path.parent.is_dir():
            raise BatchError(f"output folder not found: {path.parent}")
        self.temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
        self._parquet = None
        self._csv = None
        self._header = True

    def write(self, table) -> None:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.temporary, table.schema)
            self._parquet.write_table(table)
            return
        import pyarrow as pa
        import pyarrow.csv as pcsv

        if self._csv is None:
            self._csv = pa.OSFile(str(self.temporary), "wb")
        # Quotes only in chunks whose text needs them, so that numbers read as text stay bare.
        style = "needed" if _needs_quotes(table) else "none"
        pcsv.write_csv(table, self._csv, write_options=pcsv.WriteOptions(include_header=self._header,
                                                                         quoting_style=style))
        self._header = False

    def commit(self, schema) -> None:
        """Publish the file; an input without rows gives a file with the columns and no rows
        (`schema`), which readers open like any other."""
        if self._parquet is None and self._csv is None:
            import pyarrow as pa

            self.write(pa.Table.from_batches([], schema=schema))
        self._close()
        with open(self.temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.temporary, self.path)

    def abort(self) -> None:
        try:
            self._close()
        except Exception:  # closing a writer in a failed state: the file is going anyway
            pass
        self.temporary.unlink(missing_ok=True)

    def _close(self) -> None:
        for writer in (self._parquet, self._csv):
            if writer is not None:
                writer.close()
        self._parquet = self._csv = None


def _needs_quotes(table) -> bool:
    import pyarrow as pa
    import pyarrow.compute as pc

    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            if pc.any(pc.match_substring_regex(column, '[,"\\r\\n]')).as_py():
                return True
    return False


class LineSink:
    """Without --output: one line per row on stdout (values separated by commas), as before."""

    def __init__(self, columns: list[str], stream=None) -> None:
        self.columns = columns
        self.stream = stream or sys.stdout

    def write(self, table) -> None:
        parts = [table.column(c).to_pylist() for c in self.columns]
        lines = [",".join(_format_value(v) for v in row) for row in zip(*parts)]
        self.stream.write("".join(f"{line}\n" for line in lines))

    def commit(self, schema=None) -> None:
        self.stream.flush()

    def abort(self) -> None:
        self.stream.flush()


def _format_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# -- scoring ---------------------------------------------------------------------------------------


def _score(client: RandomForestClient, X, proba: bool) -> list[np.ndarray]:
    """The prediction columns for X, in output_names order, from one request per max_batch_size rows."""
    prediction = client.infer(X)
    if prediction.labels is None:
        return [prediction.values[:, k] for k in range(prediction.values.shape[1])]
    columns = [np.asarray(prediction.labels)]
    if proba:
        columns += [prediction.probabilities[:, k].astype(np.float32) for k in range(prediction.probabilities.shape[1])]
    return columns


class _Workers:
    """One connected client per worker thread: several requests in flight, each on its own connection."""

    def __init__(self, factory: Callable[[], RandomForestClient], count: int) -> None:
        self.factory = factory
        self.local = threading.local()
        self.clients: list[RandomForestClient] = []
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="rf-triton-batch")

    def client(self) -> RandomForestClient:
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.factory().connect()
            self.local.client = client
            with self.lock:
                self.clients.append(client)
        return client

    def submit(self, fn, *args) -> Future:
        return self.pool.submit(lambda: fn(self.client(), *args))

    @property
    def retries(self) -> int:
        return sum(c.retries for c in self.clients)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for client in self.clients:
            client.close()


@dataclass
class _Chunk:
    table: object
    first_row: int
    valid: np.ndarray                     # indices (in the chunk) of the rows sent
    errors: dict[int, RowError]
    parts: list[tuple[int, int, Future]]  # (start, stop) in `valid`, request


def score_file(factory: Callable[[], RandomForestClient], input_path: Path, output_path: Path | None,
               options: BatchOptions = BatchOptions(), *,
               progress: Callable[[int, int, int], None] | None = None,
               stop: threading.Event | None = None) -> BatchSummary:
    """Score every row of input_path into output_path (None: lines on stdout).

    `factory` makes an unconnected client (each worker thread connects its own). `progress` is
    called after each chunk with (rows done, input done, input total) — input in bytes for CSV and
    rows for Parquet. Setting `stop` ends the run at the next request with BatchStopped, the
    temporary file removed.
    """
    started = time.monotonic()
    stop = stop or threading.Event()
    reader = ChunkReader(Path(input_path), options.chunk_rows)
    with factory() as probe:
        model = model_columns(probe)
        added_types = output_types(probe, options.proba)
        batch_rows = probe.max_batch_size
        concurrency = options.concurrency or instance_count(probe)
    names = list(added_types)
    columns = select_columns(reader.columns, model)
    clash = [n for n in names + ([ERROR_COLUMN] if options.on_error == "skip" else []) if n in reader.columns]
    if output_path is not None and clash:
        raise BatchError(f"input already has column(s) {', '.join(clash)}, which the output adds; "
                         "rename or drop them first")
    printed = [n for n in names if n.startswith("proba_")] if options.proba else names
    sink = FileSink(Path(output_path)) if output_path is not None else LineSink(printed)
    summary = BatchSummary(output=Path(output_path) if output_path is not None else None, concurrency=concurrency)
    typed_features = reader.format == "csv" and getattr(sink, "format", "") == "parquet"
    typed = {c for c in columns if c not in model.text} if typed_features else set()
    added = dict(added_types, **({ERROR_COLUMN: None} if options.on_error == "skip" else {}))
    schema = _with_columns(reader.schema(typed), added)
    workers = _Workers(factory, concurrency)
    pending: deque[_Chunk] = deque()
    logger.info("scoring %s with %d request(s) in flight, %d rows per request", input_path, concurrency, batch_rows)

    def finish_one() -> None:
        _finish(pending.popleft(), sink, added_types, options, summary, output_path is not None, stop)
        if progress:
            progress(summary.rows, reader.done, reader.total)

    try:
        first_row = 0
        for table in reader:
            _check_stop(stop)
            pending.append(_submit(workers, table, first_row, columns, model, batch_rows, options,
                                   typed_features))
            summary.requests += len(pending[-1].parts)
            first_row += table.num_rows
            while len(pending) > 2:  # reading stays up to two chunks ahead of writing
                finish_one()
        while pending:
            finish_one()
        _check_stop(stop)
        sink.commit(schema)
    except BaseException:
        for chunk in pending:
            for _, _, future in chunk.parts:
                future.cancel()
        workers.close()
        sink.abort()
        raise
    workers.close()
    summary.retries = workers.retries
    summary.seconds = time.monotonic() - started
    logger.info(summary.line())
    return summary


def _check_stop(stop: threading.Event) -> None:
    if stop.is_set():
        raise BatchStopped("interrupted; nothing was written under the output name")


def _with_columns(schema, added: dict):
    import pyarrow as pa

    for name, kind in added.items():
        schema = schema.append(pa.field(name, kind if kind is not None else pa.string()))
    return schema


def _submit(workers: _Workers, table, first_row: int, columns: list[str], model: ModelColumns,
            batch_rows: int, options: BatchOptions, typed_features: bool) -> _Chunk:
    import pyarrow as pa

    X, errors, numbers = model_input(table, columns, model, first_row)
    if typed_features:  # text read from a CSV: the Parquet output gets the numbers themselves
        for name, values in numbers.items():
            table = table.set_column(table.schema.get_field_index(name), name, pa.array(values))
    if errors and options.on_error == "stop":
        first = errors[min(errors)]
        raise BatchError(f"{first} (--on-error skip writes such rows with an {ERROR_COLUMN!r} column)")
    valid = np.arange(table.num_rows)
    if errors:
        valid = np.setdiff1d(valid, np.fromiter(errors, dtype=np.int64))
        X = X.iloc[valid].reset_index(drop=True) if model.columnar else X[valid]
    parts = []
    for start in range(0, len(valid), batch_rows):
        stop = min(start + batch_rows, len(valid))
        rows = X.iloc[start:stop] if model.columnar else X[start:stop]
        parts.append((start, stop, workers.submit(_score, rows, options.proba)))
    return _Chunk(table, first_row, valid, errors, parts)


def refuses_the_rows(exc: ClientError) -> bool:
    """Whether a failed request says its rows are wrong (the client's check, or a 4xx / INVALID_ARGUMENT
    from the server), as opposed to a busy or failing server, whose answer says nothing of the rows."""
    if isinstance(exc, InputError):
        return True
    status = str(getattr(exc, "status", "") or "")
    return isinstance(exc, InferenceError) and (status.startswith("4") or status == "StatusCode.INVALID_ARGUMENT")


def _finish(chunk: _Chunk, sink, added_types: dict, options: BatchOptions, summary: BatchSummary,
            to_file: bool, stop: threading.Event) -> None:
    """Wait for a chunk's requests, then write its rows in order (input columns + predictions)."""
    import pyarrow as pa

    n = chunk.table.num_rows
    names = list(added_types)
    outputs: list[np.ndarray | None] = [None] * len(names)
    errors = dict(chunk.errors)
    for start, stop_row, future in chunk.parts:
        _check_stop(stop)
        try:
            values = future.result()
        except ClientError as exc:
            first = chunk.first_row + int(chunk.valid[start]) + 1
            last = chunk.first_row + int(chunk.valid[stop_row - 1]) + 1
            if not refuses_the_rows(exc):
                raise BatchError(f"rows {first}-{last}: {exc}") from None
            if options.on_error == "stop":
                raise BatchError(f"rows {first}-{last}: the server refused them: {exc}") from None
            for index in chunk.valid[start:stop_row]:
                errors[int(index)] = RowError(chunk.first_row + int(index) + 1, "", f"refused by the server: {exc}")
            continue
        rows = chunk.valid[start:stop_row]
        for k, column in enumerate(values):
            if outputs[k] is None:
                outputs[k] = np.empty(n, dtype=column.dtype)
            outputs[k][rows] = column
    mask = np.zeros(n, dtype=bool)
    mask[list(errors)] = True
    added = {}
    for name, column in zip(names, outputs):
        kind = added_types[name]
        added[name] = (pa.nulls(n, type=kind) if column is None  # every row of the chunk failed
                       else pa.array(column, mask=mask if errors else None).cast(kind))
    if options.on_error == "skip":
        messages = [str(errors[i]) if i in errors else None for i in range(n)] if errors else [None] * n
        added[ERROR_COLUMN] = pa.array(messages, type=pa.string())
    table = chunk.table if to_file else pa.table(added)
    if to_file:
        for name, array in added.items():
            table = table.append_column(name, array)
    sink.write(table)
    summary.rows += n
    summary.errors += len(errors)
    for index in sorted(errors)[: max(0, 5 - len(summary.first_errors))]:
        summary.first_errors.append(errors[index])
