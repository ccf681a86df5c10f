"""The providers whose vendor SDKs Stainless generates (openai, anthropic): one client, one error model.

Those SDKs are alike in everything llmapp touches: a client class and its async twin that
take ``api_key``, ``timeout``, ``max_retries``, ``default_headers`` and an ``http_client``
of the SDK's own kind; a per-request ``timeout``; ``APITimeoutError``,
``APIConnectionError``, ``APIStatusError`` (with ``body`` and ``response``) and
``APIResponseValidationError``; pydantic answer types. A provider on such an SDK names its
client classes, its own client options and its answer type, and writes only the call.
"""

import functools
import json
import sys

from llmapp.providers.base import SDKProvider
from llmapp.providers.finish import REFUSALS, refusal
from llmapp.providers.http import error_message, malformed_answer, retry_after, retry_info_delay, status_error


class StainlessProvider(SDKProvider):
    """An SDKProvider on a Stainless-generated SDK."""

    #: The SDK's client class and its async twin, by name.
    client_classes = (None, None)
    #: The SDK's answer type, by its path in the SDK module ("types.Message"), which a whole
    #: JSON answer to a stream request is read into.
    answer_type = None

    def client_options(self):
        """The client's keyword arguments of this vendor's own (``base_url``...)."""
        return {}

    def build_client(self, asynchronous=False, transport=None):
        sdk = self.import_sdk()
        cls = getattr(sdk, self.client_classes[asynchronous])
        http_client = sdk.DefaultAsyncHttpxClient if asynchronous else sdk.DefaultHttpxClient
        return cls(
            api_key=self.api_key,
            timeout=self.client_timeout,
            # llmapp owns retries: the SDK must not retry on its own.
            max_retries=0,
            default_headers=self.options.get("default_headers"),
            http_client=http_client(**self.http_client_args(asynchronous, transport)),
            **self.client_options(),
        )

    def with_timeout(self, payload, request):
        """Return ``payload`` with the attempt's own timeout, when it needs one (``attempt_timeout``)."""
        timeout = self.attempt_timeout(request)
        return payload if timeout is None else {**payload, "timeout": timeout}

    def sdk_error(self, exc, request_id=None, timeout=None):
        sdk = self.import_sdk()
        if isinstance(exc, sdk.APITimeoutError):
            return self.timed_out(timeout, request_id)
        if isinstance(exc, sdk.APIConnectionError):
            return self.unreachable(exc.__cause__ or exc, request_id)
        if isinstance(exc, sdk.APIStatusError):
            refused = self.refused_request(exc)
            if refused is not None:
                return refused
            return status_error(
                self,
                self.error_status(exc),
                error_message(exc.body) or exc.response.reason_phrase or "error",
                request_id=self.error_request_id(exc) or request_id,
                # Google's RetryInfo comes through OpenAI-compatible gateways in front of Gemini.
                retry_after=retry_after(exc.response.headers) or retry_info_delay(exc.body),
                hints=self.error_hints,
                transient=self.transient_statuses,
            )
        if isinstance(exc, sdk.APIResponseValidationError):
            return malformed_answer(self, request_id)
        if isinstance(exc, sdk.APIError):
            # An error event in the middle of a stream that began with 200 (openai): the
            # connection's failure, which a retry may not meet.
            return self.connection_failed(exc, request_id)
        return None

    def refused_request(self, exc):
        """The ProviderRefused of an error answer that is a content filter's refusal, or None.

        Azure OpenAI refuses a prompt its filters block with a 400 whose code is
        ``content_filter``, before any answer: the same refusal as one in an answer.
        """
        error = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        if self.error_status(exc) != 400 or not isinstance(code, str) or code not in REFUSALS:
            return None
        return refusal(
            self, code, request_id=self.error_request_id(exc), detail=error_message(exc.body) or None
        )

    def error_status(self, exc):
        """The HTTP status of the SDK's ``APIStatusError`` ``exc``."""
        return exc.status_code

    def error_request_id(self, exc):
        """The request id of the SDK's ``APIStatusError`` ``exc``: its header, or its body's."""
        header = exc.response.headers.get(self.request_id_header) if self.request_id_header else None
        # A proxy in between may keep only the one in the body.
        body = exc.body.get("request_id") if isinstance(exc.body, dict) else None
        return header or (body if isinstance(body, str) else None)

    def answer_from_json(self, data, response):
        answer_class = functools.reduce(getattr, self.answer_type.split("."), self.import_sdk())
        answer = answer_class.model_validate(data)
        answer._request_id = response.headers.get(self.request_id_header)
        return answer


class PostedJSONProvider(StainlessProvider):
    """A StainlessProvider that posts a call that is not streamed itself, and reads its JSON.

    The SDK's own method (``chat.completions.create``) walks each request through its type
    annotations and reads each answer into pydantic models: 0.6 ms of a 1.5 ms call,
    measured, for a body that llmapp builds as plain JSON and reads as a dict.
    ``client.post()``, the SDK's documented way to call any endpoint, sends the same
    request: the same URL (Azure's deployment path too), headers, timeout and errors.
    Streams still go through the SDK's method, which reads their events. Not for an SDK
    whose method does more than that on the way (anthropic's opens an OpenTelemetry span
    and sends its trace headers).
    """

    #: The path the SDK's own method posts to ("/chat/completions").
    path = None

    def send(self, client, payload):
        """Post ``payload`` (the SDK method's keyword arguments) as that method would; return the
        HTTP response, or with an async client its coroutine."""
        body = dict(payload)
        options = {"timeout": body.pop("timeout")} if "timeout" in body else {}
        return client.post(self.path, cast_to=response_class(self.import_sdk()), body=body, options=options)

    def parse(self, response, request):
        """Read ``send()``'s HTTP response into a Completion (``read_answer()``)."""
        request_id = response.headers.get(self.request_id_header)
        try:
            # Deep nesting is a RecursionError, not a ValueError.
            answer = json.loads(response.content)
            return self.read_answer(answer, request, request_id)
        except (ValueError, RecursionError, Malformed):
            raise malformed_answer(self, request_id) from None

    def read_answer(self, answer, request, request_id):
        """Return the Completion of ``answer``, the JSON of a whole answer, read with the
        ``expect_*`` helpers: JSON of another shape is Malformed."""
        raise NotImplementedError

    def answer_from_json(self, data, response):
        # The response to a stream request that holds a whole answer was read whole: parse() reads it.
        return response


class Malformed(Exception):
    """An answer's JSON is not of the shape its API documents."""


def expect_object(value, optional=False):
    """``value`` if it is a JSON object ({} for null, when ``optional``); else Malformed."""
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise Malformed
    return value


def expect_list(value):
    if not isinstance(value, list):
        raise Malformed
    return value


def expect_text(value):
    """``value`` if it is a string or null; else Malformed."""
    if value is not None and not isinstance(value, str):
        raise Malformed
    return value


def expect_count(value):
    """``value`` if it is a number of tokens (some servers send 12.0) or null; else Malformed."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise Malformed
    return value


@functools.cache
def response_class(sdk):
    """The Response class of the HTTP library ``sdk``'s clients are built on (httpx, or httpx2
    in newer SDKs): as ``cast_to`` of ``client.post()``, the response comes back as it is."""
    library = sdk.DefaultHttpxClient.__mro__[1].__module__.partition(".")[0]
    return sys.modules[library].Response
