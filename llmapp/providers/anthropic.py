"""Anthropic's Messages API (Claude) through the official ``anthropic`` SDK.

The SDK is imported on first use, never at start-up. The system prompt goes in the
``system`` parameter and the conversation (the message alone, or the call's ``messages``)
goes in ``messages``. The temperature is sent
only if the installed SDK's ``messages.create`` takes one: the 2.x SDKs (API version
2026-10-21) have no sampling parameters and raise TypeError on the keyword.
"""

import functools
import inspect

from llmapp.calls.types import Completion
from llmapp.exceptions import (
    ImproperlyInstalled,
    ProviderError,
)

# Shared with the openai backend: both SDKs are generated alike and raise alike.
from llmapp.providers.http import HINTS, malformed_answer
from llmapp.providers.http import TRANSIENT_STATUSES as _HTTP_TRANSIENT_STATUSES
from llmapp.providers.stainless import StainlessProvider
from llmapp.providers.streaming import StreamReader

ANTHROPIC_URL = "https://api.anthropic.com"
DEFAULT_MODEL = "claude-sonnet-5-5"
DEFAULT_TIMEOUT = 30
# 529: Anthropic is overloaded; try again shortly.
TRANSIENT_STATUSES = _HTTP_TRANSIENT_STATUSES | {529}
# An error event inside a 200 stream carries only its type; this is the status it stands for.
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicStreamReader(StreamReader):
    """Reads the raw Messages events, which say the same on every SDK version.

    message_start carries the input tokens, message_delta the stop reason and output tokens,
    and message_stop says the answer is whole.
    """

    stopped = False

    def read(self, event):
        if event.type == "message_start":
            self.model = event.message.model or self.model
            self.input_tokens = event.message.usage.input_tokens
            self.output_tokens = event.message.usage.output_tokens
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            return [event.delta.text]
        elif event.type == "message_delta":
            self.finish_reason = event.delta.stop_reason or self.finish_reason
            # Counts on message_delta are running totals, not increments.
            self.output_tokens = event.usage.output_tokens
            self.input_tokens = getattr(event.usage, "input_tokens", None) or self.input_tokens
        elif event.type == "message_stop":
            self.stopped = True
        return []

    @property
    def ended(self):
        return self.stopped


