"""Full-size forest benchmark: `RandomForestRegressor()` with its defaults, side by side in one run.

    python -m rf_triton.benchmarks.fullsize [--model forest.joblib]

The forest is what sklearn's defaults give on real data (100 fully grown trees, millions of nodes),
not the small demo. In one run, for the same 2000-row calls:

- the export itself: `rf-triton export --model` as a child process, its wall time and peak RSS
  (from wait4), with the export's default serving options;
- in-process ONNX Runtime on the exported model.onnx with 1 and 2 intra-op threads, and sklearn's
  own predict with n_jobs 1 and 2: what the served figure is judged against;
- the exported model served by the embedded Triton, `RandomForestClient.predict` over HTTP and gRPC;
  these six go round in turn (`--rounds`), so that other work on a shared machine spreads over all;
- the server's own ceiling: 1-row requests at concurrency 64 (loadgen: wrk when installed) against
  a Python-backend model that does no work, alternated with the demo forest under the same load on
  the same server. Served ÷ ceiling is the share of the server's limit the model reaches.

The no-work model is a measuring instrument, written into a temporary repository for the run and
named so; it is never part of a repository this project serves.
Writes results/fullsize.json and results/fullsize.md.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from . import inprocess

logger = logging.getLogger(__name__)

FULLSIZE_MODEL = "fullsize_forest"
DEMO_MODEL = "random_forest"
NO_WORK_MODEL = "no_work_instrument"
DATASET = {"n_samples": 50_000, "n_features": 20, "n_informative": 10, "noise": 10, "random_state": 0}

# Zeros of the declared output shape for every request: the frontend, the batcher and the Python
# backend's per-request IPC with no model behind them.
NO_WORK_MODEL_SOURCE = '''"""Measuring instrument for the server's ceiling: answers zeros, computes nothing. Not a model."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.dims = [int(d) for d in config["output"][0]["dims"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().shape[0]
            zeros = np.zeros([rows, *self.dims], dtype=np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, zeros)]))
        return responses
