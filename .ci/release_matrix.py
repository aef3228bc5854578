"""Every release of the table, tested: the models rf-triton exports, run under each ONNX Runtime and
treelite version of src/rf_triton/releases.py, must answer what sklearn answers.

Steps (driven by .ci/release_matrix.sh, each in its own environment):
  export DIR          project venv: fit each model kind, export it once (ONNX, and FIL where FIL serves
                      it), save the rows fed and sklearn's answers (.npy), and loader probe graphs
  check-onnx DIR OUT  a venv holding only onnxruntime==X and numpy: load every model.onnx, compare
                      with sklearn; probe the loader's limits and compare them with the table
  check-fil DIR OUT   a venv holding only treelite==X and numpy: GTIL on every checkpoint.tl
  report DIR RESULT   merge the per-version results into RESULT (JSON) and RESULT with .md; exit 1
                      if any version failed

check-onnx and check-fil import neither rf_triton nor onnx: only the runtime under test, numpy, and
src/rf_triton/releases.py read from its file (standard library only).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REGRESSION_RTOL = 1e-5  # relative, per prediction, against |prediction| floored at 0.1% of the largest
PROBABILITY_ATOL = 1e-6
TIE_GAP = 1e-6  # rows whose two best sklearn probabilities are closer than this: any label is right
PROBE_OPSETS = {"onnx": range(17, 31), "ir": range(8, 16)}


def releases_table():
    """src/rf_triton/releases.py, loaded from its file: it needs only the standard library."""
    spec = importlib.util.spec_from_file_location("rf_triton_releases", ROOT / "src" / "rf_triton" / "releases.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


# -- export (project venv) --------------------------------------------------------------------------


def model_kinds() -> dict:
    """The kinds the tests export, fitted on grid data (integers, 1-2 decimals, sklearn datasets)."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_diabetes, load_iris, load_wine
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestClassifier, RandomForestRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    grid = rng.integers(0, 20, size=(600, 5)).astype(np.float64)
    iris = load_iris()
    wine = load_wine()
    diabetes = load_diabetes(scaled=False)
    with_nan = np.round(rng.normal(size=(600, 4)) * 10, 1)
    target_nan = with_nan[:, 0] * 2 + with_nan[:, 1]
    with_nan[rng.random(with_nan.shape) < 0.2] = np.nan
    frame = pd.DataFrame({"city": rng.choice(["paris", "lyon", "nice", "brest"], 600).astype(object),
                          "rooms": rng.integers(1, 8, 600).astype(np.float64),
                          "size": np.round(rng.normal(60, 20, 600), 1)})
    frame_target = np.where((frame["city"] == "paris") | (frame["size"] > 70), "dear", "cheap")
    return {
        "regressor": RandomForestRegressor(21, max_depth=8, random_state=0).fit(
            grid, np.round(grid @ [1.5, -2, 0.5, 3, 1] + rng.normal(size=600), 2)),
        "classifier_strings": RandomForestClassifier(21, max_depth=6, random_state=0).fit(
            iris.data, iris.target_names[iris.target]),
        "multi_output": ExtraTreesRegressor(21, max_depth=8, random_state=0).fit(
            wine.data, np.c_[wine.target, wine.data[:, 0] * 2]),
        "nan_trained": RandomForestRegressor(21, max_depth=8, random_state=0).fit(with_nan, target_nan),
        "binary_nan": RandomForestClassifier(21, max_depth=8, random_state=0).fit(
            with_nan, (np.nan_to_num(target_nan) > 0).astype(int)),
        "frame_onehot": Pipeline([
            ("columns", ColumnTransformer([("city", OneHotEncoder(handle_unknown="ignore"), ["city"])],
                                          remainder="passthrough")),
            ("forest", RandomForestClassifier(21, max_depth=8, random_state=0))]).fit(frame, frame_target),
        "scaler_forest": Pipeline([("scale", StandardScaler()),
                                   ("forest", RandomForestRegressor(21, max_depth=8, random_state=0))]).fit(
            diabetes.data, diabetes.target),
    }


FIL_KINDS = ("regressor", "classifier_strings", "nan_trained", "binary_nan")  # what FIL serves: bare single-target forests


