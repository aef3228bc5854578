"""Export's parity check and the embedded server run the ONNX Runtime of the default release of the
table (src/rf_triton/releases.py): what they compute is what that container computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from rf_triton import releases
from rf_triton.export import onnx_convert
from rf_triton.export.errors import ExportError
from rf_triton.export.pipeline import check_release


def test_the_installed_onnx_runtime_is_the_default_releases():
    assert onnxruntime.__version__ == onnx_convert.CONTAINER_ORT == releases.DEFAULT.onnxruntime.version


def test_every_exported_kind_records_the_runtime_it_was_checked_with(tmp_path):
    """The kinds served in test_model_kinds were checked under this runtime: metadata says which,
    and which release (server, ONNX Runtime) the version was exported for."""
    from sklearn.ensemble import ExtraTreesClassifier

    from rf_triton.export import sources
    from rf_triton.export.pipeline import export_model

    X = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    forest = ExtraTreesClassifier(5, random_state=0).fit(X, (X[:, 0] > 0).astype(int))
    trained = sources.TrainedModel(forest, ["a", "b", "c"], X, "test")
    result = export_model(trained, tmp_path / "repo")
    assert result.metadata["versions"]["onnxruntime"] == onnx_convert.CONTAINER_ORT
    assert result.metadata["triton_release"] == releases.DEFAULT.tag
    assert result.metadata["triton_server"] == releases.DEFAULT.server
    assert result.metadata["triton_onnxruntime"] == releases.DEFAULT.onnxruntime.version


def tree_ensemble_opset5() -> bytes:
    """A one-split TreeEnsemble (ai.onnx.ml opset 5, double precision): ONNX Runtime runs it from 1.21."""
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


def test_a_graph_an_older_release_cannot_load_is_refused_in_one_line():
    """24.10 runs ONNX Runtime 1.19.2, which has no TreeEnsemble kernel (ai.onnx.ml opset 5)."""
    with pytest.raises(ExportError) as refused:
        check_release(tree_ensemble_opset5(), "onnx", releases.get("24.10"))
    message = str(refused.value)
    assert message.startswith("Triton 24.10 (server 2.51.0, ONNX Runtime 1.19.2) cannot serve this graph")
    assert "ai.onnx.ml opset 5" in message and "up to 4" in message and "\n" not in message


def test_the_default_releases_runtime_runs_that_graph():
    """The same graph under the default release: the check lets it through, and the installed
    ONNX Runtime (the default release's) computes it."""
    check_release(tree_ensemble_opset5(), "onnx", releases.DEFAULT)
    sess = onnx_convert.session(tree_ensemble_opset5())
    (answer,) = sess.run(None, {"X": np.array([[0.0], [1.0]])})
    assert answer.ravel().tolist() == [1.0, 2.0]


def forests(X) -> dict:
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestClassifier, RandomForestRegressor

    return {
        "regressor": RandomForestRegressor(8, random_state=0).fit(X, X[:, 0]),
        "two outputs": ExtraTreesRegressor(8, random_state=0).fit(X, np.c_[X[:, 0], X[:, 1]]),
        "binary": RandomForestClassifier(8, random_state=0).fit(X, (X[:, 0] > 0).astype(int)),
        "four classes": RandomForestClassifier(8, random_state=0).fit(X, np.digitize(X[:, 0], [-1, 0, 1])),
    }


@pytest.mark.parametrize("kind", ["regressor", "two outputs", "binary", "four classes"])
def test_size_estimate_tracks_the_written_file(kind):
    """The 2 GB refusal rests on this estimate: it stays within 10% of the real file."""
    from rf_triton.export import sources

    X = np.random.default_rng(0).normal(size=(4000, 6)).astype(np.float32)
    forest = forests(X)[kind]
    written = len(onnx_convert.convert(sources.TrainedModel(forest, list("abcdef"), X, "test")))
    assert 0.9 * written <= onnx_convert.estimated_size(forest) <= 1.1 * written


def test_a_forest_past_two_gigabytes_is_refused_before_converting(monkeypatch):
    """Without writing 2 GB: the same forest, against a limit just below its estimated size."""
    from sklearn.ensemble import RandomForestRegressor

    from rf_triton.export import forest_onnx, sources

    X = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    forest = RandomForestRegressor(4, random_state=0).fit(X, X[:, 0])
    monkeypatch.setattr(onnx_convert, "PROTOBUF_LIMIT", int(onnx_convert.estimated_size(forest) / 0.95) - 1)
    monkeypatch.setattr(forest_onnx, "conversion_arguments", lambda: pytest.fail("conversion started"))
    with pytest.raises(ExportError, match="past protobuf's 2 GB limit.*--format fil"):
        onnx_convert.convert(sources.TrainedModel(forest, ["a", "b", "c"], X, "test"))
