"""The import-layer contract: core ← integrations ← applications, and a numpy-only selection package.

Checked statically on every import statement (top level and inside functions) and, for the core,
by importing every module in a fresh interpreter and looking at what got loaded.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "hullft_agent"
#: Applications inside the package: the TextWorld agent.
APPLICATIONS = (CORE / "agents",)
#: Applications imported (lazily, by the CLI command that runs them) but kept out of the core package.
APPLICATION_MODULES = ("hullft_agent.agents", "hullft_server")
INTEGRATIONS = ROOT / "integrations"
#: Frameworks the core must never depend on.
FORBIDDEN_IN_CORE = ("langchain", "langchain_core", "langgraph", "langchain_hullft", "fastapi", "uvicorn",
                     "hullft_server")
#: The one place allowed to import an application, inside the command that runs it.
LAZY_APPLICATION_LOADERS = {CORE / "cli.py"}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module top level) for every import statement in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, id(node) in top))
    return found


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _is_under(path: Path, folders: tuple[Path, ...]) -> bool:
    return any(folder in path.parents for folder in folders)


def _root(module: str) -> str:
    return module.split(".")[0]


def test_the_core_never_imports_a_framework_or_an_integration():
    bad = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in _files(CORE) if not _is_under(path, APPLICATIONS)
        for module, top_level in _imports(path) if _root(module) in FORBIDDEN_IN_CORE
        and not (module.startswith(APPLICATION_MODULES) and path in LAZY_APPLICATION_LOADERS and not top_level)
    ]
    assert not bad, "the core imports a framework or an integration:\n" + "\n".join(bad)


def test_selection_imports_nothing_but_numpy_and_the_standard_library():
    allowed = {"numpy", "hullft_agent", "__future__", *sys.stdlib_module_names}
    bad = []
    for path in _files(CORE / "selection"):
        for module, _ in _imports(path):
            if _root(module) not in allowed or (_root(module) == "hullft_agent"
                                                and not module.startswith("hullft_agent.selection")):
                bad.append(f"{path.relative_to(ROOT)}: {module}")
    assert not bad, "selection/ must stay pure numpy:\n" + "\n".join(bad)


def test_applications_are_imported_by_nothing_but_the_cli_commands_that_run_them():
    bad = []
    for path in _files(CORE) + _files(INTEGRATIONS):
        if _is_under(path, APPLICATIONS + (INTEGRATIONS / "hullft_server",)):
            continue
        for module, top_level in _imports(path):
            if any(module == app or module.startswith(app + ".") for app in APPLICATION_MODULES):
                if path in LAZY_APPLICATION_LOADERS and not top_level:
                    continue
                bad.append(f"{path.relative_to(ROOT)}: {module}")
    assert not bad, "an application is imported by the library:\n" + "\n".join(bad)


def test_importing_every_core_module_loads_no_framework():
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in _files(CORE) if not _is_under(path, APPLICATIONS)
    )
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN_IN_CORE!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_the_langgraph_store_imports_without_the_model_stack():
    """A LangGraph app that only stores memories does not pay for torch and transformers at import."""
    script = (
        "import sys\n"
        "from langchain_hullft import LanceDBStore, StoreCandidates\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'peft'}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "integrations")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
