import re
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.html import escape

from llmapp import register_usecase
from llmapp.calls.service import complete_prompt
from llmapp.conf.usecases import unregister_usecase
from llmapp.exceptions import ProviderError
from llmapp.models import CompletionEvent, UseCase
from llmapp.providers import locmem
from tests.conftest import API_KEY

pytestmark = pytest.mark.django_db

USECASES = "/admin/llmapp/usecase/"
SUMMARIZE = "/admin/llmapp/usecase/summarize/"
LOG = "/admin/llmapp/completionevent/"


def event(usecase="summarize", latency_ms=100.0, status="ok", age=timedelta(minutes=5), **fields):
    defaults = {"provider": "test", "model": "m", "input_tokens": 10, "output_tokens": 2}
    return CompletionEvent(
        usecase=usecase,
        latency_ms=latency_ms,
        status=status,
        created_at=timezone.now() - age,
        **{**defaults, **fields},
    )


@pytest.fixture
def staff_client(django_user_model):
    """Return a function that logs in a new staff member holding the given llmapp permissions."""
    made = []

    def login(*codenames):
        user = django_user_model.objects.create_user(f"staff{len(made)}", password="pw", is_staff=True)
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="llmapp", codename__in=codenames)
        )
        client = Client()
        client.force_login(user)
        made.append(user)
        return client

    return login


def html(response):
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def row(page, name):
    """Return the HTML of the use-case list's row for ``name``."""
    match = re.search(rf'<tr id="usecase-{name}">(.*?)</tr>', page, re.S)
    assert match, f"no row for {name}"
    return match.group(1)


def cells(fragment):
    """Return the text of each <td> in ``fragment``, tags stripped and whitespace collapsed."""
    return [
        " ".join(re.sub(r"<[^>]+>", " ", cell).split())
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", fragment, re.S)
    ]


# -- the placeholder model ------------------------------------------------------------


def test_the_placeholder_has_permissions_but_no_table():
    assert UseCase._meta.managed is False
    assert UseCase._meta.db_table not in connection.introspection.table_names()
    codenames = set(
        Permission.objects.filter(
            content_type__app_label="llmapp", content_type__model="usecase"
        ).values_list("codename", flat=True)
    )
    assert codenames == {"view_usecase", "change_usecase", "test_usecase"}


def test_no_page_queries_the_placeholder_table(admin_client):
    table = UseCase._meta.db_table
    with CaptureQueriesContext(connection) as queries:
        html(admin_client.get("/admin/"))
        html(admin_client.get(USECASES))
        html(admin_client.get(SUMMARIZE))
        html(admin_client.post(SUMMARIZE, {"message": "hello"}))
    assert queries.captured_queries
    assert not [query["sql"] for query in queries.captured_queries if f'"{table}"' in query["sql"]]


def test_only_the_list_detail_edit_and_history_urls_exist(admin_client):
    # The default change/delete/history views would query the missing table: llmapp's own
    # edit and history pages read the revisions instead.
    for url in (f"{SUMMARIZE}change/", f"{SUMMARIZE}delete/", f"{USECASES}add/"):
        assert admin_client.get(url).status_code == 404, url
    for url in (f"{SUMMARIZE}edit/", f"{SUMMARIZE}history/"):
        assert admin_client.get(url).status_code == 200, url
    assert admin_client.get(f"{USECASES}no-such-usecase/").status_code == 404


def test_the_admin_index_links_to_use_cases_and_the_log(admin_client):
    page = html(admin_client.get("/admin/"))
    assert f'href="{USECASES}"' in page
    assert f'href="{LOG}"' in page
    assert "Use cases" in page and "Completion log" in page


# -- permissions ----------------------------------------------------------------------


@pytest.mark.parametrize("url", [USECASES, SUMMARIZE, LOG])
def test_anonymous_users_are_sent_to_the_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response.url.startswith(f"/admin/login/?next={url}")


def test_anonymous_post_sends_nothing(client):
    response = client.post(SUMMARIZE, {"message": "hello"})
    assert response.status_code == 302
    assert "/admin/login/" in response.url
    assert not CompletionEvent.objects.exists()


@pytest.mark.parametrize("url", [USECASES, SUMMARIZE, LOG])
def test_staff_without_view_permission_get_403(staff_client, url):
    assert staff_client().get(url).status_code == 403


