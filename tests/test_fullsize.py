"""The full-size forest benchmark's report: what it writes from the figures it measured (no timing here;
the benchmark itself runs by hand, see benchmarks/README.md)."""

from __future__ import annotations

import json

from sklearn.ensemble import RandomForestRegressor

from rf_triton.benchmarks.fullsize import (
    DATASET, DEMO_MODEL, NO_WORK_MODEL, ceiling_summary, markdown, non_default_parameters, write_report,
)


def measured_report(trained_here: bool = False, threads: str = "0") -> dict:
    def point(label, kind, rows_per_s, threads, round=1, p99_ms=140.0, **extra):
        return {"label": label, "kind": kind, "calls": 10, "seconds": 2000 * 10 / rows_per_s, "p50_ms": 100.0,
                "p99_ms": p99_ms, "rows_per_call": 2000, "rows_per_s": rows_per_s, "threads": threads,
                "round": round, **extra}

    runs = [{"model": model, "round": r, "generator": "wrk -t1", "requests_per_s": rps, "p50_ms": 3.0,
             "p99_ms": 6.0, "errors": 0, "requests": int(rps * 5)}
            for r, (forest_rps, ceiling_rps) in enumerate([(18_000, 20_000), (16_000, 20_000)], start=1)
            for model, rps in ((DEMO_MODEL, forest_rps), (NO_WORK_MODEL, ceiling_rps))]
    report = {
        "machine": "test CPU, 2 cores available", "load_before": [2.5, 2.0, 1.5], "load_after": [3.1, 2.2, 1.6],
        "rows_per_call": 2000, "duration_s": 5.0, "rounds": 2, "dataset": DATASET, "elapsed_s": 321.0,
        "model_file": {"path": "/data/forest.joblib", "bytes": 455_000_000, "trained_here": trained_here},
        "export": {"command": "rf-triton export --model FILE", "wall_s": 21.5, "peak_rss_bytes": 2_100_000_000,
                   "reported_s": 17.25, "output_tail": ["wrote ..."]},
        "forest": {"estimator": "RandomForestRegressor", "n_estimators": 100, "max_depth": None,
                   "n_nodes": 6_300_123, "n_features": 20, "onnx_bytes": 247_000_000,
                   "parity": {"rows": 2324, "max_rel_error": 3.1e-6, "checked_with": "ONNX Runtime"},
                   "parameters": {"random_state": "0"}},
        "serving": {"summary": "1 inst, batching no delay", "intra_op_thread_count": threads,
                    "max_batch_size": 1024, "input": "X"},
        "points": [
            point("ONNX Runtime in-process, 1 intra-op thread", "onnxruntime", 13_000, 1),
            point("ONNX Runtime in-process, 2 intra-op threads", "onnxruntime", 23_000, 2),
            point("sklearn predict, n_jobs=1", "sklearn", 15_000, 1),
            point("sklearn predict, n_jobs=1", "sklearn", 15_000, 1, round=2),
            point("sklearn predict, n_jobs=2", "sklearn", 25_000, 2),
            point("served, RandomForestClient.predict over HTTP", "served", 19_000, None, protocol="HTTP",
                  max_rel_diff_vs_sklearn=2e-6),
            point("served, RandomForestClient.predict over HTTP", "served", 20_000, None, round=2, p99_ms=300.0,
                  protocol="HTTP", max_rel_diff_vs_sklearn=2e-6),
            point("served, RandomForestClient.predict over gRPC", "served", 18_000, None, protocol="gRPC",
                  max_rel_diff_vs_sklearn=4e-6),
        ],
        "ceiling": {"concurrency": 64, "rows_per_request": 1, "protocol": "http", "duration_s": 5.0,
                    "generator": "wrk -t1", "serving": "1 inst, batching no delay", "runs": runs,
                    **ceiling_summary(runs)},
    }
    if trained_here:
        report["train_s"] = 74.0
    return report


def test_ceiling_ratio_is_the_mean_forest_rate_over_the_mean_no_work_rate():
    summary = measured_report()["ceiling"]
    assert summary["served_rps"] == 17_000 and summary["ceiling_rps"] == 20_000
    assert summary["served_over_ceiling"] == 0.85


def test_report_files_hold_every_figure_and_the_tables_the_readme_quotes(tmp_path):
    report = measured_report()
    paths = write_report(report, tmp_path / "results")
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(report))
    table = paths["table"].read_text()
    assert table == markdown(report)
    # export: wall time, the export's own figure, peak RSS, parity
    assert "| 21.5 s (export itself 17.2 s) | 2,100 MB | max relative error 3.1e-06 on 2,324 rows (ONNX Runtime) |" in table
    # each configuration's rows/s divided by sklearn n_jobs=1 (15,000 rows/s)
    assert "| sklearn predict, n_jobs=2 | 25,000 | 25,000–25,000 | 100.0 | 140.0 | 1.67 |" in table
    # over the rounds: mean rows/s and its range, the worst p99
    assert "| served, RandomForestClient.predict over HTTP | 19,500 | 19,000–20,000 | 100.0 | 300.0 | 1.30 |" in table
    assert table.count("| sklearn predict, n_jobs=1 |") == 1
    assert "ONNX Runtime all cores" in table and "6,300,123 nodes" in table
    assert "`RandomForestRegressor(random_state=0)`" in table and "loaded from a joblib file" in table
    assert "max relative difference 4e-06" in table  # the worse of the two protocols
    assert "| no-work model (ceiling) | 2 | 20,000 |" in table
    assert "Served ÷ ceiling: 0.85 (17,000 vs 20,000 requests/s" in table
    assert "Load average 2.5 before and 3.1 after" in table


def test_report_says_when_the_forest_was_trained_in_the_run_and_with_how_many_threads(tmp_path):
    table = markdown(measured_report(trained_here=True, threads="1"))
    assert "fitted in this run on `make_regression(n_samples=50,000, n_features=20" in table and "in 74 s" in table
    assert "ONNX Runtime 1 intra-op thread," in table


def test_only_parameters_that_differ_from_the_defaults_are_named():
    assert non_default_parameters(RandomForestRegressor(random_state=0, n_jobs=4)) == {"random_state": "0"}
    assert non_default_parameters(RandomForestRegressor(max_depth=10)) == {"max_depth": "10"}
