"""How every memeguard process connects to Kafka: bootstrap servers plus TLS and SASL.

confluent-kafka clients (producer, tail, replay, alert, review, admin, probes) take `client_config(...)`;
the Faust worker (aiokafka) takes `faust_credentials()`. Both read the same MEMEGUARD_KAFKA_* variables,
so a cluster that needs SASL_SSL is configured once for all processes.
"""

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


class KafkaSecurity(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMEGUARD_KAFKA_", frozen=True, extra="ignore")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None  # CA bundle that signed the brokers' certificates (default: system CAs)
    ssl_certfile: Path | None = None  # client certificate, for brokers that require mutual TLS
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    # librdkafka's own log lines (every refused connect, a dozen lines per retry): off unless asked for
    # (`memeguard --verbose …` sets it); our one-sentence errors say what went wrong.
    client_logs: bool = False

    @model_validator(mode="after")
    def _complete(self) -> "KafkaSecurity":
        if self.sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"MEMEGUARD_KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs MEMEGUARD_KAFKA_SASL_USERNAME "
                "and MEMEGUARD_KAFKA_SASL_PASSWORD."
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("Set both MEMEGUARD_KAFKA_SSL_CERTFILE and MEMEGUARD_KAFKA_SSL_KEYFILE, or neither.")
        return self

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def librdkafka(self) -> dict[str, str]:
        """The librdkafka properties for these settings (empty for PLAINTEXT)."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        conf = {"security.protocol": self.security_protocol}
        if self.sasl:
            conf |= {"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username or "",
                     "sasl.password": _reveal(self.sasl_password) or ""}
        if self.tls:
            for key, path in (("ssl.ca.location", self.ssl_cafile), ("ssl.certificate.location", self.ssl_certfile),
                              ("ssl.key.location", self.ssl_keyfile)):
                if path is not None:
                    conf[key] = str(path)
            if self.ssl_key_password is not None:
                conf["ssl.key.password"] = _reveal(self.ssl_key_password)
        return conf

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                             cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.ssl_certfile is not None and self.ssl_keyfile is not None:
            context.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile),
                                    password=_reveal(self.ssl_key_password))
        return context

    def faust_credentials(self) -> Any:
        """`broker_credentials` for faust.App: None for PLAINTEXT, else SSL or SASL credentials."""
        import faust

        if self.security_protocol == "PLAINTEXT":
            return None
        context = self.ssl_context() if self.tls else None
        if self.sasl:
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=_reveal(self.sasl_password),
                ssl_context=context, mechanism=self.sasl_mechanism,
            )
        return faust.SSLCredentials(context)


def client_config(bootstrap: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """confluent-kafka configuration: the bootstrap servers, the security settings, then `extra`."""
    security = KafkaSecurity()
    quiet = {} if security.client_logs else {"log_level": 2}  # librdkafka: critical only (3 = error lines)
    return {"bootstrap.servers": bootstrap, **quiet, **security.librdkafka(), **(extra or {})}
