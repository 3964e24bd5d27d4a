"""Moved to testkit/audit.py (bench/ uses it too, and bench/ must not import tests/)."""

from testkit.audit import *  # noqa: F403
