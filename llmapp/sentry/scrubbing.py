"""Keep secrets and call content out of Sentry: ``before_send``, ``before_send_transaction`` and
``before_breadcrumb``.

Two rules for secrets, applied to every string in the event (message, exception
values, request headers, data and cookies, breadcrumbs, extra, contexts,
stack-frame ``vars``, span data):

- a value under a key named like a secret (``api_key``, ``Authorization``, ...)
  is masked whatever it holds;
- any other string has every credential known to this process replaced, in every
  form it travels in, along with URL credentials, query-string credentials and
  key-shaped strings (see :func:`llmapp.conf.secrets.redact` and
  :func:`llmapp.conf.secrets.known_secrets`).

And one for content: the prompts, messages and answers of the llmapp calls in an
error's traceback are withheld wherever they appear in its event (frame ``vars``
such as ``message``, ``request``, ``payload`` or a command's ``options``, the
request body, the parameters of SQL queries on llmapp's tables in spans and breadcrumbs...),
unless both ``LLM_LOG_CONTENT`` and the SDK's options (``send_default_pii``, or the
``gen_ai`` part of ``data_collection``) allow them.

If scrubbing fails the hooks do not raise (the SDK would drop the event without a
word): an error event is replaced by a stripped one that says so, a transaction is
dropped, and the failure is logged to ``llmapp.sentry.scrubbing``.
"""

import logging

from llmapp import conf
from llmapp.conf.secrets import is_secret_name, known_secrets, mask, redact
from llmapp.sentry.frames import call_contents, withhold

logger = logging.getLogger(__name__)

#: The logger of the logging event stream, and the fields of a usage event that hold content.
USAGE_LOGGER = "llmapp.usage"
CONTENT_FIELDS = frozenset({"prompt", "message", "response", "conversation"})
#: What stands for the parameters of an SQL query on llmapp's tables, when content may not go.
WITHHELD_PARAMS = "[withheld: llmapp call content]"
# Event fields that can hold nothing secret: what a stripped event keeps.
SAFE_EVENT_FIELDS = ("event_id", "timestamp", "level", "platform", "release", "environment", "sdk")

#: The secrets in settings and the environment (kept under this name for the hooks' callers).
secret_values = known_secrets


def before_send(event, hint):
    """Return the error event with secrets masked, and call content withheld; never raises."""
    try:
        if not content_allowed():
            event = withhold(event, call_contents((hint or {}).get("exc_info")))
        return scrub(event)
    except Exception:
        logger.exception("Could not scrub a Sentry event; sending a stripped copy instead")
        return _stripped(event)


def before_breadcrumb(crumb, hint):
    """Return the breadcrumb with secrets masked, and usage content dropped; never raises.

    The ``logging`` event stream logs each call with its usage event as ``extra``, its
    prompt, message and answer included when LLM_LOG_CONTENT is on; the SDK's logging
    integration makes each record a breadcrumb, which the next error event carries.
    """
    try:
        if crumb.get("category") == USAGE_LOGGER and not content_allowed():
            usage = (crumb.get("data") or {}).get("usage_event")
            if isinstance(usage, dict):
                crumb["data"]["usage_event"] = {
                    name: value for name, value in usage.items() if name not in CONTENT_FIELDS
                }
        elif crumb.get("category") == "query" and not content_allowed():
            _withhold_content_params(crumb.get("message"), crumb.get("data"))
        return scrub(crumb)
    except Exception:
        logger.exception("Could not scrub a Sentry breadcrumb; dropping it")
        return None


def before_send_transaction(event, hint):
    """Return the transaction with secrets masked, and call content withheld, or ``None`` if
    that fails; never raises."""
    try:
        if not content_allowed():
            for span in event.get("spans") or ():
                _withhold_content_params(span.get("description"), span.get("data"))
        return scrub(event)
    except Exception:
        logger.exception("Could not scrub a Sentry transaction; dropping it")
        return None


def _withhold_content_params(query, data):
    """Withhold the parameters of an SQL query on llmapp's tables from a span's or breadcrumb's data.

    The SDK records them when ``data_collection`` (or an experiment) lets it, and the usage
    events and batch items llmapp writes hold prompts and answers when LLM_LOG_CONTENT is on.
    """
    if not (isinstance(data, dict) and "db.params" in data and isinstance(query, str)):
        return
    if any(table in query for table in _content_tables()):
        data["db.params"] = WITHHELD_PARAMS


def _content_tables():
    from django.apps import apps

    return [model._meta.db_table for model in apps.get_app_config("llmapp").get_models()]


def content_allowed():
    """Say whether prompts and answers may reach Sentry: if LLM_LOG_CONTENT and the SDK's options agree."""
    import sentry_sdk

    return bool(conf.get_setting("LLM_LOG_CONTENT")) and _sdk_collects_gen_ai(sentry_sdk.get_client())


def _sdk_collects_gen_ai(client):
    """Say whether the SDK's options let prompts and answers (gen_ai inputs and outputs) be sent.

    sentry-sdk 2.75 replaces ``send_default_pii`` with ``data_collection``, which, once the
    user gives it, decides alone (its ``gen_ai`` inputs and outputs): as the SDK's own AI
    integrations read it. A prompt comes with its answer, so both must be allowed.
    """
    collection = client.options.get("data_collection")
    if isinstance(collection, dict) and collection.get("provided_by_user"):
        gen_ai = collection.get("gen_ai") or {}
        return bool(gen_ai.get("inputs")) and bool(gen_ai.get("outputs"))
    return bool(client.should_send_default_pii())


def scrub(data, secrets=(), key=None):
    """Return a copy of ``data`` with every string scrubbed; ``key`` is the key it sits under."""
    if isinstance(data, str):
        return mask(data) if key is not None and is_secret_name(key) else redact(data, secrets)
    if isinstance(data, dict):
        return {name: scrub(value, secrets, name) for name, value in data.items()}
    if isinstance(data, list | tuple):
        if len(data) == 2 and isinstance(data[0], str) and is_secret_name(data[0]):
            # A [name, value] pair, as some integrations report headers.
            return [data[0], scrub(data[1], secrets, data[0])]
        return [scrub(item, secrets, key) for item in data]
    return data


def _stripped(event):
    try:
        stripped = {field: event[field] for field in SAFE_EVENT_FIELDS if field in event}
        stripped["message"] = (
            "llmapp could not scrub this event, so its content was not sent; "
            "see the llmapp.sentry.scrubbing log."
        )
        return stripped
    except Exception:
        return None
