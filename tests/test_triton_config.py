"""config.pbtxt generation through Triton's protobuf: defaults, options, updates, validation."""

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from rf_triton.export.errors import ExportError
from rf_triton.export.triton_config import DEFAULTS, ServingOptions, build_config, parse_version_policy
from rf_triton.repository import RepositoryError, feature_names, read_config, signature_of, to_text, write_config
from rf_triton.signature import Signature, Tensor

GRAPH = Signature("regression", (Tensor("X", "FP32", (5,)),), (Tensor("variable", "FP32", (1,)),),
                  ("a", "b", "c", "d", "e"))
META: dict[str, str] = {}  # the onnxruntime backend's own parameters: none beyond the thread counts


def test_new_config_targets_onnxruntime_with_defaults():
    config = build_config("rf", GRAPH, ServingOptions(), META)
    assert config.backend == "onnxruntime" and config.platform == ""
    assert config.max_batch_size == DEFAULTS.max_batch_size
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("X", mc.TYPE_FP32, [5])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("variable", mc.TYPE_FP32, [1])]
    assert config.dynamic_batching.max_queue_delay_microseconds == DEFAULTS.max_queue_delay_us
    assert [(g.count, g.kind) for g in config.instance_group] == [(DEFAULTS.instances, mc.ModelInstanceGroup.KIND_CPU)]
    assert config.version_policy.latest.num_versions == 1
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert feature_names(config) == ["a", "b", "c", "d", "e"]
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 64 and list(warmup.inputs["X"].dims) == [5] and warmup.inputs["X"].zero_data


def test_options_are_written():
    options = ServingOptions(max_batch_size=256, max_queue_delay_us=500, preferred_batch_sizes=(64, 128),
                             instances=3, kind="gpu", version_policy="specific:1,3", intra_op_threads=2)
    config = build_config("rf", GRAPH, options, META)
    assert config.max_batch_size == 256
    assert list(config.dynamic_batching.preferred_batch_size) == [64, 128]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [(3, mc.ModelInstanceGroup.KIND_GPU)]
    assert list(config.version_policy.specific.versions) == [1, 3]
    assert config.parameters["intra_op_thread_count"].string_value == "2"


def test_small_max_batch_size_caps_warmup():
    config = build_config("rf", GRAPH, ServingOptions(max_batch_size=8), META)
    assert config.model_warmup[0].batch_size == 8


def test_update_keeps_what_options_do_not_name():
    existing = build_config("rf", GRAPH, ServingOptions(max_queue_delay_us=700, instances=4), META)
    existing.response_cache.enable = True
    existing.dynamic_batching.default_queue_policy.max_queue_size = 99
    existing.parameters["owner"].string_value = "team-a"
    updated = build_config("rf", GRAPH, ServingOptions(max_batch_size=64), META, existing)
    assert updated.response_cache.enable
    assert updated.dynamic_batching.max_queue_delay_microseconds == 700
    assert updated.dynamic_batching.default_queue_policy.max_queue_size == 99
    assert updated.instance_group[0].count == 4
    assert updated.parameters["owner"].string_value == "team-a"
    assert updated.max_batch_size == 64
    assert list(updated.input[0].dims) == [5]
    assert len(updated.input) == 1 and len(updated.model_warmup) == 1


def test_update_overrides_what_options_name():
    existing = build_config("rf", GRAPH, ServingOptions(max_queue_delay_us=700, kind="gpu"), META)
    updated = build_config("rf", GRAPH, ServingOptions(max_queue_delay_us=50, kind="cpu"), META, existing)
    assert updated.dynamic_batching.max_queue_delay_microseconds == 50
    assert updated.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert updated.instance_group[0].count == DEFAULTS.instances


@pytest.mark.parametrize("text, field, expected", [
    ("latest", "latest", 1), ("latest:3", "latest", 3), ("all", "all", None), ("specific:2,5", "specific", [2, 5]),
])
def test_version_policy(text, field, expected):
    policy = parse_version_policy(text)
    assert policy.WhichOneof("policy_choice") == field
    if field == "latest":
        assert policy.latest.num_versions == expected
    if field == "specific":
        assert list(policy.specific.versions) == expected


