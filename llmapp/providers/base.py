"""The base class every provider backend extends."""

import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import threading
import time
import weakref

from asgiref.sync import sync_to_async

from llmapp.calls.types import evolve
from llmapp.conf.secrets import mask_headers, redact, redact_sdk_logs, secrets_in
from llmapp.exceptions import (
    ConfigurationError,
    ImproperlyInstalled,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from llmapp.providers.deadline import END, ChunkWaits, hold_deadline, left, within
from llmapp.providers.finish import normal_finish_reason, refusal
from llmapp.providers.http import (
    HINTS,
    TRANSIENT_STATUSES,
    malformed_answer,
)
from llmapp.providers.streaming import aclosing

#: What the SDKs are given as a key for servers that take none.
NO_KEY = "no-key"

#: The clock of set-up times (tests replace it, with the call's, to run in simulated time).
clock = time.perf_counter


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
    #: The SDK's distribution (what pip installs) and the oldest release this backend works
    #: with, which the extra asks for too: an older one installed otherwise is a W010.
    distribution = None
    min_version = None

    # What the rest of llmapp needs of a backend is read from its class (see
    # ``providers.backend_classes()``), so that adding one edits nothing else:
    #: the sentry-sdk integration that instruments its SDK, switched off (llmapp's own spans
    #: say the same; both would count every call twice), as an import string;
    sentry_integration = None
    #: a regular expression of its keys' shape, masked in any text llmapp redacts (a server
    #: may echo a key it was not given here); linear, as redaction's patterns must be;
    key_pattern = None
    #: the loggers of its SDK, whose records are redacted (they log URLs and headers).
    sdk_loggers = ()
    #: How it can ask for a typed answer, the default first: "native" (the provider's own
    #: structured output, which ``build_payload`` sends for a request whose ``output_mode``
    #: says so) and "prompted" (the schema in the system prompt: any backend that sends the
    #: prompt can). OPTIONS["structured_output"] picks one, where option_names has it.
    output_modes = ("prompted",)

    def __init__(self, alias, *, options=None, models=None):
        self.alias = alias
        self.options = dict(options or {})
        unknown = self.unknown_options(alias, self.options)
        if unknown is not None:
            raise unknown
        unknown = self.unknown_output_mode(alias, self.options)
        if unknown is not None:
            raise unknown
        self.models = list(models) if models else []

    @classmethod
    def unknown_options(cls, alias, options):
        """The ConfigurationError of OPTIONS keys this backend does not take, or None."""
        unknown = sorted(set(options) - cls.option_names)
        if not unknown:
            return None
        known = ", ".join(sorted(cls.option_names)) or "none"
        return ConfigurationError(
            f"LLM_PROVIDERS[{alias!r}]['OPTIONS'] has unknown key(s) {', '.join(unknown)} "
            f"for {cls.__name__}; known: {known}.",
            check_id="llmapp.E003",
            hint="Check its spelling against the known options, or remove it.",
        )

    @classmethod
    def unknown_output_mode(cls, alias, options):
        """The ConfigurationError of an OPTIONS["structured_output"] this backend cannot do, or None."""
        mode = options.get("structured_output")
        if mode is None or mode in cls.output_modes:
            return None
        # Only a short string is shown: a long one may be a misplaced key.
        said = repr(mode) if isinstance(mode, str) and len(mode) <= 10 else f"a {type(mode).__name__}"
        return ConfigurationError(
            f"LLM_PROVIDERS[{alias!r}]['OPTIONS']['structured_output'] is {said}; "
            f"{cls.__name__} can do: {', '.join(map(repr, cls.output_modes)) or 'neither'}.",
            check_id="llmapp.E025",
            hint='"native" asks the provider for the schema itself; "prompted" puts it in the '
            "system prompt, for servers that lack structured output.",
        )

    def disallowed_model(self, model, what="model"):
        """The message of a model that MODELS does not allow on this provider, or None."""
        if not self.models or model in self.models:
            return None
        return redact(
            f"{what} {model!r} is not allowed for provider {self.alias!r}; "
            f"its MODELS allow: {', '.join(self.models)}."
        )

    def __repr__(self):
        # Never the options: they hold the API key.
        return f"<{type(self).__name__} alias={self.alias!r}>"

    @property
    def model(self):
        """The model a use case that names none gets."""
        return self.options.get("model") or (self.models[0] if self.models else self.default_model)

    @property
    def output_mode(self):
        """How a typed answer is asked for here: OPTIONS["structured_output"], else the
        first of ``output_modes``; None when it cannot be."""
        return self.options.get("structured_output") or next(iter(self.output_modes), None)

    def output_request(self, request):
        """Return ``request`` as this backend sends it: its typed answer asked for natively, or
        with the schema after the system prompt."""
        if request.output is None:
            return request
        mode = self.output_mode
        if mode == "native" and "prompted" in self.output_modes and not self.takes_natively(request.output):
            mode = "prompted"
        if mode != "prompted":
            return evolve(request, output_mode=mode)
        instructions = request.output.instructions()
        prompt = f"{request.prompt}\n\n{instructions}" if request.prompt else instructions
        return evolve(request, output_mode=mode, prompt=prompt)

    def takes_natively(self, output):
        """Whether the provider's structured output can ask for ``output`` (an Output): else
        it is asked for in the prompt."""
        return True

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
        raise self.cannot_call(
            f"provider {self.alias!r} has no API key: set {variables} "
            f"or LLM_PROVIDERS[{self.alias!r}]['OPTIONS']['api_key']."
        )

    def cannot_call(self, message):
        """The ConfigurationError of a provider that calls cannot reach as configured (no key...)."""
        return ConfigurationError(
            message, check_id="llmapp.W003", hint="Calls to this provider will fail until this is fixed."
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

    @classmethod
    def sdk_problem(cls, alias):
        """An ImproperlyInstalled if the SDK is not installed or is older than ``min_version``, else None.

        Found without importing it. An SDK whose version can't be read (vendored, a build
        from source, metadata left half-removed) is taken as it is.
        """
        if not cls.sdk_installed():
            return ImproperlyInstalled(alias, cls.package, cls.extra)
        if not (cls.distribution and cls.min_version):
            return None
        from importlib import metadata

        try:
            installed = metadata.version(cls.distribution)
        except (metadata.PackageNotFoundError, ValueError):
            return None
        release = _release(installed)
        if release is None or release >= _release(cls.min_version):
            return None
        return ImproperlyInstalled(
            alias, cls.distribution, cls.extra, installed=installed, needed=cls.min_version
        )

    #: The SDK module, once import_sdk() has imported it and found it recent enough.
    _sdk = None

    def import_sdk(self):
        """Import this backend's SDK, or say which pip command installs it (or upgrades it)."""
        if self._sdk is None:
            try:
                sdk = importlib.import_module(self.package)
            except ImportError:
                raise ImproperlyInstalled(self.alias, self.package, self.extra) from None
            # An SDK too old fails in ways that blame the settings instead.
            if (problem := self.sdk_problem(self.alias)) is not None:
                raise problem
            self._sdk = sdk
        return self._sdk

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
        return completion.pieces()

    def stream_failed(self, error, chunks, request_id=None):
        """Return ``error`` as a stream's failure after ``chunks`` chunks of text.

        Once text has reached the caller the call cannot be retried, whatever failed.
        """
        if not chunks:
            return error
        error.try_elsewhere = False  # another route would add to the part the caller has
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
        try:
            self.check_connection()
        except ConfigurationError as exc:
            # A backend of a project's own may raise one without an id: calls cannot work.
            return [exc.as_check() if exc.check_id else self.cannot_call(str(exc)).as_check()]
        return []


class SDKProvider(BaseProvider):
    """A provider called through its vendor's SDK: build payload, send, parse.

    Subclasses set ``package``/``extra`` and implement ``build_client()``,
    ``build_payload()``, ``send()``, ``parse()`` and ``sdk_error()`` (the SDK's own
    exceptions; the rest is translated here); the client is built on first use and shared,
    and ``complete``, ``acomplete`` and ``describe_request`` need no code. To stream
    natively, they also implement ``open_stream()`` and set ``stream_reader``: ``stream()``
    and ``astream()`` then need no code either. An SDK that Stainless generates has most of
    this in ``stainless.StainlessProvider``.
    """

    #: The StreamReader subclass that reads this SDK's streamed chunks; None: a stream is the
    #: answer of ``complete()``, yielded at once.
    stream_reader = None

    def __init__(self, alias, *, options=None, models=None):
        super().__init__(alias, options=options, models=models)
        self._sdk_lock = threading.Lock()
        self._client = None
        # id(loop) -> (a weak reference to the loop, its client, the client's closer); see async_client().
        self._async_clients = {}

    def build_client(self, asynchronous=False, transport=None):
        """Return a new SDK client, an async one when asked; backends with an SDK implement it.

        Its HTTP client is built with ``http_client_args()``. With ``transport``, every
        request of the client goes through that HTTP transport (``--dry-run`` records with one).
        """
        raise NotImplementedError

    def http_client_args(self, asynchronous=False, transport=None):
        """Return the keyword arguments of the SDK client's HTTP client (the SDK's default kind).

        A sync one holds the call's deadline while an answer's body comes in (``hold_deadline``).
        An async one is built by the backend rather than by the SDK, whose own closes itself,
        when collected, on whatever event loop then runs: the wrong one, once its own loop
        closed without closing it (see ``async_client()``), and the close fails noisily.
        """
        args = {} if asynchronous else {"event_hooks": {"response": [hold_deadline]}}
        if transport is not None:
            # No proxies from the environment: they would route around the transport.
            args |= {"transport": transport, "trust_env": False}
        return args

    def new_client(self, asynchronous=False, transport=None):
        """Build a client with the SDK's loggers redacted: httpx logs every URL, userinfo included."""
        client = self.build_client(asynchronous, transport=transport)
        redact_sdk_logs(self.sdk_loggers)
        return client

    def client_for(self, request, asynchronous=False):
        """Return the SDK client for ``request``'s attempt, its set-up time noted on the call.

        A process's first call imports the SDK and builds its client (seconds, for some
        SDKs): counted as latency, that would skew p50/p95 after every restart. The call
        (``request.deadline``, its Attempts) adds it up apart; nearly always 0.
        """
        started = clock()
        client = self.async_client() if asynchronous else self.client
        if request.deadline is not None:
            request.deadline.setup += clock() - started
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
        """The async SDK client of the running event loop: built on first use, closed with the loop.

        An async HTTP client belongs to the event loop it was first used on, and its open
        connections hold that loop: a client kept by its loop would never be freed, nor its
        sockets closed, and ``asyncio.run()`` or ``async_to_sync`` make a loop per call. So the
        client is closed on its loop as the loop shuts down (see ``_closed_with``), and one
        whose loop was closed without that is dropped when another loop's client is built.
        """
        loop = asyncio.get_running_loop()
        entry = self._async_clients.get(id(loop))
        if entry is not None and entry[0]() is loop:
            return entry[1]
        with self._sdk_lock:
            # Clients of loops that are closed, or gone (an id can be reused), cannot be
            # closed any more: dropped, the collector closes their sockets.
            for key, (loop_ref, _, _) in list(self._async_clients.items()):
                if loop_ref() is None or loop_ref().is_closed():
                    del self._async_clients[key]
            client = self.new_client(asynchronous=True)
            # The loop holds its async generators weakly: the entry keeps the closer.
            closer = _closed_with(self, loop, client)
            self._async_clients[id(loop)] = (weakref.ref(loop), client, closer)
        _start(closer)
        return client

    async def aclose_client(self, client):
        """Close an async SDK client ``async_client()`` built."""
        await client.close()

    def _forget_async_client(self, loop, client):
        with self._sdk_lock:
            entry = self._async_clients.get(id(loop))
            if entry is not None and entry[1] is client:
                del self._async_clients[id(loop)]

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

    #: What an operator should check, by HTTP status; the statuses worth retrying.
    error_hints = HINTS
    transient_statuses = TRANSIENT_STATUSES
    #: The response header with the request id.
    request_id_header = None

    def translate_error(self, exc, request_id=None, timeout=None):
        """Turn an SDK or transport exception into a ProviderError with no secret in it.

        The SDK's own errors first (``sdk_error()``), then what any SDK lets through from
        below it, in the same words for every provider.
        """
        if isinstance(exc, ProviderError | ConfigurationError):
            return exc
        translated = self.sdk_error(exc, request_id, timeout)
        if translated is not None:
            return translated
        if isinstance(exc, TimeoutError) or _is_timeout(exc):
            return self.timed_out(timeout, request_id)
        if isinstance(exc, (ConnectionError, *_loaded(CONNECT_ERRORS))):
            return self.unreachable(exc, request_id)
        # json.loads, or the SDK's pydantic models (a ValidationError is a ValueError).
        if isinstance(exc, ValueError):
            return malformed_answer(self, request_id)
        # Transport errors raised while reading a stream are not wrapped by the SDKs.
        if isinstance(exc, _loaded(TRANSPORT_ERRORS)):
            return self.connection_failed(exc, request_id)
        return ProviderError(
            f"the {self.package} SDK failed: {type(exc).__name__}: {self.redact(str(exc))}",
            provider=self.alias,
            request_id=request_id,
        )

    def sdk_error(self, exc, request_id=None, timeout=None):
        """Return the ProviderError of one of the SDK's own exceptions, or None for another."""
        return None

    def timed_out(self, timeout, request_id=None):
        """The error of an attempt that got no answer within ``timeout`` seconds (None: the client's)."""
        timeout = timeout if timeout is not None else self.client_timeout
        message = f"no answer from {self.redact(self.base_url)} within {round(timeout, 2):g}s"
        return self._transport_error(ProviderTimeout, message, request_id)

    def unreachable(self, cause, request_id=None):
        """The error of an attempt that could not connect, for ``cause``."""
        reason = self.redact(str(cause)) or type(cause).__name__
        return self._transport_error(
            ProviderUnavailable, f"cannot reach {self.redact(self.base_url)}: {reason}", request_id
        )

    def connection_failed(self, exc, request_id=None):
        """The error of a connection that failed once open (a stream cut by the transport)."""
        reason = self.redact(str(exc)) or type(exc).__name__
        return self._transport_error(ProviderUnavailable, f"the connection failed: {reason}", request_id)

    def _transport_error(self, error_class, message, request_id):
        # Below the API: a retry may not meet it.
        return error_class(message, provider=self.alias, request_id=request_id, transient=True)

    def open_stream(self, client, payload):
        """Start the SDK's stream of chunks for ``payload``; with an async client, return its coroutine."""
        raise NotImplementedError

    def complete(self, request):
        payload = self.build_payload(request)
        try:
            response = within(request.deadline, self.send, self.client_for(request), payload)
        except Exception as exc:
            raise self.attempt_error(exc, request) from None
        return self.finished(self.parse(response, request))

    async def acomplete(self, request):
        payload = self.build_payload(request)
        try:
            # httpx's timeouts are per read: a server that trickles its answer is cut here.
            async with asyncio.timeout(left(request)):
                response = await self.send(self.client_for(request, asynchronous=True), payload)
        except Exception as exc:
            error = self.attempt_error(exc, request)
        else:
            return self.finished(self.parse(response, request))
        raise error from None

    def finished(self, completion, chunks=0):
        """Return ``completion`` with its finish reason in llmapp's words; raise a refusal as one.

        ``chunks``: how many chunks of its text reached the caller already, for a stream.
        """
        refused = refusal(self, completion.finish_reason, request_id=completion.request_id)
        if refused is not None:
            if chunks:
                # The caller has part of an answer: no other route may add to it.
                refused.try_elsewhere = False
            raise refused
        return evolve(completion, finish_reason=normal_finish_reason(completion.finish_reason))

    def answer_from_json(self, data, response):
        """Return the SDK's answer object of ``data``, a whole answer's JSON sent to a stream
        request (as ``parse()`` takes it), or None when this backend cannot read one."""
        return None

    def _whole_answer(self, chunks):
        """The HTTP response of ``chunks`` if it holds one whole JSON answer rather than a stream.

        Some gateways (LiteLLM's proxy on ``/v1/messages``) answer a streamed request so.
        """
        response = getattr(chunks, "response", None)
        headers = getattr(response, "headers", None) or {}
        if not headers.get("content-type", "").startswith("application/json"):
            return None
        return response

    def _parse_whole(self, response, body, request):
        try:
            answer = self.answer_from_json(json.loads(body), response)
        except ValueError:
            answer = None
        if answer is None:
            raise malformed_answer(self, response.headers.get(self.request_id_header or ""))
        return self.finished(self.parse(answer, request))

    def attempt_error(self, exc, request, request_id=None):
        """Return the ProviderError of an attempt that failed with ``exc``.

        The deadline's own ProviderTimeout when ``exc`` is the timeout that cut the attempt
        at the call's deadline (``asyncio.timeout``), else ``translate_error()``'s.
        """
        # An SDK may wrap the ProviderTimeout hold_deadline() raised in a connection error of its own.
        cause = exc
        while cause is not None:
            if isinstance(cause, ProviderTimeout):
                return cause
            cause = cause.__cause__ or cause.__context__
        if isinstance(exc, TimeoutError) and request.deadline is not None:
            try:
                request.deadline.check_deadline()
            except ProviderTimeout as passed:
                return passed
        return self.translate_error(exc, request_id=request_id, timeout=request.timeout)

    # stream() and astream() differ only in how they open, read and close the SDK's stream:
    # what a chunk means is the reader's, in one place for both.

    def stream(self, request):
        if self.stream_reader is None:
            yield from super().stream(request)
            return
        payload = self.build_payload(request)
        reader = self.stream_reader(self, request)
        try:
            chunks = within(request.deadline, self.open_stream, self.client_for(request), payload)
            reader.opened(chunks)
            whole = self._whole_answer(chunks)
            if whole is not None:
                with contextlib.closing(chunks):
                    completion = self._parse_whole(whole, within(request.deadline, whole.read), request)
                yield from self.pieces(completion)
                return
            # Closed also when our caller stops reading early: that ends the HTTP response.
            with contextlib.closing(chunks):
                # Some SDKs send the request only when asked for the first chunk.
                chunks_left = iter(chunks)
                while (chunk := within(request.deadline, next, chunks_left, END)) is not END:
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
            # Cut at the deadline as acomplete() is, and so is each wait for a chunk.
            async with asyncio.timeout(left(request)):
                chunks = await self.open_stream(self.client_for(request, asynchronous=True), payload)
            reader.opened(chunks)
            whole = self._whole_answer(chunks)
            if whole is not None:
                async with aclosing(chunks), asyncio.timeout(left(request)):
                    completion = self._parse_whole(whole, await whole.aread(), request)
                for piece in self.pieces(completion):
                    yield piece
                return
            async with aclosing(chunks):
                with ChunkWaits(request.deadline) as waits:
                    chunks_left = aiter(chunks)
                    while (chunk := await waits.next(chunks_left)) is not END:
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


def _start(agen):
    """Run the async generator ``agen`` to its first yield, now, in the running event loop.

    The loop keeps it among the async generators it finalizes when it shuts down.
    """
    with contextlib.suppress(StopIteration):
        agen.asend(None).send(None)


async def _closed_with(provider, loop, client):
    """Close ``client``, an async client of ``provider``, when ``loop`` shuts down.

    ``asyncio.run()``, ``asyncio.Runner`` and asgiref's ``async_to_sync`` finalize the loop's
    pending async generators before they close it (``loop.shutdown_asyncgens()``): this one
    then closes the client on its own loop, the only one its connections can be closed on.
    """
    try:
        yield
    finally:
        provider._forget_async_client(loop, client)
        await provider.aclose_client(client)


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


#: Exceptions of the HTTP libraries under the SDKs, by "module.Class", matched only when
#: their module is already imported (whichever the SDK used is), so nothing is imported
#: to check: a connection that could not be made, and one that failed once made.
CONNECT_ERRORS = ("httpx.ConnectError", "httpx2.ConnectError", "aiohttp.ClientConnectorError")
TRANSPORT_ERRORS = ("httpx.TransportError", "httpx2.TransportError", "aiohttp.ClientError")


def _loaded(names):
    """Return the classes among ``module.Class`` names whose module is already imported."""
    classes = []
    for name in names:
        module, _, attribute = name.rpartition(".")
        cls = getattr(sys.modules.get(module), attribute, None)
        if isinstance(cls, type):
            classes.append(cls)
    return tuple(classes)


def _is_timeout(exc):
    # An SDK does not wrap a read timeout in the middle of a stream, and its HTTP library
    # (httpx, or httpx2 in newer SDKs) is not ours to import: go by the class name.
    return any(cls.__name__ == "TimeoutException" for cls in type(exc).__mro__)


def _release(version):
    """``"1.50.0rc1"`` -> ``(1, 50, 0)``: the release numbers, to compare; None for a version
    that has none, or that is not one (an epoch, ``1!2.0``, restarts the numbering)."""
    import re

    numbers = re.match(r"\d+(?:\.\d+)*(?![\d!])", version) if isinstance(version, str) else None
    return tuple(int(number) for number in numbers.group().split(".")) if numbers else None
