"""What a connection core needs from the process, and nothing more: the configuration (replaced
on reload), the clocks (monotonic and wall), the counters, the observer (tracing) and the
key-log tap. The legs and cores take this leaf object instead of the whole `Relay`."""

from __future__ import annotations

import time
from collections.abc import Callable

from tlstrace.config import Config
from tlstrace.relay.hooks import ConnectionObserver, NullObserver
from tlstrace.relay.stats import RelayStats
from tlstrace.tls.keylog import KeyLogTap


class RelayContext:
    """Shared by every connection of one relay; its fields are replaced, never copied."""

    def __init__(
        self,
        config: Config,
        stats: RelayStats,
        *,
        observer: ConnectionObserver | None = None,
        keylog: KeyLogTap | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.stats = stats
        self.observer: ConnectionObserver = observer if observer is not None else NullObserver()
        #: collects session keys when keys are wanted (trace_keys, keylog_file)
        self.keylog = keylog
        #: seconds, monotonic: every deadline of the cores is on this clock
        self.clock = clock
        #: seconds since the epoch: trace timestamps and the end of a registration (shown)
        self.wall = wall
