"""The use-case service layer: resolve, validate, call the provider, record usage."""

import dataclasses
import numbers
import time

from .exceptions import (
    ConfigurationError,
    InvalidMaxOutputTokens,
    InvalidMessageError,
    InvalidModelError,
    InvalidProviderError,
    InvalidTemperature,
)
from .providers import providers
from .types import Completion, CompletionRequest
from .usecases import SETTINGS, env_variable, get_usecase


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
        where = "" if provider else f" (use case {usecase!r}, {_origin(config, 'PROVIDER')})"
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
    if (
        not isinstance(temperature, numbers.Real)
        or isinstance(temperature, bool)
        or not 0 <= temperature <= 1
    ):
        raise InvalidTemperature(
            f"temperature must be a number from 0 to 1, got {temperature!r} "
            "(llmapp maps 0-1 onto each provider's own range)."
        )

    max_output_tokens = config.max_output_tokens if max_output_tokens is None else max_output_tokens
    if not isinstance(max_output_tokens, int) or isinstance(max_output_tokens, bool) or max_output_tokens < 1:
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
    started = time.perf_counter()
    completion = backend.complete(request)
    return _finished(completion, started)


def stream_prompt(usecase, message, **overrides):
    """Yield the answer's text chunks as they arrive, then its Completion.

    Takes the same arguments as :func:`complete_prompt`.
    """
    request, backend = prepare_request(usecase, message, **overrides)
    started = time.perf_counter()
    for item in backend.stream(request):
        if isinstance(item, Completion):
            yield _finished(item, started)
        else:
            yield item


async def acomplete_prompt(usecase, message, **overrides) -> Completion:
    """The async twin of :func:`complete_prompt`, for ASGI views."""
    request, backend = prepare_request(usecase, message, **overrides)
    started = time.perf_counter()
    completion = await backend.acomplete(request)
    return _finished(completion, started)


def _finished(completion, started):
    latency_ms = (time.perf_counter() - started) * 1000
    return dataclasses.replace(completion, latency_ms=latency_ms)


def _origin(config, field):
    source = config.source(field)
    if source == SETTINGS:
        return f"from LLM_USECASES[{config.name!r}]"
    if source == "environment":
        return f"from {env_variable(config.name, field)}"
    return f"from {source}"