class AnthropicProvider(StainlessProvider):
    """Messages through the official ``anthropic`` SDK."""

    option_names = frozenset(
        {"api_key", "base_url", "model", "timeout", "default_headers", "structured_output"}
    )
    output_modes = ("native", "prompted")
    max_temperature = 1.0
    default_model = DEFAULT_MODEL
    package = "anthropic"
    extra = "anthropic"
    distribution = "anthropic"
    min_version = "0.40"
    api_key_variables = ("ANTHROPIC_API_KEY",)
    default_timeout = DEFAULT_TIMEOUT
    stream_reader = AnthropicStreamReader

    @property
    def base_url(self):
        return (self.options.get("base_url") or ANTHROPIC_URL).rstrip("/")

    # -- building the call ---------------------------------------------------------

    @functools.cached_property
    def takes_temperature(self):
        """Whether the installed SDK's Messages API has a temperature parameter."""
        try:
            anthropic = self.import_sdk()
        except ImproperlyInstalled:
            return True  # nothing can be sent; describe the documented API
        return "temperature" in inspect.signature(anthropic.resources.Messages.create).parameters

    def build_payload(self, request):
        """Return the keyword arguments of ``messages.create`` for ``request``."""
        payload = {
            "model": request.model,
            "max_tokens": request.max_output_tokens,
            "messages": [{"role": role, "content": content} for role, content in request.turns],
        }
        if self.takes_temperature:
            payload["temperature"] = self.native_temperature(request.temperature)
        if request.prompt:
            payload["system"] = request.prompt
        if request.output_mode == "native":
            payload["output_config"] = {
                "format": {"type": "json_schema", "schema": self.native_schema(request)}
            }
        return self.with_timeout(payload, request)

    def native_schema(self, request):
        """The output's schema as structured outputs take it: the SDK moves the constraints they
        do not take (a minimum, a pattern...) into descriptions; llmapp still checks them."""
        anthropic = self.import_sdk()
        transform = getattr(anthropic, "transform_schema", None)
        if (
            transform is None
            or "output_config" not in inspect.signature(anthropic.resources.Messages.create).parameters
        ):
            raise self.cannot_call(
                f"the installed anthropic SDK ({anthropic.__version__}) has no structured outputs: "
                f"upgrade it, or set LLM_PROVIDERS[{self.alias!r}]['OPTIONS']['structured_output'] "
                "to 'prompted'."
            )
        return transform(request.output.wire_schema)

    def takes_natively(self, output):
        # Structured outputs close every object: a dict whose keys the answer chooses cannot be
        # said, nor a schema the SDK cannot turn into theirs (an Any, a tuple's fixed items).
        if output.open_objects:
            return False
        try:
            transform = getattr(self.import_sdk(), "transform_schema", None)
            if transform is not None:
                transform(output.wire_schema)
        except ImproperlyInstalled:
            return True  # nothing can be sent; say so where it is sent
        except (TypeError, ValueError):
            return False
        return True

    # -- clients ---------------------------------------------------------------------

    client_classes = ("Anthropic", "AsyncAnthropic")

    def client_options(self):
        # Always explicit, so that ANTHROPIC_BASE_URL cannot send calls elsewhere than the options say.
        return {"base_url": self.base_url}

    # -- calls -----------------------------------------------------------------------

    def send(self, client, payload):
        return client.messages.create(**payload)

    def open_stream(self, client, payload):
        # The raw events, not the messages.stream() helper: see AnthropicStreamReader.
        return client.messages.create(**payload, stream=True)

    def answer_from_json(self, data, response):
        # The Message model takes blocks only; a gateway's string is read as complete() reads it.
        if isinstance(data, dict) and isinstance(data.get("content"), str):
            data = {**data, "content": [{"type": "text", "text": data["content"]}]}
        return super().answer_from_json(data, response)

    def parse(self, response, request):
        request_id = getattr(response, "_request_id", None)
        content = getattr(response, "content", None)
        if content is None:
            raise ProviderError(
                "the server's answer has no content", provider=self.alias, request_id=request_id
            )
        text = _text_of(content)
        if text is None:
            raise malformed_answer(self, request_id)
        usage = getattr(response, "usage", None)
        return Completion(
            text=text,
            usecase=request.usecase,
            provider=self.alias,
            model=getattr(response, "model", None) or request.model,
            finish_reason=getattr(response, "stop_reason", None),
            input_tokens=getattr(usage, "input_tokens", None),
            output_tokens=getattr(usage, "output_tokens", None),
            request_id=request_id,
        )

    # -- errors ----------------------------------------------------------------------

    error_hints = HINTS | {529: "Anthropic is overloaded; try again shortly"}
    request_id_header = "request-id"
    answer_type = "types.Message"
    sentry_integration = "sentry_sdk.integrations.anthropic.AnthropicIntegration"
    key_pattern = r"\bsk-ant-[A-Za-z0-9_-]{8,}"
    sdk_loggers = ("anthropic",)
    transient_statuses = TRANSIENT_STATUSES

    def error_status(self, exc):
        if exc.status_code < 400:
            # An error event inside a stream that began with 200.
            return ERROR_TYPE_STATUS.get(_error_type(exc.body), 500)
        return exc.status_code


def _text_of(content):
    """The text of an answer's content blocks, or None if they are not blocks of text."""
    if isinstance(content, str):  # some gateways' shorthand; Anthropic itself sends blocks
        return content
    if not isinstance(content, list):
        return None
    texts = []
    for block in content:
        # Models, or dicts where the SDK built none (a gateway's block of another shape).
        if isinstance(block, dict):
            kind, text = block.get("type"), block.get("text")
        else:
            kind, text = getattr(block, "type", None), getattr(block, "text", None)
        if not isinstance(kind, str):
            return None  # not a block
        if kind != "text":
            continue  # only text blocks: this backend asks for no tools or thinking
        if not isinstance(text, str):
            return None
        texts.append(text)
    return "".join(texts)


def _error_type(body):
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("type")
    return None
