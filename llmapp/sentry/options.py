"""Build ``sentry_sdk.init`` options from the ``SENTRY_SDK_CONFIG`` setting."""

import contextlib
import importlib
from typing import NamedTuple

from django.conf import settings

from llmapp.sentry.sampling import traces_sampler
from llmapp.sentry.scrubbing import before_breadcrumb, before_send, before_send_transaction

RELEASE_PREFIX = "llmapp@"

# llmapp emits its own gen_ai spans; the providers' integrations (each names its own,
# ``sentry_integration``) and these would add a duplicate span per LLM call. Importing one
# of them imports its SDK (openai alone costs 300+ ms).
OTHER_AI_INTEGRATIONS = ("sentry_sdk.integrations.langchain.LangchainIntegration",)


def ai_integrations():
    """The import strings of the integrations that would instrument LLM calls a second time."""
    from llmapp.providers import backend_classes

    providers = [
        cls.sentry_integration for cls in backend_classes() if getattr(cls, "sentry_integration", None)
    ]
    return (*dict.fromkeys(providers), *OTHER_AI_INTEGRATIONS)


class Dsns(NamedTuple):
    """Where events go: the upstream Sentry and the Relay; either may be ``None``."""

    upstream: str | None
    relay: str | None


def _get_sdk_options():
    """Return the options for ``sentry_sdk.init`` and the DSNs popped out of them.

    Starts from a copy of ``SENTRY_SDK_CONFIG`` (the setting is never modified) and
    installs llmapp's hooks over any the config names. Auto-enabling integrations
    default to off, which is what keeps the SDK from importing the provider SDKs;
    a config that turns them back on gets the AI integrations disabled instead.
    """
    options = dict(getattr(settings, "SENTRY_SDK_CONFIG", {}))
    options["send_client_reports"] = True
    options["before_send"] = before_send
    options["before_send_transaction"] = before_send_transaction
    options["before_breadcrumb"] = before_breadcrumb
    options["traces_sampler"] = traces_sampler
    options["release"] = _release(options.get("release"))
    # The multiplexing transport builds the real transports itself.
    options.pop("transport", None)
    options.setdefault("auto_enabling_integrations", False)
    if options["auto_enabling_integrations"]:
        # The SDK imports every auto-enabling integration anyway in this mode,
        # so importing the AI ones here costs nothing more.
        options["disabled_integrations"] = [
            *(options.get("disabled_integrations") or ()),
            *_importable_integrations(ai_integrations()),
        ]
    return options, _pop_dsns(options)


def configured_dsns():
    """Return the DSNs in ``SENTRY_SDK_CONFIG``, without building any options."""
    return _pop_dsns(dict(getattr(settings, "SENTRY_SDK_CONFIG", {})))


def dsn_errors(dsns):
    """Return ``{key: reason}`` for each DSN in ``dsns`` that sentry_sdk cannot use.

    ``key`` is the DSN's key in ``SENTRY_SDK_CONFIG``: "dsn" or "relay_dsn".
    """
    from sentry_sdk.utils import BadDsn, Dsn

    errors = {}
    for key, dsn in (("dsn", dsns.upstream), ("relay_dsn", dsns.relay)):
        if dsn is None:
            continue
        try:
            Dsn(dsn)
        except BadDsn as e:
            errors[key] = str(e) or "malformed"
        except Exception as e:  # e.g. not a string
            errors[key] = f"{type(e).__name__}: {e}"
    return errors


def _pop_dsns(options):
    return Dsns(upstream=options.pop("dsn", None) or None, relay=options.pop("relay_dsn", None) or None)


def _release(given):
    """Return ``given`` (or llmapp's installed version) as ``llmapp@<release>``."""
    release = str(given) if given else _installed_version()
    return release if release.startswith(RELEASE_PREFIX) else RELEASE_PREFIX + release


def _installed_version():
    # Imported here: importlib.metadata costs ~15 ms, and only a configured SDK needs it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmapp")
    except PackageNotFoundError:
        return "unknown"


def _importable_integrations(import_strings):
    from sentry_sdk.integrations import DidNotEnable

    classes = []
    for import_string in import_strings:
        module, name = import_string.rsplit(".", 1)
        # DidNotEnable/ImportError: its library is missing, so the SDK cannot enable it either.
        with contextlib.suppress(DidNotEnable, ImportError):
            classes.append(getattr(importlib.import_module(module), name))
    return classes
