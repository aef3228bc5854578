"""`rf-triton models list|load|unload`: Triton's model-repository API, for hot updates and rollbacks.

Works the same against the embedded server and the stock container (explicit model control).
When the server was started with a control key, pass it with --control-key or the environment.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from tritonclient.utils import InferenceServerException

from .. import CONTROL_KEY_ENV, CONTROL_KEY_HEADER, GRPC_CONTROL_KEY_HEADER
from ..errors import fail
from .client import split_url

app = typer.Typer()
models = typer.Typer(help="List, load (hot update or roll back) and unload models on a running Triton.",
                     no_args_is_help=True)
app.add_typer(models, name="models")

Url = Annotated[str, typer.Option(help="Server address, host:port (HTTP port for http, gRPC port for grpc).")]
Protocol = Annotated[str, typer.Option(help="http or grpc.")]
ControlKey = Annotated[Optional[str], typer.Option(
    envvar=CONTROL_KEY_ENV, show_envvar=True, help=f"Value of the '{CONTROL_KEY_HEADER}' header the server requires.")]


class RepositoryClient:
    """The repository-API calls of tritonclient, with the control-key header, for either protocol."""

    def __init__(self, url: str, protocol: str = "http", control_key: str | None = None) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be http or grpc, not {protocol!r}")
        address, ssl = split_url(url, protocol)
        if protocol == "http":
            import tritonclient.http as proto
        else:
            import tritonclient.grpc as proto
        self.protocol = protocol
        self.client = proto.InferenceServerClient(address, ssl=ssl)
        header = GRPC_CONTROL_KEY_HEADER if protocol == "grpc" else CONTROL_KEY_HEADER
        self.headers = {header: control_key} if control_key else None

    def __enter__(self) -> "RepositoryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()

    def index(self) -> list[dict]:
        """Every model version the repository holds, with its state (READY, UNAVAILABLE...) and reason."""
        if self.protocol == "grpc":
            return self.client.get_model_repository_index(headers=self.headers, as_json=True).get("models", [])
        return self.client.get_model_repository_index(headers=self.headers)

    def load(self, model: str, versions: list[int] | None = None) -> None:
        """(Re)load `model` from the repository; with `versions`, serve exactly those (a rollback)."""
        config = None
        if versions:
            kwargs = {"as_json": True} if self.protocol == "grpc" else {}
            current = self.client.get_model_config(model, headers=self.headers, **kwargs)
            current = current.get("config", current)
            current["version_policy"] = {"specific": {"versions": versions}}
            config = json.dumps(current)
        self.client.load_model(model, headers=self.headers, config=config)

    def unload(self, model: str) -> None:
        self.client.unload_model(model, headers=self.headers)


def _run(action):
    try:
        return action()
    except InferenceServerException as exc:
        raise fail(f"{exc.message()} (status {exc.status()})") from None
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from None


def parse_versions(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        versions = [int(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter("expected version numbers like 1 or 1,3", param_hint="--versions") from None
    if any(v < 1 for v in versions):
        raise typer.BadParameter("versions start at 1", param_hint="--versions")
    return versions


@models.command("list")
def list_models(url: Url = "127.0.0.1:8000", protocol: Protocol = "http", control_key: ControlKey = None) -> None:
    """Show each model version in the server's repository and its state."""
    def show():
        with RepositoryClient(url, protocol, control_key) as repo:
            entries = repo.index()
        table = Table("model", "version", "state", "reason")
        for entry in entries:
            table.add_row(entry.get("name", ""), str(entry.get("version", "")), entry.get("state", ""),
                          entry.get("reason", ""))
        Console().print(table)
    _run(show)


@models.command("load")
def load(
    model: Annotated[str, typer.Argument(help="Model name.")],
    versions: Annotated[Optional[str], typer.Option(
        help="Serve exactly these versions (e.g. 1 to roll back); default: what the config's version policy says.")] = None,
    url: Url = "127.0.0.1:8000", protocol: Protocol = "http", control_key: ControlKey = None,
) -> None:
    """Load or reload a model: new versions go live once ready; the old ones serve until then."""
    chosen = parse_versions(versions)

    def act():
        with RepositoryClient(url, protocol, control_key) as repo:
            repo.load(model, chosen)
            ready = [e for e in repo.index() if e.get("name") == model and e.get("state") == "READY"]
        typer.echo(f"loaded {model}: serving version(s) {', '.join(str(e.get('version')) for e in ready) or 'none'}")
    _run(act)


@models.command("unload")
def unload(model: Annotated[str, typer.Argument(help="Model name.")],
           url: Url = "127.0.0.1:8000", protocol: Protocol = "http", control_key: ControlKey = None) -> None:
    """Unload a model: in-flight requests finish, new ones are refused."""
    def act():
        with RepositoryClient(url, protocol, control_key) as repo:
            repo.unload(model)
        typer.echo(f"unloaded {model}")
    _run(act)
