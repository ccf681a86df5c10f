"""The use-case service layer: resolve, validate, call the provider, record usage."""

import asyncio
import contextlib
import numbers
import time

from asgiref.sync import sync_to_async

from .circuit import CircuitBreaker
from .exceptions import (
    ConfigurationError,
    InvalidMaxOutputTokens,
    InvalidMessageError,
    InvalidModelError,
    InvalidProviderError,
    InvalidRequestError,
    InvalidTemperature,
    ProviderError,
    StreamAbandoned,
)
from .providers import providers
from .retries import Attempts, Route
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


def plan_call(usecase, message, *, timeout=None, retries=None, fallbacks=None, **overrides):
    """Validate one call and return its request and the Attempts that will run it.

    ``timeout`` (seconds, over all attempts), ``retries`` and ``fallbacks`` (a list of
    "provider" or "provider:model"; ``[]`` for none) override the use case's.
    """
    request, backend = prepare_request(usecase, message, **overrides)
    config = get_usecase(usecase)
    timeout = config.timeout if timeout is None else timeout
    if not isinstance(timeout, numbers.Real) or isinstance(timeout, bool) or timeout <= 0:
        raise InvalidRequestError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    retries = config.retries if retries is None else retries
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise InvalidRequestError(f"retries must be a whole number from 0 up, got {retries!r}.")
    routes = [_route(request.provider, backend, request.model)]
    for spec in config.fallbacks if fallbacks is None else fallbacks:
        routes.append(_fallback_route(config, spec))
    return request, Attempts(request, routes, retries=retries, timeout=float(timeout))


def complete_prompt(usecase, message, **overrides) -> Completion:
    """Run ``usecase`` on ``message`` and return its Completion.

    Keyword overrides, for this call only: ``prompt``, ``temperature`` (0-1),
    ``max_output_tokens``, ``provider`` (an LLM_PROVIDERS alias), ``model``,
    ``timeout``, ``retries`` and ``fallbacks``.
    """
    request, attempts = plan_call(usecase, message, **overrides)
    call = Call(request)
    try:
        for backend, attempt in attempts:
            try:
                completion = backend.complete(attempt)
            except ProviderError as exc:
                time.sleep(attempts.failed(exc))
                continue
            attempts.succeeded()
            break
    except BaseException as exc:  # an interrupted call is recorded too
        call.failed(exc, attempts=attempts.count)
        raise
    return call.succeeded(completion, attempts=attempts.count)


def stream_prompt(usecase, message, **overrides):
    """Yield the answer's text chunks as they arrive, then its Completion.

    Takes the same arguments as :func:`complete_prompt`. A transient failure before
    any text arrived is retried like any call; once text has reached the caller, a
    failure ends the stream. The deadline holds while text flows, too.
    """
    request, attempts = plan_call(usecase, message, **overrides)
    call = Call(request, streaming=True)
    completion = None
    try:
        for backend, attempt in attempts:
            try:
                with contextlib.closing(backend.stream(attempt)) as items:
                    for item in items:
                        if isinstance(item, Completion):
                            completion = item
                            break
                        yield item
                        attempts.check_deadline()
            except ProviderError as exc:
                time.sleep(attempts.failed(exc))
                continue
            attempts.succeeded()
            break
    except GeneratorExit:
        call.failed(StreamAbandoned("the caller stopped reading the stream"), attempts=attempts.count)
        raise
    except BaseException as exc:
        call.failed(exc, attempts=attempts.count)
        raise
    # Recorded outside the try: closing the stream after its Completion abandons nothing.
    yield call.succeeded(completion, attempts=attempts.count)


async def acomplete_prompt(usecase, message, **overrides) -> Completion:
    """The async twin of :func:`complete_prompt`, for ASGI views.

    The retry loop's bookkeeping (the circuit breaker's cache) runs off the event loop,
    since a cache may be a database.
    """
    request, attempts = plan_call(usecase, message, **overrides)
    call = Call(request)
    steps = iter(attempts)
    try:
        while True:
            backend, attempt = await sync_to_async(next)(steps)
            try:
                completion = await backend.acomplete(attempt)
            except ProviderError as exc:
                await asyncio.sleep(await sync_to_async(attempts.failed)(exc))
                continue
            await sync_to_async(attempts.succeeded)()
            break
    except BaseException as exc:  # a cancelled call (the client went away) is recorded too
        await sync_to_async(call.failed)(exc, attempts=attempts.count)
        raise
    return await sync_to_async(call.succeeded)(completion, attempts=attempts.count)


def _route(alias, backend, model):
    return Route(alias, backend, model, CircuitBreaker.for_provider(alias, providers.settings[alias]))


def _fallback_route(config, spec):
    alias, _, model = str(spec).partition(":")
    if alias not in providers:
        raise InvalidProviderError(
            f"use case {config.name!r} falls back to unknown provider {alias!r} "
            f"({config.origin('FALLBACKS')}); LLM_PROVIDERS has: {', '.join(providers.aliases())}."
        )
    backend = providers[alias]
    model = model or backend.model
    if backend.models and model not in backend.models:
        raise InvalidModelError(
            f"fallback model {model!r} is not allowed for provider {alias!r}; "
            f"its MODELS allow: {', '.join(backend.models)}."
        )
    return _route(alias, backend, model)
