"""No credential, in any form, reaches a sink; no call content reaches Sentry unless allowed.

The adversary is a server that echoes every request header, the URL and the decoded Basic
credentials back in its error body. The credentials: userinfo in base_url (percent-encoded,
so it travels decoded and base64-encoded too), an API key full of regex metacharacters, a
gateway header that does not look secret, and a custom header value of three characters.
"""

import base64
import inspect
import io
import json
import logging

import pytest
import sentry_sdk
from django.core.management import call_command
from django.test import Client
from django.urls import path

from llmapp import complete_prompt
from llmapp.exceptions import ProviderError
from llmapp.models import CompletionEvent
from llmapp.providers import providers
from llmapp.sentry import configure_sdk
from llmapp.sentry.scrubbing import before_breadcrumb
from tests.fakes.anthropic_server import fake_anthropic
from tests.fakes.gemini_server import fake_gemini
from tests.sentry import wsgi_get

__all__ = ["fake_anthropic", "fake_gemini"]

USER, PASSWORD = "user", "s3cr3t%40pass"  # the password is s3cr3t@pass
KEY = "k3y+(meta)*[chars]$^|.?{2}\\end"  # matches no key shape: only its value can mask it
SUBSCRIPTION_KEY = "apim-subscription-0042"  # under a name that does not look secret
SHORT = "q$3"  # a header value too short to mask as a substring
HEADERS = {"Ocp-Apim-Subscription-Key": SUBSCRIPTION_KEY, "X-Short": SHORT, "X-Title": "llmapp tests"}
BACKENDS = {
    "openai": "llmapp.providers.openai.OpenAIProvider",
    "anthropic": "llmapp.providers.anthropic.AnthropicProvider",
    "gemini": "llmapp.providers.gemini.GeminiProvider",
}
# Distinctive, so that finding it anywhere means the message leaked.
CONTENT = "private ticket text 5521 about Jane's invoice"


def forbidden(headers=True):
    """Every form the credentials may take; none may appear in any sink."""
    plain = f"{USER}:s3cr3t@pass"
    forms = [PASSWORD, "s3cr3t@pass", plain, base64.b64encode(plain.encode()).decode(), KEY, KEY[:-4]]
    return forms + ([SUBSCRIPTION_KEY, SHORT] if headers else [])


def assert_clean(text, name, headers=True):
    for secret in forbidden(headers):
        assert secret not in text, f"{secret!r} in {name}"


@pytest.fixture
def server(request, settings):
    """Point provider ``request.param`` at its fake server, through credentials in base_url."""
    alias = request.param
    fake = request.getfixturevalue({"openai": "fake_openai"}.get(alias, f"fake_{alias}"))
    options = {
        "api_key": KEY,
        "base_url": fake.base_url.replace("http://", f"http://{USER}:{PASSWORD}@"),
        "timeout": 3,
    }
    if alias != "gemini":  # the gemini backend takes no custom headers
        options["default_headers"] = HEADERS
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        alias: {"BACKEND": BACKENDS[alias], "OPTIONS": options, "CIRCUIT_BREAKER": None},
    }
    settings.LLM_USECASES = {"summarize": {"PROVIDER": alias}}
    fake.alias = alias
    return fake


def call(alias, message="hello"):
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", message, provider=alias, retries=0)
    return raised.value


@pytest.fixture
def ingests(settings, sentry_ingests):
    """An upstream and a relay ingest, an active Sentry client, and the previous client back afterwards."""
    upstream, relay = sentry_ingests(project_id=1), sentry_ingests(project_id=2)
    settings.SENTRY_SDK_CONFIG = {"dsn": upstream.dsn, "relay_dsn": relay.dsn, "traces_sample_rate": 1.0}
    previous = sentry_sdk.get_client()
    with sentry_sdk.isolation_scope(), sentry_sdk.new_scope():
        yield upstream, relay
    sentry_sdk.get_client().close(timeout=2)
    sentry_sdk.get_global_scope().set_client(previous)


def received_bytes(*ingests):
    return [body.decode("utf-8", "replace") for ingest in ingests for body in ingest.received_bytes]


def received(ingests):
    sentry_sdk.get_client().flush(timeout=5)
    return received_bytes(*ingests)


