"""Prompts as Django templates: PROMPT_TEMPLATE and MESSAGE_TEMPLATE rendered with a call's
context, the prompt version in the usage event, ENABLED, and `manage.py llm --context`."""

import asyncio
import datetime
import hashlib
import io
import json
import re
import sqlite3

import pytest
from django.core.management import CommandError, call_command

from llmapp import acomplete_prompt, complete_prompt, stream_prompt
from llmapp.calls.service import plan_call
from llmapp.conf.overrides import save_override
from llmapp.conf.usecases import get_usecase
from llmapp.exceptions import ConfigurationError, InvalidRequestError, MissingContextError, UsecaseDisabled
from llmapp.models import CompletionEvent
from llmapp.providers import locmem
from tests.test_checks import check

PRODUCT = "Write the product page of {{ product }}.\n"
ASK = "About {{ product }}: {{ message }}"


def digest(source):
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def llm(*args, stdin=None):
    out, err = io.StringIO(), io.StringIO()
    call_command("llm", *args, stdout=out, stderr=err, stdin=stdin or TTY())
    return out.getvalue(), err.getvalue()


class TTY(io.StringIO):
    """A terminal on stdin: the command must not wait for a piped message."""

    def isatty(self):
        return True


def one_line_failure(result):
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("CommandError: "), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


@pytest.fixture
def templates(settings, tmp_path):
    """Add a template folder to the project's engine; return write(name, source) -> its path."""
    folder = tmp_path / "templates"
    folder.mkdir()
    engine = {**settings.TEMPLATES[0], "DIRS": [*settings.TEMPLATES[0]["DIRS"], str(folder)]}
    settings.TEMPLATES = [engine, *settings.TEMPLATES[1:]]

    def write(name, source):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
        return path

    return write


@pytest.fixture
def prompt_template(settings, templates):
    """Make use case ``name``, on locmem, whose PROMPT_TEMPLATE is a file holding ``source``."""

    def make(name, source):
        templates(f"llm/{name}.txt", source)
        settings.LLM_USECASES = {name: {"PROVIDER": "test", "PROMPT_TEMPLATE": f"llm/{name}.txt"}}
        return name

    return make


@pytest.fixture
def usecases(settings, templates):
    """'product' (PROMPT_TEMPLATE) and 'ask' (PROMPT_TEMPLATE and MESSAGE_TEMPLATE) on locmem."""
    templates("llm/product.txt", PRODUCT)
    templates("llm/ask.txt", ASK)
    settings.LLM_USECASES = {
        "product": {"PROVIDER": "test", "PROMPT_TEMPLATE": "llm/product.txt"},
        "ask": {"PROVIDER": "test", "PROMPT_TEMPLATE": "llm/product.txt", "MESSAGE_TEMPLATE": "llm/ask.txt"},
    }
    return templates


# -- 1. rendering -------------------------------------------------------------------------


def test_the_prompt_template_renders_with_the_context(usecases):
    request, _ = plan_call("product", "Go.", context={"product": "the Kettle"})
    assert request.prompt == "Write the product page of the Kettle.\n"
    assert locmem.outbox == []  # planning sends nothing

    complete_prompt("product", "Go.", context={"product": "the Kettle"})
    [sent] = locmem.outbox
    assert sent.prompt == "Write the product page of the Kettle.\n"
    assert sent.message == "Go."


def test_nothing_is_html_escaped(usecases):
    name = """<b>Tom & "Jerry's"</b>"""
    complete_prompt("ask", "Is it > 5 & < 10?", context={"product": name})
    [sent] = locmem.outbox
    assert sent.prompt == f"Write the product page of {name}.\n"
    assert sent.message == f"About {name}: Is it > 5 & < 10?"


def test_the_message_template_renders_with_the_context_and_the_message(usecases):
    complete_prompt("ask", "Is it safe?", context={"product": "the Kettle"})
    assert locmem.outbox[0].message == "About the Kettle: Is it safe?"


