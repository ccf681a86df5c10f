"""JSON Schema as typed answers need it, with no dependency: from Python types, against answers.

``schema_of`` describes a dataclass, a TypedDict or a typing construct of JSON's own types;
``errors`` says how a JSON value breaks a schema; ``build`` turns a value that matches the
schema of a type back into that type (dataclass instances, enums, tuples); ``minimal`` makes
the smallest value a schema accepts. The keywords are those that providers' structured
outputs use; ``unsupported`` names any other, so that no constraint is silently ignored.

Error messages name the place in the answer by the schema's property names and item
numbers, and what was expected, never a value of the answer: they reach usage events and
Sentry, where an answer's content does not go unless content is allowed.
"""

import dataclasses
import enum
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence

#: Keywords that describe and do not constrain: accepted and not checked.
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$anchor",
        "$comment",
        "format",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentMediaType",
        "contentEncoding",
        "propertyOrdering",
        "$defs",
        "definitions",
    }
)
#: Keywords ``errors`` checks.
CONSTRAINTS = frozenset(
    {
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "minProperties",
        "maxProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "$ref",
    }
)
#: Keywords whose value is one subschema, a list of them, or a dict of them.
_ONE, _LIST, _DICT = (
    ("additionalProperties", "items", "not"),
    ("prefixItems", "anyOf", "oneOf", "allOf"),
    ("properties", "patternProperties", "$defs", "definitions"),
)
#: Of a long answer, how many problems are reported.
MAX_ERRORS = 10


def subschemas(schema):
    """Yield the subschemas ``schema`` holds directly."""
    for key in _ONE:
        if isinstance(schema.get(key), dict):
            yield schema[key]
    for key in _LIST:
        if isinstance(schema.get(key), list):
            yield from (item for item in schema[key] if isinstance(item, dict))
    for key in _DICT:
        if isinstance(schema.get(key), dict):
            yield from (item for item in schema[key].values() if isinstance(item, dict))


TYPES = frozenset({"null", "boolean", "integer", "number", "string", "array", "object"})
_NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")


def unsupported(schema):
    """Return the problems that keep ``schema`` from being checked here, one phrase each.

    Unknown keywords, values of the wrong kind (a ``type`` that is no JSON type, a
    ``pattern`` that does not compile...), and ``$ref`` that point outside the schema,
    nowhere, or only at each other: found when the schema is given, not when an answer comes.
    """
    problems = set()

    def visit(node):
        if not isinstance(node, dict):
            if not isinstance(node, bool):
                problems.add("a subschema that is not an object")
            return
        for key in set(node) - ANNOTATIONS - CONSTRAINTS:
            problems.add(f"keyword {key!r}")
        problems.update(_value_problems(node, schema))
        for child in subschemas(node):
            visit(child)

    visit(schema)
    return sorted(problems)


def _value_problems(node, root):
    kinds = node.get("type")
    for kind in kinds if isinstance(kinds, list) else [] if kinds is None else [kinds]:
        if kind not in TYPES:
            yield f"type {kind!r} (JSON's types are {', '.join(sorted(TYPES))})"
    for key in ("enum", "required", "anyOf", "oneOf", "allOf", "prefixItems"):
        if key in node and not isinstance(node[key], list):
            yield f"{key} that is not a list"
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        if key in node and not isinstance(node[key], dict):
            yield f"{key} that is not an object"
    if isinstance(node.get("items"), list):
        yield "items given as a list (draft 4): use prefixItems"
    for key in _NUMBERS:
        if key in node and not _is_type(node[key], "number"):
            yield f"{key} that is not a number"
    if _is_type(node.get("multipleOf"), "number") and node["multipleOf"] <= 0:
        yield "multipleOf that is not above 0"
    for key in _COUNTS:
        if key in node and not (_is_type(node[key], "integer") and node[key] >= 0):
            yield f"{key} that is not a whole number from 0"
    for pattern in [node.get("pattern"), *(node.get("patternProperties") or {})]:
        if pattern is not None and not _compiles(pattern):
            yield f"pattern {pattern!r} that is not a regular expression"
    ref = node.get("$ref")
    if ref is not None:
        yield from _ref_problems(ref, root)


def _compiles(pattern):
    try:
        re.compile(pattern)
    except (re.error, TypeError):
        return False
    return True


def _ref_problems(ref, root):
    if not (isinstance(ref, str) and ref.startswith("#")):
        yield "a $ref outside the schema"
        return
    seen = set()
    while isinstance(ref, str) and ref.startswith("#"):
        if ref in seen:
            yield f"$ref {ref!r} that points only at itself"
            return
        seen.add(ref)
        try:
            target = resolve(ref, root)
        except KeyError:
            yield f"$ref {ref!r} that points nowhere"
            return
        if not isinstance(target, dict) or set(target) - ANNOTATIONS != {"$ref"}:
            return
        ref = target["$ref"]