def export(folder: Path) -> None:
    import joblib
    import onnx

    from rf_triton import releases
    from rf_triton.export import parity, sources
    from rf_triton.export.pipeline import export_model, parity_rows

    folder.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for kind, estimator in model_kinds().items():
        started = time.perf_counter()
        pickled = folder / f"{kind}.joblib"
        joblib.dump(estimator, pickled)
        trained = sources.load_pickled(pickled)
        pickled.unlink()
        classifier = trained.task == "classification"
        rows = parity_rows(trained)
        frame = parity.as_frame(trained.estimator, rows)
        answers = {"values": None, "probabilities": None, "labels": None}
        if classifier:
            answers["probabilities"] = trained.estimator.predict_proba(frame)
            answers["labels"] = trained.estimator.predict(frame).astype(str)
        else:
            answers["values"] = trained.estimator.predict(frame).reshape(len(rows), -1)
        formats = {"onnx": "model.onnx", **({"fil": "checkpoint.tl"} if kind in FIL_KINDS else {})}
        entry = {"task": trained.task, "rows": len(rows), "files": {}}
        for model_format, filename in formats.items():
            result = export_model(trained, folder / "repository" / model_format, name=kind, model_format=model_format)
            entry["files"][model_format] = str((result.version_dir / filename).relative_to(folder))
        graph = onnx.load(folder / entry["files"]["onnx"])
        # What export refuses for a release, per ONNX Runtime: the check must find that model wrong there.
        entry["refused_under"] = {ort.version: problems for ort in releases.ONNX_RUNTIMES.values()
                                  if (problems := releases.problems_loading(graph, next(
                                      r for r in releases.RELEASES.values() if r.onnxruntime is ort)))}
        feeds = {}
        for item in graph.graph.input:
            elem = item.type.tensor_type.elem_type
            column = frame[item.name].to_numpy() if trained.columnar else np.asarray(rows)
            if elem == onnx.TensorProto.STRING:
                feeds[item.name] = column.astype(str).reshape(-1, 1)
            else:
                dtype = np.float64 if elem == onnx.TensorProto.DOUBLE else np.float32
                feeds[item.name] = column.astype(dtype).reshape(len(rows), -1)
        entry["feeds"] = {}
        for name, array in feeds.items():
            np.save(folder / f"{kind}.feed.{name}.npy", array)
            entry["feeds"][name] = f"{kind}.feed.{name}.npy"
        if "fil" in formats:
            np.save(folder / f"{kind}.fil_rows.npy", np.asarray(rows, dtype=np.float32))
        for what, array in answers.items():
            if array is not None:
                np.save(folder / f"{kind}.{what}.npy", array)
        entry["classes"] = [str(c) for c in trained.classes]
        entry["export_seconds"] = round(time.perf_counter() - started, 2)
        manifest[kind] = entry
        print(f"exported {kind}: {len(rows)} rows, {', '.join(formats)} in {entry['export_seconds']} s", flush=True)
    write_probes(folder / "probes")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def write_probes(folder: Path) -> None:
    """Graphs that find what a loader accepts: Identity under each ai.onnx opset and IR version, and
    one TreeEnsemble (the ai.onnx.ml opset 5 op)."""
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)

    def identity(opset: int, ir_version: int) -> bytes:
        graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "probe",
                                  [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 1])],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = ir_version
        return model.SerializeToString()

    for opset in PROBE_OPSETS["onnx"]:
        (folder / f"onnx_{opset}.onnx").write_bytes(identity(opset, 8))
    for ir_version in PROBE_OPSETS["ir"]:
        (folder / f"ir_{ir_version}.onnx").write_bytes(identity(17, ir_version))
    node = helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml", tree_roots=[0],
        nodes_modes=helper.make_tensor("modes", TensorProto.UINT8, [1], [0]), nodes_featureids=[0],
        nodes_splits=helper.make_tensor("splits", TensorProto.DOUBLE, [1], [0.5]), nodes_truenodeids=[0],
        nodes_trueleafs=[1], nodes_falsenodeids=[1], nodes_falseleafs=[1], leaf_targetids=[0, 0],
        leaf_weights=helper.make_tensor("w", TensorProto.DOUBLE, [2], [1.0, 2.0]), aggregate_function=1,
        post_transform=0, n_targets=1)
    graph = helper.make_graph([node], "tree_ensemble", [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, 1])],
                              [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [None, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)])
    model.ir_version = 10
    (folder / "tree_ensemble.onnx").write_bytes(model.SerializeToString())


