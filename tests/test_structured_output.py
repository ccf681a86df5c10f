"""Typed answers: a use case's OUTPUT asked of each provider, validated, asked again, recorded."""

import asyncio
import dataclasses
import importlib
import io
import json

import pydantic
import pytest
from django.core.management import CommandError, call_command

from llmapp import acomplete_prompt, complete_prompt, stream_prompt
from llmapp.exceptions import InvalidOutputError, InvalidOutputType
from llmapp.models import CompletionEvent
from llmapp.providers import locmem
from tests.conftest import API_KEY
from tests.fakes.output_types import TICKET_SCHEMA, Contact, Priority, Ticket
from tests.test_provider_contract import CASES, provider  # noqa: F401 (the fixture)

VALID = '{"label": "spam", "score": 0.9}'
ANSWERED = "CONFIDENTIAL-VALUE"
INVALID = f'{{"label": "eggs", "score": 0.9, "CONFIDENTIAL-KEY": "{ANSWERED}"}}'


@pytest.fixture(autouse=True)
def _no_usage_database(settings):
    # Tests of events ask for the database stream themselves.
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"


def native_schema(alias, body):
    """The schema a request's body asks for natively, as each vendor's API names it."""
    if alias == "openai":
        assert body["response_format"]["type"] == "json_schema"
        return body["response_format"]["json_schema"]["schema"]
    if alias == "anthropic":
        assert body["output_config"]["format"]["type"] == "json_schema"
        return body["output_config"]["format"]["schema"]
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    return body["generationConfig"]["responseJsonSchema"]


@pytest.fixture
def typed(provider, settings):  # noqa: F811 (the contract suite's fixture)
    """Use case 'triage' with TICKET_SCHEMA as its OUTPUT, on each provider's fake server."""
    settings.LLM_USECASES = {
        "triage": {"PROVIDER": provider.alias, "PROMPT": "Triage the ticket.", "OUTPUT": TICKET_SCHEMA}
    }
    anthropic_sdk = importlib.import_module("anthropic")
    if provider.alias == "anthropic" and not hasattr(anthropic_sdk, "transform_schema"):
        # In the oldest-SDK run of CI (.ci/run). What a call on such an SDK gets is tested in
        # test_anthropic_provider.py, and prompted mode is the same code for every SDK.
        pytest.skip("this anthropic SDK has no structured outputs")
    server = provider.server
    server.alias, server.case = provider.alias, provider.case
    return server


def test_every_provider_asks_natively_and_parses_the_answer(typed):
    typed.reply(VALID)
    completion = complete_prompt("triage", "Buy cheap pills")
    assert completion.parsed == {"label": "spam", "score": 0.9}
    assert completion.text == VALID
    [sent] = typed.requests
    schema = native_schema(typed.alias, sent.body)
    assert schema["properties"]["label"]["enum"] == ["spam", "ham"]
    assert schema["additionalProperties"] is False
    system, turns = typed.case.sent_turns(sent.body)
    assert system == "Triage the ticket."  # natively: no schema in the prompt
    assert turns == [("user", "Buy cheap pills")]


def test_an_answer_that_does_not_match_is_asked_again_once_with_what_was_wrong(typed):
    typed.reply(INVALID)
    typed.reply(VALID)
    completion = complete_prompt("triage", "Buy cheap pills")
    assert completion.parsed["label"] == "spam"
    assert completion.attempts == 2
    first, second = typed.requests
    _, turns = typed.case.sent_turns(second.body)
    assert turns[:2] == [("user", "Buy cheap pills"), ("assistant", INVALID)]
    role, correction = turns[2]
    assert role == "user"
    assert "$.label: must be one of 'spam', 'ham'" in correction
    assert native_schema(typed.alias, second.body) == native_schema(typed.alias, first.body)


def test_two_answers_that_do_not_match_end_the_call_with_the_errors_not_the_answer(typed):
    typed.reply(INVALID)
    typed.reply(INVALID)
    with pytest.raises(InvalidOutputError) as raised:
        complete_prompt("triage", "Buy cheap pills")
    error = raised.value
    assert len(typed.requests) == 2
    assert error.text == INVALID and error.errors[0] == "$.label: must be one of 'spam', 'ham'"
    assert "CONFIDENTIAL" not in str(error)
    assert str(error).startswith("the answer does not match the output type JSON Schema: $.label: must be")