def test_a_message_template_needs_no_message_when_it_uses_none(settings, usecases):
    usecases("llm/brief.txt", "Describe {{ product }}.")
    settings.LLM_USECASES = {"brief": {"PROVIDER": "test", "MESSAGE_TEMPLATE": "llm/brief.txt"}}
    completion = complete_prompt("brief", context={"product": "the Kettle"})
    assert locmem.outbox[0].message == "Describe the Kettle."
    assert completion.text == "locmem answer to: Describe the Kettle."


def test_streamed_and_async_calls_render_the_same(usecases):
    *chunks, completion = stream_prompt("ask", "Why?", context={"product": "the Kettle"})
    asyncio.run(acomplete_prompt("ask", "Why?", context={"product": "the Kettle"}))
    assert [(sent.prompt, sent.message) for sent in locmem.outbox] == [
        ("Write the product page of the Kettle.\n", "About the Kettle: Why?")
    ] * 2
    assert "".join(chunks) == completion.text


def test_a_default_filter_covers_a_variable_the_context_does_not_give(prompt_template):
    prompt_template("tone", "Tone: {{ tone|default:'friendly' }}.")
    complete_prompt("tone", "Hi.", context={})
    assert locmem.outbox[0].prompt == "Tone: friendly."


# -- 2. a variable the context does not give ---------------------------------------------


@pytest.mark.parametrize("context", [None, {}, {"produce": "typo"}])
def test_a_missing_variable_is_one_clear_error_and_nothing_is_sent(usecases, context):
    with pytest.raises(MissingContextError) as raised:
        complete_prompt("product", "Go.", context=context)
    message = str(raised.value)
    assert isinstance(raised.value, InvalidRequestError)
    assert "product" in message and "PROMPT_TEMPLATE 'llm/product.txt'" in message
    assert "\n" not in message and "\x00" not in message
    assert locmem.outbox == []


@pytest.mark.parametrize(
    "source",
    [
        "A{% if product %} for {{ product }}{% endif %}.",
        "Items:{% for line in lines %} {{ line }}{% endfor %}.",
        "{% with name=product %}{{ name }}{% endwith %}",
        "{% if other and product %}x{% endif %}",
        "{{ other|add:1 }}{% ifchanged product %}{% endifchanged %}",
    ],
)
def test_a_tag_given_a_missing_variable_is_an_error_too(prompt_template, source):
    prompt_template("tags", source)
    with pytest.raises(MissingContextError, match=r"uses (product|lines), which the call does not give"):
        complete_prompt("tags", "Go.", context={"other": 1})
    assert locmem.outbox == []


@pytest.mark.parametrize(
    ("source", "rendered"),
    [
        ('A{% if product|default:"" %} for {{ product }}{% endif %}.', "A."),
        ("{% firstof product other 'nothing' %}", "1"),
        ("{% for line in lines|default_if_none:'' %}{{ line }}{% empty %}none{% endfor %}", "none"),
        ("{% for n in numbers %}{% if forloop.first %}{{ n }}{% endif %}{% endfor %}", "3"),
        # However deep in a condition the default is.
        ("{% if other and not discount|default:False %}t{% endif %}", "t"),
        ("{% if not other or numbers and tone|default:'x' %}t{% endif %}", "t"),
    ],
)
def test_a_variable_may_be_missing_where_the_template_says_so(prompt_template, source, rendered):
    prompt_template("optional", source)
    complete_prompt("optional", "Go.", context={"other": 1, "numbers": [3, 4]})
    assert locmem.outbox[0].prompt == rendered


def test_what_a_parent_or_an_included_template_allows_to_be_missing_is_allowed(usecases, prompt_template):
    usecases("llm/parent.txt", "Hi {{ name }}.{% block body %}{% endblock %} {% firstof signature 'team' %}")
    usecases("llm/part.txt", "{% firstof nickname name %}")
    prompt_template(
        "child",
        "{% extends 'llm/parent.txt' %}{% block body %}{% if tone|default:'' %}!{% endif %}"
        "{% include 'llm/part.txt' %}{% endblock %}",
    )
    complete_prompt("child", "Go.", context={"name": "Ann"})
    assert locmem.outbox[0].prompt == "Hi Ann.Ann team"
    with pytest.raises(MissingContextError, match=r"uses name, which the call does not give"):
        complete_prompt("child", "Go.", context={})


