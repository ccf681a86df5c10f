"""The use-case JSON API (llmapp.urls), its tokens (`llm_token`) and `llm_config`, over real HTTP."""

import dataclasses
import hashlib
import io
import json
import logging
import socket
import urllib.error
import urllib.request
from datetime import datetime

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client

from llmapp.calls.service import complete_prompt, plan_call
from llmapp.conf import overrides
from llmapp.conf.usecases import get_usecase
from llmapp.models import ApiToken, UseCaseRevision
from llmapp.providers import locmem

VIEW, CHANGE = "view_usecase", "change_usecase"
# Shaped like a token of llm_token, never created: what a caller guessing or mistyping sends.
UNKNOWN_TOKEN = "llm_Zq9xUNKNOWNxTOKENx8Hq2v0Lr5Tb7Jc1Wd3Ye6Kf4"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _overrides_read_afresh():
    """What one test saved and this process read must not outlive the test's database."""
    overrides.forget()
    yield
    overrides.forget()


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode()


@pytest.fixture
def api(live_server):
    """Return a function that sends one HTTP request to the live server's API and returns the Answer."""
    root = f"{live_server.url}/api/llm/"

    def send(method, path, body=None, *, token=None, headers=None, raw=None):
        sent = {"Accept": "application/json", **(headers or {})}
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            sent["Content-Type"] = "application/json"
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(root + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, dict(exc.headers), exc.read())

    send.root = root
    return send


@pytest.fixture
def user_with(django_user_model):
    """Return a function that makes a user holding the given llmapp permissions."""
    made = []

    def make(*codenames, **fields):
        user = django_user_model.objects.create_user(f"operator{len(made)}", password="pw", **fields)
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="llmapp", codename__in=codenames)
        )
        made.append(user)
        return user

    return make


