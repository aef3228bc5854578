"""Spark scoring benchmark: the same Parquet rows scored by `rf-triton predict --input` and by a local
Spark job through rf_triton.client.spark, against the same embedded server in the same run.

    python -m rf_triton.benchmarks.spark --rows 2000000

The data is generated as in benchmarks/batch.py (5 float32 features and an id) into a temporary
folder, removed afterwards; the server serves the committed model repository. `rf-triton predict`
runs as a child process, its rows/s over the whole command (start-up included), once with its
defaults and once with as many requests in flight as Spark has tasks. The Spark job reads the
Parquet file, scores it with `ForestUDF.score` and writes Parquet; its rows/s is given for the job
alone (the session already up) and with the session's start-up added. Writes results/spark.json
and results/spark.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from .batch import FEATURES, count_rows, generate, run_child

logger = logging.getLogger(__name__)


def spark_run(url: str, source: Path, target: Path, cores: int, batch_size: int | None) -> dict:
    """Score `source` into `target` on local[cores]; wall times of the session start and of the job."""
    import pyspark

    from ..client import spark

    started = time.monotonic()
    with spark.local_session(cores, "rf-triton-spark-bench", str(target.parent / "spark-local")) as session:
        session_s = time.monotonic() - started
        size = source.stat().st_size
        # one partition per task at least (Spark splits a Parquet file at row-group boundaries)
        session.conf.set("spark.sql.files.maxPartitionBytes", str(max(1, math.ceil(size / cores))))
        table = session.read.parquet(str(source))
        partitions = table.rdd.getNumPartitions()
        scorer = spark.predict_udf(url, batch_size=batch_size)
        job_started = time.monotonic()
        scorer.score(table).write.mode("overwrite").parquet(str(target))
        job_s = time.monotonic() - job_started
    return {"pyspark": pyspark.__version__, "cores": cores, "partitions": partitions,
            "batch_size": scorer.batch_size,
            "session_start_s": session_s, "job_s": job_s}


def run(rows: int, cores: int, batch_size: int | None) -> dict:
    from ..serve.server import EmbeddedTriton

    repository = Path(__file__).resolve().parents[1] / "model_repository"
    work = Path(tempfile.mkdtemp(prefix="rf-triton-spark-bench-"))
    report: dict = {"rows": rows, "features": len(FEATURES), "runs": [],
                    "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                               f"Python {platform.python_version()}",
                    "load_average_before": os.getloadavg()[0]}
    try:
        logger.info("generating %d rows in %s", rows, work)
        parquet = generate(work, rows)["parquet"]
        report["input_bytes"] = parquet.stat().st_size
        with EmbeddedTriton.on_free_ports(repository, watch_interval_s=None) as server:
            url = server.endpoints.http
            for concurrency in (None, cores):
                target = work / "scored.parquet"
                extra = ["--concurrency", str(concurrency)] if concurrency else []
                seconds, _, output = run_child("rf-triton predict", [
                    sys.executable, "-m", "rf_triton", "predict", "--url", url, "--input", str(parquet),
                    "--output", str(target), *extra])
                if count_rows(target) != rows:
                    raise RuntimeError(f"{target} has {count_rows(target)} rows, expected {rows}")
                report["runs"].append({"run": "rf-triton predict --input", "in_flight": concurrency or "default",
                                       "seconds": seconds, "rows_per_s": rows / seconds,
                                       "summary": output.strip().splitlines()[-1]})
                logger.info("%s", report["runs"][-1])
                target.unlink()
            target = work / "spark-scored"
            measured = spark_run(url, parquet, target, cores, batch_size)
            scored = sum(count_rows(p) for p in target.glob("*.parquet"))
            if scored != rows:
                raise RuntimeError(f"Spark wrote {scored} rows, expected {rows}")
            report["spark"] = {**measured, "rows_per_s": rows / measured["job_s"],
                               "rows_per_s_with_start": rows / (measured["job_s"] + measured["session_start_s"])}
            logger.info("spark: %s", report["spark"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["load_average_after"] = os.getloadavg()[0]
    return report


def save(report: dict, out: Path) -> None:
    """results/spark.json (the figures) and results/spark.md (the table the docs copy)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("spark.json", json.dumps(report, indent=2) + "\n"), ("spark.md", markdown(report))):
        (out / name).write_text(text)


def markdown(report: dict) -> str:
    job = report["spark"]
    setting = (f"Scoring the same {report['rows']:,} Parquet rows (id + {report['features']} float32 features) with "
               f"the committed demo model on the embedded server (HTTP), {report['machine']}, server and scorers on "
               "the same cores. `rf-triton predict --input FILE --output FILE`: rows over the whole command's wall "
               f"time (start-up included). Spark: PySpark {job['pyspark']} on local[{job['cores']}] "
               f"({job['partitions']} partitions, {job['batch_size']:,} rows per predict call), read Parquet → "
               "`ForestUDF.score` → write Parquet.")
    lines = [setting, "", "| run | requests in flight | seconds | rows/s |", "|---|---:|---:|---:|"]
    for run in report["runs"]:
        in_flight = "1 (default: one per server instance)" if run["in_flight"] == "default" else run["in_flight"]
        lines.append(f"| `rf-triton predict --input` | {in_flight} | {run['seconds']:.1f} | {run['rows_per_s']:,.0f} |")
    lines.append(f"| Spark job (`predict_udf`), session already up | {job['cores']} (one per task) | {job['job_s']:.1f} | "
                 f"{job['rows_per_s']:,.0f} |")
    lines.append(f"| Spark job, session start-up included | {job['cores']} (one per task) | "
                 f"{job['job_s'] + job['session_start_s']:.1f} | {job['rows_per_s_with_start']:,.0f} |")
    lines += ["", f"Input file: {report['input_bytes'] / 1e6:,.0f} MB. Spark session start-up: "
                  f"{job['session_start_s']:.1f} s. Load average (1 min) {report['load_average_before']:.1f} before "
                  f"the run, {report['load_average_after']:.1f} after: other work on the same cores lowers every "
                  "row alike.", ""]
    return "\n".join(lines)


def main(
    rows: Annotated[int, typer.Option(help="Rows in the generated file.", min=1)] = 2_000_000,
    out: Annotated[Path, typer.Option(help="Folder for spark.json and spark.md.")] = Path("benchmarks/results"),
    cores: Annotated[int, typer.Option(help="Spark local[N]: tasks, and so requests, in flight.", min=1)] = 2,
    batch_size: Annotated[int, typer.Option(help="Rows per predict call on a worker; 0: the scorer's default.",
                                            min=0)] = 0,
) -> None:
    """rf-triton predict --input vs a Spark job on the same rows and server; writes spark.json and spark.md."""
    from ..client import ClientError
    from ..errors import fail

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package = logging.getLogger("rf_triton")  # this run's progress; other libraries' loggers left as they are
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        report = run(rows, cores, batch_size or None)
        save(report, out)
    except (RuntimeError, OSError, ClientError) as exc:
        raise fail(str(exc)) from None
    typer.echo(markdown(report))


if __name__ == "__main__":
    typer.run(main)