def test_test_permission_alone_does_not_show_the_pages(staff_client):
    client = staff_client("test_usecase")
    assert client.get(SUMMARIZE).status_code == 403
    assert client.post(SUMMARIZE, {"message": "hello"}).status_code == 403
    assert not CompletionEvent.objects.exists()


def test_view_only_staff_see_the_pages_but_cannot_send(staff_client):
    client = staff_client("view_usecase")
    assert "summarize" in html(client.get(USECASES))
    page = html(client.get(SUMMARIZE))
    assert "Send test prompt" in page  # the section heading
    assert "<textarea" not in page
    assert "Can send test prompts to use cases" in page
    # Without the log's view permission the detail page leaves recent calls out.
    assert "Recent calls" not in page

    assert client.post(SUMMARIZE, {"message": "hello"}).status_code == 403
    assert not CompletionEvent.objects.exists()


def test_staff_with_test_permission_can_send(staff_client):
    client = staff_client("view_usecase", "test_usecase", "view_completionevent")
    page = html(client.get(SUMMARIZE))
    assert "<textarea" in page and "csrfmiddlewaretoken" in page

    page = html(client.post(SUMMARIZE, {"message": "The deploy failed. We rolled back."}))
    assert "[preview answer" in page
    assert "The deploy failed. We rolled back." in page
    [recorded] = CompletionEvent.objects.all()
    assert (recorded.usecase, recorded.provider, recorded.status) == ("summarize", "default", "ok")
    assert "Recent calls" in page
    assert f"{LOG}{recorded.pk}/change/" in page


def test_the_test_form_needs_a_csrf_token(staff_client, django_user_model):
    user = django_user_model.objects.create_superuser("csrf", password="pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post(SUMMARIZE, {"message": "hello"}).status_code == 403
    assert not CompletionEvent.objects.exists()

    page = html(client.get(SUMMARIZE))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert html(client.post(SUMMARIZE, {"message": "hello", "csrfmiddlewaretoken": token}))
    assert CompletionEvent.objects.count() == 1


def test_an_empty_message_is_a_form_error(admin_client):
    page = html(admin_client.post(SUMMARIZE, {"message": ""}))
    assert "This field is required." in page
    assert not CompletionEvent.objects.exists()


# -- the use-case list ----------------------------------------------------------------


@pytest.fixture
def layered_usecases(settings, monkeypatch):
    """summarize with values from settings and the environment, triage from code."""
    monkeypatch.setenv("LLM_SUMMARIZE_TEMPERATURE", "0.3")
    settings.LLM_USECASE_ENV_OVERRIDES = True
    settings.LLM_USECASES = {"summarize": {"MODEL": "sum-model", "PROVIDER": "test"}}
    register_usecase("triage", description="Label tickets.", provider="test", max_output_tokens=20)
    yield
    unregister_usecase("triage")


def test_the_list_shows_every_use_case_and_where_its_values_come_from(admin_client, layered_usecases):
    page = html(admin_client.get(USECASES))
    assert f'href="{SUMMARIZE}"' in page

    summarize = cells(row(page, "summarize"))
    assert summarize[0] == "Summarize a text faithfully and concisely. built-in"
    assert summarize[1] == "test llmapp.providers.locmem.LocmemProvider settings"
    assert summarize[2] == "sum-model settings"
    assert summarize[3] == "0.3 environment"
    assert summarize[4] == "400 built-in"
    assert "backend importable" in summarize[5] and "no key needed" in summarize[5]

    example = cells(row(page, "example"))
    assert example[1] == "default llmapp.providers.preview.PreviewProvider built-in"
    assert example[2] == "preview provider default"

    triage = cells(row(page, "triage"))
    assert triage[0] == "Label tickets. code"
    assert triage[4] == "20 code"


def test_the_figures_are_those_of_the_last_24_hours(admin_client):
    CompletionEvent.objects.bulk_create(
        [
            event(latency_ms=100, input_tokens=1000, output_tokens=200),
            event(latency_ms=200, input_tokens=1000, output_tokens=200),
            event(latency_ms=300, input_tokens=1000, output_tokens=200, status="error"),
            event(latency_ms=400, input_tokens=1500, output_tokens=None),
            event(latency_ms=9999, age=timedelta(days=2)),  # outside the window
            event("example", latency_ms=42.25, input_tokens=None, output_tokens=None),
        ]
    )
    page = html(admin_client.get(USECASES))
    # calls, error rate, p50, p95 (nearest rank), input tokens, output tokens, cost (none priced)
    assert cells(row(page, "summarize"))[6:] == [
        "4",
        "25.0%",
        "200.0 ms",
        "400.0 ms",
        "4,500",
        "600",
        "4 unpriced",
        "—",
        "0",
        "—",
    ]
    assert cells(row(page, "example"))[6:] == [
        "1",
        "0.0%",
        "42.2 ms",
        "42.2 ms",
        "0",
        "0",
        "1 unpriced",
        "—",
        "0",
        "—",
    ]

    detail = html(admin_client.get(SUMMARIZE))
    assert all(figure in detail for figure in ("25.0%", "200.0\u00a0ms", "400.0\u00a0ms", "4,500"))


def test_a_use_case_without_calls_shows_zero(admin_client):
    assert cells(row(html(admin_client.get(USECASES)), "summarize"))[6:] == [
        "0",
        "—",
        "—",
        "—",
        "0",
        "0",
        "—",
        "—",
        "0",
        "—",
    ]


def test_the_cost_of_the_last_24_hours_says_what_was_not_priced(admin_client):
    CompletionEvent.objects.bulk_create(
        [
            event(cost=Decimal("0.75")),
            event(cost=Decimal("0.50")),
            event(cost=Decimal("0"), cached=True),
            event(cost=None),  # a model with no price answered
            event(cost=Decimal("9"), age=timedelta(days=2)),
            event("example", cost=Decimal("0.000042")),
        ]
    )
    page = html(admin_client.get(USECASES))
    # The cost, then the cache's hit rate: one call of four was answered from it.
    assert cells(row(page, "summarize"))[-4:-2] == ["$1.2500 (+1 unpriced)", "25.0%"]
    assert cells(row(page, "example"))[-4:-2] == ["$0.000042", "—"]
    assert "$1.2500 (+1 unpriced)" in html(admin_client.get(SUMMARIZE))


def test_no_data_when_the_tsdb_is_null(admin_client, settings):
    settings.LLM_TSDB = "null"
    settings.LLM_EVENTSTREAM = "null"
    CompletionEvent.objects.bulk_create([event()])
    page = html(admin_client.get(USECASES))
    assert cells(row(page, "summarize"))[6:] == ["no data", "—"]  # the budget is not the TSDB's
    assert "LLM_TSDB is &#x27;null&#x27;" in page
    assert "no data" in html(admin_client.get(SUMMARIZE))


def test_health_shows_a_missing_key(admin_client, settings, monkeypatch):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {"BACKEND": "llmapp.providers.openai.OpenAIProvider", "OPTIONS": {"api_key": ""}},
    }
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai"}}
    health = cells(row(html(admin_client.get(USECASES)), "summarize"))[5]
    assert "no key" in health
    assert "has no API key: set OPENAI_API_KEY" in health


