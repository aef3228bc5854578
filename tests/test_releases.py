"""The releases table and what depends on it: export --triton-release, FIL parameter names, doctor."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper
from typer.testing import CliRunner

from rf_triton import releases
from rf_triton.cli import app
from rf_triton.export import fil, onnx_convert, sources
from rf_triton.export.pipeline import export_model
from rf_triton.repository import read_config
from rf_triton.serve import doctor

runner = CliRunner()


def identity_graph(opsets: dict[str, int], ir_version: int) -> onnx.ModelProto:
    node = helper.make_node("Identity", ["X"], ["Y"])
    graph = helper.make_graph([node], "identity", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 1])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = ir_version
    return model


def test_the_table_covers_the_releases_asked_for_and_defaults_to_the_newest():
    for tag in ("24.10", "25.02", "25.10", "26.06", "26.08"):
        assert tag in releases.RELEASES
    assert releases.DEFAULT.tag == max(releases.TAGS, key=lambda t: tuple(map(int, t.split("."))))
    assert releases.OLDEST.tag == "24.10" and releases.OLDEST.server == releases.EMBEDDED_SERVER
    assert list(releases.TAGS) == sorted(releases.TAGS, key=lambda t: tuple(map(int, t.split("."))))
    for release in releases.RELEASES.values():
        assert release.onnxruntime.version in releases.ONNX_RUNTIMES
        assert release.sources["server, onnxruntime"].startswith(releases.SERVER_REPO)
        assert release.treelite is not None or release.notes  # a missing fact says so


def test_fil_names_change_in_25_09():
    assert releases.get("25.08").fil_parameters.is_classifier == "output_class"
    assert releases.get("25.09").fil_parameters.is_classifier == "is_classifier"
    assert "output_class" in releases.get("26.08").fil_parameters.removed


def test_every_release_loads_what_export_writes():
    """The graph is exported once for all releases: its opsets and IR version are within each one's."""
    X = np.random.default_rng(0).integers(0, 10, size=(200, 3)).astype(np.float32)
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(5, random_state=0).fit(X, np.digitize(X[:, 0], [3, 6]).astype(str))
    graph = onnx_convert.convert(sources.TrainedModel(forest, ["a", "b", "c"], X, "test"))
    for release in releases.RELEASES.values():  # binary classifiers: 26.07 refuses them (the test below)
        assert releases.problems_loading(graph, release) == [], release.tag


def test_ir_version_and_opset_past_a_release_are_named():
    newer = identity_graph({"": 23}, 11)
    problems = releases.problems_loading(newer, releases.get("25.02"))
    assert problems == ["the graph imports ai.onnx opset 23, ONNX Runtime 1.20.1 implements up to 21",
                        "the graph has IR version 11, ONNX Runtime 1.20.1 reads up to 10"]
    assert releases.problems_loading(newer, releases.get("25.10")) == []
    assert releases.problems_loading(newer.SerializeToString(), releases.get("25.10")) == []


def test_answers_statement_names_the_releases_of_an_onnx_runtime():
    assert "Triton 26.04, 26.05, 26.06" in releases.answers_statement("1.24.4")
    assert "no release" in releases.answers_statement("1.18.0")


def test_export_for_24_10_records_it_and_warns_that_parity_ran_elsewhere(tmp_path):
    repo = tmp_path / "repo"
    result = runner.invoke(app, ["export", "--repository", str(repo), "--triton-release", "24.10"])
    assert result.exit_code == 0, result.output
    metadata = json.loads((repo / "random_forest" / "1" / "metadata.json").read_text())
    assert (metadata["triton_release"], metadata["triton_server"], metadata["triton_onnxruntime"]) == \
        ("24.10", "2.51.0", "1.19.2")
    assert "pip install onnxruntime==1.19.2" in result.output
    row = doctor.check_release(repo / "random_forest", repo)
    assert row.status == doctor.WARN and "pip install onnxruntime==1.19.2" in row.fix