def test_a_dotted_variable_is_named_once_as_written(prompt_template):
    prompt_template("dotted", "{{ product.name }}")
    with pytest.raises(MissingContextError, match=r"uses product\.name, which"):
        complete_prompt("dotted", "Go.", context={})


def test_an_override_source_may_look_up_only_so_many_variables(settings, db, monkeypatch):
    from llmapp.conf import overrides, sandbox

    monkeypatch.setattr(sandbox, "MAX_LOOKUPS", 10_000)
    settings.LLM_USECASES = {"tags": {"PROVIDER": "test", "PROMPT": "x"}}
    operands = " or ".join(["m"] * 500)
    condition = f"{{% if {operands} %}}{{% endif %}}"
    source = f"{{% for i in rows %}}{{% for j in rows %}}{condition}{{% endfor %}}{{% endfor %}}"
    overrides.save_override("tags", {"PROMPT_TEMPLATE": source})
    with pytest.raises(InvalidRequestError, match=f"looked up more than {sandbox.MAX_LOOKUPS:,} variables"):
        complete_prompt("tags", "Go.", context={"rows": list(range(10))})
    assert locmem.outbox == []
    complete_prompt("tags", "Go.", context={"rows": [0, 1], "m": False})  # 2,000 lookups and a few more
    monkeypatch.setattr(sandbox, "MAX_MISSES", 100)
    with pytest.raises(InvalidRequestError, match="looked up more than 100 variables the call does not give"):
        complete_prompt("tags", "Go.", context={"rows": [0, 1]})


def test_an_override_source_names_a_missing_variable_of_a_tag(settings, db, usecases):
    from llmapp.conf import overrides

    settings.LLM_USECASES = {"tags": {"PROVIDER": "test", "PROMPT": "x"}}
    overrides.save_override(
        "tags", {"PROMPT_TEMPLATE": "Items:{% for line in lines %} {{ line }}{% endfor %}"}
    )
    with pytest.raises(MissingContextError, match="uses lines"):
        complete_prompt("tags", "Go.", context={})
    complete_prompt("tags", "Go.", context={"lines": ["a", "b"]})
    assert locmem.outbox[0].prompt == "Items: a b"


def test_a_message_template_without_its_message_names_it(usecases):
    said = "MESSAGE_TEMPLATE 'llm/ask.txt' of use case 'ask' uses message"
    with pytest.raises(MissingContextError, match=re.escape(said)):
        complete_prompt("ask", context={"product": "the Kettle"})
    assert locmem.outbox == []


def test_a_context_that_is_not_a_dict_is_refused(usecases):
    with pytest.raises(InvalidRequestError, match="context must be a dict of template variables, got a list"):
        complete_prompt("product", "Go.", context=["the Kettle"])
    assert locmem.outbox == []


def test_the_command_names_the_missing_variable_in_one_line(usecases):
    with pytest.raises(CommandError) as raised:
        llm("product", "-m", "Go.")
    assert "product" in str(raised.value) and "\n" not in str(raised.value)
    assert locmem.outbox == []


# -- as a user runs manage.py --------------------------------------------------------------


@pytest.fixture
def project(manage, tmp_path):
    """manage.py on settings.test with a 'product' use case on the preview provider whose
    PROMPT_TEMPLATE is in a folder of tmp_path."""
    folder = tmp_path / "project_templates"
    (folder / "llm").mkdir(parents=True)
    template = folder / "llm" / "product.txt"
    template.write_text(PRODUCT, encoding="utf-8")
    (tmp_path / "prompt_settings.py").write_text(
        "from settings.test import *  # noqa: F403\n"
        f"TEMPLATES = [{{**TEMPLATES[0], 'DIRS': [{str(folder)!r}]}}]  # noqa: F405\n"
        "LLM_USECASES = {'product': {'PROMPT_TEMPLATE': 'llm/product.txt'}}\n",
        encoding="utf-8",
    )
    env = {"DJANGO_SETTINGS_MODULE": "prompt_settings", "PYTHONPATH": str(tmp_path)}

    def run(*args):
        return manage(*args, env=env)

    run.template = template

    def versions():
        with sqlite3.connect(manage.database) as db:
            return [
                row[0] for row in db.execute("SELECT prompt_version FROM llmapp_completionevent ORDER BY id")
            ]

    run.versions = versions
    return run


