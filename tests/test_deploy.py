"""Production deployment files, validated by what runs here: no Docker engine, no cluster, no GPU.

docker-compose.yml against the compose-spec schema (vendored in deploy/schemas/), its mounts and
build inputs; Prometheus and Grafana provisioning; the dashboard's metric names against what the
real (embedded) Triton exports; the Kubernetes manifests against the Kubernetes schemas
(kubernetes-validate, offline) and the KServe InferenceServices against KServe's own CRD (v0.14.1,
vendored with its licence in deploy/schemas/). Where a file must agree with another (ports, images,
mounts, probes), the test checks the agreement, not the literal.
"""

from __future__ import annotations

import json
import re
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path

import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from rf_triton.client import RandomForestClient
from rf_triton.repository import read_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "schemas"
KUBERNETES_VERSION = "1.30.0"
KSERVE_CRD = SCHEMAS / "kserve-v0.14.1-serving.kserve.io_inferenceservices.yaml"
COMPOSE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")
# Exported only where Triton finds a GPU (DCGM); the embedded server here has none.
GPU_ONLY_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"}


def interpolate(value, env: dict[str, str] | None = None):
    """What compose does to ${VAR:-default} before it reads the file: here with the defaults."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):
        return COMPOSE_VARIABLE.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


@pytest.fixture(scope="module")
def compose_validator():
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def bind_mounts(service: dict) -> list[tuple[str, str, str]]:
    """(host path, container path, mode) of each bind mount (named volumes left out)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append((source, target, mode[0] if mode else "rw"))
    return mounts


def repository_configs(service: dict) -> list[mc.ModelConfig]:
    (source,) = [s for s, target, _ in bind_mounts(service) if target == "/models"]
    return [read_config(p) for p in sorted((ROOT / source).glob("*/config.pbtxt"))]


def serves_fil(repository: Path) -> bool:
    """Whether a model repository holds a FIL model: the FIL backend cannot load from a read-only mount
    (fil_backend r24.10 opens checkpoint.tl with a read-write std::fstream; Triton issues #8610, #8323)."""
    return any(read_config(p).backend == "fil" for p in repository.glob("*/config.pbtxt"))


def read_only_fil_mounts(compose: dict) -> list[str]:
    """Compose services that bind-mount a FIL repository read-only."""
    return [f"{name}: {source}:{target}:{mode}" for name, service in compose["services"].items()
            for source, target, mode in bind_mounts(service) if serves_fil(ROOT / source) and "ro" in mode.split(",")]


# -- docker-compose.yml ---------------------------------------------------------------------------

def test_compose_file_is_valid_against_the_compose_spec(compose, compose_validator):
    errors = [f"{e.json_path}: {e.message}" for e in compose_validator.iter_errors(compose)]
    assert not errors, errors
    misspelt = json.loads(json.dumps(compose))
    misspelt["services"]["triton"]["healthchek"] = misspelt["services"]["triton"].pop("healthcheck")
    assert list(compose_validator.iter_errors(misspelt)), "the schema must reject an unknown service key"


def test_every_mounted_path_and_build_input_exists(compose):
    for name, service in compose["services"].items():
        for source, _, mode in bind_mounts(service):
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name


def test_no_fil_repository_is_mounted_read_only_in_compose(compose):
    assert not read_only_fil_mounts(compose)
    assert any(serves_fil(ROOT / source) for service in compose["services"].values()
               for source, _, _ in bind_mounts(service)), "compose serves the FIL repository somewhere"
    # The same check on a file that makes the mistake: it must be caught.
    broken = json.loads(json.dumps(compose))
    broken["services"]["triton-gpu"]["volumes"] = [v + ":ro" for v in broken["services"]["triton-gpu"]["volumes"]]
    assert read_only_fil_mounts(broken)


def test_no_fil_repository_is_mounted_read_only_by_gpu_check():
    """gpu_check.sh exports FIL into its work folder and mounts it into the container: never with :ro."""
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    mounts = re.findall(r"(?:-v|--volume)[ =]\"?([^\s\"]+:/models[^\s\"]*)", script)
    assert mounts, "gpu_check.sh mounts a model repository into the container"
    read_only = [m for m in mounts if re.search(r":/models:(.*,)?ro\b", m)]
    assert not read_only, read_only
    assert "--format fil" in script or "for format in onnx fil" in script


