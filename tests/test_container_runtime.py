"""Export's parity check and the embedded server run the ONNX Runtime of the container the
repository targets (1.19.2 in 24.10): what they compute is what production computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from rf_triton.export import onnx_convert
from rf_triton.export.errors import ExportError


def test_the_installed_onnx_runtime_is_the_containers():
    assert onnxruntime.__version__ == onnx_convert.CONTAINER_ORT


def test_every_exported_kind_records_the_runtime_it_was_checked_with(tmp_path):
    """The kinds served in test_model_kinds were checked under this runtime: metadata says which."""
    from sklearn.ensemble import ExtraTreesClassifier

    from rf_triton.export import sources
    from rf_triton.export.pipeline import export_model

    X = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    forest = ExtraTreesClassifier(5, random_state=0).fit(X, (X[:, 0] > 0).astype(int))
    trained = sources.TrainedModel(forest, ["a", "b", "c"], X, "test")
    result = export_model(trained, tmp_path / "repo")
    assert result.metadata["versions"]["onnxruntime"] == onnx_convert.CONTAINER_ORT


def tree_ensemble_opset5() -> bytes:
    """A one-split TreeEnsemble (ai.onnx.ml opset 5, double precision): ONNX Runtime has it from 1.20."""
    node = helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml",
        tree_roots=[0], nodes_modes=helper.make_tensor("modes", TensorProto.UINT8, [1], [0]),
        nodes_featureids=[0], nodes_splits=helper.make_tensor("splits", TensorProto.DOUBLE, [1], [0.5]),
        nodes_truenodeids=[0], nodes_trueleafs=[1], nodes_falsenodeids=[1], nodes_falseleafs=[1],
        leaf_targetids=[0, 0], leaf_weights=helper.make_tensor("w", TensorProto.DOUBLE, [2], [1.0, 2.0]),
        aggregate_function=1, post_transform=0, n_targets=1)
    graph = helper.make_graph([node], "opset5", [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, 1])],
                              [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [None, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_a_graph_the_container_cannot_load_is_refused_in_one_line():
    with pytest.raises(ExportError) as refused:
        onnx_convert.session(tree_ensemble_opset5())
    message = str(refused.value)
    assert message.startswith(f"ONNX Runtime {onnx_convert.CONTAINER_ORT} cannot load this graph")
    assert "\n" not in message
