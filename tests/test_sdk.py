"""llmapp.sentry against two real (fake) Sentry ingests on 127.0.0.1; the SDK is not mocked."""

import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import sentry_sdk
from django.http import HttpResponse
from django.urls import path
from sentry_sdk.envelope import Envelope, Item, PayloadRef

from llmapp import metrics
from llmapp.conf.secrets import MASK
from llmapp.metrics import locmem as locmem_metrics
from llmapp.sentry import configure_sdk, scrubbing
from llmapp.sentry.options import Dsns, _get_sdk_options
from llmapp.sentry.sampling import traces_sampler
from llmapp.sentry.scrubbing import before_send, before_send_transaction
from llmapp.sentry.transport import METRIC_ITEM_TYPES, MultiplexingTransport
from tests.fakes.sentry_ingest import sentry_ingests  # noqa: F401
from tests.sentry import restored_sentry, wsgi_get

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-test-SECRET123456"
# Not key-shaped: only the collection of secret values from settings can catch it.
PLAIN_SECRET = "plain-settings-secret-7f3e"


def boom(request):
    raise RuntimeError("the view failed")


def ok(request):
    return HttpResponse("ok")


urlpatterns = [path("boom/", boom), path("api/x", ok)]


@pytest.fixture(autouse=True)
def _restore_sentry():
    with restored_sentry():
        yield


@pytest.fixture
def ingests(settings, sentry_ingests):  # noqa: F811
    """Start an upstream and a relay ingest and point SENTRY_SDK_CONFIG at both."""
    upstream, relay = sentry_ingests(project_id=1), sentry_ingests(project_id=2)
    settings.SENTRY_SDK_CONFIG = {
        "dsn": upstream.dsn,
        "relay_dsn": relay.dsn,
        "environment": "test",
        "traces_sample_rate": 1.0,
    }
    settings.SENTRY_SDK_UPSTREAM_METRICS_ENABLED = False
    return upstream, relay


@pytest.fixture
def locmem_backend(settings):
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.locmem.LocmemMetricsBackend"
    locmem_metrics.reset()
    yield locmem_metrics.sent
    locmem_metrics.reset()


def flush():
    sentry_sdk.get_client().flush(timeout=5)


# --- options ----------------------------------------------------------------


def test_get_sdk_options_pops_dsns_and_sets_hooks(settings):
    config = {"dsn": "http://a@127.0.0.1:1/1", "relay_dsn": "http://b@127.0.0.1:2/2", "release": "1.2.3"}
    settings.SENTRY_SDK_CONFIG = config

    options, dsns = _get_sdk_options()

    assert dsns == Dsns(upstream="http://a@127.0.0.1:1/1", relay="http://b@127.0.0.1:2/2")
    assert "dsn" not in options and "relay_dsn" not in options
    assert options["before_send"] is before_send
    assert options["before_send_transaction"] is before_send_transaction
    assert options["traces_sampler"] is traces_sampler
    assert options["send_client_reports"] is True
    assert options["release"] == "llmapp@1.2.3"
    assert options["auto_enabling_integrations"] is False
    assert config["dsn"] == "http://a@127.0.0.1:1/1" and config["release"] == "1.2.3"


def _installed_release():
    try:
        return "llmapp@" + version("llmapp")
    except PackageNotFoundError:
        return "llmapp@unknown"


@pytest.mark.parametrize(
    ("given", "expected"),
    [("llmapp@2.0", "llmapp@2.0"), ("2.0", "llmapp@2.0"), (None, _installed_release())],
)
def test_release_is_prefixed_once(settings, given, expected):
    settings.SENTRY_SDK_CONFIG = {"release": given}
    assert _get_sdk_options()[0]["release"] == expected


def test_either_dsn_may_be_missing(settings):
    settings.SENTRY_SDK_CONFIG = {"relay_dsn": "http://b@127.0.0.1:2/2", "dsn": ""}
    assert _get_sdk_options()[1] == Dsns(upstream=None, relay="http://b@127.0.0.1:2/2")


def test_configure_sdk_without_a_dsn_does_nothing(settings):
    settings.SENTRY_SDK_CONFIG = {"environment": "test"}
    assert configure_sdk() is None
    assert not sentry_sdk.get_client().is_active()


# --- multiplexing -----------------------------------------------------------