def command(name, *args):
    out, err = io.StringIO(), io.StringIO()
    call_command(name, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def token_for(user):
    out, _ = command("llm_token", "create", user.get_username())
    return out.strip()


@pytest.fixture
def editor(user_with):
    """A token of a user who may read and change use cases."""
    return token_for(user_with(VIEW, CHANGE))


def planned(usecase="summarize"):
    """The request the next call of ``usecase`` would send, as this process sees the overrides now."""
    overrides.forget()  # the change was made by the live server's thread
    overrides.refresh()  # as each call does first (plan_call alone does not)
    request, _attempts = plan_call(usecase, "hi")
    return request


# -- changing a use case ------------------------------------------------------------------


def test_a_put_with_a_token_changes_the_next_call_and_is_listed_as_a_revision(api, editor):
    before = planned()
    assert before.temperature == 0.2

    first = api(
        "PUT",
        "usecases/summarize/",
        {"PROVIDER": "test", "MODEL": "m-first", "PROMPT": "Be brief.", "TEMPERATURE": 0.9},
        token=editor,
        headers={"X-Revision-Comment": "shorter summaries"},
    )
    assert first.status == 200, first.text
    shown = first.json
    assert shown["name"] == "summarize"
    assert shown["override"] == {
        "PROVIDER": "test",
        "MODEL": "m-first",
        "PROMPT": "Be brief.",
        "TEMPERATURE": 0.9,
    }
    assert (shown["config"]["MODEL"], shown["config"]["PROMPT"], shown["config"]["TEMPERATURE"]) == (
        "m-first",
        "Be brief.",
        0.9,
    )
    assert shown["config"]["MAX_OUTPUT_TOKENS"] == 400  # untouched: the built-in value
    assert {field: shown["sources"][field] for field in ("MODEL", "PROMPT", "TEMPERATURE")} == dict.fromkeys(
        ("MODEL", "PROMPT", "TEMPERATURE"), "override"
    )
    assert shown["sources"]["MAX_OUTPUT_TOKENS"] == "built-in"

    request = planned()
    assert (request.provider, request.model, request.prompt, request.temperature) == (
        "test",
        "m-first",
        "Be brief.",
        0.9,
    )
    overrides.forget()
    assert complete_prompt("summarize", "hi").text == "locmem answer to: hi"
    sent = locmem.outbox[-1]
    assert (sent.model, sent.prompt, sent.temperature) == ("m-first", "Be brief.", 0.9)

    second = api(
        "PUT",
        "usecases/summarize/",
        {"PROVIDER": "test", "MODEL": "m-second"},
        token=editor,
        headers={"X-Revision-Comment": "back to the usual prompt"},
    )
    assert second.status == 200, second.text
    request = planned()
    assert (request.model, request.temperature) == ("m-second", 0.2)
    assert request.prompt == before.prompt

    listed = api("GET", "usecases/summarize/revisions/", token=editor)
    assert listed.status == 200
    revisions = listed.json["revisions"]
    assert [revision["comment"] for revision in revisions] == [
        "back to the usual prompt",
        "shorter summaries",
    ]
    assert revisions[0]["id"] > revisions[1]["id"]
    assert {revision["author"] for revision in revisions} == {"operator0"}
    for revision in revisions:
        assert datetime.fromisoformat(revision["created_at"]).tzinfo is not None
    assert revisions[1]["config"]["MODEL"] == "m-first"
    assert revisions[0]["config"]["MODEL"] == "m-second"
    assert revisions[0]["config"]["TEMPERATURE"] == 0.2

    everything = api("GET", "usecases/", token=editor)
    by_name = {usecase["name"]: usecase for usecase in everything.json["usecases"]}
    assert by_name["summarize"]["config"]["MODEL"] == "m-second"
    assert by_name["example"]["override"] == {}


def test_the_other_use_cases_are_untouched(api, editor):
    api("PUT", "usecases/summarize/", {"TEMPERATURE": 0.7}, token=editor)
    assert planned("example").temperature == 0.5
    assert planned("summarize").temperature == 0.7


# -- bodies that do not hold ---------------------------------------------------------------


def test_an_out_of_range_temperature_is_refused_and_nothing_is_saved(api, editor):
    answer = api("PUT", "usecases/summarize/", {"TEMPERATURE": 5, "MODEL": "fine"}, token=editor)
    assert answer.status == 400
    body = answer.json
    assert body["error"]
    assert list(body["errors"]) == ["TEMPERATURE"]
    assert "0 to 1" in " ".join(body["errors"]["TEMPERATURE"])
    assert not UseCaseRevision.objects.exists()
    assert planned().temperature == 0.2
    assert api("GET", "usecases/summarize/revisions/", token=editor).json == {"revisions": []}


def test_a_model_is_not_blamed_for_a_provider_that_did_not_hold(api, editor):
    answer = api("PUT", "usecases/summarize/", {"PROVIDER": "", "MODEL": "m9"}, token=editor)
    assert answer.status == 400 and list(answer.json["errors"]) == ["PROVIDER"]


def test_every_bad_field_is_named_whatever_is_wrong_with_it(api, editor):
    answer = api(
        "PUT", "usecases/summarize/", {"ENABLED": "no", "TEMPERATURE": 5, "RETRIES": 1}, token=editor
    )
    assert answer.status == 400
    assert sorted(answer.json["errors"]) == ["ENABLED", "TEMPERATURE"]
    assert not UseCaseRevision.objects.exists()


@pytest.mark.parametrize("field", ["BACKEND", "OPTIONS", "OUTPUT", "NOT_A_FIELD"])
def test_a_field_that_cannot_be_overridden_is_refused_by_name(api, editor, field):
    answer = api("PUT", "usecases/summarize/", {field: "x", "TEMPERATURE": 0.3}, token=editor)
    assert answer.status == 400
    assert list(answer.json["errors"]) == [field]
    assert "TEMPERATURE" in answer.json["errors"][field][0]  # it lists what can be edited
    assert not UseCaseRevision.objects.exists()


def test_a_model_its_provider_does_not_allow_is_refused(api, editor, settings):
    settings.LLM_PROVIDERS = settings.LLM_PROVIDERS | {
        "test": {"BACKEND": "llmapp.providers.locmem.LocmemProvider", "MODELS": ["small", "large"]}
    }
    refused = api("PUT", "usecases/summarize/", {"PROVIDER": "test", "MODEL": "huge"}, token=editor)
    assert refused.status == 400
    assert "MODEL" in refused.json["errors"]
    assert not UseCaseRevision.objects.exists()

    allowed = api("PUT", "usecases/summarize/", {"PROVIDER": "test", "MODEL": "large"}, token=editor)
    assert allowed.status == 200, allowed.text
    assert planned().model == "large"


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"TEMPERATURE"', b"null", b"not json at all", b"{", b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_refused(api, editor, raw):
    answer = api("PUT", "usecases/summarize/", raw=raw, token=editor)
    assert answer.status == 400
    assert answer.json["error"]
    assert not UseCaseRevision.objects.exists()


def test_null_removes_a_field_from_the_override(api, editor):
    api("PUT", "usecases/summarize/", {"PROVIDER": "test", "MODEL": "m1", "TEMPERATURE": 0.3}, token=editor)
    answer = api(
        "PUT", "usecases/summarize/", {"PROVIDER": "test", "MODEL": None, "TEMPERATURE": 0.3}, token=editor
    )
    assert answer.status == 200, answer.text
    assert answer.json["override"] == {"PROVIDER": "test", "TEMPERATURE": 0.3}
    assert answer.json["sources"]["MODEL"] == "built-in"
    assert planned().model == "locmem"  # the provider's default again


# -- who may ---------------------------------------------------------------------------------


def test_without_a_token_the_answer_is_401_with_a_challenge(api):
    for method, path in [
        ("GET", "usecases/"),
        ("GET", "usecases/summarize/"),
        ("PUT", "usecases/summarize/"),
    ]:
        answer = api(method, path, {"TEMPERATURE": 0.3} if method == "PUT" else None)
        assert answer.status == 401, (method, path)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert answer.json["error"]
    assert not UseCaseRevision.objects.exists()


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {UNKNOWN_TOKEN}",
        "Bearer not-even-shaped-like-one",
        "Bearer ",
        "Basic b3BlcmF0b3I6cHc=",
        "Token x",
    ],
)
def test_an_unknown_token_or_another_scheme_is_401(api, authorization):
    answer = api("GET", "usecases/", headers={"Authorization": authorization})
    assert answer.status == 401
    assert "WWW-Authenticate" in answer.headers


