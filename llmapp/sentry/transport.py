"""Send every envelope to two Sentry ingests: ``MultiplexingTransport``."""

import time

from django.conf import settings
from sentry_sdk.client import get_options
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport, make_transport
from sentry_sdk.utils import capture_internal_exceptions

from llmapp import metrics

# Envelope item types that carry metrics. sentry-sdk 2.75 emits "trace_metric"
# (sentry_sdk.metrics.count/gauge/distribution); older 2.x SDKs emitted "statsd"
# and "metric_meta"; "metric_buckets" is what Relay forwards upstream.
METRIC_ITEM_TYPES = frozenset({"trace_metric", "statsd", "metric_meta", "metric_buckets"})


def patch_transport_for_instrumentation(transport, name):
    """Count each HTTP request ``transport`` sends as ``internal.sent_requests.<name>.events``.

    ``_send_request`` is where sentry-sdk's HTTP transports make one request
    (an envelope, or a client report); the count is taken as the request starts.
    """
    # SENTRY_PRINT_ENVELOPES wraps the real transport; the request is sent by the inner one.
    target = getattr(transport, "_inner", transport)
    send_request = target._send_request
    key = f"internal.sent_requests.{name}.events"

    def counted_send_request(*args, **kwargs):
        # Counting must never stop an envelope from being sent.
        with capture_internal_exceptions():
            metrics.incr(key)
        return send_request(*args, **kwargs)

    target._send_request = counted_send_request
    return transport


class MultiplexingTransport(Transport):
    """Send every envelope to the upstream Sentry, then to the Relay.

    Upstream gets a copy without metric items unless the setting
    ``SENTRY_SDK_UPSTREAM_METRICS_ENABLED`` is true; the Relay gets everything.
    The envelope passed in is never modified. Either DSN may be ``None``.
    """

    #: Where flush() reads the time; tests give it a clock of their own.
    clock = staticmethod(time.monotonic)

    def __init__(self, dsns, options):
        """Build one real transport per DSN from ``options`` (``sentry_sdk.init`` options)."""
        if not (dsns.upstream or dsns.relay):
            raise ValueError("MultiplexingTransport needs an upstream or a relay DSN.")
        options = get_options(dsn=dsns.upstream or dsns.relay, **options)
        super().__init__(options)
        self.upstream = _make_transport(options, dsns.upstream, "upstream")
        self.relay = _make_transport(options, dsns.relay, "relay")

    @property
    def transports(self):
        return [t for t in (self.upstream, self.relay) if t is not None]

    def capture_envelope(self, envelope):
        # Upstream first: it is the most isolated from this installation.
        if self.upstream is not None:
            upstream_envelope = _for_upstream(envelope)
            if upstream_envelope is not None:
                with capture_internal_exceptions():
                    self.upstream.capture_envelope(upstream_envelope)
        if self.relay is not None:
            with capture_internal_exceptions():
                self.relay.capture_envelope(Envelope(headers=envelope.headers, items=envelope.items))

    def flush(self, timeout, callback=None):
        """Wait up to ``timeout`` seconds in all for both transports to send what they hold.

        Each sends on a thread of its own, at the same time as the other: waiting for one,
        then for the other with what is left, waits for both, and a hung ingest cannot
        make the wait twice ``timeout``.
        """
        deadline = self.clock() + timeout
        for transport in self.transports:
            transport.flush(max(0.0, deadline - self.clock()), callback)

    def kill(self):
        for transport in self.transports:
            transport.kill()

    def record_lost_event(self, reason, data_category=None, item=None, *, quantity=1):
        # The loss happened before multiplexing, so both ingests should hear of it.
        for transport in self.transports:
            transport.record_lost_event(reason, data_category, item, quantity=quantity)

    def is_healthy(self):
        return all(transport.is_healthy() for transport in self.transports)


def _make_transport(options, dsn, name):
    if not dsn:
        return None
    transport = make_transport({**options, "dsn": dsn, "transport": None})
    return patch_transport_for_instrumentation(transport, name)


def _for_upstream(envelope):
    """Return a copy of ``envelope`` for upstream, or ``None`` if nothing is left to send."""
    items = envelope.items
    if not getattr(settings, "SENTRY_SDK_UPSTREAM_METRICS_ENABLED", False):
        items = [item for item in items if item.type not in METRIC_ITEM_TYPES]
    if not items:
        return None
    return Envelope(headers=envelope.headers, items=items)
