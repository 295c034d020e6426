"""Prometheus metrics (prefix `tlstrace_`), built at scrape time from the relay's plain
counters, so nothing Prometheus-related runs on the message path."""

from __future__ import annotations

import platform
import ssl
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tlstrace import __version__
from tlstrace.relay.stats import Histogram

if TYPE_CHECKING:
    from tlstrace.app import Sidecar
    from tlstrace.relay.runtime import Relay


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


def _trunk(relay: Relay) -> Iterator[Metric]:
    """Routing of what tcp: listeners' peers send to the local connections."""
    yield _counter(
        "tlstrace_trunk_routed_total",
        "SIP messages from tcp: listeners' peers, by how their local connection was found",
        ["by"],
        (((k,), n) for k, n in relay.stats.trunk_routed.items()),
    )
    sizes = {"transactions": 0, "peer_transactions": 0, "dialogs": 0}
    evicted = dict.fromkeys(sizes, 0)
    for link in list(relay.pool.links.values()):
        for table in link.routes.tables:
            sizes[table.name] += len(table)
            evicted[table.name] += table.evicted
    entries = GaugeMetricFamily(
        "tlstrace_trunk_table_entries",
        "Transactions and dialogs remembered for tcp: listeners",
        labels=["table"],
    )
    for name, n in sizes.items():
        entries.add_metric([name], n)
    yield entries
    yield _counter(
        "tlstrace_trunk_table_evictions_total",
        "Entries pushed out of a full transaction or dialog table before they expired",
        ["table"],
        (((k,), n) for k, n in evicted.items()),
    )


class RelayCollector(Collector):
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar

    def collect(self) -> Iterator[Metric]:
        sc = self.sidecar
        relay = sc.relay
        st = relay.stats
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
        counts = {(name, d): 0 for name, directions in st.listeners for d in directions}
        for conn in list(relay.connections.values()):
            key = (conn.listener, conn.direction)
            counts[key] = counts.get(key, 0) + 1
        for (listener, direction), n in counts.items():
            open_.add_metric([listener, direction], n)
        yield open_
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
            (((lst, d, k), n) for (lst, d), c in list(st.messages.items()) for k, n in c.items()),
        )
        live = Counter(st.bytes)
        for c in list(relay.connections.values()):
            live[c.listener, "from_tls"] += c.bytes_in
            live[c.listener, "to_tls"] += c.bytes_out
        yield _counter(
            "tlstrace_bytes_total",
            "SIP bytes relayed on TLS legs",
            ["listener", "direction"],
            live.items(),
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
        yield from _trunk(relay)
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
            "Listeners stopped by a failed accept (out of file descriptors) and "
            "restarted, by listener",
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
        for endpoint, status in relay.upstreams.items():
            up.add_metric([endpoint, status.role], 1 if status.ok else 0)
        yield up

        yield from self._tracing()
        yield from self._certificates()

    def _tracing(self) -> Iterator[Metric]:
        sc = self.sidecar
        tracing = GaugeMetricFamily("tlstrace_tracing_enabled", "1 while tracing is on")
        tracing.add_metric([], 1 if sc.tracing.enabled else 0)
        yield tracing
        yield _counter(
            "tlstrace_trace_packets_total",
            "HEP packets built by tracing",
            [],
            [((), sc.tracing.packets)],
        )
        yield _counter(
            "tlstrace_trace_oversize_total",
            "SIP messages too large for one HEP packet (traced truncated) or with a "
            "Call-ID too long for the correlation id (shortened), and packets not "
            "sent, by reason",
            ["reason"],
            (((r,), n) for r, n in sc.tracing.oversize.items()),
        )
        keyfile = sc.tracing.keyfile
        yield _counter(
            "tlstrace_keylog_file_errors_total",
            "Key-log file writes that failed",
            [],
            [((), keyfile.errors if keyfile else 0)],
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
        for name, s in sc.senders.stats().items():
            fams["sent"].add_metric([name], s.sent)
            fams["dropped"].add_metric([name], s.dropped)
            fams["send_errors"].add_metric([name], s.send_errors)
            fams["reconnects"].add_metric([name], s.reconnects)
            depth.add_metric([name], s.queue_depth)
            connected.add_metric([name], 1 if s.connected else 0)
        yield from fams.values()
        yield depth
        yield connected

    def _certificates(self) -> Iterator[Metric]:
        sc = self.sidecar
        m = GaugeMetricFamily(
            "tlstrace_certificate_not_after_timestamp_seconds",
            "Expiry of each configured certificate (Unix time)",
            labels=["role", "domain", "subject"],
        )
        seen: set[tuple[str, str]] = set()
        for lst in sc.inbound:
            for ident in lst.contexts.identities:
                key = ("server", ident.domain.name)
                if key not in seen:
                    seen.add(key)
                    m.add_metric(
                        [*key, ident.cert.subject or "none"], ident.cert.not_after.timestamp()
                    )
        for domain in sc.config.client_domain:
            info = sc.relay.client_contexts.cert_info(domain.name)
            if info is not None:
                m.add_metric(
                    ["client", domain.name, info.subject or "none"], info.not_after.timestamp()
                )
        yield m


def make_registry(sidecar: Sidecar) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(RelayCollector(sidecar))
    return registry
