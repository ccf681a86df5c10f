"""The bounds of a template saved in an override: how much it may loop, compute and write.

Whoever may edit a use case writes its templates, which render on every call: a loop in
a loop over the message, a filter asked for a width of a billion, or a list doubled at
each level of nested ``{% with %}`` blocks would hold each call or fill memory long before
the rendered text is measured. Here each render has a budget: loop steps, the characters
it writes, and work, the size of what each filter is given and makes. What a filter or
a tag is about to be given is measured first (strings by their length, lists and dicts by
all they hold), so that nothing past the bounds is ever made.
"""

import contextvars
import functools
import re

from django.template import Library, TemplateSyntaxError, defaultfilters
from django.template.base import Node, NodeList, VariableNode, render_value_in_context
from django.template.defaulttags import (
    AutoEscapeControlNode,
    FilterNode,
    ForNode,
    IfChangedNode,
    IfNode,
    NowNode,
    RegroupNode,
    SpacelessNode,
    WithNode,
)
from django.template.loader_tags import BlockNode

#: The most text a template may render, and the most any value in it may hold: far beyond
#: a prompt, far below what fills memory.
MAX_RENDERED = 1_000_000
#: The most loop steps one render may take, all loops together, and the most tags and
#: variables it may render (a loop's body of a thousand tags, a hundred thousand times).
MAX_LOOP_STEPS = 100_000
MAX_NODES = 1_000_000
#: The most work one render may do: the sizes of what its filters are given and make.
MAX_WORK = 20_000_000
# Names looked up in the context: a failed lookup costs tens of µs (Django raises and
# catches three exceptions), and {% if %} may hold thousands of operands.
MAX_LOOKUPS = 1_000_000
MAX_MISSES = 10_000
#: How many characters a date format's one character may become (a month's name...).
DATE_EXPANSION = 32

_budget = contextvars.ContextVar("llmapp_template_budget", default=None)


class OverBudget(BaseException):
    """A render went past one of its bounds; says which.

    A BaseException: ``{% if %}`` takes any Exception of its operands for False, which
    would let the render go on past the bound.
    """


class Budget:
    __slots__ = ("characters", "lookups", "misses", "nodes", "steps", "work")

    def __init__(self):
        self.steps = 0
        self.nodes = 0
        self.characters = 0
        self.work = 0
        self.lookups = 0
        self.misses = 0

    def looked_up(self):
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise OverBudget(f"it looked up more than {MAX_LOOKUPS:,} variables")

    def missed(self):
        self.misses += 1
        if self.misses > MAX_MISSES:
            raise OverBudget(f"it looked up more than {MAX_MISSES:,} variables the call does not give")

    def rendered(self):
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise OverBudget(f"it rendered more than {MAX_NODES:,} tags and variables")

    def step(self):
        self.steps += 1
        if self.steps > MAX_LOOP_STEPS:
            raise OverBudget(f"its loops ran more than {MAX_LOOP_STEPS:,} steps")

    def wrote(self, text):
        self.characters += len(text)
        if self.characters > MAX_RENDERED:
            raise OverBudget(f"it wrote more than {MAX_RENDERED:,} characters")
        return text

    def worked(self, amount):
        self.work += amount
        if self.work > MAX_WORK:
            raise OverBudget(f"its filters and tags handled more than {MAX_WORK:,} characters")


def render_within_budget(template, context):
    """Render ``template`` (one that ``bound()`` prepared) with its own budget."""
    token = _budget.set(Budget())
    try:
        return template.render(context)
    finally:
        _budget.reset(token)


def current_budget():
    """The budget of the override source rendering now, or None: a template named in settings,
    or one rendered by Django alone (not by PromptTemplate.render), which runs unbounded."""
    return _budget.get()


def size(value, limit=MAX_RENDERED):
    """How much ``value`` holds: the length of its text, all the items of a list or dict
    (one that holds the same item twice counts it twice), 1 for anything else; counted
    only until it passes ``limit``."""
    total, pending = 0, [value]
    while pending and total <= limit:
        item = pending.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, dict):
            total += 1
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 1
            pending.extend(item)
        else:
            total += 1
    return total


def _given(what, value):
    """Charge the work of handling ``value``; refuse one past the bounds before it is used."""
    measured = size(value)
    if measured > MAX_RENDERED:
        raise OverBudget(f"{what} holds more than {MAX_RENDERED:,} characters")
    budget = current_budget()
    if budget is not None:
        budget.worked(measured)
    return value


# -- nodes -----------------------------------------------------------------------------


