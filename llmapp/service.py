"""The use-case service layer: resolve, validate, call the provider, record usage."""

import numbers

from asgiref.sync import sync_to_async

from .exceptions import (
    ConfigurationError,
    InvalidMaxOutputTokens,
    InvalidMessageError,
    InvalidModelError,
    InvalidProviderError,
    InvalidTemperature,
    StreamAbandoned,
)
from .providers import providers
from .tracking import Call
from .types import Completion, CompletionRequest
from .usecases import get_usecase


def is_valid_temperature(value):
    """A provider-neutral temperature: a real number from 0 to 1."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value <= 1


def is_valid_max_output_tokens(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def prepare_request(
    usecase,
    message,
    *,
    prompt=None,
    temperature=None,
    max_output_tokens=None,
    provider=None,
    model=None,
):
    """Resolve and validate one call; return the request and the backend that would serve it.

    Nothing is sent: every error here is raised before any network call.
    """
    config = get_usecase(usecase)
    if not isinstance(message, str) or not message.strip():
        raise InvalidMessageError("the message is empty: pass --message TEXT or pipe text on stdin.")

    alias = provider or config.provider
    if alias not in providers:
        where = "" if provider else f" (use case {usecase!r}, {config.origin('PROVIDER')})"
        raise InvalidProviderError(
            f"unknown provider {alias!r}{where}; LLM_PROVIDERS has: {', '.join(providers.aliases())}."
        )
    backend = providers[alias]

    model = model or config.model or backend.model
    if not model:
        raise ConfigurationError(
            f"no model for use case {usecase!r}: set its MODEL or OPTIONS['model'] of provider {alias!r}."
        )
    if backend.models and model not in backend.models:
        raise InvalidModelError(
            f"model {model!r} is not allowed for provider {alias!r}; "
            f"its MODELS allow: {', '.join(backend.models)}."
        )

    temperature = config.temperature if temperature is None else temperature
    if not is_valid_temperature(temperature):
        raise InvalidTemperature(
            f"temperature must be a number from 0 to 1, got {temperature!r} "
            "(llmapp maps 0-1 onto each provider's own range)."
        )

    max_output_tokens = config.max_output_tokens if max_output_tokens is None else max_output_tokens
    if not is_valid_max_output_tokens(max_output_tokens):
        raise InvalidMaxOutputTokens(
            f"max_output_tokens must be a positive whole number, got {max_output_tokens!r}."
        )

    request = CompletionRequest(
        usecase=config.name,
        message=message,
        prompt=config.prompt if prompt is None else prompt,
        provider=alias,
        model=model,
        temperature=float(temperature),
        max_output_tokens=max_output_tokens,
    )
    return request, backend


def complete_prompt(usecase, message, **overrides) -> Completion:
    """Run ``usecase`` on ``message`` and return its Completion.

    Keyword overrides, for this call only: ``prompt``, ``temperature`` (0-1),
    ``max_output_tokens``, ``provider`` (an LLM_PROVIDERS alias), ``model``.
    """
    request, backend = prepare_request(usecase, message, **overrides)
    call = Call(request)
    try:
        completion = backend.complete(request)
    except Exception as exc:
        call.failed(exc)
        raise
    return call.succeeded(completion)


def stream_prompt(usecase, message, **overrides):
    """Yield the answer's text chunks as they arrive, then its Completion.

    Takes the same arguments as :func:`complete_prompt`.
    """
    request, backend = prepare_request(usecase, message, **overrides)
    call = Call(request, streaming=True)
    try:
        for item in backend.stream(request):
            if isinstance(item, Completion):
                yield call.succeeded(item)
            else:
                yield item
    except GeneratorExit:
        call.failed(StreamAbandoned("the caller stopped reading the stream"))
        raise
    except BaseException as exc:
        call.failed(exc)
        raise


async def acomplete_prompt(usecase, message, **overrides) -> Completion:
    """The async twin of :func:`complete_prompt`, for ASGI views."""
    request, backend = prepare_request(usecase, message, **overrides)
    call = Call(request)
    try:
        completion = await backend.acomplete(request)
    except Exception as exc:
        await sync_to_async(call.failed)(exc)
        raise
    return await sync_to_async(call.succeeded)(completion)

