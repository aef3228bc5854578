"""`rf-triton doctor`: can this machine serve this repository? One table, with a fix for each failure.

Each check is a row (OK, FAIL or WARN) so that a newcomer sees at once everything that stands
between them and a running server, instead of meeting the problems one by one at `serve` time.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from tritonclient.grpc import model_config_pb2 as mc

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from .. import releases
from .. import repository as repo_format
from ..backends import embeddable, served_by
from ..errors import fail
from ..export import fil, onnx_convert
from ..repository import CONFIG_FILENAME, METADATA_FILENAME, MODEL_FILENAMES, RepositoryError
from . import triton_binary
from .server import EmbeddedTriton, ServerStartError, port_in_use
from .triton_binary import TritonInstall, TritonNotAvailable

app = typer.Typer()

OK, FAIL, WARN = "OK", "FAIL", "WARN"
STYLES = {OK: "green", FAIL: "bold red", WARN: "yellow"}
SHM_MIN_FREE_MIB = 64  # the Python backend's stubs map 1 MiB regions per instance and grow them per request
HELP_TIMEOUT_S = 30.0
GRAPH_READERS = {"onnxruntime": ("ONNX graph", onnx_convert.graph_tensors),
                 "fil": ("treelite checkpoint", fil.graph_tensors)}


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


# -- the machine ------------------------------------------------------------------------------------


def supported_pythons() -> str:
    """The installed rf-triton's Requires-Python: the versions every dependency installs from wheels for."""
    try:
        return importlib.metadata.metadata("rf-triton")["Requires-Python"] or ""
    except importlib.metadata.PackageNotFoundError:
        return ""


def check_python(version: tuple[int, int] = sys.version_info[:2], supported: str | None = None) -> Check:
    """A Python outside the range pip would refuse, or that some wheel lacks (3.13: numpy<2)."""
    supported = supported_pythons() if supported is None else supported
    shown = ".".join(map(str, version))
    try:
        specifier = SpecifierSet(supported)
    except InvalidSpecifier:
        specifier = SpecifierSet()
    if not supported:
        return Check("python", WARN, f"Python {shown}; rf-triton's supported range is unknown (not installed?)",
                     "pip install -e '.[serve]'")
    if not specifier.contains(f"{shown}.0"):
        return Check("python", FAIL, f"Python {shown} is outside rf-triton's supported range {supported}: some "
                                     "dependencies have no wheels for it (nvidia-pytriton needs numpy<2; "
                                     "onnxruntime is pinned)",
                     "create the virtualenv with Python 3.11 or 3.12: python3.12 -m venv .venv && "
                     ".venv/bin/pip install -e '.[serve]'")
    return Check("python", OK, f"Python {shown} ({sys.executable}), within {supported}")


def check_platform() -> Check:
    try:
        return Check("platform", OK, triton_binary.check_platform())
    except TritonNotAvailable as exc:
        return Check("platform", FAIL, str(exc), "use Linux x86_64 with glibc >= 2.35, or the stock container: "
                                                 "docker compose up triton")