def test_a_token_of_a_user_without_the_permission_is_403(api, user_with):
    token = token_for(user_with())
    assert api("GET", "usecases/", token=token).status == 403
    answer = api("PUT", "usecases/summarize/", {"TEMPERATURE": 0.3}, token=token)
    assert answer.status == 403
    assert "llmapp.change_usecase" in answer.json["error"]
    assert not UseCaseRevision.objects.exists()


def test_the_view_permission_reads_but_does_not_change(api, user_with):
    token = token_for(user_with(VIEW))
    assert api("GET", "usecases/", token=token).status == 200
    assert api("GET", "usecases/summarize/", token=token).status == 200
    assert api("GET", "usecases/summarize/revisions/", token=token).status == 200
    assert api("PUT", "usecases/summarize/", {"TEMPERATURE": 0.3}, token=token).status == 403
    assert api("POST", "usecases/summarize/revert/", {"revision": 0}, token=token).status == 403
    assert not UseCaseRevision.objects.exists()


def test_a_token_of_an_inactive_user_is_401(api, user_with):
    user = user_with(VIEW, CHANGE)
    token = token_for(user)
    user.is_active = False
    user.save()
    assert api("GET", "usecases/", token=token).status == 401


def test_change_without_view_cannot_read(api, user_with):
    token = token_for(user_with(CHANGE))
    assert api("GET", "usecases/summarize/", token=token).status == 403


def test_a_superuser_needs_no_explicit_permission(api, user_with):
    token = token_for(user_with(is_superuser=True))
    assert api("PUT", "usecases/summarize/", {"TEMPERATURE": 0.4}, token=token).status == 200


def test_an_unknown_use_case_is_404(api, editor):
    for method, path, body in [
        ("GET", "usecases/nope/", None),
        ("PUT", "usecases/nope/", {"TEMPERATURE": 0.3}),
        ("GET", "usecases/nope/revisions/", None),
        ("POST", "usecases/nope/revert/", {"revision": 0}),
    ]:
        answer = api(method, path, body, token=editor)
        assert answer.status == 404, (method, path, answer.text)
        assert "nope" in answer.json["error"]
    assert not UseCaseRevision.objects.exists()


def test_a_method_the_endpoint_does_not_take_is_405(api, editor):
    for method, path, allowed in [
        ("DELETE", "usecases/summarize/", "GET, PUT"),
        ("POST", "usecases/summarize/", "GET, PUT"),
        ("PUT", "usecases/", "GET"),
        ("GET", "usecases/summarize/revert/", "POST"),
    ]:
        answer = api(method, path, token=editor)
        assert answer.status == 405, (method, path)
        assert answer.headers["Allow"] == allowed
        assert answer.json["error"]


# -- a browser's session ----------------------------------------------------------------------


def test_a_session_must_send_the_csrf_token_to_change(user_with):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user_with(VIEW, CHANGE, is_staff=True))
    assert client.get("/api/llm/usecases/summarize/").status_code == 200
    client.get("/admin/")  # a page with a form sets the csrftoken cookie, as a browser finds it
    csrf = client.cookies["csrftoken"].value

    refused = client.put(
        "/api/llm/usecases/summarize/", {"TEMPERATURE": 0.6}, content_type="application/json"
    )
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]
    assert not UseCaseRevision.objects.exists()

    accepted = client.put(
        "/api/llm/usecases/summarize/",
        {"TEMPERATURE": 0.6},
        content_type="application/json",
        headers={"X-CSRFToken": csrf},
    )
    assert accepted.status_code == 200, accepted.content
    assert accepted.json()["config"]["TEMPERATURE"] == 0.6
    assert UseCaseRevision.objects.get().author_name == "operator0"
    assert planned().temperature == 0.6