# -- every sink of a failed call -------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("server", ["openai", "anthropic", "gemini"], indirect=True)
def test_an_echoing_server_gets_no_credential_into_any_sink(server, admin_client, caplog, ingests):
    caplog.set_level(logging.DEBUG)
    configure_sdk()
    alias = server.alias
    sinks = {}

    server.reply_echo(401)
    error = call(alias)
    assert "rejected" in str(error) and error.status_code == 401  # the echo got through, masked
    sinks |= {"str": str(error), "repr": repr(error)}
    sentry_sdk.capture_exception(error)

    event = CompletionEvent.objects.get(status="error")
    sinks |= {"error_message": event.error_message, "exception": json.dumps(event.exception)}
    log = "/admin/llmapp/completionevent/"
    sinks |= {"log page": admin_client.get(log).content.decode()}
    sinks |= {"event page": admin_client.get(f"{log}{event.pk}/change/").content.decode()}
    sinks |= {"use case page": admin_client.get("/admin/llmapp/usecase/summarize/").content.decode()}
    server.reply_echo(401)
    page = admin_client.post("/admin/llmapp/usecase/summarize/", {"message": "hi"}).content.decode()
    assert 'id="test-error"' in page
    sinks |= {"test prompt page": page}
    sinks |= {f"ingest {n}": body for n, body in enumerate(received(ingests))}
    sinks |= {"logs": "\n".join(caplog.messages), "log text": caplog.text}

    # The wire did get them: they are what the server echoed.
    sent = server.requests[0].headers
    assert sent["authorization"].startswith("Basic ") or sent.get("x-api-key") or sent.get("x-goog-api-key")
    for name, text in sinks.items():
        assert_clean(text, name, headers=alias != "gemini")
    assert "HTTP Request: POST http://••••@127.0.0.1" in caplog.text


@pytest.mark.parametrize("server", ["openai", "anthropic", "gemini"], indirect=True)
def test_batch_output_has_no_credential(server, settings, tmp_path):
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    server.reply_echo(401)
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"message": "hello", "retries": 0}) + "\n")
    with pytest.raises(Exception, match="failed"):
        call_command("llm", "summarize", "--input", source, "--output", output, stderr=io.StringIO())
    [record] = [json.loads(line) for line in output.read_text().splitlines()]
    assert "rejected" in record["error"]["message"]
    assert_clean(json.dumps(record), "batch output", headers=server.alias != "gemini")


def test_the_command_line_shows_and_reports_no_credential(manage, fake_openai, sentry_ingests):
    upstream, relay = sentry_ingests(project_id=1), sentry_ingests(project_id=2)
    fake_openai.reply_echo(401)
    env = {
        "SENTRY_DSN": upstream.dsn,
        "SENTRY_RELAY_DSN": relay.dsn,
        "LLM_SUMMARIZE_PROVIDER": "openai",
        "LLM_SUMMARIZE_RETRIES": "0",
        "OPENAI_BASE_URL": fake_openai.base_url.replace("http://", f"http://{USER}:{PASSWORD}@"),
        "OPENAI_API_KEY": KEY,
    }
    result = manage("llm", "summarize", "-m", CONTENT, env=env)
    assert result.returncode == 1 and "rejected" in result.stderr
    assert_clean(result.stderr, "stderr", headers=False)
    assert upstream.items_of_type("event") and relay.items_of_type("event")
    for n, body in enumerate(received_bytes(upstream, relay)):
        assert_clean(body, f"ingest {n}", headers=False)
        assert CONTENT not in body, f"the message reached ingest {n}"


# -- --dry-run is what is sent ----------------------------------------------------------------


@pytest.mark.parametrize("server", ["openai", "anthropic", "gemini"], indirect=True)
def test_dry_run_shows_the_headers_the_wire_gets_masked(server, settings):
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    out = io.StringIO()
    call_command("llm", "summarize", "-m", "hi", "--dry-run", stdout=out)
    described = json.loads(out.getvalue())
    assert server.requests == []
    complete_prompt("summarize", "hi", provider=server.alias)
    [sent] = server.requests
    assert set(described["headers"]) == set(sent.headers)
    assert described["json"] == sent.body
    assert described["url"].startswith("http://••••@127.0.0.1:")
    # The HTTP client sends URL credentials as Basic auth (for openai, in place of the key's
    # Bearer): the dry run says so.
    assert sent.headers["authorization"].startswith("Basic ")
    assert described["headers"]["authorization"] == "Basic ••••"
    if server.alias != "gemini":
        assert sent.headers["x-title"] == described["headers"]["x-title"] == "llmapp tests"
        assert described["headers"]["x-short"] == "••••"
    assert_clean(out.getvalue(), "dry run", headers=server.alias != "gemini")


def test_a_key_that_url_credentials_replace_is_a_warning(settings):
    settings.LLM_PROVIDERS = {
        "openai": {
            "BACKEND": BACKENDS["openai"],
            "OPTIONS": {"api_key": KEY, "base_url": f"http://{USER}:{PASSWORD}@127.0.0.1:9/v1"},
        }
    }
    [warning] = providers["openai"].check()
    assert warning.id == "llmapp.W004" and "the API key is not sent" in warning.msg
    settings.LLM_PROVIDERS = {
        "openai": {
            "BACKEND": BACKENDS["openai"],
            "OPTIONS": {"api_key": KEY, "base_url": "http://127.0.0.1:9/v1"},
        }
    }
    assert providers["openai"].check() == []


