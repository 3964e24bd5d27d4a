"""Exporter errors: part of the project's one hierarchy, so CLIs print them as one clear sentence."""

from consumer.errors import MemeguardError


class ExportError(MemeguardError):
    """A run cannot be exported (missing files, unknown precision, an output already there)."""


class ParityError(ExportError):
    """The exported graph does not compute what the PyTorch model computes, within the limits."""