@pytest.mark.parametrize("values, message", [
    (dict(max_batch_size=0), "--max-batch-size must be greater than or equal to 1"),
    (dict(max_queue_delay_us=-1), "--max-queue-delay-us must be greater than or equal to 0"),
    (dict(instances=0), "--instances must be greater than or equal to 1"),
    (dict(instances="two"), "--instances must be a valid integer"),
    (dict(kind="tpu"), "--kind must be 'cpu', 'gpu' or 'auto'"),
    (dict(version_policy="newest"), "invalid version policy 'newest'"),
    (dict(version_policy="latest:0"), "invalid version policy"),
    (dict(version_policy="specific:"), "invalid version policy"),
    (dict(preferred_batch_sizes=(0,)), "--preferred-batch-size must be greater than or equal to 1"),
    (dict(max_batch_size=16, preferred_batch_sizes=(32,)), "--preferred-batch-size 32 exceeds --max-batch-size 16"),
    (dict(max_queue_size=-1), r"--max-queue-size must be greater than or equal to 0 \(0: unbounded\)"),
    (dict(priority_levels=-2), "--priority-levels must be greater than or equal to 0"),
    (dict(batch_size=8), "batch_size: Extra inputs are not permitted"),
])
def test_invalid_options_are_refused_naming_the_option(values, message):
    """pydantic checks the options; the error is one ExportError line in the CLI's words."""
    with pytest.raises(ExportError, match=message):
        ServingOptions(**values)


def test_a_preferred_size_over_the_existing_max_batch_size_is_refused():
    with pytest.raises(ExportError, match="--preferred-batch-size 4096 exceeds max_batch_size 1024"):
        build_config("rf", GRAPH, ServingOptions(preferred_batch_sizes=(4096,)), META)


def test_priority_levels_alone_are_written_on_a_new_model():
    """--priority-levels without any other queue option used to be dropped on a new model."""
    config = build_config("rf", GRAPH, ServingOptions(priority_levels=3), META)
    assert config.dynamic_batching.priority_levels == 3
    assert config.dynamic_batching.default_priority_level == 2
    assert not config.dynamic_batching.HasField("default_queue_policy")  # nothing bounded: Triton's default
    updated = build_config("rf", GRAPH, ServingOptions(max_queue_size=8), META, config)
    assert updated.dynamic_batching.priority_levels == 3 and updated.dynamic_batching.default_queue_policy.max_queue_size == 8


def test_written_config_parses_back(tmp_path):
    config = build_config("rf", GRAPH, ServingOptions(preferred_batch_sizes=(64,)), META)
    path = tmp_path / "rf" / "config.pbtxt"
    write_config(path, config)
    assert read_config(path) == config
    assert text_format.Parse(path.read_text(), mc.ModelConfig()) == config
    assert path.stat().st_mode & 0o044 == 0o044  # readable by the container's user
    assert "max_batch_size: 1024" in to_text(config)
    assert list(tmp_path.joinpath("rf").iterdir()) == [path]


def test_unparseable_config_is_reported(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text("max_batch_size: lots")
    with pytest.raises(RepositoryError, match="not a valid Triton model config"):
        read_config(path)


def test_classifier_config_marks_probabilities_with_labels():
    classifier = Signature("classification", GRAPH.inputs, (Tensor("label", "BYTES", (1,)),
                                                             Tensor("probabilities", "FP32", (3,), "labels.txt")),
                           GRAPH.feature_names, ("a", "b", "c"))
    config = build_config("rf", classifier, ServingOptions(), META)
    label, probabilities = config.output
    assert label.data_type == mc.TYPE_STRING and list(label.dims) == [1] and not label.label_filename
    assert probabilities.label_filename == "labels.txt" and list(probabilities.dims) == [3]
    assert signature_of(config) == classifier
    assert "task" not in config.parameters and "classes" not in config.parameters  # one parameter carries it all


def test_a_large_forest_gets_every_core_by_default(tmp_path, monkeypatch):
    """Past LARGE_FOREST_NODES the default intra-op thread count is 0 (all cores); a given value wins."""
    from rf_triton.export import sources, triton_config
    from rf_triton.export.pipeline import export_model

    trained = sources.train_demo()
    nodes = sum(e.tree_.node_count for e in trained.forest.estimators_)
    monkeypatch.setattr(triton_config, "LARGE_FOREST_NODES", nodes)
    config = read_config(export_model(trained, tmp_path / "a").config_path)
    assert config.parameters["intra_op_thread_count"].string_value == "0"
    config = read_config(export_model(trained, tmp_path / "b", options=ServingOptions(intra_op_threads=1)).config_path)
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    monkeypatch.setattr(triton_config, "LARGE_FOREST_NODES", nodes + 1)
    config = read_config(export_model(trained, tmp_path / "c").config_path)
    assert config.parameters["intra_op_thread_count"].string_value == "1"
