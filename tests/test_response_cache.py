"""Triton's response cache: export writes it into config.pbtxt, serve starts the server's cache, and the
real embedded server (Python backend, Triton 2.51) answers a repeated request from it."""

import json
import shutil
import urllib.request

import numpy as np
import pytest
from typer.testing import CliRunner

from rf_triton.cli import app
from rf_triton.client import RandomForestClient
from rf_triton.export.triton_config import ServingOptions, build_config
from rf_triton.repository import read_config, write_config

runner = CliRunner()
ROW = [[0.1, 0.2, 0.3, 0.4, 0.5]]


def cache_counts(http: str, model: str = "random_forest") -> tuple[int, int]:
    """(hits, misses) from Triton's statistics extension."""
    with urllib.request.urlopen(f"http://{http}/v2/models/{model}/stats", timeout=10) as response:
        stats = json.load(response)["model_stats"][0]["inference_stats"]
    return int(stats["cache_hit"]["count"]), int(stats["cache_miss"]["count"])


@pytest.fixture(scope="module")
def cached_repository(tmp_path_factory):
    repository = tmp_path_factory.mktemp("cache") / "repo"
    result = runner.invoke(app, ["export", "--repository", str(repository), "--response-cache"])
    assert result.exit_code == 0, result.output
    return repository


def test_export_writes_the_response_cache_and_a_reexport_keeps_or_drops_it(cached_repository, tmp_path):
    config_path = cached_repository / "random_forest" / "config.pbtxt"
    assert "response_cache {\n  enable: true\n}" in config_path.read_text()
    config = read_config(config_path)
    from rf_triton.repository import signature_of

    graph = signature_of(config)
    kept = build_config("random_forest", graph, ServingOptions(), {}, existing=config)
    assert kept.response_cache.enable
    dropped = build_config("random_forest", graph, ServingOptions(response_cache=False), {}, existing=config)
    assert not dropped.HasField("response_cache")
    write_config(tmp_path / "config.pbtxt", dropped)
    assert "response_cache" not in (tmp_path / "config.pbtxt").read_text()


@pytest.mark.integration
def test_serve_cache_size_answers_a_repeated_request_from_the_cache(serve, cached_repository):
    process = serve(cached_repository, "--cache-size", str(1 << 20))
    process.wait_ready()
    http = f"127.0.0.1:{process.ports['http']}"
    with RandomForestClient(http, model="random_forest") as client:
        first = client.predict(ROW)
        assert cache_counts(http) == (0, 1)
        again = client.predict(ROW)
        assert cache_counts(http) == (1, 1)
        other = client.predict([[0.2, 0.2, 0.3, 0.4, 0.5]])
        assert cache_counts(http) == (1, 2)
    np.testing.assert_array_equal(first, again)
    assert other[0] != first[0]


@pytest.mark.integration
def test_a_cached_model_on_a_server_without_a_cache_is_served_uncached(server_factory, cached_repository, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(cached_repository, repository)
    server = server_factory(repository)
    with RandomForestClient(server.endpoints.http) as client:
        client.predict(ROW)
        client.predict(ROW)
    assert cache_counts(server.endpoints.http) == (0, 0)


def test_compose_and_kubernetes_start_the_same_cache_with_one_default():
    import re

    import yaml

    from conftest import ROOT

    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]["command"]
    (compose_arg,) = [a for a in command if a.startswith("--cache-config=")]
    default = int(re.fullmatch(r"--cache-config=local,size=\$\{TRITON_CACHE_SIZE:-(\d+)\}", compose_arg).group(1))
    assert default > 0
    manifests = [ROOT / "deploy/kubernetes/kserve/inferenceservice.yaml",
                 ROOT / "deploy/kubernetes/kserve/inferenceservice-gpu.yaml",
                 ROOT / "deploy/kubernetes/plain/deployment.yaml"]
    for path in manifests:
        doc = yaml.safe_load_all(path.read_text())
        spec = next(doc)["spec"]
        args = spec["predictor"]["model"]["args"] if "predictor" in spec else \
            spec["template"]["spec"]["containers"][0]["args"]
        assert f"--cache-config=local,size={default}" in args, path.name


def cache_sentence(report: dict, lang: str) -> str:
    """What the docs say of benchmarks/results/cache.json, in each language's number format."""
    rows = {(r["workload"], r["concurrency"], r["response_cache"]): r for r in report["rows"]}
    repeated = next(r["workload"] for r in report["rows"] if r["workload"].endswith("rows repeated"))
    concurrencies = sorted({r["concurrency"] for r in report["rows"]})

    def number(value: float, digits: int = 0) -> str:
        text = f"{value:,.{digits}f}"
        return text if lang == "en" else text.replace(",", " ").replace(".", ",")

    def figures(workload: str, concurrency: int) -> dict[str, str]:
        on, off = rows[(workload, concurrency, True)], rows[(workload, concurrency, False)]
        return {"hits": number(100 * on["hit_rate"], 1), "on": number(on["rows_per_s"]), "off": number(off["rows_per_s"]),
                "gain": number(report["gains"][f"{workload}, c{concurrency}"], 2),
                "p50_on": number(on["p50_ms"], 3), "p50_off": number(off["p50_ms"], 3),
                "p99_on": number(on["p99_ms"], 2), "p99_off": number(off["p99_ms"], 2)}

    parts = []
    for concurrency in concurrencies:
        r, n = figures(repeated, concurrency), figures("every row new", concurrency)
        if lang == "en":
            parts.append(f"at concurrency {concurrency}, {repeated}: {r['hits']}% hits, {r['on']} rows/s against "
                         f"{r['off']} without the cache ({r['gain']}×), p50 {r['p50_on']} ms against {r['p50_off']} "
                         f"ms, p99 {r['p99_on']} ms against {r['p99_off']} ms; every row new: {n['hits']}% hits, "
                         f"{n['on']} rows/s against {n['off']} ({n['gain']}×), p99 {n['p99_on']} ms against "
                         f"{n['p99_off']} ms")
        else:
            parts.append(f"à concurrence {concurrency}, {repeated.replace('rows repeated', 'lignes répétées')} : "
                         f"{r['hits']} % de succès, {r['on']} lignes/s contre {r['off']} sans le cache "
                         f"({r['gain']}×), p50 de {r['p50_on']} ms contre {r['p50_off']} ms, p99 de {r['p99_on']} ms "
                         f"contre {r['p99_off']} ms ; chaque ligne nouvelle : {n['hits']} % de succès, {n['on']} "
                         f"lignes/s contre {n['off']} ({n['gain']}×), p99 de {n['p99_on']} ms contre "
                         f"{n['p99_off']} ms")
    return ". ".join(part[0].upper() + part[1:] for part in parts) + "."


@pytest.mark.parametrize("document, lang", [("README.md", "en"), ("docs/guide.md", "en"), ("docs/guide.fr.md", "fr")])
def test_docs_quote_the_cache_figures_from_the_generated_results(document, lang):
    from conftest import ROOT

    report = json.loads((ROOT / "benchmarks/results/cache.json").read_text())
    text = " ".join((ROOT / document).read_text().split())  # sentences wrap across lines
    assert cache_sentence(report, lang).lower() in text.lower()
