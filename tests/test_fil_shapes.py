"""The client reads FIL-shaped answers exactly as it reads ONNX-shaped ones.

The FIL backend is in the stock container only. Here a FIL export (its config.pbtxt, its
checkpoint.tl) is served by the real embedded Triton through a Python-backend model that computes
with treelite's GTIL and answers in the shape the 24.10 FIL backend gives (written out in the model,
as fil_backend/rapids-triton r24.10 shapes it: size-1 dims squeezed, so a regressor answers [N]; a
classifier answers probabilities only, [N, n_classes]). It is a measuring instrument for the
client, not a stand-in for production.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier, RandomForestRegressor
from tritonclient.grpc import model_config_pb2 as mc

from rf_triton.client import RandomForestClient
from rf_triton.export import sources
from rf_triton.export.pipeline import export_model
from rf_triton.repository import CONFIG_FILENAME, read_config, write_config

PROTOCOLS = ("http", "grpc")

FIL_SHAPED_MODEL = '''
import json
from pathlib import Path

import numpy as np
import treelite
import treelite.gtil
import triton_python_backend_utils as pb_utils



class TritonPythonModel:
    """Answers as rapids-triton r24.10 shapes FIL's output (squeeze_output): [-1, *dims] with every 1
    removed, written out here rather than taken from the project, so the client is held to FIL's
    layout and not to the project's own account of it."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / "checkpoint.tl"
        self.model = treelite.Model.deserialize(str(path))
        (output,) = config["output"]
        self.name, self.dims = output["name"], [int(d) for d in output["dims"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "input__0").as_numpy()
            values = np.asarray(treelite.gtil.predict(self.model, rows), dtype=np.float32)
            shaped = values.reshape([len(rows)] + [d for d in self.dims if d != 1])
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.name, shaped)]))
        return responses
'''


@pytest.fixture(scope="module")
def fil_served(servers, tmp_path_factory):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(800, 4)).astype(np.float32)
    X_train = X.copy()
    X_train[rng.random(X.shape) < 0.15] = np.nan
    models = {
        "fil_regressor": RandomForestRegressor(20, max_depth=8, random_state=0).fit(X_train, 5 * X[:, 0] + X[:, 1]),
        "fil_classifier": ExtraTreesClassifier(20, max_depth=8, random_state=0).fit(
            X, np.where(X[:, 0] > 0.4, "b", np.where(X[:, 0] < -0.4, "a", "c"))),
    }
    canonical = tmp_path_factory.mktemp("fil") / "model_repository_fil"
    served = canonical.parent / "served"
    for name, model in models.items():
        trained = sources.TrainedModel(model, list("abcd"), X, "test")
        export_model(trained, canonical, name=name, model_format="fil")
        shutil.copytree(canonical / name, served / name)
        config = read_config(served / name / CONFIG_FILENAME)
        config.backend = "python"
        config.ClearField("default_model_filename")
        del config.instance_group[:]  # FIL's KIND_AUTO: here, the CPU
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
        write_config(served / name / CONFIG_FILENAME, config)
        (served / name / "1" / "model.py").write_text(FIL_SHAPED_MODEL)
    with servers.serving(served, watch_interval_s=None) as server:
        yield server, models


def url(server, protocol: str) -> str:
    return server.endpoints.http if protocol == "http" else server.endpoints.grpc


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("rows", [1, 37])
def test_fil_shaped_regressor(fil_served, protocol, rows):
    server, models = fil_served
    X = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
    X[::3, 1] = np.nan
    with RandomForestClient(url(server, protocol), protocol=protocol, model="fil_regressor") as client:
        predicted = client.predict(X)
    assert predicted.shape == (rows,)
    np.testing.assert_allclose(predicted, models["fil_regressor"].predict(X), rtol=1e-5, atol=1e-4)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("rows", [1, 37])
def test_fil_shaped_classifier(fil_served, protocol, rows):
    """No label output: the client takes the most probable class, as sklearn does."""
    server, models = fil_served
    model = models["fil_classifier"]
    X = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
    with RandomForestClient(url(server, protocol), protocol=protocol, model="fil_classifier") as client:
        assert client.signature.label is None
        labels, probabilities = client.predict(X), client.predict_proba(X)
    np.testing.assert_array_equal(labels, model.predict(X))
    np.testing.assert_allclose(probabilities, model.predict_proba(X), atol=1e-5)
