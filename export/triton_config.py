"""config.pbtxt for the stock container's onnxruntime or FIL backend, built through Triton's protobuf.

Options left as ``None`` keep what an existing config.pbtxt says (so a tuned config survives a
re-export) and fall back to :data:`DEFAULTS` for a new model.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ..backends import served_by
from ..signature import BYTES, FEATURE_NAMES_PARAMETER, FP32, FP64, INT64, Signature
from .errors import ExportError

CONFIG_FILENAME = "config.pbtxt"
ONNX_FILENAME = "model.onnx"
FIL_FILENAME = "checkpoint.tl"
KINDS = {
    "cpu": mc.ModelInstanceGroup.KIND_CPU,
    "gpu": mc.ModelInstanceGroup.KIND_GPU,
    "auto": mc.ModelInstanceGroup.KIND_AUTO,
}
WARMUP_ROWS = 64
DATA_TYPES = {FP32: mc.TYPE_FP32, FP64: mc.TYPE_FP64, INT64: mc.TYPE_INT64, BYTES: mc.TYPE_STRING}


@dataclass(frozen=True)
class ServingOptions:
    """How Triton should serve the model; ``None`` means keep the existing value or the default."""

    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    preferred_batch_sizes: tuple[int, ...] | None = None
    instances: int | None = None
    kind: str | None = None
    version_policy: str | None = None
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    max_queue_size: int | None = None
    queue_timeout_us: int | None = None
    allow_timeout_override: bool | None = None
    priority_levels: int | None = None


# One single-threaded instance and no batching delay: chosen from a side-by-side sweep on 2 cores
# (the figures are in benchmarks/README.md and benchmarks/results/bench.md). Under load the batcher
# still forms batches from requests queued behind the busy instance. Hosts with more cores: raise
# --instances (`rf-triton tune` measures). The queue is unbounded by default: on Triton 2.51 a
# bounded queue with a delay > 0 stalls the batcher (see BOUNDED_QUEUE_WARNING).
DEFAULTS = ServingOptions(
    max_batch_size=1024, max_queue_delay_us=0, preferred_batch_sizes=(), instances=1, kind="cpu",
    version_policy="latest:1", intra_op_threads=1, inter_op_threads=1, max_queue_size=0,
    queue_timeout_us=0, allow_timeout_override=False, priority_levels=0,
)
# A forest this large costs more per row than the Python backend's per-request work, so ONNX Runtime
# gets every core (intra_op_thread_count 0) by default: bulk rows/s of the full-size forest in
# benchmarks/results/fullsize.md. Small forests keep one thread: their cost is per request, and
# the batcher and the HTTP frontend want the other cores.
LARGE_FOREST_NODES = 1_000_000
BOUNDED_QUEUE_WARNING = (
    "a bounded queue with a queue delay > 0 stalls Triton 2.51's dynamic batcher for up to ~0.5 s "
    "(measured: p90 318 ms vs 0.6 ms); use --max-queue-delay-us 0 with --max-queue-size, and check with rf-triton bench")


# FIL: one instance on each GPU when there is one (KIND_AUTO), else one on the CPU.
FIL_DEFAULTS = replace(DEFAULTS, instances=1, kind="auto")


@dataclass(frozen=True)
class Backend:
    """What differs between the backends this project writes configs for."""

    name: str
    model_filename: str
    defaults: ServingOptions
    fixed_parameters: tuple[tuple[str, str], ...] = ()
    ort_threads: bool = False  # intra/inter-op thread parameters are ONNX Runtime's


ONNXRUNTIME = Backend("onnxruntime", ONNX_FILENAME, DEFAULTS, ort_threads=True)
FIL = Backend("fil", FIL_FILENAME, FIL_DEFAULTS, fixed_parameters=(("model_type", "treelite_checkpoint"),))


def validate(options: ServingOptions) -> None:
    """Refuse impossible values with a message naming the option."""
    o = options
    checks = [
        (o.max_batch_size is not None and o.max_batch_size < 1, "--max-batch-size must be at least 1"),
        (o.max_queue_delay_us is not None and o.max_queue_delay_us < 0, "--max-queue-delay-us must be >= 0"),
        (o.instances is not None and o.instances < 1, "--instances must be at least 1"),
        (o.kind is not None and o.kind not in KINDS, f"--kind must be one of {', '.join(KINDS)}"),
        (o.intra_op_threads is not None and o.intra_op_threads < 0, "--intra-op-threads must be >= 0"),
        (o.inter_op_threads is not None and o.inter_op_threads < 0, "--inter-op-threads must be >= 0"),
        (o.max_queue_size is not None and o.max_queue_size < 0, "--max-queue-size must be >= 0 (0: unbounded)"),
        (o.queue_timeout_us is not None and o.queue_timeout_us < 0, "--queue-timeout-us must be >= 0 (0: none)"),
        (o.priority_levels is not None and o.priority_levels < 0, "--priority-levels must be >= 0"),
    ]
    for failed, message in checks:
        if failed:
            raise ExportError(message)
    if o.preferred_batch_sizes:
        if any(size < 1 for size in o.preferred_batch_sizes):
            raise ExportError("--preferred-batch-size values must be at least 1")
        if o.max_batch_size is not None and max(o.preferred_batch_sizes) > o.max_batch_size:
            raise ExportError(f"--preferred-batch-size {max(o.preferred_batch_sizes)} exceeds "
                              f"--max-batch-size {o.max_batch_size}")
    if o.version_policy is not None:
        parse_version_policy(o.version_policy)


def parse_version_policy(text: str) -> mc.ModelVersionPolicy:
    """``latest[:N]``, ``all`` or ``specific:1,3`` → Triton's ModelVersionPolicy."""
    kind, _, arg = text.strip().partition(":")
    policy = mc.ModelVersionPolicy()
    try:
        if kind == "latest":
            count = int(arg) if arg else 1
            if count < 1:
                raise ValueError
            policy.latest.num_versions = count
        elif kind == "all" and not arg:
            policy.all.SetInParent()
        elif kind == "specific" and arg:
            versions = [int(v) for v in arg.split(",")]
            if any(v < 1 for v in versions):
                raise ValueError
            policy.specific.versions.extend(versions)
        else:
            raise ValueError
    except ValueError:
        raise ExportError(f"invalid version policy {text!r}: use latest[:N], all, or specific:V1,V2") from None
    return policy


