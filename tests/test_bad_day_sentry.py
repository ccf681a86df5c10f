"""A bad day for Sentry: a malformed DSN, a hung ingest. Neither fails a command or holds it up.

The SDK is real and so are the ingests: the fake one of tests/fakes, and a black hole
that accepts connections and never answers. (What a user of manage.py sees is in
tests/test_bad_day.py.)
"""

import subprocess
import sys
from pathlib import Path

import pytest
import sentry_sdk

from llmapp import sentry as sdk
from llmapp.sentry import configure_sdk, flush_before_exit
from llmapp.sentry.checks import check_sentry
from llmapp.sentry.options import Dsns
from llmapp.sentry.transport import MultiplexingTransport
from tests.sentry import restored_sentry
from tests.services import BlackHole

ROOT = Path(__file__).resolve().parent.parent
MALFORMED_DSNS = ["not-a-dsn", "http://127.0.0.1:9/1"]  # no scheme; no public key


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True)
def _restore_sentry():
    with restored_sentry(close_timeout=0):
        yield


def sdk_log(caplog):
    return [record for record in caplog.records if record.name == "llmapp.sentry"]


# --- a malformed DSN: a check error, one log line, and no Sentry -------------------------


@pytest.mark.parametrize("dsn", MALFORMED_DSNS)
def test_a_malformed_dsn_is_a_check_error_with_a_hint(settings, dsn):
    settings.SENTRY_SDK_CONFIG = {"dsn": dsn}

    [error] = check_sentry()

    assert error.id == "llmapp.sentry.E001" and error.is_serious()
    assert error.msg.startswith("SENTRY_SDK_CONFIG['dsn'] is not a valid Sentry DSN: ")
    assert "https://<public key>@<host>/<project id>" in error.hint


@pytest.mark.parametrize("dsn", MALFORMED_DSNS)
def test_configure_sdk_with_a_malformed_dsn_logs_one_line_and_goes_on(settings, caplog, dsn):
    settings.SENTRY_SDK_CONFIG = {"dsn": dsn}

    assert configure_sdk() is None

    assert not sentry_sdk.get_client().is_active()
    [record] = sdk_log(caplog)
    assert record.exc_info is None
    assert record.message.startswith("Sentry is off: SENTRY_SDK_CONFIG['dsn'] is not a valid DSN (")


def test_a_malformed_relay_dsn_leaves_upstream_reporting(settings, sentry_ingests, caplog):
    upstream = sentry_ingests()
    settings.SENTRY_SDK_CONFIG = {"dsn": upstream.dsn, "relay_dsn": "not-a-dsn"}

    client = configure_sdk()
    sentry_sdk.capture_message("still reported")
    client.flush(timeout=5)

    assert [item.json["message"] for item in upstream.items_of_type("event")] == ["still reported"]
    [record] = sdk_log(caplog)
    assert record.message.startswith("Sentry reports to upstream only: SENTRY_SDK_CONFIG['relay_dsn']")
    assert [error.id for error in check_sentry()] == ["llmapp.sentry.E001"]


def test_an_option_the_sdk_rejects_is_reported_and_start_up_goes_on(settings, caplog):
    settings.SENTRY_SDK_CONFIG = {"dsn": "http://key@127.0.0.1:9/1", "no_such_option": True}

    assert configure_sdk() is None

    [record] = sdk_log(caplog)
    assert "sentry_sdk.init failed: TypeError:" in record.message
    [error] = check_sentry()
    assert error.id == "llmapp.sentry.E002" and "no_such_option" in error.msg


def test_the_check_imports_no_sentry_sdk_without_a_dsn():
    code = (
        "import sys\n"
        "from django.conf import settings\n"
        "settings.configure(SENTRY_SDK_CONFIG={'dsn': None, 'relay_dsn': ''})\n"
        "from llmapp.sentry.checks import check_sentry\n"
        "print(check_sentry(), 'sentry_sdk' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] False"


# --- a hung ingest: one bounded wait, at the command's end -------------------------------


@pytest.fixture
def hung_ingest():
    with BlackHole() as hole:
        yield hole


def hung_dsn(hole, project=1):
    return f"http://publickey@127.0.0.1:{hole.port}/{project}"


def test_both_transports_are_flushed_within_one_timeout(hung_ingest):
    transport = MultiplexingTransport(Dsns(hung_dsn(hung_ingest), hung_dsn(hung_ingest, 2)), {})
    transport.clock = clock = FakeClock()
    given = []

    def hung_flush(timeout, callback=None):
        given.append(timeout)
        clock.now += timeout  # a hung ingest uses all the time it is given

    for inner in transport.transports:
        inner.flush = hung_flush
    try:
        transport.flush(2.0)
    finally:
        transport.kill()

    assert given == [2.0, 0.0]


def test_a_command_waits_for_a_hung_ingest_once_within_its_budget(settings, hung_ingest):
    settings.SENTRY_SDK_CONFIG = {"dsn": hung_dsn(hung_ingest), "relay_dsn": hung_dsn(hung_ingest, 2)}
    client = configure_sdk()
    clock, given = FakeClock(), []

    def hung_flush(timeout, callback=None):
        given.append(timeout)
        clock.now += timeout

    client.transport.flush = hung_flush
    sentry_sdk.capture_message("pending")

    flush_before_exit(clock=clock)

    assert given == [sdk.COMMAND_FLUSH_BUDGET]
    # The SDK's flush at exit waits for what is left of the budget: nothing.
    assert client.options["shutdown_timeout"] == 0.0