# -- comparisons (any venv: numpy only) -------------------------------------------------------------


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    """parity's rule: per prediction, against |prediction| floored at 0.1% of the largest |prediction|."""
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64).reshape(expected.shape)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    floor = max(scale * 1e-3, float(np.finfo(np.float32).tiny))
    return float(np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), floor))) if expected.size else 0.0


def compare(folder: Path, kind: str, entry: dict, values=None, probabilities=None, labels=None) -> dict:
    """One model's answers against sklearn's, with pass/fail by the matrix's tolerances."""
    result = {"kind": kind, "rows": entry["rows"]}
    if entry["task"] == "classification":
        expected = np.load(folder / f"{kind}.probabilities.npy")
        result["max_probability_error"] = float(np.max(np.abs(np.asarray(probabilities, np.float64) - expected)))
        top = np.sort(expected, axis=1)
        decided = (top[:, -1] - top[:, -2]) > TIE_GAP
        sklearn_labels = np.load(folder / f"{kind}.labels.npy")
        result["label_mismatches"] = int(np.sum((np.asarray(labels).astype(str) != sklearn_labels) & decided))
        result["ties"] = int(np.sum(~decided))
        result["passed"] = result["max_probability_error"] <= PROBABILITY_ATOL and result["label_mismatches"] == 0
    else:
        result["max_relative_error"] = relative_error(np.load(folder / f"{kind}.values.npy"), values)
        result["passed"] = result["max_relative_error"] <= REGRESSION_RTOL
    return result


# -- check-onnx (onnxruntime==X + numpy) ------------------------------------------------------------


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def probe_limits(folder: Path) -> dict:
    """The newest ai.onnx opset and IR version this loader accepts, and whether TreeEnsemble runs."""
    def loads(path: Path, feed=None) -> bool:
        try:
            sess = session(path)
            if feed is not None:
                sess.run(None, feed)
            return True
        except Exception:  # ORT's Fail/InvalidGraph/NotImplemented: this loader refuses the probe
            return False

    onnx_opset = max((v for v in PROBE_OPSETS["onnx"] if loads(folder / f"onnx_{v}.onnx")), default=None)
    ir_version = max((v for v in PROBE_OPSETS["ir"] if loads(folder / f"ir_{v}.onnx")), default=None)
    tree_ensemble = loads(folder / "tree_ensemble.onnx", {"X": np.array([[0.0], [1.0]])})
    return {"onnx_opset": onnx_opset, "onnx_ml_opset": 5 if tree_ensemble else 4, "ir_version": ir_version}


def check_onnx(folder: Path, out: Path) -> None:
    import onnxruntime as ort

    table = releases_table()
    manifest = json.loads((folder / "manifest.json").read_text())
    started = time.perf_counter()
    models = []
    for kind, entry in manifest.items():
        try:
            sess = session(folder / entry["files"]["onnx"])
            feeds = {}
            for item in sess.get_inputs():
                array = np.load(folder / entry["feeds"][item.name])
                feeds[item.name] = array.astype(object) if array.dtype.kind == "U" else array
            outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        except Exception as exc:  # a model this ONNX Runtime cannot load or run: fails unless export refuses it
            models.append({"kind": kind, "passed": ort.__version__ in entry["refused_under"],
                           "error": str(exc).splitlines()[0][:300]})
            continue
        if entry["task"] == "classification":
            found = compare(folder, kind, entry, probabilities=outputs["probabilities"],
                            labels=outputs["label"].reshape(-1))
        else:
            values = next(iter(outputs.values()))
            found = compare(folder, kind, entry, values=values.reshape(len(values), -1))
        refused = entry["refused_under"].get(ort.__version__)
        if refused:  # export refuses it for this version's releases: right only while the defect is there
            found.update(refused_at_export="; ".join(refused), passed=not found["passed"])
        models.append(found)
    probed = probe_limits(folder / "probes")
    stated = table.ONNX_RUNTIMES.get(ort.__version__)
    table_matches = stated is not None and probed == {"onnx_opset": stated.onnx_opset,
                                                      "onnx_ml_opset": stated.onnx_ml_opset,
                                                      "ir_version": stated.ir_version}
    result = {"runtime": "onnxruntime", "version": ort.__version__, "models": models, "probed": probed,
              "table_matches_probe": table_matches, "seconds": round(time.perf_counter() - started, 2),
              "passed": table_matches and all(m["passed"] for m in models)}
    out.write_text(json.dumps(result, indent=2))
    print(summary_line(result), flush=True)


