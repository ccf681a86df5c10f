"""Use cases changed at run time: the override layer, its validation, its history, and every
process seeing a change on its next call."""

import json
import subprocess
import sys

import pytest
from django.core.management import call_command

from llmapp import complete_prompt
from llmapp.calls.service import plan_call
from llmapp.conf import overrides
from llmapp.conf.usecases import OVERRIDE, get_usecase
from llmapp.exceptions import UsecaseDisabled
from llmapp.models import UseCaseRevision
from tests.conftest import ROOT
from tests.services import redis_namespace

pytestmark = pytest.mark.django_db

MODELS = {
    "default": {"BACKEND": "llmapp.providers.preview.PreviewProvider"},
    "test": {
        "BACKEND": "llmapp.providers.locmem.LocmemProvider",
        "OPTIONS": {"model": "small"},
        "MODELS": ["small", "large"],
    },
}


@pytest.fixture(autouse=True)
def fresh_overrides():
    overrides.forget()
    yield
    overrides.forget()


@pytest.fixture
def triage(settings):
    settings.LLM_PROVIDERS = MODELS
    settings.LLM_USECASES = {"triage": {"PROVIDER": "test", "PROMPT": "Triage it.", "TEMPERATURE": 0.1}}
    return "triage"


def sent(usecase="triage", **options):
    request, _ = plan_call(usecase, "The checkout page times out.", **options)
    return request


def test_an_override_sits_over_settings_and_under_the_environment_and_the_call(triage, settings, monkeypatch):
    revision = overrides.save_override(triage, {"MODEL": "large", "TEMPERATURE": 0.7}, comment="bigger model")
    overrides.refresh()
    usecase = get_usecase(triage)
    assert (usecase.model, usecase.temperature, usecase.prompt) == ("large", 0.7, "Triage it.")
    assert usecase.source("MODEL") == OVERRIDE and usecase.source("PROMPT") == "settings"
    assert usecase.origin("MODEL") == f"from its override (revision {revision.pk})"

    settings.LLM_USECASE_ENV_OVERRIDES = True
    monkeypatch.setenv("LLM_TRIAGE_TEMPERATURE", "0.3")
    overrides.refresh()
    assert sent().temperature == 0.3  # the operators' emergency switch wins
    assert sent(temperature=0.9).temperature == 0.9  # and the call's own argument over all
    assert sent().model == "large"


def test_each_save_is_a_revision_with_author_comment_and_the_whole_configuration(triage, django_user_model):
    author = django_user_model.objects.create_user("ops")
    first = overrides.save_override(triage, {"MODEL": "large"}, author=author, comment="bigger")
    second = overrides.save_override(triage, {"MODEL": "large", "PROMPT": "Triage tersely."}, comment="terse")
    assert [r.pk for r in UseCaseRevision.objects.filter(usecase=triage)] == [second.pk, first.pk]
    assert (first.author, first.author_name, first.comment) == (author, "ops", "bigger")
    assert second.override == {"MODEL": "large", "PROMPT": "Triage tersely."}
    assert second.config["MODEL"] == "large" and second.config["TEMPERATURE"] == 0.1
    assert set(second.config) == set(overrides.EDITABLE_FIELDS)

    reverted = overrides.revert(triage, first.pk)
    overrides.refresh()
    assert reverted.override == {"MODEL": "large"} and reverted.reverts == first
    assert sent().prompt == "Triage it."
    overrides.revert(triage, 0)
    overrides.refresh()
    assert sent().model == "small" and get_usecase(triage).revision is None
    assert UseCaseRevision.objects.filter(usecase=triage).count() == 4  # append-only


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"TEMPERATURE": 5}, "TEMPERATURE", "temperature must be a number from 0 to 1, got 5"),
        ({"PROVIDER": "nope"}, "PROVIDER", "unknown provider 'nope'"),
        ({"MODEL": "huge"}, "MODEL", "huge"),
        ({"FALLBACKS": ["gone"]}, "FALLBACKS", "gone"),
        ({"RETRIES": -1}, "RETRIES", "a whole number from 0 up"),
        ({"BUDGET": {"USD": "x"}}, "BUDGET", "BUDGET"),
        ({"ENABLED": "no"}, "ENABLED", "true or false"),
        ({"PROMPT_TEMPLATE": "{% if %}"}, "PROMPT_TEMPLATE", "not a valid Django template"),
        ({"BACKEND": "x.Y"}, "BACKEND", "not an editable field"),
        ({"OUTPUT": "tests.fakes.output_types.Ticket"}, "OUTPUT", "not an editable field"),
    ],
)
def test_an_override_is_validated_as_settings_are_and_a_bad_one_saves_nothing(triage, fields, field, says):
    with pytest.raises(overrides.OverrideInvalid) as raised:
        overrides.save_override(triage, fields)
    assert list(raised.value.errors) == [field]
    assert says in " ".join(raised.value.errors[field])
    assert not UseCaseRevision.objects.exists()


