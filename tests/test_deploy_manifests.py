"""The Helm chart (deploy/helm/memeguard) renders with the real `helm` binary, every manifest is valid against the
Kubernetes JSON schemas (kubernetes-validate, offline, strict: unknown fields fail) and the KEDA ScaledObject
against KEDA's CRD models (cloudcoil-models-keda); and what the manifests say matches the code: settings names,
the ops port and paths, the shutdown grace, the input topic's partitions."""

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from consumer.alert.rules import AlertConfig
from consumer.ops.server import LIVENESS_PATH, READINESS_PATH
from consumer.review.settings import ReviewSettings
from consumer.settings import AlertSettings, WorkerSettings

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "deploy" / "helm" / "memeguard"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a recent one.
KUBE_VERSIONS = ("1.27.0", "1.32.0")
NOT_SETTINGS = {"XDG_CACHE_HOME"}  # plain environment, not a MEMEGUARD_* setting


def helm() -> str:
    """scripts/install.sh builds the pinned Helm into .cache/tools/bin; a `helm` on PATH works too."""
    local = REPO / ".cache" / "tools" / "bin" / "helm"
    found = str(local) if local.exists() else shutil.which("helm")
    assert found, "no helm binary: run `make install` (scripts/install.sh builds it from its Go module)"
    return found


def render(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm(), "template", "mg", str(CHART), "--kube-version", KUBE_VERSIONS[-1], *args],
                          capture_output=True, text=True, timeout=60)


def manifests(*args: str) -> dict[str, dict]:
    done = render(*args)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    by_key = {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}
    assert len(by_key) == len(docs), "two manifests share a kind and name"
    return by_key


