"""Settings of `memeguard review`: the groups of consumer/settings.py it needs (the broker, Redis, and the
worker's fetch and decode policies, which apply to the page's images too) and the page's own. Here rather than
in consumer/settings.py because checking them needs the page's user list rules (consumer/review/auth.py):
consumer/settings.py imports no program of consumer/."""

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from consumer.review.auth import TRUSTED_HEADER_WITH_PASSWORDS, load_users
from consumer.settings import CacheSettings, DecodeSettings, EnvList, FetchSettings, KafkaSettings


class ReviewSettings(KafkaSettings, CacheSettings, FetchSettings, DecodeSettings):
    """`memeguard review`: the worker's fetch and decode policies (file root, allowed networks, image bounds)
    apply to the page's images too; redis_url is where the page keeps its queue."""

    reviews_topic: str = Field("memes.reviews", description="Moderator decisions (labelled data).")
    review_group_id: str = Field("memeguard-review", description="Group whose committed offsets the page keeps.")
    review_host: str = "127.0.0.1"
    review_port: int = Field(8080, ge=1, le=65535)
    # Who may decide (docs/operations.md): at least one of users / users file / trusted header, or the dev flag.
    review_users: dict[str, str] = Field(
        default_factory=dict, description="JSON map user -> scrypt hash (memeguard hash-password USER)."
    )
    review_users_file: Path | None = Field(None, description="JSON file of the same map (merged; the file wins).")
    review_trusted_header: str | None = Field(
        None, description="Header an authenticating proxy sets to the user name, e.g. X-Forwarded-User."
    )
    review_dev_no_auth: bool = Field(False, description="Development only: no authentication, a banner says so.")
    review_secret: SecretStr | None = Field(
        None, description="Key for session cookies and CSRF tokens; random per process when unset."
    )
    review_session_ttl_s: int = Field(8 * 3600, ge=60, description="How long a sign-in lasts.")
    review_trusted_proxies: EnvList = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Addresses or CIDRs the trusted header is accepted from (the proxy's); from any other, ignored.")
    # Sign-in throttling (per process): failures counted per client address and per user name over a window.
    review_login_failures_per_user: int = Field(
        10, ge=1, description="Failed sign-ins for one user name within the window before it gets 429.")
    review_login_failures_per_address: int = Field(
        50, ge=1, description="Failed sign-ins from one client address within the window before it gets 429.")
    review_login_window_s: int = Field(900, ge=1, description="The window those failures are counted over.")
    review_password_checks: int = Field(
        2, ge=1, le=64, description="scrypt checks running at once; up to 4x as many wait, more get 503.")
    review_memory_budget_bytes: int = Field(
        256 * 1024 * 1024, ge=1024 * 1024, description="Bytes of Redis the review store may fill (references, "
        "waiting verdicts, cards); over it the ingest pauses, uncommitted, until TTLs free space.")
    startup_timeout_s: float = Field(120.0, gt=0, description="How long to wait for the broker at start.")
    log_format: Literal["json", "text"] = "json"
    log_level: str = "info"

    @field_validator("review_trusted_header", "review_users_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _review_auth(self) -> "ReviewSettings":
        users = load_users(self.review_users, self.review_users_file)  # ValueError: one line in the CLI
        header = self.review_trusted_header
        if header is not None and not (header.strip() and header.replace("-", "").isalnum()):
            raise ValueError(f"MEMEGUARD_REVIEW_TRUSTED_HEADER {header!r} is not a header name")
        if users and header:
            raise ValueError(TRUSTED_HEADER_WITH_PASSWORDS)
        for proxy in self.review_trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"MEMEGUARD_REVIEW_TRUSTED_PROXIES entry {proxy!r} is not an IP address or "
                                 "CIDR") from None
        if self.review_dev_no_auth and (users or header):
            raise ValueError("MEMEGUARD_REVIEW_DEV_NO_AUTH=true cannot be combined with review users or a trusted "
                             "header: unset one of them")
        if not (users or header or self.review_dev_no_auth):
            raise ValueError("the review page refuses to start without authentication: set MEMEGUARD_REVIEW_USERS "
                             "(or MEMEGUARD_REVIEW_USERS_FILE, or MEMEGUARD_REVIEW_TRUSTED_HEADER behind an auth proxy), "
                             "or MEMEGUARD_REVIEW_DEV_NO_AUTH=true for local development")
        return self
