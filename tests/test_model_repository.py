"""The committed model_repository/ is what the stock container serves: it must be consistent."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from rf_triton.export import onnx_convert, parity, sources
from rf_triton.export.pipeline import export_model
from rf_triton.repository import feature_names, read_config

ROOT = Path(__file__).resolve().parents[1]

MODEL_DIR = ROOT / "model_repository" / "random_forest"
ONNX_TYPES = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.DOUBLE: mc.TYPE_FP64}


@pytest.fixture(scope="module")
def config():
    return read_config(MODEL_DIR / "config.pbtxt")


@pytest.fixture(scope="module")
def graph():
    return onnx.load(str(MODEL_DIR / "1" / "model.onnx")).graph


def tensor_dims(value_info) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def test_layout_is_complete():
    assert (MODEL_DIR / "config.pbtxt").is_file()
    assert sorted(p.name for p in (MODEL_DIR / "1").iterdir()) == ["metadata.json", "model.onnx"]


def test_config_targets_the_onnxruntime_backend(config):
    assert config.name == "random_forest"
    assert config.backend == "onnxruntime"
    assert config.max_batch_size > 0
    assert config.HasField("dynamic_batching")
    assert config.instance_group and config.model_warmup


def test_config_matches_the_graph(config, graph):
    """Names, data types and dims (batch dim stripped) exactly as in the ONNX graph."""
    for declared, actual in ((config.input, graph.input), (config.output, graph.output)):
        assert [d.name for d in declared] == [a.name for a in actual]
        for d, a in zip(declared, actual):
            assert d.data_type == ONNX_TYPES[a.type.tensor_type.elem_type]
            dims = tensor_dims(a)
            assert dims[0] == -1, "batch dimension must be dynamic"
            assert list(d.dims) == dims[1:]
    warm = config.model_warmup[0].inputs[config.input[0].name]
    assert list(warm.dims) == list(config.input[0].dims) and warm.data_type == config.input[0].data_type


def test_graph_is_one_tree_ensemble(graph):
    ops = [n.op_type for n in graph.node]
    assert ops.count("TreeEnsembleRegressor") == 1 and set(ops) <= {"TreeEnsembleRegressor", "Cast"}, ops


def test_metadata_and_feature_names(config):
    metadata = json.loads((MODEL_DIR / "1" / "metadata.json").read_text())
    assert feature_names(config) == metadata["feature_names"] == [f"x{i}" for i in range(5)]
    assert metadata["n_estimators"] == 50 and metadata["max_depth"] == 10
    assert metadata["parity"]["max_rel_error"] <= metadata["parity"]["tolerance"]


def test_committed_repository_is_what_the_exporter_writes(demo_model, tmp_path):
    """Regenerate the demo into a fresh repository: the same config, the same graph, the same
    metadata (timestamps aside). A change to the exporter that is not re-exported fails here."""
    fresh = tmp_path / "model_repository"
    export_model(demo_model, fresh)
    fresh_dir = fresh / "random_forest"
    assert (fresh_dir / "config.pbtxt").read_text() == (MODEL_DIR / "config.pbtxt").read_text()
    assert (fresh_dir / "1" / "model.onnx").read_bytes() == (MODEL_DIR / "1" / "model.onnx").read_bytes()
    committed = json.loads((MODEL_DIR / "1" / "metadata.json").read_text())
    written = json.loads((fresh_dir / "1" / "metadata.json").read_text())
    for metadata in (committed, written):
        metadata.pop("created_at")
        metadata.pop("versions")  # the tools this install resolved: a newer sklearn must not fail this test
    # sklearn's threaded predict sums trees in any order: the last bits of the errors may move
    (written_numbers, written_rest), (committed_numbers, committed_rest) = map(
        numbers_and_rest, (written.pop("parity"), committed.pop("parity")))
    assert written_rest == committed_rest
    assert written_numbers == pytest.approx(committed_numbers, rel=1e-6)
    assert written == committed


def numbers_and_rest(figures: dict) -> tuple[dict, dict]:
    numbers = {k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return numbers, {k: v for k, v in figures.items() if k not in numbers}


def test_committed_graph_predicts_like_sklearn_with_missing_values(demo_model):
    """NaN routing lives in the committed model.onnx: ONNX Runtime follows sklearn on NaN rows."""
    onnx_bytes = (MODEL_DIR / "1" / "model.onnx").read_bytes()
    X, _ = sources.demo_dataset()
    rows = np.concatenate([X, parity.with_missing_values(X)])
    expected = demo_model.estimator.predict(rows)
    actual = onnx_convert.predict(onnx_bytes, rows).values.reshape(-1)
    assert np.isnan(rows).any(axis=1).sum() >= 100
    assert np.max(parity.relative_errors(expected, actual)) <= 1e-4
