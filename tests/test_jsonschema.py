"""llmapp.calls.output.jsonschema: Python types to JSON Schema, answers checked, the smallest valid value."""

import dataclasses
from typing import Any, Literal, Optional

import pydantic
import pytest

from llmapp.calls.output import jsonschema
from tests.fakes.output_types import TICKET_SCHEMA, Address, Contact, Priority, Routing

SCHEMAS = [
    TICKET_SCHEMA,
    {
        "type": "array",
        "items": {"type": "integer", "exclusiveMinimum": 3},
        "minItems": 2,
        "uniqueItems": False,
    },
    {"type": "string", "minLength": 3, "format": "email"},
    {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"]}]},
    {
        "type": "object",
        "properties": {"n": {"$ref": "#/$defs/N"}},
        "required": ["n"],
        "$defs": {"N": {"type": "number", "minimum": 2.5}},
    },
    {
        "type": "array",
        "prefixItems": [{"type": "string"}, {"type": "boolean"}],
        "items": False,
        "minItems": 2,
    },
    {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"required": ["b"], "properties": {"b": {"type": "integer", "maximum": -1}}},
        ]
    },
    jsonschema.schema_of(Contact),
    jsonschema.schema_of(Routing),
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_smallest_value_of_a_schema_matches_it(schema):
    assert jsonschema.errors(jsonschema.minimal(schema), schema) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"label": "spam", "score": 0.5}, []),
        ({"label": "eggs", "score": 0.5}, ["$.label: must be one of 'spam', 'ham'"]),
        ({"label": "spam"}, ["$: missing the required property 'score'"]),
        ({"label": "spam", "score": 2}, ["$.score: more than 1"]),
        ({"label": "spam", "score": "high"}, ["$.score: expected number, got string"]),
        ([1, 2], ["$: expected object, got array"]),
    ],
)
def test_errors_name_the_place_and_what_was_expected(value, expected):
    assert jsonschema.errors(value, TICKET_SCHEMA) == expected


def test_errors_never_show_the_answers_own_values_or_keys():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}
    found = jsonschema.errors({"a": "SECRET-VALUE", "SECRET-KEY": 1, "other": {"SECRET-DEEP": 1}}, schema)
    assert found == ["$.a: expected integer, got string", "$: 2 properties the schema does not have"]
    open_schema = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert jsonschema.errors({"SECRET-KEY": "x"}, open_schema) == ["$[*]: expected integer, got string"]


def test_json_types_are_told_apart_as_json_does():
    assert jsonschema.errors(True, {"type": "integer"}) == ["$: expected integer, got boolean"]
    assert jsonschema.errors(2.0, {"type": "integer"}) == []
    assert jsonschema.errors(1, {"enum": [True]}) == ["$: must be one of True"]
    assert jsonschema.errors(0.3, {"type": "number", "multipleOf": 0.1}) == []


def test_a_long_answer_reports_a_bounded_number_of_problems():
    assert len(jsonschema.errors(list(range(100)), {"type": "array", "items": {"type": "string"}})) == 10


def test_keywords_that_cannot_be_checked_are_named():
    schema = {
        "type": "object",
        "if": {},
        "properties": {"a": {"$ref": "https://x/y.json"}, "b": {"dependentRequired": {}}},
    }
    assert jsonschema.unsupported(schema) == [
        "a $ref outside the schema",
        "keyword 'dependentRequired'",
        "keyword 'if'",
    ]
    assert jsonschema.unsupported(TICKET_SCHEMA) == []