def test_manage_py_names_the_missing_variable_in_one_line(project):
    stderr = one_line_failure(project("llm", "product", "-m", "Go."))
    assert "product" in stderr
    assert project.versions() == []  # no call was made, so none was recorded


def test_manage_py_renders_the_context_of_a_file_and_records_the_version(project, tmp_path):
    context = tmp_path / "context.json"
    context.write_text(json.dumps({"product": "<Kettle & co>"}), encoding="utf-8")
    result = project("llm", "product", "-m", "Go.", "--context", str(context), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["system"] == "Write the product page of <Kettle & co>.\n"

    result = project("llm", "product", "-m", "Go.", "--context", str(context))
    assert result.returncode == 0, result.stderr
    new = "Sell {{ product }} today.\n"
    project.template.write_text(new, encoding="utf-8")
    result = project("llm", "product", "-m", "Go.", "--context", '{"product": "Kettle"}')
    assert result.returncode == 0, result.stderr
    assert project.versions() == [f"llm/product.txt@{digest(PRODUCT)}", f"llm/product.txt@{digest(new)}"]


# -- 3. the prompt version in the usage event -----------------------------------------------


@pytest.mark.django_db
def test_the_usage_event_carries_the_template_names_and_hashes(usecases):
    complete_prompt("product", "Go.", context={"product": "the Kettle"})
    complete_prompt("ask", "Why?", context={"product": "the Kettle"})
    versions = list(CompletionEvent.objects.order_by("pk").values_list("prompt_version", flat=True))
    assert versions == [
        f"llm/product.txt@{digest(PRODUCT)}",
        f"llm/product.txt@{digest(PRODUCT)}+llm/ask.txt@{digest(ASK)}",
    ]
    assert get_usecase("product").prompt_version == versions[0]


@pytest.mark.django_db
def test_a_plain_prompt_is_versioned_by_its_hash(settings):
    settings.LLM_USECASES = {"plain": {"PROVIDER": "test", "PROMPT": "Be brief."}}
    complete_prompt("plain", "Hi.")
    complete_prompt("plain", "Hi.", prompt="Be long.")
    versions = list(CompletionEvent.objects.order_by("pk").values_list("prompt_version", flat=True))
    assert versions == [digest("Be brief."), digest("Be long.")]


@pytest.mark.django_db
def test_an_overridden_prompt_is_versioned_by_its_text_not_its_revision(
    settings, django_capture_on_commit_callbacks
):
    settings.LLM_USECASES = {"plain": {"PROVIDER": "test", "PROMPT": "Be brief."}}
    complete_prompt("plain", "Hi.")
    with django_capture_on_commit_callbacks(execute=True):
        save_override("plain", {"PROMPT": "Be very brief."})
    complete_prompt("plain", "Hi.")
    assert locmem.outbox[-1].prompt == "Be very brief."
    versions = lambda: list(CompletionEvent.objects.order_by("pk").values_list("prompt_version", flat=True))  # noqa: E731
    overridden = f"override@{digest('Be very brief.')}"
    assert versions() == [digest("Be brief."), overridden]

    # A revision that changes the temperature alone keeps the prompt's version.
    with django_capture_on_commit_callbacks(execute=True):
        save_override("plain", {"PROMPT": "Be very brief.", "TEMPERATURE": 0.9})
    complete_prompt("plain", "Hi.")
    assert versions()[-1] == overridden


@pytest.mark.django_db
def test_a_template_source_set_by_an_override_renders(usecases, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        save_override("product", {"PROMPT_TEMPLATE": "Sell {{ product }} <now> & today."})
    complete_prompt("product", "Go.", context={"product": "the Kettle"})
    assert locmem.outbox[0].prompt == "Sell the Kettle <now> & today."
    assert CompletionEvent.objects.get().prompt_version.startswith("override@")

    with pytest.raises(MissingContextError, match="product"):
        complete_prompt("product", "Go.")
    assert len(locmem.outbox) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("source", "stopped"),
    [
        # A million steps: seconds of a call's CPU, unbounded, for nothing written.
        (
            "{% for a in message %}{% for b in message %}{% endfor %}{% endfor %}",
            "loops ran more than 100,000",
        ),
        # A hundred thousand passes, each writing the 1,000-character message: 100 MB of text.
        ("{% for a in big %}{{ message }}{% endfor %}", "wrote more than 1,000,000 characters"),
        ('{{ message|ljust:"1000000000" }}', "|ljust was given 1000000000"),
        ('{{ message|center:"99999999" }}', "|center was given 99999999"),
        ('{{ message|stringformat:"900000000s" }}', "|stringformat was given 900000000"),
        ('{{ 1.5|floatformat:"-50000000" }}', "|floatformat was given 50000000"),
        # Doubled at each level: 2**30 times the message.
        (
            "{% with a=message %}" + "{% with a=a|add:a %}" * 30 + "{{ a }}" + "{% endwith %}" * 31,
            "|add made",
        ),
        # Each of a hundred thousand letters, then a separator of a thousand: 100 MB.
        ("{{ big|make_list|join:message }}", "|join would make"),
        # Each pass doubles what it was given: 4,096 times the message after twelve.
        ("{{ message" + "|make_list|join:','" * 12 + " }}", "|join would make"),
        (
            '{% for a in big %}{% filter center:"900" %}{{ a }}{% endfilter %}{% endfor %}',
            "handled more than",
        ),
        ("{% for a in big %}{% cycle message message %}{% endfor %}", "wrote more than"),
        # {% if %} takes an operand's error for False: the stop must not be one.
        ("{% for a in big %}{% if not message|join:message %}{% endif %}{% endfor %}", "handled more than"),
        ("{% regroup message|ljust:'1000000'|make_list by 0 as g %}", "what |make_list made holds more"),
        ("{{ message|ljust:'1_000_000_00' }}", "|ljust was given 1_000_000_00"),
        # A list holding the same hundred thousand characters six times holds 600,000, doubled.
        ("{% with d=shared|add:shared %}{{ d }}{% endwith %}", "what |add made holds more"),
        ("{{ when|date:long_format }}", "|date was given a format of 40,000 characters"),
        # Nothing written and no filter: a body of many tags, many times.
        (
            "{% for a in big %}" + "{% if a %}{% endif %}" * 20 + "{% endfor %}",
            "rendered more than 1,000,000",
        ),
    ],
    ids=[
        "nested loops",
        "output",
        "ljust",
        "center",
        "stringformat",
        "floatformat",
        "add",
        "join",
        "doubling chain",
        "filter block in a loop",
        "cycle in a loop",
        "stop inside if",
        "regroup",
        "underscores",
        "shared items",
        "date format",
        "many tags",
    ],
)
def test_an_override_template_that_would_loop_or_write_without_end_is_stopped(
    usecases, source, stopped, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        save_override("product", {"MESSAGE_TEMPLATE": source})
    with pytest.raises(InvalidRequestError, match=re.escape(stopped)) as raised:
        complete_prompt(
            "product",
            "x" * 1000,
            context={
                "big": "y" * 100_000,
                "product": "the Kettle",
                "shared": ["z" * 100_000] * 6,
                "when": datetime.datetime(2026, 12, 6, tzinfo=datetime.UTC),
                "long_format": "r" * 40_000,
            },
        )
    assert str(raised.value).startswith(
        "MESSAGE_TEMPLATE (source from the override) of use case 'product' was stopped"
    )
    assert locmem.outbox == []


@pytest.mark.django_db
def test_an_override_template_within_its_bounds_renders_as_django_would(
    usecases, django_capture_on_commit_callbacks
):
    source = (
        '{% for line in lines %}{{ forloop.counter }}. {{ line|ljust:"6" }}|{% endfor %}'
        '{% with twice=message|add:message %}{{ twice|center:"12" }}{% endwith %}{{ 2.25|floatformat:1 }}'
    )
    with django_capture_on_commit_callbacks(execute=True):
        save_override("product", {"MESSAGE_TEMPLATE": source})
    complete_prompt("product", "ab", context={"lines": ["one", "two"], "product": "the Kettle"})
    assert locmem.outbox[0].message == "1. one   |2. two   |    abab    2.3"


@pytest.mark.django_db
@pytest.mark.parametrize("wrapper", ["{% filter lower %}", "{% block a %}{% block b %}"])
def test_text_inside_a_block_counts_once(usecases, wrapper, django_capture_on_commit_callbacks):
    closing = "{% endfilter %}" if "filter" in wrapper else "{% endblock %}{% endblock %}"
    with django_capture_on_commit_callbacks(execute=True):
        save_override("product", {"MESSAGE_TEMPLATE": wrapper + "{{ message }}" + closing})
    complete_prompt("product", "x" * 600_000, context={"product": "the Kettle"})
    assert len(locmem.outbox[0].message) == 600_000


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("{% now '" + "r" * 40_000 + "' %}", "now %} format of 40,000 characters"),
        ("{% if 1 %}" * 600 + "{% endif %}" * 600, "nests its tags too deeply"),
    ],
    ids=["now format", "nesting"],
)
def test_an_override_template_past_its_bounds_does_not_compile(usecases, source, problem):
    from llmapp.conf.prompts import PromptTemplate

    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        _ = PromptTemplate("product", "MESSAGE_TEMPLATE", source=source).template