'''


def dataset():
    """The full-size training set as float32, and the same rows the probes are cut from."""
    from sklearn.datasets import make_regression

    X, y = make_regression(**DATASET)
    return X.astype(np.float32), y.astype(np.float32)


def train(path: Path) -> float:
    """Fit `RandomForestRegressor(random_state=0)` (every other parameter default) and save it; seconds."""
    import joblib
    from sklearn.ensemble import RandomForestRegressor

    X, y = dataset()
    started = time.perf_counter()
    forest = RandomForestRegressor(random_state=0, n_jobs=-1).fit(X, y)  # n_jobs changes the time, not the trees
    seconds = time.perf_counter() - started
    forest.set_params(n_jobs=None)
    joblib.dump(forest, path)
    return seconds


def probe_rows(forest, rows: int) -> np.ndarray:
    """The first `rows` training rows when the forest was fitted on the benchmark's data set, else normal draws."""
    if forest.n_features_in_ == DATASET["n_features"]:
        return np.ascontiguousarray(dataset()[0][:rows])
    return np.random.default_rng(0).standard_normal((rows, forest.n_features_in_), dtype=np.float32)


def export_child(model_path: Path, repository: Path) -> dict:
    """`rf-triton export --model` in a child process with its defaults: wall s, peak RSS, its own timing."""
    from .batch import run_child

    command = [sys.executable, "-m", "rf_triton", "export", "--model", str(model_path),
               "--repository", str(repository), "--name", FULLSIZE_MODEL]
    seconds, peak_rss, output = run_child("rf-triton export", command)
    reported = re.search(r"wrote .* in ([\d.]+) s", output.replace("\n", " "))
    return {"command": "rf-triton export --model FILE", "wall_s": seconds, "peak_rss_bytes": peak_rss,
            "reported_s": float(reported.group(1)) if reported else None,
            "output_tail": [line for line in output.strip().splitlines() if line.strip()][-12:]}


def served_config(repository: Path, model: str) -> dict:
    from ..repository import CONFIG_FILENAME, read_config
    from . import configs

    config = read_config(repository / model / CONFIG_FILENAME)
    threads = config.parameters["intra_op_thread_count"].string_value if "intra_op_thread_count" in config.parameters else ""
    return {"summary": configs.describe(config), "intra_op_thread_count": threads,
            "max_batch_size": config.max_batch_size, "input": config.input[0].name}


def point(label: str, kind: str, calls: int, seconds: float, p50_ms: float, p99_ms: float, rows: int, **extra) -> dict:
    return {"label": label, "kind": kind, "calls": calls, "seconds": seconds, "p50_ms": p50_ms, "p99_ms": p99_ms,
            "rows_per_call": rows, "rows_per_s": calls * rows / seconds, **extra}


def measure_bulk(forest, repository: Path, onnx_path: Path, input_name: str, rows: np.ndarray, duration_s: float,
                 rounds: int, log) -> list[dict]:
    """Rounds of: ONNX Runtime on 1 and 2 threads, sklearn with n_jobs 1 and 2, the served model over HTTP
    and gRPC. The server stays up (idle outside its own points) so every round has every configuration,
    and a burst of other work on the machine lands on one round of each, not on one configuration."""
    from ..client import RandomForestClient
    from ..export.parity import relative_errors
    from ..serve.server import EmbeddedTriton

    forest.set_params(n_jobs=None)
    expected = forest.predict(rows)
    sessions = {threads: inprocess.ort_session(onnx_path, threads) for threads in (1, 2)}
    results: list[dict] = []

    def measure(label: str, kind: str, call, round_number: int, **extra) -> None:
        calls, seconds, p50, p99 = inprocess.timed_calls(call, duration_s)
        results.append(point(label, kind, calls, seconds, p50, p99, len(rows), round=round_number, **extra))
        log(results[-1])

    # A 6 M-node forest takes a while to load into ONNX Runtime: a longer deadline than the demo's.
    with EmbeddedTriton.on_free_ports(repository, watch_interval_s=None).start(ready_timeout_s=600) as server, \
            RandomForestClient(server.endpoints.http, model=FULLSIZE_MODEL, timeout_s=120) as http, \
            RandomForestClient(server.endpoints.grpc, protocol="grpc", model=FULLSIZE_MODEL, timeout_s=120) as grpc:
        clients = {"HTTP": http, "gRPC": grpc}
        differences = {name: float(np.max(relative_errors(expected, client.predict(rows))))
                       for name, client in clients.items()}
        for round_number in range(1, rounds + 1):
            for threads, session in sessions.items():
                measure(f"ONNX Runtime in-process, {threads} intra-op thread{'s' if threads > 1 else ''}",
                        "onnxruntime", lambda: session.run(None, {input_name: rows}), round_number, threads=threads)
            for jobs in (1, 2):
                forest.set_params(n_jobs=jobs)
                measure(f"sklearn predict, n_jobs={jobs}", "sklearn", lambda: forest.predict(rows), round_number,
                        threads=jobs)
            forest.set_params(n_jobs=None)
            for name, client in clients.items():
                measure(f"served, RandomForestClient.predict over {name}", "served", lambda: client.predict(rows),
                        round_number, protocol=name, requests_per_call=-(-len(rows) // client.max_batch_size),
                        max_rel_diff_vs_sklearn=differences[name])
    return results


def by_configuration(points: list[dict]) -> list[dict]:
    """One line per configuration over its rounds: mean rows/s, its range, median p50, worst p99."""
    lines: dict[str, dict] = {}
    for p in points:
        lines.setdefault(p["label"], {"label": p["label"], "kind": p["kind"], "threads": p.get("threads"),
                                      "rounds": []})["rounds"].append(p)
    for line in lines.values():
        rates = [p["rows_per_s"] for p in line["rounds"]]
        line.update(rows_per_s=float(np.mean(rates)), min_rows_per_s=min(rates), max_rows_per_s=max(rates),
                    p50_ms=float(np.median([p["p50_ms"] for p in line["rounds"]])),
                    p99_ms=max(p["p99_ms"] for p in line["rounds"]))
    return list(lines.values())


def ceiling_repository(demo_repository: Path, target: Path) -> None:
    """The demo forest next to the no-work model with the same serving config, Python backend."""
    from ..repository import CONFIG_FILENAME, read_config, write_config
    from ..serve.runtime_repository import python_backend_config

    shutil.copytree(demo_repository / DEMO_MODEL, target / DEMO_MODEL, ignore=shutil.ignore_patterns(".*"))
    config = python_backend_config(read_config(demo_repository / DEMO_MODEL / CONFIG_FILENAME), [])
    config.name = NO_WORK_MODEL
    del config.parameters["onnx_model_filename"]
    (target / NO_WORK_MODEL / "1").mkdir(parents=True)
    (target / NO_WORK_MODEL / "1" / "model.py").write_text(NO_WORK_MODEL_SOURCE)
    write_config(target / NO_WORK_MODEL / CONFIG_FILENAME, config)


def measure_ceiling(demo_repository: Path, work: Path, concurrency: int, duration_s: float, rounds: int,
                    log) -> dict:
    """Demo forest and no-work model alternated under the same 1-row load on one server."""
    from ..repository import CONFIG_FILENAME, read_config
    from ..serve.server import EmbeddedTriton
    from ..signature import numpy_dtype
    from . import configs, loadgen

    repository = work / "ceiling_repository"
    ceiling_repository(demo_repository, repository)
    config = served_config(repository, DEMO_MODEL)
    canonical = read_config(repository / DEMO_MODEL / CONFIG_FILENAME)
    features = configs.matrix_input(canonical)  # the payload the demo model's signature asks for
    output_name = canonical.output[0].name
    runs = []
    with EmbeddedTriton.on_free_ports(repository, watch_interval_s=None) as server:
        payload = np.random.default_rng(0).standard_normal((1, int(features.dims[-1]))).astype(
            numpy_dtype(features.datatype))
        for round_number in range(1, rounds + 1):
            for model in (DEMO_MODEL, NO_WORK_MODEL):
                target = loadgen.Target(server.endpoints.http, server.endpoints.grpc, model, features.name,
                                        output_name, features.datatype)
                load = loadgen.run_load("http", target, payload, concurrency, duration_s, warmup_s=1.0)
                runs.append({"model": model, "round": round_number, "generator": load.generator,
                             "requests_per_s": load.throughput, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms,
                             "errors": load.errors, "requests": load.requests})
                log(runs[-1])

    return {"concurrency": concurrency, "rows_per_request": 1, "protocol": "http", "duration_s": duration_s,
            "generator": runs[0]["generator"], "serving": config["summary"], "runs": runs, **ceiling_summary(runs)}


def ceiling_summary(runs: list[dict]) -> dict:
    """Mean requests/s of the demo forest and of the no-work model over the rounds, and their ratio."""
    def mean(model: str) -> float:
        return float(np.mean([r["requests_per_s"] for r in runs if r["model"] == model]))

    served, ceiling = mean(DEMO_MODEL), mean(NO_WORK_MODEL)
    return {"served_rps": served, "ceiling_rps": ceiling, "served_over_ceiling": served / ceiling}


def non_default_parameters(forest) -> dict[str, str]:
    """The estimator's parameters that differ from a fresh one's (n_jobs aside: it changes time, not trees)."""
    defaults = type(forest)().get_params()
    return {name: repr(value) for name, value in forest.get_params().items()
            if name != "n_jobs" and repr(value) != repr(defaults.get(name))}


def run(model_path: Optional[Path], rows: int, duration_s: float, ceiling_duration_s: float, concurrency: int,
        rounds: int, out: Path, demo_repository: Path = Path("model_repository")) -> dict:
    import joblib

    from .bench import machine_description

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="rf-triton-fullsize-"))
    report: dict = {"machine": machine_description(), "load_before": os.getloadavg(), "rows_per_call": rows,
                    "duration_s": duration_s, "dataset": DATASET}
    log = lambda figures: logger.info("%s", figures)  # noqa: E731
    try:
        if model_path is None:
            model_path = work / "fullsize.joblib"
            logger.info("training RandomForestRegressor(random_state=0) on make_regression(%s)", DATASET)
            report["train_s"] = train(model_path)
        report["model_file"] = {"path": str(model_path), "bytes": model_path.stat().st_size,
                                "trained_here": "train_s" in report}

        repository = work / "model_repository"
        logger.info("exporting %s with rf-triton export (child process)", model_path)
        report["export"] = export_child(model_path, repository)
        log(report["export"])
        metadata = json.loads((repository / FULLSIZE_MODEL / "1" / "metadata.json").read_text())
        onnx_path = repository / FULLSIZE_MODEL / "1" / "model.onnx"
        report["forest"] = {"estimator": metadata["estimator"], "n_estimators": metadata["n_estimators"],
                            "max_depth": metadata["max_depth"], "n_nodes": metadata["n_nodes"],
                            "n_features": len(metadata["feature_names"]), "onnx_bytes": onnx_path.stat().st_size,
                            "parity": metadata["parity"]}
        report["serving"] = served_config(repository, FULLSIZE_MODEL)

        forest = joblib.load(model_path)
        report["forest"]["parameters"] = non_default_parameters(forest)
        probes = probe_rows(forest, rows)
        report["rounds"] = rounds
        report["points"] = measure_bulk(forest, repository, onnx_path, report["serving"]["input"], probes,
                                        duration_s, rounds, log)
        del forest
        gc.collect()
        report["ceiling"] = measure_ceiling(demo_repository, work, concurrency,
                                            ceiling_duration_s, rounds, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["load_after"] = os.getloadavg()
    report["elapsed_s"] = time.perf_counter() - started
    write_report(report, out)
    return report


def write_report(report: dict, out: Path) -> dict[str, Path]:
    """results/fullsize.json (every figure) and results/fullsize.md (the tables the README quotes)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "fullsize.json", "table": out / "fullsize.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["table"].write_text(markdown(report))
    return paths


def _mb(value: float) -> str:
    return f"{value / 1e6:,.0f} MB"


def markdown(report: dict) -> str:
    forest, export, serving, ceiling = report["forest"], report["export"], report["serving"], report["ceiling"]
    lines_by_configuration = by_configuration(report["points"])
    sklearn_1 = next(line for line in lines_by_configuration
                     if line["kind"] == "sklearn" and line["threads"] == 1)["rows_per_s"]
    threads = serving["intra_op_thread_count"]
    threads_text = "all cores" if threads == "0" else f"{threads} intra-op thread{'' if threads == '1' else 's'}"
    export_itself = "" if export["reported_s"] is None else f" (export itself {export['reported_s']:.1f} s)"
    parity = forest["parity"]
    data = report["dataset"]
    recipe = (f"`make_regression(n_samples={data['n_samples']:,}, n_features={data['n_features']}, "
              f"n_informative={data['n_informative']}, noise={data['noise']}, random_state={data['random_state']})` "
              "as float32")
    origin = (f"fitted in this run on {recipe} in {report['train_s']:.0f} s" if report["model_file"]["trained_here"]
              else f"loaded from a joblib file (`--model`); probe rows from {recipe}")
    parameters = ", ".join(f"{k}={v}" for k, v in forest.get("parameters", {}).items())
    lines = [
        f"Full-size forest: `{forest['estimator']}({parameters})`, every other parameter default, "
        f"{origin}: {forest['n_estimators']} trees, {forest['n_nodes']:,} nodes, joblib "
        f"{_mb(report['model_file']['bytes'])}, ONNX {_mb(forest['onnx_bytes'])}. {report['machine']}. "
        f"Load average {report['load_before'][0]:.1f} before and {report['load_after'][0]:.1f} after the run "
        f"(other work shared the machine). One run, {report['elapsed_s']:.0f} s.",
        "",
        "| step | wall time | peak RSS | parity |",
        "|---|---:|---:|---|",
        f"| `rf-triton export --model` (child process, default options) | {export['wall_s']:.1f} s{export_itself} | "
        f"{_mb(export['peak_rss_bytes'])} | max relative error {parity['max_rel_error']:.2g} on {parity['rows']:,} "
        f"rows ({parity['checked_with']}) |",
        "",
        f"Calls of {report['rows_per_call']:,} rows, back to back for {report['duration_s']:g} s per configuration, "
        f"in {report['rounds']} rounds that each go through every configuration (rows/s: mean of the rounds and "
        "their range; p50: median; p99: worst). Served: the "
        f"export's default serving config ({serving['summary']}, ONNX Runtime {threads_text}, max_batch_size "
        f"{serving['max_batch_size']}: `RandomForestClient.predict` splits a call into requests of at most that "
        "many rows), the embedded Triton (Python backend + ONNX Runtime) on the same cores as the client.",
        "",
        "| configuration | rows/s | range over rounds | p50 per call (ms) | p99 per call (ms) | ÷ sklearn n_jobs=1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for line in lines_by_configuration:
        lines.append(f"| {line['label']} | {line['rows_per_s']:,.0f} | {line['min_rows_per_s']:,.0f}–"
                     f"{line['max_rows_per_s']:,.0f} | {line['p50_ms']:.1f} | {line['p99_ms']:.1f} | "
                     f"{line['rows_per_s'] / sklearn_1:.2f} |")
    served = [p for p in report["points"] if p["kind"] == "served"]
    if served:
        worst = max(p["max_rel_diff_vs_sklearn"] for p in served)
        lines += ["", f"Served predictions vs sklearn's on the same rows: max relative difference {worst:.2g}."]
    lines += [
        "",
        f"Server ceiling: 1-row requests over HTTP at concurrency {ceiling['concurrency']} ({ceiling['generator']}, "
        f"on the same cores), {ceiling['duration_s']:g} s per run, the demo forest and a Python-backend model that "
        f"does no work (answers zeros) alternated on one embedded server, same serving config "
        f"({ceiling['serving']}).",
        "",
        "| model | round | requests/s | p50 (ms) | p99 (ms) | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in ceiling["runs"]:
        name = "demo forest" if r["model"] == DEMO_MODEL else "no-work model (ceiling)"
        lines.append(f"| {name} | {r['round']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['errors']} |")
    lines += ["", f"Served ÷ ceiling: {ceiling['served_over_ceiling']:.2f} ({ceiling['served_rps']:,.0f} vs "
                  f"{ceiling['ceiling_rps']:,.0f} requests/s, mean of the rounds).", ""]
    return "\n".join(lines)


def main(
    model: Annotated[Optional[Path], typer.Option(
        help="A fitted forest saved with joblib (only files you trust); default: train the full-size forest.")] = None,
    rows: Annotated[int, typer.Option(help="Rows per call.")] = 2000,
    duration_s: Annotated[float, typer.Option(help="Seconds of back-to-back calls per configuration.")] = 5.0,
    ceiling_duration_s: Annotated[float, typer.Option(help="Seconds per ceiling run (wrk rounds to whole seconds).")] = 5.0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight for the ceiling runs.")] = 64,
    rounds: Annotated[int, typer.Option(
        help="Rounds through every 2000-row configuration, and alternated ceiling runs (demo forest, no-work model).")] = 2,
    out: Annotated[Path, typer.Option(help="Folder for fullsize.json and fullsize.md.")] = Path("benchmarks/results"),
    repository: Annotated[Path, typer.Option(
        help="Model repository holding the demo model for the ceiling runs (the checkout's model_repository/ "
             "when run from its root).")] = Path("model_repository"),
) -> None:
    """The full-size forest: export, in-process ORT and sklearn, served; and the server's ceiling."""
    from ..errors import fail
    from ..serve.server import ServerStartError
    from . import loadgen

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if model is not None and not model.is_file():
        raise fail(f"--model {model}: no such file")
    if not (repository / DEMO_MODEL).is_dir():
        raise fail(f"model {DEMO_MODEL!r} not found in {repository}: give the repository with --repository")
    for name, value in (("rows", rows), ("duration-s", duration_s), ("ceiling-duration-s", ceiling_duration_s),
                        ("concurrency", concurrency), ("rounds", rounds)):
        if value <= 0:
            raise fail(f"--{name} must be positive, not {value:g}")
    if loadgen.wrk_path() is None:
        logger.warning("wrk not installed: the ceiling load comes from tritonclient.http.aio (slower)")
    try:
        report = run(model, rows, duration_s, ceiling_duration_s, concurrency, rounds, out, repository)
    except (RuntimeError, OSError, ServerStartError) as exc:
        raise fail(str(exc)) from None
    typer.echo(markdown(report))


if __name__ == "__main__":
    typer.run(main)
