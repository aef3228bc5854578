"""The `rf-triton` command: each step of the flow is a typer app of its own, composed here.

A step whose extra is not installed is not imported: its commands stay listed and answer with one
`error:` line naming the extra, so the client-only install still has a working entry point.
"""

from __future__ import annotations

import importlib
import sys

from .extras import install_hint, missing_modules

# (module holding a typer `app`, the extra its commands need, the commands it defines)
SUB_APPS = (
    ("rf_triton.export.cli", "export", ("export",)),
    ("rf_triton.serve.cli", "serve", ("serve",)),
    ("rf_triton.client.cli", "cli", ("predict",)),
    ("rf_triton.client.models_cli", "cli", ("models",)),
    ("rf_triton.demo", "serve", ("demo",)),
    ("rf_triton.loadtest.cli", "loadtest", ("loadtest",)),
    ("rf_triton.loadtest.perf_data", "batch", ("perf-data",)),
    ("rf_triton.benchmarks.cli", "bench", ("bench", "tune")),
    ("rf_triton.serve.doctor", "serve", ("doctor",)),
)


def build_app():
    """The composed typer app; needs the cli extra (typer, rich)."""
    import typer

    app = typer.Typer(
        help="Serve scikit-learn random forests on NVIDIA Triton Inference Server.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    for module_name, extra, commands in SUB_APPS:
        missing = missing_modules(extra)
        if missing:
            for command in commands:
                _add_missing_extra_command(app, command, extra, missing)
            continue
        app.add_typer(importlib.import_module(module_name).app)
    return app


def _add_missing_extra_command(app, command: str, extra: str, missing: list[str]) -> None:
    """A stand-in for `command` that takes any arguments and says which extra to install."""
    from .errors import fail

    message = f"rf-triton {command} needs the {extra} extra (missing: {', '.join(missing)}): {install_hint(extra)}"

    from rich.markup import escape

    @app.command(command, help=escape(f"Needs the {extra} extra: {install_hint(extra)}"), add_help_option=False,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def missing_extra() -> None:
        raise fail(message)


def __getattr__(name: str):
    if name == "app":
        return build_app()
    raise AttributeError(name)


def main() -> None:
    if missing_modules("cli"):
        sys.stderr.write(f"error: the rf-triton command needs the cli extra: {install_hint('cli')}\n")
        raise SystemExit(1)
    import typer
    from typer.exceptions import TyperException

    command = typer.main.get_command(build_app())
    try:
        code = command.main(standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
    except TyperException as exc:  # a bad option value, an unknown option: one line, as every other refusal
        if type(exc).__name__ == "NoArgsIsHelpError" or not hasattr(exc, "format_message"):
            exc.show()  # no arguments at all: the help, as the plain entry point shows it
            raise SystemExit(getattr(exc, "exit_code", 2)) from None
        context = getattr(exc, "ctx", None)
        where = f"{context.command_path}: " if context is not None else ""
        sys.stderr.write(f"error: {where}{exc.format_message()}\n")
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    raise SystemExit(code if isinstance(code, int) else 0)