class _CountedLoop(NodeList):
    """A for loop's body: each pass over it is a step."""

    def __iter__(self):
        budget = current_budget()
        if budget is not None:
            budget.step()
        return super().__iter__()


class _CountedVariable(VariableNode):
    """``{{ value }}``: measured before it becomes text, and its text counted."""

    def render(self, context):
        try:
            value = self.filter_expression.resolve(context)
        except UnicodeDecodeError:
            return ""  # as Django's VariableNode
        budget = current_budget()
        if budget is None:
            return render_value_in_context(value, context)
        budget.rendered()
        _given(f"{{{{ {self.filter_expression.token} }}}}", value)
        return budget.wrote(render_value_in_context(value, context))


class _CountedRegroup(RegroupNode):
    """``{% regroup %}``: the list it groups is measured first."""

    def render(self, context):
        budget = current_budget()
        if budget is not None:
            budget.rendered()
            _given("{% regroup %}", self.target.resolve(context, ignore_failures=True))
        return super().render(context)


#: Tags whose text is their children's, counted as those write it, and whose filters (a
#: {% filter %} block's) are measured as they run.
_CONTAINERS = (
    ForNode,
    IfNode,
    WithNode,
    SpacelessNode,
    AutoEscapeControlNode,
    IfChangedNode,
    FilterNode,
    BlockNode,
)


@functools.cache
def _counted(node_class, writes=True):
    """A subclass of ``node_class`` whose renders count against its render's budget, and
    its output too unless it is a container's (``writes=False``), counted as written."""

    def render(self, context):
        budget = current_budget()
        if budget is None:
            return node_class.render(self, context)
        budget.rendered()
        text = node_class.render(self, context)
        return budget.wrote(text) if writes else text

    kind = "Counted" if writes else "Tallied"
    return type(f"{kind}{node_class.__name__}", (node_class,), {"render": render})


def bound(template):
    """Make ``template``'s loops, filters and output count against the budget of its render.

    Raises TemplateSyntaxError for a ``{% now %}`` whose format would be too long to write.
    """
    for node in template.nodelist.get_nodes_by_type(Node):
        if isinstance(node, ForNode):
            node.nodelist_loop.__class__ = _CountedLoop
        if isinstance(node, NowNode) and len(node.format_string) * DATE_EXPANSION > MAX_RENDERED:
            raise TemplateSyntaxError(f"a {{% now %}} format of {len(node.format_string):,} characters")
        if isinstance(node, VariableNode):
            node.__class__ = _CountedVariable
        elif isinstance(node, RegroupNode):
            node.__class__ = _CountedRegroup
        elif isinstance(node, _CONTAINERS):
            node.__class__ = _counted(type(node), writes=False)
        else:
            node.__class__ = _counted(type(node))
    return template


# -- filters: every built-in one, measured before and after ------------------------------------

register = Library()
_NUMBER = re.compile(r"\d[\d_]*")


def _size_argument(name, arg):
    """``arg``, once no number in it (as int() reads it, underscores too) is beyond the bounds."""
    for number in _NUMBER.findall(str(arg)):
        digits = number.replace("_", "")
        if len(digits) > 7 or int(digits) > MAX_RENDERED:
            raise OverBudget(
                f"|{name} was given {number}, beyond the {MAX_RENDERED:,} characters of a prompt"
            )
    return arg


def _before(name, value, arg):
    """Refuse, before the filter runs, what it would make past the bounds from ``value`` and ``arg``."""
    if name in _SIZED:
        _size_argument(name, arg)
    elif name == "join" and hasattr(value, "__len__"):
        # The items and a separator between each two: a long separator makes a lot.
        joined = size(value) + len(str(arg)) * max(len(value) - 1, 0)
        if joined > MAX_RENDERED:
            raise OverBudget(f"|join would make {joined:,} characters, more than {MAX_RENDERED:,}")
    elif name in _DATES and arg is not None and len(str(arg)) * DATE_EXPANSION > MAX_RENDERED:
        raise OverBudget(f"|{name} was given a format of {len(str(arg)):,} characters")


#: Filters that make text of a size they are given, and those that write a date's format.
_SIZED = frozenset({"ljust", "rjust", "center", "stringformat", "floatformat"})
_DATES = frozenset({"date", "time"})


def _bounded(name, filter_function):
    def bounded(value, *args, **options):  # options: autoescape=, for the filters that need it
        arg = args[0] if args else None
        _given(f"|{name}'s value", value)
        if args:
            _given(f"|{name}'s argument", arg)
        _before(name, value, arg)
        return _given(f"what |{name} made", filter_function(value, *args, **options))

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
