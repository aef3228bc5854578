"""Publishing a version: config first, version folder last, one publisher per model at a time.

A publisher takes an exclusive flock on the model folder's lock file, reads the config as it is
now, checks the new version keeps the model's signature, stages the version in a folder Triton
ignores (hidden), writes the shared files and the config atomically, and only then renames the
version folder into place. Any failure removes what it wrote and puts the previous config back, so
a version is either published whole, with its config, or not at all. Readers of the repository
(the embedded server's mirror) take the same lock shared, so they never see a publish halfway.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tritonclient.grpc import model_config_pb2 as mc

from ..signature import Signature
from .config import check_same_signature, read_config, signature_of, to_text
from .errors import RepositoryError
from .files import fsync_folder, replace_atomically, write_durably
from .layout import CONFIG_FILENAME, LOCK_FILENAME, STAGING_PREFIX, check_model_name, next_version

SHARED_LOCK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Published:
    version: int
    version_dir: Path
    config_path: Path
    config: mc.ModelConfig


def publish(repository: Path, name: str, signature: Signature,
            make_config: Callable[[mc.ModelConfig | None], mc.ModelConfig], version_files: dict[str, bytes], *,
            model_files: dict[str, bytes] | None = None, version: int | None = None) -> Published:
    """Publish `version_files` as REPOSITORY/NAME/VERSION/ (next version by default).

    `make_config(existing)` builds the config (which stores `signature`) from the one in place,
    read under the lock (None for a new model); `signature` must equal the model's. `model_files` go beside config.pbtxt
    (a classifier's labels.txt): the signature check keeps them identical across versions. Every
    failure, an OSError included, is one RepositoryError line, with nothing left behind.
    """
    check_model_name(name)
    for filename in [*version_files, *(model_files or {})]:
        if not filename or "/" in filename or filename.startswith(".") or filename == CONFIG_FILENAME:
            raise RepositoryError(f"invalid file name {filename!r} for a model folder")
    if version is not None and version < 1:
        raise RepositoryError("--version must be at least 1")
    if repository.exists() and not repository.is_dir():
        raise RepositoryError(f"repository path {repository} exists and is not a folder")
    model_dir = repository / name
    try:
        repository.mkdir(parents=True, exist_ok=True)
        with _exclusive(model_dir):
            return _publish_locked(model_dir, signature, make_config, version_files, model_files or {}, version)
    except OSError as exc:
        raise RepositoryError(f"cannot write {name} into {repository}: {_reason(exc)}; nothing written") from None


def _publish_locked(model_dir: Path, signature: Signature, make_config, version_files: dict[str, bytes],
                    model_files: dict[str, bytes], version: int | None) -> Published:
    config_path = model_dir / CONFIG_FILENAME
    new_model = {entry.name for entry in model_dir.iterdir()} <= {LOCK_FILENAME}  # ours to remove on failure
    staging: Path | None = None
    shared_files_written = False
    try:
        existing = read_config(config_path) if config_path.is_file() else None
        config = make_config(existing)  # refuses what the model cannot become (another backend)
        if existing is not None:
            check_same_signature(model_dir.name, existing, signature)
        version = version if version is not None else next_version(model_dir)
        version_dir = model_dir / str(version)
        if version_dir.exists():
            raise RepositoryError(f"version {version} of {model_dir.name} already exists in {model_dir.parent}; "
                                  "versions are immutable, export a new one")
        previous = config_path.read_bytes() if existing is not None else None
        replaced = {name: (model_dir / name).read_bytes() for name in model_files if (model_dir / name).is_file()}
        staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=STAGING_PREFIX))
        for filename, data in version_files.items():
            write_durably(staging / filename, data)
        os.chmod(staging, 0o755)
        fsync_folder(staging)
        shared_files_written = True
        for filename, data in model_files.items():
            replace_atomically(model_dir / filename, data)
        replace_atomically(config_path, to_text(config).encode())  # the config first...
        os.rename(staging, version_dir)  # ...the version last: visible whole, with its config
        staging = None
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if new_model:
            _remove_model_folder(model_dir)
        elif shared_files_written:
            _restore(model_dir, previous, replaced, model_files)
        raise
    with suppress(OSError):  # published either way; this only hastens the rename to disk
        fsync_folder(model_dir)
    return Published(version, version_dir, config_path, config)


def update_config(model_dir: Path, change: Callable[[mc.ModelConfig], mc.ModelConfig]) -> mc.ModelConfig:
    """Rewrite a model's config in place (`rf-triton tune --apply`), under the publish lock.

    `change` gets the config as it is now; what it returns must keep the model's signature."""
    config_path = model_dir / CONFIG_FILENAME
    if not config_path.is_file():
        raise RepositoryError(f"no {CONFIG_FILENAME} in {model_dir}")
    try:
        with _exclusive(model_dir):
            existing = read_config(config_path)
            config = change(existing)
            check_same_signature(model_dir.name, existing, signature_of(config))
            replace_atomically(config_path, to_text(config).encode())
    except OSError as exc:
        raise RepositoryError(f"cannot rewrite {config_path}: {_reason(exc)}") from None
    return config


def _restore(model_dir: Path, previous: bytes | None, replaced: dict[str, bytes], written: dict[str, bytes]) -> None:
    """Put back the shared files a failed publish replaced (best effort: the failure is reported anyway)."""
    try:
        for filename in written:
            if filename in replaced:
                replace_atomically(model_dir / filename, replaced[filename])
            else:
                (model_dir / filename).unlink(missing_ok=True)
        if previous is None:
            (model_dir / CONFIG_FILENAME).unlink(missing_ok=True)
        else:
            replace_atomically(model_dir / CONFIG_FILENAME, previous)
    except OSError:
        pass


def _remove_model_folder(model_dir: Path) -> None:
    """A model this publish created: nothing of it stays (a publisher waiting on its lock starts over)."""
    shutil.rmtree(model_dir, ignore_errors=True)


@contextmanager
def _exclusive(model_dir: Path) -> Iterator[None]:
    """Hold the model's publish lock; retried when the folder was removed while we waited on it."""
    while True:
        model_dir.mkdir(exist_ok=True)
        lock_path = model_dir / LOCK_FILENAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, lock_path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


@contextmanager
def reading(model_dir: Path, timeout_s: float | None = None) -> Iterator[bool]:
    """Hold the model's publish lock shared while reading it; yields False if a publish outlasts `timeout_s`.

    The repository is only read: without a lock file (never published here, or read-only) there is
    no publisher to wait for."""
    try:
        fd = os.open(model_dir / LOCK_FILENAME, os.O_RDONLY)
    except OSError:
        yield True
        return
    try:
        deadline = time.monotonic() + (SHARED_LOCK_TIMEOUT_S if timeout_s is None else timeout_s)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        yield True
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _reason(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)}{where}"
