"""A lean skl2onnx converter for sklearn forests, passed to each export's own conversion.

skl2onnx's own converter walks every node in Python, appending to lists: for a forest with the
defaults on real data (100 trees, millions of nodes) that takes minutes and several GB. This one
builds the same tree-ensemble attributes with numpy, one array per attribute per forest,
and writes each split's missing-value direction from sklearn's tree at the same time. skl2onnx
stays the converter of everything around the forest (pipelines, encoders, scalers).

Thresholds follow skl2onnx's rule: sklearn compares float32 features with float64 thresholds, so
each threshold becomes the largest float32 not above it, and float32 comparisons route like sklearn.
A forest at the end of a float64 pipeline gets a Cast to float32 right before its trees: sklearn
computes the preprocessing in float64 and casts its result to float32 once, so the trees see the
very float32 values sklearn's trees see.

The converter is handed to skl2onnx per call (`custom_conversion_functions`), never registered:
skl2onnx keeps converting forests its own way for everything else in the process.
"""

from __future__ import annotations

import numpy as np

NODE_NAME = "forest"  # the node this converter adds; its trees are written in by fill()
CAST_NAME = "features_as_float32"  # the Cast a float64 pipeline gets right before the trees
OPS = {False: "TreeEnsembleRegressor", True: "TreeEnsembleClassifier"}


def float32_thresholds(thresholds: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 threshold (x32 <= t32 exactly when x32 <= t64)."""
    rounded = thresholds.astype(np.float32)
    above = rounded.astype(np.float64) > thresholds
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def tree_attributes(forest) -> dict:
    """The per-node and per-leaf attributes of a fitted sklearn forest, built with numpy.

    Regressor: target_* (one weight per leaf and output). Classifier: class_* (one weight per leaf
    and class, the leaf's class fractions; for two classes only class 1's, which is how ONNX
    Runtime's binary case computes both probabilities and picks the label, as skl2onnx writes it).
    tests/test_model_kinds.py checks both against skl2onnx's own tree walk.
    """
    from sklearn.base import is_classifier

    classifier = is_classifier(forest)
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

    leaves = np.flatnonzero(~split)
    width = len(forest.classes_) if classifier else int(forest.n_outputs_)
    values = np.concatenate([t.value.reshape(t.node_count, -1)[:, :width] for t in trees])[leaves]
    factor = np.full((len(leaves), 1), 1.0 / len(trees))  # a forest averages its trees
    if classifier:  # class fractions per leaf, as sklearn's predict_proba averages them
        totals = values.sum(axis=1, keepdims=True)
        factor = factor / np.where(totals == 0, 1, totals)  # skl2onnx's order of operations, bit for bit
    ids = np.arange(width, dtype=np.int64)
    if classifier and width == 2:  # ONNX Runtime's binary case, as skl2onnx writes it: class 1's
        values, ids = values[:, 1:], ids[:1]  # weight under id 0; ORT answers [1 - p, p]
    weights = (values * factor[:, :1]).astype(np.float32)
    prefix = "class" if classifier else "target"
    return {
        "nodes_treeids": tree_ids,
        "nodes_nodeids": node_ids,
        "nodes_featureids": features,
        "nodes_modes": modes,
        "nodes_values": thresholds.astype(np.float32),
        "nodes_truenodeids": np.where(split, left, 0),
        "nodes_falsenodeids": np.where(split, right, 0),
        "nodes_missing_value_tracks_true": missing_left,
        f"{prefix}_treeids": np.repeat(tree_ids[leaves], len(ids)),
        f"{prefix}_nodeids": np.repeat(node_ids[leaves], len(ids)),
        f"{prefix}_ids": np.tile(ids, len(leaves)),
        f"{prefix}_weights": weights.reshape(-1),
    }


def convert_forest(scope, operator, container) -> None:
    """skl2onnx converter: one tree-ensemble node (ai.onnx.ml), FP32 in; a regressor's values, or a
    classifier's label and probabilities (skl2onnx's own outputs: no ZipMap is asked for here).

    The node is added with its small attributes only: skl2onnx copies nodes several times while it
    assembles the graph, so the per-node arrays are written once, into the final graph, by fill().
    """
    from sklearn.base import is_classifier

    from onnx import TensorProto
    from skl2onnx.common.data_types import FloatTensorType

    forest = operator.raw_operator
    features = operator.inputs[0].full_name
    if not isinstance(operator.inputs[0].type, FloatTensorType):
        cast = scope.get_unique_variable_name(CAST_NAME)
        container.add_node("Cast", features, cast, to=TensorProto.FLOAT, name=CAST_NAME)
        features = cast
    if not is_classifier(forest):
        container.add_node(OPS[False], [features], operator.outputs[0].full_name,
                           op_domain="ai.onnx.ml", op_version=1, name=NODE_NAME,
                           n_targets=int(forest.n_outputs_), post_transform="NONE")
        return
    classes = forest.classes_
    labels = ({"classlabels_strings": [str(c) for c in classes]} if np.asarray(classes).dtype.kind in "OU"
              else {"classlabels_int64s": [int(c) for c in classes]})
    container.add_node(OPS[True], [features],
                       [operator.outputs[0].full_name, operator.outputs[1].full_name],
                       op_domain="ai.onnx.ml", op_version=1, name=NODE_NAME, post_transform="NONE", **labels)


def fill(graph, forest) -> bool:
    """Write the forest's trees into the node convert_forest added; False if there is none."""
    import onnx

    node = next((n for n in graph.node if n.name == NODE_NAME and n.op_type in OPS.values()), None)
    if node is None:
        return False
    attributes = tree_attributes(forest)
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


def forest_types() -> tuple[type, ...]:
    from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor, RandomForestClassifier, RandomForestRegressor

    return RandomForestRegressor, ExtraTreesRegressor, RandomForestClassifier, ExtraTreesClassifier


def output_shapes(operator) -> None:
    """skl2onnx's shape rule for a forest, with FP32 outputs whatever the input type: the trees
    compute in float32 (a float64 pipeline is cast right before them)."""
    from sklearn.base import is_classifier
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    from skl2onnx.shape_calculators.ensemble_shapes import (
        calculate_tree_classifier_output_shapes, calculate_tree_regressor_output_shapes,
    )

    if is_classifier(operator.raw_operator):
        calculate_tree_classifier_output_shapes(operator)
    else:
        calculate_tree_regressor_output_shapes(operator)
    for output in operator.outputs:
        if isinstance(output.type, DoubleTensorType):
            output.type = FloatTensorType(output.type.shape)


def conversion_arguments() -> dict:
    """The keyword arguments that make one `convert_sklearn` call use this converter."""
    types = forest_types()
    return {"custom_conversion_functions": {t: convert_forest for t in types},
            "custom_shape_calculators": {t: output_shapes for t in types}}
