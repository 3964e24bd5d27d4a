"""Structured logging: one JSON object per line in the service (python-json-logger), plain text for terminals."""

import logging
import logging.config
from datetime import UTC, datetime

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter


class JsonFormatter(_JsonFormatter):
    """`{"ts", "level", "logger", "msg", ...the record's extras, "exc"}`: the field names the dashboards and log
    queries use. Values JSON cannot hold (paths, exceptions) are written as their str()."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s %(message)s", json_default=str,
                         rename_fields={"levelname": "level", "name": "logger", "message": "msg", "exc_info": "exc"})

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        log_data["ts"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)
        log_data["level"] = record.levelname.lower()


# Attributes every LogRecord has: anything else on a record came from `extra=` and is part of the message.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class TextFormatter(logging.Formatter):
    """`MEMEGUARD_LOG_FORMAT=text`: the line, then the record's extras as `key=value` (a dead letter's
    event_id, error_kind and message are extras: without them the line says only "dead letter")."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        if not extras:
            return line
        head, sep, rest = line.partition("\n")  # a traceback stays below the line
        pairs = " ".join(f"{k}={v!r}" if isinstance(v, str) and (" " in v or not v) else f"{k}={v}"
                         for k, v in extras.items())
        return f"{head} {pairs}{sep}{rest}"


LEVELS = ("debug", "info", "warning", "error", "critical")


def check_log_level(level: str) -> str:
    """MEMEGUARD_LOG_LEVEL as logging takes it; anything else is one sentence, not dictConfig's traceback."""
    from consumer.errors import ConfigError

    name = str(level).strip().lower()
    if name == "warn":
        name = "warning"
    if name not in LEVELS:
        raise ConfigError(f"MEMEGUARD_LOG_LEVEL {level!r} is not a log level: use one of {', '.join(LEVELS)}.")
    return name


def logging_config(fmt: str, level: str) -> dict:
    level = check_log_level(level)
    formatter = {"()": JsonFormatter} if fmt == "json" else {"()": TextFormatter}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        # Faust and aiokafka are chatty at info; their warnings still come through.
        "loggers": {name: {"level": "WARNING"} for name in ("faust", "aiokafka", "mode", "kafka", "httpx", "httpcore")},
    }


def configure_logging(fmt: str = "text", level: str = "info") -> None:
    logging.config.dictConfig(logging_config(fmt, level))
