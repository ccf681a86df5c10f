"""Capture a failed call's exception and stack frames, the way Sentry shows them.

Built with sentry-sdk's own event builder (frames with source context and local
variables), then scrubbed of secrets, of the call's content unless
LLM_LOG_CONTENT is on, and bounded in size before it is stored with the event.
:func:`call_contents` and :func:`withhold` also keep content out of Sentry's own
events (see ``llmapp.sentry.scrubbing``).
"""

import json
import os
import threading

from llmapp import conf
from llmapp.calls.types import Completion, CompletionRequest, jsonable
from llmapp.eventstream.events import UsageEvent

WITHHELD = "[withheld: LLM_LOG_CONTENT is off]"
_import_lock = threading.Lock()


def _after_fork_in_child():
    # A thread of the parent may have held it mid-import: the child's own starts free.
    global _import_lock
    _import_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
MAX_FRAMES = 30
MAX_VARS = 40
MAX_STRING = 1024
MAX_BYTES = 64 * 1024
_BUILDER_OPTIONS = {
    "include_local_variables": True,
    "include_source_context": True,
    "max_value_length": 100_000,  # cut below, after content is withheld
    "add_full_stack": False,
    "custom_repr": None,
}


def capture_exception(error, request):
    """Return ``{"values": [...]}`` in Sentry's exception format, or None when it cannot be built."""
    if error.__traceback__ is None:
        return None
    event_from_exception, scrub = _builders()
    event, _ = event_from_exception(error, client_options=_BUILDER_OPTIONS)
    values = event["exception"]["values"]
    if not conf.get_setting("LLM_LOG_CONTENT"):
        values = withhold(values, [request.message, request.prompt, *call_contents(error)])
    values = _bound(scrub(values))
    return {"values": values}


def _builders():
    """Import sentry-sdk's event builder (on a call's first failure, not at start-up), one thread at a time.

    Calls that fail at once would otherwise import sentry_sdk side by side, and one of
    them could find it partially initialised.
    """
    with _import_lock:
        from sentry_sdk.utils import event_from_exception

        from llmapp.sentry.scrubbing import scrub
    return event_from_exception, scrub


def call_contents(error):
    """Return the prompts, messages and answers of the llmapp calls in the frames of ``error``.

    ``error`` is an exception or an ``exc_info`` tuple; its causes and contexts count too.
    Found in the frames' CompletionRequest, Completion and UsageEvent objects (and lists of
    UsageEvents), and in the ``message``
    and ``prompt`` arguments of the service's functions (before a request exists).
    """
    if isinstance(error, tuple):
        error = error[1] if len(error) > 1 else None
    contents, seen = [], set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(getattr(error, "text", None), str):  # InvalidOutputError: the answer
            contents.append(error.text)
        traceback = error.__traceback__
        while traceback is not None:
            frame = traceback.tb_frame
            in_service = frame.f_globals.get("__name__") == "llmapp.calls.service"
            for name, value in frame.f_locals.items():
                if isinstance(value, list | tuple) and value and isinstance(value[0], UsageEvent):
                    for event in value:  # a batch in the usage writer
                        contents += [event.prompt, event.message, event.response, *_turns(event.conversation)]
                elif isinstance(value, UsageEvent):
                    contents += [value.prompt, value.message, value.response, *_turns(value.conversation)]
                elif isinstance(value, CompletionRequest):
                    contents += [value.message, value.prompt, *(content for _, content in value.history)]
                elif isinstance(value, Completion):
                    contents += [value.text, *_strings(jsonable(value.parsed))]
                elif in_service and name in ("message", "prompt") and isinstance(value, str):
                    contents.append(value)
                elif in_service and name == "messages":
                    contents += _turns(value)
            traceback = traceback.tb_next
        error = error.__cause__ or error.__context__
    return [text for text in dict.fromkeys(contents) if text]


def withhold(data, contents):
    """Return a copy of ``data`` with each text in ``contents`` replaced, at any depth, by WITHHELD."""
    needles, whole = [], set()
    for text in filter(None, contents):
        whole.add(text)
        # Quoted, as a repr or JSON shows it: specific enough for a short text like "hi".
        needles += [(repr(text), repr(WITHHELD)), (json.dumps(text), json.dumps(WITHHELD))]
        if len(text) >= 4:
            # Bare, and as it appears inside a repr (quotes escaped, newlines as \n).
            needles += [(text, WITHHELD), (repr(text)[1:-1], WITHHELD)]
    needles.sort(key=lambda pair: len(pair[0]), reverse=True)

    def walk(value):
        if isinstance(value, str):
            if value in whole:  # even "hi", when it is the whole value
                return WITHHELD
            for needle, replacement in needles:
                value = value.replace(needle, replacement)
            return value
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return walk(data)


def _bound(values):
    for value in values:
        stacktrace = value.get("stacktrace") or {}
        frames = stacktrace.get("frames") or []
        # The innermost frames say most about a failure; keep those.
        stacktrace["frames"] = frames = frames[-MAX_FRAMES:]
        for frame in frames:
            frame_vars = frame.get("vars") or {}
            frame["vars"] = {key: _cut(item) for key, item in list(frame_vars.items())[:MAX_VARS]}
        value["value"] = _cut(value.get("value"))
    # Still too big: drop local variables from the outermost frames first.
    for value in values:
        for frame in (value.get("stacktrace") or {}).get("frames") or []:
            if len(json.dumps(values, default=str)) <= MAX_BYTES:
                return values
            frame.pop("vars", None)
    return values


def _cut(value):
    if isinstance(value, str) and len(value) > MAX_STRING:
        return value[:MAX_STRING] + "…"
    if isinstance(value, dict):
        return {key: _cut(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_cut(item) for item in value]
    return value


def _strings(value):
    """The strings in a parsed answer's JSON form (its keys are the schema's)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def _turns(conversation):
    """The contents of a conversation's turns ({"role", "content"} objects), whatever it holds."""
    if not isinstance(conversation, list | tuple):
        return []
    contents = []
    for turn in conversation:
        content = turn.get("content") if isinstance(turn, dict) else None
        if isinstance(content, str):
            contents.append(content)
        elif isinstance(content, list | tuple):  # content parts, refused but still in the caller's frame
            contents += [part.get("text") if isinstance(part, dict) else part for part in content]
    return [content for content in contents if isinstance(content, str)]
