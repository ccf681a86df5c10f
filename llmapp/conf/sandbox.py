"""The bounds of a template saved in an override: how much it may loop and how much it may write.

Whoever may edit a use case writes its templates, which render on every call: a loop in
a loop over the message, or a filter asked for a width of a billion, would hold each call
or fill memory long before the rendered text is measured. Here a render counts its loop
steps and the characters it writes, and the filters that make text of a given size
refuse a size beyond what a prompt may hold (``MAX_RENDERED``).
"""

import contextvars
import functools
import re

from django.template import Library, defaultfilters
from django.template.base import Node, NodeList
from django.template.defaulttags import (
    AutoEscapeControlNode,
    ForNode,
    IfChangedNode,
    IfNode,
    SpacelessNode,
    WithNode,
)

#: The most text a template may render: far beyond a prompt, far below what fills memory.
MAX_RENDERED = 1_000_000
#: The most loop steps one render may take, all loops together.
MAX_LOOP_STEPS = 100_000

_budget = contextvars.ContextVar("llmapp_template_budget", default=None)


class OverBudget(Exception):
    """A render went past one of the bounds; says which."""


class Budget:
    __slots__ = ("characters", "steps")

    def __init__(self):
        self.steps = 0
        self.characters = 0

    def step(self):
        self.steps += 1
        if self.steps > MAX_LOOP_STEPS:
            raise OverBudget(f"its loops ran more than {MAX_LOOP_STEPS:,} steps")

    def wrote(self, text):
        self.characters += len(text)
        if self.characters > MAX_RENDERED:
            raise OverBudget(f"it wrote more than {MAX_RENDERED:,} characters")
        return text


def render_within_budget(template, context):
    """Render ``template`` (one that ``bound()`` prepared) with its own budget."""
    token = _budget.set(Budget())
    try:
        return template.render(context)
    finally:
        _budget.reset(token)


def _charge():
    # Rendered by Django alone (not by PromptTemplate.render), a template runs unbounded.
    return _budget.get()


class _CountedLoop(NodeList):
    """A for loop's body: each pass over it is a step."""

    def __iter__(self):
        budget = _charge()
        if budget is not None:
            budget.step()
        return super().__iter__()


#: Tags whose text is their children's, already counted; every other node's is counted as
#: it is written (a {% filter %} block's too: its filters may make more than they were given).
_CONTAINERS = (ForNode, IfNode, WithNode, SpacelessNode, AutoEscapeControlNode, IfChangedNode)


@functools.cache
def _counted(node_class):
    """A subclass of ``node_class`` whose output counts against its render's budget."""

    def render(self, context):
        text = node_class.render(self, context)
        budget = _charge()
        return text if budget is None else budget.wrote(text)

    return type(f"Counted{node_class.__name__}", (node_class,), {"render": render})


def bound(template):
    """Make ``template``'s loops and output count against the budget of its render."""
    for node in template.nodelist.get_nodes_by_type(Node):
        if isinstance(node, ForNode):
            node.nodelist_loop.__class__ = _CountedLoop
        if not isinstance(node, _CONTAINERS):
            node.__class__ = _counted(type(node))
    return template


# -- filters ------------------------------------------------------------------------

register = Library()
_NUMBER = re.compile(r"\d+")


def _size(arg, filter_name):
    """``arg``, once none of the numbers in it is beyond what a prompt may hold."""
    for number in _NUMBER.findall(str(arg)):
        if len(number) > 7 or int(number) > MAX_RENDERED:
            raise OverBudget(
                f"|{filter_name} was given {number}, beyond the {MAX_RENDERED:,} characters of a prompt"
            )
    return arg


def _checked(name, result):
    # Each filter's input is within bounds, so what one makes is at most a few times that:
    # measured after, it cannot grow without end through a chain (|escape|escape...).
    if isinstance(result, str | list | tuple) and len(result) > MAX_RENDERED:
        raise OverBudget(f"|{name} made {len(result):,} items, more than {MAX_RENDERED:,}")
    return result


#: Filters that make text of a size they are given: the size is refused before it is made.
_SIZED = frozenset({"ljust", "rjust", "center", "stringformat", "floatformat"})


def _bounded(name, filter_function):
    if name in _SIZED:

        def bounded(value, arg=None):
            if arg is None:
                return filter_function(value)
            return _checked(name, filter_function(value, _size(arg, name)))

    elif name == "join":

        def bounded(value, arg, **options):
            # The items times the separator, which may be long: measured before it is made.
            items = list(value) if isinstance(value, list | tuple) else None
            if items is not None:
                joined = sum(len(str(item)) for item in items) + len(str(arg)) * max(len(items) - 1, 0)
                if joined > MAX_RENDERED:
                    raise OverBudget(f"|join would make {joined:,} characters, more than {MAX_RENDERED:,}")
            return _checked(name, filter_function(value, arg, **options))

    else:

        def bounded(*args, **options):  # options: autoescape=, for the filters that need it
            return _checked(name, filter_function(*args, **options))

    functools.update_wrapper(bounded, filter_function)
    return bounded


for _name, _function in defaultfilters.register.filters.items():
    register.filter(
        _name,
        _bounded(_name, _function),
        is_safe=getattr(_function, "is_safe", False),
        needs_autoescape=getattr(_function, "needs_autoescape", False),
        expects_localtime=getattr(_function, "expects_localtime", False),
    )
