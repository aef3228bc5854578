"""Batch scoring of a Spark DataFrame through a served forest, with Spark's own `predict_batch_udf`.

Why it is built this way:
- Spark's documented path for calling an inference server from a job is
  `pyspark.ml.functions.predict_batch_udf`: it hands each Python worker batches of rows as numpy
  arrays and calls `make_predict_fn` once per worker. Here that function opens one
  `RandomForestClient` per worker, so each partition being scored has its own connection, and
  every row goes through the client: the same column matching by name, the same checks (NaN is a
  value, ±inf refused, strings for string columns, known categories), the same tensors and the same
  splitting into requests of at most max_batch_size rows, labels and probabilities.
- The driver reads the model's signature once, before the job: it fixes the return type (a number,
  an array of numbers, or a struct of label and probabilities), the columns to read, and refuses a
  DataFrame that lacks a column or holds the wrong kind of values there, before any task runs.
- Spark's null in a numeric column reaches the workers as NaN, a missing value, predicted as
  sklearn predicts NaN; a null in a string column is refused, as the client refuses it.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from .. import signature as sig
from ..extras import install_hint
from .client import ClientError, InputError, RandomForestClient, RetryPolicy

logger = logging.getLogger(__name__)

EXTRA_HINT = install_hint("spark")
# rows handed to one predict call, in requests of max_batch_size: a few requests per call keep the
# per-call overhead (Arrow → numpy → DataFrame) small next to the requests themselves
REQUESTS_PER_BATCH = 8
LABEL_FIELD = "label"
PROBABILITIES_FIELD = "probabilities"
NUMERIC_SPARK_TYPES = ("ByteType", "ShortType", "IntegerType", "LongType", "FloatType", "DoubleType", "DecimalType")


@dataclass(frozen=True)
class ConnectionOptions:
    """What each worker needs to open its own client (picklable: it travels with the UDF)."""

    url: str
    protocol: str = "http"
    model: str = "random_forest"
    version: str = ""
    timeout_s: float = 30.0
    init_timeout_s: float = 30.0
    retry: RetryPolicy = RetryPolicy()

    def client(self) -> RandomForestClient:
        return RandomForestClient(self.url, protocol=self.protocol, model=self.model, version=self.version,
                                  timeout_s=self.timeout_s, init_timeout_s=self.init_timeout_s, retry=self.retry)


@dataclass(frozen=True)
class ForestUDF:
    """A served forest as a Spark column function.

    udf: the pandas UDF `predict_batch_udf` made; it takes `columns`, in that order.
    columns: the DataFrame columns read (the model's feature names, or its inputs for a DataFrame model).
    classes: a classifier's classes, the order of `probabilities`; empty for a regressor.
    batch_size: rows per predict call on a worker.
    """

    udf: Any
    columns: tuple[str, ...]
    classes: tuple
    return_type: Any
    signature: sig.Signature
    batch_size: int

    def __call__(self):
        """The prediction column (struct of label and probabilities for a classifier)."""
        from pyspark.sql.functions import col

        return self.udf(*[col("`" + name.replace("`", "``") + "`") for name in self.columns])

    def check(self, frame) -> None:
        """Refuse, before any task runs, a DataFrame the model cannot take (raises InputError)."""
        fields = {field.name: field.dataType for field in frame.schema.fields}
        missing = [name for name in self.columns if name not in fields]
        if missing:
            raise InputError(f"DataFrame lacks column(s) {', '.join(missing)}; the model takes "
                             f"{', '.join(self.columns)}")
        for name, datatype in zip(self.columns, _datatypes(self.signature)):
            kind = type(fields[name]).__name__
            if datatype == sig.BYTES and kind != "StringType":
                raise InputError(f"column {name!r} is {fields[name].simpleString()}; the model takes strings there")
            if datatype != sig.BYTES and kind not in NUMERIC_SPARK_TYPES:
                raise InputError(f"column {name!r} is {fields[name].simpleString()}; the model takes numbers there "
                                 "(cast it, e.g. col(name).cast('double'))")

    def score(self, frame, output: str = "prediction"):
        """`frame` with the prediction in a new column `output`, after `check`."""
        self.check(frame)
        return frame.withColumn(output, self())


def predict_udf(url: str, *, protocol: str = "http", model: str = "random_forest", version: str | int = "",
                batch_size: int | None = None, timeout_s: float = 30.0, init_timeout_s: float = 30.0,
                retry: RetryPolicy = RetryPolicy()) -> ForestUDF:
    """A `predict_batch_udf` for the served model: reads its signature now, scores on the workers.

    batch_size: rows per predict call on a worker (default: REQUESTS_PER_BATCH × max_batch_size);
    the client splits each call into requests of at most max_batch_size rows.
    """
    try:
        from pyspark.ml.functions import predict_batch_udf
    except ImportError as exc:
        raise ClientError(f"Spark scoring needs PySpark ({exc}): {EXTRA_HINT}") from None
    options = ConnectionOptions(url, protocol, model, str(version) if version not in (None, "") else "",
                                timeout_s, init_timeout_s, retry)
    with options.client() as client:
        found, max_batch_size = client.signature, client.max_batch_size
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    columns = tuple(t.name for t in found.inputs) if found.columnar else tuple(found.feature_names)
    return_type = _return_type(found)
    make_predict_fn = _predict_fn_factory(options, found, columns)
    batch_size = batch_size or REQUESTS_PER_BATCH * max_batch_size
    udf = predict_batch_udf(make_predict_fn, return_type=return_type, batch_size=batch_size)
    return ForestUDF(udf, columns, found.classes, return_type, found, batch_size)


def score(frame, url: str, *, output: str = "prediction", **options):
    """`frame` scored by the served model in a new column `output` (see predict_udf for options)."""
    return predict_udf(url, **options).score(frame, output)


def _datatypes(found: sig.Signature) -> list[str]:
    """The Triton datatype of each column read: per input for a DataFrame model, the matrix's otherwise."""
    if found.columnar:
        return [t.datatype for t in found.inputs]
    return [found.inputs[0].datatype] * len(found.feature_names)


def _return_type(found: sig.Signature):
    from pyspark.sql.types import ArrayType, DoubleType, LongType, StringType, StructField, StructType

    if found.is_classifier:
        integer_classes = all(isinstance(c, int) and not isinstance(c, bool) for c in found.classes)
        return StructType([StructField(LABEL_FIELD, LongType() if integer_classes else StringType()),
                           StructField(PROBABILITIES_FIELD, ArrayType(DoubleType(), False))])
    return DoubleType() if found.n_outputs == 1 else ArrayType(DoubleType(), False)


def _predict_fn_factory(options: ConnectionOptions, expected: sig.Signature, columns: tuple[str, ...]):
    """make_predict_fn for predict_batch_udf: runs on each worker, once; returns predict(*columns)."""
    dtypes = [sig.numpy_dtype(datatype) for datatype in _datatypes(expected)]

    def make_predict_fn():
        import numpy as np
        import pandas as pd

        client = options.client().connect()
        if client.signature != expected:
            client.close()
            raise ClientError(f"model {options.model!r} at {options.url} changed since the job was planned "
                              "(a new version?): plan the job again, or pin a version")

        def predict(*arrays):
            frame = pd.DataFrame({name: np.asarray(values, dtype=dtype)
                                  for name, values, dtype in zip(columns, arrays, dtypes)})
            result = client.infer(frame)
            if expected.is_classifier:
                return {LABEL_FIELD: np.asarray(result.labels), PROBABILITIES_FIELD: result.probabilities}
            values = np.asarray(result.values, dtype=np.float64)
            return values.reshape(-1) if expected.n_outputs == 1 else values

        # predict_batch_udf passes one array per column when predict declares one parameter per column
        predict.__signature__ = inspect.Signature(
            [inspect.Parameter(f"column_{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(len(columns))])
        return predict

    return make_predict_fn


@contextmanager
def local_session(cores: int = 2, app_name: str = "rf-triton", local_dir: str | None = None) -> Iterator[Any]:
    """A Spark session on this machine (local[cores]), for tests, benchmarks and trying things out.

    Bound to 127.0.0.1, no web UI, no console progress bar; its Python workers run this interpreter
    (so they import rf_triton) unless PYSPARK_PYTHON says otherwise. On exit the session and the JVM
    it started are stopped. Refuses to run beside an active session, which is not its own to stop.
    """
    try:
        from pyspark import SparkContext
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ClientError(f"Spark scoring needs PySpark ({exc}): {EXTRA_HINT}") from None
    if SparkSession.getActiveSession() is not None or SparkContext._active_spark_context is not None:
        raise ClientError("a Spark session is already active in this process; use it with predict_udf")
    builder = (SparkSession.builder.master(f"local[{cores}]").appName(app_name)
               .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", str(cores))
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    if local_dir:
        builder = builder.config("spark.local.dir", local_dir).config("spark.sql.warehouse.dir", local_dir)
    python = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = python or sys.executable  # read once, when the context starts
    try:
        session = builder.getOrCreate()
    finally:
        if python is None:
            del os.environ["PYSPARK_PYTHON"]
    gateway = SparkContext._gateway
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
        _stop_jvm(gateway)
        SparkContext._gateway = SparkContext._jvm = None  # a later session starts a JVM of its own


def _stop_jvm(gateway) -> None:
    """The JVM leaves when its stdin closes (PySpark's gateway watches it); killed if it lingers."""
    import subprocess

    gateway.shutdown()
    process = getattr(gateway, "proc", None)
    if process is None:
        return
    if process.stdin:
        process.stdin.close()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        logger.warning("Spark's JVM (pid %d) did not stop within 60 s; killing it", process.pid)
        process.kill()
        process.wait()