def test_an_answer_cut_at_the_token_limit_is_asked_again(typed):
    cut = {"openai": "length", "anthropic": "max_tokens", "gemini": "MAX_TOKENS"}[typed.alias]
    reason = {"openai": "finish_reason", "anthropic": "stop_reason", "gemini": "finish_reason"}[typed.alias]
    typed.reply('{"label": "spam", "score": 0.9}', **{reason: cut})
    typed.reply(VALID)
    completion = complete_prompt("triage", "Buy cheap pills")
    assert completion.attempts == 2
    _, turns = typed.case.sent_turns(typed.requests[1].body)
    assert "cut at the token limit" in turns[-1][1]


def test_a_stream_yields_the_text_and_its_completion_is_parsed_when_it_ends(typed):
    typed.reply_stream(['{"label": ', '"ham", ', '"score": 0}'])
    *chunks, completion = stream_prompt("triage", "hello")
    assert "".join(chunks) == '{"label": "ham", "score": 0}'
    assert completion.parsed == {"label": "ham", "score": 0}


def test_a_stream_that_does_not_match_is_not_asked_again(typed):
    typed.reply_stream(['{"label": ', '"eggs", ', '"score": 0}'])
    with pytest.raises(InvalidOutputError):
        list(stream_prompt("triage", "hello"))
    assert len(typed.requests) == 1  # its text reached the caller: nothing may add to it


def test_an_async_call_is_validated_and_asked_again_alike(typed):
    typed.reply(INVALID)
    typed.reply(VALID)
    completion = asyncio.run(acomplete_prompt("triage", "hello"))
    assert completion.parsed == {"label": "spam", "score": 0.9} and len(typed.requests) == 2


def test_prompted_mode_puts_the_schema_in_the_system_prompt_and_reads_the_json(typed, settings):
    settings.LLM_PROVIDERS[typed.alias]["OPTIONS"]["structured_output"] = "prompted"
    typed.reply(f"Here you go:\n```json\n{VALID}\n```")
    completion = complete_prompt("triage", "Buy cheap pills")
    assert completion.parsed == {"label": "spam", "score": 0.9}
    [sent] = typed.requests
    body = json.dumps(sent.body)
    assert "response_format" not in body and "output_config" not in body and "responseJsonSchema" not in body
    system, _ = typed.case.sent_turns(sent.body)
    assert system.startswith("Triage the ticket.\n\nAnswer with a single JSON value")
    assert json.dumps({"enum": ["spam", "ham"]}) in system


def test_a_conversation_is_typed_too(typed):
    typed.reply(VALID)
    messages = [
        {"role": "user", "content": "Is this spam?"},
        {"role": "assistant", "content": "Show me."},
        {"role": "user", "content": "Buy pills"},
    ]
    assert complete_prompt("triage", messages=messages).parsed["label"] == "spam"
    _, turns = typed.case.sent_turns(typed.requests[0].body)
    assert [role for role, _ in turns] == ["user", "assistant", "user"]


# -- one provider is enough from here on -----------------------------------------------


@pytest.fixture
def triage(settings, openai_provider):
    settings.LLM_USECASES = {"triage": {"PROVIDER": "openai", "OUTPUT": TICKET_SCHEMA}}
    return openai_provider


def test_openai_strict_mode_when_every_property_is_required(triage):
    triage.reply(VALID)
    complete_prompt("triage", "x")
    triage.reply('{"city": "Oslo"}')
    complete_prompt("triage", "x", output="tests.fakes.output_types.Address")
    strict, loose = (request.body["response_format"]["json_schema"] for request in triage.requests)
    assert (strict["name"], strict["strict"]) == ("Triage", True)
    assert (loose["name"], loose["strict"]) == ("Address", False)  # zip has a default


def test_a_pydantic_model_by_dotted_path_gives_an_instance(triage, settings):
    settings.LLM_USECASES = {"triage": {"PROVIDER": "openai", "OUTPUT": "tests.fakes.output_types.Ticket"}}
    triage.reply(VALID)
    completion = complete_prompt("triage", "x")
    assert completion.parsed == Ticket(label="spam", score=0.9)
    triage.reply('{"label": "spam", "score": 7}')
    triage.reply('{"label": "spam", "score": 0.1}')
    assert complete_prompt("triage", "x").parsed.score == 0.1
    _, turns = CASES["openai"].sent_turns(triage.requests[2].body)
    assert "$.score: Input should be less than or equal to 1" in turns[-1][1]


def test_a_dataclass_gives_an_instance_without_pydantic(triage):
    triage.reply('{"name": "Ann", "priority": "high", "addresses": [{"city": "Oslo", "zip": null}]}')
    contact = complete_prompt("triage", "x", output=Contact).parsed
    assert contact.priority is Priority.HIGH and contact.addresses[0].city == "Oslo"