# -- the completion log's search ------------------------------------------------------------------


@pytest.mark.django_db
def test_the_log_search_is_no_oracle_for_what_error_messages_hold(staff_client_factory):
    # Recorded before the key was configured, so stored as the server sent it.
    CompletionEvent.objects.create(
        usecase="summarize",
        provider="openai",
        model="m",
        status="error",
        latency_ms=1.0,
        error_type="ProviderError",
        error_message=f"Incorrect API key provided: {KEY}",
    )
    client = staff_client_factory("view_completionevent")
    log = "/admin/llmapp/completionevent/"
    assert len(client.get(log).context["cl"].result_list) == 1
    # One character at a time, a view-only user could otherwise read the key back.
    for guess in (KEY[:1], KEY[:3], KEY[:6]):
        assert list(client.get(log, {"q": guess}).context["cl"].result_list) == []
    assert len(client.get(log, {"q": "ProviderError"}).context["cl"].result_list) == 1


@pytest.fixture
def staff_client_factory(django_user_model):
    from django.contrib.auth.models import Permission

    def login(*codenames):
        user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
        client = Client()
        client.force_login(user)
        return client

    return login


# -- call content and Sentry -------------------------------------------------------------------


def ask(request):
    complete_prompt("summarize", CONTENT, provider="openai", retries=0)


def boom(request):
    raise RuntimeError("the view failed")


urlpatterns = [path("ask/", ask), path("boom/", boom)]


@pytest.mark.django_db
@pytest.mark.parametrize("send_default_pii", [False, True])
def test_call_content_reaches_no_sentry_event_unless_both_settings_allow(
    settings, ingests, openai_provider, send_default_pii
):
    settings.ROOT_URLCONF = __name__
    settings.SENTRY_SDK_CONFIG["send_default_pii"] = send_default_pii
    configure_sdk()
    openai_provider.reply_error(500, "upstream exploded")
    error = call("openai", CONTENT)
    sentry_sdk.capture_exception(error)  # the SDK's own event_from_exception, as a host project would
    openai_provider.reply_error(500, "upstream exploded")
    assert wsgi_get("/ask/").startswith("500")  # the Django integration's capture
    openai_provider.reply("Fine.")
    with sentry_sdk.start_transaction(name="ok"):
        complete_prompt("summarize", CONTENT, provider="openai")
    bodies = received(ingests)
    events = [body for body in bodies if '"exception"' in body]
    assert len(events) >= 4  # two captures, each in both ingests
    for body in bodies:
        assert CONTENT not in body and json.dumps(CONTENT)[1:-1] not in body
    assert all("[withheld: LLM_LOG_CONTENT is off]" in body for body in events)


@pytest.mark.django_db
def test_spans_carry_content_when_both_settings_allow(settings, ingests, openai_provider):
    settings.LLM_LOG_CONTENT = True
    settings.SENTRY_SDK_CONFIG["send_default_pii"] = True
    configure_sdk()
    with sentry_sdk.start_transaction(name="ok"):
        complete_prompt("summarize", CONTENT, provider="openai")
    assert any(CONTENT in body for body in received(ingests))


@pytest.mark.django_db
@pytest.mark.skipif(
    "data_collection" not in inspect.signature(sentry_sdk.consts.ClientConstructor).parameters,
    reason="this sentry-sdk predates the data_collection option (2.75)",
)
@pytest.mark.parametrize(
    ("sdk_options", "sent"),
    [
        # data_collection, once given, decides alone: as the SDK's own AI integrations read it.
        ({"send_default_pii": True, "data_collection": {"gen_ai": {"inputs": False}}}, False),
        ({"send_default_pii": True, "data_collection": {"gen_ai": {"outputs": False}}}, False),
        ({"data_collection": {"gen_ai": {"inputs": True, "outputs": True}}}, True),
        ({"data_collection": {"user_info": False}}, True),  # gen_ai is collected unless said otherwise
    ],
)
def test_the_sdks_data_collection_option_decides_with_llm_log_content(
    settings, ingests, openai_provider, sdk_options, sent
):
    settings.LLM_LOG_CONTENT = True
    settings.SENTRY_SDK_CONFIG.pop("send_default_pii", None)
    settings.SENTRY_SDK_CONFIG.update(sdk_options)
    configure_sdk()
    with sentry_sdk.start_transaction(name="ok"):
        complete_prompt("summarize", CONTENT, provider="openai")
    transactions = [body for body in received(ingests) if '"type":"transaction"' in body.replace(" ", "")]
    assert transactions and any(CONTENT in body for body in transactions) is sent
    # The SDK's breadcrumb of the usage event's INSERT, which the next error event carries.
    insert = 'INSERT INTO "llmapp_completionevent" ("prompt", "message") VALUES (%s, %s)'
    crumb = {"category": "query", "message": insert, "data": {"db.params": ["prompt", CONTENT]}}
    assert (CONTENT in json.dumps(before_breadcrumb(crumb, {}))) is sent


