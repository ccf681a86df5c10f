"""Decide which transactions to trace: ``traces_sampler``."""

from django.conf import settings

# Exact paths (with or without a trailing slash) that load balancers and browsers poll.
IGNORED_PATHS = frozenset({"/health", "/healthz", "/_health", "/ready", "/favicon.ico"})
IGNORED_PREFIXES = ("/static/",)


def traces_sampler(sampling_context):
    """Return the sample rate for a new transaction.

    Health checks and static files are never traced; otherwise a parent's decision
    wins, and the rest are traced at ``SENTRY_SDK_CONFIG["traces_sample_rate"]``
    (0.0, no tracing, when unset).
    """
    path = _request_path(sampling_context)
    if path is not None and is_ignored_path(path):
        return 0.0
    parent_sampled = sampling_context.get("parent_sampled")
    if parent_sampled is not None:
        return float(parent_sampled)
    rate = getattr(settings, "SENTRY_SDK_CONFIG", {}).get("traces_sample_rate")
    return float(rate or 0.0)


def is_ignored_path(path):
    """Return whether requests for ``path`` are kept out of tracing."""
    if path.rstrip("/") in IGNORED_PATHS or path.startswith(IGNORED_PREFIXES):
        return True
    static_url = settings.STATIC_URL or ""  # Django prefixes a relative one with "/".
    # A STATIC_URL of "/" or on another host says nothing about this path.
    return len(static_url) > 1 and static_url.startswith("/") and path.startswith(static_url)


def _request_path(sampling_context):
    environ = sampling_context.get("wsgi_environ")
    if environ:
        return environ.get("PATH_INFO")
    scope = sampling_context.get("asgi_scope")
    if scope:
        return scope.get("path")
    return None
