"""Prometheus metrics (prefix `tlstrace_`), built at scrape time from the counters the control
seam gives (`tlstrace.control.Counters`, plain integers the relay keeps), so nothing
Prometheus-related runs on the message path. The collector takes a `Control` and nothing else
from the process."""

from __future__ import annotations

import platform
import ssl
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tlstrace import __version__
from tlstrace.control import Control, Counters, Histogram

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "families"]


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    return [(("+Inf" if b == float("inf") else repr(b)), n) for b, n in h.cumulative()]


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=_buckets(h), sum_value=h.sum)


def _counter(
    name: str, doc: str, labels: list[str], items: Iterable[tuple[tuple[str, ...], float]]
) -> CounterMetricFamily:
    m = CounterMetricFamily(name, doc, labels=labels)
    for values, n in items:
        m.add_metric(list(values), n)
    return m


def _trunk(c: Counters) -> Iterator[Metric]:
    """Routing of what tcp: listeners' peers send to the local connections."""
    yield _counter(
        "tlstrace_trunk_routed_total",
        "SIP messages from tcp: listeners' peers, by how their local connection was found",
        ["by"],
        (((k,), n) for k, n in c.stats.trunk_routed.items()),
    )
    entries = GaugeMetricFamily(
        "tlstrace_trunk_table_entries",
        "Transactions and dialogs remembered for tcp: listeners",
        labels=["table"],
    )
    for name, (n, _) in c.trunk_tables.items():
        entries.add_metric([name], n)
    yield entries
    yield _counter(
        "tlstrace_trunk_table_evictions_total",
        "Entries pushed out of a full transaction or dialog table before they expired",
        ["table"],
        (((k,), ev) for k, (_, ev) in c.trunk_tables.items()),
    )


