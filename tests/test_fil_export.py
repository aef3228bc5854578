"""`rf-triton export --format fil`: the treelite checkpoint for Triton's FIL backend (the GPU path).

The FIL backend is not in the embedded server, so the checkpoint is checked with treelite's own
predictor (GTIL) on the bytes written, and its config against what the FIL backend reads.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import treelite
import treelite.gtil
from sklearn.ensemble import RandomForestRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner
from tritonclient.grpc import model_config_pb2 as mc

from rf_triton.cli import app
from rf_triton.export import fil, sources
from rf_triton.export.onnx_convert import ort_predict, relative_errors
from rf_triton.export.triton_config import feature_names, read_config
from rf_triton.serve import runtime_repository

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def export(*args: str):
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
    assert config.parameters["output_class"].string_value == "false"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("input__0", mc.TYPE_FP32, [5])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("output__0", mc.TYPE_FP32, [1])]
    assert config.max_batch_size == 1024 and config.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, mc.ModelInstanceGroup.KIND_AUTO)]
    assert "intra_op_thread_count" not in config.parameters  # ONNX Runtime's, not FIL's
    # The client reads feature names from the config, whatever the backend.
    assert feature_names(config) == [f"x{i}" for i in range(5)]
    assert config.parameters["treelite_version"].string_value == treelite.__version__
    (warmup,) = config.model_warmup
    assert list(warmup.inputs["input__0"].dims) == [5]
    metadata = json.loads((model_dir / "1" / "metadata.json").read_text())
    assert metadata["format"] == "fil" and metadata["backend"] == "fil"
    assert metadata["input"]["name"] == "input__0" and metadata["output"]["name"] == "output__0"
    assert metadata["parity"]["checked_with"] == "treelite GTIL"
    assert 0 < metadata["parity"]["rows"] and metadata["parity"]["max_rel_error"] <= 1e-4


def test_checkpoint_on_disk_predicts_like_sklearn(fil_repository, demo_model):
    """The written file, read back by treelite, against sklearn on validation and split-spanning rows."""
    model = treelite.Model.deserialize(str(fil_repository / "random_forest" / "1" / "checkpoint.tl"))
    assert (model.num_tree, model.num_feature) == (50, 5)
    probe = sources._probe_inputs(demo_model.estimator, 5, n_rows=3000)
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
    np.testing.assert_allclose(fil.predict(checkpoint, X), forest.predict(frame.iloc[:100]), rtol=1e-6)


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


def test_committed_fil_repository_is_the_demo_model():
    """model_repository_fil/ (served by the compose `gpu` profile) holds the same forest as model_repository/."""
    model_dir = ROOT / "model_repository_fil" / "random_forest"
    config = read_config(model_dir / "config.pbtxt")
    assert config.backend == "fil" and config.parameters["model_type"].string_value == "treelite_checkpoint"
    checkpoint = (model_dir / "1" / "checkpoint.tl").read_bytes()
    assert fil.signature(checkpoint).input_dims == list(config.input[0].dims) == [5]
    X, _ = sources.demo_dataset(seed=3, n_samples=500)
    onnx_bytes = (ROOT / "model_repository" / "random_forest" / "1" / "model.onnx").read_bytes()
    assert np.max(relative_errors(ort_predict(onnx_bytes, X), fil.predict(checkpoint, X))) <= 1e-4


def test_treelite_pin_is_the_one_fil_in_24_10_reads():
    """The 24.10 container's FIL backend is built with treelite 4.3.0; the pin and the install agree."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("treelite")]
    assert pin == "treelite==4.3.0"
    assert treelite.__version__ == "4.3.0"
    assert int(treelite.__version__.split(".")[0]) == fil.TREELITE_MAJOR
