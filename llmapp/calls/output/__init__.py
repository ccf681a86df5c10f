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
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.utils.module_loading import import_string

from llmapp.calls.output import jsonschema

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
        if "$ref" in schema:
            # A dataclass's schema refers to its own definition: OpenAI wants the object at the root.
            schema = {
                **jsonschema.resolve(schema["$ref"], schema),
                **{k: v for k, v in schema.items() if k != "$ref"},
            }
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
        """Whether ``wire_schema`` meets OpenAI's strict mode: every object closed with every
        property required, and every subschema of a known shape."""
        return _strict(self.wire_schema)

    @functools.cached_property
    def open_objects(self):
        """Whether the schema has objects whose keys the answer chooses (a ``dict[str, int]``)."""
        return not _closed_only(self.wire_schema)

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
        if _depth(data) > MAX_DEPTH:
            raise OutputMismatch([f"$: nested more than {MAX_DEPTH} deep"])
        try:
            return self.load(data)
        except (RecursionError, OverflowError, ArithmeticError) as exc:
            # An answer the checks cannot weigh (a number too large to divide...) is not a match.
            raise OutputMismatch([f"$: cannot be checked ({type(exc).__name__})"]) from None

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


_SHAPES = ("type", "enum", "const", "anyOf", "$ref")


def _strict(schema, top=True):
    if not isinstance(schema, dict):
        return False
    if not top and not any(key in schema for key in _SHAPES):
        return False  # Any: strict mode wants every subschema's shape
    if schema.get("type") == "object" and (
        schema.get("additionalProperties") is not False
        or set(schema.get("properties", {})) != set(schema.get("required", ()))
    ):
        return False
    return all(_strict(child, top=False) for child in jsonschema.subschemas(schema) if child is not schema)


def _closed_only(schema):
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" and schema.get("additionalProperties") is not False:
        return False
    return all(_closed_only(child) for child in jsonschema.subschemas(schema))


#: How deep an answer's JSON may nest: deeper is no type's, and would exhaust the recursion.
MAX_DEPTH = 64


def _not_json(constant):
    raise ValueError(f"{constant} is not JSON")


def extract_json(text):
    """Return the first JSON value in ``text``; raise OutputMismatch when there is none.

    NaN and Infinity are not JSON (Python's json reads them): refused, as is a value
    nested too deeply to read.
    """
    text = (text or "").strip()
    if not text:
        raise OutputMismatch(["$: the answer is empty, not JSON"])
    decoder = json.JSONDecoder(parse_constant=_not_json)
    try:
        try:
            return decoder.decode(text)
        except ValueError:
            pass
        for match in re.finditer(r"[{\[]", text):
            try:
                return decoder.raw_decode(text, match.start())[0]
            except ValueError:
                continue
    except RecursionError:
        raise OutputMismatch([f"$: nested more than {MAX_DEPTH} deep"]) from None
    raise OutputMismatch(["$: the answer holds no JSON value"])


def _depth(value, level=0):
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return max((_depth(item, level + 1) for item in value), default=level + 1)
    return level


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
    if not (
        isinstance(annotation, type) or typing.get_origin(annotation) is not None or annotation is typing.Any
    ):
        # A function would be called with the answer's fields (pydantic validates calls).
        raise OutputTypeError(
            f"{where} {_display(source)} is not a type: name a class, a typing construct or a JSON Schema"
        )
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
        try:
            return jsonschema.build(annotation, data)
        except (TypeError, ValueError) as exc:  # a __post_init__ of the type's own refused it
            # Not the exception's words: they may quote the answer.
            raise OutputMismatch([f"$: {_type_name(annotation)} refused it ({type(exc).__name__})"]) from None

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
    except pydantic.PydanticUserError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OutputTypeError(f"{where} {_display(source)} has no JSON Schema: {first_line}") from None
    names = _property_names(schema)

    def load(data):
        try:
            return adapter.validate_json(json.dumps(data))
        except pydantic.ValidationError as exc:
            found = exc.errors(include_url=False, include_input=False)[: jsonschema.MAX_ERRORS]
            raise OutputMismatch([f"{_place(error, names)}: {_said(error)}" for error in found]) from None

    return Output(source=source, schema=schema, name=_wire_name(_type_name(annotation)), load=load)


def _property_names(schema):
    """Every property name a schema has: the only keys an error may name."""
    names = set()
    for node in _nodes(schema):
        if isinstance(node.get("properties"), dict):
            names.update(node["properties"])
    return names


def _nodes(schema):
    yield schema
    for child in jsonschema.subschemas(schema):
        yield from _nodes(child)


def _place(error, names):
    """Where a pydantic error is, as ``jsonschema`` says it; a key the schema does not have is
    the answer's own (a dict's key, an extra field), and not shown."""
    parts = []
    for part in error["loc"]:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part in names:
            parts.append(f".{part}")
        else:
            parts.append("[*]")
    return "$" + "".join(parts)


def _said(error):
    """What a pydantic error says, unless its words may quote the answer: then its kind."""
    kind = error["type"]
    quoting = kind.endswith("_parsing") and kind not in _PLAIN_PARSING
    if quoting or kind in ("value_error", "assertion_error") or kind.startswith("union_tag"):
        return f"not valid ({kind})"
    return error["msg"]


#: Pydantic's parsing errors whose words never quote the input (a UUID's does, a character).
_PLAIN_PARSING = frozenset({"int_parsing", "float_parsing", "bool_parsing", "decimal_parsing"})


def _type_name(annotation):
    return getattr(annotation, "__name__", None) or "answer"


def _display(source):
    return repr(source) if isinstance(source, str) else getattr(source, "__qualname__", repr(source))


def _wire_name(name):
    return _NAME.sub("_", name)[:64] or "answer"
