"""The import rule, read from the source (no module is imported): core <- {curate, classifier, train} <- pipelines
<- benchmarks.

* ``core`` imports nothing else of the project.
* ``curate``, ``classifier`` and ``train`` import ``core`` and themselves only: never each other, a script, Ray.
* ``pipelines`` scripts import the libraries, never another script (``pipelines/cli.py`` dispatches by name).
* ``benchmarks`` import the libraries and the scripts.
* No two modules of a library import each other, directly or round a longer loop.
* No library module imports a private name (``_x``) of another module, and tests use no private name of a
  script.

Function-level imports count as much as module-level ones: they are how ``--help`` stays fast, not a way around
the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("core", "curate", "classifier", "train", "pipelines", "benchmarks", "tests")
LIBRARIES = ("core", "curate", "classifier", "train")
ALLOWED = {
    "core": set(),
    "curate": {"core"},
    "classifier": {"core"},
    "train": {"core"},
    "pipelines": {"core", "curate", "classifier", "train"},
    "benchmarks": {"core", "curate", "classifier", "train", "pipelines"},
}
DISPATCHER = "pipelines/cli.py"  # the one script that reaches other scripts (by name, through importlib)


def _scripts() -> set[str]:
    return {p.stem for p in (ROOT / "pipelines").glob("*.py") if p.stem != "__init__"}


def _imports(tree: ast.AST):
    """``(line, module, names)`` of every import in the file, at any depth (``names`` None for ``import x``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module, [a.name for a in node.names]


def violations(rel: str, source: str, scripts: set[str]) -> list[str]:
    """Every break of the import rule in the file ``rel`` (a path relative to the repository root)."""
    package = rel.split("/", 1)[0]
    tree = ast.parse(source)
    found = []
    script_aliases: set[str] = set()  # names a test binds to a script module
    for line, module, names in _imports(tree):
        top = module.split(".")[0]
        where = f"{rel}:{line}: {module}"
        if package in LIBRARIES and top == "ray":
            found.append(f"{where}: a library imports Ray")
        if package == "pipelines" and rel != DISPATCHER and top in scripts and Path(rel).stem != top:
            found.append(f"{where}: a script imports the script {top} (as run from pipelines/)")
        if top not in PROJECT or top == package:
            if package in LIBRARIES and top in LIBRARIES and names:
                found += [f"{where}: imports the private name {n}" for n in names
                          if n.startswith("_") and module != _module_of(rel)]
            if package == "pipelines" and top == "pipelines" and rel != DISPATCHER:
                inner = {module.split(".")[1]} if "." in module else set(names or ())
                if inner & (scripts - {Path(rel).stem}):
                    found.append(f"{where}: a script imports another script")
            continue
        if package == "tests":
            if top == "pipelines":
                if "." in module and names:
                    found += [f"{where}: a test imports the script internal {n}" for n in names if n.startswith("_")]
                    if module.split(".")[1] in scripts:
                        continue
                script_aliases.update(n for n in (names or ()) if n in scripts)
            continue
        if top not in ALLOWED[package]:
            found.append(f"{where}: {package} may not import {top}")
        elif package in LIBRARIES and names:
            found += [f"{where}: imports the private name {n}" for n in names if n.startswith("_")]
    if package == "tests" and script_aliases:
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in script_aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{rel}:{node.lineno}: a test uses the script internal {node.value.id}.{node.attr}")
    return found


def _module_of(rel: str) -> str:
    return rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_the_check_catches_each_kind_of_violation():
    scripts = {"build_bbst", "stylize", "cli"}
    cases = {
        ("core/x.py", "from curate import staging"): "core may not import curate",
        ("core/x.py", "def f():\n    import train.data\n"): "core may not import train",
        ("curate/x.py", "from classifier.scoring import StyleScorer"): "curate may not import classifier",
        ("train/x.py", "import pipelines.cli"): "train may not import pipelines",
        ("classifier/x.py", "def f():\n    import ray\n"): "a library imports Ray",
        ("train/x.py", "from core.images import _secret"): "private name _secret",
        ("pipelines/stylize.py", "from pipelines import build_bbst"): "a script imports another script",
        ("pipelines/stylize.py", "from build_bbst import main"): "a script imports the script build_bbst",
        ("pipelines/stylize.py", "import tests.loopback"): "pipelines may not import tests",
        ("benchmarks/b.py", "from tests.loopback import free_port"): "benchmarks may not import tests",
        ("tests/t.py", "from pipelines.build_bbst import _plan"): "script internal _plan",
        ("tests/t.py", "from pipelines import build_bbst\nbuild_bbst._plan()"): "script internal build_bbst._plan",
    }
    for (rel, source), message in cases.items():
        got = violations(rel, source, scripts)
        assert any(message in v for v in got), (rel, source, got)
    allowed = [("curate/x.py", "from core.schema import STAGING\nimport numpy"),
               ("pipelines/cli.py", "from pipelines import build_bbst"),
               ("pipelines/stylize.py", "from train.inference import Stylizer\nimport ray"),
               ("benchmarks/b.py", "from pipelines.build_bbst import main"),
               ("tests/t.py", "from pipelines import build_bbst\nbuild_bbst.main([])\nfrom curate.dedup import _x"),
               ("curate/dedup.py", "from curate.dedup import _private_of_its_own")]
    for rel, source in allowed:
        assert violations(rel, source, scripts) == [], (rel, source)


def test_the_tree_follows_the_import_rule():
    scripts = _scripts()
    found = []
    for package in ALLOWED.keys() | {"tests"}:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found += violations(rel, path.read_text(encoding="utf-8"), scripts)
    assert found == [], "import rule broken:\n" + "\n".join(found)


def _module_names(rel: str, source: str, modules: set[str]) -> set[str]:
    """The project modules (of ``modules``) that the file imports, at any depth."""
    found = set()
    for _, module, names in _imports(ast.parse(source)):
        for candidate in [module] + [f"{module}.{n}" for n in names or ()]:
            if candidate in modules:
                found.add(candidate)
    return found - {_module_of(rel)}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import loop of ``graph`` (module -> modules it imports), each as its modules in loop order."""
    cycles, seen = [], set()

    def walk(path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == path[0]:
                key = frozenset(path)
                if key not in seen:
                    seen.add(key)
                    cycles.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:  # each loop is found once, from its smallest module
                walk(path + [nxt])

    for start in sorted(graph):
        walk([start])
    return cycles


def test_the_loop_check_finds_loops():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    modules = {"curate.x", "curate.y"}
    graph = {"curate.x": _module_names("curate/x.py", "def f():\n    from curate import y\n", modules),
             "curate.y": _module_names("curate/y.py", "from curate.x import thing", modules)}
    assert import_cycles(graph) == [["curate.x", "curate.y", "curate.x"]]


def test_no_import_loops_inside_a_library():
    for package in LIBRARIES:
        files = {_module_of(p.relative_to(ROOT).as_posix()): p for p in (ROOT / package).rglob("*.py")}
        graph = {m: _module_names(p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8"), set(files))
                 for m, p in files.items()}
        assert import_cycles(graph) == [], f"import loops in {package}/"
