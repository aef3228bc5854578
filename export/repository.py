"""Writing into a Triton model repository without ever exposing a half-written version.

A version is built in a staging folder inside the model folder (Triton ignores folders whose name
is not a number) and renamed into place; a new model is staged whole beside the others and renamed
once complete. Any failure removes the staging folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from .errors import ExportError
from .triton_config import CONFIG_FILENAME, write_config

METADATA_FILENAME = "metadata.json"


def versions(model_dir: Path) -> list[int]:
    """The numbered version folders Triton would consider (no leading zeros)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))


def next_version(model_dir: Path) -> int:
    existing = versions(model_dir)
    return existing[-1] + 1 if existing else 1


def write_version(repository: Path, name: str, version: int | None, model_filename: str, model_bytes: bytes,
                  metadata: dict, config: mc.ModelConfig, model_files: dict[str, bytes] | None = None) -> Path:
    """Publish `model_bytes` as REPOSITORY/NAME/VERSION/`model_filename` and the config beside it.

    Returns the version dir. The model file name is the backend's (model.onnx, checkpoint.tl).
    `model_files` go into the model folder beside config.pbtxt (a classifier's labels.txt); the
    signature check keeps them identical across versions, so replacing them is safe.
    """
    if not model_filename or "/" in model_filename or model_filename in (METADATA_FILENAME, CONFIG_FILENAME):
        raise ExportError(f"invalid model file name {model_filename!r}")
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise ExportError(f"invalid model name {name!r}")
    if repository.exists() and not repository.is_dir():
        raise ExportError(f"repository path {repository} exists and is not a folder")
    repository.mkdir(parents=True, exist_ok=True)
    model_dir = repository / name
    version = version if version is not None else next_version(model_dir)
    if version < 1:
        raise ExportError("--version must be at least 1")
    if (model_dir / str(version)).exists():
        raise ExportError(f"version {version} of {name} already exists in {repository}; "
                          "versions are immutable, export a new one")

    new_model = not model_dir.exists()
    staging_parent = repository if new_model else model_dir
    staging = Path(tempfile.mkdtemp(dir=staging_parent, prefix=f".staging-{name}-"))
    try:
        staged_model_dir = staging if new_model else model_dir
        version_dir = staging / str(version) if new_model else staging
        version_dir.mkdir(exist_ok=True)
        _write_file(version_dir / model_filename, model_bytes)
        _write_file(version_dir / METADATA_FILENAME, (json.dumps(metadata, indent=2) + "\n").encode())
        for filename, data in (model_files or {}).items():
            target = staged_model_dir / filename
            if new_model:
                _write_file(target, data)
            else:
                _replace_file(target, data)
        if new_model:
            write_config(staged_model_dir / CONFIG_FILENAME, config)
            os.chmod(staging, 0o755)
            os.rename(staging, model_dir)
        else:
            os.chmod(staging, 0o755)
            os.rename(staging, model_dir / str(version))
            write_config(model_dir / CONFIG_FILENAME, config)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model_dir / str(version)


def _replace_file(path: Path, data: bytes) -> None:
    """Atomic replacement of a file beside live versions: readers see the old bytes or the new."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        _write_file(Path(tmp), data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
