"""Tracing to HEP: SIP messages, TLS connection events, per-call TLS session records, keys."""