def test_a_project_narrows_what_may_be_edited(triage, settings):
    settings.LLM_EDITABLE_FIELDS = ["PROMPT"]
    with pytest.raises(overrides.OverrideInvalid, match="not editable here"):
        overrides.save_override(triage, {"MODEL": "large"})
    overrides.save_override(triage, {"PROMPT": "New."})
    overrides.refresh()
    assert sent().prompt == "New."


def test_with_the_layer_off_saved_overrides_are_not_read(triage, settings):
    overrides.save_override(triage, {"MODEL": "large"})
    settings.LLM_USECASE_OVERRIDES = False
    overrides.refresh()
    assert sent().model == "small"


def test_a_disabled_use_case_sends_nothing(triage):
    from llmapp.providers import locmem

    locmem.reset()
    overrides.save_override(triage, {"ENABLED": False}, comment="incident 42")
    with pytest.raises(UsecaseDisabled, match=r"use case 'triage' is disabled \(from its override"):
        complete_prompt(triage, "hello")
    assert locmem.outbox == []


def test_an_override_naming_a_provider_since_removed_is_set_aside_with_a_warning(triage, settings):
    overrides.save_override(triage, {"MODEL": "large", "PROMPT": "Kept."})
    settings.LLM_PROVIDERS = {**MODELS, "test": {**MODELS["test"], "MODELS": ["small"]}}
    overrides.refresh()
    request = sent()
    assert (request.model, request.prompt) == ("small", "Kept.")  # the settings' model; the rest holds

    from llmapp.conf.checks import check_overrides

    [warning] = check_overrides(databases=["default"])
    assert warning.id == "llmapp.W009" and "'large'" in warning.msg and "triage" in warning.msg
    assert check_overrides(databases=None) == []  # not a database check run: no query


def test_a_database_that_fails_leaves_the_settings_and_is_counted(triage, monkeypatch, caplog):
    from django.db import OperationalError

    from llmapp import metrics

    overrides.save_override(triage, {"MODEL": "large"})
    overrides.forget()

    def down():
        raise OperationalError("connection refused")

    monkeypatch.setattr(overrides, "read_overrides", down)
    counted = []
    monkeypatch.setattr(metrics, "incr", lambda key, **kwargs: counted.append(key))
    for _ in range(3):
        assert complete_prompt(triage, "hello").model == "small"
    assert counted.count(overrides.LOAD_ERRORS_METRIC) == 1  # then left alone for RETRY_AFTER
    assert [r.getMessage() for r in caplog.records if r.name == "llmapp.overrides"] == [
        "Use-case overrides could not be read (OperationalError: connection refused); calls use what "
        "was read before, or the settings."
    ]


def test_llm_list_shows_where_each_field_comes_from(triage, capsys):
    revision = overrides.save_override(triage, {"MODEL": "large"})
    call_command("llm", "--list")
    assert f"revision {revision.pk}" in capsys.readouterr().out
    call_command("llm", "triage", "--list")
    lines = capsys.readouterr().out.splitlines()
    [model] = [line for line in lines if line.startswith("MODEL ")]
    [prompt] = [line for line in lines if line.startswith("PROMPT ")]
    assert '"large"' in model and f"from its override (revision {revision.pk})" in model
    assert "from LLM_USECASES['triage']['PROMPT']" in prompt


def watcher(env):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fakes" / "usecase_watcher.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def ask(process, usecase="summarize"):
    process.stdin.write(usecase + "\n")
    process.stdin.flush()
    line = process.stdout.readline()
    assert line, process.stderr.read()
    return json.loads(line)


