"""Deriving the embedded server's Python-backend repository from the canonical one."""

import hashlib

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from rf_triton.repository import read_config, write_config
from rf_triton.serve import runtime_repository
from rf_triton.serve.runtime_repository import RepositoryError, derive


def tree_digest(path):
    digest = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        digest.update(str(p.relative_to(path)).encode())
        if p.is_file():
            digest.update(p.read_bytes())
    return digest.hexdigest()


def test_onnx_model_becomes_python_backend_twin(demo_repository, tmp_path):
    before = tree_digest(demo_repository)
    result = derive(demo_repository, tmp_path / "runtime")
    assert result.models == {"random_forest": [1]}
    canonical = read_config(demo_repository / "random_forest" / "config.pbtxt")
    runtime = read_config(tmp_path / "runtime" / "random_forest" / "config.pbtxt")
    assert runtime.backend == "python" and runtime.platform == "" and runtime.default_model_filename == ""
    for field in ("input", "output", "max_batch_size", "dynamic_batching", "instance_group", "version_policy",
                  "model_warmup"):
        assert getattr(runtime, field) == getattr(canonical, field), field
    version_dir = tmp_path / "runtime" / "random_forest" / "1"
    assert (version_dir / "model.onnx").resolve() == (demo_repository / "random_forest" / "1" / "model.onnx").resolve()
    assert (version_dir / "model.py").read_text() == runtime_repository.MODEL_SOURCE.read_text()
    assert tree_digest(demo_repository) == before, "the canonical repository must not change"


def test_gpu_groups_run_on_cpu_with_a_warning(demo_repository, tmp_path):
    canonical = tmp_path / "canonical"
    (canonical / "random_forest" / "1").mkdir(parents=True)
    (canonical / "random_forest" / "1" / "model.onnx").symlink_to(demo_repository / "random_forest" / "1" / "model.onnx")
    config = read_config(demo_repository / "random_forest" / "config.pbtxt")
    del config.instance_group[:]
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_GPU, gpus=[0])
    write_config(canonical / "random_forest" / "config.pbtxt", config)
    result = derive(canonical, tmp_path / "runtime")
    runtime = read_config(tmp_path / "runtime" / "random_forest" / "config.pbtxt")
    assert [(g.kind, list(g.gpus)) for g in runtime.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, [])]
    assert any("KIND_GPU instances run as KIND_CPU" in w for w in result.warnings)


def test_other_backends_are_skipped_with_a_warning(demo_repository, tmp_path):
    canonical = tmp_path / "canonical"
    fil = canonical / "forest_fil"
    (fil / "1").mkdir(parents=True)
    write_config(fil / "config.pbtxt", mc.ModelConfig(name="forest_fil", backend="fil", max_batch_size=8))
    with pytest.raises(RepositoryError, match="no model .* can be served"):
        derive(canonical, tmp_path / "runtime-a")
    (canonical / "random_forest").symlink_to(demo_repository / "random_forest")
    result = derive(canonical, tmp_path / "runtime-b")
    assert list(result.models) == ["random_forest"]
    assert any("forest_fil skipped" in w for w in result.warnings)


@pytest.mark.parametrize("damage, message", [
    ("no_config", "random_forest cannot be served: no config.pbtxt in"),
    ("no_version", "random_forest cannot be served: no version folder in"),
    ("no_onnx", "random_forest cannot be served: version 1 has no model.onnx"),
    ("bad_config", "random_forest cannot be served: .* is not a valid Triton model config"),
])
def test_broken_repositories_are_refused(damage, message, demo_repository, tmp_path):
    model = tmp_path / "canonical" / "random_forest"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").symlink_to(demo_repository / "random_forest" / "1" / "model.onnx")
    write_config(model / "config.pbtxt", read_config(demo_repository / "random_forest" / "config.pbtxt"))
    if damage == "no_config":
        (model / "config.pbtxt").unlink()
    elif damage == "no_version":
        (model / "1" / "model.onnx").unlink()
        (model / "1").rmdir()
    elif damage == "no_onnx":
        (model / "1" / "model.onnx").unlink()
    else:
        (model / "config.pbtxt").write_text("input [ {")
    with pytest.raises(RepositoryError, match=message):
        derive(tmp_path / "canonical", tmp_path / "runtime")


def test_missing_repository_is_refused(tmp_path):
    with pytest.raises(RepositoryError, match="not found"):
        derive(tmp_path / "nowhere", tmp_path / "runtime")
