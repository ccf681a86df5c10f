"""Bearer tokens of the JSON API: created and revoked with ``manage.py llm_token``, kept hashed."""

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

PREFIX = "llm_"
# Long enough to tell tokens apart in a list, far too short to guess the rest.
SHOWN = len(PREFIX) + 8
# last_used_at is written at most this often: not a write per request.
USE_RECORDED_EVERY = timedelta(minutes=1)


def digest(token):
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(user, name=""):
    """Create a token acting as ``user``; return the ApiToken and the token itself, which is not kept."""
    from llmapp.models import ApiToken

    token = PREFIX + secrets.token_urlsafe(32)
    record = ApiToken.objects.create(user=user, name=name, prefix=token[:SHOWN], digest=digest(token))
    return record, token


@sensitive_variables("token")
def user_of(token):
    """The active user ``token`` acts as; None for a token unknown, revoked, or of an inactive user."""
    from llmapp.models import ApiToken

    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    wanted = digest(token)
    record = ApiToken.objects.select_related("user").filter(digest=wanted).first()
    # The lookup is by digest, so timing says nothing of the token; compared again all the same.
    if record is None or not hmac.compare_digest(record.digest, wanted) or not record.user.is_active:
        return None
    now = timezone.now()
    if record.last_used_at is None or now - record.last_used_at > USE_RECORDED_EVERY:
        ApiToken.objects.filter(pk=record.pk).update(last_used_at=now)
    return record.user