def test_the_detail_page_shows_configuration_prompt_and_origins(admin_client, layered_usecases):
    page = html(admin_client.get(SUMMARIZE))
    assert escape("from LLM_USECASES['summarize']['MODEL']") in page
    assert "from LLM_SUMMARIZE_TEMPERATURE" in page
    assert escape("You summarize text. Write a faithful, concise summary") in page
    assert "llmapp.providers.locmem.LocmemProvider" in page


def test_a_failed_test_prompt_shows_the_error(admin_client, settings):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test"}}
    locmem.queue(ProviderError("the server is down", provider="test", status_code=400))
    page = html(admin_client.post(SUMMARIZE, {"message": "hello there"}))
    assert 'id="test-error"' in page
    assert escape("ProviderError: the server is down (provider 'test', HTTP 400)") in page
    assert CompletionEvent.objects.get().status == "error"


def test_a_successful_test_prompt_shows_answer_model_tokens_and_latency(admin_client, settings):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test", "MODEL": "tiny"}}
    locmem.queue("A short answer.")
    page = html(admin_client.post(SUMMARIZE, {"message": "hello there"}))
    result = page[page.index('id="test-result"') :]
    assert "A short answer." in result
    assert "<td>tiny</td>" in result and "<td>test</td>" in result
    recorded = CompletionEvent.objects.get()
    assert f"{recorded.input_tokens} in, {recorded.output_tokens} out" in result
    assert re.search(r"<td>[\d,]+\.\d\u00a0ms</td>", result)
    assert locmem.outbox[0].message == "hello there"


# -- the completion log ---------------------------------------------------------------