def test_a_schema_whose_root_is_not_an_object_is_asked_for_wrapped(triage):
    triage.reply('{"value": ["a", "b"]}')
    completion = complete_prompt("triage", "x", output=list[str])
    assert completion.parsed == ["a", "b"]
    schema = triage.requests[0].body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["value"] == {"type": "array", "items": {"type": "string"}}


def test_a_fallback_must_answer_with_the_same_type(triage, settings):
    settings.LLM_USECASES = {"triage": {**settings.LLM_USECASES["triage"], "FALLBACKS": ["test"]}}
    triage.reply(INVALID)
    triage.reply(INVALID)
    locmem.queue("not json at all", {"label": "ham", "score": 0})
    completion = complete_prompt("triage", "x")
    assert (completion.provider, completion.parsed, completion.attempts) == (
        "test",
        {"label": "ham", "score": 0},
        4,
    )
    assert locmem.outbox[0].schema == TICKET_SCHEMA
    assert locmem.outbox[1].history[-1] == ("assistant", "not json at all")


def test_with_no_route_left_the_error_says_how_each_failed(triage, settings):
    settings.LLM_USECASES = {
        "triage": {**settings.LLM_USECASES["triage"], "FALLBACKS": ["test"], "OUTPUT_RETRIES": 0}
    }
    triage.reply(INVALID)
    locmem.queue('{"label": "spam"}')
    with pytest.raises(InvalidOutputError) as raised:
        complete_prompt("triage", "x")
    assert str(raised.value).startswith("the answer does not match the output type JSON Schema: $: missing")
    assert "before it, openai:gpt-4o-mini failed: the answer does not match" in str(raised.value)


def test_output_retries_per_call_and_per_use_case(triage, settings):
    for _ in range(3):
        triage.reply(INVALID)
    triage.reply(VALID)
    assert complete_prompt("triage", "x", output_retries=3).attempts == 4
    settings.LLM_USECASES = {"triage": {**settings.LLM_USECASES["triage"], "OUTPUT_RETRIES": 0}}
    triage.reply(INVALID)
    with pytest.raises(InvalidOutputError):
        complete_prompt("triage", "x")
    assert len(triage.requests) == 5


def test_a_bad_output_argument_is_one_line_before_anything_is_sent(triage):
    with pytest.raises(InvalidOutputType, match=r"output 'tests\.fakes\.nope\.Type' cannot be imported"):
        complete_prompt("triage", "x", output="tests.fakes.nope.Type")
    with pytest.raises(InvalidOutputType, match="uses keyword 'if', which llmapp cannot check"):
        complete_prompt("triage", "x", output={"type": "object", "if": {}})
    with pytest.raises(InvalidOutputType, match="output 5 is not a type: name a class"):
        complete_prompt("triage", "x", output=5)
    # A function is no type: pydantic would call it with the answer's fields.
    with pytest.raises(InvalidOutputType, match=r"'os\.path\.join' is not a type"):
        complete_prompt("triage", "x", output="os.path.join")
    with pytest.raises(InvalidOutputType, match="points nowhere"):
        complete_prompt("triage", "x", output={"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}})
    assert triage.requests == []


# -- the offline default, locmem, the CLI, events ----------------------------------------


def test_the_offline_default_answers_a_typed_use_case_with_a_valid_value(settings):
    settings.LLM_USECASES = {"triage": {"OUTPUT": "tests.fakes.output_types.Ticket"}}
    completion = complete_prompt("triage", "anything")
    assert isinstance(completion.parsed, Ticket)
    assert complete_prompt("summarize", "x", output=Contact).parsed == Contact("", Priority.LOW, [])


def test_locmem_answers_a_typed_call_with_the_smallest_value_and_records_the_schema(settings):
    completion = complete_prompt("summarize", "x", provider="test", output=TICKET_SCHEMA)
    assert completion.parsed == {"label": "spam", "score": 0}
    assert locmem.outbox[0].schema == TICKET_SCHEMA and locmem.outbox[0].output_mode == "native"


def llm(*args):
    out = io.StringIO()
    call_command("llm", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_the_cli_prints_parsed_beside_text_and_dry_runs_the_schema(triage):
    triage.reply(VALID)
    printed = json.loads(llm("triage", "-m", "x", "--json"))
    assert printed["parsed"] == {"label": "spam", "score": 0.9} and printed["text"] == VALID
    described = json.loads(llm("triage", "-m", "x", "--dry-run"))
    assert described["json"]["response_format"]["json_schema"]["schema"]["required"] == ["label", "score"]
    assert len(triage.requests) == 1


def test_the_cli_takes_a_schema_inline_from_a_file_or_by_dotted_path(tmp_path):
    printed = json.loads(
        llm("summarize", "-m", "x", "--json", "--schema", '{"type": "integer", "minimum": 4}')
    )
    assert printed["parsed"] == 4
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(TICKET_SCHEMA))
    assert (
        json.loads(llm("summarize", "-m", "x", "--json", "--schema", str(path)))["parsed"]["label"] == "spam"
    )
    dotted = json.loads(llm("summarize", "-m", "x", "--json", "--schema", "tests.fakes.output_types.Routing"))
    assert dotted["parsed"] == {"queue": "billing", "urgent": False}


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ("{not json", "--schema is not JSON (Expecting property name"),
        ("[1]", "--schema must be a JSON Schema object, got a JSON list."),
        ("nope", "--schema nope: no such file, and not a dotted path (module.Type) or inline JSON."),
        ("tests.fakes.nope.T", "--schema: output 'tests.fakes.nope.T' cannot be imported"),
    ],
)
def test_a_bad_schema_on_the_cli_is_one_line(schema, message):
    with pytest.raises(CommandError) as raised:
        llm("summarize", "-m", "x", "--schema", schema)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


