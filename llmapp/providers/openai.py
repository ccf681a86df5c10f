"""OpenAI and every OpenAI-compatible server (Ollama, vLLM, llama.cpp, LM Studio, OpenRouter).

The ``openai`` SDK is imported on first use, never at start-up. Azure OpenAI is
the same backend with ``azure_endpoint``, ``azure_deployment`` and ``api_version``.
"""

from urllib.parse import urlsplit

from llmapp.calls.types import Completion
from llmapp.exceptions import ProviderError
from llmapp.providers.stainless import (
    PostedJSONProvider,
    expect_count,
    expect_list,
    expect_object,
    expect_text,
)
from llmapp.providers.streaming import StreamReader

OPENAI_URL = "https://api.openai.com/v1"


class OpenAIStreamReader(StreamReader):
    """Reads chat.completion.chunk objects: the answer is whole once a choice has a finish reason."""

    def read(self, chunk):
        self.model = chunk.model or self.model
        if chunk.usage:
            self.input_tokens = chunk.usage.prompt_tokens
            self.output_tokens = chunk.usage.completion_tokens
            self.cached_input_tokens = _cached(chunk.usage)
        texts = []
        for choice in chunk.choices:
            self.finish_reason = choice.finish_reason or self.finish_reason
            texts.append(choice.delta.content if choice.delta else None)
        return texts


class OpenAIProvider(PostedJSONProvider):
    """Chat Completions through the official ``openai`` SDK."""

    request_id_header = "x-request-id"
    path = "/chat/completions"
    sentry_integration = "sentry_sdk.integrations.openai.OpenAIIntegration"
    key_pattern = r"\bsk-(?:proj-)?[A-Za-z0-9_-]{8,}"
    sdk_loggers = ("openai",)

    option_names = frozenset(
        {
            "api_key",
            "base_url",
            "model",
            "timeout",
            "organization",
            "project",
            "default_headers",
            # Official OpenAI wants max_completion_tokens; most compatible servers max_tokens.
            "token_limit_parameter",
            "stream_usage",
            "azure_endpoint",
            "azure_deployment",
            "api_version",
            # "prompted" for compatible servers without response_format's json_schema.
            "structured_output",
        }
    )
    output_modes = ("native", "prompted")
    max_temperature = 2.0
    default_model = "gpt-4o-mini"
    package = "openai"
    extra = "openai"
    distribution = "openai"
    min_version = "1.40"
    stream_reader = OpenAIStreamReader

    @property
    def api_key_variables(self):
        return ("AZURE_OPENAI_API_KEY",) if self.is_azure else ("OPENAI_API_KEY",)

    @property
    def is_azure(self):
        return bool(self.options.get("azure_endpoint"))

    @property
    def azure_endpoint(self):
        # Without its trailing slash, which older SDKs (openai 1.40) keep: ".../" + "/openai".
        return self.options["azure_endpoint"].rstrip("/")

    @property
    def base_url(self):
        if self.is_azure:
            return f"{self.azure_endpoint}/openai"
        return (self.options.get("base_url") or OPENAI_URL).rstrip("/")

    # -- building the call ---------------------------------------------------------

    def build_payload(self, request):
        """Return the keyword arguments of ``chat.completions.create`` for ``request``."""
        messages = [{"role": role, "content": content} for role, content in request.turns]
        if request.prompt:
            messages.insert(0, {"role": "system", "content": request.prompt})
        default_limit = "max_tokens" if self.options.get("base_url") else "max_completion_tokens"
        limit = self.options.get("token_limit_parameter") or default_limit
        payload = {
            "model": request.model,
            "messages": messages,
            "temperature": self.native_temperature(request.temperature),
            limit: request.max_output_tokens,
        }
        if request.output_mode == "native":
            output = request.output
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": output.name, "schema": output.wire_schema, "strict": output.strict},
            }
        return self.with_timeout(payload, request)

    # -- clients ---------------------------------------------------------------------

    @property
    def client_classes(self):
        return ("AzureOpenAI", "AsyncAzureOpenAI") if self.is_azure else ("OpenAI", "AsyncOpenAI")

    def check(self):
        from django.core import checks

        messages = super().check()
        if not self.is_azure and urlsplit(self.base_url).username is not None and self.configured_key():
            # The HTTP client turns URL credentials into Authorization: Basic, which replaces
            # the key's Authorization: Bearer: say so rather than drop the key in silence.
            messages.append(
                checks.Warning(
                    f"LLM_PROVIDERS[{self.alias!r}]['OPTIONS']['base_url'] carries credentials, which are "
                    "sent as Authorization: Basic in place of the API key: the API key is not sent.",
                    hint="Remove the user:password@ from base_url, or the API key, whichever the server "
                    "does not need; --dry-run shows the headers sent.",
                    id="llmapp.W004",
                )
            )
        return messages

    def client_options(self):
        if self.is_azure:
            return {
                "azure_endpoint": self.azure_endpoint,
                "azure_deployment": self.options.get("azure_deployment"),
                "api_version": self.options.get("api_version"),
            }
        return {
            "base_url": self.options.get("base_url"),
            "organization": self.options.get("organization"),
            "project": self.options.get("project"),
        }

    # -- calls -----------------------------------------------------------------------

    def open_stream(self, client, payload):
        if self.options.get("stream_usage", True):
            payload = {**payload, "stream_options": {"include_usage": True}}
        return client.chat.completions.create(**payload, stream=True)

    def read_answer(self, answer, request, request_id):
        answer = expect_object(answer)
        choices = expect_list(answer.get("choices") or [])
        if not choices:
            raise ProviderError(
                "the server's answer has no choices", provider=self.alias, request_id=request_id
            )
        choice = expect_object(choices[0])
        message = expect_object(choice.get("message"))
        content = expect_text(message.get("content"))
        usage = expect_object(answer.get("usage"), optional=True)
        details = expect_object(usage.get("prompt_tokens_details"), optional=True)
        # A refusal (structured outputs) comes as its own field, with no content.
        refused = bool(message.get("refusal")) and not content
        return Completion(
            text=content or "",
            usecase=request.usecase,
            provider=self.alias,
            model=expect_text(answer.get("model")) or request.model,
            finish_reason="refusal" if refused else expect_text(choice.get("finish_reason")),
            input_tokens=expect_count(usage.get("prompt_tokens")),
            output_tokens=expect_count(usage.get("completion_tokens")),
            # The input tokens OpenAI served from its prompt cache (counted in prompt_tokens too).
            cached_input_tokens=expect_count(details.get("cached_tokens")),
            request_id=request_id,
        )


def _cached(usage):
    """The input tokens OpenAI served from its prompt cache (counted in prompt_tokens too)."""
    details = getattr(usage, "prompt_tokens_details", None)
    return getattr(details, "cached_tokens", None)
