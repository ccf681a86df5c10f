"""The base class every provider backend extends."""

import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import threading
import weakref

from asgiref.sync import sync_to_async

from ..exceptions import ConfigurationError, ImproperlyInstalled, ProviderUnavailable
from ..redaction import mask_headers, redact, redact_sdk_logs, secrets_in
from ..types import Completion

#: What the SDKs are given as a key for servers that take none.
NO_KEY = "no-key"


class BaseProvider:
    """A configured provider: turns a CompletionRequest into a Completion.

    Subclasses set the class attributes below and implement ``complete()`` and
    ``describe_request()``; ``stream()``, ``acomplete()`` and ``astream()`` have working
    defaults.
    """

    #: OPTIONS keys this backend accepts.
    option_names = frozenset()
    #: OPTIONS keys whose values are secrets: never shown, logged or raised.
    secret_options = frozenset({"api_key"})
    #: The top of the provider's native temperature range; requests use 0 to 1.
    max_temperature = 1.0
    #: The model used when neither the use case nor OPTIONS["model"] names one.
    default_model = None
    #: The SDK this backend imports on first use, and the pip extra that installs it.
    package = None
    extra = None

    def __init__(self, alias, *, options=None, models=None):
        self.alias = alias
        self.options = dict(options or {})
        unknown = sorted(set(self.options) - self.option_names)
        if unknown:
            known = ", ".join(sorted(self.option_names)) or "none"
            raise ConfigurationError(
                f"LLM_PROVIDERS[{alias!r}]['OPTIONS'] has unknown key(s) {', '.join(unknown)} "
                f"for {type(self).__name__}; known: {known}."
            )
        self.models = list(models) if models else []

    def __repr__(self):
        # Never the options: they hold the API key.
        return f"<{type(self).__name__} alias={self.alias!r}>"

    @property
    def model(self):
        """The model a use case that names none gets."""
        return self.options.get("model") or (self.models[0] if self.models else self.default_model)

    def native_temperature(self, temperature):
        """Map a provider-neutral 0-1 temperature onto this provider's range."""
        return round(temperature * self.max_temperature, 4)

    #: Environment variables an API key falls back to, in order; empty for backends with no key.
    api_key_variables = ()

    def configured_key(self):
        """OPTIONS["api_key"], else the first key variable set, else None (never a placeholder)."""
        return self.options.get("api_key") or next(
            (os.environ[name] for name in self.api_key_variables if os.environ.get(name)), None
        )

    @property
    def api_key(self):
        """The configured key; a placeholder behind a base_url.

        Raises ConfigurationError naming what to set when there is none.
        """
        key = self.configured_key()
        if key:
            return key
        if self.options.get("base_url"):
            # A local server or gateway may take no key, but the SDKs insist on one.
            return NO_KEY
        variables = " or ".join(self.api_key_variables) or "an API key"
        # No word of .env or CLI flags: this reaches views of projects that have neither.
        raise ConfigurationError(
            f"provider {self.alias!r} has no API key: set {variables} "
            f"or LLM_PROVIDERS[{self.alias!r}]['OPTIONS']['api_key']."
        )

    def secrets(self):
        """Every credential this backend sends, in every form it travels in.

        Its key (OPTIONS or environment), the values of its custom headers, and the
        credentials in its URLs, also as the ``Authorization: Basic`` value they become.
        """
        secrets = secrets_in(self.options, secret_names=self.secret_options)
        return secrets + [os.environ[name] for name in self.api_key_variables if os.environ.get(name)]

    def check_connection(self):
        """Raise ConfigurationError when calls cannot work as configured (no key...); no network."""
        if self.api_key_variables:
            self.api_key  # noqa: B018 (raises when there is none)

    def redact(self, text):
        return redact(text, self.secrets())

    @classmethod
    def sdk_installed(cls):
        """Say whether the SDK is installed, without importing it (no start-up cost)."""
        if not cls.package:
            return True
        try:
            return importlib.util.find_spec(cls.package) is not None
        except (ImportError, ValueError):  # a dotted name whose parent package is missing
            return False

    def import_sdk(self):
        """Import this backend's SDK, or say which pip command installs it."""
        try:
            return importlib.import_module(self.package)
        except ImportError:
            raise ImproperlyInstalled(self.alias, self.package, self.extra) from None

    def complete(self, request):
        """Return a Completion for ``request``; raise ProviderError on failure."""
        raise NotImplementedError

    def stream(self, request):
        """Yield text chunks, then the Completion; the default yields it all at once."""
        yield from self.pieces(self.complete(request))

    async def acomplete(self, request):
        return await sync_to_async(self.complete, thread_sensitive=False)(request)

    async def astream(self, request):
        """The async twin of ``stream()``: the default awaits ``acomplete()`` and yields it all at once."""
        for piece in self.pieces(await self.acomplete(request)):
            yield piece

    def pieces(self, completion):
        """Return what a stream of an answer that came whole yields: its text, then ``completion``."""
        return [completion.text, completion] if completion.text else [completion]

    def stream_failed(self, error, chunks, request_id=None):
        """Return ``error`` as a stream's failure after ``chunks`` chunks of text.

        Once text has reached the caller the call cannot be retried, whatever failed.
        """
        if not chunks:
            return error
        if isinstance(error, ProviderUnavailable) or error.transient:
            return ProviderUnavailable(
                f"the stream was cut after {chunks} chunk(s) of text: {error.reason}",
                provider=self.alias,
                status_code=error.status_code,
                request_id=request_id or error.request_id,
            )
        error.transient = False
        return error

    def stream_unfinished(self, chunks, request_id=None):
        """The error of a stream that ended without the server's end of answer."""
        return ProviderUnavailable(
            "the stream ended before the server finished its answer",
            provider=self.alias,
            request_id=request_id,
            transient=not chunks,
        )

    def describe_request(self, request):
        """Return the request that would be sent, secrets masked (for --dry-run)."""
        raise NotImplementedError

    def check(self):
        """Return Django check messages about this backend's configuration."""
        from django.core import checks

        try:
            self.check_connection()
        except ConfigurationError as exc:
            return [
                checks.Warning(
                    str(exc), hint="Calls to this provider will fail until this is fixed.", id="llmapp.W003"
                )
            ]
        return []