def test_event_and_transaction_reach_both_ingests(ingests):
    upstream, relay = ingests
    client = configure_sdk()
    assert client.get_integration("django") is not None
    assert client.get_integration("openai") is None

    sentry_sdk.capture_message("hello from llmapp")
    with sentry_sdk.start_transaction(name="llm-cli", op="cli"):
        with sentry_sdk.start_span(op="llm.prompt", name="render prompt"):
            pass
        with sentry_sdk.start_span(op="gen_ai.chat", name="chat gpt-4o-mini"):
            pass
    flush()

    for ingest in (upstream, relay):
        [event] = [item.json for item in ingest.items_of_type("event")]
        assert event["message"] == "hello from llmapp"
        assert event["release"].startswith("llmapp@")
        [transaction] = [item.json for item in ingest.items_of_type("transaction")]
        assert transaction["transaction"] == "llm-cli"
        assert [span["op"] for span in transaction["spans"]] == ["llm.prompt"]
        # sentry-sdk 2.75 sends a transaction's gen_ai spans as a separate "span" item.
        [span_item] = [item.json for item in ingest.items_of_type("span")]
        assert [span["name"] for span in span_item["items"]] == ["chat gpt-4o-mini"]
    assert {e.project_id for e in upstream.envelopes} == {1}
    assert {e.project_id for e in relay.envelopes} == {2}


def test_only_upstream_or_only_relay(settings, sentry_ingests):  # noqa: F811
    for key in ("dsn", "relay_dsn"):
        ingest = sentry_ingests()
        settings.SENTRY_SDK_CONFIG = {key: ingest.dsn}
        configure_sdk()
        sentry_sdk.capture_message(f"only {key}")
        flush()
        assert [item.json["message"] for item in ingest.items_of_type("event")] == [f"only {key}"]
        sentry_sdk.get_client().close(timeout=2)


def test_metrics_reach_relay_but_not_upstream(ingests):
    upstream, relay = ingests
    configure_sdk()

    sentry_sdk.metrics.count("llmapp.test.calls", 1)
    sentry_sdk.capture_message("with a metric")
    flush()

    assert "trace_metric" in relay.item_types
    assert "event" in upstream.item_types
    assert not METRIC_ITEM_TYPES & set(upstream.item_types)


def test_metrics_reach_upstream_when_enabled(ingests, settings):
    upstream, relay = ingests
    settings.SENTRY_SDK_UPSTREAM_METRICS_ENABLED = True
    configure_sdk()

    sentry_sdk.metrics.count("llmapp.test.calls", 1)
    flush()

    assert "trace_metric" in upstream.item_types
    assert "trace_metric" in relay.item_types


def _envelope(*item_types):
    envelope = Envelope(headers={"event_id": "0" * 32})
    for item_type in item_types:
        envelope.add_item(Item(payload=PayloadRef(json={"type": item_type}), type=item_type))
    return envelope


def test_upstream_gets_a_filtered_copy_and_the_original_is_unmodified(ingests):
    upstream, relay = ingests
    options, dsns = _get_sdk_options()
    transport = MultiplexingTransport(dsns, options)
    envelope = _envelope("event", "statsd", "trace_metric")
    items, headers = list(envelope.items), dict(envelope.headers)

    transport.capture_envelope(envelope)
    transport.capture_envelope(_envelope("statsd", "metric_meta"))  # nothing left for upstream
    transport.flush(5)
    transport.kill()

    assert envelope.items == items and envelope.headers == headers
    assert [i.type for i in envelope.items] == ["event", "statsd", "trace_metric"]
    assert [e.item_types for e in upstream.envelopes] == [["event"]]
    assert [e.item_types for e in relay.envelopes] == [
        ["event", "statsd", "trace_metric"],
        ["statsd", "metric_meta"],
    ]


def test_transport_is_healthy_only_if_both_are(ingests):
    _upstream, relay = ingests
    options, dsns = _get_sdk_options()
    transport = MultiplexingTransport(dsns, options)
    try:
        assert transport.is_healthy()
        relay.rate_limit(retry_after=3600)
        transport.capture_envelope(_envelope("event"))
        transport.flush(5)
        assert transport.upstream.is_healthy()
        assert not transport.relay.is_healthy()
        assert not transport.is_healthy()
    finally:
        transport.kill()


