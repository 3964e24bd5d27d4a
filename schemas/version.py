"""Version of the wire contracts. Bump the major part on any incompatible change."""

SCHEMA_VERSION = "1.0"