def build_config(name: str, graph: Signature, options: ServingOptions,
                 metadata: dict[str, str], existing: mc.ModelConfig | None = None,
                 backend: Backend = ONNXRUNTIME) -> mc.ModelConfig:
    """The `backend` config for `graph`, updating `existing` in place of starting over.

    `metadata`: parameters to set (the signature's task/classes/feature names, the backend's own
    settings, tool versions). A new version must keep the signature of the versions before it.
    """
    validate(options)
    if not backend.ort_threads and (options.intra_op_threads is not None or options.inter_op_threads is not None):
        raise ExportError(f"--intra-op-threads/--inter-op-threads are ONNX Runtime options; "
                          f"the {backend.name} backend does not use them")
    defaults = backend.defaults
    config = mc.ModelConfig()
    if existing is not None:
        current = served_by(existing)
        if current != backend.name:
            raise ExportError(f"model {name} is served by the {current} backend, its versions cannot switch "
                              f"to {backend.name}: export under another --name or --repository")
        check_same_signature(name, existing, graph)
        config.CopyFrom(existing)
    config.name = name
    config.ClearField("platform")
    config.backend = backend.name
    config.default_model_filename = backend.model_filename

    def pick(field: str):
        return getattr(options, field) if getattr(options, field) is not None else getattr(defaults, field)

    if options.max_batch_size is not None or config.max_batch_size == 0:
        config.max_batch_size = pick("max_batch_size")
    if options.preferred_batch_sizes and max(options.preferred_batch_sizes) > config.max_batch_size:
        raise ExportError(f"--preferred-batch-size {max(options.preferred_batch_sizes)} exceeds "
                          f"max_batch_size {config.max_batch_size}")

    del config.input[:]
    for tensor in graph.inputs:
        config.input.add(name=tensor.name, data_type=DATA_TYPES[tensor.datatype], dims=tensor.dims)
    del config.output[:]
    for tensor in graph.outputs:
        config.output.add(name=tensor.name, data_type=DATA_TYPES[tensor.datatype], dims=tensor.dims,
                          label_filename=tensor.label_filename)

    batching = config.dynamic_batching
    if options.max_queue_delay_us is not None or not config.HasField("dynamic_batching"):
        batching.max_queue_delay_microseconds = pick("max_queue_delay_us")
    if options.preferred_batch_sizes is not None:
        del batching.preferred_batch_size[:]
        batching.preferred_batch_size.extend(options.preferred_batch_sizes)
    _queue_policy(batching, options, defaults)

    if options.instances is not None or options.kind is not None or not config.instance_group:
        previous = config.instance_group[0] if config.instance_group else None
        count = options.instances or (previous.count if previous and previous.count else defaults.instances)
        kind = KINDS[options.kind] if options.kind else (previous.kind if previous else KINDS[defaults.kind])
        del config.instance_group[:]
        config.instance_group.add(count=count, kind=kind)

    if options.version_policy is not None or not config.HasField("version_policy"):
        config.version_policy.CopyFrom(parse_version_policy(pick("version_policy")))

    thread_parameters = {"intra_op_thread_count": "intra_op_threads", "inter_op_thread_count": "inter_op_threads"}
    if backend.ort_threads:
        for parameter, field in thread_parameters.items():
            if getattr(options, field) is not None or parameter not in config.parameters:
                config.parameters[parameter].string_value = str(pick(field))
    for key, value in backend.fixed_parameters:
        config.parameters[key].string_value = value
    for key, value in metadata.items():
        config.parameters[key].string_value = value

    del config.model_warmup[:]
    if not any(tensor.datatype == BYTES for tensor in graph.inputs):  # strings: no value is safe to invent
        warmup = config.model_warmup.add(name="zero_rows", batch_size=min(WARMUP_ROWS, config.max_batch_size),
                                         count=1)
        for tensor in graph.inputs:
            warmup.inputs[tensor.name].data_type = DATA_TYPES[tensor.datatype]
            warmup.inputs[tensor.name].dims.extend(tensor.dims)
            warmup.inputs[tensor.name].zero_data = True
    return config


