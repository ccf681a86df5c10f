"""Report llmapp's errors, traces and metrics to Sentry: :func:`configure_sdk`.

The ``SENTRY_SDK_CONFIG`` setting holds ``sentry_sdk.init`` options plus two DSNs:
``dsn`` (the upstream Sentry) and ``relay_dsn`` (a Relay in front of it). Every
envelope goes to both; metric items go upstream only when
``SENTRY_SDK_UPSTREAM_METRICS_ENABLED`` is true.

Sentry is never a reason to fail: a DSN or an option the SDK rejects is logged in
one line and reported by the system check ``llmapp.sentry.checks.check_sentry``, and the
process goes on without Sentry (or with the one valid DSN).

Importing this package does not import ``sentry_sdk``: with no DSN configured,
start-up pays nothing for Sentry.
"""

import logging
import time

from llmapp.sentry.options import Dsns, _get_sdk_options, configured_dsns, dsn_errors

__all__ = ["Dsns", "configure_sdk", "flush_before_exit"]

logger = logging.getLogger("llmapp.sentry")

#: Seconds the end of a management command waits, in all, for its metrics and events to be sent.
COMMAND_FLUSH_BUDGET = 2.0

#: Why the last configure_sdk() left Sentry off, when a malformed DSN was not the reason.
init_error = None


def configure_sdk():
    """Initialise the Sentry SDK from ``SENTRY_SDK_CONFIG``; do nothing if it has no DSN.

    Return the new client, or ``None`` when no DSN is set or the SDK rejected the
    configuration (logged; the system check says how to fix it). Never raises.
    """
    global init_error
    init_error = None
    if not any(configured_dsns()):
        return None
    try:
        return _init()
    except Exception as e:
        init_error = f"sentry_sdk.init failed: {type(e).__name__}: {e}"
        logger.error("Sentry is off: %s. Run manage.py check for how to fix it.", init_error)
        return None


def _init():
    options, dsns = _get_sdk_options()
    invalid = dsn_errors(dsns)
    if invalid:
        dsns = Dsns(
            upstream=None if "dsn" in invalid else dsns.upstream,
            relay=None if "relay_dsn" in invalid else dsns.relay,
        )
        if not any(dsns):
            going_on = "Sentry is off"
        else:
            going_on = f"Sentry reports to {'the relay' if dsns.relay else 'upstream'} only"
        problems = "; ".join(
            f"SENTRY_SDK_CONFIG[{key!r}] is not a valid DSN ({reason})" for key, reason in invalid.items()
        )
        logger.error("%s: %s. Run manage.py check for how to fix it.", going_on, problems)
        if not any(dsns):
            return None

    # Imported here so that a process without a DSN never loads the SDK.
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.logging import ignore_logger

    from llmapp.sentry.scrubbing import logger as scrubbing_logger
    from llmapp.sentry.transport import MultiplexingTransport

    # A failure to scrub is logged; that record must not become an event to scrub.
    ignore_logger(scrubbing_logger.name)

    integrations = list(options.pop("integrations", None) or ())
    if not any(i.identifier == DjangoIntegration.identifier for i in integrations):
        # Named explicitly because auto-enabling integrations are off (see options.py).
        integrations.append(DjangoIntegration())

    sentry_sdk.init(
        # The client needs a DSN of its own for the trace headers' public_key.
        dsn=dsns.upstream or dsns.relay,
        transport=MultiplexingTransport(dsns, options),
        integrations=integrations,
        **options,
    )
    return sentry_sdk.get_client()


def flush_before_exit(budget=COMMAND_FLUSH_BUDGET, clock=time.monotonic):
    """Send the queued metrics and Sentry events, waiting ``budget`` seconds at most in all.

    For the end of a command. The SDK flushes again at exit, for its
    ``shutdown_timeout``: that wait is cut to what is left of ``budget``, so a hung
    ingest holds the process ``budget`` seconds at most, not twice over.
    """
    import sentry_sdk

    from llmapp import metrics

    deadline = clock() + budget
    # Metrics reach the SDK from a background queue: drain it first.
    metrics.flush(timeout=budget)
    sentry_sdk.flush(timeout=max(0.0, deadline - clock()))
    client = sentry_sdk.get_client()
    if client.is_active():
        left = max(0.0, deadline - clock())
        client.options["shutdown_timeout"] = min(client.options.get("shutdown_timeout") or 0.0, left)
