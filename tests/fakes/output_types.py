"""Output types a project would define, named by dotted path in the tests' use cases."""

import dataclasses
import enum
from typing import Literal, TypedDict

import pydantic


class Ticket(pydantic.BaseModel):
    """A support ticket, triaged."""

    label: Literal["spam", "ham"]
    score: float = pydantic.Field(ge=0, le=1)


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


@dataclasses.dataclass
class Address:
    city: str
    zip: str | None = None


@dataclasses.dataclass
class Contact:
    """Who wrote, and from where."""

    name: str
    priority: Priority
    addresses: list[Address]
    tags: tuple[str, ...] = ()


class Routing(TypedDict):
    queue: Literal["billing", "tech"]
    urgent: bool


TICKET_SCHEMA = {
    "type": "object",
    "title": "Triage",
    "properties": {
        "label": {"enum": ["spam", "ham"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "score"],
}