def signature_of(config: mc.ModelConfig) -> tuple:
    """What clients and older versions rely on: tensors, task, classes, feature names."""
    tensors = tuple((t.name, t.data_type, tuple(t.dims)) for t in list(config.input) + list(config.output))
    parameters = tuple(config.parameters[k].string_value if k in config.parameters else None
                       for k in ("task", "classes", FEATURE_NAMES_PARAMETER))
    return tensors, parameters


def check_same_signature(name: str, existing: mc.ModelConfig, graph: Signature) -> None:
    """Refuse a version whose inputs/outputs differ from the model's: the config is shared by all
    versions, so rewriting it would break the older ones at their next load (and rollbacks)."""
    if not existing.input:
        return
    proposed = mc.ModelConfig()
    for tensor in graph.inputs:
        proposed.input.add(name=tensor.name, data_type=DATA_TYPES[tensor.datatype], dims=tensor.dims)
    for tensor in graph.outputs:
        proposed.output.add(name=tensor.name, data_type=DATA_TYPES[tensor.datatype], dims=tensor.dims)
    for key, value in graph.config_parameters().items():
        proposed.parameters[key].string_value = value
    old_tensors, old_parameters = signature_of(existing)
    new_tensors, new_parameters = signature_of(proposed)
    old_parameters = tuple(o if o is not None else n for o, n in zip(old_parameters, new_parameters))
    if old_tensors != new_tensors or old_parameters != new_parameters:
        raise ExportError(f"model {name} takes and returns {_describe(existing)}; this model "
                          f"{_describe(proposed)}: a new version must keep them (older versions share the "
                          "config), export under another --name")


def _describe(config: mc.ModelConfig) -> str:
    def dims(t) -> str:
        return f"{t.name}[{','.join(map(str, t.dims))}]"

    task = config.parameters["task"].string_value if "task" in config.parameters else "regression"
    return (f"{', '.join(dims(t) for t in config.input)} → {', '.join(dims(t) for t in config.output)} "
            f"({task})")


def _queue_policy(batching: mc.ModelDynamicBatching, options: ServingOptions, defaults: ServingOptions) -> None:
    """Overload protection: a bounded queue, an optional queueing timeout, optional priority levels."""
    fresh = not batching.HasField("default_queue_policy")
    named = (options.max_queue_size, options.queue_timeout_us, options.allow_timeout_override)
    if fresh and not any(named):
        return  # nothing to bound: no policy block at all, as Triton's default
    queue = batching.default_queue_policy
    if options.max_queue_size is not None or fresh:
        queue.max_queue_size = options.max_queue_size if options.max_queue_size is not None else defaults.max_queue_size
    if options.queue_timeout_us is not None or fresh:
        timeout = options.queue_timeout_us if options.queue_timeout_us is not None else defaults.queue_timeout_us
        queue.default_timeout_microseconds = timeout
        queue.timeout_action = mc.ModelQueuePolicy.REJECT
    if options.allow_timeout_override is not None or fresh:
        queue.allow_timeout_override = bool(options.allow_timeout_override)
    if options.priority_levels is not None:
        batching.priority_levels = options.priority_levels
        batching.default_priority_level = (options.priority_levels + 1) // 2  # the middle; 1 is the highest


def stalls_batcher(config: mc.ModelConfig) -> bool:
    """True for the combination measured to stall Triton 2.51's batcher (see BOUNDED_QUEUE_WARNING)."""
    batching = config.dynamic_batching
    return batching.default_queue_policy.max_queue_size > 0 and batching.max_queue_delay_microseconds > 0


def feature_names(config: mc.ModelConfig) -> list[str] | None:
    if FEATURE_NAMES_PARAMETER not in config.parameters:
        return None
    return json.loads(config.parameters[FEATURE_NAMES_PARAMETER].string_value)


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def read_config(path: Path) -> mc.ModelConfig:
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path} is not a valid Triton model config: {exc}") from exc


def write_config(path: Path, config: mc.ModelConfig) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(to_text(config))
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the server may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