def test_a_session_without_the_permission_is_403_and_anonymous_is_401(user_with):
    client = Client()
    assert client.get("/api/llm/usecases/").status_code == 401
    client.force_login(user_with(is_staff=True))
    assert client.get("/api/llm/usecases/").status_code == 403


# -- reverting ----------------------------------------------------------------------------------


def test_revert_restores_an_older_override_and_is_a_revision_itself(api, editor):
    first = api("PUT", "usecases/summarize/", {"PROVIDER": "test", "MODEL": "m1"}, token=editor)
    api("PUT", "usecases/summarize/", {"PROVIDER": "test", "MODEL": "m2", "TEMPERATURE": 0.8}, token=editor)
    revisions = api("GET", "usecases/summarize/revisions/", token=editor).json["revisions"]
    first_id = revisions[-1]["id"]
    assert first.json["override"] == revisions[-1]["override"]

    answer = api("POST", "usecases/summarize/revert/", {"revision": first_id}, token=editor)
    assert answer.status == 200, answer.text
    assert answer.json["override"] == {"PROVIDER": "test", "MODEL": "m1"}
    request = planned()
    assert (request.model, request.temperature) == ("m1", 0.2)

    revisions = api("GET", "usecases/summarize/revisions/", token=editor).json["revisions"]
    assert len(revisions) == 3
    assert revisions[0]["reverts"] == first_id
    assert revisions[0]["override"] == {"PROVIDER": "test", "MODEL": "m1"}
    assert str(first_id) in revisions[0]["comment"]

    to_settings = api("POST", "usecases/summarize/revert/", {"revision": 0}, token=editor)
    assert to_settings.status == 200, to_settings.text
    assert to_settings.json["override"] == {}
    assert set(to_settings.json["sources"].values()) <= {"built-in", "settings", "provider default"}
    request = planned()
    assert (request.provider, request.temperature) == ("default", 0.2)
    assert get_usecase("summarize").sources["MODEL"] != "override"
    assert len(api("GET", "usecases/summarize/revisions/", token=editor).json["revisions"]) == 4


def test_revert_to_a_revision_it_does_not_have_is_refused(api, editor):
    api("PUT", "usecases/example/", {"TEMPERATURE": 0.1}, token=editor)
    of_example = UseCaseRevision.objects.get().pk
    assert api("POST", "usecases/summarize/revert/", {"revision": of_example}, token=editor).status == 404
    assert api("POST", "usecases/summarize/revert/", {"revision": 999}, token=editor).status == 404
    for body in ({}, {"revision": "1"}, {"revision": True}, {"revision": 1.0}):
        answer = api("POST", "usecases/summarize/revert/", body, token=editor)
        assert answer.status == 400, body
        assert "revision" in answer.json["errors"]
    assert UseCaseRevision.objects.count() == 1


# -- llm_token ----------------------------------------------------------------------------------


def test_llm_token_create_prints_the_token_once_and_keeps_only_its_digest(api, user_with):
    user = user_with(VIEW)
    out, err = command("llm_token", "create", user.get_username(), "--name", "deploy pipeline")
    token = out.strip()
    assert out == token + "\n"
    assert token.startswith("llm_") and len(token) > 40
    assert token not in err  # the notice says which token, by its first characters only
    assert "operator0" in err

    record = ApiToken.objects.get()
    assert record.digest == hashlib.sha256(token.encode()).hexdigest()
    for field in ApiToken._meta.concrete_fields:
        assert token not in str(field.value_from_object(record)), field.name
    assert token.startswith(record.prefix) and len(record.prefix) < 16

    listed, _ = command("llm_token", "list")
    assert record.prefix in listed and "deploy pipeline" in listed
    assert token not in listed

    assert api("GET", "usecases/", token=token).status == 200
    assert "last used never" not in command("llm_token", "list", "operator0")[0]


def test_a_revoked_token_is_401(api, user_with):
    user = user_with(VIEW)
    kept, revoked = token_for(user), token_for(user)
    prefix = ApiToken.objects.get(digest=hashlib.sha256(revoked.encode()).hexdigest()).prefix
    out, _ = command("llm_token", "revoke", "operator0", "--prefix", prefix)
    assert "Revoked 1" in out
    assert api("GET", "usecases/", token=revoked).status == 401
    assert api("GET", "usecases/", token=kept).status == 200

    command("llm_token", "revoke", "operator0")
    assert api("GET", "usecases/", token=kept).status == 401
    with pytest.raises(CommandError, match="no token of 'operator0' to revoke"):
        command("llm_token", "revoke", "operator0")


