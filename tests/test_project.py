"""The project's promises to a newcomer: the Quickstart, CI, the layout and the compose file."""

from pathlib import Path

import yaml
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    """The lines of the first code block after the README's Quickstart heading (markdown-it's parse)."""
    tokens = MarkdownIt("commonmark").parse((ROOT / "README.md").read_text())
    start = next(i for i, t in enumerate(tokens) if t.type == "inline" and t.content == "Quickstart")
    block = next(t for t in tokens[start:] if t.type == "fence").content
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_quickstart_has_two_commands_and_ci_runs_the_test_one():
    demo, tests = quickstart_commands()
    assert "rf-triton demo" in demo and "pytest" in tests
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def test_compose_serves_the_committed_repository():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    triton = compose["services"]["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    mounts = [volume.split(":") for volume in triton["volumes"]]
    for source, target, *mode in mounts:
        assert (ROOT / source).exists(), source
    assert ["./model_repository", "/models", "ro"] in mounts
    assert "--model-repository=/models" in triton["command"]


def test_compose_locks_the_control_api_with_the_same_header_as_serve():
    from rf_triton import CONTROL_KEY_HEADER

    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]["command"]
    rule = f"model-repository:{CONTROL_KEY_HEADER}=${{TRITON_CONTROL_KEY:?"
    assert any(arg.startswith(f"--http-restricted-api={rule}") for arg in command)
    assert any(arg.startswith(f"--grpc-restricted-protocol={rule}") for arg in command)


def test_every_library_the_project_imports_is_declared():
    """An import that works only because another dependency happens to bring it (packaging, pydantic)
    breaks the day that dependency stops bringing it: each one is named in pyproject.toml."""
    import ast
    import importlib.metadata
    import sys
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [text for extra in project["optional-dependencies"].values()
                                              for text in extra]  # the extras too (src/rf_triton/extras.py)
    declared = {Requirement(text).name.lower().replace("_", "-") for text in requirements}
    distributions = importlib.metadata.packages_distributions()
    own = {"rf_triton", "triton_python_backend_utils"}  # the latter: given by Triton's Python backend
    own |= {"cuml", "nvforest"}  # benchmarks/gpu_check.py's RAPIDS engines: on a GPU host that has them, never installed by us
    missing = {}
    for folder in project_source_folders():
        for source in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                for name in names:
                    top = name.split(".")[0]
                    if top in own or top in sys.stdlib_module_names:
                        continue
                    provided_by = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
                    if not provided_by & declared:
                        missing.setdefault(top, set()).add(str(source.relative_to(ROOT)))
    assert not missing, f"imported but not declared in pyproject.toml dependencies: {missing}"


def project_source_folders() -> list[Path]:
    import tomllib

    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return [ROOT / folder for folder in mapping.values()]
