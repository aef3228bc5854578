"""The `rf-triton` command: each step of the flow is a typer app of its own, composed here."""

from __future__ import annotations

import typer

from .benchmarks.cli import app as bench_app
from .client.cli import app as predict_app
from .client.models_cli import app as models_app
from .demo import app as demo_app
from .export.cli import app as export_app
from .loadtest.cli import app as loadtest_app
from .serve.cli import app as serve_app
from .serve.doctor import app as doctor_app

app = typer.Typer(
    help="Serve scikit-learn random forests on NVIDIA Triton Inference Server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
for sub_app in (export_app, serve_app, predict_app, models_app, demo_app, loadtest_app, bench_app, doctor_app):
    app.add_typer(sub_app)


def main() -> None:
    app()
