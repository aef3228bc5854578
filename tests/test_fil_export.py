"""`rf-triton export --format fil`: the treelite checkpoint for Triton's FIL backend (the GPU path).

The FIL backend is not in the embedded server, so the checkpoint is checked with treelite's own
predictor (GTIL) on the bytes written, and its config against what the 24.10 FIL backend reads
(fil_backend r24.10 src/shared_state.h, src/tl_model.h; cuML branch-24.08 legacy FIL).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import treelite
import treelite.gtil
from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor, RandomForestClassifier, RandomForestRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner
from tritonclient.grpc import model_config_pb2 as mc

from rf_triton import releases
from rf_triton.export import fil, parity, probes, sources
from rf_triton.export.errors import ExportError
from rf_triton.export.parity import relative_errors
from rf_triton.repository import feature_names, read_config
from rf_triton.serve import runtime_repository

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
CLASSIFIER_FLAG = releases.DEFAULT.fil_parameters.is_classifier  # export targets the default release


def export(*args: str):
    from rf_triton.cli import app

    return runner.invoke(app, ["export", *args])


def files_under(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def house_prices():
    """A small named-column regression problem (fast to fit)."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"rooms": rng.integers(1, 8, 400), "area": rng.normal(90, 30, 400),
                          "age": rng.uniform(0, 80, 400)}).astype(np.float32)
    price = 20 * frame["rooms"] + 3 * frame["area"] - frame["age"] + rng.normal(0, 5, 400)
    return frame, price.to_numpy()


@pytest.fixture(scope="module")
def fil_repository(tmp_path_factory) -> Path:
    """The demo forest exported with --format fil through the CLI."""
    repo = tmp_path_factory.mktemp("fil") / "repo"
    result = export("--format", "fil", "--repository", str(repo))
    assert result.exit_code == 0, result.output
    assert "treelite GTIL" in result.output and "stock container" in result.output
    return repo


def test_layout_and_config_are_what_the_fil_backend_reads(fil_repository):
    model_dir = fil_repository / "random_forest"
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["checkpoint.tl", "metadata.json"]
    config = read_config(model_dir / "config.pbtxt")
    assert config.backend == "fil" and config.platform == ""
    assert config.default_model_filename == "checkpoint.tl"
    assert config.parameters["model_type"].string_value == "treelite_checkpoint"
    assert config.parameters[CLASSIFIER_FLAG].string_value == "false"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("input__0", mc.TYPE_FP32, [5])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("output__0", mc.TYPE_FP32, [1])]
    assert config.max_batch_size == 1024 and config.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, mc.ModelInstanceGroup.KIND_AUTO)]
    assert "intra_op_thread_count" not in config.parameters  # ONNX Runtime's, not FIL's
    # The client reads feature names from the config, whatever the backend.
    assert feature_names(config) == [f"x{i}" for i in range(5)]
    assert "treelite_version" not in config.parameters  # a per-version fact: in metadata.json
    (warmup,) = config.model_warmup
    assert list(warmup.inputs["input__0"].dims) == [5]
    assert "predict_proba" not in config.parameters and "threshold" not in config.parameters
    metadata = json.loads((model_dir / "1" / "metadata.json").read_text())
    assert metadata["format"] == "fil" and metadata["backend"] == "fil"
    assert metadata["versions"]["treelite"] == treelite.__version__
    assert [t["name"] for t in metadata["inputs"]] == ["input__0"]
    assert [t["name"] for t in metadata["outputs"]] == ["output__0"]
    assert metadata["parity"]["checked_with"] == "treelite GTIL"
    assert 0 < metadata["parity"]["nan_rows"] < metadata["parity"]["rows"]
    assert metadata["parity"]["max_rel_error"] <= 1e-4


