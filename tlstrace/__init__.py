"""tlstrace: a TLS observability sidecar for SIP servers."""

__version__ = "0.1.0"
