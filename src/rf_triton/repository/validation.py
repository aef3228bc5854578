"""The rules a model folder must satisfy to be served: one set, with one message and fix per problem.

`rf-triton doctor` shows them as rows; `rf-triton serve` refuses (at start) or blocks (while running)
a model that breaks them, with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tritonclient.grpc import model_config_pb2 as mc

from ..backends import served_by
from ..errors import first_line
from ..signature import Tensor
from .config import DATA_TYPES, read_config, signature_of
from .errors import RepositoryError
from .layout import CONFIG_FILENAME, model_filename, versions

CONFIG, VERSIONS, GRAPH = "config", "versions", "graph"
REEXPORT = "re-export it: rf-triton export --repository {repository} --name {name} (add --format fil for FIL)"

# backend → (what its model file is, called; function reading the file's tensors (inputs, outputs))
GraphReaders = dict[str, tuple[str, Callable[[bytes], tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]]]


@dataclass(frozen=True)
class Problem:
    check: str  # CONFIG, VERSIONS or GRAPH: which part of the model folder breaks the rule
    detail: str
    fix: str


def reexport(model_dir: Path) -> str:
    return REEXPORT.format(repository=model_dir.parent, name=model_dir.name)


def validate(model_dir: Path, graph_readers: GraphReaders | None = None) -> list[Problem]:
    """Everything that stops Triton from serving `model_dir`, config first, then versions, then graphs.

    `graph_readers` (backend → reader) also compares each version's model file with the config;
    without them the model files are only checked to be there and non-empty."""
    config, problems = _check_config(model_dir)
    if config is None:
        return problems
    present = versions(model_dir)
    if not present:
        return problems + [Problem(VERSIONS, f"no version folder in {model_dir} (e.g. {model_dir}/1)",
                                   reexport(model_dir))]
    complete, version_problems = _check_versions(model_dir, config, present)
    problems += version_problems
    reader = (graph_readers or {}).get(served_by(config))
    if reader is not None and complete:
        problems += _check_graphs(model_dir, config, complete, *reader)
    return problems


def complete_versions(model_dir: Path, config: mc.ModelConfig) -> list[int]:
    """The versions whose model file is there and not empty."""
    return _check_versions(model_dir, config, versions(model_dir))[0]


def _check_config(model_dir: Path) -> tuple[mc.ModelConfig | None, list[Problem]]:
    path = model_dir / CONFIG_FILENAME
    if not path.is_file():
        return None, [Problem(CONFIG, f"no {CONFIG_FILENAME} in {model_dir}", f"restore it or {reexport(model_dir)}")]
    try:
        config = read_config(path)
    except RepositoryError as exc:
        return None, [Problem(CONFIG, first_line(exc), f"correct the line named, or {reexport(model_dir)}")]
    problems = []
    if config.name and config.name != model_dir.name:
        problems.append(Problem(CONFIG, f"name {config.name!r} differs from its folder {model_dir.name!r}",
                                f'set name: "{model_dir.name}" in {path}'))
    config.name = config.name or model_dir.name
    if config.input:
        problems += _check_signature(model_dir, config)
    for output in config.output:  # a classifier's labels.txt: Triton's classification extension reads it
        if output.label_filename and not (model_dir / output.label_filename).is_file():
            problems.append(Problem(CONFIG, f"output {output.name} names {output.label_filename}, and "
                                            f"{model_dir / output.label_filename} is missing",
                                    f"restore it or {reexport(model_dir)}"))
    return config, problems


def _check_signature(model_dir: Path, config: mc.ModelConfig) -> list[Problem]:
    """The signature parameter must describe the tensors Triton serves (a hand edit can split them)."""
    try:
        signature = signature_of(config)
    except RepositoryError as exc:
        return [Problem(CONFIG, first_line(exc), reexport(model_dir))]
    problems = []
    for kind, declared, described in (("input", config.input, signature.inputs),
                                      ("output", config.output, signature.outputs)):
        served = [(t.name, t.data_type, list(t.dims)) for t in declared]
        said = [(t.name, DATA_TYPES.get(t.datatype), list(t.dims)) for t in described]
        if served != said:
            problems.append(Problem(CONFIG, f"the signature parameter describes {kind}s {_tensors(described)}, "
                                            f"config.pbtxt declares {_declared(declared)}",
                                    f"make both say what the model takes, or {reexport(model_dir)}"))
    return problems


def _tensors(tensors) -> str:
    return ", ".join(f"{t.name} {t.datatype} {list(t.dims)}" for t in tensors) or "none"


def _declared(tensors) -> str:
    return ", ".join(f"{t.name} {mc.DataType.Name(t.data_type).removeprefix('TYPE_')} {list(t.dims)}"
                     for t in tensors) or "none"


def _check_versions(model_dir: Path, config: mc.ModelConfig, present: list[int]) -> tuple[list[int], list[Problem]]:
    """Every version folder must hold a non-empty model file: Triton would fail on a half-written one."""
    filename = model_filename(config)
    details, complete = [], []
    for version in present:
        path = model_dir / str(version) / filename
        if filename and not path.is_file():
            details.append(f"version {version} has no {filename}")
        elif filename and path.stat().st_size == 0:
            details.append(f"version {version}: {filename} is empty (half-written)")
        else:
            complete.append(version)
    wanted = set(config.version_policy.specific.versions) - set(present)
    if wanted:
        details.append(f"version_policy names missing version(s) {', '.join(map(str, sorted(wanted)))}")
    if not details:
        return complete, []
    broken = [str(model_dir / str(v)) for v in present if v not in complete]
    fix = (f"remove the incomplete folder(s) ({' '.join(broken)}) and " if broken else "") + reexport(model_dir)
    return complete, [Problem(VERSIONS, "; ".join(details), fix + " (export writes a version whole, never half)")]


def _dims_match(config_dims, graph_dims: list[int]) -> bool:
    return len(config_dims) == len(graph_dims) and all(c == g or -1 in (c, g) for c, g in zip(config_dims, graph_dims))


def mismatches(config: mc.ModelConfig, graph: tuple[tuple[Tensor, ...], tuple[Tensor, ...]]) -> list[str]:
    """How config.pbtxt's inputs, outputs and warmup differ from a graph's (names, dtypes, dims)."""
    batch = [] if config.max_batch_size > 0 else [-1]  # without batching the config spells the batch dim out
    problems = []
    for kind, tensors, declared in (("input", config.input, graph[0]), ("output", config.output, graph[1])):
        names = [t.name for t in declared]
        if [t.name for t in tensors] != names:
            problems.append(f"config {kind}s {[t.name for t in tensors]}, the graph's {names}")
            continue
        for tensor, wanted in zip(tensors, declared):
            expected = batch + list(wanted.dims)
            if tensor.data_type != DATA_TYPES[wanted.datatype]:
                problems.append(f"{kind} {tensor.name} is {mc.DataType.Name(tensor.data_type)}, the graph's "
                                f"{mc.DataType.Name(DATA_TYPES[wanted.datatype])}")
            if not _dims_match(tensor.dims, expected):
                problems.append(f"{kind} {tensor.name} dims {list(tensor.dims)}, the graph's {expected}")
    inputs = {t.name: t for t in graph[0]}
    for warmup in config.model_warmup:  # Triton runs it at load: a stale name or shape fails the load
        for key, sample in warmup.inputs.items():
            if key not in inputs:
                problems.append(f"warmup {warmup.name!r} feeds {key!r}, the graph's inputs are {sorted(inputs)}")
            elif not _dims_match(sample.dims, list(inputs[key].dims)):
                problems.append(f"warmup {warmup.name!r} dims {list(sample.dims)}, the graph's {list(inputs[key].dims)}")
    return problems


def _check_graphs(model_dir: Path, config: mc.ModelConfig, complete: list[int], kind: str,
                  read_graph: Callable) -> list[Problem]:
    filename = model_filename(config)
    details = []
    for version in complete:
        try:
            graph = read_graph((model_dir / str(version) / filename).read_bytes())
        except Exception as exc:  # onnx and treelite raise their own decode errors for damaged files
            details.append(f"version {version}: {filename} is not a readable {kind} ({type(exc).__name__}: "
                           f"{first_line(exc)})")
            continue
        details += [f"version {version}: {p}" for p in mismatches(config, graph)]
    if not details:
        return []
    return [Problem(GRAPH, "; ".join(details), f"make config.pbtxt say what the graph takes, or {reexport(model_dir)}")]
