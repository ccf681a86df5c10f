"""The use-case service layer: resolve, validate, call the provider, record usage."""

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Unpack

from llmapp.calls.circuit import CircuitBreaker
from llmapp.calls.output import OutputTypeError, output_for
from llmapp.calls.recording import Call
from llmapp.calls.retries import Attempts, Route
from llmapp.calls.spend import responses
from llmapp.calls.spend.budgets import Budgets, subject_key
from llmapp.calls.spend.ratelimits import Limiter, provider_limits
from llmapp.calls.types import CallOptions, Completion, CompletionRequest, evolve
from llmapp.conf import overrides
from llmapp.conf.prompts import text_version
from llmapp.conf.usecases import RULES, get_usecase, shown
from llmapp.exceptions import (
    InvalidMaxOutputTokens,
    InvalidMessageError,
    InvalidModelError,
    InvalidOutputType,
    InvalidProviderError,
    InvalidRequestError,
    InvalidTemperature,
    ProviderError,
    StreamAbandoned,
    UsecaseDisabled,
)
from llmapp.providers import providers


def _checked(field, value, config, error):
    """Return ``value``, or the use case's own when None, once it keeps ``field``'s Rule; else raise.

    ``error`` for a value the caller gave; the use case's own ConfigurationError otherwise,
    which says where it came from: the fix belongs there.
    """
    if value is None:
        invalid = config.invalid(field)
        if invalid is not None:
            raise invalid
        return getattr(config, field.lower())
    rule = RULES[field]
    if not rule.valid(value):
        raise error(rule.message(field.lower(), value))
    return value


def prepare_request(
    usecase,
    message=None,
    *,
    messages=None,
    prompt=None,
    temperature=None,
    max_output_tokens=None,
    provider=None,
    model=None,
    output=None,
    context=None,
):
    """Resolve and validate one call; return the request and the backend that would serve it.

    Nothing is sent: every error here is raised before any network call. Messages name
    what is wrong, never how a particular caller (the CLI, a view) should pass it.
    """
    config = get_usecase(usecase)
    if not config.enabled:
        raise UsecaseDisabled(
            f"use case {config.name!r} is disabled ({config.origin('ENABLED')}); nothing was sent."
        )
    if context is not None and not isinstance(context, Mapping):
        raise InvalidRequestError(
            f"context must be a dict of template variables, got a {type(context).__name__}."
        )
    template = config.template("MESSAGE_TEMPLATE")
    if template is not None and messages is None:
        given = {} if message is None else {"message": message}
        message = template.render({**(context or {}), **given})
    message, history = _conversation(message, messages)
    if prompt is None:
        template = config.template("PROMPT_TEMPLATE")
        prompt = config.prompt if template is None else template.render(context)
        version = config.prompt_version
    else:
        version = text_version(prompt) if isinstance(prompt, str) else ""
    if isinstance(prompt, str):
        _check_encodable("prompt", prompt)

    alias = config.provider if provider is None else provider
    if not isinstance(alias, str) or alias not in providers:
        origin = "" if provider is not None else config.named_in("PROVIDER")
        raise InvalidProviderError(providers.unknown(alias, origin))
    backend = providers[alias]

    if model is None:
        model = config.model or backend.model
        if not model:
            raise config.missing_model(alias)
    elif not isinstance(model, str) or not model.strip():
        raise InvalidModelError(f"the model must be a model name, got {shown(model)}.")
    disallowed = backend.disallowed_model(model)
    if disallowed:
        raise InvalidModelError(disallowed)

    temperature = _checked("TEMPERATURE", temperature, config, InvalidTemperature)
    max_output_tokens = _checked("MAX_OUTPUT_TOKENS", max_output_tokens, config, InvalidMaxOutputTokens)
    if output is None:
        output = config.output_spec
    else:
        try:
            output = output_for(output)
        except OutputTypeError as exc:
            raise InvalidOutputType(str(exc)) from None

    request = CompletionRequest(
        usecase=config.name,
        message=message,
        prompt=prompt,
        provider=alias,
        model=model,
        temperature=float(temperature),
        max_output_tokens=max_output_tokens,
        history=history,
        output=output,
        prompt_version=version,
    )
    return request, backend


#: The roles a conversation's turns may have; the use case's prompt is the system prompt.
ROLES = ("user", "assistant")


