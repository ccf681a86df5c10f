"""Google Gemini, through the Gemini Developer API or Vertex AI.

The ``google-genai`` SDK is imported on first use, never at start-up. The
Developer API takes an API key; Vertex AI (``vertexai: True``) takes a project
and location and finds credentials as Google's SDKs do (Application Default
Credentials), or an API key alone in Vertex AI express mode.
"""

import inspect
import math
import os
import sys

from llmapp.calls.types import Completion
from llmapp.exceptions import (
    ConfigurationError,
    ProviderError,
    ProviderRefused,
)
from llmapp.providers.base import NO_KEY, SDKProvider
from llmapp.providers.http import HINTS, malformed_answer, retry_after, retry_info_delay, status_error
from llmapp.providers.streaming import ResponseClosingStream, StreamReader, note_response

GEMINI_URL = "https://generativelanguage.googleapis.com"
VERTEX_GLOBAL_URL = "https://aiplatform.googleapis.com"
# Pinned so the URLs do not move with the SDK's default (v1beta before 3.x, v1 since).
DEVELOPER_API_VERSION = "v1beta"
VERTEX_API_VERSION = "v1beta1"
DEFAULT_MODEL = "gemini-2.5-flash"
# Seconds. Gemini 2.5 models think before they answer, so allow more than a chat model needs.
DEFAULT_TIMEOUT = 60
# Looked up in this order, as the SDK does: GOOGLE_API_KEY wins when both are set.
API_KEY_VARIABLES = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
PROJECT_VARIABLE = "GOOGLE_CLOUD_PROJECT"
LOCATION_VARIABLE = "GOOGLE_CLOUD_LOCATION"
# Vertex AI's multi-region locations have their own hosts.
MULTI_REGIONS = frozenset({"us", "eu"})
VERTEX_ONLY_OPTIONS = ("project", "location", "credentials")


class GeminiStreamReader(StreamReader):
    """Reads GenerateContentResponse chunks: the first candidate's text, and a blocked prompt."""

    def read(self, chunk):
        # Gemini sends no request id header: a proxy's, else the chunk's responseId.
        self.request_id = self.request_id or _request_id(chunk)
        self.model = chunk.model_version or self.model
        if chunk.usage_metadata:
            self.input_tokens, self.output_tokens = _tokens(chunk.usage_metadata)
            self.cached_input_tokens = chunk.usage_metadata.cached_content_token_count
        self.provider.raise_if_blocked(chunk, self.request_id)
        texts = []
        for candidate in (chunk.candidates or [])[:1]:
            self.finish_reason = _finish_reason(candidate) or self.finish_reason
            texts.append(_text(candidate))
        return texts