def test_lorem_is_refused_in_an_override_template(usecases):
    from llmapp.conf.prompts import PromptTemplate

    with pytest.raises(ConfigurationError, match=r"uses \{% lorem %\}"):
        _ = PromptTemplate("product", "MESSAGE_TEMPLATE", source="{% lorem 100000000 w %}").template


def test_an_edited_template_is_used_once_runserver_reloads_templates(usecases):
    """runserver does not restart for a changed template: Django resets its engines' loaders."""
    from django.utils.autoreload import file_changed

    edited = "Sell {{ product }} today.\n"
    complete_prompt("product", "Go.", context={"product": "the Kettle"})
    path = usecases("llm/product.txt", edited)
    # What runserver's reloader does on the edit; a template's change does not restart it.
    assert any(answer for _, answer in file_changed.send(sender=None, file_path=path))
    complete_prompt("product", "Go.", context={"product": "the Kettle"})
    assert [sent.prompt for sent in locmem.outbox] == [
        "Write the product page of the Kettle.\n",
        "Sell the Kettle today.\n",
    ]
    assert get_usecase("product").prompt_version == f"llm/product.txt@{digest(edited)}"


# -- 4. a template that cannot be loaded ---------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["PROMPT_TEMPLATE", "MESSAGE_TEMPLATE"])
@pytest.mark.parametrize(
    ("name", "source", "text"),
    [
        ("llm/nope.txt", None, "does not exist"),
        ("llm/broken.txt", "{% if product %}never closed", "is not a valid Django template"),
    ],
)
def test_a_missing_or_malformed_template_is_e030(settings, templates, field, name, source, text):
    if source is not None:
        templates(name, source)
    settings.LLM_USECASES = {"broken": {"PROVIDER": "test", field: name}}
    [problem] = [problem for problem in get_usecase("broken").problems() if problem.check_id == "llmapp.E030"]
    assert f"{field} {name!r} of use case 'broken'" in str(problem) and text in str(problem)

    ids, output = check()
    assert "llmapp.E030" in ids, output
    assert name in output

    with pytest.raises(ConfigurationError, match=re.escape(f"{field} {name!r}")):
        complete_prompt("broken", "Go.", context={"product": "the Kettle"})
    assert locmem.outbox == []