def failed_call():
    """Make a real failed call through the service and return its recorded event."""
    locmem.queue(ProviderError("boom", provider="test", status_code=500))
    with pytest.raises(ProviderError):
        complete_prompt("summarize", "hello there", provider="test")
    return CompletionEvent.objects.get(status="error")


def test_the_log_is_read_only(admin_client):
    recorded = event()
    recorded.save()
    assert admin_client.get(f"{LOG}add/").status_code == 403
    assert admin_client.get(f"{LOG}{recorded.pk}/delete/").status_code == 403
    page = html(admin_client.get(f"{LOG}{recorded.pk}/change/"))
    assert 'name="_save"' not in page
    response = admin_client.post(f"{LOG}{recorded.pk}/change/", {"usecase": "changed"})
    assert response.status_code == 403
    recorded.refresh_from_db()
    assert recorded.usecase == "summarize"


def test_the_log_filters_searches_and_orders(admin_client):
    CompletionEvent.objects.bulk_create(
        [
            event(latency_ms=300, age=timedelta(minutes=1)),
            event("example", latency_ms=100, provider="default", age=timedelta(minutes=2)),
            event(
                latency_ms=200,
                status="error",
                error_type="ProviderError",
                error_message="quota exceeded",
                age=timedelta(minutes=3),
            ),
            event(latency_ms=50, age=timedelta(days=40)),
        ]
    )

    def shown(query):
        response = admin_client.get(f"{LOG}{query}")
        assert response.status_code == 200
        return [(e.usecase, e.latency_ms) for e in response.context["cl"].result_list]

    assert shown("") == [("summarize", 300), ("example", 100), ("summarize", 200), ("summarize", 50)]
    assert shown("?status__exact=error") == [("summarize", 200)]
    assert shown("?usecase__exact=example") == [("example", 100)]
    assert shown("?provider__exact=default") == [("example", 100)]
    assert shown("?q=ProviderError") == [("summarize", 200)]
    # Error messages are not searched: a search would reveal what they hold before it is masked.
    assert shown("?q=quota") == []
    assert shown("?o=5") == [("summarize", 50), ("example", 100), ("summarize", 200), ("summarize", 300)]
    assert shown("?o=-5")[0] == ("summarize", 300)
    week_ago = urlencode({"created_at__gte": (timezone.now() - timedelta(days=7)).isoformat()})
    assert len(shown(f"?{week_ago}")) == 3
    # The date hierarchy drills down from years to days.
    assert 'class="toplinks"' in html(admin_client.get(LOG))
    now = timezone.now()
    assert len(shown(f"?created_at__year={now.year}&created_at__month={now.month}")) >= 2

    page = html(admin_client.get(LOG))
    for title in ("By use case", "By provider", "By status", "By created at"):
        assert title.lower() in page.lower()


def test_a_failed_call_shows_its_frames_like_sentry(admin_client):
    recorded = failed_call()
    page = html(admin_client.get(f"{LOG}{recorded.pk}/change/"))
    assert 'id="exception"' in page
    assert escape("ProviderError: boom (provider 'test', HTTP 500)") in page

    frames = recorded.exception["values"][0]["stacktrace"]["frames"]
    innermost = frames[-1]
    assert innermost["filename"] == "llmapp/providers/locmem.py"
    filename, function, lineno = innermost["filename"], innermost["function"], innermost["lineno"]
    assert f"<code>{filename}</code> in <code>{function}</code> at line {lineno}" in page
    assert escape(innermost["context_line"]) in page
    for line in innermost["pre_context"] + innermost["post_context"]:
        assert escape(line) in page
    # Numbered like the source file, the failing line marked.
    current = f'<tr class="llm-current"><td class="llm-lineno">{lineno}</td>'
    assert f"{current}<td><pre>{escape(innermost['context_line'])}</pre>" in page
    for name, value in innermost["vars"].items():
        assert f'<th scope="row">{name}</th>' in page
        assert escape(value) in page
    # The call's message is withheld when LLM_LOG_CONTENT is off.
    assert "hello there" not in page
    # Most recent call first: the provider's frame comes before the service's.
    assert page.index("llmapp/providers/locmem.py</code>") < page.index("llmapp/calls/service.py</code>")


