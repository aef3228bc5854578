"""The client install and the extras: what each command needs, and the one line it prints without it.

Each case runs the real `rf-triton` entry point in a fresh interpreter where the named modules cannot
be imported (`sys.modules[name] = None`, which the import system reads as "not installed"), as in a
venv that lacks the extra. CI installs the built wheel in a real client-only venv as well (.ci/run).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib

import pytest

from rf_triton.cli import SUB_APPS
from rf_triton.extras import EXTRA_INCLUDES, EXTRA_MODULES, modules_of

from conftest import ROOT

HEAVY = ("typer", "rich", "pandas", "pyarrow", "sklearn", "skl2onnx", "onnx", "onnxruntime", "treelite", "joblib",
         "pytriton", "locust", "prometheus_client", "matplotlib", "aiohttp", "scipy")


def run_without(modules: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    blocker = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    return subprocess.run([sys.executable, "-c", blocker + code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "COLUMNS": "200"})


def rf_triton_without(modules: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    return run_without(modules, f"sys.argv = ['rf-triton', *{list(args)!r}]\nfrom rf_triton.cli import main\nmain()")


def test_the_client_library_imports_with_numpy_and_tritonclient_alone():
    done = run_without(HEAVY, "from rf_triton.client import RandomForestClient, ABRouter\n"
                              "print(RandomForestClient.__module__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "rf_triton.client.client"


def test_the_entry_point_without_the_cli_extra_says_so_in_one_line():
    done = rf_triton_without(HEAVY, "predict", "--values", "1,2")
    assert done.returncode == 1
    assert done.stderr == "error: the rf-triton command needs the cli extra: pip install 'rf-triton[cli]'\n"


@pytest.mark.parametrize("blocked, args, extra", [
    (("sklearn",), ["export"], "export"),
    (("sklearn",), ["export", "--help"], "export"),
    (("pytriton",), ["serve", "--repository", "model_repository"], "serve"),
    (("pytriton",), ["doctor"], "serve"),
    (("pytriton",), ["demo"], "serve"),
    (("locust",), ["loadtest", "--users", "2"], "loadtest"),
    (("matplotlib",), ["bench"], "bench"),
    (("matplotlib",), ["tune"], "bench"),
    (("pyarrow",), ["perf-data", "--input", "rows.csv", "--out", "data.json"], "batch"),
    (("pyarrow",), ["predict", "--input", "rows.csv"], "batch"),
])
def test_a_command_without_its_extra_names_it_in_one_error_line(blocked, args, extra):
    done = rf_triton_without(blocked, *args)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert re.fullmatch(rf"error: rf-triton {args[0]}( --input)? needs the {extra} extra \(missing: .*"
                        rf"{blocked[0]}.*\): pip install 'rf-triton\[{extra}\]'", lines[0]), lines[0]


def test_help_lists_every_command_whatever_is_installed():
    done = rf_triton_without(HEAVY[2:], "--help")  # the cli extra alone
    assert done.returncode == 0, done.stderr
    for _module, _extra, commands in SUB_APPS:
        for command in commands:
            assert re.search(rf"│ {re.escape(command)}\s", done.stdout), command
    assert "pip install 'rf-triton[export]'" in done.stdout


def declared_extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")


def test_each_extra_declares_the_distributions_of_the_modules_it_is_checked_for():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    providers = importlib.metadata.packages_distributions()

    def brought_by(requirement: str) -> set[str]:
        """The distribution, and those its own extras (as in `tritonclient[http]`) bring."""
        name = requirement_name(requirement)
        wanted = re.search(r"\[([^\]]+)\]", requirement)
        names = {name}
        for inner in importlib.metadata.requires(name) or [] if wanted else []:
            if any(f'extra == "{e}"' in inner.replace("'", '"') for e in wanted.group(1).split(",")):
                names.add(requirement_name(inner))
        return names

    def declared(extra: str) -> set[str]:
        names = {n for r in extras[extra] if not r.startswith("rf-triton[") for n in brought_by(r)}
        for included in EXTRA_INCLUDES[extra]:
            names |= declared(included)
        return names

    base = {requirement_name(r) for r in project["dependencies"]} | {"grpcio", "protobuf", "packaging"}
    for extra, includes in EXTRA_INCLUDES.items():
        self_references = {name for r in extras[extra] if r.startswith("rf-triton[")
                           for name in r[len("rf-triton["):-1].split(",")}
        assert self_references == set(includes), f"{extra}: includes differ from pyproject"
        for module in modules_of(extra):
            names = {d.lower().replace("_", "-") for d in providers.get(module, [])}
            assert names & (declared(extra) | base), f"{extra}: module {module} ({names}) is not declared"
    assert {name for r in extras["all"] for name in r[len("rf-triton["):-1].split(",")} == set(EXTRA_MODULES)


def test_the_base_holds_the_client_only():
    base = {requirement_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert base == {"numpy", "tritonclient", "geventhttpclient", "protobuf", "tenacity"}  # tenacity: the client's retries


def test_python_started_in_the_checkout_finds_no_rf_triton_folder_to_shadow_the_installed_one():
    """sys.path[0] is the current folder: a folder named rf_triton in the repository root would be
    imported instead of the installed package (whose subpackages come from the step folders), and
    `from rf_triton.client import ...` would fail there with a wheel installed. CI checks the wheel itself."""
    import importlib.machinery

    assert importlib.machinery.PathFinder.find_spec("rf_triton", [str(ROOT)]) is None
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert package_dirs["rf_triton"] == "src/rf_triton" and (ROOT / "src" / "rf_triton" / "__init__.py").is_file()
    for step in ("export", "serve", "client", "loadtest", "benchmarks"):
        assert package_dirs[f"rf_triton.{step}"] == step, "the step folders stay at the top level"
