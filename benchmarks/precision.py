"""What FP64 inputs cost: the same pipeline served with FP64 inputs (as export writes it: exact)
and with FP32 inputs (its preprocessing in float32: inexact on grid data, measured here for its
cost only), side by side on one embedded server, over HTTP and gRPC.

    python -m rf_triton.benchmarks.precision       # writes results/precision.json and results/precision.md

The pipeline is StandardScaler → RandomForestRegressor (50 trees, depth 10) on counts, ages and
ratings. Each point keeps `concurrency` requests in flight for `--seconds` with one prebuilt
payload (benchmarks/loadgen.py), FP64 and FP32 alternating so that other work on the machine
spreads over both.
"""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from . import loadgen

RESULTS = Path(__file__).resolve().parent / "results"
POINTS = ((1, 16), (1024, 2))  # (rows per request, requests in flight)
app = typer.Typer(add_completion=False)


def build_repository(repository: Path) -> dict[str, str]:
    """The pipeline exported twice: name → input datatype."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ..export import sources
    from ..export.pipeline import export_model
    from ..signature import FP32
    from .fidelity import _grid

    X, y = _grid(n=4000)
    estimator = make_pipeline(StandardScaler(), RandomForestRegressor(n_estimators=50, max_depth=10,
                                                                      random_state=0)).fit(X, y)
    names = ["count", "age", "rating", "score"]

    class Float32Inputs(sources.TrainedModel):
        numeric_datatype = FP32  # the inexact graph, for its cost

    export_model(sources.TrainedModel(estimator, names, X[:500], "precision benchmark"), repository,
                 name="pipeline_fp64")
    export_model(Float32Inputs(estimator, names, X[:500], "precision benchmark"), repository,
                 name="pipeline_fp32", tolerance=1e9)  # its parity fails by design
    return {"pipeline_fp64": "FP64", "pipeline_fp32": "FP32"}


def run(seconds: float, rounds: int) -> dict:
    from ..serve.server import EmbeddedTriton
    from .fidelity import _grid

    X, _ = _grid(seed=11, n=4096)
    results = []
    with tempfile.TemporaryDirectory(prefix="rf-triton-precision-") as tmp:
        repository = Path(tmp) / "model_repository"
        models = build_repository(repository)
        server = EmbeddedTriton.on_free_ports(repository)
        server.start(ready_timeout_s=120)
        try:
            for protocol in ("http", "grpc"):
                for rows, concurrency in POINTS:
                    for round_ in range(rounds):
                        for model, datatype in models.items():
                            target = loadgen.Target(server.endpoints.http, server.endpoints.grpc, model, "X",
                                                    "variable", datatype)
                            measured = loadgen.run_load(protocol, target, X[:rows], concurrency, seconds)
                            results.append({"model": model, "datatype": datatype, "protocol": protocol,
                                            "rows_per_request": rows, "concurrency": concurrency, "round": round_,
                                            "generator": measured.generator, "rows_per_s": measured.rows_per_s,
                                            "p99_ms": measured.p99_ms, "errors": measured.errors})
        finally:
            server.stop()
    return {"machine": platform.platform(), "seconds_per_point": seconds, "rounds": rounds,
            "points": results, "ratios": ratios(results)}


def ratios(results: list[dict]) -> list[dict]:
    """FP64 rows/s ÷ FP32 rows/s per protocol and payload, from the mean over rounds."""
    out = []
    for protocol in ("http", "grpc"):
        for rows, concurrency in POINTS:
            def mean(datatype: str, key: str) -> float:
                values = [r[key] for r in results if r["protocol"] == protocol and r["rows_per_request"] == rows
                          and r["datatype"] == datatype]
                return float(np.mean(values)) if values else float("nan")

            fp64, fp32 = mean("FP64", "rows_per_s"), mean("FP32", "rows_per_s")
            out.append({"protocol": protocol, "rows_per_request": rows, "concurrency": concurrency,
                        "fp64_rows_per_s": fp64, "fp32_rows_per_s": fp32, "fp64_p99_ms": mean("FP64", "p99_ms"),
                        "fp32_p99_ms": mean("FP32", "p99_ms"), "ratio": fp64 / fp32 if fp32 else float("nan")})
    return out


def markdown(report: dict) -> str:
    lines = ["# FP64 vs FP32 inputs (StandardScaler → RandomForestRegressor, 50 trees)", "",
             f"{report['rounds']} rounds of {report['seconds_per_point']:g} s per point, FP64 and FP32 alternating, "
             f"on {report['machine']}.", "",
             "| protocol | rows/request | in flight | FP64 rows/s | FP32 rows/s | FP64 ÷ FP32 | FP64 p99 ms | FP32 p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["ratios"]:
        lines.append(f"| {r['protocol']} | {r['rows_per_request']} | {r['concurrency']} | {r['fp64_rows_per_s']:,.0f} | "
                     f"{r['fp32_rows_per_s']:,.0f} | {r['ratio']:.2f} | {r['fp64_p99_ms']:.2f} | {r['fp32_p99_ms']:.2f} |")
    return "\n".join(lines) + "\n"


@app.command()
def main(
    seconds: Annotated[float, typer.Option(min=0.5, help="Seconds of load per point and round.")] = 5.0,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds (FP64 and FP32 alternate within each).")] = 3,
    out: Annotated[Path, typer.Option(help="Folder for precision.json and precision.md.")] = RESULTS,
) -> None:
    """Measure FP64 against FP32 inputs for the same pipeline and write the results."""
    report = run(seconds, rounds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "precision.md").write_text(markdown(report))
    typer.echo(markdown(report))


if __name__ == "__main__":
    app()
