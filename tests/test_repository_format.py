"""The model repository format (rf_triton.repository): one signature per model, per-version facts in
metadata.json, publishing whole under a lock, and one set of rules for doctor and serve."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from rf_triton import repository
from rf_triton.cli import app
from rf_triton.export import sources
from rf_triton.export.errors import ExportError
from rf_triton.export.pipeline import export_model
from rf_triton.repository import LOCK_FILENAME, RepositoryError, read_config, signature_of, write_config
from rf_triton.serve.runtime_repository import derive, python_backend_config
from rf_triton.signature import SIGNATURE_PARAMETER, Signature, Tensor

ROOT = Path(__file__).resolve().parents[1]
MODEL = "random_forest"
runner = CliRunner()


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def city_pipeline(cities: list[str], handle_unknown: str = "error") -> sources.TrainedModel:
    """A forest behind a OneHotEncoder on a string column, fitted on grid data, loaded as export loads it."""
    rows = 240
    frame = pd.DataFrame({"city": np.resize(cities, rows).astype(object), "size": np.resize(np.arange(10, 70), rows)})
    target = frame["size"] * 2.5 + (frame["city"] == cities[0]) * 40
    encode = ColumnTransformer([("city", OneHotEncoder(handle_unknown=handle_unknown), ["city"])],
                               remainder="passthrough")
    pipeline = make_pipeline(encode, RandomForestRegressor(n_estimators=5, max_depth=5, random_state=0))
    return pipeline.fit(frame, target)


def load(estimator, tmp_path: Path, name: str) -> sources.TrainedModel:
    path = tmp_path / f"{name}.joblib"
    joblib.dump(estimator, path)
    return sources.load_pickled(path)


# -- finding 1: a new version cannot change the categories (or anything else) the model accepts ----------


@pytest.mark.parametrize("second, what", [
    ((["brest", "nice"], "error"), "known categories"),
    ((["lyon", "paris"], "ignore"), "known categories"),  # ignore accepts any city: v1's list would refuse them
])
def test_a_version_with_other_categories_is_refused_and_the_first_keeps_its_own(second, what, tmp_path):
    repo = tmp_path / "repo"
    first = export_model(load(city_pipeline(["lyon", "paris"]), tmp_path, "v1"), repo)
    before = snapshot(repo)
    with pytest.raises(ExportError, match=f"this model's {what} differ from the versions already published.*"
                                          "export under another --name"):
        export_model(load(city_pipeline(*second), tmp_path, "v2"), repo)
    assert snapshot(repo) == before
    assert dict(signature_of(read_config(first.config_path)).known_categories) == {"city": ("lyon", "paris")}


def test_the_same_signature_publishes_a_second_version(tmp_path):
    repo = tmp_path / "repo"
    export_model(load(city_pipeline(["lyon", "paris"]), tmp_path, "v1"), repo)
    second = export_model(load(city_pipeline(["lyon", "paris"]), tmp_path, "v2"), repo)
    assert second.version_dir.name == "2"
    assert dict(signature_of(read_config(second.config_path)).known_categories) == {"city": ("lyon", "paris")}


def test_refused_in_one_error_line_by_the_cli(tmp_path):
    repo = tmp_path / "repo"
    for name, cities in (("v1", ["lyon", "paris"]), ("v2", ["brest", "nice"])):
        joblib.dump(city_pipeline(cities), tmp_path / f"{name}.joblib")
    assert runner.invoke(app, ["export", "--model", str(tmp_path / "v1.joblib"), "--repository", str(repo)]).exit_code == 0
    result = runner.invoke(app, ["export", "--model", str(tmp_path / "v2.joblib"), "--repository", str(repo)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "known categories differ" in errors[0], result.stderr


GRAPH = Signature("regression", (Tensor("X", "FP32", (5,)),), (Tensor("variable", "FP32", (1,)),), tuple("abcde"))


@pytest.mark.parametrize("changed, what", [
    (Signature("regression", (Tensor("X", "FP32", (7,)),), GRAPH.outputs, tuple("abcdefg")), "inputs, feature names"),
    (Signature("regression", GRAPH.inputs, (Tensor("variable", "FP32", (2,)),), GRAPH.feature_names), "outputs"),
    (Signature("regression", GRAPH.inputs, GRAPH.outputs, tuple("vwxyz")), "feature names"),
    (Signature("regression", (Tensor("X", "FP64", (5,)),), GRAPH.outputs, GRAPH.feature_names), "inputs"),
    (Signature("classification", GRAPH.inputs, (Tensor("label", "INT64", (1,)),
                                                Tensor("probabilities", "FP32", (2,), "labels.txt")),
               GRAPH.feature_names, (0, 1)), "task, outputs, classes"),
])
def test_publish_compares_the_signature_whole(changed, what, tmp_path):
    from rf_triton.export.triton_config import ServingOptions, build_config

    def config_for(signature):
        return lambda existing: build_config(MODEL, signature, ServingOptions(), {}, existing)

    repository.publish(tmp_path, MODEL, GRAPH, config_for(GRAPH), {"model.onnx": b"onnx"})
    before = snapshot(tmp_path)
    with pytest.raises(RepositoryError, match=f"this model's {what} differ"):
        repository.publish(tmp_path, MODEL, changed, config_for(changed), {"model.onnx": b"onnx"})
    assert snapshot(tmp_path) == before


# -- finding 2: per-version facts in metadata.json, never in the shared config --------------------------


def test_tool_versions_live_in_each_versions_metadata_only(demo_model, tmp_path):
    repo = tmp_path / "repo"
    first = export_model(demo_model, repo)
    v1_metadata = (first.version_dir / "metadata.json").read_bytes()
    config = read_config(first.config_path)
    assert not set(repository.PER_VERSION_PARAMETERS) & set(config.parameters), config.parameters.keys()
    assert set(json.loads(v1_metadata)["versions"]) >= {"scikit-learn", "skl2onnx", "onnxruntime"}
    second = export_model(demo_model, repo)
    assert (first.version_dir / "metadata.json").read_bytes() == v1_metadata  # v2 leaves v1's facts alone
    assert not set(repository.PER_VERSION_PARAMETERS) & set(read_config(second.config_path).parameters)


def legacy_config(config: mc.ModelConfig) -> mc.ModelConfig:
    """The same config as exports before the signature parameter wrote it: separate parameters, tool versions."""
    signature = signature_of(config)
    old = mc.ModelConfig()
    old.CopyFrom(config)
    del old.parameters[SIGNATURE_PARAMETER]
    old.parameters["task"].string_value = signature.task
    old.parameters["feature_names"].string_value = json.dumps(list(signature.feature_names))
    old.parameters["sklearn_version"].string_value = "1.4.0"
    old.parameters["skl2onnx_version"].string_value = "1.17.0"
    return old


def test_configs_with_the_old_parameters_are_read_and_cleaned_by_the_next_version(demo_model, tmp_path):
    repo = tmp_path / "repo"
    first = export_model(demo_model, repo)
    modern = read_config(first.config_path)
    write_config(first.config_path, legacy_config(modern))
    assert signature_of(read_config(first.config_path)) == signature_of(modern)
    assert repository.validate(repo / MODEL) == []
    second = export_model(demo_model, repo)
    cleaned = read_config(second.config_path)
    assert set(cleaned.parameters) == set(modern.parameters)
    assert cleaned.parameters[SIGNATURE_PARAMETER] == modern.parameters[SIGNATURE_PARAMETER]


# -- finding 4: publishing is atomic and serialized ------------------------------------------------------


def blocked_on(lock: Path) -> int:
    """How many processes wait for a flock on `lock` (/proc/locks lists waiters after '->')."""
    inode = os.stat(lock).st_ino
    return sum(1 for line in Path("/proc/locks").read_text().splitlines()
               if "->" in line and re.search(rf":{inode} ", line))


def export_process(repo: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rf_triton", "export", "--repository", str(repo), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def publish_together(repo: Path, *args: str) -> list[tuple[int, str]]:
    """Two real `rf-triton export` processes released at the same instant onto the same model."""
    import fcntl

    lock = repo / MODEL / LOCK_FILENAME
    with open(lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        processes = [export_process(repo, *args) for _ in range(2)]
        deadline = time.monotonic() + 180
        while blocked_on(lock) < 2:
            finished = [p for p in processes if p.poll() is not None]
            assert not finished, f"an export ended without waiting for the model's lock: {finished[0].communicate()}"
            assert time.monotonic() < deadline, "both exports did not reach the publish lock"
            time.sleep(0.1)
        fcntl.flock(held, fcntl.LOCK_UN)
    results = []
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        results.append((process.returncode, stderr))
    return results


def test_two_concurrent_exports_get_distinct_versions(demo_model, tmp_path):
    repo = tmp_path / "repo"
    export_model(demo_model, repo)
    results = publish_together(repo)
    assert [code for code, _ in results] == [0, 0], results
    assert repository.versions(repo / MODEL) == [1, 2, 3]
    assert repository.validate(repo / MODEL) == []
    for version in (2, 3):
        assert sorted(p.name for p in (repo / MODEL / str(version)).iterdir()) == ["metadata.json", "model.onnx"]
    assert not list((repo / MODEL).glob(".staging-*"))


def test_two_concurrent_exports_of_one_version_number_give_one_clean_error(demo_model, tmp_path):
    repo = tmp_path / "repo"
    export_model(demo_model, repo)
    results = sorted(publish_together(repo, "--version", "5"))
    (ok, _), (refused, stderr) = results
    assert (ok, refused) == (0, 1), results
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        f"error: version 5 of {MODEL} already exists in {repo}; versions are immutable, export a new one"], stderr
    assert repository.versions(repo / MODEL) == [1, 5]


def test_the_config_is_written_before_the_version_appears_and_restored_on_failure(demo_model, tmp_path,
                                                                                  monkeypatch):
    """Fault injection at the config write: the version must not be visible yet, and stays unpublished."""
    from rf_triton.repository import publishing as publish_module

    repo = tmp_path / "repo"
    export_model(demo_model, repo)
    before = snapshot(repo)
    seen = []
    real = publish_module.replace_atomically

    def failing_config_write(path: Path, data: bytes) -> None:
        if path.name == "config.pbtxt" and not seen:
            seen.append(repository.versions(repo / MODEL))
            real(path, data)  # the new config lands...
            raise OSError(28, "No space left on device")  # ...and the disk fills right after
        real(path, data)

    monkeypatch.setattr(publish_module, "replace_atomically", failing_config_write)
    from rf_triton.export.triton_config import ServingOptions

    with pytest.raises(ExportError, match="No space left on device; nothing written"):
        export_model(demo_model, repo, options=ServingOptions(max_queue_delay_us=123))
    assert seen == [[1]], "the version folder was visible before its config was written"
    assert snapshot(repo) == before  # the previous config is back, no version 2, no staging folder


# -- finding 8 (export): any OSError while writing is one error line, nothing left behind -------------------


def unprivileged() -> list[str]:
    """Root ignores permission bits; without CAP_DAC_OVERRIDE it obeys them like anyone."""
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"] if os.geteuid() == 0 else []


@pytest.mark.parametrize("where", ["model folder", "repository parent", "repository is under a file"])
def test_export_into_an_unwritable_repository_is_one_error_line(where, demo_model, tmp_path):
    if where == "repository is under a file":
        (tmp_path / "file").write_text("not a folder")
        repo = tmp_path / "file" / "repo"
    elif where == "repository parent":
        (tmp_path / "locked").mkdir()
        repo = tmp_path / "locked" / "repo"
        os.chmod(tmp_path / "locked", 0o555)
    else:
        repo = tmp_path / "repo"
        export_model(demo_model, repo)
        os.chmod(repo / MODEL, 0o555)
    before = snapshot(tmp_path)
    try:
        result = subprocess.run([*unprivileged(), sys.executable, "-m", "rf_triton", "export", "--repository",
                                 str(repo)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    finally:
        for folder in (tmp_path / "locked", repo / MODEL):
            if folder.exists():
                os.chmod(folder, 0o755)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nothing written" in errors[0], result.stderr
    assert snapshot(tmp_path) == before
    assert not list(tmp_path.rglob(".staging-*"))


# -- finding 5: one set of rules and messages for doctor and serve -----------------------------------------


def _no_config(model: Path) -> None:
    (model / "config.pbtxt").unlink()


def _no_version(model: Path) -> None:
    shutil.rmtree(model / "1")


def _no_model_file(model: Path) -> None:
    (model / "1" / "model.onnx").unlink()


def _empty_model_file(model: Path) -> None:
    (model / "1" / "model.onnx").write_bytes(b"")


def _unparseable(model: Path) -> None:
    (model / "config.pbtxt").write_text("input [ {")


def _renamed(model: Path) -> None:
    config = read_config(model / "config.pbtxt")
    config.name = "another_name"
    write_config(model / "config.pbtxt", config)


def _split_signature(model: Path) -> None:
    config = read_config(model / "config.pbtxt")
    config.input[0].dims[0] = 6
    write_config(model / "config.pbtxt", config)


def _missing_policy_version(model: Path) -> None:
    config = read_config(model / "config.pbtxt")
    config.version_policy.specific.versions.extend([1, 4])
    write_config(model / "config.pbtxt", config)


@pytest.mark.parametrize("damage, detail", [
    (_no_config, "no config.pbtxt in"),
    (_no_version, "no version folder in"),
    (_no_model_file, "version 1 has no model.onnx"),
    (_empty_model_file, "version 1: model.onnx is empty (half-written)"),
    (_unparseable, "is not a valid Triton model config"),
    (_renamed, "name 'another_name' differs from its folder 'random_forest'"),
    (_split_signature, "the signature parameter describes inputs X FP32 [5], config.pbtxt declares X FP32 [6]"),
    (_missing_policy_version, "version_policy names missing version(s) 4"),
], ids=lambda value: getattr(value, "__name__", "")[1:] or None)
def test_doctor_and_serve_refuse_a_broken_model_in_the_same_words(damage, detail, demo_repository, tmp_path):
    canonical = tmp_path / "canonical"
    shutil.copytree(demo_repository, canonical, ignore=shutil.ignore_patterns(".*"))
    damage(canonical / MODEL)
    problems = repository.validate(canonical / MODEL)
    assert problems and detail in problems[0].detail, problems
    doctor = runner.invoke(app, ["doctor", "--json", "--repository", str(canonical), "--http-port", "1",
                                 "--grpc-port", "2", "--metrics-port", "3"])
    rows = {row["name"]: row for row in json.loads(doctor.stdout)["checks"]}
    doctor_row = rows[f"{MODEL}: {problems[0].check}"]
    assert doctor_row["status"] == "FAIL" and problems[0].detail in doctor_row["detail"], doctor_row
    assert doctor_row["fix"] == problems[0].fix
    with pytest.raises(RepositoryError) as refused:
        derive(canonical, tmp_path / "runtime")
    assert str(refused.value) == f"model {MODEL} cannot be served: " + "; ".join(p.detail for p in problems)


# -- finding 14: one instance-count default, Triton's ---------------------------------------------------


def hand_written(groups: list[dict]) -> mc.ModelConfig:
    config = read_config(ROOT / "model_repository" / MODEL / "config.pbtxt")
    del config.instance_group[:]
    for group in groups:
        config.instance_group.add(**group)
    return config


@pytest.mark.parametrize("groups, instances", [
    ([], 2),  # no instance_group: Triton adds one group, KIND_CPU on a host without GPUs, 2 for onnxruntime
    ([{"kind": mc.ModelInstanceGroup.KIND_CPU}], 2),
    ([{"kind": mc.ModelInstanceGroup.KIND_AUTO}], 2),
    ([{"kind": mc.ModelInstanceGroup.KIND_CPU, "count": 3}], 3),
    ([{"kind": mc.ModelInstanceGroup.KIND_GPU, "gpus": [0]}], 1),
    ([{"kind": mc.ModelInstanceGroup.KIND_CPU}, {"kind": mc.ModelInstanceGroup.KIND_CPU, "count": 1}], 3),
])
def test_the_embedded_twin_runs_the_instances_the_container_would(groups, instances):
    config = hand_written(groups)
    twin = python_backend_config(config, [])
    assert [g.kind for g in twin.instance_group] == [mc.ModelInstanceGroup.KIND_CPU] * max(1, len(groups))
    assert sum(g.count for g in twin.instance_group) == instances == repository.instance_count(config)
    assert all(g.count >= 1 for g in twin.instance_group)  # the Python backend's own default (1) never applies


# -- readers wait for a publish in progress -------------------------------------------------------------


def test_the_mirror_leaves_a_model_alone_while_it_is_being_published(demo_model, demo_repository, tmp_path,
                                                                   monkeypatch):
    """The embedded server's mirror takes the publish lock shared: a model held by a publisher longer
    than the wait is left as it was (pending), and mirrored once the publisher is done."""
    import fcntl

    from rf_triton.repository import publishing
    from rf_triton.serve import runtime_repository

    canonical = tmp_path / "canonical"
    export_model(demo_model, canonical)
    runtime = tmp_path / "runtime"
    runtime_repository.derive(canonical, runtime)
    before = snapshot(runtime)
    monkeypatch.setattr(publishing, "SHARED_LOCK_TIMEOUT_S", 0.2)
    with open(canonical / MODEL / LOCK_FILENAME) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        (canonical / MODEL / "config.pbtxt").unlink()  # a publisher's half-done state, as the mirror must not see it
        pending = runtime_repository.sync(canonical, runtime)
        assert pending.pending == [MODEL] and pending.broken == {}
        assert snapshot(runtime) == before
        write_config(canonical / MODEL / "config.pbtxt", read_config(demo_repository / MODEL / "config.pbtxt"))
    mirrored = runtime_repository.sync(canonical, runtime)
    assert mirrored.pending == [] and mirrored.models == {MODEL: [1]}
