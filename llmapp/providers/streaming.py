"""What a streamed answer has said so far, whichever way it is read (``StreamReader``)."""

import contextlib
import contextvars

from llmapp.calls.types import Completion


class StreamReader:
    """What one streamed answer has said so far, fed the SDK's chunks one at a time.

    ``stream()`` and ``astream()`` share it, so that a chunk means the same in both. A
    subclass implements ``read()``, and sets the fields below as the chunks tell them.
    """

    def __init__(self, provider, request):
        self.provider = provider
        self.request = request
        self.parts = []
        self.model = request.model
        self.request_id = None
        self.finish_reason = None
        self.input_tokens = None
        self.output_tokens = None
        self.cached_input_tokens = None

    def opened(self, chunks):
        """Note what the SDK's stream says before its first chunk: the provider's request-id
        header, for SDKs whose stream object carries the response."""
        header = self.provider.request_id_header
        if header:
            self.request_id = chunks.response.headers.get(header)

    def read(self, chunk):
        """Take the fields ``chunk`` carries; return the texts it adds to the answer."""
        raise NotImplementedError

    def feed(self, chunk):
        """Read ``chunk``; return its texts, which are the answer's next chunks.

        Once the call's deadline has passed, raise its ProviderTimeout instead, whether the
        chunk has text or not: keep-alives, reasoning and role-only chunks must not carry a
        stream past it.
        """
        if self.request.deadline is not None:
            self.request.deadline.check_deadline()
        texts = [text for text in self.read(chunk) if text]
        self.parts.extend(texts)
        return texts

    @property
    def ended(self):
        """Whether the server said its answer is whole; by default, whether it gave a finish reason."""
        return self.finish_reason is not None

    def failed(self, exc):
        """Return the ProviderError the stream raises for ``exc``, given the text already yielded."""
        error = self.provider.attempt_error(exc, self.request, self.request_id)
        return self.provider.stream_failed(error, len(self.parts), self.request_id)

    def completion(self):
        """Return the answer's Completion; raise stream_unfinished if the server did not end it."""
        if not self.ended:
            raise self.provider.stream_unfinished(len(self.parts), self.request_id)
        return self.provider.finished(self.raw_completion(), len(self.parts))

    def raw_completion(self):
        return Completion(
            text="".join(self.parts),
            usecase=self.request.usecase,
            provider=self.provider.alias,
            model=self.model,
            finish_reason=self.finish_reason,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=self.cached_input_tokens,
            request_id=self.request_id,
        )


def aclosing(chunks):
    """Return an async context manager that closes an SDK's async stream: its own, else aclose()."""
    return chunks if hasattr(chunks, "__aexit__") else contextlib.aclosing(chunks)


#: The HTTP responses of the async stream being read on this task; see ResponseClosingStream.
_stream_responses = contextvars.ContextVar("llmapp_stream_responses", default=None)


async def note_response(response):
    """An httpx response hook of the async client: note the response of the stream being read."""
    responses = _stream_responses.get()
    if responses is not None:
        responses.append(response)


class ResponseClosingStream:
    """An SDK's async stream of chunks, whose aclose() closes its HTTP responses too.

    Some SDKs (google-genai) nest async generators and give no handle on the response:
    closing the outer generator leaves the inner ones, and the connection, to the event
    loop's finalizer of async generators, later or never. This notes the responses the
    stream opens (through ``note_response``, an httpx response hook of the SDK's async
    client) and closes them itself.
    """

    @classmethod
    async def opening(cls, opening):
        """Await the SDK's ``opening`` of a stream; return the stream, closable."""
        return cls(await opening)

    def __init__(self, chunks):
        self.chunks = chunks
        self.responses = []

    def __aiter__(self):
        return self

    async def __anext__(self):
        # The request goes out, and any further one (a continuation) too, inside anext().
        token = _stream_responses.set(self.responses)
        try:
            return await anext(self.chunks)
        finally:
            _stream_responses.reset(token)

    async def aclose(self):
        try:
            await self.chunks.aclose()
        finally:
            for response in self.responses:
                await response.aclose()
