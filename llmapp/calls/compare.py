"""One message on several routes at once, side by side: ``compare_routes``.

Choosing a provider or a model for a use case means running the same input on each and
reading the answers, latencies and costs together. Each route runs as its own call of
the use case, concurrently: the use case's prompt, limits, retries and deadline, with
its fallbacks off (a row is its route, never another) and its response cache off (a
row is a fresh answer). A route that fails is a row with its error.
"""

import contextvars
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.db import connections

from llmapp.calls.service import complete_prompt, prepare_request
from llmapp.calls.types import Completion
from llmapp.conf import overrides
from llmapp.conf.secrets import redact
from llmapp.exceptions import InvalidRequestError, LLMError

#: The most routes one comparison runs at once.
MAX_ROUTES = 16


@dataclass(frozen=True)
class Route:
    """An LLM_PROVIDERS alias and, optionally, a model it allows."""

    alias: str
    model: str | None = None

    def __str__(self):
        return f"{self.alias}:{self.model}" if self.model else self.alias


@dataclass(frozen=True)
class RouteResult:
    """What one route answered, or how it failed."""

    route: Route
    completion: Completion | None = None
    error: LLMError | Exception | None = None

    @property
    def ok(self):
        return self.completion is not None

    def as_dict(self):
        """The record `manage.py llm --compare --json` prints: the route, then the call's or its error."""
        record = {"route": str(self.route)}
        if self.completion is not None:
            return record | self.completion.as_dict()
        message = str(self.error) if isinstance(self.error, LLMError) else redact(str(self.error))
        return record | {"error": {"type": type(self.error).__name__, "message": message}}


def parse_routes(spec):
    """Return the Routes of "openai,anthropic:claude-haiku-4-5" (a string or a list of strings).

    Raises InvalidRequestError for an empty list, a route given twice, or more than MAX_ROUTES.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    routes = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            continue
        alias, _, model = item.strip().partition(":")
        route = Route(alias.strip(), model.strip() or None)
        if route in routes:
            raise InvalidRequestError(f"route {str(route)!r} is given twice.")
        routes.append(route)
    if not routes:
        raise InvalidRequestError('name the routes to compare: "alias" or "alias:model", comma-separated.')
    if len(routes) > MAX_ROUTES:
        raise InvalidRequestError(f"compare at most {MAX_ROUTES} routes at once, not {len(routes)}.")
    return routes


def compare_routes(usecase, message=None, routes=(), **options):
    """Run ``usecase`` on ``message`` on each of ``routes`` at once; return a RouteResult each, in order.

    ``routes`` are Routes or "alias[:model]" strings; ``options`` are complete_prompt's
    (``messages``, ``output``, ``context``, ``timeout``...), for every route. A route or
    argument that is wrong raises before anything is sent, as a single call would.
    """
    routes = parse_routes([str(route) for route in routes])
    overrides.refresh()
    served = {}
    for route in routes:
        request, _ = prepare_request(
            usecase, message, provider=route.alias, model=route.model, **_request_options(options)
        )
        same = served.setdefault((request.provider, request.model), route)
        if same is not route:
            raise InvalidRequestError(
                f"routes {str(same)!r} and {str(route)!r} are the same model; keep one."
            )
    options = {**options, "fallbacks": [], "cache": "off"}
    pool = ThreadPoolExecutor(max_workers=len(routes), thread_name_prefix="llm-compare")
    try:
        # Each in a copy of this context: a draft being tried ("Test this draft") holds there too.
        futures = [
            pool.submit(contextvars.copy_context().run, _run, usecase, message, route, options)
            for route in routes
        ]
        return [future.result() for future in futures]
    finally:
        # Not waited for on an interrupt: the caller decides whether to wait for the calls.
        pool.shutdown(wait=False, cancel_futures=True)


def _request_options(options):
    names = ("messages", "prompt", "temperature", "max_output_tokens", "output", "context")
    return {name: options[name] for name in names if name in options}


def _run(usecase, message, route, options):
    try:
        completion = complete_prompt(usecase, message, provider=route.alias, model=route.model, **options)
    except Exception as exc:  # every failure is the route's row, a bug's too
        return RouteResult(route, error=exc)
    finally:
        # The thread ends with the comparison: its connection (the usage events') goes too.
        connections.close_all()
    return RouteResult(route, completion=completion)
