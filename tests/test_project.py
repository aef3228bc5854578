"""The project's promises to a newcomer: the Quickstart, CI, the layout and the compose file."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_quickstart_has_two_commands_and_ci_runs_the_test_one():
    demo, tests = quickstart_commands()
    assert "rf-triton demo" in demo and "pytest" in tests
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def test_top_level_entries_exist():
    for entry in ("model_repository", "export", "client", "loadtest", "tests", "docker-compose.yml", "pyproject.toml"):
        assert (ROOT / entry).exists(), entry


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
