"""Derive the embedded server's runtime repository from the canonical one, model by model.

The canonical repository targets the stock container's onnxruntime backend. The embedded server
only has the Python backend, so each onnxruntime model becomes a Python-backend model with the same
name, versions, inputs/outputs, max_batch_size, batching, instances (the counts Triton would give
the canonical config) and warmup, whose model.py runs the very same model.onnx (linked, not
copied) with ONNX Runtime. The canonical repository is only read.

Each model stands alone, as in the stock container: a model that breaks the repository rules
(rf_triton.repository.validate) gets a stand-in whose load fails with the reason, and the others
are mirrored as usual.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from ..backends import PYTHON, embeddable, is_onnx, served_by
from ..repository import (
    CONFIG_FILENAME, ONNX_FILENAME, RepositoryError, instance_groups_on_cpu_host, model_dirs, read_config, reading,
    validate, versions, write_config,
)

__all__ = ["RepositoryError", "RuntimeRepository", "canonical_state", "derive", "python_backend_config", "sync"]

MODEL_SOURCE = Path(__file__).with_name("python_backend_model.py")
BLOCKED_MARKER = ".blocked"  # in a stand-in's folder: the reason it stands in
# A stand-in for a model that cannot be served: its load fails with the reason, as the stock
# container's load of the canonical model would fail.
BLOCKED_CONFIG = 'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n' \
    'input [{{ name: "INPUT" data_type: TYPE_FP32 dims: [1] }}]\n' \
    'output [{{ name: "OUTPUT" data_type: TYPE_FP32 dims: [1] }}]\n'
BLOCKED_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        raise pb_utils.TritonModelException({reason!r})
"""


@dataclass
class RuntimeRepository:
    path: Path
    models: dict[str, list[int]] = field(default_factory=dict)  # mirrored: name → versions
    warnings: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)  # name → why it cannot be served (its stand-in says so)
    pending: list[str] = field(default_factory=list)  # a publish held them too long: left as they were


def derive(canonical: Path, runtime: Path, *, allow_broken: bool = False) -> RuntimeRepository:
    """Write the runtime repository for `canonical` into the empty folder `runtime`.

    A broken model is refused (RepositoryError naming every one), unless `allow_broken`, where it
    gets its stand-in."""
    if not canonical.is_dir():
        raise RepositoryError(f"model repository not found: {canonical}")
    result = RuntimeRepository(runtime)
    runtime.mkdir(parents=True, exist_ok=True)
    for model_dir in model_dirs(canonical):
        with reading(model_dir) as settled:
            if not settled:
                result.pending.append(model_dir.name)
                continue
            _derive_model(model_dir, runtime / model_dir.name, result)
    if result.broken and not allow_broken:
        raise RepositoryError("; ".join(result.broken.values()))
    if not result.models and not result.broken and not result.pending:
        raise RepositoryError(f"no model in {canonical} can be served by the embedded server")
    return result


def _derive_model(model_dir: Path, target: Path, result: RuntimeRepository) -> None:
    problems = validate(model_dir)
    config = _config_if_readable(model_dir)
    if config is not None and not embeddable(config):
        result.warnings.append(f"model {model_dir.name} skipped: backend {config.backend or config.platform!r} is "
                               "not in the embedded server (python backend only); serve it with the stock container")
        return
    if problems:
        reason = f"model {model_dir.name} cannot be served: " + "; ".join(p.detail for p in problems)
        _write_stand_in(target, model_dir.name, reason)
        result.broken[model_dir.name] = reason
        return
    available = versions(model_dir)
    if served_by(config) == PYTHON:
        shutil.copytree(model_dir, target, symlinks=True, ignore=shutil.ignore_patterns(".*"))
    elif is_onnx(config):
        _translate_onnx_model(model_dir, config, available, target, result.warnings)
    result.models[model_dir.name] = available


def _config_if_readable(model_dir: Path) -> mc.ModelConfig | None:
    try:
        config = read_config(model_dir / CONFIG_FILENAME)
    except RepositoryError:
        return None
    config.name = config.name or model_dir.name
    return config


