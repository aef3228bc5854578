"""config.pbtxt for the stock container's onnxruntime or FIL backend, built through Triton's protobuf.

Options left as ``None`` keep what an existing config.pbtxt says (so a tuned config survives a
re-export) and fall back to :data:`DEFAULTS` for a new model. Reading, writing and the signature
parameter are the repository format's (rf_triton.repository).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tritonclient.grpc import model_config_pb2 as mc

from ..backends import served_by
from ..repository import DATA_TYPES, FIL_FILENAME, ONNX_FILENAME, set_signature
from ..signature import BYTES, Signature
from .errors import ExportError

KINDS = {
    "cpu": mc.ModelInstanceGroup.KIND_CPU,
    "gpu": mc.ModelInstanceGroup.KIND_GPU,
    "auto": mc.ModelInstanceGroup.KIND_AUTO,
}
WARMUP_ROWS = 64


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


def _option(name: str, **constraints):
    """A serving option: None keeps the existing value; `name` is the CLI option errors speak of."""
    return Field(None, title=name, **constraints)


class ServingOptions(BaseModel):
    """How Triton should serve the model; ``None`` means keep the existing value or the default.

    Impossible values are refused at construction with an ExportError naming the option."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_size: Optional[int] = _option("--max-batch-size", ge=1)
    max_queue_delay_us: Optional[int] = _option("--max-queue-delay-us", ge=0)
    preferred_batch_sizes: Optional[tuple[Annotated[int, Field(ge=1)], ...]] = _option("--preferred-batch-size")
    instances: Optional[int] = _option("--instances", ge=1)
    kind: Optional[Literal["cpu", "gpu", "auto"]] = _option("--kind")
    version_policy: Optional[str] = _option("--version-policy")
    intra_op_threads: Optional[int] = _option("--intra-op-threads", ge=0)
    inter_op_threads: Optional[int] = _option("--inter-op-threads", ge=0)
    max_queue_size: Optional[int] = _option("--max-queue-size (0: unbounded)", ge=0)
    queue_timeout_us: Optional[int] = _option("--queue-timeout-us (0: none)", ge=0)
    allow_timeout_override: Optional[bool] = _option("--allow-timeout-override")
    priority_levels: Optional[int] = _option("--priority-levels", ge=0)
    response_cache: Optional[bool] = _option("--response-cache")

    def __init__(self, **values) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ExportError(_first_error(exc)) from None

    @field_validator("version_policy")
    @classmethod
    def _parses(cls, text: str | None) -> str | None:
        if text is not None:
            parse_version_policy(text)
        return text

    @model_validator(mode="after")
    def _preferred_fit(self) -> "ServingOptions":
        if self.preferred_batch_sizes and self.max_batch_size is not None \
                and max(self.preferred_batch_sizes) > self.max_batch_size:
            raise ValueError(f"--preferred-batch-size {max(self.preferred_batch_sizes)} exceeds "
                             f"--max-batch-size {self.max_batch_size}")
        return self


def _first_error(exc: ValidationError) -> str:
    """pydantic's first complaint in the words of the CLI: '--instances must be greater than or equal to 1'."""
    error = exc.errors()[0]
    text = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return text
    name = str(error["loc"][0])
    field = ServingOptions.model_fields.get(name)
    option = field.title if field is not None and field.title else name
    if text.startswith("Input should be"):
        return f"{option.split(' ')[0]} must be{text[len('Input should be'):]}{option[len(option.split(' ')[0]):]}"
    return text if option.split(" ")[0] in text else f"{option}: {text}"


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
FIL_DEFAULTS = DEFAULTS.model_copy(update={"instances": 1, "kind": "auto"})


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


def build_config(name: str, graph: Signature, options: ServingOptions,
                 parameters: dict[str, str], existing: mc.ModelConfig | None = None,
                 backend: Backend = ONNXRUNTIME, removed_parameters: tuple[str, ...] = ()) -> mc.ModelConfig:
    """The `backend` config for `graph`, updating `existing` in place of starting over.

    `parameters`: the backend's own settings to set. The signature goes in whole (its one
    parameter); whether it may replace the existing one is the publisher's check.
    `removed_parameters`: names the target release does not read (FIL's names of another release).
    """
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
    if options.response_cache is not None:  # the server needs a cache too (--cache-config)
        if options.response_cache:
            config.response_cache.enable = True
        else:
            config.ClearField("response_cache")

    thread_parameters = {"intra_op_thread_count": "intra_op_threads", "inter_op_thread_count": "inter_op_threads"}
    if backend.ort_threads:
        for parameter, field in thread_parameters.items():
            if getattr(options, field) is not None or parameter not in config.parameters:
                config.parameters[parameter].string_value = str(pick(field))
    for key, value in backend.fixed_parameters:
        config.parameters[key].string_value = value
    for key in removed_parameters:
        if key in config.parameters:
            del config.parameters[key]
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    set_signature(config, graph)

    del config.model_warmup[:]
    if not any(tensor.datatype == BYTES for tensor in graph.inputs):  # strings: no value is safe to invent
        warmup = config.model_warmup.add(name="zero_rows", batch_size=min(WARMUP_ROWS, config.max_batch_size),
                                         count=1)
        for tensor in graph.inputs:
            warmup.inputs[tensor.name].data_type = DATA_TYPES[tensor.datatype]
            warmup.inputs[tensor.name].dims.extend(tensor.dims)
            warmup.inputs[tensor.name].zero_data = True
    return config


def _queue_policy(batching: mc.ModelDynamicBatching, options: ServingOptions, defaults: ServingOptions) -> None:
    """Overload protection: a bounded queue, an optional queueing timeout, optional priority levels."""
    if options.priority_levels is not None:
        batching.priority_levels = options.priority_levels
        batching.default_priority_level = (options.priority_levels + 1) // 2  # the middle; 1 is the highest
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


def stalls_batcher(config: mc.ModelConfig) -> bool:
    """True for the combination measured to stall Triton 2.51's batcher (see BOUNDED_QUEUE_WARNING)."""
    batching = config.dynamic_batching
    return batching.default_queue_policy.max_queue_size > 0 and batching.max_queue_delay_microseconds > 0