def resolve(ref, root):
    """Return the subschema of ``root`` that the local ``$ref`` ``ref`` ("#/$defs/Name") points to."""
    node = root
    for part in ref.lstrip("#").split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise KeyError(ref)
        node = node[part]
    return node


# -- checking a value ---------------------------------------------------------------


def json_type(value):
    """The JSON type of a value json.loads returned."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_type(value, name):
    kind = json_type(value)
    if name == "number":
        return kind in ("integer", "number")
    if name == "integer":
        return kind == "integer" or (kind == "number" and math.isfinite(value) and value.is_integer())
    return kind == name


def errors(value, schema, root=None):
    """Return how ``value`` (as json.loads returns it) breaks ``schema``: at most MAX_ERRORS lines."""
    found = []
    _check(value, schema, "$", schema if root is None else root, found)
    return found[:MAX_ERRORS]


def _same(a, b):
    # JSON's equality: 1 == 1.0, but true is not 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _check(value, schema, path, root, found):
    if len(found) >= MAX_ERRORS or schema is True or schema == {}:
        return
    if schema is False:
        found.append(f"{path}: nothing is allowed here")
        return
    if "$ref" in schema:
        _check(value, resolve(schema["$ref"], root), path, root, found)
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_is_type(value, name) for name in names):
            found.append(f"{path}: expected {' or '.join(names)}, got {json_type(value)}")
            return
    if "const" in schema and not _same(value, schema["const"]):
        found.append(f"{path}: must be {_shown(schema['const'])}")
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        found.append(f"{path}: must be one of {', '.join(_shown(option) for option in schema['enum'])}")
    for key in ("anyOf", "oneOf"):
        if key in schema:
            matches = sum(not errors(value, option, root) for option in schema[key])
            if not matches:
                found.append(f"{path}: matches none of the {len(schema[key])} shapes allowed here")
            elif key == "oneOf" and matches > 1:
                found.append(f"{path}: matches {matches} of the shapes allowed here, not exactly one")
    for option in schema.get("allOf", ()):
        _check(value, option, path, root, found)
    if "not" in schema and not errors(value, schema["not"], root):
        found.append(f"{path}: matches a shape that is not allowed here")
    kind = json_type(value)
    if kind == "object":
        _check_object(value, schema, path, root, found)
    elif kind == "array":
        _check_array(value, schema, path, root, found)
    elif kind == "string":
        _check_string(value, schema, path, found)
    elif kind in ("integer", "number"):
        _check_number(value, schema, path, found)


def _check_object(value, schema, path, root, found):
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            found.append(f"{path}: missing the required property {name!r}")
    patterns = schema.get("patternProperties", {})
    others = schema.get("additionalProperties", True)
    unexpected = 0
    for name, item in value.items():
        if name in properties:
            _check(item, properties[name], f"{path}.{name}", root, found)
            continue
        matching = [pattern for pattern in patterns if re.search(pattern, name)]
        for pattern in matching:
            # Not the answer's own key: a place in the schema.
            _check(item, patterns[pattern], f"{path}[/{pattern}/]", root, found)
        if matching:
            continue
        if others is False:
            unexpected += 1
        elif isinstance(others, dict):
            _check(item, others, f"{path}[*]", root, found)
    if unexpected:
        found.append(
            f"{path}: {unexpected} propert{'y' if unexpected == 1 else 'ies'} the schema does not have"
        )
    if len(value) < schema.get("minProperties", 0):
        found.append(f"{path}: fewer than {schema['minProperties']} properties")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        found.append(f"{path}: more than {schema['maxProperties']} properties")


def _check_array(value, schema, path, root, found):
    prefix = schema.get("prefixItems", [])
    for index, (item, item_schema) in enumerate(zip(value, prefix, strict=False)):
        _check(item, item_schema, f"{path}[{index}]", root, found)
    rest = schema.get("items")
    if rest is False and len(value) > len(prefix):
        found.append(f"{path}: more than {len(prefix)} items")
    elif isinstance(rest, dict):
        for index in range(len(prefix), len(value)):
            _check(value[index], rest, f"{path}[{index}]", root, found)
    if len(value) < schema.get("minItems", 0):
        found.append(f"{path}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        found.append(f"{path}: more than {schema['maxItems']} items")
    if schema.get("uniqueItems") and len({_canonical(item) for item in value}) < len(value):
        found.append(f"{path}: items must be unique")


def _check_string(value, schema, path, found):
    if len(value) < schema.get("minLength", 0):
        found.append(f"{path}: shorter than {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        found.append(f"{path}: longer than {schema['maxLength']} characters")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        found.append(f"{path}: does not match the pattern {schema['pattern']!r}")


def _check_number(value, schema, path, found):
    if "minimum" in schema and value < schema["minimum"]:
        found.append(f"{path}: less than {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        found.append(f"{path}: more than {schema['maximum']}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        found.append(f"{path}: not more than {schema['exclusiveMinimum']}")
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        found.append(f"{path}: not less than {schema['exclusiveMaximum']}")
    step = schema.get("multipleOf")
    if step and not math.isclose(value / step, round(value / step), abs_tol=1e-9):
        found.append(f"{path}: not a multiple of {step}")


def _canonical(value):
    """A text equal for values JSON calls equal (1 and 1.0, keys in any order), else not."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, list):
        return "[" + ",".join(_canonical(item) for item in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(f"{json.dumps(key)}:{_canonical(item)}" for key, item in sorted(value.items()))
            + "}"
        )
    return json.dumps(value)


