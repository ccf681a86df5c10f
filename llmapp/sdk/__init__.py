"""Report llmapp's errors, traces and metrics to Sentry: :func:`configure_sdk`.

The ``SENTRY_SDK_CONFIG`` setting holds ``sentry_sdk.init`` options plus two DSNs:
``dsn`` (the upstream Sentry) and ``relay_dsn`` (a Relay in front of it). Every
envelope goes to both; metric items go upstream only when
``SENTRY_SDK_UPSTREAM_METRICS_ENABLED`` is true.

Importing this package does not import ``sentry_sdk``: with no DSN configured,
start-up pays nothing for Sentry.
"""

from .options import Dsns, _get_sdk_options, configured_dsns

__all__ = ["Dsns", "configure_sdk"]


def configure_sdk():
    """Initialise the Sentry SDK from ``SENTRY_SDK_CONFIG``; do nothing if it has no DSN.

    Return the new client, or ``None`` when no DSN is set.
    """
    if not any(configured_dsns()):
        return None
    options, dsns = _get_sdk_options()

    # Imported here so that a process without a DSN never loads the SDK.
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.logging import ignore_logger

    from .scrubbing import logger as scrubbing_logger
    from .transport import MultiplexingTransport

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
