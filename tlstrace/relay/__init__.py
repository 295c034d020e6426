"""The relay: TLS legs, plain TCP legs, inbound and outbound listeners, timeouts.

Layers, each importing only those below it:

- `context.py` (RelayContext: configuration, clock, counters, observer, key-log tap) and
  `host.py` (the Protocols of what the legs need from the relay that owns them);
- sans-IO cores: `leg_state.py` (timeouts, backpressure state), `core.py` (TlsCore: a
  tls/session.TlsSession with a framer, the limits, counting, tracing calls), `plain_core.py`;
- asyncio adapters that move bytes and call the clock: `leg.py`, `tls_leg.py`,
  `plain_leg.py`, `client_tls.py`, `inbound.py` (listeners, backend connect), `outbound.py`
  (the pool of peer connections and the routing of what peers send);
- `runtime.py` (Relay: implements host.RelayHost; the registry of live legs) and
  `sweeper.py` (one pass over all legs about once a second for the timeouts).
"""