# -- 5. ENABLED -------------------------------------------------------------------------------


def calls_are_refused(name, where):
    for call in (
        lambda: complete_prompt(name, "Hi."),
        lambda: list(stream_prompt(name, "Hi.")),
        lambda: asyncio.run(acomplete_prompt(name, "Hi.")),
    ):
        with pytest.raises(UsecaseDisabled, match=re.escape(where)) as raised:
            call()
        assert f"use case {name!r} is disabled" in str(raised.value)
    assert locmem.outbox == []
    with pytest.raises(CommandError, match="disabled") as raised:
        llm(name, "-m", "Hi.")
    assert "\n" not in str(raised.value)
    assert locmem.outbox == []


def test_enabled_false_in_settings_refuses_calls(settings):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test", "ENABLED": False}}
    calls_are_refused("summarize", "LLM_USECASES['summarize']['ENABLED']")


def test_enabled_false_in_the_environment_refuses_calls(settings, monkeypatch):
    monkeypatch.setenv("LLM_SUMMARIZE_ENABLED", "false")
    settings.LLM_USECASE_ENV_OVERRIDES = True
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test"}}
    calls_are_refused("summarize", "LLM_SUMMARIZE_ENABLED")


@pytest.mark.django_db
def test_enabled_false_in_an_override_refuses_calls(settings, django_capture_on_commit_callbacks):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test"}}
    with django_capture_on_commit_callbacks(execute=True):
        revision = save_override("summarize", {"ENABLED": False})
    calls_are_refused("summarize", f"from its override (revision {revision.pk})")


