"""Helpers for the fault-injection suite (tests/test_faults_*.py) and the streaming benchmarks."""
