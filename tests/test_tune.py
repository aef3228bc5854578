"""`rf-triton tune`: choosing within the budget, and a 2-configuration sweep applied to a copy of the repository."""

from __future__ import annotations

import math
import shutil

import pytest
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from rf_triton.benchmarks.tune import Candidate, TuneOptions, TuneResult, best, candidates, sweep
from rf_triton.cli import app
from rf_triton.repository import read_config

runner = CliRunner()


def result(delay, instances, throughput, p99, errors=0, error=""):
    return TuneResult(Candidate(delay, instances), throughput, p99 / 2, p99, 4.0, errors, "test", error)


def test_best_is_the_fastest_within_the_p99_budget_without_failures():
    results = [result(0, 1, 9_000, 8), result(100, 2, 15_000, 12), result(500, 2, 12_000, 9),
               result(2000, 1, 20_000, 5, errors=3), result(50, 4, math.nan, math.nan, error="did not start")]
    assert best(results, 10.0).candidate == Candidate(500, 2)
    assert best(results, 12.0).candidate == Candidate(100, 2)
    assert best(results, 1.0) is None


def test_intra_op_threads_are_a_dimension_of_the_sweep(tmp_path):
    options = TuneOptions(tmp_path, "random_forest", concurrency=4, p99_budget_ms=10, queue_delays_us=(0,),
                          instances=(1, 2), intra_op_threads=(1, 0))
    swept = candidates(options)
    assert [(c.instances, c.intra_op_threads) for c in swept] == [(1, 1), (1, 0), (2, 1), (2, 0)]
    assert swept[1].options().intra_op_threads == 0 and "all threads" in swept[1].label()
    assert "1 thread" in swept[0].label()
    # Not swept: the candidate leaves the config's thread count alone.
    kept = candidates(TuneOptions(tmp_path, "random_forest", 4, 10, (0,), (1,)))
    assert kept[0].options().intra_op_threads is None and "thread" not in kept[0].label()


def test_negative_intra_op_threads_are_refused_before_any_server_starts(tmp_path):
    (tmp_path / "random_forest").mkdir()  # only its presence is checked before the option values
    outcome = runner.invoke(app, ["tune", "--repository", str(tmp_path), "--intra-op-threads", "-1"])
    assert outcome.exit_code == 1
    assert "--intra-op-threads must be 0 or more" in outcome.output


@pytest.mark.integration
def test_sweep_over_threads_applies_the_chosen_thread_count(demo_repository, tmp_path):
    repository = tmp_path / "model_repository"
    shutil.copytree(demo_repository, repository)
    config_path = repository / "random_forest" / "config.pbtxt"
    outcome = runner.invoke(app, [
        "tune", "--repository", str(repository), "--concurrency", "2", "--p99-budget-ms", "1000",
        "--queue-delay-us", "0", "--instances", "1", "--intra-op-threads", "2", "--intra-op-threads", "0",
        "--duration-s", "1", "--warmup-s", "0", "--budget-s", "120", "--apply",
    ])
    assert outcome.exit_code == 0, outcome.output
    after = read_config(config_path)
    chosen = after.parameters["intra_op_thread_count"].string_value
    assert chosen in ("2", "0")
    assert f"best: delay 0 µs, 1 inst, {'all threads' if chosen == '0' else '2 threads'}" in outcome.output
    assert after.parameters["inter_op_thread_count"].string_value == "1"  # not swept, kept


@pytest.mark.integration
def test_sweep_stops_at_the_time_budget(demo_repository):
    options = TuneOptions(demo_repository, "random_forest", concurrency=2, p99_budget_ms=1000,
                          queue_delays_us=(0, 100), instances=(1,), duration_s=0.5, warmup_s=0, budget_s=0.1)
    results, skipped = sweep(options, log=lambda *_: None)
    assert len(results) == 1 and skipped == 1
    assert results[0].error == "" and results[0].throughput > 0


@pytest.mark.integration
def test_two_config_sweep_applies_the_best_to_the_repository(demo_repository, tmp_path):
    repository = tmp_path / "model_repository"
    shutil.copytree(demo_repository, repository)
    config_path = repository / "random_forest" / "config.pbtxt"
    before = read_config(config_path)
    assert [g.count for g in before.instance_group] == [1]  # the export default; the sweep tries 2

    outcome = runner.invoke(app, [
        "tune", "--repository", str(repository), "--concurrency", "4", "--p99-budget-ms", "1000",
        "--queue-delay-us", "0", "--queue-delay-us", "700", "--instances", "2",
        "--duration-s", "1", "--warmup-s", "0.2", "--budget-s", "120", "--apply",
    ])
    assert outcome.exit_code == 0, outcome.output
    assert "best: delay" in outcome.output and f"wrote {config_path}" in outcome.output

    after = read_config(config_path)
    assert [(g.count, g.kind) for g in after.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU)]
    assert after.dynamic_batching.max_queue_delay_microseconds in (0, 700)
    assert f"delay {after.dynamic_batching.max_queue_delay_microseconds} µs, 2 inst" in outcome.output
    # Only the batching changed: names, shapes, parameters and warmup are export's, kept as they were.
    for field in ("input", "output", "parameters", "model_warmup", "max_batch_size", "backend", "version_policy"):
        assert getattr(after, field) == getattr(before, field), field


@pytest.mark.integration
def test_no_config_within_budget_fails_and_leaves_the_repository_alone(demo_repository, tmp_path):
    repository = tmp_path / "model_repository"
    shutil.copytree(demo_repository, repository)
    original = (repository / "random_forest" / "config.pbtxt").read_text()
    outcome = runner.invoke(app, [
        "tune", "--repository", str(repository), "--concurrency", "2", "--p99-budget-ms", "0.001",
        "--queue-delay-us", "0", "--instances", "1", "--duration-s", "1", "--warmup-s", "0", "--apply",
    ])
    assert outcome.exit_code == 1
    assert "no configuration kept p99 within" in outcome.output
    assert (repository / "random_forest" / "config.pbtxt").read_text() == original
