"""config.pbtxt as this project writes and reads it: text format, the signature parameter, instances.

The config is shared by every version of a model, so it carries only what all of them share: the
tensors, the serving options, and the whole Signature as one JSON parameter. What differs per
version (the tools that wrote it, scores, parity) lives in that version's metadata.json.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from ..backends import ONNXRUNTIME, served_by
from ..signature import (
    BYTES, FEATURE_NAMES_PARAMETER, FP32, FP64, INT64, LEGACY_PARAMETERS, SIGNATURE_PARAMETER, Signature, from_config,
)
from .errors import RepositoryError
from .files import replace_atomically

DATA_TYPES = {FP32: mc.TYPE_FP32, FP64: mc.TYPE_FP64, INT64: mc.TYPE_INT64, BYTES: mc.TYPE_STRING}
# Parameters older exports wrote into the shared config: per-version facts (now in metadata.json)
# and the separate signature parameters (now SIGNATURE_PARAMETER). Read, never written.
PER_VERSION_PARAMETERS = ("sklearn_version", "skl2onnx_version", "treelite_version")
STALE_PARAMETERS = LEGACY_PARAMETERS + PER_VERSION_PARAMETERS
# Backends for which Triton gives a KIND_CPU group without `count` two instances (Triton core,
# SetDefaultInstanceCount); every other group without `count` gets one.
TWO_CPU_INSTANCE_BACKENDS = {ONNXRUNTIME, "tensorflow"}


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def read_config(path: Path) -> mc.ModelConfig:
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path} is not a valid Triton model config: {exc}") from exc
    except OSError as exc:
        raise RepositoryError(f"cannot read {path}: {exc.strerror or exc}") from exc


def write_config(path: Path, config: mc.ModelConfig) -> None:
    """Write atomically and durably: a reader sees the old file or the new one, never half of it."""
    replace_atomically(path, to_text(config).encode())


def signature_of(config: mc.ModelConfig) -> Signature:
    """The model's signature: the signature parameter, or the separate parameters of older configs."""
    try:
        return from_config(json_format.MessageToDict(config, preserving_proto_field_name=True))
    except (ValueError, IndexError) as exc:  # json's errors are ValueErrors; no input: IndexError
        raise RepositoryError(f"model {config.name}: the {SIGNATURE_PARAMETER} parameter cannot be read "
                              f"({type(exc).__name__}: {exc})") from None


def set_signature(config: mc.ModelConfig, signature: Signature) -> None:
    """Store `signature` whole, dropping what older exports spread over several parameters."""
    for key in STALE_PARAMETERS:
        if key in config.parameters:
            del config.parameters[key]
    config.parameters[SIGNATURE_PARAMETER].string_value = signature.to_json()


def check_same_signature(name: str, existing: mc.ModelConfig, proposed: Signature) -> None:
    """Refuse a version whose signature differs in anything from the model's: the config, and so the
    signature clients and the embedded server read (known categories included), is shared by every
    version, and rewriting it would change what the older versions accept (and rollbacks)."""
    if not existing.input:
        return  # a config without tensors describes nothing yet
    current = Signature.from_json(signature_of(existing).to_json())
    wanted = Signature.from_json(proposed.to_json())
    if current.to_json() != wanted.to_json():
        raise RepositoryError(
            f"model {name}: this model's {', '.join(current.differences(wanted))} differ from the versions already "
            f"published ({describe(current)} vs {describe(wanted)}); older versions share the config, so a new "
            "version must keep its signature whole: export under another --name")


def describe(signature: Signature) -> str:
    def dims(tensor) -> str:
        return f"{tensor.name}[{','.join(map(str, tensor.dims))}]"

    extra = f", classes {list(signature.classes)}" if signature.classes else ""
    if signature.known_categories:
        extra += ", categories " + "; ".join(f"{c}: {list(v)}" for c, v in signature.known_categories)
    return (f"{', '.join(dims(t) for t in signature.inputs)} → {', '.join(dims(t) for t in signature.outputs)} "
            f"({signature.task}{extra})")


def feature_names(config: mc.ModelConfig) -> list[str] | None:
    """The feature names a config declares, or None when it has none (a hand-written config)."""
    has_names = SIGNATURE_PARAMETER in config.parameters or FEATURE_NAMES_PARAMETER in config.parameters
    return list(signature_of(config).feature_names) if has_names else None


def instance_groups_on_cpu_host(config: mc.ModelConfig) -> list[mc.ModelInstanceGroup]:
    """The instance groups Triton creates for `config` on a host without GPUs, counts filled in.

    Triton core's rules (NormalizeInstanceGroup): no group at all is one KIND_AUTO group; KIND_AUTO
    without GPUs is KIND_CPU; a group without `count` gets two instances for an onnxruntime (or
    tensorflow) KIND_CPU group, one otherwise. A KIND_GPU group keeps its kind (one per listed GPU).
    """
    groups = [mc.ModelInstanceGroup()] if not config.instance_group else []
    for group in config.instance_group:
        copy = mc.ModelInstanceGroup()
        copy.CopyFrom(group)
        groups.append(copy)
    for group in groups:
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
            group.ClearField("gpus")
        if group.count < 1:
            cpu = group.kind == mc.ModelInstanceGroup.KIND_CPU
            group.count = 2 if cpu and served_by(config) in TWO_CPU_INSTANCE_BACKENDS else 1
    return groups


def instance_count(config: mc.ModelConfig) -> int:
    """How many instances of the model run on a host without GPUs (Triton's defaults applied)."""
    return sum(group.count * max(1, len(group.gpus)) for group in instance_groups_on_cpu_host(config))


def from_json_config(config: dict) -> mc.ModelConfig:
    """A model config as Triton returns it in JSON (HTTP or gRPC), as the protobuf message."""
    return json_format.ParseDict(config, mc.ModelConfig(), ignore_unknown_fields=True)
