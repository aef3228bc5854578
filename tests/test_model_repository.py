"""The committed model_repository/ is what the stock container serves: it must be consistent."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from rf_triton.export import onnx_convert, sources
from rf_triton.export.triton_config import feature_names, read_config

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


def test_parity_with_a_freshly_trained_demo_model(demo_model):
    """The committed ONNX file is the demo model: same seed, same predictions."""
    onnx_bytes = (MODEL_DIR / "1" / "model.onnx").read_bytes()
    report = onnx_convert.check_parity(demo_model.estimator, onnx_bytes, demo_model.X_val, tolerance=1e-4)
    assert report.passed, report
    X, _ = sources.demo_dataset()
    expected = demo_model.estimator.predict(X)
    actual = onnx_convert.ort_predict(onnx_bytes, X)
    assert np.max(onnx_convert.relative_errors(expected, actual)) <= 1e-4