def _conversation(message, messages):
    """Return the user's last message and the turns before it, of ``message`` or ``messages``."""
    if messages is None:
        if not isinstance(message, str) or not message.strip():
            raise InvalidMessageError("the message is empty")
        _check_encodable("message", message)
        return message, ()
    if message is not None:
        raise InvalidMessageError("give a message or messages, not both")
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence) or not messages:
        raise InvalidMessageError('messages must be a non-empty list of {"role": ..., "content": ...} turns')
    turns = []
    for number, turn in enumerate(messages):
        where = f"messages[{number}]"
        if not isinstance(turn, Mapping) or set(turn) - {"role", "content"}:
            raise InvalidMessageError(f'{where} must be a {{"role": ..., "content": ...}} object')
        role, content = turn.get("role"), turn.get("content")
        if not isinstance(role, str) or role not in ROLES:
            # A role may be anything, a misplaced key too: only a short string is shown as it is.
            said = shown(role) if isinstance(role, str) else f"a {type(role).__name__}"
            raise InvalidMessageError(
                f"{where} has role {said}; use 'user' or 'assistant' (the use case's prompt is the "
                "system prompt)"
            )
        if not isinstance(content, str) or not content.strip():
            raise InvalidMessageError(f"{where} has no content")
        _check_encodable(where, content)
        turns.append((role, content))
    if turns[-1][0] != "user":
        raise InvalidMessageError("messages must end with a user turn: the one to answer")
    return turns[-1][1], tuple(turns[:-1])


def _check_encodable(what, text):
    # Bytes that were not UTF-8 become lone surrogates when read into a str, which no
    # provider can send: the SDK would fail while encoding and blame the server.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMessageError(
            f"the {what} holds bytes that are not UTF-8 text (a lone surrogate at character {exc.start})"
        ) from None


def plan_call(
    usecase,
    message=None,
    *,
    timeout=None,
    retries=None,
    fallbacks=None,
    output_retries=None,
    cache=responses.USE,
    subject=None,
    **options,
):
    """Validate one call and return its request and the Attempts that will run it.

    ``timeout`` (seconds, over all attempts), ``retries``, ``fallbacks`` (a list of
    "provider" or "provider:model"; ``[]`` for none) and ``output_retries`` override the
    use case's; ``cache`` says what the call does with its response cache.
    """
    if cache not in responses.MODES:
        raise InvalidRequestError(
            f"cache must be one of {', '.join(map(repr, responses.MODES))}, got {shown(cache)}."
        )
    request, backend = prepare_request(usecase, message, **options)
    config = get_usecase(usecase)
    timeout = _checked("TIMEOUT", timeout, config, InvalidRequestError)
    retries = _checked("RETRIES", retries, config, InvalidRequestError)
    # Only a typed call asks again: an untyped one need not look.
    if request.output is not None or output_retries is not None:
        output_retries = _checked("OUTPUT_RETRIES", output_retries, config, InvalidRequestError)
    routes = [_route(request.provider, backend, request.model)]
    for spec in config.fallbacks if fallbacks is None else fallbacks:
        routes.append(_fallback_route(config, spec))
    if subject is not None:
        subject = subject_key(subject)
        request = evolve(request, subject=subject)
    attempts = Attempts(
        request, routes, retries=retries, timeout=float(timeout), output_retries=output_retries or 0
    )
    if config.cache is not None:
        attempts.answers = responses.for_call(config, request, cache)
    if config.budget_spec is not None:
        attempts.budgets = Budgets(config.name, config.budget_spec, subject)
    if config.rate_limit_spec is not None or any(route.limits for route in routes):
        attempts.limiter = Limiter(config.name, config.rate_limit_spec, subject)
    return request, attempts


def complete_prompt(usecase: str, message: str | None = None, **options: Unpack[CallOptions]) -> Completion:
    """Run ``usecase`` on ``message`` and return its Completion.

    Keyword overrides, for this call only: ``prompt``, ``temperature`` (0-1),
    ``max_output_tokens``, ``provider`` (an LLM_PROVIDERS alias), ``model``,
    ``timeout``, ``retries``, ``fallbacks``, ``messages`` (a conversation in place of
    ``message``), ``output`` (the answer's type: ``Completion.parsed`` holds it),
    ``output_retries`` and ``context`` (what PROMPT_TEMPLATE and MESSAGE_TEMPLATE render with).
    """
    overrides.refresh()
    _, attempts = plan_call(usecase, message, **options)
    call = Call(attempts)
    answers = attempts.answers
    if answers is not None and (hit := answers.get(attempts.request, budget=attempts.left())) is not None:
        return call.succeeded(hit)
    try:
        for backend, attempt in attempts:
            try:
                completion = attempts.answered(backend.complete(attempt))
            except ProviderError as exc:
                attempts.sleep(attempts.failed(exc))
                continue
            attempts.succeeded()
            break
    except BaseException as exc:  # an interrupted call is recorded too
        attempts.ended()
        call.failed(exc)
        raise
    if answers is not None and attempts.served_by_primary:
        answers.keep(completion, budget=attempts.left())
    return call.succeeded(completion)


