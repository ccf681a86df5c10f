"""Say whether a provider can serve calls, in terms safe to show on a page.

The admin shows this next to every use case. It answers three questions without
calling the provider or importing its SDK: can the backend be imported, is the
SDK's extra installed, is there a key. Secrets are only ever shown masked.
"""

from dataclasses import dataclass, field

from llmapp.conf.secrets import mask, redact
from llmapp.exceptions import ConfigurationError
from llmapp.providers import providers
from llmapp.sentry.scrubbing import scrub


@dataclass(frozen=True)
class ProviderHealth:
    """What ``provider_health`` found; every string in it is safe to display."""

    alias: str
    #: The BACKEND import string as configured.
    backend: str
    importable: bool
    #: The SDK the backend imports on first use (None when it needs none) and its pip extra.
    package: str | None = None
    extra: str | None = None
    extra_installed: bool = True
    #: Whether the backend takes a key at all (the preview provider does not).
    needs_key: bool = False
    key_present: bool = False
    #: ``••••`` plus at most the key's last four characters.
    masked_key: str = ""
    #: The model a use case that names none gets.
    default_model: str | None = None
    #: OPTIONS with secrets masked: the key, URL credentials, every custom header's value.
    options: dict = field(default_factory=dict)
    #: The server it calls, credentials masked, when the backend has one.
    base_url: str | None = None
    problems: list = field(default_factory=list)

    @property
    def ok(self):
        return not self.problems


def provider_health(alias):
    """Return the ProviderHealth of the LLM_PROVIDERS entry ``alias``; never raises for bad config."""
    try:
        config = providers.settings.get(alias)
    except ConfigurationError as exc:
        return ProviderHealth(alias=alias, backend="", importable=False, problems=[str(exc)])
    if config is None:
        return ProviderHealth(
            alias=alias,
            backend="",
            importable=False,
            problems=[f"LLM_PROVIDERS has no provider {alias!r}; add it, or point the use case elsewhere."],
        )
    backend_path = str(config.get("BACKEND", "")) if isinstance(config, dict) else ""
    try:
        cls = providers.backend_class(alias, config)
    except ConfigurationError as exc:
        return ProviderHealth(alias=alias, backend=backend_path, importable=False, problems=[str(exc)])

    problems = []
    extra_installed = cls.sdk_installed()
    if (problem := cls.sdk_problem(alias)) is not None:
        problems.append(str(problem))
    try:
        backend = providers[alias]
    except ConfigurationError as exc:
        problems.append(str(exc))
        backend = None

    secrets = backend.secrets() if backend is not None else []
    key = backend.configured_key() if backend is not None else None
    if backend is not None:
        # The backend's own check() says when a missing key is a problem (a local
        # OpenAI-compatible server needs none).
        problems += [" ".join(filter(None, [message.msg, message.hint])) for message in backend.check()]
    return ProviderHealth(
        alias=alias,
        backend=backend_path,
        importable=True,
        package=cls.package,
        extra=cls.extra,
        extra_installed=extra_installed,
        needs_key=bool(backend.api_key_variables) if backend is not None else False,
        key_present=bool(key),
        masked_key=mask(key),
        default_model=backend.model if backend is not None else None,
        options=safe_options(backend) if backend is not None else {},
        base_url=_base_url(backend),
        problems=[redact(problem, secrets) for problem in problems],
    )


def safe_options(backend):
    """Return the backend's OPTIONS for display: secrets masked, URL credentials removed."""
    secrets = backend.secrets()
    shown = {}
    for name, value in sorted(backend.options.items()):
        # The backend names its secret options; scrub() masks secret-named keys nested
        # below them (an Authorization in default_headers) and the backend's secrets, every
        # custom header's value among them, anywhere.
        shown[name] = mask(value) if name in backend.secret_options else scrub(value, secrets)
    return shown


def _base_url(backend):
    try:
        url = getattr(backend, "base_url", None)
    except ConfigurationError:
        return None
    return redact(url, backend.secrets()) if url else None