class SDKProvider(BaseProvider):
    """A provider called through its vendor's SDK: build payload, send, parse.

    Subclasses set ``package``/``extra`` and implement ``build_client()``,
    ``build_payload()``, ``send()``, ``parse()`` and ``translate_error()``; the client
    is built on first use and shared, and ``complete``, ``acomplete`` and ``describe_request``
    need no code. To stream natively, they also implement ``open_stream()`` and set
    ``stream_reader``: ``stream()`` and ``astream()`` then need no code either.
    """

    #: The StreamReader subclass that reads this SDK's streamed chunks; None: a stream is the
    #: answer of ``complete()``, yielded at once.
    stream_reader = None

    def __init__(self, alias, *, options=None, models=None):
        super().__init__(alias, options=options, models=models)
        self._sdk_lock = threading.Lock()
        self._client = None
        self._async_clients = weakref.WeakKeyDictionary()

    def build_client(self, asynchronous=False, transport=None):
        """Return a new SDK client, an async one when asked; backends with an SDK implement it.

        With ``transport``, every request of the client goes through that HTTP transport
        (``--dry-run`` records with one).
        """
        raise NotImplementedError

    def new_client(self, asynchronous=False, transport=None):
        """Build a client with the SDK's loggers redacted: httpx logs every URL, userinfo included."""
        client = self.build_client(asynchronous, transport=transport)
        redact_sdk_logs()
        return client

    @property
    def client(self):
        """The SDK client: built on first use, then shared by every thread."""
        if self._client is None:
            with self._sdk_lock:
                if self._client is None:
                    self._client = self.new_client()
        return self._client

    def async_client(self):
        """The async SDK client of the running event loop."""
        # An async HTTP client belongs to the event loop it was first used on.
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            with self._sdk_lock:
                client = self._async_clients.get(loop)
                if client is None:
                    client = self._async_clients[loop] = self.new_client(asynchronous=True)
        return client

    def build_payload(self, request):
        """Return the keyword arguments of the SDK call for ``request``."""
        raise NotImplementedError

    #: Seconds an attempt may take when OPTIONS["timeout"] does not say: the client's own.
    default_timeout = 30

    @property
    def client_timeout(self):
        """The timeout the client is built with."""
        return self.options.get("timeout") or self.default_timeout

    def attempt_timeout(self, request):
        """The timeout this attempt needs on top of the client's, or None when the client's holds.

        Attempts are given what is left of the call's deadline, capped by the client's own
        timeout; passing the same value again would cost the SDK a per-request copy of its
        options on every call.
        """
        if request.timeout is None or abs(request.timeout - self.client_timeout) < 0.001:
            return None
        return request.timeout

    def send(self, client, payload):
        """Make the SDK call with ``payload``; with an async client, return its coroutine."""
        raise NotImplementedError

    def parse(self, response, request):
        """Return the Completion of the SDK's ``response``."""
        raise NotImplementedError

    def translate_error(self, exc, request_id=None, timeout=None):
        """Turn an SDK or transport exception into a ProviderError with no secret in it."""
        raise NotImplementedError

    def open_stream(self, client, payload):
        """Start the SDK's stream of chunks for ``payload``; with an async client, return its coroutine."""
        raise NotImplementedError

    def complete(self, request):
        payload = self.build_payload(request)
        try:
            response = self.send(self.client, payload)
        except Exception as exc:
            raise self.translate_error(exc, timeout=request.timeout) from None
        return self.parse(response, request)

    async def acomplete(self, request):
        payload = self.build_payload(request)
        try:
            response = await self.send(self.async_client(), payload)
        except Exception as exc:
            raise self.translate_error(exc, timeout=request.timeout) from None
        return self.parse(response, request)

    # stream() and astream() differ only in how they open, read and close the SDK's stream:
    # what a chunk means is the reader's, in one place for both.

    def stream(self, request):
        if self.stream_reader is None:
            yield from super().stream(request)
            return
        payload = self.build_payload(request)
        reader = self.stream_reader(self, request)
        try:
            chunks = self.open_stream(self.client, payload)
            reader.opened(chunks)
            # Closed also when our caller stops reading early: that ends the HTTP response.
            with contextlib.closing(chunks):
                for chunk in chunks:
                    yield from reader.feed(chunk)
        except Exception as exc:
            raise reader.failed(exc) from None
        yield reader.completion()

    async def astream(self, request):
        if self.stream_reader is None:
            async for piece in super().astream(request):
                yield piece
            return
        payload = self.build_payload(request)
        reader = self.stream_reader(self, request)
        try:
            chunks = await self.open_stream(self.async_client(), payload)
            reader.opened(chunks)
            async with _aclosing(chunks):
                async for chunk in chunks:
                    for text in reader.feed(chunk):
                        yield text
        except Exception as exc:
            raise reader.failed(exc) from None
        yield reader.completion()

    def describe_request(self, request):
        """Return the request the SDK would send, credentials masked (for --dry-run).

        The SDK builds it, headers and all, as for a real call, and a transport records it
        instead of sending it: a dry run cannot disagree with the wire. It refuses what a
        real call would refuse (no key, no SDK).
        """
        transport = RecordingTransport()
        client = self.new_client(transport=transport)
        try:
            self.send(client, self.build_payload(request))
        except Exception as exc:
            if transport.request is None:
                raise self.translate_error(exc, timeout=request.timeout) from None
        finally:
            client.close()
        sent = transport.request
        return {
            "method": sent.method,
            "url": self.redact(str(sent.url)),
            # Lower-case names, as HTTP/2 sends them: the SDK's and the HTTP client's own differ in case.
            "headers": mask_headers(sent.headers.items()),
            "json": json.loads(sent.content) if sent.content else None,
        }


