"""The built wheel and sdist, as a user installs them: llmapp alone, templates included, pages that render."""

import subprocess
import sys
import tarfile
import venv
import zipfile

import pytest

from tests.conftest import ROOT
from tests.environment import isolated_environ
from tests.startproject import Project

TEMPLATES = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "llmapp" / "templates").rglob("*.html"))


def build(*args):
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, env=isolated_environ()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    build("pip", "wheel", "--no-deps", "-w", str(folder), ".")
    build("build", "--sdist", "--outdir", str(folder), ".")
    [wheel] = folder.glob("llmapp-*.whl")
    [sdist] = folder.glob("llmapp-*.tar.gz")
    return wheel, sdist


def test_the_wheel_holds_llmapp_alone_with_its_templates(dist):
    wheel, _ = dist
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.startswith("llmapp-")} == {"llmapp"}
    assert TEMPLATES and all(template in names for template in TEMPLATES)
    [top_level] = [name for name in names if name.endswith("top_level.txt")]
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["llmapp"]
    [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: BSD-3-Clause" in text
    assert any(name.endswith("licenses/LICENSE") for name in names)


def test_the_sdist_holds_the_templates_and_the_licence(dist):
    _, sdist = dist
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert all(template in names for template in TEMPLATES)
    assert "LICENSE" in names


# Run in the fresh project: every llmapp admin page, a failed call's frames, the test form.
ADMIN_PAGES = """
from django.contrib.auth.models import User
from django.test import Client

from llmapp import complete_prompt, eventstream
from llmapp.exceptions import ProviderError
from llmapp.models import CompletionEvent
from llmapp.providers import locmem

locmem.queue(ProviderError("upstream down", provider="default", status_code=503))
try:
    complete_prompt("summarize", "a call that fails", retries=0)
except ProviderError:
    pass
assert eventstream.flush(timeout=10)  # usage is written off the call path
failed = CompletionEvent.objects.get(status="error")
client = Client(HTTP_HOST="localhost")
client.force_login(User.objects.get(username="admin"))
pages = [
    "/admin/",
    "/admin/llmapp/",
    "/admin/llmapp/usecase/",
    "/admin/llmapp/usecase/summarize/",
    "/admin/llmapp/completionevent/",
    f"/admin/llmapp/completionevent/{failed.pk}/change/",
]
for page in pages:
    response = client.get(page)
    assert response.status_code == 200, (page, response.status_code)
frames = client.get(pages[-1]).content.decode()
assert "upstream down" in frames and "complete_prompt" in frames, frames
answer = client.post(pages[3], {"message": "A test prompt."}).content.decode()
assert "locmem answer to: A test prompt." in answer
print("pages rendered:", len(pages) + 1)
"""


def test_the_wheel_in_a_fresh_project_renders_every_admin_page(dist, tmp_path):
    wheel, _ = dist
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = str(environment / "bin" / "python")
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True, timeout=600
    )
    assert installed.returncode == 0, installed.stderr

    project = Project(tmp_path / "site", python=python)
    project.add_settings('LLM_PROVIDERS = {"default": {"BACKEND": "llmapp.providers.locmem.LocmemProvider"}}')
    for command in (
        ("migrate", "-v0"),
        ("createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com"),
    ):
        result = project.manage(*command, env={"DJANGO_SUPERUSER_PASSWORD": "a-long-password-1"})
        assert result.returncode == 0, result.stderr

    result = project.manage("shell", "-c", ADMIN_PAGES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pages rendered: 7" in result.stdout

    # Nothing of this repository is importable there: only the installed wheel.
    result = project.run(
        "-c", "import llmapp, importlib.util as u; print(llmapp.__file__, u.find_spec('settings'))"
    )
    assert str(environment) in result.stdout and result.stdout.split()[1] == "None"

    dump = tmp_path / "dump.json"
    for command in (("dumpdata", "-o", str(dump)), ("flush", "--noinput"), ("loaddata", str(dump))):
        result = project.manage(*command)
        assert result.returncode == 0, result.stderr