def _shown(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- the smallest value a schema accepts -------------------------------------------------

_FORMATS = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "hostname": "example.com",
    "duration": "P0D",
}


def minimal(schema, root=None, _resolving=()):
    """Return the smallest value ``schema`` accepts, as best it can be guessed: a ``pattern``,
    ``not`` or overlapping ``oneOf`` may need more (a value that does not match then says so)."""
    root = schema if root is None else root
    if schema is True or not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        if schema["$ref"] in _resolving:  # a type that holds itself: stop where it may end
            return None
        return minimal(resolve(schema["$ref"], root), root, (*_resolving, schema["$ref"]))
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            # null first, then a shape that does not refer back: the smallest and the surest.
            options = sorted(schema[key], key=lambda option: (option.get("type") != "null", "$ref" in option))
            return minimal(options[0], root, _resolving)
    if schema.get("allOf"):
        merged = {key: value for key, value in schema.items() if key != "allOf"}
        for part in schema["allOf"]:
            part = resolve(part["$ref"], root) if "$ref" in part else part
            properties = {**part.get("properties", {}), **merged.get("properties", {})}
            merged = {**part, **merged, "properties": properties}
            merged["required"] = [*part.get("required", ()), *merged.get("required", ())]
        return minimal(merged, root, _resolving)
    kind = schema.get("type", "null")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        return _minimal_object(schema, root, _resolving)
    if kind == "array":
        prefix = [minimal(item, root, _resolving) for item in schema.get("prefixItems", [])]
        more = max(0, schema.get("minItems", 0) - len(prefix))
        if not more:
            return prefix
        items = schema.get("items", {})
        if schema.get("uniqueItems"):
            return prefix + [_distinct(items, number, root, _resolving) for number in range(more)]
        return prefix + [minimal(items, root, _resolving)] * more
    if kind == "string":
        return _minimal_string(schema)
    if kind in ("integer", "number"):
        return _minimal_number(schema, kind)
    if kind == "boolean":
        return False
    return None


def _minimal_object(schema, root, resolving):
    properties = schema.get("properties", {})
    required = list(schema.get("required", ()))
    value = {name: minimal(properties.get(name, _extra(schema)), root, resolving) for name in required}
    optional = [name for name in properties if name not in value]
    count = 0
    while len(value) < schema.get("minProperties", 0):
        if optional:
            name = optional.pop(0)
            value[name] = minimal(properties[name], root, resolving)
        else:
            count += 1
            value[f"key{count}"] = minimal(_extra(schema), root, resolving)
    return value


def _extra(schema):
    others = schema.get("additionalProperties", {})
    return others if isinstance(others, dict) else {}


def _distinct(items, number, root, resolving):
    """The ``number``-th of distinct small values of ``items`` (for uniqueItems)."""
    value = minimal(items, root, resolving)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value + number * (items.get("multipleOf") or 1)
    if isinstance(value, str):
        return value + "x" * number
    return value


#: Strings tried against a ``pattern``, shortest first: no regular expression is inverted here.
_CANDIDATES = (
    "",
    *(character * length for length in range(1, 9) for character in "x0aA"),
    "user@example.com",
    "1970-01-01",
    "https://example.com/",
)


def _minimal_string(schema):
    text = _FORMATS.get(schema.get("format"), "")
    low, pattern = schema.get("minLength", 0), schema.get("pattern")
    text += "x" * max(0, low - len(text))
    if pattern is None or _matches(pattern, text):
        return text
    for candidate in _CANDIDATES:
        for padded in (candidate, candidate + candidate[-1:] * max(0, low - len(candidate))):
            if len(padded) >= low and _matches(pattern, padded):
                return padded
    return text


def _matches(pattern, text):
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return False