@pytest.mark.parametrize("cache", ["redis", "locmem"])
def test_another_process_sees_a_saved_change_on_its_next_call(manage, tmp_path, cache):
    """One process keeps running; another saves a change (llm_config import); the first's next
    call sends it. On Redis through the version token; on a per-process cache by re-reading."""
    changed = tmp_path / "changed.json"
    changed.write_text(
        json.dumps({"usecases": {"summarize": {"PROMPT": "Summarize in one line.", "TEMPERATURE": 0.9}}})
    )

    def run(namespace_env):
        env = namespace_env or {"LLM_TEST_RECHECK": "0"}
        process = watcher(manage.env(env))
        try:
            before = ask(process)
            assert before["temperature"] == 0.2 and before["prompt"].startswith("You summarize text.")
            saved = manage("llm_config", "import", str(changed), env=env)
            assert saved.returncode == 0, saved.stderr
            after = ask(process)
            assert after == {"model": "preview", "prompt": "Summarize in one line.", "temperature": 0.9}
            reverted = manage("llm_config", "revert", "summarize", "0", env=env)
            assert reverted.returncode == 0, reverted.stderr
            assert ask(process) == before
        finally:
            process.stdin.close()
            process.wait(timeout=30)

    if cache == "redis":
        with redis_namespace() as namespace:
            run(namespace.env)
    else:
        run(None)


def test_a_failing_database_is_left_alone_between_tries_once_overrides_were_read(triage, monkeypatch):
    from django.db import OperationalError

    now = [1000.0]
    monkeypatch.setattr(overrides._state, "clock", lambda: now[0])
    overrides.save_override(triage, {"MODEL": "large"})
    overrides.refresh()
    tries = []

    def down():
        tries.append(now[0])
        raise OperationalError("server closed the connection")

    monkeypatch.setattr(overrides, "_read_newest", down)
    for _ in range(20):  # 10 seconds of calls, one every half second
        now[0] += 0.5
        overrides.refresh()  # as each call does first
        assert sent().model == "large"  # what was read before
    assert len(tries) == 2  # once the recheck is due, then after RETRY_AFTER


@pytest.mark.django_db(transaction=True)
def test_a_read_that_hangs_is_given_up_after_load_timeout(triage, monkeypatch):
    import threading

    release = threading.Event()
    monkeypatch.setattr(overrides, "LOAD_TIMEOUT", 0.05)
    monkeypatch.setattr(overrides, "_read_newest", lambda: release.wait(10))
    try:
        assert sent().model == "small"  # the settings, without waiting for the database
        assert sent().model == "small"  # and the stuck read is not queued behind again
    finally:
        release.set()


@pytest.mark.django_db(transaction=True)
def test_the_async_path_reads_overrides_without_blocking_the_loop(triage):
    import asyncio

    from llmapp import acomplete_prompt, astream_prompt

    overrides.save_override(triage, {"MODEL": "large"})
    overrides.forget()

    async def calls():
        completion = await acomplete_prompt(triage, "hello")
        pieces = [piece async for piece in astream_prompt(triage, "hello")]
        return completion.model, pieces[-1].model

    assert asyncio.run(calls()) == ("large", "large")


def form_data(form):
    """What a browser posts for ``form`` left as shown: an unchecked box is left out."""
    data = {}
    for name, value in form.initial.items():
        if name in form.fields and value is not None and value is not False:
            data[name] = "on" if value is True else value
    return data


def test_the_admin_form_saves_only_what_changed_and_refuses_to_undo_a_newer_change(triage, admin_client):
    from llmapp.admin.overrides import OverrideForm

    url = "/admin/llmapp/usecase/triage/edit/"
    data = form_data(admin_client.get(url).context["form"])
    assert data["base_revision"] == 0

    # Unchanged: nothing is saved.
    response = admin_client.post(url, {**data, "_save": "1"})
    assert response.status_code == 302 and not UseCaseRevision.objects.exists()

    # Another operator saves first; this form, made on revision 0, would undo that.
    overrides.save_override(triage, {"MODEL": "large"}, comment="the other operator")
    response = admin_client.post(url, {**data, "TEMPERATURE": "0.6", "_save": "1"})
    assert response.status_code == 200
    assert "was changed (revision" in response.content.decode()
    assert UseCaseRevision.objects.count() == 1
    assert isinstance(response.context["form"], OverrideForm)

    # On a fresh form it saves, with the other operator's model kept.
    page = admin_client.get(url)
    fresh = {**data, "MODEL": "large", "base_revision": page.context["form"].initial["base_revision"]}
    response = admin_client.post(url, {**fresh, "TEMPERATURE": "0.6", "_save": "1"})
    assert response.status_code == 302
    assert UseCaseRevision.objects.order_by("-pk").first().override == {"MODEL": "large", "TEMPERATURE": 0.6}


