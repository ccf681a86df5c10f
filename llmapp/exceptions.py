"""The one exception hierarchy of llmapp, rooted at LLMError."""

from django.core.exceptions import ImproperlyConfigured


class LLMError(Exception):
    """Base class of every error llmapp raises."""


class ConfigurationError(LLMError, ImproperlyConfigured):
    """A setting is missing or wrong; the message names the setting to fix.

    ``check_id`` is the id ``manage.py check`` reports this problem under (one id per
    problem, listed in the README), ``hint`` what the check adds to the message.
    """

    def __init__(self, message, *, check_id=None, hint=None, field=None):
        super().__init__(message)
        self.check_id = check_id
        self.hint = hint
        #: The use-case field (MODEL, FALLBACKS...) whose value this is the problem of, if one.
        self.field = field

    def as_check(self, hint=None):
        """This problem as a Django check message: an Error, a Warning for a ``.W`` id."""
        from django.core import checks

        check_id = self.check_id or "llmapp.E010"
        level = checks.Warning if ".W" in check_id else checks.Error
        return level(str(self), hint=self.hint or hint, id=check_id)


class ImproperlyInstalled(ConfigurationError):
    """A provider's SDK is not installed, or is older than llmapp needs; the message gives the pip command."""

    def __init__(self, provider, package, extra, *, installed=None, needed=None):
        self.package = package
        self.extra = extra
        if installed is None:
            message = (
                f"provider {provider!r} needs the {package!r} package, which is not installed: "
                f'run pip install "llmapp[{extra}]"'
            )
            check_id, hint = "llmapp.W002", "A provider no use case relies on may go without its SDK."
        else:
            message = (
                f"provider {provider!r} needs {package} {needed} or newer, and {installed} is installed: "
                f'run pip install -U "llmapp[{extra}]"'
            )
            check_id, hint = "llmapp.W010", "A provider no use case relies on may go without it."
        super().__init__(message, check_id=check_id, hint=hint)


class InvalidRequestError(LLMError, ValueError):
    """A call's arguments are wrong; nothing was sent."""


class InvalidUsecaseError(InvalidRequestError):
    pass


class InvalidProviderError(InvalidRequestError):
    pass


class InvalidModelError(InvalidRequestError):
    pass


class InvalidTemperature(InvalidRequestError):
    pass


class InvalidMaxOutputTokens(InvalidRequestError):
    pass


class InvalidMessageError(InvalidRequestError):
    pass


class InvalidOutputType(InvalidRequestError):
    """A call's ``output`` is not a type or JSON Schema llmapp can ask for."""


class MissingContextError(InvalidRequestError):
    """A use case's PROMPT_TEMPLATE or MESSAGE_TEMPLATE uses a variable the call's context does not give."""


class UsecaseDisabled(InvalidRequestError):
    """The use case's ENABLED is off (in settings, its override or the environment): nothing was sent."""


class ProviderError(LLMError):
    """A provider failed to answer: its HTTP status, request id and a redacted message."""

    def __init__(
        self,
        message,
        *,
        provider,
        status_code=None,
        request_id=None,
        transient=False,
        retry_after=None,
    ):
        self.reason = message
        self.provider = provider
        self.status_code = status_code
        self.request_id = request_id
        self.transient = transient
        self.retry_after = retry_after
        #: Whether another route (a fallback) may still answer, when this one cannot be retried.
        self.try_elsewhere = False
        #: ("provider:model", error) of each route the call gave up before this error ended it.
        self.earlier = ()
        super().__init__(message)

    def __str__(self):
        parts = [f"provider {self.provider!r}"]
        if self.status_code is not None:
            parts.append(f"HTTP {self.status_code}")
        if self.request_id:
            parts.append(f"request id {self.request_id}")
        text = f"{self.reason} ({', '.join(parts)})"
        if self.earlier:
            text += "; before it, " + "; ".join(f"{route} failed: {error}" for route, error in self.earlier)
        return text

    def __repr__(self):
        return (
            f"{type(self).__name__}({self.reason!r}, provider={self.provider!r}, "
            f"status_code={self.status_code!r}, request_id={self.request_id!r})"
        )


