"""Kafka plumbing shared by the programs: client configuration, topic creation, reading output topics."""
