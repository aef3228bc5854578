"""Figures in the docs are quoted from the generated results, never typed from memory: each quote
is checked against the file that holds the figure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def copied_block(text: str, name: str) -> str:
    match = re.search(rf"<!-- results/{re.escape(name)}, copied whole[^>]*-->\n(.*?)\n<!-- end of results/"
                      rf"{re.escape(name)} -->", text, re.S)
    assert match, f"benchmarks/README.md has no copied block of results/{name}"
    return match.group(1).strip()


@pytest.mark.parametrize("name", ["bench.md", "fullsize.md", "cache.md", "spark.md"])
def test_benchmark_readme_copies_the_current_results(name):
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    assert copied_block(readme, name) == (RESULTS / name).read_text().strip()


def test_readme_performance_table_is_the_bench_targets():
    targets = json.loads((RESULTS / "bench.json").read_text())["targets"]
    section = (ROOT / "README.md").read_text().split("## Performance", 1)[1].split("\n## ", 1)[0]
    for target in targets:
        row = f"| {target['target']} | {target['measured']} | {'yes' if target['met'] else 'no'} |"
        assert row in section, row


def test_readme_full_size_figures_are_the_benchmarks():
    """The served-vs-sklearn and export figures benchmarks/README.md states come from fullsize.json."""
    report = json.loads((RESULTS / "fullsize.json").read_text())
    readme = (ROOT / "benchmarks" / "README.md").read_text().split("<!-- end of results/fullsize.md -->", 1)[1]
    by_label = {}
    for point in report["points"]:
        by_label.setdefault(point["label"], []).append(point["rows_per_s"])
    for label, values in by_label.items():
        if label.startswith(("served", "sklearn")):
            assert f"{sum(values) / len(values):,.0f}" in readme, label
    assert f"{report['export']['peak_rss_bytes'] / 1e6:,.0f} MB" in readme


@pytest.mark.parametrize("guide, thousands, decimal", [("guide.md", ",", "."), ("guide.fr.md", " ", ",")])
def test_guides_measured_figures_are_the_bench_rows(guide, thousands, decimal):
    """The guides' 1-row HTTP table quotes bench.json: throughput, p50 and p99 of the canonical config."""
    rows = json.loads((RESULTS / "bench.json").read_text())["rows"]
    text = (ROOT / "docs" / guide).read_text()
    for configuration in ("Triton, batching on", "Triton, batching off"):
        for concurrency in (1, 64):
            (row,) = [r for r in rows if r["configuration"] == configuration and r["protocol"] == "http"
                      and r["concurrency"] == concurrency and r["rows_per_request"] == 1]
            figures = [f"{row['throughput']:,.0f}".replace(",", thousands) + " req/s"]
            figures += [f"{row[k]:.2f} ms".replace(".", decimal) if concurrency == 64 else
                        f"{row[k]:.3f} ms".replace(".", decimal) for k in ("p50_ms", "p99_ms")]
            line = next((line for line in text.splitlines() if figures[0] in line), "")
            assert all(f in line for f in figures), (configuration, concurrency, figures)


@pytest.mark.parametrize("doc, thousands", [("README.md", ","), ("docs/guide.md", ","), ("docs/guide.fr.md", " ")])
def test_spark_figures_are_the_spark_benchmark(doc, thousands):
    """Spark's rows/s and `rf-triton predict --input`'s on the same rows, as results/spark.json has them."""
    report = json.loads((RESULTS / "spark.json").read_text())
    text = (ROOT / doc).read_text()
    figures = [report["spark"]["rows_per_s"], report["spark"]["rows_per_s_with_start"], report["rows"]]
    figures += [run["rows_per_s"] for run in report["runs"]]
    for figure in figures:
        assert f"{figure:,.0f}".replace(",", thousands) in text, (doc, figure)
