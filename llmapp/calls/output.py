"""Typed answers: the type a use case's answer must have, and how an answer is read into it.

A use case's OUTPUT (or a call's ``output=``) is a pydantic model, a dataclass, a TypedDict,
a typing construct of those and JSON's types (``list[Ticket]``, ``Literal["spam", "ham"]``),
a dict holding a JSON Schema, or a dotted path to any of them. ``output_for()`` turns it into
an Output: the JSON Schema providers are asked for, and the reading of an answer's text into
the validated value (an instance of the type; the plain JSON value for a schema).

Pydantic validates pydantic models (and types only it can describe, when it is installed);
everything else is checked by ``jsonschema`` here, so dataclasses, TypedDicts and JSON
Schemas need no dependency.
"""

import copy
import functools
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.utils.module_loading import import_string

from llmapp.calls import jsonschema

#: The property a schema whose root is not an object is wrapped in: OpenAI's and
#: Anthropic's structured outputs take an object at the root, and every provider is asked alike.
WRAPPER = "value"
_NAME = re.compile(r"[^A-Za-z0-9_-]")


class OutputTypeError(ValueError):
    """An OUTPUT that is neither importable nor a type llmapp can ask for; the message says why."""


class OutputMismatch(ValueError):
    """An answer that does not match its Output; ``errors`` says how, one line each."""

    def __init__(self, errors):
        super().__init__("; ".join(errors))
        self.errors = list(errors)


@dataclass(frozen=True, eq=False)
class Output:
    """The type an answer must have: its JSON Schema, and the reading of an answer into it."""

    #: What the use case or the call named: a type, a schema dict, or their dotted path.
    source: Any
    #: The JSON Schema the answer's JSON matches (a copy of a schema given as a dict).
    schema: dict
    #: A name for the schema (OpenAI's ``json_schema.name``): the type's, or the schema's title.
    name: str
    #: Turns a JSON value that may match into the parsed value; raises OutputMismatch.
    load: Any = field(repr=False)

    @functools.cached_property
    def wrapped(self):
        """Whether the answer is asked for wrapped in an object (the schema's root is not one)."""
        root = jsonschema.resolve(self.schema["$ref"], self.schema) if "$ref" in self.schema else self.schema
        return root.get("type") != "object"

    @functools.cached_property
    def wire_schema(self):
        """The schema providers are sent: an object at the root, and no property left open.

        A property the schema does not have is never what the caller wants, and the strict
        modes of OpenAI and Anthropic take only closed objects; the answer is still checked
        against ``schema`` itself.
        """
        schema = copy.deepcopy(self.schema)
        if self.wrapped:
            defs = {key: schema.pop(key) for key in ("$defs", "definitions") if key in schema}
            schema = {
                "type": "object",
                "properties": {WRAPPER: schema},
                "required": [WRAPPER],
                "additionalProperties": False,
                **defs,
            }
        _close(schema)
        return schema

    @functools.cached_property
    def strict(self):
        """Whether ``wire_schema`` meets OpenAI's strict mode: every property of every object required."""
        return _every_property_required(self.wire_schema)

    @property
    def display(self):
        """How the admin and the CLI name it."""
        source = self.source
        if isinstance(source, str):
            return source
        if isinstance(source, type):
            return f"{source.__module__}.{source.__qualname__}"
        return "JSON Schema" if isinstance(source, Mapping) else repr(source)

    def parse(self, text):
        """Return the parsed value of an answer's ``text``; raise OutputMismatch saying why not.

        The JSON may come in a code fence or after a sentence (prompted mode): the first
        JSON value in the text is read.
        """
        data = extract_json(text)
        if self.wrapped:
            if not isinstance(data, dict) or WRAPPER not in data:
                raise OutputMismatch([f"$: expected an object with the property {WRAPPER!r}"])
            data = data[WRAPPER]
        return self.load(data)

    def instructions(self):
        """What prompted mode adds to the system prompt: answer with JSON of this schema."""
        return (
            "Answer with a single JSON value and nothing else: no prose, no code fence. It must "
            f"match this JSON Schema:\n{json.dumps(self.wire_schema, ensure_ascii=False)}"
        )

    def correction(self, errors):
        """The user turn that asks again after an answer that did not match."""
        listed = "\n".join(f"- {error}" for error in errors)
        return (
            f"Your answer does not match the JSON Schema it must follow:\n{listed}\n"
            "Answer again with only the corrected JSON."
        )

    def minimal_text(self):
        """The JSON text of the smallest answer that matches, as a provider would send it."""
        value = jsonschema.minimal(self.schema)
        return json.dumps({WRAPPER: value} if self.wrapped else value, ensure_ascii=False)


def _close(schema):
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
        for child in jsonschema.subschemas(schema):
            _close(child)


def _every_property_required(schema):
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" and set(schema.get("properties", {})) - set(schema.get("required", ())):
        return False
    return all(_every_property_required(child) for child in jsonschema.subschemas(schema))


