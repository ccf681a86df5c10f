"""The JSON API as an operator uses it: against `manage.py runserver`, with tokens made by
`manage.py llm_token`, and the change seen by the next `manage.py llm` in another process."""

import json
import urllib.error
import urllib.request

from tests.conftest import run_manage

TEMPERATURE_FIVE = {"TEMPERATURE": 5}


def request(url, method="GET", body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data, headers, method=method), timeout=30
        ) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def dry_run(manage):
    result = manage("llm", "summarize", "-m", "What changed?", "--dry-run")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def token(manage, username, *permissions):
    code = (
        "from django.contrib.auth.models import Permission, User;"
        f"user = User.objects.create_user({username!r});"
        f"user.user_permissions.set(Permission.objects.filter(codename__in={list(permissions)!r}))"
    )
    made = manage("shell", "-c", code)
    assert made.returncode == 0, made.stderr
    created = manage("llm_token", "create", username)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def test_a_put_over_http_changes_the_next_call_and_bad_requests_are_refused(manage, runserver, tmp_path):
    url = f"{runserver}/api/llm/usecases/summarize/"
    editor = token(manage, "editor", "view_usecase", "change_usecase")
    viewer = token(manage, "viewer", "view_usecase")
    before = dry_run(manage)

    status, body = request(url, "PUT", {"PROMPT": "One line.", "TEMPERATURE": 0.7}, editor)
    assert status == 200 and body["sources"]["PROMPT"] == "override"
    after = dry_run(manage)  # another process, its next call
    assert (after["system"], after["temperature"]) == ("One line.", 0.7)
    assert after["model"] == before["model"]

    status, body = request(url, "PUT", TEMPERATURE_FIVE, editor)
    assert status == 400 and list(body["errors"]) == ["TEMPERATURE"]
    assert request(url, "PUT", {"TEMPERATURE": 0.1})[0] == 401
    assert request(url, "PUT", {"TEMPERATURE": 0.1}, viewer)[0] == 403
    assert request(url, token=viewer)[0] == 200
    assert dry_run(manage)["temperature"] == 0.7  # none of those changed anything

    # Export here, import on a fresh database: the same effective configuration.
    export = tmp_path / "overrides.json"
    exported = manage("llm_config", "export", "--output", str(export))
    assert exported.returncode == 0, exported.stderr
    fresh = tmp_path / "fresh.sqlite3"

    def on_fresh(*args):
        return run_manage(*args, database=fresh, env_file=manage.env_file)

    assert on_fresh("migrate", "-v0").returncode == 0
    imported = on_fresh("llm_config", "import", str(export))
    assert imported.returncode == 0, imported.stderr
    # Field by field, value and layer; the revision ids are the new database's own.
    listed = [run("llm", "--list", "summarize").stdout for run in (on_fresh, manage)]
    assert fields(listed[0]) == fields(listed[1])
    result = on_fresh("llm", "summarize", "-m", "What changed?", "--dry-run")
    assert json.loads(result.stdout) == after


def fields(listing):
    return [line.split("(revision")[0].rstrip() for line in listing.splitlines()]
