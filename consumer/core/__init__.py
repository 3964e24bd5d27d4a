"""The worker core: parse, hash, cache, fetch and decode, batched inference, decision policy, publish."""
