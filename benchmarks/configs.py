"""Serving variants of one model for the benchmark and the tuner, written through export's protobuf path.

A variant is a copy of the model's folder whose config.pbtxt went through build_config(existing=...)
under the publish lock (rf_triton.repository), exactly as `rf-triton export` updates a config, so a
variant differs from the canonical config only in the options named.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from ..export.triton_config import ServingOptions, build_config
from ..repository import CONFIG_FILENAME, instance_count, signature_of, update_config


def retune(config: mc.ModelConfig, options: ServingOptions, *, dynamic_batching: bool = True) -> mc.ModelConfig:
    """`config` with `options` applied as export applies them; without dynamic batching if asked."""
    updated = build_config(config.name, signature_of(config), options, {}, existing=config)
    if not dynamic_batching:
        updated.ClearField("dynamic_batching")
    return updated


def rewrite_config(model_dir: Path, options: ServingOptions, *, dynamic_batching: bool = True) -> mc.ModelConfig:
    """Apply `options` to model_dir/config.pbtxt in place (atomically, under the publish lock)."""
    return update_config(model_dir, lambda config: retune(config, options, dynamic_batching=dynamic_batching))


def variant_repository(repository: Path, model: str, target: Path, options: ServingOptions, *,
                       dynamic_batching: bool = True) -> mc.ModelConfig:
    """A repository at `target` holding only `model`, with its config rewritten; the source is only read."""
    source = repository / model
    if not (source / CONFIG_FILENAME).is_file():
        raise FileNotFoundError(f"model {model!r} not found in {repository} (no {source / CONFIG_FILENAME})")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target / model, ignore=shutil.ignore_patterns(".*"))
    return rewrite_config(target / model, options, dynamic_batching=dynamic_batching)


def describe(config: mc.ModelConfig) -> str:
    """'2 inst, batching ≤100 µs' — what a table row needs to say about the serving config."""
    instances = instance_count(config)
    if not config.HasField("dynamic_batching"):
        return f"{instances} inst, no batching"
    batching = config.dynamic_batching
    preferred = f", pref {list(batching.preferred_batch_size)}" if batching.preferred_batch_size else ""
    delay = batching.max_queue_delay_microseconds
    wait = f"≤{delay} µs" if delay else "no delay"
    return f"{instances} inst, batching {wait}{preferred}"


def matrix_input(config: mc.ModelConfig):
    """The one feature-matrix input the load generators send (its Tensor: name, datatype, dims), read
    from the model's signature; ValueError in one line for a model that takes one input per column."""
    graph = signature_of(config)
    if graph.columnar:
        raise ValueError(f"model {config.name!r} takes one input per column "
                         f"({', '.join(t.name for t in graph.inputs)}); the benchmarks send one feature matrix: "
                         "load-test it with `rf-triton loadtest`, or score a file with `rf-triton predict --input`")
    return graph.inputs[0]
