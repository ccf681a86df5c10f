import json

from llmapp.calls.types import CompletionRequest
from llmapp.sentry.frames import MAX_BYTES, MAX_STRING, WITHHELD, capture_exception
from tests.conftest import API_KEY

REQUEST = CompletionRequest("summarize", "hi", "Be brief, please.", "test", "m", 0.5, 10)


def failing(request, payload):
    api_key = API_KEY  # noqa: F841 (a local the frame must not show)
    raise RuntimeError("provider exploded")


def capture(request=REQUEST, payload=None):
    try:
        failing(request, payload)
    except RuntimeError as exc:
        return capture_exception(exc, request)


def test_frames_carry_source_context_and_locals_without_secrets_or_content():
    [value] = capture()["values"]
    frame = value["stacktrace"]["frames"][-1]
    assert (frame["function"], frame["context_line"].strip()) == (
        "failing",
        'raise RuntimeError("provider exploded")',
    )
    assert frame["pre_context"] and frame["post_context"] is not None
    text = json.dumps(value)
    assert API_KEY not in text and API_KEY[-12:] not in text
    # Even a message as short as "hi" is withheld, and the prompt too.
    assert "'hi'" not in text and "Be brief" not in text
    assert WITHHELD in frame["vars"]["request"]


def test_content_is_kept_with_llm_log_content(settings):
    settings.LLM_LOG_CONTENT = True
    frame = capture()["values"][0]["stacktrace"]["frames"][-1]
    assert "message='hi'" in frame["vars"]["request"]


def test_size_is_bounded():
    values = capture(payload={f"key{n}": "x" * 5000 for n in range(200)})["values"]
    assert len(json.dumps(values)) <= MAX_BYTES
    for frame in values[0]["stacktrace"]["frames"]:
        for item in (frame.get("vars") or {}).values():
            assert not isinstance(item, str) or len(item) <= MAX_STRING + 1
