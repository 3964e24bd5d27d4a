"""Settings of the worker process: one frozen object, resolved once at start-up from MEMEGUARD_* variables."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer import paths


class KafkaSettings(BaseSettings):
    """Shared by every process that talks to the broker."""

    model_config = SettingsConfigDict(env_prefix="MEMEGUARD_", frozen=True, extra="ignore")

    kafka_bootstrap: str = Field("127.0.0.1:19092", description="host:port[,host:port] of the Kafka brokers.")
    input_topic: str = "memes.raw"
    output_topic: str = "memes.verdicts"
    dlq_topic: str = "memes.dlq"
    control_topic: str = "memeguard.control"
    topic_partitions: int = Field(4, ge=1, description="Partitions for topics memeguard creates itself.")


class WorkerSettings(KafkaSettings):
    redis_url: str = Field("redis://127.0.0.1:16379/0", description="Verdict cache; empty string disables it.")
    group_id: str = Field("memeguard-worker", description="Consumer group (and Faust app id).")
    max_batch: int = Field(32, ge=1, le=1024)
    max_wait_s: float = Field(0.2, gt=0, description="Longest wait to fill a batch before running it.")
    bundle_path: Path = Field(default_factory=paths.default_bundle_dir)
    providers: str = Field("auto", description="auto | tensorrt | cuda | cpu")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads; 0 = one per core.")
    cache_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    redis_timeout_s: float = Field(0.25, gt=0, description="Per Redis call; slower counts as an outage.")
    redis_retry_after_s: float = Field(2.0, ge=0, description="After an outage, skip Redis this long.")
    max_event_bytes: int = Field(15 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    fetch_timeout_s: float = Field(3.0, gt=0)
    fetch_max_redirects: int = Field(3, ge=0)
    fetch_allowed_schemes: list[str] = Field(default_factory=lambda: ["base64", "file", "http", "https"])
    fetch_allowed_networks: list[str] = Field(
        default_factory=list, description="CIDRs exempt from private-address blocking, e.g. 127.0.0.1/32."
    )
    file_root: Path = Field(default_factory=paths.data_dir, description="file:// references must lie under it.")
    enrich_stages: list[str] = Field(
        default_factory=list, description='Optional stages, e.g. ["ocr","faces","objects","attributes","explainer"].'
    )
    enrich_options_file: Path | None = Field(None, description="YAML: per-stage options (see docs/enrichment.md).")
    explainer_url: str | None = Field(None, description="OpenAI-compatible base URL for the explainer stage.")
    explainer_model: str | None = None
    watch_bundle: bool = Field(True, description="Hot-reload the bundle when its path changes.")
    bundle_poll_s: float = Field(2.0, gt=0)
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    policy_file: Path | None = Field(None, description="YAML decision policy; built-in defaults otherwise.")
    ready_file: Path | None = Field(None, description="Touched once the worker is consuming (for scripts).")
    startup_timeout_s: float = Field(120.0, gt=0, description="How long to wait for the broker at start.")
    shutdown_grace_s: float = Field(20.0, gt=0, description="On SIGTERM, time to finish the in-flight batch.")
    log_format: Literal["json", "text"] = "json"
    log_level: str = "info"
    metrics_port: int = Field(0, ge=0, le=65535, description="/metrics, /healthz, /readyz port; 0 = off.")


class AlertSettings(KafkaSettings):
    """`memeguard alert`: reads MEMEGUARD_OUTPUT_TOPIC (verdicts)."""

    redis_url: str = Field("redis://127.0.0.1:16379/0", description="Alert windows and de-duplication.")
    alert_rules_file: Path | None = Field(None, description="YAML rules and webhook destinations.")
    alerts_topic: str = "memeguard.alerts"
    alerts_dlq_topic: str = Field("memeguard.alerts.dlq", description="Alerts a webhook never accepted.")
    alert_group_id: str = Field("memeguard-alert", description="Group whose committed offsets the alerter keeps.")
    alert_dedup_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="How long a post+rule alert is remembered.")
    metrics_port: int = Field(0, ge=0, le=65535)
    startup_timeout_s: float = Field(120.0, gt=0)
    log_format: Literal["json", "text"] = "json"
    log_level: str = "info"


class ReviewSettings(WorkerSettings):
    """`memeguard review`: the worker's fetch policy (file root, allowed networks) applies to images too."""

    reviews_topic: str = Field("memes.reviews", description="Moderator decisions (labelled data).")
    review_group_id: str = Field("memeguard-review", description="Group whose committed offsets the page keeps.")
    review_host: str = "127.0.0.1"
    review_port: int = Field(8080, ge=1, le=65535)