class GeminiProvider(SDKProvider):
    """generateContent through the official ``google-genai`` SDK."""

    error_hints = HINTS | {
        401: "check the provider's credentials",
        403: "the key or credentials may not use this model or project (is the API enabled?)",
        404: "check the model name, the location and the base_url",
    }

    option_names = frozenset(
        {
            "api_key",
            "vertexai",
            "project",
            "location",
            # A google.auth.credentials.Credentials for Vertex AI; default: Application Default Credentials.
            "credentials",
            "base_url",
            "api_version",
            "model",
            "timeout",
            "structured_output",
        }
    )
    output_modes = ("native", "prompted")
    max_temperature = 2.0
    default_model = DEFAULT_MODEL
    package = "google.genai"
    extra = "gemini"
    distribution = "google-genai"
    min_version = "1.50"
    default_timeout = DEFAULT_TIMEOUT
    stream_reader = GeminiStreamReader
    sentry_integration = "sentry_sdk.integrations.google_genai.GoogleGenAIIntegration"
    key_pattern = r"\bAIza[0-9A-Za-z_-]{35}"
    sdk_loggers = ("google_genai",)

    @property
    def is_vertex(self):
        return bool(self.options.get("vertexai"))

    @property
    def api_key_variables(self):
        # Vertex AI authenticates with credentials; a key there comes from OPTIONS only.
        return () if self.is_vertex else API_KEY_VARIABLES

    @property
    def api_version(self):
        return self.options.get("api_version") or (
            VERTEX_API_VERSION if self.is_vertex else DEVELOPER_API_VERSION
        )

    def connection(self):
        """Return how to reach the API: the Client's keyword arguments, bar http_options.

        Reads only the options and the environment (no SDK, no network), so checks can
        use it; raises ConfigurationError naming what to set.
        """
        where = f"LLM_PROVIDERS[{self.alias!r}]['OPTIONS']"
        if not self.is_vertex:
            misplaced = [name for name in VERTEX_ONLY_OPTIONS if self.options.get(name)]
            if misplaced:
                raise self.cannot_call(
                    f"{where} sets {', '.join(misplaced)}, which only Vertex AI uses: "
                    f"add 'vertexai': True or remove them."
                )
            key = self.configured_key()
            if not key:
                if not self.options.get("base_url"):
                    raise self.cannot_call(
                        f"provider {self.alias!r} has no API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) "
                        f"or {where}['api_key']."
                    )
                # A proxy at base_url may take no key, but the SDK insists on one.
                key = NO_KEY
            return {"vertexai": False, "api_key": key}

        key = self.options.get("api_key")
        if key and self.options.get("credentials"):
            raise self.cannot_call(f"{where} sets both api_key and credentials: keep one of them.")
        project = self.options.get("project")
        if key and not project:
            # Vertex AI express mode: an API key and no project.
            return {"vertexai": True, "api_key": key}
        project = project or os.environ.get(PROJECT_VARIABLE)
        if not project:
            raise self.cannot_call(
                f"provider {self.alias!r} uses Vertex AI but has no project: set {where}['project'] "
                f"(or {PROJECT_VARIABLE}), or {where}['api_key'] for Vertex AI express mode."
            )
        location = self.options.get("location") or os.environ.get(LOCATION_VARIABLE) or "global"
        return {
            "vertexai": True,
            "api_key": key or None,
            "project": project,
            "location": location,
            # None: the SDK finds Application Default Credentials on the first call.
            "credentials": self.options.get("credentials"),
        }

    def base_url_for(self, connection):
        if self.options.get("base_url"):
            return self.options["base_url"].rstrip("/")
        if not connection.get("vertexai"):
            return GEMINI_URL
        location = connection.get("location")
        if not location or location == "global":
            return VERTEX_GLOBAL_URL
        if location in MULTI_REGIONS:
            return f"https://aiplatform.{location}.rep.googleapis.com"
        return f"https://{location}-aiplatform.googleapis.com"

    def secrets(self):
        secrets = super().secrets()
        token = getattr(self.options.get("credentials"), "token", None)
        return [*secrets, str(token)] if token else secrets

    def check_connection(self):
        self.connection()

    @property
    def base_url(self):
        try:
            return self.base_url_for(self.connection())
        except ConfigurationError:
            return self.base_url_for({"vertexai": self.is_vertex})

    # -- building the call ---------------------------------------------------------

    def build_payload(self, request):
        """Return the keyword arguments of ``models.generate_content`` for ``request``."""
        types = self.import_sdk().types
        config = types.GenerateContentConfig(
            system_instruction=request.prompt or None,
            temperature=self.native_temperature(request.temperature),
            max_output_tokens=request.max_output_tokens,
        )
        if request.output_mode == "native":
            if "response_json_schema" not in types.GenerateContentConfig.model_fields:
                raise self.cannot_call(
                    "the installed google-genai SDK has no response_json_schema: upgrade it, or set "
                    f"LLM_PROVIDERS[{self.alias!r}]['OPTIONS']['structured_output'] to 'prompted'."
                )
            config.response_mime_type = "application/json"
            config.response_json_schema = request.output.wire_schema
        timeout = self.attempt_timeout(request)
        if timeout is not None:
            # What is left of the call's deadline bounds this attempt.
            config.http_options = types.HttpOptions(timeout=_milliseconds(timeout))
        return {
            "model": request.model,
            # Gemini calls the assistant's turns the model's.
            "contents": [
                types.Content(
                    role="model" if role == "assistant" else "user", parts=[types.Part(text=content)]
                )
                for role, content in request.turns
            ],
            "config": config,
        }

    # -- clients ---------------------------------------------------------------------

    def build_client(self, asynchronous=False, transport=None):
        genai = self.import_sdk()
        types = genai.types
        http_options = {
            "base_url": self.options.get("base_url"),
            "api_version": self.api_version,
            # HttpOptions.timeout is in milliseconds; ours are seconds.
            "timeout": _milliseconds(self.client_timeout),
        }
        if hasattr(types, "HttpRetryOptions"):
            # llmapp owns retries: one attempt. Setting it also turns off the SDK's
            # implicit retry of aiohttp connection errors in async calls.
            http_options["retry_options"] = types.HttpRetryOptions(attempts=1)
        if asynchronous and "async_client_args" in types.HttpOptions.model_fields:
            # So that an async stream closed early can close its HTTP response (ResponseClosingStream).
            # An httpx option: the SDK drops it when it uses aiohttp (if installed), whose
            # responses the event loop closes later.
            http_options["async_client_args"] = {"event_hooks": {"response": [note_response]}}
        connection = self.connection()
        http_options["client_args"] = self.http_client_args(transport=transport)
        if transport is not None and connection.get("project") and not connection.get("api_key"):
            # Getting a real access token is a network call: a dry run shows a stand-in.
            from google.oauth2.credentials import Credentials

            connection["credentials"] = Credentials(token="stand-in-access-token")  # noqa: S106
        try:
            client = genai.Client(
                **{name: value for name, value in connection.items() if value is not None},
                http_options=types.HttpOptions(**http_options),
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"the google-genai SDK rejected LLM_PROVIDERS[{self.alias!r}]['OPTIONS']: "
                f"{self.redact(str(exc))}"
            ) from None
        return client.aio if asynchronous else client

    async def aclose_client(self, client):
        await client.aclose()

    # -- calls -----------------------------------------------------------------------

    def send(self, client, payload):
        return client.models.generate_content(**payload)

    def open_stream(self, client, payload):
        chunks = client.models.generate_content_stream(**payload)
        return ResponseClosingStream.opening(chunks) if inspect.isawaitable(chunks) else chunks

    def parse(self, response, request):
        request_id = _request_id(response)
        self.raise_if_blocked(response, request_id)
        if not response.candidates:
            raise ProviderError(
                "the server's answer has no candidates", provider=self.alias, request_id=request_id
            )
        candidate = response.candidates[0]
        input_tokens, output_tokens = _tokens(response.usage_metadata)
        return Completion(
            text=_text(candidate),
            usecase=request.usecase,
            provider=self.alias,
            model=response.model_version or request.model,
            finish_reason=_finish_reason(candidate),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            # Counted in the prompt's tokens too, as OpenAI does.
            cached_input_tokens=getattr(response.usage_metadata, "cached_content_token_count", None),
            request_id=request_id,
        )

    def raise_if_blocked(self, response, request_id):
        feedback = response.prompt_feedback
        reason = _enum_name(feedback.block_reason) if feedback else None
        if reason and not response.candidates:
            raise ProviderRefused(
                f"Gemini blocked the prompt ({reason})",
                provider=self.alias,
                request_id=request_id,
                finish_reason=reason,
            )

    # -- errors ----------------------------------------------------------------------

    def sdk_error(self, exc, request_id=None, timeout=None):
        """Return the ProviderError of a google-genai or google-auth exception, or None for another."""
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            headers = getattr(getattr(exc, "response", None), "headers", None) or {}
            return status_error(
                self,
                exc.code,
                " ".join(str(part) for part in (exc.status, exc.message) if part) or "error",
                request_id=headers.get("x-request-id") or request_id,
                retry_after=retry_after(headers) or retry_info_delay(exc.details),
                hints=self.error_hints,
            )
        if isinstance(exc, errors.UnknownApiResponseError):
            return malformed_answer(self, request_id)
        auth = sys.modules.get("google.auth.exceptions")
        if auth is None:
            return None
        if isinstance(exc, auth.DefaultCredentialsError):
            return self.cannot_call(
                f"provider {self.alias!r} found no Google Cloud credentials for Vertex AI: run "
                "`gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or set "
                f"LLM_PROVIDERS[{self.alias!r}]['OPTIONS']['credentials'] ({self.redact(str(exc))})."
            )
        if isinstance(exc, auth.RefreshError):
            return ProviderError(
                f"the Google Cloud credentials could not be refreshed: {self.redact(str(exc))}",
                provider=self.alias,
                request_id=request_id,
                transient=bool(getattr(exc, "retryable", False)),
            )
        if isinstance(exc, auth.TransportError):
            return self.unreachable(exc, request_id)
        return None


