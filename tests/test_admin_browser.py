"""The admin end to end in a real browser: Debian's Chromium, headless, through Selenium.

Skipped with a reason where Chromium or chromedriver is missing, unless
LLM_REQUIRE_BROWSER=1 (as in CI), which turns the skip into a failure.
"""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# LLM_TEST_SCREENSHOTS: another folder, for runs side by side (CI's) that would overwrite each other's.
SCREENSHOTS = Path(os.environ.get("LLM_TEST_SCREENSHOTS") or ROOT / "artifacts" / "screenshots")
SCREENSHOT = SCREENSHOTS / "usecases.png"
PASSWORD = "browser-test-password"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium phones home at start-up, which a locked-down network refuses.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)
MESSAGE = "Checkout timed out for Canadian customers since Tuesday's deploy. A rollback fixed it."


def find_executable(path, name):
    return path if os.access(path, os.X_OK) else shutil.which(name)


def unavailable(reason):
    """Skip, or fail when LLM_REQUIRE_BROWSER=1 says the browser must be there."""
    if os.environ.get("LLM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"LLM_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason}; install it with: apt-get install chromium chromium-driver")


@pytest.fixture
def browser(tmp_path):
    try:
        from selenium import webdriver
    except ImportError:
        unavailable("selenium is not installed (pip install selenium)")
    chromium = find_executable("/usr/bin/chromium", "chromium")
    chromedriver = find_executable("/usr/bin/chromedriver", "chromedriver")
    if not chromium or not chromedriver:
        unavailable("Chromium or chromedriver is not installed")

    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


@pytest.mark.django_db(transaction=True)
def test_operator_sends_a_test_prompt_and_finds_it_in_the_log(browser, live_server, django_user_model):
    from selenium.webdriver.common.by import By

    django_user_model.objects.create_superuser("operator", "operator@example.com", PASSWORD)

    # Log in: the admin sends an anonymous visitor to its login page.
    browser.get(f"{live_server.url}/admin/llmapp/usecase/")
    assert "/admin/login/" in browser.current_url
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()

    # Use cases: summarize, on the offline preview provider.
    assert browser.find_element(By.TAG_NAME, "h1").text == "Use cases"
    row = browser.find_element(By.ID, "usecase-summarize").text
    assert "summarize" in row
    assert "default" in row and "llmapp.providers.preview.PreviewProvider" in row
    assert "preview" in row and "provider default" in row

    # Send a test prompt and read the answer.
    browser.find_element(By.LINK_TEXT, "summarize").click()
    browser.find_element(By.ID, "id_message").send_keys(MESSAGE)
    browser.find_element(By.CSS_SELECTOR, "#test-prompt input[type=submit]").click()
    result = browser.find_element(By.ID, "test-result").text
    assert "[preview answer" in result
    assert "Checkout timed out for Canadian customers" in result
    assert "preview" in result  # the model

    # The use-case page now counts the call; keep a picture of it.
    browser.find_element(By.LINK_TEXT, "Use cases").click()
    assert browser.find_element(By.CSS_SELECTOR, "#usecase-summarize td:nth-of-type(7)").text == "1"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))

    # The completion log shows the call.
    browser.find_element(By.LINK_TEXT, "LLM").click()
    browser.find_element(By.LINK_TEXT, "Completion log").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 1
    assert all(text in rows[0].text for text in ("summarize", "default", "preview", "OK"))