def check_server_binary() -> tuple[Check, TritonInstall | None]:
    """The wheel's tritonserver must not only exist but start: `--help` loads all its libraries."""
    name, reinstall = "tritonserver", "reinstall it: .venv/bin/pip install --force-reinstall nvidia-pytriton"
    try:
        install = triton_binary.wheel_install()
    except TritonNotAvailable as exc:
        return Check(name, FAIL, str(exc), "pip install -e '.[serve]' (it brings nvidia-pytriton)"), None
    if not install.binary.is_file():
        return Check(name, FAIL, f"no tritonserver binary at {install.binary}", reinstall), install
    try:
        result = subprocess.run([str(install.binary), "--help"], env=install.environment(), capture_output=True,
                                text=True, errors="replace", timeout=HELP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Check(name, FAIL, f"{install.binary} --help did not finish in {HELP_TIMEOUT_S:g} s", reinstall), install
    except OSError as exc:
        return Check(name, FAIL, f"{install.binary} cannot run: {exc}", reinstall), install
    output = result.stdout + result.stderr
    if "Usage: tritonserver" not in output:  # --help prints its usage and exits 1: the usage is the sign of life
        last = output.strip().splitlines()[-1] if output.strip() else f"exit code {result.returncode}, no output"
        return Check(name, FAIL, f"{install.binary} --help failed: {last}",
                     f"{reinstall}; a missing library means glibc < 2.35 or a damaged wheel"), install
    return Check(name, OK, f"{install.binary} runs (--help)"), install


def check_stub(install: TritonInstall | None) -> Check:
    """The Python backend runs each model in a stub process that embeds this Python's libpython."""
    name, python = "python stub", f"{sys.version_info.major}.{sys.version_info.minor}"
    if install is None:
        return Check(name, FAIL, "nvidia-pytriton is not installed", "pip install -e '.[serve]'")
    if not install.stub.is_file():
        offered = sorted(p.name for p in install.stub.parent.parent.glob("*") if p.is_dir())
        return Check(name, FAIL, f"nvidia-pytriton has no Python-backend stub for Python {python}",
                     f"use one of Python {', '.join(offered) or '(none found)'} for the virtualenv")
    try:
        triton_binary.check_shared_libpython()
    except TritonNotAvailable as exc:
        return Check(name, FAIL, str(exc), "rebuild Python with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS="
                                           "--enable-shared pyenv install ...) and recreate the virtualenv")
    ldd = shutil.which("ldd")
    if ldd is None:
        return Check(name, WARN, f"{install.stub} exists; ldd not found, its libraries were not checked",
                     "install ldd (Debian/Ubuntu: libc-bin) to check them")
    result = subprocess.run([ldd, str(install.stub)], env=install.environment(), capture_output=True, text=True,
                            errors="replace", timeout=HELP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    missing = [line.split("=>")[0].strip() for line in result.stdout.splitlines() if "not found" in line]
    if result.returncode != 0 or missing:
        return Check(name, FAIL, f"the stub cannot find {', '.join(missing) or 'its libraries'} (ldd {install.stub})",
                     f"make libpython{python} shared and findable: this Python's LIBDIR "
                     f"({sysconfig.get_config_var('LIBDIR')}) must hold libpython{python}.so.1.0")
    libpython = next((line.split("=>")[1].split("(")[0].strip() for line in result.stdout.splitlines()
                      if "libpython" in line and "=>" in line), "?")
    return Check(name, OK, f"Python {python} stub; libpython: {libpython}")


def check_ports(host: str, ports: dict[str, int]) -> Check:
    shown = ", ".join(f"{kind} {port}" for kind, port in ports.items())
    if len(set(ports.values())) < len(ports):
        return Check("ports", FAIL, f"the same port is given twice ({shown})", "give HTTP, gRPC and metrics "
                                                                                "three different ports")
    busy = {kind: port for kind, port in ports.items() if port_in_use(port, host)}
    if busy:
        return Check("ports", FAIL, f"in use on {host}: {', '.join(f'{k} {p}' for k, p in busy.items())}",
                     f"stop what listens on {' '.join(map(str, busy.values()))} (ss -ltnp shows it) or choose "
                     "others with --http-port/--grpc-port/--metrics-port, the same options as rf-triton serve")
    return Check("ports", OK, f"free on {host}: {shown}")


def check_shm(path: Path = Path("/dev/shm")) -> Check:
    """Triton's Python backend passes every tensor through shared memory regions in /dev/shm."""
    grow = ("grow it: docker run --shm-size=1g, compose shm_size: 1g, Kubernetes an emptyDir with medium: Memory "
            "mounted on /dev/shm, a host: sudo mount -o remount,size=1G /dev/shm")
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return Check("/dev/shm", FAIL, f"{path} unusable: {exc}", grow)
    free_mib, total_mib = usage.free // 2**20, usage.total // 2**20
    detail = f"{free_mib} MiB free of {total_mib} MiB"
    if free_mib < SHM_MIN_FREE_MIB:
        return Check("/dev/shm", FAIL, f"{detail}; the Python backend needs at least {SHM_MIN_FREE_MIB} MiB", grow)
    return Check("/dev/shm", OK, detail)


# -- the repository ---------------------------------------------------------------------------------


def check_model(model_dir: Path) -> tuple[list[Check], mc.ModelConfig | None]:
    """The config, versions and graph rows of one model (the repository's rules, as serve applies
    them, plus the comparison of each model file with the config); its config when all passed."""
    problems = repo_format.validate(model_dir, GRAPH_READERS)
    failed = {check: [p for p in problems if p.check == check]
              for check in (repo_format.CONFIG, repo_format.VERSIONS, repo_format.GRAPH)}

    def row(check: str, ok_detail: str) -> Check:
        found = failed[check]
        if found:
            return Check(f"{model_dir.name}: {check}", FAIL, "; ".join(p.detail for p in found), found[0].fix)
        return Check(f"{model_dir.name}: {check}", OK, ok_detail)

    path = model_dir / CONFIG_FILENAME
    if failed[repo_format.CONFIG] and not _parses(path):
        return [row(repo_format.CONFIG, "")], None
    config = repo_format.read_config(path)
    backend = served_by(config)
    if backend not in MODEL_FILENAMES:
        config_row = Check(f"{model_dir.name}: config", WARN, f"backend {backend or '(none)'}: parsed, but doctor "
                                                              f"checks only {', '.join(MODEL_FILENAMES)} models")
    else:
        config_row = row(repo_format.CONFIG, f"parses; backend {backend}, max_batch_size {config.max_batch_size}")
    filename = repo_format.model_filename(config) or "no file name"
    complete = repo_format.complete_versions(model_dir, config)
    rows = [config_row, row(repo_format.VERSIONS, f"version(s) {', '.join(map(str, complete))} complete ({filename})")]
    if failed[repo_format.VERSIONS] and not complete:
        rows.append(Check(f"{model_dir.name}: graph", FAIL, "no complete version to compare with the config",
                          "fix the versions first"))
    elif backend not in GRAPH_READERS:
        rows.append(Check(f"{model_dir.name}: graph", WARN, f"backend {backend or '(none)'}: no graph to compare "
                                                            "with the config"))
    else:
        rows.append(row(repo_format.GRAPH, f"config matches the {GRAPH_READERS[backend][0]}: "
                                           f"{_shown(config.input)} -> {_shown(config.output)}"))
    return rows, (config if not problems else None)


def _shown(tensors) -> str:
    names = {code: name for name, code in repo_format.DATA_TYPES.items()}
    return " ".join(f"{t.name} {names.get(t.data_type, mc.DataType.Name(t.data_type))} {list(t.dims)}" for t in tensors)


def _parses(path: Path) -> bool:
    try:
        repo_format.read_config(path)
    except RepositoryError:
        return False
    return True


def check_release(model_dir: Path, repository: Path) -> Check:
    """The release the newest version was exported for, and whether the installed ONNX Runtime is its own."""
    name = f"{model_dir.name}: release"
    recorded = [v for v in repo_format.versions(model_dir) if (model_dir / str(v) / METADATA_FILENAME).is_file()]
    if not recorded:
        return Check(name, WARN, f"no version of {model_dir.name} has a {METADATA_FILENAME}", "")
    path = model_dir / str(max(recorded)) / METADATA_FILENAME
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError):
        metadata = {}
    tag = metadata.get("triton_release")
    if tag not in releases.RELEASES:
        return Check(name, WARN, f"version {max(recorded)} records no Triton release of rf-triton's table ({path})",
                     f"re-export it: rf-triton export --repository {repository} --name {model_dir.name} "
                     "--triton-release YY.MM")
    release, installed = releases.RELEASES[tag], releases.installed_onnxruntime()
    if metadata.get("format") == "fil":
        return Check(name, OK, f"exported for Triton {release.tag} (server {release.server}), FIL backend: "
                               f"treelite {release.treelite or 'not stated'}, {release.fil_engine or 'engine not stated'}")
    detail = f"exported for {release.describe()}"
    if installed != release.onnxruntime.version:
        return Check(name, WARN, f"{detail}; installed onnxruntime {installed}: the embedded server's answers are "
                                 f"not that release's", f"pip install onnxruntime=={release.onnxruntime.version}")
    return Check(name, OK, f"{detail}; installed onnxruntime is its own")


def check_models(repository: Path) -> tuple[list[Check], dict[str, mc.ModelConfig]]:
    """Rows for every model, and the configs of the models that passed all of them."""
    rows: list[Check] = []
    healthy: dict[str, mc.ModelConfig] = {}
    model_dirs = repo_format.model_dirs(repository)
    if not model_dirs:
        return [Check("models", FAIL, f"no model folder in {repository}",
                      f"export one: rf-triton export --repository {repository}")], healthy
    for model_dir in model_dirs:
        model_rows, config = check_model(model_dir)
        rows += model_rows + [check_release(model_dir, repository)]
        if config is not None:
            healthy[model_dir.name] = config
    return rows, healthy


def check_load(repository: Path, configs: dict[str, mc.ModelConfig], ready_timeout_s: float) -> list[Check]:
    """Start the embedded server on free ports and see every model it can serve become ready."""
    rows = [Check(f"{name}: load", WARN, f"backend {served_by(config)} is not in the embedded server (Python "
                                         "backend only); not loaded here",
                  "serve it with the stock container (FIL: docker compose --profile gpu up -d triton-gpu)")
            for name, config in configs.items() if not embeddable(config)]
    loadable = [name for name, config in configs.items() if embeddable(config)]
    if not loadable:
        return rows
    server = EmbeddedTriton.on_free_ports(repository, watch_interval_s=None, extra_args=("--log-info=false",))  # errors stay in the tail
    try:
        server.start(ready_timeout_s=ready_timeout_s)
        states: dict[str, list[str]] = {}
        for entry in server.model_index():
            states.setdefault(entry["name"], []).append(f"{entry.get('version', '?')} {entry.get('state', '?')}")
        after_s = server.ready_after_s
    except (ServerStartError, RepositoryError, TritonNotAvailable, OSError) as exc:
        fix = f"see the whole log: rf-triton serve --repository {repository} --log-verbose 1"
        return rows + [Check(f"{name}: load", FAIL, _error_for(str(exc), name), fix) for name in loadable]
    finally:
        server.stop()
    for name in loadable:
        seen = states.get(name, [])
        if seen and all(s.endswith(" READY") for s in seen):
            rows.append(Check(f"{name}: load", OK, f"ready in the embedded server after {after_s:.1f} s "
                                                   f"(version {', '.join(s.split()[0] for s in seen)})"))
        else:
            rows.append(Check(f"{name}: load", FAIL, f"not ready: {', '.join(seen) or 'not in the index'}",
                              f"see the log: rf-triton serve --repository {repository} --log-verbose 1"))
    return rows


def _error_for(message: str, model: str, limit: int = 400) -> str:
    """Triton's error line about `model` (log lines `E1126 04:28:51.12 pid file.cc:642] "text"`), else its last one."""
    errors = [m.group(1).strip().strip('"') for m in re.finditer(r'^E\d{4} [^\]]*\] (.*)$', message, re.MULTILINE)]
    about = [line for line in errors if f"'{model}'" in line]
    fallback = [line.strip() for line in message.splitlines() if line.startswith("error:")] or \
        [message.strip().splitlines()[0] if message.strip() else "failed"]
    line = (about or fallback)[-1]
    return line if len(line) <= limit else line[:limit] + "..."


def run_checks(repository: Path, host: str, ports: dict[str, int], load: bool, ready_timeout_s: float) -> list[Check]:
    server_row, install = check_server_binary()
    rows = [check_python(), check_platform(), server_row, check_stub(install), check_ports(host, ports), check_shm()]
    model_rows, healthy = check_models(repository)
    rows += model_rows
    if load:
        if any(row.status == FAIL for row in rows):
            rows.append(Check("load", WARN, "not attempted: fix the failures above first", ""))
        else:
            rows += check_load(repository, healthy, ready_timeout_s)
    return rows


def render(rows: list[Check], console: Console) -> None:
    table = Table("check", "status", "detail", "fix", title="rf-triton doctor")
    for row in rows:
        table.add_row(Text(row.name), Text(row.status, style=STYLES[row.status]), Text(row.detail, overflow="fold"),
                      Text(row.fix, overflow="fold"))
    console.print(table)


@app.command("doctor")
def doctor(
    repository: Annotated[Path, typer.Option(help="Canonical model repository to check.")] = Path("model_repository"),
    host: Annotated[str, typer.Option(help="Address the server would bind, for the port check.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port `rf-triton serve` would use.")] = 8000,
    grpc_port: Annotated[int, typer.Option(min=1, max=65535, help="gRPC port `rf-triton serve` would use.")] = 8001,
    metrics_port: Annotated[int, typer.Option(min=1, max=65535, help="Metrics port `rf-triton serve` would use.")] = 8002,
    load: Annotated[bool, typer.Option(help="Also start the embedded server (on free ports) and load every model.")] = False,
    ready_timeout_s: Annotated[float, typer.Option(help="With --load: seconds to wait for the models.")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON (for scripts) instead of a table.")] = False,
) -> None:
    """Check this machine and a model repository before serving: one table, with a fix for each failure.

    Checks the tritonserver binary from the nvidia-pytriton wheel, the platform, the Python-backend
    stub, the ports, /dev/shm, and every model (config, versions, graph; with --load, that the
    embedded server loads it). Exits 0 when nothing failed (warnings allowed), 1 otherwise.
    """
    if not repository.is_dir():
        raise fail(f"model repository not found: {repository} (give one with --repository)")
    ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
    console = Console()  # made here so that COLUMNS set by the caller applies
    rows = run_checks(repository, host, ports, load, ready_timeout_s)
    failed = [row.name for row in rows if row.status == FAIL]
    warned = sum(row.status == WARN for row in rows)
    if as_json:
        typer.echo(json.dumps({"checks": [asdict(row) for row in rows], "failed": failed, "warnings": warned},
                              indent=2))
        raise typer.Exit(1 if failed else 0)
    render(rows, console)
    if failed:
        console.print(f"{len(failed)} check(s) failed: {', '.join(failed)}", style="bold red", highlight=False)
        raise typer.Exit(1)
    console.print(f"all checks passed ({warned} warning(s))", style="green", highlight=False)