def _milliseconds(seconds):
    """Seconds (ours) to whole milliseconds (HttpOptions.timeout), at least 1."""
    return max(1, math.ceil(float(seconds) * 1000))


def _enum_name(value):
    """Return an SDK enum (or an unknown raw string) as the API names it (``SAFETY``), or None."""
    if value is None:
        return None
    return str(getattr(value, "value", value)) or None


def _finish_reason(candidate):
    return _enum_name(candidate.finish_reason)


def _text(candidate):
    """Return the answer's text: the candidate's text parts, without the model's thoughts."""
    content = candidate.content
    parts = (content.parts if content else None) or []
    return "".join(part.text for part in parts if part.text and not part.thought)


def _tokens(usage):
    """Return (input, output) tokens; output includes thinking tokens, which are billed as output."""
    if usage is None:
        return None, None
    output = usage.candidates_token_count
    if usage.thoughts_token_count:
        output = (output or 0) + usage.thoughts_token_count
    return usage.prompt_token_count, output


def _request_id(response):
    """Return a proxy's x-request-id header, else Gemini's own responseId (it sends no id header)."""
    http_response = getattr(response, "sdk_http_response", None)
    headers = (http_response.headers if http_response else None) or {}
    lowered = {name.lower(): value for name, value in headers.items()}
    return lowered.get("x-request-id") or response.response_id
