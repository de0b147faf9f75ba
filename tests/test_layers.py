"""The layers point one way: data -> formulations -> solvers -> bench / torch; core never imports torch.

Inside the package: no import cycle (every import counts, also one inside a function; only
``if TYPE_CHECKING:`` blocks are left out), the modules of ``solvers/`` point one way along
:data:`SOLVERS_ORDER`, and no module imports another module's private (``_``) names.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "falcon_milp"
# a module may import from these sub-packages of falcon_milp (top-level modules are the data layer)
ALLOWED = {
    "formulations": {"formulations"},
    "solvers": {"formulations", "solvers"},
    "bench": {"formulations", "solvers", "bench"},
    "torch": {"formulations", "solvers", "torch"},
}
SUBPACKAGES = set(ALLOWED)


# solvers/: a module may import only the modules listed before it (the engine first, the
# entry points last; the registry loads the solver modules by name, never by import)
SOLVERS_ORDER = [
    "isolated", "sorted_layers", "rounding", "lp_core", "lp", "bands", "class_search", "highs",
    "windowed_milp", "core_search", "greedy", "lagrangian", "fast", "exact", "allocation", "channels", "registry",
    "__init__",
]


def _nodes(tree: ast.AST):
    """Every node outside ``if TYPE_CHECKING:`` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return [n for n in ast.walk(tree) if id(n) not in skip]


def imports(path: Path, names: bool = False):
    tree = ast.parse(path.read_text())
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield (alias.name, 0, []) if names else (alias.name, 0)
        elif isinstance(node, ast.ImportFrom):
            got = [a.name for a in node.names]
            yield (node.module or "", node.level, got) if names else (node.module or "", node.level)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def dependencies(path: Path) -> set[str]:
    """The falcon_milp modules ``path`` imports (``from . import x`` names module x, not the package)."""
    deps = set()
    for module, level, names in imports(path, names=True):
        full = resolve(path, module, level)
        subs = [n for n in names if f"{full}.{n}" in MODULES]
        deps.update(f"{full}.{n}" for n in subs)
        if full in MODULES and (not names or len(subs) < len(names)):
            deps.add(full)
    deps.discard(module_name(path))
    return deps


def resolve(path: Path, module: str, level: int) -> str:
    if level == 0:
        return module
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)[:-level]
    return ".".join(parts + ([module] if module else []))


def test_no_import_cycle():
    graph = {m: dependencies(p) for m, p in MODULES.items()}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        for d in sorted(graph[m]):
            visit(d, path + [m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_solvers_modules_point_one_way():
    on_disk = {p.stem for p in (PKG / "solvers").glob("*.py")}
    assert on_disk == set(SOLVERS_ORDER), \
        f"SOLVERS_ORDER must list every module of solvers/: {sorted(on_disk ^ set(SOLVERS_ORDER))}"
    rank = {name: i for i, name in enumerate(SOLVERS_ORDER)}
    for name in SOLVERS_ORDER:
        path = PKG / "solvers" / f"{name}.py"
        for dep in dependencies(path):
            if dep.startswith("falcon_milp.solvers."):
                target = dep.split(".")[2]
                assert rank[target] < rank[name], f"solvers/{name}.py imports solvers/{target}.py (listed after it)"


def test_no_private_names_across_modules():
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        bound = set()          # local names bound to falcon_milp modules
        for node in _nodes(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                full = resolve(path, node.module or "", node.level)
                if not full.startswith("falcon_milp"):
                    continue
                for alias in node.names:
                    assert not alias.name.startswith("_"), f"{path.relative_to(PKG)} imports {full}.{alias.name}"
                    if f"{full}.{alias.name}" in MODULES:
                        bound.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("falcon_milp") and alias.asname:
                        bound.add(alias.asname)
        for node in _nodes(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
                assert not node.attr.startswith("_") or node.attr.startswith("__"), \
                    f"{path.relative_to(PKG)}:{node.lineno} uses {node.value.id}.{node.attr}"


def test_core_never_imports_torch():
    for path in PKG.rglob("*.py"):
        if "torch" in path.relative_to(PKG).parts:
            continue
        for module, level in imports(path):
            assert level > 0 or module.split(".")[0] != "torch", f"{path} imports torch"


def test_layers_point_one_way():
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).parts
        layer = rel[0] if len(rel) > 1 else None
        for module, level in imports(path):
            full = resolve(path, module, level)
            if not full.startswith("falcon_milp."):
                continue
            target = full.split(".")[1]
            if target not in SUBPACKAGES:
                continue  # data layer and cli
            if layer is None:
                # top-level modules: the data layer may not reach up; only cli and the package
                # facade may import solvers
                assert path.name in ("cli.py", "__init__.py", "__main__.py") or target in (), \
                    f"{path.name} (data layer) imports falcon_milp.{target}"
            else:
                assert target in ALLOWED[layer], f"{'/'.join(rel)} ({layer}) imports falcon_milp.{target}"