@pytest.mark.parametrize("action", ["create", "revoke", "list"])
def test_llm_token_names_an_unknown_user_in_one_line(action):
    with pytest.raises(CommandError) as raised:
        command("llm_token", action, "ghost")
    message = str(raised.value)
    assert "'ghost'" in message
    assert "\n" not in message
    assert not ApiToken.objects.exists()


# -- llm_config, here ---------------------------------------------------------------------------

OVERRIDDEN = ("summarize", "example")


def effective():
    """What each use case is, as the API would describe it, bar the revision id (a database's own)."""
    overrides.forget()
    overrides.refresh()
    shown = {}
    for name in OVERRIDDEN:
        described = overrides.described(get_usecase(name))
        shown[name] = {key: described[key] for key in ("override", "config", "sources")}
    return shown


def test_export_then_import_into_a_fresh_database_gives_the_same_configuration(tmp_path):
    overrides.save_override("summarize", {"PROVIDER": "test", "MODEL": "m9", "PROMPT": "Ünïcode prompt."})
    overrides.save_override("example", {"TEMPERATURE": 0.05, "MAX_OUTPUT_TOKENS": 50, "FALLBACKS": ["test"]})
    wanted = effective()
    assert wanted["summarize"]["config"]["MODEL"] == "m9"

    exported = tmp_path / "overrides.json"
    out, _ = command("llm_config", "export", "--output", str(exported))
    assert out == ""
    data = json.loads(exported.read_text(encoding="utf-8"))
    assert data["usecases"] == {
        "summarize": {"PROVIDER": "test", "MODEL": "m9", "PROMPT": "Ünïcode prompt."},
        "example": {"TEMPERATURE": 0.05, "MAX_OUTPUT_TOKENS": 50, "FALLBACKS": ["test"]},
    }
    printed, _ = command("llm_config", "export")
    assert json.loads(printed) == data

    UseCaseRevision.objects.all().delete()  # a fresh deployment's database
    assert effective() != wanted
    assert planned().model != "m9"

    with pytest.raises(SystemExit) as exited:
        command("llm_config", "diff", str(exported))
    assert exited.value.code == 1

    out, _ = command("llm_config", "import", str(exported))
    assert "summarize: saved" in out and "example: saved" in out
    assert "2 use case(s) changed" in out
    assert effective() == wanted
    assert planned().model == "m9"
    assert UseCaseRevision.objects.filter(usecase="summarize").get().comment == "import of overrides.json"

    out, _ = command("llm_config", "diff", str(exported))
    assert out.strip() == "No differences."
    again, _ = command("llm_config", "import", str(exported))
    assert "0 use case(s) changed, 2 already as in the file." in again
    assert UseCaseRevision.objects.count() == 2


def test_diff_lists_each_field_that_differs(tmp_path):
    overrides.save_override("summarize", {"TEMPERATURE": 0.3, "MODEL": "m1"})
    wanted = tmp_path / "wanted.json"
    wanted.write_text(json.dumps({"usecases": {"summarize": {"TEMPERATURE": 0.4, "PROMPT": "P"}}}))
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("llm_config", "diff", str(wanted), stdout=out)
    assert exited.value.code == 1
    assert out.getvalue().splitlines() == [
        'summarize.MODEL: "m1" -> (unset)',
        'summarize.PROMPT: (unset) -> "P"',
        "summarize.TEMPERATURE: 0.3 -> 0.4",
    ]


def test_llm_config_revert_restores_a_revision():
    kept = overrides.save_override("summarize", {"TEMPERATURE": 0.3})
    overrides.save_override("summarize", {"TEMPERATURE": 0.9})
    assert planned().temperature == 0.9

    out, _ = command("llm_config", "revert", "summarize", str(kept.pk))
    assert f"revision {kept.pk}" in out
    assert planned().temperature == 0.3
    assert UseCaseRevision.objects.order_by("-pk").first().reverts_id == kept.pk

    command("llm_config", "revert", "summarize", "0")
    assert planned().temperature == 0.2
    with pytest.raises(CommandError, match="no revision 12345"):
        command("llm_config", "revert", "summarize", "12345")