def test_checkpoint_on_disk_predicts_like_sklearn(fil_repository, demo_model):
    """The written file, read back by treelite, against sklearn on validation and split-spanning rows."""
    model = treelite.Model.deserialize(str(fil_repository / "random_forest" / "1" / "checkpoint.tl"))
    assert (model.num_tree, model.num_feature) == (50, 5)
    probe = probes.probe_rows(demo_model.estimator, demo_model.feature_names).rows
    for X in (demo_model.X_val, probe):
        X = np.asarray(X, dtype=np.float32)
        actual = treelite.gtil.predict(model, X).reshape(-1)
        assert np.max(relative_errors(demo_model.estimator.predict(X), actual)) <= 1e-6


def test_kind_gpu_and_batching_options(tmp_path):
    result = export("--format", "fil", "--repository", str(tmp_path / "repo"), "--kind", "gpu",
                    "--instances", "2", "--max-batch-size", "65536", "--max-queue-delay-us", "500")
    assert result.exit_code == 0, result.output
    config = read_config(tmp_path / "repo" / "random_forest" / "config.pbtxt")
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU)]
    assert config.max_batch_size == 65536
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert "ONNX Runtime computes tree ensembles on the CPU" not in result.output  # that note is ONNX's


def test_pickled_forest_keeps_feature_names(tmp_path, house_prices):
    frame, price = house_prices
    forest = RandomForestRegressor(n_estimators=8, max_depth=6, random_state=0).fit(frame, price)
    path = tmp_path / "forest.joblib"
    joblib.dump(Pipeline([("forest", forest)]), path)  # a Pipeline that is only the forest is fine
    result = export("--format", "fil", "--model", str(path), "--repository", str(tmp_path / "repo"))
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "repo" / "random_forest"
    assert feature_names(read_config(model_dir / "config.pbtxt")) == ["rooms", "area", "age"]
    checkpoint = (model_dir / "1" / "checkpoint.tl").read_bytes()
    X = frame.to_numpy()[:100]
    np.testing.assert_allclose(fil.predict(checkpoint, X).values.reshape(-1), forest.predict(frame.iloc[:100]),
                               rtol=1e-6)


def _failures(tmp_path: Path, house_prices) -> dict[str, tuple[list[str], str]]:
    frame, price = house_prices
    scaled = tmp_path / "scaled.joblib"
    joblib.dump(make_pipeline(StandardScaler(), RandomForestRegressor(n_estimators=4, random_state=0))
                .fit(frame, price), scaled)
    return {
        "pipeline with scaler": (["--model", str(scaled)], r"Pipeline with preprocessing \(standardscaler\) "
                                                           r"cannot go to FIL.*--format onnx"),
        "tolerance breach": (["--tolerance", "1e-20"], "parity check failed"),
        "onnx threads": (["--intra-op-threads", "2"], "ONNX Runtime options; the fil backend does not use them"),
        "unknown format": (["--format", "xgboost"], "--format must be one of onnx, fil"),
    }


@pytest.mark.parametrize("case", ["pipeline with scaler", "tolerance breach", "onnx threads", "unknown format"])
def test_refusals_write_nothing(case, tmp_path, house_prices):
    args, message = _failures(tmp_path, house_prices)[case]
    repo = tmp_path / "repo"
    assert export("--format", "fil", "--repository", str(repo)).exit_code == 0
    before = files_under(repo)
    result = export("--format", "fil", "--repository", str(repo), *args)
    assert result.exit_code == 1, result.output
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert re.search(message, error), error
    assert files_under(repo) == before
    assert not list(repo.rglob(".staging-*"))


def test_a_model_does_not_switch_backend(tmp_path):
    """Old versions hold model.onnx: a FIL config over them would break them, so it is refused."""
    repo = tmp_path / "repo"
    assert export("--repository", str(repo)).exit_code == 0
    before = files_under(repo)
    result = export("--format", "fil", "--repository", str(repo))
    assert result.exit_code == 1
    assert "served by the onnxruntime backend" in result.stderr and "--name" in result.stderr
    assert files_under(repo) == before
    assert export("--format", "fil", "--repository", str(repo), "--name", "random_forest_fil").exit_code == 0


