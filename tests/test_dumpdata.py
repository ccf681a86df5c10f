"""Whole-project `dumpdata` and `loaddata` work in a project that uses llmapp."""

import io

import pytest
from django.core.management import call_command
from django.db import connection

from llmapp.models import Batch, BatchItem, CompletionEvent, UseCase

pytestmark = pytest.mark.django_db


def test_the_use_case_placeholder_has_no_table_and_no_rows():
    assert UseCase._meta.db_table not in connection.introspection.table_names()
    assert list(UseCase.objects.all()) == []
    assert UseCase._base_manager.count() == 0


@pytest.mark.parametrize("flags", [(), ("--all",)])
def test_dumpdata_and_loaddata_of_the_whole_project(tmp_path, flags):
    CompletionEvent.objects.create(usecase="summarize", provider="default", status="ok", latency_ms=1.5)
    batch = Batch.objects.create(usecase="summarize", total=1)
    BatchItem.objects.create(batch=batch, position=0, item_id="1", message="hi")
    dump = tmp_path / "all.json"

    call_command("dumpdata", *flags, output=str(dump), stdout=io.StringIO())

    assert "llmapp.usecase" not in dump.read_text()
    CompletionEvent.objects.all().delete()
    Batch.objects.all().delete()
    call_command("loaddata", str(dump), stdout=io.StringIO())
    assert CompletionEvent.objects.get().latency_ms == 1.5
    assert BatchItem.objects.get().batch.usecase == "summarize"


def test_dumpdata_of_the_placeholder_alone_is_empty():
    out = io.StringIO()
    call_command("dumpdata", "llmapp.usecase", stdout=out)
    assert out.getvalue().strip() == "[]"