VARIANTS = {
    "cpu-defaults": [],
    "gpu-review": ["-f", str(CHART / "values-gpu.yaml"), "--set", "review.enabled=true",
                   "--set", "review.auth.usersSecret=review-users", "--set", "review.secretName=review-key"],
    "init-container-bundle-no-keda": ["--set", "worker.bundle.source=initContainer",
                                      "--set", "worker.bundle.initContainer.image=registry.example/bundle:1",
                                      "--set", "keda.enabled=false", "--set", "alert.enabled=false"],
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def rendered(request) -> tuple[str, dict[str, dict]]:
    return request.param, manifests(*VARIANTS[request.param])


def containers(docs: dict[str, dict], component: str) -> dict:
    deployment = docs[f"Deployment/mg-memeguard-{component}"]
    return deployment["spec"]["template"]["spec"]["containers"][0]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_chart_lints():
    done = subprocess.run([helm(), "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSIONS[0]],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_manifest_is_valid_against_the_kubernetes_and_keda_schemas(rendered):
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    _, docs = rendered
    for key, doc in docs.items():
        if doc["apiVersion"] == "keda.sh/v1alpha1":
            assert doc["kind"] == "ScaledObject", key
            model = ScaledObject.model_validate(doc)  # types and required fields from KEDA's CRD
            # The models ignore unknown fields: a round trip that loses one is a misspelt field.
            assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc, key
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_rejects_a_misspelt_field():
    """The check above can fail: strict validation refuses a field Kubernetes does not know."""
    docs = manifests()
    worker = docs["Deployment/mg-memeguard-worker"]
    worker["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBE_VERSIONS[-1], strict=True)


def test_worker_pod_matches_the_worker_settings_and_ops_server(rendered):
    name, docs = rendered
    pod = docs["Deployment/mg-memeguard-worker"]["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    env = env_of(worker)
    unknown = set(env) - NOT_SETTINGS - {f"MEMEGUARD_{f.upper()}" for f in WorkerSettings.model_fields}
    assert not unknown, f"the chart sets variables the worker does not read: {unknown}"
    settings = WorkerSettings(**{k.removeprefix("MEMEGUARD_").lower(): v for k, v in env.items() if k not in NOT_SETTINGS})
    assert worker["args"] == ["worker"]

    ops = {p["name"]: p["containerPort"] for p in worker["ports"]}["ops"]
    assert ops == settings.metrics_port > 0
    assert worker["livenessProbe"]["httpGet"] == {"path": LIVENESS_PATH, "port": "ops"}
    assert worker["startupProbe"]["httpGet"] == {"path": LIVENESS_PATH, "port": "ops"}
    assert worker["readinessProbe"]["httpGet"] == {"path": READINESS_PATH, "port": "ops"}

    # Kubernetes must not kill a batch the worker is still allowed to finish.
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_grace_s

    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    assert mounts[str(settings.bundle_path)]["readOnly"] is True
    engine_mount = next(m for path, m in mounts.items() if str(settings.trt_engine_cache_dir).startswith(path + "/"))
    assert not engine_mount.get("readOnly", False)
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    if name.startswith("init-container"):
        init = pod["initContainers"][0]
        assert init["image"] == "registry.example/bundle:1"
        assert {"name": "bundle", "mountPath": "/bundle"} in init["volumeMounts"]
        assert env["MEMEGUARD_WATCH_BUNDLE"] == "false"  # nothing changes an init container's copy


def test_chart_default_grace_is_the_worker_default_and_the_pod_waits_longer():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    default = WorkerSettings.model_fields["shutdown_grace_s"].default
    assert values["worker"]["shutdownGraceSeconds"] == default
    pod = manifests("--set-json", "worker.shutdownGraceSeconds=42.5")["Deployment/mg-memeguard-worker"]["spec"]["template"]
    assert pod["spec"]["terminationGracePeriodSeconds"] == 43 + values["worker"]["terminationGraceMarginSeconds"]


def test_gpu_variant_requests_a_gpu_on_gpu_nodes_and_cpu_variant_does_not():
    gpu = manifests("-f", str(CHART / "values-gpu.yaml"))["Deployment/mg-memeguard-worker"]["spec"]["template"]["spec"]
    container = gpu["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert env_of(container)["MEMEGUARD_PROVIDERS"] == "auto"
    assert "persistentVolumeClaim" in next(v for v in gpu["volumes"] if v["name"] == "engine-cache")

    cpu = manifests()["Deployment/mg-memeguard-worker"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(cpu)
    assert env_of(cpu["containers"][0])["MEMEGUARD_PROVIDERS"] == "cpu"


def test_keda_scales_the_worker_on_its_group_lag_up_to_the_input_partitions():
    docs = manifests()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    deployment = docs["Deployment/mg-memeguard-worker"]
    env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    scaled = docs["ScaledObject/mg-memeguard-worker"]["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mg-memeguard-worker"}
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == env["MEMEGUARD_KAFKA_BOOTSTRAP"]
    assert meta["consumerGroup"] == env["MEMEGUARD_GROUP_ID"]
    assert meta["topic"] == env["MEMEGUARD_INPUT_TOPIC"]
    assert int(meta["lagThreshold"]) == values["keda"]["lagThreshold"] > 0
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= values["kafka"]["inputPartitions"]

    assert manifests("--set", "keda.enabled=false")["Deployment/mg-memeguard-worker"]["spec"]["replicas"] == 2


def test_pdb_covers_the_worker_pods():
    docs = manifests()
    pdb = docs["PodDisruptionBudget/mg-memeguard-worker"]["spec"]
    labels = docs["Deployment/mg-memeguard-worker"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1


@pytest.mark.parametrize("args, message", [
    (["--set", "keda.maxReplicaCount=5"], "keda.maxReplicaCount (5) must not exceed kafka.inputPartitions (4)"),
    (["--set", "kafka.inputPartitions=2", "--set", "keda.maxReplicaCount=3"], "must not exceed kafka.inputPartitions (2)"),
    (["--set", "worker.terminationGracePeriodSeconds=20"], "must be longer than shutdownGraceSeconds (20)"),
    (["--set", "worker.variant=tpu"], "at '/worker/variant': value must be one of 'cpu', 'gpu'"),
    (["--set", "worker.bundle.source=initContainer"], "needs worker.bundle.initContainer.image"),
    (["--set", "review.enabled=true"], "review.enabled needs review.auth.usersSecret or review.auth.trustedHeader"),
    # values.schema.json: a misspelt key fails instead of being silently ignored
    (["--set", "worker.shutdownGraceSecond=3"], "additional properties 'shutdownGraceSecond' not allowed"),
    (["--set", "kafka.inputPartitions=0"], "/kafka/inputPartitions"),
])
def test_rendering_fails_on_values_that_cannot_work(args, message):
    done = render(*args)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_alerter_and_review_match_their_settings():
    docs = manifests(*VARIANTS["gpu-review"])
    alert = containers(docs, "alert")
    env = env_of(alert)
    assert set(env) <= {f"MEMEGUARD_{f.upper()}" for f in AlertSettings.model_fields}
    rules_path = Path(env["MEMEGUARD_ALERT_RULES_FILE"])
    mount = next(m for m in alert["volumeMounts"] if m["mountPath"] == str(rules_path.parent))
    config_map = docs["ConfigMap/mg-memeguard-alert-rules"]
    assert mount["readOnly"] and config_map["data"][rules_path.name]
    AlertConfig.model_validate(yaml.safe_load(config_map["data"][rules_path.name]))  # the rules the alerter loads
    assert alert["readinessProbe"]["httpGet"]["path"] == READINESS_PATH
    assert {p["name"]: p["containerPort"] for p in alert["ports"]}["ops"] == int(env["MEMEGUARD_METRICS_PORT"])

    review = containers(docs, "review")
    env = env_of(review)
    assert set(env) <= {f"MEMEGUARD_{f.upper()}" for f in ReviewSettings.model_fields}
    assert env["MEMEGUARD_REVIEW_HOST"] == "0.0.0.0" and env["MEMEGUARD_REVIEW_USERS_FILE"].endswith("users.json")
    secret_env = next(e for e in review["env"] if e["name"] == "MEMEGUARD_REVIEW_SECRET")
    assert secret_env["valueFrom"]["secretKeyRef"] == {"name": "review-key", "key": "secret"}
    service = docs["Service/mg-memeguard-review"]["spec"]
    assert service["ports"][0]["port"] == int(env["MEMEGUARD_REVIEW_PORT"])