def test_auto_enabling_integrations_keep_the_ai_ones_off(settings):
    pytest.importorskip("openai")
    settings.SENTRY_SDK_CONFIG = {"auto_enabling_integrations": True}
    disabled = {cls.identifier for cls in _get_sdk_options()[0]["disabled_integrations"]}
    assert "openai" in disabled
    assert disabled <= {"openai", "anthropic", "google_genai", "langchain"}


def test_sent_requests_are_counted(ingests, locmem_backend):
    upstream, _relay = ingests
    configure_sdk()

    sentry_sdk.capture_message("count me")
    flush()
    metrics.flush()

    counted = [(key, value) for kind, key, value, tags in locmem_backend if kind == "incr"]
    assert ("llmapp.internal.sent_requests.upstream.events", 1) in counted
    assert ("llmapp.internal.sent_requests.relay.events", 1) in counted
    assert len(upstream.envelopes) == counted.count(("llmapp.internal.sent_requests.upstream.events", 1))


# --- scrubbing --------------------------------------------------------------


def call_provider():
    provider_value = API_KEY
    from_settings = PLAIN_SECRET
    raise RuntimeError(f"provider rejected {provider_value} / {from_settings}")


@pytest.mark.django_db  # Django's request_finished closes old database connections
def test_secrets_reach_no_ingest(ingests, settings):
    upstream, relay = ingests
    settings.ROOT_URLCONF = __name__
    settings.LLM_PROVIDERS = {
        "openai": {"BACKEND": "llmapp.providers.openai.OpenAIProvider", "OPTIONS": {"api_key": API_KEY}},
        "other": {"BACKEND": "llmapp.providers.locmem.LocmemProvider", "OPTIONS": {"token": PLAIN_SECRET}},
    }
    configure_sdk()

    sentry_sdk.add_breadcrumb(
        message=f"calling openai with {API_KEY}", data={"used": PLAIN_SECRET, "auth": f"Bearer {API_KEY}"}
    )
    sentry_sdk.set_extra("providers", settings.LLM_PROVIDERS)
    sentry_sdk.set_context("llm", {"note": f"key {PLAIN_SECRET}"})
    try:
        call_provider()
    except RuntimeError:
        sentry_sdk.capture_exception()
    status = wsgi_get("/boom/", HTTP_AUTHORIZATION=f"Bearer {API_KEY}", HTTP_X_SESSION=PLAIN_SECRET)
    assert status.startswith("500")
    sentry_sdk.capture_message(f"done with {PLAIN_SECRET}")
    flush()

    for ingest in (upstream, relay):
        events = [item.json for item in ingest.items_of_type("event")]
        assert len(events) >= 3  # the exception, the view's error, the message
        assert any(e.get("request", {}).get("headers", {}).get("Authorization") for e in events)
        assert any(frame.get("vars", {}).get("provider_value") for frame in _frames(events))
        for data in ingest.received_bytes:
            assert API_KEY.encode() not in data
            assert PLAIN_SECRET.encode() not in data
        assert MASK in repr(events)  # scrubbed, not merely absent


def _frames(events):
    for event in events:
        for exception in event.get("exception", {}).get("values", []):
            yield from exception.get("stacktrace", {}).get("frames", [])


def test_scrub_masks_secret_names_and_known_values(settings):
    settings.LLM_PROVIDERS = {"x": {"BACKEND": "b", "OPTIONS": {"api_key": PLAIN_SECRET}}}
    event = {
        "message": f"failed with {PLAIN_SECRET}",
        "request": {"headers": [["Authorization", "Basic dXNlcjpwYXNz"]], "cookies": {"csrftoken": "abc"}},
        "extra": {"password": "short", "count": 3, "nested": [f"x{PLAIN_SECRET}x"]},
    }

    scrubbed = before_send(event, {})

    assert PLAIN_SECRET not in repr(scrubbed)
    # No tail of a Basic credential is kept: it is the user and password, encoded.
    assert scrubbed["request"]["headers"] == [["Authorization", "Basic " + MASK]]
    assert scrubbed["request"]["cookies"]["csrftoken"] == MASK
    assert scrubbed["extra"]["password"] == MASK
    assert scrubbed["extra"]["count"] == 3
    assert event["message"] == f"failed with {PLAIN_SECRET}"  # the input is not modified


