"""Configuration: one typed model (`model`) read from TOML and flags (`load`)."""

from tlstrace.config.endpoint import Endpoint, parse_endpoint
from tlstrace.config.load import ConfigError, Overrides, load_config
from tlstrace.config.model import ClientDomain, Config, Listener, ServerDomain

__all__ = [
    "ClientDomain",
    "Config",
    "ConfigError",
    "Endpoint",
    "Listener",
    "Overrides",
    "ServerDomain",
    "load_config",
    "parse_endpoint",
]
