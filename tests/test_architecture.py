"""The package's imports run in one direction: no module of deploykit/ reaches itself through imports.

The graph is read from the source (every import statement, including those inside functions, which
hide a circle from Python's import machinery but not from a reader), so it needs nothing imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "deploykit"


def module_names(package: Path) -> dict[str, Path]:
    names = {}
    for file in package.rglob("*.py"):
        parts = list(file.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = file
    return names


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its source."""
    modules = module_names(package)

    def owner(name: str) -> str | None:  # "deploykit.passes.fp16.Float16Pass" -> "deploykit.passes.fp16"
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {name: set() for name in modules}
    for name, file in modules.items():
        here = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                submodules = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in modules]
                # "from . import storage" reads the submodule io, not the package's __init__
                targets = submodules if len(submodules) == len(node.names) else [module, *submodules]
            else:
                continue
            for target in targets:
                found = owner(target)
                if found is not None and found != name:
                    graph[name].add(found)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(root: str) -> None:
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def with_registry_imports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph plus the imports the registries make by name (deploykit.backends.get_backend, the CLI's verbs
    folder): invisible to a reader of import statements, real at run time."""
    from deploykit.backends.registry import REGISTRY

    graph = {k: set(v) for k, v in graph.items()}
    graph["deploykit.backends"] |= {"deploykit.backends" + e.module for e in REGISTRY.values()}
    graph["deploykit.cli"] |= {name for name in graph if name.startswith("deploykit.cli.verbs.")}
    return graph


def test_deploykit_has_no_import_circle():
    graph = with_registry_imports(import_graph(PACKAGE))
    assert "deploykit.backends.ort" in graph["deploykit.backends"] and "deploykit.cli.verbs.optimize" in graph["deploykit.cli"]
    assert "deploykit.runtime" in graph and graph["deploykit.runtime"]  # the graph was really read
    assert circles(graph) == []


def test_the_check_finds_a_circle_hidden_inside_a_function(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("def late():\n    from ..a import thing\n")
    (package / "c.py").write_text("from . import a\n")
    assert circles(import_graph(package)) == [["pkg.a", "pkg.sub.b"]]


def test_low_layers_import_nothing_above_them():
    """The leaves (errors, model I/O, signature, feeds, ORT sessions, machine facts, timing, memory) import only
    each other: anything they need from above would start a circle the day that module imports them."""
    leaves = {f"deploykit.{m}" for m in ("errors", "storage", "signature", "feeds", "ort_session", "machine", "timing",
                                        "memory", "shapes", "stats", "_version", "backends.registry", "plotting")}
    graph = import_graph(PACKAGE)
    for leaf in leaves & set(graph):
        assert graph[leaf] <= leaves, (leaf, sorted(graph[leaf] - leaves))


def test_the_public_api_names_every_verb_and_error():
    """One function per verb, importable from the package, and every public exception from deploykit.errors."""
    import subprocess
    import sys

    code = ("import deploykit, deploykit.errors as e\n"
            "names = ['export', 'inspect_model', 'optimize_model', 'build', 'benchmark', 'package_triton',\n"
            "         'slide_image', 'Server', 'Engine']\n"
            "assert all(callable(getattr(deploykit, n)) for n in names), names\n"
            "errors = [n for n in dir(e) if isinstance(getattr(e, n), type) and issubclass(getattr(e, n), Exception)]\n"
            "assert set(errors) <= set(deploykit.__all__), set(errors) - set(deploykit.__all__)\n"
            "import sys; assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tests_use_public_names_only():
    """Tests import what a user can: no private module or name of deploykit (a restructure moves those freely)."""
    found = []
    for file in (PACKAGE.parent / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "deploykit":
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private or any(part.startswith("_") for part in node.module.split(".")):
                    found.append(f"{file.name}:{node.lineno} {node.module} {private}")
    assert found == []
