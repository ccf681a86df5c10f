"""The system check of the Sentry configuration: :func:`check_sentry`."""

from django.core import checks

DSN_HINT = (
    "Set it to your Sentry project's DSN (Settings > Client Keys), shaped like "
    "https://<public key>@<host>/<project id>; in the host project that is SENTRY_DSN or "
    "SENTRY_RELAY_DSN. Leave it empty to turn Sentry off."
)


def check_sentry(app_configs=None, **kwargs):
    """Report each DSN the Sentry SDK would reject, and a configuration it did reject.

    Without a DSN this imports nothing from ``sentry_sdk``.
    """
    from llmapp.sentry import configured_dsns, dsn_errors, init_error

    dsns = configured_dsns()
    if not any(dsns):
        return []
    errors = [
        checks.Error(
            f"SENTRY_SDK_CONFIG[{key!r}] is not a valid Sentry DSN: {reason}. Sentry is not sent "
            "anything through it.",
            hint=DSN_HINT,
            id="llmapp.sentry.E001",
        )
        for key, reason in dsn_errors(dsns).items()
    ]
    if init_error:
        errors.append(
            checks.Error(
                f"Sentry is off: {init_error}.",
                hint="Fix SENTRY_SDK_CONFIG: besides dsn and relay_dsn, its keys are sentry_sdk.init "
                "options.",
                id="llmapp.sentry.E002",
            )
        )
    return errors