def test_enabled_must_be_a_bool(settings):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test", "ENABLED": "no"}}
    ids = [problem.check_id for problem in get_usecase("summarize").problems()]
    assert "llmapp.E031" in ids


def test_manage_py_refuses_a_disabled_usecase_in_one_line(manage):
    stderr = one_line_failure(manage("llm", "summarize", "-m", "Hi.", env={"LLM_SUMMARIZE_ENABLED": "false"}))
    assert "disabled" in stderr and "LLM_SUMMARIZE_ENABLED" in stderr


# -- 6. --context ------------------------------------------------------------------------------


def test_context_inline_and_from_a_file(usecases, tmp_path):
    context = tmp_path / "context.json"
    context.write_text(json.dumps({"product": "the Teapot"}), encoding="utf-8")
    llm("product", "-m", "Go.", "--context", '{"product": "the Kettle"}')
    llm("product", "-m", "Go.", "--context", str(context))
    assert [sent.prompt for sent in locmem.outbox] == [
        "Write the product page of the Kettle.\n",
        "Write the product page of the Teapot.\n",
    ]


def test_a_message_template_makes_message_optional(usecases):
    out, _ = llm("ask", "--context", '{"product": "the Kettle", "message": "Why?"}')
    assert locmem.outbox[0].message == "About the Kettle: Why?"
    assert out == "locmem answer to: About the Kettle: Why?\n"


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ('{"product": ', "--context is not JSON"),
        ("[1, 2]", "must be a JSON object, got a JSON list"),
        ("file:[1, 2]", "must be a JSON object, got a JSON list"),
        ("file:{not json", "is not JSON"),
        ("missing.json", "cannot read --context missing.json"),
    ],
)
def test_bad_context_is_one_line(usecases, tmp_path, monkeypatch, spec, text):
    monkeypatch.chdir(tmp_path)
    if spec.startswith("file:"):
        (tmp_path / "context.json").write_text(spec.removeprefix("file:"), encoding="utf-8")
        spec = "context.json"
    with pytest.raises(CommandError, match=re.escape(text)) as raised:
        llm("product", "-m", "Go.", "--context", spec)
    assert "\n" not in str(raised.value)
    assert locmem.outbox == []