# -- check-fil (treelite==X + numpy) ----------------------------------------------------------------


def check_fil(folder: Path, out: Path) -> None:
    import treelite
    import treelite.gtil

    manifest = json.loads((folder / "manifest.json").read_text())
    started = time.perf_counter()
    models = []
    for kind, entry in manifest.items():
        if "fil" not in entry["files"]:
            continue
        try:
            model = treelite.Model.deserialize_bytes((folder / entry["files"]["fil"]).read_bytes())
            output = np.asarray(treelite.gtil.predict(model, np.load(folder / f"{kind}.fil_rows.npy")))
        except Exception as exc:  # a checkpoint this treelite cannot read fails the matrix
            models.append({"kind": kind, "passed": False, "error": str(exc).splitlines()[0][:300]})
            continue
        rows = entry["rows"]
        if entry["task"] == "classification":
            probabilities = output.reshape(rows, -1)
            labels = np.asarray(entry["classes"])[np.argmax(probabilities, axis=1)]  # as the client derives them
            models.append(compare(folder, kind, entry, probabilities=probabilities, labels=labels))
        else:
            models.append(compare(folder, kind, entry, values=output.reshape(rows, -1)))
    result = {"runtime": "treelite", "version": treelite.__version__, "models": models,
              "seconds": round(time.perf_counter() - started, 2), "passed": all(m["passed"] for m in models)}
    out.write_text(json.dumps(result, indent=2))
    print(summary_line(result), flush=True)


# -- report -----------------------------------------------------------------------------------------


def served(models: list[dict]) -> list[dict]:
    """The models export lets through for this version (the refused ones are checked to be wrong)."""
    return [m for m in models if "refused_at_export" not in m]


def worst(models: list[dict], key: str) -> float | None:
    found = [m[key] for m in served(models) if key in m]
    return max(found) if found else None


def mismatches(models: list[dict]) -> int:
    return sum(m.get("label_mismatches", 0) for m in served(models))


def summary_line(result: dict) -> str:
    models = result["models"]
    failed = [m["kind"] for m in models if not m["passed"]]
    probe = "" if "probed" not in result else (
        f"; probe {result['probed']} {'= table' if result['table_matches_probe'] else '!= TABLE'}")
    return (f"{result['runtime']} {result['version']}: {len(models) - len(failed)}/{len(models)} models as expected "
            f"(served ones equal to sklearn, refused ones wrong there)"
            f" (max rel error {worst(models, 'max_relative_error')}, max probability error "
            f"{worst(models, 'max_probability_error')}, label mismatches {mismatches(models)}, "
            f"refused at export {len(models) - len(served(models))})"
            f"{probe}{'; FAILED: ' + ', '.join(failed) if failed else ''}")


