"""A Sentry span per LLM call, following Sentry's AI monitoring conventions.

When no Sentry client is active (no DSN), nothing here imports ``sentry_sdk``.
"""

import contextlib
import json
import sys

from django.core.management.base import CommandError

from llmapp.exceptions import InvalidRequestError


def sentry_active():
    # Another thread may be importing sentry_sdk right now (frames.capture_exception does
    # on a call's first failure): a module still half-initialised has no get_client yet.
    get_client = getattr(sys.modules.get("sentry_sdk"), "get_client", None)
    return get_client is not None and get_client().is_active()


def start_span(request, *, streaming=False):
    """Start the ``gen_ai.chat`` span of ``request``; a transaction of its own if none is running.

    The prompt, message and answer are attached only when both LLM_LOG_CONTENT and
    send_default_pii allow content in Sentry.
    """
    if not sentry_active():
        return None
    import sentry_sdk
    from sentry_sdk.consts import OP, SPANDATA

    from llmapp.sentry.scrubbing import content_allowed

    attributes = {"op": OP.GEN_AI_CHAT, "name": f"chat {request.model}", "origin": "auto.ai.llmapp"}
    if sentry_sdk.get_current_span() is None:
        span = sentry_sdk.start_transaction(**attributes)
    else:
        span = sentry_sdk.start_span(**attributes)
    span.set_data(SPANDATA.GEN_AI_OPERATION_NAME, "chat")
    span.set_data(SPANDATA.GEN_AI_PROVIDER_NAME, request.provider)
    span.set_data(SPANDATA.GEN_AI_REQUEST_MODEL, request.model)
    span.set_data(SPANDATA.GEN_AI_REQUEST_TEMPERATURE, request.temperature)
    span.set_data(SPANDATA.GEN_AI_REQUEST_MAX_TOKENS, request.max_output_tokens)
    span.set_data(SPANDATA.GEN_AI_PIPELINE_NAME, request.usecase)
    span.set_data(SPANDATA.GEN_AI_RESPONSE_STREAMING, streaming)
    if content_allowed():
        messages = [
            {"role": "system", "content": request.prompt},
            *({"role": role, "content": content} for role, content in request.turns),
        ]
        span.set_data(SPANDATA.GEN_AI_REQUEST_MESSAGES, json.dumps(messages, ensure_ascii=False))
    return span


#: The span data key of a call's cost in US dollars (sentry-sdk has no constant for it).
COST = "llmapp.cost_usd"


def finish_span(span, completion=None, error=None):
    if span is None:
        return
    from sentry_sdk.consts import SPANDATA

    from llmapp.sentry.scrubbing import content_allowed

    if completion is not None:
        span.set_data(SPANDATA.GEN_AI_RESPONSE_MODEL, completion.model)
        if completion.input_tokens is not None:
            span.set_data(SPANDATA.GEN_AI_USAGE_INPUT_TOKENS, completion.input_tokens)
        if completion.output_tokens is not None:
            span.set_data(SPANDATA.GEN_AI_USAGE_OUTPUT_TOKENS, completion.output_tokens)
        if completion.input_tokens is not None and completion.output_tokens is not None:
            span.set_data(
                SPANDATA.GEN_AI_USAGE_TOTAL_TOKENS, completion.input_tokens + completion.output_tokens
            )
        if completion.cost is not None:
            span.set_data(COST, float(completion.cost))
        if completion.finish_reason:
            span.set_data(SPANDATA.GEN_AI_RESPONSE_FINISH_REASONS, [completion.finish_reason])
        if completion.request_id:
            span.set_data(SPANDATA.GEN_AI_RESPONSE_ID, completion.request_id)
        if content_allowed():
            span.set_data(SPANDATA.GEN_AI_RESPONSE_TEXT, json.dumps([completion.text], ensure_ascii=False))
        span.set_status("ok")
    else:
        span.set_status("internal_error")
        span.set_data("error.type", type(error).__name__)
    span.finish()


@contextlib.contextmanager
def command_transaction(name):
    """Run a management command inside a Sentry transaction; flush the SDK when it ends."""
    if not sentry_active():
        yield
        return
    import sentry_sdk

    try:
        with sentry_sdk.start_transaction(op="cli", name=name, source="task"):
            try:
                yield
            except Exception as exc:
                # Bad input is the user's to fix, not an error to report.
                if not isinstance(exc, InvalidRequestError | CommandError):
                    sentry_sdk.capture_exception(exc)
                raise
    finally:
        # Within one budget, exit included: a hung ingest must not hold the command's end.
        from llmapp.sentry import flush_before_exit

        flush_before_exit()
