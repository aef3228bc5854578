"""The release matrix's checker (.ci/release_matrix.py) fails on a wrong answer, and CI runs it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def checker():
    spec = importlib.util.spec_from_file_location("release_matrix", ROOT / ".ci" / "release_matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_fails_on_an_answer_sklearn_would_not_give(tmp_path):
    matrix = checker()
    expected = np.array([[1.0], [2.0], [400.0]])
    np.save(tmp_path / "r.values.npy", expected)
    entry = {"task": "regression", "rows": 3}
    assert matrix.compare(tmp_path, "r", entry, values=expected.astype(np.float32))["passed"]
    assert not matrix.compare(tmp_path, "r", entry, values=expected * (1 + 1e-4))["passed"]
    probabilities = np.array([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]])
    np.save(tmp_path / "c.probabilities.npy", probabilities)
    np.save(tmp_path / "c.labels.npy", np.array(["b", "a", "a"]))
    entry = {"task": "classification", "rows": 3}
    same = matrix.compare(tmp_path, "c", entry, probabilities=probabilities, labels=np.array(["b", "b", "a"]))
    assert same["passed"] and same["ties"] == 1  # the tied row may take either label
    wrong = matrix.compare(tmp_path, "c", entry, probabilities=probabilities, labels=np.array(["a", "a", "a"]))
    assert not wrong["passed"] and wrong["label_mismatches"] == 1


def test_the_checker_reads_the_table_without_the_project():
    """The small virtualenvs hold no rf_triton: the checker loads releases.py from its file."""
    from rf_triton import releases

    table = checker().releases_table()
    assert table.TAGS == releases.TAGS and table.DEFAULT.tag == releases.DEFAULT.tag


def test_ci_runs_the_matrix_and_its_committed_result_covers_every_release():
    from rf_triton import releases

    assert ".ci/release_matrix.sh" in (ROOT / ".ci" / "run").read_text()
    result = json.loads((ROOT / "benchmarks" / "results" / "release_matrix.json").read_text())
    assert result["passed"]
    assert [row["release"] for row in result["releases"]] == list(releases.TAGS)
    assert all(row["models_checked"] == 7 and row["passed"] for row in result["releases"])
    assert sorted(row["treelite"] for row in result["fil"]) == [releases.treelite_versions()[0],
                                                                releases.treelite_versions()[-1]]
