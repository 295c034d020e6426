"""The relay: TLS legs, plain TCP legs, inbound and outbound listeners, timeouts."""
