"""Typed errors of the training side; every message names the input and what to do."""

from consumer.errors import MemeguardError


class ModelsError(MemeguardError):
    """Root of every error raised by `models/`: a branch of the project's one hierarchy (consumer.errors), so every
    CLI catches MemeguardError alone. (models/ may import consumer/; the reverse never happens.)"""


class ConfigError(ModelsError):
    """A config file is missing, malformed or asks for something that does not exist."""


class DataError(ModelsError):
    """A dataset file is missing or malformed."""


class WeightsUnavailableError(ModelsError):
    """Pretrained weights are neither on disk nor downloadable (offline)."""


class NotExportableError(ModelsError):
    """The run is not a neural network (e.g. TF-IDF + SVM) and cannot become an ONNX graph."""


class RunError(ModelsError):
    """A run folder is missing files or was written by an incompatible version."""
