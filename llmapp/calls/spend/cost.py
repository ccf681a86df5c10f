"""What a call cost: each provider's prices per model, in US dollars per million tokens.

    LLM_PROVIDERS["openai"]["PRICES"] = {
        "gpt-4o-mini": {"INPUT": "0.15", "OUTPUT": "0.60", "CACHED_INPUT": "0.075"},
        "llama3.2": {"FREE": True},
    }

Prices are decimal strings (a float such as 0.1 is not the number it looks like) and
costs are Decimals. A model with no price has no cost (None), never a cost of zero: a
bill is never understated without saying so.
"""

import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from llmapp import conf
from llmapp.exceptions import ConfigurationError

MILLION = Decimal(1_000_000)
#: The keys of one model's price.
RATES = ("INPUT", "OUTPUT", "CACHED_INPUT")
PRICES_HINT = (
    'For example {"gpt-4o-mini": {"INPUT": "0.15", "OUTPUT": "0.60"}}: US dollars per million '
    'tokens, as strings; {"FREE": True} for a model that costs nothing.'
)


@dataclass(frozen=True)
class Price:
    """One model's rates, in US dollars per million tokens."""

    input: Decimal
    output: Decimal
    #: The rate of input tokens the provider served from its prompt cache; None: ``input``'s.
    cached_input: Decimal | None = None

    def cost(self, input_tokens, output_tokens, cached_input_tokens=None):
        """The cost of an answer's tokens; None when the provider reported none to price."""
        if input_tokens is None and output_tokens is None:
            return None if self.input or self.output else Decimal(0)
        cached = min(cached_input_tokens or 0, input_tokens or 0) if self.cached_input is not None else 0
        total = (
            ((input_tokens or 0) - cached) * self.input
            + cached * (self.cached_input or 0)
            + (output_tokens or 0) * self.output
        )
        return total / MILLION

    def most(self, input_tokens, output_tokens):
        """The most ``input_tokens`` in and ``output_tokens`` out can cost."""
        return (input_tokens * self.input + output_tokens * self.output) / MILLION

    def as_rates(self):
        """The rates as PRICES writes them, for a usage event to keep beside its cost."""
        rates = {"INPUT": str(self.input), "OUTPUT": str(self.output)}
        if self.cached_input is not None:
            rates["CACHED_INPUT"] = str(self.cached_input)
        return rates


FREE = Price(Decimal(0), Decimal(0))


def parse_prices(alias, prices):
    """Return {model: Price} of an entry's PRICES; raise ConfigurationError saying what is wrong."""
    where = f"LLM_PROVIDERS[{alias!r}]['PRICES']"
    if not isinstance(prices, dict):
        raise _wrong(f"{where} must be a dict of model name to its price.")
    parsed = {}
    for model, price in prices.items():
        at = f"{where}[{model!r}]"
        if not isinstance(model, str) or not isinstance(price, dict):
            raise _wrong(f"{at} must be a dict of INPUT and OUTPUT (and optionally CACHED_INPUT), or FREE.")
        if price.get("FREE") is True and set(price) == {"FREE"}:
            parsed[model] = FREE
            continue
        unknown = sorted(set(price) - set(RATES), key=str)
        if unknown or not {"INPUT", "OUTPUT"} <= set(price):
            raise _wrong(
                f"{at} must have INPUT and OUTPUT (and optionally CACHED_INPUT)"
                + (f"; unknown key(s): {', '.join(map(str, unknown))}." if unknown else ".")
            )
        rates = {key: _rate(f"{at}[{key!r}]", value) for key, value in price.items()}
        parsed[model] = Price(rates["INPUT"], rates["OUTPUT"], rates.get("CACHED_INPUT"))
    return parsed


#: Far above any price per million tokens or any budget, far below what Decimal overflows at.
MAX_AMOUNT = Decimal(1_000_000_000)


def _rate(where, value):
    if isinstance(value, float):
        raise _wrong(
            f"{where} is the float {value!r}: write it as a string ({str(value)!r}), which is exact."
        )
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise _wrong(f"{where} must be a decimal string such as '0.15'.")
    try:
        rate = Decimal(str(value).strip())
    except InvalidOperation:
        raise _wrong(f"{where} must be a decimal string such as '0.15', got {str(value)[:20]!r}.") from None
    if not rate.is_finite() or rate < 0 or rate > MAX_AMOUNT:
        raise _wrong(f"{where} must be a price from 0 up to {MAX_AMOUNT:,}.")
    return rate


def _wrong(message):
    return ConfigurationError(message, check_id="llmapp.E026", hint=PRICES_HINT)


_prices = {}
_lock = threading.Lock()


def price(alias, model):
    """The Price of ``model`` on provider ``alias``, or None when PRICES has none for it."""
    try:
        return _prices[alias].get(model)
    except KeyError:
        pass
    configured = conf.get_setting("LLM_PROVIDERS")
    entry = configured.get(alias) if isinstance(configured, dict) else None
    prices = entry.get("PRICES") if isinstance(entry, dict) else None
    try:
        parsed = parse_prices(alias, prices) if prices is not None else {}
    except ConfigurationError:
        parsed = {}  # a check says so; calls go on, their cost unknown
    with _lock:
        _prices[alias] = parsed
    return parsed.get(model)


conf.on_change(_prices.clear)


def dollars(cost, unpriced=0, none="-"):
    """Show a cost in US dollars; calls whose cost is unknown are said, not counted as free."""
    shown = none if cost is None else f"${cost:,.4f}" if cost >= Decimal("0.01") else f"${cost:.6f}"
    if unpriced:
        return f"{shown} (+{unpriced:,} unpriced)" if cost is not None else f"{unpriced:,} unpriced"
    return shown


def most_cost(request):
    """The most ``request`` can cost: its estimated input, and MAX_OUTPUT_TOKENS out; None unpriced."""
    from llmapp.providers.tokens import request_tokens

    found = price(request.provider, request.model)
    if found is None:
        return None
    return found.most(request_tokens(request), request.max_output_tokens)


class Tally:
    """The cost of a call's attempts so far: None once one that answered had no price."""

    def __init__(self):
        self.total = Decimal(0)
        #: {"alias:model": its rates} of the priced routes that answered.
        self.rates = {}

    def add(self, alias, model, completion):
        """Add the cost of ``completion``, one attempt's answer on ``alias`` asked for ``model``."""
        found = price(alias, model)
        cost = (
            None
            if found is None
            else found.cost(completion.input_tokens, completion.output_tokens, completion.cached_input_tokens)
        )
        if found is not None:
            self.rates[f"{alias}:{model}"] = found.as_rates()
        self.total = None if cost is None or self.total is None else self.total + cost
        return cost