def test_llm_config_says_who_made_a_change(tmp_path, django_user_model):
    import getpass

    command("llm_config", "revert", "summarize", "0")
    unnamed = UseCaseRevision.objects.order_by("-pk").first()
    assert (unnamed.author, unnamed.author_name) == (None, f"{getpass.getuser()} (llm_config)")

    operator = django_user_model.objects.create_user("operator")
    exported = tmp_path / "overrides.json"
    exported.write_text(json.dumps({"usecases": {"summarize": {"TEMPERATURE": 0.4}}}))
    command("llm_config", "import", str(exported), "--author", "operator")
    named = UseCaseRevision.objects.order_by("-pk").first()
    assert (named.author, named.author_name) == (operator, "operator")
    operator.is_active = False
    operator.save()
    with pytest.raises(CommandError, match="--author operator: that user is inactive"):
        command("llm_config", "revert", "summarize", "0", "--author", "operator")
    with pytest.raises(CommandError, match="--author nobody: no such user"):
        command("llm_config", "revert", "summarize", "0", "--author", "nobody")
    with pytest.raises(CommandError, match="--author goes without --url"):
        command("llm_config", "--url", "http://127.0.0.1:9/", "revert", "summarize", "0", "--author", "x")


def test_llm_config_import_refuses_a_file_that_does_not_hold(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"usecases": {"summarize": {"TEMPERATURE": 5}}}))
    with pytest.raises(CommandError, match="TEMPERATURE"):
        command("llm_config", "import", str(bad))
    bad.write_text("[]")
    with pytest.raises(CommandError, match="as export writes it"):
        command("llm_config", "import", str(bad))
    with pytest.raises(CommandError, match="cannot read"):
        command("llm_config", "import", str(tmp_path / "missing.json"))
    assert not UseCaseRevision.objects.exists()


# -- llm_config, against a running deployment ---------------------------------------------------


def test_remote_export_and_import_through_the_api(api, editor, tmp_path):
    assert (
        api("PUT", "usecases/summarize/", {"PROVIDER": "test", "MODEL": "remote-1"}, token=editor).status
        == 200
    )

    out, err = command("llm_config", "--url", api.root, "--token", editor, "export")
    exported = json.loads(out)
    # Every use case, {} for one on its settings: an import puts a target's back too.
    assert exported["usecases"] == {"summarize": {"PROVIDER": "test", "MODEL": "remote-1"}, "example": {}}
    assert editor not in out + err

    wanted = tmp_path / "wanted.json"
    wanted.write_text(
        json.dumps({"usecases": {"summarize": {"TEMPERATURE": 0.35}, "example": {"MODEL": "e1"}}})
    )
    with pytest.raises(SystemExit) as exited:
        command("llm_config", "--url", api.root.rstrip("/"), "--token", editor, "diff", str(wanted))
    assert exited.value.code == 1

    out, _ = command("llm_config", "--url", api.root, "--token", editor, "import", str(wanted))
    assert "2 use case(s) changed" in out
    shown = api("GET", "usecases/summarize/", token=editor).json
    assert shown["override"] == {"TEMPERATURE": 0.35}
    revisions = api("GET", "usecases/summarize/revisions/", token=editor).json["revisions"]
    assert revisions[0]["author"] == "operator0"
    assert revisions[0]["comment"] == "import of wanted.json"
    assert planned("example").model == "e1"

    out, _ = command("llm_config", "--url", api.root, "--token", editor, "diff", str(wanted))
    assert out.strip() == "No differences."

    first = revisions[-1]["id"]
    command("llm_config", "--url", api.root, "--token", editor, "revert", "summarize", str(first))
    assert planned().model == "remote-1"


def test_remote_import_of_a_bad_file_says_which_field(api, editor, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"usecases": {"summarize": {"TEMPERATURE": 5}}}))
    with pytest.raises(CommandError) as raised:
        command("llm_config", "--url", api.root, "--token", editor, "import", str(bad))
    message = str(raised.value)
    assert "HTTP 400" in message and "TEMPERATURE" in message
    assert editor not in message
    assert not UseCaseRevision.objects.exists()


def test_remote_export_keeps_a_prompt_as_written(api, editor, tmp_path):
    """An export is a backup: what it holds must be what was saved, to the character."""
    prompt = "Cite each source as a link, e.g. https://example.org/search?q=otters&key=demo1234."
    assert api("PUT", "usecases/summarize/", {"PROMPT": prompt}, token=editor).status == 200

    out, _ = command("llm_config", "--url", api.root, "--token", editor, "export")
    assert json.loads(out)["usecases"]["summarize"]["PROMPT"] == prompt

    exported = tmp_path / "here.json"
    command("llm_config", "export", "--output", str(exported))
    out, _ = command("llm_config", "--url", api.root, "--token", editor, "diff", str(exported))
    assert out.strip() == "No differences."


