"""`rf-triton export`: a thin typer layer over :func:`export_model`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .. import releases
from ..errors import fail
from ..repository import read_config
from . import mlflow_source, sources
from .errors import ExportError
from .pipeline import DEFAULT_FORMAT, DEFAULT_MODEL_NAME, DEFAULT_TOLERANCE, FORMATS, export_model
from .triton_config import BOUNDED_QUEUE_WARNING, DEFAULTS, FIL_DEFAULTS, KINDS, ServingOptions, stalls_batcher

app = typer.Typer()
# The container releases of the table, as choices: 24.10 ... 26.08.
TritonRelease = Enum("TritonRelease", {f"r{tag.replace('.', '_')}": tag for tag in releases.TAGS}, type=str)
console = Console(stderr=True)


@app.command("export")
def export(
    model: Annotated[Optional[Path], typer.Option(
        help="Fitted RandomForest/ExtraTrees regressor or classifier, or Pipeline ending in one, saved with "
             "joblib/pickle. Loading a pickle runs code from it: only use files you trust. "
             "Or an MLflow model (the mlflow extra): models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH "
             "or a model folder, from the stores MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI name.")] = None,
    data: Annotated[Optional[Path], typer.Option(
        help="CSV to train a forest on: the --target column is the label, every other column a feature "
             "(string columns are one-hot encoded inside the exported model; missing numbers are allowed).")] = None,
    target: Annotated[Optional[str], typer.Option(help="Label column of --data.")] = None,
    task: Annotated[str, typer.Option(
        help="With --data: auto (a non-numeric target trains a classifier, else a regressor), "
             "regression or classification.")] = "auto",
    n_estimators: Annotated[int, typer.Option(help="Trees, when training on --data.")] = sources.DEMO_N_ESTIMATORS,
    max_depth: Annotated[Optional[int], typer.Option(help="Maximum tree depth, when training on --data.")] = sources.DEMO_MAX_DEPTH,
    seed: Annotated[int, typer.Option(help="Random seed for training and the validation split.")] = sources.DEMO_SEED,
    repository: Annotated[Path, typer.Option(help="Triton model repository to write into.")] = Path("model_repository"),
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = DEFAULT_MODEL_NAME,
    version: Annotated[Optional[int], typer.Option(help="Version number; default: highest existing + 1.")] = None,
    model_format: Annotated[str, typer.Option(
        "--format", help=f"Model file and Triton backend: {'|'.join(FORMATS)}. onnx: model.onnx for the onnxruntime "
                         "backend (CPU). fil: checkpoint.tl (treelite) for the FIL backend, which evaluates the "
                         "trees on a GPU; served by the stock container only.")] = DEFAULT_FORMAT,
    parity_data: Annotated[Optional[Path], typer.Option(
        help="CSV or Parquet of your own rows (the model's feature columns; others are ignored): the parity "
             "check compares them row by row with sklearn too, besides the held-out or probe rows.")] = None,
    triton_release: Annotated[TritonRelease, typer.Option(
        help="Triton container release (YY.MM) the model is for: export refuses a graph its ONNX Runtime cannot "
             "load, writes FIL parameters under its names and records it in metadata.json. Parity is checked with "
             "the installed onnxruntime; to compute with that release's, pip install its version first.")
    ] = TritonRelease(releases.DEFAULT.tag),
    tolerance: Annotated[float, typer.Option(
        help="Largest relative error allowed between sklearn and the exported model "
             "(run with ONNX Runtime, or treelite's GTIL for --format fil).")] = DEFAULT_TOLERANCE,
    max_batch_size: Annotated[Optional[int], typer.Option(
        help=f"Triton max_batch_size (default: existing config, else {DEFAULTS.max_batch_size}).")] = None,
    max_queue_delay_us: Annotated[Optional[int], typer.Option(
        help=f"Dynamic batcher max queue delay in µs (default: existing, else {DEFAULTS.max_queue_delay_us}).")] = None,
    preferred_batch_size: Annotated[Optional[list[int]], typer.Option(
        help="Preferred batch size for the dynamic batcher; repeat for several. Usually best left unset.")] = None,
    instances: Annotated[Optional[int], typer.Option(
        help=f"Model instances (default: existing, else {DEFAULTS.instances}; "
             f"{FIL_DEFAULTS.instances} per device for --format fil).")] = None,
    kind: Annotated[Optional[str], typer.Option(
        help=f"Instance kind: {'|'.join(KINDS)} (default: existing, else {DEFAULTS.kind}; "
             f"{FIL_DEFAULTS.kind} for --format fil). "
             "ONNX Runtime evaluates tree ensembles on the CPU even in a GPU instance.")] = None,
    version_policy: Annotated[Optional[str], typer.Option(
        help=f"Versions Triton serves: latest[:N], all, specific:1,3 (default: existing, else {DEFAULTS.version_policy}).")] = None,
    intra_op_threads: Annotated[Optional[int], typer.Option(
        help=f"ONNX Runtime intra-op threads per instance, 0 = all cores (default: existing, else {DEFAULTS.intra_op_threads}).")] = None,
    inter_op_threads: Annotated[Optional[int], typer.Option(
        help=f"ONNX Runtime inter-op threads per instance (default: existing, else {DEFAULTS.inter_op_threads}).")] = None,
    serve_versions: Annotated[Optional[str], typer.Option(
        help="Versions to serve side by side, e.g. 1,2 (A/B between versions) or all; "
             "shorthand for --version-policy specific:1,2 / all.")] = None,
    max_queue_size: Annotated[Optional[int], typer.Option(
        help=f"Requests Triton may queue before refusing more with 'Exceeds maximum queue size', 0 = unbounded "
             f"(default: existing, else {DEFAULTS.max_queue_size}). On Triton 2.51 pair it with "
             "--max-queue-delay-us 0: a bounded queue with a delay stalls the batcher.")] = None,
    queue_timeout_us: Annotated[Optional[int], typer.Option(
        help="Refuse a request still queued after this many µs, 0 = never (default: existing, else 0).")] = None,
    allow_timeout_override: Annotated[Optional[bool], typer.Option(
        help="Let a request set its own (shorter) queueing timeout (default: existing, else no).")] = None,
    priority_levels: Annotated[Optional[int], typer.Option(
        help="Priority levels for requests (1 = highest); requests without one get the middle level.")] = None,
    response_cache: Annotated[Optional[bool], typer.Option(
        help="Let Triton answer a request it has answered before from its response cache; the server needs a "
             "cache (serve --cache-size, --cache-config in compose and KServe). Default: existing, else off.")] = None,
) -> None:
    """Export a random forest or extra-trees model to ONNX (or FIL) as a new version in a Triton model repository.

    With no --model or --data, trains the demo model (50 trees, depth 10, 5 features, seed 0).
    Predictions of the exported file are checked against sklearn before anything is written.
    """
    if model is not None and data is not None:
        raise fail("give either --model or --data, not both")
    if data is None and target is not None:
        raise fail("--target goes with --data")
    if data is not None and target is None:
        raise fail("--data needs --target COLUMN")
    if data is None and task != "auto":
        raise fail("--task goes with --data (a --model file already knows its task)")
    if serve_versions is not None:
        if version_policy is not None:
            raise fail("give either --serve-versions or --version-policy, not both")
        version_policy = "all" if serve_versions.strip() == "all" else f"specific:{serve_versions.strip()}"
    try:
        options = ServingOptions(
            max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
            preferred_batch_sizes=tuple(preferred_batch_size) if preferred_batch_size else None,
            instances=instances, kind=kind.lower() if kind else None, version_policy=version_policy,
            intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads, max_queue_size=max_queue_size,
            queue_timeout_us=queue_timeout_us, allow_timeout_override=allow_timeout_override,
            priority_levels=priority_levels, response_cache=response_cache,
        )
        with console.status("Preparing the model"):
            if model is not None and mlflow_source.handles(str(model)):
                trained = mlflow_source.load_mlflow(str(model))
            elif model is not None:
                trained = sources.load_pickled(model)
            elif data is not None:
                trained = sources.train_from_csv(data, target, n_estimators, max_depth, seed, task)
            else:
                trained = sources.train_demo(seed)
        what = (f"{len(trained.classes)} classes ({', '.join(map(str, trained.classes[:10]))})"
                if trained.task == "classification" else f"{trained.n_outputs} output(s)")
        console.print(f"model: {trained.source}, {type(trained.forest).__name__}, {trained.forest.n_estimators} "
                      f"trees, {trained.n_features} features ({', '.join(trained.feature_names)}), {what}")
        if trained.scores:
            console.print("scores: " + ", ".join(f"{k} {v:.4f}" for k, v in trained.scores.items()))
        result = export_model(trained, repository, name=name, version=version, options=options,
                              tolerance=tolerance, console=console, model_format=model_format,
                              parity_data=parity_data, triton_release=triton_release.value)
    except ExportError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; nothing written", 130) from None
    if model_format == "fil":
        console.print("[yellow]note:[/] the FIL backend is in the stock container only (docker compose --profile "
                      "gpu); `rf-triton serve` skips this model.")
    elif kind and kind.lower() == "gpu":
        console.print("[yellow]note:[/] ONNX Runtime computes tree ensembles on the CPU only; a KIND_GPU "
                      "onnxruntime instance still evaluates the trees on the CPU.")
    installed_ort = result.metadata["versions"].get("onnxruntime")
    if installed_ort and installed_ort != result.metadata["triton_onnxruntime"]:
        console.print(f"[yellow]warning:[/] parity was checked with ONNX Runtime {installed_ort}; Triton "
                      f"{triton_release.value} runs {result.metadata['triton_onnxruntime']}: to check with it, pip "
                      f"install onnxruntime=={result.metadata['triton_onnxruntime']} and export again")
    if stalls_batcher(read_config(result.config_path)):
        console.print(f"[yellow]warning:[/] {BOUNDED_QUEUE_WARNING}")
    console.print(f"[green]wrote[/] {result.version_dir} and {result.config_path} in {result.seconds:.2f} s")
    typer.echo(str(result.version_dir))
