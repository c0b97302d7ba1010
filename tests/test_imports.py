"""Import hygiene: `import lmforge` is cheap, the package's modules import each other without
cycles (counting imports inside functions), and a floor never imports a floor above it."""

import ast
import subprocess
import sys
from pathlib import Path

import lmforge

PACKAGE = Path(lmforge.__file__).parent

# Lower numbers are lower floors; a module may import its own floor and those below.
# The longest matching prefix decides a module's floor.
FLOORS = {
    "lmforge.errors": 0, "lmforge.paths": 0, "lmforge.atomic": 0, "lmforge.progress": 0, "lmforge.decoder": 0,
    "lmforge.memory": 0,
    "lmforge.models.registry": 0, "lmforge.quant.recipe": 0, "lmforge.data": 0,
    "lmforge.config": 1, "lmforge.precision": 1, "lmforge.catalogue": 1, "lmforge.formats": 1, "lmforge.plan": 1,
    "lmforge.native": 1, "lmforge.cpu_kernels": 1,
    "lmforge.models": 2, "lmforge.kv_cache": 2, "lmforge.sampling": 2, "lmforge.tokenizer": 2,
    "lmforge.tokenstats": 2, "lmforge.quant": 2, "lmforge.conversation": 2,
    "lmforge.loading": 3, "lmforge.onnx": 3, "lmforge.engine": 3, "lmforge.evaluate": 3, "lmforge.inspection": 3,
    "lmforge.api": 4, "lmforge.variants": 4, "lmforge.quant.workflow": 4,  # workflow loads the model it quantizes
    "lmforge.bench": 5, "lmforge.device": 5, "lmforge.serve": 5, "lmforge.report": 5,
    "lmforge.deploy": 6, "lmforge.isolated": 6,
    "lmforge.cli": 7,
}


def modules() -> dict[str, Path]:
    found = {}
    for file in PACKAGE.rglob("*.py"):
        parts = list(file.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = file
    return found


def _imported_names(tree: ast.AST):
    """Every `lmforge...` name imported anywhere (functions included), but not annotation-only
    imports under `if TYPE_CHECKING:`."""
    def walk(node):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield from (f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            yield from walk(child)
    yield from (n for n in walk(tree) if n.startswith("lmforge"))


def import_graph(implicit_parents: bool = True) -> dict[str, set[str]]:
    """Module -> the lmforge modules it imports. implicit_parents: importing a.b.c also runs
    a/b/__init__ (left out where that __init__ itself imports a.b.c, Python's re-export)."""
    mods = modules()

    def owner(name: str) -> str:
        while name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {m: set() for m in mods}
    for module, file in mods.items():
        if module == "lmforge":
            continue  # the root's lazy __getattr__ imports on first use, by design
        for name in _imported_names(ast.parse(file.read_text())):
            target = owner(name)
            if target != module:
                graph[module].add(target)
    if implicit_parents:
        for module in mods:
            parent = module.rpartition(".")[0]
            if parent in mods and parent != "lmforge" and module not in graph[parent]:
                graph[module].add(parent)
    return graph


def floor(module: str) -> int:
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{module} has no floor in FLOORS: give it one"
    return FLOORS[best]


def test_import_lmforge_and_its_errors_do_not_import_torch():
    code = ("import sys, lmforge, lmforge.errors, lmforge.precision; "
            "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'lmforge.api') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert lmforge.SamplingParams.__name__ == "SamplingParams" and callable(lmforge.load)  # lazily there


def test_no_import_cycles_even_inside_functions():
    graph = import_graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module):
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_lower_floors_never_import_higher_ones():
    wrong = [f"{m} (floor {floor(m)}) imports {t} (floor {floor(t)})"
             for m, targets in import_graph(implicit_parents=False).items() if m != "lmforge" for t in targets
             if t != "lmforge" and floor(t) > floor(m)]
    assert not wrong, "\n".join(wrong)