def test_embedded_server_skips_fil_models_with_a_warning(tmp_path):
    repo = tmp_path / "repo"
    assert export("--repository", str(repo), "--name", "rf_onnx").exit_code == 0
    assert export("--format", "fil", "--repository", str(repo), "--name", "rf_fil").exit_code == 0
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    derived = runtime_repository.derive(repo, runtime)
    assert derived.models == {"rf_onnx": [1]}
    (warning,) = [w for w in derived.warnings if "rf_fil" in w]
    assert "'fil'" in warning and "stock container" in warning
    assert not (runtime / "rf_fil").exists()


def test_committed_fil_repository_is_the_demo_model(demo_model):
    """model_repository_fil/ (served by the compose `gpu` profile) holds the demo forest, NaN routing included."""
    model_dir = ROOT / "model_repository_fil" / "random_forest"
    config = read_config(model_dir / "config.pbtxt")
    assert config.backend == "fil" and config.parameters["model_type"].string_value == "treelite_checkpoint"
    checkpoint = (model_dir / "1" / "checkpoint.tl").read_bytes()
    assert fil.signature(checkpoint).inputs[0].dims == tuple(config.input[0].dims) == (5,)
    X, _ = sources.demo_dataset(seed=3, n_samples=500)
    X = np.concatenate([X, parity.with_missing_values(X)])
    expected = demo_model.estimator.predict(X)
    assert np.max(relative_errors(expected, fil.predict(checkpoint, X).values)) <= 1e-6


def test_checkpoint_declares_the_treelite_version_fil_24_10_reads():
    """fil_backend r24.10 builds treelite 4.3.0 (cmake/thirdparty/get_treelite.cmake). treelite's reader
    takes the version from the checkpoint's first three int32: another major version is refused, a
    newer minor loads with missing features. The bytes written must declare 4.x with x <= 3."""
    trained = _trained(RandomForestRegressor, "regression")
    version = fil.checkpoint_version(fil.convert(trained))
    assert version[0] == 4 and version[1] <= 3, version
    assert fil.readable_by_fil_24_10(version)
    assert not fil.readable_by_fil_24_10((4, 4, 0)) and not fil.readable_by_fil_24_10((5, 0, 0))
    assert not fil.readable_by_fil_24_10((3, 9, 0))


