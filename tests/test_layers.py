"""The layers point one way: data -> formulations -> solvers -> bench / torch; core never imports torch."""
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


def imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level


def resolve(path: Path, module: str, level: int) -> str:
    if level == 0:
        return module
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)[:-level]
    return ".".join(parts + ([module] if module else []))


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