def families(c: Counters) -> Iterator[Metric]:
    """The tlstrace_ families, from the counters of one moment."""
    st = c.stats
    info = InfoMetricFamily("tlstrace_build", "tlstrace version and what it runs on")
    info.add_metric(
        [],
        {
            "version": __version__,
            "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION,
        },
    )
    yield info

    open_ = GaugeMetricFamily(
        "tlstrace_connections_open", "Open TLS connections", labels=["listener", "direction"]
    )
    for (listener, direction), n in c.open_connections.items():
        open_.add_metric([listener, direction], n)
    yield open_
    listeners = GaugeMetricFamily(
        "tlstrace_listener_info",
        "1 for each listener, with its transport (its scheme: tls, wss, ws or tcp); join on "
        "listener to give any series a transport label",
        labels=["listener", "transport"],
    )
    for listener in dict.fromkeys(lst for lst, _ in c.open_connections):
        listeners.add_metric([listener, listener.partition(":")[0]], 1)
    yield listeners
    yield _counter(
        "tlstrace_ws_refused_total",
        "WebSocket connections refused (an HTTP status to the Upgrade, or a close code), by reason",
        ["listener", "transport", "reason"],
        (
            ((lst, lst.partition(":")[0], reason), n)
            for (lst, reason), n in list(st.ws_refused.items())
        ),
    )
    yield _counter(
        "tlstrace_connections_accepted_total",
        "TLS connections accepted from clients",
        ["listener"],
        (((k,), n) for k, n in st.accepted.items()),
    )
    yield _counter(
        "tlstrace_connections_refused_total",
        "Connections refused because tcp_max_connections was reached",
        ["listener"],
        (((k,), n) for k, n in st.refused.items()),
    )
    yield _counter(
        "tlstrace_connections_rate_limited_total",
        "Connections refused at accept because their source address was over "
        "handshake_rate_per_source",
        ["listener"],
        (((k,), n) for k, n in st.rate_limited.items()),
    )
    yield _counter(
        "tlstrace_connections_opened_total",
        "TLS connections opened to peers and TLS backends",
        ["listener"],
        (((k,), n) for k, n in st.outbound_opened.items()),
    )
    yield _counter(
        "tlstrace_connections_closed_total",
        "TLS connections closed, by reason",
        ["listener", "reason"],
        st.closed.items(),
    )
    yield _counter(
        "tlstrace_handshakes_total",
        "TLS handshakes by direction, result, version and cipher (a failed "
        'handshake negotiated neither: "none")',
        ["listener", "direction", "result", "version", "cipher"],
        st.handshakes.items(),
    )
    yield _counter(
        "tlstrace_handshake_failures_total",
        "Failed TLS handshakes by reason",
        ["listener", "direction", "reason"],
        st.handshake_failures.items(),
    )
    duration = HistogramMetricFamily(
        "tlstrace_handshake_duration_seconds",
        "Time from the first byte to the end of a successful handshake",
        labels=["listener", "direction"],
    )
    for (listener, direction), h in list(st.handshake_seconds.items()):
        duration.add_metric([listener, direction], _buckets(h), sum_value=h.sum)
    yield duration
    yield _counter(
        "tlstrace_sip_messages_total",
        "SIP messages relayed, by direction and method or status class",
        ["listener", "direction", "kind"],
        (
            ((lst, d, k), n)
            for (lst, d), kinds in list(st.messages.items())
            for k, n in kinds.items()
        ),
    )
    yield _counter(
        "tlstrace_bytes_total",
        "SIP bytes relayed on TLS legs",
        ["listener", "direction"],
        c.bytes_relayed.items(),
    )
    yield _histogram(
        "tlstrace_relay_latency_seconds",
        "From a read that completed messages to their write on the other leg "
        "(one relay operation in four is sampled)",
        st.relay_seconds,
    )
    yield _counter(
        "tlstrace_framing_errors_total",
        "Connections closed for breaking SIP stream framing, by kind",
        ["kind"],
        (((k,), n) for k, n in st.framing_errors.items()),
    )
    yield _counter(
        "tlstrace_keepalives_total",
        "CRLF keep-alives, by what was done",
        ["kind"],
        (((k,), n) for k, n in st.keepalives.items()),
    )
    yield _counter(
        "tlstrace_messages_dropped_total",
        "SIP messages that could not be relayed, by reason",
        ["reason"],
        (((k,), n) for k, n in st.dropped_messages.items()),
    )
    yield _counter(
        "tlstrace_bytes_dropped_total",
        "Bytes written for a peer that stopped reading, discarded when it was disconnected",
        ["reason"],
        (((k,), n) for k, n in st.bytes_dropped.items()),
    )
    yield _counter(
        "tlstrace_backend_connect_failures_total",
        "Backend connections that could not be opened",
        [],
        [((), st.backend_connect_failures)],
    )
    yield _counter(
        "tlstrace_reloads_total",
        "Configuration and certificate reloads, by result",
        ["result"],
        (((r,), n) for r, n in st.reloads.items()),
    )
    yield from _trunk(c)
    yield _counter(
        "tlstrace_api_connections_refused_total",
        "API connections refused at accept, by reason",
        ["reason"],
        (((r,), n) for r, n in st.api_refused.items()),
    )
    yield _counter(
        "tlstrace_api_connections_timed_out_total",
        "API connections closed for sending no complete request in time",
        [],
        [((), st.api_timeouts)],
    )
    yield _counter(
        "tlstrace_accept_failures_total",
        "Listeners stopped by a failed accept (out of file descriptors) and restarted, by listener",
        ["listener"],
        (((k,), n) for k, n in st.accept_failures.items()),
    )
    yield _counter(
        "tlstrace_fd_exhausted_total",
        "Times the process ran out of file descriptors (new connections are "
        "accepted and closed at once meanwhile)",
        [],
        [((), st.fd_exhausted)],
    )
    up = GaugeMetricFamily(
        "tlstrace_upstream_up",
        "1 if the last connection attempt to a backend or peer worked",
        labels=["upstream", "role"],
    )
    for u in c.upstreams:
        up.add_metric([u.endpoint, u.role], 1 if u.ok else 0)
    yield up

    yield from _tracing(c)
    yield from _certificates(c)
    yield from _workers(c)