def _dataset(n: int = 1200, seed: int = 0):
    """Five features, one with few distinct values (thresholds between close float32s), and labels
    of both kinds. Some rows hold NaN for the forests trained with missing values."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    X[:, 3] = np.round(X[:, 3], 1)
    y = {
        "regression": X[:, 0] * 3 + np.sin(2 * X[:, 1]) + X[:, 2] * X[:, 3] + rng.normal(0, 0.1, n),
        "binary": (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int),
        "multiclass": np.array(["ant", "bee", "cat", "dog"])[np.digitize(X[:, 0] + 0.5 * X[:, 4], [-0.7, 0, 0.7])],
    }
    X_nan = X.copy()
    X_nan[rng.random(X.shape) < 0.15] = np.nan
    return X, X_nan, y


def _trained(forest_type, target: str, nan_trained: bool = False, n_estimators: int = 12):
    X, X_nan, y = _dataset()
    forest = forest_type(n_estimators=n_estimators, max_depth=10, random_state=0)
    forest.fit((X_nan if nan_trained else X)[:900], y[target][:900])
    return sources.TrainedModel(estimator=forest, feature_names=[f"f{i}" for i in range(5)], X_val=X[900:],
                                source="test")


KINDS = [(RandomForestRegressor, "regression"), (ExtraTreesRegressor, "regression"),
         (RandomForestClassifier, "binary"), (ExtraTreesClassifier, "binary"),
         (RandomForestClassifier, "multiclass"), (ExtraTreesClassifier, "multiclass")]


@pytest.mark.parametrize("nan_trained", [False, True], ids=["clean-trained", "nan-trained"])
@pytest.mark.parametrize("forest_type,target", KINDS, ids=[f"{f.__name__}-{t}" for f, t in KINDS])
def test_every_forest_kind_predicts_like_sklearn_nan_rows_included(forest_type, target, nan_trained):
    """GTIL on the checkpoint's bytes against sklearn, on clean rows and on NaN rows (one feature,
    ~30% scattered, whole rows): probabilities (or values) and labels = classes_[argmax]."""
    trained = _trained(forest_type, target, nan_trained)
    checkpoint = fil.convert(trained)
    rows = np.concatenate([trained.X_val, parity.with_missing_values(trained.X_val)])
    report = fil.check_parity(trained, checkpoint, rows, tolerance=1e-6)
    assert report.passed, report.describe()
    assert report.nan_rows >= 68 and report.rows == len(rows)
    prediction = fil.predict(checkpoint, rows, trained.classes)
    if target == "regression":
        assert prediction.values.shape == (len(rows), 1)
    else:
        assert prediction.probabilities.shape == (len(rows), len(trained.classes))
        expected = trained.estimator.predict(rows)
        assert np.mean(prediction.labels == expected) >= 0.99  # the rest are ties within float error
    # The NaN routing is the forest's own, split by split, in the file that is served.
    model = treelite.Model.deserialize_bytes(checkpoint)
    for tree_id, tree in enumerate(trained.forest.estimators_):
        split = tree.tree_.children_left >= 0
        default_left = model.get_tree_accessor(tree_id).get_field("default_left")
        np.testing.assert_array_equal(default_left[split], tree.tree_.missing_go_to_left[split])


def test_treelite_importer_alone_sends_nan_the_wrong_way():
    """Why the default directions are rewritten: treelite 4.3's import_model sets them all to left."""
    trained = _trained(RandomForestRegressor, "regression", nan_trained=True)
    plain = bytes(treelite.sklearn.import_model(trained.forest).serialize_bytes())
    rows = parity.with_missing_values(trained.X_val)
    wrong = fil.check_parity(trained, plain, rows, tolerance=1e-6)
    right = fil.check_parity(trained, fil.convert(trained), rows, tolerance=1e-6)
    assert not wrong.passed and right.passed, (wrong.describe(), right.describe())


def test_thresholds_route_float32_inputs_exactly_as_sklearn_in_float32():
    """FIL on a GPU compares float32 inputs with float32 thresholds. The largest float32 not above
    sklearn's float64 threshold gives the same side for every float32 input; rounding to nearest
    does not."""
    rng = np.random.default_rng(3)
    low = rng.normal(size=20000).astype(np.float32)
    high = np.nextafter(low, np.float32(np.inf))
    thresholds = (low.astype(np.float64) + high.astype(np.float64)) / 2  # sklearn's midpoints
    thresholds = np.concatenate([thresholds, rng.normal(size=20000), [np.inf]])
    stored = fil.float32_floor(thresholds).astype(np.float32)
    for x in (np.concatenate([low, low]), np.concatenate([high, high]), rng.normal(size=40001).astype(np.float32)):
        x = np.resize(x, len(thresholds))
        np.testing.assert_array_equal(x <= stored, x.astype(np.float64) <= thresholds)
    nearest = thresholds.astype(np.float32)
    assert np.any((high <= nearest[:20000]) != (high.astype(np.float64) <= thresholds[:20000]))


