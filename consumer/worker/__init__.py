"""The worker program around the core: Faust agent, exactly-once loop, hot reload, control topic, crash guard."""