def test_stored_frames_render_with_line_numbers_and_nested_vars(admin_client):
    recorded = event(
        status="error",
        error_type="KeyError",
        error_message="'x'",
        exception={
            "values": [
                {
                    "type": "KeyError",
                    "value": "'x'",
                    "module": "builtins",
                    "stacktrace": {
                        "frames": [
                            {
                                "filename": "app/views.py",
                                "abs_path": "/srv/app/views.py",
                                "function": "handle",
                                "module": "app.views",
                                "lineno": 12,
                                "pre_context": ["def handle(data):", "    # look it up"],
                                "context_line": "    return data['x']",
                                "post_context": ["", "# end"],
                                "vars": {"data": {"y": "1", "nested": ["a", "b"]}, "limit": "10"},
                            }
                        ]
                    },
                }
            ]
        },
    )
    recorded.save()
    page = html(admin_client.get(f"{LOG}{recorded.pk}/change/"))
    for number, text in [(10, "def handle(data):"), (11, "    # look it up"), (13, ""), (14, "# end")]:
        assert f'<td class="llm-lineno">{number}</td><td><pre>{escape(text)}</pre>' in page
    assert '<tr class="llm-current"><td class="llm-lineno">12</td>' in page
    assert escape('"nested": [') in page
    assert "<pre>10</pre>" in page
    assert 'title="/srv/app/views.py"' in page


def test_a_successful_call_has_no_exception_section(admin_client):
    recorded = event()
    recorded.save()
    page = html(admin_client.get(f"{LOG}{recorded.pk}/change/"))
    assert 'id="exception"' not in page
    assert "Kept because LLM_LOG_CONTENT is on" not in page


def test_content_is_shown_when_it_was_kept(admin_client):
    recorded = event(prompt="Be brief.", message="What is up?", response="All good.")
    recorded.save()
    page = html(admin_client.get(f"{LOG}{recorded.pk}/change/"))
    assert "Kept because LLM_LOG_CONTENT is on" in page
    assert "What is up?" in page and "All good." in page


# -- secrets --------------------------------------------------------------------------


def test_no_secret_reaches_any_admin_page(admin_client, settings, openai_provider):
    """An openai key and a base_url with credentials: neither appears on any page."""
    password = "pa55word"
    base_url = openai_provider.base_url.replace("http://", f"http://user:{password}@")
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {
            "BACKEND": "llmapp.providers.openai.OpenAIProvider",
            "OPTIONS": {
                "api_key": API_KEY,
                "base_url": base_url,
                "timeout": 3,
                "default_headers": {"Authorization": f"Bearer {API_KEY}"},
            },
        },
    }
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai", "MODEL": "gpt-4o-mini"}}

    pages = {}
    pages["index"] = html(admin_client.get("/admin/"))
    pages["list"] = html(admin_client.get(USECASES))
    pages["detail"] = html(admin_client.get(SUMMARIZE))

    openai_provider.reply("Fine.")
    pages["sent"] = html(admin_client.post(SUMMARIZE, {"message": "hello"}))
    assert "Fine." in pages["sent"]
    # A server that echoes the key, and the URL it was called on, back in its error.
    openai_provider.reply_error(401, f"Incorrect API key provided: {API_KEY} (called on {base_url})")
    pages["failed"] = html(admin_client.post(SUMMARIZE, {"message": "hello again"}))
    assert 'id="test-error"' in pages["failed"]
    assert "HTTP 401" in pages["failed"]

    pages["log"] = html(admin_client.get(LOG))
    for recorded in CompletionEvent.objects.all():
        pages[f"event {recorded.pk}"] = html(admin_client.get(f"{LOG}{recorded.pk}/change/"))
    failed = CompletionEvent.objects.get(status="error")
    assert failed.exception and 'id="exception"' in pages[f"event {failed.pk}"]

    for name, page in pages.items():
        assert API_KEY not in page, name
        assert API_KEY[:12] not in page, name
        assert password not in page, name
        assert escape(API_KEY[:12]) not in page, name

    # What is shown instead: the key masked to its last four characters, the URL without credentials.
    assert f"key ••••{API_KEY[-4:]}" in pages["list"]
    assert "http://••••@127.0.0.1" in pages["detail"]


def test_a_kept_conversation_is_shown_with_its_turns_scrubbed(admin_client):
    key = "sk-proj-abcdefghijklmnopqrst"
    turns = [{"role": "user", "content": f"My key is {key}"}, {"role": "assistant", "content": "Noted."}]
    recorded = event(message="And now?", conversation=turns, messages=3)
    recorded.save()
    page = html(admin_client.get(f"{LOG}{recorded.pk}/change/"))
    assert "Kept because LLM_LOG_CONTENT is on" in page and "Noted." in page and "And now?" in page
    assert key not in page