def stream_prompt(
    usecase: str, message: str | None = None, **options: Unpack[CallOptions]
) -> Iterator[str | Completion]:
    """Yield the answer's text chunks as they arrive, then its Completion.

    Takes the same arguments as :func:`complete_prompt`. A transient failure before
    any text arrived is retried like any call; once text has reached the caller, a
    failure ends the stream, and so does an answer that does not match the output type
    (checked when the stream ends: InvalidOutputError). The deadline holds while text flows, too.
    """
    overrides.refresh()
    _, attempts = plan_call(usecase, message, **options)
    call = Call(attempts, streaming=True)
    answers = attempts.answers
    if answers is not None and (hit := answers.get(attempts.request, budget=attempts.left())) is not None:
        yield from call.succeeded(hit).pieces()
        return
    completion = None
    streamed = False
    try:
        for backend, attempt in attempts:
            streamed = False
            try:
                with contextlib.closing(backend.stream(attempt)) as items:
                    for item in items:
                        if isinstance(item, Completion):
                            completion = attempts.answered(item, streamed)
                            break
                        yield item
                        streamed = True
                        attempts.check_deadline()
            except ProviderError as exc:
                if streamed:  # cut after text: billed, for what is not known
                    attempts.ended(billed=True)
                attempts.sleep(attempts.failed(exc))
                continue
            attempts.succeeded()
            break
    except GeneratorExit:
        attempts.ended(billed=streamed)
        call.failed(StreamAbandoned("the caller stopped reading the stream"))
        raise
    except BaseException as exc:
        attempts.ended(billed=streamed)
        call.failed(exc)
        raise
    if answers is not None and attempts.served_by_primary:
        answers.keep(completion, budget=attempts.left())
    # Recorded outside the try: closing the stream after its Completion abandons nothing.
    yield call.succeeded(completion)


async def acomplete_prompt(
    usecase: str, message: str | None = None, **options: Unpack[CallOptions]
) -> Completion:
    """The async twin of :func:`complete_prompt`, for ASGI views.

    Nothing leaves the event loop on the way: the provider's async client, a circuit
    breaker that answers from memory (its cache, when it must be asked, is awaited on a
    thread of its own) and a usage event put on the writer's queue.
    """
    await overrides.arefresh()
    _, attempts = plan_call(usecase, message, **options)
    call = Call(attempts)
    answers = attempts.answers
    if (
        answers is not None
        and (hit := await answers.aget(attempts.request, budget=attempts.left())) is not None
    ):
        return await call.asucceeded(hit)
    try:
        async with contextlib.aclosing(aiter(attempts)) as steps:
            async for backend, attempt in steps:
                try:
                    completion = attempts.answered(await backend.acomplete(attempt))
                except ProviderError as exc:
                    await attempts.asleep(await attempts.afailed(exc))
                    continue
                await attempts.asucceeded()
                break
    except BaseException as exc:  # a cancelled call (the client went away) is recorded too
        attempts.ended()
        await call.afailed(exc)
        raise
    if answers is not None and attempts.served_by_primary:
        await answers.akeep(completion, budget=attempts.left())
    return await call.asucceeded(completion)


async def astream_prompt(
    usecase: str, message: str | None = None, **options: Unpack[CallOptions]
) -> AsyncIterator[str | Completion]:
    """The async twin of :func:`stream_prompt`: text chunks as they arrive, then the Completion."""
    await overrides.arefresh()
    _, attempts = plan_call(usecase, message, **options)
    call = Call(attempts, streaming=True)
    answers = attempts.answers
    if (
        answers is not None
        and (hit := await answers.aget(attempts.request, budget=attempts.left())) is not None
    ):
        for piece in (await call.asucceeded(hit)).pieces():
            yield piece
        return
    completion = None
    streamed = False
    try:
        async with contextlib.aclosing(aiter(attempts)) as steps:
            async for backend, attempt in steps:
                streamed = False
                try:
                    async with contextlib.aclosing(backend.astream(attempt)) as items:
                        async for item in items:
                            if isinstance(item, Completion):
                                completion = attempts.answered(item, streamed)
                                break
                            yield item
                            streamed = True
                            attempts.check_deadline()
                except ProviderError as exc:
                    if streamed:  # cut after text: billed, for what is not known
                        attempts.ended(billed=True)
                    await attempts.asleep(await attempts.afailed(exc))
                    continue
                await attempts.asucceeded()
                break
    except GeneratorExit:
        attempts.ended(billed=streamed)
        await call.afailed(StreamAbandoned("the caller stopped reading the stream"))
        raise
    except BaseException as exc:
        attempts.ended(billed=streamed)
        await call.afailed(exc)
        raise
    if answers is not None and attempts.served_by_primary:
        await answers.akeep(completion, budget=attempts.left())
    # Recorded outside the try: closing the stream after its Completion abandons nothing.
    yield await call.asucceeded(completion)


def _route(alias, backend, model):
    config = providers.settings[alias]
    return Route(
        alias,
        backend,
        model,
        CircuitBreaker.for_provider(alias, config),
        CircuitBreaker.for_provider(alias, config, model=model),
        provider_limits(alias, config) if "RATE_LIMIT" in config else None,
    )


def _fallback_route(config, spec):
    alias, _, model = str(spec).partition(":")
    if alias not in providers:
        raise InvalidProviderError(config.unknown_fallback(alias))
    backend = providers[alias]
    model = model or backend.model
    disallowed = backend.disallowed_model(model, "fallback model")
    if disallowed:
        raise InvalidModelError(disallowed)
    return _route(alias, backend, model)