def test_test_this_draft_sends_the_unsaved_configuration_and_saves_nothing(triage, admin_client):
    from llmapp.providers import locmem

    locmem.reset()
    url = "/admin/llmapp/usecase/triage/edit/"
    data = form_data(admin_client.get(url).context["form"])
    response = admin_client.post(
        url,
        {**data, "PROMPT": "Draft prompt.", "MODEL": "large", "test_message": "Is it down?", "_test": "1"},
    )
    assert response.status_code == 200 and "draft-result" in response.content.decode()
    assert (locmem.outbox[-1].prompt, locmem.outbox[-1].model) == ("Draft prompt.", "large")
    assert not UseCaseRevision.objects.exists()
    assert sent().prompt == "Triage it."  # other calls never saw the draft


def test_the_admin_page_says_which_override_fields_are_set_aside(triage, settings, admin_client):
    overrides.save_override(triage, {"MODEL": "large"})
    settings.LLM_PROVIDERS = {**MODELS, "test": {**MODELS["test"], "MODELS": ["small"]}}
    page = admin_client.get("/admin/llmapp/usecase/triage/").content.decode()
    assert "Its override no longer holds" in page and "large" in page


def test_the_admin_page_says_where_the_prompt_and_description_come_from(triage, admin_client):
    url = "/admin/llmapp/usecase/triage/"
    page = admin_client.get(url).content.decode()
    assert "PROMPT &middot; from LLM_USECASES[&#x27;triage&#x27;][&#x27;PROMPT&#x27;]" in page
    revision = overrides.save_override(triage, {"PROMPT": "Sort it.", "DESCRIPTION": "Sorts tickets."})
    page = admin_client.get(url).content.decode()
    assert f"PROMPT &middot; from its override (revision {revision.pk})" in page
    assert f'Sorts tickets. <span class="llm-note">(from its override (revision {revision.pk}))' in page


def test_the_admin_form_names_each_field_it_refuses(triage, admin_client):
    url = "/admin/llmapp/usecase/triage/edit/"
    data = form_data(admin_client.get(url).context["form"])
    response = admin_client.post(url, {**data, "TEMPERATURE": "5", "MODEL": "huge", "_save": "1"})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert "TEMPERATURE" in errors and "MODEL" in errors
    assert not UseCaseRevision.objects.exists()


def test_editing_needs_change_usecase_and_reading_history_view_usecase(triage, client, django_user_model):
    from django.contrib.auth.models import Permission

    revision = overrides.save_override(triage, {"MODEL": "large"})
    base = "/admin/llmapp/usecase/triage"
    user = django_user_model.objects.create_user("operator", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(f"{base}/history/").status_code == 403

    user.user_permissions.add(Permission.objects.get(codename="view_usecase"))
    user = django_user_model.objects.get(pk=user.pk)  # permissions are cached on the instance
    client.force_login(user)
    history = client.get(f"{base}/history/")
    assert history.status_code == 200 and "large" in history.content.decode()
    assert client.get(f"{base}/edit/").status_code == 403
    assert client.post(f"{base}/revert/{revision.pk}/").status_code == 403
    assert 'id="edit-usecase"' not in client.get(f"{base}/").content.decode()

    user.user_permissions.add(Permission.objects.get(codename="change_usecase"))
    client.force_login(django_user_model.objects.get(pk=user.pk))
    assert client.get(f"{base}/edit/").status_code == 200
    assert 'id="edit-usecase"' in client.get(f"{base}/").content.decode()


def test_the_admin_splits_the_use_cases_calls_by_prompt_version(triage, admin_client):
    for _ in range(2):
        complete_prompt(triage, "Is it down?")
    overrides.save_override(triage, {"PROMPT": "Sort it."})
    complete_prompt(triage, "Is it down?")
    rows = admin_client.get("/admin/llmapp/usecase/triage/").context["by_prompt_version"]
    assert [row["calls"] for row in rows] == ["1", "2"]  # newest first
    assert rows[0]["version"].startswith("override@") and not rows[1]["version"].startswith("override@")
