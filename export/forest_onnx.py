"""A lean skl2onnx converter for forest regressors, registered through skl2onnx's converter API.

skl2onnx's own converter walks every node in Python, appending to lists: for a forest with the
defaults on real data (100 trees, millions of nodes) that takes minutes and several GB. This one
builds the same TreeEnsembleRegressor attributes with numpy, one array per attribute per forest,
and writes each split's missing-value direction from sklearn's tree at the same time. skl2onnx
stays the converter of everything around the forest (pipelines, encoders, scalers).

Thresholds follow skl2onnx's rule: sklearn compares float32 features with float64 thresholds, so
each threshold becomes the largest float32 not above it, and float32 comparisons route like sklearn.
"""

from __future__ import annotations

import numpy as np

NODE_NAME = "forest_regressor"  # the node this converter adds; its trees are written in by fill()
_registered = False


def float32_thresholds(thresholds: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 threshold (x32 <= t32 exactly when x32 <= t64)."""
    rounded = thresholds.astype(np.float32)
    above = rounded.astype(np.float64) > thresholds
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def regressor_attributes(forest) -> dict:
    """TreeEnsembleRegressor attributes for a fitted sklearn forest regressor, built with numpy."""
    trees = [estimator.tree_ for estimator in forest.estimators_]
    counts = np.array([t.node_count for t in trees])
    tree_ids = np.repeat(np.arange(len(trees), dtype=np.int64), counts)
    node_ids = np.concatenate([np.arange(c, dtype=np.int64) for c in counts])
    left = np.concatenate([t.children_left for t in trees]).astype(np.int64)
    right = np.concatenate([t.children_right for t in trees]).astype(np.int64)
    split = left >= 0
    features = np.where(split, np.concatenate([t.feature for t in trees]), 0).astype(np.int64)
    thresholds = np.where(split, float32_thresholds(np.concatenate([t.threshold for t in trees])), 0)
    missing_left = np.where(split, np.concatenate([t.missing_go_to_left for t in trees]), 0).astype(np.int64)
    modes = [b"BRANCH_LEQ" if is_split else b"LEAF" for is_split in split.tolist()]  # two shared objects

    n_targets = int(forest.n_outputs_)
    leaves = np.flatnonzero(~split)
    values = np.concatenate([t.value.reshape(t.node_count, -1)[:, :n_targets] for t in trees])[leaves]
    weights = (values / len(trees)).astype(np.float32)  # a forest averages its trees
    return {
        "n_targets": n_targets,
        "post_transform": "NONE",
        "nodes_treeids": tree_ids,
        "nodes_nodeids": node_ids,
        "nodes_featureids": features,
        "nodes_modes": modes,
        "nodes_values": thresholds.astype(np.float32),
        "nodes_truenodeids": np.where(split, left, 0),
        "nodes_falsenodeids": np.where(split, right, 0),
        "nodes_missing_value_tracks_true": missing_left,
        "target_treeids": np.repeat(tree_ids[leaves], n_targets),
        "target_nodeids": np.repeat(node_ids[leaves], n_targets),
        "target_ids": np.tile(np.arange(n_targets, dtype=np.int64), len(leaves)),
        "target_weights": weights.reshape(-1),
    }


def convert_forest_regressor(scope, operator, container) -> None:
    """skl2onnx converter: one TreeEnsembleRegressor node (ai.onnx.ml), FP32 in and out.

    The node is added with its scalar attributes only: skl2onnx copies nodes several times while
    it assembles the graph, so the per-node arrays are written once, into the final graph, by fill().
    """
    forest = operator.raw_operator
    container.add_node("TreeEnsembleRegressor", operator.input_full_names, operator.outputs[0].full_name,
                       op_domain="ai.onnx.ml", op_version=1, name=NODE_NAME,
                       n_targets=int(forest.n_outputs_), post_transform="NONE")


def fill(graph, forest) -> bool:
    """Write the forest's trees into the node convert_forest_regressor added; False if there is none."""
    import onnx

    node = next((n for n in graph.node if n.name == NODE_NAME and n.op_type == "TreeEnsembleRegressor"), None)
    if node is None:
        return False
    attributes = regressor_attributes(forest)
    for key in ("n_targets", "post_transform"):
        attributes.pop(key)
    for key in list(attributes):
        values = attributes.pop(key)  # free each array as soon as it is written
        attribute = node.attribute.add()
        attribute.name = key
        if isinstance(values, list):
            attribute.type = onnx.AttributeProto.STRINGS
            attribute.strings.extend(values)
        elif values.dtype.kind == "f":
            attribute.type = onnx.AttributeProto.FLOATS
            attribute.floats.extend(values.tolist())
        else:
            attribute.type = onnx.AttributeProto.INTS
            attribute.ints.extend(values.tolist())
        del values
    return True


def register() -> None:
    """Make skl2onnx use this converter for forest regressors, in this process (idempotent)."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.shape_calculators.ensemble_shapes import calculate_tree_regressor_output_shapes
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

    for model in (RandomForestRegressor, ExtraTreesRegressor):
        update_registered_converter(model, f"Sklearn{model.__name__}", calculate_tree_regressor_output_shapes,
                                    convert_forest_regressor, overwrite=True)
    _registered = True