class BudgetExceeded(LLMError):
    """A call that its use case's budget (or its subject's) cannot pay for; nothing was sent.

    ``scope`` is "use case" or "subject"; ``spent`` and ``limit`` are US dollars (Decimals)
    in the period that ends at ``resets_at`` (UTC).
    """

    #: Like ProviderError's: the routes given up before (a "fallback" budget tries each).
    earlier = ()
    provider = None

    @property
    def reason(self):
        return str(self)

    def __init__(self, *, usecase, scope, spent, limit, period, resets_at):
        self.usecase, self.scope, self.spent, self.limit = usecase, scope, spent, limit
        self.period, self.resets_at = period, resets_at
        whose = f"use case {usecase!r}" if scope == "use case" else f"this subject of use case {usecase!r}"
        super().__init__(
            f"{whose} has spent ${spent:f} of its ${limit:f} budget per {_period(period)}, too little left "
            f"for this call; it resets at {resets_at:%Y-%m-%d %H:%M} UTC"
        )


class RateLimited(LLMError):
    """A call that a rate limit (requests or tokens a minute, calls at once) holds back; nothing was sent.

    ``scope`` says whose limit ("use case 'triage'", "this subject", "provider 'openai'"),
    ``limit`` which (RPM, TPM, CONCURRENCY, or HTTP 429: the provider asked every worker to
    wait), ``retry_after`` in how many seconds it may pass.
    """

    earlier = ()
    provider = None

    @property
    def reason(self):
        return str(self)

    def __init__(self, *, usecase, scope, limit, retry_after):
        self.usecase, self.scope, self.limit, self.retry_after = usecase, scope, limit, retry_after
        what = f"{scope} asked to wait (HTTP 429)" if limit == "HTTP 429" else f"the {limit} of {scope}"
        super().__init__(f"use case {usecase!r} is rate limited: {what}; try again in {retry_after:.1f}s")


def _period(period):
    seconds = int(period.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class StreamAbandoned(LLMError):
    """The caller stopped reading a stream before it ended (recorded, never raised)."""


class ProviderTimeout(ProviderError):
    pass


class ProviderUnavailable(ProviderError):
    """The provider could not be reached at all (refused, DNS, TLS)."""


class ProviderRefused(ProviderError):
    """The model declined to answer: a refusal, or an answer the provider's safety filters blocked.

    ``finish_reason`` is the provider's own word for it (Anthropic ``refusal``, Gemini
    ``SAFETY``...). Asking the same model again would be refused again: the call moves on
    to the use case's fallbacks, and its usage event says ``refused``.
    """

    def __init__(self, message, *, finish_reason=None, **kwargs):
        super().__init__(message, **kwargs)
        self.finish_reason = finish_reason
        self.try_elsewhere = True


class InvalidOutputError(ProviderError):
    """An answer that does not match the call's output type, on every route that was asked.

    ``text`` is the last answer as it came, ``errors`` how it does not match (one line
    each, naming places in the answer, never its content). An answer that does not match
    is asked again on its route (the use case's OUTPUT_RETRIES), then on the fallbacks.
    """

    def __init__(self, message, *, text="", errors=(), **kwargs):
        super().__init__(message, **kwargs)
        self.text = text
        self.errors = list(errors)
        self.try_elsewhere = True


class OverridesOff(LLMError):
    """LLM_USECASE_OVERRIDES is off: a saved override would be read by no call."""


class OverrideConflict(LLMError):
    """The use case changed since the revision the change was made on: saving would undo that."""


class OverrideInvalid(LLMError, ValueError):
    """An override that does not hold; ``errors`` maps each bad field (or "__all__") to its messages."""

    def __init__(self, errors):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items()))
