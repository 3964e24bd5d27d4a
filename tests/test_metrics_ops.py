"""ops/: the Grafana dashboard queries metrics that the processes really expose, and compose mounts ops/."""

import json
import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from consumer.alert.run import AlertMetrics
from consumer.ops.metrics import PipelineMetrics

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


def test_ops_server_serves_prometheus_client_exposition_and_the_probes():
    import httpx

    from consumer.ops.server import LIVENESS_PATH, READINESS_PATH, Health, OpsServer

    metrics = PipelineMetrics()
    metrics.events_in.inc(3)
    server = OpsServer(metrics, Health(bundle=lambda: "loading the model bundle"), 0, host="127.0.0.1").start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        plain = httpx.get(f"{base}/metrics")
        assert plain.status_code == 200 and "memeguard_events_in_total 3.0" in plain.text
        # prometheus_client's own app: content negotiation (OpenMetrics) and gzip come with it.
        open_metrics = httpx.get(f"{base}/metrics", headers={"Accept": "application/openmetrics-text"})
        assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
        assert open_metrics.text.rstrip().endswith("# EOF")
        gzipped = httpx.get(f"{base}/metrics", headers={"Accept-Encoding": "gzip"})
        assert gzipped.headers.get("content-encoding") == "gzip" and "memeguard_events_in_total" in gzipped.text
        assert httpx.get(f"{base}{LIVENESS_PATH}").json() == {"status": "starting"}
        ready = httpx.get(f"{base}{READINESS_PATH}")
        assert ready.status_code == 503 and ready.json()["checks"]["bundle"] == "loading the model bundle"
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.stop()
