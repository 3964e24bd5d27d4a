"""`memeguard review`: the moderator review page."""
