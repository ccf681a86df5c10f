"""The JSON API over use cases, mounted by ``include("llmapp.urls")``.

    GET  usecases/                       every use case's effective configuration, with sources
    GET  usecases/<name>/                one use case
    PUT  usecases/<name>/                replace its override (null, or leaving a field out, removes it)
    GET  usecases/<name>/revisions/      its override's history, newest first
    POST usecases/<name>/revert/         {"revision": <id>}: restore that revision's override

Callers authenticate with a Django session (and its CSRF token, for PUT and POST) or
with ``Authorization: Bearer <token>`` (``manage.py llm_token create USER``), and act
with their user's permissions: ``llmapp.view_usecase`` to read, ``llmapp.change_usecase``
to change. Every error is a JSON object: ``{"error": "..."}``, and for a body that does
not hold, ``{"error": ..., "errors": {FIELD: [messages]}}``.
"""

import contextlib
import functools
import json

from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_variables

from llmapp.api.tokens import user_of
from llmapp.conf import overrides
from llmapp.conf.usecases import get_usecase, get_usecases
from llmapp.exceptions import ConfigurationError, InvalidUsecaseError

VIEW, CHANGE = "llmapp.view_usecase", "llmapp.change_usecase"
# A whole override, prompts and all, is far below this; a body beyond it is not one.
MAX_BODY = 1_000_000
COMMENT_HEADER = "X-Revision-Comment"


class ApiError(Exception):
    def __init__(self, status, message, errors=None):
        super().__init__(message)
        self.status = status
        self.errors = errors


def _csrf_failed(request):
    """The CSRF check of a session's unsafe request, as CsrfViewMiddleware would make it."""
    check = CsrfViewMiddleware(lambda request: None)
    check.process_request(request)
    return check.process_view(request, None, (), {}) is not None


def endpoint(methods):
    """A view of ``methods`` ({method: permission}) that answers JSON, errors included."""

    def decorate(view):
        @csrf_exempt  # checked below for sessions: a bearer token is not sent by a browser on its own
        @functools.wraps(view)
        def wrapped(request, *args, **kwargs):
            try:
                if request.method not in methods:
                    response = _error(405, f"{request.method} is not allowed here; use {', '.join(methods)}.")
                    response["Allow"] = ", ".join(methods)
                    return response
                _authenticate(request)
                if not request.user.has_perm(methods[request.method]):
                    raise ApiError(403, f"your user lacks the permission {methods[request.method]}.")
                overrides.refresh()
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return _error(exc.status, str(exc), exc.errors)
            except PermissionDenied as exc:
                return _error(403, str(exc) or "permission denied.")
            except InvalidUsecaseError as exc:
                return _error(404, str(exc))

        return wrapped

    return decorate


@sensitive_variables("header", "token")
def _authenticate(request):
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer":
        user = user_of(token.strip())
        if user is None:
            raise ApiError(401, "the bearer token is unknown or revoked, or its user is inactive.")
        request.user = user
        return
    if header:
        raise ApiError(401, "use Authorization: Bearer <token> (manage.py llm_token create USER).")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        raise ApiError(401, "authentication required: a bearer token or a logged-in session.")
    if request.method not in ("GET", "HEAD", "OPTIONS") and _csrf_failed(request):
        raise ApiError(403, "CSRF check failed: send the csrftoken cookie's value as X-CSRFToken.")


def _error(status, message, errors=None):
    body = {"error": message}
    if errors:
        body["errors"] = errors
    response = JsonResponse(body, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="llmapp"'
    return response


def _body(request):
    if len(request.body) > MAX_BODY:
        raise ApiError(400, f"the body is over {MAX_BODY} bytes.")
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got a JSON {type(body).__name__}.")
    return body


def _usecase(name):
    try:
        return get_usecase(name)
    except ConfigurationError as exc:
        raise ApiError(409, f"use case {name!r} is misconfigured in settings: {exc}") from None


@endpoint({"GET": VIEW})
def usecase_list(request):
    return JsonResponse({"usecases": [overrides.described(usecase) for usecase in get_usecases().values()]})


@endpoint({"GET": VIEW, "PUT": CHANGE})
def usecase_detail(request, name):
    usecase = _usecase(name)
    if request.method == "PUT":
        fields = _body(request)
        with _saving():
            overrides.save_override(
                name, fields, author=request.user, comment=_comment(request), base_revision=_if_match(request)
            )
        overrides.refresh()
        usecase = _usecase(name)
    return _with_etag(JsonResponse(overrides.described(usecase)), name)


def _comment(request):
    return request.headers.get(COMMENT_HEADER, "")[:1000]


def _if_match(request):
    """The revision id of If-Match (the ETag a GET gave): a PUT made on it fails if another came since."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    tag = header.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise ApiError(400, 'If-Match must be the ETag a GET gave, a revision id such as "12".')
    return int(tag)


def _with_etag(response, name):
    latest = overrides.latest_revision(name)
    response["ETag"] = f'"{latest.pk if latest is not None else 0}"'
    return response


@contextlib.contextmanager
def _saving():
    try:
        yield
    except overrides.OverrideInvalid as exc:
        raise ApiError(400, "the override does not hold; nothing was saved.", exc.errors) from None
    except overrides.OverrideConflict as exc:
        raise ApiError(412, str(exc)) from None
    except overrides.OverridesOff as exc:
        raise ApiError(409, str(exc)) from None


@endpoint({"GET": VIEW})
def revision_list(request, name):
    from llmapp.models import UseCaseRevision

    _usecase(name)
    revisions = UseCaseRevision.objects.filter(usecase=name).order_by("-pk")
    return JsonResponse({"revisions": [revision_record(revision) for revision in revisions]})


@endpoint({"POST": CHANGE})
def revert(request, name):
    from llmapp.models import UseCaseRevision

    _usecase(name)
    wanted = _body(request).get("revision")
    if not isinstance(wanted, int) or isinstance(wanted, bool):
        raise ApiError(400, "name the revision to restore.", {"revision": ['give {"revision": <id>}.']})
    try:
        with _saving():
            overrides.revert(name, wanted, author=request.user, comment=_comment(request))
    except UseCaseRevision.DoesNotExist:
        raise ApiError(404, f"use case {name!r} has no revision {wanted}.") from None
    overrides.refresh()
    return _with_etag(JsonResponse(overrides.described(_usecase(name))), name)


def revision_record(revision):
    return {
        "id": revision.pk,
        "author": revision.author_name or None,
        "created_at": revision.created_at.isoformat(),
        "comment": revision.comment,
        "override": overrides.masked(revision.override),
        "config": overrides.masked(revision.config),
        "reverts": revision.reverts_id,
    }
