"""The package's layers: every import of our own code points down (or sideways within a layer, without a
cycle), at module level or inside a function, and nothing in the product imports the measurement tools.

The map below is CONTRIBUTING.md's table of layers; a new module gets its line here (the test names any
module it does not know).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pipeline"

# Bottom to top. A module may import its own layer and those below; a package is one entry (its modules
# may import each other, without a cycle).
LAYERS: list[tuple[str, set[str]]] = [
    ("basics", {"pipeline", "errors", "naming", "sampling", "transforms", "synth"}),
    ("parts", {"config", "io", "models", "outputs"}),
    (
        "machine, weights, decoding, lists, consumers of an output dir",
        {
            "hardware",
            "weights",
            "decode",
            "videolist",
            "consolidate",
            "callbacks",
        },
    ),
    (
        "streaming, a model on a device, jobs, exports",
        {
            "engine",
            "inference",
            "launch",
            "export",
            "inspect",
        },
    ),
    ("assembly", {"assemble"}),
    ("a run, the notebook API", {"run", "api"}),
    # compare re-extracts videos for its --probe (pipeline.api): a tool above the run, imported by nothing
    ("entry points and tools", {"extract", "compare", "bench", "benchmark", "gpu_check"}),
]
TOOLS = {"bench", "benchmark", "gpu_check"}  # measurement tools: never imported by the product


def unit_of(module: str) -> str:
    """The layer-map entry of a dotted module name: `pipeline.run.plan` -> `run`, `pipeline` -> `pipeline`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(unit: str) -> int:
    for index, (_, units) in enumerate(LAYERS):
        if unit in units:
            return index
    raise KeyError(unit)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, at module level) for every import of `pipeline...` in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names = [f"{base}.{node.module}" if node.module else base]
            else:
                names = [node.module or ""]
            if (
                names[0] == "pipeline"
            ):  # `from pipeline import x`: x is a module, or a name of pipeline/__init__
                names = [
                    f"pipeline.{alias.name}"
                    if (PACKAGE / f"{alias.name}.py").is_file() or (PACKAGE / alias.name).is_dir()
                    else "pipeline"
                    for alias in node.names
                ]
        else:
            continue
        for name in names:
            if name == "pipeline" or name.startswith("pipeline."):
                found.append((name, node.lineno, id(node) in top_level))
    return found


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts[:1])


def test_every_module_has_a_layer():
    unknown = sorted({unit_of(module_name(p)) for p in sources()} - set().union(*(u for _, u in LAYERS)))
    assert not unknown, (
        f"modules missing from the layer map (tests/test_layers.py, CONTRIBUTING.md): {unknown}"
    )


def test_imports_point_down_the_layers():
    upward = []
    for path in sources():
        importer = module_name(path)
        for imported, line, _ in imported_modules(path):
            if layer_of(unit_of(imported)) > layer_of(unit_of(importer)):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} imports {imported}")
    assert not upward, "imports that reach back up:\n" + "\n".join(upward)


def test_the_product_never_imports_the_measurement_tools():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {imported}"
        for path in sources()
        if unit_of(module_name(path)) not in TOOLS
        for imported, line, _ in imported_modules(path)
        if unit_of(imported) in TOOLS
    ]
    assert not offenders, offenders


def test_no_two_modules_import_each_other_in_a_circle():
    """Module-level imports form no cycle (an import inside a function to hide one counts too)."""
    graph: dict[str, set[str]] = {}
    for path in sources():
        importer = module_name(path)
        targets = graph.setdefault(importer, set())
        for imported, _, _ in imported_modules(path):
            # `from pipeline.models import x`: x may be a submodule; the package itself is the edge otherwise
            if imported != importer and not importer.startswith(imported + "."):
                targets.add(imported)
    modules = set(graph)
    edges = {m: {t for t in graph[m] if t in modules} for m in modules}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(modules):
        if node not in state:
            visit(node)
    # a package's __init__ re-exporting its own modules is not a cycle of code: drop those edges
    real = [
        c
        for c in cycles
        if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(c, c[1:], strict=False))
    ]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real)


@pytest.mark.parametrize("path", [p for p in sources() if p.name != "__init__.py"], ids=lambda p: p.name)
def test_imports_inside_functions_say_why(path):
    """An import of our own code inside a function is there only to keep start-up fast (or to order what
    loads first), and its line says so in a comment."""
    lines = path.read_text().splitlines()
    silent = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for _, line, top in imported_modules(path)
        if not top
        and "#" not in lines[line - 1]
        and not lines[line - 1].lstrip().startswith("if TYPE_CHECKING")
    ]
    # imports under `if TYPE_CHECKING:` are for type hints only
    tree = ast.parse(path.read_text())
    typing_only = {
        n.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(node)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    }
    silent = [s for s in silent if int(s.rsplit(":", 1)[1]) not in typing_only]
    assert not silent, f"imports inside functions without a comment saying why: {silent}"
