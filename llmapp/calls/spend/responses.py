"""The response cache: a use case's answers kept in a Django cache, given again to identical calls.

    LLM_USECASES["triage"]["CACHE"] = {"ALIAS": "default", "TTL": 86400}

Off unless a use case sets CACHE, and then used only at temperature 0 (the same question
may deserve another answer above it) unless ``"ANY_TEMPERATURE": True``. Two calls are
identical when everything that shapes the answer is: the use case, the provider and
model, the system prompt, every turn, the temperature, the token limit and the output
type. Only whole answers are kept: never an error, a refusal, an answer that did not
match its type or one cut at the token limit. A cache that is down or slow is a miss
(``sharedstate``): it never fails a call.
"""

import hashlib
import json
import numbers
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from llmapp.calls import sharedstate
from llmapp.calls.types import Completion, evolve
from llmapp.exceptions import ConfigurationError

#: Part of every key: a change of what is stored changes it, and old entries are never read.
VERSION = 1
#: What a call may say of the cache (``cache=``): look it up and keep the answer, only keep
#: the answer, or leave the cache alone.
USE, REFRESH, OFF = "use", "refresh", "off"
MODES = (USE, REFRESH, OFF)
CACHE_KEYS = frozenset({"ALIAS", "TTL", "ANY_TEMPERATURE"})
CACHE_HINT = 'For example {"ALIAS": "default", "TTL": 86400}: a CACHES alias, and seconds to keep an answer.'
#: The fields of a Completion an entry keeps.
_KEPT = ("text", "provider", "model", "finish_reason", "input_tokens", "output_tokens", "request_id")


def cache_problem(usecase, value):
    """The ConfigurationError of a use case's CACHE that cannot work, or None."""
    if value is None:
        return None
    where = f"LLM_USECASES[{usecase!r}]['CACHE']"
    if not isinstance(value, dict) or set(value) - CACHE_KEYS:
        return _wrong(f"{where} must be a dict of ALIAS, TTL and ANY_TEMPERATURE, or None for no cache.")
    alias, ttl = value.get("ALIAS", "default"), value.get("TTL", 86400)
    if not isinstance(alias, str) or alias not in settings.CACHES:
        known = ", ".join(settings.CACHES)
        return _wrong(f"{where}['ALIAS'] is {alias!r}, which is not in CACHES: name one of {known}.")
    if isinstance(ttl, bool) or not isinstance(ttl, numbers.Real) or not 1 <= ttl <= 10 * 365 * 86400:
        return _wrong(f"{where}['TTL'] must be a number of seconds from 1, got {ttl!r}.")
    if not isinstance(value.get("ANY_TEMPERATURE", False), bool):
        return _wrong(f"{where}['ANY_TEMPERATURE'] must be True or False.")
    return None


def _wrong(message):
    return ConfigurationError(message, check_id="llmapp.E027", hint=CACHE_HINT, field="CACHE")


@dataclass(frozen=True)
class CachedAnswers:
    """The response cache of one call: its key, and where answers are kept how long."""

    alias: str
    ttl: float
    key: str
    #: Whether to look the answer up first (``use``) or only keep the new one (``refresh``).
    lookup: bool

    @property
    def state(self):
        return sharedstate.get(self.alias, "responses")

    def found(self, entry, request):
        """The Completion of a cache ``entry`` for ``request``, or None for one that cannot serve it."""
        if not isinstance(entry, dict) or entry.get("version") != VERSION:
            return None
        completion = Completion(
            usecase=request.usecase,
            attempts=0,
            cost=Decimal(0),
            cached=True,
            **{name: entry.get(name) for name in _KEPT},
        )
        if request.output is None:
            return completion
        try:
            return evolve(completion, parsed=request.output.parse(completion.text))
        except ValueError:
            return None  # read by a type since changed in a way its schema does not show

    def get(self, request, budget=None):
        if not self.lookup:
            return None
        return self.found(self.state.get(self.key, budget=budget), request)

    async def aget(self, request, budget=None):
        if not self.lookup:
            return None
        return self.found(await self.state.arun(lambda cache: cache.get(self.key), budget=budget), request)

    def entry(self, completion):
        """What is kept of ``completion``, or None when it must not be kept (cut at the limit)."""
        if completion.finish_reason == "length":
            return None
        return {"version": VERSION, **{name: getattr(completion, name) for name in _KEPT}}

    def keep(self, completion, budget=None):
        entry = self.entry(completion)
        if entry is not None:
            self.state.run(lambda cache: cache.set(self.key, entry, self.ttl), budget=budget)

    async def akeep(self, completion, budget=None):
        entry = self.entry(completion)
        if entry is not None:
            await self.state.arun(lambda cache: cache.set(self.key, entry, self.ttl), budget=budget)


def for_call(config, request, mode):
    """Return the CachedAnswers of ``request`` on use case ``config``, or None when no cache applies.

    Raises the ConfigurationError of a CACHE that cannot work, as its check says it.
    """
    setting = config.cache
    if setting is None or mode == OFF:
        return None
    problem = cache_problem(config.name, setting)
    if problem is not None:
        raise problem
    if request.temperature != 0 and not setting.get("ANY_TEMPERATURE", False):
        return None
    return CachedAnswers(
        alias=setting.get("ALIAS", "default"),
        ttl=setting.get("TTL", 86400),
        key=cache_key(request),
        lookup=mode == USE,
    )


#: The OPTIONS of a provider that change its answers; its key, timeouts and headers do not.
SHAPING_OPTIONS = (
    "base_url",
    "azure_endpoint",
    "azure_deployment",
    "api_version",
    "vertexai",
    "project",
    "location",
    "structured_output",
    "token_limit_parameter",
)


def cache_key(request):
    """A key of everything in ``request`` that shapes its answer, its provider's set-up too."""
    from llmapp.conf.secrets import url_secrets
    from llmapp.providers import providers

    entry = providers.settings.get(request.provider) or {}
    options = entry.get("OPTIONS") or {}
    server = {name: str(options[name]) for name in SHAPING_OPTIONS if options.get(name) is not None}
    for name in ("base_url", "azure_endpoint"):
        if name in server:  # credentials in a URL are not what shapes an answer
            for secret in url_secrets(server[name]):
                server[name] = server[name].replace(secret, "")
    shape = [
        VERSION,
        request.usecase,
        request.provider,
        str(entry.get("BACKEND")),
        server,
        request.model,
        request.prompt,
        [list(turn) for turn in request.turns],
        request.temperature,
        request.max_output_tokens,
        None if request.output is None else request.output.schema,
    ]
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"llmapp:responses:{request.usecase}:{digest}"
