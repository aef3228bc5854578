"""Find the real tritonserver shipped in the nvidia-pytriton wheel and what it needs to run here."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path


class TritonNotAvailable(RuntimeError):
    """The wheel's server cannot run on this machine; the message says why and what to do."""


@dataclass(frozen=True)
class TritonInstall:
    root: Path            # .../site-packages/pytriton/tritonserver
    libs: Path            # .../site-packages/nvidia_pytriton.libs

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def stub(self) -> Path:
        return self.root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
            "triton_python_backend_stub"

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for tritonserver and its Python-backend stubs.

        The stub embeds libpython: this interpreter's shared library goes first so the stub runs the
        same Python as this environment, then the wheel's own libraries. This environment's bin goes
        first on PATH so the stub imports this environment's numpy and onnxruntime.
        """
        env = dict(os.environ if base is None else base)
        lib_dirs = [d for d in (sysconfig.get_config_var("LIBDIR"), str(self.libs)) if d]
        if env.get("LD_LIBRARY_PATH"):
            lib_dirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def prepare_backends(self, directory: Path) -> Path:
        """A backend directory with the Python backend and the stub for this Python version."""
        target = directory / "python"
        target.mkdir(parents=True, exist_ok=True)
        for item in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(self.python_backend / item, target / item)
        shutil.copy2(self.stub, target / "triton_python_backend_stub")
        return directory


def locate() -> TritonInstall:
    """The installed wheel's server, after checking this machine can run it."""
    check_platform()
    install = wheel_install()
    if not install.binary.is_file():
        raise TritonNotAvailable(f"no tritonserver binary at {install.binary}; reinstall nvidia-pytriton")
    if not install.stub.is_file():
        raise TritonNotAvailable(f"nvidia-pytriton has no Python backend stub for Python "
                                 f"{sys.version_info.major}.{sys.version_info.minor} ({install.stub})")
    check_shared_libpython()
    return install


def check_platform() -> str:
    """Linux x86_64 with glibc >= 2.35, what the wheel is built for; returns a description of this one."""
    if sys.platform != "linux" or platform.machine() not in {"x86_64", "AMD64"}:
        raise TritonNotAvailable(f"the nvidia-pytriton server runs on Linux x86_64 only, not {sys.platform} "
                                 f"{platform.machine()}; use the stock container instead (docker-compose.yml)")
    libc, version = platform.libc_ver()
    if libc == "glibc" and _version_tuple(version) < (2, 35):
        raise TritonNotAvailable(f"the nvidia-pytriton server needs glibc >= 2.35, this system has {version}")
    return f"{sys.platform} {platform.machine()}, {libc or 'unknown libc'} {version}".rstrip()


def wheel_install() -> TritonInstall:
    """Where the nvidia-pytriton wheel put the server (pytriton's own account of its paths); nothing in
    it is checked yet."""
    try:
        from pytriton.utils import distribution
    except ImportError:
        raise TritonNotAvailable("nvidia-pytriton is not installed: pip install nvidia-pytriton") from None
    return TritonInstall(root=distribution.get_root_module_path() / "tritonserver",
                         libs=Path(distribution.get_libs_path()))


def check_shared_libpython() -> None:
    """The Python-backend stub embeds libpython: a static-only Python cannot host it."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise TritonNotAvailable(
            f"this Python ({sys.executable}) was built without a shared libpython, which the Python-backend "
            "stub needs; use a Python built with --enable-shared (e.g. PYTHON_CONFIGURE_OPTS=--enable-shared for pyenv)")


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return (0,)