def test_export_for_the_default_release_passes_doctor(tmp_path):
    repo = tmp_path / "repo"
    assert runner.invoke(app, ["export", "--repository", str(repo)]).exit_code == 0
    row = doctor.check_release(repo / "random_forest", repo)
    assert row.status == doctor.OK and releases.DEFAULT.tag in row.detail


def test_an_unknown_release_is_refused_by_the_cli(tmp_path):
    result = runner.invoke(app, ["export", "--repository", str(tmp_path / "repo"), "--triton-release", "23.01"])
    assert result.exit_code != 0 and "23.01" in result.output
    assert not (tmp_path / "repo").exists()


def test_fil_parameters_follow_the_release_and_a_reexport_drops_the_other_names(tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    X = np.random.default_rng(0).integers(0, 10, size=(300, 4)).astype(np.float32)
    forest = RandomForestClassifier(5, random_state=0).fit(X, (X[:, 0] > 4).astype(int))
    trained = sources.TrainedModel(forest, list("abcd"), X, "test")
    repo = tmp_path / "repo"
    export_model(trained, repo, model_format="fil", triton_release="24.10")
    parameters = read_config(repo / "random_forest" / "config.pbtxt").parameters
    assert parameters["output_class"].string_value == "true" and "is_classifier" not in parameters
    result = export_model(trained, repo, model_format="fil", triton_release="26.08")
    parameters = read_config(repo / "random_forest" / "config.pbtxt").parameters
    assert parameters["is_classifier"].string_value == "true" and "output_class" not in parameters
    assert result.metadata["triton_release"] == "26.08"
    assert fil.config_parameters(fil.signature(fil.convert(trained), trained), releases.get("25.08")) \
        == {"output_class": "true", "threshold": "0.5", "predict_proba": "true"}


def test_docs_show_the_table_as_built():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path, language in (("README.md", "en"), ("docs/guide.md", "en"), ("docs/guide.fr.md", "fr")):
        assert releases.markdown_table(language) in (root / path).read_text(), path


def test_compose_manifests_and_gpu_check_name_the_default_release():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    image = releases.DEFAULT.image
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    assert compose["x-triton"]["image"].replace("${TRITON_TAG:-", "").replace("}", "") == image
    for path in sorted((root / "deploy" / "kubernetes" / "kserve").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "InferenceService":
                assert doc["spec"]["predictor"]["model"]["runtimeVersion"] == f"{releases.DEFAULT.tag}-py3", path
    assert f"image: {image}" in (root / "deploy" / "kubernetes" / "plain" / "deployment.yaml").read_text()
    assert f'TAG="${{TRITON_TAG:-{releases.DEFAULT.tag}}}"' in (root / "benchmarks" / "gpu_check.sh").read_text()
    assert f'"onnxruntime=={releases.DEFAULT.onnxruntime.version}"' in (root / "pyproject.toml").read_text()


def test_a_binary_classifier_for_26_07_is_refused_in_one_line(tmp_path):
    """ONNX Runtime 1.27.0 answers [-p, p] for binary tree classifiers: export for 26.07 refuses them,
    writes nothing, and still exports a multiclass one."""
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    X = np.random.default_rng(0).integers(0, 10, size=(300, 3)).astype(np.float32)
    repo = tmp_path / "repo"
    binary = tmp_path / "binary.joblib"
    joblib.dump(RandomForestClassifier(5, random_state=0).fit(X, (X[:, 0] > 4).astype(int)), binary)
    result = runner.invoke(app, ["export", "--model", str(binary), "--repository", str(repo), "--triton-release", "26.07"])
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "Triton 26.07" in line and "#28557" in line and "-p instead of 1 - p" in line
    assert not repo.exists()
    multiclass = tmp_path / "multiclass.joblib"
    joblib.dump(RandomForestClassifier(5, random_state=0).fit(X, np.digitize(X[:, 0], [3, 6])), multiclass)
    result = runner.invoke(app, ["export", "--model", str(multiclass), "--repository", str(repo),
                                 "--triton-release", "26.07"])
    assert result.exit_code == 0, result.output