def _write_stand_in(target: Path, name: str, reason: str) -> None:
    (target / "1").mkdir(parents=True)
    (target / "1" / "model.py").write_text(BLOCKED_MODEL.format(reason=reason))
    (target / CONFIG_FILENAME).write_text(BLOCKED_CONFIG.format(name=name))
    (target / BLOCKED_MARKER).write_text(reason)


def python_backend_config(config: mc.ModelConfig, warnings: list[str]) -> mc.ModelConfig:
    """The Python-backend twin of an onnxruntime-backend config, with the instances Triton gives the original."""
    runtime = mc.ModelConfig()
    runtime.CopyFrom(config)
    runtime.ClearField("platform")
    runtime.backend = "python"
    runtime.ClearField("default_model_filename")
    runtime.ClearField("optimization")  # ORT execution accelerators / graph level: not ours to apply
    runtime.parameters["onnx_model_filename"].string_value = config.default_model_filename or ONNX_FILENAME
    del runtime.instance_group[:]
    for group in instance_groups_on_cpu_host(config):
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            warnings.append(f"model {config.name}: KIND_GPU instances run as KIND_CPU on the embedded server "
                            "(no GPU here; ONNX Runtime computes tree ensembles on the CPU anyway)")
            group.count *= max(1, len(group.gpus))
            group.kind = mc.ModelInstanceGroup.KIND_CPU
            group.ClearField("gpus")
        runtime.instance_group.append(group)
    return runtime


def _translate_onnx_model(source: Path, config: mc.ModelConfig, available: list[int], target: Path,
                          warnings: list[str]) -> None:
    onnx_name = config.default_model_filename or ONNX_FILENAME
    for version in available:
        version_dir = target / str(version)
        version_dir.mkdir(parents=True)
        (version_dir / onnx_name).symlink_to((source / str(version) / onnx_name).resolve())
        shutil.copy2(MODEL_SOURCE, version_dir / "model.py")
    for output in config.output:  # a classifier's labels.txt: Triton's classification extension reads it
        if output.label_filename:
            shutil.copy2(source / output.label_filename, target / output.label_filename)
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
    """Bring `runtime` in line with `canonical`, model by model, without disturbing what is there.

    A healthy model's new versions appear by rename (whole), removed ones go, its files are
    replaced atomically: its folder never disappears. A model turning broken is swapped for its
    stand-in, and back once fixed. The server reads these files only when a model is (re)loaded,
    so serving versions are unaffected.
    """
    staging = Path(tempfile.mkdtemp(dir=runtime.parent, prefix=".sync-"))
    try:
        fresh = derive(canonical, staging / "models", allow_broken=True)
        for model_dir in sorted(p for p in fresh.path.iterdir() if p.is_dir()):
            target = runtime / model_dir.name
            if not target.exists():
                os.rename(model_dir, target)
            elif (target / BLOCKED_MARKER).exists() or (model_dir / BLOCKED_MARKER).exists():
                if _marker(target) != _marker(model_dir):
                    _swap(model_dir, target, staging)
            else:
                _update_in_place(model_dir, target)
        kept = set(fresh.models) | set(fresh.broken) | set(fresh.pending)
        for gone in [p for p in runtime.iterdir() if p.is_dir() and p.name not in kept]:
            shutil.rmtree(gone)
        fresh.path = runtime
        return fresh
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _marker(model_dir: Path) -> str | None:
    marker = model_dir / BLOCKED_MARKER
    return marker.read_text() if marker.exists() else None


def _swap(new: Path, target: Path, staging: Path) -> None:
    """Replace a whole model folder (a stand-in coming or going): only this model is touched."""
    old = staging / f"old-{target.name}"
    os.rename(target, old)
    os.rename(new, target)


def _update_in_place(model_dir: Path, target: Path) -> None:
    new_versions = {p.name for p in model_dir.iterdir() if p.is_dir()}
    for version in sorted(new_versions - {p.name for p in target.iterdir() if p.is_dir()}):
        os.rename(model_dir / version, target / version)
    for stale in [p for p in target.iterdir() if p.is_dir() and p.name not in new_versions]:
        shutil.rmtree(stale)
    for model_file in sorted(p for p in model_dir.iterdir() if p.is_file()):  # config, labels
        current = target / model_file.name
        if not current.is_file() or current.read_bytes() != model_file.read_bytes():
            os.replace(model_file, current)  # unchanged files keep their times: Triton reloads on change only
