"""The optional parts of rf-triton and the modules each one needs.

`pip install rf-triton` is the client library alone (numpy and tritonclient), so that an application
calling a served model carries neither the exporter nor the server. Each step's command comes with
an extra of pyproject.toml; a command whose extra is missing says which one to install, in one line,
before it imports anything that would fail halfway.
"""

from __future__ import annotations

import importlib.util

# extra -> the top-level modules it brings, as importable names (not distribution names).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "cli": ("typer", "rich"),
    "batch": ("pandas", "pyarrow"),
    "export": ("sklearn", "skl2onnx", "onnx", "onnxruntime", "joblib", "treelite", "pandas", "pydantic"),
    "serve": ("pytriton", "onnxruntime", "packaging"),
    "loadtest": ("locust", "prometheus_client", "gevent", "grpc"),
    "bench": ("matplotlib", "aiohttp"),
}
# extra -> the extras it includes (as pyproject.toml's self-references say).
EXTRA_INCLUDES: dict[str, tuple[str, ...]] = {
    "cli": (),
    "batch": ("cli",),
    "export": ("cli",),
    "serve": ("export",),
    "loadtest": ("serve",),
    "bench": ("loadtest", "batch"),
}


class MissingExtra(ImportError):
    """A command or feature needs an extra that is not installed; the message names it."""


def modules_of(extra: str) -> tuple[str, ...]:
    """Every module an extra needs, its included extras' too, in a stable order without repeats."""
    names: dict[str, None] = {}
    for included in EXTRA_INCLUDES[extra]:
        names.update(dict.fromkeys(modules_of(included)))
    names.update(dict.fromkeys(EXTRA_MODULES[extra]))
    return tuple(names)


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (found without importing them)."""
    return [name for name in modules_of(extra) if importlib.util.find_spec(name) is None]


def install_hint(extra: str) -> str:
    return f"pip install 'rf-triton[{extra}]'"


def require(extra: str, what: str) -> None:
    """Raise MissingExtra, naming the extra to install, when `what` cannot run here."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(f"{what} needs the {extra} extra (missing: {', '.join(missing)}): {install_hint(extra)}")