def extract_json(text):
    """Return the first JSON value in ``text``; raise OutputMismatch when there is none."""
    text = (text or "").strip()
    if not text:
        raise OutputMismatch(["$: the answer is empty, not JSON"])
    try:
        return json.loads(text)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[{\[]", text):
        try:
            return decoder.raw_decode(text, match.start())[0]
        except ValueError:
            continue
    raise OutputMismatch(["$: the answer holds no JSON value"])


def output_for(value, where="output"):
    """Return the Output of ``value`` (see the module's docstring); None for None.

    Raises OutputTypeError, whose message names ``where`` and what is wrong.
    """
    if value is None or isinstance(value, Output):
        return value
    try:
        if isinstance(value, Mapping):
            return _from_schema(value, value, where)
        return _cached(value, where)
    except TypeError as exc:  # an unhashable value that is not a schema
        raise OutputTypeError(
            f"{where} must be a type, a JSON Schema dict or a dotted path to one ({exc})"
        ) from None


@functools.lru_cache(maxsize=256)
def _cached(value, where):
    source = value
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            raise OutputTypeError(f"{where} {source!r} cannot be imported: {exc}") from None
        if isinstance(value, Mapping):
            return _from_schema(value, source, where)
    return _from_type(value, source, where)


def _from_schema(schema, source, where):
    schema = copy.deepcopy(dict(schema))
    problems = jsonschema.unsupported(schema)
    if problems:
        raise OutputTypeError(f"{where}'s JSON Schema uses {', '.join(problems)}, which llmapp cannot check")
    if not any(key in schema for key in ("type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref")):
        raise OutputTypeError(
            f"{where}'s JSON Schema has no type (nor enum, const, anyOf, oneOf, allOf or $ref)"
        )
    name = schema.get("title") if isinstance(schema.get("title"), str) else "answer"

    def load(data):
        found = jsonschema.errors(data, schema)
        if found:
            raise OutputMismatch(found)
        return data

    return Output(source=source, schema=schema, name=_wire_name(name), load=load)


def _from_type(annotation, source, where):
    pydantic_adapter = _pydantic_adapter(annotation)
    if pydantic_adapter is None:
        try:
            schema = jsonschema.schema_of(annotation)
        except jsonschema.UnsupportedType as exc:
            pydantic_adapter = _pydantic_adapter(annotation, any_type=True)
            if pydantic_adapter is None:
                raise OutputTypeError(
                    f"{where} {_display(source)} is not a type llmapp can describe ({exc}): use JSON's "
                    "types in a dataclass or TypedDict, a pydantic model, or a JSON Schema dict"
                ) from None
    if pydantic_adapter is not None:
        return _from_pydantic(pydantic_adapter, annotation, source, where)

    def load(data):
        found = jsonschema.errors(data, schema)
        if found:
            raise OutputMismatch(found)
        return jsonschema.build(annotation, data)

    return Output(source=source, schema=schema, name=_wire_name(_type_name(annotation)), load=load)


def _pydantic_adapter(annotation, any_type=False):
    """A pydantic TypeAdapter for a pydantic model or dataclass (any type, with ``any_type``), or None."""
    # A pydantic type cannot exist before pydantic is imported: nothing to import for the others.
    pydantic = sys.modules.get("pydantic")
    if pydantic is None and any_type:
        try:
            import pydantic
        except ImportError:
            return None
    if pydantic is None:
        return None
    is_model = isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)
    if not (is_model or any_type or hasattr(annotation, "__pydantic_validator__")):
        return None
    try:
        return pydantic.TypeAdapter(annotation)
    except pydantic.PydanticUserError:
        return None
    except pydantic.errors.PydanticSchemaGenerationError:
        return None


def _from_pydantic(adapter, annotation, source, where):
    import pydantic

    try:
        schema = adapter.json_schema()
    except pydantic.errors.PydanticInvalidForJsonSchema as exc:
        raise OutputTypeError(f"{where} {_display(source)} has no JSON Schema: {exc}") from None

    def load(data):
        try:
            return adapter.validate_json(json.dumps(data))
        except pydantic.ValidationError as exc:
            found = exc.errors(include_url=False, include_input=False)[: jsonschema.MAX_ERRORS]
            raise OutputMismatch([f"{_place(error)}: {error['msg']}" for error in found]) from None

    return Output(source=source, schema=schema, name=_wire_name(_type_name(annotation)), load=load)


def _place(error):
    """Where a pydantic error is, as ``jsonschema`` says it; a key the schema does not have is
    the answer's own, and not shown."""
    loc = list(error["loc"])
    if error["type"] == "extra_forbidden" and loc:
        loc[-1] = "*"
    return "$" + "".join(f"[{part}]" if isinstance(part, int) or part == "*" else f".{part}" for part in loc)


def _type_name(annotation):
    return getattr(annotation, "__name__", None) or "answer"


def _display(source):
    return repr(source) if isinstance(source, str) else getattr(source, "__qualname__", repr(source))


def _wire_name(name):
    return _NAME.sub("_", name)[:64] or "answer"
