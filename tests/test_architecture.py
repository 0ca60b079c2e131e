"""The import-layer contract: every module imports only from its own layer or below, and no import circle exists.

Every import counts, lazy ones inside functions included. docs/architecture.md describes the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from backends.core.config import REPO_ROOT

pytestmark = pytest.mark.fast

# Lowest first. A module belongs to the layer of the longest prefix naming it.
LAYERS = {
    "core": ("backends", "backends.core"),
    "models": ("backends.models",),
    "engines": ("backends.engines",),
    "knowledge": ("backends.knowledge",),
    "learning": ("backends.learning",),
    "answering": ("backends.answering",),
    "service": ("backends.service",),
    "apps": ("backends.apps", "backends.__main__", "pages", "app"),
}
RANK = {layer: rank for rank, layer in enumerate(LAYERS)}
# Only engines/__init__ picks a concrete engine; nothing outside the engines imports one.
CONCRETE_ENGINES = ("backends.engines.torch_engine", "backends.engines.torch_passes", "backends.engines.torch_linear",
                    "backends.engines.onnx", "backends.engines.llamacpp")
HEAVY = ("torch", "transformers", "peft", "langchain", "langchain_core", "langchain_chroma", "langchain_huggingface",
         "langchain_text_splitters", "chromadb")


def layer_of(module: str) -> str:
    best = max(((prefix, layer) for layer, prefixes in LAYERS.items() for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), key=lambda pair: len(pair[0]))
    return best[1]


def project_modules(root: Path) -> dict[str, Path]:
    files = [root / "app.py", *(root / "backends").rglob("*.py"), *(root / "pages").rglob("*.py")]
    modules = {}
    for path in files:
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def imports_of(path: Path, module: str, modules: dict) -> tuple[set[str], set[str]]:
    """(project modules, top-level outside packages) this file imports, anywhere in it."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    inside, outside = set(), set()

    def add(name: str) -> None:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in modules:
                if candidate != module:
                    inside.add(candidate)
                return
        outside.add(parts[0])

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from backends.engines import scheduler` names a module
                full = f"{base}.{alias.name}"
                add(full if full in modules else base)
    return inside, outside


def graph(root: Path = REPO_ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = project_modules(root)
    edges, outside = {}, {}
    for module, path in modules.items():
        edges[module], outside[module] = imports_of(path, module, modules)
    return edges, outside


def violations(edges: dict[str, set[str]]) -> list[str]:
    """Upward imports, concrete engines imported from outside the engines, and circles."""
    found = [f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)}), a higher layer"
             for a, targets in edges.items() for b in targets if RANK[layer_of(b)] > RANK[layer_of(a)]]
    found += [f"{a} imports the concrete engine {b}: only backends.engines picks one"
              for a, targets in edges.items() for b in targets
              if b.startswith(CONCRETE_ENGINES) and a != "backends.engines" and not a.startswith("backends.engines.")]
    found += [f"import circle: {' -> '.join(circle)}" for circle in circles(edges)]
    return found


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_a_higher_layer_and_no_circle_exists():
    edges, _ = graph()
    assert len(edges) > 40  # the whole project was read
    assert violations(edges) == []


def test_the_contract_fails_on_an_upward_import_and_on_a_circle():
    edges, _ = graph()
    upward = {**edges, "backends.core.text": edges["backends.core.text"] | {"backends.service"}}
    assert any("backends.core.text (core) imports backends.service (service)" in v for v in violations(upward))
    circle = {**edges, "backends.answering.prompts": edges["backends.answering.prompts"] | {"backends.answering.rag"}}
    assert any(v.startswith("import circle") and "backends.answering.rag" in v for v in violations(circle))


def test_the_scheduler_knows_no_concrete_engine_and_pages_import_no_heavy_library():
    edges, outside = graph()
    assert {layer_of(m) for m in edges["backends.engines.scheduler"]} <= {"core", "models", "engines"}
    assert not any(m.startswith(CONCRETE_ENGINES) for m in edges["backends.engines.scheduler"])
    for module in (m for m in edges if m.startswith("pages") or m == "app"):
        assert not outside[module] & set(HEAVY), module
