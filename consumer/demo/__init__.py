"""`memeguard demo` and `memeguard produce`: the end-to-end demo and the event producer."""
