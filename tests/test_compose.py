"""docker-compose.yml parses, and what it names matches the settings class and the CLI."""

from pathlib import Path

import yaml

from consumer.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]


def test_compose_services_and_worker_environment_match_settings():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "worker", "kafka-topics"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert services["redis"]["image"].startswith("redis:7")
    worker = services["worker"]
    fields = {f"MEMEGUARD_{name.upper()}" for name in WorkerSettings.model_fields}
    unknown = set(worker["environment"]) - fields
    assert not unknown, f"compose sets variables the worker does not read: {unknown}"
    s = WorkerSettings(**{k.removeprefix("MEMEGUARD_").lower(): v for k, v in worker["environment"].items()})
    assert s.kafka_bootstrap == "kafka:9092" and str(s.bundle_path) == "/bundle"
    assert any(v.endswith(":/bundle:ro") for v in worker["volumes"]), "bundle must be mounted read-only"
    gpu = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for name in ("kafka", "redis", "worker"):
        assert "healthcheck" in services[name], name
    topics_cmd = services["kafka-topics"]["command"][0]
    defaults = WorkerSettings()
    for topic in (defaults.input_topic, defaults.output_topic, defaults.dlq_topic):
        assert topic in topics_cmd