def test_triton_services_serve_what_they_mount(compose):
    """What each Triton service runs must fit the repository it mounts: a cache where a config asks for
    one, one mount at the --model-repository path, the healthcheck on the port the server listens on."""
    for name in ("triton", "triton-gpu"):
        service = compose["services"][name]
        command = service["command"]
        (repository,) = [a.split("=", 1)[1] for a in command if a.startswith("--model-repository=")]
        assert [target for _, target, _ in bind_mounts(service)] == [repository]
        caching = [c.name for c in repository_configs(service) if c.response_cache.enable]
        assert not caching or any(a.startswith("--cache-config") for a in command), caching
        http_port = next((a.split("=", 1)[1] for a in command if a.startswith("--http-port=")), "8000")
        assert any(f"localhost:{http_port}/v2/health/ready" in part for part in service["healthcheck"]["test"])
        published = {p.split(":")[-1] for p in service["ports"]}
        assert http_port in published


def test_cpu_service_needs_no_gpu_and_serves_onnx(compose):
    triton = compose["services"]["triton"]
    assert "profiles" not in triton  # the default `docker compose up`
    assert "reservations" not in triton["deploy"]["resources"] or \
        "devices" not in triton["deploy"]["resources"]["reservations"]
    configs = repository_configs(triton)
    assert configs and all(c.backend == "onnxruntime" for c in configs)
    assert all(g.kind == mc.ModelInstanceGroup.KIND_CPU for c in configs for g in c.instance_group)


