"""Batch scoring benchmark: `rf-triton predict --input FILE --output FILE` on a large file, against the
in-memory `RandomForestClient.predict` on the same server in the same run, with each one's peak RSS.

    python -m rf_triton.benchmarks.batch --rows 10000000

The data is generated into a temporary folder (removed afterwards); the embedded server serves the
committed model repository. Each measured command runs as a child process, so that its peak RSS
(from wait4) is its own; rows/s is rows over the child's whole wall time, start-up included.
Writes results/batch.json and results/batch.md.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

logger = logging.getLogger(__name__)
DEMO_MODEL = "random_forest"
FEATURES = [f"x{i}" for i in range(5)]
GENERATE_ROWS = 1_000_000  # rows generated (and held) at a time

IN_MEMORY = """
import json, sys, time
import pyarrow.parquet as pq
from rf_triton.client import RandomForestClient
path, rows, url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
X = pq.read_table(path, columns=["x0", "x1", "x2", "x3", "x4"]).slice(0, rows).to_pandas().to_numpy(dtype="float32")
with RandomForestClient(url) as client:
    client.predict(X[:1024])  # connection and model warm
    started = time.monotonic()
    predictions = client.predict(X)
    seconds = time.monotonic() - started
assert len(predictions) == rows
print(json.dumps({"rows": rows, "seconds": seconds}))
"""


def generate(folder: Path, rows: int) -> dict[str, Path]:
    """The same rows (5 float32 features and an id) as Parquet and CSV, written chunk by chunk."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    paths = {"parquet": folder / "rows.parquet", "csv": folder / "rows.csv"}
    parquet = csv = None
    for start in range(0, rows, GENERATE_ROWS):
        n = min(GENERATE_ROWS, rows - start)
        table = pa.table({"id": np.arange(start, start + n),
                          **{name: rng.normal(size=n).astype(np.float32) for name in FEATURES}})
        parquet = parquet or pq.ParquetWriter(paths["parquet"], table.schema)
        csv = csv or pcsv.CSVWriter(paths["csv"], table.schema)
        parquet.write_table(table)
        csv.write_table(table)
    parquet.close()
    csv.close()
    return paths


def run_child(label: str, command: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in bytes, stdout) of a child process; fails loudly if it fails."""
    env = {**os.environ, "CI": "1"}  # summary line, no live bar
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{label} exited {proc.returncode}: {stderr.strip()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024, stdout + stderr


def count_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    lines = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            lines += block.count(b"\n")
    return lines - 1  # the header


def run(rows: int, in_memory_rows: int, out: Path, formats: list[str],
        repository: Path = Path("model_repository")) -> dict:
    from ..serve.server import EmbeddedTriton

    work = Path(tempfile.mkdtemp(prefix="rf-triton-batch-bench-"))
    report: dict = {"rows": rows, "in_memory_rows": min(rows, in_memory_rows), "runs": [],
                    "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                               f"Python {platform.python_version()}"}
    try:
        logger.info("generating %d rows in %s", rows, work)
        paths = generate(work, rows)
        report["input_bytes"] = {fmt: paths[fmt].stat().st_size for fmt in paths}
        with EmbeddedTriton.on_free_ports(repository, watch_interval_s=None) as server:
            url = server.endpoints.http
            seconds, rss, output = run_child("in-memory predict", [sys.executable, "-c", IN_MEMORY, str(paths["parquet"]),
                                              str(report["in_memory_rows"]), url])
            measured = json.loads(output.strip().splitlines()[-1])
            report["in_memory"] = {"rows_per_s": measured["rows"] / measured["seconds"], "peak_rss_bytes": rss,
                                   "seconds": measured["seconds"]}
            logger.info("in memory: %s", report["in_memory"])
            for fmt in formats:
                target = work / f"scored.{fmt}"
                seconds, rss, output = run_child(f"rf-triton predict ({fmt})", [sys.executable, "-m", "rf_triton", "predict", "--url", url,
                                                  "--input", str(paths[fmt]), "--output", str(target)])
                written = count_rows(target)
                if written != rows:
                    raise RuntimeError(f"{target} has {written} rows, expected {rows}")
                run = {"format": fmt, "seconds": seconds, "rows_per_s": rows / seconds, "peak_rss_bytes": rss,
                       "summary": output.strip().splitlines()[-1],
                       "share_of_in_memory": rows / seconds / report["in_memory"]["rows_per_s"]}
                report["runs"].append(run)
                logger.info("%s: %s", fmt, run)
                target.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "batch.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "batch.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    memory = report["in_memory"]
    lines = [
        f"Batch scoring of {report['rows']:,} rows (id + 5 float32 features) with the committed demo model on the "
        f"embedded server (HTTP), {report['machine']}. In memory: `RandomForestClient.predict` on the first "
        f"{report['in_memory_rows']:,} rows already loaded as one numpy array. Batch: `rf-triton predict --input "
        "FILE --output FILE` with its defaults, rows over the whole command's wall time (start-up included). "
        "Peak RSS from wait4 on each child process.",
        "",
        "| run | rows | seconds | rows/s | ÷ in-memory rows/s | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| in memory (`RandomForestClient.predict`) | {report['in_memory_rows']:,} | {memory['seconds']:.1f} | "
        f"{memory['rows_per_s']:,.0f} | 1.00 | {memory['peak_rss_bytes'] / 1e6:,.0f} |",
    ]
    for run in report["runs"]:
        lines.append(f"| {run['format']} → {run['format']} (`rf-triton predict --output`) | {report['rows']:,} | "
                     f"{run['seconds']:.1f} | {run['rows_per_s']:,.0f} | {run['share_of_in_memory']:.2f} | "
                     f"{run['peak_rss_bytes'] / 1e6:,.0f} |")
    sizes = ", ".join(f"{fmt} {size / 1e6:,.0f} MB" for fmt, size in report["input_bytes"].items())
    lines += ["", f"Input files: {sizes}.", ""]
    return "\n".join(lines)


def main(
    rows: Annotated[int, typer.Option(help="Rows in the generated file.")] = 10_000_000,
    in_memory_rows: Annotated[int, typer.Option(help="Rows for the in-memory figure (held in memory at once).")] = 2_000_000,
    out: Annotated[Path, typer.Option(help="Folder for batch.json and batch.md.")] = Path("benchmarks/results"),
    format: Annotated[list[str], typer.Option(help="Formats to score (repeat): parquet, csv.")] = ["parquet", "csv"],
    repository: Annotated[Path, typer.Option(
        help="Model repository holding the demo model (the checkout's model_repository/ when run from its root).")]
        = Path("model_repository"),
) -> None:
    """Batch scoring vs in-memory predict, same server, same run; writes batch.json and batch.md."""
    from ..errors import fail

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (repository / DEMO_MODEL).is_dir():
        raise fail(f"model {DEMO_MODEL!r} not found in {repository}: give the repository with --repository "
                   "(rf-triton export writes one into ./model_repository)")
    try:
        report = run(rows, in_memory_rows, out, format, repository)
    except (RuntimeError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(markdown(report))


if __name__ == "__main__":
    typer.run(main)