def test_import_of_an_export_makes_the_target_what_the_source_was(tmp_path):
    """A use case the source never overrode is on its settings there; the import must say so."""
    overrides.save_override("summarize", {"TEMPERATURE": 0.3})
    exported = tmp_path / "source.json"
    command("llm_config", "export", "--output", str(exported))
    source = effective()

    UseCaseRevision.objects.all().delete()  # the target: another deployment, its own change
    overrides.save_override("example", {"TEMPERATURE": 0.9})

    command("llm_config", "import", str(exported))
    assert effective() == source
    assert planned("example").temperature == 0.5


def closed_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def remote_failure(*args):
    with pytest.raises(CommandError) as raised:
        command("llm_config", *args)
    message = str(raised.value)
    assert "\n" not in message, message
    return message


def test_remote_mistakes_are_one_line_and_never_show_the_token(api, editor, user_with, monkeypatch):
    monkeypatch.delenv("LLM_API_TOKEN", raising=False)
    message = remote_failure("--url", api.root, "export")
    assert "--token" in message

    for url in ("ftp://example.com/api/llm/", "not a url"):
        message = remote_failure("--url", url, "--token", editor, "export")
        assert "--url" in message
    # A token pasted into the URL by mistake is not shown back either.
    message = remote_failure("--url", f"http://{editor}@/", "--token", editor, "export")
    assert editor not in message

    message = remote_failure(
        "--url", f"http://127.0.0.1:{closed_port()}/api/llm/", "--token", editor, "export"
    )
    assert "refused" in message.lower()
    assert editor not in message

    message = remote_failure("--url", api.root, "--token", UNKNOWN_TOKEN, "export")
    assert "HTTP 401" in message
    assert UNKNOWN_TOKEN not in message

    viewer = token_for(user_with(VIEW))
    message = remote_failure("--url", api.root, "--token", viewer, "revert", "summarize", "0")
    assert "HTTP 403" in message
    assert viewer not in message

    message = remote_failure("--url", f"{api.root}usecases/summarize/", "--token", editor, "export")
    assert "HTTP 404" in message or "not JSON" in message
    assert editor not in message


def test_remote_token_may_come_from_the_environment(api, editor, monkeypatch):
    monkeypatch.setenv("LLM_API_TOKEN", editor)
    out, _ = command("llm_config", "--url", api.root, "export")
    assert json.loads(out)["usecases"] == {"summarize": {}, "example": {}}


# -- secrets --------------------------------------------------------------------------------------


def test_the_token_is_never_in_answers_errors_or_logs(api, editor, user_with, caplog):
    caplog.set_level(logging.DEBUG)
    viewer = token_for(user_with(VIEW))
    answers = [
        api("GET", "usecases/", token=editor),
        api("PUT", "usecases/summarize/", {"TEMPERATURE": 5}, token=editor),
        api("PUT", "usecases/summarize/", {"TEMPERATURE": 0.3}, token=viewer),
        api("GET", "usecases/nope/", token=editor),
        api("GET", "usecases/", token=UNKNOWN_TOKEN),
        api("GET", "usecases/", headers={"Authorization": f"Basic {UNKNOWN_TOKEN}"}),
        api("DELETE", "usecases/summarize/", token=editor),
    ]
    assert [answer.status for answer in answers] == [200, 400, 403, 404, 401, 401, 405]
    logged = caplog.text + "".join(record.getMessage() for record in caplog.records)
    for secret in (editor, viewer, UNKNOWN_TOKEN):
        for answer in answers:
            assert secret not in answer.text
            assert secret not in json.dumps(answer.headers)
        assert secret not in logged


# -- what a review found ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        '{% include "admin/base.html" %}',
        '{% extends "admin/base.html" %}',
        "{% load static %}{% get_static_prefix %}",
        "{% debug %}",
        '{% url "admin:index" %}',
    ],
)
def test_a_template_saved_in_an_override_reaches_nothing_but_its_context(api, editor, source):
    answer = api("PUT", "usecases/summarize/", {"PROMPT_TEMPLATE": f"Be brief. {source}"}, token=editor)
    assert answer.status == 400
    assert list(answer.json["errors"]) == ["PROMPT_TEMPLATE"]
    assert not UseCaseRevision.objects.exists()


def test_the_history_masks_a_secret_and_an_override_cannot_hold_one(api, editor, settings):
    key = "sk-live-0123456789abcdef"
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "test": {**settings.LLM_PROVIDERS["test"], "OPTIONS": {"api_key": key}},
    }
    answer = api("PUT", "usecases/summarize/", {"PROMPT": f"Use {key} to log in."}, token=editor)
    assert answer.status == 400 and "holds a secret" in answer.json["errors"]["PROMPT"][0]
    assert key not in answer.text

    # One saved before the key was configured is masked wherever it is shown.
    UseCaseRevision.objects.create(
        usecase="summarize", override={"PROMPT": f"Use {key}."}, config={"PROMPT": f"Use {key}."}
    )
    overrides.forget()  # written behind llmapp's back: no save told the process
    for path in ("usecases/summarize/revisions/", "usecases/summarize/", "usecases/"):
        answer = api("GET", path, token=editor)
        shown = json.dumps(answer.json, ensure_ascii=False)
        assert answer.status == 200 and key not in shown and "Use ••••" in shown, path