def test_secret_values_follow_settings(settings):
    settings.LLM_PROVIDERS = {"x": {"OPTIONS": {"api_key": PLAIN_SECRET}}}
    assert PLAIN_SECRET in scrubbing.secret_values()
    settings.LLM_PROVIDERS = {}
    assert PLAIN_SECRET not in scrubbing.secret_values()
    settings.SECRET_KEY = "a-new-django-secret-key"
    assert "a-new-django-secret-key" in scrubbing.secret_values()
    assert "django.contrib.auth.hashers.MD5PasswordHasher" not in scrubbing.secret_values()


def test_hooks_never_raise(monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("broken scrubber")

    monkeypatch.setattr(scrubbing, "scrub", broken)
    event = {"event_id": "1" * 32, "level": "error", "message": f"leak {API_KEY}", "extra": {"k": API_KEY}}

    stripped = before_send(event, {})

    assert stripped["event_id"] == "1" * 32 and stripped["level"] == "error"
    assert API_KEY not in repr(stripped)
    assert before_send_transaction({"type": "transaction", "spans": []}, {}) is None


# --- sampling ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampling_context", "rate"),
    [
        ({"wsgi_environ": {"PATH_INFO": "/healthz"}}, 0.0),
        ({"wsgi_environ": {"PATH_INFO": "/health/"}}, 0.0),
        ({"wsgi_environ": {"PATH_INFO": "/static/x.css"}}, 0.0),
        ({"asgi_scope": {"path": "/favicon.ico"}}, 0.0),
        ({"wsgi_environ": {"PATH_INFO": "/static/x.css"}, "parent_sampled": True}, 0.0),
        ({"wsgi_environ": {"PATH_INFO": "/api/x"}}, 0.25),
        ({"asgi_scope": {"path": "/api/x"}}, 0.25),
        ({"wsgi_environ": {"PATH_INFO": "/api/x"}, "parent_sampled": True}, 1.0),
        ({"wsgi_environ": {"PATH_INFO": "/api/x"}, "parent_sampled": False}, 0.0),
        ({"transaction_context": {"name": "llm-cli"}}, 0.25),
    ],
)
def test_traces_sampler(settings, sampling_context, rate):
    settings.SENTRY_SDK_CONFIG = {"traces_sample_rate": 0.25}
    assert traces_sampler({"parent_sampled": None, **sampling_context}) == rate


def test_traces_sampler_uses_static_url_and_defaults_to_off(settings):
    settings.STATIC_URL = "/assets/"
    settings.SENTRY_SDK_CONFIG = {}
    assert traces_sampler({"parent_sampled": None, "wsgi_environ": {"PATH_INFO": "/assets/a.js"}}) == 0.0
    assert traces_sampler({"parent_sampled": True, "wsgi_environ": {"PATH_INFO": "/assets/a.js"}}) == 0.0
    assert traces_sampler({"parent_sampled": None, "wsgi_environ": {"PATH_INFO": "/api/x"}}) == 0.0


@pytest.mark.django_db  # Django's request_finished closes old database connections
def test_health_checks_are_not_traced_end_to_end(ingests, settings):
    upstream, relay = ingests
    settings.ROOT_URLCONF = __name__
    configure_sdk()
    for path_info in ("/healthz", "/static/x.css", "/api/x"):
        wsgi_get(path_info)
    flush()
    for ingest in (upstream, relay):
        assert [item.json["transaction"] for item in ingest.items_of_type("transaction")] == ["/api/x"]


# --- start-up cost ----------------------------------------------------------


def test_configure_sdk_imports_no_provider_sdk(ingests):
    upstream, relay = ingests
    code = (
        "import sys, django; django.setup()\n"
        "from django.conf import settings\n"
        f"settings.SENTRY_SDK_CONFIG = {{'dsn': {upstream.dsn!r}, 'relay_dsn': {relay.dsn!r}}}\n"
        "from llmapp.sentry import configure_sdk\n"
        "client = configure_sdk()\n"
        "assert client.is_active()\n"
        "client.close(timeout=2)\n"
        "print(sorted(m for m in ('openai', 'anthropic', 'google.genai', 'langchain') if m in sys.modules))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings.test"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_configured_backends_sentry_integration_is_kept_off_too(settings):
    from llmapp.sentry.options import ai_integrations

    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "inhouse": {"BACKEND": "tests.fakes.custom_provider.InHouseProvider"},
    }
    integrations = ai_integrations()
    assert "sentry_sdk.integrations.httpx.HttpxIntegration" in integrations
    assert "sentry_sdk.integrations.openai.OpenAIIntegration" in integrations