# -- typed answers ----------------------------------------------------------------------


def test_the_use_case_page_shows_its_output_type_and_schema(admin_client, settings):
    settings.LLM_USECASES = {
        "triage": {"OUTPUT": "tests.fakes.output_types.Ticket"},
        "broken": {"OUTPUT": "tests.fakes.nope.Ticket"},
    }
    page = html(admin_client.get(f"{USECASES}triage/"))
    section = page[page.index('id="output-type"') :]
    assert "<td>tests.fakes.output_types.Ticket</td>" in section
    assert escape("from LLM_USECASES['triage']['OUTPUT']") in section
    assert escape('"enum": [\n        "spam",\n        "ham"\n      ]') in section
    broken = html(admin_client.get(f"{USECASES}broken/"))
    assert escape("OUTPUT of use case 'broken'") in broken and "cannot be imported" in broken
    assert "Text: no OUTPUT type is set." in html(admin_client.get(SUMMARIZE))


def test_the_test_form_shows_the_parsed_fields(admin_client, settings):
    settings.LLM_USECASES = {"triage": {"PROVIDER": "test", "OUTPUT": "tests.fakes.output_types.Ticket"}}
    locmem.queue('{"label": "ham", "score": 0.25}')
    page = html(admin_client.post(f"{USECASES}triage/", {"message": "hello there"}))
    parsed = page[page.index('id="test-parsed"') : page.index("<h3>Answer</h3>")]
    assert cells(parsed) == ["ham", "0.25"]
    assert '<th scope="row">label</th>' in parsed


def test_an_answer_that_did_not_match_shows_its_validation_errors_in_the_log(admin_client, settings):
    settings.LLM_USECASES = {
        "triage": {"PROVIDER": "test", "OUTPUT": "tests.fakes.output_types.Ticket", "OUTPUT_RETRIES": 0}
    }
    locmem.queue('{"label": "eggs", "score": 3}')
    page = html(admin_client.post(f"{USECASES}triage/", {"message": "hello there"}))
    assert escape("InvalidOutputError: the answer does not match the output type") in page
    recorded = CompletionEvent.objects.get()
    assert recorded.output_errors == [
        "$.label: Input should be 'spam' or 'ham'",
        "$.score: Input should be less than or equal to 1",
    ]
    log_page = html(admin_client.get(f"{LOG}{recorded.pk}/change/"))
    assert "<li>" + escape("$.label: Input should be 'spam' or 'ham'") + "</li>" in log_page
    assert "eggs" not in log_page  # the answer is content: kept only with LLM_LOG_CONTENT


def test_the_log_shows_each_calls_cost_and_its_rates(admin_client):
    priced = event(cost=Decimal("0.0042"), rates={"test:m": {"INPUT": "0.15", "OUTPUT": "0.60"}})
    priced.save()
    event(cost=None).save()
    page = html(admin_client.get(LOG))
    assert '<td class="field-cost_usd">$0.004200</td>' in page
    assert '<td class="field-cost_usd">unpriced</td>' in page
    detail = html(admin_client.get(f"{LOG}{priced.pk}/change/"))
    assert "$0.004200" in detail and escape('"INPUT": "0.15"') in detail


def test_throttled_calls_and_the_budget_spent_this_period(admin_client, settings):
    from llmapp.calls.spend import budgets

    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "test": {
            **settings.LLM_PROVIDERS["test"],
            "PRICES": {"locmem": {"INPUT": "100000", "OUTPUT": "100000"}},
        },
    }
    settings.LLM_USECASES = {
        "summarize": {"PROVIDER": "test", "PROMPT": "", "MAX_OUTPUT_TOKENS": 5, "BUDGET": {"USD": "2"}}
    }
    CompletionEvent.objects.bulk_create([event(status="error", error_type="RateLimited"), event()])
    locmem.queue("one two three")
    completion = complete_prompt("summarize", "hi")
    page = html(admin_client.get(USECASES))
    share = f"{completion.cost / 2:.1%}"
    # calls, ..., throttled, budget used
    assert cells(row(page, "summarize"))[-2:] == ["1", share]
    detail = html(admin_client.get(SUMMARIZE))
    _, resets = budgets.Limit(Decimal(2), timedelta(days=1)).window(budgets.clock())
    assert f"of $2.0000 ({share}); resets {resets:%Y-%m-%d %H:%M} UTC" in detail