def _workers(c: Counters) -> Iterator[Metric]:
    """With worker processes only (`workers` > 1)."""
    if c.workers_running is None:
        return
    running = GaugeMetricFamily(
        "tlstrace_workers_running", "Relay worker processes running and answering"
    )
    running.add_metric([], c.workers_running)
    yield running
    yield _counter(
        "tlstrace_worker_restarts_total",
        "Relay worker processes started again after they died",
        [],
        [((), c.worker_restarts)],
    )
    yield _counter(
        "tlstrace_worker_cpu_seconds_total",
        "CPU time (user and system) of each running worker process",
        ["worker"],
        (((str(p.index),), p.cpu_seconds) for p in c.worker_processes),
    )
    memory = GaugeMetricFamily(
        "tlstrace_worker_resident_memory_bytes",
        "Resident memory of each running worker process",
        labels=["worker"],
    )
    for p in c.worker_processes:
        memory.add_metric([str(p.index)], p.resident_bytes)
    yield memory


def _tracing(c: Counters) -> Iterator[Metric]:
    tracing = GaugeMetricFamily("tlstrace_tracing_enabled", "1 while tracing is on")
    tracing.add_metric([], 1 if c.tracing.enabled else 0)
    yield tracing
    yield _counter(
        "tlstrace_trace_packets_total",
        "HEP packets built by tracing",
        [],
        [((), c.tracing.packets)],
    )
    yield _counter(
        "tlstrace_trace_oversize_total",
        "SIP messages too large for one HEP packet (traced truncated) or with a "
        "Call-ID too long for the correlation id (shortened), and packets not "
        "sent, by reason",
        ["reason"],
        (((r,), n) for r, n in c.tracing.oversize.items()),
    )
    yield _counter(
        "tlstrace_keylog_file_errors_total",
        "Key-log file writes that failed",
        [],
        [((), c.tracing.keylog_errors)],
    )
    fams = {
        "sent": CounterMetricFamily(
            "tlstrace_hep_packets_sent_total",
            "HEP packets handed to the socket",
            labels=["destination"],
        ),
        "dropped": CounterMetricFamily(
            "tlstrace_hep_packets_dropped_total",
            "HEP packets dropped (queue full, collector down)",
            labels=["destination"],
        ),
        "send_errors": CounterMetricFamily(
            "tlstrace_hep_send_errors_total", "HEP socket send errors", labels=["destination"]
        ),
        "reconnects": CounterMetricFamily(
            "tlstrace_hep_reconnects_total",
            "HEP connection attempts after a failure",
            labels=["destination"],
        ),
    }
    depth = GaugeMetricFamily(
        "tlstrace_hep_queue_depth", "HEP packets waiting to be sent", labels=["destination"]
    )
    connected = GaugeMetricFamily(
        "tlstrace_hep_connected",
        "1 while the HEP destination is connected (UDP: usable)",
        labels=["destination"],
    )
    for s in c.destinations:
        name = s.name
        fams["sent"].add_metric([name], s.sent)
        fams["dropped"].add_metric([name], s.dropped)
        fams["send_errors"].add_metric([name], s.send_errors)
        fams["reconnects"].add_metric([name], s.reconnects)
        depth.add_metric([name], s.queue_depth)
        connected.add_metric([name], 1 if s.connected else 0)
    yield from fams.values()
    yield depth
    yield connected


def _certificates(c: Counters) -> Iterator[Metric]:
    m = GaugeMetricFamily(
        "tlstrace_certificate_not_after_timestamp_seconds",
        "Expiry of each configured certificate (Unix time)",
        labels=["role", "domain", "subject"],
    )
    for cert in c.certificates:
        m.add_metric([cert.role, cert.domain, cert.subject], cert.not_after)
    yield m


class _Families(Collector):
    """Yields the families of the scrape being rendered."""

    def __init__(self) -> None:
        self.counters: Counters | None = None

    def collect(self) -> Iterator[Metric]:
        return iter(()) if self.counters is None else families(self.counters)


class Metrics:
    """What `GET /metrics` renders: the control's counters after this process's own
    `process_*` and `python_gc_*` families."""

    def __init__(self, control: Control) -> None:
        self.control = control
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._families = _Families()
        self.registry.register(self._families)

    async def render(self) -> bytes:
        """The Prometheus text exposition of every family."""
        counters = await self.control.counters()
        # no await from here on: concurrent scrapes each render their own counters
        self._families.counters = counters
        try:
            return generate_latest(self.registry)
        finally:
            self._families.counters = None