def test_a_dataclass_becomes_a_closed_object_schema_and_back():
    schema = jsonschema.schema_of(Contact)
    assert schema["$ref"] == "#/$defs/Contact"
    contact = schema["$defs"]["Contact"]
    assert contact["required"] == ["name", "priority", "addresses"]
    assert contact["additionalProperties"] is False
    assert contact["description"] == "Who wrote, and from where."
    assert contact["properties"]["priority"] == {"enum": ["low", "high"]}
    assert schema["$defs"]["Address"]["properties"]["zip"] == {
        "anyOf": [{"type": "string"}, {"type": "null"}]
    }
    data = {"name": "Ann", "priority": "high", "addresses": [{"city": "Oslo"}], "tags": ["a", "b"]}
    assert jsonschema.errors(data, schema) == []
    built = jsonschema.build(Contact, data)
    assert built == Contact("Ann", Priority.HIGH, [Address("Oslo")], ("a", "b"))


def test_typing_constructs_and_a_typeddict():
    assert jsonschema.schema_of(list[Literal["a", "b"]]) == {"type": "array", "items": {"enum": ["a", "b"]}}
    assert jsonschema.schema_of(dict[str, float]) == {
        "type": "object",
        "additionalProperties": {"type": "number"},
    }
    assert jsonschema.schema_of(Any) == {}
    routing = jsonschema.schema_of(Routing)["$defs"]["Routing"]
    assert routing["required"] == ["queue", "urgent"]
    assert jsonschema.build(list[float], [1, 2.5]) == [1.0, 2.5]


def test_types_outside_json_are_refused():
    import datetime

    @dataclasses.dataclass
    class Event:
        when: datetime.datetime

    with pytest.raises(jsonschema.UnsupportedType, match="datetime is not one of JSON's types"):
        jsonschema.schema_of(Event)
    with pytest.raises(jsonschema.UnsupportedType, match="keys are strings"):
        jsonschema.schema_of(dict[int, str])


@dataclasses.dataclass
class Node:
    name: str
    children: list["Node"]


def test_a_type_that_holds_itself_refers_to_its_own_definition():
    schema = jsonschema.schema_of(Node)
    assert schema["$defs"]["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    tree = {"name": "a", "children": [{"name": "b", "children": []}]}
    assert jsonschema.errors(tree, schema) == []
    assert jsonschema.build(Node, tree).children[0].name == "b"
    assert jsonschema.errors({"name": "a", "children": [{"name": 1, "children": []}]}, schema) == [
        "$.children[0].name: expected string, got integer"
    ]


@pytest.mark.parametrize("pattern", [r"^[0-9]+$", r"^[A-Z]{3}$", r"^\d{4}-\d{2}-\d{2}$", r"^[a-z]+$"])
def test_the_smallest_string_tries_to_match_a_pattern(pattern):
    schema = {"type": "string", "pattern": pattern, "minLength": 2}
    assert jsonschema.errors(jsonschema.minimal(schema), schema) == []


class Tree(pydantic.BaseModel):
    kids: list["Tree"]
    name: str
    parent: Optional["Tree"]


class Bounded(pydantic.BaseModel):
    below: int = pydantic.Field(lt=0)
    between: float = pydantic.Field(gt=0, lt=0.1)
    sevens: int = pydantic.Field(multiple_of=7, ge=1)
    distinct: set[int] = pydantic.Field(min_length=3)
    keyed: dict[str, int] = pydantic.Field(min_length=1)
    above: int = pydantic.Field(gt=5)


@pytest.mark.parametrize("model", [Tree, Bounded])
def test_the_smallest_value_of_a_pydantic_schema_is_one_pydantic_accepts(model):
    model.model_validate(jsonschema.minimal(model.model_json_schema()))


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"$ref": "#"}, "$ref '#' that points only at itself"),
        ({"type": "number", "multipleOf": 0}, "multipleOf that is not above 0"),
        ({"type": "object", "required": "a"}, "required that is not a list"),
        ({"type": "array", "items": [{}]}, "items given as a list (draft 4): use prefixItems"),
        ({"type": "integer", "minimum": "1"}, "minimum that is not a number"),
    ],
)
def test_a_schema_that_would_fail_on_every_answer_is_refused_when_given(schema, problem):
    assert problem in jsonschema.unsupported(schema)
