"""One error hierarchy for the service. Messages name the input and what to do."""

from schemas import ErrorKind


class MemeguardError(Exception):
    """Root of every error memeguard raises on purpose."""


class ConfigError(MemeguardError):
    """A setting or a file the user pointed at is unusable."""


class BundleError(MemeguardError):
    """A model bundle is missing, incomplete, tampered with or not loadable."""


class InputError(MemeguardError):
    """One input record cannot be turned into a verdict; it becomes a dead letter of `kind`."""

    kind: ErrorKind = ErrorKind.SCHEMA_VIOLATION

    def __init__(self, message: str, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
