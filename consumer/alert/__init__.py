"""`memeguard alert`: rules over verdicts, alerts to a topic and webhooks."""