def test_if_match_refuses_a_put_made_on_an_older_revision(api, editor):
    first = api("GET", "usecases/summarize/", token=editor)
    assert first.headers["ETag"] == '"0"'
    saved = api("PUT", "usecases/summarize/", {"MODEL": "alice"}, token=editor, headers={"If-Match": '"0"'})
    assert saved.status == 200
    stale = api("PUT", "usecases/summarize/", {"TEMPERATURE": 0.9}, token=editor, headers={"If-Match": '"0"'})
    assert stale.status == 412 and "was changed" in stale.json["error"]
    assert planned().model == "alice"  # Alice's change stands
    fresh = api(
        "PUT",
        "usecases/summarize/",
        {"MODEL": "alice", "TEMPERATURE": 0.9},
        token=editor,
        headers={"If-Match": saved.headers["ETag"]},
    )
    assert fresh.status == 200


def test_with_the_layer_off_a_put_is_refused_not_lost(api, editor, settings):
    settings.LLM_USECASE_OVERRIDES = False
    answer = api("PUT", "usecases/summarize/", {"TEMPERATURE": 0.9}, token=editor)
    assert answer.status == 409 and "LLM_USECASE_OVERRIDES" in answer.json["error"]
    assert not UseCaseRevision.objects.exists()


def test_fields_a_project_made_uneditable_keep_their_saved_value(api, editor, settings):
    assert (
        api("PUT", "usecases/summarize/", {"PROVIDER": "test", "TEMPERATURE": 0.3}, token=editor).status
        == 200
    )
    settings.LLM_EDITABLE_FIELDS = ["TEMPERATURE", "PROMPT"]
    assert api("PUT", "usecases/summarize/", {"TEMPERATURE": 0.4}, token=editor).status == 200
    assert UseCaseRevision.objects.order_by("-pk").first().override == {
        "PROVIDER": "test",
        "TEMPERATURE": 0.4,
    }
    # Repeating the saved value is allowed; changing it is not.
    assert (
        api("PUT", "usecases/summarize/", {"PROVIDER": "test", "TEMPERATURE": 0.5}, token=editor).status
        == 200
    )
    refused = api("PUT", "usecases/summarize/", {"PROVIDER": "default"}, token=editor)
    assert refused.status == 400 and "not editable here" in refused.json["errors"]["PROVIDER"][0]


def test_llm_config_does_not_send_the_token_where_a_redirect_points(editor, tmp_path):
    import http.server
    import threading

    seen = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"usecases": []}')

        def log_message(self, *args):
            pass

    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    target = f"http://localhost:{elsewhere.server_port}/api/llm/usecases/"

    class Redirect(Elsewhere):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()

    redirect = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    for server in (elsewhere, redirect):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        command(
            "llm_config",
            "--url",
            f"http://127.0.0.1:{redirect.server_port}/api/llm/",
            "--token",
            editor,
            "export",
        )
    finally:
        for server in (elsewhere, redirect):
            server.shutdown()
            server.server_close()
    assert seen == [None]


def test_llm_config_import_is_all_or_nothing_and_nulls_change_nothing(editor, tmp_path):
    wanted = tmp_path / "wanted.json"
    wanted.write_text(json.dumps({"usecases": {"summarize": {"TEMPERATURE": 0.3}, "nosuch": {"MODEL": "x"}}}))
    with pytest.raises(CommandError, match=r"nosuch.*nothing was imported"):
        command("llm_config", "import", str(wanted))
    wanted.write_text(
        json.dumps({"usecases": {"summarize": {"TEMPERATURE": 0.3}, "example": {"TEMPERATURE": 5}}})
    )
    with pytest.raises(CommandError, match=r"example.*TEMPERATURE.*nothing was imported"):
        command("llm_config", "import", str(wanted))
    assert not UseCaseRevision.objects.exists()

    wanted.write_text(json.dumps({"usecases": {"summarize": {"TEMPERATURE": 0.3, "MODEL": None}}}))
    out, _ = command("llm_config", "import", str(wanted))
    assert "1 use case(s) changed" in out
    out, _ = command("llm_config", "import", str(wanted))
    assert "0 use case(s) changed" in out
    assert UseCaseRevision.objects.count() == 1