def _aclosing(chunks):
    """Return an async context manager that closes an SDK's async stream: its own, else aclose()."""
    return chunks if hasattr(chunks, "__aexit__") else contextlib.aclosing(chunks)


class StreamReader:
    """What one streamed answer has said so far, fed the SDK's chunks one at a time.

    ``stream()`` and ``astream()`` share it, so that a chunk means the same in both. A
    subclass implements ``read()``, and sets the fields below as the chunks tell them.
    """

    #: The response header with the request id, for SDKs whose stream object carries the response.
    request_id_header = None

    def __init__(self, provider, request):
        self.provider = provider
        self.request = request
        self.parts = []
        self.model = request.model
        self.request_id = None
        self.finish_reason = None
        self.input_tokens = None
        self.output_tokens = None

    def opened(self, chunks):
        """Note what the SDK's stream says before its first chunk."""
        if self.request_id_header:
            self.request_id = chunks.response.headers.get(self.request_id_header)

    def read(self, chunk):
        """Take the fields ``chunk`` carries; return the texts it adds to the answer."""
        raise NotImplementedError

    def feed(self, chunk):
        """Read ``chunk``; return its texts, which are the answer's next chunks."""
        texts = [text for text in self.read(chunk) if text]
        self.parts.extend(texts)
        return texts

    @property
    def ended(self):
        """Whether the server said its answer is whole; by default, whether it gave a finish reason."""
        return self.finish_reason is not None

    def failed(self, exc):
        """Return the ProviderError the stream raises for ``exc``, given the text already yielded."""
        error = self.provider.translate_error(exc, request_id=self.request_id, timeout=self.request.timeout)
        return self.provider.stream_failed(error, len(self.parts), self.request_id)

    def completion(self):
        """Return the answer's Completion; raise stream_unfinished if the server did not end it."""
        if not self.ended:
            raise self.provider.stream_unfinished(len(self.parts), self.request_id)
        return Completion(
            text="".join(self.parts),
            usecase=self.request.usecase,
            provider=self.provider.alias,
            model=self.model,
            finish_reason=self.finish_reason,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            request_id=self.request_id,
        )


class NotSent(Exception):
    """What RecordingTransport raises in place of an answer."""


class RecordingTransport:
    """An HTTP transport that keeps the request it is given instead of sending it.

    Duck-typed after httpx's BaseTransport, so that llmapp imports no HTTP library: the
    SDKs use httpx or httpx2, by version.
    """

    request = None

    def handle_request(self, request):
        request.read()
        self.request = request
        raise NotSent("recorded for --dry-run, not sent")

    def close(self):
        pass
