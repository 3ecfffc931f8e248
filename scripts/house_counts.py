"""The house in numbers, for a refactoring's before/after note: package modules and lines, the longest
functions, loop.py's and runtime.py's length, and imports against the layer order of tests/test_structure.py
(engine/ counted as one layer when --engine-one-layer). Point it at any checkout to compare two trees:

    python3 scripts/house_counts.py [ROOT] [--engine-one-layer]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))
import test_structure  # noqa: E402  (the layer table and the import-graph reader live with the test)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, nargs="?", default=HERE)
    ap.add_argument("--engine-one-layer", action="store_true", help="count engine/sampler.py with the engine")
    args = ap.parse_args()
    pkg = args.root / "selfguide_lite"
    test_structure.PACKAGE = pkg
    modules = sorted(pkg.rglob("*.py"))
    functions = sorted(((node.end_lineno - node.lineno + 1, f"{p.relative_to(pkg)}:{node.name}")
                        for p in modules for node in ast.walk(ast.parse(p.read_text()))
                        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)), reverse=True)
    layers = [[e for e in layer if not (args.engine_one_layer and e == "engine.sampler")]
              for layer in test_structure.LAYERS]
    renamed = {"engine.llamacpp": "engine.sequential"}  # older trees

    def layer_of(module: str) -> int:
        name = renamed.get(module.removeprefix("selfguide_lite").removeprefix("."), module.removeprefix("selfguide_lite.")
                           if module != "selfguide_lite" else "")
        best = max((e for layer in layers for e in layer if name == e or name.startswith(e + ".")), key=len, default=None)
        return next((i for i, layer in enumerate(layers) if best in layer), len(layers))

    graph = test_structure.import_graph()
    upward = sorted((a, b) for a, targets in graph.items() for b in targets
                    if "selfguide_lite" not in (a, b) and layer_of(b) < layer_of(a))
    lines = {p.name: len(p.read_text().splitlines()) for p in (pkg / "loop.py", pkg / "runtime.py")}
    print(f"package modules {len(modules)}, lines {sum(len(p.read_text().splitlines()) for p in modules)}")
    print(f"loop.py {lines['loop.py']} lines, runtime.py {lines['runtime.py']} lines")
    print("longest functions:", ", ".join(f"{n} {name}" for n, name in functions[:4]))
    print("imports against the layer order:", ", ".join(f"{a} -> {b}" for a, b in upward) or "none")
    print(f"scripts lines {sum(len(p.read_text().splitlines()) for p in (args.root / 'scripts').glob('*.py'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