@pytest.mark.django_db
def test_an_answer_that_never_matches_is_one_line_on_the_cli_and_recorded(triage, settings):
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "database", "database"
    triage.reply(INVALID)
    triage.reply(INVALID)
    with pytest.raises(CommandError) as raised:
        llm("triage", "-m", "x")
    message = str(raised.value)
    assert "\n" not in message and "$.label: must be one of 'spam', 'ham'" in message
    event = CompletionEvent.objects.get()
    assert (event.status, event.error_type, event.attempts) == ("error", "InvalidOutputError", 2)
    assert "$.label: must be one of 'spam', 'ham'" in event.error_message
    assert event.response == "" and "CONFIDENTIAL" not in event.error_message


@pytest.mark.django_db
def test_with_content_allowed_the_event_keeps_the_answer_that_did_not_match(triage, settings):
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "database", "database"
    settings.LLM_LOG_CONTENT = True
    triage.reply(INVALID)
    with pytest.raises(InvalidOutputError):
        complete_prompt("triage", "x", output_retries=0)
    assert CompletionEvent.objects.get().response == INVALID


def test_sentry_frames_withhold_the_answer_that_did_not_match(triage):
    from llmapp.sentry.frames import capture_exception

    triage.reply(INVALID)
    with pytest.raises(InvalidOutputError) as raised:
        complete_prompt("triage", "x", output_retries=0)
    from llmapp.calls.service import prepare_request

    request, _ = prepare_request("triage", "x")
    captured = json.dumps(capture_exception(raised.value, request))
    assert ANSWERED not in captured  # (the frames show source lines: no literal here)


@dataclasses.dataclass
class Verdict:
    spam: bool


def test_batch_records_carry_parsed(tmp_path, settings):
    settings.LLM_USECASES = {"triage": {"PROVIDER": "test", "OUTPUT": TICKET_SCHEMA}}
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('"one"\n{"id": "b", "message": "two"}\n')
    locmem.queue({"label": "ham", "score": 1}, "no json")
    call_command(
        "llm",
        "triage",
        "--input",
        str(source),
        "--output",
        str(output),
        "--quiet",
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    first, second = (json.loads(line) for line in output.read_text().splitlines())
    assert first["parsed"] == {"label": "ham", "score": 1}
    # The second was asked again, and locmem's default for a typed call is the smallest value.
    assert second["parsed"] == {"label": "spam", "score": 0}


# -- hostile answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ('{"label": "spam", "score": NaN}', "$: the answer holds no JSON value"),
        ("[" * 5000 + "]" * 5000, "$: nested more than 64 deep"),
        ('{"label": "spam", "score": ' + "[" * 100 + "]" * 100 + "}", "$: nested more than 64 deep"),
        ("", "$: the answer is empty, not JSON"),
    ],
)
def test_an_answer_that_cannot_be_read_is_one_that_does_not_match(settings, answer, error):
    locmem.queue(answer)
    with pytest.raises(InvalidOutputError) as raised:
        complete_prompt("summarize", "x", provider="test", output=TICKET_SCHEMA, output_retries=0)
    assert raised.value.errors == [error]


