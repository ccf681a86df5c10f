"""Provider backends by alias, configured in LLM_PROVIDERS like CACHES or TASKS.

``providers[alias]`` builds the backend once and shares it across threads; a
change to any ``LLM_*`` setting drops the built ones so they are rebuilt.
"""

import os
import threading

from django.utils.module_loading import import_string

from llmapp import conf
from llmapp.calls.spend.cost import parse_prices
from llmapp.calls.spend.ratelimits import provider_limits
from llmapp.conf.secrets import redact
from llmapp.exceptions import ConfigurationError, InvalidProviderError

#: The backends llmapp ships.
BUILTIN_BACKENDS = (
    "llmapp.providers.openai.OpenAIProvider",
    "llmapp.providers.anthropic.AnthropicProvider",
    "llmapp.providers.gemini.GeminiProvider",
)
PROVIDER_KEYS = frozenset({"BACKEND", "OPTIONS", "MODELS", "CIRCUIT_BREAKER", "PRICES", "RATE_LIMIT"})
ENTRY_HINT = 'Each LLM_PROVIDERS entry is {"BACKEND": "<import string>", "OPTIONS": {...}, "MODELS": [...]}.'


class ProviderHandler:
    def __init__(self):
        self._providers = {}
        self._lock = threading.Lock()

    @property
    def settings(self):
        configured = conf.get_setting("LLM_PROVIDERS")
        if not isinstance(configured, dict) or not configured:
            raise ConfigurationError(
                "LLM_PROVIDERS must be a non-empty dict of alias to provider config.",
                check_id="llmapp.E001",
                hint=ENTRY_HINT,
            )
        return configured

    def aliases(self):
        return list(self.settings)

    def __contains__(self, alias):
        return alias in self.settings

    def __getitem__(self, alias):
        try:
            return self._providers[alias]
        except KeyError:
            pass
        with self._lock:
            if alias not in self._providers:
                self._providers[alias] = self.create(alias)
            return self._providers[alias]

    def create(self, alias):
        """Build a new backend for ``alias`` from settings."""
        try:
            config = self.settings[alias]
        except KeyError:
            raise InvalidProviderError(self.unknown(alias)) from None
        backend_class = self.backend_class(alias, config)
        check_entry(alias, config)
        return backend_class(alias, options=config.get("OPTIONS") or {}, models=config.get("MODELS"))

    def backend_class(self, alias, config):
        where = f"LLM_PROVIDERS[{alias!r}]"
        if not isinstance(config, dict) or "BACKEND" not in config:
            raise ConfigurationError(
                f"{where} must be a dict with a 'BACKEND' import string.",
                check_id="llmapp.E015",
                hint=ENTRY_HINT,
            )
        unknown = sorted(set(config) - PROVIDER_KEYS)
        if unknown:
            raise ConfigurationError(
                f"{where} has unknown key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(PROVIDER_KEYS))}.",
                check_id="llmapp.E015",
                hint=ENTRY_HINT,
            )
        try:
            return import_string(config["BACKEND"])
        except Exception as exc:  # its module may fail in any way while it is imported
            reason = str(exc) if isinstance(exc, ImportError | TypeError) else f"{type(exc).__name__}: {exc}"
            raise ConfigurationError(
                f"{where}['BACKEND'] = {config['BACKEND']!r} cannot be imported ({reason}).",
                check_id="llmapp.E002",
                hint="Fix the import string, or install the package it names.",
            ) from None

    def unknown(self, alias, origin=""):
        """The message of a provider alias that LLM_PROVIDERS does not configure.

        ``origin`` says where the alias was named (" (use case 'x', from ...)").
        Redacted: the alias may be a key pasted into LLM_<USECASE>_PROVIDER.
        """
        return redact(f"unknown provider {alias!r}{origin}; LLM_PROVIDERS has: {', '.join(self.settings)}.")

    def all(self):
        return [self[alias] for alias in self.settings]

    def reset(self):
        with self._lock:
            self._providers = {}

    def _after_fork_in_child(self):
        # Not reset(): a thread of the parent may have held the lock at the fork.
        self._lock = threading.Lock()
        self._providers = {}


def check_entry(alias, config):
    """Raise ConfigurationError, saying what to write, when an entry's OPTIONS, MODELS, PRICES or
    CIRCUIT_BREAKER has the wrong shape; the BACKEND is backend_class()'s to check."""
    where = f"LLM_PROVIDERS[{alias!r}]"
    options, models = config.get("OPTIONS"), config.get("MODELS")
    if options is not None and not isinstance(options, dict):
        raise ConfigurationError(
            f"{where}['OPTIONS'] must be a dict of the backend's options.",
            check_id="llmapp.E016",
            hint=ENTRY_HINT,
        )
    if models is not None and (
        not isinstance(models, list | tuple) or not all(isinstance(model, str) and model for model in models)
    ):
        raise ConfigurationError(
            f"{where}['MODELS'] must be a list of model names.", check_id="llmapp.E016", hint=ENTRY_HINT
        )
    if config.get("PRICES") is not None:
        parse_prices(alias, config["PRICES"])
    provider_limits(alias, config)
    breaker = config.get("CIRCUIT_BREAKER", {})
    if breaker is None:
        return
    failures, cooldown = (
        breaker.get(key, 1) if isinstance(breaker, dict) else None for key in ("FAILURES", "COOLDOWN")
    )
    if (
        not isinstance(breaker, dict)
        or set(breaker) - {"FAILURES", "COOLDOWN"}
        or not (isinstance(failures, int) and not isinstance(failures, bool) and failures >= 1)
        or not (isinstance(cooldown, int | float) and not isinstance(cooldown, bool) and cooldown > 0)
    ):
        raise ConfigurationError(
            f"{where}['CIRCUIT_BREAKER'] must be a dict of FAILURES (a whole number from 1) and "
            "COOLDOWN (seconds above 0), or None to turn it off.",
            check_id="llmapp.E017",
            hint='For example {"FAILURES": 5, "COOLDOWN": 30}, the defaults.',
        )


def backend_classes():
    """Return the classes of the shipped backends and of the configured ones, each once.

    Importing a backend's module imports no SDK. A BACKEND that cannot be imported, for
    whatever reason, is its entry's problem (a check says so), not this list's: redaction
    and Sentry's set-up read it, and must work whatever the settings hold. Before settings
    are configured, the shipped backends.
    """
    from django.conf import settings

    configured = conf.get_setting("LLM_PROVIDERS") if settings.configured else None
    paths = list(BUILTIN_BACKENDS)
    for config in configured.values() if isinstance(configured, dict) else ():
        if isinstance(config, dict) and isinstance(config.get("BACKEND"), str):
            paths.append(config["BACKEND"])
    classes = []
    for path in dict.fromkeys(paths):
        try:
            cls = import_string(path)
        except Exception:  # noqa: S112 (a SyntaxError, a failing import: the entry's own problem)
            continue
        if isinstance(cls, type) and cls not in classes:
            classes.append(cls)
    return classes


providers = ProviderHandler()
conf.on_change(providers.reset)
# A forked child must not share its parent's SDK clients and their open sockets.
os.register_at_fork(after_in_child=providers._after_fork_in_child)
