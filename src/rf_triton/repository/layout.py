"""Where things live in a Triton model repository: model folders, numbered versions, file names."""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from ..backends import FIL, ONNXRUNTIME, PYTHON, served_by
from .errors import RepositoryError

CONFIG_FILENAME = "config.pbtxt"
METADATA_FILENAME = "metadata.json"  # per version: what made it (tools and their versions, scores, parity)
ONNX_FILENAME = "model.onnx"
FIL_FILENAME = "checkpoint.tl"
PYTHON_FILENAME = "model.py"
# The model file each backend reads from a version folder when the config names none.
MODEL_FILENAMES = {ONNXRUNTIME: ONNX_FILENAME, FIL: FIL_FILENAME, PYTHON: PYTHON_FILENAME}
# Hidden entries: Triton reads only config.pbtxt, numbered folders and the files a config names.
LOCK_FILENAME = ".publish.lock"
STAGING_PREFIX = ".staging-"


def versions(model_dir: Path) -> list[int]:
    """The numbered version folders Triton would consider (no leading zeros)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))


def next_version(model_dir: Path) -> int:
    existing = versions(model_dir)
    return existing[-1] + 1 if existing else 1


def model_dirs(repository: Path) -> list[Path]:
    """The model folders of a repository (hidden ones are not models)."""
    return sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))


def model_filename(config: mc.ModelConfig) -> str:
    """The file Triton loads from each version folder ('' for a backend this project does not know)."""
    return config.default_model_filename or MODEL_FILENAMES.get(served_by(config), "")


def check_model_name(name: str) -> None:
    """A name Triton accepts as a folder of the repository, and that cannot escape it."""
    if not name or "/" in name or name.startswith(".") or name != name.strip() or name in ("..", "."):
        raise RepositoryError(f"invalid model name {name!r}")
