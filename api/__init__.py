"""The REST API: tracing control, filters, connections, destinations, reload, health, metrics."""
