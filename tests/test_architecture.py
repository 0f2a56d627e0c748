"""The layering rule, checked on the source: who may import whom.

    rig.core  (the contract: schema, process base class, bus, store, codes)   imports no other layer
    acquisition, decoder, reward, gui  (the process packages)                 import rig.core and themselves
    rig.app, rig.offline  (CLI, supervisor, replay, report, export, bench)    import anything

Every import statement counts, also one inside a function, and so does ``importlib.import_module`` with a
literal name: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PROCESS_PACKAGES = ("acquisition", "decoder", "reward", "gui")
LAYERED = ("rig", *PROCESS_PACKAGES)
#: The most lines a production module may have: past this a module is doing more than one job.
MAX_MODULE_LINES = 550


def _layer(module: str) -> str:
    """``rig.core.schema`` -> ``rig.core``; ``decoder.engine`` -> ``decoder``; ``numpy`` -> ``""`` (not ours)."""
    parts = module.split(".")
    if parts[0] == "rig":
        return "rig.core" if len(parts) == 1 else f"rig.{parts[1]}"
    return parts[0] if parts[0] in PROCESS_PACKAGES else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, relative imports resolved, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if module in ("rig", *PROCESS_PACKAGES):  # "from rig import core": the submodules are the edges
                found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def allowed(source_layer: str, target_layer: str) -> bool:
    if not target_layer or target_layer == source_layer:
        return True
    if source_layer == "rig.core":
        return False
    if source_layer in PROCESS_PACKAGES:
        return target_layer == "rig.core"
    return True  # rig.app, rig.offline: the application and offline tools sit on top


def production_files() -> list[Path]:
    return sorted(p for name in LAYERED for p in (REPO / name).rglob("*.py"))


def layering_violations(files: list[Path]) -> list[str]:
    problems = []
    for path in files:
        source = _layer(_module_name(path))
        for line, module in imported_modules(path):
            target = _layer(module)
            if not allowed(source, target):
                problems.append(f"{path.relative_to(REPO)}:{line}: {source} imports {module} ({target})")
    return problems


def test_layers_import_only_downwards():
    problems = layering_violations(production_files())
    assert not problems, "imports against the layering rule:\n" + "\n".join(problems)


def test_no_production_module_over_the_limit():
    long = [f"{p.relative_to(REPO)}: {n} lines" for p in production_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them along their seams):\n" + "\n".join(long)


@pytest.mark.parametrize(("source", "text", "bad"), [
    ("rig/core/example.py", "from decoder.engine import DecoderEngine\n", True),
    ("rig/core/example.py", "def f():\n    import acquisition.rois\n", True),  # lazy imports count
    ("rig/core/example.py", "import importlib\nimportlib.import_module('gui.model')\n", True),
    ("rig/core/example.py", "from rig.app.config import RigConfig\n", True),
    ("rig/core/example.py", "from rig.core.schema import Decision\nimport numpy\n", False),
    ("decoder/example.py", "from acquisition.rois import load_suite2p\n", True),  # process -> process
    ("decoder/example.py", "from rig.offline.replay import replay\n", True),  # process -> offline tools
    ("decoder/example.py", "from rig import app\n", True),
    ("decoder/example.py", "from .engine import DecoderEngine\nfrom rig.core.bus import Subscriber\n", False),
    ("rig/offline/example.py", "from decoder.core import DecoderCore\n", False),
])
def test_the_checker_catches_each_kind_of_edge(tmp_path, monkeypatch, source, text, bad):
    """The rule's checker on small files, so a checker that sees nothing cannot pass the test above."""
    path = REPO / source
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: text if self == path else "")
    assert bool(layering_violations([path])) is bad


def test_the_repository_stands_alone():
    """Users get this repository only: nothing in it may point to material outside it."""
    texts = [p for p in REPO.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".toml", ".txt", ".ino")
             and not any(part.startswith(".") for part in p.relative_to(REPO).parts)]
    marker = "../" + "shared"  # spelt in two parts so that this file does not name it
    outside = [str(p.relative_to(REPO)) for p in texts if marker in p.read_text(encoding="utf-8", errors="replace")]
    assert not outside, f"files that point outside the repository: {outside}"


def test_paths_to_repository_files_resolve_after_the_layering():
    """Modules that find a file of the repository by their own location (a move into rig/app or
    rig/offline changes it): the file must be there."""
    from rig.offline.bench import DEFAULT_CONFIG

    assert DEFAULT_CONFIG.is_file(), DEFAULT_CONFIG