# -- the DEBUG error page --------------------------------------------------------------------


@pytest.mark.django_db
def test_the_debug_error_page_shows_no_credential(settings):
    settings.ROOT_URLCONF = __name__
    settings.DEBUG = True
    settings.DEFAULT_EXCEPTION_REPORTER_FILTER = "llmapp.debug.SafeExceptionReporterFilter"
    settings.LLM_PROVIDERS = {
        "gateway": {
            "BACKEND": BACKENDS["openai"],
            "OPTIONS": {
                "base_url": f"https://{USER}:{PASSWORD}@gw.example/v1?subscription-key=qs-secret-91",
                "default_headers": HEADERS,
            },
        }
    }
    response = Client(raise_request_exception=False).get("/boom/")
    assert response.status_code == 500
    page = response.content.decode()
    assert "LLM_PROVIDERS" in page and "gw.example" in page
    assert_clean(page, "the DEBUG page")
    assert "qs-secret-91" not in page


@pytest.mark.django_db
@pytest.mark.parametrize("send_default_pii", [False, True])
def test_usage_logs_bring_no_content_to_sentry_unless_both_settings_allow(
    settings, ingests, caplog, send_default_pii
):
    from sentry_sdk.integrations.logging import BreadcrumbHandler

    caplog.set_level(logging.INFO, logger="llmapp.usage")  # as a project that logs usage has it
    settings.LLM_EVENTSTREAM = "logging"
    settings.LLM_TSDB = "null"
    settings.LLM_LOG_CONTENT = True  # content in the usage log: the operator's choice for logs
    settings.SENTRY_SDK_CONFIG["send_default_pii"] = send_default_pii
    configure_sdk()
    complete_prompt("summarize", CONTENT, provider="test")
    [record] = [record for record in caplog.records if record.name == "llmapp.usage"]
    # The breadcrumb the SDK's logging integration makes of that record, through llmapp's hook.
    crumb = before_breadcrumb(BreadcrumbHandler()._breadcrumb_from_record(record), {"log_record": record})
    assert crumb["category"] == "llmapp.usage" and crumb["data"]["usage_event"]["usecase"] == "summarize"
    assert (CONTENT in json.dumps(crumb, default=str)) is send_default_pii


@pytest.mark.django_db(transaction=True)
def test_the_writer_says_why_it_lost_events_without_their_frames(settings, caplog):
    from llmapp.calls.service import prepare_request
    from llmapp.eventstream import writer as writer_module
    from llmapp.eventstream.events import build_event
    from llmapp.eventstream.writer import EventWriter

    settings.LLM_LOG_CONTENT = True
    writer_module.reset_dropped_count()  # a loss an earlier test logged would hold this one's line back

    def broken(connection, events):
        raise RuntimeError("a bug in the writer")

    writer = EventWriter(queue_size=10, batch_size=10, max_wait=0, insert=broken)
    request, _ = prepare_request("summarize", CONTENT, provider="test")
    completion = complete_prompt("summarize", CONTENT, provider="test")
    writer.offer(build_event(request, 1.0, completion=completion))
    assert writer.stop(timeout=10)
    [record] = [record for record in caplog.records if record.name == "llmapp.eventstream"]
    assert "RuntimeError: a bug in the writer" in record.getMessage()
    assert record.exc_info is None  # no frames: their variables hold the content


@pytest.mark.django_db
def test_a_conversations_earlier_turns_reach_no_sentry_event_nor_span(settings, ingests, openai_provider):
    earlier = "earlier turn 7781 about Jane's refund"
    turns = [
        {"role": "user", "content": earlier},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "And now?"},
    ]
    configure_sdk()
    openai_provider.reply_error(500, "upstream exploded")
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", provider="openai", retries=0, messages=turns)
    sentry_sdk.capture_exception(raised.value)
    openai_provider.reply("Fine.")
    with sentry_sdk.start_transaction(name="ok"):
        complete_prompt("summarize", provider="openai", messages=turns)
    bodies = received(ingests)
    assert any('"exception"' in body for body in bodies)
    assert all(earlier not in body for body in bodies)