def test_a_missing_browser_skips_unless_it_is_required(monkeypatch):
    monkeypatch.delenv("LLM_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        unavailable("Chromium or chromedriver is not installed")
    monkeypatch.setenv("LLM_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="LLM_REQUIRE_BROWSER=1 but Chromium"):
        unavailable("Chromium or chromedriver is not installed")


@pytest.mark.django_db(transaction=True)
def test_operator_tests_a_typed_use_case_and_reads_its_fields(
    browser, live_server, django_user_model, settings
):
    from selenium.webdriver.common.by import By

    settings.LLM_USECASES = {"triage": {"OUTPUT": "tests.fakes.output_types.Ticket"}}
    django_user_model.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    browser.get(f"{live_server.url}/admin/login/?next=/admin/llmapp/usecase/triage/")
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()

    # The page names the type and shows its schema.
    output = browser.find_element(By.ID, "output-type").text
    assert "tests.fakes.output_types.Ticket" in output and '"spam"' in output

    # On the offline default the answer is the smallest valid Ticket, shown field by field.
    browser.find_element(By.ID, "id_message").send_keys(MESSAGE)
    browser.find_element(By.CSS_SELECTOR, "#test-prompt input[type=submit]").click()
    fields = browser.find_elements(By.CSS_SELECTOR, "#test-parsed tr")
    assert [row.text for row in fields] == ["label spam", "score 0.0"]


def dry_run(manage):
    import json

    result = manage("llm", "summarize", "-m", MESSAGE, "--dry-run")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_operator_edits_a_use_case_and_another_process_sends_it_then_reverts(browser, manage, runserver):
    from selenium.webdriver.common.by import By

    created = manage(
        "createsuperuser",
        "--noinput",
        "--username",
        "operator",
        "--email",
        "operator@example.com",
        env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD},
    )
    assert created.returncode == 0, created.stderr
    before = dry_run(manage)
    assert before["model"] == "preview" and before["system"].startswith("You summarize text.")

    browser.get(f"{runserver}/admin/login/?next=/admin/llmapp/usecase/summarize/")
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()

    # Change the model and the prompt, and save.
    browser.find_element(By.ID, "edit-usecase").click()
    model = browser.find_element(By.ID, "id_MODEL")
    model.clear()
    model.send_keys("preview-large")
    prompt = browser.find_element(By.ID, "id_PROMPT")
    prompt.clear()
    prompt.send_keys("Summarize in one line.")
    browser.find_element(By.ID, "id_comment").send_keys("shorter summaries")
    browser.find_element(By.NAME, "_save").click()
    assert (
        "Saved use case 'summarize' as revision" in browser.find_element(By.CSS_SELECTOR, ".messagelist").text
    )
    assert "from its override (revision" in browser.find_element(By.CSS_SELECTOR, "table.llm-config").text

    # Another process's next call sends them, and records the prompt's version.
    after = dry_run(manage)
    assert (after["model"], after["system"]) == ("preview-large", "Summarize in one line.")
    assert {key: value for key, value in after.items() if key not in ("model", "system")} == {
        key: value for key, value in before.items() if key not in ("model", "system")
    }
    called = manage("llm", "summarize", "-m", MESSAGE, "-v2")
    assert called.returncode == 0 and "model=preview-large" in called.stderr

    # The history shows what changed, by whom and why.
    browser.find_element(By.CSS_SELECTOR, "a.historylink").click()
    [latest, *_] = browser.find_elements(By.CSS_SELECTOR, "#revisions > tbody > tr")
    text = latest.text
    assert "operator" in text and "shorter summaries" in text and "(current)" in text
    assert "MODEL" in text and "preview-large" in text and "Summarize in one line." in text
    assert "TEMPERATURE" not in text  # unchanged fields are not listed
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT.with_name("usecase-history.png")))

    # Revert to the settings: the next call's request is the one from before, exactly.
    browser.find_element(By.CSS_SELECTOR, "#revision-0 input[type=submit]").click()
    assert "Restored revision 0" in browser.find_element(By.CSS_SELECTOR, ".messagelist").text
    assert dry_run(manage) == before

    # The log splits the calls by prompt version.
    browser.get(f"{runserver}/admin/llmapp/usecase/summarize/")
    versions = browser.find_element(By.ID, "prompt-versions").text
    assert "override@" in versions


@pytest.mark.django_db(transaction=True)
def test_operator_reads_an_evaluation_with_its_chart_and_compares_routes(
    browser, live_server, django_user_model, two_servers, tmp_path
):
    import io
    import json

    from django.core.management import call_command
    from selenium.webdriver.common.by import By

    fast, slow = two_servers
    fast.answer_with = lambda text: "Paris" if "France" in text else "Berlin"
    slow.answer_with = lambda text: "Paris"
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        json.dumps({"id": "fr", "message": "Capital of France?", "expected": "Paris"})
        + "\n"
        + json.dumps({"id": "de", "message": "Capital of Germany?", "expected": "Berlin"})
        + "\n"
    )
    call_command(
        "llm_eval",
        "summarize",
        "--input",
        str(cases),
        "--routes",
        "fast,slow",
        "--output",
        str(tmp_path / "out.jsonl"),
        stdout=io.StringIO(),
    )
    django_user_model.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    browser.get(f"{live_server.url}/admin/login/?next=/admin/llmapp/evaluationrun/")
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()

    # The list, then the run's page: its chart has a bar per route, as long as its accuracy.
    row = browser.find_element(By.CSS_SELECTOR, "#result_list tbody tr").text
    assert "summarize" in row and "fast 100%" in row and "slow 50%" in row
    browser.find_element(By.CSS_SELECTOR, "#result_list tbody tr th a").click()
    bars = browser.find_elements(By.CSS_SELECTOR, "#accuracy svg rect.llm-bar")
    widths = [float(bar.get_attribute("width")) for bar in bars]
    assert len(widths) == 2 and widths[0] == 2 * widths[1]
    assert "100%" in browser.find_element(By.ID, "accuracy").text
    disagreements = browser.find_element(By.ID, "disagreements").text
    assert "de" in disagreements and "Berlin" in disagreements and "failed" in disagreements
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT.with_name("evaluation.png")))

    # From the use case's page, Compare shows the routes' answers side by side.
    browser.get(f"{live_server.url}/admin/llmapp/usecase/summarize/")
    browser.find_element(By.ID, "compare-usecase").click()
    routes = browser.find_element(By.ID, "id_routes")
    routes.clear()
    routes.send_keys("fast,slow")
    browser.find_element(By.ID, "id_message").send_keys("Capital of Germany?")
    browser.find_element(By.NAME, "_compare").click()
    comparison = browser.find_element(By.ID, "comparison")
    headers = [cell.text for cell in comparison.find_elements(By.CSS_SELECTOR, "thead th")]
    answers = [cell.text for cell in comparison.find_elements(By.CSS_SELECTOR, "tbody td")]
    assert [header.lower() for header in headers] == ["fast", "slow"]  # the admin upper-cases headings
    assert answers[0].startswith("Berlin") and answers[1].startswith("Paris")