def test_gpu_profile_reserves_nvidia_gpus_and_serves_fil(compose):
    gpu = compose["services"]["triton-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and int(device["count"]) >= 1
    configs = repository_configs(gpu)
    assert configs and all(c.backend == "fil" for c in configs)
    on_gpu = (mc.ModelInstanceGroup.KIND_GPU, mc.ModelInstanceGroup.KIND_AUTO)
    assert all(g.kind in on_gpu for c in configs for g in c.instance_group)
    # Same model names on both: clients and the Locust suite switch by address only.
    assert {c.name for c in configs} == {c.name for c in repository_configs(compose["services"]["triton"])}
    host_ports = [p.split(":")[0] for s in ("triton", "triton-gpu") for p in compose["services"][s]["ports"]]
    assert len(host_ports) == len(set(host_ports)), "both services can run side by side"


def test_loadtest_profile_runs_the_locust_suite_against_triton(compose):
    master, worker = compose["services"]["locust-master"], compose["services"]["locust-worker"]
    assert master["profiles"] == worker["profiles"] == ["loadtest"]
    assert worker["image"] == master["image"]
    workdir = re.search(r"^WORKDIR (\S+)$", (DEPLOY / "loadtest" / "Dockerfile").read_text(), re.M).group(1)
    for service in (master, worker):
        command = service["command"]
        locustfile = Path(command[command.index("-f") + 1])
        assert (ROOT / locustfile.relative_to(workdir)).is_file(), locustfile  # the image copies ROOT to WORKDIR
        http = urllib.parse.urlsplit(command[command.index("--host") + 1])
        grpc_host, grpc_port = command[command.index("--grpc-host") + 1].split(":")
        for host, port in ((http.hostname, str(http.port)), (grpc_host, grpc_port)):
            target = compose["services"][host]  # a service on the compose network...
            assert port in {p.split(":")[-1] for p in target["ports"]}, (host, port)  # ...and a port it serves
    master_host = next(a.split("=", 1)[1] for a in worker["command"] if a.startswith("--master-host="))
    assert master_host in compose["services"] and compose["services"][master_host] is master
    assert "--master" in master["command"] and "--worker" in worker["command"]
    assert master["depends_on"][http.hostname]["condition"] == "service_healthy"


def test_loadtest_image_copies_every_package_the_project_installs():
    dockerfile = (DEPLOY / "loadtest" / "Dockerfile").read_text()
    assert re.search(r"^WORKDIR /app$", dockerfile, re.M)  # where the compose command finds the locustfile
    copied = {}
    for sources_and_target in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        *sources_, target = sources_and_target.split()
        for source in sources_:
            assert (ROOT / source).exists(), f"COPY {source}: missing"
            copied[source] = target
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    missing = sorted(set(package_dirs.values()) - set(copied))
    assert not missing, f"pip install . in the image needs these folders: {missing}"


def test_monitoring_profile_wires_prometheus_and_grafana(compose):
    prometheus, grafana = compose["services"]["prometheus"], compose["services"]["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    mounts = {source: target for source, target, _ in bind_mounts(prometheus) + bind_mounts(grafana)}
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/rf-triton.yml").read_text())
    (dashboards,) = provider["providers"]
    assert mounts["./deploy/grafana/dashboards"] == dashboards["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards["options"]["path"] + "/")
    assert (DEPLOY / "grafana/dashboards" / Path(home).name).is_file()


# -- Prometheus and Grafana -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def prometheus_config() -> dict:
    return yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())


def test_prometheus_scrapes_triton_metrics(prometheus_config, compose):
    duration = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
    assert duration.match(prometheus_config["global"]["scrape_interval"])
    jobs = prometheus_config["scrape_configs"]
    assert len({job["job_name"] for job in jobs}) == len(jobs)
    targets = [t for job in jobs for group in job["static_configs"] for t in group["targets"]]
    assert "triton:8002" in targets and "triton-gpu:8002" in targets
    for target in targets:
        host, port = target.split(":")
        assert host in compose["services"] and port == "8002"
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs)


def test_grafana_datasource_points_at_the_compose_prometheus(compose):
    provisioning = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert provisioning["apiVersion"] == 1
    (source,) = provisioning["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    dashboard = json.loads((DEPLOY / "grafana/dashboards/rf-triton.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana/dashboards/rf-triton.json").read_text())


def queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"]]
    return exprs


def test_dashboard_layout_and_panels(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        assert panel["targets"]
    text = " ".join(queries(dashboard))
    for needed in ("nv_inference_request_success", "nv_inference_request_failure", 'quantile="0.99"',
                   "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
                   "nv_inference_count", "nv_inference_exec_count", "nv_cpu_utilization", "nv_gpu_utilization"):
        assert needed in text, needed


@pytest.mark.integration
def test_dashboard_metrics_are_exported_by_the_real_server(demo_repository, dashboard, prometheus_config,
                                                           server_factory):
    """Scrape the embedded Triton (summary latencies on) after real requests: every metric, label and
    quantile the dashboard asks for must be there (GPU gauges aside: no GPU here)."""
    server = server_factory(demo_repository, extra_args=("--metrics-config=summary_latencies=true",))
    with RandomForestClient(server.endpoints.grpc, protocol="grpc") as client:
        for rows in (1, 3, 40):
            client.predict(np.zeros((rows, client.n_features), dtype=np.float32))
    text = urllib.request.urlopen(server.endpoints.metrics, timeout=10).read().decode()
    labels: dict[str, set[str]] = {}
    quantiles: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            labels.setdefault(family.name, set()).update(sample.labels)
            if "quantile" in sample.labels:
                quantiles.setdefault(family.name, set()).add(sample.labels["quantile"])
    # Labels Prometheus adds to every series it scrapes (its config's target labels, job, instance).
    added = {"job", "instance"} | {k for job in prometheus_config["scrape_configs"]
                                   for group in job["static_configs"] for k in group.get("labels", {})}
    used = set()
    for expr in queries(dashboard):
        for name, matchers in re.findall(r"\b(nv_[a-z0-9_]+)\s*(\{[^}]*\})?", expr):
            used.add(name)
            if name in GPU_ONLY_METRICS:
                continue
            assert name in labels, f"{name} is not exported by Triton: {expr}"
            for label, _, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
                assert label in labels[name] | added, f"{name} has no label {label!r}"
                if label == "quantile":
                    assert value in quantiles[name], f"{name} has no quantile {value}"
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in grouping.split(",")):
                assert label in added | {"gpu_uuid"} | set().union(*(labels[n] for n in used if n in labels)), \
                    f"no metric of {expr!r} has label {label!r}"
    assert used - GPU_ONLY_METRICS, "the dashboard must use metrics the server exports"
    assert labels["nv_inference_request_success"] >= {"model", "version"}


# -- Kubernetes -----------------------------------------------------------------------------------

def manifests(folder: Path) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(folder.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_plain_manifests_are_valid_kubernetes_objects():
    objects = [(p, d) for p, d in manifests(DEPLOY / "kubernetes" / "plain") if d["kind"] != "Kustomization"]
    assert {d["kind"] for _, d in objects} >= {"Deployment", "Service", "HorizontalPodAutoscaler"}
    for path, doc in objects:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises with the field path
    (_, deployment), = [(p, d) for p, d in objects if d["kind"] == "Deployment"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    folder = DEPLOY / "kubernetes" / "plain"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    listed = sorted(kustomization["resources"])
    assert listed == sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")


def without_key(arg: str) -> str:
    """A restricted-API flag without its secret value (compose and Kubernetes inject it differently)."""
    return arg.split("control-key=", 1)[0] if "restricted" in arg else arg


def test_deployment_probes_ports_and_model_volume(compose):
    """The Deployment agrees with itself and with compose: every named port a probe or the Service
    uses is declared, the server's flags are compose's, the volume the init container fills is the
    one Triton reads, writable so that a FIL repository loads."""
    objects = {d["kind"]: d for _, d in manifests(DEPLOY / "kubernetes" / "plain")}
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    assert triton["image"] == compose["services"]["triton"]["image"]
    assert set(map(without_key, compose["services"]["triton"]["command"][1:])) <= set(map(without_key, triton["args"][1:]))
    secret_refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in triton.get("env", []) if "valueFrom" in e}
    assert all(f"$({e['name']})" in " ".join(triton["args"]) for e in triton["env"]), "every variable is used"
    ports = {p["name"] for p in triton["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert triton[probe]["httpGet"]["port"] in ports, probe
    assert {p["targetPort"] for p in objects["Service"]["spec"]["ports"]} == ports
    (repository,) = [a.split("=", 1)[1] for a in triton["args"] if a.startswith("--model-repository=")]
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    assert not mounts[repository].get("readOnly", False), "a FIL repository cannot load from a read-only mount"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts[repository]["name"] in volumes
    (fetch,) = pod["initContainers"]
    (filled,) = [m for m in fetch["volumeMounts"] if m["name"] == mounts[repository]["name"]]
    assert filled["mountPath"] in " ".join(fetch["args"]) and "MODEL_REPOSITORY_URI" in " ".join(fetch["args"])
    config_maps = {r["configMapRef"]["name"] for r in fetch["envFrom"] if "configMapRef" in r}
    assert objects["ConfigMap"]["metadata"]["name"] in config_maps
    assert "MODEL_REPOSITORY_URI" in objects["ConfigMap"]["data"]
    assert secret_refs  # the control key comes from a Secret, not from the manifest
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objects["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": objects["Deployment"]["metadata"]["name"]}


def strict(schema):
    """A CRD schema as `kubectl apply` (strict field validation, the default since 1.27) reads it: an
    unknown field is an error, except under x-kubernetes-preserve-unknown-fields."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def kserve_validator():
    crd = yaml.load(KSERVE_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == "InferenceService"
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = strict(served["schema"]["openAPIV3Schema"])
    # apiVersion/kind/metadata are the API server's: pin them to what this CRD serves.
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/v1beta1"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    return jsonschema.Draft7Validator(schema)


def kserve_services() -> list[tuple[Path, dict]]:
    services = manifests(DEPLOY / "kubernetes" / "kserve")
    assert services
    return services


def test_kserve_inference_services_are_valid_against_kserves_crd(kserve_validator, compose):
    tag = compose["services"]["triton"]["image"].rsplit(":", 1)[1]
    for path, doc in kserve_services():
        errors = [f"{path.name} {e.json_path}: {e.message}" for e in kserve_validator.iter_errors(doc)]
        assert not errors, errors
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]},
                                     KUBERNETES_VERSION, strict=True)  # the metadata is valid ObjectMeta
        assert doc["spec"]["predictor"]["model"]["runtimeVersion"] == tag, "the same server as compose"
    doc = kserve_services()[0][1]
    for field, misspelt in ((("spec", "predictor"), "minReplica"), (("spec", "predictor", "model"), "storageUrl")):
        broken = json.loads(json.dumps(doc))
        parent = broken
        for key in field:
            parent = parent[key]
        parent[misspelt] = 1
        assert list(kserve_validator.iter_errors(broken)), f"the CRD must reject {misspelt}"


def test_kserve_grpc_route_documented_in_the_manifest_is_valid(kserve_validator):
    """The RawDeployment variant the manifest's header describes (gRPC 9000 declared as a second port)
    is a valid InferenceService too."""
    (path, doc), = [(p, d) for p, d in kserve_services() if p.name == "inferenceservice.yaml"]
    header = path.read_text().split("apiVersion:", 1)[0]
    assert "RawDeployment" in header and "9000" in header
    raw = json.loads(json.dumps(doc))
    raw["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    raw["spec"]["predictor"]["model"]["ports"] = [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                                  {"name": "grpc", "containerPort": 9000, "protocol": "TCP"}]
    raw["spec"]["predictor"]["scaleMetric"] = "cpu"
    errors = [f"{e.json_path}: {e.message}" for e in kserve_validator.iter_errors(raw)]
    assert not errors, errors


def test_kserve_model_control_agrees_with_the_readme():
    """KServe's Triton runtime starts without --model-control-mode: load/unload are refused. A control
    key would guard an API that is off, so the manifests carry none unless they turn explicit mode on,
    and the README says how a new version reaches KServe instead."""
    for path, doc in kserve_services():
        args = doc["spec"]["predictor"]["model"].get("args", [])
        explicit = "--model-control-mode=explicit" in args
        restricted = [a for a in args if "restricted" in a]
        assert explicit or not restricted, f"{path.name}: {restricted} guard a switched-off API"
    readme = (ROOT / "README.md").read_text()
    kserve = readme[readme.index("- **KServe**"):readme.index("- **Without KServe**")]
    assert "revision" in kserve and "models load" in kserve


def test_kserve_fil_service_mounts_its_repository_writable():
    """KServe mounts /mnt/models read-only unless storage.kserve.io/readonly is "false"
    (pkg/webhook/admission/pod/storage_initializer_injector.go); FIL needs it writable."""
    fil = []
    for path, doc in kserve_services():
        repository = ROOT / doc["spec"]["predictor"]["model"]["storageUri"].rstrip("/").rsplit("/", 1)[1]
        assert repository.is_dir(), f"{path.name}: storageUri names no repository of this project"
        if serves_fil(repository):
            fil.append(path.name)
            assert doc["metadata"]["annotations"].get("storage.kserve.io/readonly") == "false", path.name
            assert "nvidia.com/gpu" in doc["spec"]["predictor"]["model"]["resources"]["limits"], path.name
    assert fil, "one InferenceService serves the FIL repository"


# -- the GPU check script -------------------------------------------------------------------------

def test_gpu_check_script_is_valid_bash_and_refuses_bad_options():
    import subprocess

    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    helped = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "--mode triton" in helped.stdout
    bad = subprocess.run(["bash", str(script), "--batch-sizes", "lots"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--batch-sizes" in bad.stderr


def test_gpu_check_measures_the_cpu_baseline_and_its_error(tmp_path):
    """The CPU half runs here for real (one forest exported in both formats, ONNX Runtime timed, its
    predictions compared with sklearn's on the timed rows), with fractional seconds; the GPU half needs a GPU."""
    import subprocess

    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-only",
                             "--batch-sizes", "256,32", "--seconds", "0.2"],
                            capture_output=True, text=True, timeout=180, env={"PATH": "/usr/bin:/bin",
                                                                             "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    for line, batch in zip(lines, (256, 32)):
        match = re.fullmatch(rf"cpu onnxruntime-\d+-cores batch={batch} rows/s=(\d+) max_rel_err=(\S+)", line)
        assert match, line
        assert int(match.group(1)) > 0
        assert 0 <= float(match.group(2)) <= 1e-4, "ONNX Runtime predicts what sklearn does on the timed rows"
    assert not list(tmp_path.glob("rf-triton-gpu-check.*")), "the script removes its work folder"


def test_gpu_check_refuses_bad_seconds_and_missing_reference(tmp_path):
    import subprocess

    for seconds in ("0", "abc", "-1"):
        bad = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--seconds", seconds],
                             capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and bad.stderr.startswith("error: --seconds"), (seconds, bad.stderr)
    from rf_triton.benchmarks.gpu_check import app as gpu_check_app

    result = CliRunner().invoke(gpu_check_app, ["cpu", str(tmp_path)])
    assert result.exit_code == 1 and result.output.startswith("error: no reference rows"), result.output
