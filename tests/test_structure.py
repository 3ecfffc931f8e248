"""The house rules a newcomer relies on, checked on the source: the layer order of docs/architecture.md
with no import against it and no import circles inside the package (counting imports inside functions
too), and llama.cpp reached through one door (`engine/llama.py`)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "selfguide_lite"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[mod].update(t for t in targets if t in files and t != mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative over a small graph)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# docs/architecture.md, "Layers": a module imports only from its own layer or the layers below it.
# Names are modules or packages (a package stands for its modules unless one is named apart).
LAYERS: list[list[str]] = [
    ["__main__", "cli", "demo", "doctor", "studies"],  # commands, and what the study scripts share
    ["loop"],  # the order of rounds and stages
    ["methods", "evaluate", "report", "calibration"],  # what a round computes, how a student is scored
    ["engine", "train", "export", "gate", "compat", "usage", "models", "local_models", "gguf_import",
     "prefix_sharing"],  # sampling, training, export, model files
    ["runtime"],  # the installation check (the door to llama.cpp, engine.llama, opens models with its verdict)
    ["gguf_files", "prompts", "tasks", "config", "store", "filters", "rouge", "metrics", "runs",
     "diagnostics", "progress", "errors", "builtin_students", "hf_tokenizer", "toy_models"],  # data and rules
]


def layer_of(module: str) -> int:
    """The layer of a package module: its longest listed name (engine.sampler before engine)."""
    name = module.removeprefix("selfguide_lite").removeprefix(".")
    best = max((entry for layer in LAYERS for entry in layer if name == entry or name.startswith(entry + ".")),
               key=len, default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and to docs/architecture.md"
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if a != "selfguide_lite" and b != "selfguide_lite" and layer_of(b) < layer_of(a))


def test_no_import_runs_against_the_layer_order():
    graph = import_graph()
    assert upward_imports(graph) == []


def test_an_upward_import_is_found():
    planted = {"selfguide_lite.tasks": {"selfguide_lite.loop"}, "selfguide_lite.loop": {"selfguide_lite.tasks"}}
    assert upward_imports(planted) == [("selfguide_lite.tasks", "selfguide_lite.loop")]


def test_the_package_has_no_import_circles():
    graph = import_graph()
    assert "selfguide_lite.runtime" in graph and graph["selfguide_lite.models"]  # the graph was read
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_llama_cpp_is_imported_only_by_the_door():
    """Everything else asks `engine/llama.py` (which has the installation checked before the native library loads);
    the OpenAI-compatible server is llama-cpp-python's own app, imported after that check."""
    importers = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                if name.split(".")[0] == "llama_cpp" and not name.startswith("llama_cpp.server"):
                    importers.setdefault(module_name(path), set()).add(name)
    assert set(importers) == {"selfguide_lite.engine.llama"}, importers


def test_no_two_modules_share_a_name():
    names = [p.stem for p in PACKAGE.rglob("*.py") if p.stem != "__init__"]
    assert sorted({n for n in names if names.count(n) > 1}) == []
