"""Moved to testkit/records.py (bench/ uses it too, and bench/ must not import tests/)."""

from testkit.records import *  # noqa: F403
