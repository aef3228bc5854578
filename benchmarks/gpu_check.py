"""The Python half of benchmarks/gpu_check.sh: one forest, one set of rows, rows/s and the error against sklearn.

FIL computes in FP32 on the GPU while the export's parity check runs treelite's GTIL on the CPU, so
the check that matters in production is the served prediction against sklearn's on the same rows.
Every line this prints is `DEVICE ENGINE batch=N rows/s=R max_rel_err=E`, E by the export's parity
rule (rf_triton.export.parity.relative_errors) on the very rows that were timed.

    python -m rf_triton.benchmarks.gpu_check prepare WORK --batch-sizes 1024,16384
    python -m rf_triton.benchmarks.gpu_check cpu WORK --batch-sizes 1024 --seconds 3
    python -m rf_triton.benchmarks.gpu_check nvforest WORK --batch-sizes 1024 --seconds 3
    python -m rf_triton.benchmarks.gpu_check served WORK --url 127.0.0.1:18000 --batch 1024 --rows-per-s 5e6 ...
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Annotated, Callable

import numpy as np
import typer

from ..errors import fail
from ..export.parity import relative_errors
from .inprocess import all_threads, ort_session

app = typer.Typer(add_completion=False, no_args_is_help=True)
FOREST = "forest.joblib"
ROWS = "rows.npy"
EXPECTED = "expected.npy"


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(b) for b in text.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise fail(f"--batch-sizes takes positive whole numbers separated by commas, not {text!r}")
    return batches


def load_reference(work: Path) -> tuple[np.ndarray, np.ndarray]:
    """The rows every engine is timed on and sklearn's predictions for them."""
    try:
        return np.load(work / ROWS), np.load(work / EXPECTED)
    except OSError as exc:
        raise fail(f"no reference rows in {work} (run `prepare` first): {exc.strerror or exc}")


def measure(predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, seconds: float) -> tuple[float, np.ndarray]:
    """Calls back to back on `rows` for `seconds` after one warm-up call: observed rows/s and the last output."""
    output = np.asarray(predict(rows))
    calls, started = 0, time.perf_counter()
    while True:
        output = np.asarray(predict(rows))  # on the host: a GPU call is synchronised
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls * len(rows) / elapsed, output


def line(device: str, engine: str, batch: int, rows_per_s: float, expected: np.ndarray, got: np.ndarray) -> str:
    error = float(relative_errors(expected, np.asarray(got).reshape(len(expected), -1)[:, 0]).max())
    return f"{device} {engine} batch={batch} rows/s={rows_per_s:.0f} max_rel_err={error:.3g}"


@app.command()
def prepare(work: Path, batch_sizes: Annotated[str, typer.Option()] = "1024,16384") -> None:
    """Train the demo forest once, save it (both exports read it), draw the rows and keep sklearn's predictions."""
    import joblib

    from ..export import sources

    batches = parse_batches(batch_sizes)
    trained = sources.train_demo()
    rows = np.random.default_rng(0).standard_normal((max(batches), trained.estimator.n_features_in_),
                                                    dtype=np.float32)
    with warnings.catch_warnings():  # fitted on a frame with names; these are the same columns in order
        warnings.simplefilter("ignore")
        expected = trained.estimator.predict(rows)
    joblib.dump(trained.estimator, work / FOREST)
    np.save(work / ROWS, rows)
    np.save(work / EXPECTED, expected)


def model_file(work: Path, export_format: str, filename: str) -> Path:
    found = sorted((work / export_format).glob(f"*/*/{filename}"))
    if not found:
        raise fail(f"no {filename} under {work / export_format}")
    return found[-1]


def time_engine(work: Path, device: str, engine: str, predict: Callable[[np.ndarray], np.ndarray],
                batch_sizes: str, seconds: float) -> None:
    """One line per batch size: rows/s over `seconds`, and the error of the last output against sklearn."""
    rows, expected = load_reference(work)
    for batch in parse_batches(batch_sizes):
        rate, got = measure(predict, rows[:batch], seconds)
        typer.echo(line(device, engine, batch, rate, expected[:batch], got))


@app.command()
def cpu(work: Path, batch_sizes: Annotated[str, typer.Option()] = "1024,16384",
        seconds: Annotated[float, typer.Option(min=0.01)] = 3.0) -> None:
    """ONNX Runtime in-process on the exported model.onnx, every core, host numpy input."""
    load_reference(work)
    session = ort_session(model_file(work, "onnx", "model.onnx"), 0)
    name = session.get_inputs()[0].name
    time_engine(work, "cpu", f"onnxruntime-{all_threads()}-cores", lambda X: session.run(None, {name: X})[0],
                batch_sizes, seconds)


def gpu_forest(checkpoint: str):
    """The checkpoint on the GPU, in-process: nvForest (RAPIDS; what the FIL backend runs from 26.06),
    else cuML's FIL (deprecated in 26.06, removed in 26.10) with a message saying so."""
    try:
        import nvforest
    except ImportError:
        nvforest = None
    if nvforest is not None:
        model = nvforest.load_model(checkpoint, model_type="treelite_checkpoint", device="gpu")
        return "nvforest", model.predict
    try:
        from cuml.fil import ForestInference
    except ImportError:
        raise fail("neither nvForest nor cuML imports: pip install nvforest-cu12 (CUDA 12) or nvforest-cu13 "
                   "(CUDA 13), or run --mode triton") from None
    typer.echo("note: nvForest is not installed (pip install nvforest-cu12); timing cuml.fil instead, which "
               "cuML deprecates in 26.06 and removes in 26.10", err=True)
    try:  # cuML < 25.x spells the regressor flag output_class, later releases is_classifier
        model = ForestInference.load(checkpoint, model_type="treelite_checkpoint", output_class=False)
    except TypeError:
        model = ForestInference.load(checkpoint, model_type="treelite_checkpoint", is_classifier=False)
    return "cuml-fil", model.predict


@app.command("nvforest")
def nvforest_engine(work: Path, batch_sizes: Annotated[str, typer.Option()] = "1024,16384",
                    seconds: Annotated[float, typer.Option(min=0.01)] = 3.0) -> None:
    """nvForest in-process on the very checkpoint.tl the FIL backend serves; the host→device copy is timed."""
    load_reference(work)
    engine, predict = gpu_forest(str(model_file(work, "fil", "checkpoint.tl")))
    time_engine(work, "gpu", engine, predict, batch_sizes, seconds)


@app.command()
def served(work: Path, url: Annotated[str, typer.Option()], device: Annotated[str, typer.Option()],
           engine: Annotated[str, typer.Option()], batch: Annotated[int, typer.Option(min=1)],
           rows_per_s: Annotated[float, typer.Option(min=0)]) -> None:
    """A server's predictions for the first `batch` rows (rows/s measured elsewhere, by perf_analyzer)."""
    from ..client import ClientError, RandomForestClient

    rows, expected = load_reference(work)
    try:
        with RandomForestClient(url) as client:
            got = client.predict(rows[:batch])
    except ClientError as exc:
        raise fail(f"{engine} at {url}: {exc}")
    typer.echo(line(device, engine, batch, rows_per_s, expected[:batch], got))


if __name__ == "__main__":
    app()
