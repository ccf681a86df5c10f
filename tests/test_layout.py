"""The import rules of llmapp's layout, read from the source: what may import what."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llmapp"


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts}

# Each entry at the top, and why it is there: Django looks for it there, users' settings or
# imports name it (moving it would break a deployment), or it is a step of the flow.
TOP_LEVEL = {
    "__init__.py": "the public API",
    "py.typed": "type checkers",
    "apps.py": "Django",
    "models.py": "Django",
    "migrations": "Django",
    "templates": "Django",
    "admin": "Django",
    "management": "Django",
    "urls.py": 'include("llmapp.urls")',
    "exceptions.py": "imports",
    "signals.py": "imports",
    "testing": "TEST_RUNNER, the pytest plugin's entry point",
    "debug.py": "DEFAULT_EXCEPTION_REPORTER_FILTER",
    "providers": "LLM_PROVIDERS[...]['BACKEND']",
    "metrics": "LLM_METRICS_BACKEND",
    "eventstream": "LLM_EVENTSTREAM",
    "tsdb": "LLM_TSDB",
    "conf": "the flow: settings, use cases, start-up, checks, secrets",
    "calls": "the flow: the service, retries, circuit, recording",
    "sentry": "the flow: Sentry's set-up, scrubbing, spans, frames",
    "batch": "the flow: batches, their tasks, evaluations",
    # Not under admin/: importing that needs django.contrib.admin installed; the API does not.
    "api": "the flow: the JSON API behind llmapp.urls",
}


def imports(name, *, top_level_only):
    """The llmapp modules (and other top-level names) module ``name`` imports."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return found


def test_the_top_level_holds_what_django_users_and_the_flow_put_there():
    # A folder a checkout moved leaves its __pycache__ behind: not an entry.
    entries = {
        path.name
        for path in PACKAGE.iterdir()
        if path.name != "__pycache__"
        and (path.is_file() or any(inner.name != "__pycache__" for inner in path.iterdir()))
    }
    assert entries == set(TOP_LEVEL)


def test_llmapp_imports_nothing_of_the_host_project():
    for name in MODULES:
        host = {
            module
            for module in imports(name, top_level_only=False)
            if module.split(".")[0] in {"llmproject", "settings", "tests", "bench"}
        }
        assert not host, f"{name} imports {host}"


def test_providers_import_nothing_of_the_admin_the_commands_or_sentrys_set_up():
    forbidden = (
        "llmapp.admin",
        "llmapp.management",
        "llmapp.sentry",
        "llmapp.conf.startup",
        "llmapp.conf.checks",
    )
    for name in MODULES:
        if name.startswith("llmapp.providers"):
            reached = {
                module for module in imports(name, top_level_only=False) if module.startswith(forbidden)
            }
            assert not reached, f"{name} imports {reached}"


def test_no_import_cycle_at_module_level():
    """Import-time edges (a function's own imports run later, once both modules are loaded)."""
    graph = {
        name: {
            module for module in imports(name, top_level_only=True) if module in MODULES and module != name
        }
        for name in MODULES
    }
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_public_api_is_what_llmapp_exports_and_it_is_typed():
    import llmapp

    assert sorted(llmapp.__all__) == sorted(llmapp._EXPORTS)
    for name in llmapp.__all__:
        assert getattr(llmapp, name) is not None
    assert (PACKAGE / "py.typed").exists()
    assert llmapp.complete_prompt.__annotations__["return"] is llmapp.Completion