@pytest.mark.parametrize("forest_type,target", KINDS[:3] + KINDS[4:5])
def test_signature_and_parameters_fil_24_10_needs(forest_type, target):
    """output__0: values (dims [1], served [N]) or probabilities (dims [n_classes], served [N, n_classes]
    in classes_ order, labels.txt). The FIL backend reads its classifier flag (output_class up to
    25.08, is_classifier from 25.09) with no default, and threshold whenever it is true; predict_proba makes output__0 the probabilities. Booleans are parsed as
    exactly "true"/"false" (rapids-triton get_config_param)."""
    trained = _trained(forest_type, target)
    found = fil.signature(fil.convert(trained), trained)
    assert [(t.name, t.datatype, t.dims) for t in found.inputs] == [("input__0", "FP32", (5,))]
    assert found.feature_names == tuple(trained.feature_names) and found.task == trained.task
    (output,) = found.outputs
    parameters = fil.config_parameters(found)
    if target == "regression":
        assert (output.name, output.dims, output.label_filename) == ("output__0", (1,), "")
        assert parameters == {CLASSIFIER_FLAG: "false"}
        assert fil.response_shape(output, 7) == (7,) and fil.response_shape(output, 1) == (1,)
    else:
        n_classes = len(trained.classes)
        assert (output.name, output.dims, output.label_filename) == ("output__0", (n_classes,), "labels.txt")
        assert found.classes == trained.classes and found.label is None
        assert parameters[CLASSIFIER_FLAG] == "true" and parameters["predict_proba"] == "true"
        assert 0 < float(parameters["threshold"]) < 1
        assert fil.response_shape(output, 7) == (7, n_classes)


def test_refused_in_one_line_before_anything_is_converted(house_prices):
    frame, price = house_prices
    two_outputs = RandomForestRegressor(n_estimators=3, random_state=0).fit(frame, np.c_[price, -price])
    scaled = make_pipeline(StandardScaler(), RandomForestRegressor(n_estimators=3, random_state=0)).fit(frame, price)
    single_class = RandomForestClassifier(n_estimators=3, random_state=0).fit(frame, np.zeros(len(frame), int))
    cases = [
        (two_outputs, r"RandomForestRegressor with 2 outputs cannot go to FIL.*one target.*--format onnx"),
        (scaled, r"Pipeline with preprocessing \(standardscaler\) cannot go to FIL.*--format onnx"),
        (single_class, r"fitted on a single class cannot go to FIL"),
    ]
    for estimator, message in cases:
        trained = sources.TrainedModel(estimator=estimator, feature_names=list(frame.columns),
                                       X_val=frame.to_numpy(), source="test")
        with pytest.raises(ExportError, match=message) as raised:
            fil.convert(trained)
        assert "\n" not in str(raised.value)


@pytest.mark.parametrize("target", ["binary", "multiclass"])
def test_cli_exports_a_classifier_for_fil(tmp_path, target):
    """A pickled classifier through `rf-triton export --format fil`: the config FIL 24.10 loads,
    labels.txt in classes_ order, and the checkpoint on disk predicting sklearn's probabilities."""
    trained = _trained(ExtraTreesClassifier if target == "binary" else RandomForestClassifier, target,
                       nan_trained=True)
    path = tmp_path / "forest.joblib"
    joblib.dump(trained.estimator, path)
    result = export("--format", "fil", "--model", str(path), "--repository", str(tmp_path / "repo"))
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "repo" / "random_forest"
    config = read_config(model_dir / "config.pbtxt")
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    assert parameters[CLASSIFIER_FLAG] == "true" and parameters["predict_proba"] == "true"
    assert parameters["model_type"] == "treelite_checkpoint" and float(parameters["threshold"]) == 0.5
    (output,) = config.output
    assert (output.name, list(output.dims), output.label_filename) == \
        ("output__0", [len(trained.classes)], "labels.txt")
    labels = (model_dir / "labels.txt").read_text().splitlines()
    assert labels == [str(c) for c in trained.classes]
    X = parity.with_missing_values(trained.X_val)
    checkpoint = (model_dir / "1" / "checkpoint.tl").read_bytes()
    np.testing.assert_allclose(fil.predict(checkpoint, X).probabilities, trained.estimator.predict_proba(X),
                               atol=1e-6)
