"""Derive the embedded server's runtime repository from the canonical one.

The canonical repository targets the stock container's onnxruntime backend. The embedded server
only has the Python backend, so each onnxruntime model becomes a Python-backend model with the same
name, versions, inputs/outputs, max_batch_size, batching, instances and warmup, whose model.py runs
the very same model.onnx (linked, not copied) with ONNX Runtime. The canonical repository is only read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from ..backends import PYTHON, is_onnx, served_by
from ..export.errors import ExportError
from ..export.repository import versions
from ..export.triton_config import CONFIG_FILENAME, ONNX_FILENAME, read_config, write_config

MODEL_SOURCE = Path(__file__).with_name("python_backend_model.py")


class RepositoryError(RuntimeError):
    """The canonical repository cannot be served by the embedded server."""


@dataclass
class RuntimeRepository:
    path: Path
    models: dict[str, list[int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def derive(canonical: Path, runtime: Path) -> RuntimeRepository:
    """Write the runtime repository for `canonical` into the empty folder `runtime`."""
    if not canonical.is_dir():
        raise RepositoryError(f"model repository not found: {canonical}")
    result = RuntimeRepository(runtime)
    for model_dir in model_dirs(canonical):
        config_path = model_dir / CONFIG_FILENAME
        if not config_path.is_file():
            raise RepositoryError(f"{model_dir} has no {CONFIG_FILENAME}")
        try:
            config = read_config(config_path)
        except ExportError as exc:
            raise RepositoryError(str(exc)) from None
        config.name = config.name or model_dir.name
        available = versions(model_dir)
        if not available:
            raise RepositoryError(f"model {model_dir.name} has no version folder (e.g. {model_dir}/1)")
        if served_by(config) == PYTHON:
            shutil.copytree(model_dir, runtime / model_dir.name, symlinks=True)
        elif is_onnx(config):
            _translate_onnx_model(model_dir, config, available, runtime / model_dir.name, result.warnings)
        else:
            result.warnings.append(f"model {model_dir.name} skipped: backend "
                                   f"{config.backend or config.platform!r} is not in the embedded server "
                                   "(python backend only); serve it with the stock container")
            continue
        result.models[model_dir.name] = available
    if not result.models:
        raise RepositoryError(f"no model in {canonical} can be served by the embedded server")
    return result


def model_dirs(canonical: Path) -> list[Path]:
    """The model folders of a repository (hidden ones are staging folders of an export in progress)."""
    return sorted(p for p in canonical.iterdir() if p.is_dir() and not p.name.startswith("."))


def python_backend_config(config: mc.ModelConfig, warnings: list[str]) -> mc.ModelConfig:
    """The Python-backend twin of an onnxruntime-backend config."""
    runtime = mc.ModelConfig()
    runtime.CopyFrom(config)
    runtime.ClearField("platform")
    runtime.backend = "python"
    runtime.ClearField("default_model_filename")
    runtime.ClearField("optimization")  # ORT execution accelerators / graph level: not ours to apply
    runtime.parameters["onnx_model_filename"].string_value = config.default_model_filename or ONNX_FILENAME
    for group in runtime.instance_group:
        if group.kind in (mc.ModelInstanceGroup.KIND_GPU, mc.ModelInstanceGroup.KIND_AUTO):
            kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
            warnings.append(f"model {config.name}: {kind} instances run as KIND_CPU on the embedded server "
                            "(no GPU here; ONNX Runtime computes tree ensembles on the CPU anyway)")
            group.kind = mc.ModelInstanceGroup.KIND_CPU
            group.ClearField("gpus")
    return runtime


def _translate_onnx_model(source: Path, config: mc.ModelConfig, available: list[int], target: Path,
                          warnings: list[str]) -> None:
    onnx_name = config.default_model_filename or ONNX_FILENAME
    for version in available:
        version_dir = target / str(version)
        version_dir.mkdir(parents=True)
        onnx_file = (source / str(version) / onnx_name).resolve()
        if not onnx_file.is_file():
            raise RepositoryError(f"model {source.name} version {version} has no {onnx_name}")
        (version_dir / onnx_name).symlink_to(onnx_file)
        shutil.copy2(MODEL_SOURCE, version_dir / "model.py")
    for output in config.output:  # a classifier's labels.txt: Triton's classification extension reads it
        if output.label_filename:
            label_file = source / output.label_filename
            if not label_file.is_file():
                raise RepositoryError(f"model {source.name} names {output.label_filename} for output "
                                      f"{output.name}, and {label_file} is missing")
            shutil.copy2(label_file, target / output.label_filename)
    write_config(target / CONFIG_FILENAME, python_backend_config(config, warnings))


def canonical_state(canonical: Path) -> tuple:
    """A cheap fingerprint of the canonical repository: what changes when a version or config does."""
    if not canonical.is_dir():
        return ()  # derive() says what is wrong
    state = []
    for model_dir in model_dirs(canonical):
        for entry in sorted(model_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            state.append((model_dir.name, entry.name, entry.stat().st_mtime_ns))
    return tuple(state)


def sync(canonical: Path, runtime: Path) -> RuntimeRepository:
    """Bring `runtime` in line with `canonical` without disturbing what is already there.

    New versions appear by rename (whole), removed ones go, configs are replaced atomically. The
    server reads these files only when a model is (re)loaded, so serving versions are unaffected.
    """
    staging = Path(tempfile.mkdtemp(dir=runtime.parent, prefix=".sync-"))
    try:
        fresh = derive(canonical, staging / "models")
        for model_dir in sorted(p for p in fresh.path.iterdir() if p.is_dir()):
            target = runtime / model_dir.name
            if not target.exists():
                os.rename(model_dir, target)
                continue
            new_versions = {p.name for p in model_dir.iterdir() if p.is_dir()}
            for version in sorted(new_versions - {p.name for p in target.iterdir() if p.is_dir()}):
                os.rename(model_dir / version, target / version)
            for stale in [p for p in target.iterdir() if p.is_dir() and p.name not in new_versions]:
                shutil.rmtree(stale)
            for model_file in sorted(p for p in model_dir.iterdir() if p.is_file()):  # config, labels
                os.replace(model_file, target / model_file.name)
        for gone in [p for p in runtime.iterdir() if p.is_dir() and p.name not in fresh.models]:
            shutil.rmtree(gone)
        fresh.path = runtime
        return fresh
    finally:
        shutil.rmtree(staging, ignore_errors=True)
