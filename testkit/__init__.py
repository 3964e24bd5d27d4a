"""Helpers shared by tests/ and bench/ (neither may import the other): unique topics, a real worker process,
known input records and the output audit. Development only: not part of the installed package."""
