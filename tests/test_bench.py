"""`rf-triton bench`: the load generators, the target verdicts, and a tiny real sweep with its table and plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from rf_triton.benchmarks import loadgen
from rf_triton.benchmarks.bench import BATCHING_OFF, CANONICAL, BenchRow, batching_pairs, evaluate_targets
from rf_triton.benchmarks.inprocess import InProcessResult, bench_sklearn
from rf_triton.cli import app

runner = CliRunner()


def served(configuration, protocol, concurrency, rows, throughput, p50, p99, ratio=float("nan"), batching=True):
    return BenchRow(configuration, "test", protocol, concurrency, rows, throughput, p50, p99, throughput * rows,
                    ratio=ratio, batching=batching)


def test_targets_are_judged_on_the_canonical_config_and_others_are_listed():
    rows = [
        served(CANONICAL, "http", 64, 1, 12_000, 4.0, 11.0),  # fast enough but p99 over 10 ms
        served(CANONICAL, "http", 1, 1, 1_800, 0.55, 1.0),
        served(CANONICAL, "grpc", 1, 4096, 60, 15, 17, ratio=0.85),
        served("Triton, batching off", "http", 64, 1, 3_000, 20, 40, batching=False),
        served("Triton, batching off", "http", 1, 1, 3_000, 0.3, 1.0, batching=False),
        served("Triton, 2 instances", "grpc", 2, 4096, 70, 28, 30, ratio=0.95),
    ]
    c64, large, c1, gain = evaluate_targets(rows, 4096)
    assert c64["met"] is False and "12,000 req/s, p99 11.00 ms" in c64["measured"]
    assert large["met"] is False and "Triton, 2 instances: 95.0% at c2" in large["others"] and "(met)" in large["others"]
    assert c1["met"] is False and "Triton, batching off: p50 0.300 ms (met)" in c1["others"]
    assert gain["met"] is True and gain["measured"].startswith("4.00×")


def test_batching_gain_compares_each_configuration_with_its_own_batching_off_twin():
    """The 1-instance batching-off baseline says nothing about 2 instances: that pair gets no gain figure."""
    rows = [
        served(CANONICAL, "http", 64, 1, 9_000, 4.0, 8.0),
        served(BATCHING_OFF, "http", 64, 1, 3_000, 20, 40, batching=False),
        served("Triton, 2 instances", "http", 64, 1, 12_000, 4.0, 8.0),
    ]
    *_, gain = evaluate_targets(rows, 4096)
    assert gain["measured"].startswith("3.00×") and gain["met"] is True
    assert "2 instances" not in gain["others"], gain
    # A twin declared for the 2-instance configuration is used, and only it.
    rows.append(served("Triton, 2 instances, batching off", "http", 64, 1, 6_000, 10, 20, batching=False))
    pairs = {**batching_pairs(), "Triton, 2 instances": "Triton, 2 instances, batching off"}
    *_, gain = evaluate_targets(rows, 4096, pairs)
    assert gain["others"] == "Triton, 2 instances: 2.00× (12,000 vs 6,000 req/s)", gain
    assert batching_pairs() == {CANONICAL: BATCHING_OFF}


def test_in_process_throughput_is_the_observed_rate_not_the_median_call():
    """A run whose median call is 1 ms but that managed 100 calls in 1 s (stalls between) ran at 100/s."""
    result = InProcessResult("onnxruntime", 1, 64, calls=100, duration_s=1.0, p50_ms=1.0, p99_ms=30.0)
    assert result.throughput == pytest.approx(100) and result.rows_per_s == pytest.approx(6_400)


class _Mean:
    """The smallest real estimator: the row means (bench_sklearn only calls predict)."""

    def predict(self, X):
        return np.asarray(X).mean(axis=1)


def test_unmeasured_targets_say_so():
    targets = evaluate_targets([served(CANONICAL, "http", 4, 1, 100, 1, 2)], 4096)
    assert [t["met"] for t in targets] == [None] * 4
    assert all(t["measured"] == "not measured" for t in targets)


@pytest.mark.integration
@pytest.mark.parametrize("generator", ["wrk", "tritonclient.http.aio", "grpc.aio"])
def test_load_generators_send_real_requests_without_errors(triton, generator):
    if generator == "wrk" and loadgen.wrk_path() is None:
        pytest.skip("wrk not installed (the bench falls back to tritonclient.http.aio)")
    target = loadgen.Target(triton.endpoints.http, triton.endpoints.grpc, "random_forest", "X", "variable")
    rows = np.random.default_rng(0).standard_normal((3, 5), dtype=np.float32)
    run = {"wrk": loadgen.run_wrk, "tritonclient.http.aio": loadgen.run_http_aio, "grpc.aio": loadgen.run_grpc}[generator]
    result = run(target, rows, 2, 1.0, warmup_s=0.2)
    assert result.generator.startswith(generator)
    assert result.requests > 0 and result.errors == 0
    assert result.rows_per_s == pytest.approx(3 * result.throughput)
    assert 0 < result.p50_ms <= result.p99_ms


@pytest.mark.integration
def test_load_generator_counts_refused_requests_as_errors(triton):
    """A payload the server refuses (wrong feature count) must show as errors, not as throughput."""
    target = loadgen.Target(triton.endpoints.http, triton.endpoints.grpc, "random_forest", "X", "variable")
    result = loadgen.run_grpc(target, np.zeros((1, 4), dtype=np.float32), 1, 0.5, warmup_s=0)
    assert result.requests > 0 and result.errors == result.requests and result.throughput == 0


@pytest.mark.integration
def test_tiny_bench_writes_the_table_and_the_plot(demo_repository, tmp_path):
    out = tmp_path / "results"
    result = runner.invoke(app, [
        "bench", "--repository", str(demo_repository), "--out", str(out), "--concurrency", "1", "--concurrency", "2",
        "--large-rows", "64", "--large-concurrency", "1", "--duration-s", "1", "--warmup-s", "0.2",
        "--inprocess-s", "0.1", "--no-two-instance-sweep", "--no-cache-workload",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    rows = report["rows"]
    configurations = {r["configuration"] for r in rows}
    assert {CANONICAL, "Triton, batching off", "Triton, 2 instances", "ORT in-process, 1 thread",
            "sklearn predict, 1 thread"} <= configurations
    triton_rows = [r for r in rows if r["protocol"] in ("http", "grpc")]
    assert {(r["configuration"], r["protocol"], r["concurrency"], r["rows_per_request"]) for r in triton_rows} == {
        *((c, p, n, 1) for c in (CANONICAL, "Triton, batching off") for p in ("http", "grpc") for n in (1, 2)),
        *((c, p, 1, 64) for c in (CANONICAL, "Triton, 2 instances") for p in ("http", "grpc")),
    }
    for r in triton_rows:
        assert r["errors"] == 0 and r["throughput"] > 0, r
        assert r["ratio"] > 0 and r["reference"].startswith("ORT"), r
        assert r["avg_batch"] >= 1, r
    assert [r["avg_batch"] for r in triton_rows if r["rows_per_request"] == 64] == [64.0] * 4
    table = (out / "bench.md").read_text()
    assert "| throughput (infer/sec) |" in table and "| target |" in table
    assert table.count(f"| {CANONICAL} |") == 6
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
def test_cache_workload_reports_triton_s_own_hits_with_and_without_the_cache(demo_repository, tmp_path):
    out = tmp_path / "results"
    result = runner.invoke(app, ["bench", "--repository", str(demo_repository), "--out", str(out), "--no-sweep",
                                 "--duration-s", "1", "--warmup-s", "0.2"])
    assert result.exit_code == 0, result.output
    assert not (out / "bench.json").exists(), "--no-sweep leaves the sweep's files alone"
    report = json.loads((out / "cache.json").read_text())
    rows = {(r["workload"], r["concurrency"], r["response_cache"]): r for r in report["rows"]}
    workloads = ("64 rows repeated", "every row new")
    assert set(rows) == {(w, n, c) for w in workloads for n in (1, 16) for c in (False, True)}
    for row in report["rows"]:
        assert row["errors"] == 0 and row["throughput"] > 0, row
        if not row["response_cache"]:
            assert row["cache_hits"] == row["cache_misses"] == 0 and row["hit_rate"] is None, row
    for concurrency in (1, 16):
        repeated, new = rows[("64 rows repeated", concurrency, True)], rows[("every row new", concurrency, True)]
        assert repeated["cache_hits"] > 0, repeated
        # each row of the new-rows pool is sent at most once while fewer requests than its rows are measured
        assert new["distinct_rows"] > new["cache_misses"] > 0 and new["cache_hits"] == 0, new
    assert set(report["gains"]) == {f"{w}, c{n}" for w in workloads for n in (1, 16)}
    assert "| 64 rows repeated | 16 | on |" in (out / "cache.md").read_text()


def test_bench_refuses_to_measure_nothing(tmp_path):
    result = runner.invoke(app, ["bench", "--no-sweep", "--no-cache-workload"])
    assert result.exit_code == 1 and "leave nothing to measure" in result.output


@pytest.mark.integration
@pytest.mark.parametrize("generator", ["tritonclient.http.aio", "grpc.aio", "wrk"])
def test_load_generators_send_an_fp64_matrix_as_doubles(kinds, generator):
    """The datatype goes with the rows: an FP64 input gets 8-byte values, and the server answers them all."""
    from rf_triton.benchmarks import configs
    from rf_triton.repository import CONFIG_FILENAME, read_config

    if generator == "wrk" and loadgen.wrk_path() is None:
        pytest.skip("wrk not installed (the bench falls back to tritonclient.http.aio)")
    server, _, exports = kinds
    features = configs.matrix_input(read_config(exports["forest_fp64"].version_dir.parent / CONFIG_FILENAME))
    assert (features.name, features.datatype, features.dims) == ("X", "FP64", (5,))
    target = loadgen.Target(server.endpoints.http, server.endpoints.grpc, "forest_fp64", features.name, "variable",
                            features.datatype)
    rows = np.random.default_rng(0).standard_normal((3, 5))  # float64
    run = {"wrk": loadgen.run_wrk, "tritonclient.http.aio": loadgen.run_http_aio, "grpc.aio": loadgen.run_grpc}[generator]
    result = run(target, rows, 2, 1.0, warmup_s=0.2)
    assert result.requests > 0 and result.errors == 0


@pytest.mark.integration
def test_the_ceiling_payload_follows_the_demo_models_signature(tmp_path):
    """A demo repository whose forest takes 3 features: the ceiling runs send 3, and nothing is refused."""
    from sklearn.ensemble import RandomForestRegressor

    from rf_triton.benchmarks.fullsize import measure_ceiling
    from rf_triton.export import sources
    from rf_triton.export.pipeline import export_model

    X = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    forest = RandomForestRegressor(5, max_depth=4, random_state=0).fit(X, X[:, 0])
    repository = tmp_path / "model_repository"
    export_model(sources.TrainedModel(forest, ["a", "b", "c"], X, "test"), repository)
    ceiling = measure_ceiling(repository, tmp_path / "work", concurrency=2, duration_s=1.0, rounds=1, log=lambda _: None)
    assert [run["errors"] for run in ceiling["runs"]] == [0, 0] and all(run["requests"] > 0 for run in ceiling["runs"])


@pytest.mark.integration
def test_the_batch_benchmark_runs_outside_the_source_tree(tmp_path):
    """As from an installed wheel: the working folder is not the checkout, the repository is an option."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "rf_triton.benchmarks.batch", "--rows", "3000", "--in-memory-rows", "500",
               "--format", "csv", "--out", str(tmp_path / "results")]
    missing = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"error: model 'random_forest' not found in model_repository: give the repository with --repository "
        "(rf-triton export writes one into ./model_repository)"]
    ran = subprocess.run([*command, "--repository", str(root / "model_repository")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = json.loads((tmp_path / "results" / "batch.json").read_text())
    assert report["rows"] == 3000 and [run["format"] for run in report["runs"]] == ["csv"]
