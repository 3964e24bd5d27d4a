"""ops/: the Grafana dashboard queries metrics that the processes really expose, and compose mounts ops/."""

import json
import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from consumer.alert.run import AlertMetrics
from consumer.metrics import PipelineMetrics

REPO = Path(__file__).resolve().parents[1]


def exposed_names() -> set[str]:
    m = PipelineMetrics()
    # Label values make every family show up in the exposition, histograms included.
    m.verdicts_out.labels(decision="allow").inc()
    m.dead_letters.labels(kind="invalid_json").inc()
    m.stage_seconds.labels(stage="infer").observe(0.1)
    m.set_model("v", "n", "1", "CPUExecutionProvider", "fp32")
    m.watch_counts("memeguard_cache_ops", "cache", "result", lambda: {"hits": 1})
    m.watch_lag(lambda: {("t", 0): 3})
    a = AlertMetrics()
    a.alerts.labels(rule="r").inc()
    a.deliveries.labels(destination="d", result="delivered").inc()
    text = generate_latest(m.registry).decode() + generate_latest(a.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_dashboard_queries_only_exposed_metrics():
    dashboard = json.loads((REPO / "ops" / "grafana" / "dashboards" / "memeguard.json").read_text())
    used = {name for p in dashboard["panels"] for t in p["targets"] for name in re.findall(r"memeguard_\w+", t["expr"])}
    missing = used - exposed_names()
    assert used and not missing, f"dashboard queries metrics nobody exposes: {sorted(missing)}"


def test_compose_runs_prometheus_and_grafana_from_ops():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    mounts = compose["prometheus"]["volumes"] + compose["grafana"]["volumes"]
    for mount in mounts:
        assert (REPO / mount.split(":")[0]).exists(), mount
    scrape = yaml.safe_load((REPO / "ops" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert f"worker:{compose['worker']['environment']['MEMEGUARD_METRICS_PORT']}" in targets