def _minimal_number(schema, kind):
    step = schema.get("multipleOf") or (1 if kind == "integer" else None)
    low, high = schema.get("minimum"), schema.get("maximum")
    if "exclusiveMinimum" in schema:
        low = max(low, schema["exclusiveMinimum"]) if low is not None else schema["exclusiveMinimum"]
    if "exclusiveMaximum" in schema:
        high = min(high, schema["exclusiveMaximum"]) if high is not None else schema["exclusiveMaximum"]
    # 0 when the bounds allow it, else the bound nearest to it.
    value = low if low is not None else (0 if high is None or high > 0 else high)
    if step:
        value = math.ceil(value / step) * step
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            value += step
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            value -= step
    elif "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        value = (value + high) / 2 if high is not None else value + 1
    elif "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        value = (value + (low if low is not None else value - 2)) / 2
    return int(value) if kind == "integer" else value


# -- Python types -------------------------------------------------------------------


class UnsupportedType(TypeError):
    """A type that cannot be described in JSON Schema without pydantic."""


_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def schema_of(annotation):
    """Return the JSON Schema of ``annotation``; dataclasses and TypedDicts go in ``$defs``.

    Raises UnsupportedType for a type outside JSON's own (a datetime, a Decimal...).
    """
    defs = {}
    schema = _describe(annotation, defs)
    return {**schema, "$defs": defs} if defs else schema


def _describe(annotation, defs):
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _describe(args[0], defs)
    if annotation is typing.Any or annotation is object:
        return {}
    if annotation in _SIMPLE:
        return {"type": _SIMPLE[annotation]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_describe(arg, defs) for arg in args]}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [member.value for member in annotation]}
    if origin in (list, Sequence, set, frozenset) or annotation in (list, set, frozenset):
        schema = {"type": "array", "items": _describe(args[0], defs) if args else {}}
        return {**schema, "uniqueItems": True} if origin in (set, frozenset) else schema
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _describe(args[0], defs)}
        items = [_describe(arg, defs) for arg in args]
        return {"type": "array", "prefixItems": items, "items": False, "minItems": len(items)}
    if origin in (dict, Mapping) or annotation is dict:
        if args and args[0] is not str:
            raise UnsupportedType(f"{_name(annotation)}: JSON object keys are strings")
        return {"type": "object", "additionalProperties": _describe(args[1], defs) if args else {}}
    if dataclasses.is_dataclass(annotation) or typing.is_typeddict(annotation):
        name = annotation.__name__
        if name not in defs:
            defs[name] = {}  # a type that holds itself refers to its own entry
            defs[name] = _describe_class(annotation, defs)
        return {"$ref": f"#/$defs/{name}"}
    raise UnsupportedType(f"{_name(annotation)} is not one of JSON's types")


def _describe_class(cls, defs):
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except NameError as exc:  # a forward reference to a name its module does not have
        raise UnsupportedType(f"{cls.__name__}'s annotations cannot be read: {exc}") from None
    if dataclasses.is_dataclass(cls):
        fields = [field for field in dataclasses.fields(cls) if field.init]
        names = [field.name for field in fields]
        required = [
            field.name
            for field in fields
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        ]
    else:
        names, required = list(hints), [name for name in hints if name in cls.__required_keys__]
    schema = {
        "type": "object",
        "title": cls.__name__,
        "properties": {name: _describe(hints[name], defs) for name in names},
        "required": required,
        "additionalProperties": False,
    }
    doc = (cls.__doc__ or "").strip()
    if doc and not doc.startswith(f"{cls.__name__}("):  # not the docstring dataclass() writes
        schema["description"] = doc
    return schema


def _name(annotation):
    return getattr(annotation, "__name__", None) or repr(annotation)


def build(annotation, value):
    """Return ``value``, which matches ``schema_of(annotation)``, as ``annotation``: its
    dataclasses, enums, tuples and sets made."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return build(args[0], value)
    if annotation is float and isinstance(value, int):
        return float(value)
    if annotation is int and isinstance(value, float):
        return int(value)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if not errors(value, schema_of(arg)):
                return build(arg, value)
        return value
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation(value)
    if origin in (list, Sequence, set, frozenset):
        items = [build(args[0], item) for item in value] if args else value
        return (origin if origin in (set, frozenset) else list)(items)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(build(args[0], item) for item in value)
        return tuple(build(arg, item) for arg, item in zip(args, value, strict=False))
    if origin in (dict, Mapping) and args:
        return {key: build(args[1], item) for key, item in value.items()}
    if dataclasses.is_dataclass(annotation) or typing.is_typeddict(annotation):
        hints = typing.get_type_hints(annotation, include_extras=True)
        built = {key: build(hints[key], item) for key, item in value.items() if key in hints}
        return annotation(**built) if dataclasses.is_dataclass(annotation) else built
    return value