def report(folder: Path, destination: Path) -> int:
    table = releases_table()
    timing = json.loads((folder / "timing.json").read_text()) if (folder / "timing.json").is_file() else {}
    results = {}
    for path in sorted((folder / "results").glob("*.json")):
        result = json.loads(path.read_text())
        results[(result["runtime"], result["version"])] = result
    rows, fil_rows = [], []
    for release in table.RELEASES.values():
        onnx_result = results.get(("onnxruntime", release.onnxruntime.version))
        rows.append({
            "release": release.tag, "server": release.server, "onnxruntime": release.onnxruntime.version,
            "onnx_opset": release.onnxruntime.onnx_opset, "onnx_ml_opset": release.onnxruntime.onnx_ml_opset,
            "ir_version": release.onnxruntime.ir_version, "treelite": release.treelite,
            "fil_parameters": release.fil_parameters.is_classifier,
            "models_checked": len(onnx_result["models"]) if onnx_result else 0,
            "max_relative_error": worst(onnx_result["models"], "max_relative_error") if onnx_result else None,
            "max_probability_error": worst(onnx_result["models"], "max_probability_error") if onnx_result else None,
            "label_mismatches": mismatches(onnx_result["models"]) if onnx_result else None,
            "refused_at_export": sorted(m["kind"] for m in onnx_result["models"] if m not in served(onnx_result["models"]))
            if onnx_result else [],
            "passed": bool(onnx_result and onnx_result["passed"]),
        })
    for (runtime, version), result in sorted(results.items()):
        if runtime == "treelite":
            fil_rows.append({"treelite": version, "models_checked": len(result["models"]),
                             "max_relative_error": worst(result["models"], "max_relative_error"),
                             "max_probability_error": worst(result["models"], "max_probability_error"),
                             "label_mismatches": mismatches(result["models"]),
                             "passed": result["passed"]})
    expected_treelite = set(table.treelite_versions()[:1] + table.treelite_versions()[-1:])
    passed = (all(r["passed"] for r in rows) and {r["treelite"] for r in fil_rows} == expected_treelite
              and all(r["passed"] for r in fil_rows))
    document = {"releases": rows, "fil": fil_rows, "timing_seconds": timing, "passed": passed,
                "tolerances": {"regression_relative": REGRESSION_RTOL, "probability_absolute": PROBABILITY_ATOL,
                               "label_mismatches": 0}}
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(json.dumps(document, indent=2) + "\n")
    destination.with_suffix(".md").write_text(markdown(document))
    print(destination.with_suffix(".md").read_text())
    return 0 if passed else 1


def markdown(document: dict) -> str:
    def figure(value) -> str:
        return "—" if value is None else f"{value:.2g}" if isinstance(value, float) else str(value)

    lines = ["# Release matrix", "",
             "Generated by `.ci/release_matrix.sh`: each model kind exported once, then loaded and run under "
             "each ONNX Runtime of `src/rf_triton/releases.py` in its own environment, and each FIL checkpoint "
             "under the oldest and newest treelite of the table; answers compared with sklearn's. A model "
             "export refuses for a release (`refused at export`) passes only if it is indeed wrong there; "
             "the errors are those of the models served.", "",
             "| release | server | ONNX Runtime | opset | ML opset | IR | treelite | FIL classifier flag | "
             "models | max rel. error | max prob. error | labels differing | refused at export | passed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in document["releases"]:
        lines.append(f"| {r['release']} | {r['server']} | {r['onnxruntime']} | {figure(r['onnx_opset'])} | "
                     f"{figure(r['onnx_ml_opset'])} | {figure(r['ir_version'])} | {figure(r['treelite'])} | "
                     f"`{r['fil_parameters']}` | {r['models_checked']} | {figure(r['max_relative_error'])} | "
                     f"{figure(r['max_probability_error'])} | {figure(r['label_mismatches'])} | "
                     f"{', '.join(r['refused_at_export']) or '—'} | {'yes' if r['passed'] else 'NO'} |")
    lines += ["", "| treelite (GTIL) | checkpoints | max rel. error | max prob. error | labels differing | passed |",
              "|---|---|---|---|---|---|"]
    for r in document["fil"]:
        lines.append(f"| {r['treelite']} | {r['models_checked']} | {figure(r['max_relative_error'])} | "
                     f"{figure(r['max_probability_error'])} | {r['label_mismatches']} | {'yes' if r['passed'] else 'NO'} |")
    timing = document["timing_seconds"]
    if timing:
        lines += ["", "Seconds: " + ", ".join(f"{k} {v}" for k, v in timing.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    commands = {"export": lambda a: export(Path(a[0])), "check-onnx": lambda a: check_onnx(Path(a[0]), Path(a[1])),
                "check-fil": lambda a: check_fil(Path(a[0]), Path(a[1])), "report": lambda a: report(Path(a[0]), Path(a[1]))}
    if not argv or argv[0] not in commands:
        print(f"usage: release_matrix.py {'|'.join(commands)} ARGS", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
