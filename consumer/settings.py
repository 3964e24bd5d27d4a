"""Settings of memeguard's processes: one frozen object per process, resolved once at start-up from MEMEGUARD_*
variables. Grouped by concern: the broker (KafkaSettings), image fetching (FetchSettings), decoding
(DecodeSettings), the verdict cache (CacheSettings) and the model runtime (RuntimeSettings); a program's settings
compose the groups it needs (WorkerSettings all of them, the review page's consumer/review/settings.py four), and
code that needs one group is typed by it (in core/, which imports no settings, by its Protocol:
core/settings_groups.py). The variable names are the field names: grouping changes none."""

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from consumer import paths


def _env_list(value: object) -> object:
    """A list setting from the environment: JSON (`["a","b"]`) or comma-separated (`a,b`); empty means []."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)  # a JSONDecodeError is a ValueError: reported as an invalid setting
    return [part.strip() for part in text.split(",") if part.strip()]


# NoDecode: pydantic-settings would otherwise insist on JSON for list fields before any validator runs.
EnvList = Annotated[list[str], NoDecode, BeforeValidator(_env_list)]

# Every settings class, and each group a program composes, reads MEMEGUARD_<FIELD> and is frozen.
SETTINGS_CONFIG = SettingsConfigDict(env_prefix="MEMEGUARD_", frozen=True, extra="ignore")


class KafkaSettings(BaseSettings):
    """Shared by every process that talks to the broker."""

    model_config = SETTINGS_CONFIG

    kafka_bootstrap: str = Field("127.0.0.1:19092", description="host:port[,host:port] of the Kafka brokers.")
    input_topic: str = "memes.raw"
    output_topic: str = "memes.verdicts"
    dlq_topic: str = "memes.dlq"
    control_topic: str = "memeguard.control"
    status_topic: str | None = Field(
        None, description="Where workers report the fleet revision and model they serve; default <control_topic>.status.")
    control_key: SecretStr | None = Field(
        None, description="HMAC key of control commands: rollout/rollback/promote sign with it, workers refuse "
                          "what it does not verify. Unset: unsigned commands only on a loopback (dev) broker.")
    review_signing_key: SecretStr | None = Field(
        None, description="HMAC key of moderator reviews: the review page signs with it, `dataset build` uses only "
                          "what it verifies. Unset: unsigned reviews only on a loopback (dev) broker.")
    topic_partitions: int = Field(4, ge=1, description="Partitions for topics memeguard creates itself.")
    topic_replication_factor: int = Field(-1, ge=-1, description="For topics memeguard creates; -1 = broker default.")
    create_topics: Literal["auto", "always", "never"] = Field(
        "auto", description="Create missing topics: auto = only on a loopback (development) broker.")
    connect_timeout_s: float = Field(
        15.0, gt=0, description="How long one-shot commands (produce, tail, replay, rollout, dataset, shadow, "
                                "compare, promote) wait for the broker before one clear error.")

    @field_validator("control_key", "review_signing_key", mode="before")
    @classmethod
    def _control_key(cls, value: object, info: ValidationInfo) -> object:
        if value == "":
            return None
        if isinstance(value, str) and len(value.encode()) < 16:
            raise ValueError(f"MEMEGUARD_{str(info.field_name).upper()} must be at least 16 bytes "
                             "(e.g. `openssl rand -hex 32`)")
        return value


class FetchSettings(BaseSettings):
    """Where an image may be fetched from and how much of it (consumer/core/fetch.py: FetchPolicy)."""

    model_config = SETTINGS_CONFIG

    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    fetch_timeout_s: float = Field(3.0, gt=0)
    fetch_max_redirects: int = Field(3, ge=0)
    fetch_allowed_schemes: EnvList = Field(default_factory=lambda: ["base64", "file", "http", "https"])
    fetch_allowed_networks: EnvList = Field(
        default_factory=list, description="CIDRs exempt from private-address blocking, e.g. 127.0.0.1/32."
    )
    fetch_concurrency: int = Field(16, ge=1, description="file:// and http(s) image fetches at once.")
    file_root: Path = Field(default_factory=paths.data_dir, description="file:// references must lie under it.")


class DecodeSettings(BaseSettings):
    """Which images are decoded and the bounds in size, time and memory of a decode (consumer/core/images.py:
    DecodePolicy)."""

    model_config = SETTINGS_CONFIG

    max_image_pixels: int = Field(40_000_000, ge=1)
    image_formats: Annotated[list[Literal["JPEG", "PNG", "WEBP", "GIF"]], NoDecode, BeforeValidator(_env_list)] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF"],
        description="Image formats decoded (by content); anything else is image_undecodable.")
    decode_concurrency: int = Field(4, ge=1, description="Image decodes running at once (threads).")
    batch_pixel_budget: int = Field(
        64_000_000, ge=1, description="Decoded pixels in flight at once; a batch over it decodes in waves.")
    reduced_decode: bool = Field(
        True, description="Decode JPEG at the smallest DCT scale >= the model's input (else >= 2x); see images.py.")
    jpeg_scan_subset: bool = Field(
        True, description="At 1/8 scale, decode a progressive JPEG from only the scans that scale reads (same "
                          "pixels); see consumer/core/jpeg_scans.py.")
    jpeg_max_scans: int = Field(
        100, ge=1, description="A JPEG with more scans (SOS segments) is image_undecodable before it is decoded: "
                               "each scan walks the whole frame (a normal file has at most about 10).")
    decode_deadline_ms: int = Field(
        5000, ge=1, description="CPU time one image decode may take; past it the decode stops and the record is "
                                "image_undecodable (worker, review page, dataset build).")


class CacheSettings(BaseSettings):
    """The Redis the worker caches verdicts in (the review page keeps its queue there)."""

    model_config = SETTINGS_CONFIG

    redis_url: str = Field("redis://127.0.0.1:16379/0", description="Verdict cache; empty string disables it.")
    cache_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    redis_timeout_s: float = Field(0.25, gt=0, description="Per Redis call; slower counts as an outage.")
    redis_retry_after_s: float = Field(2.0, ge=0, description="After an outage, skip Redis this long.")


class RuntimeSettings(BaseSettings):
    """The model bundle and how it runs: ONNX Runtime's providers and threads, the process's heap."""

    model_config = SETTINGS_CONFIG

    bundle_path: Path = Field(default_factory=paths.default_bundle_dir)
    providers: str = Field("auto", description="auto | tensorrt | cuda | cpu")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads; 0 = one per core.")
    trt_engine_cache_dir: Path | None = Field(
        None, description="Writable directory for TensorRT engines (a volume in containers); default: next to "
                          "the bundle when writable, else ~/.cache/memeguard/trt.")
    malloc_mmap_threshold_bytes: int = Field(
        1024 * 1024, ge=0, description="glibc: blocks this large are mmapped and unmapped on free (0: glibc's "
                                       "dynamic threshold); see consumer/core/malloc.py.")
    malloc_arena_max: int = Field(2, ge=0, description="glibc: malloc arenas at most (0: glibc's 8 per core).")


class WorkerSettings(KafkaSettings, FetchSettings, DecodeSettings, CacheSettings, RuntimeSettings):
    """`memeguard worker`: the groups above, and the engine's and the loop's own settings."""

    group_id: str = Field("memeguard-worker", description="Consumer group (and Faust app id).")
    max_batch: int = Field(32, ge=1, le=1024)
    max_wait_s: float = Field(
        0.05, gt=0, description="Longest wait to fill a batch before running it. Under load batches fill before it "
                                "(and the next one is taken while one is in inference): it only adds latency.")
    producer_linger_ms: float = Field(
        5.0, ge=0, description="librdkafka linger for verdicts and dead letters: a batch's outputs share requests.")
    delivery_timeout_s: float = Field(
        15.0, ge=1, le=300, description="How long the broker may take to acknowledge an output (librdkafka "
                                        "message.timeout.ms). Past it the batch stays uncommitted and the worker "
                                        "exits 75: an outage is never blamed on a record.")
    pipeline_depth: int = Field(
        2, ge=1, le=8, description="Batches in flight at once: the next is fetched, looked up and decoded while "
                                   "one is in inference (1 = one batch at a time). Outputs and commits stay in order.")
    max_event_bytes: int = Field(15 * 1024 * 1024, ge=1024)
    enrich_stages: EnvList = Field(
        default_factory=list, description='Optional stages, e.g. ocr,faces,objects,attributes,explainer (or JSON).'
    )
    enrich_options_file: Path | None = Field(None, description="YAML: per-stage options (see docs/enrichment.md).")
    explainer_url: str | None = Field(None, description="OpenAI-compatible base URL for the explainer stage.")
    explainer_model: str | None = None
    explanations_topic: str = Field("memes.explanations", description="Explainer output, after the verdict.")
    crash_loop_breaker: bool = Field(True, description="Dead-letter a record the worker exited on twice (Redis).")
    restart_backoff_s: float = Field(5.0, ge=0, description="Pause before exiting on an infrastructure failure.")
    watch_bundle: bool = Field(True, description="Hot-reload the bundle when its path changes.")
    bundle_poll_s: float = Field(2.0, gt=0)
    worker_id: str | None = Field(None, description="Name in `memeguard rollout`'s table; default host-pid.")
    fleet_heartbeat_s: float = Field(15.0, gt=0, description="How often a worker re-reports its status.")
    guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once", description="exactly_once: each batch's outputs and input offsets in one Kafka transaction "
                                     "(the confluent engine, one batch at a time).")
    processing_guarantee: Literal["at_least_once", "exactly_once"] | None = Field(
        None, description="The former name of MEMEGUARD_GUARANTEE, still accepted for one release.")
    worker_engine: Literal["confluent", "faust"] = Field(
        "confluent", description="The confluent-kafka loop (either guarantee), or the Faust agent (at_least_once).")
    instance_id: str | None = Field(
        None, description="exactly_once: this worker's stable identity (transactional.id = {group_id}-{instance_id}); "
                          "unique per live worker, kept across its restarts. Default: the host name.")
    policy_file: Path | None = Field(None, description="YAML decision policy; built-in defaults otherwise.")
    ready_file: Path | None = Field(None, description="Touched once the worker is consuming (for scripts).")
    startup_timeout_s: float = Field(120.0, gt=0, description="How long to wait for the broker at start.")
    shutdown_grace_s: float = Field(20.0, gt=0, description="On SIGTERM, time to finish the in-flight batch.")
    log_format: Literal["json", "text"] = "json"
    log_level: str = "info"
    metrics_port: int = Field(0, ge=0, le=65535, description="/metrics, /healthz, /readyz port; 0 = off.")

    @model_validator(mode="before")
    @classmethod
    def _former_guarantee_name(cls, data: object) -> object:
        """MEMEGUARD_PROCESSING_GUARANTEE, the former name of MEMEGUARD_GUARANTEE, still sets it (one release)."""
        if isinstance(data, dict) and data.get("processing_guarantee") not in (None, ""):
            former, current = data["processing_guarantee"], data.get("guarantee")
            if current not in (None, "", former):
                raise ValueError(f"MEMEGUARD_GUARANTEE={current} and MEMEGUARD_PROCESSING_GUARANTEE={former} disagree: "
                                 "set only MEMEGUARD_GUARANTEE (the other is its former name)")
            data = {**data, "guarantee": former}
        return data

    @model_validator(mode="after")
    def _possible_guarantee(self) -> "WorkerSettings":
        """Combinations that cannot run are refused at start, in one sentence, rather than silently changed."""
        if self.guarantee == "exactly_once" and self.worker_engine == "faust":
            raise ValueError("MEMEGUARD_GUARANTEE=exactly_once runs only on MEMEGUARD_WORKER_ENGINE=confluent (the "
                             "Faust agent is at-least-once): unset MEMEGUARD_WORKER_ENGINE or the guarantee")
        if self.guarantee == "exactly_once" and "pipeline_depth" in self.model_fields_set and self.pipeline_depth > 1:
            raise ValueError(f"MEMEGUARD_PIPELINE_DEPTH={self.pipeline_depth} cannot apply under MEMEGUARD_GUARANTEE="
                             "exactly_once, which runs one batch (one transaction) at a time: unset it or set it to 1")
        return self


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