def test_a_number_too_large_to_check_does_not_match():
    locmem.queue('{"value": 1e308}')
    with pytest.raises(InvalidOutputError, match=r"\$: cannot be checked \(OverflowError\)|not a multiple"):
        complete_prompt(
            "summarize", "x", provider="test", output={"type": "number", "multipleOf": 0.1}, output_retries=0
        )


class Counts(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    counts: dict[str, int]
    code: str

    @pydantic.field_validator("code")
    @classmethod
    def lucky(cls, value):
        if value == "13":
            raise ValueError(f"unlucky {value}")
        return value


@dataclasses.dataclass
class Checked:
    score: float

    def __post_init__(self):
        if self.score > 1:
            raise ValueError(f"score {self.score} out of range")


def test_validation_errors_never_quote_the_answer():
    locmem.queue('{"counts": {"SECRET-KEY": "x"}, "code": "13", "SECRET-EXTRA": 1}')
    with pytest.raises(InvalidOutputError) as raised:
        complete_prompt("summarize", "x", provider="test", output=Counts, output_retries=0)
    assert raised.value.errors == [
        "$.counts[*]: Input should be a valid integer, unable to parse string as an integer",
        "$.code: not valid (value_error)",
        "$[*]: Extra inputs are not permitted",
    ]
    locmem.queue('{"score": 7.5}')
    with pytest.raises(InvalidOutputError) as raised:
        complete_prompt("summarize", "x", provider="test", output=Checked, output_retries=0)
    assert raised.value.errors == ["$: Checked refused it (ValueError)"]


def test_a_completion_does_not_show_its_parsed_value_in_its_repr():
    completion = complete_prompt("summarize", "x", provider="test", output=Contact)
    assert "parsed" not in repr(completion)


def test_a_dataclass_is_sent_as_an_object_at_the_root_and_strict_only_when_closed(triage):
    @dataclasses.dataclass
    class Tally:
        counts: dict[str, int]

    triage.reply('{"name": "a", "priority": "low", "addresses": [], "tags": []}')
    triage.reply('{"counts": {}}')
    complete_prompt("triage", "x", output=Contact)
    complete_prompt("triage", "x", output=Tally)
    contact, tally = (request.body["response_format"]["json_schema"] for request in triage.requests)
    assert contact["schema"]["type"] == "object" and "$ref" not in contact["schema"]
    assert contact["schema"]["$defs"]["Address"]["type"] == "object"
    assert tally["strict"] is False  # the answer chooses the keys: no strict mode for it


def test_anthropic_asks_in_the_prompt_for_keys_the_answer_chooses(settings):
    from tests.fakes.anthropic_server import FakeAnthropicServer

    with FakeAnthropicServer() as server:
        settings.LLM_PROVIDERS = {
            **settings.LLM_PROVIDERS,
            "anthropic": {
                "BACKEND": CASES["anthropic"].backend,
                "OPTIONS": {"api_key": API_KEY, "base_url": server.base_url},
            },
        }
        server.reply('{"apples": 3}')
        completion = complete_prompt("summarize", "x", provider="anthropic", output=dict[str, int])
        assert completion.parsed == {"apples": 3}
        [sent] = server.requests
        assert "output_config" not in sent.body and "JSON Schema" in sent.body["system"]


def test_an_empty_answer_is_asked_again_in_one_user_turn(triage):
    triage.reply("")
    triage.reply(VALID)
    complete_prompt("triage", "Buy pills")
    _, turns = CASES["openai"].sent_turns(triage.requests[1].body)
    assert [role for role, _ in turns] == ["user"]
    assert turns[0][1].startswith("Buy pills\n\nYour answer does not match")


def test_an_answer_that_does_not_match_closes_a_half_open_circuit(triage, settings, monkeypatch):
    import time

    from llmapp.calls import circuit

    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {**settings.LLM_PROVIDERS["openai"], "CIRCUIT_BREAKER": {"FAILURES": 1, "COOLDOWN": 30}},
    }
    triage.reply_error(500, "down")
    with pytest.raises(Exception, match="down"):
        complete_prompt("triage", "x", retries=0)
    now = time.time()
    monkeypatch.setattr(circuit, "wall_clock", lambda: now + 31)  # the cooldown passed: a probe
    triage.reply(INVALID)
    with pytest.raises(InvalidOutputError):
        complete_prompt("triage", "x", output_retries=0)
    # The probe was answered, if wrongly: the circuit is closed, not held open another cooldown.
    triage.reply(VALID)
    assert complete_prompt("triage", "x").parsed["label"] == "spam"
    assert len(triage.requests) == 3
